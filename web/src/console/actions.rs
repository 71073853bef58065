//! The console's POST actions (each already checked for origin and CSRF token): file, approve,
//! deny, cancel, revoke, end a session, lock a technician, verify the chain, sign out. Each calls
//! the workflow exactly as the API does, so the same rules refuse and the same records land; on
//! success the browser is sent back where it was (post, redirect, get). A decision for a customer
//! with its own IdP goes to that IdP's request-bound sign-in instead.

use std::collections::HashMap;

use hyper::{Response, StatusCode};
use sallyport_audit::Decision;
use sallyport_workflow::error::parse_id;
use sallyport_workflow::locks::LockAsk;
use sallyport_workflow::requests::Filing;
use sallyport_workflow::terms;

use super::http::{safe_next, see_other};
use super::{Ctx, records};
use crate::Body;
use crate::session::{COOKIE, set_cookie};

type Form = HashMap<String, String>;

fn field<'a>(f: &'a Form, name: &str) -> Option<&'a str> {
    f.get(name)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

/// Answers a POST under `/console`.
pub(crate) async fn route(
    cx: &mut Ctx<'_>,
    seg: &[&str],
    form: &Form,
    secret: &str,
) -> Response<Body> {
    let back = safe_next(field(form, "back"));
    let done = match seg {
        ["logout"] => {
            // Ending a session is always safe: it ends even when its record cannot be written.
            cx.console.sessions.end(secret);
            let peer = &cx.session.peer;
            let mut ev = sallyport_audit::AuditEvent::new(
                sallyport_audit::EventKind::SignedOut,
                sallyport_audit::Outcome::Success,
                format!("signed out of the web console as {}", peer.id.short()),
            );
            ev.customer = peer.id.principal().customer().cloned();
            ev.actor = Some(peer.id.to_string());
            ev.source_ip = Some(cx.req.ip);
            ev.cert_sha256 = Some(peer.fingerprint());
            if let Err(e) = cx.console.workflow.requests.context().record(ev).await {
                tracing::warn!(error = %e, peer = %peer.id, "sign-out not recorded");
            }
            return see_other("/console", &[set_cookie(COOKIE, "", Some(0))]);
        }
        ["requests"] => return file(cx, form).await,
        ["requests", id, "approve"] => return decide(cx, id, Decision::Approve, form).await,
        ["requests", id, "deny"] => return decide(cx, id, Decision::Deny, form).await,
        ["requests", id, "cancel"] => cancel(cx, id, form).await,
        ["grants", id, "revoke"] => revoke(cx, id, form).await,
        ["sessions", id, "end"] => end(cx, id).await,
        ["locks"] => lock(cx, form).await,
        ["locks", id, "unlock"] => unlock(cx, id, form).await,
        ["audit", "verify"] => return records::verify(cx, form).await,
        _ => {
            return super::views::plain(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such action in the console; nothing was changed.",
            );
        }
    };
    match done {
        Ok(()) => see_other(&back, &[]),
        Err(e) => cx.refused(&e),
    }
}

async fn file(cx: &Ctx<'_>, form: &Form) -> Response<Body> {
    let requests = &cx.console.workflow.requests;
    let filed = async {
        // The grant is bound to a certificate: the technician's newest valid one.
        let (holder, _cert) = requests.holder_of_certificate(cx.caller()).await?;
        let caller = sallyport_workflow::Caller {
            peer: &holder,
            ip: cx.req.ip,
        };
        let filer = requests.filer(caller).await?;
        let (customer, target) = field(form, "target")
            .and_then(|t| t.split_once('/'))
            .ok_or_else(|| {
                sallyport_workflow::WorkflowError::invalid(
                    "bad_target",
                    "choose a target from the list",
                )
            })?;
        let minutes = field(form, "minutes")
            .and_then(|m| m.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                sallyport_workflow::WorkflowError::invalid(
                    "bad_minutes",
                    "`minutes` must be a whole number of minutes",
                )
            })?;
        requests
            .file(
                filer,
                Filing {
                    customer: customer.to_owned(),
                    target: target.to_owned(),
                    minutes,
                    reason: form.get("reason").cloned().unwrap_or_default(),
                    ticket: field(form, "ticket").map(str::to_owned),
                    start_at: field(form, "start_at").map(str::to_owned),
                },
            )
            .await
    }
    .await;
    match filed {
        Ok(rec) => see_other(&format!("/console/requests/{}", rec.filed.id), &[]),
        Err(e) => cx.refused(&e),
    }
}

