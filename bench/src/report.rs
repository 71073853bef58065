//! The report: reads the raw results (one JSON object per run, as `bench/run` collected them) and the
//! run's context, and writes the tables: medians over rounds, the median of the per-round ratios to
//! HAProxy with their range, the proxy's CPU time per operation, and the issue's targets with where
//! Sallyport stands. The same Markdown goes to stdout and to `bench/RESULTS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::stats::{median, range};

/// Every system in table order.
pub const SYSTEMS: &[&str] = &[
    "sallyport",
    "sallyport-pq",
    "sallyport-noauth",
    "haproxy",
    "nginx",
    "direct",
];

/// The raw results.
pub struct Raw(pub Vec<Value>);

impl Raw {
    /// Parses JSON lines; blank lines are skipped.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            out.push(
                serde_json::from_str(line)
                    .map_err(|e| anyhow::anyhow!("raw results line {}: {e}", i + 1))?,
            );
        }
        Ok(Self(out))
    }

    /// Per round: `metric` of the runs of `workload` on `system` that match `filter` (key, value).
    fn series(
        &self,
        workload: &str,
        system: &str,
        filter: &[(&str, Value)],
        metric: &str,
    ) -> BTreeMap<u64, f64> {
        self.0
            .iter()
            .filter(|r| r["workload"] == workload && r["system"] == system)
            .filter(|r| filter.iter().all(|(k, v)| &r[*k] == v))
            .filter_map(|r| Some((r["round"].as_u64().unwrap_or(0), r[metric].as_f64()?)))
            .collect()
    }

    fn has(&self, workload: &str, system: &str) -> bool {
        self.0
            .iter()
            .any(|r| r["workload"] == workload && r["system"] == system)
    }

    fn first(&self, workload: &str) -> Option<&Value> {
        self.0.iter().find(|r| r["workload"] == workload)
    }

    fn all(&self, workload: &str) -> impl Iterator<Item = &Value> {
        self.0.iter().filter(move |r| r["workload"] == workload)
    }
}

fn values(s: &BTreeMap<u64, f64>) -> Vec<f64> {
    s.values().copied().collect()
}

/// Per-round `a / b`, for the rounds both have.
fn ratios(a: &BTreeMap<u64, f64>, b: &BTreeMap<u64, f64>) -> Vec<f64> {
    a.iter()
        .filter_map(|(round, x)| Some(x / b.get(round)?))
        .collect()
}

/// Per-round `a - b`.
fn differences(a: &BTreeMap<u64, f64>, b: &BTreeMap<u64, f64>) -> BTreeMap<u64, f64> {
    a.iter()
        .filter_map(|(round, x)| Some((*round, x - b.get(round)?)))
        .collect()
}

fn num(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(v) if v.is_finite() => {
            if v.abs() >= 1000.0 && decimals <= 1 {
                group_thousands(v.round() as i64)
            } else {
                format!("{v:.decimals$}")
            }
        }
        _ => "–".into(),
    }
}

fn group_thousands(v: i64) -> String {
    let s = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// "median [min–max]" of ratios.
fn ratio_cell(r: &[f64]) -> String {
    match (median(r), range(r)) {
        (Some(m), Some((lo, hi))) => format!("{m:.2}x [{lo:.2}–{hi:.2}]"),
        _ => "–".into(),
    }
}

fn spread_cell(v: &[f64], decimals: usize) -> String {
    match (median(v), range(v)) {
        (Some(m), Some((lo, hi))) => format!(
            "{} [{}–{}]",
            num(Some(m), decimals),
            num(Some(lo), decimals),
            num(Some(hi), decimals)
        ),
        _ => "–".into(),
    }
}

/// Which peer the ratios are taken against: HAProxy when it ran, else nginx.
fn reference(raw: &Raw, workload: &str) -> Option<&'static str> {
    ["haproxy", "nginx"]
        .into_iter()
        .find(|p| raw.has(workload, p))
}

