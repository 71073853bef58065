//! The console's GET pages: sign-in, the approval queue, a request, live sessions, a technician's
//! requests and the filing form. Each reads through the workflow as the signed-in person, so
//! what another tenant's URL gives is the workflow's "not found", recorded as on the API.

use std::collections::HashMap;

use hyper::{Response, StatusCode};
use sallyport_ids::Role;
use sallyport_ids::time::now_unix;
use sallyport_store::RequestStatus;
use sallyport_workflow::error::parse_id;
use sallyport_workflow::sessions::Asked;

use super::http::{Req, safe_next, see_other};
use super::views::{
    ApprovalRow, ChoosePage, Chrome, GrantRow, LockRow, LocksPage, MyPage, NewPage, QueuePage,
    QueuePart, RequestPage, RequestRow, SessionRow, SessionsPage, SessionsPart, SignInPage,
    TargetChoice, render, when,
};
use super::{Console, Ctx, decides, events, records};
use crate::Body;

/// `GET /console` without a session: where to sign in.
pub(crate) fn signin_page(console: &Console, req: &Req) -> Response<Body> {
    let next = if req.path.trim_end_matches('/') == "/console" {
        safe_next(req.q("next").as_deref())
    } else {
        safe_next(Some(&req.path))
    };
    let config = console.config.load();
    let idp = config
        .provider_oidc
        .as_ref()
        .and_then(|p| super::idp_origin_of(&p.oidc));
    let p = SignInPage {
        chrome: Chrome {
            title: "Sign in to Sallyport".into(),
            ..Chrome::default()
        },
        next,
        provider: config.provider_oidc.is_some(),
    };
    render(StatusCode::OK, &p, idp.as_deref())
}

/// `GET /console/login/choose?customer=` (and `/console/login?customer=&role=`, the link a
/// customer bookmarks): the buttons that sign a customer's people in, with a policy naming that
/// customer's IdP for the forms.
pub(crate) fn choose(console: &Console, req: &Req) -> Response<Body> {
    let customer: String = req
        .q("customer")
        .unwrap_or_default()
        .trim()
        .chars()
        .take(64)
        .collect();
    let p = ChoosePage {
        chrome: Chrome {
            title: "Sign in".into(),
            ..Chrome::default()
        },
        next: safe_next(req.q("next").as_deref()),
        role: req.q("role").unwrap_or_default(),
        customer,
    };
    let config = console.config.load();
    let idp = config
        .customer(&p.customer)
        .and_then(|c| c.oidc.as_ref())
        .and_then(|s| super::idp_origin_of(&s.oidc));
    render(StatusCode::OK, &p, idp.as_deref())
}

/// Answers a GET of a signed-in person.
pub(crate) async fn route(cx: &Ctx<'_>, seg: &[&str], secret: &str) -> Response<Body> {
    match seg {
        [] => see_other(home(cx.session.peer.id.role()), &[]),
        ["queue"] => queue(cx).await,
        ["requests", id] => request(cx, id).await,
        ["requests", id, "bundle"] => records::bundle(cx, id).await,
        ["sessions"] => sessions(cx).await,
        ["my"] => my(cx).await,
        ["new"] => new(cx),
        ["audit"] => records::audit(cx).await,
        ["audit", "export"] => records::export(cx).await,
        ["register"] => records::register(cx).await,
        ["locks"] => locks(cx).await,
        ["events"] => events::stream(cx, secret),
        _ => super::views::plain(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such page in the console.",
        ),
    }
}

/// Where a role starts.
fn home(role: Role) -> &'static str {
    match role {
        Role::Approver | Role::Admin => "/console/queue",
        Role::Auditor => "/console/audit",
        Role::Technician => "/console/my",
    }
}

