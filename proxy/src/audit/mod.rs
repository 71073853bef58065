//! The audit trail: one JSON object per line, a SHA-256 hash chain per customer, every record
//! fsync'ed before the action it records goes ahead.
//!
//! Files (see [`segment`]): `<data_dir>/audit/<customer>/<YYYY-MM-DD>.jsonl`, daily segments of one
//! chain, and `<data_dir>/audit/_broker/` for events that belong to no customer (a handshake without a
//! valid certificate, an unreadable grant). `_` cannot start a customer id, so the names never collide.
//!
//! Record: `seq`, `time` (RFC 3339 UTC), `customer`, `event`, `actor`, `target`, (`subject`), `grant_id`,
//! `session_id`, `source_ip`, `outcome`, `reason`, `policy_ids`, for closes `bytes_up`, `bytes_down`,
//! `duration_ms`, then `prev_hash` and `hash` last. `hash` is the lowercase hex SHA-256 of the line's
//! bytes with the `,"hash":"…"` member removed (the object then ends right after `prev_hash`), and
//! `prev_hash` is the previous record's `hash` (64 zeros for the first). Anyone can recompute it from the
//! file without a canonical-JSON library. `docs/audit-format.md` is the full specification.
//!
//! Writes go through one writer thread that takes every record waiting, appends them, and issues one
//! fsync per touched chain for the whole batch (group commit). A chain's lock file is held (`flock`)
//! while a batch is appended, and the writer re-reads the chain head when the files changed under it,
//! so a CLI command (`sallyport grant`) can append to the same chain while the broker runs. The writer
//! moves to a new segment when the UTC date changes, and retires segments past the retention period.

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
pub mod segment;
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
    /// Segments older than the retention period were retired (deleted) from the chain.
    SegmentsRetired,
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
    /// The segments retired (`segments_retired` records).
    pub retired: Vec<Retired>,
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
            retired: Vec::new(),
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
    #[serde(skip_serializing_if = "<[Retired]>::is_empty")]
    retired: &'a [Retired],
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
        retired: &ev.retired,
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

/// Recomputes a chain across its segments in the audit folder `audit`; returns the number of
/// records. The first record kept is taken as it is (anchoring it is [`verify`]'s job).
pub fn verify_chain(audit: &Path, chain: &str) -> Result<u64, String> {
    let dir = segment::chain_dir(audit, chain);
    let reader = segment::Reader::open(&dir, segment::Start::Oldest, None)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut last: Option<(u64, String)> = None;
    let mut n = 0;
    for line in reader {
        let line = line.map_err(|e| format!("{}: {e}", dir.display()))?;
        let at = format!("{}:{}", line.file.display(), line.line);
        let (seq, p, h) = check_line(&line.text).map_err(|e| format!("{at}: {e}"))?;
        if let Some((s, head)) = &last
            && (seq != s + 1 || p != *head)
        {
            return Err(format!(
                "{at}: chain broken at seq {seq} (expected seq {})",
                s + 1
            ));
        }
        if last.is_none() && seq == 1 && p != GENESIS {
            return Err(format!(
                "{at}: the first record does not start from the genesis hash"
            ));
        }
        last = Some((seq, h));
        n += 1;
    }
    Ok(n)
}

/// A segment retired by retention, as its `segments_retired` record names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Retired {
    /// The segment's file name (`2026-01-31.jsonl`).
    pub segment: String,
    /// Its first record's seq.
    pub first_seq: u64,
    /// Its last record's seq.
    pub last_seq: u64,
    /// Its last record's hash: the `prev_hash` of the record after it.
    pub last_hash: String,
}

