//! `sallyport init` and `sallyport certs issue`: a broker folder (config, PKI, grant and audit
//! signing keys), either the ready-to-run demo (loopback, demo customer, demo identities) or, with
//! `--host`, a real broker's (all interfaces, the host as public address, an absolute state
//! directory, no customer, no identity), its files optionally readable by the service's group; and
//! identity folders for people, each certificate registered in the store ([`register`]) so that
//! locks can name its holder. [`hand_back`] keeps the state directory owned by the service user when
//! root runs these commands.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
/// The port `init` configures.
pub const PORT: u16 = 8443;
/// A real broker's state directory unless `--data-dir` says otherwise: the systemd unit's
/// `StateDirectory=sallyport` and the container image's volume.
pub const STATE_DIR: &str = "/var/lib/sallyport";

/// Which broker folder `init` writes.
#[derive(Debug, Clone)]
pub enum InitMode {
    /// The demo: listens on 127.0.0.1, data in `data/` next to the config, the demo customer `acme`
    /// and the demo identities.
    Demo,
    /// A real broker: listens on all interfaces, the first host is the public address, state in an
    /// absolute directory, and no customer or identity (the configuration is valid without them).
    Production {
        /// The state directory (`server.data_dir`).
        data_dir: PathBuf,
    },
}

/// The group that may read the broker's configuration and keys (the service user's group).
#[derive(Debug, Clone)]
pub struct ServiceGroup {
    /// As given: a name or a numeric id.
    pub name: String,
    /// Its numeric id.
    pub gid: u32,
}

impl ServiceGroup {
    /// A group by name (looked up in /etc/group) or by numeric id.
    pub fn resolve(name: &str) -> anyhow::Result<ServiceGroup> {
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(ServiceGroup {
                name: name.into(),
                gid,
            });
        }
        let groups = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
        match gid_in(&groups, name) {
            Some(gid) => Ok(ServiceGroup {
                name: name.into(),
                gid,
            }),
            None => bail!(
                "--group {name}: no such group in /etc/group (create the service user first: `systemd-sysusers` with deploy/sysusers.d/sallyport.conf, or `useradd --system --user-group {name}`)"
            ),
        }
    }
}

/// The id of group `name` in the text of an /etc/group file.
fn gid_in(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1).and_then(|g| g.trim().parse().ok()))
            .flatten()
    })
}

/// What `init` writes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Target folder.
    pub dir: PathBuf,
    /// Names and addresses for the server certificate; in production the first is the public
    /// address.
    pub hosts: Vec<String>,
    /// Overwrite an existing folder.
    pub force: bool,
    /// Demo or a real broker.
    pub mode: InitMode,
    /// Make the folder, the config, policies and the broker's own keys readable by this group
    /// (folders 0750, files 0640); the CA key stays 0600.
    pub group: Option<ServiceGroup>,
}

/// Who may read a file `init` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone (certificates).
    Public,
    /// The service group when there is one, else anyone (the config, policies).
    Readable,
    /// The broker: the service group when there is one, else the owner only.
    Broker,
    /// Only the owner (the CA key: only issuing needs it).
    Owner,
}

/// Writes `init`'s files with the modes and group they need.
struct Writer<'a> {
    group: Option<&'a ServiceGroup>,
}

impl Writer<'_> {
    fn file(&self, path: &Path, text: &str, access: Access) -> anyhow::Result<()> {
        let mode = match (access, self.group) {
            (Access::Public, _) | (Access::Readable, None) => 0o644,
            (Access::Readable, Some(_)) => 0o640,
            (Access::Broker, Some(_)) => 0o640,
            (Access::Broker, None) | (Access::Owner, _) => 0o600,
        };
        write_file(path, text, mode)?;
        if let (Some(g), false) = (self.group, access == Access::Owner) {
            chgrp(path, g)?;
        }
        Ok(())
    }

    fn dir(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        if let Some(g) = self.group {
            chgrp(path, g)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o750))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
        Ok(())
    }
}

fn chgrp(path: &Path, g: &ServiceGroup) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, None, Some(g.gid)).with_context(|| {
        format!(
            "giving {} to group {} (changing a file's group to one you are not in needs root)",
            path.display(),
            g.name
        )
    })
}

