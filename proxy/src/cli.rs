//! The `sallyport` command line: the commands and their flags, logging set-up, exit codes, and the
//! dispatch to each command group: [`serve`] (the broker, and its embedded demo), [`access`] (the API
//! commands of technicians, approvers and auditors), [`connect`] (the technician's tunnels),
//! [`locks`] (`lock`, `unlock`, `locks`), [`login`] (an identity from a sign-in at an identity
//! provider), [`audit`] (verify, bundle, capture, export), [`certs`]
//! (identity folders), [`config`] (`config check`), [`reload`], [`health`] (a readiness probe of
//! the admin listener), and `init` and `grant` (break-glass) here. What a command does lives in the
//! library crates; this module parses, calls, and prints.

pub mod access;
pub mod audit;
pub mod certs;
pub mod config;
pub mod connect;
pub mod health;
pub mod locks;
pub mod login;
pub mod reload;
pub mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use sallyport_config::{Config, ConfigError};

pub use access::ClientArgs;

/// Exit code for an invalid configuration (EX_USAGE... EX_DATAERR family: sysexits 64).
pub const EXIT_CONFIG: u8 = 64;

/// The data directory of `serve` on its embedded defaults, where the audit commands look by default.
pub const DEFAULT_DATA: &str = "sallyport-data/data";

/// Why a command failed: its configuration (exit 64, naming file, field and fix), or anything else
/// (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// The configuration, or a file it names, is not usable.
    Config(ConfigError),
    /// The broker refused a configuration (exit 64, like an invalid file): its words.
    Refused(String),
    /// Anything else.
    Other(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.into())
    }
}

