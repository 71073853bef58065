//! Sign-in at identity providers (OpenID Connect, authorization code flow with PKCE), and the
//! decisions a customer's IdP signs.
//!
//! Two flows, each started by a caller and finished by the IdP sending the person's browser back to
//! the sign-in listener's `/oidc/callback` with a code:
//! - a **login** ([`SignIns::start_login`]): a person without a certificate sends a certificate
//!   signing request (the key stays on their machine) and signs in at the provider's IdP
//!   (technicians, admins) or at a customer's (its approvers, auditors); the broker issues a
//!   certificate for the request's key, valid for the IdP's `cert_hours` at most, recording the
//!   sign-in in it, on the trail (`signed_in`) and in the register of issued certificates. The
//!   starter fetches it with the flow's secret ([`SignIns::wait_login`]).
//! - a **console sign-in** ([`SignIns::start_console`]): the same sign-in, for the web console: no
//!   certificate; the callback hands the verified identity ([`ConsoleSignIn`]) to the listener,
//!   which opens a cookie session for the browser that started the flow (its `binding`).
//! - a **decision** ([`SignIns::start_decision`]): an approver of a customer with an IdP approves
//!   or denies a request; the IdP's sign-in carries a nonce that commits to the request's
//!   `request_filed` record, the decision and the words ([`sallyport_audit::decision_nonce`]), with
//!   a fresh authentication (`prompt=login`, `max_age=0`), and the ID token goes onto the trail with
//!   the decision. [`SignIns::decide_with_token`] takes such a token obtained by the client itself.
//!
//! Every refusal is recorded (`signin_failed`, or the decision record with outcome `deny`). Flows
//! live in memory, bounded ([`MAX_FLOWS`], [`MAX_FLOWS_PER_SOURCE`]) and for [`FLOW_TTL`]; a
//! callback's `state` is good once. The pure rules are in [`rules`].

pub mod rules;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sallyport_audit::{AuditEvent, Decision, EventKind, IdpEvidence, Outcome, decision_nonce};
use sallyport_certs::identity::{PeerIdentity, certificate_serial};
use sallyport_certs::pki::{CertificateAuthority, Validity};
use sallyport_config::{OidcSettings, SharedConfig};
use sallyport_ids::{CustomerId, RequestId, Role, SpiffeId};
use sallyport_oidc::pkce::{AuthorizationRequest, Pkce, random_token};
use sallyport_oidc::provider::{Provider, ProviderConfig};
use sallyport_oidc::token::{Expect, IdClaims};
use sallyport_store::{IssuedCertificate, RequestStatus};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::requests::Requests;
use crate::terms::Words;
use crate::{Caller, Context, WorkflowError};

/// Flows in progress at once, from everyone.
pub const MAX_FLOWS: usize = 1024;
/// Flows in progress at once from one source address.
pub const MAX_FLOWS_PER_SOURCE: usize = 16;
/// How long a flow may take, from its start to its callback (and how long its outcome is kept).
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// Clock-skew leeway when checking ID tokens.
pub const TOKEN_LEEWAY: u64 = 60;
/// The longest certificate signing request taken.
pub const MAX_CSR_BYTES: usize = 8 * 1024;
/// The scopes asked for.
const SCOPE: &str = "openid profile email groups";

/// What a flow ended with, for the one waiting on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// Done: the issued identity (logins) or the decided request (decisions), as JSON.
    Ok(serde_json::Value),
    /// Refused (`code`, and why in words).
    Refused {
        /// A short machine-readable name.
        code: &'static str,
        /// What went wrong and what to do.
        message: String,
    },
}

/// A started flow: where to send the person, and how to follow it.
#[derive(Debug, Clone)]
pub struct Started {
    /// The flow's id.
    pub id: String,
    /// The IdP's authorization URL to open in a browser.
    pub url: String,
    /// Logins: the secret that fetches the certificate (only the starter has it).
    pub secret: Option<String>,
}

/// What a finished callback shows the person in the browser.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Whether it worked.
    pub ok: bool,
    /// A heading.
    pub title: String,
    /// What happened, and what to do next.
    pub text: String,
    /// A console sign-in that worked: the identity to open a session for.
    pub console: Option<Box<ConsoleSignIn>>,
    /// The request a decision flow was about (for a link back to it).
    pub request: Option<RequestId>,
}

impl Page {
    /// A page with no console sign-in and no request.
    pub fn notice(ok: bool, title: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            ok,
            title: title.into(),
            text: text.into(),
            console: None,
            request: None,
        }
    }
}

/// A console sign-in that verified: who the person is, as a certificate would say (its
/// `thumbprint` names the session, not a certificate), and the browser it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleSignIn {
    /// The person, with the sign-in's groups and IdP attributes; `not_after` is the session's end.
    pub peer: PeerIdentity,
    /// The binding the flow was started with: only the browser holding it gets the session.
    pub binding: String,
    /// The session's random secret (its cookie), whose SHA-256 is `peer.thumbprint`.
    pub secret: String,
    /// Where to go once signed in (a console path).
    pub next: String,
}

/// A console sign-in to start.
#[derive(Debug, Clone)]
pub struct ConsoleStart {
    /// `None`: the provider's IdP; a customer: its IdP.
    pub customer: Option<String>,
    /// The role wanted at a customer's IdP, for a person who is both approver and auditor.
    pub role: Option<Role>,
    /// A random value the browser keeps (a cookie) and must show at the callback.
    pub binding: String,
    /// Where to go once signed in (a console path, checked by the caller).
    pub next: String,
}

