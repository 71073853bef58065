//! The just-in-time access workflow: a technician files a request for one target, that customer's
//! approvers decide under that customer's policy, and the requester fetches the grant that results.
//!
//! - `POST /v1/requests` `{customer, target, minutes, reason, ticket?, start_at?}`: technicians only;
//!   Cedar action `request` decides whether it may be filed. The permitting policies' `@approvals`
//!   (default 1; 0 approves at once) and `@max_minutes` annotations set the quorum and the longest
//!   window; when several policies permit, the strictest values apply.
//! - `GET /v1/requests[?status=]`, `GET /v1/requests/{id}`: technicians see their own, approvers and
//!   auditors their customer's, admins all.
//! - `POST /v1/requests/{id}/approve` `{comment?}`, `/deny` `{reason}`: that customer's approvers, under
//!   Cedar action `approve`; never the requester; a quorum of distinct approvers; one denial ends it.
//! - `GET /v1/requests/{id}/grant`: the requesting technician, once approved, with the certificate the
//!   request was filed with: `{token, grant_id, not_before, expires_at, ...}`.
//!
//! Pending requests expire after `requests.pending_expiry_seconds` ([`expire_pending`]). Every state
//! change is on the customer's audit trail and goes to the customer's webhook.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sallyport_certs::grant::GrantSpec;
use sallyport_ids::{Principal, Role};
use sallyport_policy::{Action, CustomerPolicy, Decision, RequestContext, Subject, TargetInfo};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{Scope, audit, body, error, now, ok, query, rfc3339, store_error, text_field, who};
use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::broker::{Body, Broker, Conn};
use crate::config::{Customer, Target};
use crate::store::{Approval, NewRequest, RequestRecord, RequestStatus, StoreError};
use crate::webhook::Notification;

/// How far ahead a window may be asked for.
const MAX_START_AHEAD: i64 = 30 * 24 * 3600;

/// The JSON view of a request.
pub fn view(r: &RequestRecord) -> serde_json::Value {
    let f = &r.filed;
    serde_json::json!({
        "id": f.id,
        "customer": f.customer,
        "target": f.target,
        "technician": f.technician,
        "minutes": f.minutes,
        "reason": f.reason,
        "ticket": f.ticket,
        "start_at": f.start_at.map(rfc3339),
        "status": r.status.as_str(),
        "approvals_required": f.approvals_required,
        "approvals": r.approvals.iter().map(|(by, comment, at)| serde_json::json!({
            "approver": by, "comment": comment, "at": rfc3339(*at),
        })).collect::<Vec<_>>(),
        "denied_by": r.denial.as_ref().map(|d| &d.0),
        "deny_reason": r.denial.as_ref().map(|d| &d.1),
        "grant_id": r.grant_id,
        "grant": r.grant.as_ref().map(|g| serde_json::json!({
            "id": g.id,
            "not_before": rfc3339(g.not_before),
            "expires_at": rfc3339(g.expires_at),
            "revoked": g.revoked.is_some(),
        })),
        "policy_id": f.policy_id,
        "created_at": rfc3339(f.created_at),
        "expires_at": rfc3339(f.expires_at),
    })
}

/// An audit record about request `r`.
fn event(r: &NewRequest, kind: EventKind, outcome: Outcome, reason: String) -> AuditEvent {
    let mut ev = AuditEvent::new(kind, outcome, reason);
    ev.customer = Some(r.customer.clone());
    ev.target = Some(r.target.clone());
    ev.subject = Some(r.technician.clone());
    ev.request_id = Some(r.id.clone());
    ev
}

/// Queues a webhook notification about request `r`.
fn notify(b: &Broker, rec: &RequestRecord, event: &str, text: String) {
    let mut data = view(rec);
    data["event"] = event.into();
    b.notifier.notify(Notification {
        customer: rec.filed.customer.clone(),
        event: event.into(),
        text,
        data,
    });
}

fn target_info(customer: &Customer, target: &Target) -> TargetInfo {
    TargetInfo {
        customer: customer.id.clone(),
        id: target.id.clone(),
        tags: target.tags.clone(),
        port: target.port,
        protocol: target.protocol.clone(),
    }
}

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

