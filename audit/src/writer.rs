//! The writer: one thread that appends every waiting record in one batch with one fsync per touched
//! chain (group commit), signs checkpoints when they are due and retires segments past retention; and
//! [`AuditLog`], the cheap handle callers append through and wait on until their record is durable.
//! Each group commit is timed (`sallyport_audit_commit_duration_seconds`) and each failed batch
//! counted (`sallyport_audit_failures_total`, and [`Health`], which readiness reads).
//!
//! A record of something already over (a tunnel close) that cannot be written while the trail fails
//! is kept in the handle's backlog ([`AuditLog::append_or_keep`]) and written, marked as late, once
//! the trail takes records again ([`AuditLog::write_backlog`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sallyport_ids::time::rfc3339_micros;
use sallyport_metrics::Metrics;
use tokio::sync::{mpsc, oneshot};

use crate::chain::Chain;
use crate::checkpoint::{self, Checkpoints};
use crate::event::{Appended, AuditEvent};
use crate::{AuditError, BROKER_CHAIN, io_err, segment};

/// The current time, RFC 3339 UTC with microseconds (the `time` of a record written now).
pub fn now_rfc3339() -> String {
    rfc3339_micros(jiff::Timestamp::now())
}

/// Most records taken into one batch.
const MAX_BATCH: usize = 4096;

struct Job {
    event: AuditEvent,
    ack: oneshot::Sender<Result<Appended, AuditError>>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "records are the hot path and ticks are rare: no allocation per record just to shrink ticks"
)]
enum Msg {
    Record(Job),
    /// Time to sign checkpoints of chains that moved.
    Tick,
}

/// A handle on the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    health: Arc<Health>,
    backlog: Arc<Mutex<Vec<AuditEvent>>>,
}

/// Most records kept in the backlog while the trail fails; past it the newest are dropped (logged).
pub const MAX_BACKLOG: usize = 100_000;

/// Marks a record written after the trail recovered.
pub const LATE: &str = " (recorded after the audit trail recovered)";

/// Write failures, shared by the writer and its handles.
#[derive(Debug, Default)]
pub struct Health {
    failures: std::sync::atomic::AtomicU64,
    /// The last batch written to any chain failed (cleared by the next one that is durable).
    failing: std::sync::atomic::AtomicBool,
    failed: tokio::sync::Notify,
    appended: tokio::sync::Notify,
}

impl Health {
    fn record_failure(&self) {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.failing
            .store(true, std::sync::atomic::Ordering::Release);
        self.failed.notify_waiters();
    }

    fn record_success(&self) {
        self.failing
            .store(false, std::sync::atomic::Ordering::Release);
        self.appended.notify_waiters();
    }

    /// Whether the last batch the writer tried failed: the trail takes no records until one goes
    /// through again (readiness reports it).
    pub fn is_failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Batches that could not be written durably since start (`sallyport_audit_failures_total`).
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves at the next write failure.
    pub async fn failed(&self) {
        self.failed.notified().await;
    }

    /// Resolves when records were next appended (SIEM forwarders wait on it).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

/// Joins the writer thread once every [`AuditLog`] handle is dropped.
#[derive(Debug)]
pub struct AuditWriter(std::thread::JoinHandle<()>);

impl AuditWriter {
    /// Waits for queued records to be written.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl AuditLog {
    /// Opens the trail in `dir` (created if missing) and checks the given chains can be appended to.
    /// With `checkpoints`, the writer signs checkpoints as configured and when it stops, and the
    /// public key is written to `dir/audit-key.pub`.
    pub fn open(
        dir: &Path,
        chains: &[&str],
        checkpoints: Option<Checkpoints>,
    ) -> Result<(AuditLog, AuditWriter), AuditError> {
        AuditLog::open_with(dir, chains, checkpoints, None)
    }

    /// [`AuditLog::open`], retiring segments older than `retention_days` (checked at start and
    /// whenever the UTC date changes) when that is given.
    pub fn open_with(
        dir: &Path,
        chains: &[&str],
        checkpoints: Option<Checkpoints>,
        retention_days: Option<u32>,
    ) -> Result<(AuditLog, AuditWriter), AuditError> {
        AuditLog::open_metered(dir, chains, checkpoints, retention_days, Metrics::default())
    }

