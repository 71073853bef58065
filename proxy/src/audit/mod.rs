//! The audit trail, first version: one JSON object per line, a SHA-256 hash chain per customer, every
//! record fsync'ed before the action it records goes ahead.
//!
//! Files: `<data_dir>/audit/<customer>.jsonl`, and `<data_dir>/audit/_broker.jsonl` for events that
//! belong to no customer (a handshake without a valid certificate, an unreadable grant). `_` cannot
//! start a customer id, so the names never collide.
//!
//! Record: `seq`, `time` (RFC 3339 UTC), `customer`, `event`, `actor`, `target`, (`subject`), `grant_id`,
//! `session_id`, `source_ip`, `outcome`, `reason`, `policy_ids`, for closes `bytes_up`, `bytes_down`,
//! `duration_ms`, then `prev_hash` and `hash` last. `hash` is the lowercase hex SHA-256 of the line's
//! bytes with the `,"hash":"…"` member removed (the object then ends right after `prev_hash`), and
//! `prev_hash` is the previous record's `hash` (64 zeros for the first). Anyone can recompute it from the
//! file without a canonical-JSON library.
//!
//! Writes go through one writer thread that takes every record waiting, appends them, and issues one
//! fsync per touched file for the whole batch (group commit). Each file is locked (`flock`) while a batch
//! is appended, and the writer re-reads the chain head when the file changed under it, so a CLI command
//! (`sallyport grant`) can append to the same chain while the broker runs.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

pub mod bundle;
pub mod checkpoint;
pub mod ocsf;
pub mod query;
pub mod verify;

pub use checkpoint::Checkpoints;

/// `prev_hash` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Chain name for events that belong to no customer.
pub const BROKER_CHAIN: &str = "_broker";
const MAX_BATCH: usize = 4096;

/// The audit trail could not take a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Writing or syncing a file failed.
    #[error("audit file {path}: {message}")]
    Io {
        /// The chain file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A chain file's last complete record does not verify: edited or corrupted, not a torn write.
    #[error(
        "audit file {path}: its last record does not verify (edited or corrupted); find the problem with `sallyport audit verify --data DATA_DIR` and restore the file from a copy"
    )]
    Corrupt {
        /// The chain file.
        path: PathBuf,
    },
    /// The writer has stopped.
    #[error("audit writer has stopped")]
    Closed,
}

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A TLS handshake or a grant failed to authenticate.
    AuthFailure,
    /// A grant was minted.
    GrantMinted,
    /// An authorization decision on a tunnel request.
    Decision,
    /// A tunnel was opened to its target.
    TunnelOpen,
    /// A tunnel was allowed but its target could not be reached.
    TunnelFailed,
    /// A tunnel closed.
    TunnelClose,
    /// A grant was revoked.
    GrantRevoked,
    /// A technician filed an access request (or was refused filing one).
    RequestFiled,
    /// An approver approved a request that needs more approvals.
    ApprovalRecorded,
    /// A request reached its quorum (or needed none): its grant exists.
    RequestApproved,
    /// An approver denied a request.
    RequestDenied,
    /// A pending request expired undecided.
    RequestExpired,
    /// A live session was ended through the API.
    SessionEnded,
    /// A webhook notification could not be delivered.
    WebhookFailed,
    /// A torn last line of the chain (a write cut short by a crash) was moved aside at start-up.
    TornTailQuarantined,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// Done.
    Success,
    /// Tried and failed.
    Failure,
}

/// One event to record; the writer adds `seq`, `time`, `prev_hash` and `hash`.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// The customer's chain, or `None` for the broker chain.
    pub customer: Option<String>,
    /// What happened.
    pub event: EventKind,
    /// Who did it (SPIFFE id, or a description for unauthenticated peers).
    pub actor: Option<String>,
    /// The target concerned.
    pub target: Option<String>,
    /// Whom the action concerns when that is not the actor (the technician a grant was minted for).
    pub subject: Option<String>,
    /// The grant concerned.
    pub grant_id: Option<String>,
    /// The session concerned.
    pub session_id: Option<String>,
    /// The access request concerned.
    pub request_id: Option<String>,
    /// Where the connection came from.
    pub source_ip: Option<IpAddr>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in words.
    pub reason: String,
    /// The policies that determined a decision.
    pub policy_ids: Vec<String>,
    /// Bytes client -> target (closes).
    pub bytes_up: Option<u64>,
    /// Bytes target -> client (closes).
    pub bytes_down: Option<u64>,
    /// Tunnel duration (closes).
    pub duration_ms: Option<u64>,
    /// Grant expiry (grant and decision records), RFC 3339.
    pub expires_at: Option<String>,
    /// SHA-256 of the session's capture file (closes of recorded targets).
    pub capture_sha256: Option<String>,
}

