//! The configuration file as written: one `File*` struct per table, unknown keys refused, defaults
//! filled in. [`crate::validate`] turns them into the validated [`crate::Config`].

use serde::Deserialize;
use toml::Spanned;

use crate::OnAuditFailure;
use crate::signin::{FileOidc, FileProvider, FileWeb};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) server: FileServer,
    #[serde(default)]
    pub(crate) tls: FileTls,
    #[serde(default)]
    pub(crate) grants: FileGrants,
    #[serde(default)]
    pub(crate) limits: FileLimits,
    #[serde(default)]
    pub(crate) requests: FileRequests,
    #[serde(default)]
    pub(crate) audit: FileAudit,
    #[serde(default)]
    pub(crate) admin: FileAdmin,
    #[serde(default)]
    pub(crate) web: FileWeb,
    #[serde(default)]
    pub(crate) provider: FileProvider,
    #[serde(default)]
    pub(crate) customers: Vec<FileCustomer>,
}

/// `[admin]`: the plain-HTTP listener for health, readiness and metrics; off without `listen`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAdmin {
    #[serde(default)]
    pub(crate) listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FileAudit {
    pub(crate) signing_key: String,
    pub(crate) checkpoint_every_records: u64,
    pub(crate) checkpoint_every_seconds: u64,
    pub(crate) on_failure: OnAuditFailure,
    pub(crate) retention_days: u32,
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
pub(crate) struct FileRequests {
    pub(crate) pending_expiry_seconds: u64,
    pub(crate) sweep_interval_seconds: u64,
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
pub(crate) struct FileServer {
    pub(crate) listen: Spanned<String>,
    #[serde(default = "d_data_dir")]
    pub(crate) data_dir: String,
    #[serde(default)]
    pub(crate) trust_domain: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) public_address: Option<String>,
    #[serde(default)]
    pub(crate) worker_threads: usize,
}

fn d_data_dir() -> String {
    "data".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FileTls {
    pub(crate) ca: String,
    pub(crate) ca_key: String,
    pub(crate) cert: String,
    pub(crate) key: String,
    pub(crate) crl: bool,
}

impl Default for FileTls {
    fn default() -> Self {
        Self {
            ca: "pki/ca.pem".into(),
            ca_key: "pki/ca.key".into(),
            cert: "pki/server.pem".into(),
            key: "pki/server.key".into(),
            crl: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FileGrants {
    pub(crate) signing_key: String,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) leeway_seconds: u64,
    pub(crate) max_minutes: u32,
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
pub(crate) struct FileLimits {
    pub(crate) handshake_timeout_seconds: u64,
    pub(crate) header_timeout_seconds: u64,
    pub(crate) idle_timeout_seconds: u64,
    pub(crate) connect_timeout_seconds: u64,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_handshakes: usize,
    pub(crate) max_handshakes_per_source: usize,
    pub(crate) request_timeout_seconds: u64,
    pub(crate) auth_failures_per_minute: u32,
    pub(crate) auth_failure_burst: u32,
    pub(crate) unauthenticated_failures_per_minute: u32,
    pub(crate) unauthenticated_failure_burst: u32,
    pub(crate) refusals_recorded_per_interval: u32,
    pub(crate) refusal_interval_seconds: u64,
    pub(crate) request_filings_per_minute: u32,
    pub(crate) request_filing_burst: u32,
    pub(crate) api_calls_per_minute: u32,
    pub(crate) api_call_burst: u32,
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
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            request_timeout_seconds: 30,
            auth_failures_per_minute: 10,
            auth_failure_burst: 5,
            unauthenticated_failures_per_minute: 60,
            unauthenticated_failure_burst: 60,
            refusals_recorded_per_interval: 20,
            refusal_interval_seconds: 60,
            request_filings_per_minute: 6,
            request_filing_burst: 10,
            api_calls_per_minute: 600,
            api_call_burst: 120,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileCustomer {
    pub(crate) id: Spanned<String>,
    pub(crate) policy: Spanned<String>,
    #[serde(default)]
    pub(crate) timezone: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) targets: Vec<FileTarget>,
    #[serde(default)]
    pub(crate) webhook: Option<FileWebhook>,
    #[serde(default)]
    pub(crate) siem: Vec<FileSiem>,
    #[serde(default)]
    pub(crate) oidc: Option<FileOidc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSiem {
    pub(crate) kind: Spanned<String>,
    #[serde(default)]
    pub(crate) address: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) url: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) ca: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileWebhook {
    pub(crate) url: Spanned<String>,
    pub(crate) secret_file: Spanned<String>,
    #[serde(default = "d_attempts")]
    pub(crate) max_attempts: Spanned<u32>,
    #[serde(default = "d_backoff")]
    pub(crate) first_backoff_ms: u64,
}

fn d_attempts() -> Spanned<u32> {
    Spanned::new(0..0, 5)
}

fn d_backoff() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTarget {
    pub(crate) id: Spanned<String>,
    pub(crate) address: Spanned<String>,
    #[serde(default = "d_protocol")]
    pub(crate) protocol: String,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) record: bool,
}

fn d_protocol() -> String {
    "tcp".into()
}
