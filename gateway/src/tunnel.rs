//! The CONNECT path, top to bottom: rate limit -> not locked -> grant verified -> [`decide`]
//! (binding, route, policy: pure) -> registered, not locked, not revoked (store) -> audit -> dial ->
//! capture -> audit -> 200 and relay. Each stage returns a typed result; a refusal carries its
//! status, its reason and how it is audited. Nothing reaches a target before its allow record is
//! durable.
//!
//! Every refusal of the client's own making spends its identity's failure budget (never its
//! address's: see [`crate::limiter`]); past it the identity gets 429. Refusals are recorded through
//! the [`RefusalTrail`]: the first of each interval one by one and durably (a 503 when the trail
//! cannot take them), the rest and every 429 counted into one aggregate record, so a flood of
//! wrong-customer CONNECTs cannot write hundreds of records into another customer's chain.
//!
//! Statuses: 200 tunnel open; 400 malformed authority; 403 valid grant but another customer or target,
//! certificate mismatch, policy deny, or a locked identity or certificate; 404 unknown target; 407
//! missing or invalid grant; 429 rate-limited; 502 target unreachable; 503 audit trail not writable.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sallyport_audit::{AuditEvent, AuditLog, EventKind, Outcome};
use sallyport_certs::grant::{GrantError, GrantVerifier};
use sallyport_config::{Config, SharedConfig};
use sallyport_ids::SessionId;
use sallyport_ids::time::{Clock, rfc3339};
use sallyport_metrics::{Limiter, Metrics, TunnelRefusal};
use sallyport_store::{SessionRecord, StoreError};
use sallyport_workflow::refusals::{RefusalTrail, RefusedBy};
use sallyport_workflow::{Caller, Db, LockGate, WorkflowError};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::Capture;
use crate::decide::{Allowed, Ask, GrantCheck, Refusal, decide};
use crate::limiter::{FailKey, FailureLimiter};
use crate::live::{Basis, LiveSessions, Registration};
use crate::{Body, Conn, relay};

/// The answer to an identity past its failure budget.
const RATE_LIMITED: &str = "too many refused attempts; try again later";

/// The CONNECT data plane and what it needs. Shared by every connection.
pub struct Tunnels {
    config: SharedConfig,
    verifier: GrantVerifier,
    limiter: Arc<FailureLimiter>,
    trail: AuditLog,
    refusals: RefusalTrail,
    db: Db,
    sessions: Arc<LiveSessions>,
    locks: LockGate,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    clock: Clock,
    metrics: Metrics,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels").finish_non_exhaustive()
    }
}

