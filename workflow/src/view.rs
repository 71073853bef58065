//! The JSON shape of requests, grants and sessions, as the `/v1` API answers and webhooks carry
//! them. Evidence bundles show the same fields (and the policies and digest behind each decision),
//! derived from the signed records by the audit crate rather than from the store.

use sallyport_ids::time::rfc3339;
use sallyport_store::{GrantRecord, RequestRecord, SessionRecord};

/// A request with its approvals, denial and grant.
pub fn request(r: &RequestRecord) -> serde_json::Value {
    let f = &r.filed;
    serde_json::json!({
        "id": f.id,
        "customer": f.customer,
        "target": f.target,
        "technician": f.technician,
        "minutes": f.minutes,
        "reason": f.reason,
        "ticket": f.ticket,
        "start_at": f.start_at.map(rfc3339),
        "status": r.status.as_str(),
        "approvals_required": f.approvals_required,
        "approvals": r.approvals.iter().map(|a| serde_json::json!({
            "approver": a.approver, "comment": a.comment, "at": rfc3339(a.at),
        })).collect::<Vec<_>>(),
        "denied_by": r.denial.as_ref().map(|d| &d.by),
        "deny_reason": r.denial.as_ref().map(|d| &d.reason),
        "grant_id": r.grant_id,
        "grant": r.grant.as_ref().map(|g| serde_json::json!({
            "id": g.id,
            "not_before": rfc3339(g.not_before),
            "expires_at": rfc3339(g.expires_at),
            "revoked": g.revoked.is_some(),
        })),
        "policy_id": f.policy_id,
        "created_at": rfc3339(f.created_at),
        "expires_at": rfc3339(f.expires_at),
    })
}

/// A grant with its window, revocation and, for a break-glass grant, who minted it and why.
pub fn grant(g: &GrantRecord) -> serde_json::Value {
    serde_json::json!({
        "id": g.id,
        "customer": g.customer,
        "request_id": g.request_id,
        "technician": g.technician,
        "target": g.target,
        "not_before": rfc3339(g.not_before),
        "expires_at": rfc3339(g.expires_at),
        "revoked": g.revoked.as_ref().map(|r| serde_json::json!({
            "at": rfc3339(r.at), "by": r.by, "reason": r.reason,
        })),
        "break_glass": g.break_glass.as_ref().map(|b| serde_json::json!({
            "by": b.by, "reason": b.reason, "ticket": b.ticket,
        })),
    })
}

/// A session with its bytes and duration (`live`: it is open now; `now` ends a live one's duration).
pub fn session(s: &SessionRecord, live: bool, now: i64) -> serde_json::Value {
    let end = s.closed_at.unwrap_or(now);
    serde_json::json!({
        "id": s.id,
        "grant_id": s.grant_id,
        "customer": s.customer,
        "target": s.target,
        "technician": s.technician,
        "source_ip": s.source_ip.to_string(),
        "opened_at": rfc3339(s.opened_at),
        "closed_at": s.closed_at.map(rfc3339),
        "live": live,
        "duration_seconds": (end - s.opened_at).max(0),
        "bytes_up": s.bytes_up,
        "bytes_down": s.bytes_down,
        "close_reason": s.close_reason,
    })
}
