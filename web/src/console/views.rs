//! What the console's pages show, as plain data (formatted for people here, escaped by the
//! template engine), and the askama templates that draw them (`web/templates/console/`). Every
//! page has the same frame ([`Chrome`]): who is signed in, the navigation of their role, and the
//! session's CSRF token for its forms.

use askama::Template;
use hyper::{Response, StatusCode};
use sallyport_ids::Role;
use sallyport_ids::time::rfc3339;
use sallyport_store::{GrantRecord, RequestRecord, SessionRecord};
use sallyport_workflow::signin::Page;

use crate::Body;
use crate::session::Session;

/// A navigation entry.
#[derive(Debug, Clone)]
pub struct Link {
    /// Where.
    pub href: &'static str,
    /// Its words.
    pub label: &'static str,
    /// Whether it is the page shown.
    pub current: bool,
}

/// The frame of every page.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    /// The page's heading and title.
    pub title: String,
    /// Who is signed in (`None` on the sign-in page).
    pub who: Option<String>,
    /// Their role and customer, in words.
    pub role: String,
    /// The navigation of their role.
    pub links: Vec<Link>,
    /// The session's CSRF token.
    pub csrf: String,
}

impl Chrome {
    /// The frame for a signed-in person, `here` marking the current link.
    pub fn for_session(title: String, s: &Session, here: &str) -> Self {
        let id = &s.peer.id;
        let role = id.role();
        let all: &[(&str, &str, &[Role])] = &[
            (
                "/console/queue",
                "Approvals",
                &[Role::Approver, Role::Admin],
            ),
            ("/console/my", "My requests", &[Role::Technician]),
            ("/console/new", "New request", &[Role::Technician]),
            (
                "/console/sessions",
                "Live sessions",
                &[Role::Approver, Role::Auditor, Role::Admin, Role::Technician],
            ),
            ("/console/locks", "Locks", &[Role::Approver, Role::Admin]),
            (
                "/console/audit",
                "Audit",
                &[Role::Approver, Role::Auditor, Role::Admin],
            ),
            (
                "/console/register",
                "Access register",
                &[Role::Approver, Role::Auditor, Role::Admin],
            ),
        ];
        let links = all
            .iter()
            .filter(|(_, _, roles)| roles.contains(&role))
            .map(|(href, label, _)| Link {
                href,
                label,
                current: *href == here,
            })
            .collect();
        let role_words = match id.principal().customer() {
            Some(c) => format!("{} of {c}", role.as_str()),
            None => format!("provider {}", role.as_str()),
        };
        Self {
            title,
            who: Some(id.principal().name().to_string()),
            role: role_words,
            links,
            csrf: s.csrf.clone(),
        }
    }
}

/// A page with a heading and a message.
#[derive(Template)]
#[template(path = "console/notice.html")]
pub struct Notice {
    /// The frame.
    pub chrome: Chrome,
    /// Whether it reports success.
    pub ok: bool,
    /// What happened.
    pub text: String,
    /// A link onwards, `(href, words)`.
    pub back: Option<(String, String)>,
    /// Where the page moves on to by itself (a console path).
    pub refresh: Option<String>,
}

/// Renders `t` as an HTML answer.
pub fn render<T: Template>(status: StatusCode, t: &T, idp: Option<&str>) -> Response<Body> {
    match t.render() {
        Ok(s) => super::http::html(status, s, idp),
        Err(e) => {
            tracing::error!(error = %e, "console page could not be rendered");
            super::http::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "page could not be rendered",
            )
        }
    }
}

/// A notice for someone not (or no longer) signed in.
pub fn plain(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let n = Notice {
        chrome: Chrome {
            title: title.into(),
            ..Chrome::default()
        },
        ok: status.is_success(),
        text: text.into(),
        back: Some(("/console".into(), "Go to the console".into())),
        refresh: None,
    };
    render(status, &n, None)
}

/// The page a finished sign-in or decision flow shows.
pub fn notice_page(p: &Page) -> Response<Body> {
    let n = Notice {
        chrome: Chrome {
            title: p.title.clone(),
            ..Chrome::default()
        },
        ok: p.ok,
        text: p.text.clone(),
        back: p.request.as_ref().map(|r| {
            (
                format!("/console/requests/{r}"),
                "Back to the request in the console".into(),
            )
        }),
        refresh: None,
    };
    render(
        if p.ok {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        },
        &n,
        None,
    )
}

/// A time for people: `2026-12-02 17:40:05 UTC`.
pub fn when(unix: i64) -> String {
    rfc3339(unix).replace('T', " ").replace('Z', " UTC")
}