/// The longest a console session lives, whatever the IdP's `cert_hours`.
pub const CONSOLE_MAX_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The SHA-256 a console session stands under where a certificate's would (locks, records).
pub fn console_thumbprint(secret: &str) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"sallyport/console-session/v1\n");
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// A login to start.
#[derive(Debug, Clone)]
pub struct LoginStart {
    /// `None`: the provider's IdP (technicians, admins); a customer: its IdP.
    pub customer: Option<String>,
    /// The role wanted at a customer's IdP when the person is both approver and auditor.
    pub role: Option<Role>,
    /// The certificate signing request (PEM) for the key the certificate is for.
    pub csr: String,
}

enum Kind {
    Login {
        customer: Option<CustomerId>,
        role: Option<Role>,
        csr: String,
        secret: String,
    },
    Console {
        customer: Option<CustomerId>,
        role: Option<Role>,
        binding: String,
        next: String,
    },
    Decision {
        approver: Box<PeerIdentity>,
        request: RequestId,
        decision: Decision,
        words: Option<Words>,
    },
}

struct Flow {
    kind: Arc<Kind>,
    source: IpAddr,
    started: Instant,
    started_unix: u64,
    issuer: String,
    nonce: String,
    verifier: String,
    done: watch::Sender<Option<Done>>,
}

#[derive(Default)]
struct Flows {
    by_id: HashMap<String, Flow>,
    by_state: HashMap<String, String>,
}

impl Flows {
    fn sweep(&mut self) {
        let by_id = &mut self.by_id;
        by_id.retain(|_, f| f.started.elapsed() < FLOW_TTL);
        self.by_state.retain(|_, id| by_id.contains_key(id));
    }
}

struct Inner {
    cx: Context,
    config: SharedConfig,
    requests: Requests,
    ca: Option<CertificateAuthority>,
    idps: Mutex<HashMap<(String, String), Provider>>,
    flows: Mutex<Flows>,
    base_url: OnceLock<String>,
    broker_address: OnceLock<String>,
}

/// Sign-ins and IdP-signed decisions. Cheap to clone.
#[derive(Clone)]
pub struct SignIns(Arc<Inner>);

impl std::fmt::Debug for SignIns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIns").finish_non_exhaustive()
    }
}

/// What a callback carried.
#[derive(Debug, Clone, Default)]
pub struct Callback {
    /// `state`.
    pub state: Option<String>,
    /// `code`.
    pub code: Option<String>,
    /// `error` (the IdP refused or the person cancelled).
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
    /// `iss` (RFC 9207): which IdP sent the person back, when it says.
    pub iss: Option<String>,
    /// The sign-in binding the browser holds (its cookie), for console sign-ins.
    pub binding: Option<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refused(code: &'static str, message: impl Into<String>) -> Done {
    Done::Refused {
        code,
        message: message.into(),
    }
}

impl SignIns {
    /// The service over `cx`, deciding through `requests`, issuing certificates with `ca` (`None`:
    /// logins are refused; decisions still work).
    pub fn new(
        cx: Context,
        config: SharedConfig,
        requests: Requests,
        ca: Option<CertificateAuthority>,
    ) -> Self {
        Self(Arc::new(Inner {
            cx,
            config,
            requests,
            ca,
            idps: Mutex::new(HashMap::new()),
            flows: Mutex::new(Flows::default()),
            base_url: OnceLock::new(),
            broker_address: OnceLock::new(),
        }))
    }

    /// Sets the URL browsers reach the sign-in listener at (once, when it is bound).
    pub fn set_base_url(&self, url: String) {
        let _ = self.0.base_url.set(url.trim_end_matches('/').to_owned());
    }

    /// Sets the mTLS address written into the identity folders of people signing in (once, when
    /// the broker's listener is bound); default `server.public_address`.
    pub fn set_broker_address(&self, address: String) {
        let _ = self.0.broker_address.set(address);
    }

    /// The redirect URI registered at every IdP: `<base>/oidc/callback`.
    pub fn redirect_uri(&self) -> Result<String, WorkflowError> {
        self.0
            .base_url
            .get()
            .map(|b| format!("{b}/oidc/callback"))
            .ok_or_else(|| {
                WorkflowError::Conflict(
                    "sign-in is off: this broker has no sign-in listener; set `[web] listen` in its configuration"
                        .into(),
                )
            })
    }

    fn provider(&self, oidc: &OidcSettings) -> Result<Provider, WorkflowError> {
        // A reload that changes the secret or the CA file gets a new client.
        let key = (
            oidc.issuer.clone(),
            format!(
                "{}\n{:?}\n{}",
                oidc.client_id,
                oidc.ca,
                oidc.client_secret.as_ref().map_or("", |s| s.expose())
            ),
        );
        let mut idps = self.0.idps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = idps.get(&key) {
            return Ok(p.clone());
        }
        let p = Provider::new(ProviderConfig {
            issuer: oidc.issuer.clone(),
            client_id: oidc.client_id.clone(),
            client_secret: oidc.client_secret.as_ref().map(|s| s.expose().to_owned()),
            tls: oidc.tls.clone(),
        })
        .map_err(|e| WorkflowError::IdpUnavailable(e.to_string()))?;
        // Clients of settings reloaded away are dropped now and then, never kept without bound.
        if idps.len() >= 64 {
            idps.clear();
        }
        idps.insert(key, p.clone());
        Ok(p)
    }