async fn decide(cx: &Ctx<'_>, id: &str, decision: Decision, form: &Form) -> Response<Body> {
    let wf = &cx.console.workflow;
    let back = format!("/console/requests/{id}");
    let outcome = async {
        let rid = parse_id("request", id)?;
        let words = match decision {
            Decision::Approve => terms::comment(field(form, "comment"))?,
            Decision::Deny => Some(terms::deny_reason(
                form.get("reason").map_or("", String::as_str),
            )?),
        };
        let config = cx.console.config.load();
        let signed = wf
            .requests
            .customer_of(&rid)
            .await
            .and_then(|c| config.customer(c.as_str()).map(|c| c.oidc.is_some()))
            .unwrap_or(false);
        if signed {
            // To the customer's IdP, with a nonce bound to this request and these words.
            let started = wf
                .signins
                .start_decision(cx.caller(), &rid, decision, words)
                .await?;
            return Ok(Some(started.url));
        }
        match (decision, words) {
            (Decision::Approve, w) => wf.requests.approve(cx.caller(), &rid, w).await.map(|_| ()),
            (Decision::Deny, Some(w)) => wf.requests.deny(cx.caller(), &rid, w).await.map(|_| ()),
            (Decision::Deny, None) => Err(sallyport_workflow::WorkflowError::invalid(
                "bad_reason",
                "a denial needs a reason",
            )),
        }?;
        Ok::<_, sallyport_workflow::WorkflowError>(None)
    }
    .await;
    match outcome {
        Ok(Some(idp)) => see_other(&idp, &[]),
        Ok(None) => see_other(&back, &[]),
        Err(e) => cx.refused(&e),
    }
}

async fn cancel(
    cx: &Ctx<'_>,
    id: &str,
    form: &Form,
) -> Result<(), sallyport_workflow::WorkflowError> {
    let rid = parse_id("request", id)?;
    let reason = terms::cancel_reason(field(form, "reason"))?;
    cx.console
        .workflow
        .requests
        .cancel(cx.caller(), &rid, reason)
        .await
        .map(|_| ())
}

async fn revoke(
    cx: &Ctx<'_>,
    id: &str,
    form: &Form,
) -> Result<(), sallyport_workflow::WorkflowError> {
    let gid = parse_id("grant", id)?;
    let reason = terms::revoke_reason(form.get("reason").map_or("", String::as_str))?;
    cx.console
        .workflow
        .grants
        .revoke(cx.caller(), &gid, reason)
        .await
        .map(|_| ())
}

async fn end(cx: &Ctx<'_>, id: &str) -> Result<(), sallyport_workflow::WorkflowError> {
    let sid = parse_id("session", id)?;
    cx.console
        .workflow
        .sessions
        .end(cx.caller(), &sid)
        .await
        .map(|_| ())
}

async fn lock(cx: &Ctx<'_>, form: &Form) -> Result<(), sallyport_workflow::WorkflowError> {
    let minutes = match field(form, "minutes") {
        Some(m) => Some(m.trim().parse::<u64>().map_err(|_| {
            sallyport_workflow::WorkflowError::invalid(
                "bad_minutes",
                "`minutes` must be a whole number of minutes",
            )
        })?),
        None => None,
    };
    cx.console
        .workflow
        .locks
        .lock(
            cx.caller(),
            LockAsk {
                spiffe_id: field(form, "spiffe_id").map(str::to_owned),
                certificate: None,
                customer: field(form, "customer").map(str::to_owned),
                reason: form.get("reason").cloned().unwrap_or_default(),
                expires_at: None,
                minutes,
            },
        )
        .await
        .map(|_| ())
}

async fn unlock(
    cx: &Ctx<'_>,
    id: &str,
    form: &Form,
) -> Result<(), sallyport_workflow::WorkflowError> {
    let lid = parse_id("lock", id)?;
    let reason = terms::comment(field(form, "reason"))?;
    cx.console
        .workflow
        .locks
        .unlock(cx.caller(), &lid, reason)
        .await
        .map(|_| ())
}
