//! Access requests: a technician files one for one target, that customer's approvers decide under
//! that customer's policy, and the requester fetches the grant that results.
//!
//! - Filing: technicians only, at most `limits.request_filings_*` per technician; Cedar action
//!   `request` decides whether it may be filed, and the permitting policies' `@approvals` and
//!   `@max_minutes` set the quorum and the longest window ([`crate::terms`]).
//! - Listing and reading: technicians see their own, approvers and auditors their customer's, admins
//!   all ([`crate::scope`]).
//! - Deciding: that customer's approvers, under Cedar action `approve`; never the requester; a quorum
//!   of distinct approvers; one denial ends it.
//! - Cancelling: the technician who filed a pending request withdraws it ([`Requests::cancel`]);
//!   nobody decides it after that.
//! - What may be asked for: [`Requests::targets`] lists, per customer, the targets the caller's
//!   customers' policies would let them request ([`crate::targets`]).
//! - The grant: the requesting technician, once approved, with the certificate the request was filed
//!   with; minted (certificate-bound) only after the approval is on the trail.
//! - Expiry: pending requests expire after `requests.pending_expiry_seconds` ([`Requests::run_expiry`]).
//! - Locks: a technician locked for a customer (or everywhere) files nothing for it and fetches no
//!   grant of it ([`crate::locks::LockGate::admit`]).
//!
//! Every state change is on the customer's audit trail before it takes effect, and goes to the
//! customer's webhook. A call refused for the caller's role or tenant is recorded
//! ([`Context::refused`]): on the caller's chain as it was answered, and on the request's customer's
//! chain with what was tried.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sallyport_audit::{AuditEvent, Decision, EventKind, IdpEvidence, Outcome};
use sallyport_certs::grant::{GrantSigner, GrantSpec};
use sallyport_certs::identity::PeerIdentity;
use sallyport_config::{Customer, CustomerSignIn, SharedConfig, Target};
use sallyport_ids::time::rfc3339;
use sallyport_ids::{CustomerId, GrantId, Principal, RequestId, Role, SpiffeId};
use sallyport_notify::Notification;
use sallyport_policy::{Action, RequestContext, Subject, TargetInfo};
use sallyport_store::{Approval, NewRequest, RequestRecord, RequestStatus, StoreError};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::limit::CallLimiter;
use crate::locks::LockGate;
use crate::refusals::{Attempt, Owner};
use crate::scope::Scope;
use crate::terms::{self, MAX_REASON, MAX_TICKET, Words, text_field};
use crate::{Caller, Context, WorkflowError, view};

/// What a technician asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filing {
    /// The customer, as given.
    pub customer: String,
    /// The target, as given.
    pub target: String,
    /// Minutes of access.
    pub minutes: u32,
    /// Why.
    pub reason: String,
    /// Change or incident ticket.
    pub ticket: Option<String>,
    /// Start of the window, RFC 3339; `None`: at approval.
    pub start_at: Option<String>,
}

/// A technician who may file now: their identity is checked and the filing is counted against their
/// rate. Made by [`Requests::filer`], used by [`Requests::file`].
#[derive(Debug)]
pub struct Filer<'a> {
    caller: Caller<'a>,
}

/// What came of an approval.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The request as it stands now.
    pub request: RequestRecord,
    /// Approvals still missing (0: granted).
    pub missing: u32,
}

/// A grant handed to its technician.
#[derive(Debug, Clone)]
pub struct FetchedGrant {
    /// The signed, certificate-bound token.
    pub token: String,
    /// The grant's id.
    pub grant_id: GrantId,
    /// The request it came from.
    pub request_id: RequestId,
    /// Its customer.
    pub customer: CustomerId,
    /// Its target.
    pub target: sallyport_ids::TargetId,
    /// The target's port.
    pub port: u16,
    /// Start of the window (Unix seconds).
    pub not_before: i64,
    /// End of the window (Unix seconds).
    pub expires_at: i64,
}

/// The request workflow. Cheap to clone.
#[derive(Clone)]
pub struct Requests {
    cx: Context,
    config: SharedConfig,
    signer: Arc<GrantSigner>,
    filings: Arc<CallLimiter>,
    locks: LockGate,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests").finish_non_exhaustive()
    }
}

/// Request `rec` as the object of a refused call.
fn owner(rec: &RequestRecord) -> Owner {
    Owner {
        customer: rec.filed.customer.clone(),
        technician: Some(rec.filed.technician.clone()),
        target: Some(rec.filed.target.to_string()),
        grant_id: None,
    }
}

/// An attempt at `asked` on request `rec`.
fn on(rec: &RequestRecord, asked: String) -> Attempt {
    Attempt {
        request_id: Some(rec.filed.id.clone()),
        owner: Some(owner(rec)),
        ..Attempt::new(asked)
    }
}

