//! The evidence bundle of one access request, assembled from the customer's chain: the run of signed
//! chain records about the request, its grant and every session the grant opened (with the
//! checkpoint that covers them), and the request, grant and session views derived from those records
//! (never from the store, which is not evidence). The store only says which grant and sessions to
//! look for. The audit crate defines the format, derives the views and verifies them.

use std::path::Path;

use sallyport_audit::{AuditError, bundle, checkpoint, segment};
use sallyport_ids::RequestId;
use sallyport_ids::time::{Clock, rfc3339_micros};
use sallyport_store::{SessionFilter, Store};

use crate::WorkflowError;

/// Gathers the bundle of request `request` from `store` and the audit folder `audit`.
pub fn assemble(
    store: &dyn Store,
    audit: &Path,
    request: &str,
    clock: &Clock,
) -> Result<bundle::Bundle, WorkflowError> {
    let rid: RequestId = request
        .parse()
        .map_err(|_| WorkflowError::NotFound(format!("no request `{request}`")))?;
    let rec = store.request(&rid)?;
    let customer = rec.filed.customer.clone();
    let sessions = match &rec.grant_id {
        Some(g) => store.sessions(&SessionFilter {
            customer: Some(customer.clone()),
            grant: Some(g.clone()),
            ..SessionFilter::default()
        })?,
        None => Vec::new(),
    };
    let subject = bundle::Subject {
        request_id: rid.to_string(),
        grant_id: rec.grant_id.as_ref().map(ToString::to_string),
        sessions: sessions.iter().map(|s| s.id.to_string()).collect(),
    };
    let chain = segment::chain_dir(audit, customer.as_str());
    let (relevant, records, checkpoint) =
        bundle::collect(&chain, &subject).map_err(|e| AuditError::Io {
            path: chain.clone(),
            message: e.to_string(),
        })?;
    let about: Vec<serde_json::Value> = records
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["seq"].as_u64().is_some_and(|s| relevant.contains(&s)))
        .collect();
    let views = bundle::derive(&about, rid.as_str())?;
    let key_file = audit.join(checkpoint::KEY_FILE);
    let audit_key: serde_json::Value = std::fs::read_to_string(&key_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| {
            WorkflowError::Trail(AuditError::Checkpoint(format!(
                "no audit key at {}",
                key_file.display()
            )))
        })?;
    Ok(bundle::Bundle {
        format: bundle::FORMAT.into(),
        created_at: rfc3339_micros(clock.now()),
        customer: customer.to_string(),
        request: views.request,
        grant: views.grant,
        sessions: views.sessions,
        relevant,
        records,
        checkpoint,
        audit_key,
    })
}
