//! The HTTPS JSON API under `/v1`, on the broker's mTLS listener. The caller's role and scope come
//! from its client certificate and every route checks them. Errors are `{"error": {"code", "message"}}`:
//! 400 malformed JSON, unknown fields or bad values; 403 the wrong role; 404 unknown, or another
//! tenant's (tenants are walls: nothing reveals that another customer's object exists); 409 a state
//! conflict; 413 over the body limit; 429 rate limited (with `Retry-After`); 503 store or audit trail
//! unavailable.
//!
//! Routes: [`requests`] (file, list, show, approve, deny, fetch the grant), [`grants`] (revoke),
//! [`sessions`] (list, end), `GET /v1/audit/key` (the audit checkpoint key). Every call counts against the caller's API rate (`limits.api_calls_*`).

// Handlers return an error answer as `Err(Response)`; it is built on the cold path only.
#![allow(clippy::result_large_err)]

pub mod audit;
pub mod grants;
pub mod requests;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use sallyport_ids::Principal;
use serde::Deserialize;

use crate::audit::AuditEvent;
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

/// 429 with `Retry-After`.
pub fn too_many(wait: Duration, what: &str) -> Response<Body> {
    let secs = wait.as_secs().max(1);
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("too many {what}; try again in {secs} s"),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    r
}

/// A 2xx JSON answer.
pub fn ok(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    json(status, value.to_string())
}

/// Maps a store failure to its answer.
pub fn store_error(e: StoreError) -> Response<Body> {
    match e {
        StoreError::NotFound { kind, id } => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no {kind} `{id}`"),
        ),
        StoreError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", &m),
        StoreError::Backend(m) => {
            tracing::error!(error = %m, "store failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the state store is unavailable; try again shortly",
            )
        }
    }
}

/// Writes an audit record; when it cannot be written, the answer is 503.
pub async fn audit(b: &Broker, ev: AuditEvent) -> Result<(), Response<Body>> {
    let kind = ev.event;
    b.audit.append(ev).await.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, event = ?kind, "audit trail not writable");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit trail is not writable",
        )
    })
}

/// Reads and parses a bounded JSON body; unknown fields are refused. An empty body reads as `{}`.
pub async fn body<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
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
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            &format!("invalid JSON body: {e}"),
        )
    })
}

/// Parses a query string; unknown parameters are refused.
pub fn query<T: for<'de> Deserialize<'de>>(q: Option<&str>) -> Result<T, Response<Body>> {
    serde_urlencoded::from_str(q.unwrap_or("")).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            &format!("invalid query: {e}"),
        )
    })
}

/// A trimmed, bounded, non-empty text field.
pub fn text_field(name: &str, v: &str, max: usize, why: &str) -> Result<String, Response<Body>> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("bad_{name}"),
            &format!("`{name}` must be 1 to {max} printable characters: {why}"),
        ));
    }
    Ok(v.to_owned())
}

/// RFC 3339 UTC of Unix seconds.
pub fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// What a caller may see: everything (admin), one customer (approvers, auditors), or their own
/// (technicians).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Provider admins.
    All,
    /// A customer's approvers and auditors.
    Customer(String),
    /// A technician: their own requests and sessions.
    Technician(String),
}

impl Scope {
    /// The caller's scope.
    pub fn of(conn: &Conn) -> Scope {
        match conn.peer.id.principal() {
            Principal::Admin { .. } => Scope::All,
            Principal::Approver { customer, .. } | Principal::Auditor { customer, .. } => {
                Scope::Customer(customer.to_string())
            }
            Principal::Technician { .. } => Scope::Technician(conn.peer.id.to_string()),
        }
    }

    /// Whether an object of `customer`, concerning `technician`, is visible.
    pub fn sees(&self, customer: &str, technician: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Customer(c) => c == customer,
            Scope::Technician(t) => t == technician,
        }
    }
}

/// `provider/name` (or `customer/name`) of a SPIFFE id, for people.
pub fn who(spiffe: &str) -> String {
    let mut parts = spiffe.rsplit('/');
    match (parts.next(), parts.next()) {
        (Some(name), Some(scope)) if spiffe.starts_with("spiffe://") => format!("{scope}/{name}"),
        _ => spiffe.to_owned(),
    }
}

/// Dispatches a `/v1` request.
pub async fn route(b: &Arc<Broker>, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    if let Err(wait) = b.api_calls.check(&conn.peer.id.to_string()) {
        tracing::info!(peer = %conn.peer.id, "API rate limit reached");
        return too_many(wait, "API calls");
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "requests"]) => requests::file(b, conn, req).await,
        (&Method::GET, ["v1", "requests"]) => requests::list(b, conn, req.uri().query()).await,
        (&Method::GET, ["v1", "requests", id]) => requests::show(b, conn, id).await,
        (&Method::POST, ["v1", "requests", id, "approve"]) => {
            requests::approve(b, conn, id, req).await
        }
        (&Method::POST, ["v1", "requests", id, "deny"]) => requests::deny(b, conn, id, req).await,
        (&Method::GET, ["v1", "requests", id, "grant"]) => requests::grant(b, conn, id).await,
        (&Method::POST, ["v1", "grants", id, "revoke"]) => grants::revoke(b, conn, id, req).await,
        (&Method::GET, ["v1", "sessions"]) => sessions::list(b, conn, req.uri().query()).await,
        (&Method::DELETE, ["v1", "sessions", id]) => sessions::end(b, conn, id).await,
        // Public: anyone verifying a trail needs it, and it proves nothing by itself.
        (&Method::GET, ["v1", "audit", "key"]) => ok(StatusCode::OK, b.audit_key.clone()),
        (&Method::GET, ["v1", "audit"]) => audit::list(b, conn, req.uri().query()).await,
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {method} {path}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_shortens_spiffe_ids() {
        assert_eq!(
            who("spiffe://sallyport.local/technician/northwind/alice"),
            "northwind/alice"
        );
        assert_eq!(who("policy"), "policy");
    }

    #[test]
    fn scopes_are_walls() {
        let acme = Scope::Customer("acme".into());
        assert!(acme.sees("acme", "t"));
        assert!(!acme.sees("globex", "t"));
        let alice = Scope::Technician("a".into());
        assert!(alice.sees("acme", "a") && !alice.sees("acme", "b"));
        assert!(Scope::All.sees("x", "y"));
    }

    #[test]
    fn text_fields_are_bounded() {
        assert_eq!(text_field("reason", " ok ", 10, "say why").unwrap(), "ok");
        assert!(text_field("reason", "", 10, "say why").is_err());
        assert!(text_field("reason", "a\u{7}b", 10, "say why").is_err());
        assert!(text_field("reason", &"x".repeat(11), 10, "say why").is_err());
    }
}
