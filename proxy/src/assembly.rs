//! The assembly: builds every piece of a running broker from the validated configuration, once, and
//! wires them together. Each crate gets the few handles it needs:
//!
//! - the data directory lock (one broker per directory), the audit trail and its writer, the store
//!   (with sessions left open by a stopped broker closed), the customers' webhooks;
//! - the workflow (requests, grants, sessions, locks and the lock check) over those;
//! - the gateway's live tunnels and CONNECT path, and the API;
//! - the listener, with a handler that routes CONNECT to the gateway and everything else to the API;
//! - one metrics registry ([`Metrics`]) every piece records into, served by the API's `/metrics` and
//!   by the admin listener (`admin.listen`, plain HTTP: health, readiness, metrics).
//!
//! It then loads the active locks and starts the background services, each with the broker's
//! shutdown token: request expiry, the lock refresh, the audit watcher, SIEM forwarding, the writing
//! of aggregated refusals. [`Broker::run`] serves until shutdown, drains, and writes what is left
//! (aggregated refusals included).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use hyper::Method;
use sallyport_api::Api;
use sallyport_audit::{AuditLog, AuditWriter, Checkpoints};
use sallyport_certs::grant::GrantVerifier;
use sallyport_config::{Config, ConfigError, SharedConfig};
use sallyport_gateway::limiter::{Budget, FailureLimiter};
use sallyport_gateway::{Listener, LiveSessions, Tunnels, TunnelsParts};
use sallyport_ids::time::{Clock, now_unix};
use sallyport_metrics::Metrics;
use sallyport_notify::{GiveUp, Notifier};
use sallyport_store::Store;
use sallyport_store::sqlite::SqliteStore;
use sallyport_web::TlsAcceptor;
use sallyport_workflow::limit::CallLimiter;
use sallyport_workflow::locks::{LocksParts, crl::Crl};
use sallyport_workflow::refusals::RefusalLimits;
use sallyport_workflow::reload::{Overrides, Reloader, ReloaderParts};
use sallyport_workflow::{
    Context, Db, Grants, LiveTunnels, LockGate, LockView, Locks, RefusalTrail, Refusals, Requests,
    Sessions, SignIns, Workflow,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::Failure;

/// A broker, built and not yet serving.
pub struct Broker {
    signins: SignIns,
    config: SharedConfig,
    reloader: Reloader,
    listener: Listener,
    tunnels: Arc<Tunnels>,
    api: Arc<Api>,
    requests: Requests,
    locks: Locks,
    trail: AuditLog,
    refusals: RefusalTrail,
    writer: AuditWriter,
    sessions: Arc<LiveSessions>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Held for the broker's life: one broker per data directory.
    _lock: std::fs::File,
}

/// Opens the workflow store, `<data_dir>/sallyport.db`.
pub fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    sallyport_ids::private::dir_all(&cfg.data_dir)
        .map_err(|e| anyhow!("creating {}: {e}", cfg.data_dir.display()))?;
    Ok(Arc::new(SqliteStore::open(
        &cfg.data_dir.join("sallyport.db"),
    )?))
}

/// The audit checkpoint settings, with the configured signing key.
pub fn checkpoints(cfg: &Config) -> Result<Checkpoints, ConfigError> {
    Ok(Checkpoints {
        signer: Arc::new(cfg.audit_signer()?),
        every_records: cfg.audit.checkpoint_every_records,
        every: cfg.audit.checkpoint_every,
        quiet: sallyport_audit::checkpoint::QUIET,
    })
}

/// Takes `<data_dir>/broker.lock`: a second broker on the same data directory would close the first
/// one's sessions and race its writes, so it refuses to start.
fn lock_data_dir(cfg: &Config) -> anyhow::Result<std::fs::File> {
    sallyport_ids::private::dir_all(&cfg.data_dir)
        .map_err(|e| anyhow!("creating {}: {e}", cfg.data_dir.display()))?;
    let path = cfg.data_dir.join("broker.lock");
    let file = sallyport_ids::private::file_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow!(
            "another broker is already running on {} (it holds {}); stop it, or give this one its own server.data_dir",
            cfg.data_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow!("locking {}: {e}", path.display())),
    }
}

