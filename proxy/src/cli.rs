//! The `sallyport` command line: argument parsing, logging set-up, exit codes, and the human output of
//! each command. Logic lives in the other modules.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use sallyport_certs::identity_dir::IdentityDir;
use sallyport_ids::{GroupName, Principal, SpiffeId};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};

/// Exit code for an invalid configuration (EX_USAGE... EX_DATAERR family: sysexits 64).
pub const EXIT_CONFIG: u8 = 64;

/// The data directory of `serve` on its embedded defaults, where the audit commands look by default.
const DEFAULT_DATA: &str = "sallyport-data/data";

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
        /// Configuration file (see deploy/sallyport.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen here instead of `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Threads running connections, instead of `server.worker_threads` (0: one per core; 1: one
        /// thread for everything).
        #[arg(long, value_name = "N")]
        worker_threads: Option<usize>,
    },
    /// Create a ready-to-run broker folder: config, PKI, grant signing key, demo customer and identities.
    Init {
        /// Folder to create.
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address for the server certificate (repeatable; default localhost and 127.0.0.1).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace an existing setup in DIR.
        #[arg(long)]
        force: bool,
    },
    /// The audit trail: verify it (no secret needed).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Certificates for people.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Break-glass: mint a grant for a technician's certificate without approval (audited as such).
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
        /// Only this status: pending, approved, denied or expired.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a pending request (the customer's approvers; never the requester).
    Approve {
        /// The request id, e.g. r-5c1e....
        request_id: String,
        /// A note recorded with the approval.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny a pending request; one denial ends it.
    Deny {
        /// The request id.
        request_id: String,
        /// Why (shown to the technician and recorded).
        #[arg(long)]
        reason: String,
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
    /// Forward a local port through a broker tunnel to CUSTOMER/TARGET (one tunnel per connection).
    ///
    /// Without --grant, fetches the grant of your approved request for CUSTOMER/TARGET.
    Connect {
        /// `customer/target`, e.g. acme/db01.
        target: String,
        /// File holding a grant token (e.g. from `sallyport grant`); default: fetch the approved one.
        #[arg(long)]
        grant: Option<PathBuf>,
        /// Local address to listen on, e.g. 127.0.0.1:15432 (port 0 picks a free port).
        #[arg(long)]
        listen: SocketAddr,
        /// Identity folder (cert.pem, key.pem, ca.pem, broker).
        #[arg(long, env = "SALLYPORT_IDENTITY")]
        identity: PathBuf,
        /// Broker address, overriding the identity folder's `broker` file.
        #[arg(long)]
        broker: Option<String>,
        /// Allow a non-loopback --listen address. Anyone who can reach it uses your certificate and
        /// grant, so this is off by default.
        #[arg(long)]
        allow_remote: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Identity folder (cert.pem, key.pem, ca.pem, broker).
    #[arg(long, env = "SALLYPORT_IDENTITY")]
    identity: PathBuf,
    /// Broker address, overriding the identity folder's `broker` file.
    #[arg(long)]
    broker: Option<String>,
    /// Print the broker's JSON answer instead of a table or sentence.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every chain's hashes, order and links, and every signed checkpoint. Reports the first
    /// problem of each chain with its file, line, seq and kind (edited, deleted, reordered,
    /// inserted, truncated, rewritten, forged checkpoint, torn tail). Exit 0 only when all is intact.
    Verify {
        /// The broker's data directory (holding audit/), or the audit folder itself. Default: that
        /// of `serve` on its embedded defaults.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Verify an evidence bundle made by `audit bundle` instead, offline.
        #[arg(long, conflicts_with = "data")]
        bundle: Option<PathBuf>,
        /// Only this customer's chain.
        #[arg(long)]
        customer: Option<String>,
        /// The audit public key: base64url, or a file holding it (as served by GET /v1/audit/key).
        /// Default: audit-key.pub in the audit folder, which whoever controls the folder could swap.
        #[arg(long)]
        key: Option<String>,
        /// A file of signed checkpoint lines kept elsewhere (for example from the customer's SIEM,
        /// which receives them): each must verify and match the chain, which catches a chain cut back
        /// together with its checkpoint file.
        #[arg(long, value_name = "FILE")]
        expect_checkpoints: Option<PathBuf>,
    },
    /// Write one evidence file for an access request: the request and its approvals, the grant, every
    /// session it opened (bytes and times), and the chain records and signed checkpoint that prove
    /// them. Check it anywhere with `sallyport audit verify --bundle FILE --key KEY`.
    Bundle {
        /// The request id, e.g. r-5c1e....
        #[arg(long)]
        request: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The broker's data directory (holding sallyport.db and audit/).
        #[arg(long, default_value = DEFAULT_DATA)]
        data: PathBuf,
    },
    /// Extract a recorded session (targets with `record = true`) after checking the capture file
    /// against the SHA-256 its `tunnel_close` record holds. Writes one JSON object per frame:
    /// `{"t_us", "dir" ("up" technician -> target, "down"), "data" (base64)}`.
    Capture {
        /// The session id (`session_id` in the trail, `Sallyport-Session` on the tunnel's 200).
        session: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The broker's data directory (holding captures/ and audit/).
        #[arg(long, default_value = DEFAULT_DATA)]
        data: PathBuf,
    },
    /// Write a customer's records to stdout, oldest first: as stored (JSON lines, still verifiable)
    /// or as OCSF events for a SIEM.
    Export {
        /// The broker's data directory (holding audit/), or the audit folder itself.
        #[arg(long, default_value = DEFAULT_DATA)]
        data: PathBuf,
        /// The customer (or `_broker`).
        #[arg(long)]
        customer: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only records at or after this time (RFC 3339, or a UTC date like 2026-01-31).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time.
        #[arg(long)]
        until: Option<String>,
        /// Only this event, e.g. tunnel_open.
        #[arg(long)]
        event: Option<String>,
        /// Only records about this technician (SPIFFE id, or provider/name).
        #[arg(long)]
        technician: Option<String>,
    },
}

/// How `audit export` writes records.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// The records exactly as stored, one per line.
    Jsonl,
    /// One OCSF event per line (see docs/ocsf.md).
    Ocsf,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Issue an identity folder (cert.pem, key.pem, ca.pem, broker).
    Issue {
        #[command(subcommand)]
        role: IssueRole,
    },
}

#[derive(Debug, clap::Args)]
struct IssueCommon {
    /// The broker folder (holding sallyport.toml and the CA).
    #[arg(long)]
    dir: PathBuf,
    /// Identity folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Certificate lifetime in hours.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=8760))]
    hours: u64,
}

#[derive(Debug, Subcommand)]
enum IssueRole {
    /// Provider staff who request access.
    Technician {
        /// Name, e.g. alice.
        name: String,
        /// The provider (MSP) the technician works for.
        #[arg(long)]
        provider: String,
        /// Group carried in the certificate (repeatable), visible to customer policies.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// A customer's approver.
    Approver {
        /// Name.
        name: String,
        /// Customer id.
        #[arg(long)]
        customer: String,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// A customer's auditor.
    Auditor {
        /// Name.
        name: String,
        /// Customer id.
        #[arg(long)]
        customer: String,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// A provider administrator.
    Admin {
        /// Name.
        name: String,
        #[command(flatten)]
        common: IssueCommon,
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
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cfg) = e.downcast_ref::<ConfigError>() {
                eprintln!("sallyport: invalid configuration: {cfg}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("sallyport: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve {
            config,
            listen,
            worker_threads,
        } => serve(config, listen, worker_threads),
        Command::Init { dir, hosts, force } => {
            let hosts = if hosts.is_empty() {
                vec!["localhost".into(), "127.0.0.1".into()]
            } else {
                hosts
            };
            crate::init::init(&crate::init::InitOptions {
                dir: dir.clone(),
                hosts,
                force,
            })?;
            println!("wrote a broker folder at {}:", dir.display());
            println!("  config      {}", dir.join("sallyport.toml").display());
            println!("  PKI         {}", dir.join("pki").display());
            println!(
                "  policy      {}",
                dir.join("policies/acme.cedar").display()
            );
            for which in crate::init::DEMO_IDENTITIES {
                println!(
                    "  {which:<11} {}",
                    dir.join("identities").join(which).display()
                );
            }
            println!(
                "run it with: sallyport serve --config {}",
                dir.join("sallyport.toml").display()
            );
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Issue { role },
        } => issue(role),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    data,
                    bundle,
                    customer,
                    key,
                    expect_checkpoints,
                },
        } => match (bundle, data) {
            (Some(file), _) => verify_bundle(&file, key.as_deref()),
            (None, data) => audit_verify(
                &data.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA)),
                customer.as_deref(),
                key.as_deref(),
                expect_checkpoints.as_deref(),
            ),
        },
        Command::Audit {
            command: AuditCommand::Bundle { request, out, data },
        } => make_bundle(&data, &request, &out),
        Command::Audit {
            command: AuditCommand::Capture { session, out, data },
        } => extract_capture(&data, &session, &out),
        Command::Audit {
            command:
                AuditCommand::Export {
                    data,
                    customer,
                    format,
                    since,
                    until,
                    event,
                    technician,
                },
        } => {
            use crate::audit::query;
            let time = |flag: &str, v: Option<String>| {
                v.map(|t| query::parse_time(&t).map_err(|e| anyhow!("--{flag}: {e}")))
                    .transpose()
            };
            let filter = query::Filter {
                since: time("since", since)?,
                until: time("until", until)?,
                event,
                technician,
                after_seq: None,
            };
            audit_export(&data, &customer, format, &filter)
        }
        Command::Grant {
            config,
            technician_cert,
            customer,
            target,
            minutes,
        } => {
            let cfg = Config::load(&config)?;
            let operator = format!("break-glass:{}", operator());
            let token = crate::breakglass::mint(
                &cfg,
                &crate::breakglass::BreakGlass {
                    technician_cert: &technician_cert,
                    customer: &customer,
                    target: &target,
                    minutes,
                    operator,
                },
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Revoke {
            grant_id,
            reason,
            client,
        } => revoke(&grant_id, &reason, &client),
        Command::Request {
            target,
            minutes,
            reason,
            ticket,
            start_at,
            client,
        } => {
            let (customer, target_id) = split_target(&target)?;
            let mut body = serde_json::json!({
                "customer": customer, "target": target_id, "minutes": minutes, "reason": reason,
            });
            if let Some(t) = ticket {
                body["ticket"] = t.into();
            }
            if let Some(t) = start_at {
                body["start_at"] = t.into();
            }
            let v = call(&client, hyper::Method::POST, "/v1/requests", Some(body))?;
            if client.json {
                println!("{v}");
                return Ok(());
            }
            println!("{}", v["id"].as_str().unwrap_or(""));
            let status = v["status"].as_str().unwrap_or("");
            if status == "approved" {
                eprintln!(
                    "approved at once by policy: run `sallyport connect {target} --listen 127.0.0.1:PORT`"
                );
            } else {
                eprintln!(
                    "{status}: {} approval(s) needed from {customer}'s approvers; expires {}",
                    v["approvals_required"],
                    v["expires_at"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Requests { status, client } => {
            let path = match &status {
                Some(s) => format!("/v1/requests?status={}", urlencode(s)),
                None => "/v1/requests".into(),
            };
            let v = call(&client, hyper::Method::GET, &path, None)?;
            if client.json {
                println!("{v}");
            } else {
                print_requests(&v);
            }
            Ok(())
        }
        Command::Approve {
            request_id,
            comment,
            client,
        } => {
            let body = match comment {
                Some(c) => serde_json::json!({ "comment": c }),
                None => serde_json::json!({}),
            };
            let v = call(
                &client,
                hyper::Method::POST,
                &format!("/v1/requests/{}/approve", urlencode(&request_id)),
                Some(body),
            )?;
            if client.json {
                println!("{v}");
            } else if v["status"] == "approved" {
                println!(
                    "approved {request_id}: granted (grant {})",
                    v["grant_id"].as_str().unwrap_or("")
                );
            } else {
                println!(
                    "approval of {request_id} recorded: {} more needed",
                    v["approvals_missing"]
                );
            }
            Ok(())
        }
        Command::Deny {
            request_id,
            reason,
            client,
        } => {
            let v = call(
                &client,
                hyper::Method::POST,
                &format!("/v1/requests/{}/deny", urlencode(&request_id)),
                Some(serde_json::json!({ "reason": reason })),
            )?;
            if client.json {
                println!("{v}");
            } else {
                println!("denied {request_id}");
            }
            Ok(())
        }
        Command::Sessions {
            live,
            customer,
            end,
            client,
        } => {
            if let Some(id) = end {
                let v = call(
                    &client,
                    hyper::Method::DELETE,
                    &format!("/v1/sessions/{}", urlencode(&id)),
                    None,
                )?;
                if client.json {
                    println!("{v}");
                } else {
                    println!("ended session {id}");
                }
                return Ok(());
            }
            let mut q = Vec::new();
            if live {
                q.push("live=true".to_owned());
            }
            if let Some(c) = customer {
                q.push(format!("customer={}", urlencode(&c)));
            }
            let path = if q.is_empty() {
                "/v1/sessions".to_owned()
            } else {
                format!("/v1/sessions?{}", q.join("&"))
            };
            let v = call(&client, hyper::Method::GET, &path, None)?;
            if client.json {
                println!("{v}");
            } else {
                print_sessions(&v);
            }
            Ok(())
        }
        Command::Connect {
            target,
            grant,
            listen,
            identity,
            broker,
            allow_remote,
        } => {
            if !listen.ip().is_loopback() && !allow_remote {
                return Err(anyhow!(
                    "--listen {listen} is not a loopback address: anyone who can reach it would use your certificate and grant; use 127.0.0.1:PORT, or pass --allow-remote if you mean it"
                ));
            }
            connect(
                &target,
                grant.as_deref(),
                listen,
                &identity,
                broker.as_deref(),
            )
        }
    }
}

fn audit_dir(data: &Path) -> PathBuf {
    if data.join("audit").is_dir() {
        data.join("audit")
    } else {
        data.to_owned()
    }
}

fn extract_capture(data: &Path, session: &str, out: &Path) -> anyhow::Result<()> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let captures = data.join("captures");
    let found = std::fs::read_dir(&captures)
        .with_context(|| {
            format!(
                "reading {} (pass the broker's data directory with --data)",
                captures.display()
            )
        })?
        .filter_map(Result::ok)
        .map(|customer| {
            (
                customer.file_name().to_string_lossy().into_owned(),
                customer.path().join(format!("{session}.cap")),
            )
        })
        .find(|(_, p)| p.exists());
    let Some((customer, path)) = found else {
        return Err(anyhow!(
            "no capture of session `{session}` in {} (only targets with `record = true` are captured)",
            captures.display()
        ));
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let chain = crate::audit::segment::chain_dir(&data.join("audit"), &customer);
    let closes = crate::audit::query::Filter {
        event: Some("tunnel_close".into()),
        ..Default::default()
    };
    let mut close = None;
    crate::audit::query::each(&chain, &closes, |line| {
        if close.is_none()
            && let Ok(r) = serde_json::from_str::<serde_json::Value>(line)
            && r["session_id"] == session
        {
            close = Some(r);
        }
        Ok(())
    })
    .with_context(|| format!("reading {}", chain.display()))?;
    let close = close.ok_or_else(|| {
        anyhow!("session `{session}` has no tunnel_close record yet (is it still live?)")
    })?;
    if close["capture_sha256"] != sha.as_str() {
        return Err(anyhow!(
            "{}: the capture was altered: its SHA-256 is {sha}, but the tunnel_close record (seq {}) holds {}",
            path.display(),
            close["seq"],
            close["capture_sha256"]
        ));
    }
    let (header, frames) =
        crate::capture::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("writing {}", out.display()))?,
    );
    for f in &frames {
        let line = serde_json::json!({
            "t_us": f.micros,
            "dir": if f.up { "up" } else { "down" },
            "data": base64::engine::general_purpose::STANDARD.encode(&f.data),
        });
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    println!(
        "wrote {}: session {session} of {}/{} by {}, {} frame(s); the capture matches the SHA-256 in its tunnel_close record (seq {})",
        out.display(),
        customer,
        header["target"].as_str().unwrap_or("?"),
        header["technician"].as_str().unwrap_or("?"),
        frames.len(),
        close["seq"]
    );
    Ok(())
}

fn make_bundle(data: &Path, request_id: &str, out: &Path) -> anyhow::Result<()> {
    use crate::audit::bundle;
    use crate::store::Store as _;
    let db = data.join("sallyport.db");
    if !db.exists() {
        return Err(anyhow!(
            "no store at {} (pass the broker's data directory with --data)",
            db.display()
        ));
    }
    let store = crate::store::sqlite::SqliteStore::open(&db)?;
    let rec = store.request(request_id)?;
    let customer = rec.filed.customer.clone();
    let now = jiff::Timestamp::now().as_second();
    let sessions: Vec<crate::store::SessionRecord> = match &rec.grant_id {
        Some(g) => store
            .sessions(Some(&customer), None, false)?
            .into_iter()
            .filter(|s| s.grant_id == *g)
            .collect(),
        None => Vec::new(),
    };
    let subject = bundle::Subject {
        request_id: request_id.to_owned(),
        grant_id: rec.grant_id.clone(),
        sessions: sessions.iter().map(|s| s.id.clone()).collect(),
    };
    let dir = data.join("audit");
    let chain = crate::audit::segment::chain_dir(&dir, &customer);
    let (relevant, records, checkpoint) = bundle::collect(&chain, &subject)
        .with_context(|| format!("reading {}", chain.display()))?;
    let key_file = dir.join(crate::audit::checkpoint::KEY_FILE);
    let audit_key: serde_json::Value = std::fs::read_to_string(&key_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| anyhow!("no audit key at {}", key_file.display()))?;
    let b = bundle::Bundle {
        format: bundle::FORMAT.into(),
        created_at: jiff::Timestamp::now().to_string(),
        customer,
        request: crate::api::requests::view(&rec),
        grant: rec.grant.as_ref().map(|g| {
            serde_json::json!({
                "id": g.id,
                "technician": g.technician,
                "target": g.target,
                "not_before": crate::api::rfc3339(g.not_before),
                "expires_at": crate::api::rfc3339(g.expires_at),
                "revoked": g.revoked.as_ref().map(|(at, by, why)| serde_json::json!({
                    "at": crate::api::rfc3339(*at), "by": by, "reason": why,
                })),
            })
        }),
        sessions: sessions
            .iter()
            .map(|s| crate::api::sessions::view(s, false, now))
            .collect(),
        relevant,
        records,
        checkpoint,
        audit_key,
    };
    let covered = b.checkpoint.is_some();
    std::fs::write(out, serde_json::to_string_pretty(&b)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {}: request {request_id}, {} session(s), {} records ({} about it){}",
        out.display(),
        b.sessions.len(),
        b.records.len(),
        b.relevant.len(),
        if covered {
            ", with the signed checkpoint that covers them"
        } else {
            "; no signed checkpoint covers them yet (a running broker signs one about 2 s after activity ends): make it again in a moment"
        }
    );
    Ok(())
}

fn verify_bundle(file: &Path, key: Option<&str>) -> anyhow::Result<()> {
    use crate::audit::{bundle, checkpoint};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let b: bundle::Bundle = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not an evidence bundle: {e}", file.display()))?;
    let key = match key {
        Some(k) => checkpoint::read_public_key(k).map_err(|e| anyhow!("--key: {e}"))?,
        None => {
            eprintln!(
                "note: checking with the key inside the bundle; pass --key with the key from GET /v1/audit/key to rule out a re-signed bundle"
            );
            checkpoint::read_public_key(&b.audit_key.to_string())
                .or_else(|_| {
                    checkpoint::read_public_key(b.audit_key["public_key"].as_str().unwrap_or(""))
                })
                .map_err(|e| anyhow!("the bundle's key: {e}"))?
        }
    };
    match bundle::verify(&b, &key) {
        Ok(p) => {
            println!(
                "{}: intact: request {}, {} records (seq {} to {}, {} about it), {} session(s), checkpoint verified",
                file.display(),
                b.request["id"].as_str().unwrap_or(""),
                p.records,
                p.seqs.0,
                p.seqs.1,
                p.relevant,
                p.sessions
            );
            Ok(())
        }
        Err(e) => {
            println!("{}: {e}", file.display());
            Err(anyhow!("the evidence bundle is not intact"))
        }
    }
}

fn audit_export(
    data: &Path,
    customer: &str,
    format: ExportFormat,
    filter: &crate::audit::query::Filter,
) -> anyhow::Result<()> {
    let dir = audit_dir(data);
    let path = crate::audit::segment::chain_dir(&dir, customer);
    if !path.is_dir() {
        return Err(anyhow!(
            "no chain for customer `{customer}` in {} (pass the broker's data directory with --data)",
            dir.display()
        ));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let n = crate::audit::query::each(&path, filter, |line| match format {
        ExportFormat::Jsonl => writeln!(out, "{line}"),
        ExportFormat::Ocsf => {
            let v: serde_json::Value = serde_json::from_str(line)?;
            writeln!(
                out,
                "{}",
                crate::audit::ocsf::to_ocsf(&v, env!("CARGO_PKG_VERSION"))
            )
        }
    })
    .with_context(|| format!("reading {}", path.display()))?;
    out.flush()?;
    eprintln!("exported {n} record(s) of {customer}");
    Ok(())
}

fn audit_verify(
    data: &Path,
    customer: Option<&str>,
    key: Option<&str>,
    expected: Option<&Path>,
) -> anyhow::Result<()> {
    use crate::audit::{checkpoint, verify};
    let dir = audit_dir(data);
    let key = match key {
        Some(k) => checkpoint::read_public_key(k).map_err(|e| anyhow!("--key: {e}"))?,
        None => {
            let local = dir.join(checkpoint::KEY_FILE);
            let k = checkpoint::read_public_key(&local.display().to_string()).map_err(|e| {
                anyhow!("no audit key to check the checkpoints with ({e}); pass --key with the key from GET /v1/audit/key")
            })?;
            eprintln!(
                "note: checking checkpoints with {} (key id {}), next to the trail; pass --key with the key from GET /v1/audit/key to rule out a swapped key",
                local.display(),
                sallyport_certs::grant::ed25519_kid(&k)
            );
            k
        }
    };
    let key = Some(key);
    let mut chains = crate::audit::segment::chains(&dir)
        .with_context(|| format!("reading the audit folder {}", dir.display()))?;
    // Checkpoints an auditor kept: each must verify, and its chain is checked against it (a chain
    // gone from the folder entirely is caught this way).
    let (mut records, mut checkpoints, mut bad) = (0, 0, 0);
    let mut kept: Vec<verify::Pin> = Vec::new();
    if let Some(file) = expected {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match checkpoint::check(line, key.as_deref()) {
                Err(e) => {
                    bad += 1;
                    println!("{}:{}: forged checkpoint: {e}", file.display(), i + 1);
                }
                Ok(cp) => {
                    if !chains.contains(&cp.chain) {
                        chains.push(cp.chain.clone());
                    }
                    kept.push(verify::Pin {
                        file: file.to_owned(),
                        line: i + 1,
                        cp,
                    });
                }
            }
        }
        chains.sort();
    }
    if let Some(c) = customer {
        chains.retain(|name| name == c);
        if chains.is_empty() {
            return Err(anyhow!("no chain for customer `{c}` in {}", dir.display()));
        }
    }
    if chains.is_empty() {
        return Err(anyhow!(
            "no audit chains in {} (pass the broker's data directory)",
            dir.display()
        ));
    }
    // A chain still in the flat layout of an earlier version is not read here: say so.
    for name in crate::audit::segment::flat_chains(&dir).unwrap_or_default() {
        if customer.is_none_or(|c| c == name) {
            bad += 1;
            println!(
                "{name}: not verified: {} holds it in the layout of an earlier version; start the broker once to move it into {}/",
                dir.display(),
                crate::audit::segment::chain_dir(&dir, &name).display()
            );
        }
    }
    for name in &chains {
        let extra: Vec<verify::Pin> = kept
            .iter()
            .filter(|p| p.cp.chain == *name)
            .cloned()
            .collect();
        let r = verify::verify(&dir, name, key.as_deref(), &extra);
        records += r.records;
        checkpoints += r.checkpoints;
        match &r.problem {
            None => println!(
                "{name}: intact: {} records, {} checkpoints, {} records after the last checkpoint",
                r.records, r.checkpoints, r.unsigned
            ),
            Some(p) => {
                bad += 1;
                println!("{name}: {p}");
            }
        }
    }
    let n = chains.len();
    if bad == 0 {
        println!("verified {n} chain(s), {records} records, {checkpoints} checkpoints: all intact");
        Ok(())
    } else {
        println!(
            "verified {n} chain(s), {records} records, {checkpoints} checkpoints: {bad} problem(s)"
        );
        Err(anyhow!("the audit trail is not intact"))
    }
}

fn split_target(spec: &str) -> anyhow::Result<(&str, &str)> {
    spec.split_once('/')
        .filter(|(c, t)| !c.is_empty() && !t.is_empty())
        .ok_or_else(|| anyhow!("`{spec}` is not CUSTOMER/TARGET, e.g. acme/db01"))
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

/// One API call as the identity in `args`; a non-2xx answer becomes the error.
fn call(
    args: &ClientArgs,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let identity = IdentityDir::read(&args.identity)?;
    let client = crate::client::BrokerClient::new(&identity, args.broker.as_deref())?;
    let (status, v) = runtime()?.block_on(client.call(method, path, body))?;
    if !status.is_success() {
        return Err(anyhow!(crate::client::error_message(status, &v)));
    }
    Ok(v)
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    for line in t.lines() {
        println!("{}", line.trim_end());
    }
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints `v[key]` as a table with one row per item, or `no {key}` when there is none.
fn print_list(
    v: &serde_json::Value,
    key: &str,
    header: &[&str],
    row: impl Fn(&serde_json::Value) -> Vec<String>,
) {
    let list = v[key].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no {key}");
        return;
    }
    table(header, list.iter().map(row).collect());
}

fn print_requests(v: &serde_json::Value) {
    print_list(
        v,
        "requests",
        &[
            "ID",
            "STATUS",
            "TARGET",
            "TECHNICIAN",
            "MINUTES",
            "APPROVALS",
            "CREATED",
            "REASON",
        ],
        |r| {
            vec![
                s(&r["id"]),
                s(&r["status"]),
                format!("{}/{}", s(&r["customer"]), s(&r["target"])),
                crate::api::who(&s(&r["technician"])),
                s(&r["minutes"]),
                format!(
                    "{}/{}",
                    r["approvals"].as_array().map_or(0, Vec::len),
                    s(&r["approvals_required"])
                ),
                s(&r["created_at"]),
                s(&r["reason"]),
            ]
        },
    );
}

fn print_sessions(v: &serde_json::Value) {
    print_list(
        v,
        "sessions",
        &[
            "ID",
            "STATE",
            "TARGET",
            "TECHNICIAN",
            "OPENED",
            "DURATION",
            "BYTES UP",
            "BYTES DOWN",
            "CLOSED BECAUSE",
        ],
        |r| {
            vec![
                s(&r["id"]),
                if r["live"] == true { "live" } else { "closed" }.into(),
                format!("{}/{}", s(&r["customer"]), s(&r["target"])),
                crate::api::who(&s(&r["technician"])),
                s(&r["opened_at"]),
                format!("{}s", s(&r["duration_seconds"])),
                s(&r["bytes_up"]),
                s(&r["bytes_down"]),
                s(&r["close_reason"]),
            ]
        },
    );
}

fn operator() -> String {
    use std::os::unix::fs::MetadataExt;
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| match std::fs::metadata("/proc/self") {
            Ok(m) => format!("uid {}", m.uid()),
            Err(_) => "unknown operator".into(),
        })
}

fn issue(role: IssueRole) -> anyhow::Result<()> {
    let (principal, groups, common) = match role {
        IssueRole::Technician {
            name,
            provider,
            groups,
            common,
        } => (
            Principal::Technician {
                provider: provider.parse()?,
                name: name.parse()?,
            },
            groups
                .iter()
                .map(|g| g.parse())
                .collect::<Result<Vec<GroupName>, _>>()?,
            common,
        ),
        IssueRole::Approver {
            name,
            customer,
            common,
        } => (
            Principal::Approver {
                customer: customer.parse()?,
                name: name.parse()?,
            },
            vec![],
            common,
        ),
        IssueRole::Auditor {
            name,
            customer,
            common,
        } => (
            Principal::Auditor {
                customer: customer.parse()?,
                name: name.parse()?,
            },
            vec![],
            common,
        ),
        IssueRole::Admin { name, common } => (
            Principal::Admin {
                name: name.parse()?,
            },
            vec![],
            common,
        ),
    };
    let cfg = Config::load(&common.dir.join("sallyport.toml"))?;
    if let Some(c) = principal.customer()
        && cfg.customer(c.as_str()).is_none()
    {
        return Err(anyhow!(
            "customer `{c}` is not configured in {}",
            cfg.file.display()
        ));
    }
    let ca = crate::init::load_ca(&cfg)?;
    let id = SpiffeId::new(cfg.trust_domain.clone(), principal);
    crate::init::issue_identity(
        &ca,
        &id,
        &groups,
        common.hours,
        &common.out,
        &cfg.public_address,
    )?;
    println!(
        "wrote identity {} for {id} (valid {} h, broker {})",
        common.out.display(),
        common.hours,
        cfg.public_address
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The broker's runtime: one thread per core (0), everything on the calling thread (1), or N workers.
fn serve_runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        0 => tokio::runtime::Builder::new_multi_thread(),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn shutdown_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Past a file-size limit (RLIMIT_FSIZE) a write must fail as an I/O error, which the audit
    // writer handles (fail closed, then resume), instead of SIGXFSZ killing the broker.
    let mut xfsz = signal(SignalKind::from_raw(libc::SIGXFSZ))?;
    tokio::spawn(async move { while xfsz.recv().await.is_some() {} });
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

fn rel(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(&cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

fn serve(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    worker_threads: Option<usize>,
) -> anyhow::Result<()> {
    let embedded = config.is_none();
    let config = match config {
        Some(c) => c,
        None => {
            let dir = PathBuf::from("sallyport-data");
            if !dir.join("sallyport.toml").exists() {
                crate::init::init(&crate::init::InitOptions {
                    dir: dir.clone(),
                    hosts: vec!["localhost".into(), "127.0.0.1".into()],
                    force: false,
                })?;
                println!("created ./sallyport-data (config, PKI, demo customer and identities)");
            }
            dir.join("sallyport.toml")
        }
    };
    let mut cfg = Config::load(&config)?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(n) = worker_threads {
        anyhow::ensure!(
            n <= 1024,
            "--worker-threads {n}: use 0 (one thread per core) to 1024"
        );
        cfg.worker_threads = n;
    }
    #[cfg(feature = "bench-insecure")]
    crate::bench_insecure::enable_from_env()?;
    if embedded && crate::init::renew_demo_identities(Path::new("sallyport-data"), &cfg)? {
        println!("renewed the demo identities (their certificates had expired or were about to)");
    }
    if embedded && crate::init::ensure_audit_key(&cfg)? {
        println!(
            "created the audit signing key {}",
            rel(&cfg.audit.signing_key)
        );
    }
    let rt = serve_runtime(cfg.worker_threads)?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        shutdown_on_signals(shutdown.clone())?;
        let demo_target = cfg
            .customer("acme")
            .and_then(|c| c.target("web"))
            .and_then(|t| t.address.parse::<SocketAddr>().ok());
        let (broker, writer) = crate::broker::Broker::new(cfg, shutdown.clone())?;
        let listener = tokio::net::TcpListener::bind(broker.cfg.listen)
            .await
            .map_err(|e| ConfigError {
                location: broker.cfg.file.display().to_string(),
                field: "server.listen".into(),
                message: format!("cannot listen on {}: {e}", broker.cfg.listen),
                fix: "stop whatever uses that port, or pick another with --listen or server.listen"
                    .into(),
            })?;
        let addr = listener.local_addr()?;
        println!("sallyport: listening on {addr}");
        tracing::info!(listen = %addr, config = %broker.cfg.file.display(), "broker started");
        if embedded {
            if let Some(t) = demo_target {
                match crate::demo::serve(t).await {
                    Ok(a) => println!("demo target acme/web served on {a}"),
                    Err(e) => println!("note: could not serve the demo target on {t}: {e}"),
                }
            }
            print_demo(addr, &broker.cfg);
        }
        crate::broker::run(broker.clone(), listener).await;
        drop(broker);
        tokio::task::spawn_blocking(move || writer.join()).await?;
        tracing::info!("broker stopped");
        Ok::<_, anyhow::Error>(())
    })
}

fn print_demo(addr: SocketAddr, cfg: &Config) {
    let exe = std::env::current_exe()
        .map(|p| rel(&p))
        .unwrap_or_else(|_| "sallyport".into());
    let id = |w: &str| format!("sallyport-data/identities/{w}");
    let broker_flag = if addr.port() == 8443 {
        String::new()
    } else {
        format!(" --broker localhost:{}", addr.port())
    };
    println!();
    println!("Demo identities (certificates valid 12 h, renewed by `serve` when expired):");
    println!(
        "  technician  {}  (alice of provider northwind, group support)",
        id("technician")
    );
    println!(
        "  approver    {}  (bob, approver for customer acme)",
        id("approver")
    );
    println!("  admin       {}  (root, provider admin)", id("admin"));
    println!();
    println!("Try the access workflow from another terminal, in this folder (a POSIX shell):");
    println!("  T={} A={}", id("technician"), id("approver"));
    println!(
        "  ID=$({exe} request acme/web --minutes 30 --reason \"check the web server\" --identity $T{broker_flag})"
    );
    println!("  {exe} requests --identity $A{broker_flag}");
    println!("  {exe} approve \"$ID\" --comment \"go ahead\" --identity $A{broker_flag}");
    println!("  {exe} connect acme/web --listen 127.0.0.1:7001 --identity $T{broker_flag} &");
    println!("  curl http://127.0.0.1:7001/");
    println!("  {exe} sessions --identity $A{broker_flag}");
    println!(
        "  {exe} revoke GRANT_ID --reason \"done\" --identity $A{broker_flag}    # GRANT_ID as printed by approve"
    );
    println!();
    println!("Break-glass, without approval (audited as such):");
    println!(
        "  {exe} grant --config sallyport-data/sallyport.toml --technician-cert $T/cert.pem --customer acme --target web --minutes 30 > grant.jwt"
    );
    println!();
    println!(
        "Every request, decision and tunnel is on the audit trail, in daily segments under {}/",
        rel(&cfg.data_dir.join("audit").join("acme"))
    );
}

fn revoke(grant_id: &str, reason: &str, args: &ClientArgs) -> anyhow::Result<()> {
    let identity = IdentityDir::read(&args.identity)?;
    let client = crate::client::BrokerClient::new(&identity, args.broker.as_deref())?;
    let rt = runtime()?;
    let (status, body) = rt.block_on(client.call(
        hyper::Method::POST,
        &format!("/v1/grants/{grant_id}/revoke"),
        Some(serde_json::json!({ "reason": reason })),
    ))?;
    if !status.is_success() {
        return Err(anyhow!(crate::client::error_message(status, &body)));
    }
    if args.json {
        println!("{body}");
    } else {
        println!(
            "revoked grant {} ({} live session(s) closed)",
            body["grant_id"].as_str().unwrap_or(grant_id),
            body["sessions_closed"]
        );
    }
    Ok(())
}

fn connect(
    target: &str,
    grant: Option<&Path>,
    listen: SocketAddr,
    identity: &Path,
    broker: Option<&str>,
) -> anyhow::Result<()> {
    let identity = IdentityDir::read(identity)?;
    let rt = runtime()?;
    let token = match grant {
        Some(grant) => std::fs::read_to_string(grant)
            .with_context(|| format!("reading the grant {}", grant.display()))?
            .trim()
            .to_owned(),
        None => {
            let client = crate::client::BrokerClient::new(&identity, broker)?;
            rt.block_on(crate::client::approved_grant(&client, target))?
        }
    };
    let (fwd, expires) = crate::forwarder::Forwarder::new(target, &token, &identity, broker)?;
    rt.block_on(async move {
        let listener = crate::forwarder::bind(listen).await?;
        let addr = listener.local_addr()?;
        // The forwarder keeps serving when nobody reads its output any more (e.g. `| head -1`).
        let mut out = std::io::stdout();
        let _ = writeln!(out, "sallyport: listening on {addr}");
        let _ = writeln!(
            out,
            "forwarding {addr} -> {target} (grant expires {expires}); Ctrl-C to stop"
        );
        let _ = out.flush();
        tokio::select! {
            r = fwd.serve(listener) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