fn sessions(raw: &Raw, out: &mut String) {
    let Some(_) = raw.first("sessions") else {
        return;
    };
    let peer = reference(raw, "sessions");
    let _ = writeln!(out, "### 1. New authorized sessions per second\n");
    let _ = writeln!(
        out,
        "Full TLS 1.3 handshake with a client certificate, (Sallyport: `CONNECT` with grant check, policy decision and durable audit records), dial, one small HTTP exchange, close. Peers terminate TLS and dial only.\n"
    );
    let _ = writeln!(
        out,
        "| system | sessions/s | proxy CPU µs/session | sessions/s vs {p} | CPU/session vs {p} |",
        p = peer.unwrap_or("peer")
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for s in SYSTEMS {
        let rate = raw.series("sessions", s, &[], "rate");
        if rate.is_empty() {
            continue;
        }
        let cpu = raw.series("sessions", s, &[], "cpu_us_per_op");
        let (vs_rate, vs_cpu) = match peer {
            Some(p) if *s != "direct" => (
                ratio_cell(&ratios(&rate, &raw.series("sessions", p, &[], "rate"))),
                ratio_cell(&ratios(
                    &cpu,
                    &raw.series("sessions", p, &[], "cpu_us_per_op"),
                )),
            ),
            _ => ("–".into(), "–".into()),
        };
        let cpu_cell = if *s == "direct" {
            "–".into()
        } else {
            spread_cell(&values(&cpu), 1)
        };
        let _ = writeln!(
            out,
            "| {s} | {} | {cpu_cell} | {vs_rate} | {vs_cpu} |",
            spread_cell(&values(&rate), 0)
        );
    }
    out.push('\n');
}

fn bulk(raw: &Raw, out: &mut String) {
    let Some(_) = raw.first("bulk") else {
        return;
    };
    let peer = reference(raw, "bulk");
    let _ = writeln!(out, "### 2. Bulk throughput through an open tunnel\n");
    let _ = writeln!(
        out,
        "| system | streams | MB/s | proxy CPU ns/byte | MB/s vs {p} | CPU/byte vs {p} | GB/s per proxy core |",
        p = peer.unwrap_or("peer")
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for streams in [1u64, 4] {
        let f = [("streams", Value::from(streams))];
        for s in SYSTEMS {
            let mbs = raw.series("bulk", s, &f, "mb_s");
            if mbs.is_empty() {
                continue;
            }
            let cpu = raw.series("bulk", s, &f, "cpu_ns_per_byte");
            let direct = *s == "direct";
            let (vs_mbs, vs_cpu) = match peer {
                Some(p) if !direct => (
                    ratio_cell(&ratios(&mbs, &raw.series("bulk", p, &f, "mb_s"))),
                    ratio_cell(&ratios(&cpu, &raw.series("bulk", p, &f, "cpu_ns_per_byte"))),
                ),
                _ => ("–".into(), "–".into()),
            };
            let per_core = median(&values(&cpu)).map(|ns| 1.0 / ns);
            let _ = writeln!(
                out,
                "| {s} | {streams} | {} | {} | {vs_mbs} | {vs_cpu} | {} |",
                spread_cell(&values(&mbs), 0),
                if direct {
                    "–".into()
                } else {
                    spread_cell(&values(&cpu), 3)
                },
                if direct {
                    "–".into()
                } else {
                    num(per_core, 2)
                },
            );
        }
    }
    out.push('\n');
}

fn latency(raw: &Raw, out: &mut String) {
    let Some(_) = raw.first("latency") else {
        return;
    };
    let _ = writeln!(out, "### 3. Round-trip latency of 64-byte echoes\n");
    if let Some(m) = raw.first("latency-max") {
        let _ = writeln!(
            out,
            "Fixed rates are 10, 50 and 80 % of {}'s closed-loop maximum ({} echoes/s over {} connections). Added latency is the system's percentile minus direct's, per round; median [range] over rounds. Late sends: probes whose slot had already passed when the previous echo on their connection came back, or when the load core woke the sender (sent at once; the pacing is then no longer exact).\n",
            m["system"].as_str().unwrap_or("the peer"),
            num(m["rate"].as_f64(), 0),
            m["connections"]
        );
    }
    let _ = writeln!(
        out,
        "| system | load | rate/s | late sends | p50 µs | p99 µs | added p50 µs | added p99 µs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for pct in [10u64, 50, 80] {
        let f = [("load_pct", Value::from(pct))];
        let d50 = raw.series("latency", "direct", &f, "p50_us");
        let d99 = raw.series("latency", "direct", &f, "p99_us");
        for s in SYSTEMS {
            let p50 = raw.series("latency", s, &f, "p50_us");
            if p50.is_empty() {
                continue;
            }
            let p99 = raw.series("latency", s, &f, "p99_us");
            let rate = raw.series("latency", s, &f, "rate");
            let late: Vec<f64> = raw
                .series("latency", s, &f, "late")
                .iter()
                .filter_map(|(round, late)| {
                    let probes = raw.series("latency", s, &f, "probes");
                    Some(100.0 * late / probes.get(round)?.max(1.0))
                })
                .collect();
            let (a50, a99) = if *s == "direct" {
                ("–".into(), "–".into())
            } else {
                (
                    spread_cell(&values(&differences(&p50, &d50)), 1),
                    spread_cell(&values(&differences(&p99, &d99)), 1),
                )
            };
            let _ = writeln!(
                out,
                "| {s} | {pct} % | {} | {} % | {} | {} | {a50} | {a99} |",
                num(median(&values(&rate)), 0),
                num(median(&late), 1),
                num(median(&values(&p50)), 1),
                num(median(&values(&p99)), 1),
            );
        }
    }
    out.push('\n');
}

fn idle(raw: &Raw, out: &mut String) {
    let Some(first) = raw.first("idle") else {
        return;
    };
    let peer = reference(raw, "idle");
    let _ = writeln!(out, "### 4. Memory per idle tunnel\n");
    let _ = writeln!(
        out,
        "Slope of the proxy's RSS over {} open tunnels (each checked with one echo).\n",
        first["levels"]
    );
    let _ = writeln!(
        out,
        "| system | KiB per tunnel | vs {p} |",
        p = peer.unwrap_or("peer")
    );
    let _ = writeln!(out, "|---|---:|---:|");
    for s in SYSTEMS {
        let kib: BTreeMap<u64, f64> = raw
            .series("idle", s, &[], "bytes_per_tunnel")
            .into_iter()
            .map(|(r, b)| (r, b / 1024.0))
            .collect();
        if kib.is_empty() {
            continue;
        }
        let vs = match peer {
            Some(p) => ratio_cell(&ratios(
                &raw.series("idle", s, &[], "bytes_per_tunnel"),
                &raw.series("idle", p, &[], "bytes_per_tunnel"),
            )),
            None => "–".into(),
        };
        let _ = writeln!(out, "| {s} | {} | {vs} |", spread_cell(&values(&kib), 1));
    }
    out.push('\n');
}

fn decisions(raw: &Raw, out: &mut String) {
    let runs: Vec<&Value> = raw.all("decisions").collect();
    let crit: Vec<&Value> = raw.all("criterion").collect();
    if runs.is_empty() && crit.is_empty() {
        return;
    }
    let _ = writeln!(out, "### 5. Decisions\n");
    if !runs.is_empty() {
        let _ = writeln!(
            out,
            "Per call, timed one by one, customers taken round robin (`sallyport-bench decisions`). A grant is verified in full (signature) at its first use; the broker then remembers it and checks its time window, binding and revocation on each later tunnel.\n"
        );
        let _ = writeln!(
            out,
            "| policies per customer | customers | grant p50/p99 µs | grant, first use, p50/p99 µs | policy p50/p99 µs | grant + policy p50/p99 µs | grant (first use) + policy p50/p99 µs |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
        for r in runs {
            let pair =
                |a: &str, b: &str| format!("{} / {}", num(r[a].as_f64(), 1), num(r[b].as_f64(), 1));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r["policies"],
                r["customers"],
                pair("grant_p50_us", "grant_p99_us"),
                pair("grant_first_p50_us", "grant_first_p99_us"),
                pair("policy_p50_us", "policy_p99_us"),
                pair("both_p50_us", "both_p99_us"),
                pair("both_first_p50_us", "both_first_p99_us"),
            );
        }
        out.push('\n');
    }
    if !crit.is_empty() {
        let _ = writeln!(
            out,
            "Criterion (`cargo bench -p sallyport-bench --features micro`):\n"
        );
        let _ = writeln!(out, "| benchmark | median µs | mean µs |");
        let _ = writeln!(out, "|---|---:|---:|");
        for r in crit {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                r["name"].as_str().unwrap_or(""),
                num(r["median_ns"].as_f64().map(|n| n / 1e3), 2),
                num(r["mean_ns"].as_f64().map(|n| n / 1e3), 2)
            );
        }
        out.push('\n');
    }
}

fn audit(raw: &Raw, out: &mut String) {
    let runs: Vec<&Value> = raw.all("audit").collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(out, "### 6. Audit: durable records per second\n");
    let _ = writeln!(
        out,
        "Concurrent writers appending to one chain; every acknowledged record is fsync'ed (group commit), checkpoints signed every 1,000 records.\n"
    );
    let _ = writeln!(out, "| writers | chains | records/s |");
    let _ = writeln!(out, "|---:|---:|---:|");
    let mut by: BTreeMap<(u64, u64), Vec<f64>> = BTreeMap::new();
    for r in runs {
        if let (Some(w), Some(c), Some(rate)) = (
            r["writers"].as_u64(),
            r["chains"].as_u64(),
            r["rate"].as_f64(),
        ) {
            by.entry((w, c)).or_default().push(rate);
        }
    }
    for ((w, c), rates) in by {
        let _ = writeln!(out, "| {w} | {c} | {} |", spread_cell(&rates, 0));
    }
    out.push('\n');
}

fn machine(raw: &Raw, out: &mut String) {
    let speed = raw.first("openssl-speed");
    let direct1 = raw.series("bulk", "direct", &[("streams", Value::from(1u64))], "mb_s");
    if speed.is_none() && direct1.is_empty() {
        return;
    }
    let _ = writeln!(out, "### Machine limits\n");
    if let Some(s) = speed {
        let _ = writeln!(
            out,
            "- `openssl speed -evp aes-128-gcm`, 16 KiB blocks, one core: {} MB/s",
            num(s["aes128gcm_16k_mb_s"].as_f64(), 0)
        );
        let _ = writeln!(
            out,
            "- `openssl speed`, one core: ECDSA P-256 {} sign/s, {} verify/s; X25519 {} op/s; Ed25519 {} sign/s, {} verify/s",
            num(s["p256_sign_s"].as_f64(), 0),
            num(s["p256_verify_s"].as_f64(), 0),
            num(s["x25519_s"].as_f64(), 0),
            num(s["ed25519_sign_s"].as_f64(), 0),
            num(s["ed25519_verify_s"].as_f64(), 0),
        );
    }
    if !direct1.is_empty() {
        let _ = writeln!(
            out,
            "- Direct loopback TCP, one stream (load and sink on one core): {} MB/s",
            num(median(&values(&direct1)), 0)
        );
    }
    out.push('\n');
}

/// One target of the issue: what, where Sallyport is, and whether it is met.
fn targets(raw: &Raw, out: &mut String) {
    let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
    let med =
        |w: &str, s: &str, f: &[(&str, Value)], m: &str| median(&values(&raw.series(w, s, f, m)));
    let rat = |w: &str, a: &str, b: &str, f: &[(&str, Value)], m: &str| {
        median(&ratios(&raw.series(w, a, f, m), &raw.series(w, b, f, m)))
    };
    if let Some(r) = rat("sessions", "sallyport", "haproxy", &[], "rate") {
        let cpu = rat("sessions", "sallyport", "haproxy", &[], "cpu_us_per_op");
        rows.push((
            "Sessions/s ≥ 1.5x HAProxy (full authorization, durable audit)".into(),
            format!(
                "{r:.2}x the rate; CPU per session {}x HAProxy's (so {}x the sessions per proxy core)",
                num(cpu, 2),
                num(cpu.map(|c| 1.0 / c), 2)
            ),
            Some(r >= 1.5),
        ));
    }
    let f1 = [("streams", Value::from(1u64))];
    if let Some(r) = rat("bulk", "sallyport", "haproxy", &f1, "cpu_ns_per_byte") {
        rows.push((
            "Bulk CPU per byte ≤ 0.8x HAProxy's".into(),
            format!("{r:.2}x (1 stream)"),
            Some(r <= 0.8),
        ));
    }
    if let Some(ns) = med("bulk", "sallyport", &f1, "cpu_ns_per_byte") {
        let gbs = 1.0 / ns;
        rows.push((
            "≥ 2.5 GB/s per proxy core".into(),
            format!("{gbs:.2} GB/s per core (bytes / proxy CPU time, 1 stream)"),
            Some(gbs >= 2.5),
        ));
    }
    let f50 = [("load_pct", Value::from(50u64))];
    let added = |s: &str| {
        median(&values(&differences(
            &raw.series("latency", s, &f50, "p99_us"),
            &raw.series("latency", "direct", &f50, "p99_us"),
        )))
    };
    if let (Some(a), Some(h)) = (added("sallyport"), added("haproxy")) {
        rows.push((
            "Added p99 at 50 % load ≤ HAProxy's".into(),
            format!("{a:.1} µs vs {h:.1} µs"),
            Some(a <= h),
        ));
    }
    if let Some(b) = med("idle", "sallyport", &[], "bytes_per_tunnel") {
        let h = med("idle", "haproxy", &[], "bytes_per_tunnel");
        rows.push((
            "Idle tunnel ≤ 16 KiB and ≤ half of HAProxy's".into(),
            format!(
                "{:.1} KiB (HAProxy {} KiB; {})",
                b / 1024.0,
                num(h.map(|h| h / 1024.0), 1),
                h.map_or_else(|| "–".to_owned(), |h| format!("{:.3}x", b / h))
            ),
            Some(b <= 16.0 * 1024.0 && h.is_none_or(|h| b <= h / 2.0)),
        ));
    }
    if let Some(r) = raw
        .all("decisions")
        .find(|r| r["policies"] == 20 && r["customers"] == 1000)
        && let Some(p99) = r["both_p99_us"].as_f64()
    {
        let first = r["both_first_p99_us"]
            .as_f64()
            .map_or_else(String::new, |f| {
                format!("; {f:.1} µs at a grant's first use (signature checked)")
            });
        rows.push((
            "Decision (grant + policy) p99 ≤ 25 µs, 20 policies, 1,000 customers".into(),
            format!("{p99:.1} µs with the grant remembered{first}"),
            Some(p99 <= 25.0),
        ));
    }
    let best_audit = raw
        .all("audit")
        .filter_map(|r| r["rate"].as_f64())
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    if let Some(a) = best_audit {
        rows.push((
            "Audit ≥ 50,000 durable records/s".into(),
            format!("{} records/s (best writer count)", num(Some(a), 0)),
            Some(a >= 50_000.0),
        ));
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "### Targets (issue 5)\n");
    let _ = writeln!(out, "| target | Sallyport now | met |");
    let _ = writeln!(out, "|---|---|---|");
    for (what, now, met) in rows {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "–",
        };
        let _ = writeln!(out, "| {what} | {now} | {met} |");
    }
    out.push('\n');
}

