//! The lock commands (`lock`, `unlock`, `locks`): each one call to the broker as the identity folder
//! given, printed as a sentence or table (or the broker's JSON with `--json`). Who may lock whom,
//! and what a lock bars, are the broker's rules.

use std::path::PathBuf;

use anyhow::Context as _;

use super::ClientArgs;
use super::access::{call, print_list, s, urlencode};

/// What `sallyport lock` names: exactly one of an identity, a certificate file, or a serial with a
/// fingerprint (clap enforces it).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct LockTarget {
    /// The identity to lock, e.g. spiffe://sallyport.local/technician/northwind/alice: every
    /// certificate of it, issued before or after the lock.
    #[arg(long, value_name = "ID")]
    spiffe_id: Option<String>,
    /// One certificate to lock, as a PEM file (such as an identity folder's cert.pem); the holder's
    /// other certificates keep working.
    #[arg(long, value_name = "PEMFILE")]
    cert: Option<PathBuf>,
    /// One certificate to lock by its serial, in hex as `openssl x509 -noout -serial` prints it
    /// (with --sha256).
    #[arg(long, value_name = "HEX", requires = "sha256")]
    serial: Option<String>,
}

/// `sallyport lock ...`.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    target: LockTarget,
    /// With --serial: the SHA-256 fingerprint of the certificate, as `openssl x509 -noout
    /// -fingerprint -sha256` prints it.
    #[arg(long, value_name = "HEX", requires = "serial")]
    sha256: Option<String>,
    /// Why (recorded on the trail and shown to whoever the lock refuses).
    #[arg(long)]
    reason: String,
    /// End the lock by itself at this time, RFC 3339 (e.g. 2026-01-31T22:00:00Z); default: until
    /// `sallyport unlock`.
    #[arg(long, value_name = "RFC3339", conflicts_with = "minutes")]
    until: Option<String>,
    /// End the lock by itself after this many minutes.
    #[arg(long, value_name = "N")]
    minutes: Option<u64>,
    /// Bar only this customer's access (admins; an approver's lock always bars their own customer
    /// only).
    #[arg(long)]
    customer: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sallyport lock`: locks an identity or one certificate; prints what it did.
pub fn lock(args: &LockArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let mut body = serde_json::json!({ "reason": args.reason });
    if let Some(id) = &t.spiffe_id {
        body["spiffe_id"] = id.as_str().into();
    }
    if let Some(file) = &t.cert {
        let pem = std::fs::read_to_string(file)
            .with_context(|| format!("reading the certificate {}", file.display()))?;
        body["certificate"] = serde_json::json!({ "pem": pem });
    }
    if let Some(serial) = &t.serial {
        body["certificate"] = serde_json::json!({ "serial": serial, "sha256": args.sha256 });
    }
    if let Some(until) = &args.until {
        body["expires_at"] = until.as_str().into();
    }
    if let Some(m) = args.minutes {
        body["minutes"] = m.into();
    }
    if let Some(c) = &args.customer {
        body["customer"] = c.as_str().into();
    }
    let v = call(&args.client, hyper::Method::POST, "/v1/locks", Some(body))?;
    if args.client.json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "locked {} {} {} (lock {}); {} live session(s) closed",
        what(&v),
        where_(&v),
        until(&v),
        s(&v["id"]),
        s(&v["sessions_closed"]),
    );
    Ok(())
}

/// `sallyport unlock LOCK_ID`.
pub fn unlock(lock_id: &str, reason: Option<String>, client: &ClientArgs) -> anyhow::Result<()> {
    let body = match reason {
        Some(r) => serde_json::json!({ "reason": r }),
        None => serde_json::json!({}),
    };
    let v = call(
        client,
        hyper::Method::POST,
        &format!("/v1/locks/{}/unlock", urlencode(lock_id)),
        Some(body),
    )?;
    if client.json {
        println!("{v}");
    } else {
        println!("unlocked {} {} (lock {lock_id})", what(&v), where_(&v));
    }
    Ok(())
}

/// `sallyport locks`: the locks the identity may see.
pub fn locks(all: bool, client: &ClientArgs) -> anyhow::Result<()> {
    let path = if all {
        "/v1/locks?all=true"
    } else {
        "/v1/locks"
    };
    let v = call(client, hyper::Method::GET, path, None)?;
    if client.json {
        println!("{v}");
        return Ok(());
    }
    print_list(
        &v,
        "locks",
        &[
            "ID", "STATE", "LOCKED", "WHERE", "BY", "CREATED", "UNTIL", "REASON",
        ],
        |l| {
            let state = if l["active"] == true {
                "active"
            } else if !l["unlocked_at"].is_null() {
                "lifted"
            } else {
                "ended"
            };
            vec![
                s(&l["id"]),
                state.into(),
                what(l),
                match l["customer"].as_str() {
                    Some(c) => c.to_owned(),
                    None => "everywhere".into(),
                },
                sallyport_ids::short(&s(&l["created_by"])),
                s(&l["created_at"]),
                match l["expires_at"].as_str() {
                    Some(t) => t.to_owned(),
                    None => "unlocked".into(),
                },
                s(&l["reason"]),
            ]
        },
    );
    Ok(())
}

/// What a lock bars, for people: `northwind/alice`, or `certificate 5f.. of northwind/alice`.
fn what(l: &serde_json::Value) -> String {
    let holder = l["spiffe_id"].as_str().map(sallyport_ids::short);
    match (l["kind"].as_str(), holder) {
        (Some("certificate"), Some(h)) => {
            format!("certificate {} of {h}", s(&l["certificate"]["serial"]))
        }
        (Some("certificate"), None) => format!("certificate {}", s(&l["certificate"]["serial"])),
        (_, h) => h.unwrap_or_else(|| "-".into()),
    }
}

fn where_(l: &serde_json::Value) -> String {
    match l["customer"].as_str() {
        Some(c) => format!("for customer {c}"),
        None => "everywhere".into(),
    }
}

fn until(l: &serde_json::Value) -> String {
    match l["expires_at"].as_str() {
        Some(t) => format!("until {t}"),
        None => "until unlocked".into(),
    }
}