/// What [`Tunnels`] is built from.
pub struct TunnelsParts {
    /// Customers and their targets, limits, the data directory (captures): the configuration in
    /// force, taken once per CONNECT.
    pub config: SharedConfig,
    /// Verifies grants.
    pub verifier: GrantVerifier,
    /// Failed authentications.
    pub limiter: Arc<FailureLimiter>,
    /// The audit trail.
    pub trail: AuditLog,
    /// Where refusals are recorded, bounded.
    pub refusals: RefusalTrail,
    /// Revocations (and session rows, through `sessions`).
    pub db: Db,
    /// The live tunnels.
    pub sessions: Arc<LiveSessions>,
    /// Locked identities and certificates.
    pub locks: LockGate,
    /// Where tunnels run, so shutdown waits for them.
    pub tasks: TaskTracker,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Now.
    pub clock: Clock,
    /// Where tunnels, refusals, bytes and decision times are counted.
    pub metrics: Metrics,
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!(
        "{} {}: {msg}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let v = req.headers().get(PROXY_AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Only a benchmark build (cargo feature `bench-insecure`) ever skips authorization.
fn authorization_skipped() -> bool {
    #[cfg(feature = "bench-insecure")]
    return crate::bench_insecure::skip();
    #[cfg(not(feature = "bench-insecure"))]
    false
}

/// A record about one session: its customer, technician, target, grant, id and source.
fn session_event(
    record: &SessionRecord,
    event: EventKind,
    outcome: Outcome,
    why: String,
) -> AuditEvent {
    let mut ev = AuditEvent::new(event, outcome, why);
    ev.customer = Some(record.customer.clone());
    ev.actor = Some(record.technician.to_string());
    ev.target = Some(record.target.to_string());
    ev.grant_id = Some(record.grant_id.clone());
    ev.session_id = Some(record.id.clone());
    ev.source_ip = Some(record.source_ip);
    ev
}

impl Tunnels {
    /// The data plane of `parts`.
    pub fn new(parts: TunnelsParts) -> Arc<Self> {
        Arc::new(Self {
            config: parts.config,
            verifier: parts.verifier,
            limiter: parts.limiter,
            trail: parts.trail,
            refusals: parts.refusals,
            db: parts.db,
            sessions: parts.sessions,
            locks: parts.locks,
            tasks: parts.tasks,
            shutdown: parts.shutdown,
            clock: parts.clock,
            metrics: parts.metrics,
        })
    }

    /// Stage: an identity refused too often is refused until its budget refills; its address, and
    /// whoever else shares it, play no part.
    fn rate_limited(&self, conn: &Conn) -> Option<Box<Refusal>> {
        let key = FailKey::Identity(conn.peer.id.to_string());
        self.limiter.blocked_for(&key).map(|wait| {
            let mut r = Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                EventKind::AuthFailure,
                RATE_LIMITED,
            );
            r.counts = false;
            r.retry_after = Some(wait);
            r
        })
    }

    /// Stage: the grant, verified (signature, claims, window with leeway).
    fn check_grant(&self, token: Option<&str>) -> GrantCheck {
        let Some(token) = token else {
            return GrantCheck::Missing;
        };
        match self.verifier.verify(token) {
            Ok(claims) => GrantCheck::Verified(Box::new(claims)),
            Err(error) => {
                // A grant whose signature checked but whose window is wrong still names a customer.
                let signed = match error {
                    GrantError::Expired | GrantError::NotYetValid => {
                        self.verifier.signed_claims(token).map(Box::new)
                    }
                    _ => None,
                };
                GrantCheck::Refused { error, signed }
            }
        }
    }

    fn allowed<'a>(
        &self,
        config: &'a Config,
        conn: &Conn,
        req: &Request<Incoming>,
    ) -> Result<Allowed<'a>, Box<Refusal>> {
        if let Some(r) = self.rate_limited(conn) {
            return Err(r);
        }
        let mut ask = Ask {
            peer: &conn.peer,
            ip: conn.ip,
            uri: req.uri(),
            grant: GrantCheck::Missing,
            now: self.clock.now(),
        };
        #[cfg(feature = "bench-insecure")]
        if authorization_skipped() {
            return crate::decide::unauthorized(
                ask,
                &config.customers,
                &config.grants.issuer,
                &config.grants.audience,
            );
        }
        ask.grant = self.check_grant(bearer(req));
        decide(ask, &config.customers)
    }

    /// [`Tunnels::allowed`], timed (`sallyport_decision_duration_seconds`).
    fn allowed_timed<'a>(
        &self,
        config: &'a Config,
        conn: &Conn,
        req: &Request<Incoming>,
    ) -> Result<Allowed<'a>, Box<Refusal>> {
        let started = std::time::Instant::now();
        let decided = self.allowed(config, conn, req);
        self.metrics.decided(started.elapsed());
        decided
    }

    /// Stage: a locked identity or certificate is refused (403), the refusal recorded by the lock
    /// gate on `customer`'s chain (or the broker's), and counted as an authentication failure.
    async fn locked(
        &self,
        conn: &Conn,
        customer: Option<&sallyport_ids::CustomerId>,
    ) -> Option<Response<Body>> {
        let caller = Caller {
            peer: &conn.peer,
            ip: conn.ip,
        };
        match self.locks.admit(caller, customer).await {
            Ok(()) => None,
            Err(WorkflowError::Locked(why)) => {
                // Counted against the identity: a locked client that keeps trying is soon answered
                // 429 before the lock is looked at, and leaves no more records.
                let _spent = self
                    .limiter
                    .record_failure(FailKey::Identity(conn.peer.id.to_string()));
                self.metrics
                    .tunnel_refused(customer.map(|c| c.as_str()), TunnelRefusal::Locked);
                Some(text(StatusCode::FORBIDDEN, &why))
            }
            Err(e) => {
                tracing::error!(error = %e, "lock check failed; refusing tunnel");
                self.metrics
                    .tunnel_refused(customer.map(|c| c.as_str()), TunnelRefusal::Unavailable);
                Some(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "lock state unavailable",
                ))
            }
        }
    }

    /// The configured customer a CONNECT authority names (`<target>.<customer>:<port>`), if any:
    /// where a locked identity's attempt is recorded, so that customer sees it.
    fn named_customer(
        config: &Config,
        req: &Request<Incoming>,
    ) -> Option<sallyport_ids::CustomerId> {
        let host = req.uri().authority()?.host();
        let (_, customer) = host.split_once('.')?;
        config.customer(customer).map(|c| c.id.clone())
    }

    /// Handles one CONNECT request.
    pub async fn connect(
        self: &Arc<Self>,
        conn: Arc<Conn>,
        mut req: Request<Incoming>,
    ) -> Response<Body> {
        let session_id = SessionId::mint();
        // One configuration for the whole decision, even if a reload lands meanwhile (the reload
        // then checks this tunnel again once it is registered).
        let config = self.config.load();
        // Stage: a locked identity or certificate goes no further, whatever grant it carries.
        if self.rate_limited(&conn).is_none()
            && let Some(refused) = self
                .locked(&conn, Self::named_customer(&config, &req).as_ref())
                .await
        {
            return refused;
        }
        let Allowed {
            claims,
            customer,
            target,
            policy_ids,
            reason,
        } = match self.allowed_timed(&config, &conn, &req) {
            Ok(ok) => ok,
            Err(refusal) => return self.refuse(&conn, &session_id, refusal).await,
        };
        // Stage: not revoked. Grants are issued by the signing key; the store records revocations.
        // Registering first means a revocation landing from here on still cuts the tunnel.
        let customer_metrics = self.metrics.customer(customer.id.as_str());
        let registration = self.sessions.register_metered(
            SessionRecord {
                id: session_id.clone(),
                grant_id: claims.gid.clone(),
                customer: customer.id.clone(),
                target: target.id.clone(),
                technician: conn.peer.id.clone(),
                source_ip: conn.ip,
                opened_at: self.clock.unix(),
                closed_at: None,
                bytes_up: 0,
                bytes_down: 0,
                close_reason: None,
            },
            conn.peer.thumbprint,
            (!authorization_skipped()).then(|| Basis {
                conn: conn.clone(),
                minutes: u32::try_from(claims.exp.saturating_sub(claims.nbf).div_ceil(60))
                    .unwrap_or(u32::MAX),
                port: claims.port,
                address: target.address.clone(),
            }),
            customer_metrics.clone(),
        );
        // Stage: still allowed. A reload that put a new configuration in force since the decision
        // did not see this tunnel; it is checked against that configuration here, and a reload
        // from here on checks it itself.
        let in_force = self.config.load();
        if !Arc::ptr_eq(&in_force, &config)
            && let Some(basis) = &registration.session.basis
        {
            let live = crate::decide::Live {
                customer: &customer.id,
                target: &target.id,
                peer: &conn.peer,
                ip: conn.ip,
                minutes: basis.minutes,
                address: &basis.address,
                port: basis.port,
            };
            if let Err(why) =
                crate::decide::still_allowed(live, &in_force.customers, self.clock.now())
            {
                let r = Refusal::new(
                    StatusCode::FORBIDDEN,
                    EventKind::Decision,
                    format!("policy changed: {why}"),
                )
                .counted_as(TunnelRefusal::PolicyDenied);
                return self.refuse(&conn, &session_id, r.about(&claims)).await;
            }
        }
        // Stage: not locked. Checked again once registered, so a lock landing from here on still
        // cuts the tunnel, and one that landed since the first check refuses it.
        if let Some(refused) = self.locked(&conn, Some(&customer.id)).await {
            return refused;
        }
        let gid = claims.gid.clone();
        let looked_up = if authorization_skipped() {
            Err(StoreError::NotFound {
                kind: "grant",
                id: gid.to_string(),
            })
        } else {
            self.db.run(move |s| s.grant(&gid)).await
        };
        match looked_up {
            Ok(g) if g.revoked.is_some() => {
                // Who revoked it and why, in their words: the technician is told what happened.
                let (by, why) = g
                    .revoked
                    .as_ref()
                    .map(|r| (r.by.short(), r.reason.as_str()))
                    .unwrap_or_default();
                let r = Refusal::new(
                    StatusCode::FORBIDDEN,
                    EventKind::Decision,
                    format!("grant `{}` was revoked by {by}: {why}", claims.gid),
                )
                .counted_as(TunnelRefusal::Revoked);
                return self.refuse(&conn, &session_id, r.about(&claims)).await;
            }
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => {
                tracing::error!(error = %e, "store unreadable; refusing tunnel");
                let mut r = Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    EventKind::Decision,
                    "grant state unavailable",
                );
                r.counts = false;
                return self.refuse(&conn, &session_id, r.about(&claims)).await;
            }
        }
        let record = &registration.session.record;
        let base = |event, outcome, why: String| session_event(record, event, outcome, why);
        // Stage: the allow decision is durable before anything is dialled.
        let mut allow = base(EventKind::Decision, Outcome::Allow, reason);
        allow.policy_ids = policy_ids;
        allow.policy_digest = Some(customer.policy.digest().to_owned());
        allow.expires_at = Some(rfc3339(i64::try_from(claims.exp).unwrap_or(i64::MAX)));
        if let Err(e) = self.trail.append(allow).await {
            tracing::error!(error = %e, "audit trail not writable; refusing tunnel");
            self.metrics
                .tunnel_refused(Some(customer.id.as_str()), TunnelRefusal::Unavailable);
            return text(StatusCode::SERVICE_UNAVAILABLE, "audit trail not writable");
        }
        // Stage: dial the configured address, never one the client names.
        let dialled = tokio::time::timeout(
            config.limits.connect_timeout,
            TcpStream::connect(&target.address),
        )
        .await;
        let upstream = match dialled {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let why = format!("target unreachable: {e}");
                self.metrics
                    .tunnel_refused(Some(customer.id.as_str()), TunnelRefusal::Unreachable);
                return self
                    .unreachable(base(EventKind::TunnelFailed, Outcome::Failure, why))
                    .await;
            }
            Err(_) => {
                let why = "target unreachable: connect timed out".into();
                self.metrics
                    .tunnel_refused(Some(customer.id.as_str()), TunnelRefusal::Unreachable);
                return self
                    .unreachable(base(EventKind::TunnelFailed, Outcome::Failure, why))
                    .await;
            }
        };
        let _ = upstream.set_nodelay(true);
        // A recorded target's session is captured; no capture, no session.
        let capture = if target.record {
            let path = crate::capture::path_of(
                &config.data_dir,
                customer.id.as_str(),
                session_id.as_str(),
            );
            let header = serde_json::json!({
                "session": session_id, "customer": customer.id, "target": target.id,
                "technician": conn.peer.id, "grant_id": claims.gid,
                "opened": rfc3339(self.clock.unix()),
            });
            match Capture::start(path, &header) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the session capture; refusing the tunnel");
                    let ev = base(
                        EventKind::TunnelFailed,
                        Outcome::Failure,
                        format!("session capture unavailable: {e}"),
                    );
                    if let Err(e) = self.trail.append(ev).await {
                        tracing::error!(error = %e, "could not audit a failed capture");
                    }
                    self.metrics
                        .tunnel_refused(Some(customer.id.as_str()), TunnelRefusal::Unavailable);
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "session capture unavailable",
                    );
                }
            }
        } else {
            None
        };
        let open = base(
            EventKind::TunnelOpen,
            Outcome::Success,
            "tunnel open".into(),
        );
        if let Err(e) = self.trail.append(open).await {
            tracing::error!(error = %e, "audit trail not writable; refusing tunnel");
            self.metrics
                .tunnel_refused(Some(customer.id.as_str()), TunnelRefusal::Unavailable);
            return text(StatusCode::SERVICE_UNAVAILABLE, "audit trail not writable");
        }
        registration.opened();
        if let Some(m) = &customer_metrics {
            m.tunnel_opened();
        }
        tracing::debug!(session = %session_id, technician = %conn.peer.id, customer = %customer.id, target = %target.id, "tunnel open");
        let on_upgrade = hyper::upgrade::on(&mut req);
        // The tunnel ends when the grant does, or the certificate it is bound to, whichever is first.
        let end = claims.expires_at().min(conn.peer.not_after);
        let deadline = tokio::time::Instant::now()
            + end
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
        let ends = relay::Ends {
            deadline,
            idle: config.limits.idle_timeout,
            shutdown: self.shutdown.clone(),
            stop: registration.session.stop.clone(),
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            // `conn` is held until the close: it keeps the slot under `limits.max_connections` while
            // the tunnel lives.
            let started = std::time::Instant::now();
            let outcome = match on_upgrade.await {
                Ok(up) => {
                    let live = &registration.session;
                    relay::relay(
                        TokioIo::new(up),
                        upstream,
                        ends,
                        live.counters.clone(),
                        capture.as_ref().map(|(c, _)| c.clone()),
                    )
                    .await
                }
                Err(e) => relay::RelayOutcome {
                    bytes_up: 0,
                    bytes_down: 0,
                    reason: relay::CloseReason::Error(format!("upgrade failed: {e}")),
                },
            };
            // Boxed, so what closing needs is allocated at the close and not held by every idle
            // tunnel.
            Box::pin(this.closed(conn, registration, capture, outcome, started)).await;
        });
        // The session id lets the technician (or an approver) find and end this session.
        let mut ok = Response::new(Full::new(Bytes::new()));
        if let Ok(v) = HeaderValue::from_str(session_id.as_str()) {
            ok.headers_mut().insert("sallyport-session", v);
        }
        ok
    }

    /// Records the end of a tunnel: its session row, then the `tunnel_close` record (kept for a later
    /// write if the trail is failing).
    async fn closed(
        &self,
        conn: Arc<Conn>,
        registration: Registration,
        capture: Option<(Arc<Capture>, crate::capture::CaptureWriter)>,
        outcome: relay::RelayOutcome,
        started: std::time::Instant,
    ) {
        let mut ev = session_event(
            &registration.session.record,
            EventKind::TunnelClose,
            Outcome::Success,
            String::new(),
        );
        drop(conn);
        if matches!(outcome.reason, relay::CloseReason::Error(_)) {
            ev.outcome = Outcome::Failure;
        }
        // The capture's hash goes on the chain with the close.
        if let Some((cap, writer)) = capture {
            drop(cap);
            match writer.await {
                Ok(Ok(w)) => ev.capture_sha256 = Some(w.sha256),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "session capture failed");
                    ev.outcome = Outcome::Failure;
                }
                Err(e) => tracing::error!(error = %e, "session capture task failed"),
            }
        }
        ev.reason = match &outcome.reason {
            relay::CloseReason::Stopped => registration
                .session
                .cause()
                .unwrap_or_else(|| outcome.reason.to_string()),
            other => other.to_string(),
        };
        registration.closed(self.clock.unix(), &ev.reason);
        if let Some(m) = &registration.session.counters.customer {
            m.tunnel_closed();
        }
        drop(registration);
        ev.bytes_up = Some(outcome.bytes_up);
        ev.bytes_down = Some(outcome.bytes_down);
        ev.duration_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        tracing::info!(
            session = %ev.session_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            reason = %ev.reason,
            bytes_up = outcome.bytes_up,
            bytes_down = outcome.bytes_down,
            "tunnel closed"
        );
        if let Err(e) = self.trail.append_or_keep(ev).await {
            tracing::error!(error = %e, "could not audit a tunnel close; it is written when the trail recovers");
        }
    }

    async fn unreachable(&self, ev: AuditEvent) -> Response<Body> {
        tracing::info!(target = ev.target.as_deref().unwrap_or(""), reason = %ev.reason, "target unreachable");
        if let Err(e) = self.trail.append(ev).await {
            tracing::error!(error = %e, "could not audit an unreachable target");
        }
        text(StatusCode::BAD_GATEWAY, "target unreachable")
    }

    async fn refuse(&self, conn: &Conn, session_id: &SessionId, r: Box<Refusal>) -> Response<Body> {
        let key = FailKey::Identity(conn.peer.id.to_string());
        // A refusal past the identity's budget is answered 429, as every later attempt will be
        // until it refills, and counted into an aggregate, not recorded alone. Counting it first
        // makes that hold for concurrent attempts too.
        let spent = r.counts && self.limiter.record_failure(key.clone());
        let over = spent || r.status == StatusCode::TOO_MANY_REQUESTS;
        let counted = if over {
            TunnelRefusal::RateLimited
        } else {
            r.kind
        };
        if over {
            self.metrics.rate_limited(Limiter::AuthFailures);
        }
        self.metrics.tunnel_refused(
            r.customer
                .as_deref()
                .filter(|c| self.config.load().customer(c).is_some()),
            counted,
        );
        let (status, answer, retry_after) = if spent {
            let wait = self
                .limiter
                .blocked_for(&key)
                .unwrap_or(Duration::from_secs(1));
            (
                StatusCode::TOO_MANY_REQUESTS,
                RATE_LIMITED.to_owned(),
                Some(wait),
            )
        } else {
            (r.status, r.reason.clone(), r.retry_after)
        };
        if over {
            tracing::debug!(peer = %conn.peer.id, source_ip = %conn.ip, reason = %r.reason, "tunnel refused: over the failure budget");
        } else {
            tracing::info!(
                status = r.status.as_u16(),
                peer = %conn.peer.id,
                source_ip = %conn.ip,
                customer = r.customer.as_deref().unwrap_or(""),
                target = r.target.as_deref().unwrap_or(""),
                reason = %r.reason,
                "tunnel refused"
            );
        }
        let by = RefusedBy::Identity(conn.peer.id.to_string());
        // Only configured customers have chains.
        let config = self.config.load();
        let configured = |c: &String| config.customer(c).map(|customer| customer.id.clone());
        let mut ev = AuditEvent::new(r.event, Outcome::Deny, r.reason.clone());
        ev.customer = r.customer.as_ref().and_then(configured);
        ev.actor = Some(conn.peer.id.to_string());
        ev.target = r.target.clone();
        ev.grant_id = r.grant_id.as_deref().and_then(|g| g.parse().ok());
        ev.session_id = Some(session_id.clone());
        ev.source_ip = Some(conn.ip);
        ev.policy_ids = r.policy_ids.clone();
        ev.policy_digest = r.policy_digest.clone();
        // A customer sees attempts on its own targets, even under another customer's grant.
        let copy = r.also_for.as_ref().and_then(configured).map(|c| {
            let mut copy = ev.clone();
            copy.customer = Some(c);
            copy
        });
        let written = match copy {
            Some(copy) => tokio::try_join!(
                self.refusals.refused(by.clone(), ev, over),
                self.refusals.refused(by, copy, over)
            )
            .map(|_| ()),
            None => self.refusals.refused(by, ev, over).await.map(|_| ()),
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "audit trail not writable");
            return text(StatusCode::SERVICE_UNAVAILABLE, "audit trail not writable");
        }
        let mut resp = text(status, &answer);
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            resp.headers_mut().insert(
                PROXY_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sallyport\""),
            );
        }
        if let Some(wait) = retry_after
            && let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
        {
            resp.headers_mut().insert(RETRY_AFTER, v);
            // Make a rate-limited client reconnect (a full handshake) before its next try.
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