struct Chain {
    name: String,
    /// The chain's folder.
    dir: PathBuf,
    /// Its lock file, held while appending.
    lock: File,
    /// The segment appended to: its date, path and file (`None` until the chain has a segment).
    active: Option<(jiff::civil::Date, PathBuf, File)>,
    /// The active segment's length as last seen.
    len: u64,
    seq: u64,
    head: String,
    /// The seq of the last checkpoint signed for this chain.
    checkpointed: u64,
    /// When this writer last signed one.
    checkpointed_at: std::time::Instant,
    /// When this writer last appended.
    appended_at: std::time::Instant,
    /// A torn tail moved aside when the chain was opened: (where, how many bytes).
    quarantined: Option<(PathBuf, usize)>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |e| AuditError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Chain {
    fn open(audit: &Path, name: &str) -> Result<Chain, AuditError> {
        let dir = segment::chain_dir(audit, name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Whoever created the folder may have crashed before syncing its entry.
        sync_dir(audit)?;
        let lock_path = dir.join(segment::LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let mut chain = Chain {
            name: name.to_owned(),
            dir,
            lock,
            active: None,
            len: 0,
            seq: 0,
            head: GENESIS.to_owned(),
            // Learned (and checked against the key) when this writer first signs.
            checkpointed: 0,
            checkpointed_at: std::time::Instant::now(),
            appended_at: std::time::Instant::now(),
            quarantined: None,
        };
        // Under the lock: another process may be mid-append.
        chain.locked(|c| {
            segment::migrate_flat(audit, &c.name).map_err(io_err(&c.dir))?;
            c.quarantined = c.quarantine_torn_tail()?;
            if let Some(last) = segment::segments(&c.dir).map_err(io_err(&c.dir))?.pop() {
                c.switch_to(last.date, false)?;
            }
            c.reload()
        })?;
        Ok(chain)
    }

    /// Makes the segment of `date` the one appended to (creating it when `create`), with its
    /// directory entry synced before any record in it can be acknowledged.
    fn switch_to(&mut self, date: jiff::civil::Date, create: bool) -> Result<(), AuditError> {
        let path = segment::segment_path(&self.dir, date);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .open(&path)
            .map_err(io_err(&path))?;
        // Also when the file existed: its creator may have crashed before syncing the entry.
        sync_dir(&self.dir)?;
        self.active = Some((date, path, file));
        Ok(())
    }

    /// Runs `f` holding the chain's lock.
    fn locked<T>(
        &mut self,
        f: impl FnOnce(&mut Chain) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let lock_path = self.dir.join(segment::LOCK);
        self.lock.lock().map_err(io_err(&lock_path))?;
        let result = f(self);
        let _ = self.lock.unlock();
        result
    }

    /// Opens a chain and, when a torn tail had to be moved aside, records that on the chain itself.
    fn open_recorded(audit: &Path, name: &str) -> Result<Chain, AuditError> {
        let mut chain = Chain::open(audit, name)?;
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

    /// A crash can cut the last write short, leaving bytes after the last newline of the newest
    /// segment holding records. Those bytes are moved to `<segment>.jsonl.torn-<time>` (never
    /// silently dropped) and the segment is cut back to its last whole record, so the chain can go
    /// on; the caller records the quarantine on the chain.
    fn quarantine_torn_tail(&mut self) -> Result<Option<(PathBuf, usize)>, AuditError> {
        let segs = segment::segments(&self.dir).map_err(io_err(&self.dir))?;
        let mut newest = None;
        for seg in segs.iter().rev() {
            let len = std::fs::metadata(&seg.path)
                .map_err(io_err(&seg.path))?
                .len();
            if len > 0 {
                newest = Some((seg.path.clone(), len));
                break;
            }
        }
        let Some((path, len)) = newest else {
            return Ok(None);
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let start = len.saturating_sub(64 * 1024);
        file.seek(SeekFrom::Start(start)).map_err(io_err(&path))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(io_err(&path))?;
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
        sync_dir(&self.dir)?;
        file.set_len(keep).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        tracing::error!(segment = %path.display(), quarantined = %aside.display(), bytes = torn.len(), "the audit chain ended in a torn write; moved it aside");
        Ok(Some((aside, torn.len())))
    }

    /// Re-reads the chain head: the last record of the newest segment holding records.
    /// On failure nothing is changed, so the next call reads again.
    fn reload(&mut self) -> Result<(), AuditError> {
        let len = match &self.active {
            Some((_, path, file)) => file.metadata().map_err(io_err(path))?.len(),
            None => 0,
        };
        let segs = segment::segments(&self.dir).map_err(io_err(&self.dir))?;
        let mut found = (0, GENESIS.to_owned());
        for seg in segs.iter().rev() {
            let path = &seg.path;
            if std::fs::metadata(path).map_err(io_err(path))?.len() == 0 {
                continue;
            }
            let corrupt = || AuditError::Corrupt { path: path.clone() };
            let last = segment::last_line(path)
                .map_err(io_err(path))?
                .ok_or_else(corrupt)?;
            let (seq, _, hash) = check_line(&last).map_err(|_| corrupt())?;
            found = (seq, hash);
            break;
        }
        (self.len, self.seq, self.head) = (len, found.0, found.1);
        Ok(())
    }

    /// Catches up with the files (under the lock): moves to the newest segment, today's when
    /// this one is older (creating it when `create`), and re-reads the head when another process
    /// appended. Records never go to a segment older than the newest one, even when the clock
    /// steps back and another process already started the next day.
    fn refresh(&mut self, today: jiff::civil::Date, create: bool) -> Result<(), AuditError> {
        let stale = match &self.active {
            None => true,
            Some((date, _, _)) => {
                *date < today
                    || date
                        .tomorrow()
                        .is_ok_and(|next| segment::segment_path(&self.dir, next).exists())
            }
        };
        if stale {
            let newest = segment::segments(&self.dir)
                .map_err(io_err(&self.dir))?
                .pop()
                .map(|s| s.date);
            let target = match newest {
                Some(n) if n >= today => Some((n, false)),
                _ if create => Some((today, true)),
                Some(n) => Some((n, false)),
                None => None,
            };
            if let Some((date, create)) = target
                && self.active.as_ref().is_none_or(|(d, _, _)| *d != date)
            {
                self.switch_to(date, create)?;
                // Another process may have appended to the segments meanwhile.
                return self.reload();
            }
        }
        if let Some((_, path, file)) = &self.active
            && file.metadata().map_err(io_err(path))?.len() != self.len
        {
            self.reload()?;
        }
        Ok(())
    }

    /// Signs a checkpoint of the chain head if records came since the last one.
    fn checkpoint(&mut self, cps: &Checkpoints) -> Result<(), AuditError> {
        self.locked(|c| c.checkpoint_locked(cps))
    }

    fn checkpoint_locked(&mut self, cps: &Checkpoints) -> Result<(), AuditError> {
        self.refresh(segment::date_of(jiff::Timestamp::now()), false)?;
        self.checkpointed_at = std::time::Instant::now();
        let cp_path = segment::checkpoints_path(&self.dir);
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
        let existed = cp_path.exists();
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&cp_path)
            .map_err(io_err(&cp_path))?;
        if !existed {
            sync_dir(&self.dir)?;
        }
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
        self.locked(|c| c.append_locked(events))
    }

    fn append_locked(&mut self, events: &[&AuditEvent]) -> Result<Vec<(u64, String)>, AuditError> {
        let now = jiff::Timestamp::now();
        self.refresh(segment::date_of(now), true)?;
        let time = format!("{now:.6}");
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
        let Some((_, path, file)) = &mut self.active else {
            return Err(AuditError::Closed);
        };
        let written = file
            .write_all(buf.as_bytes())
            .and_then(|_| file.sync_data());
        if let Err(e) = written {
            // Cut off whatever part of the batch reached the file so the chain stays whole.
            let _ = file.set_len(self.len);
            return Err(io_err(path)(e));
        }
        self.len += buf.len() as u64;
        self.seq = seq;
        self.head = head;
        self.appended_at = std::time::Instant::now();
        Ok(out)
    }

    /// Retires the segments whose every record is older than `keep_days` days before `today`:
    /// records which segments go (with each one's last seq and hash, the anchor of what is kept),
    /// then deletes them and trims the checkpoints before the anchor. The newest segment holding
    /// records is never retired: it carries the chain head. Returns how many segments went.
    fn retire(&mut self, keep_days: u32, today: jiff::civil::Date) -> Result<usize, AuditError> {
        self.locked(|c| c.retire_locked(keep_days, today))
    }

    fn retire_locked(
        &mut self,
        keep_days: u32,
        today: jiff::civil::Date,
    ) -> Result<usize, AuditError> {
        self.refresh(today, false)?;
        let cutoff = today
            .checked_sub(jiff::Span::new().days(i64::from(keep_days)))
            .unwrap_or(jiff::civil::Date::MIN);
        let segs = segment::segments(&self.dir).map_err(io_err(&self.dir))?;
        let mut sizes = Vec::with_capacity(segs.len());
        for seg in &segs {
            sizes.push(
                std::fs::metadata(&seg.path)
                    .map_err(io_err(&seg.path))?
                    .len(),
            );
        }
        let Some(newest) = sizes.iter().rposition(|len| *len > 0) else {
            return Ok(0);
        };
        let mut gone = Vec::new();
        let mut retired = Vec::new();
        for i in 0..newest {
            // Every record of segment i is older than the next segment's date.
            if segs[i + 1].date > cutoff {
                break;
            }
            let path = &segs[i].path;
            gone.push(path.clone());
            if sizes[i] == 0 {
                continue;
            }
            let corrupt = || AuditError::Corrupt { path: path.clone() };
            let first = segment::first_line(path)
                .map_err(io_err(path))?
                .ok_or_else(corrupt)?;
            let last = segment::last_line(path)
                .map_err(io_err(path))?
                .ok_or_else(corrupt)?;
            let (first_seq, _, _) = check_line(&first).map_err(|_| corrupt())?;
            let (last_seq, _, last_hash) = check_line(&last).map_err(|_| corrupt())?;
            retired.push(Retired {
                segment: format!("{}.jsonl", segs[i].date),
                first_seq,
                last_seq,
                last_hash,
            });
        }
        if gone.is_empty() {
            return Ok(0);
        }
        if let (Some(first), Some(last)) = (retired.first(), retired.last()) {
            let mut ev = AuditEvent::new(
                EventKind::SegmentsRetired,
                Outcome::Success,
                format!(
                    "retention of {keep_days} days: retired {} segment(s), {} to {}, seq {} to {}",
                    retired.len(),
                    first.segment,
                    last.segment,
                    first.first_seq,
                    last.last_seq
                ),
            );
            ev.customer = (self.name != BROKER_CHAIN).then(|| self.name.clone());
            ev.actor = Some("broker".into());
            ev.retired = retired.clone();
            // Recorded before anything is deleted: a gap is never unexplained.
            self.append_locked(&[&ev])?;
        }
        for path in &gone {
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        sync_dir(&self.dir)?;
        if let Some(anchor) = retired.last() {
            self.trim_checkpoints(anchor.last_seq)?;
        }
        tracing::info!(chain = %self.name, segments = gone.len(), keep_days, "retired audit segments past retention");
        Ok(gone.len())
    }

    /// Drops the checkpoints of retired records (those before `anchor`), atomically.
    fn trim_checkpoints(&self, anchor: u64) -> Result<(), AuditError> {
        let path = segment::checkpoints_path(&self.dir);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .is_none_or(|seq| seq >= anchor)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.len() == text.len() {
            return Ok(());
        }
        let tmp = self.dir.join("checkpoints.jsonl.tmp");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(kept.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)
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
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
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
                std::fs::write(&key, text).map_err(io_err(&key))?;
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
                    },
                    &writer_health,
                )
            })
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

/// What the writer does besides appending.
struct Duties {
    checkpoints: Option<Checkpoints>,
    retention_days: Option<u32>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest segment of a chain.
    fn newest(audit: &Path, chain: &str) -> PathBuf {
        segment::segments(&audit.join(chain))
            .unwrap()
            .pop()
            .expect("the chain has a segment")
            .path
    }

    /// Today's segment of a chain, its folder created.
    fn today(audit: &Path, chain: &str) -> PathBuf {
        let dir = audit.join(chain);
        std::fs::create_dir_all(&dir).unwrap();
        segment::segment_path(&dir, segment::date_of(jiff::Timestamp::now()))
    }

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
        assert_eq!(verify_chain(dir.path(), "acme").unwrap(), 5);
        assert_eq!(verify_chain(dir.path(), "_broker").unwrap(), 1);
        assert_eq!(verify_chain(dir.path(), "globex").unwrap(), 1);
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
        let path = newest(dir.path(), "acme");
        assert_eq!(verify_chain(dir.path(), "acme").unwrap(), 6);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replacen("\"reason\":\"x\"", "\"reason\":\"y\"", 1),
        )
        .unwrap();
        let err = verify_chain(dir.path(), "acme").unwrap_err();
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
        assert_eq!(verify_chain(dir.path(), "acme").unwrap(), 10);
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
        let path = newest(dir.path(), "acme");
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{whole}{{\"seq\":4,\"tim")).unwrap();

        let (log, w) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        log.append_blocking(ev(Some("acme"), "after")).unwrap();
        drop(log);
        w.join();
        assert_eq!(verify_chain(dir.path(), "acme").unwrap(), 5);
        let text = std::fs::read_to_string(&path).unwrap();
        let record: serde_json::Value = serde_json::from_str(text.lines().nth(3).unwrap()).unwrap();
        assert_eq!(record["event"], "torn_tail_quarantined");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let aside: Vec<_> = std::fs::read_dir(dir.path().join("acme"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}.torn-"))
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
        let path = today(dir.path(), "acme");
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
        assert_eq!(verify_chain(dir.path(), "acme").unwrap(), 1);
    }

    #[test]
    fn a_corrupt_last_record_stops_the_writer_from_starting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(today(dir.path(), "acme"), "{\"seq\":1,\"hash\":\"00\"}\n").unwrap();
        let err = AuditLog::open(dir.path(), &["acme"], None).unwrap_err();
        assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("sallyport audit verify"), "{err}");
    }

