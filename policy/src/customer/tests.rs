//! Unit tests for [`CustomerPolicy`]: the demo policy, the tenant wall, error locations, ids, and that
//! the entities and context built for a decision conform to the schema.

use super::*;
use crate::DEMO_POLICY;

fn cid(s: &str) -> CustomerId {
    s.parse().unwrap()
}

fn alice(groups: &[&str]) -> Subject {
    Subject::Technician {
        id: "spiffe://sallyport.local/technician/northwind/alice"
            .parse()
            .unwrap(),
        provider: "northwind".parse().unwrap(),
        name: "alice".parse().unwrap(),
        groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
    }
}

fn approver(customer: &str, name: &str) -> Subject {
    Subject::Approver {
        id: format!("spiffe://sallyport.local/approver/{customer}/{name}")
            .parse()
            .unwrap(),
        customer: cid(customer),
        name: name.parse().unwrap(),
    }
}

fn target(customer: &str, id: &str, tags: &[&str]) -> TargetInfo {
    TargetInfo {
        customer: cid(customer),
        id: id.parse().unwrap(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        port: 7070,
        protocol: "http".to_owned(),
    }
}

fn ctx(now: &str, minutes: u32) -> RequestContext {
    RequestContext {
        now: now.parse().unwrap(),
        minutes,
        source_ip: "10.1.2.3".parse().unwrap(),
        ticket: None,
        mfa: false,
    }
}

fn demo() -> CustomerPolicy {
    CustomerPolicy::parse(
        cid("acme"),
        "Europe/Berlin",
        "policies/acme.cedar",
        DEMO_POLICY,
    )
    .unwrap()
}

#[test]
fn is_send_sync_and_cheap_to_share() {
    fn check<T: Send + Sync + 'static>() {}
    check::<CustomerPolicy>();
    check::<std::sync::Arc<CustomerPolicy>>();
}

#[test]
fn demo_policy_lets_the_demo_technician_connect_at_any_hour() {
    let acme = demo();
    assert_eq!(
        acme.policy_ids(),
        ["support-any-time", "acme-approvers", "no-weekend-prod"]
    );
    let web = target("acme", "web", &["demo"]);
    let start: jiff::Timestamp = "2025-01-13T00:00:00Z".parse().unwrap(); // a Monday
    for hour in 0..24 * 7 {
        let now = start + jiff::SignedDuration::from_hours(hour);
        let c = RequestContext {
            now,
            ..ctx("2025-01-13T00:00:00Z", 480)
        };
        for action in [Action::Connect, Action::Request] {
            let d = acme.decide(action, &alice(&["support"]), &web, &c);
            assert!(d.allowed, "{action} at {now}: {d:?}");
            assert_eq!(d.policy_ids, ["support-any-time"]);
            assert_eq!(d.reason, "permitted by policy `support-any-time`");
            assert!(d.errors.is_empty());
        }
    }
    assert_eq!(acme.annotation("support-any-time", "approvals"), Some("1"));
    assert_eq!(
        acme.annotation("support-any-time", "max_minutes"),
        Some("480")
    );
    assert_eq!(acme.annotation("support-any-time", "nope"), None);
    assert_eq!(acme.annotation("nope", "approvals"), None);
}

#[test]
fn demo_policy_rules() {
    let acme = demo();
    let web = target("acme", "web", &["demo"]);
    let prod = target("acme", "db01", &["prod"]);
    let saturday = ctx("2025-01-18T10:00:00Z", 60);
    let monday = ctx("2025-01-20T10:00:00Z", 60);

    let d = acme.decide(Action::Connect, &alice(&["dev"]), &web, &monday);
    assert!(!d.allowed);
    assert_eq!(d.reason, "no policy permits this request");

    let d = acme.decide(
        Action::Connect,
        &alice(&["support"]),
        &web,
        &ctx("2025-01-20T10:00:00Z", 481),
    );
    assert!(!d.allowed, "minutes cap");

    let d = acme.decide(Action::Connect, &alice(&["support"]), &prod, &saturday);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["no-weekend-prod"]);
    assert_eq!(d.reason, "forbidden by policy `no-weekend-prod`");
    assert!(
        acme.decide(Action::Request, &alice(&["support"]), &prod, &saturday)
            .allowed
    );
    assert!(
        acme.decide(Action::Connect, &alice(&["support"]), &prod, &monday)
            .allowed
    );

    let d = acme.decide(Action::Approve, &approver("acme", "bob"), &prod, &saturday);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["acme-approvers"]);

    let d = acme.decide(Action::Approve, &alice(&["support"]), &web, &monday);
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "only approvers can approve")
    );
    let d = acme.decide(Action::Connect, &approver("acme", "bob"), &web, &monday);
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "only technicians can connect or request")
    );
}

