//! The policy sets in force, on the trail: each customer's chain gets a `policy_loaded` record
//! naming the policy file, its SHA-256 and its policy ids whenever the broker loads it, before any
//! decision is taken under it. Every decision record carries the same digest, so an auditor can
//! tell which policy text decided (and `sha256sum` of a kept copy of the file shows it is that one).

use sallyport_audit::{AuditEvent, EventKind, Outcome};
use sallyport_config::{Config, Customer};

use crate::{Context, WorkflowError};

/// Records the policy set of every customer in `config`. A chain that cannot take its record is
/// logged and left: every decision under that policy set is recorded first, with the same digest,
/// so none is taken while the chain fails. Returns how many records were written.
pub async fn record_loaded(cx: &Context, config: &Config) -> usize {
    let mut written = 0;
    for c in &config.customers {
        match record_one(cx, c, "broker").await {
            Ok(()) => written += 1,
            Err(e) => {
                tracing::error!(customer = %c.id, error = %e, "could not record the policy set in force");
            }
        }
    }
    written
}

/// Records the policy set of customer `c`, loaded for `actor` (`broker` at start, the reload's
/// trigger on a reload), and waits until it is durable.
pub async fn record_one(cx: &Context, c: &Customer, actor: &str) -> Result<(), WorkflowError> {
    let ids = c.policy.policy_ids();
    let mut ev = AuditEvent::new(
        EventKind::PolicyLoaded,
        Outcome::Success,
        format!(
            "policy set loaded from {} ({} polic{})",
            c.policy_path.display(),
            ids.len(),
            if ids.len() == 1 { "y" } else { "ies" }
        ),
    );
    ev.customer = Some(c.id.clone());
    ev.actor = Some(actor.to_owned());
    ev.policy_ids = ids;
    ev.policy_digest = Some(c.policy.digest().to_owned());
    cx.record(ev).await
}