/// The pending requests the person may decide, with what helps decide them.
pub(crate) async fn queue_rows(
    cx: &Ctx<'_>,
) -> Result<Vec<RequestRow>, sallyport_workflow::WorkflowError> {
    let pending = cx
        .console
        .workflow
        .requests
        .list(cx.caller(), Some("pending"), None)
        .await?;
    // The context: the newest requests and sessions (the store's listing bound).
    let all = cx
        .console
        .workflow
        .requests
        .list(cx.caller(), None, None)
        .await?;
    let sessions = cx
        .console
        .workflow
        .sessions
        .list(cx.caller(), Asked::default())
        .await?;
    let mut count: HashMap<(String, String), (usize, usize)> = HashMap::new();
    for r in &all {
        let e = count
            .entry((r.filed.customer.to_string(), r.filed.technician.to_string()))
            .or_default();
        e.0 += 1;
    }
    for s in &sessions {
        let e = count
            .entry((
                s.session.customer.to_string(),
                s.session.technician.to_string(),
            ))
            .or_default();
        e.1 += 1;
    }
    Ok(pending
        .iter()
        .map(|r| {
            let mut row = RequestRow::of(r);
            let (reqs, sess) = count
                .get(&(r.filed.customer.to_string(), r.filed.technician.to_string()))
                .copied()
                .unwrap_or_default();
            row.history = format!(
                "{} other recent request(s) and {sess} session(s) on {}",
                reqs.saturating_sub(1),
                row.customer
            );
            row
        })
        .collect())
}

async fn queue(cx: &Ctx<'_>) -> Response<Body> {
    if !decides(cx.session.peer.id.role()) {
        return see_other(home(cx.session.peer.id.role()), &[]);
    }
    let rows = match queue_rows(cx).await {
        Ok(r) => r,
        Err(e) => return cx.refused(&e),
    };
    if cx.req.q("part").is_some() {
        return render(StatusCode::OK, &QueuePart { rows }, None);
    }
    let p = QueuePage {
        chrome: cx.chrome("Approvals", "/console/queue"),
        rows,
    };
    render(StatusCode::OK, &p, None)
}

async fn request(cx: &Ctx<'_>, id: &str) -> Response<Body> {
    let wf = &cx.console.workflow;
    let rid = match parse_id("request", id) {
        Ok(r) => r,
        Err(e) => return cx.refused(&e),
    };
    let rec = match wf.requests.visible(cx.caller(), &rid).await {
        Ok(r) => r,
        Err(e) => return cx.refused(&e),
    };
    let now = now_unix();
    let role = cx.session.peer.id.role();
    let sessions = match &rec.grant_id {
        Some(gid) => wf
            .sessions
            .list(
                cx.caller(),
                Asked {
                    customer: Some(rec.filed.customer.to_string()),
                    grant: Some(gid.clone()),
                    ..Asked::default()
                },
            )
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|l| SessionRow::of(&l.session, l.live, l.break_glass, now))
            .collect(),
        None => Vec::new(),
    };
    let config = cx.console.config.load();
    let signed = config
        .customer(rec.filed.customer.as_str())
        .is_some_and(|c| c.oidc.is_some());
    let pending = rec.status == RequestStatus::Pending;
    let grant = rec.grant.as_ref().map(|g| GrantRow::of(g, now));
    let p = RequestPage {
        chrome: cx.chrome(format!("Request {}", rec.filed.id), ""),
        approvals: rec
            .approvals
            .iter()
            .map(|a| ApprovalRow {
                approver: a.approver.short(),
                at: when(a.at),
                comment: a.comment.clone().unwrap_or_default(),
            })
            .collect(),
        denial: rec
            .denial
            .as_ref()
            .map(|d| format!("denied by {}: {}", d.by.short(), d.reason))
            .unwrap_or_default(),
        // A customer with its own IdP takes decisions only signed there, by its approvers.
        can_decide: pending && (role == Role::Approver || (role == Role::Admin && !signed)),
        signed,
        can_cancel: pending && rec.filed.technician == cx.session.peer.id,
        can_revoke: grant.as_ref().is_some_and(|g| g.active)
            && (decides(role) || rec.filed.technician == cx.session.peer.id),
        can_export: matches!(role, Role::Approver | Role::Auditor | Role::Admin),
        grant,
        sessions,
        r: RequestRow::of(&rec),
    };
    let idp = cx.idp_origin();
    render(StatusCode::OK, &p, idp.as_deref())
}

