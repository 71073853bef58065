//! `sallyport.toml`: the validated [`Config`] every crate takes its settings from, and the customer
//! catalogue (customers, their targets, policies, webhooks and SIEM sinks).
//!
//! Modules: [`file`] (the file structs, unknown keys refused), [`keys`] (which key a parse error is
//! about, and the keys its table takes), [`validate`] (file to `Config`, reading
//! and checking every file the configuration names), [`sinks`] (webhook and SIEM settings). Paths in
//! the file are relative to the file's own folder. Every error names the file, the line where it can
//! (from TOML spans), the field, and what to change; the binary exits 64 on them.
//!
//! The crate reads files but starts nothing: it depends on `ids`, `certs` and `policy` only.

mod file;
mod keys;
mod shared;
pub mod signin;
pub mod sinks;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sallyport_certs::grant::GrantSigner;
use sallyport_certs::signing::Ed25519Signer;
use sallyport_certs::tls::PemFiles;
use sallyport_ids::{CustomerId, TargetId, TrustDomain};
use sallyport_policy::CustomerPolicy;
use serde::Deserialize;

pub use shared::{Change, SharedConfig};
pub use signin::{CustomerSignIn, OidcSettings, ProviderSignIn, Secret, WebSettings};
pub use sinks::{SinkKind, WebhookTarget};

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

/// What happens to live tunnels when the audit trail cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAuditFailure {
    /// End every live tunnel: nothing goes on unrecorded (the default).
    EndSessions,
    /// Let live tunnels run; new ones are still refused.
    Continue,
}

/// Paths of the broker's TLS material.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPaths {
    /// CA certificate.
    pub ca: PathBuf,
    /// CA private key (needed only to issue certificates).
    pub ca_key: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// Publish a CRL of locked certificates signed by the CA (`GET /v1/crl`, `<data_dir>/crl.pem`);
    /// the broker then needs `ca_key`.
    pub crl: bool,
}

/// Grant settings.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
    /// Most connections in their TLS handshake at once, from all sources (at most
    /// `max_connections`); one over it is closed at accept.
    pub max_handshakes: usize,
    /// Most connections from one source address (IPv6 by its /64) that have not completed their
    /// handshake (at most `max_handshakes`); one over it is closed at accept.
    pub max_handshakes_per_source: usize,
    /// A request's body must have arrived within this of the connection being ready for the request
    /// (its head within `header_timeout`); past it the answer is 408 and the connection closes.
    pub request_timeout: Duration,
    /// Refusals allowed per authenticated identity per minute (every kind: bad grants, another
    /// customer, target or port, policy denials); past the budget its CONNECTs get 429.
    pub auth_failures_per_minute: u32,
    /// Burst of refusals of one identity allowed before that rate applies.
    pub auth_failure_burst: u32,
    /// Failed handshakes (no, untrusted or expired certificate) allowed per source address per
    /// minute; past the budget the address's failures are aggregated, never its good clients refused.
    pub unauthenticated_failures_per_minute: u32,
    /// Burst of failed handshakes from one address allowed before that rate applies.
    pub unauthenticated_failure_burst: u32,
    /// Refusals recorded one by one per chain, source or identity and kind in each interval; the rest
    /// go into one aggregate record at its end.
    pub refusals_recorded_per_interval: u32,
    /// The interval of `refusals_recorded_per_interval`.
    pub refusal_interval: Duration,
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSettings {
    /// A request nobody decided on expires after this.
    pub pending_expiry: Duration,
    /// How often pending requests are checked for expiry.
    pub sweep_interval: Duration,
}

/// The admin listener: plain HTTP, no client certificate, `/healthz`, `/readyz` and `/metrics` only.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// Where it listens (`admin.listen`); `None`: no admin listener (the default).
    pub listen: Option<SocketAddr>,
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
    /// Capture every session's bytes (the `audit` crate's `capture` module holds the format).
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
    pub webhook: Option<WebhookTarget>,
    /// The customer's SIEM sinks: its audit trail is forwarded to each.
    pub siem: Vec<SinkKind>,
    /// The customer's own identity provider (`[customers.oidc]`): its approvers and auditors sign
    /// in there, and every approval and denial of its requests is signed there.
    pub oidc: Option<CustomerSignIn>,
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
    /// The admin listener.
    pub admin: AdminSettings,
    /// The sign-in listener (`[web]`).
    pub web: WebSettings,
    /// The provider's identity provider (`[provider.oidc]`), for technicians and admins.
    pub provider_oidc: Option<ProviderSignIn>,
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
        let v = validate::Validator { path, text };
        let file: file::FileConfig = toml::from_str(text).map_err(|e| v.parse_error(&e))?;
        v.validate(file)
    }

    /// The grant signing key (`grants.signing_key`), as a signer for this broker's issuer and
    /// audience.
    pub fn grant_signer(&self) -> Result<GrantSigner, ConfigError> {
        let pem = self.read(&self.grants.signing_key, "grants.signing_key")?;
        GrantSigner::from_pkcs8_pem(&pem, &self.grants.issuer, &self.grants.audience).map_err(|e| {
            self.bad(
                "grants.signing_key",
                format!("{}: {e}", self.grants.signing_key.display()),
            )
        })
    }

    /// The audit checkpoint signing key (`audit.signing_key`).
    pub fn audit_signer(&self) -> Result<Ed25519Signer, ConfigError> {
        let path = &self.audit.signing_key;
        let pem = std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: self.file.display().to_string(),
            field: "audit.signing_key".into(),
            message: format!("cannot read `{}`: {e}", path.display()),
            fix: "create the key with `openssl genpkey -algorithm ed25519 -out FILE` (or `sallyport init`), and keep it off the audit folder".into(),
        })?;
        Ed25519Signer::from_pkcs8_pem(&pem)
            .map_err(|e| self.bad("audit.signing_key", format!("{}: {e}", path.display())))
    }

    /// The broker's TLS server configuration (`tls.ca`, `tls.cert`, `tls.key`): client
    /// certificates from the broker CA required, HTTP/1.1.
    pub fn server_tls(&self) -> Result<rustls::ServerConfig, ConfigError> {
        let ca = self.read(&self.tls.ca, "tls.ca")?;
        let cert = self.read(&self.tls.cert, "tls.cert")?;
        let key = self.read(&self.tls.key, "tls.key")?;
        let (ca_n, cert_n, key_n) = (
            self.tls.ca.display().to_string(),
            self.tls.cert.display().to_string(),
            self.tls.key.display().to_string(),
        );
        sallyport_certs::tls::server_config(
            PemFiles {
                ca: (&ca, &ca_n),
                cert: (&cert, &cert_n),
                key: (&key, &key_n),
            },
            &[b"http/1.1"],
        )
        .map_err(|e| self.bad("tls", e))
    }

    /// Reads a file the configuration names under `field`.
    fn read(&self, path: &Path, field: &str) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: self.file.display().to_string(),
            field: field.into(),
            message: format!("cannot read `{}`: {e}", path.display()),
            fix: format!(
                "point `{field}` at an existing file, or create the PKI with `sallyport init --dir DIR`"
            ),
        })
    }

    /// A file named under `field` was read but is not usable.
    fn bad(&self, field: &str, e: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            location: self.file.display().to_string(),
            field: field.into(),
            message: e.to_string(),
            fix: format!(
                "point `{field}` at the file `sallyport init` created, or create a new one"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