    /// [`AuditLog::open_with`], timing each group commit (write and fsync of one chain's batch)
    /// and counting failed batches into `metrics`.
    pub fn open_metered(
        dir: &Path,
        chains: &[&str],
        checkpoints: Option<Checkpoints>,
        retention_days: Option<u32>,
        metrics: Metrics,
    ) -> Result<(AuditLog, AuditWriter), AuditError> {
        sallyport_ids::private::dir_all(dir).map_err(io_err(dir))?;
        // Chains an earlier version left flat are moved into the layout as they are opened.
        let flat = segment::flat_chains(dir).map_err(io_err(dir))?;
        let mut open: HashMap<String, Chain> = HashMap::new();
        let names = chains
            .iter()
            .copied()
            .chain(std::iter::once(BROKER_CHAIN))
            .chain(flat.iter().map(String::as_str));
        for name in names {
            if !open.contains_key(name) {
                open.insert(name.to_owned(), Chain::open_recorded(dir, name)?);
            }
        }
        if let Some(cps) = &checkpoints {
            let key = dir.join(checkpoint::KEY_FILE);
            let text = format!("{}\n", checkpoint::public_key_json(&cps.signer));
            if std::fs::read_to_string(&key).ok().as_deref() != Some(text.as_str()) {
                sallyport_ids::private::create(&key)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
                    .map_err(io_err(&key))?;
            }
        }
        let (tx, rx) = mpsc::channel::<Msg>(MAX_BATCH * 4);
        if let Some(cps) = &checkpoints {
            // Ticks stop once every handle is gone: the ticker holds only a weak sender.
            let weak = tx.downgrade();
            let every = cps.every.min(cps.quiet / 2);
            std::thread::Builder::new()
                .name("audit-checkpoints".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(every);
                        match weak.upgrade() {
                            Some(tx) if tx.blocking_send(Msg::Tick).is_ok() => {}
                            _ => return,
                        }
                    }
                })
                .map_err(|e| AuditError::Io {
                    path: PathBuf::from("(audit checkpoint thread)"),
                    message: e.to_string(),
                })?;
        }
        let dir = dir.to_owned();
        let health = Arc::new(Health::default());
        let writer_health = health.clone();
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                writer(
                    dir,
                    open,
                    rx,
                    Duties {
                        checkpoints,
                        retention_days,
                        metrics,
                    },
                    &writer_health,
                )
            })
            .map_err(|e| AuditError::Io {
                path: PathBuf::from("(audit writer thread)"),
                message: e.to_string(),
            })?;
        Ok((
            AuditLog {
                tx,
                health,
                backlog: Arc::default(),
            },
            AuditWriter(handle),
        ))
    }

    /// Write failures so far, and a way to wait for the next one.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Appends a record and waits until it is durable.
    pub async fn append(&self, event: AuditEvent) -> Result<Appended, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record(Job { event, ack }))
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Appends a record of something already over (a tunnel close). When the trail cannot take it,
    /// the record is kept (at most [`MAX_BACKLOG`]) and written by [`AuditLog::write_backlog`] once
    /// the trail recovers; the error is returned all the same.
    pub async fn append_or_keep(&self, event: AuditEvent) -> Result<Appended, AuditError> {
        match self.append(event.clone()).await {
            Ok(a) => Ok(a),
            Err(e) => {
                let mut list = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
                if list.len() < MAX_BACKLOG {
                    list.push(event);
                } else {
                    tracing::error!("too many unwritten audit records; dropping one");
                }
                Err(e)
            }
        }
    }

    /// Records kept by [`AuditLog::append_or_keep`] and not yet written.
    pub fn backlog_len(&self) -> usize {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Writes the kept records, each marked as written late; those that still fail stay kept.
    pub async fn write_backlog(&self) {
        let pending = std::mem::take(&mut *self.backlog.lock().unwrap_or_else(|p| p.into_inner()));
        let mut left = Vec::new();
        for mut ev in pending {
            if !ev.reason.ends_with(LATE) {
                ev.reason.push_str(LATE);
            }
            if let Err(e) = self.append(ev.clone()).await {
                tracing::debug!(error = %e, "the audit trail still fails");
                left.push(ev);
            }
        }
        if !left.is_empty() {
            self.backlog
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(left);
        }
    }

    /// [`AuditLog::append`] for code outside an async runtime.
    pub fn append_blocking(&self, event: AuditEvent) -> Result<Appended, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .blocking_send(Msg::Record(Job { event, ack }))
            .map_err(|_| AuditError::Closed)?;
        rx.blocking_recv().map_err(|_| AuditError::Closed)?
    }
}

/// What the writer does besides appending.
struct Duties {
    checkpoints: Option<Checkpoints>,
    retention_days: Option<u32>,
    /// Commit latency and failed batches.
    metrics: Metrics,
}