/// An audit record about request `r`.
fn event(r: &NewRequest, kind: EventKind, outcome: Outcome, reason: String) -> AuditEvent {
    let mut ev = AuditEvent::new(kind, outcome, reason);
    ev.customer = Some(r.customer.clone());
    ev.target = Some(r.target.to_string());
    ev.subject = Some(r.technician.clone());
    ev.request_id = Some(r.id.clone());
    ev
}

/// The record of filing `r`: everything the request shows, so an evidence bundle can prove it.
fn filing(r: &NewRequest, outcome: Outcome, reason: String, digest: &str) -> AuditEvent {
    let mut ev = event(r, EventKind::RequestFiled, outcome, reason);
    ev.minutes = Some(r.minutes);
    ev.ticket = r.ticket.clone();
    ev.start_at = r.start_at.map(rfc3339);
    ev.approvals_required = Some(r.approvals_required);
    ev.terms_policy_id = r.policy_id.clone();
    ev.expires_at = Some(rfc3339(r.expires_at));
    ev.policy_digest = Some(digest.to_owned());
    ev
}

/// A customer policy's decision, as the records of approvals and denials name it.
struct Decided {
    policy_ids: Vec<String>,
    digest: String,
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

impl Requests {
    /// The workflow over `cx`, for the customers of `config`, minting grants with `signer`,
    /// counting filings in `filings`, and refusing what `locks` bars.
    pub fn new(
        cx: Context,
        config: SharedConfig,
        signer: Arc<GrantSigner>,
        filings: Arc<CallLimiter>,
        locks: LockGate,
    ) -> Self {
        Self {
            cx,
            config,
            signer,
            filings,
            locks,
        }
    }

    /// Where its actions land.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Queues a webhook notification about request `rec`.
    fn notify(&self, rec: &RequestRecord, event: &str, text: String) {
        let mut data = view::request(rec);
        data["event"] = event.into();
        self.cx.notify(Notification {
            customer: rec.filed.customer.clone(),
            event: event.into(),
            text,
            data,
        });
    }