/// The quorum and the longest window from the permitting policies: the strictest wins. A permitting
/// policy without `@approvals` asks for the default, one approval.
fn workflow_terms(p: &CustomerPolicy, decision: &Decision, max_minutes: u32) -> (u32, u32, String) {
    let approvals = decision
        .policy_ids
        .iter()
        .map(|id| {
            p.annotation(id, "approvals")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1)
        })
        .max()
        .unwrap_or(1);
    let minutes = decision
        .policy_ids
        .iter()
        .filter_map(|id| p.annotation(id, "max_minutes")?.parse::<u32>().ok())
        .fold(max_minutes, u32::min);
    (approvals, minutes, decision.policy_ids.join(","))
}

/// `POST /v1/requests`.
pub async fn file(b: &Arc<Broker>, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    let Principal::Technician { provider, name } = conn.peer.id.principal() else {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only technicians file access requests",
        );
    };
    let technician = conn.peer.id.to_string();
    if let Err(wait) = b.filings.check(&technician) {
        return super::too_many(wait, "access requests filed");
    }
    let f: FileBody = match body(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let Some(customer) = b.cfg.customer(&f.customer) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no customer `{}`", f.customer),
        );
    };
    let Some(target) = customer.target(&f.target) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("customer `{}` has no target `{}`", customer.id, f.target),
        );
    };
    let max = b.cfg.grants.max_minutes;
    if f.minutes == 0 || f.minutes > max {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_minutes",
            &format!("`minutes` must be 1 to {max}"),
        );
    }
    let reason = match text_field("reason", &f.reason, 1000, "say what the access is for") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let ticket = match f.ticket.as_deref().map(|t| {
        text_field(
            "ticket",
            t,
            200,
            "give the change or incident ticket, or leave it out",
        )
    }) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(resp)) => return resp,
    };
    let at = now();
    let start_at = match f.start_at.as_deref().map(str::parse::<jiff::Timestamp>) {
        None => None,
        Some(Ok(t)) => Some(t.as_second()),
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_start_at",
                &format!("`start_at` is not an RFC 3339 time such as 2026-01-31T22:00:00Z: {e}"),
            );
        }
    };
    let window_end = start_at.map(|s| s + i64::from(f.minutes) * 60);
    if window_end.is_some_and(|end| end <= at) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_start_at",
            "the window `start_at` + `minutes` is already over",
        );
    }
    if start_at.is_some_and(|s| s > at + MAX_START_AHEAD) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_start_at",
            "`start_at` may be at most 30 days ahead",
        );
    }
    let subject = Subject::Technician {
        id: conn.peer.id.clone(),
        provider: provider.clone(),
        name: name.clone(),
        groups: conn.peer.groups.clone(),
    };
    let ctx = RequestContext {
        now: jiff::Timestamp::now(),
        minutes: f.minutes,
        source_ip: conn.ip,
        ticket: ticket.clone(),
    };
    let decision = customer.policy.decide(
        Action::Request,
        &subject,
        &target_info(customer, target),
        &ctx,
    );
    let (approvals_required, max_minutes, policy_id) =
        workflow_terms(&customer.policy, &decision, b.cfg.grants.max_minutes);
    let filed = NewRequest {
        id: format!("r-{}", uuid::Uuid::new_v4().simple()),
        customer: customer.id.to_string(),
        target: target.id.to_string(),
        technician: technician.clone(),
        cert_thumbprint: B64.encode(conn.peer.thumbprint),
        minutes: f.minutes,
        reason: reason.clone(),
        ticket,
        start_at,
        approvals_required,
        policy_id: (!policy_id.is_empty()).then_some(policy_id),
        created_at: at,
        // Undecided requests expire, and never outlive the window they ask for.
        expires_at: window_end.map_or(at + pending_secs(b), |end| end.min(at + pending_secs(b))),
    };
    let refusal = if !decision.allowed {
        Some(decision.reason.clone())
    } else if f.minutes > max_minutes {
        Some(format!(
            "policy `{}` allows at most {max_minutes} minutes",
            decision.policy_ids.join("`, `")
        ))
    } else {
        None
    };
    if let Some(why) = refusal {
        let mut ev = event(&filed, EventKind::RequestFiled, Outcome::Deny, why.clone());
        ev.actor = Some(technician);
        ev.source_ip = Some(conn.ip);
        ev.policy_ids = decision.policy_ids;
        if let Err(resp) = audit(b, ev).await {
            return resp;
        }
        tracing::info!(peer = %conn.peer.id, customer = %customer.id, target = %target.id, reason = %why, "access request refused");
        return error(StatusCode::FORBIDDEN, "forbidden", &why);
    }
    // The filing is on the trail before it is stored: a request never exists unrecorded.
    let mut ev = event(
        &filed,
        EventKind::RequestFiled,
        Outcome::Success,
        format!(
            "{} minutes requested: {}{}",
            filed.minutes,
            reason,
            filed
                .ticket
                .as_deref()
                .map(|t| format!(" (ticket {t})"))
                .unwrap_or_default()
        ),
    );
    ev.actor = Some(technician.clone());
    ev.source_ip = Some(conn.ip);
    ev.policy_ids = decision.policy_ids.clone();
    if let Err(resp) = audit(b, ev).await {
        return resp;
    }
    let gid = format!("g-{}", uuid::Uuid::new_v4().simple());
    let to_store = filed.clone();
    let rec = match b
        .with_store(move |s| s.file_request(&to_store, &gid, at))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let mut ev = event(
                &filed,
                EventKind::RequestFiled,
                Outcome::Failure,
                format!("not stored, so it does not exist: {e}"),
            );
            ev.actor = Some(technician.clone());
            if let Err(e) = b.audit.append(ev).await {
                tracing::error!(error = %e, "could not audit a failed filing");
            }
            return store_error(e);
        }
    };
    let place = format!("{}/{}", filed.customer, filed.target);
    if rec.status == RequestStatus::Approved {
        if let Err(resp) = record_approval(b, &rec, "policy", None).await {
            return resp;
        }
        notify(
            b,
            &rec,
            "request_approved",
            format!(
                "{} has {} minutes on {place}, approved at once by policy (request {}): {reason}",
                who(&technician),
                filed.minutes,
                filed.id
            ),
        );
    } else {
        notify(
            b,
            &rec,
            "request_filed",
            format!(
                "{} asks for {} minutes on {place}: {reason} (request {}, {} approval(s) needed)",
                who(&technician),
                filed.minutes,
                filed.id,
                filed.approvals_required
            ),
        );
    }
    tracing::info!(request = %filed.id, peer = %conn.peer.id, customer = %filed.customer, target = %filed.target, status = rec.status.as_str(), "access request filed");
    ok(StatusCode::CREATED, view(&rec))
}