/// Sallyport: just-in-time, customer-approved, audited access from MSP technicians to customer targets.
///
/// Start here: `sallyport serve` runs the broker on embedded defaults (./sallyport-data, created on
/// first run) and prints a session to try.
#[derive(Debug, Parser)]
#[command(name = "sallyport", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    ///
    /// Without --config, uses ./sallyport-data (running `init` there first if needed), serves the demo
    /// target, and prints the demo identities and a session that works as printed.
    Serve {
        /// Configuration file (`sallyport config example` prints every key).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen here instead of `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Threads running connections, instead of `server.worker_threads` (0: one per core; 1: one
        /// thread for everything).
        #[arg(long, value_name = "N")]
        worker_threads: Option<usize>,
        /// On the embedded defaults (no --config): the port of the demo target acme/web on
        /// 127.0.0.1 (default 7070), when 7070 is taken.
        #[arg(long, value_name = "N", conflicts_with = "config")]
        demo_port: Option<u16>,
        /// Serve health, readiness and metrics over plain HTTP here, instead of `admin.listen`
        /// (port 0 picks a free port; the address is printed).
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// Serve sign-in (HTTPS, no client certificate) here, instead of `web.listen` (port 0 picks
        /// a free port; the address is printed). Without it, `--listen HOST:0` puts a configured
        /// sign-in listener on a free port too.
        #[arg(long, value_name = "ADDR")]
        web_listen: Option<SocketAddr>,
    },
    /// Ask a broker's admin listener whether it is ready: exits 0 when it is, 1 (saying why) when not.
    ///
    /// GETs http://ADDR/readyz (audit trail writable, store answering, policies loaded), for a
    /// container HEALTHCHECK or a script; no certificate needed.
    Health {
        /// The admin listener, HOST:PORT (`admin.listen`), e.g. 127.0.0.1:9090.
        #[arg(long, value_name = "ADDR")]
        admin: String,
    },
    /// Create a broker folder: config, PKI, grant and audit signing keys; the demo, or with --host a
    /// real broker.
    ///
    /// Without --host: the ready-to-run demo. It listens on 127.0.0.1:8443, keeps its data in
    /// DIR/data, and has the demo customer `acme` and the demo identities (technician, approver,
    /// admin) in DIR/identities.
    ///
    /// With --host: a real broker. It listens on all interfaces (0.0.0.0:8443), the first --host is
    /// its public address (written into every identity folder by `certs issue`), its state lives in
    /// /var/lib/sallyport (or --data-dir), and it has no customer and no identity: add customers to
    /// the config, check it with `sallyport config check`, and issue identities with `sallyport certs
    /// issue`. For the systemd unit, pass --group sallyport so that the service user can read the
    /// config and the broker's keys (README: "Running a real broker").
    Init {
        /// Folder to create (e.g. /etc/sallyport).
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address of the broker (repeatable): all go into the server certificate and
        /// the first is the public address. Makes this a real broker's folder (see above); without
        /// it, the demo's localhost and 127.0.0.1.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// A real broker's state directory (`server.data_dir`), absolute; needs --host.
        #[arg(long, value_name = "DIR", requires = "hosts")]
        data_dir: Option<PathBuf>,
        /// Make DIR, its folders (0750), the config, policies and the broker's own keys (0640)
        /// readable by GROUP (a name or a numeric id): the service user's group. The CA key stays
        /// 0600: only `certs issue` needs it.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Replace an existing setup in DIR.
        #[arg(long)]
        force: bool,
    },
    /// The configuration file: check it before starting or reloading a broker.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// The audit trail: verify it (no secret needed).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Certificates for people.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Break-glass: mint a grant for a technician's certificate without approval.
    ///
    /// For emergencies only, and never silent: the grant is on the customer's audit trail (with
    /// your reason, ticket, admin identity, operating-system user and host) before the token is
    /// printed, listed as break-glass wherever grants and sessions are listed, and announced to the
    /// customer's webhook (`grant_break_glass`) before this command returns. Run it on the broker
    /// host; it can run next to a live broker.
    Grant {
        /// The broker's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The technician's client certificate (PEM), e.g. IDENTITY/cert.pem.
        #[arg(long)]
        technician_cert: PathBuf,
        /// Customer id.
        #[arg(long)]
        customer: String,
        /// Target id.
        #[arg(long)]
        target: String,
        /// Grant length in minutes.
        #[arg(long)]
        minutes: u32,
        /// Why there is no time for an approval (recorded, and told to the customer).
        #[arg(long)]
        reason: String,
        /// The incident or change ticket.
        #[arg(long)]
        ticket: Option<String>,
        /// Your admin identity folder (from `sallyport certs issue admin`), to put your identity on
        /// the record next to the operating-system user and host.
        #[arg(long, value_name = "DIR")]
        identity: Option<PathBuf>,
        /// Write the token to FILE (created 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Revoke a grant: its live tunnels close at once and the token is refused from then on.
    ///
    /// Allowed for the customer's approvers, the grant's technician and admins.
    Revoke {
        /// The grant id (`gid`), e.g. g-2f0c....
        grant_id: String,
        /// Why the access ends (recorded on the customer's audit trail).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lock an identity, or one certificate: refused from then on, its live tunnels closed at once.
    ///
    /// A provider admin locks any identity but their own, everywhere (or, with --customer, for one
    /// customer). A customer's approver locks technicians, for that customer only: its targets, its
    /// requests and its grants. Name what to lock with --spiffe-id (every certificate of that
    /// identity), --cert PEMFILE, or --serial with --sha256 (one certificate). The lock is recorded
    /// on the trail and sent to the webhooks of the customers it concerns, and lasts until `sallyport
    /// unlock`, or until --until / --minutes.
    Lock {
        #[command(flatten)]
        args: locks::LockArgs,
    },
    /// Reload the broker's configuration and policies without a restart (provider admins).
    ///
    /// The broker reads its configuration file again, with every policy. A bad file is refused
    /// with its error (exit 64) and the configuration in force keeps serving. A reload changes the
    /// customers (targets, policies, webhooks, SIEM sinks); other sections need a restart. Live
    /// tunnels the new configuration no longer allows are closed with reason `policy changed`,
    /// and the reload is on the audit trail (`config_reloaded`, and `policy_loaded` with each new
    /// policy digest). On the broker host, `kill -HUP` (or `systemctl reload sallyport`) does the
    /// same.
    Reload {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift a lock (LOCK_ID from `sallyport locks`): what it barred works again.
    ///
    /// Admins lift any lock; a customer's approvers lift their customer's locks.
    Unlock {
        /// The lock id, e.g. l-7d2a....
        lock_id: String,
        /// Why (recorded on the trail).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List locks: the active ones, or with --all also those lifted or ended.
    ///
    /// Admins see every lock; approvers and auditors their customer's locks and the locks of
    /// technicians everywhere; technicians the locks on themselves.
    Locks {
        /// Also locks that were lifted or have ended (the newest 1000).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask for just-in-time access to CUSTOMER/TARGET (technicians). Prints the request id.
    ///
    /// The customer's policy decides whether the request may be filed and how many of the customer's
    /// approvers must approve it. Once approved, `sallyport connect CUSTOMER/TARGET` fetches the grant.
    Request {
        /// `customer/target`, e.g. acme/db01.
        target: String,
        /// Minutes of access (the window starts at approval, or at --start-at).
        #[arg(long)]
        minutes: u32,
        /// What the access is for (shown to the approvers and recorded).
        #[arg(long)]
        reason: String,
        /// Change or incident ticket.
        #[arg(long)]
        ticket: Option<String>,
        /// Start of the window, RFC 3339 (e.g. 2026-01-31T22:00:00Z); default: at approval.
        #[arg(long)]
        start_at: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List access requests: a technician's own, or the approver's or auditor's customer's.
    Requests {
        /// Only this status: pending, approved, denied, expired or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign in at an identity provider and get a short-lived identity folder.
    ///
    /// Makes a key pair here (the private key never leaves this machine), opens the sign-in in a
    /// browser (--no-browser prints the URL), and writes DIR as `certs issue` does: a certificate
    /// from the broker valid for the IdP's `cert_hours`, with the groups of the sign-in and whether
    /// it used multi-factor authentication. Technicians and admins sign in at the provider's IdP;
    /// a customer's approvers and auditors with --customer at that customer's own.
    Login(login::LoginArgs),
    /// Approve a pending request (the customer's approvers; never the requester).
    ///
    /// For a customer with its own identity provider, the approval is a fresh sign-in there that
    /// the IdP signs for this request and comment: the browser opens on it (--no-browser prints
    /// the URL) and the command waits until it is done.
    Approve {
        /// The request id, e.g. r-5c1e....
        request_id: String,
        /// A note recorded with the approval.
        #[arg(long)]
        comment: Option<String>,
        /// Print the sign-in URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny a pending request; one denial ends it (signed at the customer's identity provider, as
    /// for `approve`, when it has one).
    Deny {
        /// The request id.
        request_id: String,
        /// Why (shown to the technician and recorded).
        #[arg(long)]
        reason: String,
        /// Print the sign-in URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List grants: a technician's own, or the approver's or auditor's customer's. Break-glass grants
    /// (minted without approval) are marked, with who minted them and why.
    Grants {
        /// Only break-glass grants.
        #[arg(long)]
        break_glass: bool,
        /// Only this customer (admins and technicians; approvers and auditors see their own).
        #[arg(long)]
        customer: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tunnel sessions with bytes and durations (a technician's own, or the customer's).
    Sessions {
        /// Only live sessions.
        #[arg(long)]
        live: bool,
        /// Only this customer (admins and technicians; approvers and auditors see their own).
        #[arg(long)]
        customer: Option<String>,
        /// End this live session instead of listing (approvers, admins, its technician).
        #[arg(long, value_name = "SESSION_ID")]
        end: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reach a target through the broker: a local port (--listen), a SOCKS5 proxy for every target
    /// you hold a grant for (--socks), or one tunnel over stdin/stdout (--stdio, for ssh
    /// ProxyCommand).
    ///
    /// Without --grant, fetches the grant of your approved request for CUSTOMER/TARGET (--wait:
    /// waits for a pending one to be decided). Says why a tunnel was refused or ended, and warns
    /// five minutes before the grant ends.
    Connect {
        #[command(flatten)]
        args: connect::ConnectArgs,
    },
    /// Withdraw your own pending request (technicians): it is `cancelled`, on the customer's trail
    /// and told to the customer's webhook, and nobody can approve it after.
    Cancel {
        /// The request id, e.g. r-5c1e....
        request_id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What you may request, per customer: for a technician, the targets each customer's policy
    /// would let you file a request for now (with the longest window and the approvals needed);
    /// for approvers and auditors, their customer's targets.
    Targets {
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    sallyport_certs::tls::install_default_provider();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(cfg)) => {
            eprintln!("sallyport: invalid configuration: {cfg}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Refused(why)) => {
            eprintln!("sallyport: {why}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("sallyport: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Serve {
            config,
            listen,
            worker_threads,
            demo_port,
            admin_listen,
            web_listen,
        } => serve::serve(
            config,
            listen,
            worker_threads,
            demo_port,
            admin_listen,
            web_listen,
        ),
        Command::Health { admin } => health::health(&admin).map_err(Failure::Other),
        Command::Init {
            dir,
            hosts,
            data_dir,
            group,
            force,
        } => init(dir, hosts, data_dir, group, force).map_err(Failure::Other),
        Command::Config { command } => config::run(command),
        Command::Certs {
            command: certs::CertsCommand::Issue { role },
        } => certs::issue(role),
        Command::Audit { command } => audit::run(command).map_err(Failure::Other),
        Command::Grant {
            config,
            technician_cert,
            customer,
            target,
            minutes,
            reason,
            ticket,
            identity,
            out,
        } => {
            let cfg = Config::load(&config)?;
            let token = crate::breakglass::mint(
                &cfg,
                &crate::breakglass::BreakGlass {
                    technician_cert: &technician_cert,
                    customer: &customer,
                    target: &target,
                    minutes,
                    reason: &reason,
                    ticket: ticket.as_deref(),
                    identity: identity.as_deref(),
                },
            )?;
            crate::init::hand_back(&cfg.data_dir)?;
            match out {
                None => println!("{token}"),
                Some(file) => {
                    sallyport_certs::identity_dir::write_file(&file, &format!("{token}\n"), 0o600)
                        .map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
                    eprintln!("token written to {} (mode 0600)", file.display());
                }
            }
            Ok(())
        }
        Command::Revoke {
            grant_id,
            reason,
            client,
        } => access::revoke(&grant_id, &reason, &client).map_err(Failure::Other),
        Command::Lock { args } => locks::lock(&args).map_err(Failure::Other),
        Command::Reload { client } => reload::reload(&client),
        Command::Unlock {
            lock_id,
            reason,
            client,
        } => locks::unlock(&lock_id, reason, &client).map_err(Failure::Other),
        Command::Locks { all, client } => locks::locks(all, &client).map_err(Failure::Other),
        Command::Request {
            target,
            minutes,
            reason,
            ticket,
            start_at,
            client,
        } => access::request(&target, minutes, reason, ticket, start_at, &client)
            .map_err(Failure::Other),
        Command::Requests { status, client } => {
            access::requests(status.as_deref(), &client).map_err(Failure::Other)
        }
        Command::Login(args) => login::login(&args).map_err(Failure::Other),
        Command::Approve {
            request_id,
            comment,
            no_browser,
            client,
        } => access::approve(&request_id, comment, no_browser, &client).map_err(Failure::Other),
        Command::Deny {
            request_id,
            reason,
            no_browser,
            client,
        } => access::deny(&request_id, &reason, no_browser, &client).map_err(Failure::Other),
        Command::Sessions {
            live,
            customer,
            end,
            client,
        } => access::sessions(live, customer, end, &client).map_err(Failure::Other),
        Command::Grants {
            break_glass,
            customer,
            client,
        } => access::grants(break_glass, customer, &client).map_err(Failure::Other),
        Command::Connect { args } => connect::connect(&args).map_err(Failure::Other),
        Command::Cancel {
            request_id,
            reason,
            client,
        } => access::cancel(&request_id, reason, &client).map_err(Failure::Other),
        Command::Targets { client } => access::targets(&client).map_err(Failure::Other),
    }
}

/// `sallyport init`: the demo broker folder, or with `--host` a real broker's; prints what it
/// wrote and what to do next.
fn init(
    dir: PathBuf,
    hosts: Vec<String>,
    data_dir: Option<PathBuf>,
    group: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    use crate::init::{InitMode, STATE_DIR};
    let (hosts, mode) = if hosts.is_empty() {
        (vec!["localhost".into(), "127.0.0.1".into()], InitMode::Demo)
    } else {
        let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(STATE_DIR));
        (hosts, InitMode::Production { data_dir })
    };
    let group = group
        .as_deref()
        .map(crate::init::ServiceGroup::resolve)
        .transpose()?;
    let written = crate::init::init(&crate::init::InitOptions {
        dir: dir.clone(),
        hosts: hosts.clone(),
        force,
        mode: mode.clone(),
        group: group.clone(),
    })?;
    let cfg = &written.cfg;
    let config = written.config.display();
    let kind = match mode {
        InitMode::Demo => "the demo broker",
        InitMode::Production { .. } => "a real broker",
    };
    println!("wrote {kind} at {}:", dir.display());
    println!(
        "  config      {config} (listen {}, public address {}, data {})",
        cfg.listen,
        cfg.public_address,
        cfg.data_dir.display()
    );
    println!(
        "  CA          {} (its key {} is 0600: only `certs issue` needs it)",
        cfg.tls.ca.display(),
        cfg.tls.ca_key.display()
    );
    println!(
        "  server      {} for {}",
        cfg.tls.cert.display(),
        hosts.join(", ")
    );
    let access = match &group {
        Some(g) => format!("0640, readable by group {}", g.name),
        None => "0600".into(),
    };
    println!(
        "  keys        {}, {}, {} ({access})",
        cfg.tls.key.display(),
        cfg.grants.signing_key.display(),
        cfg.audit.signing_key.display()
    );
    match cfg.customers.first() {
        Some(c) => println!("  policy      {}", c.policy_path.display()),
        None => println!("  policies    {} (empty)", dir.join("policies").display()),
    }
    for identity in &written.identities {
        let which = identity
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("  {which:<11} {}", identity.dir.display());
    }
    if written.identities.is_empty() {
        println!("no customer and no identity yet. Next:");
        println!(
            "  1. add customers, their targets and policies to {config} (every key: `sallyport config example`)"
        );
        println!("  2. check it:        sallyport config check --config {config}");
        println!(
            "  3. issue people:    sallyport certs issue technician NAME --provider PROVIDER --group GROUP --dir {} --out NAME",
            dir.display()
        );
        println!(
            "  4. start it:        systemctl enable --now sallyport   (or: sallyport serve --config {config})"
        );
        if group.is_none() {
            println!(
                "note: the broker's keys are 0600 for the user who ran init; for the systemd unit (user sallyport) run init with --group sallyport"
            );
        }
    } else {
        println!("run it with: sallyport serve --config {config}");
    }
    Ok(())
}

/// Who runs this command: the operating-system user.
pub(crate) fn operator() -> String {
    use std::os::unix::fs::MetadataExt;
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| match std::fs::metadata("/proc/self") {
            Ok(m) => format!("uid {}", m.uid()),
            Err(_) => "unknown operator".into(),
        })
}

/// A runtime for the client commands.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
