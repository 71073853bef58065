//! `GET /v1/sessions[?customer=&technician=&live=true]` (bytes and durations; live sessions with their
//! bytes so far) and `DELETE /v1/sessions/{id}` (ends a live session: that customer's approvers, the
//! session's technician, or an admin).

use std::collections::HashMap;
use std::sync::Arc;

use hyper::{Response, StatusCode};
use sallyport_ids::Role;
use serde::Deserialize;

use super::{Scope, audit, error, now, ok, query, rfc3339, store_error};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::broker::{Body, Broker, Conn};
use crate::store::{SessionRecord, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    customer: Option<String>,
    technician: Option<String>,
    #[serde(default)]
    live: bool,
}

/// The JSON view of a session.
pub fn view(s: &SessionRecord, live: bool, now: i64) -> serde_json::Value {
    let end = s.closed_at.unwrap_or(now);
    serde_json::json!({
        "id": s.id,
        "grant_id": s.grant_id,
        "customer": s.customer,
        "target": s.target,
        "technician": s.technician,
        "source_ip": s.source_ip,
        "opened_at": rfc3339(s.opened_at),
        "closed_at": s.closed_at.map(rfc3339),
        "live": live,
        "duration_seconds": (end - s.opened_at).max(0),
        "bytes_up": s.bytes_up,
        "bytes_down": s.bytes_down,
        "close_reason": s.close_reason,
    })
}

/// `GET /v1/sessions`.
pub async fn list(b: &Arc<Broker>, conn: &Conn, q: Option<&str>) -> Response<Body> {
    let q: ListQuery = match query(q) {
        Ok(q) => q,
        Err(resp) => return resp,
    };
    let scope = Scope::of(conn);
    let (customer, technician) = match &scope {
        Scope::All => (q.customer, q.technician),
        Scope::Customer(c) => {
            if q.customer.as_ref().is_some_and(|asked| asked != c) {
                return error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &format!("you can only see sessions of customer `{c}`"),
                );
            }
            (Some(c.clone()), q.technician)
        }
        Scope::Technician(t) => {
            if q.technician.as_ref().is_some_and(|asked| asked != t) {
                return error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "technicians can only see their own sessions",
                );
            }
            (q.customer, Some(t.clone()))
        }
    };
    // Live sessions, with their bytes so far, come from this broker's registry.
    let mut live: HashMap<String, SessionRecord> = b
        .sessions
        .snapshot()
        .into_iter()
        .filter(|s| customer.as_ref().is_none_or(|c| *c == s.customer))
        .filter(|s| technician.as_ref().is_none_or(|t| *t == s.technician))
        .map(|s| (s.id.clone(), s))
        .collect();
    let at = now();
    if q.live {
        let mut out: Vec<&SessionRecord> = live.values().collect();
        out.sort_by(|a, b| b.opened_at.cmp(&a.opened_at).then(a.id.cmp(&b.id)));
        let out: Vec<_> = out.into_iter().map(|s| view(s, true, at)).collect();
        return ok(StatusCode::OK, serde_json::json!({ "sessions": out }));
    }
    // Everything queued before now is in the store after this.
    b.sessions.flush().await;
    let (c, t) = (customer.clone(), technician.clone());
    let stored = match b
        .with_store(move |s| s.sessions(c.as_deref(), t.as_deref(), false))
        .await
    {
        Ok(v) => v,
        Err(e) => return store_error(e),
    };
    let mut out: Vec<serde_json::Value> = stored
        .iter()
        .map(|s| match live.remove(&s.id) {
            Some(l) => view(&l, true, at),
            None => view(s, false, at),
        })
        .collect();
    out.extend(live.values().map(|l| view(l, true, at)));
    ok(StatusCode::OK, serde_json::json!({ "sessions": out }))
}

/// `DELETE /v1/sessions/{id}`.
pub async fn end(b: &Arc<Broker>, conn: &Conn, id: &str) -> Response<Body> {
    let scope = Scope::of(conn);
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no session `{id}`"),
        )
    };
    let Some(live) = b.sessions.get(id) else {
        // A session that just closed has its row written after this.
        b.sessions.flush().await;
        let sid = id.to_owned();
        return match b.with_store(move |s| s.session(&sid)).await {
            Ok(s) if scope.sees(&s.customer, &s.technician) => error(
                StatusCode::CONFLICT,
                "conflict",
                &match &s.close_reason {
                    Some(why) => format!("session `{id}` is already closed ({why})"),
                    None => format!("session `{id}` is not live on this broker"),
                },
            ),
            Ok(_) | Err(StoreError::NotFound { .. }) => not_found(),
            Err(e) => store_error(e),
        };
    };
    let rec = &live.record;
    if !scope.sees(&rec.customer, &rec.technician) {
        return not_found();
    }
    if conn.peer.id.role() == Role::Auditor {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "auditors cannot end sessions",
        );
    }
    let actor = conn.peer.id.to_string();
    let mut ev = AuditEvent::new(
        EventKind::SessionEnded,
        Outcome::Success,
        "session ended through the API",
    );
    ev.customer = Some(rec.customer.clone());
    ev.actor = Some(actor.clone());
    ev.target = Some(rec.target.clone());
    ev.subject = Some(rec.technician.clone());
    ev.grant_id = Some(rec.grant_id.clone());
    ev.session_id = Some(rec.id.clone());
    ev.source_ip = Some(conn.ip);
    // On the trail before the tunnel records its close; ended either way, since ending is safe.
    let recorded = audit(b, ev).await;
    live.end(&format!("ended by {actor}"));
    if let Err(resp) = recorded {
        return resp;
    }
    tracing::info!(session = %rec.id, by = %actor, "session ended through the API");
    ok(
        StatusCode::OK,
        serde_json::json!({"session_id": rec.id, "ended": true, "ended_by": actor}),
    )
}