fn pending_secs(b: &Broker) -> i64 {
    b.cfg.requests.pending_expiry.as_secs() as i64
}

/// Records that `rec` is approved, then lets its grant be handed out.
async fn record_approval(
    b: &Broker,
    rec: &RequestRecord,
    actor: &str,
    source: Option<std::net::IpAddr>,
) -> Result<(), Response<Body>> {
    audit_approved(b, rec, actor, source).await?;
    if let Some(gid) = rec.grant_id.clone() {
        b.with_store(move |s| s.mark_grant_audited(&gid))
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// Writes the `request_approved` record of `rec`.
async fn audit_approved(
    b: &Broker,
    rec: &RequestRecord,
    actor: &str,
    source: Option<std::net::IpAddr>,
) -> Result<(), Response<Body>> {
    let f = &rec.filed;
    let why = if f.approvals_required == 0 {
        format!(
            "approved at once: policy `{}` requires no approval",
            f.policy_id.as_deref().unwrap_or("")
        )
    } else {
        format!(
            "approved by {}",
            rec.approvals
                .iter()
                .map(|(a, _, _)| who(a))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut ev = event(f, EventKind::RequestApproved, Outcome::Success, why);
    ev.actor = Some(actor.to_owned());
    ev.source_ip = source;
    ev.grant_id = rec.grant_id.clone();
    ev.expires_at = rec.grant.as_ref().map(|g| rfc3339(g.expires_at));
    audit(b, ev).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    customer: Option<String>,
}

/// `GET /v1/requests[?status=&customer=]`.
pub async fn list(b: &Arc<Broker>, conn: &Conn, q: Option<&str>) -> Response<Body> {
    let q: ListQuery = match query(q) {
        Ok(q) => q,
        Err(resp) => return resp,
    };
    let status = match q.status.as_deref().map(|s| (s, RequestStatus::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_status",
                &format!("unknown status `{s}`: use pending, approved, denied or expired"),
            );
        }
    };
    let (customer, technician) = match Scope::of(conn) {
        Scope::All => (q.customer, None),
        Scope::Customer(c) => {
            if q.customer.as_ref().is_some_and(|asked| *asked != c) {
                return error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &format!("you can only see requests of customer `{c}`"),
                );
            }
            (Some(c), None)
        }
        Scope::Technician(t) => (q.customer, Some(t)),
    };
    match b
        .with_store(move |s| s.requests(customer.as_deref(), technician.as_deref(), status))
        .await
    {
        Ok(list) => ok(
            StatusCode::OK,
            serde_json::json!({ "requests": list.iter().map(view).collect::<Vec<_>>() }),
        ),
        Err(e) => store_error(e),
    }
}

/// Loads a request the caller may see; anything else is 404.
async fn visible(b: &Broker, conn: &Conn, id: &str) -> Result<RequestRecord, Response<Body>> {
    let rid = id.to_owned();
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no request `{id}`"),
        )
    };
    match b.with_store(move |s| s.request(&rid)).await {
        Ok(r) if Scope::of(conn).sees(&r.filed.customer, &r.filed.technician) => Ok(r),
        Ok(_) | Err(StoreError::NotFound { .. }) => Err(not_found()),
        Err(e) => Err(store_error(e)),
    }
}