    /// Registers a flow and builds its authorization URL.
    async fn begin(
        &self,
        kind: Kind,
        oidc: &OidcSettings,
        nonce: String,
        fresh: bool,
        source: IpAddr,
    ) -> Result<Started, WorkflowError> {
        let redirect = self.redirect_uri()?;
        let idp = self.provider(oidc)?;
        let discovery = idp
            .discovery()
            .await
            .map_err(|e| WorkflowError::IdpUnavailable(e.to_string()))?;
        let pkce = Pkce::new();
        let (id, state) = (random_token(), random_token());
        let url = AuthorizationRequest {
            endpoint: &discovery.authorization_endpoint,
            client_id: &oidc.client_id,
            redirect_uri: &redirect,
            scope: SCOPE,
            state: &state,
            nonce: &nonce,
            code_challenge: &pkce.challenge,
            prompt: fresh.then_some("login"),
            max_age: fresh.then_some(0),
            login_hint: None,
        }
        .url();
        let secret = match &kind {
            Kind::Login { secret, .. } => Some(secret.clone()),
            Kind::Console { .. } | Kind::Decision { .. } => None,
        };
        let mut flows = self.0.flows.lock().unwrap_or_else(|p| p.into_inner());
        flows.sweep();
        if flows.by_id.len() >= MAX_FLOWS {
            return Err(WorkflowError::RateLimited {
                what: "sign-ins in progress",
                wait: Duration::from_secs(60),
            });
        }
        if flows.by_id.values().filter(|f| f.source == source).count() >= MAX_FLOWS_PER_SOURCE {
            return Err(WorkflowError::RateLimited {
                what: "sign-ins in progress from this address",
                wait: Duration::from_secs(60),
            });
        }
        let (done, _) = watch::channel(None);
        flows.by_state.insert(state, id.clone());
        flows.by_id.insert(
            id.clone(),
            Flow {
                kind: Arc::new(kind),
                source,
                started: Instant::now(),
                started_unix: unix_now(),
                issuer: oidc.issuer.clone(),
                nonce,
                verifier: pkce.verifier,
                done,
            },
        );
        Ok(Started { id, url, secret })
    }

    /// Refuses (and records) an approver or auditor of a customer with its own IdP whose
    /// certificate did not come from a sign-in there: the provider's CA alone cannot make one.
    pub async fn admit(&self, caller: Caller<'_>) -> Result<(), WorkflowError> {
        let customer = match caller.peer.id.principal() {
            sallyport_ids::Principal::Approver { customer, .. }
            | sallyport_ids::Principal::Auditor { customer, .. } => customer,
            _ => return Ok(()),
        };
        let config = self.0.config.load();
        let Some(signin) = config
            .customer(customer.as_str())
            .and_then(|c| c.oidc.as_ref())
        else {
            return Ok(());
        };
        if rules::signed_in_at(caller.peer, signin) {
            return Ok(());
        }
        let no = WorkflowError::Forbidden(format!(
            "`{customer}` signs its {}s in at its own identity provider ({}); this certificate did not come from a sign-in there. Sign in with `sallyport login --customer {customer}`",
            caller.peer.id.role().as_str(),
            signin.oidc.issuer
        ));
        Err(self
            .0
            .cx
            .refused(
                caller,
                crate::refusals::Attempt::new(format!(
                    "use a certificate of `{customer}` not signed in at its identity provider"
                )),
                no,
            )
            .await)
    }

    /// Starts a login: checks the request and where to sign in, and returns the IdP's URL.
    pub async fn start_login(
        &self,
        login: LoginStart,
        source: IpAddr,
    ) -> Result<Started, WorkflowError> {
        if self.0.ca.is_none() {
            return Err(WorkflowError::Conflict(
                "this broker cannot issue certificates: its CA key (`tls.ca_key`) is not readable"
                    .into(),
            ));
        }
        if login.csr.len() > MAX_CSR_BYTES || !login.csr.contains("CERTIFICATE REQUEST") {
            return Err(WorkflowError::invalid(
                "bad_csr",
                "`csr` must be a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----) of at most 8 KiB",
            ));
        }
        let (customer, oidc) = self.where_to_sign_in(login.customer.as_deref(), login.role)?;
        let kind = Kind::Login {
            customer,
            role: login.role,
            csr: login.csr,
            secret: random_token(),
        };
        self.begin(kind, &oidc, random_token(), false, source).await
    }

    /// Starts a console sign-in at the provider's IdP or `customer`'s.
    pub async fn start_console(
        &self,
        start: ConsoleStart,
        source: IpAddr,
    ) -> Result<Started, WorkflowError> {
        let (customer, oidc) = self.where_to_sign_in(start.customer.as_deref(), start.role)?;
        let kind = Kind::Console {
            customer,
            role: start.role,
            binding: start.binding,
            next: start.next,
        };
        self.begin(kind, &oidc, random_token(), false, source).await
    }