/// The tables, in Markdown.
pub fn tables(raw: &Raw) -> String {
    let mut out = String::new();
    targets(raw, &mut out);
    sessions(raw, &mut out);
    bulk(raw, &mut out);
    latency(raw, &mut out);
    idle(raw, &mut out);
    decisions(raw, &mut out);
    audit(raw, &mut out);
    machine(raw, &mut out);
    out
}

/// Criterion's estimates: every `*/new/estimates.json` under `dir`, named by its `benchmark.json`.
pub fn criterion_results(dir: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    found.push(path);
                } else {
                    walk(&path, found)?;
                }
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(dir, &mut found).map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?;
    found.sort();
    let mut out = Vec::new();
    for new in found {
        let read = |f: &str| -> anyhow::Result<Value> {
            let p = new.join(f);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            Ok(serde_json::from_str(&text)?)
        };
        let (Ok(bench), Ok(est)) = (read("benchmark.json"), read("estimates.json")) else {
            continue;
        };
        out.push(serde_json::json!({
            "name": bench["full_id"],
            "median_ns": est["median"]["point_estimate"],
            "mean_ns": est["mean"]["point_estimate"],
        }));
    }
    Ok(out)
}

/// The whole `RESULTS.md`: context from `meta` (written by `bench/run`), the tables, how to read
/// them, the commands, and the raw figures.
pub fn document(raw: &Raw, raw_text: &str, meta: &Value) -> String {
    let mut out = String::from("# Sallyport benchmark results\n\n");
    let s = |k: &str| meta[k].as_str().unwrap_or("unknown").trim().to_owned();
    let _ = writeln!(
        out,
        "Written by `bench/run{}` on {}. Mode: {}, {} round(s); each workload alternates the systems within a round.\n",
        if meta["mode"] == "quick" {
            " --quick"
        } else {
            ""
        },
        s("date"),
        s("mode"),
        s("rounds")
    );
    if meta["mode"] == "quick" {
        let _ = writeln!(
            out,
            "**Quick mode**: every workload ran briefly, to check the harness works. These figures are not measurements.\n"
        );
    }
    let _ = writeln!(out, "## Machine and versions\n");
    for (k, label) in [
        ("machine", "machine"),
        ("cpu", "CPU"),
        ("kernel", "kernel"),
        ("sallyport", "Sallyport"),
        ("rustc", "rustc"),
        ("profile", "cargo profile"),
        ("haproxy", "HAProxy"),
        ("nginx", "nginx"),
        ("openssl", "OpenSSL"),
        ("load", "machine load"),
    ] {
        let _ = writeln!(out, "- {label}: {}", s(k));
    }
    out.push('\n');
    let _ = writeln!(out, "## Set-up\n");
    let _ = writeln!(out, "{}\n", s("setup"));
    let _ = writeln!(out, "## Results\n");
    out.push_str(&tables(raw));
    if let Some(notes) = meta["notes"].as_str() {
        let _ = writeln!(out, "## Notes\n\n{}\n", notes.trim());
    }
    let _ = writeln!(out, "## Commands\n");
    let _ = writeln!(
        out,
        "The first round's commands, as run (later rounds repeat them with another `--label round=N`):\n"
    );
    let _ = writeln!(out, "```sh\n{}\n```\n", s("commands"));
    let _ = writeln!(out, "## Raw figures\n");
    let _ = writeln!(
        out,
        "One JSON object per run (`bench/work/raw.jsonl`).\n\n<details><summary>raw.jsonl</summary>\n\n```json\n{}\n```\n\n</details>\n",
        raw_text.trim()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_per_round_and_tables_render() {
        let text = [
            r#"{"workload":"sessions","system":"sallyport","round":1,"rate":300,"cpu_us_per_op":100}"#,
            r#"{"workload":"sessions","system":"haproxy","round":1,"rate":200,"cpu_us_per_op":200}"#,
            r#"{"workload":"sessions","system":"sallyport","round":2,"rate":400,"cpu_us_per_op":100}"#,
            r#"{"workload":"sessions","system":"haproxy","round":2,"rate":200,"cpu_us_per_op":100}"#,
            r#"{"workload":"sessions","system":"direct","round":1,"rate":900,"cpu_us_per_op":null}"#,
        ]
        .join("\n");
        let raw = Raw::parse(&text).unwrap();
        let t = tables(&raw);
        assert!(t.contains("| sallyport | 350 [300–400] |"), "{t}");
        assert!(t.contains("1.75x [1.50–2.00]"), "{t}");
        assert!(t.contains("| Sessions/s ≥ 1.5x HAProxy"), "{t}");
        assert_eq!(group_thousands(1234567), "1,234,567");
    }
}