impl AuditEvent {
    /// An event with only the required parts set.
    pub fn new(event: EventKind, outcome: Outcome, reason: impl Into<String>) -> Self {
        Self {
            customer: None,
            event,
            actor: None,
            target: None,
            subject: None,
            grant_id: None,
            session_id: None,
            request_id: None,
            source_ip: None,
            outcome,
            reason: reason.into(),
            policy_ids: Vec::new(),
            bytes_up: None,
            bytes_down: None,
            duration_ms: None,
            expires_at: None,
            capture_sha256: None,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: String,
    customer: Option<&'a str>,
    event: EventKind,
    actor: Option<&'a str>,
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    grant_id: Option<&'a str>,
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    source_ip: Option<IpAddr>,
    outcome: Outcome,
    reason: &'a str,
    policy_ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_up: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_down: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capture_sha256: Option<&'a str>,
    prev_hash: &'a str,
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The chain (customer id or `_broker`).
    pub chain: String,
    /// Its sequence number in the chain.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// Renders one record line (with trailing newline) and its hash.
pub fn render(ev: &AuditEvent, seq: u64, time: &str, prev_hash: &str) -> (String, String) {
    let body = Body {
        seq,
        time: time.to_owned(),
        customer: ev.customer.as_deref(),
        event: ev.event,
        actor: ev.actor.as_deref(),
        target: ev.target.as_deref(),
        subject: ev.subject.as_deref(),
        grant_id: ev.grant_id.as_deref(),
        session_id: ev.session_id.as_deref(),
        request_id: ev.request_id.as_deref(),
        source_ip: ev.source_ip,
        outcome: ev.outcome,
        reason: &ev.reason,
        policy_ids: &ev.policy_ids,
        bytes_up: ev.bytes_up,
        bytes_down: ev.bytes_down,
        duration_ms: ev.duration_ms,
        expires_at: ev.expires_at.as_deref(),
        capture_sha256: ev.capture_sha256.as_deref(),
        prev_hash,
    };
    // Serializing a struct of strings, numbers and addresses cannot fail.
    let json = serde_json::to_string(&body).unwrap_or_default();
    let hash = hex::encode(Sha256::digest(json.as_bytes()));
    let mut line = String::with_capacity(json.len() + 80);
    line.push_str(&json[..json.len().saturating_sub(1)]);
    line.push_str(",\"hash\":\"");
    line.push_str(&hash);
    line.push_str("\"}\n");
    (line, hash)
}

/// Checks one line's hash and returns `(seq, prev_hash, hash)`.
pub fn check_line(line: &str) -> Result<(u64, String, String), String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let hash = v["hash"].as_str().ok_or("no `hash`")?.to_owned();
    let prev = v["prev_hash"].as_str().ok_or("no `prev_hash`")?.to_owned();
    let seq = v["seq"].as_u64().ok_or("no `seq`")?;
    let suffix = format!(",\"hash\":\"{hash}\"}}");
    let body = line
        .strip_suffix(&suffix)
        .ok_or("`hash` is not the last member")?;
    let computed = hex::encode(Sha256::digest(format!("{body}}}").as_bytes()));
    if computed != hash {
        return Err(format!("hash mismatch at seq {seq}: record was altered"));
    }
    Ok((seq, prev, hash))
}

/// Recomputes a whole chain file; returns the number of records.
pub fn verify_chain(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = 1;
    for (i, line) in text.lines().enumerate() {
        let (seq, p, h) =
            check_line(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if seq != expected_seq || p != prev {
            return Err(format!(
                "{}:{}: chain broken at seq {seq} (expected seq {expected_seq})",
                path.display(),
                i + 1
            ));
        }
        prev = h;
        expected_seq += 1;
    }
    Ok(expected_seq - 1)
}

struct Chain {
    name: String,
    path: PathBuf,
    file: File,
    len: u64,
    seq: u64,
    head: String,
    /// The seq of the last checkpoint signed for this chain.
    checkpointed: u64,
    /// When this writer last signed one.
    checkpointed_at: std::time::Instant,
    /// A torn tail moved aside when the chain was opened: (where, how many bytes).
    quarantined: Option<(PathBuf, usize)>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |e| AuditError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

impl Chain {
    fn open(dir: &Path, name: &str) -> Result<Chain, AuditError> {
        let path = dir.join(format!("{name}.jsonl"));
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if !existed {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        // Learned (and checked against the key) when this writer first signs.
        let checkpointed = 0;
        let mut chain = Chain {
            name: name.to_owned(),
            path,
            file,
            len: 0,
            seq: 0,
            head: GENESIS.to_owned(),
            checkpointed,
            checkpointed_at: std::time::Instant::now(),
            quarantined: None,
        };
        // Under the lock: another process may be mid-append.
        let path = chain.path.clone();
        chain.file.lock().map_err(io_err(&path))?;
        let loaded = chain.quarantine_torn_tail().and_then(|q| {
            chain.quarantined = q;
            chain.reload()
        });
        let _ = chain.file.unlock();
        loaded?;
        Ok(chain)
    }

    /// Opens a chain and, when a torn tail had to be moved aside, records that on the chain itself.
    fn open_recorded(dir: &Path, name: &str) -> Result<Chain, AuditError> {
        let mut chain = Chain::open(dir, name)?;
        if let Some((aside, bytes)) = chain.quarantined.take() {
            let mut ev = AuditEvent::new(
                EventKind::TornTailQuarantined,
                Outcome::Failure,
                format!(
                    "the chain ended in a torn write ({bytes} bytes, cut short before it was acknowledged); moved to {}",
                    aside.display()
                ),
            );
            ev.customer = (name != BROKER_CHAIN).then(|| name.to_owned());
            ev.actor = Some("broker".into());
            chain.append_batch(&[&ev])?;
        }
        Ok(chain)
    }

    /// A crash can cut the last write short, leaving bytes after the last newline. Those bytes are
    /// moved to `<chain>.jsonl.torn-<time>` (never silently dropped) and the chain is cut back to its
    /// last whole record, so it can go on; the caller records the quarantine on the chain.
    fn quarantine_torn_tail(&mut self) -> Result<Option<(PathBuf, usize)>, AuditError> {
        let path = self.path.clone();
        let len = self.file.metadata().map_err(io_err(&path))?.len();
        if len == 0 {
            return Ok(None);
        }
        let start = len.saturating_sub(64 * 1024);
        self.file
            .seek(SeekFrom::Start(start))
            .map_err(io_err(&path))?;
        let mut tail = Vec::new();
        self.file.read_to_end(&mut tail).map_err(io_err(&path))?;
        if tail.ends_with(b"\n") {
            return Ok(None);
        }
        let keep = match tail.iter().rposition(|b| *b == b'\n') {
            Some(i) => start + i as u64 + 1,
            None if start == 0 => 0,
            None => return Err(AuditError::Corrupt { path }),
        };
        let torn = &tail[(keep - start) as usize..];
        let micros = jiff::Timestamp::now().as_microsecond();
        let aside = path.with_extension(format!("jsonl.torn-{micros}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&aside)
            .map_err(io_err(&aside))?;
        f.write_all(torn)
            .and_then(|_| f.sync_all())
            .map_err(io_err(&aside))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        self.file.set_len(keep).map_err(io_err(&path))?;
        self.file.sync_all().map_err(io_err(&path))?;
        tracing::error!(chain = %path.display(), quarantined = %aside.display(), bytes = torn.len(), "the audit chain ended in a torn write; moved it aside");
        Ok(Some((aside, torn.len())))
    }

    /// Re-reads the chain head from the end of the file.
    fn reload(&mut self) -> Result<(), AuditError> {
        let path = self.path.clone();
        let len = self.file.metadata().map_err(io_err(&path))?.len();
        if len == 0 {
            self.len = 0;
            self.seq = 0;
            self.head = GENESIS.to_owned();
            return Ok(());
        }
        let start = len.saturating_sub(64 * 1024);
        self.file
            .seek(SeekFrom::Start(start))
            .map_err(io_err(&path))?;
        let mut tail = Vec::new();
        self.file.read_to_end(&mut tail).map_err(io_err(&path))?;
        let text = String::from_utf8_lossy(&tail);
        let torn = || AuditError::Corrupt { path: path.clone() };
        let body = text.strip_suffix('\n').ok_or_else(torn)?;
        let last = body.rsplit('\n').next().ok_or_else(torn)?;
        let (seq, _, hash) = check_line(last).map_err(|_| torn())?;
        self.len = len;
        self.seq = seq;
        self.head = hash;
        Ok(())
    }

    /// Signs a checkpoint of the chain head if records came since the last one.
    fn checkpoint(&mut self, cps: &Checkpoints) -> Result<(), AuditError> {
        let path = self.path.clone();
        self.file.lock().map_err(io_err(&path))?;
        let result = self.checkpoint_locked(cps);
        let _ = self.file.unlock();
        result
    }

    fn checkpoint_locked(&mut self, cps: &Checkpoints) -> Result<(), AuditError> {
        let path = self.path.clone();
        let len = self.file.metadata().map_err(io_err(&path))?.len();
        if len != self.len {
            self.reload()?;
        }
        self.checkpointed_at = std::time::Instant::now();
        let cp_path = checkpoint::file_of(&path);
        // Another process (the CLI) may have signed the same head meanwhile. Only lines that verify
        // with our own key count: a planted line cannot stop the signing.
        self.checkpointed = self
            .checkpointed
            .max(last_checkpoint_seq(&cp_path, cps.signer.public_key()));
        if self.seq <= self.checkpointed {
            return Ok(());
        }
        let line = checkpoint::render(
            &cps.signer,
            &self.name,
            self.seq,
            &self.head,
            &now_rfc3339(),
        )
        .map_err(|message| AuditError::Io {
            path: cp_path.clone(),
            message,
        })?;
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&cp_path)
            .map_err(io_err(&cp_path))?;
        let before = f.metadata().map_err(io_err(&cp_path))?.len();
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.sync_data()) {
            // Never leave half a checkpoint for the next one to be appended to.
            let _ = f.set_len(before);
            return Err(io_err(&cp_path)(e));
        }
        self.checkpointed = self.seq;
        Ok(())
    }

    fn append_batch(&mut self, events: &[&AuditEvent]) -> Result<Vec<(u64, String)>, AuditError> {
        let path = self.path.clone();
        self.file.lock().map_err(io_err(&path))?;
        let result = self.append_locked(events);
        let _ = self.file.unlock();
        result
    }

    fn append_locked(&mut self, events: &[&AuditEvent]) -> Result<Vec<(u64, String)>, AuditError> {
        let path = self.path.clone();
        let len = self.file.metadata().map_err(io_err(&path))?.len();
        if len != self.len {
            self.reload()?;
        }
        let time = now_rfc3339();
        let mut buf = String::new();
        let mut out = Vec::with_capacity(events.len());
        let (mut seq, mut head) = (self.seq, self.head.clone());
        for ev in events {
            seq += 1;
            let (line, hash) = render(ev, seq, &time, &head);
            buf.push_str(&line);
            out.push((seq, hash.clone()));
            head = hash;
        }
        let written = self
            .file
            .write_all(buf.as_bytes())
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Cut off whatever part of the batch reached the file so the chain stays whole.
            let _ = self.file.set_len(self.len);
            return Err(io_err(&path)(e));
        }
        self.len += buf.len() as u64;
        self.seq = seq;
        self.head = head;
        Ok(out)
    }
}

/// The seq of the last checkpoint in a checkpoint file that verifies with `key` (0 when there is
/// none). Reads only the file's tail.
fn last_checkpoint_seq(path: &Path, key: &[u8]) -> u64 {
    let Ok(mut f) = File::open(path) else {
        return 0;
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let mut tail = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(4096))).is_err()
        || f.read_to_end(&mut tail).is_err()
    {
        return 0;
    }
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find_map(|l| match checkpoint::check(l, Some(key)) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "a checkpoint line does not verify with the audit key");
                None
            }
        })
        .map_or(0, |c| c.seq)
}