    /// The IdP a person signs in at: the provider's (`customer` `None`; technicians, admins) or
    /// the customer's.
    fn where_to_sign_in(
        &self,
        customer: Option<&str>,
        role: Option<Role>,
    ) -> Result<(Option<CustomerId>, OidcSettings), WorkflowError> {
        let config = self.0.config.load();
        match customer {
            None => {
                let p = config.provider_oidc.as_ref().ok_or_else(|| {
                    WorkflowError::NotFound(
                        "sign-in for provider staff is off: this broker has no `[provider.oidc]`"
                            .into(),
                    )
                })?;
                if matches!(role, Some(Role::Approver | Role::Auditor)) {
                    return Err(WorkflowError::invalid(
                        "bad_role",
                        "approvers and auditors sign in at their customer's IdP: give `customer`",
                    ));
                }
                Ok((None, p.oidc.clone()))
            }
            Some(c) => {
                let no = || {
                    WorkflowError::NotFound(format!(
                        "customer `{c}` has no identity provider to sign in at"
                    ))
                };
                let customer = config.customer(c).ok_or_else(no)?;
                let s = customer.oidc.as_ref().ok_or_else(no)?;
                Ok((Some(customer.id.clone()), s.oidc.clone()))
            }
        }
    }

    /// Checks that `caller` may decide request `id` at its customer's IdP and starts the sign-in
    /// that signs the decision.
    pub async fn start_decision(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        decision: Decision,
        words: Option<Words>,
    ) -> Result<Started, WorkflowError> {
        let (nonce, oidc, _) = self
            .decision_terms(caller, id, decision, words.as_ref())
            .await?;
        let kind = Kind::Decision {
            approver: Box::new(caller.peer.clone()),
            request: id.clone(),
            decision,
            words,
        };
        self.begin(kind, &oidc, nonce, true, caller.ip).await
    }

    /// The nonce and IdP of a decision `caller` may take on request `id` (recorded refusals
    /// otherwise).
    async fn decision_terms(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        decision: Decision,
        words: Option<&Words>,
    ) -> Result<(String, OidcSettings, u64), WorkflowError> {
        let (rec, signin) = self
            .0
            .requests
            .may_decide_signed(caller, id, decision)
            .await?;
        if rec.status != RequestStatus::Pending {
            return Err(WorkflowError::Conflict(format!(
                "request `{id}` is {}, not pending",
                rec.status.as_str()
            )));
        }
        let filed = rec.filed.filed_hash.as_deref().ok_or_else(|| {
            WorkflowError::Conflict(format!(
                "request `{id}` was filed before approvals were signed at the customer's IdP; ask for a new request"
            ))
        })?;
        let nonce = decision_nonce(filed, decision, words.map_or("", Words::as_str));
        let filed_at = u64::try_from(rec.filed.created_at).unwrap_or(0);
        Ok((nonce, signin.oidc, filed_at))
    }

    /// Decides request `id` with an ID token the client obtained from the customer's IdP itself
    /// (with the decision's nonce): checked exactly as a callback's token is.
    pub async fn decide_with_token(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        decision: Decision,
        words: Option<Words>,
        token: &str,
    ) -> Result<serde_json::Value, WorkflowError> {
        let (nonce, oidc, filed_at) = self
            .decision_terms(caller, id, decision, words.as_ref())
            .await?;
        let kind = Kind::Decision {
            approver: Box::new(caller.peer.clone()),
            request: id.clone(),
            decision,
            words,
        };
        match self
            .finish_decision(&kind, &oidc, &nonce, Some(filed_at), token, caller.ip)
            .await
        {
            Done::Ok(v) => Ok(v),
            Done::Refused { code, message } => Err(if code == "audit_unavailable" {
                WorkflowError::AuditUnavailable
            } else {
                WorkflowError::IdpRefused(message)
            }),
        }
    }

    /// Waits up to `timeout` for login `id`'s outcome; `Ok(None)`: still waiting. Only the holder
    /// of the login's secret learns anything, even that it exists.
    pub async fn wait_login(
        &self,
        id: &str,
        secret: &str,
        timeout: Duration,
    ) -> Result<Option<Done>, WorkflowError> {
        let mut rx = {
            let flows = self.0.flows.lock().unwrap_or_else(|p| p.into_inner());
            let flow = flows.by_id.get(id).filter(|f| match &*f.kind {
                Kind::Login { secret: s, .. } => bool::from(s.as_bytes().ct_eq(secret.as_bytes())),
                Kind::Console { .. } | Kind::Decision { .. } => false,
            });
            match flow {
                Some(f) => f.done.subscribe(),
                None => {
                    return Err(WorkflowError::NotFound(
                        "no such sign-in (it may have expired: start again)".into(),
                    ));
                }
            }
        };
        Ok(wait(&mut rx, timeout).await)
    }

    /// Waits up to `timeout` for decision sign-in `id`, started by `caller`; `Ok(None)`: still
    /// waiting.
    pub async fn wait_decision(
        &self,
        caller: Caller<'_>,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<Done>, WorkflowError> {
        let mut rx = {
            let flows = self.0.flows.lock().unwrap_or_else(|p| p.into_inner());
            let flow = flows.by_id.get(id).filter(|f| match &*f.kind {
                Kind::Decision { approver, .. } => approver.id == caller.peer.id,
                Kind::Login { .. } | Kind::Console { .. } => false,
            });
            match flow {
                Some(f) => f.done.subscribe(),
                None => return Err(WorkflowError::NotFound(format!("no sign-in `{id}`"))),
            }
        };
        Ok(wait(&mut rx, timeout).await)
    }