/// A byte count for people.
pub fn bytes(n: u64) -> String {
    #[expect(
        clippy::cast_precision_loss,
        reason = "one decimal for people; exact counts are in the records"
    )]
    let f = n as f64;
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", f / 1024.0),
        _ => format!("{:.1} MiB", f / 1_048_576.0),
    }
}

/// A duration for people.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// A request, as lists and its page show it.
#[derive(Debug, Clone)]
pub struct RequestRow {
    /// Its id.
    pub id: String,
    /// Customer id.
    pub customer: String,
    /// Target id.
    pub target: String,
    /// The technician (`provider/name`).
    pub technician: String,
    /// Minutes asked for.
    pub minutes: u32,
    /// Why.
    pub reason: String,
    /// The ticket, or empty.
    pub ticket: String,
    /// When it would start (`now` when at once).
    pub start: String,
    /// Its status.
    pub status: String,
    /// Approvals still needed.
    pub missing: u32,
    /// Approvals needed in all.
    pub required: u32,
    /// Filed when.
    pub created: String,
    /// Pending until when.
    pub expires: String,
    /// The policy that lets it be filed.
    pub policy: String,
    /// Context for deciding: the technician's other requests and sessions on this customer.
    pub history: String,
}

impl RequestRow {
    /// The row of `r`.
    pub fn of(r: &RequestRecord) -> Self {
        let f = &r.filed;
        Self {
            id: f.id.to_string(),
            customer: f.customer.to_string(),
            target: f.target.to_string(),
            technician: f.technician.short(),
            minutes: f.minutes,
            reason: f.reason.clone(),
            ticket: f.ticket.clone().unwrap_or_default(),
            start: f.start_at.map_or_else(|| "on approval".into(), when),
            status: r.status.as_str().to_owned(),
            missing: r.approvals_missing(),
            required: f.approvals_required,
            created: when(f.created_at),
            expires: when(f.expires_at),
            policy: f.policy_id.clone().unwrap_or_default(),
            history: String::new(),
        }
    }
}

/// An approval given.
#[derive(Debug, Clone)]
pub struct ApprovalRow {
    /// Who.
    pub approver: String,
    /// When.
    pub at: String,
    /// Their words.
    pub comment: String,
}

/// A grant's window.
#[derive(Debug, Clone)]
pub struct GrantRow {
    /// Its id.
    pub id: String,
    /// From.
    pub from: String,
    /// Until.
    pub until: String,
    /// Revoked: by whom and why; empty if not.
    pub revoked: String,
    /// Whether it is in force now.
    pub active: bool,
}

impl GrantRow {
    /// The row of `g` at `now`.
    pub fn of(g: &GrantRecord, now: i64) -> Self {
        Self {
            id: g.id.to_string(),
            from: when(g.not_before),
            until: when(g.expires_at),
            revoked: g
                .revoked
                .as_ref()
                .map(|r| format!("revoked {} by {}: {}", when(r.at), r.by.short(), r.reason))
                .unwrap_or_default(),
            active: g.revoked.is_none() && g.expires_at > now,
        }
    }
}

/// A session.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Its id.
    pub id: String,
    /// Its grant.
    pub grant: String,
    /// Customer.
    pub customer: String,
    /// Target.
    pub target: String,
    /// Technician (`provider/name`).
    pub technician: String,
    /// Technician, SPIFFE id (for a lock).
    pub technician_id: String,
    /// Source address.
    pub source: String,
    /// Since.
    pub since: String,
    /// How long so far (or in all).
    pub duration: String,
    /// Bytes up, for people.
    pub up: String,
    /// Bytes down, for people.
    pub down: String,
    /// Bytes in all, exact.
    pub total: u64,
    /// Open now.
    pub live: bool,
    /// Under a break-glass grant.
    pub break_glass: bool,
    /// Why it closed.
    pub closed: String,
}

impl SessionRow {
    /// The row of `s` at `now`.
    pub fn of(s: &SessionRecord, live: bool, break_glass: bool, now: i64) -> Self {
        Self {
            id: s.id.to_string(),
            grant: s.grant_id.to_string(),
            customer: s.customer.to_string(),
            target: s.target.to_string(),
            technician: s.technician.short(),
            technician_id: s.technician.to_string(),
            source: s.source_ip.to_string(),
            since: when(s.opened_at),
            duration: duration(s.closed_at.unwrap_or(now) - s.opened_at),
            up: bytes(s.bytes_up),
            down: bytes(s.bytes_down),
            total: s.bytes_up + s.bytes_down,
            live,
            break_glass,
            closed: s.close_reason.clone().unwrap_or_default(),
        }
    }
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "console/signin.html")]
pub struct SignInPage {
    /// The frame.
    pub chrome: Chrome,
    /// Where to go once signed in.
    pub next: String,
    /// Whether provider staff can sign in here.
    pub provider: bool,
}

