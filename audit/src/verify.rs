//! Verifying an audit folder without any secret: every chain's hashes, sequence and links, and every
//! checkpoint's signature and agreement with its chain. The first problem of each chain is reported
//! with its file, line, seq and kind, so an auditor knows exactly what was done to the trail.
//!
//! Kinds: `edited` (a record's bytes no longer match its hash, or no longer link to the next one),
//! `deleted` (seqs missing), `reordered` (a seq out of place that appears elsewhere), `inserted` (a seq
//! that repeats), `truncated` (the chain ends before a signed checkpoint), `rewritten` (the chain
//! disagrees with a signed checkpoint: records were replaced and re-hashed), `forged checkpoint` (a
//! checkpoint whose signature does not verify), `torn tail` (a last line cut short by a crash).
//!
//! A chain is read across its daily segments. The oldest record kept must be seq 1, or follow the
//! last record of a segment that a `segments_retired` record names (retention), so deleting the oldest
//! segments by hand is caught as `deleted`. Checkpoints of retired records are not checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint};
use crate::{AuditError, GENESIS, Retired, check_line, segment};

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A record was altered.
    Edited,
    /// Records are missing.
    Deleted,
    /// Records are out of order.
    Reordered,
    /// A record was added.
    Inserted,
    /// The chain ends before a signed checkpoint.
    Truncated,
    /// The chain disagrees with a signed checkpoint.
    Rewritten,
    /// A checkpoint's signature does not verify.
    ForgedCheckpoint,
    /// The last line is incomplete.
    TornTail,
    /// Records exist but no checkpoint was ever signed for them (the checkpoint file is gone).
    Unsigned,
}

impl Kind {
    /// The reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Edited => "edited",
            Kind::Deleted => "deleted",
            Kind::Reordered => "reordered",
            Kind::Inserted => "inserted",
            Kind::Truncated => "truncated",
            Kind::Rewritten => "rewritten",
            Kind::ForgedCheckpoint => "forged checkpoint",
            Kind::TornTail => "torn tail",
            Kind::Unsigned => "unsigned",
        }
    }
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file it is in (the chain or its checkpoint file).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// The seq concerned, when known.
    pub seq: Option<u64>,
    /// What kind of problem.
    pub kind: Kind,
    /// Details for people.
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

/// The outcome for one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The chain's name (customer id, or `_broker`).
    pub chain: String,
    /// Records read.
    pub records: u64,
    /// Checkpoints read.
    pub checkpoints: u64,
    /// Records after the last checkpoint (not yet signed).
    pub unsigned: u64,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

/// A checkpoint the chain is held to, and where it was read (for the report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The file it came from (the chain's checkpoint file, or an auditor's kept copy).
    pub file: PathBuf,
    /// Its 1-based line there.
    pub line: usize,
    /// The checkpoint.
    pub cp: Checkpoint,
}

impl Pin {
    fn source(&self) -> String {
        format!("checkpoint line {} of {}", self.line, self.file.display())
    }
}

/// Whether a chain holds a record with `seq` anywhere (a second pass, only when reporting).
fn holds(dir: &Path, seq: u64) -> bool {
    segment::Reader::open(dir, segment::Start::Oldest, None).is_ok_and(|r| {
        r.filter_map(Result::ok)
            .any(|l| check_line(&l.text).is_ok_and(|(s, _, _)| s == seq))
    })
}

