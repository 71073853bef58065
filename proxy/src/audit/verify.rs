//! Verifying an audit folder without any secret: every chain's hashes, sequence and links, and every
//! checkpoint's signature and agreement with its chain. The first problem of each chain is reported
//! with its file, line, seq and kind, so an auditor knows exactly what was done to the trail.
//!
//! Kinds: `edited` (a record's bytes no longer match its hash, or no longer link to the next one),
//! `deleted` (seqs missing), `reordered` (a seq out of place that appears elsewhere), `inserted` (a seq
//! that repeats), `truncated` (the chain ends before a signed checkpoint), `rewritten` (the chain
//! disagrees with a signed checkpoint: records were replaced and re-hashed), `forged checkpoint` (a
//! checkpoint whose signature does not verify), `torn tail` (a last line cut short by a crash).

use std::path::{Path, PathBuf};

use super::{GENESIS, check_line, checkpoint};

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

/// The chains in an audit folder: `(name, path)`, sorted by name. A chain whose file is gone but
/// whose checkpoints remain is listed too (its path does not exist), so it is reported as deleted.
pub fn chains(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let chain = match name.strip_suffix(".checkpoints.jsonl") {
            Some(c) => c,
            None => match name.strip_suffix(".jsonl") {
                Some(c) => c,
                None => continue,
            },
        };
        let file = dir.join(format!("{chain}.jsonl"));
        if !out.iter().any(|(n, _)| n == chain) {
            out.push((chain.to_owned(), file));
        }
    }
    out.sort();
    Ok(out)
}

