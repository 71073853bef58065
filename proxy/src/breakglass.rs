//! `sallyport grant`: the administrator's break-glass path, as a command. It checks the technician's
//! certificate (and the admin identity, when given) against the broker's CA, then hands the minting
//! to the workflow (`sallyport_workflow::breakglass`: on the customer's trail, stored as break-glass,
//! announced to the customer's webhook). The command waits until the webhook has the news, or gave
//! up on it (that is recorded too), before it hands out the token. No record, no token.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use rustls_pki_types::UnixTime;
use sallyport_audit::{AuditLog, Operator};
use sallyport_certs::identity::PeerIdentity;
use sallyport_config::Config;
use sallyport_ids::Role;
use sallyport_ids::time::Clock;
use sallyport_notify::{GiveUp, Notifier};
use sallyport_workflow::breakglass::{Ask, Minted};
use sallyport_workflow::{Db, terms};
use tokio_util::sync::CancellationToken;

use crate::cli::Failure;

macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(Failure::Other(anyhow!($($arg)*)))
    };
}

/// What to mint, as asked on the command line.
#[derive(Debug, Clone)]
pub struct BreakGlass<'a> {
    /// The technician's certificate (PEM file).
    pub technician_cert: &'a Path,
    /// Customer id.
    pub customer: &'a str,
    /// Target id.
    pub target: &'a str,
    /// Grant length.
    pub minutes: u32,
    /// Why (required; the customer is told).
    pub reason: &'a str,
    /// The incident or change ticket.
    pub ticket: Option<&'a str>,
    /// The administrator's identity folder, if given.
    pub identity: Option<&'a Path>,
}

/// Checks a certificate file's first certificate against the broker's CA; returns its identity.
fn checked_peer(cfg: &Config, file: &Path, pem: &str) -> Result<PeerIdentity, Failure> {
    let name = file.display().to_string();
    let certs = sallyport_certs::tls::certs_from_pem(pem, &name).map_err(anyhow::Error::from)?;
    let Some(leaf) = certs.first() else {
        fail!("{name}: no certificate");
    };
    let ca_pem = std::fs::read_to_string(&cfg.tls.ca)
        .with_context(|| format!("reading the CA certificate {}", cfg.tls.ca.display()))?;
    let verifier =
        sallyport_certs::tls::client_verifier(&ca_pem, &cfg.tls.ca.display().to_string())
            .map_err(anyhow::Error::from)?;
    verifier
        .verify_client_cert(leaf, &certs[1..], UnixTime::now())
        .map_err(|e| anyhow!("{name}: not a valid certificate of this broker's CA: {e}"))?;
    Ok(PeerIdentity::from_der(leaf, &cfg.trust_domain).map_err(anyhow::Error::from)?)
}

