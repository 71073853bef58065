//! `sallyport init` and `sallyport certs issue`: a ready-to-run broker folder (config, PKI, grant
//! signing key, demo customer, demo identities), and identity folders for people, each certificate
//! registered in the store ([`register`]) so that locks can name its holder.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use sallyport_certs::grant::generate_signing_key_pem;
use sallyport_certs::identity_dir::{IdentityDir, write_file};
use sallyport_certs::pki::{CertificateAuthority, Validity};
use sallyport_ids::{GroupName, Principal, SpiffeId, TrustDomain};

use sallyport_config::Config;
use sallyport_store::IssuedCertificate;

/// Default trust domain of a new PKI.
pub const TRUST_DOMAIN: &str = "sallyport.local";
/// Demo identities written by `init`: (folder, principal description).
pub const DEMO_IDENTITIES: [&str; 3] = ["technician", "approver", "admin"];

/// What `init` writes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Target folder.
    pub dir: PathBuf,
    /// Names and addresses for the server certificate.
    pub hosts: Vec<String>,
    /// Overwrite an existing folder.
    pub force: bool,
}

fn config_text(port: u16) -> String {
    format!(
        r#"# Sallyport broker configuration, written by `sallyport init`.
# Paths are relative to this file. deploy/sallyport.toml in the source tree explains every key.

[server]
listen = "127.0.0.1:{port}"
data_dir = "data"
trust_domain = "{TRUST_DOMAIN}"
public_address = "localhost:{port}"

[tls]
ca = "pki/ca.pem"
ca_key = "pki/ca.key"
cert = "pki/server.pem"
key = "pki/server.key"

[grants]
signing_key = "pki/grant-signing.key"
issuer = "sallyport"
audience = "sallyport"
leeway_seconds = 30
max_minutes = 480

[audit]
signing_key = "pki/audit-signing.key"
checkpoint_every_records = 1000
checkpoint_every_seconds = 60

[limits]
handshake_timeout_seconds = 10
header_timeout_seconds = 10
idle_timeout_seconds = 900
connect_timeout_seconds = 5

# The demo customer. Its one target is a small web page that `sallyport serve` (run without
# --config) serves itself on 127.0.0.1:7070, so a first session works on a fresh machine.
[[customers]]
id = "acme"
policy = "policies/acme.cedar"
timezone = "Europe/Berlin"

[[customers.targets]]
id = "web"
address = "127.0.0.1:7070"
protocol = "http"
tags = ["demo"]
"#
    )
}

/// Issues a client identity folder.
pub fn issue_identity(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    groups: &[GroupName],
    hours: u64,
    out: &Path,
    broker: &str,
) -> anyhow::Result<IdentityDir> {
    let issued = ca
        .issue_client(
            id,
            groups,
            Validity::from_now(Duration::from_secs(hours * 3600)),
        )
        .with_context(|| format!("issuing a certificate for {id}"))?;
    Ok(IdentityDir::write(out, &issued, ca.cert_pem(), broker)?)
}

fn demo_principal(which: &str) -> anyhow::Result<(Principal, Vec<GroupName>)> {
    Ok(match which {
        "technician" => (
            Principal::Technician {
                provider: "northwind".parse()?,
                name: "alice".parse()?,
            },
            vec!["support".parse()?],
        ),
        "approver" => (
            Principal::Approver {
                customer: "acme".parse()?,
                name: "bob".parse()?,
            },
            vec![],
        ),
        _ => (
            Principal::Admin {
                name: "root".parse()?,
            },
            vec![],
        ),
    })
}

/// The register's entry for the certificate of identity folder `identity`.
pub fn issued_certificate(
    cfg: &Config,
    identity: &IdentityDir,
) -> anyhow::Result<IssuedCertificate> {
    let name = identity.dir.join("cert.pem").display().to_string();
    let certs = sallyport_certs::tls::certs_from_pem(&identity.cert_pem, &name)?;
    let der = certs
        .first()
        .ok_or_else(|| anyhow::anyhow!("{name}: no certificate"))?;
    let peer = sallyport_certs::identity::PeerIdentity::from_der(der, &cfg.trust_domain)?;
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    Ok(IssuedCertificate {
        serial: sallyport_certs::identity::certificate_serial(der)?,
        sha256: peer.fingerprint(),
        holder: peer.id,
        issued_at: unix(SystemTime::now()),
        not_after: unix(peer.not_after),
    })
}

/// Registers the certificate of `identity` in the broker's store (idempotent): a lock by serial and
/// fingerprint then names its holder, and `certs issue --replace` finds it.
pub fn register(cfg: &Config, identity: &IdentityDir) -> anyhow::Result<IssuedCertificate> {
    let issued = issued_certificate(cfg, identity)?;
    let store = crate::assembly::open_store(cfg)?;
    sallyport_workflow::locks::offline::register_issued(store.as_ref(), &issued)
        .context("registering the certificate")?;
    Ok(issued)
}

