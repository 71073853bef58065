//! `sallyport grant`: the administrator's break-glass path. Mints a grant for a technician's
//! certificate directly, without an approval, and records that on the customer's audit trail before
//! the token is printed. If the record cannot be written, no token is printed.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use rustls_pki_types::UnixTime;
use sallyport_audit::{AuditEvent, AuditLog, EventKind, Outcome};
use sallyport_certs::grant::GrantSpec;
use sallyport_certs::identity::PeerIdentity;
use sallyport_config::Config;
use sallyport_ids::time::rfc3339;
use sallyport_ids::{GrantId, Role};
use sallyport_store::GrantRecord;

use crate::cli::Failure;

macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(Failure::Other(anyhow!($($arg)*)))
    };
}

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
    let name = req.technician_cert.display().to_string();
    let pem = std::fs::read_to_string(req.technician_cert)
        .with_context(|| format!("reading the technician certificate {name}"))?;
    let certs = sallyport_certs::tls::certs_from_pem(&pem, &name).map_err(anyhow::Error::from)?;
    let Some(leaf) = certs.first() else {
        fail!("{name}: no certificate");
    };
    // The certificate must be one this broker's CA issued and still valid.
    let ca_pem = std::fs::read_to_string(&cfg.tls.ca)
        .with_context(|| format!("reading the CA certificate {}", cfg.tls.ca.display()))?;
    let verifier =
        sallyport_certs::tls::client_verifier(&ca_pem, &cfg.tls.ca.display().to_string())
            .map_err(anyhow::Error::from)?;
    verifier
        .verify_client_cert(leaf, &certs[1..], UnixTime::now())
        .map_err(|e| anyhow!("{name}: not a valid certificate of this broker's CA: {e}"))?;
    let peer = PeerIdentity::from_der(leaf, &cfg.trust_domain).map_err(anyhow::Error::from)?;
    if peer.id.role() != Role::Technician {
        fail!("{name}: `{}` is not a technician", peer.id);
    }
    let signer = cfg.grant_signer()?;
    let now = SystemTime::now();
    // A grant never outlives the certificate it is bound to.
    let expires = (now + Duration::from_secs(u64::from(req.minutes) * 60)).min(peer.not_after);
    let gid = GrantId::mint();
    let spec = GrantSpec {
        sub: peer.id.clone(),
        customer: customer.id.clone(),
        target: target.id.clone(),
        port: target.port,
        gid: gid.clone(),
        not_before: now,
        expires_at: expires,
        cert_thumbprint: peer.thumbprint,
    };
    let (token, claims) = signer.mint(&spec).map_err(anyhow::Error::from)?;
    let (nbf, exp) = (
        i64::try_from(claims.nbf).unwrap_or(i64::MAX),
        i64::try_from(claims.exp).unwrap_or(i64::MAX),
    );
    let mut ev = AuditEvent::new(
        EventKind::GrantMinted,
        Outcome::Success,
        format!(
            "break-glass grant for {} minutes minted with `sallyport grant`, without approval",
            req.minutes
        ),
    );
    ev.customer = Some(customer.id.clone());
    ev.actor = Some(req.operator.clone());
    ev.target = Some(target.id.to_string());
    ev.subject = Some(claims.sub.clone());
    ev.grant_id = Some(gid);
    ev.expires_at = Some(rfc3339(exp));
    // Recorded in the store so that it can be revoked like any other grant.
    crate::assembly::open_store(cfg)?
        .record_grant(&GrantRecord {
            id: claims.gid.clone(),
            request_id: None,
            customer: customer.id.clone(),
            target: target.id.clone(),
            technician: claims.sub.clone(),
            not_before: nbf,
            expires_at: exp,
            revoked: None,
            // The token is printed only after its record is durable.
            audited: true,
        })
        .context("recording the grant")?;
    let (log, writer) = AuditLog::open(
        &cfg.data_dir.join("audit"),
        &[customer.id.as_str()],
        Some(crate::assembly::checkpoints(cfg)?),
    )
    .context("opening the audit trail")?;
    let appended = log.append_blocking(ev);
    drop(log);
    writer.join();
    appended.context("the grant could not be audited, so it was not issued")?;
    Ok(token)
}
