//! The async workloads, each a fixed window after a warm-up, with the proxy's CPU time read at both
//! ends of the window: new sessions per second, bulk throughput through open tunnels, and the memory
//! of idle tunnels.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{Endpoint, Io};
use crate::measure::{Proc, cpu_ns};
use crate::{HTTP_REQUEST, HTTP_RESPONSE, PROBE_BYTES};

/// A warm-up, then the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Load runs this long before the window opens.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// Counters shared by the load tasks.
#[derive(Default)]
struct Shared {
    done: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What was counted over the window.
struct Measured {
    ops: u64,
    secs: f64,
    cpu_ns: u64,
}

/// Waits out the warm-up, then measures `counter` and the proxy's CPU over the window.
async fn measure(
    window: Window,
    shared: &Shared,
    proxy: Option<&Proc>,
    counter: impl Fn(&Shared) -> u64,
) -> anyhow::Result<Measured> {
    tokio::time::sleep(window.warmup).await;
    let (n0, c0, t0) = (counter(shared), cpu_ns(proxy)?, Instant::now());
    tokio::time::sleep(window.duration).await;
    let (n1, c1, secs) = (counter(shared), cpu_ns(proxy)?, t0.elapsed().as_secs_f64());
    shared.stop.store(true, Ordering::Relaxed);
    Ok(Measured {
        ops: n1 - n0,
        secs,
        cpu_ns: c1.saturating_sub(c0),
    })
}

/// [`measure`] of the `done` counter, then waits (up to 10 s each) for the load tasks to stop.
async fn measure_done(
    window: Window,
    shared: &Shared,
    proxy: Option<&Proc>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Measured> {
    let m = measure(window, shared, proxy, |s| s.done.load(Ordering::Relaxed)).await?;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    Ok(m)
}

/// One new session: connect (handshake, `CONNECT` for Sallyport), one small HTTP exchange, close.
async fn one_session(ep: &Endpoint) -> anyhow::Result<()> {
    let mut s = ep.open().await?;
    s.write_all(HTTP_REQUEST).await?;
    let mut answer = [0u8; HTTP_RESPONSE.len()];
    s.read_exact(&mut answer).await?;
    if answer != HTTP_RESPONSE {
        bail!("unexpected answer from the origin");
    }
    s.shutdown().await?;
    Ok(())
}

/// New sessions per second with `concurrency` clients, each opening sessions back to back.
pub async fn sessions(
    ep: Endpoint,
    concurrency: usize,
    window: Window,
    proxy: Option<Proc>,
) -> anyhow::Result<Value> {
    let shared = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (ep, shared) = (ep.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                match one_session(&ep).await {
                    Ok(()) => {
                        shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.error(&e);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let m = measure_done(window, &shared, proxy.as_ref(), tasks).await?;
    finish(
        &shared,
        m.ops,
        json!({
            "concurrency": concurrency,
            "sessions": m.ops,
            "secs": m.secs,
            "rate": m.ops as f64 / m.secs,
            "proxy_cpu_ns": m.cpu_ns,
            "cpu_us_per_op": per(m.cpu_ns, m.ops) / 1e3,
        }),
    )
}

/// Bulk upload through `streams` open tunnels into the sink, 64 KiB writes.
pub async fn bulk(
    ep: Endpoint,
    streams: usize,
    window: Window,
    proxy: Option<Proc>,
) -> anyhow::Result<Value> {
    let shared = Arc::new(Shared::default());
    let mut opened: Vec<Box<dyn Io>> = Vec::new();
    for _ in 0..streams {
        opened.push(ep.open().await?);
    }
    let mut tasks = Vec::new();
    for mut s in opened {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let buf = vec![0x5au8; 64 * 1024];
            while !shared.stop.load(Ordering::Relaxed) {
                match s.write_all(&buf).await {
                    Ok(()) => {
                        shared.done.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.error(&e.into());
                        return;
                    }
                }
            }
            let _ = s.shutdown().await;
        }));
    }
    let m = measure_done(window, &shared, proxy.as_ref(), tasks).await?;
    finish(
        &shared,
        m.ops,
        json!({
            "streams": streams,
            "bytes": m.ops,
            "secs": m.secs,
            "mb_s": m.ops as f64 / m.secs / 1e6,
            "proxy_cpu_ns": m.cpu_ns,
            "cpu_ns_per_byte": per(m.cpu_ns, m.ops),
        }),
    )
}

/// Opens tunnels to the echo server up to each of `levels` (checking each with one echo), waits
/// `settle`, and reads the proxy's resident memory; the slope is the memory of one idle tunnel.
pub async fn idle(
    ep: Endpoint,
    levels: &[usize],
    parallel: usize,
    settle: Duration,
    proxy: Proc,
) -> anyhow::Result<Value> {
    let mut open: Vec<Box<dyn Io>> = Vec::new();
    let mut points = Vec::new();
    let rss0 = proxy.rss_bytes()?;
    let started = Instant::now();
    for &level in levels {
        while open.len() < level {
            let batch = (level - open.len()).min(parallel);
            let mut tasks = Vec::new();
            for _ in 0..batch {
                let ep = ep.clone();
                tasks.push(tokio::spawn(async move {
                    let mut s = ep.open().await?;
                    let probe = [7u8; PROBE_BYTES];
                    s.write_all(&probe).await?;
                    let mut back = [0u8; PROBE_BYTES];
                    s.read_exact(&mut back).await?;
                    anyhow::ensure!(back == probe, "echo mismatch");
                    Ok::<_, anyhow::Error>(s)
                }));
            }
            for t in tasks {
                open.push(t.await??);
            }
        }
        tokio::time::sleep(settle).await;
        points.push((level as f64, proxy.rss_bytes()? as f64));
    }
    let secs = started.elapsed().as_secs_f64();
    let slope = crate::stats::slope(&points).unwrap_or(f64::NAN);
    drop(open);
    Ok(json!({
        "levels": levels,
        "rss_bytes": points.iter().map(|p| p.1).collect::<Vec<_>>(),
        "rss_start_bytes": rss0,
        "bytes_per_tunnel": slope,
        "open_secs": secs,
    }))
}

fn per(ns: u64, ops: u64) -> f64 {
    if ops == 0 {
        f64::NAN
    } else {
        ns as f64 / ops as f64
    }
}

fn finish(shared: &Shared, ops: u64, mut out: Value) -> anyhow::Result<Value> {
    let errors = shared.errors.load(Ordering::Relaxed);
    out["errors"] = json!(errors);
    if let Some(e) = shared.first_error() {
        out["first_error"] = json!(e);
    }
    if ops == 0 {
        bail!(
            "no operation completed; first error: {}",
            shared.first_error().unwrap_or_else(|| "none".into())
        );
    }
    Ok(out)
}
