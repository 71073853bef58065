//! `sallyport connect`: a technician's way in, in one of three modes, exactly one of which is given:
//! `--listen ADDR` (a local port for one target, one tunnel per connection), `--socks ADDR` (one
//! local SOCKS5 port for every target the technician holds a grant for, [`sallyport_client::socks`]) and
//! `--stdio` (one tunnel over stdin and stdout, for `ssh -o ProxyCommand`; nothing but tunnel bytes
//! on stdout). It finds the grant (a file, or the technician's approved request, or with `--wait`
//! the pending one once it is decided), says when a grant is not valid yet (and waits for its
//! start), warns once on stderr five minutes before a grant ends, and says in words why a tunnel
//! was refused or ended.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sallyport_certs::identity_dir::IdentityDir;

use super::runtime;
use sallyport_client::forwarder::{Grant, in_words, warn_before_end, when};
use sallyport_client::{BrokerClient, Usable};

/// The longest pause between two looks at a pending request (`--wait`).
const MAX_POLL: Duration = Duration::from_secs(5);

/// `sallyport connect`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// `customer/target`, e.g. acme/db01 (not with --socks, which reaches every target you hold a
    /// grant for).
    target: Option<String>,
    /// Local address to listen on for this target, e.g. 127.0.0.1:15432 (port 0 picks a free port).
    #[arg(long, conflicts_with_all = ["socks", "stdio"])]
    listen: Option<SocketAddr>,
    /// Serve SOCKS5 here, e.g. 127.0.0.1:1080, for every target you hold a grant for: ask for
    /// `<target>.<customer>:<port>` (`curl --socks5-hostname`, socks5h://).
    #[arg(long, conflicts_with_all = ["stdio", "grant", "wait"])]
    socks: Option<SocketAddr>,
    /// One tunnel over stdin and stdout, e.g. `ssh -o ProxyCommand='sallyport connect acme/db
    /// --stdio --identity DIR' host`; messages go to stderr.
    #[arg(long)]
    stdio: bool,
    /// File holding a grant token (e.g. from `sallyport grant`); default: fetch the approved one.
    #[arg(long)]
    grant: Option<PathBuf>,
    /// When your request for CUSTOMER/TARGET is still pending, wait for it to be decided (showing
    /// its approvals as they come); exits non-zero when it is denied, expires or is cancelled.
    #[arg(long)]
    wait: bool,
    /// Identity folder (cert.pem, key.pem, ca.pem, broker).
    #[arg(long, env = "SALLYPORT_IDENTITY")]
    identity: PathBuf,
    /// Broker address, overriding the identity folder's `broker` file.
    #[arg(long)]
    broker: Option<String>,
    /// Allow a non-loopback --listen or --socks address. Anyone who can reach it uses your
    /// certificate and grants, so this is off by default.
    #[arg(long)]
    allow_remote: bool,
}

enum Mode {
    Listen(SocketAddr),
    Socks(SocketAddr),
    Stdio,
}

