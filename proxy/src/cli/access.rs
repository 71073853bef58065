//! The API commands of technicians, approvers and auditors (`request`, `requests`, `approve`,
//! `deny`, `cancel`, `targets`, `grants`, `revoke`, `sessions`): each one call to the broker as the
//! identity folder given, printed as a table or sentence (or the broker's JSON with `--json`).
//! Output ends quietly when its reader goes away (`| head`): see [`emit`].

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::anyhow;
use sallyport_certs::identity_dir::IdentityDir;

use super::runtime;

/// Who calls the broker, and how the answer is shown.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Identity folder (cert.pem, key.pem, ca.pem, broker).
    #[arg(long, env = "SALLYPORT_IDENTITY")]
    identity: PathBuf,
    /// Broker address, overriding the identity folder's `broker` file.
    #[arg(long)]
    broker: Option<String>,
    /// Print the broker's JSON answer instead of a table or sentence.
    #[arg(long)]
    pub(super) json: bool,
}

impl ClientArgs {
    /// The identity folder.
    pub(super) fn identity(&self) -> &std::path::Path {
        &self.identity
    }

    /// The broker address given, if any.
    pub(super) fn broker(&self) -> Option<&str> {
        self.broker.as_deref()
    }
}

/// `sallyport request CUSTOMER/TARGET`: files a request; prints its id.
pub fn request(
    target: &str,
    minutes: u32,
    reason: String,
    ticket: Option<String>,
    start_at: Option<String>,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let (customer, target_id) = split_target(target)?;
    let mut body = serde_json::json!({
        "customer": customer, "target": target_id, "minutes": minutes, "reason": reason,
    });
    if let Some(t) = ticket {
        body["ticket"] = t.into();
    }
    if let Some(t) = start_at {
        body["start_at"] = t.into();
    }
    let v = call(client, hyper::Method::POST, "/v1/requests", Some(body))?;
    if client.json {
        emit(&v);
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

/// `sallyport requests`: the requests the identity may see.
pub fn requests(status: Option<&str>, client: &ClientArgs) -> anyhow::Result<()> {
    let path = match status {
        Some(s) => format!("/v1/requests?status={}", urlencode(s)),
        None => "/v1/requests".into(),
    };
    let v = call(client, hyper::Method::GET, &path, None)?;
    if client.json {
        emit(&v);
    } else {
        print_requests(&v);
    }
    Ok(())
}

/// `sallyport approve REQUEST_ID`.
pub fn approve(
    request_id: &str,
    comment: Option<String>,
    no_browser: bool,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let body = match comment {
        Some(c) => serde_json::json!({ "comment": c }),
        None => serde_json::json!({}),
    };
    let path = format!("/v1/requests/{}/approve", urlencode(request_id));
    let v = decide(client, &path, body, no_browser, "approve")?;
    if client.json {
        emit(&v);
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

/// `sallyport deny REQUEST_ID --reason WHY`.
pub fn deny(
    request_id: &str,
    reason: &str,
    no_browser: bool,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let path = format!("/v1/requests/{}/deny", urlencode(request_id));
    let body = serde_json::json!({ "reason": reason });
    let v = decide(client, &path, body, no_browser, "deny")?;
    if client.json {
        emit(&v);
    } else {
        println!("denied {request_id}");
    }
    Ok(())
}

/// Posts a decision. A customer with its own IdP answers 202 with a sign-in that signs it: the
/// browser opens on it and the decision's outcome is awaited (`GET /v1/signins/{id}`). Returns
/// the request as decided.
fn decide(
    args: &ClientArgs,
    path: &str,
    body: serde_json::Value,
    no_browser: bool,
    verb: &str,
) -> anyhow::Result<serde_json::Value> {
    let identity = IdentityDir::read(&args.identity)?;
    let client = sallyport_client::BrokerClient::new(&identity, args.broker.as_deref())?;
    let rt = runtime()?;
    let (status, v) = rt.block_on(client.call(hyper::Method::POST, path, Some(body)))?;
    if !status.is_success() {
        return Err(anyhow!(sallyport_client::api::error_message(status, &v)));
    }
    if status != hyper::StatusCode::ACCEPTED {
        return Ok(v);
    }
    let (Some(id), Some(url)) = (v["signin"]["id"].as_str(), v["signin"]["url"].as_str()) else {
        return Err(anyhow!("the broker asked for a sign-in but named none"));
    };
    super::login::open_signin(
        url,
        no_browser,
        &format!("{verb} it, signed by the customer's identity provider"),
    );
    eprintln!("sallyport: waiting for the sign-in to finish (up to 10 minutes)...");
    let wait = format!("/v1/signins/{}?wait=25", urlencode(id));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while std::time::Instant::now() < deadline {
        let (status, v) = rt.block_on(client.call(hyper::Method::GET, &wait, None))?;
        match status {
            hyper::StatusCode::ACCEPTED => continue,
            hyper::StatusCode::OK => return Ok(v["request"].clone()),
            _ => return Err(anyhow!(sallyport_client::api::error_message(status, &v))),
        }
    }
    Err(anyhow!(
        "the sign-in was not finished within 10 minutes; run the command again"
    ))
}

/// `sallyport sessions`: list sessions, or end one with `--end`.
pub fn sessions(
    live: bool,
    customer: Option<String>,
    end: Option<String>,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    if let Some(id) = end {
        let v = call(
            client,
            hyper::Method::DELETE,
            &format!("/v1/sessions/{}", urlencode(&id)),
            None,
        )?;
        if client.json {
            emit(&v);
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
    let v = call(
        client,
        hyper::Method::GET,
        &with_query("/v1/sessions", &q),
        None,
    )?;
    if client.json {
        emit(&v);
    } else {
        print_sessions(&v);
    }
    Ok(())
}

fn split_target(spec: &str) -> anyhow::Result<(&str, &str)> {
    Ok(sallyport_client::api::split(spec)?)
}

/// Prints one line on stdout. When stdout is gone (`sallyport requests | head -1`), the command ends
/// there, quietly and successfully, as `head`'s other writers do.
pub(crate) fn emit(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// `path` with the query `params` (`key=value`, already encoded), if any.
fn with_query(path: &str, params: &[String]) -> String {
    if params.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", params.join("&"))
    }
}

pub(super) fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

/// One API call as the identity in `args`; a non-2xx answer becomes the error.
pub(super) fn call(
    args: &ClientArgs,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let identity = IdentityDir::read(&args.identity)?;
    let client = sallyport_client::BrokerClient::new(&identity, args.broker.as_deref())?;
    let (status, v) = runtime()?.block_on(client.call(method, path, body))?;
    if !status.is_success() {
        return Err(anyhow!(sallyport_client::api::error_message(status, &v)));
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
        emit(line.trim_end());
    }
}

pub(super) fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints `v[key]` as a table with one row per item, or `no {key}` when there is none.
pub(super) fn print_list(
    v: &serde_json::Value,
    key: &str,
    header: &[&str],
    row: impl Fn(&serde_json::Value) -> Vec<String>,
) {
    let list = v[key].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        emit(format!("no {key}"));
        return;
    }
    table(header, list.iter().map(row).collect());
}

/// Where a grant stands at `now`: `active`, `not yet valid`, `expired` or `revoked`.
pub(super) fn grant_state(g: &serde_json::Value, now: jiff::Timestamp) -> String {
    if g.is_null() {
        return "-".into();
    }
    let at = |k: &str| {
        g[k].as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    // A request's grant says `revoked: true`; a listed grant carries the revocation itself.
    if g["revoked"] == true || g["revoked"].is_object() {
        return "revoked".into();
    }
    match (at("not_before"), at("expires_at")) {
        (_, Some(end)) if end <= now => "expired",
        (Some(start), _) if start > now => "not yet valid",
        _ => "active",
    }
    .into()
}

fn print_requests(v: &serde_json::Value) {
    let now = jiff::Timestamp::now();
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
            "TICKET",
            "GRANT",
            "GRANT STATE",
            "CREATED",
            "REASON",
        ],
        |r| {
            vec![
                s(&r["id"]),
                s(&r["status"]),
                format!("{}/{}", s(&r["customer"]), s(&r["target"])),
                sallyport_ids::short(&s(&r["technician"])),
                s(&r["minutes"]),
                format!(
                    "{}/{}",
                    r["approvals"].as_array().map_or(0, Vec::len),
                    s(&r["approvals_required"])
                ),
                s(&r["ticket"]),
                s(&r["grant_id"]),
                grant_state(&r["grant"], now),
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
            "GRANT",
            "BREAK-GLASS",
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
                sallyport_ids::short(&s(&r["technician"])),
                s(&r["grant_id"]),
                if r["break_glass"] == true {
                    "BREAK-GLASS"
                } else {
                    "no"
                }
                .into(),
                s(&r["opened_at"]),
                format!("{}s", s(&r["duration_seconds"])),
                s(&r["bytes_up"]),
                s(&r["bytes_down"]),
                s(&r["close_reason"]),
            ]
        },
    );
}

/// `sallyport cancel REQUEST_ID`: the technician withdraws their pending request.
pub fn cancel(request_id: &str, reason: Option<String>, client: &ClientArgs) -> anyhow::Result<()> {
    let body = match reason {
        Some(r) => serde_json::json!({ "reason": r }),
        None => serde_json::json!({}),
    };
    let v = call(
        client,
        hyper::Method::POST,
        &format!("/v1/requests/{}/cancel", urlencode(request_id)),
        Some(body),
    )?;
    if client.json {
        emit(&v);
    } else {
        emit(format!(
            "cancelled {request_id} ({}/{}): nobody can approve it now",
            s(&v["customer"]),
            s(&v["target"])
        ));
    }
    Ok(())
}

/// `sallyport targets`: what the identity may request, per customer.
pub fn targets(client: &ClientArgs) -> anyhow::Result<()> {
    let v = call(client, hyper::Method::GET, "/v1/targets", None)?;
    if client.json {
        emit(&v);
        return Ok(());
    }
    print_list(
        &v,
        "targets",
        &[
            "CUSTOMER",
            "TARGET",
            "PORT",
            "PROTOCOL",
            "TAGS",
            "MAX MINUTES",
            "APPROVALS",
            "REQUEST WITH",
        ],
        |t| {
            let tags: Vec<String> = t["tags"].as_array().into_iter().flatten().map(s).collect();
            vec![
                s(&t["customer"]),
                s(&t["target"]),
                s(&t["port"]),
                s(&t["protocol"]),
                if tags.is_empty() {
                    "-".into()
                } else {
                    tags.join(",")
                },
                s(&t["max_minutes"]),
                s(&t["approvals_required"]),
                format!(
                    "sallyport request {}/{}",
                    s(&t["customer"]),
                    s(&t["target"])
                ),
            ]
        },
    );
    Ok(())
}

/// `sallyport grants`: lists grants (break-glass ones marked, with who minted them and why).
pub fn grants(
    break_glass: bool,
    customer: Option<String>,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let mut q = Vec::new();
    if break_glass {
        q.push("break_glass=true".to_owned());
    }
    if let Some(c) = customer {
        q.push(format!("customer={}", urlencode(&c)));
    }
    let v = call(
        client,
        hyper::Method::GET,
        &with_query("/v1/grants", &q),
        None,
    )?;
    if client.json {
        emit(&v);
        return Ok(());
    }
    print_list(
        &v,
        "grants",
        &[
            "ID",
            "TARGET",
            "TECHNICIAN",
            "FROM",
            "UNTIL",
            "REVOKED",
            "APPROVAL",
        ],
        |r| {
            vec![
                s(&r["id"]),
                format!("{}/{}", s(&r["customer"]), s(&r["target"])),
                sallyport_ids::short(&s(&r["technician"])),
                s(&r["not_before"]),
                s(&r["expires_at"]),
                if r["revoked"].is_null() {
                    ""
                } else {
                    "revoked"
                }
                .into(),
                match r["break_glass"].as_object() {
                    Some(b) => format!(
                        "BREAK-GLASS by {}: {}",
                        b.get("by").and_then(|v| v.as_str()).unwrap_or("?"),
                        b.get("reason").and_then(|v| v.as_str()).unwrap_or("")
                    ),
                    None => format!("request {}", s(&r["request_id"])),
                },
            ]
        },
    );
    Ok(())
}

/// `sallyport revoke GRANT_ID --reason WHY`.
pub fn revoke(grant_id: &str, reason: &str, args: &ClientArgs) -> anyhow::Result<()> {
    let identity = IdentityDir::read(&args.identity)?;
    let client = sallyport_client::BrokerClient::new(&identity, args.broker.as_deref())?;
    let rt = runtime()?;
    let (status, body) = rt.block_on(client.call(
        hyper::Method::POST,
        &format!("/v1/grants/{grant_id}/revoke"),
        Some(serde_json::json!({ "reason": reason })),
    ))?;
    if !status.is_success() {
        return Err(anyhow!(sallyport_client::api::error_message(status, &body)));
    }
    if args.json {
        emit(&body);
    } else {
        println!(
            "revoked grant {} ({} live session(s) closed)",
            body["grant_id"].as_str().unwrap_or(grant_id),
            body["sessions_closed"]
        );
    }
    Ok(())
}
