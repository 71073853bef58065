//! Operations: `GET /healthz` (anyone with a certificate), `GET /metrics` (Prometheus text, for
//! provider admins) and `POST /v1/reload` (provider admins: the configuration and policies read
//! again; the answer says what changed, or 422 `invalid_config` with the file's error).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use sallyport_gateway::{Body, Conn};
use sallyport_ids::Role;
use sallyport_workflow::reload::ReloadError;

use crate::{Api, ApiError, json};

/// `GET /healthz`.
pub fn health() -> Response<Body> {
    json(StatusCode::OK, r#"{"status":"ok"}"#.into())
}

/// `GET /metrics`.
pub fn metrics(api: &Api, conn: &Conn) -> Result<Response<Body>, ApiError> {
    if conn.peer.id.role() != Role::Admin {
        return Err(ApiError::forbidden("metrics are for provider admins"));
    }
    let text = format!(
        "# HELP sallyport_audit_failures_total Audit batches that could not be written durably.\n\
         # TYPE sallyport_audit_failures_total counter\n\
         sallyport_audit_failures_total {}\n\
         # HELP sallyport_live_sessions Tunnels open now.\n\
         # TYPE sallyport_live_sessions gauge\n\
         sallyport_live_sessions {}\n\
         # HELP sallyport_handshakes_in_progress Connections that have not completed their TLS handshake.\n\
         # TYPE sallyport_handshakes_in_progress gauge\n\
         sallyport_handshakes_in_progress {}\n\
         # HELP sallyport_handshake_slots_refused_total Connections closed at accept: their source, or the broker, had no handshake slot free.\n\
         # TYPE sallyport_handshake_slots_refused_total counter\n\
         sallyport_handshake_slots_refused_total {}\n",
        api.trail_health.failures(),
        api.sessions.snapshot().len(),
        api.slots.in_use(),
        api.slots.refused(),
    );
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

/// `POST /v1/reload` (provider admins): reloads the configuration file in force. 200 `{added,
/// changed, removed, policies: [{customer, policy_digest}], sessions_closed: [{session_id,
/// customer, why}]}`; 422 `invalid_config` (the message names the file, the key and the fix) when
/// the new file is refused, the configuration in force unchanged.
pub async fn reload(api: &Api, conn: &Conn) -> Result<Response<Body>, ApiError> {
    if conn.peer.id.role() != Role::Admin {
        let answer = sallyport_workflow::WorkflowError::Forbidden(
            "only provider admins reload the configuration".into(),
        );
        return Err(api
            .workflow
            .refusals
            .refused(
                crate::caller(conn),
                sallyport_workflow::refusals::Attempt::new("reload the configuration"),
                answer,
            )
            .await
            .into());
    }
    let done = api
        .workflow
        .reload
        .reload(&conn.peer.id.to_string())
        .await
        .map_err(|e| match e {
            ReloadError::Config(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                e.to_string(),
            ),
            ReloadError::Workflow(e) => e.into(),
        })?;
    let ids =
        |v: &[sallyport_ids::CustomerId]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    Ok(crate::ok(
        StatusCode::OK,
        serde_json::json!({
            "added": ids(&done.change.added),
            "changed": ids(&done.change.changed),
            "removed": ids(&done.change.removed),
            "policies": done.policies.iter().map(|(c, d)| serde_json::json!({"customer": c, "policy_digest": d})).collect::<Vec<_>>(),
            "sessions_closed": done.closed.iter().map(|(s, why)| serde_json::json!({"session_id": s.id, "customer": s.customer, "target": s.target, "technician": s.technician, "why": why})).collect::<Vec<_>>(),
        }),
    ))
}
