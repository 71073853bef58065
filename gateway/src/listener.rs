//! The broker process: loads keys and policies, accepts TLS connections (client certificate required),
//! serves HTTP/1.1 on each (CONNECT tunnels, the `/v1` API, `/healthz`), and shuts down gracefully.
//!
//! Per connection: accept -> TLS handshake (under a timeout) -> identify the peer from its certificate
//! -> HTTP with bounded header size and header timeout. The CONNECT path lives in [`crate::tunnel`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sallyport_certs::grant::GrantVerifier;
use sallyport_certs::identity::PeerIdentity;
use sallyport_certs::tls::PemFiles;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditEvent, AuditLog, AuditWriter, EventKind, Outcome};
use crate::config::{Config, ConfigError};
use crate::limiter::{CallLimiter, FailKey, FailureLimiter, source};
use crate::live::LiveSessions;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::webhook::{GiveUp, Notifier};
use sallyport_certs::grant::GrantSigner;
use std::collections::HashMap;

/// Response body type used throughout.
pub type Body = Full<Bytes>;

/// Everything a connection needs, shared.
pub struct Broker {
    /// The validated configuration.
    pub cfg: Arc<Config>,
    /// Grant verification.
    pub verifier: GrantVerifier,
    /// The audit trail.
    pub audit: AuditLog,
    /// Failed-authentication limits.
    pub limiter: FailureLimiter,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Tunnels and connections in flight.
    pub tasks: TaskTracker,
    /// Requests, grants, revocations, sessions.
    pub store: Arc<dyn Store>,
    /// Live tunnels, and the recorder of session rows.
    pub sessions: Arc<LiveSessions>,
    /// Signs grants fetched for approved requests.
    pub signer: GrantSigner,
    /// Per-customer webhooks.
    pub notifier: Notifier,
    /// The audit checkpoint key, as published (`GET /v1/audit/key`).
    pub audit_key: serde_json::Value,
    /// Records of things already over (tunnel closes) that could not be written while the trail
    /// failed; written as soon as it takes records again.
    pub unwritten: std::sync::Mutex<Vec<AuditEvent>>,
    /// API calls per identity.
    pub api_calls: CallLimiter,
    /// Request filings per technician.
    pub filings: CallLimiter,
    acceptor: TlsAcceptor,
    /// Held for the broker's life: one broker per data directory.
    _lock: std::fs::File,
}

/// A connection's authenticated peer.
#[derive(Debug)]
pub struct Conn {
    /// Who, from the client certificate.
    pub peer: PeerIdentity,
    /// From where.
    pub ip: IpAddr,
    /// The connection's slot under `limits.max_connections`; a tunnel keeps it until it closes.
    pub permit: OwnedSemaphorePermit,
}

fn read(path: &std::path::Path, field: &str, cfg: &Config) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        location: cfg.file.display().to_string(),
        field: field.into(),
        message: format!("cannot read `{}`: {e}", path.display()),
        fix: format!(
            "point `{field}` at an existing file, or create the PKI with `sallyport init --dir DIR`"
        ),
    })
}

fn bad(cfg: &Config, field: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        location: cfg.file.display().to_string(),
        field: field.into(),
        message: e.to_string(),
        fix: format!("point `{field}` at the file `sallyport init` created, or create a new one"),
    }
}

/// Opens the workflow store, `<data_dir>/sallyport.db`.
pub fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, anyhow::Error> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", cfg.data_dir.display()))?;
    Ok(Arc::new(SqliteStore::open(
        &cfg.data_dir.join("sallyport.db"),
    )?))
}

/// Takes `<data_dir>/broker.lock`: a second broker on the same data directory would close the first
/// one's sessions and race its writes, so it refuses to start.
fn lock_data_dir(cfg: &Config) -> Result<std::fs::File, anyhow::Error> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", cfg.data_dir.display()))?;
    let path = cfg.data_dir.join("broker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "another broker is already running on {} (it holds {}); stop it, or give this one its own server.data_dir",
            cfg.data_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::anyhow!("locking {}: {e}", path.display()))
        }
    }
}

