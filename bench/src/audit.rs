//! Durable audit records per second: `writers` tasks append tunnel-decision records as fast as the
//! trail acknowledges them (each acknowledged record is fsync'ed; the writer thread commits every
//! record waiting as one batch), on a real folder, with checkpoints signed as the broker's defaults
//! say (every 1,000 records).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sallyport_audit::{AuditEvent, AuditLog, Checkpoints, EventKind, Outcome};
use sallyport_certs::signing::Ed25519Signer;
use sallyport_ids::CustomerId;
use serde_json::{Value, json};

use crate::load::Window;

fn record(i: usize, chain: &CustomerId) -> AuditEvent {
    let mut ev = AuditEvent::new(
        EventKind::Decision,
        Outcome::Allow,
        "permitted by policy `support-any-time`",
    );
    ev.customer = Some(chain.clone());
    ev.actor = Some(format!(
        "spiffe://sallyport.local/technician/northwind/tech{i}"
    ));
    ev.target = Some("db01".into());
    ev.grant_id = "g-2f0c8e5b7d9a4c1e8f3b6a0d2c4e6f80".parse().ok();
    ev.session_id = format!("s-{i:032x}").parse().ok();
    ev.source_ip = Some(std::net::IpAddr::from([10, 1, 2, 3]));
    ev.policy_ids = vec!["support-any-time".into()];
    ev.expires_at = Some("2030-01-01T00:00:00Z".into());
    ev
}

/// Appends from `writers` tasks over `chains` customer chains in a fresh `dir`; returns records/s.
pub async fn run(
    dir: &Path,
    writers: usize,
    chains: usize,
    window: Window,
) -> anyhow::Result<Value> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let names: Vec<String> = (0..chains.max(1)).map(|c| format!("cust{c}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let key = sallyport_certs::grant::generate_signing_key_pem()?;
    let checkpoints = Checkpoints {
        signer: Arc::new(Ed25519Signer::from_pkcs8_pem(&key)?),
        every_records: 1000,
        every: Duration::from_secs(60),
        quiet: sallyport_audit::checkpoint::QUIET,
    };
    let (log, writer) = AuditLog::open(dir, &refs, Some(checkpoints))?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..writers.max(1) {
        let (log, done, failed, stop) = (log.clone(), done.clone(), failed.clone(), stop.clone());
        let chain: CustomerId = names[i % names.len()].parse()?;
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match log.append(record(i, &chain)).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(window.warmup).await;
    let (n0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window.duration).await;
    let (n1, secs) = (done.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    drop(log);
    tokio::task::spawn_blocking(move || writer.join()).await?;
    let total: u64 = names
        .iter()
        .map(|n| sallyport_audit::verify_chain(dir, n))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|e| anyhow::anyhow!("the trail does not verify: {e}"))?
        .iter()
        .sum();
    let failures = failed.load(Ordering::Relaxed);
    anyhow::ensure!(failures == 0, "{failures} appends failed");
    Ok(json!({
        "writers": writers,
        "chains": chains,
        "records": n1 - n0,
        "secs": secs,
        "rate": (n1 - n0) as f64 / secs,
        "records_on_disk": total,
    }))
}