/// Verifies one chain file and its checkpoint file. Without `key`, checkpoints are not checked.
pub fn verify(chain: &str, path: &Path, key: Option<&[u8]>) -> Report {
    let mut report = Report {
        chain: chain.to_owned(),
        records: 0,
        checkpoints: 0,
        unsigned: 0,
        problem: None,
    };
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            let gone = e.kind() == std::io::ErrorKind::NotFound;
            report.problem = Some(Problem {
                file: path.to_owned(),
                line: 0,
                seq: None,
                kind: if gone { Kind::Deleted } else { Kind::Truncated },
                detail: if gone {
                    "the chain file is gone, but its signed checkpoints remain".into()
                } else {
                    format!("unreadable: {e}")
                },
            });
            return report;
        }
    };
    let problem = |line: usize, seq: Option<u64>, kind: Kind, detail: String| Problem {
        file: path.to_owned(),
        line,
        seq,
        kind,
        detail,
    };
    let torn = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let complete = if torn {
        &lines[..lines.len() - 1]
    } else {
        &lines[..]
    };
    // Every line on its own first: its hash, and its seq for the order checks below.
    let mut parsed = Vec::with_capacity(complete.len());
    for (i, line) in complete.iter().enumerate() {
        match check_line(line) {
            Ok(p) => parsed.push(p),
            Err(e) => {
                let seq = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["seq"].as_u64());
                report.problem = Some(problem(i + 1, seq, Kind::Edited, e));
                return report;
            }
        }
    }
    let mut head = GENESIS.to_owned();
    let mut hashes = Vec::with_capacity(parsed.len());
    for (i, (seq, prev, hash)) in parsed.iter().enumerate() {
        let expected = i as u64 + 1;
        let found = |s: u64| parsed.iter().any(|(q, _, _)| *q == s);
        let issue = if *seq > expected {
            Some(if found(expected) {
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
        } else if *seq < expected {
            Some(if *seq + 1 == expected {
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
        } else if *prev != head {
            Some((
                Kind::Edited,
                "prev_hash does not match the record before it: that record was replaced".into(),
            ))
        } else {
            None
        };
        if let Some((kind, detail)) = issue {
            report.records = i as u64;
            report.problem = Some(problem(i + 1, Some(*seq), kind, detail));
            return report;
        }
        head = hash.clone();
        hashes.push(hash.clone());
    }
    report.records = hashes.len() as u64;
    // Checkpoints: signed by the key, and agreeing with the chain.
    let cp_path = checkpoint::file_of(path);
    let mut last = 0;
    if let Some(key) = key
        && let Ok(cps) = std::fs::read_to_string(&cp_path)
    {
        for (i, line) in cps.lines().enumerate() {
            let cp_problem = |seq, kind, detail| Problem {
                file: cp_path.clone(),
                line: i + 1,
                seq,
                kind,
                detail,
            };
            let cp = match checkpoint::check(line, Some(key)) {
                Ok(cp) => cp,
                Err(e) => {
                    report.problem = Some(cp_problem(None, Kind::ForgedCheckpoint, e));
                    return report;
                }
            };
            report.checkpoints += 1;
            if cp.chain != chain {
                report.problem = Some(cp_problem(
                    Some(cp.seq),
                    Kind::ForgedCheckpoint,
                    format!("signed for chain `{}`, found with `{chain}`", cp.chain),
                ));
                return report;
            }
            match hashes.get((cp.seq as usize).wrapping_sub(1)) {
                None if cp.seq > report.records => {
                    report.problem = Some(problem(
                        complete.len(),
                        Some(report.records),
                        Kind::Truncated,
                        format!(
                            "the chain ends at seq {}, but checkpoint line {} of {} signed seq {}",
                            report.records,
                            i + 1,
                            cp_path.display(),
                            cp.seq
                        ),
                    ));
                    return report;
                }
                Some(h) if *h != cp.hash => {
                    report.problem = Some(problem(
                        cp.seq as usize,
                        Some(cp.seq),
                        Kind::Rewritten,
                        format!(
                            "the record differs from the one checkpoint line {} signed",
                            i + 1
                        ),
                    ));
                    return report;
                }
                _ => {}
            }
            last = last.max(cp.seq);
        }
    }
    report.unsigned = report.records.saturating_sub(last);
    if key.is_some() && report.checkpoints == 0 && report.records > 0 {
        report.problem = Some(Problem {
            file: cp_path.clone(),
            line: 0,
            seq: None,
            kind: Kind::Unsigned,
            detail: format!(
                "{} records, but no signed checkpoint: the checkpoint file is missing or empty (a broker signs one within audit.checkpoint_every_seconds, and when it stops)",
                report.records
            ),
        });
        return report;
    }
    if torn {
        report.problem = Some(problem(
            lines.len(),
            None,
            Kind::TornTail,
            "the last line is incomplete (a write cut short); the broker quarantines it at start-up"
                .into(),
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    //! The tamper fixtures: each way of changing a trail is detected and named.
    use super::*;
    use crate::audit::{AuditEvent, AuditLog, Checkpoints, EventKind, Outcome};
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
        };
        let (log, w) = AuditLog::open(dir.path(), &["acme"], Some(cps)).unwrap();
        for i in 0..n {
            let mut e = AuditEvent::new(EventKind::Decision, Outcome::Allow, format!("r{i}"));
            e.customer = Some("acme".into());
            log.append_blocking(e).unwrap();
        }
        drop(log);
        w.join();
        (dir, signer.public_key().to_vec(), signer)
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("acme.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write(dir: &Path, lines: &[String]) {
        std::fs::write(dir.join("acme.jsonl"), lines.join("\n") + "\n").unwrap();
    }

    fn check(dir: &Path, key: &[u8]) -> Problem {
        verify("acme", &dir.join("acme.jsonl"), Some(key))
            .problem
            .expect("the change went unnoticed")
    }

    #[test]
    fn an_intact_trail_verifies_with_its_checkpoints() {
        let (dir, key, _) = trail(12);
        let r = verify("acme", &dir.path().join("acme.jsonl"), Some(&key));
        assert_eq!(r.problem, None);
        // Every 5 records, and a final one when the writer stopped.
        assert_eq!((r.records, r.checkpoints, r.unsigned), (12, 3, 0));
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
        e.customer = Some("acme".into());
        let (line, _) = crate::audit::render(&e, 4, "2026-01-01T00:00:00Z", &prev);
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
        assert!(p.detail.contains("signed seq 10"), "{p}");
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
            e.customer = Some("acme".into());
            let (line, hash) = crate::audit::render(&e, seq, "2026-01-01T00:00:00Z", &prev);
            out.push(line.trim_end().to_owned());
            prev = hash;
        }
        write(dir.path(), &out);
        assert_eq!(
            verify("acme", &dir.path().join("acme.jsonl"), None).problem,
            None,
            "hashes alone cannot tell"
        );
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.seq), (Kind::Rewritten, Some(5)), "{p}");
    }

    #[test]
    fn a_forged_checkpoint_is_named() {
        let (dir, key, _) = trail(5);
        let cp = dir.path().join("acme.checkpoints.jsonl");
        let text = std::fs::read_to_string(&cp).unwrap();
        std::fs::write(&cp, text.replacen("\"seq\":5", "\"seq\":4", 1)).unwrap();
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.line), (Kind::ForgedCheckpoint, 1), "{p}");
        assert_eq!(p.file, cp);
        // A checkpoint signed with another key is forged too.
        let (other, _, signer) = trail(5);
        let other_cp =
            std::fs::read_to_string(other.path().join("acme.checkpoints.jsonl")).unwrap();
        drop(signer);
        std::fs::write(&cp, other_cp).unwrap();
        assert_eq!(check(dir.path(), &key).kind, Kind::ForgedCheckpoint);
    }

    #[test]
    fn a_deleted_checkpoint_file_or_chain_is_named() {
        let (dir, key, _) = trail(7);
        let cp = dir.path().join("acme.checkpoints.jsonl");
        let saved = std::fs::read_to_string(&cp).unwrap();
        std::fs::remove_file(&cp).unwrap();
        assert_eq!(check(dir.path(), &key).kind, Kind::Unsigned);
        std::fs::write(&cp, saved).unwrap();
        std::fs::remove_file(dir.path().join("acme.jsonl")).unwrap();
        let listed = chains(dir.path()).unwrap();
        assert!(listed.iter().any(|(n, _)| n == "acme"), "{listed:?}");
        assert_eq!(check(dir.path(), &key).kind, Kind::Deleted);
    }

    #[test]
    fn a_torn_tail_is_named() {
        let (dir, key, _) = trail(3);
        let mut text = std::fs::read_to_string(dir.path().join("acme.jsonl")).unwrap();
        text.push_str("{\"seq\":4,\"ti");
        std::fs::write(dir.path().join("acme.jsonl"), text).unwrap();
        let p = check(dir.path(), &key);
        assert_eq!((p.kind, p.line), (Kind::TornTail, 4), "{p}");
    }
}
