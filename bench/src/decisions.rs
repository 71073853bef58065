//! The decision path of a tunnel without the network: grant verification (signature, claims,
//! certificate binding; both a grant's first use and a remembered grant, see
//! `sallyport_certs::grant`) and the customer's Cedar `connect` decision, with 1,000 customers loaded and
//! 1, 20 or 100 policies each, the request built with the policy crate's typed API as the broker
//! builds it. Shared by the criterion benches and `sallyport-bench decisions` (per-call p50/p99).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use sallyport_certs::grant::{GrantSigner, GrantSpec, GrantVerifier};
use sallyport_ids::{CustomerId, GroupName, PersonName, Principal, ProviderId, SpiffeId};
use sallyport_policy::{Action, CustomerPolicy, RequestContext, Subject, TargetInfo};
use serde_json::{Value, json};

use crate::stats::quantile;

/// A customer's policy file with `n` policies: the permit that lets `support` connect, then a mix
/// of group permits (in other groups' slices), and general forbids and support permits with
/// conditions (evaluated on every decision for a `support` technician).
pub fn policy_text(customer: &str, n: usize) -> String {
    let mut p = format!(
        "@id(\"support\")\npermit(principal in Sallyport::Group::\"support\", action == Sallyport::Action::\"connect\", resource in Sallyport::Customer::\"{customer}\")\nwhen {{ context.minutes <= 480 }};\n"
    );
    for i in 1..n {
        let rule = match i % 4 {
            1 => format!(
                "permit(principal in Sallyport::Group::\"team{i}\", action in [Sallyport::Action::\"connect\", Sallyport::Action::\"request\"], resource in Sallyport::Customer::\"{customer}\")\nwhen {{ context.hour >= 8 && context.hour < 18 }};"
            ),
            2 => format!(
                "forbid(principal, action == Sallyport::Action::\"connect\", resource)\nwhen {{ resource.tags.contains(\"frozen{i}\") }};"
            ),
            3 => format!(
                "permit(principal in Sallyport::Group::\"support\", action == Sallyport::Action::\"connect\", resource)\nwhen {{ resource.tags.contains(\"db{i}\") && context.source_ip.isInRange(ip(\"10.{}.0.0/16\")) }};",
                i % 256
            ),
            _ => format!(
                "forbid(principal, action == Sallyport::Action::\"connect\", resource)\nwhen {{ [\"Sat\", \"Sun\"].contains(context.weekday) && resource.tags.contains(\"prod{i}\") }};"
            ),
        };
        p.push_str(&format!("@id(\"rule-{i}\")\n{rule}\n"));
    }
    p
}

/// One technician, every customer's policies, targets and grants.
pub struct Fixture {
    customers: Vec<(CustomerPolicy, TargetInfo, String)>,
    /// The broker's verifier, which remembers grants it has verified.
    verifier: GrantVerifier,
    /// One that remembers nothing: every call is a grant's first use (signature checked).
    first_use: GrantVerifier,
    id: SpiffeId,
    provider: ProviderId,
    name: PersonName,
    groups: Vec<GroupName>,
    thumbprint: [u8; 32],
    /// Seconds taken to parse and validate every policy.
    pub load_secs: f64,
}

impl Fixture {
    /// `customers` customers with `policies` policies each, and a grant per customer.
    pub fn new(customers: usize, policies: usize) -> anyhow::Result<Self> {
        let signer = GrantSigner::from_pkcs8_pem(
            &sallyport_certs::grant::generate_signing_key_pem()?,
            "sallyport",
            "sallyport",
        )?;
        let verifier = GrantVerifier::new("sallyport", "sallyport", Duration::from_secs(30))
            .trust(signer.public_key());
        let first_use = GrantVerifier::new("sallyport", "sallyport", Duration::from_secs(30))
            .trust(signer.public_key())
            .remember(0);
        let provider: ProviderId = "northwind".parse()?;
        let name: PersonName = "alice".parse()?;
        let id = SpiffeId::new(
            "sallyport.local".parse()?,
            Principal::Technician {
                provider: provider.clone(),
                name: name.clone(),
            },
        );
        let thumbprint = [7u8; 32];
        let started = Instant::now();
        let mut all = Vec::with_capacity(customers);
        for c in 0..customers {
            let cname = format!("cust{c}");
            let customer: CustomerId = cname.parse()?;
            let policy = CustomerPolicy::parse(
                customer.clone(),
                "Europe/Berlin",
                "bench.cedar",
                &policy_text(&cname, policies),
            )
            .with_context(|| format!("policy of {cname}"))?;
            let target = TargetInfo {
                customer: customer.clone(),
                id: "db01".parse()?,
                tags: vec!["prod".into(), "postgres".into()],
                port: 5432,
                protocol: "tcp".into(),
            };
            let now = SystemTime::now();
            let (token, _) = signer.mint(&GrantSpec {
                sub: id.clone(),
                customer,
                target: target.id.clone(),
                port: 5432,
                gid: format!("g-bench-{c}").parse()?,
                not_before: now - Duration::from_secs(60),
                expires_at: now + Duration::from_secs(8 * 3600),
                cert_thumbprint: thumbprint,
            })?;
            all.push((policy, target, token));
        }
        Ok(Self {
            customers: all,
            verifier,
            first_use,
            id,
            provider,
            name,
            groups: vec!["support".parse()?, "oncall".parse()?],
            thumbprint,
            load_secs: started.elapsed().as_secs_f64(),
        })
    }

