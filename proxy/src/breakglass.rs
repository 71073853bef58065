//! `sallyport grant`: the administrator's break-glass path. Mints a grant for a technician's
//! certificate directly, without an approval, and records that on the customer's audit trail before
//! the token is printed. If the record cannot be written, no token is printed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::UnixTime;
use sallyport_certs::grant::GrantSpec;
use sallyport_certs::identity::PeerIdentity;
use sallyport_ids::Role;

use crate::audit::{AuditEvent, AuditLog, EventKind, Outcome};
use crate::config::Config;

/// What to mint.
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
    /// Who is minting (recorded as the actor).
    pub operator: String,
}

/// Mints a grant and returns the token after its audit record is durable.
pub fn mint(cfg: &Config, req: &BreakGlass<'_>) -> anyhow::Result<String> {
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
        bail!(
            "--minutes {} is out of range: use 1 to {} (grants.max_minutes in {})",
            req.minutes,
            cfg.grants.max_minutes,
            cfg.file.display()
        );
    }
    let name = req.technician_cert.display().to_string();
    let pem = std::fs::read_to_string(req.technician_cert)
        .with_context(|| format!("reading the technician certificate {name}"))?;
    let certs = sallyport_certs::tls::certs_from_pem(&pem, &name)?;
    let Some(leaf) = certs.first() else {
        bail!("{name}: no certificate");
    };
    // The certificate must be one this broker's CA issued and still valid.
    let ca_pem = std::fs::read_to_string(&cfg.tls.ca)
        .with_context(|| format!("reading the CA certificate {}", cfg.tls.ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in sallyport_certs::tls::certs_from_pem(&ca_pem, &cfg.tls.ca.display().to_string())? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    verifier
        .verify_client_cert(leaf, &certs[1..], UnixTime::now())
        .map_err(|e| anyhow!("{name}: not a valid certificate of this broker's CA: {e}"))?;
    let peer = PeerIdentity::from_der(leaf, &cfg.trust_domain)?;
    if peer.id.role() != Role::Technician {
        bail!("{name}: `{}` is not a technician", peer.id);
    }
    let signer = crate::broker::load_signer(cfg)?;
    let now = SystemTime::now();
    // A grant never outlives the certificate it is bound to.
    let expires = (now + Duration::from_secs(u64::from(req.minutes) * 60)).min(peer.not_after);
    let gid = format!("g-{}", uuid::Uuid::new_v4().simple());
    let spec = GrantSpec {
        sub: peer.id.clone(),
        customer: customer.id.clone(),
        target: target.id.clone(),
        port: target.port,
        gid: gid.parse()?,
        not_before: now,
        expires_at: expires,
        cert_thumbprint: peer.thumbprint,
    };
    let (token, claims) = signer.mint(&spec)?;
    let mut ev = AuditEvent::new(
        EventKind::GrantMinted,
        Outcome::Success,
        format!(
            "break-glass grant for {} minutes minted with `sallyport grant`, without approval",
            req.minutes
        ),
    );
    ev.customer = Some(customer.id.to_string());
    ev.actor = Some(req.operator.clone());
    ev.target = Some(target.id.to_string());
    ev.subject = Some(claims.sub.to_string());
    ev.grant_id = Some(gid);
    ev.expires_at = jiff::Timestamp::from_second(claims.exp as i64)
        .ok()
        .map(|t| t.to_string());
    // Recorded in the store so that it can be revoked like any other grant.
    crate::broker::open_store(cfg)?
        .record_grant(&crate::store::GrantRecord {
            id: claims.gid.to_string(),
            request_id: None,
            customer: customer.id.to_string(),
            target: target.id.to_string(),
            technician: claims.sub.to_string(),
            not_before: claims.nbf as i64,
            expires_at: claims.exp as i64,
            revoked: None,
            // The token is printed only after its record is durable.
            audited: true,
        })
        .context("recording the grant")?;
    let (log, writer) = AuditLog::open(
        &cfg.data_dir.join("audit"),
        &[customer.id.as_str()],
        Some(crate::broker::load_checkpoints(cfg)?),
    )
    .context("opening the audit trail")?;
    let appended = log.append_blocking(ev);
    drop(log);
    writer.join();
    appended.context("the grant could not be audited, so it was not issued")?;
    Ok(token)
}