    /// Finishes the flow a callback names: exchanges the code, verifies the ID token, and logs the
    /// person in or takes the decision. Returns the page to show.
    pub async fn callback(&self, cb: Callback, source: IpAddr) -> Page {
        let found = cb.state.as_deref().and_then(|state| {
            let mut flows = self.0.flows.lock().unwrap_or_else(|p| p.into_inner());
            flows.sweep();
            // A state is good once.
            let id = flows.by_state.remove(state)?;
            let f = flows.by_id.get(&id)?;
            Some((
                f.kind.clone(),
                f.issuer.clone(),
                f.nonce.clone(),
                f.verifier.clone(),
                f.started_unix,
                f.done.clone(),
            ))
        });
        let Some((kind, issuer, nonce, verifier, started, done)) = found else {
            return Page::notice(
                false,
                "Sign-in not found",
                "This sign-in is unknown, was already used, or has expired. Start again from the command or page that sent you here.",
            );
        };
        let outcome = self
            .run_callback(&kind, &issuer, &nonce, &verifier, started, cb, source)
            .await;
        let mut page = page_for(&kind, &outcome);
        if let (Kind::Console { binding, next, .. }, Done::Ok(v)) = (&*kind, &outcome) {
            page.console = console_of(v, binding, next);
        }
        done.send_replace(Some(outcome));
        page
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one flow's parts, taken apart under its lock"
    )]
    async fn run_callback(
        &self,
        kind: &Kind,
        issuer: &str,
        nonce: &str,
        verifier: &str,
        started: u64,
        cb: Callback,
        source: IpAddr,
    ) -> Done {
        let config = self.0.config.load();
        let oidc = match kind {
            Kind::Login { customer: None, .. } | Kind::Console { customer: None, .. } => {
                config.provider_oidc.as_ref().map(|p| p.oidc.clone())
            }
            Kind::Login {
                customer: Some(c), ..
            }
            | Kind::Console {
                customer: Some(c), ..
            } => config
                .customer(c.as_str())
                .and_then(|c| c.oidc.as_ref())
                .map(|s| s.oidc.clone()),
            Kind::Decision { request, .. } => {
                let customer = self.0.requests.customer_of(request).await;
                customer
                    .and_then(|c| config.customer(c.as_str()).and_then(|c| c.oidc.clone()))
                    .map(|s| s.oidc)
            }
        };
        let Some(oidc) = oidc.filter(|o| o.issuer == issuer) else {
            return refused(
                "idp_changed",
                "the identity provider was reconfigured during the sign-in; start again",
            );
        };
        // A console sign-in signs in only the browser that started it (no login CSRF): checked
        // before the code is used, so a sign-in carried elsewhere opens nothing.
        if let Kind::Console { binding, .. } = kind {
            let held = cb.binding.as_deref().unwrap_or("");
            if !bool::from(held.as_bytes().ct_eq(binding.as_bytes())) {
                let why = "this sign-in was started in another browser (or its cookie expired), so it signs this one in to nothing; start again from the console".to_owned();
                return self.refuse(kind, &oidc, None, why, source).await;
            }
        }
        // RFC 9207: an answer from another IdP than the one this flow went to is a mix-up.
        if let Some(iss) = &cb.iss
            && *iss != oidc.issuer
        {
            let why = format!(
                "the answer came from `{}`, not from {}, where this sign-in went",
                iss.chars().take(256).collect::<String>(),
                oidc.issuer
            );
            return self.refuse(kind, &oidc, None, why, source).await;
        }
        if let Some(e) = cb.error {
            let why = format!(
                "the identity provider answered `{}`{}",
                e.chars().take(64).collect::<String>(),
                cb.error_description
                    .map(|d| format!(": {}", d.chars().take(256).collect::<String>()))
                    .unwrap_or_default()
            );
            return self.refuse(kind, &oidc, None, why, source).await;
        }
        let Some(code) = cb.code else {
            return self
                .refuse(
                    kind,
                    &oidc,
                    None,
                    "the callback carried no code".into(),
                    source,
                )
                .await;
        };
        let token = match self.exchange(&oidc, &code, verifier).await {
            Ok(t) => t,
            Err(why) => return self.refuse(kind, &oidc, None, why, source).await,
        };
        match kind {
            Kind::Login { .. } => self.finish_login(kind, &oidc, nonce, &token, source).await,
            Kind::Console { .. } => {
                self.finish_console(kind, &oidc, nonce, &token, source)
                    .await
            }
            Kind::Decision { .. } => {
                self.finish_decision(kind, &oidc, nonce, Some(started), &token, source)
                    .await
            }
        }
    }

    async fn exchange(
        &self,
        oidc: &OidcSettings,
        code: &str,
        verifier: &str,
    ) -> Result<String, String> {
        let idp = self.provider(oidc).map_err(|e| e.to_string())?;
        let redirect = self.redirect_uri().map_err(|e| e.to_string())?;
        idp.exchange_code(code, &redirect, verifier)
            .await
            .map(|a| a.id_token)
            .map_err(|e| format!("the code could not be exchanged at the identity provider: {e}"))
    }

    async fn verify(
        &self,
        oidc: &OidcSettings,
        token: &str,
        nonce: &str,
    ) -> Result<IdClaims, (String, Option<IdpEvidence>)> {
        let idp = self.provider(oidc).map_err(|e| (e.to_string(), None))?;
        let expect = Expect {
            issuer: &oidc.issuer,
            audience: &oidc.client_id,
            nonce: Some(nonce),
            now: unix_now(),
            leeway: TOKEN_LEEWAY,
            groups_claim: &oidc.groups_claim,
            name_claim: &oidc.name_claim,
        };
        idp.verify(token, &expect).await.map_err(|e| {
            (
                format!("the ID token was refused: {e}"),
                unverified_evidence(token, oidc),
            )
        })
    }