/// What the segments retired so far anchor: last seq -> (last hash of that retired segment, seq of
/// the `segments_retired` record naming it).
fn anchors_of(text: &str, seq: u64, anchors: &mut HashMap<u64, (String, u64)>) {
    if !text.contains("\"event\":\"segments_retired\"") {
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if let Ok(retired) = serde_json::from_value::<Vec<Retired>>(v["retired"].clone()) {
        for r in retired {
            anchors.insert(r.last_seq, (r.last_hash, seq));
        }
    }
}

/// Recomputes a chain across its segments in the audit folder `audit`; returns the number of
/// records. The first record kept is taken as it is (anchoring it is [`verify`]'s job).
pub fn verify_chain(audit: &Path, chain: &str) -> Result<u64, AuditError> {
    let dir = segment::chain_dir(audit, chain);
    let at_dir = |e: std::io::Error| AuditError::Record(format!("{}: {e}", dir.display()));
    let reader = segment::Reader::open(&dir, segment::Start::Oldest, None).map_err(at_dir)?;
    let mut last: Option<(u64, String)> = None;
    let mut n = 0;
    for line in reader {
        let line = line.map_err(at_dir)?;
        let at = format!("{}:{}", line.file.display(), line.line);
        let (seq, p, h) =
            check_line(&line.text).map_err(|e| AuditError::Record(format!("{at}: {e}")))?;
        if let Some((s, head)) = &last
            && (seq != s + 1 || p != *head)
        {
            return Err(AuditError::Record(format!(
                "{at}: chain broken at seq {seq} (expected seq {})",
                s + 1
            )));
        }
        if last.is_none() && seq == 1 && p != GENESIS {
            return Err(AuditError::Record(format!(
                "{at}: the first record does not start from the genesis hash"
            )));
        }
        last = Some((seq, h));
        n += 1;
    }
    Ok(n)
}

/// Verifies the chain `chain` of the audit folder `audit` across its segments, with its checkpoint
/// file and the `extra` checkpoints kept elsewhere (already checked and for this chain). Without
/// `key`, the checkpoint file is not read. Streams the records: memory stays flat however long the
/// chain is.
pub fn verify(audit: &Path, chain: &str, key: Option<&[u8]>, extra: &[Pin]) -> Report {
    let dir = segment::chain_dir(audit, chain);
    let mut report = Report {
        chain: chain.to_owned(),
        records: 0,
        checkpoints: 0,
        unsigned: 0,
        problem: None,
    };
    let problem = |file: &Path, line: usize, seq: Option<u64>, kind: Kind, detail: String| {
        Some(Problem {
            file: file.to_owned(),
            line,
            seq,
            kind,
            detail,
        })
    };
    // Checkpoints first: signed by the key and for this chain.
    let cp_path = segment::checkpoints_path(&dir);
    let mut pins: Vec<Pin> = Vec::new();
    if let Some(key) = key
        && let Ok(text) = std::fs::read_to_string(&cp_path)
    {
        for (i, line) in text.lines().enumerate() {
            let cp = match checkpoint::check(line, Some(key)) {
                Ok(cp) => cp,
                Err(e) => {
                    report.problem =
                        problem(&cp_path, i + 1, None, Kind::ForgedCheckpoint, e.to_string());
                    return report;
                }
            };
            if cp.chain != chain {
                report.problem = problem(
                    &cp_path,
                    i + 1,
                    Some(cp.seq),
                    Kind::ForgedCheckpoint,
                    format!("signed for chain `{}`, found with `{chain}`", cp.chain),
                );
                return report;
            }
            report.checkpoints += 1;
            pins.push(Pin {
                file: cp_path.clone(),
                line: i + 1,
                cp,
            });
        }
    }
    let stored_max = pins.iter().map(|p| p.cp.seq).max().unwrap_or(0);
    pins.extend(extra.iter().cloned());
    let mut by_seq: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, pin) in pins.iter().enumerate() {
        by_seq.entry(pin.cp.seq).or_default().push(i);
    }

    let reader = match segment::Reader::open(&dir, segment::Start::Oldest, None) {
        Ok(r) => r,
        Err(e) => {
            report.problem = problem(&dir, 0, None, Kind::Truncated, format!("unreadable: {e}"));
            return report;
        }
    };
    // (seq, prev_hash, file, line) of the first record kept, anchored once the chain is read.
    let mut first: Option<(u64, String, PathBuf, usize)> = None;
    // (seq, hash, file, line) of the last record read.
    let mut last: Option<(u64, String, PathBuf, usize)> = None;
    let mut torn: Option<(PathBuf, usize)> = None;
    let mut anchors = HashMap::new();
    for line in reader {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                report.problem =
                    problem(&dir, 0, None, Kind::Truncated, format!("unreadable: {e}"));
                return report;
            }
        };
        if let Some((file, at)) = &torn {
            report.problem = problem(
                file,
                *at,
                None,
                Kind::Edited,
                "a line cut short in the middle of the chain, not at its end".into(),
            );
            return report;
        }
        if !line.complete {
            torn = Some((line.file, line.line));
            continue;
        }
        let (seq, prev, hash) = match check_line(&line.text) {
            Ok(p) => p,
            Err(e) => {
                let seq = serde_json::from_str::<serde_json::Value>(&line.text)
                    .ok()
                    .and_then(|v| v["seq"].as_u64());
                report.problem = problem(&line.file, line.line, seq, Kind::Edited, e.to_string());
                return report;
            }
        };
        let issue = match &last {
            None if seq == 1 && prev != GENESIS => Some((
                Kind::Edited,
                "the first record does not start from the genesis hash".to_owned(),
            )),
            None => {
                first = Some((seq, prev.clone(), line.file.clone(), line.line));
                None
            }
            Some((last_seq, last_hash, _, _)) => {
                let expected = last_seq + 1;
                if seq > expected {
                    Some(if holds(&dir, expected) {
                        (
                            Kind::Reordered,
                            format!("seq {seq} where {expected} belongs"),
                        )
                    } else {
                        (
                            Kind::Deleted,
                            format!("seq {expected} to {} are missing", seq - 1),
                        )
                    })
                } else if seq < expected {
                    Some(if seq + 1 == expected {
                        (
                            Kind::Inserted,
                            format!("seq {seq} repeats: a record was added before it"),
                        )
                    } else {
                        (
                            Kind::Reordered,
                            format!("seq {seq} where {expected} belongs"),
                        )
                    })
                } else if prev != *last_hash {
                    Some((
                        Kind::Edited,
                        "prev_hash does not match the record before it: that record was replaced"
                            .into(),
                    ))
                } else {
                    None
                }
            }
        };
        if let Some((kind, detail)) = issue {
            report.problem = problem(&line.file, line.line, Some(seq), kind, detail);
            return report;
        }
        for pin in by_seq.get(&seq).into_iter().flatten().map(|i| &pins[*i]) {
            if pin.cp.hash != hash {
                report.problem = problem(
                    &line.file,
                    line.line,
                    Some(seq),
                    Kind::Rewritten,
                    format!("the record differs from the one {} signed", pin.source()),
                );
                return report;
            }
        }
        anchors_of(&line.text, seq, &mut anchors);
        report.records += 1;
        last = Some((seq, hash, line.file, line.line));
    }

    let last_seq = last.as_ref().map_or(0, |l| l.0);
    let first_seq = first.as_ref().map_or(1, |f| f.0);
    // The highest seq a checkpoint signed among the records read (every one of them matched).
    let pinned = pins
        .iter()
        .map(|p| p.cp.seq)
        .filter(|s| (first_seq..=last_seq).contains(s))
        .max();
    // The oldest record kept starts the chain, or follows a segment that retention retired, as a
    // segments_retired record signed by a checkpoint says: an unsigned one could be planted.
    if let Some((seq, prev, file, at)) = &first
        && *seq != 1
    {
        let detail = match anchors.get(&(seq - 1)) {
            Some((hash, by)) if hash == prev && pinned.is_some_and(|p| p >= *by) => None,
            Some((hash, by)) if hash == prev => Some(format!(
                "seq 1 to {} are missing; the segments_retired record (seq {by}) that accounts for them is not covered by a signed checkpoint",
                seq - 1
            )),
            _ => Some(format!(
                "seq 1 to {} are missing, and no segments_retired record accounts for them",
                seq - 1
            )),
        };
        if let Some(detail) = detail {
            report.problem = if holds(&dir, 1) {
                problem(
                    file,
                    *at,
                    Some(*seq),
                    Kind::Reordered,
                    format!("seq {seq} where 1 belongs"),
                )
            } else {
                problem(file, *at, Some(*seq), Kind::Deleted, detail)
            };
            return report;
        }
        // A checkpoint of the last retired record must agree with the anchor.
        if let Some(pin) = pins
            .iter()
            .find(|p| p.cp.seq == seq - 1 && p.cp.hash != *prev)
        {
            report.problem = problem(
                file,
                *at,
                Some(*seq),
                Kind::Rewritten,
                format!(
                    "prev_hash differs from the hash of seq {} that {} signed",
                    seq - 1,
                    pin.source()
                ),
            );
            return report;
        }
    }
    if let Some(pin) = pins
        .iter()
        .filter(|p| p.cp.seq > last_seq)
        .min_by_key(|p| p.cp.seq)
    {
        report.problem = match &last {
            Some((seq, _, file, at)) => problem(
                file,
                *at,
                Some(*seq),
                Kind::Truncated,
                format!(
                    "the chain ends at seq {seq}, but {} signed seq {}",
                    pin.source(),
                    pin.cp.seq
                ),
            ),
            None => problem(
                &dir,
                0,
                None,
                Kind::Deleted,
                format!(
                    "no records remain, but {} signed seq {}",
                    pin.source(),
                    pin.cp.seq
                ),
            ),
        };
        return report;
    }
    report.unsigned = last_seq.saturating_sub(stored_max);
    if key.is_some() && pinned.is_none() && report.records > 0 {
        report.problem = problem(
            &cp_path,
            0,
            None,
            Kind::Unsigned,
            format!(
                "{} records, but no signed checkpoint: the checkpoint file is missing or empty (a broker signs one within audit.checkpoint_every_seconds, and when it stops)",
                report.records
            ),
        );
        return report;
    }
    if let Some((file, at)) = torn {
        report.problem = problem(
            &file,
            at,
            None,
            Kind::TornTail,
            "the last line is incomplete (a write cut short); the broker quarantines it at start-up"
                .into(),
        );
    }
    report
}

