//! Operations: `GET /healthz` (anyone with a certificate) and `GET /metrics` (Prometheus text, for
//! provider admins).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use sallyport_gateway::{Body, Conn};
use sallyport_ids::Role;

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
