//! Locks over HTTP; the rules (who may lock whom, where a lock applies, what it cuts, what is
//! recorded) are the workflow's.
//!
//! - `POST /v1/locks` `{spiffe_id | certificate: {serial, sha256} | certificate: {pem}, reason,
//!   customer?, expires_at? | minutes?}` -> 201 with the lock and `sessions_closed`.
//! - `GET /v1/locks[?all=true]` -> `{locks: [...]}`, newest first: the active ones, or all.
//! - `POST /v1/locks/{id}/unlock` `{reason?}` -> the lock, lifted.
//! - `GET /v1/crl` -> the CRL of locked certificates, PEM (when `tls.crl` is on; else 404).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sallyport_gateway::{Body, Conn};
use sallyport_ids::time::now_unix;
use sallyport_workflow::error::parse_id;
use sallyport_workflow::locks::{CertAsk, LockAsk, view};
use sallyport_workflow::terms;
use serde::Deserialize;

use crate::input::{body, query};
use crate::{Api, ApiError, caller, ok};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertBody {
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    pem: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockBody {
    #[serde(default)]
    spiffe_id: Option<String>,
    #[serde(default)]
    certificate: Option<CertBody>,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    minutes: Option<u64>,
}

/// `POST /v1/locks`.
pub async fn lock(
    api: &Api,
    conn: &Conn,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let b: LockBody = body(req).await?;
    let done = api
        .workflow
        .locks
        .lock(
            caller(conn),
            LockAsk {
                spiffe_id: b.spiffe_id,
                certificate: b.certificate.map(|c| CertAsk {
                    serial: c.serial,
                    sha256: c.sha256,
                    pem: c.pem,
                }),
                customer: b.customer,
                reason: b.reason,
                expires_at: b.expires_at,
                minutes: b.minutes,
            },
        )
        .await?;
    let mut out = view(&done.lock, now_unix());
    out["sessions_closed"] = done.sessions_closed.into();
    Ok(ok(StatusCode::CREATED, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /v1/locks[?all=true]`.
pub async fn list(api: &Api, conn: &Conn, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q: ListQuery = query(q)?;
    let locks = api.workflow.locks.list(caller(conn), q.all).await?;
    let now = now_unix();
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({ "locks": locks.iter().map(|l| view(l, now)).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/locks/{id}/unlock`.
pub async fn unlock(
    api: &Api,
    conn: &Conn,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let UnlockBody { reason } = body(req).await?;
    let reason = terms::unlock_reason(reason.as_deref())?;
    let id = parse_id("lock", id)?;
    let lifted = api.workflow.locks.unlock(caller(conn), &id, reason).await?;
    Ok(ok(StatusCode::OK, view(&lifted, now_unix())))
}

/// `GET /v1/crl`: PEM, `application/x-pem-file`.
pub fn crl(api: &Api) -> Result<Response<Body>, ApiError> {
    let Some(pem) = api.workflow.locks.crl().and_then(|c| c.pem()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this broker publishes no CRL (set `crl = true` under [tls] to publish one)",
        ));
    };
    let mut r = Response::new(Full::new(Bytes::from(pem)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-pem-file"),
    );
    Ok(r)
}