/// Retires old segments of every open chain, once per UTC date.
fn retire_due(
    chains: &mut HashMap<String, Chain>,
    days: Option<u32>,
    done_on: &mut Option<jiff::civil::Date>,
) {
    let Some(days) = days else { return };
    let today = segment::date_of(jiff::Timestamp::now());
    if *done_on == Some(today) {
        return;
    }
    *done_on = Some(today);
    let mut failed = Vec::new();
    for chain in chains.values_mut() {
        if let Err(e) = chain.retire(days, today) {
            tracing::error!(chain = %chain.name, error = %e, "could not retire audit segments past retention");
            failed.push(chain.name.clone());
        }
    }
    // Reopened (and re-read) by their next record: nothing is appended on a head not re-read.
    for name in failed {
        chains.remove(&name);
    }
}

fn writer(
    dir: PathBuf,
    mut chains: HashMap<String, Chain>,
    mut rx: mpsc::Receiver<Msg>,
    duties: Duties,
    health: &Health,
) {
    let Duties {
        checkpoints,
        retention_days,
        metrics,
    } = duties;
    let mut retired_on = None;
    retire_due(&mut chains, retention_days, &mut retired_on);
    let mut batch: Vec<Job> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut tick = false;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(job) => batch.push(job),
                Msg::Tick => tick = true,
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Group by chain, keeping arrival order within each chain.
        let mut by_chain: Vec<(String, Vec<Job>)> = Vec::new();
        for job in batch.drain(..) {
            let name = job
                .event
                .customer
                .as_ref()
                .map_or_else(|| BROKER_CHAIN.to_owned(), ToString::to_string);
            match by_chain.iter_mut().find(|(n, _)| *n == name) {
                Some((_, jobs)) => jobs.push(job),
                None => by_chain.push((name, vec![job])),
            }
        }
        for (name, jobs) in by_chain {
            let result = match chains.get_mut(&name) {
                Some(c) => Ok(c),
                None => Chain::open_recorded(&dir, &name)
                    .map(|c| chains.entry(name.clone()).or_insert(c)),
            }
            .and_then(|chain| {
                let events: Vec<&AuditEvent> = jobs.iter().map(|j| &j.event).collect();
                let started = std::time::Instant::now();
                let done = chain.append_batch(&events);
                if done.is_ok() {
                    metrics.audit_committed(started.elapsed());
                }
                done
            });
            match result {
                Ok(done) => {
                    health.record_success();
                    for (job, (seq, hash)) in jobs.into_iter().zip(done) {
                        let _ = job.ack.send(Ok(Appended {
                            chain: name.clone(),
                            seq,
                            hash,
                        }));
                    }
                }
                Err(e) => {
                    tracing::error!(chain = %name, error = %e, "audit write failed; refusing the actions it would record");
                    health.record_failure();
                    metrics.audit_failed();
                    // Reopened (and re-read) on the next record: the trail resumes by itself once
                    // the disk takes writes again.
                    chains.remove(&name);
                    for job in jobs {
                        let _ = job.ack.send(Err(e.clone()));
                    }
                }
            }
        }
        if let Some(cps) = &checkpoints {
            sign_due(&mut chains, cps, tick);
        }
        retire_due(&mut chains, retention_days, &mut retired_on);
    }
    // Stopping: every chain that moved gets a final checkpoint.
    if let Some(cps) = &checkpoints {
        for chain in chains.values_mut() {
            if let Err(e) = chain.checkpoint(cps) {
                tracing::error!(error = %e, "could not sign the final audit checkpoint");
            }
        }
    }
}

/// Signs checkpoints of chains past `every_records` new records, or, on a tick, past `every` or
/// quiet for `quiet`; and of a chain with records but no checkpoint known to this writer yet (a new
/// chain's first records, or the first batch after a start), so a trail is never long unsigned.
fn sign_due(chains: &mut HashMap<String, Chain>, cps: &Checkpoints, tick: bool) {
    let mut failed = Vec::new();
    for chain in chains.values_mut() {
        let moved = chain.seq.saturating_sub(chain.checkpointed);
        let due = moved >= cps.every_records
            || (chain.checkpointed == 0 && moved > 0)
            || (tick
                && moved > 0
                && (chain.checkpointed_at.elapsed() >= cps.every
                    || chain.appended_at.elapsed() >= cps.quiet));
        if due && let Err(e) = chain.checkpoint(cps) {
            tracing::error!(chain = %chain.name, error = %e, "could not sign an audit checkpoint");
            failed.push(chain.name.clone());
        }
    }
    // Reopened (and re-read) by their next record: nothing is appended on a head not re-read.
    for name in failed {
        chains.remove(&name);
    }
}