    /// Who a login's or console sign-in's token makes the person: the verified claims, what of
    /// them goes on the trail, the identity and a technician's groups; or the recorded refusal.
    #[expect(
        clippy::too_many_arguments,
        reason = "one flow's parts, as both kinds of sign-in hold them"
    )]
    async fn person_of(
        &self,
        kind: &Kind,
        oidc: &OidcSettings,
        nonce: &str,
        token: &str,
        customer: Option<&CustomerId>,
        role: Option<Role>,
        source: IpAddr,
    ) -> Result<
        (
            IdClaims,
            IdpEvidence,
            SpiffeId,
            Vec<sallyport_ids::GroupName>,
        ),
        Done,
    > {
        let claims = match self.verify(oidc, token, nonce).await {
            Ok(c) => c,
            Err((why, ev)) => return Err(self.refuse(kind, oidc, ev, why, source).await),
        };
        let evidence = rules::evidence(&claims, &oidc.client_id, None);
        let config = self.0.config.load();
        match person(&config, customer, role, &claims) {
            Ok((principal, groups)) => {
                let id = SpiffeId::new(config.trust_domain.clone(), principal);
                Ok((claims, evidence, id, groups))
            }
            Err(why) => Err(self.refuse(kind, oidc, Some(evidence), why.0, source).await),
        }
    }

    async fn finish_login(
        &self,
        kind: &Kind,
        oidc: &OidcSettings,
        nonce: &str,
        token: &str,
        source: IpAddr,
    ) -> Done {
        let Kind::Login {
            customer,
            role,
            csr,
            ..
        } = kind
        else {
            return refused("internal", "not a login");
        };
        let (claims, evidence, id, groups) = match self
            .person_of(kind, oidc, nonce, token, customer.as_ref(), *role, source)
            .await
        {
            Ok(p) => p,
            Err(done) => return done,
        };
        let config = self.0.config.load();
        let Some(ca) = &self.0.ca else {
            return refused("no_ca", "this broker cannot issue certificates");
        };
        let now = SystemTime::now();
        let validity = Validity {
            not_before: now - Duration::from_secs(300),
            not_after: now + oidc.cert_validity,
        };
        let cert =
            match ca.issue_for_request(csr, &id, &groups, &rules::cert_signin(&claims), validity) {
                Ok(c) => c,
                Err(e) => {
                    return self
                        .refuse(kind, oidc, Some(evidence), e.to_string(), source)
                        .await;
                }
            };
        let Some(issued) = issued_of(&cert, &config.trust_domain, now) else {
            return refused("internal", "the issued certificate could not be read back");
        };
        let expires = jiff::Timestamp::from_second(issued.not_after)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut ev = signed_in(
            format!(
                "signed in at {} as {} (certificate until {expires})",
                oidc.issuer,
                id.short()
            ),
            customer.as_ref(),
            &id,
            source,
            issued.sha256,
            &expires,
            evidence,
        );
        ev.cert_serial = Some(issued.serial.clone());
        // No record, no certificate.
        if self.0.cx.record(ev).await.is_err() {
            return refused(
                "audit_unavailable",
                "the audit trail is not writable, so no certificate was issued; try again shortly",
            );
        }
        let reg = issued.clone();
        if let Err(e) = self.0.cx.db.run(move |s| s.record_certificate(&reg)).await {
            tracing::warn!(error = %e, serial = %issued.serial, "sign-in certificate not registered");
        }
        tracing::info!(peer = %id, issuer = %oidc.issuer, "signed in");
        Done::Ok(serde_json::json!({
            "identity": id.to_string(),
            "cert": cert,
            "ca": ca.cert_pem(),
            "broker": self.0.broker_address.get().unwrap_or(&config.public_address),
            "expires_at": expires,
            "serial": issued.serial.to_string(),
            "groups": groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            "mfa": claims.mfa(),
        }))
    }

    async fn finish_console(
        &self,
        kind: &Kind,
        oidc: &OidcSettings,
        nonce: &str,
        token: &str,
        source: IpAddr,
    ) -> Done {
        let Kind::Console { customer, role, .. } = kind else {
            return refused("internal", "not a console sign-in");
        };
        let (claims, evidence, id, groups) = match self
            .person_of(kind, oidc, nonce, token, customer.as_ref(), *role, source)
            .await
        {
            Ok(p) => p,
            Err(done) => return done,
        };
        let lifetime = oidc.cert_validity.min(CONSOLE_MAX_LIFETIME);
        let until = SystemTime::now() + lifetime;
        let expires = jiff::Timestamp::try_from(until)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let secret = random_token();
        let thumbprint = console_thumbprint(&secret);
        let ev = signed_in(
            format!(
                "signed in to the web console at {} as {} (session until {expires} at most)",
                oidc.issuer,
                id.short()
            ),
            customer.as_ref(),
            &id,
            source,
            sallyport_ids::cert::CertFingerprint::from_digest(thumbprint),
            &expires,
            evidence,
        );
        // No record, no session.
        if self.0.cx.record(ev).await.is_err() {
            return refused(
                "audit_unavailable",
                "the audit trail is not writable, so you were not signed in; try again shortly",
            );
        }
        tracing::info!(peer = %id, issuer = %oidc.issuer, "signed in to the console");
        let peer = PeerIdentity {
            id,
            groups,
            thumbprint,
            not_after: until,
            signin: Some(rules::cert_signin(&claims)),
        };
        Done::Ok(serde_json::json!({
            "identity": peer.id.to_string(),
            "expires_at": expires,
            "console": serde_json::to_value(ConsoleWire::from(&peer, secret)).unwrap_or_default(),
        }))
    }

    async fn finish_decision(
        &self,
        kind: &Kind,
        oidc: &OidcSettings,
        nonce: &str,
        fresh_since: Option<u64>,
        token: &str,
        source: IpAddr,
    ) -> Done {
        let Kind::Decision {
            approver,
            request,
            decision,
            words,
        } = kind
        else {
            return refused("internal", "not a decision");
        };
        let claims = match self.verify(oidc, token, nonce).await {
            Ok(c) => c,
            Err((why, ev)) => return self.refuse(kind, oidc, ev, why, source).await,
        };
        let evidence = rules::evidence(&claims, &oidc.client_id, Some(token));
        let config = self.0.config.load();
        let signin = match self.0.requests.customer_of(request).await {
            Some(c) => config.customer(c.as_str()).and_then(|c| c.oidc.clone()),
            None => None,
        };
        let Some(signin) = signin else {
            return refused(
                "idp_changed",
                "the customer no longer has an identity provider",
            );
        };
        if let Err(why) = rules::signs_for(&claims, approver, &signin) {
            return self
                .refuse(
                    kind,
                    oidc,
                    Some(rules::evidence(&claims, &oidc.client_id, None)),
                    why.0,
                    source,
                )
                .await;
        }
        // A decision takes a fresh authentication, after the decision was asked for.
        if let Some(since) = fresh_since {
            let Some(at) = claims.auth_time else {
                let why =
                    "the ID token has no auth_time, so it shows no fresh authentication".to_owned();
                return self.refuse(kind, oidc, Some(evidence), why, source).await;
            };
            if at + TOKEN_LEEWAY < since {
                let why = format!(
                    "the identity provider did not authenticate the person afresh (auth_time {at}, decision asked at {since})"
                );
                return self.refuse(kind, oidc, Some(evidence), why, source).await;
            }
        }
        let caller = Caller {
            peer: approver,
            ip: source,
        };
        let result = match decision {
            Decision::Approve => self
                .0
                .requests
                .approve_signed(caller, request, words.clone(), Some(evidence))
                .await
                .map(|a| {
                    let mut v = crate::view::request(&a.request);
                    v["approvals_missing"] = a.missing.into();
                    v
                }),
            Decision::Deny => match words.clone() {
                Some(w) => self
                    .0
                    .requests
                    .deny_signed(caller, request, w, Some(evidence))
                    .await
                    .map(|r| crate::view::request(&r)),
                None => Err(WorkflowError::invalid(
                    "bad_reason",
                    "a denial needs a reason",
                )),
            },
        };
        match result {
            Ok(v) => Done::Ok(v),
            Err(WorkflowError::AuditUnavailable) => refused(
                "audit_unavailable",
                "the audit trail is not writable, so nothing was decided; try again shortly",
            ),
            Err(e) => refused("refused", e.to_string()),
        }
    }

    /// Records a refused flow and says why.
    async fn refuse(
        &self,
        kind: &Kind,
        oidc: &OidcSettings,
        evidence: Option<IdpEvidence>,
        why: String,
        source: IpAddr,
    ) -> Done {
        tracing::info!(issuer = %oidc.issuer, reason = %why, "sign-in refused");
        let recorded = match kind {
            Kind::Login { customer, .. } | Kind::Console { customer, .. } => {
                let mut ev = AuditEvent::new(EventKind::SigninFailed, Outcome::Deny, why.clone());
                ev.customer = customer.clone();
                ev.actor = Some(match &evidence {
                    Some(e) => format!("{}#{}", e.issuer, e.subject),
                    None => format!("sign-in at {}", oidc.issuer),
                });
                ev.source_ip = Some(source);
                ev.idp = evidence;
                self.0.cx.record(ev).await
            }
            Kind::Decision {
                approver,
                request,
                decision,
                ..
            } => {
                self.0
                    .requests
                    .record_signed_refusal(approver, request, *decision, &why, evidence, source)
                    .await
            }
        };
        if recorded.is_err() {
            return refused(
                "audit_unavailable",
                format!("{why} (and the audit trail is not writable)"),
            );
        }
        refused("idp_refused", why)
    }
}

