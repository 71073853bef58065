//! The web console, under `/console` on the sign-in listener: approval queue, request pages,
//! live sessions, audit search and export, the access register, and technicians' requests.
//! People sign in at their IdP ([`SignIns::start_console`]); a cookie session ([`Sessions`]) then
//! stands for them as a certificate does on the API, so every action is the workflow's, with its
//! tenant walls, refusals and records exactly as on `/v1`. Every state-changing request is a POST
//! from the console's own origin carrying the session's CSRF token; every call counts against the
//! person's API rate and passes the lock gate.
//!
//! Modules: [`http`] (requests, answers, the pure guards), [`views`] (the pages' data and
//! templates), [`pages`] (GET handlers), [`actions`] (POST handlers), [`records`] (audit search,
//! exports, verification, the access register), [`events`] (server-sent events).

pub mod actions;
pub mod events;
pub mod http;
pub mod pages;
pub mod records;
pub mod views;

use hyper::{Method, Response, StatusCode};
use sallyport_config::SharedConfig;
use sallyport_ids::Role;
use sallyport_workflow::limit::CallLimiter;
use sallyport_workflow::signin::{ConsoleStart, Page};
use sallyport_workflow::{Caller, Workflow, WorkflowError};

use crate::Body;
use crate::session::{COOKIE, FLOW_COOKIE, Session, Sessions, cookie, set_cookie, set_flow_cookie};
use http::{Req, csrf_matches, safe_next, same_origin, see_other};
use views::{Chrome, Notice, render};

/// The origin of an IdP's issuer, for a page whose forms go there.
pub(crate) fn idp_origin_of(oidc: &sallyport_config::OidcSettings) -> Option<String> {
    http::origin_of(&oidc.issuer)
}

/// What the console serves from. Built once by the binary's assembly.
pub struct Console {
    /// The workflow every action goes through.
    pub workflow: Workflow,
    /// The configuration in force (customers, their IdPs, the data directory).
    pub config: SharedConfig,
    /// The audit checkpoint key, as published.
    pub audit_key: serde_json::Value,
    /// Console calls per person (the API's rate).
    pub calls: CallLimiter,
    /// Who is signed in.
    pub sessions: Sessions,
    /// The product version, for OCSF exports.
    pub version: String,
    /// The live pages' event streams.
    pub streams: events::Streams,
    /// Exports, evidence bundles and verifications running at once (each reads a chain).
    pub heavy: Heavy,
}

/// The budget of work that reads a whole chain: [`MAX_HEAVY`] at once, from everyone.
#[derive(Debug, Clone)]
pub struct Heavy(std::sync::Arc<tokio::sync::Semaphore>);

/// Exports, bundles and verifications at once.
pub const MAX_HEAVY: usize = 2;

impl Default for Heavy {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HEAVY)))
    }
}

impl Heavy {
    /// A place, if one is free.
    pub(crate) fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }

    /// The answer when none is.
    pub(crate) fn busy() -> Response<Body> {
        let mut r = views::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Other exports or verifications are running; try again in a minute.",
        );
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("30"),
        );
        r
    }
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// A signed-in person's request.
pub(crate) struct Ctx<'a> {
    pub(crate) console: &'a Console,
    pub(crate) session: Session,
    pub(crate) req: Req,
}

impl Ctx<'_> {
    /// The person as the workflow's caller.
    pub(crate) fn caller(&self) -> Caller<'_> {
        Caller {
            peer: &self.session.peer,
            ip: self.req.ip,
        }
    }

    /// The page frame for this person.
    pub(crate) fn chrome(&self, title: impl Into<String>, here: &str) -> Chrome {
        Chrome::for_session(title.into(), &self.session, here)
    }

    /// The origin of the IdP this person signs decisions at (for the forms' policy).
    pub(crate) fn idp_origin(&self) -> Option<String> {
        let customer = self.session.peer.id.principal().customer()?.clone();
        let config = self.console.config.load();
        let c = config.customer(customer.as_str())?;
        http::origin_of(&c.oidc.as_ref()?.oidc.issuer)
    }

    /// A workflow error as a page.
    pub(crate) fn refused(&self, e: &WorkflowError) -> Response<Body> {
        let (status, title) = status_of(e);
        let n = Notice {
            chrome: self.chrome(title, ""),
            ok: false,
            text: e.to_string(),
            back: None,
            refresh: None,
        };
        render(status, &n, None)
    }
}

