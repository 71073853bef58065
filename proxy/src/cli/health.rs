//! `sallyport health --admin ADDR`: GETs `http://ADDR/readyz` from a running broker's admin listener
//! and exits 0 when it says ready, 1 otherwise, printing the checks (and which fail, and why). For a
//! container HEALTHCHECK: the image has no curl. The whole probe is bounded by [`DEADLINE`].

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Connect, ask and read the answer within this.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// `sallyport health --admin ADDR`.
pub fn health(admin: &str) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    let (status, body) = rt
        .block_on(async { tokio::time::timeout(DEADLINE, readyz(admin)).await })
        .map_err(|_| {
            anyhow!(
                "the admin listener at {admin} did not answer within {} s",
                DEADLINE.as_secs()
            )
        })??;
    let answer: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
        format!("http://{admin}/readyz answered {status} with no readiness report")
    })?;
    let checks = answer["checks"].as_array().cloned().unwrap_or_default();
    let line = |c: &serde_json::Value| {
        let name = c["name"].as_str().unwrap_or("?");
        match c["error"].as_str() {
            None => format!("{name}: ok"),
            Some(e) => format!("{name}: {e}"),
        }
    };
    if status == hyper::StatusCode::OK {
        println!(
            "ready ({})",
            checks.iter().map(line).collect::<Vec<_>>().join("; ")
        );
        return Ok(());
    }
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| c["ok"] != true)
        .map(line)
        .collect();
    if failing.is_empty() {
        bail!("not ready: http://{admin}/readyz answered {status}");
    }
    bail!("not ready: {}", failing.join("; "))
}

/// One `GET /readyz`: its status and body.
async fn readyz(admin: &str) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach the admin listener at {admin}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .with_context(|| format!("talking to {admin}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/readyz")
        .header(hyper::header::HOST, admin)
        .body(Empty::<Bytes>::new())?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("GET http://{admin}/readyz"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer of http://{admin}/readyz: {e}"))?
        .to_bytes();
    Ok((status, body))
}
