//! The HTTPS JSON API under `/v1`, on the broker's mTLS listener, and the operational endpoints
//! (`/healthz`, `/metrics`). The caller's role and scope come from its client certificate. Handlers
//! parse, call the workflow, and render JSON; they return `Result` and use `?`, and [`ApiError`] maps
//! every failure to its answer. Errors are `{"error": {"code", "message"}}`: 400 malformed JSON, a
//! body that is not a JSON object, unknown fields or bad values; 403 the wrong role; 404 unknown, or
//! another tenant's (tenants are walls: nothing reveals that another customer's object exists); 408
//! a body not in by the request's deadline (the connection closes); 409 a state conflict; 413 over
//! the body limit; 429 rate limited (with `Retry-After`); 503 store or audit trail unavailable. A
//! 403 or 404 for the caller's role or tenant is recorded by the workflow (`access_refused`), the
//! answer unchanged.
//!
//! Routes ([`Api::route`]): [`requests`] (file, list, show, approve, deny, cancel, fetch the grant,
//! and what may be requested),
//! [`grants`] (revoke), [`sessions`] (list, end), [`locks`] (lock, list, unlock, the CRL),
//! [`audit`] (read a chain, the checkpoint key), [`ops`] (health, metrics, reload). The plain-HTTP [`admin`]
//! listener serves health, readiness and the same metrics without a certificate. Every `/v1` call counts
//! against the caller's API rate (`limits.api_calls_*`), and a caller locked everywhere is refused
//! every `/v1` call and `/metrics` (403 `locked`).

pub mod admin;
pub mod audit;
mod error;
pub mod grants;
mod input;
pub mod locks;
pub mod ops;
pub mod requests;
pub mod sessions;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use sallyport_audit::Health;
use sallyport_config::SharedConfig;
use sallyport_gateway::slots::Slots;
use sallyport_gateway::{Body, Conn, LiveSessions};
use sallyport_workflow::limit::CallLimiter;
use sallyport_workflow::{Caller, Workflow};

pub use error::ApiError;
pub use input::MAX_BODY_BYTES;

/// What the API serves from. Built once by the binary's assembly.
pub struct Api {
    /// The workflow it calls.
    pub workflow: Workflow,
    /// Customers (for the audit routes) and the data directory: the configuration in force.
    pub config: SharedConfig,
    /// API calls per identity.
    pub api_calls: CallLimiter,
    /// The audit checkpoint key, as published (`GET /v1/audit/key`).
    pub audit_key: serde_json::Value,
    /// Audit write failures, for `/metrics`.
    pub trail_health: Arc<Health>,
    /// The live tunnels, for `/metrics`.
    pub sessions: Arc<LiveSessions>,
    /// The listener's pre-handshake slots, for `/metrics`.
    pub slots: Arc<Slots>,
    /// The registry `/metrics` renders (the admin listener's too).
    pub metrics: sallyport_metrics::Metrics,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A 2xx JSON answer.
pub fn ok(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    json(status, value.to_string())
}

/// The caller of a request on `conn`.
pub fn caller(conn: &Conn) -> Caller<'_> {
    Caller {
        peer: &conn.peer,
        ip: conn.ip,
    }
}

impl Api {
    /// Answers a request that is not a CONNECT: `/healthz`, `/metrics`, or a `/v1` route.
    pub async fn route(&self, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::GET && req.uri().path() == "/healthz" {
            return ops::health();
        }
        if req.method() == Method::GET && req.uri().path() == "/metrics" {
            if let Err(e) = self.workflow.locks.gate().admit(caller(conn), None).await {
                return ApiError::from(e).into_response();
            }
            return ops::metrics(self, conn)
                .await
                .unwrap_or_else(ApiError::into_response);
        }
        self.v1(conn, req)
            .await
            .unwrap_or_else(ApiError::into_response)
    }

    async fn v1(&self, conn: &Conn, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        if let Err(wait) = self.api_calls.check(&conn.peer.id.to_string()) {
            tracing::info!(peer = %conn.peer.id, "API rate limit reached");
            self.metrics
                .rate_limited(sallyport_metrics::Limiter::ApiCalls);
            return Err(ApiError::too_many(wait, "API calls"));
        }
        // A caller locked everywhere gets nothing; a lock for one customer is checked where the
        // customer is known (filings, grant fetches).
        self.workflow.locks.gate().admit(caller(conn), None).await?;
        // A customer with its own IdP takes its approvers and auditors only as signed in there.
        self.workflow.signins.admit(caller(conn)).await?;
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["v1", "requests"]) => requests::file(self, conn, req).await,
            (&Method::GET, ["v1", "requests"]) => {
                requests::list(self, conn, req.uri().query()).await
            }
            (&Method::GET, ["v1", "requests", id]) => requests::show(self, conn, id).await,
            (&Method::POST, ["v1", "requests", id, "approve"]) => {
                requests::approve(self, conn, id, req).await
            }
            (&Method::POST, ["v1", "requests", id, "deny"]) => {
                requests::deny(self, conn, id, req).await
            }
            (&Method::POST, ["v1", "requests", id, "cancel"]) => {
                requests::cancel(self, conn, id, req).await
            }
            (&Method::GET, ["v1", "signins", id]) => {
                requests::signin(self, conn, id, req.uri().query()).await
            }
            (&Method::GET, ["v1", "targets"]) => Ok(requests::targets(self, conn)),
            (&Method::GET, ["v1", "requests", id, "grant"]) => {
                requests::grant(self, conn, id).await
            }
            (&Method::GET, ["v1", "grants"]) => grants::list(self, conn, req.uri().query()).await,
            (&Method::POST, ["v1", "grants", id, "revoke"]) => {
                grants::revoke(self, conn, id, req).await
            }
            (&Method::GET, ["v1", "sessions"]) => {
                sessions::list(self, conn, req.uri().query()).await
            }
            (&Method::DELETE, ["v1", "sessions", id]) => sessions::end(self, conn, id).await,
            // Public: anyone verifying a trail needs it, and it proves nothing by itself.
            (&Method::GET, ["v1", "audit", "key"]) => {
                Ok(ok(StatusCode::OK, self.audit_key.clone()))
            }
            (&Method::GET, ["v1", "audit"]) => audit::list(self, conn, req.uri().query()).await,
            (&Method::POST, ["v1", "locks"]) => locks::lock(self, conn, req).await,
            (&Method::GET, ["v1", "locks"]) => locks::list(self, conn, req.uri().query()).await,
            (&Method::POST, ["v1", "locks", id, "unlock"]) => {
                locks::unlock(self, conn, id, req).await
            }
            (&Method::GET, ["v1", "crl"]) => locks::crl(self),
            (&Method::POST, ["v1", "reload"]) => ops::reload(self, conn).await,
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {method} {path}"),
            )),
        }
    }
}
