//! `sallyport.toml`: the file structs (`File*`, unknown keys refused) and the validated [`Config`].
//!
//! Paths in the file are relative to the file's own folder. Every error names the file, the line where
//! it can (from TOML spans), the field, and what to change; the binary exits 64 on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sallyport_ids::{CustomerId, TargetId, TrustDomain};
use sallyport_policy::CustomerPolicy;
use serde::Deserialize;
use toml::Spanned;

/// A configuration problem: where, which field, what is wrong, and how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{location}: `{field}`: {message}\n  fix: {fix}")]
pub struct ConfigError {
    /// `file` or `file:line`.
    pub location: String,
    /// The key concerned, e.g. `customers[0].targets[1].address`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to change.
    pub fix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: FileServer,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    grants: FileGrants,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    requests: FileRequests,
    #[serde(default)]
    audit: FileAudit,
    #[serde(default)]
    customers: Vec<FileCustomer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileAudit {
    signing_key: String,
    checkpoint_every_records: u64,
    checkpoint_every_seconds: u64,
    on_failure: OnAuditFailure,
    retention_days: u32,
}

/// What happens to live tunnels when the audit trail cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAuditFailure {
    /// End every live tunnel: nothing goes on unrecorded (the default).
    EndSessions,
    /// Let live tunnels run; new ones are still refused.
    Continue,
}

