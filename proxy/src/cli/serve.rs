//! `sallyport serve`: the broker's runtime (threads as configured), signal handling, and on the
//! embedded defaults the demo: a set-up in ./sallyport-data made on first run, the demo target, and a
//! printed session that works as written. Building and running the broker is the assembly's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use sallyport_config::Config;
use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::assembly::Broker;

/// `sallyport serve`: the broker on `config`, or on the embedded demo set-up in ./sallyport-data.
pub fn serve(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    worker_threads: Option<usize>,
    admin_listen: Option<SocketAddr>,
) -> Result<(), Failure> {
    let embedded = config.is_none();
    let config = match config {
        Some(c) => c,
        None => {
            let dir = PathBuf::from("sallyport-data");
            if !dir.join("sallyport.toml").exists() {
                crate::init::init(&crate::init::InitOptions {
                    dir: dir.clone(),
                    hosts: vec!["localhost".into(), "127.0.0.1".into()],
                    force: false,
                })?;
                println!("created ./sallyport-data (config, PKI, demo customer and identities)");
            }
            dir.join("sallyport.toml")
        }
    };
    let mut cfg = Config::load(&config)?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(a) = admin_listen {
        cfg.admin.listen = Some(a);
    }
    if let Some(n) = worker_threads {
        if n > 1024 {
            return Err(Failure::Other(anyhow!(
                "--worker-threads {n}: use 0 (one thread per core) to 1024"
            )));
        }
        cfg.worker_threads = n;
    }
    #[cfg(feature = "bench-insecure")]
    sallyport_gateway::bench_insecure::enable_from_env().map_err(anyhow::Error::from)?;
    if embedded && crate::init::renew_demo_identities(Path::new("sallyport-data"), &cfg)? {
        println!("renewed the demo identities (their certificates had expired or were about to)");
    }
    if embedded && crate::init::ensure_audit_key(&cfg)? {
        println!(
            "created the audit signing key {}",
            rel(&cfg.audit.signing_key)
        );
    }
    let rt = serve_runtime(cfg.worker_threads)?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        shutdown_on_signals(shutdown.clone())?;
        let demo_target = cfg
            .customer("acme")
            .and_then(|c| c.target("web"))
            .and_then(|t| t.address.parse::<SocketAddr>().ok());
        let broker = Broker::build(cfg, shutdown)?;
        let listener = broker.bind().await?;
        let addr = listener.local_addr()?;
        let cfg = broker.config().clone();
        // The admin line comes first: whoever waits for `listening on` has both addresses then.
        if let Some(admin) = broker.bind_admin().await? {
            let at = admin.local_addr()?;
            broker.serve_admin(admin);
            println!("sallyport: admin listening on {at}");
            tracing::info!(listen = %at, "admin listener started (health, readiness, metrics)");
        }
        println!("sallyport: listening on {addr}");
        tracing::info!(listen = %addr, config = %cfg.file.display(), "broker started");
        if embedded {
            if let Some(t) = demo_target {
                match crate::demo::serve(t).await {
                    Ok(a) => println!("demo target acme/web served on {a}"),
                    Err(e) => println!("note: could not serve the demo target on {t}: {e}"),
                }
            }
            print_demo(addr, &cfg);
        }
        broker.run(listener).await?;
        tracing::info!("broker stopped");
        Ok::<_, Failure>(())
    })
}

/// The broker's runtime: one thread per core (0), everything on the calling thread (1), or N workers.
fn serve_runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        0 => tokio::runtime::Builder::new_multi_thread(),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn shutdown_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Past a file-size limit (RLIMIT_FSIZE) a write must fail as an I/O error, which the audit
    // writer handles (fail closed, then resume), instead of SIGXFSZ killing the broker.
    let mut xfsz = signal(SignalKind::from_raw(libc::SIGXFSZ))?;
    tokio::spawn(async move { while xfsz.recv().await.is_some() {} });
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

fn rel(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(&cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

fn print_demo(addr: SocketAddr, cfg: &Config) {
    let exe = std::env::current_exe()
        .map(|p| rel(&p))
        .unwrap_or_else(|_| "sallyport".into());
    let id = |w: &str| format!("sallyport-data/identities/{w}");
    let broker_flag = if addr.port() == 8443 {
        String::new()
    } else {
        format!(" --broker localhost:{}", addr.port())
    };
    println!();
    println!("Demo identities (certificates valid 12 h, renewed by `serve` when expired):");
    println!(
        "  technician  {}  (alice of provider northwind, group support)",
        id("technician")
    );
    println!(
        "  approver    {}  (bob, approver for customer acme)",
        id("approver")
    );
    println!("  admin       {}  (root, provider admin)", id("admin"));
    println!();
    println!("Try the access workflow from another terminal, in this folder (a POSIX shell):");
    println!("  T={} A={}", id("technician"), id("approver"));
    println!(
        "  ID=$({exe} request acme/web --minutes 30 --reason \"check the web server\" --identity $T{broker_flag})"
    );
    println!("  {exe} requests --identity $A{broker_flag}");
    println!("  {exe} approve \"$ID\" --comment \"go ahead\" --identity $A{broker_flag}");
    println!("  {exe} connect acme/web --listen 127.0.0.1:7001 --identity $T{broker_flag} &");
    println!("  curl http://127.0.0.1:7001/");
    println!("  {exe} sessions --identity $A{broker_flag}");
    println!(
        "  {exe} revoke GRANT_ID --reason \"done\" --identity $A{broker_flag}    # GRANT_ID as printed by approve"
    );
    println!();
    println!("Break-glass, without approval (on acme's trail and told to its webhook at once):");
    println!(
        "  {exe} grant --config sallyport-data/sallyport.toml --technician-cert $T/cert.pem --customer acme --target web --minutes 30 --reason \"outage\" --out grant.jwt"
    );
    println!();
    println!(
        "Every request, decision and tunnel is on the audit trail, in daily segments under {}/",
        rel(&cfg.data_dir.join("audit").join("acme"))
    );
}