    /// Writes a chain by hand: for each `(days ago, records)`, a segment of that date. Returns the
    /// hash of every record, by seq - 1.
    pub(crate) fn fabricate(audit: &Path, chain: &str, days: &[(i64, u64)]) -> Vec<String> {
        let dir = audit.join(chain);
        std::fs::create_dir_all(&dir).unwrap();
        let today = segment::date_of(jiff::Timestamp::now());
        let (mut seq, mut head, mut hashes) = (0, GENESIS.to_owned(), Vec::new());
        for (ago, n) in days {
            let date = today.checked_sub(jiff::Span::new().days(*ago)).unwrap();
            let time = format!("{date}T12:00:00.000000Z");
            let mut text = String::new();
            for _ in 0..*n {
                seq += 1;
                let (line, hash) = render(&ev(Some(chain), "old"), seq, &time, &head);
                text.push_str(&line);
                hashes.push(hash.clone());
                head = hash;
            }
            std::fs::write(segment::segment_path(&dir, date), text).unwrap();
        }
        hashes
    }

    #[test]
    fn a_new_day_starts_a_segment_and_the_chain_runs_on_for_every_writer() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = fabricate(dir.path(), "acme", &[(3, 3)]);
        // Two writers (the broker and a CLI command), both opened on the old segment.
        let (a, wa) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        let (b, wb) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        let first = a.append_blocking(ev(Some("acme"), "today")).unwrap();
        assert_eq!(first.seq, 4);
        assert_eq!(b.append_blocking(ev(Some("acme"), "today")).unwrap().seq, 5);
        assert_eq!(a.append_blocking(ev(Some("acme"), "today")).unwrap().seq, 6);
        drop((a, b));
        wa.join();
        wb.join();
        let segs = segment::segments(&dir.path().join("acme")).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].path, today(dir.path(), "acme"));
        let first_today = segment::first_line(&segs[1].path).unwrap().unwrap();
        let (seq, prev, _) = check_line(&first_today).unwrap();
        assert_eq!((seq, prev.as_str()), (4, hashes[2].as_str()));
        assert_eq!(verify_chain(dir.path(), "acme").unwrap(), 6);
    }

    #[test]
    fn retention_retires_old_segments_after_recording_the_anchor() {
        use sallyport_certs::grant::generate_signing_key_pem;
        use sallyport_certs::signing::Ed25519Signer;
        let dir = tempfile::tempdir().unwrap();
        let hashes = fabricate(dir.path(), "acme", &[(40, 3), (35, 2), (10, 2)]);
        let signer =
            Arc::new(Ed25519Signer::from_pkcs8_pem(&generate_signing_key_pem().unwrap()).unwrap());
        let chain_dir = dir.path().join("acme");
        let cp_file = segment::checkpoints_path(&chain_dir);
        let old_cps = [2u64, 5]
            .iter()
            .map(|seq| {
                let h = &hashes[*seq as usize - 1];
                checkpoint::render(&signer, "acme", *seq, h, "2026-01-01T00:00:00Z").unwrap()
            })
            .collect::<String>();
        std::fs::write(&cp_file, old_cps).unwrap();
        let cps = Checkpoints {
            signer: signer.clone(),
            every_records: 1000,
            every: std::time::Duration::from_secs(3600),
            quiet: std::time::Duration::from_secs(3600),
        };
        let (log, w) = AuditLog::open_with(dir.path(), &["acme"], Some(cps), Some(30)).unwrap();
        // Retention runs when the writer starts, before it takes any record.
        let after = log.append_blocking(ev(Some("acme"), "after")).unwrap();
        assert_eq!(after.seq, 9);
        drop(log);
        w.join();

        // Only the segment whose every record is past 30 days went.
        let segs = segment::segments(&chain_dir).unwrap();
        assert_eq!(segs.len(), 3, "{segs:?}");
        let records: Vec<serde_json::Value> =
            segment::Reader::open(&chain_dir, segment::Start::Oldest, None)
                .unwrap()
                .map(|l| serde_json::from_str(&l.unwrap().text).unwrap())
                .collect();
        assert_eq!(records[0]["seq"], 4);
        let retired = &records[records.len() - 2];
        assert_eq!(retired["event"], "segments_retired");
        assert_eq!(retired["retired"][0]["last_seq"], 3);
        assert_eq!(retired["retired"][0]["last_hash"], hashes[2].as_str());
        // The checkpoint of a retired record is trimmed; the later ones stay.
        let kept = std::fs::read_to_string(&cp_file).unwrap();
        assert!(
            !kept.contains("\"seq\":2,") && kept.contains("\"seq\":5,"),
            "{kept}"
        );

        // The chain, anchored by the record, verifies; removing the oldest kept segment by hand
        // is caught.
        let key = signer.public_key().to_vec();
        let r = verify::verify(dir.path(), "acme", Some(&key), &[]);
        assert_eq!(r.problem, None);
        assert_eq!(r.records, 6);
        std::fs::remove_file(&segs[0].path).unwrap();
        let p = verify::verify(dir.path(), "acme", Some(&key), &[])
            .problem
            .unwrap();
        assert_eq!((p.kind, p.seq), (verify::Kind::Deleted, Some(6)), "{p}");
    }

    #[test]
    fn records_never_go_to_a_segment_older_than_the_newest() {
        // Another writer whose clock ran ahead (or ours stepped back) already started tomorrow.
        let dir = tempfile::tempdir().unwrap();
        fabricate(dir.path(), "acme", &[(0, 2), (-1, 1)]);
        let (log, w) = AuditLog::open(dir.path(), &["acme"], None).unwrap();
        assert_eq!(log.append_blocking(ev(Some("acme"), "now")).unwrap().seq, 4);
        drop(log);
        w.join();
        let newest = newest(dir.path(), "acme");
        assert_eq!(std::fs::read_to_string(newest).unwrap().lines().count(), 2);
        assert_eq!(verify_chain(dir.path(), "acme").unwrap(), 4);
    }

    #[test]
    fn a_planted_retirement_record_does_not_explain_deleted_segments() {
        use sallyport_certs::grant::generate_signing_key_pem;
        use sallyport_certs::signing::Ed25519Signer;
        let dir = tempfile::tempdir().unwrap();
        let hashes = fabricate(dir.path(), "acme", &[(5, 3), (2, 3)]);
        let signer =
            Arc::new(Ed25519Signer::from_pkcs8_pem(&generate_signing_key_pem().unwrap()).unwrap());
        let cps = Checkpoints {
            signer: signer.clone(),
            every_records: 1000,
            every: std::time::Duration::from_secs(3600),
            quiet: std::time::Duration::from_secs(3600),
        };
        let (log, w) = AuditLog::open(dir.path(), &["acme"], Some(cps)).unwrap();
        let last = log.append_blocking(ev(Some("acme"), "signed")).unwrap();
        drop(log);
        w.join();
        let key = signer.public_key().to_vec();
        assert_eq!(
            verify::verify(dir.path(), "acme", Some(&key), &[]).problem,
            None
        );
        // Whoever controls the folder deletes the oldest segment and appends a well-formed record
        // claiming retention took it: no checkpoint signs that record.
        let segs = segment::segments(&dir.path().join("acme")).unwrap();
        std::fs::remove_file(&segs[0].path).unwrap();
        let mut planted = ev(Some("acme"), "retention");
        planted.event = EventKind::SegmentsRetired;
        planted.retired = vec![Retired {
            segment: "x.jsonl".into(),
            first_seq: 1,
            last_seq: 3,
            last_hash: hashes[2].clone(),
        }];
        let (line, _) = render(&planted, last.seq + 1, &now_rfc3339(), &last.hash);
        let newest = newest(dir.path(), "acme");
        let text = std::fs::read_to_string(&newest).unwrap();
        std::fs::write(&newest, text + &line).unwrap();
        let p = verify::verify(dir.path(), "acme", Some(&key), &[])
            .problem
            .unwrap();
        assert_eq!(p.kind, verify::Kind::Deleted, "{p}");
        assert!(
            p.detail.contains("not covered by a signed checkpoint"),
            "{p}"
        );
    }
}
