//! `GET /v1/grants[?customer=&break_glass=true]` -> `{grants: [...]}` (each with its window,
//! revocation and, for a break-glass grant, `break_glass: {by, reason, ticket}`), and
//! `POST /v1/grants/{id}/revoke` `{reason}` -> `{grant_id, revoked_at, revoked_by, reason,
//! sessions_closed}`: that customer's approvers, the grant's technician, or an admin. The rules
//! (who may see or revoke, what it cuts, what is recorded) are the workflow's.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sallyport_gateway::{Body, Conn};
use sallyport_ids::time::rfc3339;
use sallyport_workflow::error::parse_id;
use sallyport_workflow::{terms, view};
use serde::Deserialize;

use crate::input::{body, query};
use crate::{Api, ApiError, caller, ok};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    customer: Option<String>,
    #[serde(default)]
    break_glass: bool,
}

/// `GET /v1/grants`.
pub async fn list(api: &Api, conn: &Conn, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q: ListQuery = query(q)?;
    let grants = api
        .workflow
        .grants
        .list(caller(conn), q.customer, q.break_glass)
        .await?;
    let out: Vec<serde_json::Value> = grants.iter().map(view::grant).collect();
    Ok(ok(StatusCode::OK, serde_json::json!({ "grants": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: String,
}

/// `POST /v1/grants/{id}/revoke`.
pub async fn revoke(
    api: &Api,
    conn: &Conn,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let RevokeBody { reason } = body(req).await?;
    let reason = terms::revoke_reason(&reason)?;
    let id = parse_id("grant", id)?;
    let done = api
        .workflow
        .grants
        .revoke(caller(conn), &id, reason)
        .await?;
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({
            "grant_id": done.grant.id,
            "revoked_at": rfc3339(done.revocation.at),
            "revoked_by": done.revocation.by,
            "reason": done.revocation.reason,
            "sessions_closed": done.sessions_closed,
        }),
    ))
}
