//! The CONNECT path, top to bottom: rate limit -> grant -> binding -> route -> policy (all pure, in
//! [`decide`]) -> not revoked (store) -> audit -> dial -> audit -> 200 and relay. Each stage returns a typed result; a refusal carries its status, its
//! reason and how it is audited. Nothing reaches a target before its allow record is durable.
//!
//! Statuses: 200 tunnel open; 400 malformed authority; 403 valid grant but another customer or target,
//! certificate mismatch, or policy deny; 404 unknown target; 407 missing or invalid grant; 429
//! rate-limited; 502 target unreachable; 503 audit trail not writable.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sallyport_certs::grant::{GrantClaims, GrantError};
use sallyport_ids::{Principal, Role};
use sallyport_policy::{Action, RequestContext, Subject, TargetInfo};
use tokio::net::TcpStream;

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::broker::{Body, Broker, Conn};
use crate::config::{Customer, Target};
use crate::limiter::FailKey;
use crate::relay;
use crate::store::{SessionRecord, StoreError};

/// A refused tunnel request.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
    event: EventKind,
    customer: Option<String>,
    target: Option<String>,
    grant_id: Option<String>,
    policy_ids: Vec<String>,
    auth_failure: bool,
    retry_after: Option<Duration>,
    /// Another customer whose target was named: the attempt goes on that customer's chain too.
    also_for: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, event: EventKind, reason: impl Into<String>) -> Box<Self> {
        Box::new(Self {
            status,
            reason: reason.into(),
            event,
            customer: None,
            target: None,
            grant_id: None,
            policy_ids: Vec::new(),
            auth_failure: event == EventKind::AuthFailure,
            retry_after: None,
            also_for: None,
        })
    }

    fn about(mut self: Box<Self>, claims: &GrantClaims) -> Box<Self> {
        self.customer = Some(claims.customer.to_string());
        self.target = Some(claims.target.to_string());
        self.grant_id = Some(claims.gid.to_string());
        self
    }
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

