//! One chain on disk, as the writer holds it: its folder, lock file, active segment and head (seq
//! and hash). Opening a chain moves a torn tail aside and re-reads the head; appending, signing a
//! checkpoint and retiring segments each run under the chain's `flock`, after re-reading the head when
//! another process appended meanwhile.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sallyport_ids::time::rfc3339_micros;

use crate::checkpoint::{self, Checkpoints};
use crate::event::{AuditEvent, EventKind, Outcome, Retired, check_line, render};
use crate::{AuditError, BROKER_CHAIN, GENESIS, io_err, segment};

pub(crate) struct Chain {
    pub(crate) name: String,
    /// The chain's folder.
    dir: PathBuf,
    /// Its lock file, held while appending.
    lock: File,
    /// The segment appended to: its date, path and file (`None` until the chain has a segment).
    active: Option<(jiff::civil::Date, PathBuf, File)>,
    /// The active segment's length as last seen.
    len: u64,
    pub(crate) seq: u64,
    pub(crate) head: String,
    /// The seq of the last checkpoint signed for this chain.
    pub(crate) checkpointed: u64,
    /// When this writer last signed one.
    pub(crate) checkpointed_at: std::time::Instant,
    /// When this writer last appended.
    pub(crate) appended_at: std::time::Instant,
    /// A torn tail moved aside when the chain was opened: (where, how many bytes).
    quarantined: Option<(PathBuf, usize)>,
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Chain {
    fn open(audit: &Path, name: &str) -> Result<Chain, AuditError> {
        let dir = segment::chain_dir(audit, name);
        sallyport_ids::private::dir_all(&dir).map_err(io_err(&dir))?;
        // Whoever created the folder may have crashed before syncing its entry.
        sync_dir(audit)?;
        let lock_path = dir.join(segment::LOCK);
        let lock = sallyport_ids::private::file_options()
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
        let file = sallyport_ids::private::file_options()
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
    pub(crate) fn open_recorded(audit: &Path, name: &str) -> Result<Chain, AuditError> {
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
            ev.customer = (name != BROKER_CHAIN).then(|| name.parse().ok()).flatten();
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
        let mut file = sallyport_ids::private::file_options()
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
        let mut f = sallyport_ids::private::file_options()
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
    pub(crate) fn checkpoint(&mut self, cps: &Checkpoints) -> Result<(), AuditError> {
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
            &rfc3339_micros(jiff::Timestamp::now()),
        )
        .map_err(|e| AuditError::Io {
            path: cp_path.clone(),
            message: e.to_string(),
        })?;
        let existed = cp_path.exists();
        let mut f = sallyport_ids::private::file_options()
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

    pub(crate) fn append_batch(
        &mut self,
        events: &[&AuditEvent],
    ) -> Result<Vec<(u64, String)>, AuditError> {
        self.locked(|c| c.append_locked(events))
    }

    fn append_locked(&mut self, events: &[&AuditEvent]) -> Result<Vec<(u64, String)>, AuditError> {
        let now = jiff::Timestamp::now();
        self.refresh(segment::date_of(now), true)?;
        let time = rfc3339_micros(now);
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
    pub(crate) fn retire(
        &mut self,
        keep_days: u32,
        today: jiff::civil::Date,
    ) -> Result<usize, AuditError> {
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
            ev.customer = (self.name != BROKER_CHAIN)
                .then(|| self.name.parse().ok())
                .flatten();
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
        let mut f = sallyport_ids::private::create(&tmp).map_err(io_err(&tmp))?;
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