/// A customer's sign-in links.
#[derive(Template)]
#[template(path = "console/choose.html")]
pub struct ChoosePage {
    /// The frame.
    pub chrome: Chrome,
    /// The customer typed.
    pub customer: String,
    /// Where to go once signed in.
    pub next: String,
    /// The role asked for in the link (`approver`, `auditor`), or empty: both buttons.
    pub role: String,
}

/// The approval queue.
#[derive(Template)]
#[template(path = "console/queue.html")]
pub struct QueuePage {
    /// The frame.
    pub chrome: Chrome,
    /// Pending requests.
    pub rows: Vec<RequestRow>,
}

/// The approval queue's list, alone (what a live update fetches).
#[derive(Template)]
#[template(path = "console/queue_part.html")]
pub struct QueuePart {
    /// Pending requests.
    pub rows: Vec<RequestRow>,
}

/// One request.
#[derive(Template)]
#[template(path = "console/request.html")]
pub struct RequestPage {
    /// The frame.
    pub chrome: Chrome,
    /// The request.
    pub r: RequestRow,
    /// Approvals given.
    pub approvals: Vec<ApprovalRow>,
    /// Who denied it and why, or empty.
    pub denial: String,
    /// Its grant.
    pub grant: Option<GrantRow>,
    /// Its sessions.
    pub sessions: Vec<SessionRow>,
    /// Whether the person may approve or deny (an approver or admin, and it is pending).
    pub can_decide: bool,
    /// Whether decisions go through the customer's IdP.
    pub signed: bool,
    /// Whether the person may cancel it (its technician, while pending).
    pub can_cancel: bool,
    /// Whether the person may revoke its grant.
    pub can_revoke: bool,
    /// Whether the person may download its evidence bundle.
    pub can_export: bool,
}

/// Live sessions.
#[derive(Template)]
#[template(path = "console/sessions.html")]
pub struct SessionsPage {
    /// The frame.
    pub chrome: Chrome,
    /// Open sessions.
    pub rows: Vec<SessionRow>,
    /// Whether the person may end sessions, revoke grants and lock technicians.
    pub can_act: bool,
}

/// The live sessions' table, alone.
#[derive(Template)]
#[template(path = "console/sessions_part.html")]
pub struct SessionsPart {
    /// The frame (its token, for the forms in the table).
    pub chrome: Chrome,
    /// Open sessions.
    pub rows: Vec<SessionRow>,
    /// As [`SessionsPage::can_act`].
    pub can_act: bool,
}

/// A technician's requests.
#[derive(Template)]
#[template(path = "console/my.html")]
pub struct MyPage {
    /// The frame.
    pub chrome: Chrome,
    /// Their requests, newest first.
    pub rows: Vec<RequestRow>,
}

/// A target a technician may request.
#[derive(Debug, Clone)]
pub struct TargetChoice {
    /// `customer/target`.
    pub value: String,
    /// In words (with the longest window and approvals needed).
    pub label: String,
}

/// Filing a request.
#[derive(Template)]
#[template(path = "console/new.html")]
pub struct NewPage {
    /// The frame.
    pub chrome: Chrome,
    /// What may be requested.
    pub targets: Vec<TargetChoice>,
}

/// A lock, as the locks page shows it.
#[derive(Debug, Clone)]
pub struct LockRow {
    /// Its id.
    pub id: String,
    /// Whom or what it bars (a technician, or one certificate of theirs).
    pub what: String,
    /// Where: a customer, or everywhere.
    pub scope: String,
    /// Why, and who locked.
    pub why: String,
    /// Until when (or until lifted).
    pub until: String,
}

/// Locks.
#[derive(Template)]
#[template(path = "console/locks.html")]
pub struct LocksPage {
    /// The frame.
    pub chrome: Chrome,
    /// Active locks the person may see.
    pub rows: Vec<LockRow>,
    /// Whether the person locks for one customer only (approvers).
    pub customer: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_say_them() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(3 * 1_048_576), "3.0 MiB");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(125), "2 min 5 s");
        assert_eq!(duration(7260), "2 h 1 min");
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn notices_escape_what_they_show() {
        let html = Notice {
            chrome: Chrome {
                title: "<b>t</b>".into(),
                ..Chrome::default()
            },
            ok: false,
            text: "<script>alert(1)</script>".into(),
            back: None,
            refresh: None,
        }
        .render()
        .unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("lang=\"en\""));
    }
}