/// Handles one CONNECT request.
pub async fn connect(
    b: &Arc<Broker>,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let session_id = format!("s-{}", uuid::Uuid::new_v4().simple());
    let opened = match decide(b, &conn, &req) {
        Ok(ok) => ok,
        Err(refusal) => return refuse(b, &conn, &session_id, refusal).await,
    };
    let Allowed {
        claims,
        customer,
        target,
        policy_ids,
        reason,
    } = opened;
    // Stage: not revoked. Grants are issued by the signing key; the store records revocations.
    // Registering first means a revocation landing from here on still cuts the tunnel.
    let registration = b.sessions.register(SessionRecord {
        id: session_id.clone(),
        grant_id: claims.gid.to_string(),
        customer: customer.id.to_string(),
        target: target.id.to_string(),
        technician: conn.peer.id.to_string(),
        source_ip: conn.ip.to_string(),
        opened_at: jiff::Timestamp::now().as_second(),
        closed_at: None,
        bytes_up: 0,
        bytes_down: 0,
        close_reason: None,
    });
    let gid = claims.gid.to_string();
    let looked_up = if authorization_skipped() {
        Err(StoreError::NotFound {
            kind: "grant",
            id: gid,
        })
    } else {
        b.with_store(move |s| s.grant(&gid)).await
    };
    match looked_up {
        Ok(g) if g.revoked.is_some() => {
            let r = Refusal::new(
                StatusCode::FORBIDDEN,
                EventKind::Decision,
                format!("grant `{}` was revoked", claims.gid),
            );
            return refuse(b, &conn, &session_id, r.about(&claims)).await;
        }
        Ok(_) | Err(StoreError::NotFound { .. }) => {}
        Err(e) => {
            tracing::error!(error = %e, "store unreadable; refusing tunnel");
            let r = Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                EventKind::Decision,
                "grant state unavailable",
            );
            return refuse(b, &conn, &session_id, r.about(&claims)).await;
        }
    }
    let actor = conn.peer.id.to_string();
    let base = |event, outcome, why: String| {
        session_event(&registration.session.record, conn.ip, event, outcome, why)
    };
    // Stage: the allow decision is durable before anything is dialled.
    let mut allow = base(EventKind::Decision, Outcome::Allow, reason);
    allow.policy_ids = policy_ids;
    allow.expires_at = Some(rfc3339(claims.exp));
    if let Err(e) = b.audit.append(allow).await {
        tracing::error!(error = %e, "audit trail not writable; refusing tunnel");
        return text(StatusCode::SERVICE_UNAVAILABLE, "audit trail not writable");
    }
    // Stage: dial the configured address, never one the client names.
    let upstream = match tokio::time::timeout(
        b.cfg.limits.connect_timeout,
        TcpStream::connect(&target.address),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return unreachable(
                b,
                base(
                    EventKind::TunnelFailed,
                    Outcome::Failure,
                    format!("target unreachable: {e}"),
                ),
            )
            .await;
        }
        Err(_) => {
            return unreachable(
                b,
                base(
                    EventKind::TunnelFailed,
                    Outcome::Failure,
                    "target unreachable: connect timed out".into(),
                ),
            )
            .await;
        }
    };
    let _ = upstream.set_nodelay(true);
    // A recorded target's session is captured; no capture, no session.
    let capture = if target.record {
        let path = crate::capture::path_of(&b.cfg.data_dir, customer.id.as_str(), &session_id);
        let header = serde_json::json!({
            "session": session_id, "customer": customer.id.as_str(), "target": target.id.as_str(),
            "technician": actor, "grant_id": claims.gid.as_str(), "opened": crate::api::rfc3339(jiff::Timestamp::now().as_second()),
        });
        match crate::capture::Capture::start(path, &header) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot create the session capture; refusing the tunnel");
                let ev = base(
                    EventKind::TunnelFailed,
                    Outcome::Failure,
                    format!("session capture unavailable: {e}"),
                );
                if let Err(e) = b.audit.append(ev).await {
                    tracing::error!(error = %e, "could not audit a failed capture");
                }
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session capture unavailable",
                );
            }
        }
    } else {
        None
    };
    if let Err(e) = b
        .audit
        .append(base(
            EventKind::TunnelOpen,
            Outcome::Success,
            "tunnel open".into(),
        ))
        .await
    {
        tracing::error!(error = %e, "audit trail not writable; refusing tunnel");
        return text(StatusCode::SERVICE_UNAVAILABLE, "audit trail not writable");
    }
    registration.opened();
    tracing::debug!(session = %session_id, technician = %actor, customer = %customer.id, target = %target.id, "tunnel open");
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The tunnel ends when the grant does, or the certificate it is bound to, whichever is first.
    let end = claims.expires_at().min(conn.peer.not_after);
    let deadline = tokio::time::Instant::now()
        + end
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
    let idle = b.cfg.limits.idle_timeout;
    let shutdown = b.shutdown.clone();
    let broker = b.clone();
    b.tasks.spawn(async move {
        // `conn` is held until the close: it keeps the slot under `limits.max_connections` while the
        // tunnel lives.
        let started = std::time::Instant::now();
        let outcome = match on_upgrade.await {
            Ok(up) => {
                let live = &registration.session;
                relay::relay(
                    TokioIo::new(up),
                    upstream,
                    relay::Ends {
                        deadline,
                        idle,
                        shutdown,
                        stop: live.stop.clone(),
                    },
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
        // Boxed, so what closing needs is allocated at the close and not held by every idle tunnel.
        Box::pin(closed(
            broker,
            conn,
            registration,
            capture,
            outcome,
            started,
        ))
        .await;
    });
    // The session id lets the technician (or an approver) find and end this session through the API.
    let mut ok = Response::new(Full::new(Bytes::new()));
    if let Ok(v) = HeaderValue::from_str(&session_id) {
        ok.headers_mut().insert("sallyport-session", v);
    }
    ok
}

/// A record about one session: its customer, technician, target, grant, id and source.
fn session_event(
    record: &SessionRecord,
    ip: std::net::IpAddr,
    event: EventKind,
    outcome: Outcome,
    why: String,
) -> AuditEvent {
    let mut ev = AuditEvent::new(event, outcome, why);
    ev.customer = Some(record.customer.clone());
    ev.actor = Some(record.technician.clone());
    ev.target = Some(record.target.clone());
    ev.grant_id = Some(record.grant_id.clone());
    ev.session_id = Some(record.id.clone());
    ev.source_ip = Some(ip);
    ev
}

/// Records the end of a tunnel: its session row, then the `tunnel_close` record (kept for a later
/// write if the trail is failing).
async fn closed(
    broker: Arc<Broker>,
    conn: Arc<Conn>,
    registration: crate::live::Registration,
    capture: Option<(
        Arc<crate::capture::Capture>,
        tokio::task::JoinHandle<std::io::Result<crate::capture::Written>>,
    )>,
    outcome: relay::RelayOutcome,
    started: std::time::Instant,
) {
    let mut ev = session_event(
        &registration.session.record,
        conn.ip,
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
    registration.closed(jiff::Timestamp::now().as_second(), &ev.reason);
    drop(registration);
    ev.bytes_up = Some(outcome.bytes_up);
    ev.bytes_down = Some(outcome.bytes_down);
    ev.duration_ms = Some(started.elapsed().as_millis() as u64);
    tracing::info!(
        session = ev.session_id.as_deref().unwrap_or(""),
        reason = %ev.reason,
        bytes_up = outcome.bytes_up,
        bytes_down = outcome.bytes_down,
        "tunnel closed"
    );
    if let Err(e) = broker.audit.append(ev.clone()).await {
        tracing::error!(error = %e, "could not audit a tunnel close; it is written when the trail recovers");
        broker.keep_unwritten(ev);
    }
}

async fn unreachable(b: &Broker, ev: AuditEvent) -> Response<Body> {
    tracing::info!(target = ev.target.as_deref().unwrap_or(""), reason = %ev.reason, "target unreachable");
    if let Err(e) = b.audit.append(ev).await {
        tracing::error!(error = %e, "could not audit an unreachable target");
    }
    text(StatusCode::BAD_GATEWAY, "target unreachable")
}

fn rfc3339(unix: u64) -> String {
    jiff::Timestamp::from_second(unix as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

struct Allowed<'a> {
    claims: GrantClaims,
    customer: &'a Customer,
    target: &'a Target,
    policy_ids: Vec<String>,
    reason: String,
}

/// Every check before the tunnel: pure apart from reading the clock.
fn decide<'a>(
    b: &'a Broker,
    conn: &Conn,
    req: &Request<Incoming>,
) -> Result<Allowed<'a>, Box<Refusal>> {
    // Stage: rate limit.
    for key in [
        FailKey::Ip(crate::limiter::source(conn.ip)),
        FailKey::Identity(conn.peer.id.to_string()),
    ] {
        if let Some(wait) = b.limiter.blocked_for(&key) {
            let mut r = Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                EventKind::AuthFailure,
                "too many failed authentications; try again later",
            );
            r.auth_failure = false;
            r.retry_after = Some(wait);
            return Err(r);
        }
    }
    #[cfg(feature = "bench-insecure")]
    if authorization_skipped() {
        return unauthorized(b, conn, req);
    }
    // Stage: grant.
    let token = bearer(req).ok_or_else(|| {
        Refusal::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            EventKind::AuthFailure,
            "missing grant: send `Proxy-Authorization: Bearer <grant>`",
        )
    })?;
    let claims = b.verifier.verify(token).map_err(|e| {
        let r = Refusal::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            EventKind::AuthFailure,
            e.to_string(),
        );
        // A grant whose signature checked but whose window is wrong still names a customer.
        match e {
            GrantError::Expired | GrantError::NotYetValid => {
                match b.verifier.signed_claims(token) {
                    Some(c) => r.about(&c),
                    None => r,
                }
            }
            _ => r,
        }
    })?;
    // The leeway is for clock skew between minting and checking; a tunnel never opens past `exp`.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if claims.exp <= now {
        return Err(Refusal::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            EventKind::AuthFailure,
            GrantError::Expired.to_string(),
        )
        .about(&claims));
    }
    // Stage: the grant belongs to this connection's certificate.
    if conn.peer.id.role() != Role::Technician {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            EventKind::Decision,
            "only technicians open tunnels",
        )
        .about(&claims));
    }
    if claims.sub != conn.peer.id || !claims.is_bound_to(&conn.peer.thumbprint) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            EventKind::AuthFailure,
            "grant is bound to another client certificate",
        )
        .about(&claims));
    }
    // Stage: route the authority to a configured target.
    let authority = req.uri().authority().ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            EventKind::Decision,
            "CONNECT needs an authority `<target>.<customer>:<port>`",
        )
        .about(&claims)
    })?;
    let port = authority.port_u16();
    let (t_name, c_name) = authority.host().split_once('.').ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            EventKind::Decision,
            format!("authority `{authority}` is not `<target>.<customer>:<port>`"),
        )
        .about(&claims)
    })?;
    let wrong = |status, why: String| {
        let mut r = Refusal::new(status, EventKind::Decision, why).about(&claims);
        r.target = Some(format!("{t_name}.{c_name}"));
        r
    };
    if c_name != claims.customer.as_str() {
        let mut r = wrong(
            StatusCode::FORBIDDEN,
            format!(
                "grant is for customer `{}`, not `{c_name}`",
                claims.customer
            ),
        );
        r.also_for = Some(c_name.to_owned());
        return Err(r);
    }
    let customer = b.cfg.customer(c_name).ok_or_else(|| {
        wrong(
            StatusCode::NOT_FOUND,
            format!("unknown customer `{c_name}`"),
        )
    })?;
    let target = customer.target(t_name).ok_or_else(|| {
        wrong(
            StatusCode::NOT_FOUND,
            format!("customer `{c_name}` has no target `{t_name}`"),
        )
    })?;
    if t_name != claims.target.as_str() {
        return Err(wrong(
            StatusCode::FORBIDDEN,
            format!("grant is for target `{}`, not `{t_name}`", claims.target),
        ));
    }
    if port != Some(target.port) || claims.port != target.port {
        return Err(wrong(
            StatusCode::FORBIDDEN,
            format!("target `{t_name}` is reached on port {}", target.port),
        ));
    }
    // Stage: the customer's policy.
    let Principal::Technician { provider, name } = conn.peer.id.principal() else {
        return Err(wrong(
            StatusCode::FORBIDDEN,
            "only technicians open tunnels".into(),
        ));
    };
    let subject = Subject::Technician {
        id: conn.peer.id.clone(),
        provider: provider.clone(),
        name: name.clone(),
        groups: conn.peer.groups.clone(),
    };
    let info = TargetInfo {
        customer: customer.id.clone(),
        id: target.id.clone(),
        tags: target.tags.clone(),
        port: target.port,
        protocol: target.protocol.clone(),
    };
    let minutes = claims.exp.saturating_sub(claims.nbf).div_ceil(60);
    let ctx = RequestContext {
        now: jiff::Timestamp::now(),
        minutes: u32::try_from(minutes).unwrap_or(u32::MAX),
        source_ip: conn.ip,
        ticket: None,
    };
    let decision = customer
        .policy
        .decide(Action::Connect, &subject, &info, &ctx);
    if !decision.allowed {
        let mut r = Refusal::new(StatusCode::FORBIDDEN, EventKind::Decision, decision.reason)
            .about(&claims);
        r.policy_ids = decision.policy_ids;
        return Err(r);
    }
    Ok(Allowed {
        claims,
        customer,
        target,
        policy_ids: decision.policy_ids,
        reason: decision.reason,
    })
}