/// The current time, RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

struct Job {
    event: AuditEvent,
    ack: oneshot::Sender<Result<Appended, AuditError>>,
}

// Records are the hot path and ticks are rare: no allocation per record just to shrink ticks.
#[allow(clippy::large_enum_variant)]
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
}

/// Write failures, shared by the writer and its handles.
#[derive(Debug, Default)]
pub struct Health {
    failures: std::sync::atomic::AtomicU64,
    failed: tokio::sync::Notify,
    appended: tokio::sync::Notify,
}

impl Health {
    fn record_failure(&self) {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.failed.notify_waiters();
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
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut open: HashMap<String, Chain> = HashMap::new();
        for name in chains.iter().chain(std::iter::once(&BROKER_CHAIN)) {
            open.insert((*name).to_owned(), Chain::open_recorded(dir, name)?);
        }
        if let Some(cps) = &checkpoints {
            let key = dir.join(checkpoint::KEY_FILE);
            let text = format!("{}\n", checkpoint::public_key_json(&cps.signer));
            if std::fs::read_to_string(&key).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&key, text).map_err(io_err(&key))?;
            }
        }
        let (tx, rx) = mpsc::channel::<Msg>(MAX_BATCH * 4);
        if let Some(cps) = &checkpoints {
            // Ticks stop once every handle is gone: the ticker holds only a weak sender.
            let weak = tx.downgrade();
            let every = cps.every;
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
            .spawn(move || writer(dir, open, rx, checkpoints, &writer_health))
            .map_err(|e| AuditError::Io {
                path: PathBuf::from("(audit writer thread)"),
                message: e.to_string(),
            })?;
        Ok((AuditLog { tx, health }, AuditWriter(handle)))
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

    /// [`AuditLog::append`] for code outside an async runtime.
    pub fn append_blocking(&self, event: AuditEvent) -> Result<Appended, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .blocking_send(Msg::Record(Job { event, ack }))
            .map_err(|_| AuditError::Closed)?;
        rx.blocking_recv().map_err(|_| AuditError::Closed)?
    }
}

