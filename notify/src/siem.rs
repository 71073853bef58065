//! Forwarding each customer's audit trail into that customer's own SIEM, asynchronously, so it never
//! holds up a session. Each sink has an on-disk cursor (`<data_dir>/siem/<customer>.<n>.cursor`, the
//! last seq confirmed delivered); while the SIEM is down records wait in the chain itself, and when it
//! returns delivery resumes from the cursor. Delivery is at least once: a batch whose delivery was
//! not confirmed is sent again, and receivers dedupe or detect gaps by each record's `seq`.
//!
//! Sinks:
//! - `syslog`: RFC 5424 messages over TCP with RFC 6587 octet counting.
//! - `syslog-tls`: the same over TLS (RFC 5425).
//! - `https`: `POST` of the records as JSON lines (`application/x-ndjson`), with an optional bearer
//!   token; any 2xx confirms.
//!
//! Each sink counts its failed deliveries and reports its lag, the age of the oldest record it has
//! not yet confirmed (`sallyport_siem_failures_total`, `sallyport_siem_lag_seconds`).
//!
//! Syslog has no acknowledgement, so each batch goes over its own connection, which is then closed
//! from our side; the batch counts as delivered once the receiver has read everything and closed its
//! side too. A receiver that dies mid-batch leaves it
//! unconfirmed, and it is sent again. This is as strong as plain syslog allows: a receiver that
//! closes without having read what it was sent looks the same as one that read it. Where that
//! matters, use the `https` sink, whose 2xx is an explicit acknowledgement.
//!
//! A syslog message: `<110>1 TIME HOST sallyport - EVENT [sallyport@32473 customer="C" seq="N"] RECORD`,
//! facility 13 (log audit), severity 6 (informational) or 4 (warning) for denials and failures; the
//! message is the record line exactly as stored, so it can still be verified.
//!
//! Once a sink has every record, it also gets the chain's signed checkpoints (MSGID `checkpoint`,
//! `seq` the last record signed; over HTTPS, the checkpoint line among the JSON lines, told apart by
//! its `sig`). The customer's SIEM then holds signed anchors the provider cannot take back: a trail
//! later cut back or rewritten no longer matches them (`sallyport audit verify
//! --expect-checkpoints`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use rustls_pki_types::ServerName;
use sallyport_audit::{Health, segment};
use sallyport_config::SinkKind;
use sallyport_ids::CustomerId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::NotifyError;
use crate::client::HttpsClient;

/// Most records per batch.
const BATCH: usize = 500;
/// Connect, send and confirm must finish within this.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// One customer's SIEM sink.
#[derive(Debug, Clone)]
pub struct Sink {
    /// The customer whose chain it forwards.
    pub customer: CustomerId,
    /// Its index among the customer's sinks (names the cursor file).
    pub index: usize,
    /// Where to.
    pub kind: SinkKind,
    /// Its failed deliveries and its lag.
    pub metrics: sallyport_metrics::SinkMetrics,
}

/// Where a sink stands: the last seq delivered, and where the line after it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Last seq confirmed delivered.
    pub seq: u64,
    /// The segment (`YYYY-MM-DD`) that record is in.
    #[serde(default)]
    pub segment: Option<String>,
    /// Offset of the line after it in that segment.
    pub offset: u64,
    /// The seq of the last signed checkpoint delivered.
    #[serde(default)]
    pub checkpoint: u64,
}

/// One record waiting for delivery: its seq, its line, and the cursor once it is delivered.
pub type Pending = (u64, String, Cursor);