fn write_demo_identities(
    dir: &Path,
    ca: &CertificateAuthority,
    td: &TrustDomain,
    broker: &str,
) -> anyhow::Result<Vec<IdentityDir>> {
    let mut out = Vec::new();
    for which in DEMO_IDENTITIES {
        let (principal, groups) = demo_principal(which)?;
        let id = SpiffeId::new(td.clone(), principal);
        out.push(issue_identity(
            ca,
            &id,
            &groups,
            12,
            &dir.join("identities").join(which),
            broker,
        )?);
    }
    Ok(out)
}

/// Registers the demo identities' certificates.
fn register_all(cfg: &Config, written: &[IdentityDir]) -> anyhow::Result<()> {
    for identity in written {
        register(cfg, identity)?;
    }
    Ok(())
}

/// Writes a ready-to-run broker folder.
pub fn init(opts: &InitOptions) -> anyhow::Result<()> {
    let dir = &opts.dir;
    let cfg_path = dir.join("sallyport.toml");
    if !opts.force && (cfg_path.exists() || dir.join("pki").exists()) {
        bail!(
            "{} already holds a Sallyport setup; refusing to overwrite it (pass --force to replace its config, PKI and demo identities)",
            dir.display()
        );
    }
    let td: TrustDomain = TRUST_DOMAIN.parse()?;
    for sub in ["pki", "policies", "identities"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let ca = CertificateAuthority::generate(&td)?;
    let pki = dir.join("pki");
    write_file(&pki.join("ca.pem"), ca.cert_pem(), 0o644)?;
    write_file(&pki.join("ca.key"), &ca.key_pem(), 0o600)?;
    let server = ca.issue_server(
        &opts.hosts,
        Validity::from_now(Duration::from_secs(365 * 24 * 3600)),
    )?;
    write_file(&pki.join("server.pem"), &server.cert_pem, 0o644)?;
    write_file(&pki.join("server.key"), &server.key_pem, 0o600)?;
    write_file(
        &pki.join("grant-signing.key"),
        &generate_signing_key_pem()?,
        0o600,
    )?;
    write_file(
        &pki.join("audit-signing.key"),
        &generate_signing_key_pem()?,
        0o600,
    )?;
    write_file(
        &dir.join("policies").join("acme.cedar"),
        sallyport_policy::DEMO_POLICY,
        0o644,
    )?;
    write_file(&cfg_path, &config_text(8443), 0o644)?;
    let written = write_demo_identities(dir, &ca, &td, "localhost:8443")?;
    let cfg = Config::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    register_all(&cfg, &written)
}

/// Creates the audit signing key if a setup made before checkpoints existed has none; returns whether
/// it did. Only for the embedded demo setup: a real deployment's missing key is a configuration error.
pub fn ensure_audit_key(cfg: &Config) -> anyhow::Result<bool> {
    if cfg.audit.signing_key.exists() {
        return Ok(false);
    }
    write_file(&cfg.audit.signing_key, &generate_signing_key_pem()?, 0o600)?;
    Ok(true)
}

/// Loads the broker CA named by a config (its key is needed to issue).
pub fn load_ca(cfg: &Config) -> anyhow::Result<CertificateAuthority> {
    let cert = std::fs::read_to_string(&cfg.tls.ca)
        .with_context(|| format!("reading the CA certificate {}", cfg.tls.ca.display()))?;
    let key = std::fs::read_to_string(&cfg.tls.ca_key).with_context(|| {
        format!(
            "reading the CA key {} (issuing needs the CA key; run this where `tls.ca_key` is available)",
            cfg.tls.ca_key.display()
        )
    })?;
    Ok(CertificateAuthority::from_pem(
        &cert,
        &key,
        &cfg.tls.ca_key.display().to_string(),
    )?)
}

/// Re-issues the demo identities of an `init` folder when the technician's expires within an hour.
pub fn renew_demo_identities(dir: &Path, cfg: &Config) -> anyhow::Result<bool> {
    let cert = dir.join("identities/technician/cert.pem");
    let fresh = std::fs::read_to_string(&cert)
        .ok()
        .and_then(|pem| sallyport_certs::tls::certs_from_pem(&pem, "").ok())
        .and_then(|certs| {
            certs.first().and_then(|der| {
                sallyport_certs::identity::PeerIdentity::from_der(der, &cfg.trust_domain).ok()
            })
        })
        .is_some_and(|p| p.not_after > SystemTime::now() + Duration::from_secs(3600));
    if fresh {
        return Ok(false);
    }
    let ca = load_ca(cfg)?;
    let written = write_demo_identities(dir, &ca, &cfg.trust_domain, &cfg.public_address)?;
    register_all(cfg, &written)?;
    Ok(true)
}