/// The live sessions the person may see.
pub(crate) async fn session_rows(
    cx: &Ctx<'_>,
) -> Result<Vec<SessionRow>, sallyport_workflow::WorkflowError> {
    let now = now_unix();
    Ok(cx
        .console
        .workflow
        .sessions
        .list(
            cx.caller(),
            Asked {
                live: true,
                ..Asked::default()
            },
        )
        .await?
        .iter()
        .map(|l| SessionRow::of(&l.session, l.live, l.break_glass, now))
        .collect())
}

async fn sessions(cx: &Ctx<'_>) -> Response<Body> {
    let rows = match session_rows(cx).await {
        Ok(r) => r,
        Err(e) => return cx.refused(&e),
    };
    let can_act = decides(cx.session.peer.id.role());
    let chrome = cx.chrome("Live sessions", "/console/sessions");
    if cx.req.q("part").is_some() {
        return render(
            StatusCode::OK,
            &SessionsPart {
                chrome,
                rows,
                can_act,
            },
            None,
        );
    }
    render(
        StatusCode::OK,
        &SessionsPage {
            chrome,
            rows,
            can_act,
        },
        None,
    )
}

async fn my(cx: &Ctx<'_>) -> Response<Body> {
    let list = match cx
        .console
        .workflow
        .requests
        .list(cx.caller(), None, None)
        .await
    {
        Ok(l) => l,
        Err(e) => return cx.refused(&e),
    };
    let p = MyPage {
        chrome: cx.chrome("My requests", "/console/my"),
        rows: list.iter().take(200).map(RequestRow::of).collect(),
    };
    render(StatusCode::OK, &p, None)
}

fn new(cx: &Ctx<'_>) -> Response<Body> {
    let targets = cx
        .console
        .workflow
        .requests
        .targets(cx.caller())
        .iter()
        .filter(|t| !t.policy_ids.is_empty() || t.max_minutes.is_some())
        .map(|t| TargetChoice {
            value: format!("{}/{}", t.customer, t.target),
            label: format!(
                "{}/{} ({}; up to {} min, {} approval(s))",
                t.customer,
                t.target,
                t.protocol,
                t.max_minutes.unwrap_or(0),
                t.approvals.unwrap_or(0)
            ),
        })
        .collect();
    let p = NewPage {
        chrome: cx.chrome("New request", "/console/new"),
        targets,
    };
    render(StatusCode::OK, &p, None)
}

async fn locks(cx: &Ctx<'_>) -> Response<Body> {
    if !decides(cx.session.peer.id.role()) {
        return see_other(home(cx.session.peer.id.role()), &[]);
    }
    let list = match cx.console.workflow.locks.list(cx.caller(), false).await {
        Ok(l) => l,
        Err(e) => return cx.refused(&e),
    };
    let now = now_unix();
    let rows = list
        .iter()
        .map(|r| {
            let v = sallyport_workflow::locks::view(r, now);
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            LockRow {
                id: s("id"),
                what: match v["certificate"]["serial"].as_str() {
                    Some(serial) => format!(
                        "certificate {serial} of {}",
                        sallyport_ids::short(&s("spiffe_id"))
                    ),
                    None => sallyport_ids::short(&s("spiffe_id")),
                },
                scope: v["customer"]
                    .as_str()
                    .map_or_else(|| "everywhere".to_owned(), |c| format!("at {c}")),
                why: format!(
                    "{} (by {})",
                    s("reason"),
                    sallyport_ids::short(&s("created_by"))
                ),
                until: v["expires_at"]
                    .as_str()
                    .map_or_else(|| "until lifted".to_owned(), |t| format!("until {t}")),
            }
        })
        .collect();
    let customer = cx
        .session
        .peer
        .id
        .principal()
        .customer()
        .map(ToString::to_string)
        .unwrap_or_default();
    let p = LocksPage {
        chrome: cx.chrome("Locks", "/console/locks"),
        rows,
        customer,
    };
    render(StatusCode::OK, &p, None)
}
