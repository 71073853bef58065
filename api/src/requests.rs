//! Access requests over HTTP; the rules are the workflow's.
//!
//! - `POST /v1/requests` `{customer, target, minutes, reason, ticket?, start_at?}` -> 201 with the
//!   request (`id`, `status`, `approvals_required`, `expires_at`, ...).
//! - `GET /v1/requests[?status=&customer=]` -> `{requests: [...]}`, newest first.
//! - `GET /v1/requests/{id}` -> the request, with its approvals and `filed_hash` (the hash of its
//!   `request_filed` record, which the nonce of a decision signed at the customer's IdP commits to).
//! - `POST /v1/requests/{id}/approve` `{comment?}` -> the request and `approvals_missing`. For a
//!   customer with its own IdP: 202 `{signin: {id, url}, request_id}`, the sign-in that signs the
//!   approval (open `url`, then follow `GET /v1/signins/{id}`); or, with `id_token` (an ID token
//!   the client obtained from that IdP with the decision's nonce), 200 once it verifies.
//! - `POST /v1/requests/{id}/deny` `{reason, id_token?}` -> the request; the same for a customer
//!   with its own IdP.
//! - `GET /v1/signins/{id}[?wait=SECONDS]` -> a decision sign-in the caller started: 202
//!   `{status: "pending"}` while waiting (up to `wait`, at most 30 s), 200 `{status: "done",
//!   request}`, or the refusal (403 `idp_refused`, ...).
//! - `POST /v1/requests/{id}/cancel` `{reason?}` -> the request, `cancelled` (its technician only).
//! - `GET /v1/targets` -> `{targets: [...]}`: what the caller may ask for, per customer.
//! - `GET /v1/requests/{id}/grant` -> `{token, grant_id, request_id, customer, target, port,
//!   not_before, expires_at}`.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sallyport_audit::Decision;
use sallyport_gateway::{Body, Conn};
use sallyport_ids::RequestId;
use sallyport_ids::time::rfc3339;
use sallyport_workflow::error::parse_id;
use sallyport_workflow::requests::Filing;
use sallyport_workflow::signin::Done;
use sallyport_workflow::terms::Words;
use sallyport_workflow::{terms, view};
use serde::Deserialize;

use crate::input::{body, query};
use crate::{Api, ApiError, caller, ok};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    customer: String,
    target: String,
    minutes: u32,
    reason: String,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    start_at: Option<String>,
}

