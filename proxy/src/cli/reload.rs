//! `sallyport reload`: asks the broker to read its configuration and policies again (`POST
//! /v1/reload`, provider admins), and prints what changed: customers added, changed and removed,
//! the policy digests in force, and the tunnels closed because the new policy no longer allows
//! them. A refused file exits 64 with the file's error, like `serve`; the broker keeps serving
//! the configuration in force.

use anyhow::anyhow;
use sallyport_certs::identity_dir::IdentityDir;

use super::{ClientArgs, Failure, runtime};

/// `sallyport reload`.
pub fn reload(args: &ClientArgs) -> Result<(), Failure> {
    let identity = IdentityDir::read(args.identity()).map_err(anyhow::Error::from)?;
    let client = sallyport_client::BrokerClient::new(&identity, args.broker())
        .map_err(anyhow::Error::from)?;
    let (status, v) = runtime()?
        .block_on(client.call(hyper::Method::POST, "/v1/reload", None))
        .map_err(anyhow::Error::from)?;
    if status == hyper::StatusCode::UNPROCESSABLE_ENTITY {
        let message = v["error"]["message"].as_str().unwrap_or("refused");
        return Err(Failure::Refused(format!(
            "the broker refused the reload and keeps serving the configuration in force: {message}"
        )));
    }
    if !status.is_success() {
        return Err(Failure::Other(anyhow!(
            sallyport_client::api::error_message(status, &v)
        )));
    }
    if args.json {
        println!("{v}");
        return Ok(());
    }
    let names = |key: &str| {
        let list: Vec<&str> = v[key]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
            .unwrap_or_default();
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    println!(
        "reloaded: added {}; changed {}; removed {}",
        names("added"),
        names("changed"),
        names("removed")
    );
    for p in v["policies"].as_array().into_iter().flatten() {
        println!(
            "  {:<20} policy sha256 {}",
            p["customer"].as_str().unwrap_or(""),
            p["policy_digest"].as_str().unwrap_or("")
        );
    }
    let closed = v["sessions_closed"].as_array().map_or(0, Vec::len);
    println!("{closed} live tunnel(s) closed (policy changed)");
    for s in v["sessions_closed"].as_array().into_iter().flatten() {
        println!(
            "  {} {}/{} {}: {}",
            s["session_id"].as_str().unwrap_or(""),
            s["customer"].as_str().unwrap_or(""),
            s["target"].as_str().unwrap_or(""),
            sallyport_ids::short(s["technician"].as_str().unwrap_or("")),
            s["why"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