impl Default for FileAudit {
    fn default() -> Self {
        Self {
            signing_key: "pki/audit-signing.key".into(),
            checkpoint_every_records: 1000,
            checkpoint_every_seconds: 60,
            on_failure: OnAuditFailure::EndSessions,
            retention_days: 365,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileRequests {
    pending_expiry_seconds: u64,
    sweep_interval_seconds: u64,
}

impl Default for FileRequests {
    fn default() -> Self {
        Self {
            pending_expiry_seconds: 24 * 3600,
            sweep_interval_seconds: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    listen: Spanned<String>,
    #[serde(default = "d_data_dir")]
    data_dir: String,
    #[serde(default)]
    trust_domain: Option<Spanned<String>>,
    #[serde(default)]
    public_address: Option<String>,
    #[serde(default)]
    worker_threads: usize,
}

fn d_data_dir() -> String {
    "data".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileTls {
    ca: String,
    ca_key: String,
    cert: String,
    key: String,
}

impl Default for FileTls {
    fn default() -> Self {
        Self {
            ca: "pki/ca.pem".into(),
            ca_key: "pki/ca.key".into(),
            cert: "pki/server.pem".into(),
            key: "pki/server.key".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileGrants {
    signing_key: String,
    issuer: String,
    audience: String,
    leeway_seconds: u64,
    max_minutes: u32,
}

impl Default for FileGrants {
    fn default() -> Self {
        Self {
            signing_key: "pki/grant-signing.key".into(),
            issuer: "sallyport".into(),
            audience: "sallyport".into(),
            leeway_seconds: 30,
            max_minutes: 480,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    handshake_timeout_seconds: u64,
    header_timeout_seconds: u64,
    idle_timeout_seconds: u64,
    connect_timeout_seconds: u64,
    max_header_bytes: usize,
    max_connections: usize,
    auth_failures_per_minute: u32,
    auth_failure_burst: u32,
    request_filings_per_minute: u32,
    request_filing_burst: u32,
    api_calls_per_minute: u32,
    api_call_burst: u32,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_seconds: 10,
            header_timeout_seconds: 10,
            idle_timeout_seconds: 900,
            connect_timeout_seconds: 5,
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            auth_failures_per_minute: 10,
            auth_failure_burst: 5,
            request_filings_per_minute: 6,
            request_filing_burst: 10,
            api_calls_per_minute: 600,
            api_call_burst: 120,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCustomer {
    id: Spanned<String>,
    policy: Spanned<String>,
    #[serde(default)]
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    targets: Vec<FileTarget>,
    #[serde(default)]
    webhook: Option<FileWebhook>,
    #[serde(default)]
    siem: Vec<FileSiem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSiem {
    kind: Spanned<String>,
    #[serde(default)]
    address: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    ca: Option<Spanned<String>>,
    #[serde(default)]
    token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    url: Spanned<String>,
    secret_file: Spanned<String>,
    #[serde(default = "d_attempts")]
    max_attempts: Spanned<u32>,
    #[serde(default = "d_backoff")]
    first_backoff_ms: u64,
}

fn d_attempts() -> Spanned<u32> {
    Spanned::new(0..0, 5)
}

fn d_backoff() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTarget {
    id: Spanned<String>,
    address: Spanned<String>,
    #[serde(default = "d_protocol")]
    protocol: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    record: bool,
}

fn d_protocol() -> String {
    "tcp".into()
}

/// Paths of the broker's TLS material.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// CA certificate.
    pub ca: PathBuf,
    /// CA private key (needed only to issue certificates).
    pub ca_key: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
}

/// Grant settings.
#[derive(Debug, Clone)]
pub struct GrantSettings {
    /// Ed25519 PKCS#8 signing key.
    pub signing_key: PathBuf,
    /// `iss` of minted grants.
    pub issuer: String,
    /// `aud` of minted grants.
    pub audience: String,
    /// Clock-skew leeway when verifying.
    pub leeway: Duration,
    /// Longest grant that may be minted.
    pub max_minutes: u32,
}

/// Bounds on what a client may cost the broker.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Request headers must arrive within this.
    pub header_timeout: Duration,
    /// A tunnel with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Dialling a target gives up after this.
    pub connect_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Failed authentications allowed per source IP or identity per minute.
    pub auth_failures_per_minute: u32,
    /// Burst of failed authentications allowed before the rate applies.
    pub auth_failure_burst: u32,
    /// Access requests a technician may file per minute.
    pub request_filings_per_minute: u32,
    /// Burst of filings before that rate applies.
    pub request_filing_burst: u32,
    /// API calls an identity may make per minute.
    pub api_calls_per_minute: u32,
    /// Burst of API calls before that rate applies.
    pub api_call_burst: u32,
}

/// The audit trail's signed checkpoints.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Ed25519 PKCS#8 key that signs checkpoints.
    pub signing_key: PathBuf,
    /// A checkpoint after this many records on a chain.
    pub checkpoint_every_records: u64,
    /// And at least this often while a chain has new records.
    pub checkpoint_every: Duration,
    /// What happens to live tunnels when a record cannot be written.
    pub on_failure: OnAuditFailure,
    /// Daily segments older than this many days are retired (`None`: kept forever).
    pub retention_days: Option<u32>,
}

/// The access-request workflow.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// A request nobody decided on expires after this.
    pub pending_expiry: Duration,
    /// How often pending requests are checked for expiry.
    pub sweep_interval: Duration,
}

/// One customer endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    /// Target id.
    pub id: TargetId,
    /// Configured address (`host:port`), the only place the broker dials.
    pub address: String,
    /// The port of `address`: the port a CONNECT authority must name.
    pub port: u16,
    /// Protocol label (informational, visible to policies).
    pub protocol: String,
    /// Tags visible to policies.
    pub tags: Vec<String>,
    /// Capture every session's bytes (see [`crate::capture`]).
    pub record: bool,
}

/// One customer (tenant).
#[derive(Debug, Clone)]
pub struct Customer {
    /// Customer id.
    pub id: CustomerId,
    /// IANA time zone for policy hours and weekdays.
    pub timezone: String,
    /// Path of the policy file.
    pub policy_path: PathBuf,
    /// The validated policy set.
    pub policy: Arc<CustomerPolicy>,
    /// The customer's targets.
    pub targets: Vec<Target>,
    /// Where the customer's notifications go, if anywhere.
    pub webhook: Option<crate::webhook::WebhookTarget>,
    /// The customer's SIEM sinks: its audit trail is forwarded to each.
    pub siem: Vec<crate::siem::SinkKind>,
}

impl Customer {
    /// The target with this id.
    pub fn target(&self, id: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.id.as_str() == id)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the audit trail and state live.
    pub data_dir: PathBuf,
    /// SPIFFE trust domain of the broker PKI.
    pub trust_domain: TrustDomain,
    /// Address written into identity folders (`host:port`).
    pub public_address: String,
    /// Threads running connections: 0 is one per core, 1 runs everything on one thread.
    pub worker_threads: usize,
    /// TLS material.
    pub tls: TlsPaths,
    /// Grant settings.
    pub grants: GrantSettings,
    /// Bounds.
    pub limits: Limits,
    /// The request workflow.
    pub requests: RequestSettings,
    /// Audit checkpoints.
    pub audit: AuditSettings,
    /// Customers.
    pub customers: Vec<Customer>,
}

impl Config {
    /// The customer with this id.
    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.customers.iter().find(|c| c.id.as_str() == id)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: path.display().to_string(),
            field: "(file)".into(),
            message: format!("cannot read the configuration: {e}"),
            fix: "pass an existing file with --config, or run `sallyport init --dir DIR` to create one"
                .into(),
        })?;
        Self::parse(path, &text)
    }

    /// Validates configuration text that was read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let v = Validator { path, text };
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| v.line(s.start));
            ConfigError {
                location: v.loc(line),
                field: "(syntax)".into(),
                message: e.message().trim().to_owned(),
                fix: "see deploy/sallyport.toml for every key and its meaning".into(),
            }
        })?;
        v.validate(file)
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn loc(&self, line: Option<usize>) -> String {
        match line {
            Some(l) => format!("{}:{l}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    fn err<T>(&self, at: &Spanned<T>, field: &str, message: String, fix: &str) -> ConfigError {
        ConfigError {
            location: self.loc(Some(self.line(at.span().start))),
            field: field.into(),
            message,
            fix: fix.into(),
        }
    }

    fn rel(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// `@approvals` and `@max_minutes` must be numbers the workflow can use.
    fn check_annotations(
        &self,
        policy: &CustomerPolicy,
        file: &Path,
        max_minutes: u32,
    ) -> Result<(), (String, String)> {
        for id in policy.policy_ids() {
            if let Some(v) = policy.annotation(&id, "approvals")
                && !v.parse::<u32>().is_ok_and(|n| n <= 10)
            {
                return Err((
                    format!("{}: policy `{id}`: @approvals(\"{v}\") is not 0 to 10", file.display()),
                    "write the number of approvals needed, e.g. @approvals(\"2\"); \"0\" approves at once".into(),
                ));
            }
            if let Some(v) = policy.annotation(&id, "max_minutes")
                && !v
                    .parse::<u32>()
                    .is_ok_and(|n| (1..=max_minutes).contains(&n))
            {
                return Err((
                    format!(
                        "{}: policy `{id}`: @max_minutes(\"{v}\") is not 1 to {max_minutes} (grants.max_minutes)",
                        file.display()
                    ),
                    "write the longest grant in minutes, e.g. @max_minutes(\"120\")".into(),
                ));
            }
        }
        Ok(())
    }

    fn webhook(
        &self,
        w: &FileWebhook,
        field: &dyn Fn(&str) -> String,
    ) -> Result<crate::webhook::WebhookTarget, ConfigError> {
        let url: hyper::Uri = w.url.get_ref().parse().map_err(|e| {
            self.err(
                &w.url,
                &field("webhook.url"),
                format!("not a URL: {e}"),
                "use https://HOST/PATH (http:// only to a loopback address)",
            )
        })?;
        crate::webhook::WebhookTarget::check_url(&url)
            .map_err(|m| self.err(&w.url, &field("webhook.url"), m, "use an https:// URL"))?;
        let path = self.rel(w.secret_file.get_ref());
        let secret = std::fs::read_to_string(&path).map_err(|e| {
            self.err(
                &w.secret_file,
                &field("webhook.secret_file"),
                format!("cannot read `{}`: {e}", path.display()),
                "point `secret_file` at a file holding the shared signing secret",
            )
        })?;
        let secret = secret.trim().as_bytes().to_vec();
        if secret.len() < 16 {
            return Err(self.err(
                &w.secret_file,
                &field("webhook.secret_file"),
                format!(
                    "the secret in `{}` is shorter than 16 bytes",
                    path.display()
                ),
                "generate one, e.g. `openssl rand -hex 32 > FILE`",
            ));
        }
        if !(1..=20).contains(w.max_attempts.get_ref()) {
            return Err(self.err(
                &w.max_attempts,
                &field("webhook.max_attempts"),
                format!("{} is out of range", w.max_attempts.get_ref()),
                "use 1 to 20 (default 5)",
            ));
        }
        if !(10..=60_000).contains(&w.first_backoff_ms) {
            return Err(self.err(
                &w.url,
                &field("webhook.first_backoff_ms"),
                format!("{} is out of range", w.first_backoff_ms),
                "use 10 to 60000 (default 1000); it doubles after each failed attempt",
            ));
        }
        Ok(crate::webhook::WebhookTarget {
            url,
            secret,
            max_attempts: *w.max_attempts.get_ref(),
            first_backoff: Duration::from_millis(w.first_backoff_ms),
        })
    }

    fn siem(
        &self,
        s: &FileSiem,
        field: &dyn Fn(&str) -> String,
    ) -> Result<crate::siem::SinkKind, ConfigError> {
        use crate::siem::SinkKind;
        let tls = || -> Result<Arc<rustls::ClientConfig>, ConfigError> {
            let Some(ca) = &s.ca else {
                return Ok(crate::webhook::default_tls());
            };
            let path = self.rel(ca.get_ref());
            let bad = |m: String| {
                self.err(
                    ca,
                    &field("ca"),
                    m,
                    "point `ca` at the PEM certificates that sign the SIEM's certificate",
                )
            };
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| bad(format!("cannot read `{}`: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in sallyport_certs::tls::certs_from_pem(&pem, &path.display().to_string())
                .map_err(|e| bad(e.to_string()))?
            {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(cfg))
        };
        let address = || -> Result<String, ConfigError> {
            let a = s.address.as_ref().ok_or_else(|| {
                self.err(
                    &s.kind,
                    &field("address"),
                    "a syslog sink needs `address`".into(),
                    "add address = \"HOST:PORT\" of the SIEM's syslog receiver",
                )
            })?;
            let ok = a
                .get_ref()
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(self.err(
                    a,
                    &field("address"),
                    format!("`{}` is not HOST:PORT", a.get_ref()),
                    "use e.g. \"siem.acme.example:6514\"",
                ));
            }
            Ok(a.get_ref().clone())
        };
        match s.kind.get_ref().as_str() {
            "syslog" => Ok(SinkKind::Syslog {
                address: address()?,
            }),
            "syslog-tls" => Ok(SinkKind::SyslogTls {
                address: address()?,
                tls: tls()?,
            }),
            "https" => {
                let u = s.url.as_ref().ok_or_else(|| {
                    self.err(
                        &s.kind,
                        &field("url"),
                        "an https sink needs `url`".into(),
                        "add url = \"https://HOST/PATH\" of the SIEM's intake",
                    )
                })?;
                let url: hyper::Uri = u.get_ref().parse().map_err(|e| {
                    self.err(u, &field("url"), format!("not a URL: {e}"), "use https://HOST/PATH")
                })?;
                crate::webhook::WebhookTarget::check_url(&url)
                    .map_err(|m| self.err(u, &field("url"), m, "use an https:// URL"))?;
                let token = match &s.token_file {
                    None => None,
                    Some(t) => {
                        let path = self.rel(t.get_ref());
                        let text = std::fs::read_to_string(&path).map_err(|e| {
                            self.err(
                                t,
                                &field("token_file"),
                                format!("cannot read `{}`: {e}", path.display()),
                                "point `token_file` at a file holding the SIEM's bearer token",
                            )
                        })?;
                        Some(text.trim().to_owned())
                    }
                };
                Ok(SinkKind::Https {
                    url,
                    token,
                    tls: tls()?,
                })
            }
            other => Err(self.err(
                &s.kind,
                &field("kind"),
                format!("unknown sink kind `{other}`"),
                "use \"syslog\" (RFC 5424 over TCP), \"syslog-tls\" (RFC 5425) or \"https\" (JSON lines)",
            )),
        }
    }

    fn validate(&self, f: FileConfig) -> Result<Config, ConfigError> {
        let listen: SocketAddr = f.server.listen.get_ref().parse().map_err(|e| {
            self.err(
                &f.server.listen,
                "server.listen",
                format!("`{}` is not an address: {e}", f.server.listen.get_ref()),
                "use IP:PORT, e.g. \"127.0.0.1:8443\" or \"0.0.0.0:8443\"",
            )
        })?;
        let trust_domain = match &f.server.trust_domain {
            None => "sallyport.local".parse().map_err(|_| ConfigError {
                location: self.loc(None),
                field: "server.trust_domain".into(),
                message: "default trust domain rejected".into(),
                fix: "set server.trust_domain".into(),
            })?,
            Some(td) => td.get_ref().parse().map_err(|e| {
                self.err(
                    td,
                    "server.trust_domain",
                    format!("{e}"),
                    "use the trust domain the PKI was created with (see `sallyport init`)",
                )
            })?,
        };
        let public_address = f
            .server
            .public_address
            .clone()
            .unwrap_or_else(|| match listen.ip() {
                ip if ip.is_unspecified() || ip.is_loopback() => {
                    format!("localhost:{}", listen.port())
                }
                ip => format!("{ip}:{}", listen.port()),
            });
        if f.server.worker_threads > 1024 {
            return Err(ConfigError {
                location: self.loc(None),
                field: "server.worker_threads".into(),
                message: format!("{} is out of range", f.server.worker_threads),
                fix: "use 0 (one thread per core) to 1024".into(),
            });
        }
        let g = &f.grants;
        if g.max_minutes == 0 || g.max_minutes > 7 * 24 * 60 {
            return Err(ConfigError {
                location: self.loc(None),
                field: "grants.max_minutes".into(),
                message: format!("{} is out of range", g.max_minutes),
                fix: "use 1 to 10080 (one week)".into(),
            });
        }
        if g.leeway_seconds > 300 {
            return Err(ConfigError {
                location: self.loc(None),
                field: "grants.leeway_seconds".into(),
                message: format!("{} s would keep expired grants alive", g.leeway_seconds),
                fix: "use 0 to 300 (default 30); fix clock skew with NTP instead".into(),
            });
        }
        let l = &f.limits;
        for (name, value) in [
            (
                "limits.handshake_timeout_seconds",
                l.handshake_timeout_seconds,
            ),
            ("limits.header_timeout_seconds", l.header_timeout_seconds),
            ("limits.idle_timeout_seconds", l.idle_timeout_seconds),
            ("limits.connect_timeout_seconds", l.connect_timeout_seconds),
            (
                "limits.auth_failures_per_minute",
                u64::from(l.auth_failures_per_minute),
            ),
            ("limits.auth_failure_burst", u64::from(l.auth_failure_burst)),
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.request_filings_per_minute",
                u64::from(l.request_filings_per_minute),
            ),
            (
                "limits.request_filing_burst",
                u64::from(l.request_filing_burst),
            ),
            (
                "limits.api_calls_per_minute",
                u64::from(l.api_calls_per_minute),
            ),
            ("limits.api_call_burst", u64::from(l.api_call_burst)),
        ] {
            if value == 0 {
                return Err(ConfigError {
                    location: self.loc(None),
                    field: name.into(),
                    message: "must be at least 1".into(),
                    fix: format!("remove `{name}` to use the default, or set a positive value"),
                });
            }
        }
        if !(8192..=1024 * 1024).contains(&l.max_header_bytes) {
            return Err(ConfigError {
                location: self.loc(None),
                field: "limits.max_header_bytes".into(),
                message: format!("{} is out of range", l.max_header_bytes),
                fix: "use 8192 to 1048576".into(),
            });
        }
        let r = &f.requests;
        if !(1..=30 * 24 * 3600).contains(&r.pending_expiry_seconds) {
            return Err(ConfigError {
                location: self.loc(None),
                field: "requests.pending_expiry_seconds".into(),
                message: format!("{} is out of range", r.pending_expiry_seconds),
                fix: "use 1 to 2592000 (30 days); the default is 86400 (24 hours)".into(),
            });
        }
        if !(1..=3600).contains(&r.sweep_interval_seconds) {
            return Err(ConfigError {
                location: self.loc(None),
                field: "requests.sweep_interval_seconds".into(),
                message: format!("{} is out of range", r.sweep_interval_seconds),
                fix: "use 1 to 3600; the default is 5".into(),
            });
        }
        let a = &f.audit;
        if !(1..=1_000_000).contains(&a.checkpoint_every_records) {
            return Err(ConfigError {
                location: self.loc(None),
                field: "audit.checkpoint_every_records".into(),
                message: format!("{} is out of range", a.checkpoint_every_records),
                fix: "use 1 to 1000000; the default is 1000".into(),
            });
        }
        if !(1..=86_400).contains(&a.checkpoint_every_seconds) {
            return Err(ConfigError {
                location: self.loc(None),
                field: "audit.checkpoint_every_seconds".into(),
                message: format!("{} is out of range", a.checkpoint_every_seconds),
                fix: "use 1 to 86400; the default is 60".into(),
            });
        }
        if a.retention_days > 36_500 {
            return Err(ConfigError {
                location: self.loc(None),
                field: "audit.retention_days".into(),
                message: format!("{} is out of range", a.retention_days),
                fix: "use 1 to 36500 days, or 0 to keep every segment; the default is 365".into(),
            });
        }
        let mut customers: Vec<Customer> = Vec::new();
        for (ci, c) in f.customers.iter().enumerate() {
            let field = |k: &str| format!("customers[{ci}].{k}");
            let id: CustomerId = c.id.get_ref().parse().map_err(|e| {
                self.err(
                    &c.id,
                    &field("id"),
                    format!("{e}"),
                    "use a short lowercase name like \"acme\"",
                )
            })?;
            if customers.iter().any(|o| o.id == id) {
                return Err(self.err(
                    &c.id,
                    &field("id"),
                    format!("customer `{id}` is defined twice"),
                    "give every customer a distinct id",
                ));
            }
            let timezone = c
                .timezone
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_else(|| "UTC".into());
            if let Some(tz) = &c.timezone
                && jiff::tz::TimeZone::get(tz.get_ref()).is_err()
            {
                return Err(self.err(
                    tz,
                    &field("timezone"),
                    format!("unknown time zone `{}`", tz.get_ref()),
                    "use an IANA time zone name such as \"Europe/Berlin\" or \"UTC\"",
                ));
            }
            let policy_path = self.rel(c.policy.get_ref());
            let source = std::fs::read_to_string(&policy_path).map_err(|e| {
                self.err(
                    &c.policy,
                    &field("policy"),
                    format!("cannot read `{}`: {e}", policy_path.display()),
                    "point `policy` at the customer's Cedar policy file (relative to this config)",
                )
            })?;
            let policy = CustomerPolicy::parse(
                id.clone(),
                &timezone,
                &policy_path.display().to_string(),
                &source,
            )
            .map_err(|e| ConfigError {
                location: self.loc(Some(self.line(c.policy.span().start))),
                field: field("policy"),
                message: format!("invalid policy: {e}"),
                fix: "correct the policy file; the Sallyport Cedar schema is in policy/src/sallyport.cedarschema"
                    .into(),
            })?;
            self.check_annotations(&policy, &policy_path, g.max_minutes)
                .map_err(|(message, fix)| ConfigError {
                    location: self.loc(Some(self.line(c.policy.span().start))),
                    field: field("policy"),
                    message,
                    fix,
                })?;
            let webhook = match &c.webhook {
                None => None,
                Some(w) => Some(self.webhook(w, &field)?),
            };
            let siem = c
                .siem
                .iter()
                .enumerate()
                .map(|(i, sink)| self.siem(sink, &|k: &str| field(&format!("siem[{i}].{k}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let mut targets: Vec<Target> = Vec::new();
            for (ti, t) in c.targets.iter().enumerate() {
                let tfield = |k: &str| format!("customers[{ci}].targets[{ti}].{k}");
                let tid: TargetId = t.id.get_ref().parse().map_err(|e| {
                    self.err(
                        &t.id,
                        &tfield("id"),
                        format!("{e}"),
                        "use a short lowercase name like \"db01\"",
                    )
                })?;
                if targets.iter().any(|o| o.id == tid) {
                    return Err(self.err(
                        &t.id,
                        &tfield("id"),
                        format!("target `{tid}` is defined twice for customer `{id}`"),
                        "give every target of a customer a distinct id",
                    ));
                }
                let addr = t.address.get_ref();
                let port = addr
                    .rsplit_once(':')
                    .filter(|(host, _)| !host.is_empty())
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        self.err(
                            &t.address,
                            &tfield("address"),
                            format!("`{addr}` is not HOST:PORT"),
                            "use the address the broker dials, e.g. \"10.20.0.5:5432\" or \"db01.internal:5432\"",
                        )
                    })?;
                targets.push(Target {
                    id: tid,
                    address: addr.clone(),
                    port,
                    protocol: t.protocol.clone(),
                    tags: t.tags.clone(),
                    record: t.record,
                });
            }
            customers.push(Customer {
                id,
                timezone,
                policy_path,
                policy: Arc::new(policy),
                targets,
                webhook,
                siem,
            });
        }
        Ok(Config {
            file: self.path.to_owned(),
            listen,
            data_dir: self.rel(&f.server.data_dir),
            trust_domain,
            public_address,
            worker_threads: f.server.worker_threads,
            tls: TlsPaths {
                ca: self.rel(&f.tls.ca),
                ca_key: self.rel(&f.tls.ca_key),
                cert: self.rel(&f.tls.cert),
                key: self.rel(&f.tls.key),
            },
            grants: GrantSettings {
                signing_key: self.rel(&g.signing_key),
                issuer: g.issuer.clone(),
                audience: g.audience.clone(),
                leeway: Duration::from_secs(g.leeway_seconds),
                max_minutes: g.max_minutes,
            },
            limits: Limits {
                handshake_timeout: Duration::from_secs(l.handshake_timeout_seconds),
                header_timeout: Duration::from_secs(l.header_timeout_seconds),
                idle_timeout: Duration::from_secs(l.idle_timeout_seconds),
                connect_timeout: Duration::from_secs(l.connect_timeout_seconds),
                max_header_bytes: l.max_header_bytes,
                max_connections: l.max_connections,
                auth_failures_per_minute: l.auth_failures_per_minute,
                auth_failure_burst: l.auth_failure_burst,
                request_filings_per_minute: l.request_filings_per_minute,
                request_filing_burst: l.request_filing_burst,
                api_calls_per_minute: l.api_calls_per_minute,
                api_call_burst: l.api_call_burst,
            },
            requests: RequestSettings {
                pending_expiry: Duration::from_secs(r.pending_expiry_seconds),
                sweep_interval: Duration::from_secs(r.sweep_interval_seconds),
            },
            audit: AuditSettings {
                signing_key: self.rel(&a.signing_key),
                checkpoint_every_records: a.checkpoint_every_records,
                checkpoint_every: Duration::from_secs(a.checkpoint_every_seconds),
                on_failure: a.on_failure,
                retention_days: (a.retention_days > 0).then_some(a.retention_days),
            },
            customers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/sallyport/sallyport.toml"), text)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[server]\nlisten = \"127.0.0.1:8443\"\n").unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/sallyport/data"));
        assert_eq!(c.grants.leeway, Duration::from_secs(30));
        assert_eq!(c.public_address, "localhost:8443");
        assert_eq!(c.trust_domain.as_str(), "sallyport.local");
        assert_eq!(c.worker_threads, 0);
    }

    #[test]
    fn worker_threads_out_of_range_names_field_and_fix() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nworker_threads = 5000\n").unwrap_err();
        assert_eq!(err.field, "server.worker_threads");
        assert!(err.fix.contains("1024"), "{}", err.fix);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse("[server]\nlisten = \"127.0.0.1:8443\"\nlisten_port = 3\n").unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("/etc/sallyport/sallyport.toml:3:"), "{s}");
        assert!(s.contains("listen_port"), "{s}");
    }

    #[test]
    fn limits_that_would_disable_a_protection_are_refused() {
        let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
        let err = parse(&format!("{base}[grants]\nleeway_seconds = 86400\n")).unwrap_err();
        assert_eq!(err.field, "grants.leeway_seconds");
        let err = parse(&format!("{base}[limits]\nmax_connections = 0\n")).unwrap_err();
        assert_eq!(err.field, "limits.max_connections");
    }

    #[test]
    fn bad_listen_names_field_and_fix() {
        let err = parse("[server]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(err.field, "server.listen");
        assert_eq!(err.location, "/etc/sallyport/sallyport.toml:2");
        assert!(err.fix.contains("IP:PORT"));
    }

    #[test]
    fn missing_policy_file_is_named() {
        let err = parse(
            "[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"acme\"\npolicy = \"nope.cedar\"\n",
        )
        .unwrap_err();
        assert_eq!(err.field, "customers[0].policy");
        assert!(err.message.contains("/etc/sallyport/nope.cedar"), "{err}");
        assert_eq!(err.location, "/etc/sallyport/sallyport.toml:5");
    }

    #[test]
    fn bad_customer_and_target_ids_are_refused() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"Acme Corp\"\npolicy = \"p\"\n")
            .unwrap_err();
        assert_eq!(err.field, "customers[0].id");
        assert_eq!(err.location, "/etc/sallyport/sallyport.toml:4");
    }

    #[test]
    fn policy_and_target_errors_from_real_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("acme.cedar"),
            "permit(principal, action, resource);\n",
        )
        .unwrap();
        let cfg = dir.path().join("sallyport.toml");
        let base = "[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\ntimezone = \"Europe/Berlin\"\n";
        let ok = format!(
            "{base}[[customers.targets]]\nid = \"db01\"\naddress = \"10.20.0.5:5432\"\ntags = [\"prod\"]\n"
        );
        let c = Config::parse(&cfg, &ok).unwrap();
        let t = c.customer("acme").unwrap().target("db01").unwrap();
        assert_eq!(t.port, 5432);
        assert_eq!(t.protocol, "tcp");

        let bad = format!("{base}[[customers.targets]]\nid = \"db01\"\naddress = \"10.20.0.5\"\n");
        let err = Config::parse(&cfg, &bad).unwrap_err();
        assert_eq!(err.field, "customers[0].targets[0].address");
        assert!(
            err.location.ends_with("sallyport.toml:9"),
            "{}",
            err.location
        );

        let tz = base.replace("Europe/Berlin", "Mars/Olympus");
        let err = Config::parse(&cfg, &tz).unwrap_err();
        assert_eq!(err.field, "customers[0].timezone");

        std::fs::write(
            dir.path().join("acme.cedar"),
            "permit(principal, action, resource)\n",
        )
        .unwrap();
        let err = Config::parse(&cfg, base).unwrap_err();
        assert!(err.message.contains("acme.cedar:"), "{err}");
    }

    #[test]
    fn the_documented_example_uses_only_known_keys() {
        let text = include_str!("../../deploy/sallyport.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(file.requests.pending_expiry_seconds, 86_400);
        assert!(file.customers[0].webhook.is_some());
    }

    #[test]
    fn workflow_settings_annotations_and_webhooks_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("sallyport.toml");
        let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
        let err = Config::parse(
            &cfg,
            &format!("{base}[requests]\npending_expiry_seconds = 0\n"),
        )
        .unwrap_err();
        assert_eq!(err.field, "requests.pending_expiry_seconds");
        let err =
            Config::parse(&cfg, &format!("{base}[audit]\nretention_days = 40000\n")).unwrap_err();
        assert_eq!(err.field, "audit.retention_days");
        assert!(err.fix.contains("0 to keep every segment"), "{err}");
        let kept = Config::parse(&cfg, &format!("{base}[audit]\nretention_days = 0\n")).unwrap();
        assert_eq!(kept.audit.retention_days, None);
        let default = Config::parse(&cfg, base).unwrap();
        assert_eq!(default.audit.retention_days, Some(365));

        let customer = format!("{base}[[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\n");
        let permit = "permit(principal, action, resource);\n";
        for (annotation, needle) in [
            ("@approvals(\"two\")", "@approvals(\"two\") is not 0 to 10"),
            ("@max_minutes(\"9999\")", "is not 1 to 480"),
        ] {
            std::fs::write(
                dir.path().join("acme.cedar"),
                format!("{annotation}\n{permit}"),
            )
            .unwrap();
            let err = Config::parse(&cfg, &customer).unwrap_err();
            assert_eq!(err.field, "customers[0].policy");
            assert!(err.message.contains(needle), "{err}");
            assert!(err.message.contains("acme.cedar"), "{err}");
        }
        std::fs::write(
            dir.path().join("acme.cedar"),
            format!("@approvals(\"2\")\n{permit}"),
        )
        .unwrap();
        std::fs::write(dir.path().join("short"), "too short").unwrap();
        std::fs::write(dir.path().join("secret"), "0123456789abcdef0123\n").unwrap();
        let hook = |url: &str, secret: &str| {
            format!("{customer}[customers.webhook]\nurl = \"{url}\"\nsecret_file = \"{secret}\"\n")
        };
        let err = Config::parse(&cfg, &hook("http://hooks.example.com/x", "secret")).unwrap_err();
        assert_eq!(err.field, "customers[0].webhook.url");
        assert!(err.location.ends_with(":7"), "{}", err.location);
        let err = Config::parse(&cfg, &hook("https://hooks.example.com/x", "short")).unwrap_err();
        assert_eq!(err.field, "customers[0].webhook.secret_file");
        assert!(err.message.contains("shorter than 16 bytes"), "{err}");
        let err = Config::parse(&cfg, &hook("https://hooks.example.com/x", "missing")).unwrap_err();
        assert!(err.message.contains("cannot read"), "{err}");
        let ok = Config::parse(&cfg, &hook("https://hooks.example.com/x", "secret")).unwrap();
        let w = ok.customers[0].webhook.as_ref().unwrap();
        assert_eq!((w.secret.len(), w.max_attempts), (20, 5));
        assert!(
            !format!("{ok:?}").contains("0123456789abcdef"),
            "the secret leaks via Debug"
        );
    }

    #[test]
    fn siem_sinks_are_checked_and_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.cedar"), "").unwrap();
        let cfg = dir.path().join("sallyport.toml");
        let base = "[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\n[[customers.siem]]\n";
        for (sink, field, needle) in [
            (
                "kind = \"kafka\"\n",
                "customers[0].siem[0].kind",
                "unknown sink kind `kafka`",
            ),
            (
                "kind = \"syslog\"\n",
                "customers[0].siem[0].address",
                "needs `address`",
            ),
            (
                "kind = \"syslog\"\naddress = \"siem\"\n",
                "customers[0].siem[0].address",
                "not HOST:PORT",
            ),
            (
                "kind = \"https\"\n",
                "customers[0].siem[0].url",
                "needs `url`",
            ),
            (
                "kind = \"https\"\nurl = \"http://siem.example/in\"\n",
                "customers[0].siem[0].url",
                "http",
            ),
            (
                "kind = \"syslog-tls\"\naddress = \"siem:6514\"\nca = \"none.pem\"\n",
                "customers[0].siem[0].ca",
                "cannot read",
            ),
            (
                "kind = \"https\"\nurl = \"https://siem.example/in\"\ntoken_file = \"none\"\n",
                "customers[0].siem[0].token_file",
                "cannot read",
            ),
        ] {
            let err = Config::parse(&cfg, &format!("{base}{sink}")).unwrap_err();
            assert_eq!(err.field, field, "{sink}: {err}");
            assert!(err.message.contains(needle), "{sink}: {err}");
        }
        let ok = Config::parse(
            &cfg,
            &format!("{base}kind = \"syslog-tls\"\naddress = \"siem.example:6514\"\n"),
        )
        .unwrap();
        assert_eq!(ok.customers[0].siem.len(), 1);
    }
}