    /// Verifies customer `i`'s grant and its binding, as the broker does (a grant used before is
    /// remembered: its window is checked, not its signature).
    pub fn verify(&self, i: usize) -> bool {
        self.verify_with(&self.verifier, i)
    }

    /// [`Self::verify`] as at a grant's first use: the signature is checked every time.
    pub fn verify_first_use(&self, i: usize) -> bool {
        self.verify_with(&self.first_use, i)
    }

    fn verify_with(&self, verifier: &GrantVerifier, i: usize) -> bool {
        let (_, _, token) = &self.customers[i % self.customers.len()];
        match verifier.verify(token) {
            Ok(claims) => claims.sub == self.id && claims.is_bound_to(&self.thumbprint),
            Err(_) => false,
        }
    }

    /// Customer `i`'s `connect` decision, the request built as the broker builds it.
    pub fn decide(&self, i: usize) -> bool {
        let (policy, target, _) = &self.customers[i % self.customers.len()];
        let subject = Subject::Technician {
            id: self.id.clone(),
            provider: self.provider.clone(),
            name: self.name.clone(),
            groups: self.groups.clone(),
        };
        let info = TargetInfo {
            customer: target.customer.clone(),
            id: target.id.clone(),
            tags: target.tags.clone(),
            port: target.port,
            protocol: target.protocol.clone(),
        };
        let ctx = RequestContext {
            now: jiff::Timestamp::now(),
            minutes: 60,
            source_ip: std::net::IpAddr::from([10, 3, 0, 9]),
            ticket: None,
            mfa: false,
        };
        policy
            .decide(Action::Connect, &subject, &info, &ctx)
            .allowed
    }
}

/// Times each of `n` calls of `f(i)`; returns the sorted durations in ns. Fails if any call says no.
fn time(n: usize, mut f: impl FnMut(usize) -> bool) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let ok = f(i);
        out.push(t.elapsed().as_nanos() as u64);
        anyhow::ensure!(ok, "call {i} was refused");
    }
    out.sort_unstable();
    Ok(out)
}

/// Per-call p50/p99 of grant verification (remembered, and at first use), the policy decision, and
/// both, for `policies` policies per customer over `customers` customers (round robin, `iterations`
/// calls each).
pub fn percentiles(customers: usize, policies: usize, iterations: usize) -> anyhow::Result<Value> {
    let f = Fixture::new(customers, policies)?;
    // Warm caches and allocators.
    time(iterations.min(2000), |i| f.verify(i) && f.decide(i))?;
    let grant = time(iterations, |i| f.verify(i))?;
    let grant_first = time(iterations, |i| f.verify_first_use(i))?;
    let policy = time(iterations, |i| f.decide(i))?;
    let both = time(iterations, |i| f.verify(i) && f.decide(i))?;
    let both_first = time(iterations, |i| f.verify_first_use(i) && f.decide(i))?;
    let us = |s: &[u64], q| quantile(s, q) as f64 / 1e3;
    Ok(json!({
        "customers": customers,
        "policies": policies,
        "iterations": iterations,
        "load_secs": f.load_secs,
        "grant_p50_us": us(&grant, 0.5), "grant_p99_us": us(&grant, 0.99),
        "grant_first_p50_us": us(&grant_first, 0.5), "grant_first_p99_us": us(&grant_first, 0.99),
        "policy_p50_us": us(&policy, 0.5), "policy_p99_us": us(&policy, 0.99),
        "both_p50_us": us(&both, 0.5), "both_p99_us": us(&both, 0.99),
        "both_first_p50_us": us(&both_first, 0.5), "both_first_p99_us": us(&both_first, 0.99),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_file_validates_and_allows_the_technician() {
        for n in [1, 20] {
            let f = Fixture::new(3, n).unwrap();
            assert!(f.verify(1));
            assert!(f.decide(2));
        }
    }
}