fn writer(
    dir: PathBuf,
    mut chains: HashMap<String, Chain>,
    mut rx: mpsc::Receiver<Msg>,
    checkpoints: Option<Checkpoints>,
    health: &Health,
) {
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
                .clone()
                .unwrap_or_else(|| BROKER_CHAIN.to_owned());
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
                chain.append_batch(&events)
            });
            match result {
                Ok(done) => {
                    health.appended.notify_waiters();
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

/// Signs checkpoints of chains past `every_records` new records, or, on a tick, past `every`.
fn sign_due(chains: &mut HashMap<String, Chain>, cps: &Checkpoints, tick: bool) {
    for chain in chains.values_mut() {
        let moved = chain.seq.saturating_sub(chain.checkpointed);
        let due = moved >= cps.every_records
            || (tick && moved > 0 && chain.checkpointed_at.elapsed() >= cps.every);
        if due && let Err(e) = chain.checkpoint(cps) {
            tracing::error!(chain = %chain.name, error = %e, "could not sign an audit checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(customer: Option<&str>, reason: &str) -> AuditEvent {
        let mut e = AuditEvent::new(EventKind::Decision, Outcome::Allow, reason);
        e.customer = customer.map(str::to_owned);
        e
    }

    #[test]
    fn time_is_rfc3339_utc() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
        assert!(t.parse::<jiff::Timestamp>().is_ok());
    }

    #[test]
    fn chains_per_customer_and_recompute() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (log, w) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        rt.block_on(async {
            for i in 0..5 {
                let a = log
                    .append(ev(Some("acme"), &format!("r{i}")))
                    .await
                    .unwrap();
                assert_eq!(a.seq, i + 1);
            }
            let b = log.append(ev(None, "broker")).await.unwrap();
            assert_eq!((b.chain.as_str(), b.seq), ("_broker", 1));
            let g = log.append(ev(Some("globex"), "new chain")).await.unwrap();
            assert_eq!((g.chain.as_str(), g.seq), ("globex", 1));
        });
        drop(log);
        w.join();
        assert_eq!(verify_chain(&dir.path().join("acme.jsonl")).unwrap(), 5);
        assert_eq!(verify_chain(&dir.path().join("_broker.jsonl")).unwrap(), 1);
        assert_eq!(verify_chain(&dir.path().join("globex.jsonl")).unwrap(), 1);
    }

    #[test]
    fn reopening_continues_the_chain_and_edits_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..2 {
            let (log, w) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
            for _ in 0..3 {
                log.append_blocking(ev(Some("acme"), "x")).unwrap();
            }
            drop(log);
            w.join();
        }
        let path = dir.path().join("acme.jsonl");
        assert_eq!(verify_chain(&path).unwrap(), 6);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replacen("\"reason\":\"x\"", "\"reason\":\"y\"", 1),
        )
        .unwrap();
        let err = verify_chain(&path).unwrap_err();
        assert!(err.contains(":1: hash mismatch"), "{err}");
    }

    #[test]
    fn two_writers_on_one_file_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (a, wa) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        let (b, wb) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        for i in 0..10 {
            let log = if i % 2 == 0 { &a } else { &b };
            assert_eq!(
                log.append_blocking(ev(Some("acme"), "x")).unwrap().seq,
                i + 1
            );
        }
        drop((a, b));
        wa.join();
        wb.join();
        assert_eq!(verify_chain(&dir.path().join("acme.jsonl")).unwrap(), 10);
    }

    #[test]
    fn a_torn_tail_is_quarantined_and_recorded_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (log, w) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        for _ in 0..3 {
            log.append_blocking(ev(Some("acme"), "x")).unwrap();
        }
        drop(log);
        w.join();
        let path = dir.path().join("acme.jsonl");
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{whole}{{\"seq\":4,\"tim")).unwrap();

        let (log, w) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        log.append_blocking(ev(Some("acme"), "after")).unwrap();
        drop(log);
        w.join();
        assert_eq!(verify_chain(&path).unwrap(), 5);
        let text = std::fs::read_to_string(&path).unwrap();
        let record: serde_json::Value = serde_json::from_str(text.lines().nth(3).unwrap()).unwrap();
        assert_eq!(record["event"], "torn_tail_quarantined");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("acme.jsonl.torn-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            std::fs::read_to_string(aside[0].path()).unwrap(),
            "{\"seq\":4,\"tim"
        );
        assert!(record["reason"].as_str().unwrap().contains("13 bytes"));
    }

    #[test]
    fn a_full_disk_fails_closed_and_the_trail_resumes_when_it_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme.jsonl");
        // The chain file is /dev/full: every write fails with ENOSPC, as on a full disk.
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let (log, w) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        let err = log.append_blocking(ev(Some("acme"), "lost")).unwrap_err();
        assert!(
            matches!(&err, AuditError::Io { message, .. } if message.contains("No space left")),
            "{err}"
        );
        assert_eq!(log.health().failures(), 1);
        // The disk recovers: the next record reopens the chain and is written.
        std::fs::remove_file(&path).unwrap();
        let ok = log.append_blocking(ev(Some("acme"), "after")).unwrap();
        assert_eq!(ok.seq, 1);
        assert_eq!(log.health().failures(), 1);
        drop(log);
        w.join();
        assert_eq!(verify_chain(&path).unwrap(), 1);
    }

    #[test]
    fn a_corrupt_last_record_stops_the_writer_from_starting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("acme.jsonl"),
            "{\"seq\":1,\"hash\":\"00\"}\n",
        )
        .unwrap();
        let err = AuditLog::open(dir.path(), &["acme"], None).unwrap_err();
        assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("sallyport audit verify"), "{err}");
    }
}