#[test]
fn tenant_wall_holds_whatever_the_policy_says() {
    let acme = CustomerPolicy::parse(
        cid("acme"),
        "UTC",
        "acme.cedar",
        "permit(principal, action, resource);",
    )
    .unwrap();
    let c = ctx("2025-01-20T10:00:00Z", 60);
    let own = target("acme", "web", &[]);
    let other = target("globex", "web", &[]);
    assert!(acme.decide(Action::Connect, &alice(&[]), &own, &c).allowed);
    assert!(
        acme.decide(Action::Approve, &approver("acme", "bob"), &own, &c)
            .allowed
    );

    for action in [Action::Connect, Action::Request] {
        let d = acme.decide(action, &alice(&[]), &other, &c);
        assert!(!d.allowed);
        assert_eq!(d.reason, "target belongs to another customer");
        assert!(d.policy_ids.is_empty());
    }
    let d = acme.decide(Action::Approve, &approver("acme", "bob"), &other, &c);
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "target belongs to another customer")
    );
    let d = acme.decide(Action::Approve, &approver("globex", "eve"), &own, &c);
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "approver belongs to another customer")
    );
}

#[test]
fn subject_must_match_its_spiffe_id() {
    let acme = CustomerPolicy::parse(
        cid("acme"),
        "UTC",
        "acme.cedar",
        "permit(principal, action, resource);",
    )
    .unwrap();
    let c = ctx("2025-01-20T10:00:00Z", 60);
    let own = target("acme", "web", &[]);
    let Subject::Technician { id, groups, .. } = alice(&[]) else {
        unreachable!()
    };
    let mallory = Subject::Technician {
        id,
        provider: "northwind".parse().unwrap(),
        name: "mallory".parse().unwrap(),
        groups,
    };
    let d = acme.decide(Action::Connect, &mallory, &own, &c);
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "subject does not match its spiffe id")
    );
    let forged = Subject::Approver {
        id: "spiffe://sallyport.local/approver/globex/bob"
            .parse()
            .unwrap(),
        customer: cid("acme"),
        name: "bob".parse().unwrap(),
    };
    assert!(!acme.decide(Action::Approve, &forged, &own, &c).allowed);
}

#[test]
fn empty_policy_set_denies_everything() {
    for src in ["", "// nothing yet\n"] {
        let p = CustomerPolicy::parse(cid("acme"), "UTC", "acme.cedar", src).unwrap();
        assert!(p.policy_ids().is_empty());
        let d = p.decide(
            Action::Connect,
            &alice(&["support"]),
            &target("acme", "web", &[]),
            &ctx("2025-01-20T10:00:00Z", 1),
        );
        assert_eq!(
            (d.allowed, d.reason.as_str()),
            (false, "no policy permits this request")
        );
    }
}

#[test]
fn parse_errors_name_file_line_and_column() {
    let src = "@id(\"a\")\npermit(principal, action, resource)\nwhen { context.minutes <= };\n";
    let err = CustomerPolicy::parse(cid("acme"), "UTC", "policies/acme.cedar", src).unwrap_err();
    let PolicyError::Parse(problems) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (problems[0].at.line, problems[0].at.column),
        (3, 27),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("policies/acme.cedar:3:27: unexpected token"),
        "{msg}"
    );
}

