//! `POST /v1/grants/{id}/revoke` `{reason}` -> `{grant_id, revoked_at, revoked_by, reason,
//! sessions_closed}`: that customer's approvers, the grant's technician, or an admin. The rules
//! (who may, what it cuts, what is recorded) are the workflow's.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sallyport_gateway::{Body, Conn};
use sallyport_ids::time::rfc3339;
use sallyport_workflow::error::parse_id;
use sallyport_workflow::terms;
use serde::Deserialize;

use crate::input::body;
use crate::{Api, ApiError, caller, ok};

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