#[cfg(test)]
mod tests {
    //! The tamper fixtures: each way of changing a trail is detected and named.
    use super::*;
    use crate::{AuditEvent, AuditLog, Checkpoints, EventKind, Outcome};
    use sallyport_certs::grant::generate_signing_key_pem;
    use sallyport_certs::signing::Ed25519Signer;
    use std::sync::Arc;
    use std::time::Duration;

    /// A trail of `n` records on `acme`, checkpointed every 5 records; returns (dir, key, signer).
    fn trail(n: u64) -> (tempfile::TempDir, Vec<u8>, Arc<Ed25519Signer>) {
        let dir = tempfile::tempdir().unwrap();
        let signer =
            Arc::new(Ed25519Signer::from_pkcs8_pem(&generate_signing_key_pem().unwrap()).unwrap());
        let cps = Checkpoints {
            signer: signer.clone(),
            every_records: 5,
            every: Duration::from_secs(3600),
            quiet: Duration::from_secs(3600),
        };
        let (log, w) = AuditLog::open(dir.path(), &["acme"], Some(cps)).unwrap();
        for i in 0..n {
            let mut e = AuditEvent::new(EventKind::Decision, Outcome::Allow, format!("r{i}"));
            e.customer = Some("acme".parse().unwrap());
            log.append_blocking(e).unwrap();
        }
        drop(log);
        w.join();
        (dir, signer.public_key().to_vec(), signer)
    }

