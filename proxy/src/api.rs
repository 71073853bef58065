//! The HTTPS JSON API under `/v1`, on the broker's mTLS listener. The caller's role and scope come
//! from its client certificate and every route checks them. Errors are `{"error": {"code", "message"}}`.
//!
//! Routes so far: `POST /v1/grants/{id}/revoke` `{reason}`: that customer's approvers, the grant's
//! technician, or an admin. Every live tunnel of the grant is cut and the token is refused afterwards.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sallyport_ids::Principal;
use serde::Deserialize;

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::broker::{Body, Broker, Conn, json};
use crate::store::StoreError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON error answer.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

/// Reads and parses a bounded JSON body; unknown fields are refused.
async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            ));
        }
        Err(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "unreadable request body",
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            &format!("invalid JSON body: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: String,
}

fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `POST /v1/grants/{id}/revoke`.
pub async fn revoke(
    b: &Arc<Broker>,
    conn: &Conn,
    id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let RevokeBody { reason } = match body(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let reason = reason.trim().to_owned();
    if reason.is_empty() || reason.len() > 1000 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_reason",
            "`reason` must be 1 to 1000 characters: say why the access ends",
        );
    }
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no grant `{id}`"),
        )
    };
    let gid = id.to_owned();
    let grant = match b.with_store(move |s| s.grant(&gid)).await {
        Ok(g) => g,
        Err(StoreError::NotFound { .. }) => return not_found(),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store", &e.to_string()),
    };
    // Tenants are walls: another customer's approver or another technician learns nothing.
    let actor = conn.peer.id.to_string();
    match conn.peer.id.principal() {
        Principal::Admin { .. } => {}
        Principal::Technician { .. } if grant.technician == actor => {}
        Principal::Approver { customer, .. } if customer.as_str() == grant.customer => {}
        Principal::Auditor { customer, .. } if customer.as_str() == grant.customer => {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "auditors cannot revoke grants",
            );
        }
        _ => return not_found(),
    }
    let now = jiff::Timestamp::now().as_second();
    let (gid, by, why) = (id.to_owned(), actor.clone(), reason.clone());
    let revoked = match b.with_store(move |s| s.revoke(&gid, &by, &why, now)).await {
        Ok(g) => g,
        Err(StoreError::NotFound { .. }) => return not_found(),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store", &e.to_string()),
    };
    // Cut every live tunnel of the grant now; each records its own close.
    let cut = b
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .map(|list| {
            list.iter().for_each(|(_, t)| t.cancel());
            list.len()
        })
        .unwrap_or(0);
    let (at, by, why) = revoked
        .revoked
        .clone()
        .unwrap_or((now, actor.clone(), reason.clone()));
    let mut ev = AuditEvent::new(
        EventKind::GrantRevoked,
        Outcome::Success,
        format!("revoked: {why}"),
    );
    ev.customer = Some(grant.customer.clone());
    ev.actor = Some(actor);
    ev.target = Some(grant.target.clone());
    ev.subject = Some(grant.technician.clone());
    ev.grant_id = Some(grant.id.clone());
    ev.source_ip = Some(conn.ip);
    if let Err(e) = b.audit.append(ev).await {
        tracing::error!(error = %e, "could not audit a revocation (the grant is revoked regardless)");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the grant is revoked, but the audit trail is not writable",
        );
    }
    tracing::info!(grant = %grant.id, customer = %grant.customer, sessions_closed = cut, "grant revoked");
    json(
        StatusCode::OK,
        serde_json::json!({
            "grant_id": grant.id,
            "revoked_at": rfc3339(at),
            "revoked_by": by,
            "reason": why,
            "sessions_closed": cut,
        })
        .to_string(),
    )
}