/// This machine's host name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Mints a break-glass grant; returns the token once its record is durable and the customer's
/// webhook has been told (or has given up, which is recorded and reported on stderr).
pub fn mint(cfg: &Config, req: &BreakGlass<'_>) -> Result<String, Failure> {
    let customer = cfg.customer(req.customer).ok_or_else(|| {
        anyhow!(
            "unknown customer `{}` in {}; configured: {}",
            req.customer,
            cfg.file.display(),
            cfg.customers
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let target = customer.target(req.target).ok_or_else(|| {
        anyhow!(
            "customer `{}` has no target `{}`; configured: {}",
            customer.id,
            req.target,
            customer
                .targets
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if req.minutes == 0 || req.minutes > cfg.grants.max_minutes {
        fail!(
            "--minutes {} is out of range: use 1 to {} (grants.max_minutes in {})",
            req.minutes,
            cfg.grants.max_minutes,
            cfg.file.display()
        );
    }
    let reason = terms::break_glass_reason(req.reason).map_err(|e| anyhow!("--reason: {e}"))?;
    let ticket = terms::ticket(req.ticket).map_err(|e| anyhow!("--ticket: {e}"))?;
    let name = req.technician_cert.display().to_string();
    let pem = std::fs::read_to_string(req.technician_cert)
        .with_context(|| format!("reading the technician certificate {name}"))?;
    let peer = checked_peer(cfg, req.technician_cert, &pem)?;
    if peer.id.role() != Role::Technician {
        fail!("{name}: `{}` is not a technician", peer.id);
    }
    let identity = match req.identity {
        None => None,
        Some(dir) => {
            let id = sallyport_certs::identity_dir::IdentityDir::read(dir)
                .map_err(|e| anyhow!("--identity {}: {e}", dir.display()))?;
            let admin = checked_peer(cfg, &dir.join("cert.pem"), &id.cert_pem)?;
            if admin.id.role() != Role::Admin {
                fail!(
                    "--identity {}: `{}` is not an admin identity; break-glass is for the provider's administrators",
                    dir.display(),
                    admin.id
                );
            }
            Some(admin.id)
        }
    };
    let operator = Operator {
        user: crate::cli::operator(),
        host: host_name(),
        identity,
    };
    let signer = cfg.grant_signer()?;
    let store = crate::assembly::open_store(cfg)?;
    let (trail, writer) = AuditLog::open(
        &cfg.data_dir.join("audit"),
        &[customer.id.as_str()],
        Some(crate::assembly::checkpoints(cfg)?),
    )
    .context("opening the audit trail")?;
    let webhook = customer.webhook.clone();
    let given_up: Arc<Mutex<Vec<GiveUp>>> = Arc::default();
    let rt = crate::cli::runtime()?;
    let minted = rt.block_on(async {
        let notifier = Notifier::start(
            webhook
                .iter()
                .map(|w| (customer.id.clone(), w.clone()))
                .collect(),
            &sallyport_certs::tls::default_client(),
            {
                let given_up = given_up.clone();
                move |g| given_up.lock().unwrap_or_else(|p| p.into_inner()).push(g)
            },
            CancellationToken::new(),
        );
        let cx = sallyport_workflow::Context {
            db: Db::new(store),
            // Break-glass refuses nothing on the trail; the recorder is there for the type.
            refusals: sallyport_workflow::RefusalTrail::new(
                trail.clone(),
                sallyport_workflow::refusals::RefusalLimits {
                    per_interval: cfg.limits.refusals_recorded_per_interval,
                    interval: cfg.limits.refusal_interval,
                },
                [customer.id.clone()],
            ),
            trail: trail.clone(),
            notifier: notifier.clone(),
            clock: Clock::system(),
            metrics: sallyport_metrics::Metrics::default(),
        };
        let ask = Ask {
            customer,
            target,
            technician: &peer,
            minutes: req.minutes,
            reason,
            ticket,
            operator,
        };
        let minted = sallyport_workflow::breakglass::mint(&cx, &signer, ask).await;
        drop(cx);
        if minted.is_ok()
            && let Some(w) = &webhook
        {
            eprintln!(
                "announcing the break-glass grant to {}'s webhook ({})...",
                customer.id,
                sallyport_config::sinks::Origin::of(&w.url)
            );
        }
        notifier.drain().await;
        let given_up = std::mem::take(&mut *given_up.lock().unwrap_or_else(|p| p.into_inner()));
        for g in given_up {
            eprintln!(
                "warning: {}'s webhook was not told ({} attempt(s): {}); the grant is on its audit trail, which its SIEM receives",
                g.customer, g.attempts, g.error
            );
            if let Err(e) = trail.append(sallyport_workflow::webhook_failed(g)).await {
                eprintln!("warning: could not record the failed webhook: {e}");
            }
        }
        if minted.is_ok() && webhook.is_some() {
            eprintln!("done; the customer's webhook answered");
        }
        minted
    });
    drop(trail);
    writer.join();
    let Minted { token, grant } = minted.map_err(|e| match e {
        sallyport_workflow::WorkflowError::AuditUnavailable => {
            anyhow!("the grant could not be audited, so it was not issued")
        }
        sallyport_workflow::WorkflowError::StoreUnavailable(detail) => {
            anyhow!("recording the grant: {detail}")
        }
        other => anyhow!(other),
    })?;
    eprintln!(
        "break-glass grant {} for {} on {}/{} until {}",
        grant.id,
        peer.id,
        customer.id,
        target.id,
        sallyport_ids::time::rfc3339(grant.expires_at)
    );
    Ok(token)
}