/// Waits for pending request `id` for `spec` to be decided, saying on stderr how it stands each
/// time that changes; returns the grant's token once approved.
async fn wait_for(client: &BrokerClient, spec: &str, id: &str) -> anyhow::Result<String> {
    let mut last = String::new();
    let mut pause = Duration::from_secs(1);
    loop {
        let r = sallyport_client::api::get(client, &format!("/v1/requests/{id}")).await?;
        match r["status"].as_str().unwrap_or("") {
            "pending" => {
                let state = format!(
                    "pending, {} of {} approval(s)",
                    r["approvals"].as_array().map_or(0, Vec::len),
                    r["approvals_required"]
                );
                if state != last {
                    eprintln!(
                        "sallyport: waiting for request {id} ({spec}): {state}; it expires at {} if nobody decides",
                        r["expires_at"].as_str().unwrap_or("?")
                    );
                    last = state;
                }
            }
            "approved" => {
                let by: Vec<String> = r["approvals"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["approver"].as_str().map(sallyport_ids::short))
                    .collect();
                eprintln!(
                    "sallyport: request {id} approved{}",
                    if by.is_empty() {
                        " by policy".to_owned()
                    } else {
                        format!(" by {}", by.join(", "))
                    }
                );
                let g =
                    sallyport_client::api::get(client, &format!("/v1/requests/{id}/grant")).await?;
                return g["token"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("the broker handed out no grant for request {id}"));
            }
            "denied" => bail!(
                "request {id} for {spec} was denied by {}: {}",
                sallyport_ids::short(r["denied_by"].as_str().unwrap_or("an approver")),
                r["deny_reason"].as_str().unwrap_or("")
            ),
            "expired" => bail!(
                "request {id} for {spec} expired at {} without a decision",
                r["expires_at"].as_str().unwrap_or("?")
            ),
            "cancelled" => bail!("request {id} for {spec} was cancelled"),
            other => bail!("request {id} for {spec} is {other}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// The grant to use for `spec`: from `--grant`, the approved request, or (with `--wait`) the pending
/// one once approved.
async fn find_grant(
    args: &ConnectArgs,
    client: &BrokerClient,
    spec: &str,
) -> anyhow::Result<Grant> {
    let token = match &args.grant {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the grant {}", file.display()))?
            .trim()
            .to_owned(),
        None => match sallyport_client::api::usable_grant(client, spec).await? {
            Usable::Token(t) => t,
            Usable::Pending(id) if args.wait => wait_for(client, spec, &id).await?,
            Usable::Pending(id) => bail!(
                "request {id} for {spec} is still pending: pass --wait to wait for its approval"
            ),
            Usable::None(why) if args.wait => {
                bail!("nothing to wait for: {why}")
            }
            Usable::None(why) => bail!(why),
        },
    };
    let grant = Grant::peek(&token, Some(spec))?;
    let now = jiff::Timestamp::now().as_second();
    if grant.exp <= now {
        bail!(
            "the grant for {spec} expired at {}: file a new request with `sallyport request {spec} --minutes M --reason TEXT`",
            when(grant.exp)
        );
    }
    if grant.nbf > now {
        eprintln!(
            "sallyport: the grant for {spec} is not valid yet: it starts at {} ({}); waiting until then (Ctrl-C to stop)",
            when(grant.nbf),
            in_words(grant.nbf - now)
        );
        tokio::time::sleep(Duration::from_secs(
            u64::try_from(grant.nbf - now).unwrap_or(0),
        ))
        .await;
        eprintln!("sallyport: the grant for {spec} is valid now");
    }
    Ok(grant)
}

/// `sallyport connect`.
pub fn connect(args: &ConnectArgs) -> anyhow::Result<()> {
    let mode = match (args.listen, args.socks, args.stdio) {
        (Some(a), None, false) => Mode::Listen(a),
        (None, Some(a), false) => Mode::Socks(a),
        (None, None, true) => Mode::Stdio,
        (None, None, false) => bail!(
            "say how to connect: --listen 127.0.0.1:PORT (a local port for this target), --socks 127.0.0.1:1080 (a SOCKS5 proxy for every target you hold a grant for) or --stdio (one tunnel over stdin/stdout, for ssh -o ProxyCommand)"
        ),
        _ => bail!("--listen, --socks and --stdio exclude each other: give one"),
    };
    for (flag, addr) in [("--listen", args.listen), ("--socks", args.socks)] {
        if let Some(addr) = addr
            && !addr.ip().is_loopback()
            && !args.allow_remote
        {
            bail!(
                "{flag} {addr} is not a loopback address: anyone who can reach it would use your certificate and grant; use 127.0.0.1:PORT, or pass --allow-remote if you mean it"
            );
        }
    }
    let identity = IdentityDir::read(&args.identity)?;
    let client = BrokerClient::new(&identity, args.broker.as_deref())?;
    let rt = runtime()?;
    if let Mode::Socks(addr) = mode {
        if let Some(t) = &args.target {
            bail!(
                "--socks reaches every target you hold a grant for, named in each SOCKS request: leave out `{t}`"
            );
        }
        return rt.block_on(async move {
            let listener = sallyport_client::forwarder::bind(addr, "--socks").await?;
            let local = listener.local_addr()?;
            say_listening(&[
                format!("sallyport: SOCKS5 on {local}"),
                format!(
                    "reach a target as <target>.<customer>:<port>, e.g. curl --socks5-hostname {local} http://web.acme:7070/; Ctrl-C to stop"
                ),
            ]);
            tokio::select! {
                r = sallyport_client::socks::serve(client, listener) => r.map_err(anyhow::Error::from),
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        });
    }
    let Some(spec) = args.target.as_deref() else {
        bail!(
            "name the target as CUSTOMER/TARGET, e.g. `sallyport connect acme/db01 --listen 127.0.0.1:15432`"
        );
    };
    sallyport_client::api::split(spec)?;
    rt.block_on(async move {
        let grant = tokio::select! {
            g = find_grant(args, &client, spec) => g?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        tokio::spawn(warn_before_end(grant.clone()));
        match mode {
            Mode::Listen(addr) => {
                let listener = sallyport_client::forwarder::bind(addr, "--listen").await?;
                let local = listener.local_addr()?;
                say_listening(&[
                    format!("sallyport: listening on {local}"),
                    format!(
                        "forwarding {local} -> {spec} (grant expires {}); Ctrl-C to stop",
                        when(grant.exp)
                    ),
                ]);
                tokio::select! {
                    r = sallyport_client::forwarder::serve(client, grant, listener) => {
                        r.map_err(anyhow::Error::from)
                    }
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            }
            Mode::Stdio => {
                let mut local = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
                let ended = tokio::select! {
                    r = sallyport_client::forwarder::tunnel(&client, &grant, &mut local) => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                match ended {
                    Ok(None) => Ok(()),
                    Ok(Some(why)) => Err(anyhow!("the tunnel to {spec} ended: {why}")),
                    Err(refused) => Err(anyhow!(
                        "the broker refused the tunnel to {spec}: {}",
                        refused.explain(&grant)
                    )),
                }
            }
            Mode::Socks(_) => Ok(()),
        }
    })
}

/// Prints the lines that say where `connect` listens. The forwarder keeps serving when nobody reads
/// its output any more (e.g. `| head -1`).
fn say_listening(lines: &[String]) {
    use std::io::Write as _;
    let mut out = std::io::stdout();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}
