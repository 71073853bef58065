//! `GET /v1/sessions[?customer=&technician=&grant=&live=true]` (bytes and durations; live sessions with their
//! bytes so far) and `DELETE /v1/sessions/{id}` (ends a live session: that customer's approvers, the
//! session's technician, or an admin). The rules are the workflow's.

use hyper::{Response, StatusCode};
use sallyport_gateway::{Body, Conn};
use sallyport_ids::time::now_unix;
use sallyport_workflow::error::parse_id;
use sallyport_workflow::sessions::Asked;
use sallyport_workflow::view;
use serde::Deserialize;

use crate::input::query;
use crate::{Api, ApiError, caller, ok};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    customer: Option<String>,
    technician: Option<String>,
    grant: Option<String>,
    #[serde(default)]
    live: bool,
}

/// `GET /v1/sessions`.
pub async fn list(api: &Api, conn: &Conn, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q: ListQuery = query(q)?;
    // A grant that is not an id names no session.
    let grant = match q.grant.map(|g| g.parse::<sallyport_ids::GrantId>()) {
        None => None,
        Some(Ok(g)) => Some(g),
        Some(Err(_)) => return Ok(ok(StatusCode::OK, serde_json::json!({ "sessions": [] }))),
    };
    let listed = api
        .workflow
        .sessions
        .list(
            caller(conn),
            Asked {
                customer: q.customer,
                technician: q.technician,
                live: q.live,
                grant,
            },
        )
        .await?;
    let at = now_unix();
    let out: Vec<serde_json::Value> = listed
        .iter()
        .map(|l| {
            let mut v = view::session(&l.session, l.live, at);
            v["break_glass"] = l.break_glass.into();
            v
        })
        .collect();
    Ok(ok(StatusCode::OK, serde_json::json!({ "sessions": out })))
}

/// `DELETE /v1/sessions/{id}`.
pub async fn end(api: &Api, conn: &Conn, id: &str) -> Result<Response<Body>, ApiError> {
    let id = parse_id("session", id)?;
    let rec = api.workflow.sessions.end(caller(conn), &id).await?;
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({"session_id": rec.id, "ended": true, "ended_by": conn.peer.id}),
    ))
}