/// Loads the audit signing key and the checkpoint settings.
pub fn load_checkpoints(cfg: &Config) -> Result<crate::audit::Checkpoints, ConfigError> {
    let path = &cfg.audit.signing_key;
    let pem = std::fs::read_to_string(path).map_err(|e| ConfigError {
        location: cfg.file.display().to_string(),
        field: "audit.signing_key".into(),
        message: format!("cannot read `{}`: {e}", path.display()),
        fix: "create the key with `openssl genpkey -algorithm ed25519 -out FILE` (or `sallyport init`), and keep it off the audit folder".into(),
    })?;
    let signer = sallyport_certs::signing::Ed25519Signer::from_pkcs8_pem(&pem)
        .map_err(|e| bad(cfg, "audit.signing_key", format!("{}: {e}", path.display())))?;
    Ok(crate::audit::Checkpoints {
        signer: Arc::new(signer),
        every_records: cfg.audit.checkpoint_every_records,
        every: cfg.audit.checkpoint_every,
        quiet: crate::audit::checkpoint::QUIET,
    })
}

/// Loads the grant signing key and returns a verifier trusting it.
pub fn load_signer(cfg: &Config) -> Result<sallyport_certs::grant::GrantSigner, ConfigError> {
    let pem = read(&cfg.grants.signing_key, "grants.signing_key", cfg)?;
    sallyport_certs::grant::GrantSigner::from_pkcs8_pem(
        &pem,
        &cfg.grants.issuer,
        &cfg.grants.audience,
    )
    .map_err(|e| {
        bad(
            cfg,
            "grants.signing_key",
            format!("{}: {e}", cfg.grants.signing_key.display()),
        )
    })
}

impl Broker {
    /// Loads TLS material, the signing key and the audit trail.
    pub fn new(
        cfg: Config,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Broker>, AuditWriter), anyhow::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ca = read(&cfg.tls.ca, "tls.ca", &cfg)?;
        let cert = read(&cfg.tls.cert, "tls.cert", &cfg)?;
        let key = read(&cfg.tls.key, "tls.key", &cfg)?;
        let (ca_n, cert_n, key_n) = (
            cfg.tls.ca.display().to_string(),
            cfg.tls.cert.display().to_string(),
            cfg.tls.key.display().to_string(),
        );
        let server = sallyport_certs::tls::server_config(
            provider,
            PemFiles {
                ca: (&ca, &ca_n),
                cert: (&cert, &cert_n),
                key: (&key, &key_n),
            },
            &[b"http/1.1"],
        )
        .map_err(|e| bad(&cfg, "tls", e))?;
        let signer = load_signer(&cfg)?;
        let verifier =
            GrantVerifier::new(&cfg.grants.issuer, &cfg.grants.audience, cfg.grants.leeway)
                .trust(signer.public_key());
        let chains: Vec<&str> = cfg.customers.iter().map(|c| c.id.as_str()).collect();
        // First: a second broker on this data directory must not touch its trail or store.
        let lock = lock_data_dir(&cfg)?;
        let checkpoints = load_checkpoints(&cfg)?;
        let audit_key = crate::audit::checkpoint::public_key_json(&checkpoints.signer);
        let (audit, writer) = AuditLog::open_with(
            &cfg.data_dir.join("audit"),
            &chains,
            Some(checkpoints),
            cfg.audit.retention_days,
        )?;
        let store = open_store(&cfg)?;
        // Tunnels that were live when a previous broker stopped died with it.
        let orphans = store.close_orphaned_sessions(
            jiff::Timestamp::now().as_second(),
            "broker stopped while the session was live",
        )?;
        if orphans > 0 {
            tracing::warn!(
                sessions = orphans,
                "closed sessions left open by a broker that stopped"
            );
        }
        let limiter = FailureLimiter::new(
            cfg.limits.auth_failures_per_minute,
            cfg.limits.auth_failure_burst,
        );
        let notifier = start_notifier(&cfg, audit.clone(), shutdown.clone());
        let tasks = TaskTracker::new();
        Ok((
            Arc::new(Broker {
                verifier,
                audit,
                limiter,
                shutdown,
                sessions: LiveSessions::start(store.clone()),
                store,
                tasks,
                signer,
                notifier,
                audit_key,
                unwritten: std::sync::Mutex::new(Vec::new()),
                api_calls: CallLimiter::new(
                    cfg.limits.api_calls_per_minute,
                    cfg.limits.api_call_burst,
                ),
                filings: CallLimiter::new(
                    cfg.limits.request_filings_per_minute,
                    cfg.limits.request_filing_burst,
                ),
                cfg: Arc::new(cfg),
                acceptor: TlsAcceptor::from(Arc::new(server)),
                _lock: lock,
            }),
            writer,
        ))
    }

    /// Keeps a record of something already over that could not be written (at most 100,000).
    pub fn keep_unwritten(&self, ev: AuditEvent) {
        let mut list = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < 100_000 {
            list.push(ev);
        } else {
            tracing::error!("too many unwritten audit records; dropping one");
        }
    }

    /// Writes the records kept while the trail failed, now that it may take them again.
    async fn write_unwritten(&self) {
        let pending =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|p| p.into_inner()));
        let mut left = Vec::new();
        for mut ev in pending {
            if !ev.reason.ends_with(LATE) {
                ev.reason.push_str(LATE);
            }
            if let Err(e) = self.audit.append(ev.clone()).await {
                tracing::debug!(error = %e, "the audit trail still fails");
                left.push(ev);
            }
        }
        if !left.is_empty() {
            self.unwritten
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(left);
        }
    }

    /// Runs a store call on the blocking pool: SQLite may wait on a lock held by another process.
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Counts an authentication failure. A failed handshake counts against the source (an address
    /// over budget is dropped before its next handshake, since no 429 can be sent before TLS). A bad
    /// or foreign grant counts against the source and the certificate identity (answered 429).
    pub fn note_auth_failure(&self, ip: IpAddr, identity: Option<&str>) {
        let ip = source(ip);
        match identity {
            Some(id) => {
                self.limiter.record_failure(FailKey::Ip(ip));
                self.limiter
                    .record_failure(FailKey::Identity(id.to_owned()));
            }
            None => {
                self.limiter.record_failure(FailKey::Handshake(ip));
            }
        }
    }
}

