//! `sallyport serve`: the broker's runtime (threads as configured), signal handling, and on the
//! embedded defaults the demo: a set-up in ./sallyport-data made on first run, the demo target (on
//! `--demo-port`, default 7070), and a printed session that works as written. Building and running the broker is the assembly's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use sallyport_config::Config;
use tokio_util::sync::CancellationToken;

use super::Failure;
use sallyport_workflow::reload::{Overrides, Reloader};

use crate::assembly::Broker;

/// `sallyport serve`: the broker on `config`, or on the embedded demo set-up in ./sallyport-data.
pub fn serve(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    worker_threads: Option<usize>,
    demo_port: Option<u16>,
    admin_listen: Option<SocketAddr>,
    web_listen: Option<SocketAddr>,
) -> Result<(), Failure> {
    let embedded = config.is_none();
    if demo_port == Some(0) {
        return Err(Failure::Other(anyhow!(
            "--demo-port 0: give the port the demo target listens on, 1 to 65535 (a technician names it when connecting)"
        )));
    }
    let config = match config {
        Some(c) => c,
        None => {
            let dir = PathBuf::from("sallyport-data");
            if !dir.join("sallyport.toml").exists() {
                crate::init::init(&crate::init::InitOptions {
                    dir: dir.clone(),
                    hosts: vec!["localhost".into(), "127.0.0.1".into()],
                    force: false,
                    mode: crate::init::InitMode::Demo,
                    group: None,
                })?;
                println!("created ./sallyport-data (config, PKI, demo customer and identities)");
            }
            dir.join("sallyport.toml")
        }
    };
    if let Some(n) = worker_threads
        && n > 1024
    {
        return Err(Failure::Other(anyhow!(
            "--worker-threads {n}: use 0 (one thread per core) to 1024"
        )));
    }
    // The command line's overrides, applied to the file now and again at each reload.
    let overrides: Overrides = Arc::new(move |cfg: &mut Config| {
        if let Some(l) = listen {
            cfg.listen = l;
        }
        if let Some(a) = admin_listen {
            cfg.admin.listen = Some(a);
        }
        if let Some(w) = web_listen {
            cfg.web.listen = Some(w);
        } else if let (Some(l), Some(w)) = (listen, cfg.web.listen.as_mut())
            && l.port() == 0
        {
            // A broker put on a free port (`--listen HOST:0`) puts its sign-in listener on one too,
            // so throwaway brokers never contend for the configured sign-in port.
            w.set_port(0);
        }
        if let Some(n) = worker_threads {
            cfg.worker_threads = n;
        }
        // The demo target of the embedded defaults moves to --demo-port (its port is the one a
        // technician names, so both change together).
        if embedded && let Some(port) = demo_port {
            crate::demo::move_to(cfg, port);
        }
    });
    let mut cfg = Config::load(&config)?;
    overrides(&mut cfg);
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
        // Taken before anything is built: from here on a SIGHUP reloads, never ends the broker.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let broker = Broker::build(cfg, overrides, shutdown.clone())?;
        let listener = broker.bind().await?;
        reload_on_hangup(hangups, broker.reloader(), shutdown);
        let addr = listener.local_addr()?;
        broker.bound(addr);
        let cfg = broker.config();
        // The admin line comes first: whoever waits for `listening on` has both addresses then.
        if let Some(admin) = broker.bind_admin().await? {
            let at = admin.local_addr()?;
            broker.serve_admin(admin);
            println!("sallyport: admin listening on {at}");
            tracing::info!(listen = %at, "admin listener started (health, readiness, metrics)");
        }
        if let Some((web, tls)) = broker.bind_web().await? {
            let at = web.local_addr()?;
            broker.serve_web(web, tls);
            println!("sallyport: sign-in listening on {at}");
            tracing::info!(listen = %at, "sign-in listener started");
        }
        println!("sallyport: listening on {addr}");
        tracing::info!(listen = %addr, config = %cfg.file.display(), "broker started");
        if embedded {
            if let Some(t) = demo_target {
                match crate::demo::serve(t).await {
                    Ok(a) => println!("demo target acme/web served on {a}"),
                    Err(e) => {
                        println!(
                            "warning: the demo target acme/web cannot listen on {t} ({e}): something else already uses port {}, so the demo session below reaches that program, not the demo page.",
                            t.port()
                        );
                        println!(
                            "  To use another port: stop this broker and run `sallyport serve --demo-port N` with a free port N."
                        );
                    }
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

/// `SIGHUP` reloads the configuration and policies (what `systemctl reload` sends). The outcome is
/// logged and on the trail; a refused file leaves the configuration in force serving.
/// Ends at shutdown, letting go of the reloader (and the audit trail it writes to) so the broker
/// can finish writing the trail.
fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    reloader: Reloader,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading the configuration");
            match reloader.reload("SIGHUP").await {
                Ok(done) => println!(
                    "sallyport: reloaded: {} customer(s) added, {} changed, {} removed; {} tunnel(s) closed (policy changed)",
                    done.change.added.len(),
                    done.change.changed.len(),
                    done.change.removed.len(),
                    done.closed.len()
                ),
                Err(e) => eprintln!(
                    "sallyport: reload refused, the configuration in force keeps serving: {e}"
                ),
            }
        }
    });
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
