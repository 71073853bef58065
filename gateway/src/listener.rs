//! The mTLS listener: accepts TCP connections (at most `limits.max_connections` at once), runs the
//! TLS handshake under a timeout with a client certificate from the broker CA required, identifies
//! the peer from that certificate, and serves HTTP/1.1 on the connection with bounded header size and
//! header timeout, handing every request to the handler it was given. It knows nothing of routes:
//! the binary's assembly passes a handler that sends CONNECT to [`crate::tunnel`] and the rest to the
//! API.
//!
//! Per connection: accept -> a pre-handshake slot ([`crate::slots`]: per source and in all; closed at
//! once without one) -> a connection slot (`max_connections`) -> TLS handshake under its timeout ->
//! the slot given back -> identify -> HTTP. A failed handshake or an unusable certificate is on the
//! `_broker` audit chain (through the [`RefusalTrail`], so a flood is aggregated) and spends the
//! source address's budget of unauthenticated failures; no connection is dropped before its
//! handshake for its address's failures (see [`crate::limiter`] for the rule). Each request carries a
//! [`RequestDeadline`]: the connection became ready for it (handshake, or the previous answer) plus
//! `limits.request_timeout`; the API reads bodies until then. On shutdown it stops accepting, lets each
//! connection finish its request (graceful HTTP shutdown), and waits up to 10 s for connections and
//! tunnels.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use sallyport_audit::{AuditEvent, EventKind, Outcome};
use sallyport_certs::identity::PeerIdentity;
use sallyport_config::Limits;
use sallyport_ids::TrustDomain;
use sallyport_metrics::{HandshakeFailure, Limiter, Metrics};
use sallyport_workflow::refusals::{RefusalTrail, RefusedBy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limiter::{FailKey, FailureLimiter, source};
use crate::slots::{Slot, Slots};
use crate::{Body, Conn};

/// A request extension: by when the request's body must have arrived (the connection was ready for
/// the request at one moment; `limits.request_timeout` after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDeadline(pub Instant);

/// How a handshake that failed with `e` is counted: by the rustls error under it.
fn handshake_failure(e: &std::io::Error) -> HandshakeFailure {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => HandshakeFailure::NoCertificate,
        Some(Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => HandshakeFailure::ExpiredCertificate,
        Some(Error::InvalidCertificate(_)) => HandshakeFailure::UntrustedCertificate,
        _ => HandshakeFailure::Protocol,
    }
}

/// How long connections and tunnels may take to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// The listener's settings and the handles it needs.
pub struct Listener {
    acceptor: TlsAcceptor,
    trust_domain: TrustDomain,
    limits: Limits,
    limiter: Arc<FailureLimiter>,
    refusals: RefusalTrail,
    slots: Arc<Slots>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    metrics: Metrics,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Listener {
    /// A listener serving TLS with `tls`, for peers of `trust_domain`, within `limits`. Failed
    /// handshakes count in `limiter` and are recorded through `refusals`; connections run in `tasks`
    /// until `shutdown`.
    pub fn new(
        tls: rustls::ServerConfig,
        trust_domain: TrustDomain,
        limits: Limits,
        limiter: Arc<FailureLimiter>,
        refusals: RefusalTrail,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let slots = Slots::new(limits.max_handshakes, limits.max_handshakes_per_source);
        Self {
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            trust_domain,
            limits,
            limiter,
            refusals,
            slots,
            shutdown,
            tasks,
            metrics: Metrics::default(),
        }
    }

    /// Counts into `metrics`: failed handshakes by kind, sources past their failure budget, and
    /// connections refused a handshake slot. Call before [`Listener::slots`] is handed out.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.slots = Slots::counted(
            self.limits.max_handshakes,
            self.limits.max_handshakes_per_source,
            metrics.rate_limit_counter(Limiter::HandshakeSlots),
        );
        self.metrics = metrics;
        self
    }

    /// The pre-handshake slots (for `/metrics`).
    pub fn slots(&self) -> Arc<Slots> {
        self.slots.clone()
    }

    /// Accepts connections on `listener` until shutdown, serving each request with `handler`; then
    /// drains connections and tunnels (at most 10 s).
    pub async fn run<H, F>(self, listener: TcpListener, handler: H)
    where
        H: Fn(Arc<Conn>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.limits.max_connections));
        loop {
            let (tcp, addr) = tokio::select! {
                _ = this.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, typically: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // A flood is closed here, before any TLS work: counted, logged at debug, not recorded.
            let slot = match this.slots.take(addr.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    tracing::debug!(source_ip = %addr.ip(), reason = why.as_str(), "closing a connection before its handshake");
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(source_ip = %addr.ip(), "connection limit reached; dropping connection");
                continue;
            };
            this.tasks.spawn(
                this.clone()
                    .connection(tcp, addr, permit, slot, handler.clone()),
            );
        }
        drop(listener);
        this.tasks.close();
        if tokio::time::timeout(DRAIN, this.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 10 s of shutdown; leaving them");
        }
    }

    async fn refused_handshake(&self, ip: IpAddr, kind: HandshakeFailure, reason: String) {
        let from = source(ip);
        self.metrics.handshake_failed(kind);
        // No 429 can be sent before TLS; an address over its budget has its failures aggregated.
        let over = self.limiter.record_failure(FailKey::Source(from));
        if over {
            self.metrics.rate_limited(Limiter::UnauthenticatedFailures);
        }
        if over {
            tracing::debug!(source_ip = %ip, reason = %reason, "tls handshake refused (source over its failure budget)");
        } else {
            tracing::info!(source_ip = %ip, reason = %reason, "tls handshake refused");
        }
        let mut ev = AuditEvent::new(EventKind::AuthFailure, Outcome::Deny, reason);
        ev.source_ip = Some(ip);
        ev.actor = Some("unauthenticated".into());
        if let Err(e) = self
            .refusals
            .refused(RefusedBy::Source(from), ev, over)
            .await
        {
            tracing::error!(error = %e, "could not audit a refused handshake");
        }
    }

    async fn connection<H, F>(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        permit: OwnedSemaphorePermit,
        slot: Slot,
        handler: H,
    ) where
        H: Fn(Arc<Conn>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let ip = addr.ip();
        let _ = tcp.set_nodelay(true);
        let handshake = self.acceptor.accept(tcp);
        let done = tokio::time::timeout(self.limits.handshake_timeout, handshake).await;
        // The handshake is over, whichever way: its slot is free before anything is recorded.
        drop(slot);
        let tls = match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(source_ip = %ip, "connection closed before the handshake finished");
                return;
            }
            Ok(Err(e)) => {
                let kind = handshake_failure(&e);
                self.refused_handshake(ip, kind, format!("tls handshake failed: {e}"))
                    .await;
                return;
            }
            Err(_) => {
                let why = "tls handshake timed out".into();
                self.refused_handshake(ip, HandshakeFailure::Timeout, why)
                    .await;
                return;
            }
        };
        let peer = match tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| "no client certificate".to_owned())
            .and_then(|der| {
                PeerIdentity::from_der(der, &self.trust_domain).map_err(|e| e.to_string())
            }) {
            Ok(p) => p,
            Err(e) => {
                let why = format!("client certificate refused: {e}");
                self.refused_handshake(ip, HandshakeFailure::IdentityRefused, why)
                    .await;
                return;
            }
        };
        tracing::debug!(source_ip = %ip, peer = %peer.id, "client authenticated");
        let conn = Arc::new(Conn { peer, ip, permit });
        // When the connection became ready for its next request: the handshake, then each answer.
        let ready = Arc::new(std::sync::Mutex::new(Instant::now()));
        let request_timeout = self.limits.request_timeout;
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let (handler, conn, ready) = (handler.clone(), conn.clone(), ready.clone());
            let since = *ready.lock().unwrap_or_else(|p| p.into_inner());
            req.extensions_mut()
                .insert(RequestDeadline(since + request_timeout));
            async move {
                let answer = handler(conn, req).await;
                *ready.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                Ok::<_, Infallible>(answer)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(self.limits.max_header_bytes)
            .keep_alive(true);
        let serving = builder
            .serve_connection(TokioIo::new(tls), service)
            .with_upgrades();
        tokio::pin!(serving);
        tokio::select! {
            r = serving.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(source_ip = %ip, error = %e, "connection ended with an error");
                }
            }
            _ = self.shutdown.cancelled() => {
                serving.as_mut().graceful_shutdown();
                let _ = serving.await;
            }
        }
    }
}