/// Only a benchmark build (cargo feature `bench-insecure`) ever skips authorization.
fn authorization_skipped() -> bool {
    #[cfg(feature = "bench-insecure")]
    return crate::bench_insecure::skip();
    #[cfg(not(feature = "bench-insecure"))]
    false
}

/// `bench-insecure` builds only: routes the authority to a configured target without any
/// authorization, under made-up claims naming the connection's own certificate.
#[cfg(feature = "bench-insecure")]
fn unauthorized<'a>(
    b: &'a Broker,
    conn: &Conn,
    req: &Request<Incoming>,
) -> Result<Allowed<'a>, Box<Refusal>> {
    let refuse = |status, why: String| Refusal::new(status, EventKind::Decision, why);
    let authority = req.uri().authority().ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "CONNECT needs an authority `<target>.<customer>:<port>`".into(),
        )
    })?;
    let (customer, target) = authority
        .host()
        .split_once('.')
        .and_then(|(t, c)| {
            let customer = b.cfg.customer(c)?;
            Some((customer, customer.target(t)?))
        })
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, format!("no target `{authority}`")))?;
    if authority.port_u16() != Some(target.port) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("target is reached on port {}", target.port),
        ));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let gid = "g-unauthorized".parse().map_err(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("bench grant id: {e}"),
        )
    })?;
    let claims = GrantClaims {
        iss: b.cfg.grants.issuer.clone(),
        aud: b.cfg.grants.audience.clone(),
        sub: conn.peer.id.clone(),
        customer: customer.id.clone(),
        target: target.id.clone(),
        port: target.port,
        gid,
        iat: now,
        nbf: now,
        exp: now + 3600,
        jti: String::new(),
        cnf: sallyport_certs::grant::Confirmation {
            x5t_s256: String::new(),
        },
    };
    Ok(Allowed {
        claims,
        customer,
        target,
        policy_ids: Vec::new(),
        reason: "authorization skipped: bench-insecure build".into(),
    })
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let v = req.headers().get(PROXY_AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn refuse(b: &Broker, conn: &Conn, session_id: &str, r: Box<Refusal>) -> Response<Body> {
    tracing::info!(
        status = r.status.as_u16(),
        peer = %conn.peer.id,
        source_ip = %conn.ip,
        customer = r.customer.as_deref().unwrap_or(""),
        target = r.target.as_deref().unwrap_or(""),
        reason = %r.reason,
        "tunnel refused"
    );
    if r.auth_failure {
        b.note_auth_failure(conn.ip, Some(&conn.peer.id.to_string()));
    }
    let outcome = Outcome::Deny;
    let mut ev = AuditEvent::new(r.event, outcome, r.reason.clone());
    ev.customer = r.customer.clone().filter(|c| b.cfg.customer(c).is_some());
    ev.actor = Some(conn.peer.id.to_string());
    ev.target = r.target.clone();
    ev.grant_id = r.grant_id.clone();
    ev.session_id = Some(session_id.to_owned());
    ev.source_ip = Some(conn.ip);
    ev.policy_ids = r.policy_ids.clone();
    // A customer sees attempts on its own targets, even under another customer's grant.
    let copy = r
        .also_for
        .as_ref()
        .filter(|c| b.cfg.customer(c).is_some())
        .map(|c| {
            let mut copy = ev.clone();
            copy.customer = Some(c.clone());
            copy
        });
    let written = match copy {
        Some(copy) => tokio::try_join!(b.audit.append(ev), b.audit.append(copy)).map(|_| ()),
        None => b.audit.append(ev).await.map(|_| ()),
    };
    if let Err(e) = written {
        tracing::error!(error = %e, "audit trail not writable");
        return text(StatusCode::SERVICE_UNAVAILABLE, "audit trail not writable");
    }
    let mut resp = text(r.status, &r.reason);
    if r.status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        resp.headers_mut().insert(
            PROXY_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sallyport\""),
        );
    }
    if let Some(wait) = r.retry_after
        && let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
    {
        resp.headers_mut().insert(RETRY_AFTER, v);
        // Make a rate-limited client reconnect (a full handshake) before its next try.
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