fn read_cursor(path: &Path) -> Cursor {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn write_cursor(path: &Path, c: &Cursor) -> std::io::Result<()> {
    let tmp = path.with_extension("cursor.tmp");
    let text = serde_json::to_string(c).map_err(std::io::Error::other)?;
    {
        let mut f = sallyport_ids::private::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Complete records of the chain folder `chain` after `cursor`, at most `max`. Reads on from the
/// cursor's segment and offset when they still point at the next record, else finds the seq again.
pub fn pending(chain: &Path, cursor: &Cursor, max: usize) -> std::io::Result<Vec<Pending>> {
    let at = cursor
        .segment
        .as_deref()
        .and_then(|d| d.parse::<jiff::civil::Date>().ok());
    if let Some(date) = at {
        match segment::Reader::open(chain, segment::Start::At(date, cursor.offset), None) {
            Ok(reader) => {
                let out = scan(reader, cursor.seq, max)?;
                if out.first().is_none_or(|(s, _, _)| *s == cursor.seq + 1) {
                    return Ok(out);
                }
                // The segment is not what the cursor remembers: find the seq again.
            }
            // Retired by retention: go on from the oldest segment kept.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let reader = segment::Reader::open(chain, segment::Start::AfterSeq(cursor.seq), None)?;
    scan(reader, cursor.seq, max)
}

/// Signed checkpoints of the chain folder `chain` not yet delivered whose records were (so the
/// receiver always holds what a checkpoint signs before the checkpoint), at most `max`.
pub fn checkpoints_pending(
    chain: &Path,
    cursor: &Cursor,
    max: usize,
) -> std::io::Result<Vec<Pending>> {
    let text = match std::fs::read_to_string(segment::checkpoints_path(chain)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(cp) = sallyport_audit::checkpoint::check(line, None) else {
            continue;
        };
        if cp.seq > cursor.checkpoint && cp.seq <= cursor.seq && out.len() < max {
            let next = Cursor {
                checkpoint: cp.seq,
                ..cursor.clone()
            };
            out.push((cp.seq, line.to_owned(), next));
        }
    }
    Ok(out)
}

/// The next batch for a sink at `cursor`: records after it, then the signed checkpoints of records
/// the batch delivers (so a busy chain still gets its checkpoints through).
pub fn batch_after(chain: &Path, cursor: &Cursor) -> std::io::Result<Vec<Pending>> {
    let mut batch: Vec<Pending> = pending(chain, cursor, BATCH)?
        .into_iter()
        .map(|(seq, line, next)| {
            let next = Cursor {
                checkpoint: cursor.checkpoint,
                ..next
            };
            (seq, line, next)
        })
        .collect();
    let upto = batch.last().map_or(cursor, |(_, _, next)| next).clone();
    batch.extend(checkpoints_pending(chain, &upto, BATCH)?);
    Ok(batch)
}

fn scan(reader: segment::Reader, after: u64, max: usize) -> std::io::Result<Vec<Pending>> {
    let mut out = Vec::new();
    for line in reader {
        let line = line?;
        if out.len() == max || !line.complete {
            break; // enough, or a torn last line (not a record yet)
        }
        let Some(seq) = serde_json::from_str::<serde_json::Value>(&line.text)
            .ok()
            .and_then(|v| v["seq"].as_u64())
        else {
            continue;
        };
        if seq > after {
            let cursor = Cursor {
                seq,
                segment: Some(line.date.to_string()),
                offset: line.end,
                checkpoint: 0,
            };
            out.push((seq, line.text, cursor));
        }
    }
    Ok(out)
}

/// The RFC 5424 message for one record line, octet-counted (RFC 6587).
pub fn syslog_frame(customer: &CustomerId, seq: u64, line: &str, host: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let bad = matches!(v["outcome"].as_str(), Some("deny" | "failure"));
    let pri = 13 * 8 + if bad { 4 } else { 6 };
    let time = v["time"].as_str().unwrap_or("-");
    let event = match v["event"].as_str() {
        Some(e) => e,
        None if v.get("sig").is_some() => "checkpoint",
        None => "-",
    };
    let msg = format!(
        "<{pri}>1 {time} {host} sallyport - {event} [sallyport@32473 customer=\"{customer}\" seq=\"{seq}\"] {line}"
    );
    format!("{} {msg}", msg.len())
}

/// The running SIEM forwarders, customer by customer, so that a reload can start, stop and replace
/// them. Stopping a customer's forwarders waits until they have stopped, so a replacement never
/// races its predecessor on a cursor file.
pub struct Forwarders {
    audit_dir: PathBuf,
    cursor_dir: PathBuf,
    host: String,
    health: Arc<Health>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    running: tokio::sync::Mutex<HashMap<CustomerId, Running>>,
}

/// One customer's forwarders.
struct Running {
    stop: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Forwarders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarders").finish_non_exhaustive()
    }
}

/// Starts one forwarder per sink, each on `tasks` (so shutdown waits for them) and ending when
/// `shutdown` is cancelled.
pub fn start(
    sinks: Vec<Sink>,
    audit_dir: PathBuf,
    cursor_dir: PathBuf,
    health: Arc<Health>,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> std::io::Result<Forwarders> {
    sallyport_ids::private::dir_all(&cursor_dir)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into());
    let mut forwarders = Forwarders {
        audit_dir,
        cursor_dir,
        host,
        health,
        shutdown,
        tasks: tasks.clone(),
        running: tokio::sync::Mutex::new(HashMap::new()),
    };
    let mut running = HashMap::new();
    forwarders.start_all(sinks, &mut running);
    *forwarders.running.get_mut() = running;
    Ok(forwarders)
}

impl Forwarders {
    /// After a reload: the forwarders of customers no longer in `sinks`, and of those `changed`
    /// says changed, stop (each finishes or abandons its batch; its cursor stays); then every
    /// customer in `sinks` without forwarders gets them, resuming from its cursors.
    pub async fn reconfigure(
        &self,
        sinks: Vec<Sink>,
        changed: &(dyn Fn(&CustomerId) -> bool + Sync),
    ) {
        let mut running = self.running.lock().await;
        let keep = |c: &CustomerId| !changed(c) && sinks.iter().any(|s| &s.customer == c);
        let gone: Vec<CustomerId> = running.keys().filter(|c| !keep(c)).cloned().collect();
        for c in gone {
            if let Some(r) = running.remove(&c) {
                r.stop.cancel();
                r.tasks.close();
                r.tasks.wait().await;
                tracing::debug!(customer = %c, "SIEM forwarding stopped for a reload");
            }
        }
        let fresh: Vec<Sink> = sinks
            .into_iter()
            .filter(|s| !running.contains_key(&s.customer))
            .collect();
        self.start_all(fresh, &mut running);
    }

    fn start_all(&self, sinks: Vec<Sink>, running: &mut HashMap<CustomerId, Running>) {
        for sink in sinks {
            let group = running
                .entry(sink.customer.clone())
                .or_insert_with(|| Running {
                    stop: self.shutdown.child_token(),
                    tasks: tokio_util::task::TaskTracker::new(),
                });
            let chain = segment::chain_dir(&self.audit_dir, sink.customer.as_str());
            let cursor = self
                .cursor_dir
                .join(format!("{}.{}.cursor", sink.customer, sink.index));
            let forward = run(
                sink,
                chain,
                cursor,
                self.host.clone(),
                self.health.clone(),
                group.stop.clone(),
            );
            self.tasks.spawn(group.tasks.track_future(forward));
        }
    }
}

async fn run(
    sink: Sink,
    chain: PathBuf,
    cursor_path: PathBuf,
    host: String,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut cursor = read_cursor(&cursor_path);
    let mut backoff = Duration::from_millis(200);
    loop {
        let (c, path) = (cursor.clone(), chain.clone());
        // Records, then the checkpoints that sign records delivered by then.
        let batch = tokio::task::spawn_blocking(move || batch_after(&path, &c)).await;
        let batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(customer = %sink.customer, error = %e, "cannot read the chain for SIEM delivery");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        sink.metrics.set_lag(lag(&batch));
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = health.appended() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let delivered = tokio::time::timeout(DELIVERY_TIMEOUT, deliver(&sink, &batch, &host)).await;
        match delivered {
            Ok(Ok(())) => {
                if let Some(first) = batch.first()
                    && first.0 > cursor.seq + 1
                {
                    tracing::error!(customer = %sink.customer, sink = ?sink.kind, missing_from = cursor.seq + 1, missing_to = first.0 - 1, "records were retired by audit retention before the SIEM took them");
                }
                if let Some((_, _, next)) = batch.last() {
                    cursor = next.clone();
                    if let Err(e) = write_cursor(&cursor_path, &cursor) {
                        tracing::warn!(path = %cursor_path.display(), error = %e, "cannot save the SIEM cursor (records may be sent again)");
                    }
                }
                tracing::debug!(customer = %sink.customer, sink = ?sink.kind, records = batch.len(), up_to = cursor.seq, "delivered to the SIEM");
                backoff = Duration::from_millis(200);
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                tracing::warn!(customer = %sink.customer, sink = ?sink.kind, error = %why, retry_in = ?backoff, waiting = batch.len(), "SIEM delivery failed; records wait on disk");
                sink.metrics.delivery_failed();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// How far behind a sink is that has `batch` to deliver next: the age of its oldest record (a
/// checkpoint line has no `time` of its own and counts as caught up).
fn lag(batch: &[Pending]) -> Duration {
    let oldest = batch.first().and_then(|(_, line, _)| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        v["time"].as_str()?.parse::<jiff::Timestamp>().ok()
    });
    oldest
        .and_then(|t| Duration::try_from(jiff::Timestamp::now().duration_since(t)).ok())
        .unwrap_or(Duration::ZERO)
}

async fn deliver(sink: &Sink, batch: &[Pending], host: &str) -> Result<(), NotifyError> {
    let frames = || {
        batch
            .iter()
            .map(|(seq, line, _)| syslog_frame(&sink.customer, *seq, line, host))
            .collect::<String>()
    };
    let unreachable = |e: std::io::Error| NotifyError::Unreachable(e.to_string());
    match &sink.kind {
        SinkKind::Syslog { address } => {
            let tcp = TcpStream::connect(address).await.map_err(unreachable)?;
            send_and_confirm(tcp, frames().as_bytes())
                .await
                .map_err(unreachable)
        }
        SinkKind::SyslogTls { address, tls } => {
            let tcp = TcpStream::connect(address).await.map_err(unreachable)?;
            let tls = TlsConnector::from(tls.clone())
                .connect(server_name(address)?, tcp)
                .await
                .map_err(unreachable)?;
            send_and_confirm(tls, frames().as_bytes())
                .await
                .map_err(unreachable)
        }
        SinkKind::Https { url, token, tls } => post(url, token.as_deref(), tls, batch).await,
    }
}

fn server_name(address: &str) -> Result<ServerName<'static>, NotifyError> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| NotifyError::Refused(format!("host `{host}` as a TLS name: {e}")))
}

/// Writes everything, closes our side, and waits for the receiver to close its side: it has then
/// read all of it.
async fn send_and_confirm<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    bytes: &[u8],
) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await?;
    s.shutdown().await?;
    let mut sink = [0u8; 1024];
    // Some TLS receivers (rsyslog's gtls) close the TCP connection after our close_notify without
    // sending their own: once all of ours is written, that close is the confirmation too.
    loop {
        match s.read(&mut sink).await {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The records as JSON lines in one `POST`; any 2xx confirms them.
async fn post(
    url: &Uri,
    token: Option<&str>,
    tls: &Arc<rustls::ClientConfig>,
    batch: &[Pending],
) -> Result<(), NotifyError> {
    let mut body = String::new();
    for (_, line, _) in batch {
        body.push_str(line);
        body.push('\n');
    }
    let mut headers = vec![
        (
            hyper::header::CONTENT_TYPE,
            "application/x-ndjson".to_owned(),
        ),
        (
            hyper::header::USER_AGENT,
            concat!("sallyport/", env!("CARGO_PKG_VERSION")).to_owned(),
        ),
    ];
    if let Some(t) = token {
        headers.push((hyper::header::AUTHORIZATION, format!("Bearer {t}")));
    }
    let status = HttpsClient::new(tls)
        .post(url, &headers, Bytes::from(body), DELIVERY_TIMEOUT)
        .await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(NotifyError::Unreachable(format!(
            "the SIEM answered {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_octet_counted_rfc_5424() {
        let line =
            r#"{"seq":7,"time":"2026-01-01T00:00:00.000001Z","event":"decision","outcome":"deny"}"#;
        let f = syslog_frame(&"acme".parse().unwrap(), 7, line, "broker1");
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<108>1 2026-01-01T00:00:00.000001Z broker1 sallyport - decision [sallyport@32473 customer=\"acme\" seq=\"7\"] {"), "{msg}");
        assert!(msg.ends_with(line));
    }

    #[test]
    fn pending_reads_after_the_cursor_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path().join("acme");
        std::fs::create_dir(&chain).unwrap();
        let lines = |seqs: std::ops::RangeInclusive<u64>| -> String {
            seqs.map(|seq| format!("{{\"seq\":{seq}}}\n")).collect()
        };
        std::fs::write(chain.join("2026-03-01.jsonl"), lines(1..=3)).unwrap();
        std::fs::write(chain.join("2026-03-02.jsonl"), lines(4..=5) + "{\"seq\":6,").unwrap();
        let seqs = |p: Vec<Pending>| p.iter().map(|r| r.0).collect::<Vec<_>>();
        let all = pending(&chain, &Cursor::default(), 10).unwrap();
        assert_eq!(all[4].2.segment.as_deref(), Some("2026-03-02"));
        assert_eq!(seqs(all.clone()), [1, 2, 3, 4, 5]);
        let c = all[1].2.clone();
        assert_eq!(seqs(pending(&chain, &c, 2).unwrap()), [3, 4]);
        // Across the segment boundary.
        assert_eq!(seqs(pending(&chain, &all[2].2, 10).unwrap()), [4, 5]);
        // A cursor whose offset no longer fits the file falls back to a scan.
        let stale = Cursor {
            seq: 3,
            segment: Some("2026-03-01".into()),
            offset: 2,
            checkpoint: 0,
        };
        assert_eq!(pending(&chain, &stale, 10).unwrap()[0].0, 4);
        // A cursor of an earlier version (no segment), and one whose segment was retired.
        let old: Cursor = serde_json::from_str(r#"{"seq":4,"offset":99}"#).unwrap();
        assert_eq!(seqs(pending(&chain, &old, 10).unwrap()), [5]);
        std::fs::remove_file(chain.join("2026-03-01.jsonl")).unwrap();
        assert_eq!(seqs(pending(&chain, &c, 10).unwrap()), [4, 5]);
        let path = dir.path().join("acme.0.cursor");
        write_cursor(&path, &c).unwrap();
        assert_eq!(read_cursor(&path), c);

        // Checkpoints follow the records they sign, once each.
        let cp = |seq: u64| {
            format!(
                "{{\"customer\":\"acme\",\"seq\":{seq},\"hash\":\"h\",\"time\":\"t\",\"key_id\":\"k\",\"sig\":\"s\"}}\n"
            )
        };
        std::fs::write(segment::checkpoints_path(&chain), cp(2) + &cp(5)).unwrap();
        let at3 = Cursor {
            seq: 3,
            ..Cursor::default()
        };
        let cps = checkpoints_pending(&chain, &at3, 10).unwrap();
        assert_eq!(seqs(cps.clone()), [2]);
        assert_eq!(cps[0].2.checkpoint, 2);
        assert!(
            checkpoints_pending(&chain, &cps[0].2, 10)
                .unwrap()
                .is_empty()
        );
        let at5 = Cursor {
            seq: 5,
            checkpoint: 2,
            ..Cursor::default()
        };
        assert_eq!(seqs(checkpoints_pending(&chain, &at5, 10).unwrap()), [5]);
        // A batch carries the checkpoints of the records it delivers, even on a busy chain.
        let batch = batch_after(&chain, &Cursor::default()).unwrap();
        assert_eq!(seqs(batch.clone()), [4, 5, 2, 5]);
        let end = &batch[3].2;
        assert_eq!((end.seq, end.checkpoint), (5, 5));
        assert!(batch_after(&chain, end).unwrap().is_empty());
        let frame = syslog_frame(&"acme".parse().unwrap(), 5, cp(5).trim_end(), "h");
        assert!(
            frame.contains(" sallyport - checkpoint [sallyport@32473 customer=\"acme\" seq=\"5\"]"),
            "{frame}"
        );
    }
}