/// Starts the per-customer webhook workers; a delivery that gives up is logged and audited.
fn start_notifier(cfg: &Config, audit: AuditLog, shutdown: CancellationToken) -> Notifier {
    let targets: HashMap<_, _> = cfg
        .customers
        .iter()
        .filter_map(|c| Some((c.id.to_string(), c.webhook.clone()?)))
        .collect();
    Notifier::start(
        targets,
        crate::webhook::default_tls(),
        move |g: GiveUp| {
            tracing::warn!(customer = %g.customer, event = %g.event, delivery = %g.delivery_id, attempts = g.attempts, error = %g.error, "webhook delivery failed");
            let mut ev = AuditEvent::new(
                EventKind::WebhookFailed,
                Outcome::Failure,
                format!(
                    "`{}` notification {} not delivered after {} attempt(s): {}",
                    g.event, g.delivery_id, g.attempts, g.error
                ),
            );
            ev.customer = Some(g.customer);
            let audit = audit.clone();
            tokio::spawn(async move {
                if let Err(e) = audit.append(ev).await {
                    tracing::error!(error = %e, "could not audit a failed webhook");
                }
            });
        },
        shutdown,
    )
}

/// Marks a record written after the trail recovered.
const LATE: &str = " (recorded after the audit trail recovered)";

/// On every audit write failure: with `audit.on_failure = "end_sessions"` (the default), ends every
/// live tunnel, since nothing may go on that cannot be recorded. New tunnels and grants are refused
/// (503) by their own failing records until the disk takes writes again.
async fn watch_audit(b: Arc<Broker>) {
    let health = b.audit.health().clone();
    // Failures are read from the counter, so one that lands while this task is busy is not missed.
    let mut seen = health.failures();
    loop {
        tokio::select! {
            _ = b.shutdown.cancelled() => return,
            _ = health.failed() => {}
            _ = health.appended() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let failures = health.failures();
        if failures > seen {
            seen = failures;
            tracing::error!(
                failures,
                "the audit trail is not writable: new sessions and grants are refused until it recovers"
            );
            if b.cfg.audit.on_failure == crate::config::OnAuditFailure::EndSessions {
                let ended = b.sessions.end_all("audit trail not writable");
                if ended > 0 {
                    tracing::error!(
                        sessions = ended,
                        "ended live sessions: the audit trail is not writable"
                    );
                }
            }
            continue;
        }
        b.write_unwritten().await;
        // Retries that failed again are not news.
        seen = seen.max(health.failures());
    }
}

/// Accepts connections until `shutdown` is cancelled, then drains them.
pub async fn run(broker: Arc<Broker>, listener: TcpListener) {
    broker
        .tasks
        .spawn(crate::api::requests::expire_pending(broker.clone()));
    broker.tasks.spawn(watch_audit(broker.clone()));
    let sinks: Vec<crate::siem::Sink> = broker
        .cfg
        .customers
        .iter()
        .flat_map(|c| {
            c.siem
                .iter()
                .enumerate()
                .map(|(index, kind)| crate::siem::Sink {
                    customer: c.id.to_string(),
                    index,
                    kind: kind.clone(),
                })
        })
        .collect();
    if let Err(e) = crate::siem::start(
        sinks,
        broker.cfg.data_dir.join("audit"),
        broker.cfg.data_dir.join("siem"),
        broker.audit.health().clone(),
        broker.shutdown.clone(),
        &broker.tasks,
    ) {
        tracing::error!(error = %e, "cannot start SIEM forwarding");
    }
    let permits = Arc::new(Semaphore::new(broker.cfg.limits.max_connections));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = broker.shutdown.cancelled() => break,
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
        let b = broker.clone();
        broker.tasks.spawn(handle_connection(b, tcp, addr, permit));
    }
    drop(listener);
    broker.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), broker.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s of shutdown; leaving them");
    }
    broker.sessions.flush().await;
}

