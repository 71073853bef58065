//! `sallyport login`: an identity folder from a sign-in at an identity provider. The key pair is
//! made here and only its signing request goes to the broker's sign-in listener; the person signs
//! in in a browser (opened here, or with `--no-browser` the URL printed to open anywhere), and the
//! broker's certificate for the key lands in the folder next to it, as `certs issue` writes one.
//! Also the browser step of approvals and denials signed at a customer's IdP ([`open_signin`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use sallyport_certs::identity_dir::IdentityDir;
use sallyport_certs::pki::Issued;
use sallyport_client::BrokerClient;

use super::runtime;

/// `sallyport login` flags.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The broker's sign-in listener, HOST:PORT (`web.listen`; not the mTLS port).
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// The identity folder to write (created; an existing one is replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Sign in at this customer's identity provider, as one of its approvers or auditors (without
    /// it: the provider's, as a technician or admin).
    #[arg(long, value_name = "ID")]
    customer: Option<String>,
    /// With --customer, for a person who is both: `approver` (the default) or `auditor`.
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// Print the sign-in URL instead of opening a browser (open it on any device).
    #[arg(long)]
    no_browser: bool,
    /// PEM certificates the sign-in listener's certificate chains to (e.g. the broker CA, `ca.pem`
    /// of any identity folder of this broker); default: the Mozilla roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// Sends the person to `url`: prints it (always, so it can be opened elsewhere) and, unless
/// `no_browser`, opens the system's browser on it.
pub fn open_signin(url: &str, no_browser: bool, what: &str) {
    println!("sallyport: open this URL in a browser to {what}:\n  {url}");
    let _ = std::io::stdout().flush();
    if no_browser {
        return;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let opened = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if opened.is_err() {
        eprintln!("sallyport: could not start a browser ({opener}); open the URL above yourself");
    }
}

/// `sallyport login`.
pub fn login(args: &LoginArgs) -> anyhow::Result<()> {
    let ca = match &args.ca {
        None => None,
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("reading --ca {}", p.display()))?,
        ),
    };
    let ca_name = args
        .ca
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let web = BrokerClient::anonymous(&args.broker, ca.as_deref().map(|pem| (pem, &*ca_name)))?;
    let keys = sallyport_client::login::key_and_request()?;
    let rt = runtime()?;
    let started = rt.block_on(sallyport_client::login::start(
        &web,
        &keys.csr_pem,
        args.customer.as_deref(),
        args.role.as_deref(),
    ))?;
    let at = match &args.customer {
        Some(c) => format!("sign in at {c}'s identity provider"),
        None => "sign in at the provider's identity provider".to_owned(),
    };
    open_signin(&started.url, args.no_browser, &at);
    eprintln!("sallyport: waiting for the sign-in to finish (up to 10 minutes)...");
    let done = rt.block_on(sallyport_client::login::wait(&web, &started))?;
    let field = |k: &str| {
        done[k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the broker's answer has no `{k}`"))
    };
    let issued = Issued {
        cert_pem: field("cert")?,
        key_pem: keys.key_pem,
    };
    write_folder(&args.out, &issued, &field("ca")?, &field("broker")?)?;
    println!(
        "signed in as {} until {}; identity folder {}",
        field("identity")?,
        field("expires_at")?,
        args.out.display()
    );
    if done["mfa"] == serde_json::Value::Bool(false) {
        eprintln!(
            "note: the identity provider reported no multi-factor authentication; policies that require it (context.mfa) will refuse this identity"
        );
    }
    Ok(())
}

fn write_folder(out: &Path, issued: &Issued, ca: &str, broker: &str) -> anyhow::Result<()> {
    IdentityDir::write(out, issued, ca, broker)
        .with_context(|| format!("writing the identity folder {}", out.display()))?;
    Ok(())
}
