//! Validation: from the file structs to the validated [`Config`], with every error naming the file,
//! the line (from TOML spans), the field and the fix. Files the configuration names (policies,
//! webhook secrets, SIEM CAs and tokens) are read and checked here, so a broker never starts on a
//! setting it cannot use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sallyport_ids::{CustomerId, TargetId};
use sallyport_policy::CustomerPolicy;
use toml::Spanned;

use crate::file::{FileConfig, FileSiem, FileWebhook};
use crate::keys;
use crate::{
    AdminSettings, AuditSettings, Config, ConfigError, Customer, GrantSettings, Limits,
    RequestSettings, SinkKind, Target, TlsPaths, WebhookTarget,
};

pub(crate) struct Validator<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

impl Validator<'_> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn loc(&self, line: Option<usize>) -> String {
        match line {
            Some(l) => format!("{}:{l}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    /// A TOML error as a [`ConfigError`]: the key it is about (from the document's spans), its
    /// line, and for an unknown key the keys its table takes and the nearest one.
    pub(crate) fn parse_error(&self, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| self.line(s.start));
        let message = e.message().trim().to_owned();
        let path = e.span().and_then(|s| keys::path_at(self.text, s.start));
        if let Some(unknown) = keys::UnknownKey::from_message(&message) {
            // The span is the unknown key itself; its table is everything before it.
            let field = path.unwrap_or_else(|| unknown.key.clone());
            let table = keys::table_of(&field);
            return ConfigError {
                location: self.loc(line),
                message: format!("unknown key `{}` in {table}", unknown.key),
                fix: unknown.fix(&table),
                field,
            };
        }
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k.to_owned());
        let field = match missing {
            // The span is the table that lacks the key.
            Some(key) => match e.span().and_then(|s| keys::table_at(self.text, s)) {
                Some(table) if !table.is_empty() => format!("{table}.{key}"),
                _ => key,
            },
            None => path.unwrap_or_else(|| "(syntax)".into()),
        };
        ConfigError {
            location: self.loc(line),
            fix: if field == "(syntax)" {
                format!("correct the TOML at that line; {}", keys::DOCUMENTED)
            } else {
                format!(
                    "see `{}` in `sallyport config example` for what it takes",
                    field.rsplit('.').next().unwrap_or(&field)
                )
            },
            field,
            message,
        }
    }

    pub(crate) fn err<T>(
        &self,
        at: &Spanned<T>,
        field: &str,
        message: String,
        fix: &str,
    ) -> ConfigError {
        ConfigError {
            location: self.loc(Some(self.line(at.span().start))),
            field: field.into(),
            message,
            fix: fix.into(),
        }
    }

    pub(crate) fn rel(&self, p: &str) -> PathBuf {
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
    ) -> Result<WebhookTarget, ConfigError> {
        let url: http::Uri = w.url.get_ref().parse().map_err(|e| {
            self.err(
                &w.url,
                &field("webhook.url"),
                format!("not a URL: {e}"),
                "use https://HOST/PATH (http:// only to a loopback address)",
            )
        })?;
        if let Some(m) = WebhookTarget::url_problem(&url) {
            return Err(self.err(&w.url, &field("webhook.url"), m, "use an https:// URL"));
        }
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
        Ok(WebhookTarget {
            url,
            secret,
            max_attempts: *w.max_attempts.get_ref(),
            first_backoff: Duration::from_millis(w.first_backoff_ms),
        })
    }

    fn siem(&self, s: &FileSiem, field: &dyn Fn(&str) -> String) -> Result<SinkKind, ConfigError> {
        let tls = || -> Result<Arc<rustls::ClientConfig>, ConfigError> {
            let Some(ca) = &s.ca else {
                return Ok(sallyport_certs::tls::default_client());
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
            sallyport_certs::tls::client_trusting(&pem, &path.display().to_string())
                .map_err(|e| bad(e.to_string()))
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
                let url: http::Uri = u.get_ref().parse().map_err(|e| {
                    self.err(u, &field("url"), format!("not a URL: {e}"), "use https://HOST/PATH")
                })?;
                if let Some(m) = WebhookTarget::url_problem(&url) {
                    return Err(self.err(u, &field("url"), m, "use an https:// URL"));
                }
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

    pub(crate) fn validate(&self, f: FileConfig) -> Result<Config, ConfigError> {
        let listen: SocketAddr = f.server.listen.get_ref().parse().map_err(|e| {
            self.err(
                &f.server.listen,
                "server.listen",
                format!("`{}` is not an address: {e}", f.server.listen.get_ref()),
                "use IP:PORT, e.g. \"127.0.0.1:8443\" or \"0.0.0.0:8443\"",
            )
        })?;
        let admin = self.admin(&f, listen)?;
        let mut taken = vec![(listen, "server.listen")];
        if let Some(a) = admin.listen {
            taken.push((a, "admin.listen"));
        }
        let web = self.web(
            &f.web,
            &taken,
            &self.rel(&f.tls.cert),
            &self.rel(&f.tls.key),
        )?;
        let provider_oidc = f
            .provider
            .oidc
            .as_ref()
            .map(|o| self.provider_signin(o))
            .transpose()?;
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
            (
                "limits.unauthenticated_failures_per_minute",
                u64::from(l.unauthenticated_failures_per_minute),
            ),
            (
                "limits.unauthenticated_failure_burst",
                u64::from(l.unauthenticated_failure_burst),
            ),
            (
                "limits.refusals_recorded_per_interval",
                u64::from(l.refusals_recorded_per_interval),
            ),
            ("limits.max_connections", l.max_connections as u64),
            ("limits.max_handshakes", l.max_handshakes as u64),
            (
                "limits.max_handshakes_per_source",
                l.max_handshakes_per_source as u64,
            ),
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
        for (name, value, max) in [
            (
                "limits.request_timeout_seconds",
                l.request_timeout_seconds,
                3600,
            ),
            (
                "limits.refusal_interval_seconds",
                l.refusal_interval_seconds,
                3600,
            ),
        ] {
            if !(1..=max).contains(&value) {
                return Err(ConfigError {
                    location: self.loc(None),
                    field: name.into(),
                    message: format!("{value} is out of range"),
                    fix: format!("use 1 to {max} seconds"),
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
                fix: "correct the policy file: the entity types, actions and context it may use are in the README's \"Policies (Cedar)\""
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
            let oidc = c
                .oidc
                .as_ref()
                .map(|o| self.customer_signin(o, ci))
                .transpose()?;
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
                oidc,
            });
        }
        self.distinct_issuers(provider_oidc.as_ref(), &customers)?;
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
                crl: f.tls.crl,
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
                // Handshakes hold connection slots too: more than `max_connections` is never in use.
                max_handshakes: l.max_handshakes.min(l.max_connections),
                max_handshakes_per_source: l
                    .max_handshakes_per_source
                    .min(l.max_handshakes)
                    .min(l.max_connections),
                request_timeout: Duration::from_secs(l.request_timeout_seconds),
                auth_failures_per_minute: l.auth_failures_per_minute,
                auth_failure_burst: l.auth_failure_burst,
                unauthenticated_failures_per_minute: l.unauthenticated_failures_per_minute,
                unauthenticated_failure_burst: l.unauthenticated_failure_burst,
                refusals_recorded_per_interval: l.refusals_recorded_per_interval,
                refusal_interval: Duration::from_secs(l.refusal_interval_seconds),
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
            admin,
            web,
            provider_oidc,
            customers,
        })
    }

    /// `[admin] listen`: an IP:PORT other than the broker's own.
    fn admin(&self, f: &FileConfig, listen: SocketAddr) -> Result<AdminSettings, ConfigError> {
        let Some(at) = &f.admin.listen else {
            return Ok(AdminSettings::default());
        };
        let addr: SocketAddr = at.get_ref().parse().map_err(|e| {
            self.err(
                at,
                "admin.listen",
                format!("`{}` is not an address: {e}", at.get_ref()),
                "use IP:PORT, e.g. \"127.0.0.1:9090\"; remove the key to turn the admin listener off",
            )
        })?;
        if addr.port() != 0 && addr == listen {
            return Err(self.err(
                at,
                "admin.listen",
                format!("{addr} is also server.listen"),
                "give the admin listener a port of its own, e.g. \"127.0.0.1:9090\"",
            ));
        }
        Ok(AdminSettings { listen: Some(addr) })
    }
}