#[test]
fn validation_errors_name_file_line_and_column() {
    let src =
        "@id(\"bad\")\npermit(principal, action, resource) when { resource.colour == \"red\" };\n";
    let err = CustomerPolicy::parse(cid("acme"), "UTC", "policies/acme.cedar", src).unwrap_err();
    let PolicyError::Validation(problems) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(problems[0].at.line, 2, "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with("policies/acme.cedar:2:44: "), "{msg}");
    assert!(msg.contains("colour"), "{msg}");

    // Unknown entity types and type errors are caught too (strict mode).
    for (src, line, what) in [
        (
            "permit(principal in Sallyport::Team::\"x\", action, resource);",
            1,
            "Sallyport::Team",
        ),
        (
            "\n\npermit(principal, action, resource) when { context.hour == \"9\" };",
            3,
            "type",
        ),
        (
            "permit(principal, action, resource) when { principal.provider == 1 || context.weekday };",
            1,
            "",
        ),
    ] {
        let err = CustomerPolicy::parse(cid("acme"), "UTC", "p.cedar", src).unwrap_err();
        assert!(matches!(err, PolicyError::Validation(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("p.cedar:{line}:")), "{msg}");
        assert!(msg.contains(what), "{msg}");
    }
}

#[test]
fn policy_ids_come_from_annotations_or_defaults() {
    let src = "permit(principal, action, resource);\n@id(\"named\") permit(principal, action, resource);\npermit(principal, action, resource);";
    let p = CustomerPolicy::parse(cid("acme"), "UTC", "acme.cedar", src).unwrap();
    assert_eq!(p.policy_ids(), ["policy0", "named", "policy2"]);
    let d = p.decide(
        Action::Connect,
        &alice(&[]),
        &target("acme", "web", &[]),
        &ctx("2025-01-20T10:00:00Z", 1),
    );
    assert_eq!(d.policy_ids, ["named", "policy0", "policy2"]);
    assert_eq!(
        d.reason,
        "permitted by policies `named`, `policy0`, `policy2`"
    );
}

#[test]
fn duplicate_and_empty_ids_are_errors() {
    let src = "@id(\"a\") permit(principal, action, resource);\n// @id(\"a\")\n  @id(\"a\") forbid(principal, action, resource);";
    let err = CustomerPolicy::parse(cid("acme"), "UTC", "acme.cedar", src).unwrap_err();
    assert_eq!(
        err.to_string(),
        "acme.cedar:3:3: duplicate policy id `a`; give each policy its own `@id`"
    );
    let src = "@id(\"policy1\") permit(principal, action, resource);\npermit(principal, action, resource);";
    let err = CustomerPolicy::parse(cid("acme"), "UTC", "acme.cedar", src).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("acme.cedar:1:1: duplicate policy id `policy1`"),
        "{err}"
    );
    let err = CustomerPolicy::parse(
        cid("acme"),
        "UTC",
        "acme.cedar",
        "\n @id(\"\") permit(principal, action, resource);",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("acme.cedar:2:2: empty policy id"),
        "{err}"
    );
}

#[test]
fn templates_are_rejected() {
    let src =
        "permit(principal, action, resource);\npermit(principal == ?principal, action, resource);";
    let err = CustomerPolicy::parse(cid("acme"), "UTC", "acme.cedar", src).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("acme.cedar:2:21: policy templates"),
        "{err}"
    );
}

#[test]
fn unknown_time_zone_is_named() {
    let err = CustomerPolicy::parse(cid("acme"), "Mars/Olympus", "acme.cedar", "").unwrap_err();
    assert!(matches!(err, PolicyError::TimeZone { .. }));
    assert!(err.to_string().contains("`Mars/Olympus`"), "{err}");
    assert!(err.to_string().contains("`acme`"), "{err}");
}

#[test]
fn evaluation_errors_deny_even_when_a_permit_matches() {
    let src = "@id(\"ok\") permit(principal, action, resource);\n@id(\"overflow\") forbid(principal, action, resource) when { context.minutes * 9223372036854775807 > 0 };";
    let p = CustomerPolicy::parse(cid("acme"), "UTC", "acme.cedar", src).unwrap();
    let own = target("acme", "web", &[]);
    let d = p.decide(
        Action::Connect,
        &alice(&[]),
        &own,
        &ctx("2025-01-20T10:00:00Z", 0),
    );
    assert!(d.allowed, "no overflow at 0 minutes: {d:?}");
    let d = p.decide(
        Action::Connect,
        &alice(&[]),
        &own,
        &ctx("2025-01-20T10:00:00Z", 2),
    );
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["overflow"]);
    assert_eq!(d.reason, "denied: evaluation failed in policy `overflow`");
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].contains("overflow"), "{:?}", d.errors);
}