/// The `signed_in` record of a sign-in: who, from where, under which certificate (or console
/// session) hash, until when, and what the IdP said.
fn signed_in(
    reason: String,
    customer: Option<&CustomerId>,
    id: &SpiffeId,
    source: IpAddr,
    sha256: sallyport_ids::cert::CertFingerprint,
    expires: &str,
    evidence: IdpEvidence,
) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::SignedIn, Outcome::Success, reason);
    ev.customer = customer.cloned();
    ev.actor = Some(id.to_string());
    ev.source_ip = Some(source);
    ev.cert_sha256 = Some(sha256);
    ev.expires_at = Some(expires.to_owned());
    ev.idp = Some(evidence);
    ev
}

/// Who a verified sign-in makes the person: at the provider's IdP (`customer` `None`) or at
/// `customer`'s, with the certificate groups of a technician.
fn person(
    config: &sallyport_config::Config,
    customer: Option<&CustomerId>,
    role: Option<Role>,
    claims: &IdClaims,
) -> Result<(sallyport_ids::Principal, Vec<sallyport_ids::GroupName>), rules::Refusal> {
    match customer {
        None => match &config.provider_oidc {
            Some(p) => rules::provider_person(claims, p),
            None => Err(rules::Refusal("provider sign-in is off".into())),
        },
        Some(c) => match config.customer(c.as_str()).and_then(|x| x.oidc.as_ref()) {
            Some(s) => rules::customer_person(claims, c, s, role).map(|p| (p, Vec::new())),
            None => Err(rules::Refusal(format!("customer `{c}` has no IdP"))),
        },
    }
}