/// `POST /v1/requests`.
pub async fn file(
    api: &Api,
    conn: &Conn,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let requests = &api.workflow.requests;
    let filer = requests.filer(caller(conn)).await?;
    let f: FileBody = body(req).await?;
    let rec = requests
        .file(
            filer,
            Filing {
                customer: f.customer,
                target: f.target,
                minutes: f.minutes,
                reason: f.reason,
                ticket: f.ticket,
                start_at: f.start_at,
            },
        )
        .await?;
    Ok(ok(StatusCode::CREATED, view::request(&rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    customer: Option<String>,
}

/// `GET /v1/requests[?status=&customer=]`.
pub async fn list(api: &Api, conn: &Conn, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q: ListQuery = query(q)?;
    let list = api
        .workflow
        .requests
        .list(caller(conn), q.status.as_deref(), q.customer)
        .await?;
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({ "requests": list.iter().map(view::request).collect::<Vec<_>>() }),
    ))
}

/// `GET /v1/requests/{id}`.
pub async fn show(api: &Api, conn: &Conn, id: &str) -> Result<Response<Body>, ApiError> {
    let id = parse_id("request", id)?;
    let rec = api.workflow.requests.visible(caller(conn), &id).await?;
    let mut v = view::request(&rec);
    // What the nonce of a decision signed at the customer's IdP commits to (docs/audit-format.md).
    v["filed_hash"] = rec.filed.filed_hash.clone().into();
    Ok(ok(StatusCode::OK, v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

/// `POST /v1/requests/{id}/approve`.
pub async fn approve(
    api: &Api,
    conn: &Conn,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let ApproveBody { comment, id_token } = body(req).await?;
    let comment = terms::comment(comment.as_deref())?;
    let id = parse_id("request", id)?;
    if let Some(done) = signed(api, conn, &id, Decision::Approve, comment.clone(), id_token).await?
    {
        return Ok(done);
    }
    let done = api
        .workflow
        .requests
        .approve(caller(conn), &id, comment)
        .await?;
    let mut v = view::request(&done.request);
    v["approvals_missing"] = done.missing.into();
    Ok(ok(StatusCode::OK, v))
}

/// For a request of a customer with its own IdP, the signed way of deciding it: a started sign-in
/// (202), or the decision taken with the client's own ID token (200). `None`: the customer has no
/// IdP, decide directly. Which customer the request is of is not revealed: both ways check the
/// caller's right to see it first.
async fn signed(
    api: &Api,
    conn: &Conn,
    id: &RequestId,
    decision: Decision,
    words: Option<Words>,
    id_token: Option<String>,
) -> Result<Option<Response<Body>>, ApiError> {
    let config = api.config.load();
    let has_idp = api
        .workflow
        .requests
        .customer_of(id)
        .await
        .and_then(|c| config.customer(c.as_str()).map(|c| c.oidc.is_some()))
        .unwrap_or(false);
    let signins = &api.workflow.signins;
    match (has_idp, id_token) {
        (false, None) => Ok(None),
        (false, Some(_)) => {
            // Whether the request exists is only for those who may see it.
            api.workflow.requests.visible(caller(conn), id).await?;
            Err(ApiError::bad(
                "bad_id_token",
                "`id_token` is only taken for customers that sign decisions at their own identity provider",
            ))
        }
        (true, Some(token)) => {
            let v = signins
                .decide_with_token(caller(conn), id, decision, words, &token)
                .await?;
            Ok(Some(ok(StatusCode::OK, v)))
        }
        (true, None) => {
            let started = signins
                .start_decision(caller(conn), id, decision, words)
                .await?;
            Ok(Some(ok(
                StatusCode::ACCEPTED,
                serde_json::json!({
                    "request_id": id.as_str(),
                    "signin": {"id": started.id, "url": started.url},
                }),
            )))
        }
    }
}

/// `GET /v1/signins/{id}[?wait=SECONDS]`.
pub async fn signin(
    api: &Api,
    conn: &Conn,
    id: &str,
    query_text: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let wait = query_text
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("wait="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        .min(30);
    let got = api
        .workflow
        .signins
        .wait_decision(caller(conn), id, std::time::Duration::from_secs(wait))
        .await?;
    match got {
        None => Ok(ok(
            StatusCode::ACCEPTED,
            serde_json::json!({"status": "pending"}),
        )),
        Some(Done::Ok(v)) => Ok(ok(
            StatusCode::OK,
            serde_json::json!({"status": "done", "request": v}),
        )),
        Some(Done::Refused { code, message }) => Err(ApiError::new(
            if code == "audit_unavailable" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            },
            code,
            message,
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: String,
    #[serde(default)]
    id_token: Option<String>,
}

/// `POST /v1/requests/{id}/deny`.
pub async fn deny(
    api: &Api,
    conn: &Conn,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let DenyBody { reason, id_token } = body(req).await?;
    let reason = terms::deny_reason(&reason)?;
    let id = parse_id("request", id)?;
    if let Some(done) = signed(
        api,
        conn,
        &id,
        Decision::Deny,
        Some(reason.clone()),
        id_token,
    )
    .await?
    {
        return Ok(done);
    }
    let rec = api
        .workflow
        .requests
        .deny(caller(conn), &id, reason)
        .await?;
    Ok(ok(StatusCode::OK, view::request(&rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/requests/{id}/cancel`.
pub async fn cancel(
    api: &Api,
    conn: &Conn,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let CancelBody { reason } = body(req).await?;
    let reason = terms::cancel_reason(reason.as_deref())?;
    let id = parse_id("request", id)?;
    let rec = api
        .workflow
        .requests
        .cancel(caller(conn), &id, reason)
        .await?;
    Ok(ok(StatusCode::OK, view::request(&rec)))
}

/// `GET /v1/targets`: for a technician, per customer, the targets that customer's policy would let
/// them request now (with the longest window and the approvals a filing needs); for an approver or
/// auditor, their customer's targets; for an admin, every target.
pub fn targets(api: &Api, conn: &Conn) -> Response<Body> {
    let list = api.workflow.requests.targets(caller(conn));
    ok(
        StatusCode::OK,
        serde_json::json!({
            "targets": list.iter().map(sallyport_workflow::targets::view).collect::<Vec<_>>(),
        }),
    )
}

/// `GET /v1/requests/{id}/grant`.
pub async fn grant(api: &Api, conn: &Conn, id: &str) -> Result<Response<Body>, ApiError> {
    let id = parse_id("request", id)?;
    let g = api.workflow.requests.grant(caller(conn), &id).await?;
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({
            "token": g.token,
            "grant_id": g.grant_id,
            "request_id": g.request_id,
            "customer": g.customer,
            "target": g.target,
            "port": g.port,
            "not_before": rfc3339(g.not_before),
            "expires_at": rfc3339(g.expires_at),
        }),
    ))
}