#[test]
fn context_uses_the_customer_time_zone() {
    let src = "@id(\"evening\") permit(principal, action, resource) when { context.hour == 18 && context.weekday == \"Wed\" };";
    let berlin = CustomerPolicy::parse(cid("acme"), "Europe/Berlin", "acme.cedar", src).unwrap();
    let utc = CustomerPolicy::parse(cid("acme"), "UTC", "acme.cedar", src).unwrap();
    let c = ctx("2025-01-15T17:30:00Z", 1); // Wednesday, 18:30 in Berlin (CET)
    let own = target("acme", "web", &[]);
    assert!(
        berlin
            .decide(Action::Connect, &alice(&[]), &own, &c)
            .allowed
    );
    assert!(!utc.decide(Action::Connect, &alice(&[]), &own, &c).allowed);
    assert_eq!(berlin.time_zone().iana_name(), Some("Europe/Berlin"));
}

/// Policies with every kind of principal and action scope, for the equivalence test below.
const MIXED: &str = r#"
@id("support") permit (principal in Sallyport::Group::"support", action in [Sallyport::Action::"connect", Sallyport::Action::"request"], resource)
when { context.hour >= 8 && context.hour < 18 && context.source_ip.isInRange(ip("10.0.0.0/8")) };
@id("oncall") permit (principal is Sallyport::Technician in Sallyport::Group::"oncall", action, resource in Sallyport::Customer::"acme")
when { context.minutes <= 60 };
@id("alice") permit (principal == Sallyport::Technician::"northwind/alice", action == Sallyport::Action::"request", resource);
@id("techs-request") permit (principal is Sallyport::Technician, action == Sallyport::Action::"request", resource)
when { resource.tags.contains("lab") };
@id("approvers") permit (principal is Sallyport::Approver in Sallyport::Customer::"acme", action == Sallyport::Action::"approve", resource);
@id("prod-ticket") forbid (principal, action, resource) when { resource.tags.contains("prod") } unless { context.ticket like "CHG-*" };
@id("weekend") forbid (principal, action == Sallyport::Action::"connect", resource) when { ["Sat", "Sun"].contains(context.weekday) };
@id("contractors") forbid (principal in Sallyport::Group::"contractors", action, resource) when { resource.tags.contains("db") };
@id("dev-overflow") permit (principal in Sallyport::Group::"dev", action, resource) when { context.minutes * 9223372036854775807 > 0 };
@id("no-telnet") forbid (principal, action, resource) when { resource.port == 23 };
"#;