/// `host:port` for a host name or address (IPv6 in brackets).
fn host_port(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A `--host` must be a DNS name or an IP address.
fn check_host(host: &str) -> anyhow::Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if !ok {
        bail!(
            "--host `{host}`: not a DNS name or an IP address (e.g. broker.msp.example or 10.0.0.10)"
        );
    }
    Ok(())
}

const COMMON_TABLES: &str = r#"[tls]
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
"#;

fn config_text(port: u16) -> String {
    let web = port.saturating_add(1);
    format!(
        r#"# Sallyport broker configuration, written by `sallyport init`.
# Paths are relative to this file. `sallyport config example` prints every key with its meaning.

[server]
listen = "127.0.0.1:{port}"
data_dir = "data"
trust_domain = "{TRUST_DOMAIN}"
public_address = "localhost:{port}"

[web]
# Sign-in at identity providers (`sallyport login`), HTTPS without a client certificate, next to
# the broker's port. It does nothing until an identity provider is configured: README "Sign-in
# with your identity provider" shows how to try it with a local one.
listen = "127.0.0.1:{web}"

{COMMON_TABLES}
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

/// A real broker's configuration: all interfaces, `public` as the address in identity folders,
/// state in `data_dir`, no customer.
fn production_config_text(port: u16, public: &str, data_dir: &Path) -> anyhow::Result<String> {
    let data = data_dir
        .to_str()
        .filter(|d| !d.contains(['"', '\\']) && !d.chars().any(char::is_control))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--data-dir {}: use a path without quotes, backslashes or control characters",
                data_dir.display()
            )
        })?;
    Ok(format!(
        r#"# Sallyport broker configuration, written by `sallyport init --host`.
# Paths are relative to this file. `sallyport config example` prints every key with its meaning;
# check this file with `sallyport config check --config FILE`.

[server]
# Every interface: technicians reach the broker at public_address.
listen = "0.0.0.0:{port}"
# The state directory: the audit trail, the store, captures (systemd: StateDirectory=sallyport).
data_dir = "{data}"
trust_domain = "{TRUST_DOMAIN}"
# Written into every identity folder (`broker` file) by `sallyport certs issue`.
public_address = "{public}"

{COMMON_TABLES}
[admin]
# Health, readiness and metrics over plain HTTP, no certificate (`sallyport health --admin
# 127.0.0.1:9090`, the container's HEALTHCHECK, a Prometheus scrape). Loopback only: widen it to a
# management network, never the internet.
listen = "127.0.0.1:9090"

# No customer yet: the broker starts and serves with none. Add one [[customers]] table per
# customer, each with its Cedar policy file (README: "Policies (Cedar)"), for example:
#
# [[customers]]
# id = "acme"
# policy = "policies/acme.cedar"
# timezone = "Europe/Berlin"
#
# [[customers.targets]]
# id = "db01"
# address = "10.20.0.5:5432"
# tags = ["prod"]
"#
    ))
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

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    /// The configuration file.
    pub config: PathBuf,
    /// The validated configuration.
    pub cfg: Config,
    /// The demo identities (none in production).
    pub identities: Vec<IdentityDir>,
}