    /// Checks that `caller` may file a request now: a technician (anyone else is refused, and
    /// recorded) within their filing rate.
    pub async fn filer<'a>(&self, caller: Caller<'a>) -> Result<Filer<'a>, WorkflowError> {
        if caller.peer.id.role() != Role::Technician {
            let no = WorkflowError::Forbidden("only technicians file access requests".into());
            return Err(self
                .cx
                .refused(caller, Attempt::new("file an access request"), no)
                .await);
        }
        self.filings
            .check(&caller.peer.id.to_string())
            .map_err(|wait| {
                self.cx
                    .metrics
                    .rate_limited(sallyport_metrics::Limiter::RequestFilings);
                WorkflowError::RateLimited {
                    what: "access requests filed",
                    wait,
                }
            })?;
        Ok(Filer { caller })
    }

    /// The certificate a request filed without one (in the web console) is bound to: the
    /// technician's newest registered certificate still valid and not locked (a `sallyport login`
    /// or `certs issue`), and the person as holding it. The grant is then fetched and used with
    /// that certificate only, as if the request had been filed with it.
    pub async fn holder_of_certificate(
        &self,
        caller: Caller<'_>,
    ) -> Result<(PeerIdentity, sallyport_store::IssuedCertificate), WorkflowError> {
        let id = caller.peer.id.clone();
        let now = self.cx.clock.unix();
        let certs = self.cx.db.run(move |s| s.certificates_of(&id, now)).await?;
        for cert in certs {
            let mut peer = caller.peer.clone();
            peer.thumbprint = *cert.sha256.digest();
            if self.locks.view().check(&peer, None, now).is_none() {
                return Ok((peer, cert));
            }
        }
        Err(WorkflowError::Conflict(
            "you hold no valid certificate to bind the request to: sign in with `sallyport login` first (the grant is bound to that certificate), then file again".into(),
        ))
    }

    /// Files a request. Refused by the customer's policy: recorded as refused, `Forbidden`.
    pub async fn file(&self, filer: Filer<'_>, f: Filing) -> Result<RequestRecord, WorkflowError> {
        let caller = filer.caller;
        let Principal::Technician { provider, name } = caller.peer.id.principal() else {
            return Err(WorkflowError::Forbidden(
                "only technicians file access requests".into(),
            ));
        };
        let technician = &caller.peer.id;
        let config = self.config.load();
        let customer = config
            .customer(&f.customer)
            .ok_or_else(|| WorkflowError::NotFound(format!("no customer `{}`", f.customer)))?;
        // A technician locked for this customer files nothing for it.
        self.locks.admit(caller, Some(&customer.id)).await?;
        let target = customer.target(&f.target).ok_or_else(|| {
            WorkflowError::NotFound(format!(
                "customer `{}` has no target `{}`",
                customer.id, f.target
            ))
        })?;
        let max = config.grants.max_minutes;
        if f.minutes == 0 || f.minutes > max {
            return Err(WorkflowError::invalid(
                "bad_minutes",
                format!("`minutes` must be 1 to {max}"),
            ));
        }
        let reason = text_field(
            "reason",
            &f.reason,
            MAX_REASON,
            "say what the access is for",
        )?;
        let ticket = f
            .ticket
            .as_deref()
            .map(|t| {
                text_field(
                    "ticket",
                    t,
                    MAX_TICKET,
                    "give the change or incident ticket, or leave it out",
                )
            })
            .transpose()?;
        let now = self.cx.clock.now();
        let at = now.as_second();
        let start_at = terms::start_at(f.start_at.as_deref(), f.minutes, at)?;
        let subject = Subject::Technician {
            id: technician.clone(),
            provider: provider.clone(),
            name: name.clone(),
            groups: caller.peer.groups.clone(),
        };
        let ctx = RequestContext {
            now,
            minutes: f.minutes,
            source_ip: caller.ip,
            ticket: ticket.clone(),
            mfa: caller.peer.mfa(),
        };
        let decision = customer.policy.decide(
            Action::Request,
            &subject,
            &target_info(customer, target),
            &ctx,
        );
        let terms = terms::terms(&customer.policy, &decision, max);
        let pending =
            i64::try_from(self.config.load().requests.pending_expiry.as_secs()).unwrap_or(i64::MAX);
        let filed = NewRequest {
            id: RequestId::mint(),
            customer: customer.id.clone(),
            target: target.id.clone(),
            technician: technician.clone(),
            cert_thumbprint: B64.encode(caller.peer.thumbprint),
            minutes: f.minutes,
            reason: reason.clone(),
            ticket,
            start_at,
            approvals_required: terms.approvals,
            policy_id: (!terms.policy_id.is_empty()).then_some(terms.policy_id.clone()),
            created_at: at,
            // Undecided requests expire, and never outlive the window they ask for.
            expires_at: terms::pending_until(start_at, f.minutes, at, pending),
            filed_hash: None,
        };
        let refusal = if !decision.allowed {
            Some(decision.reason.clone())
        } else if f.minutes > terms.max_minutes {
            Some(format!(
                "policy `{}` allows at most {} minutes",
                decision.policy_ids.join("`, `"),
                terms.max_minutes
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            let mut ev = filing(&filed, Outcome::Deny, why.clone(), customer.policy.digest());
            ev.actor = Some(technician.to_string());
            ev.source_ip = Some(caller.ip);
            ev.policy_ids = decision.policy_ids;
            self.cx.record(ev).await?;
            tracing::info!(peer = %technician, customer = %customer.id, target = %target.id, reason = %why, "access request refused");
            return Err(WorkflowError::Forbidden(why));
        }
        // The filing is on the trail before it is stored: a request never exists unrecorded. Its
        // reason is the technician's words; minutes, ticket and terms are fields of their own.
        let mut ev = filing(
            &filed,
            Outcome::Success,
            reason.clone(),
            customer.policy.digest(),
        );
        ev.actor = Some(technician.to_string());
        ev.source_ip = Some(caller.ip);
        ev.policy_ids = decision.policy_ids.clone();
        let landed = self.cx.record_at(ev).await?;
        let mut filed = filed;
        filed.filed_hash = Some(landed.hash);
        // A request that needs no approval is approved at once, its window starting now.
        let instant = if filed.approvals_required == 0 {
            Some(terms::window(&filed, GrantId::mint(), at)?)
        } else {
            None
        };
        let to_store = filed.clone();
        let stored = self
            .cx
            .db
            .run(move |s| s.file_request(&to_store, instant.as_ref(), at))
            .await;
        let rec = match stored {
            Ok(r) => r,
            Err(e) => {
                let mut ev = event(
                    &filed,
                    EventKind::RequestFiled,
                    Outcome::Failure,
                    format!("not stored, so it does not exist: {e}"),
                );
                ev.actor = Some(technician.to_string());
                if let Err(e) = self.cx.trail.append(ev).await {
                    tracing::error!(error = %e, "could not audit a failed filing");
                }
                return Err(e.into());
            }
        };
        let place = format!("{}/{}", filed.customer, filed.target);
        if rec.status == RequestStatus::Approved {
            let by_policy = Decided {
                policy_ids: decision.policy_ids.clone(),
                digest: customer.policy.digest().to_owned(),
            };
            self.record_approval(&rec, "policy", None, &by_policy, None, None)
                .await?;
            self.notify(
                &rec,
                "request_approved",
                format!(
                    "{} has {} minutes on {place}, approved at once by policy (request {}): {reason}",
                    technician.short(),
                    filed.minutes,
                    filed.id
                ),
            );
        } else {
            self.notify(
                &rec,
                "request_filed",
                format!(
                    "{} asks for {} minutes on {place}: {reason} (request {}, {} approval(s) needed)",
                    technician.short(),
                    filed.minutes,
                    filed.id,
                    filed.approvals_required
                ),
            );
        }
        tracing::info!(request = %filed.id, peer = %technician, customer = %filed.customer, target = %filed.target, status = rec.status.as_str(), "access request filed");
        Ok(rec)
    }

    /// Records that `rec` is approved, then lets its grant be handed out.
    async fn record_approval(
        &self,
        rec: &RequestRecord,
        actor: &str,
        source: Option<std::net::IpAddr>,
        decided: &Decided,
        comment: Option<String>,
        signed: Option<IdpEvidence>,
    ) -> Result<(), WorkflowError> {
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
                    .map(|a| a.approver.short())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut ev = event(f, EventKind::RequestApproved, Outcome::Success, why);
        ev.actor = Some(actor.to_owned());
        ev.source_ip = source;
        ev.grant_id = rec.grant_id.clone();
        ev.not_before = rec.grant.as_ref().map(|g| rfc3339(g.not_before));
        ev.expires_at = rec.grant.as_ref().map(|g| rfc3339(g.expires_at));
        ev.comment = comment;
        ev.policy_ids = decided.policy_ids.clone();
        ev.policy_digest = Some(decided.digest.clone());
        ev.idp = signed;
        self.cx.record(ev).await?;
        if let Some(gid) = rec.grant_id.clone() {
            self.cx.db.run(move |s| s.mark_grant_audited(&gid)).await?;
        }
        Ok(())
    }

    /// Requests `caller` may see, newest first: optionally of one status, and (admins and
    /// technicians) of one customer.
    pub async fn list(
        &self,
        caller: Caller<'_>,
        status: Option<&str>,
        customer: Option<String>,
    ) -> Result<Vec<RequestRecord>, WorkflowError> {
        let status = match status.map(|s| (s, RequestStatus::parse(s))) {
            None => None,
            Some((_, Some(s))) => Some(s),
            Some((s, None)) => {
                return Err(WorkflowError::invalid(
                    "bad_status",
                    format!(
                        "unknown status `{s}`: use pending, approved, denied, expired or cancelled"
                    ),
                ));
            }
        };
        let (customer, technician): (Option<String>, Option<SpiffeId>) =
            match Scope::of(&caller.peer.id) {
                Scope::All => (customer, None),
                Scope::Customer(c) => {
                    if let Some(asked) = customer.as_ref().filter(|asked| **asked != c.as_str()) {
                        let no = WorkflowError::Forbidden(format!(
                            "you can only see requests of customer `{c}`"
                        ));
                        let attempt = Attempt {
                            named: asked.parse().ok(),
                            ..Attempt::new(format!(
                                "list the requests of customer `{}`",
                                sallyport_audit::clip(asked, 64)
                            ))
                        };
                        return Err(self.cx.refused(caller, attempt, no).await);
                    }
                    (Some(c.to_string()), None)
                }
                Scope::Technician(t) => (customer, Some(t)),
            };
        // A customer that is not an id has no requests.
        let customer = match customer.map(|c| c.parse::<CustomerId>()) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(_)) => return Ok(Vec::new()),
        };
        Ok(self
            .cx
            .db
            .run(move |s| s.requests(customer.as_ref(), technician.as_ref(), status))
            .await?)
    }

    /// The request `id` if `caller` may see it; anything else is `NotFound`, and recorded.
    pub async fn visible(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
    ) -> Result<RequestRecord, WorkflowError> {
        self.find(caller, id, "read").await
    }

    /// The request `id` if `caller` may see it; anything else is `NotFound`, recorded as an attempt
    /// to `verb` it (on the request's customer's chain too, when it exists).
    async fn find(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        verb: &str,
    ) -> Result<RequestRecord, WorkflowError> {
        let not_found = || WorkflowError::NotFound(format!("no request `{id}`"));
        let rid = id.clone();
        let hidden = match self.cx.db.run(move |s| s.request(&rid)).await {
            Ok(r) if Scope::of(&caller.peer.id).sees(&r.filed.customer, &r.filed.technician) => {
                return Ok(r);
            }
            Ok(r) => Some(owner(&r)),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let attempt = Attempt {
            request_id: Some(id.clone()),
            owner: hidden,
            ..Attempt::new(format!("{verb} request `{id}`"))
        };
        Err(self.cx.refused(caller, attempt, not_found()).await)
    }

    /// Checks that the caller is an approver of the request's customer and that the customer's
    /// policy lets them decide it (`deciding`: `approve` or `deny`). A policy refusal is recorded.
    async fn approver_may_decide(
        &self,
        caller: Caller<'_>,
        rec: &RequestRecord,
        deciding: &str,
    ) -> Result<Decided, WorkflowError> {
        let asked = || format!("{deciding} request `{}`", rec.filed.id);
        let Principal::Approver { customer, name } = caller.peer.id.principal() else {
            let no = WorkflowError::Forbidden(format!(
                "only the customer's approvers {deciding} requests"
            ));
            return Err(self.cx.refused(caller, on(rec, asked()), no).await);
        };
        if let Err(no) = terms::may_decide(&caller.peer.id, rec) {
            return Err(self.cx.refused(caller, on(rec, asked()), no).await);
        }
        let f = &rec.filed;
        let config = self.config.load();
        let Some(c) = config.customer(f.customer.as_str()) else {
            return Err(WorkflowError::Conflict(format!(
                "customer `{}` is no longer configured",
                f.customer
            )));
        };
        let Some(t) = c.target(f.target.as_str()) else {
            return Err(WorkflowError::Conflict(format!(
                "target `{}` of `{}` is no longer configured",
                f.target, f.customer
            )));
        };
        let subject = Subject::Approver {
            id: caller.peer.id.clone(),
            customer: customer.clone(),
            name: name.clone(),
        };
        let ctx = RequestContext {
            now: self.cx.clock.now(),
            minutes: f.minutes,
            source_ip: caller.ip,
            ticket: f.ticket.clone(),
            mfa: caller.peer.mfa(),
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
            ev.actor = Some(caller.peer.id.to_string());
            ev.source_ip = Some(caller.ip);
            ev.policy_ids = d.policy_ids;
            ev.policy_digest = Some(c.policy.digest().to_owned());
            self.cx.record(ev).await?;
            return Err(WorkflowError::Forbidden(format!(
                "the policy of `{}` does not let you {deciding} this request: {}",
                f.customer, d.reason
            )));
        }
        Ok(Decided {
            policy_ids: d.policy_ids,
            digest: c.policy.digest().to_owned(),
        })
    }

    /// Approves request `id` as `caller`; the last approval of the quorum creates the grant. A
    /// customer with its own IdP takes only approvals signed there ([`Requests::approve_signed`]).
    pub async fn approve(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        comment: Option<Words>,
    ) -> Result<Approved, WorkflowError> {
        self.approve_signed(caller, id, comment, None).await
    }

    /// Approves request `id` as `caller`, with what the customer's IdP said (`signed`: the
    /// verified sign-in whose nonce commits to this approval; the sign-in service checked it).
    pub async fn approve_signed(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        comment: Option<Words>,
        signed: Option<IdpEvidence>,
    ) -> Result<Approved, WorkflowError> {
        let comment = comment.map(|c| c.as_str().to_owned());
        let rec = self.find(caller, id, "approve").await?;
        let decided = self.approver_may_decide(caller, &rec, "approve").await?;
        self.must_be_signed(caller, &rec, "approve", signed.is_some())
            .await?;
        let approver = caller.peer.id.clone();
        let (rid, by, at) = (rec.filed.id.clone(), approver.clone(), self.cx.clock.unix());
        let said = comment.clone();
        let outcome = self
            .cx
            .db
            .run(move |s| {
                let issue = |req: &NewRequest| {
                    terms::window(req, GrantId::mint(), at)
                        .map_err(|e| StoreError::Conflict(e.to_string()))
                };
                s.approve(&rid, &by, comment.as_deref(), &issue, at)
            })
            .await?;
        let rid = rec.filed.id.clone();
        let rec = self.cx.db.run(move |s| s.request(&rid)).await?;
        let f = &rec.filed;
        let missing = match outcome {
            Approval::Recorded { missing } => {
                let mut ev = event(
                    f,
                    EventKind::ApprovalRecorded,
                    Outcome::Success,
                    format!("approval recorded; {missing} more needed"),
                );
                ev.actor = Some(approver.to_string());
                ev.source_ip = Some(caller.ip);
                ev.comment = said;
                ev.policy_ids = decided.policy_ids;
                ev.policy_digest = Some(decided.digest);
                ev.idp = signed;
                self.cx.record(ev).await?;
                missing
            }
            Approval::Granted(_) => {
                if let Some(m) = self.cx.metrics.customer(f.customer.as_str()) {
                    let waited = u64::try_from(at.saturating_sub(f.created_at)).unwrap_or(0);
                    m.approved_after(std::time::Duration::from_secs(waited));
                }
                self.record_approval(
                    &rec,
                    &approver.to_string(),
                    Some(caller.ip),
                    &decided,
                    said,
                    signed,
                )
                .await?;
                self.notify(
                    &rec,
                    "request_approved",
                    format!(
                        "{} approved {}'s {} minutes on {}/{} (request {})",
                        approver.short(),
                        f.technician.short(),
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
        Ok(Approved {
            request: rec,
            missing,
        })
    }

    /// Denies request `id` as `caller`; one denial ends it. A customer with its own IdP takes only
    /// denials signed there ([`Requests::deny_signed`]).
    pub async fn deny(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        reason: Words,
    ) -> Result<RequestRecord, WorkflowError> {
        self.deny_signed(caller, id, reason, None).await
    }

    /// Denies request `id` as `caller`, with what the customer's IdP said (`signed`, as for
    /// [`Requests::approve_signed`]).
    pub async fn deny_signed(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        reason: Words,
        signed: Option<IdpEvidence>,
    ) -> Result<RequestRecord, WorkflowError> {
        let reason = reason.as_str().to_owned();
        let rec = self.find(caller, id, "deny").await?;
        let decided = self.approver_may_decide(caller, &rec, "deny").await?;
        self.must_be_signed(caller, &rec, "deny", signed.is_some())
            .await?;
        let approver = caller.peer.id.clone();
        let (rid, by, why, at) = (
            rec.filed.id.clone(),
            approver.clone(),
            reason.clone(),
            self.cx.clock.unix(),
        );
        let rec = self.cx.db.run(move |s| s.deny(&rid, &by, &why, at)).await?;
        let f = &rec.filed;
        // The reason is the approver's words, as the request shows them.
        let mut ev = event(
            f,
            EventKind::RequestDenied,
            Outcome::Success,
            reason.clone(),
        );
        ev.actor = Some(approver.to_string());
        ev.source_ip = Some(caller.ip);
        ev.policy_ids = decided.policy_ids;
        ev.policy_digest = Some(decided.digest);
        ev.idp = signed;
        self.cx.record(ev).await?;
        self.notify(
            &rec,
            "request_denied",
            format!(
                "{} denied {}'s request for {}/{} (request {}): {reason}",
                approver.short(),
                f.technician.short(),
                f.customer,
                f.target,
                f.id
            ),
        );
        tracing::info!(request = %f.id, approver = %approver, "request denied");
        Ok(rec)
    }

    /// A customer with its own IdP takes only decisions signed there; one without takes none
    /// (there is no IdP to check them against). A refusal is recorded.
    async fn must_be_signed(
        &self,
        caller: Caller<'_>,
        rec: &RequestRecord,
        deciding: &str,
        signed: bool,
    ) -> Result<(), WorkflowError> {
        let has_idp = self
            .config
            .load()
            .customer(rec.filed.customer.as_str())
            .is_some_and(|c| c.oidc.is_some());
        if has_idp == signed {
            return Ok(());
        }
        let no = if has_idp {
            WorkflowError::Forbidden(format!(
                "`{}` signs its decisions at its own identity provider: {deciding} through the sign-in the API answers with (`sallyport {deciding}` opens it)",
                rec.filed.customer
            ))
        } else {
            WorkflowError::Conflict(format!(
                "`{}` has no identity provider to sign decisions at",
                rec.filed.customer
            ))
        };
        let attempt = on(rec, format!("{deciding} request `{}`", rec.filed.id));
        Err(self.cx.refused(caller, attempt, no).await)
    }

    /// Checks that `caller` may take `decision` on request `id` and that its customer signs
    /// decisions at its own IdP; returns the request and that IdP.
    pub async fn may_decide_signed(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        decision: Decision,
    ) -> Result<(RequestRecord, CustomerSignIn), WorkflowError> {
        let rec = self.find(caller, id, decision.as_str()).await?;
        self.approver_may_decide(caller, &rec, decision.as_str())
            .await?;
        let signin = self
            .config
            .load()
            .customer(rec.filed.customer.as_str())
            .and_then(|c| c.oidc.clone())
            .ok_or_else(|| {
                WorkflowError::Conflict(format!(
                    "`{}` has no identity provider: decide with the API directly",
                    rec.filed.customer
                ))
            })?;
        Ok((rec, signin))
    }

    /// The customer of request `id`, if it exists.
    pub async fn customer_of(&self, id: &RequestId) -> Option<CustomerId> {
        let rid = id.clone();
        self.cx
            .db
            .run(move |s| s.request(&rid))
            .await
            .ok()
            .map(|r| r.filed.customer)
    }

    /// Records that a decision signed at the customer's IdP was refused (`why`): an
    /// `approval_recorded` or `request_denied` record with outcome `deny`, and what the IdP said
    /// when the token was readable.
    pub async fn record_signed_refusal(
        &self,
        approver: &PeerIdentity,
        id: &RequestId,
        decision: Decision,
        why: &str,
        evidence: Option<IdpEvidence>,
        source: std::net::IpAddr,
    ) -> Result<(), WorkflowError> {
        let rid = id.clone();
        let rec = self.cx.db.run(move |s| s.request(&rid)).await?;
        let kind = match decision {
            Decision::Approve => EventKind::ApprovalRecorded,
            Decision::Deny => EventKind::RequestDenied,
        };
        let mut ev = event(
            &rec.filed,
            kind,
            Outcome::Deny,
            format!("{} not taken: {why}", decision.as_str()),
        );
        ev.actor = Some(approver.id.to_string());
        ev.source_ip = Some(source);
        ev.idp = evidence;
        self.cx.record(ev).await
    }

    /// Withdraws pending request `id`: only the technician who filed it (anyone else is refused,
    /// and recorded). The withdrawal is on the customer's trail before the request changes, and goes
    /// to the customer's webhook.
    pub async fn cancel(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
        reason: Option<Words>,
    ) -> Result<RequestRecord, WorkflowError> {
        let reason = reason.map(|r| r.as_str().to_owned());
        let rec = self.find(caller, id, "cancel").await?;
        if caller.peer.id.role() != Role::Technician || rec.filed.technician != caller.peer.id {
            let no = WorkflowError::Forbidden(
                "only the technician who filed a request cancels it; approvers deny it".into(),
            );
            return Err(self
                .cx
                .refused(caller, on(&rec, format!("cancel request `{id}`")), no)
                .await);
        }
        let at = self.cx.clock.unix();
        // What the store would refuse, refused before anything is recorded.
        match rec.status {
            RequestStatus::Pending if rec.filed.expires_at > at => {}
            RequestStatus::Pending => {
                return Err(WorkflowError::Conflict(format!(
                    "request `{id}` has expired"
                )));
            }
            RequestStatus::Cancelled => {
                return Err(WorkflowError::Conflict(format!(
                    "request `{id}` is already cancelled"
                )));
            }
            other => {
                return Err(WorkflowError::Conflict(format!(
                    "request `{id}` is already {}: only a pending request is cancelled{}",
                    other.as_str(),
                    if other == RequestStatus::Approved {
                        "; revoke its grant to end the access"
                    } else {
                        ""
                    }
                )));
            }
        }
        let f = &rec.filed;
        let words = reason
            .clone()
            .unwrap_or_else(|| "withdrawn by the technician".into());
        // On the trail before it takes effect.
        let mut ev = event(
            f,
            EventKind::RequestCancelled,
            Outcome::Success,
            words.clone(),
        );
        ev.actor = Some(caller.peer.id.to_string());
        ev.source_ip = Some(caller.ip);
        self.cx.record(ev).await?;
        let rid = f.id.clone();
        let cancelled = match self.cx.db.run(move |s| s.cancel(&rid, at)).await {
            Ok(r) => r,
            Err(e) => {
                // Decided in between (or the store failed): the record above did not take effect.
                let mut ev = event(
                    f,
                    EventKind::RequestCancelled,
                    Outcome::Failure,
                    format!("not cancelled: {e}"),
                );
                ev.actor = Some(caller.peer.id.to_string());
                ev.source_ip = Some(caller.ip);
                if let Err(e) = self.cx.trail.append(ev).await {
                    tracing::error!(error = %e, "could not audit a failed cancellation");
                }
                return Err(e.into());
            }
        };
        self.notify(
            &cancelled,
            "request_cancelled",
            format!(
                "{} cancelled their request for {}/{} (request {}): {words}",
                f.technician.short(),
                f.customer,
                f.target,
                f.id
            ),
        );
        tracing::info!(request = %f.id, peer = %caller.peer.id, "request cancelled");
        Ok(cancelled)
    }

    /// What `caller` may ask for now, per customer ([`crate::targets`]): a technician, the targets
    /// whose `request` action each customer's policy permits them; an approver or auditor, their
    /// customer's targets; an admin, every target.
    pub fn targets(&self, caller: Caller<'_>) -> Vec<crate::targets::Requestable> {
        crate::targets::requestable(
            &self.config.load(),
            caller.peer,
            caller.ip,
            self.cx.clock.now(),
        )
    }

    /// Hands the grant of approved request `id` to its technician, bound to the certificate the
    /// request was filed with; minted only once the approval and the handing out are on the trail.
    pub async fn grant(
        &self,
        caller: Caller<'_>,
        id: &RequestId,
    ) -> Result<FetchedGrant, WorkflowError> {
        let rec = self.find(caller, id, "fetch the grant of").await?;
        let f = &rec.filed;
        let peer = caller.peer;
        let asked = || on(&rec, format!("fetch the grant of request `{id}`"));
        if peer.id.role() != Role::Technician || f.technician != peer.id {
            let no =
                WorkflowError::Forbidden("only the requesting technician fetches the grant".into());
            return Err(self.cx.refused(caller, asked(), no).await);
        }
        // A technician locked for this customer gets no grant of it.
        self.locks.admit(caller, Some(&f.customer)).await?;
        let conflict = |m: String| WorkflowError::Conflict(m);
        match rec.status {
            RequestStatus::Approved => {}
            RequestStatus::Pending => {
                return Err(conflict(format!(
                    "request `{id}` is pending: {} more approval(s) needed",
                    rec.approvals_missing()
                )));
            }
            other => return Err(conflict(format!("request `{id}` was {}", other.as_str()))),
        }
        // Bound to the certificate that filed the request, and to no other.
        let presented = B64.encode(peer.thumbprint);
        if !bool::from(f.cert_thumbprint.as_bytes().ct_eq(presented.as_bytes())) {
            let no = WorkflowError::Forbidden(
                "this request was filed with another certificate; file a new request with this one"
                    .into(),
            );
            return Err(self.cx.refused(caller, asked(), no).await);
        }
        let Some(gid) = rec.grant_id.clone() else {
            return Err(conflict(format!("request `{id}` has no grant")));
        };
        let g = self.cx.db.run(move |s| s.grant(&gid)).await?;
        if let Some(r) = &g.revoked {
            return Err(conflict(format!(
                "grant `{}` was revoked by {}: {}",
                g.id,
                r.by.short(),
                r.reason
            )));
        }
        let now = self.cx.clock.unix();
        if g.expires_at <= now {
            return Err(conflict(format!("grant `{}` has expired", g.id)));
        }
        let cert_end = peer
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if g.not_before >= cert_end {
            return Err(conflict(
                "your certificate expires before the grant's window opens; renew it and file a new request"
                    .into(),
            ));
        }
        // An approval whose record could not be written is recorded now, before anything is handed
        // out.
        if !g.audited {
            let (actor, comment) = match rec.approvals.last() {
                Some(a) => (a.approver.to_string(), a.comment.clone()),
                None => ("policy".to_owned(), None),
            };
            // The decision is past; the record names the policy set in force now.
            let late = Decided {
                policy_ids: Vec::new(),
                digest: self
                    .config
                    .load()
                    .customer(g.customer.as_str())
                    .map(|c| c.policy.digest().to_owned())
                    .unwrap_or_default(),
            };
            // A signed approval's token went with the record that failed: this one says so.
            self.record_approval(&rec, &actor, None, &late, comment, None)
                .await?;
        }
        let config = self.config.load();
        let Some((customer, target)) = config
            .customer(g.customer.as_str())
            .and_then(|c| Some((c, c.target(g.target.as_str())?)))
        else {
            return Err(conflict(format!(
                "target `{}/{}` is no longer configured",
                g.customer, g.target
            )));
        };
        let at = |unix: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
        let spec = GrantSpec {
            sub: peer.id.clone(),
            customer: customer.id.clone(),
            target: target.id.clone(),
            port: target.port,
            gid: g.id.clone(),
            not_before: at(g.not_before),
            // A grant never outlives the certificate it is bound to.
            expires_at: at(g.expires_at).min(peer.not_after),
            cert_thumbprint: peer.thumbprint,
        };
        let (token, claims) = self.signer.mint(&spec).map_err(|e| {
            tracing::error!(error = %e, "minting a grant failed");
            WorkflowError::SigningFailed
        })?;
        let (nbf, exp) = (
            i64::try_from(claims.nbf).unwrap_or(i64::MAX),
            i64::try_from(claims.exp).unwrap_or(i64::MAX),
        );
        let mut ev = event(
            f,
            EventKind::GrantMinted,
            Outcome::Success,
            "grant fetched by the requesting technician".into(),
        );
        ev.actor = Some(peer.id.to_string());
        ev.source_ip = Some(caller.ip);
        ev.grant_id = Some(g.id.clone());
        ev.expires_at = Some(rfc3339(exp));
        // No token leaves before its record is durable.
        self.cx.record(ev).await?;
        tracing::info!(request = %f.id, grant = %g.id, "grant fetched");
        Ok(FetchedGrant {
            token,
            grant_id: g.id,
            request_id: f.id.clone(),
            customer: g.customer,
            target: g.target,
            port: target.port,
            not_before: nbf,
            expires_at: exp,
        })
    }

    /// Expires the pending requests whose time is up, each audited and notified; returns how many.
    pub async fn expire_due(&self) -> Result<usize, WorkflowError> {
        let at = self.cx.clock.unix();
        let expired = self.cx.db.run(move |s| s.expire_pending(at)).await?;
        for rec in &expired {
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
            if let Err(e) = self.cx.trail.append(ev).await {
                tracing::error!(error = %e, request = %f.id, "could not audit an expired request");
            }
            self.notify(
                rec,
                "request_expired",
                format!(
                    "{}'s request for {}/{} expired undecided (request {})",
                    f.technician.short(),
                    f.customer,
                    f.target,
                    f.id
                ),
            );
            tracing::info!(request = %f.id, "pending request expired");
        }
        Ok(expired.len())
    }

    /// Expires pending requests every `requests.sweep_interval_seconds` until `shutdown`.
    pub async fn run_expiry(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.load().requests.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.expire_due().await {
                tracing::error!(error = %e, "could not expire pending requests");
            }
        }
    }
}