/// A console identity as it crosses the flow's outcome channel (the outcome is JSON).
#[derive(serde::Serialize, serde::Deserialize)]
struct ConsoleWire {
    id: String,
    groups: Vec<String>,
    not_after: u64,
    signin: Option<sallyport_certs::pki::SignIn>,
    secret: String,
}

impl ConsoleWire {
    fn from(p: &PeerIdentity, secret: String) -> Self {
        Self {
            id: p.id.to_string(),
            groups: p.groups.iter().map(|g| g.as_str().to_owned()).collect(),
            not_after: p
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            signin: p.signin.clone(),
            secret,
        }
    }
}

/// The console sign-in a finished console flow's outcome carries.
fn console_of(v: &serde_json::Value, binding: &str, next: &str) -> Option<Box<ConsoleSignIn>> {
    let w: ConsoleWire = serde_json::from_value(v.get("console")?.clone()).ok()?;
    let peer = PeerIdentity {
        id: w.id.parse().ok()?,
        groups: w.groups.iter().filter_map(|g| g.parse().ok()).collect(),
        thumbprint: console_thumbprint(&w.secret),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(w.not_after),
        signin: w.signin,
    };
    Some(Box::new(ConsoleSignIn {
        peer,
        binding: binding.to_owned(),
        secret: w.secret,
        next: next.to_owned(),
    }))
}

/// Waits for `rx` to hold an outcome, up to `timeout`.
async fn wait(rx: &mut watch::Receiver<Option<Done>>, timeout: Duration) -> Option<Done> {
    let got = match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => v.clone(),
        _ => None,
    };
    got.or_else(|| rx.borrow().clone())
}

/// The page a finished callback shows.
fn page_for(kind: &Kind, done: &Done) -> Page {
    let mut page = match (kind, done) {
        (Kind::Login { .. }, Done::Ok(v)) => Page::notice(
            true,
            "Signed in",
            format!(
                "You are signed in as {}, until {}. You can close this tab: the command that sent you here has your certificate.",
                v["identity"].as_str().unwrap_or(""),
                v["expires_at"].as_str().unwrap_or("")
            ),
        ),
        (Kind::Console { .. }, Done::Ok(v)) => Page::notice(
            true,
            "Signed in",
            format!(
                "You are signed in to the console as {}.",
                v["identity"].as_str().unwrap_or("")
            ),
        ),
        (Kind::Decision { request, .. }, Done::Ok(v))
            if v["approvals_missing"].as_u64().is_some_and(|m| m > 0) =>
        {
            Page::notice(
                true,
                "Approval recorded",
                format!(
                    "Your approval of request {request} is signed by your identity provider and on the audit trail; {} more approval(s) are needed.",
                    v["approvals_missing"]
                ),
            )
        }
        (
            Kind::Decision {
                decision, request, ..
            },
            Done::Ok(_),
        ) => Page::notice(
            true,
            match decision {
                Decision::Approve => "Approved",
                Decision::Deny => "Denied",
            },
            format!(
                "Request {request} is {}, signed by your identity provider and on the audit trail.",
                match decision {
                    Decision::Approve => "approved",
                    Decision::Deny => "denied",
                }
            ),
        ),
        (_, Done::Refused { message, .. }) => Page::notice(false, "Refused", message.clone()),
    };
    if let Kind::Decision { request, .. } = kind {
        page.request = Some(request.clone());
    }
    page
}

/// What the trail keeps of a token that did not verify: its claims as they read, unverified, when
/// readable (never the token).
fn unverified_evidence(token: &str, oidc: &OidcSettings) -> Option<IdpEvidence> {
    let v = sallyport_oidc::token::claims_unverified(token).ok()?;
    let s = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let list = |k: &str| -> Vec<String> {
        match v.get(k) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .take(64)
                .collect(),
            Some(serde_json::Value::String(x)) => vec![x.clone()],
            _ => Vec::new(),
        }
    };
    let clip = |x: String| x.chars().take(256).collect::<String>();
    Some(IdpEvidence {
        issuer: clip(s("iss").unwrap_or_default()),
        subject: clip(s("sub").unwrap_or_default()),
        name: s(&oidc.name_claim).map(clip),
        groups: list(&oidc.groups_claim).into_iter().map(clip).collect(),
        amr: list("amr").into_iter().map(clip).collect(),
        mfa: false,
        auth_time: None,
        audience: clip(list("aud").join(" ")),
        token: None,
    })
}

/// The register entry of a certificate issued at `now`.
fn issued_of(
    cert_pem: &str,
    td: &sallyport_ids::TrustDomain,
    now: SystemTime,
) -> Option<IssuedCertificate> {
    let certs = sallyport_certs::tls::certs_from_pem(cert_pem, "issued certificate").ok()?;
    let der = certs.first()?;
    let peer = PeerIdentity::from_der(der, td).ok()?;
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    Some(IssuedCertificate {
        serial: certificate_serial(der).ok()?,
        sha256: peer.fingerprint(),
        holder: peer.id,
        issued_at: unix(now),
        not_after: unix(peer.not_after),
    })
}