/// `GET /v1/requests/{id}`.
pub async fn show(b: &Arc<Broker>, conn: &Conn, id: &str) -> Response<Body> {
    match visible(b, conn, id).await {
        Ok(r) => ok(StatusCode::OK, view(&r)),
        Err(resp) => resp,
    }
}

/// Checks that the caller is an approver of the request's customer and that the customer's policy
/// lets them approve it; returns the approver's SPIFFE id.
async fn approver_may_decide(
    b: &Broker,
    conn: &Conn,
    rec: &RequestRecord,
    deciding: &str,
) -> Result<String, Response<Body>> {
    let Principal::Approver { customer, name } = conn.peer.id.principal() else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("only the customer's approvers {deciding} requests"),
        ));
    };
    let f = &rec.filed;
    let approver = conn.peer.id.to_string();
    if f.technician == approver {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a requester cannot decide their own request",
        ));
    }
    let conflict = |m: String| error(StatusCode::CONFLICT, "conflict", &m);
    let Some(c) = b.cfg.customer(&f.customer) else {
        return Err(conflict(format!(
            "customer `{}` is no longer configured",
            f.customer
        )));
    };
    let Some(t) = c.target(&f.target) else {
        return Err(conflict(format!(
            "target `{}` of `{}` is no longer configured",
            f.target, f.customer
        )));
    };
    let subject = Subject::Approver {
        id: conn.peer.id.clone(),
        customer: customer.clone(),
        name: name.clone(),
    };
    let ctx = RequestContext {
        now: jiff::Timestamp::now(),
        minutes: f.minutes,
        source_ip: conn.ip,
        ticket: f.ticket.clone(),
    };
    let d = c
        .policy
        .decide(Action::Approve, &subject, &target_info(c, t), &ctx);
    if !d.allowed {
        let mut ev = event(
            f,
            EventKind::ApprovalRecorded,
            Outcome::Deny,
            format!("may not {deciding}: {}", d.reason),
        );
        ev.actor = Some(approver);
        ev.source_ip = Some(conn.ip);
        ev.policy_ids = d.policy_ids;
        audit(b, ev).await?;
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "the policy of `{}` does not let you {deciding} this request: {}",
                f.customer, d.reason
            ),
        ));
    }
    Ok(approver)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/requests/{id}/approve`.
pub async fn approve(
    b: &Arc<Broker>,
    conn: &Conn,
    id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let ApproveBody { comment } = match body(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let comment = match comment
        .as_deref()
        .map(|c| text_field("comment", c, 1000, "leave it out or say something"))
    {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(resp)) => return resp,
    };
    let rec = match visible(b, conn, id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let approver = match approver_may_decide(b, conn, &rec, "approve").await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let gid = format!("g-{}", uuid::Uuid::new_v4().simple());
    let (rid, by, at) = (id.to_owned(), approver.clone(), now());
    let outcome = match b
        .with_store(move |s| s.approve(&rid, &by, comment.as_deref(), &gid, at))
        .await
    {
        Ok(o) => o,
        Err(e) => return store_error(e),
    };
    let rid = id.to_owned();
    let rec = match b.with_store(move |s| s.request(&rid)).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let f = &rec.filed;
    let missing = match outcome {
        Approval::Recorded { missing } => {
            let mut ev = event(
                f,
                EventKind::ApprovalRecorded,
                Outcome::Success,
                format!("approval recorded; {missing} more needed"),
            );
            ev.actor = Some(approver.clone());
            ev.source_ip = Some(conn.ip);
            if let Err(resp) = audit(b, ev).await {
                return resp;
            }
            missing
        }
        Approval::Granted(_) => {
            if let Err(resp) = record_approval(b, &rec, &approver, Some(conn.ip)).await {
                return resp;
            }
            notify(
                b,
                &rec,
                "request_approved",
                format!(
                    "{} approved {}'s {} minutes on {}/{} (request {})",
                    who(&approver),
                    who(&f.technician),
                    f.minutes,
                    f.customer,
                    f.target,
                    f.id
                ),
            );
            0
        }
    };
    tracing::info!(request = %f.id, approver = %approver, missing, "request approved");
    let mut v = view(&rec);
    v["approvals_missing"] = missing.into();
    ok(StatusCode::OK, v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: String,
}

/// `POST /v1/requests/{id}/deny`.
pub async fn deny(
    b: &Arc<Broker>,
    conn: &Conn,
    id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let DenyBody { reason } = match body(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let reason = match text_field("reason", &reason, 1000, "tell the technician why") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let rec = match visible(b, conn, id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let approver = match approver_may_decide(b, conn, &rec, "deny").await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let (rid, by, why, at) = (id.to_owned(), approver.clone(), reason.clone(), now());
    let rec = match b.with_store(move |s| s.deny(&rid, &by, &why, at)).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let f = &rec.filed;
    let mut ev = event(
        f,
        EventKind::RequestDenied,
        Outcome::Success,
        format!("denied: {reason}"),
    );
    ev.actor = Some(approver.clone());
    ev.source_ip = Some(conn.ip);
    if let Err(resp) = audit(b, ev).await {
        return resp;
    }
    notify(
        b,
        &rec,
        "request_denied",
        format!(
            "{} denied {}'s request for {}/{} (request {}): {reason}",
            who(&approver),
            who(&f.technician),
            f.customer,
            f.target,
            f.id
        ),
    );
    tracing::info!(request = %f.id, approver = %approver, "request denied");
    ok(StatusCode::OK, view(&rec))
}

/// `GET /v1/requests/{id}/grant`.
pub async fn grant(b: &Arc<Broker>, conn: &Conn, id: &str) -> Response<Body> {
    let rec = match visible(b, conn, id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let f = &rec.filed;
    if conn.peer.id.role() != Role::Technician || f.technician != conn.peer.id.to_string() {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the requesting technician fetches the grant",
        );
    }
    let conflict = |m: String| error(StatusCode::CONFLICT, "conflict", &m);
    match rec.status {
        RequestStatus::Approved => {}
        RequestStatus::Pending => {
            let missing = f
                .approvals_required
                .saturating_sub(rec.approvals.len() as u32);
            return conflict(format!(
                "request `{id}` is pending: {missing} more approval(s) needed"
            ));
        }
        other => return conflict(format!("request `{id}` was {}", other.as_str())),
    }
    // Bound to the certificate that filed the request, and to no other.
    let presented = B64.encode(conn.peer.thumbprint);
    if !bool::from(f.cert_thumbprint.as_bytes().ct_eq(presented.as_bytes())) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this request was filed with another certificate; file a new request with this one",
        );
    }
    let Some(gid) = rec.grant_id.clone() else {
        return conflict(format!("request `{id}` has no grant"));
    };
    let g = match b.with_store(move |s| s.grant(&gid)).await {
        Ok(g) => g,
        Err(e) => return store_error(e),
    };
    if let Some((_, by, why)) = &g.revoked {
        return conflict(format!(
            "grant `{}` was revoked by {}: {why}",
            g.id,
            who(by)
        ));
    }
    if g.expires_at <= now() {
        return conflict(format!("grant `{}` has expired", g.id));
    }
    if g.not_before
        >= conn
            .peer
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    {
        return conflict(
            "your certificate expires before the grant's window opens; renew it and file a new request"
                .into(),
        );
    }
    // An approval whose record could not be written is recorded now, before anything is handed out.
    if !g.audited {
        let actor = match rec.approvals.last() {
            Some((a, _, _)) => a.clone(),
            None => "policy".to_owned(),
        };
        if let Err(resp) = record_approval(b, &rec, &actor, None).await {
            return resp;
        }
    }
    let Some((customer, target)) = b
        .cfg
        .customer(&g.customer)
        .and_then(|c| Some((c, c.target(&g.target)?)))
    else {
        return conflict(format!(
            "target `{}/{}` is no longer configured",
            g.customer, g.target
        ));
    };
    let at = |unix: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    let spec = match g.id.parse() {
        Ok(gid) => GrantSpec {
            sub: conn.peer.id.clone(),
            customer: customer.id.clone(),
            target: target.id.clone(),
            port: target.port,
            gid,
            not_before: at(g.not_before),
            // A grant never outlives the certificate it is bound to.
            expires_at: at(g.expires_at).min(conn.peer.not_after),
            cert_thumbprint: conn.peer.thumbprint,
        },
        Err(e) => return conflict(format!("grant id `{}`: {e}", g.id)),
    };
    let (token, claims) = match b.signer.mint(&spec) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "minting a grant failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "signing_failed",
                "the grant could not be signed",
            );
        }
    };
    let mut ev = event(
        f,
        EventKind::GrantMinted,
        Outcome::Success,
        "grant fetched by the requesting technician".into(),
    );
    ev.actor = Some(conn.peer.id.to_string());
    ev.source_ip = Some(conn.ip);
    ev.grant_id = Some(g.id.clone());
    ev.expires_at = Some(rfc3339(claims.exp as i64));
    // No token leaves before its record is durable.
    if let Err(resp) = audit(b, ev).await {
        return resp;
    }
    tracing::info!(request = %f.id, grant = %g.id, "grant fetched");
    ok(
        StatusCode::OK,
        serde_json::json!({
            "token": token,
            "grant_id": g.id,
            "request_id": f.id,
            "customer": g.customer,
            "target": g.target,
            "port": target.port,
            "not_before": rfc3339(claims.nbf as i64),
            "expires_at": rfc3339(claims.exp as i64),
        }),
    )
}

/// Expires pending requests whose time is up, every `requests.sweep_interval_seconds`, until the
/// broker shuts down. Each expiry is audited and notified.
pub async fn expire_pending(b: Arc<Broker>) {
    let mut tick = tokio::time::interval(b.cfg.requests.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = b.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let at = now();
        let expired = match b.with_store(move |s| s.expire_pending(at)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "could not expire pending requests");
                continue;
            }
        };
        for rec in expired {
            let f = &rec.filed;
            let mut ev = event(
                f,
                EventKind::RequestExpired,
                Outcome::Success,
                format!(
                    "expired undecided with {} of {} approval(s)",
                    rec.approvals.len(),
                    f.approvals_required
                ),
            );
            ev.actor = Some("broker".into());
            if let Err(e) = b.audit.append(ev).await {
                tracing::error!(error = %e, request = %f.id, "could not audit an expired request");
            }
            notify(
                &b,
                &rec,
                "request_expired",
                format!(
                    "{}'s request for {}/{} expired undecided (request {})",
                    who(&f.technician),
                    f.customer,
                    f.target,
                    f.id
                ),
            );
            tracing::info!(request = %f.id, "pending request expired");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(ids: &[&str]) -> Decision {
        Decision {
            allowed: true,
            reason: String::new(),
            policy_ids: ids.iter().map(|s| s.to_string()).collect(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn the_strictest_permitting_policy_sets_the_terms() {
        let src = r#"
@id("broad") @approvals("1") @max_minutes("240")
permit (principal, action == Sallyport::Action::"request", resource);
@id("prod") @approvals("2") @max_minutes("60")
permit (principal, action == Sallyport::Action::"request", resource);
@id("plain")
permit (principal, action == Sallyport::Action::"request", resource);
@id("instant") @approvals("0")
permit (principal, action == Sallyport::Action::"request", resource);
"#;
        let p = CustomerPolicy::parse("acme".parse().unwrap(), "UTC", "acme.cedar", src).unwrap();
        assert_eq!(
            workflow_terms(&p, &decision(&["broad", "prod"]), 480),
            (2, 60, "broad,prod".into())
        );
        assert_eq!(
            workflow_terms(&p, &decision(&["plain"]), 480),
            (1, 480, "plain".into())
        );
        assert_eq!(workflow_terms(&p, &decision(&["instant"]), 480).0, 0);
        assert_eq!(
            workflow_terms(&p, &decision(&["instant", "broad"]), 480).0,
            1
        );
    }
}
