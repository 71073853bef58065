//! What a caller may ask for: per customer, the targets a technician could file a request for now,
//! decided by each customer's own Cedar policy (action `request`, pure: no I/O) with the terms its
//! permitting policies set (`@max_minutes`, `@approvals`). Approvers and auditors see their
//! customer's targets, admins every target. A filing is still decided again when it is made (with
//! its minutes and ticket), so this is a guide, never a promise.

use std::net::IpAddr;

use sallyport_certs::identity::PeerIdentity;
use sallyport_config::{Config, Customer, Target};
use sallyport_ids::{CustomerId, Principal, TargetId};
use sallyport_policy::{Action, RequestContext, Subject, TargetInfo};

use crate::scope::Scope;
use crate::terms;

/// One target the caller may ask for (or, for approvers, auditors and admins, may see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requestable {
    /// Its customer.
    pub customer: CustomerId,
    /// The target.
    pub target: TargetId,
    /// The port a CONNECT names.
    pub port: u16,
    /// Its protocol label.
    pub protocol: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The longest window the permitting policies hand out, when the caller is a technician.
    pub max_minutes: Option<u32>,
    /// Approvals a filing would need, when the caller is a technician.
    pub approvals: Option<u32>,
    /// The policies that would permit the filing.
    pub policy_ids: Vec<String>,
}

fn info(customer: &Customer, target: &Target) -> TargetInfo {
    TargetInfo {
        customer: customer.id.clone(),
        id: target.id.clone(),
        tags: target.tags.clone(),
        port: target.port,
        protocol: target.protocol.clone(),
    }
}

fn listed(customer: &Customer, target: &Target) -> Requestable {
    Requestable {
        customer: customer.id.clone(),
        target: target.id.clone(),
        port: target.port,
        protocol: target.protocol.clone(),
        tags: target.tags.clone(),
        max_minutes: None,
        approvals: None,
        policy_ids: Vec::new(),
    }
}

/// The targets of `config` that `peer` (connecting from `ip`) may ask for at `now`, customer by
/// customer in configuration order. For a technician, a target is listed when its customer's policy
/// permits `request` for a one-minute window without a ticket; its `max_minutes` is the longest
/// window the permitting policies allow (at most `grants.max_minutes`).
pub fn requestable(
    config: &Config,
    peer: &PeerIdentity,
    ip: IpAddr,
    now: jiff::Timestamp,
) -> Vec<Requestable> {
    let scope = Scope::of(&peer.id);
    let Principal::Technician { provider, name } = peer.id.principal() else {
        return config
            .customers
            .iter()
            .filter(|c| match &scope {
                Scope::Customer(id) => *id == c.id,
                _ => true,
            })
            .flat_map(|c| c.targets.iter().map(move |t| listed(c, t)))
            .collect();
    };
    let subject = Subject::Technician {
        id: peer.id.clone(),
        provider: provider.clone(),
        name: name.clone(),
        groups: peer.groups.clone(),
    };
    let ctx = RequestContext {
        now,
        minutes: 1,
        source_ip: ip,
        ticket: None,
        mfa: peer.mfa(),
    };
    let max = config.grants.max_minutes;
    let mut out = Vec::new();
    for c in &config.customers {
        for t in &c.targets {
            let d = c
                .policy
                .decide(Action::Request, &subject, &info(c, t), &ctx);
            if !d.allowed {
                continue;
            }
            let terms = terms::terms(&c.policy, &d, max);
            out.push(Requestable {
                max_minutes: Some(terms.max_minutes),
                approvals: Some(terms.approvals),
                policy_ids: d.policy_ids,
                ..listed(c, t)
            });
        }
    }
    out
}

/// The JSON of one listed target, as `GET /v1/targets` answers it.
pub fn view(r: &Requestable) -> serde_json::Value {
    serde_json::json!({
        "customer": r.customer,
        "target": r.target,
        "port": r.port,
        "protocol": r.protocol,
        "tags": r.tags,
        "max_minutes": r.max_minutes,
        "approvals_required": r.approvals,
        "policy_ids": r.policy_ids,
    })
}