/// The status and heading of a workflow error.
pub(crate) fn status_of(e: &WorkflowError) -> (StatusCode, &'static str) {
    match e {
        WorkflowError::Invalid { .. } => (StatusCode::BAD_REQUEST, "Not accepted"),
        WorkflowError::Forbidden(_) | WorkflowError::Locked(_) | WorkflowError::IdpRefused(_) => {
            (StatusCode::FORBIDDEN, "Not allowed")
        }
        WorkflowError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
        WorkflowError::Conflict(_) => (StatusCode::CONFLICT, "Not possible now"),
        WorkflowError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "Slow down"),
        WorkflowError::IdpUnavailable(_) => {
            (StatusCode::BAD_GATEWAY, "Identity provider unavailable")
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
    }
}

impl Console {
    /// The origin browsers reach the console at (`https://host:port`).
    fn base(&self) -> String {
        self.workflow
            .signins
            .redirect_uri()
            .ok()
            .and_then(|u| u.strip_suffix("/oidc/callback").map(str::to_owned))
            .unwrap_or_default()
    }

    /// Answers a request under `/console`.
    pub(crate) async fn route(&self, req: Req) -> Response<Body> {
        let path = req.path.clone();
        let seg: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
        match (&req.method, seg.as_slice()) {
            (&Method::POST, ["login"]) => return self.login(req).await,
            (&Method::GET, ["login"]) if req.q("customer").is_some() => {
                return pages::choose(self, &req);
            }
            (&Method::GET, ["login", "choose"]) => return pages::choose(self, &req),
            _ => {}
        }
        // A live page's updates (its event stream, the lists it fetches) are no use of the
        // session: they must not keep an unattended console signed in.
        let quiet = seg.first() == Some(&"events") || req.q("part").is_some();
        let secret = cookie(&req.cookies, COOKIE).map(str::to_owned);
        let found = secret.and_then(|s| {
            let session = if quiet {
                self.sessions.peek(&s)
            } else {
                self.sessions.get(&s)
            };
            session.map(|x| (s, x))
        });
        let Some((secret, session)) = found else {
            return if quiet {
                // The page's script reloads, and the person sees the sign-in page.
                http::text(StatusCode::UNAUTHORIZED, "signed out")
            } else if req.method == Method::GET {
                pages::signin_page(self, &req)
            } else {
                views::plain(
                    StatusCode::FORBIDDEN,
                    "Not signed in",
                    "Sign in to the console first; nothing was changed.",
                )
            };
        };
        let mut cx = Ctx {
            console: self,
            session,
            req,
        };
        if let Err(r) = self.admit(&cx).await {
            return r;
        }
        if cx.req.method == Method::POST {
            let form = match cx.req.form().await {
                Ok(f) => f,
                Err(r) => return r,
            };
            if !same_origin(cx.req.origin.as_deref(), &self.base())
                || !csrf_matches(form.get("csrf").map(String::as_str), &cx.session.csrf)
            {
                tracing::info!(peer = %cx.session.peer.id, origin = ?cx.req.origin, "console: a form from elsewhere was refused");
                return views::plain(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "This form did not come from the console's own page (its origin or token is wrong); nothing was changed. Reload the page and try again.",
                );
            }
            return actions::route(&mut cx, &seg, &form, &secret).await;
        }
        if cx.req.method != Method::GET {
            return views::plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "Not allowed",
                "The console takes GET and POST only.",
            );
        }
        pages::route(&cx, &seg, &secret).await
    }

    /// The checks of every call: the person's rate, locks, and a customer's own IdP.
    async fn admit(&self, cx: &Ctx<'_>) -> Result<(), Response<Body>> {
        if self.calls.check(&cx.session.peer.id.to_string()).is_err() {
            let mut r = views::plain(
                StatusCode::TOO_MANY_REQUESTS,
                "Slow down",
                "Too many requests from you in a short time; wait a minute.",
            );
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("60"),
            );
            return Err(r);
        }
        if let Err(e) = self.workflow.locks.gate().admit(cx.caller(), None).await {
            return Err(cx.refused(&e));
        }
        if let Err(e) = self.workflow.signins.admit(cx.caller()).await {
            return Err(cx.refused(&e));
        }
        Ok(())
    }

    /// `POST /console/login` `customer=&role=&next=`, from the console's own sign-in pages:
    /// starts a sign-in bound to this browser (a POST with the console's origin, so that no other
    /// site can start sign-ins in people's browsers).
    async fn login(&self, mut req: Req) -> Response<Body> {
        let form = match req.form().await {
            Ok(f) => f,
            Err(r) => return r,
        };
        if !same_origin(req.origin.as_deref(), &self.base()) {
            return views::plain(
                StatusCode::FORBIDDEN,
                "Refused",
                "A sign-in starts from the console's own page; nothing was started.",
            );
        }
        let field = |k: &str| form.get(k).filter(|v| !v.is_empty()).cloned();
        let role = match field("role").as_deref() {
            None => None,
            Some("approver") => Some(Role::Approver),
            Some("auditor") => Some(Role::Auditor),
            Some("technician") => Some(Role::Technician),
            Some("admin") => Some(Role::Admin),
            Some(_) => {
                return views::plain(
                    StatusCode::BAD_REQUEST,
                    "Unknown role",
                    "`role` is one of approver, auditor, technician, admin.",
                );
            }
        };
        let binding = sallyport_oidc::pkce::random_token();
        let start = ConsoleStart {
            customer: field("customer"),
            role,
            binding: binding.clone(),
            next: safe_next(field("next").as_deref()),
        };
        match self.workflow.signins.start_console(start, req.ip).await {
            Ok(s) => see_other(&s.url, &[set_flow_cookie(&binding, 600)]),
            Err(e) => {
                let (status, title) = status_of(&e);
                views::plain(status, title, &e.to_string())
            }
        }
    }

    /// What the callback of a console sign-in answers: a session for the browser that started it
    /// (any session it had ends), and a page that moves on to where it was going. Not a redirect:
    /// the callback is the end of a cross-site navigation from the IdP, on which the `Strict`
    /// session cookie would not go; the page's own navigation is same-site.
    pub(crate) fn signed_in(&self, page: Page, cookies: &str) -> Response<Body> {
        let Some(signin) = page.console else {
            return views::notice_page(&page);
        };
        // The workflow checked the binding before using the code; checked again here.
        let bound =
            cookie(cookies, FLOW_COOKIE).is_some_and(|b| csrf_matches(Some(b), &signin.binding));
        if !bound {
            return views::plain(
                StatusCode::FORBIDDEN,
                "Refused",
                "This sign-in was started in another browser (or its cookie expired), so it does not sign this one in. Start again from the console.",
            );
        }
        if let Some(old) = cookie(cookies, COOKIE) {
            self.sessions.end(old);
        }
        let value = self.sessions.open(&signin);
        let n = Notice {
            chrome: views::Chrome {
                title: "Signed in".into(),
                ..views::Chrome::default()
            },
            ok: true,
            text: page.text,
            back: Some((signin.next.clone(), "Continue to the console".into())),
            refresh: Some(signin.next.clone()),
        };
        let mut r = render(StatusCode::OK, &n, None);
        for c in [
            set_cookie(COOKIE, &value, None),
            set_cookie(FLOW_COOKIE, "", Some(0)),
        ] {
            if let Ok(v) = hyper::header::HeaderValue::from_str(&c) {
                r.headers_mut().append(hyper::header::SET_COOKIE, v);
            }
        }
        r
    }
}

/// What a page shows for a role: whether it may act on requests of customers.
pub(crate) fn decides(role: Role) -> bool {
    matches!(role, Role::Approver | Role::Admin)
}
