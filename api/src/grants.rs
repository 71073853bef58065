//! `POST /v1/grants/{id}/revoke` `{reason}`: that customer's approvers, the grant's technician, or an
//! admin. Every live tunnel of the grant is cut at once and the token is refused afterwards (the
//! tunnel path checks the store). Anyone else gets 404; the customer's auditors get 403.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sallyport_ids::Principal;
use serde::Deserialize;

use super::{audit, body, error, now, ok, rfc3339, store_error, text_field, who};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::broker::{Body, Broker, Conn};
use crate::store::StoreError;
use crate::webhook::Notification;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: String,
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
    let reason = match text_field("reason", &reason, 1000, "say why the access ends") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
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
        Err(e) => return store_error(e),
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
    let at = now();
    let (gid, by, why) = (id.to_owned(), actor.clone(), reason.clone());
    let (revoked, changed) = match b.with_store(move |s| s.revoke(&gid, &by, &why, at)).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let (at, by, why) = revoked
        .revoked
        .clone()
        .unwrap_or((at, actor.clone(), reason.clone()));
    // The revocation is on the trail before the tunnels it cuts record their closes.
    let mut recorded = Ok(());
    if changed {
        let mut ev = AuditEvent::new(
            EventKind::GrantRevoked,
            Outcome::Success,
            format!("revoked: {why}"),
        );
        ev.customer = Some(grant.customer.clone());
        ev.actor = Some(actor.clone());
        ev.target = Some(grant.target.clone());
        ev.subject = Some(grant.technician.clone());
        ev.grant_id = Some(grant.id.clone());
        ev.request_id = grant.request_id.clone();
        ev.source_ip = Some(conn.ip);
        recorded = audit(b, ev).await;
    }
    // Cut every live tunnel of the grant, whether or not the record could be written: ending access
    // is always safe. Each tunnel records its own close.
    let cut = b.sessions.end_grant(id, "grant revoked");
    if let Err(resp) = recorded {
        tracing::error!("a revocation could not be audited (the grant is revoked regardless)");
        return resp;
    }
    if changed {
        b.notifier.notify(Notification {
            customer: grant.customer.clone(),
            event: "grant_revoked".into(),
            text: format!(
                "{} revoked {}'s access to {}/{} (grant {}): {why}",
                who(&actor),
                who(&grant.technician),
                grant.customer,
                grant.target,
                grant.id
            ),
            data: serde_json::json!({
                "grant_id": grant.id,
                "request_id": grant.request_id,
                "customer": grant.customer,
                "target": grant.target,
                "technician": grant.technician,
                "revoked_by": actor,
                "reason": why,
                "sessions_closed": cut,
            }),
        });
    }
    tracing::info!(grant = %grant.id, customer = %grant.customer, sessions_closed = cut, "grant revoked");
    ok(
        StatusCode::OK,
        serde_json::json!({
            "grant_id": grant.id,
            "revoked_at": rfc3339(at),
            "revoked_by": by,
            "reason": why,
            "sessions_closed": cut,
        }),
    )
}