/// What Cedar decides over the whole policy set with entities built by its public, schema-checked
/// constructors, with our fail-closed rule for errors.
fn reference(
    p: &CustomerPolicy,
    action: Action,
    subject: &Subject,
    target: &TargetInfo,
    c: &RequestContext,
) -> (bool, Vec<String>) {
    use cedar_policy::{Context, Entities, Entity, RestrictedExpression as Rx};
    let schema = crate::cedar_schema().unwrap();
    let s = |v: &str| Rx::new_string(v.to_owned());
    let acme: EntityUid = r#"Sallyport::Customer::"acme""#.parse().unwrap();
    let principal = match subject {
        Subject::Technician {
            provider,
            name,
            groups,
            ..
        } => Entity::new(
            format!(r#"Sallyport::Technician::"{provider}/{name}""#)
                .parse()
                .unwrap(),
            HashMap::from([
                ("provider".to_owned(), s(provider.as_str())),
                ("name".to_owned(), s(name.as_str())),
            ]),
            groups
                .iter()
                .map(|g| format!(r#"Sallyport::Group::"{g}""#).parse().unwrap())
                .collect(),
        ),
        Subject::Approver { name, .. } => Entity::new(
            format!(r#"Sallyport::Approver::"{name}""#).parse().unwrap(),
            HashMap::from([("name".to_owned(), s(name.as_str()))]),
            HashSet::from([acme.clone()]),
        ),
    }
    .unwrap();
    let resource = Entity::new(
        format!(r#"Sallyport::Target::"{}""#, target.id)
            .parse()
            .unwrap(),
        HashMap::from([
            (
                "tags".to_owned(),
                Rx::new_set(target.tags.iter().map(|t| s(t))),
            ),
            ("port".to_owned(), Rx::new_long(target.port.into())),
            ("protocol".to_owned(), s(&target.protocol)),
        ]),
        HashSet::from([acme.clone()]),
    )
    .unwrap();
    let local = p.tz.to_datetime(c.now);
    let weekday = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        [usize::from(local.weekday().to_monday_zero_offset().unsigned_abs())];
    let context = Context::from_pairs([
        ("hour".to_owned(), Rx::new_long(local.hour().into())),
        ("weekday".to_owned(), s(weekday)),
        ("minutes".to_owned(), Rx::new_long(c.minutes.into())),
        (
            "source_ip".to_owned(),
            Rx::new_ip(c.source_ip.to_canonical().to_string()),
        ),
        ("ticket".to_owned(), s(c.ticket.as_deref().unwrap_or(""))),
        ("mfa".to_owned(), Rx::new_bool(c.mfa)),
    ])
    .unwrap();
    let request = cedar_policy::Request::new(
        principal.uid(),
        format!(r#"Sallyport::Action::"{action}""#).parse().unwrap(),
        resource.uid(),
        context,
        Some(schema),
    )
    .unwrap();
    let entities = Entities::from_entities(
        [
            principal,
            resource,
            Entity::new_no_attrs(acme, HashSet::new()),
        ],
        Some(schema),
    )
    .unwrap();
    let response = cedar_policy::Authorizer::new().is_authorized(&request, &p.set, &entities);
    let d = response.diagnostics();
    let mut failed: Vec<String> = d
        .errors()
        .map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            e.policy_id().to_string()
        })
        .collect();
    if !failed.is_empty() {
        failed.sort();
        failed.dedup();
        return (false, failed);
    }
    let mut ids: Vec<String> = d.reason().map(ToString::to_string).collect();
    ids.sort();
    (response.decision() == cedar_policy::Decision::Allow, ids)
}

#[test]
fn fast_path_and_slicing_agree_with_plain_cedar() {
    let p = CustomerPolicy::parse(cid("acme"), "Europe/Berlin", "mixed.cedar", MIXED).unwrap();
    let group_sets: &[&[&str]] = &[
        &[],
        &["support"],
        &["oncall"],
        &["support", "oncall"],
        &["support", "support"],
        &["contractors", "support"],
        &["dev"],
        &["dev", "oncall", "contractors"],
        &["unknown"],
    ];
    let targets = [
        target("acme", "web", &[]),
        target("acme", "db01", &["prod", "db"]),
        target("acme", "lab1", &["lab"]),
        TargetInfo {
            port: 23,
            ..target("acme", "old", &["db"])
        },
    ];
    let mut subjects: Vec<Subject> = group_sets.iter().map(|g| alice(g)).collect();
    subjects.push(Subject::Technician {
        id: "spiffe://sallyport.local/technician/southwind/bob"
            .parse()
            .unwrap(),
        provider: "southwind".parse().unwrap(),
        name: "bob".parse().unwrap(),
        groups: vec!["support".parse().unwrap()],
    });
    subjects.push(approver("acme", "carol"));
    let mut contexts = Vec::new();
    for now in [
        "2025-01-15T10:00:00Z",
        "2025-01-15T17:30:00Z",
        "2025-01-18T10:00:00Z",
    ] {
        for minutes in [0, 30, 90] {
            for (ip, ticket) in [
                ("10.1.2.3", None),
                ("192.0.2.1", Some("CHG-9")),
                ("::ffff:10.0.0.9", Some("INC-1")),
            ] {
                contexts.push(RequestContext {
                    now: now.parse().unwrap(),
                    minutes,
                    source_ip: ip.parse().unwrap(),
                    ticket: ticket.map(str::to_owned),
                    mfa: false,
                });
            }
        }
    }
    let mut checked = 0;
    let mut outcomes = HashSet::new();
    for subject in &subjects {
        for action in [Action::Connect, Action::Request, Action::Approve] {
            let kind_fits = matches!(
                (action, subject),
                (Action::Approve, Subject::Approver { .. })
                    | (
                        Action::Connect | Action::Request,
                        Subject::Technician { .. }
                    )
            );
            if !kind_fits {
                continue;
            }
            for t in &targets {
                for c in &contexts {
                    let d = p.decide(action, subject, t, c);
                    let want = reference(&p, action, subject, t, c);
                    assert_eq!(
                        (d.allowed, d.policy_ids.clone()),
                        want,
                        "{action} {subject:?} {t:?} {c:?}: {}",
                        d.reason
                    );
                    outcomes.insert(want);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 2000, "{checked}");
    // The grid reaches allows, forbids and errors from several policies.
    assert!(outcomes.len() >= 10, "{outcomes:?}");
}