    /// The one segment of the fixture chain.
    fn seg(dir: &Path) -> PathBuf {
        segment::segments(&dir.join("acme"))
            .unwrap()
            .pop()
            .unwrap()
            .path
    }

    fn cps(dir: &Path) -> PathBuf {
        segment::checkpoints_path(&dir.join("acme"))
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(seg(dir))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write(dir: &Path, lines: &[String]) {
        std::fs::write(seg(dir), lines.join("\n") + "\n").unwrap();
    }

    fn check(dir: &Path, key: &[u8]) -> Problem {
        verify(dir, "acme", Some(key), &[])
            .problem
            .expect("the change went unnoticed")
    }

    #[test]
    fn an_intact_trail_verifies_with_its_checkpoints() {
        let (dir, key, _) = trail(12);
        let r = verify(dir.path(), "acme", Some(&key), &[]);
        assert_eq!(r.problem, None);
        // At the first record, then every 5 records, and a final one when the writer stopped.
        assert_eq!((r.records, r.checkpoints, r.unsigned), (12, 4, 0));
        assert!(dir.path().join(checkpoint::KEY_FILE).exists());
    }

    #[test]
    fn an_edited_record_is_named() {
        let (dir, key, _) = trail(8);
        let mut l = lines(dir.path());
        l[3] = l[3].replace("\"reason\":\"r3\"", "\"reason\":\"rX\"");
        write(dir.path(), &l);
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.line, p.seq), (Kind::Edited, 4, Some(4)), "{p}");
    }

    #[test]
    fn a_deleted_record_is_named() {
        let (dir, key, _) = trail(8);
        let mut l = lines(dir.path());
        l.remove(2);
        write(dir.path(), &l);
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.line, p.seq), (Kind::Deleted, 3, Some(4)), "{p}");
    }

    #[test]
    fn reordered_records_are_named() {
        let (dir, key, _) = trail(8);
        let mut l = lines(dir.path());
        l.swap(4, 5);
        write(dir.path(), &l);
        let p = check(dir.path(), &key);
        assert_eq!(
            (p.kind, p.line, p.seq),
            (Kind::Reordered, 5, Some(6)),
            "{p}"
        );
    }

    #[test]
    fn an_inserted_record_is_named() {
        let (dir, key, _) = trail(8);
        let mut l = lines(dir.path());
        // A well-formed record that links to seq 3, inserted before the real seq 4.
        let prev = serde_json::from_str::<serde_json::Value>(&l[2]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut e = AuditEvent::new(EventKind::Decision, Outcome::Allow, "planted");
        e.customer = Some("acme".parse().unwrap());
        let (line, _) = crate::render(&e, 4, "2026-01-01T00:00:00Z", &prev);
        l.insert(3, line.trim_end().to_owned());
        write(dir.path(), &l);
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.line, p.seq), (Kind::Inserted, 5, Some(4)), "{p}");
    }

    #[test]
    fn a_tail_truncated_past_the_last_checkpoint_is_named() {
        let (dir, key, _) = trail(12);
        let l = lines(dir.path());
        write(dir.path(), &l[..9]);
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.seq), (Kind::Truncated, Some(9)), "{p}");
        assert!(p.detail.contains("signed seq 11"), "{p}");
    }

    #[test]
    fn a_consistently_rewritten_chain_disagrees_with_its_checkpoint() {
        let (dir, key, _) = trail(5);
        // Re-render every record from seq 2 on with a changed reason and fresh hashes.
        let l = lines(dir.path());
        let mut out = vec![l[0].clone()];
        let mut prev = serde_json::from_str::<serde_json::Value>(&l[0]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned();
        for seq in 2..=5u64 {
            let mut e = AuditEvent::new(EventKind::Decision, Outcome::Deny, "rewritten");
            e.customer = Some("acme".parse().unwrap());
            let (line, hash) = crate::render(&e, seq, "2026-01-01T00:00:00Z", &prev);
            out.push(line.trim_end().to_owned());
            prev = hash;
        }
        write(dir.path(), &out);
        assert_eq!(
            verify(dir.path(), "acme", None, &[]).problem,
            None,
            "hashes alone cannot tell"
        );
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.seq), (Kind::Rewritten, Some(5)), "{p}");
    }

    #[test]
    fn a_forged_checkpoint_is_named() {
        let (dir, key, _) = trail(5);
        let cp = cps(dir.path());
        let text = std::fs::read_to_string(&cp).unwrap();
        std::fs::write(&cp, text.replacen("\"seq\":5", "\"seq\":4", 1)).unwrap();
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.line), (Kind::ForgedCheckpoint, 2), "{p}");
        assert_eq!(p.file, cp);
        // A checkpoint signed with another key is forged too.
        let (other, _, signer) = trail(5);
        let other_cp = std::fs::read_to_string(cps(other.path())).unwrap();
        drop(signer);
        std::fs::write(&cp, other_cp).unwrap();
        assert_eq!(check(dir.path(), &key).kind, Kind::ForgedCheckpoint);
    }

    #[test]
    fn a_deleted_checkpoint_file_or_chain_is_named() {
        let (dir, key, _) = trail(7);
        let cp = cps(dir.path());
        let saved = std::fs::read_to_string(&cp).unwrap();
        std::fs::remove_file(&cp).unwrap();
        assert_eq!(check(dir.path(), &key).kind, Kind::Unsigned);
        std::fs::write(&cp, saved).unwrap();
        std::fs::remove_file(seg(dir.path())).unwrap();
        let listed = segment::chains(dir.path()).unwrap();
        assert!(listed.iter().any(|n| n == "acme"), "{listed:?}");
        assert_eq!(check(dir.path(), &key).kind, Kind::Deleted);
    }

    #[test]
    fn a_torn_tail_is_named() {
        let (dir, key, _) = trail(3);
        let mut text = std::fs::read_to_string(seg(dir.path())).unwrap();
        text.push_str("{\"seq\":4,\"ti");
        std::fs::write(seg(dir.path()), text).unwrap();
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.line), (Kind::TornTail, 4), "{p}");
    }
}
