//! `sallyport config check`: loads a configuration the way `serve` does (every key, every policy,
//! webhook and SIEM sink, and the keys and certificates it names) and prints what it found: the
//! server settings, each customer with its targets, its policies with their ids and digest, and its
//! sinks. An invalid file exits 64 with the same error `serve` would give. `sallyport config
//! example` prints the reference configuration, every key with its meaning, so the documentation
//! of each setting a configuration error names travels with the binary.

use std::path::PathBuf;

use clap::Subcommand;
use sallyport_config::sinks::Origin;
use sallyport_config::{Config, SinkKind};

use super::Failure;

/// `sallyport config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and every file it names, and print what it configures.
    ///
    /// Exits 0 when a broker would start on it, and 64 with the file, line, key and fix otherwise.
    Check {
        /// The configuration file, e.g. /etc/sallyport/sallyport.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the reference configuration: every key, with its meaning and default, commented.
    ///
    /// The settings a configuration error names are documented here; the output is itself a valid
    /// configuration once its paths exist (`sallyport config example > sallyport.toml`).
    Example,
}

/// The reference configuration, `deploy/sallyport.toml` in the sources.
const EXAMPLE: &str = include_str!("../../../deploy/sallyport.toml");

/// Runs a `config` command.
pub fn run(cmd: ConfigCommand) -> Result<(), Failure> {
    match cmd {
        ConfigCommand::Check { config } => {
            let cfg = Config::load(&config)?;
            // What `serve` reads before it listens: a broker never starts on a key it cannot use.
            cfg.server_tls()?;
            cfg.grant_signer()?;
            cfg.audit_signer()?;
            print!("{}", summary(&cfg));
            Ok(())
        }
        ConfigCommand::Example => {
            use std::io::Write as _;
            // A reader that stops early (`| head`) ends it quietly.
            let _ = std::io::stdout().write_all(EXAMPLE.as_bytes());
            Ok(())
        }
    }
}

/// What a valid configuration sets up, as `config check` prints it.
fn summary(cfg: &Config) -> String {
    let mut out = format!("{}: valid\n", cfg.file.display());
    out += &format!(
        "server: listen {}, public address {}, data {}, trust domain {}\n",
        cfg.listen,
        cfg.public_address,
        cfg.data_dir.display(),
        cfg.trust_domain
    );
    out += &format!(
        "tls: ca {}, certificate {}, key {}{}\n",
        cfg.tls.ca.display(),
        cfg.tls.cert.display(),
        cfg.tls.key.display(),
        if cfg.tls.crl { ", CRL published" } else { "" }
    );
    out += &match cfg.admin.listen {
        Some(a) => format!("admin: health, readiness and metrics on http://{a}\n"),
        None => {
            "admin: no admin listener (set [admin] listen for health checks and metrics)\n".into()
        }
    };
    out += &format!("customers: {}\n", cfg.customers.len());
    if cfg.customers.is_empty() {
        out +=
            "  (none: the broker starts, and no tunnel can be opened until a customer is added)\n";
    }
    for c in &cfg.customers {
        out += &format!("  {} (time zone {})\n", c.id, c.timezone);
        out += &format!("    targets: {}\n", c.targets.len());
        for t in &c.targets {
            let mut notes = vec![t.protocol.clone()];
            if !t.tags.is_empty() {
                notes.push(format!("tags {}", t.tags.join(", ")));
            }
            if t.record {
                notes.push("recorded".into());
            }
            out += &format!("      {} -> {} ({})\n", t.id, t.address, notes.join("; "));
        }
        out += &format!(
            "    policy: {} (sha256 {})\n",
            c.policy_path.display(),
            c.policy.digest()
        );
        let ids = c.policy.policy_ids();
        if ids.is_empty() {
            out += "      (no policy: every request is denied)\n";
        }
        for id in ids {
            out += &format!("      {id}\n");
        }
        match &c.webhook {
            Some(w) => out += &format!("    webhook: {}/...\n", Origin::of(&w.url)),
            None => out += "    webhook: none\n",
        }
        if c.siem.is_empty() {
            out += "    siem: none\n";
        }
        for s in &c.siem {
            out += &format!("    siem: {}\n", sink(s));
        }
    }
    out
}

/// A SIEM sink as `config check` prints it: its kind and where it goes, never a path or token.
fn sink(s: &SinkKind) -> String {
    match s {
        SinkKind::Syslog { address } => format!("syslog {address}"),
        SinkKind::SyslogTls { address, .. } => format!("syslog-tls {address}"),
        SinkKind::Https { url, token, .. } => format!(
            "https {}/...{}",
            Origin::of(url),
            if token.is_some() {
                " (bearer token)"
            } else {
                ""
            }
        ),
    }
}
