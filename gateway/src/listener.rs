//! The mTLS listener: accepts TCP connections (at most `limits.max_connections` at once), runs the
//! TLS handshake under a timeout with a client certificate from the broker CA required, identifies
//! the peer from that certificate, and serves HTTP/1.1 on the connection with bounded header size and
//! header timeout, handing every request to the handler it was given. It knows nothing of routes:
//! the binary's assembly passes a handler that sends CONNECT to [`crate::tunnel`] and the rest to the
//! API.
//!
//! Per connection: accept -> (dropped if its address failed too many handshakes) -> TLS handshake ->
//! identify -> HTTP. A failed handshake or an unusable certificate is on the `_broker` audit chain
//! and counts against the source address. On shutdown it stops accepting, lets each connection finish
//! its request (graceful HTTP shutdown), and waits up to 10 s for connections and tunnels.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use sallyport_audit::{AuditEvent, AuditLog, EventKind, Outcome};
use sallyport_certs::identity::PeerIdentity;
use sallyport_config::Limits;
use sallyport_ids::TrustDomain;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limiter::{FailKey, FailureLimiter, source};
use crate::{Body, Conn};

/// How long connections and tunnels may take to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// The listener's settings and the handles it needs.
pub struct Listener {
    acceptor: TlsAcceptor,
    trust_domain: TrustDomain,
    limits: Limits,
    limiter: Arc<FailureLimiter>,
    trail: AuditLog,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Listener {
    /// A listener serving TLS with `tls`, for peers of `trust_domain`, within `limits`. Failed
    /// handshakes count in `limiter` and are recorded on `trail`; connections run in `tasks` until
    /// `shutdown`.
    pub fn new(
        tls: rustls::ServerConfig,
        trust_domain: TrustDomain,
        limits: Limits,
        limiter: Arc<FailureLimiter>,
        trail: AuditLog,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            trust_domain,
            limits,
            limiter,
            trail,
            shutdown,
            tasks,
        }
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
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(source_ip = %addr.ip(), "connection limit reached; dropping connection");
                continue;
            };
            this.tasks
                .spawn(this.clone().connection(tcp, addr, permit, handler.clone()));
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

    async fn refused_handshake(&self, ip: IpAddr, reason: String) {
        tracing::info!(source_ip = %ip, reason = %reason, "tls handshake refused");
        let mut ev = AuditEvent::new(EventKind::AuthFailure, Outcome::Deny, reason);
        ev.source_ip = Some(ip);
        ev.actor = Some("unauthenticated".into());
        if let Err(e) = self.trail.append(ev).await {
            tracing::error!(error = %e, "could not audit a refused handshake");
        }
        // No 429 can be sent before TLS: an address over budget is dropped before its next handshake.
        self.limiter.record_failure(FailKey::Handshake(source(ip)));
    }

    async fn connection<H, F>(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        permit: OwnedSemaphorePermit,
        handler: H,
    ) where
        H: Fn(Arc<Conn>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let ip = addr.ip();
        if self
            .limiter
            .blocked_for(&FailKey::Handshake(source(ip)))
            .is_some()
        {
            tracing::debug!(source_ip = %ip, "source is rate-limited; dropping before handshake");
            return;
        }
        let _ = tcp.set_nodelay(true);
        let handshake = self.acceptor.accept(tcp);
        let tls = match tokio::time::timeout(self.limits.handshake_timeout, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(source_ip = %ip, "connection closed before the handshake finished");
                return;
            }
            Ok(Err(e)) => {
                self.refused_handshake(ip, format!("tls handshake failed: {e}"))
                    .await;
                return;
            }
            Err(_) => {
                self.refused_handshake(ip, "tls handshake timed out".into())
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
                self.refused_handshake(ip, format!("client certificate refused: {e}"))
                    .await;
                return;
            }
        };
        tracing::debug!(source_ip = %ip, peer = %peer.id, "client authenticated");
        let conn = Arc::new(Conn { peer, ip, permit });
        let service = hyper::service::service_fn(move |req| {
            let (handler, conn) = (handler.clone(), conn.clone());
            async move { Ok::<_, Infallible>(handler(conn, req).await) }
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