/// Writes a broker folder: the demo, or a real broker's.
pub fn init(opts: &InitOptions) -> anyhow::Result<Written> {
    let dir = &opts.dir;
    let cfg_path = dir.join("sallyport.toml");
    if !opts.force && (cfg_path.exists() || dir.join("pki").exists()) {
        bail!(
            "{} already holds a Sallyport setup; refusing to overwrite it (pass --force to replace its config, PKI and demo identities)",
            dir.display()
        );
    }
    for h in &opts.hosts {
        check_host(h)?;
    }
    if let InitMode::Production { data_dir } = &opts.mode
        && !data_dir.is_absolute()
    {
        bail!(
            "--data-dir {}: use an absolute path (a real broker's state directory, default {STATE_DIR})",
            data_dir.display()
        );
    }
    let first = opts
        .hosts
        .first()
        .ok_or_else(|| anyhow::anyhow!("init needs at least one --host"))?;
    // Everything that can be refused is refused before anything is written.
    let production = match &opts.mode {
        InitMode::Demo => None,
        InitMode::Production { data_dir } => Some(production_config_text(
            PORT,
            &host_port(first, PORT),
            data_dir,
        )?),
    };
    let td: TrustDomain = TRUST_DOMAIN.parse()?;
    let w = Writer {
        group: opts.group.as_ref(),
    };
    w.dir(dir)?;
    for sub in ["pki", "policies"] {
        w.dir(&dir.join(sub))?;
    }
    let ca = CertificateAuthority::generate(&td)?;
    let pki = dir.join("pki");
    w.file(&pki.join("ca.pem"), ca.cert_pem(), Access::Public)?;
    w.file(&pki.join("ca.key"), &ca.key_pem(), Access::Owner)?;
    let server = ca.issue_server(
        &opts.hosts,
        Validity::from_now(Duration::from_secs(365 * 24 * 3600)),
    )?;
    w.file(&pki.join("server.pem"), &server.cert_pem, Access::Public)?;
    w.file(&pki.join("server.key"), &server.key_pem, Access::Broker)?;
    w.file(
        &pki.join("grant-signing.key"),
        &generate_signing_key_pem()?,
        Access::Broker,
    )?;
    w.file(
        &pki.join("audit-signing.key"),
        &generate_signing_key_pem()?,
        Access::Broker,
    )?;
    let identities = match production {
        None => {
            w.file(
                &dir.join("policies").join("acme.cedar"),
                sallyport_policy::DEMO_POLICY,
                Access::Readable,
            )?;
            w.file(&cfg_path, &config_text(PORT), Access::Readable)?;
            std::fs::create_dir_all(dir.join("identities"))
                .with_context(|| format!("creating {}", dir.join("identities").display()))?;
            let cfg = Config::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let written = write_demo_identities(dir, &ca, &td, &cfg.public_address)?;
            register_all(&cfg, &written)?;
            written
        }
        Some(text) => {
            w.file(&cfg_path, &text, Access::Readable)?;
            Vec::new()
        }
    };
    let cfg = Config::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Written {
        config: cfg_path,
        cfg,
        identities,
    })
}

/// After an offline command run as root wrote into the state directory (the store, the trail):
/// gives what it created there to the directory's owner, the service user, so that the broker
/// running as that user can still open it. Does nothing unless run as root and the directory
/// belongs to someone else.
pub fn hand_back(data_dir: &Path) -> anyhow::Result<()> {
    let running_as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let Ok(top) = std::fs::metadata(data_dir) else {
        return Ok(());
    };
    if !running_as_root || top.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (top.uid(), top.gid());
    let mut stack = vec![data_dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for entry in entries {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            if meta.uid() != uid || meta.gid() != gid {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).with_context(|| {
                    format!("giving {} to the state directory's owner", path.display())
                })?;
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_found_by_name_in_an_etc_group_file() {
        let groups = "root:x:0:\nsallyportish:x:7:\nsallyport:x:998:alice,bob\n";
        assert_eq!(gid_in(groups, "sallyport"), Some(998));
        assert_eq!(gid_in(groups, "root"), Some(0));
        assert_eq!(gid_in(groups, "sally"), None);
        assert_eq!(gid_in("broken\n", "broken"), None);
        assert_eq!(ServiceGroup::resolve("10001").unwrap().gid, 10001);
    }

    #[test]
    fn hosts_are_dns_names_or_addresses_and_ipv6_is_bracketed() {
        for ok in [
            "broker.msp.example",
            "10.0.0.10",
            "::1",
            "localhost",
            "b-1.example",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "broker..example", "\"x\"", "x/y"] {
            let e = check_host(bad).unwrap_err().to_string();
            assert!(e.contains("not a DNS name or an IP address"), "{bad}: {e}");
        }
        assert_eq!(
            host_port("broker.msp.example", 8443),
            "broker.msp.example:8443"
        );
        assert_eq!(host_port("2001:db8::1", 8443), "[2001:db8::1]:8443");
    }

    #[test]
    fn a_real_brokers_config_is_valid_with_no_customer() {
        let text =
            production_config_text(PORT, "broker.msp.example:8443", Path::new(STATE_DIR)).unwrap();
        let cfg = Config::parse(Path::new("/etc/sallyport/sallyport.toml"), &text).unwrap();
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(cfg.data_dir, Path::new(STATE_DIR));
        assert_eq!(cfg.public_address, "broker.msp.example:8443");
        assert!(cfg.customers.is_empty());
        assert!(production_config_text(PORT, "b:1", Path::new("/var/\"x")).is_err());
    }
}