/// The customers' webhooks; a delivery that gives up is logged, counted and recorded on the
/// customer's trail.
fn notifier(
    cfg: &Config,
    trail: AuditLog,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Notifier {
    Notifier::start(
        sallyport_workflow::reload::webhooks(cfg),
        &sallyport_certs::tls::default_client(),
        move |g: GiveUp| {
            tracing::warn!(customer = %g.customer, event = %g.event, delivery = %g.delivery_id, attempts = g.attempts, error = %g.error, "webhook delivery failed");
            if let Some(m) = metrics.customer(g.customer.as_str()) {
                m.webhook_failed();
            }
            let ev = sallyport_workflow::webhook_failed(g);
            let trail = trail.clone();
            tokio::spawn(async move {
                if let Err(e) = trail.append(ev).await {
                    tracing::error!(error = %e, "could not audit a failed webhook");
                }
            });
        },
        shutdown,
    )
}

impl Broker {
    /// Builds a broker from `cfg` (the file with the command line's `overrides` applied; a reload
    /// applies them again): keys, trail, store and every service, none started yet but SIEM
    /// forwarding. Must be called within the runtime that will run it.
    pub fn build(
        cfg: Config,
        overrides: Overrides,
        shutdown: CancellationToken,
    ) -> Result<Broker, Failure> {
        let server_tls = cfg.server_tls()?;
        let signer = cfg.grant_signer()?;
        let verifier =
            GrantVerifier::new(&cfg.grants.issuer, &cfg.grants.audience, cfg.grants.leeway)
                .trust(signer.public_key());
        // First: a second broker on this data directory must not touch its trail or store.
        let lock = lock_data_dir(&cfg)?;
        let checkpoints = checkpoints(&cfg)?;
        let audit_key = sallyport_audit::checkpoint::public_key_json(&checkpoints.signer);
        let chains: Vec<&str> = cfg.customers.iter().map(|c| c.id.as_str()).collect();
        let metrics = Metrics::new(cfg.customers.iter().map(|c| &c.id));
        let (trail, writer) = AuditLog::open_metered(
            &cfg.data_dir.join("audit"),
            &chains,
            Some(checkpoints),
            cfg.audit.retention_days,
            metrics.clone(),
        )
        .map_err(anyhow::Error::from)?;
        let store = open_store(&cfg)?;
        // Tunnels that were live when a previous broker stopped died with it.
        let orphans = store
            .close_orphaned_sessions(now_unix(), "broker stopped while the session was live")
            .map_err(anyhow::Error::from)?;
        if orphans > 0 {
            tracing::warn!(
                sessions = orphans,
                "closed sessions left open by a broker that stopped"
            );
        }
        let config = SharedConfig::new(cfg);
        let cfg = config.load();
        let clock = Clock::system();
        let db = Db::new(store.clone());
        let limits = &cfg.limits;
        let refusals = RefusalTrail::new(
            trail.clone(),
            RefusalLimits {
                per_interval: limits.refusals_recorded_per_interval,
                interval: limits.refusal_interval,
            },
            cfg.customers.iter().map(|c| c.id.clone()),
        );
        let cx = Context {
            db: db.clone(),
            trail: trail.clone(),
            notifier: notifier(&cfg, trail.clone(), metrics.clone(), shutdown.clone()),
            clock: clock.clone(),
            refusals: refusals.clone(),
            metrics: metrics.clone(),
        };
        let sessions = LiveSessions::start(store);
        let tunnels_of: Arc<dyn LiveTunnels> = sessions.clone();
        let gate = LockGate::new(Arc::new(LockView::new()), cx.clone());
        // A certificate given whole to `POST /v1/locks` must be one the broker CA issued.
        let ca_name = cfg.tls.ca.display().to_string();
        let ca_pem = std::fs::read_to_string(&cfg.tls.ca)
            .map_err(|e| anyhow!("reading the CA certificate {ca_name}: {e}"))?;
        let ca_verifier = sallyport_certs::tls::client_verifier(&ca_pem, &ca_name)
            .map_err(anyhow::Error::from)?;
        let locks = Locks::new(LocksParts {
            cx: cx.clone(),
            gate: gate.clone(),
            tunnels: tunnels_of.clone(),
            customers: cfg.customers.iter().map(|c| c.id.clone()).collect(),
            trust_domain: cfg.trust_domain.clone(),
            verifier: ca_verifier,
            crl: if cfg.tls.crl {
                Some(Arc::new(Crl::new(
                    crate::init::load_ca(&cfg)?,
                    cfg.data_dir.join("crl.pem"),
                )))
            } else {
                None
            },
        });
        let requests = Requests::new(
            cx.clone(),
            config.clone(),
            Arc::new(signer),
            Arc::new(CallLimiter::new(
                limits.request_filings_per_minute,
                limits.request_filing_burst,
            )),
            gate.clone(),
        );
        let tasks = TaskTracker::new();
        let siem = start_siem(&cfg, &trail, &metrics, &shutdown, &tasks);
        let reloader = Reloader::new(ReloaderParts {
            config: config.clone(),
            overrides,
            cx: cx.clone(),
            tunnels: tunnels_of.clone(),
            locks: locks.clone(),
            siem,
        });
        // Sign-in issues certificates for the keys of people signing in: it needs the CA key.
        let wants_signin =
            cfg.provider_oidc.is_some() || cfg.customers.iter().any(|c| c.oidc.is_some());
        let signin_ca = if wants_signin {
            match crate::init::load_ca(&cfg) {
                Ok(ca) => Some(ca),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "sign-in cannot issue certificates");
                    None
                }
            }
        } else {
            None
        };
        let signins = SignIns::new(cx.clone(), config.clone(), requests.clone(), signin_ca);
        let workflow = Workflow {
            signins: signins.clone(),
            requests: requests.clone(),
            grants: Grants::new(cx.clone(), tunnels_of.clone()),
            sessions: Sessions::new(cx.clone(), tunnels_of),
            locks: locks.clone(),
            refusals: Refusals::new(cx),
            reload: reloader.clone(),
        };
        let limiter = Arc::new(FailureLimiter::new(
            Budget {
                per_minute: limits.auth_failures_per_minute,
                burst: limits.auth_failure_burst,
            },
            Budget {
                per_minute: limits.unauthenticated_failures_per_minute,
                burst: limits.unauthenticated_failure_burst,
            },
        ));
        let tunnels = Tunnels::new(TunnelsParts {
            config: config.clone(),
            verifier,
            limiter: limiter.clone(),
            trail: trail.clone(),
            refusals: refusals.clone(),
            db,
            sessions: sessions.clone(),
            locks: gate,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            clock,
            metrics: metrics.clone(),
        });
        let listener = Listener::new(
            server_tls,
            cfg.trust_domain.clone(),
            cfg.limits.clone(),
            limiter,
            refusals.clone(),
            shutdown.clone(),
            tasks.clone(),
        )
        .with_metrics(metrics.clone());
        let api = Arc::new(Api {
            workflow,
            config: config.clone(),
            api_calls: CallLimiter::new(limits.api_calls_per_minute, limits.api_call_burst),
            audit_key,
            trail_health: trail.health().clone(),
            sessions: sessions.clone(),
            slots: listener.slots(),
            metrics: metrics.clone(),
        });
        Ok(Broker {
            signins,
            config,
            reloader,
            listener,
            tunnels,
            api,
            requests,
            locks,
            trail,
            refusals,
            writer,
            sessions,
            shutdown,
            tasks,
            _lock: lock,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load()
    }

    /// Reloads the configuration (`SIGHUP`, `POST /v1/reload`).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Loads the active locks, records the policy sets in force, and binds the configured listen
    /// address: once it is bound, the first connection already meets both.
    pub async fn bind(&self) -> Result<TcpListener, Failure> {
        let active = self
            .locks
            .load()
            .await
            .map_err(|e| Failure::Other(anyhow!("loading the active locks: {e}")))?;
        if active > 0 {
            tracing::info!(locks = active, "active locks loaded");
        }
        // The policy sets in force go on their customers' trails. A chain that cannot take the
        // record refuses every decision anyway (each is recorded, with the same digest, first).
        let config = self.config.load();
        sallyport_workflow::policies::record_loaded(self.requests.context(), &config).await;
        let addr = config.listen;
        TcpListener::bind(addr).await.map_err(|e| {
            Failure::Config(ConfigError {
                location: config.file.display().to_string(),
                field: "server.listen".into(),
                message: format!("cannot listen on {addr}: {e}"),
                fix: "stop whatever uses that port, or pick another with --listen or server.listen"
                    .into(),
            })
        })
    }

    /// Binds the admin listener (`admin.listen`), when there is one.
    pub async fn bind_admin(&self) -> Result<Option<TcpListener>, Failure> {
        let config = self.config.load();
        let Some(addr) = config.admin.listen else {
            return Ok(None);
        };
        TcpListener::bind(addr).await.map(Some).map_err(|e| {
            Failure::Config(ConfigError {
                location: config.file.display().to_string(),
                field: "admin.listen".into(),
                message: format!("cannot listen on {addr}: {e}"),
                fix: "stop whatever uses that port, or pick another with --admin-listen or admin.listen"
                    .into(),
            })
        })
    }

    /// Binds the sign-in listener (`web.listen`), when there is one, and tells sign-in where
    /// browsers reach it.
    pub async fn bind_web(&self) -> Result<Option<(TcpListener, TlsAcceptor)>, Failure> {
        let config = self.config.load();
        let Some(addr) = config.web.listen else {
            return Ok(None);
        };
        let read = |p: &std::path::Path, field: &str| {
            std::fs::read_to_string(p).map_err(|e| {
                Failure::Config(ConfigError {
                    location: config.file.display().to_string(),
                    field: field.into(),
                    message: format!("cannot read `{}`: {e}", p.display()),
                    fix: "point it at the PEM certificate (and key) the sign-in listener serves"
                        .into(),
                })
            })
        };
        let (cert, key) = (
            read(&config.web.cert, "web.cert")?,
            read(&config.web.key, "web.key")?,
        );
        let tls = sallyport_web::acceptor(
            (&cert, &config.web.cert.display().to_string()),
            (&key, &config.web.key.display().to_string()),
        )
        .map_err(|e| {
            Failure::Config(ConfigError {
                location: config.file.display().to_string(),
                field: "web.cert".into(),
                message: e.to_string(),
                fix: "give a PEM certificate and its key".into(),
            })
        })?;
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Failure::Config(ConfigError {
                location: config.file.display().to_string(),
                field: "web.listen".into(),
                message: format!("cannot listen on {addr}: {e}"),
                fix:
                    "stop whatever uses that port, or pick another with --web-listen or web.listen"
                        .into(),
            })
        })?;
        let bound = listener.local_addr().map_err(anyhow::Error::from)?;
        let base = config.web.public_url.clone().unwrap_or_else(|| {
            let host = if bound.ip().is_unspecified() {
                config
                    .public_address
                    .rsplit_once(':')
                    .map_or("localhost", |(h, _)| h)
                    .to_owned()
            } else if bound.is_ipv6() {
                format!("[{}]", bound.ip())
            } else {
                bound.ip().to_string()
            };
            format!("https://{host}:{}", bound.port())
        });
        self.signins.set_base_url(base);
        Ok(Some((listener, tls)))
    }

    /// Tells sign-in the mTLS address to write into identity folders: `server.public_address`,
    /// with the port the listener got when it was configured as 0.
    pub fn bound(&self, addr: std::net::SocketAddr) {
        let public = self.config.load().public_address.clone();
        let address = match public.rsplit_once(':') {
            Some((host, "0")) => format!("{host}:{}", addr.port()),
            _ => public,
        };
        self.signins.set_broker_address(address);
    }

    /// Serves sign-in on `listener` (from [`Broker::bind_web`]) until shutdown.
    pub fn serve_web(&self, listener: TcpListener, tls: TlsAcceptor) {
        let limits = &self.config.load().limits;
        let console = sallyport_web::console::Console {
            workflow: self.api.workflow.clone(),
            config: self.config.clone(),
            audit_key: self.api.audit_key.clone(),
            calls: CallLimiter::new(limits.api_calls_per_minute, limits.api_call_burst),
            sessions: sallyport_web::session::Sessions::default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            streams: sallyport_web::console::events::Streams::default(),
            heavy: sallyport_web::console::Heavy::default(),
        };
        let web = sallyport_web::Web {
            signins: self.signins.clone(),
            console: Some(Arc::new(console)),
        };
        self.tasks.spawn(sallyport_web::serve(
            listener,
            tls,
            web,
            self.shutdown.clone(),
            self.tasks.clone(),
        ));
    }

    /// Serves health, readiness and metrics on `listener` (from [`Broker::bind_admin`]) until
    /// shutdown, next to the broker.
    pub fn serve_admin(&self, listener: TcpListener) {
        self.tasks.spawn(sallyport_api::admin::serve(
            listener,
            self.api.clone(),
            self.shutdown.clone(),
            self.tasks.clone(),
        ));
    }

    /// Starts the background services and serves on `listener` until shutdown; then drains
    /// connections, writes the session rows still queued, and joins the audit writer.
    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        let Broker {
            signins,
            config,
            reloader,
            listener: server,
            tunnels,
            api,
            requests,
            locks,
            trail,
            refusals,
            writer,
            sessions,
            shutdown,
            tasks,
            _lock,
        } = self;
        tasks.spawn(requests.run_expiry(shutdown.clone()));
        tasks.spawn(locks.run_refresh(shutdown.clone()));
        tasks.spawn(refusals.clone().run(shutdown.clone()));
        tasks.spawn(sallyport_gateway::watch::watch_trail(
            trail.clone(),
            sessions.clone(),
            config.load().audit.on_failure,
            shutdown.clone(),
        ));
        let handler = move |conn: Arc<sallyport_gateway::Conn>,
                            req: hyper::Request<hyper::body::Incoming>| {
            let (tunnels, api) = (tunnels.clone(), api.clone());
            async move {
                if req.method() == Method::CONNECT {
                    tunnels.connect(conn, req).await
                } else {
                    api.route(&conn, req).await
                }
            }
        };
        server.run(listener, handler).await;
        // Nothing is refused any more: what was counted and not yet written goes on the trail.
        refusals.flush().await;
        drop(refusals);
        sessions.flush().await;
        // Every handle on the trail goes, so that the writer ends once it has written the rest.
        drop((sessions, trail, reloader, signins));
        tokio::task::spawn_blocking(move || writer.join()).await?;
        Ok(())
    }
}

/// Starts one SIEM forwarder per configured sink; `None` (logged) when they cannot start.
fn start_siem(
    config: &Config,
    trail: &AuditLog,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Option<Arc<sallyport_notify::siem::Forwarders>> {
    let audit: PathBuf = config.data_dir.join("audit");
    match sallyport_notify::siem::start(
        sallyport_workflow::reload::sinks(config, metrics),
        audit,
        config.data_dir.join("siem"),
        trail.health().clone(),
        shutdown.clone(),
        tasks,
    ) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start SIEM forwarding");
            None
        }
    }
}