async fn audit_handshake_failure(b: &Broker, ip: IpAddr, reason: String) {
    tracing::info!(source_ip = %ip, reason = %reason, "tls handshake refused");
    let mut ev = AuditEvent::new(EventKind::AuthFailure, Outcome::Deny, reason);
    ev.source_ip = Some(ip);
    ev.actor = Some("unauthenticated".into());
    if let Err(e) = b.audit.append(ev).await {
        tracing::error!(error = %e, "could not audit a refused handshake");
    }
    b.note_auth_failure(ip, None);
}

async fn handle_connection(
    b: Arc<Broker>,
    tcp: TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let ip = addr.ip();
    if b.limiter
        .blocked_for(&FailKey::Handshake(source(ip)))
        .is_some()
    {
        tracing::debug!(source_ip = %ip, "source is rate-limited; dropping before handshake");
        return;
    }
    let _ = tcp.set_nodelay(true);
    let tls =
        match tokio::time::timeout(b.cfg.limits.handshake_timeout, b.acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(source_ip = %ip, "connection closed before the handshake finished");
                return;
            }
            Ok(Err(e)) => {
                audit_handshake_failure(&b, ip, format!("tls handshake failed: {e}")).await;
                return;
            }
            Err(_) => {
                audit_handshake_failure(&b, ip, "tls handshake timed out".into()).await;
                return;
            }
        };
    let peer = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "no client certificate".to_owned())
        .and_then(|der| PeerIdentity::from_der(der, &b.cfg.trust_domain).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            audit_handshake_failure(&b, ip, format!("client certificate refused: {e}")).await;
            return;
        }
    };
    tracing::debug!(source_ip = %ip, peer = %peer.id, "client authenticated");
    let conn = Arc::new(Conn { peer, ip, permit });
    let svc_broker = b.clone();
    let service = hyper::service::service_fn(move |req| {
        let b = svc_broker.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(route(b, conn, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(b.cfg.limits.header_timeout)
        .max_buf_size(b.cfg.limits.max_header_bytes)
        .keep_alive(true);
    let conn_fut = builder
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn_fut);
    tokio::select! {
        r = conn_fut.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(source_ip = %ip, error = %e, "connection ended with an error");
            }
        }
        _ = b.shutdown.cancelled() => {
            conn_fut.as_mut().graceful_shutdown();
            let _ = conn_fut.await;
        }
    }
}

async fn route(b: Arc<Broker>, conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return crate::tunnel::connect(&b, conn, req).await;
    }
    if req.method() == Method::GET && req.uri().path() == "/healthz" {
        return json(StatusCode::OK, r#"{"status":"ok"}"#.into());
    }
    if req.method() == Method::GET && req.uri().path() == "/metrics" {
        return metrics(&b, &conn);
    }
    crate::api::route(&b, &conn, req).await
}

/// `GET /metrics`: Prometheus text, for provider admins.
fn metrics(b: &Broker, conn: &Conn) -> Response<Body> {
    if conn.peer.id.role() != sallyport_ids::Role::Admin {
        return crate::api::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "metrics are for provider admins",
        );
    }
    let text = format!(
        "# HELP sallyport_audit_failures_total Audit batches that could not be written durably.\n\
         # TYPE sallyport_audit_failures_total counter\n\
         sallyport_audit_failures_total {}\n\
         # HELP sallyport_live_sessions Tunnels open now.\n\
         # TYPE sallyport_live_sessions gauge\n\
         sallyport_live_sessions {}\n",
        b.audit.health().failures(),
        b.sessions.snapshot().len()
    );
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
