//! Round-trip latency of 64-byte echoes on open tunnels, one blocking thread per connection so each
//! probe is sent on time (nanosleep with a 1 ns timer slack; tokio's timers tick in milliseconds).
//! Closed loop (each connection sends its next probe as soon as the last came back) finds the
//! maximum rate; paced runs send at a fixed total rate spread evenly over the connections. Latency is
//! measured from each probe's send to its echo.

use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::{Value, json};

use crate::PROBE_BYTES;
use crate::client::Endpoint;
use crate::load::Window;
use crate::measure::{Proc, cpu_ns};
use crate::stats::quantile;

#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    from: Instant,
    to: Instant,
}

#[derive(Default)]
struct ThreadResult {
    samples: Vec<u64>,
    late: u64,
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Runs probes over `conns` connections: closed loop when `rate` is `None`, else `rate` probes per
/// second in total.
pub fn run(
    ep: &Endpoint,
    conns: usize,
    rate: Option<f64>,
    window: Window,
    proxy: Option<Proc>,
) -> anyhow::Result<Value> {
    let conns = conns.max(1);
    let schedule: Arc<OnceLock<Schedule>> = Arc::new(OnceLock::new());
    let ready = Arc::new(Barrier::new(conns + 1));
    let mut threads = Vec::new();
    for i in 0..conns {
        let (ep, schedule, ready) = (ep.clone(), schedule.clone(), ready.clone());
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<ThreadResult> {
                // Own thread only: wake on time instead of up to 50 us late.
                let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
                let opened = ep.open_blocking();
                ready.wait();
                let mut s = opened?;
                let sched = *schedule
                    .get()
                    .ok_or_else(|| anyhow!("no schedule was set"))?;
                let end = sched.to;
                let probe = [0x42u8; PROBE_BYTES];
                let mut back = [0u8; PROBE_BYTES];
                let mut out = ThreadResult::default();
                let interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
                let mut next = match interval {
                    Some(iv) => sched.start + iv.mul_f64(i as f64 / conns as f64),
                    None => sched.start,
                };
                sleep_until(next);
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    s.write_all(&probe).context("sending a probe")?;
                    s.read_exact(&mut back).context("reading an echo")?;
                    let t1 = Instant::now();
                    if t0 >= sched.from && t0 < sched.to {
                        out.samples.push((t1 - t0).as_nanos() as u64);
                    }
                    if let Some(iv) = interval {
                        next += iv;
                        if next < t1 && t0 >= sched.from && t0 < sched.to {
                            out.late += 1;
                        }
                        sleep_until(next);
                    }
                }
                Ok(out)
            },
        ));
    }
    let start = Instant::now() + Duration::from_millis(50);
    let from = start + window.warmup;
    let to = from + window.duration;
    let _ = schedule.set(Schedule { start, from, to });
    ready.wait();
    sleep_until(from);
    let c0 = cpu_ns(proxy.as_ref())?;
    sleep_until(to);
    let c1 = cpu_ns(proxy.as_ref())?;
    let mut samples = Vec::new();
    let mut late = 0;
    for t in threads {
        let r = t.join().map_err(|_| anyhow!("a probe thread panicked"))??;
        samples.extend(r.samples);
        late += r.late;
    }
    samples.sort_unstable();
    let n = samples.len() as u64;
    anyhow::ensure!(n > 0, "no probe came back in the window");
    let secs = window.duration.as_secs_f64();
    let us = |q: f64| quantile(&samples, q) as f64 / 1e3;
    Ok(json!({
        "connections": conns,
        "target_rate": rate,
        "rate": n as f64 / secs,
        "probes": n,
        "late": late,
        "p50_us": us(0.50),
        "p90_us": us(0.90),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "max_us": us(1.0),
        "proxy_cpu_ns": c1.saturating_sub(c0),
        "cpu_us_per_op": c1.saturating_sub(c0) as f64 / n as f64 / 1e3,
    }))
}
