//! Table-driven decision tests: every case in `decisions.toml` is decided against its policy set and
//! checked against the expected outcome.

// Integration tests are built with `cfg(test)`; saying so lets clippy treat the helpers below as test code.
#![cfg(test)]

use std::collections::HashMap;

use sallyport_policy::{Action, CustomerPolicy, Decision, RequestContext, Subject, TargetInfo};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    sets: Vec<Set>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Set {
    name: String,
    customer: String,
    timezone: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    set: String,
    #[serde(default = "default_action")]
    action: String,
    #[serde(default = "default_subject")]
    subject: String,
    #[serde(default = "default_provider")]
    provider: String,
    #[serde(default = "default_person")]
    person: String,
    subject_customer: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    target_customer: Option<String>,
    #[serde(default = "default_target")]
    target: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_protocol")]
    protocol: String,
    time: String,
    timezone: Option<String>,
    minutes: u32,
    #[serde(default = "default_source_ip")]
    source_ip: String,
    ticket: Option<String>,
    #[serde(default)]
    mfa: bool,
    allow: bool,
    policy_ids: Vec<String>,
    reason: Option<String>,
    #[serde(default)]
    errors: usize,
}

fn default_action() -> String {
    "connect".into()
}
fn default_subject() -> String {
    "technician".into()
}
fn default_provider() -> String {
    "northwind".into()
}
fn default_person() -> String {
    "alice".into()
}
fn default_target() -> String {
    "web".into()
}
fn default_port() -> u16 {
    22
}
fn default_protocol() -> String {
    "ssh".into()
}
fn default_source_ip() -> String {
    "10.1.2.3".into()
}

fn decide(sets: &HashMap<&str, &Set>, case: &Case) -> Decision {
    let set = sets[case.set.as_str()];
    let timezone = case.timezone.as_deref().unwrap_or(&set.timezone);
    let policy = CustomerPolicy::parse(
        set.customer.parse().unwrap(),
        timezone,
        &format!("{}.cedar", set.name),
        &set.source,
    )
    .unwrap_or_else(|e| panic!("set `{}`: {e}", set.name));

    let action = match case.action.as_str() {
        "connect" => Action::Connect,
        "request" => Action::Request,
        "approve" => Action::Approve,
        other => panic!("unknown action `{other}`"),
    };
    let subject = match case.subject.as_str() {
        "technician" => Subject::Technician {
            id: format!(
                "spiffe://sallyport.local/technician/{}/{}",
                case.provider, case.person
            )
            .parse()
            .unwrap(),
            provider: case.provider.parse().unwrap(),
            name: case.person.parse().unwrap(),
            groups: case.groups.iter().map(|g| g.parse().unwrap()).collect(),
        },
        "approver" => {
            let customer = case.subject_customer.as_deref().unwrap_or(&set.customer);
            Subject::Approver {
                id: format!(
                    "spiffe://sallyport.local/approver/{customer}/{}",
                    case.person
                )
                .parse()
                .unwrap(),
                customer: customer.parse().unwrap(),
                name: case.person.parse().unwrap(),
            }
        }
        other => panic!("unknown subject `{other}`"),
    };
    let target = TargetInfo {
        customer: case
            .target_customer
            .as_deref()
            .unwrap_or(&set.customer)
            .parse()
            .unwrap(),
        id: case.target.parse().unwrap(),
        tags: case.tags.clone(),
        port: case.port,
        protocol: case.protocol.clone(),
    };
    let ctx = RequestContext {
        now: case.time.parse().unwrap(),
        minutes: case.minutes,
        source_ip: case.source_ip.parse().unwrap(),
        ticket: case.ticket.clone(),
        mfa: case.mfa,
    };
    policy.decide(action, &subject, &target, &ctx)
}

#[test]
fn decisions_match_the_table() {
    let file: File = toml::from_str(include_str!("decisions.toml")).unwrap();
    let sets: HashMap<&str, &Set> = file.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    assert!(file.cases.len() >= 20, "keep the table meaningful");

    let mut failures = Vec::new();
    for case in &file.cases {
        let d = decide(&sets, case);
        let mut wrong = Vec::new();
        if d.allowed != case.allow {
            wrong.push(format!("allowed {} (want {})", d.allowed, case.allow));
        }
        if d.policy_ids != case.policy_ids {
            wrong.push(format!(
                "policy ids {:?} (want {:?})",
                d.policy_ids, case.policy_ids
            ));
        }
        if let Some(reason) = &case.reason
            && &d.reason != reason
        {
            wrong.push(format!("reason {:?} (want {reason:?})", d.reason));
        }
        if d.errors.len() != case.errors {
            wrong.push(format!("errors {:?} (want {})", d.errors, case.errors));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}", case.name, wrong.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
