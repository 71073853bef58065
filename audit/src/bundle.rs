//! Evidence bundles: everything about one access request in one file that an auditor can verify
//! offline. A bundle holds the request with its approvals, the grant, every session the grant opened
//! (bytes and times), and the contiguous run of chain records from the request's first record to the
//! first signed checkpoint after its last one, with that checkpoint and the audit public key.
//!
//! Verifying a bundle checks each record's hash, that the run is unbroken (seq +1, `prev_hash` links),
//! that the checkpoint's signature verifies and that it signs the run's last record, and that the
//! summaries (request, grant, sessions) agree with the records.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AuditError, check_line, checkpoint, segment};

/// The bundle format's name and version.
pub const FORMAT: &str = "sallyport-evidence-bundle/1";

/// One evidence bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// When it was made.
    pub created_at: String,
    /// The customer whose chain the records are on.
    pub customer: String,
    /// The request, as the API shows it.
    pub request: serde_json::Value,
    /// Its grant (id, window, revocation), if one was issued.
    pub grant: Option<serde_json::Value>,
    /// The sessions the grant opened.
    pub sessions: Vec<serde_json::Value>,
    /// Seqs of the records about this request, grant and its sessions.
    pub relevant: Vec<u64>,
    /// The chain lines from the first relevant record to the checkpoint, exactly as stored.
    pub records: Vec<String>,
    /// The signed checkpoint line covering the last record.
    pub checkpoint: Option<String>,
    /// The audit public key, as published.
    pub audit_key: serde_json::Value,
}

/// Which records belong in a bundle.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The request id.
    pub request_id: String,
    /// The grant id, if any.
    pub grant_id: Option<String>,
    /// Session ids of the grant.
    pub sessions: HashSet<String>,
}

impl Subject {
    fn concerns(&self, v: &serde_json::Value) -> bool {
        v["request_id"] == self.request_id.as_str()
            || self.grant_id.as_deref().is_some_and(|g| v["grant_id"] == g)
            || v["session_id"]
                .as_str()
                .is_some_and(|s| self.sessions.contains(s))
    }
}

/// The whole lines of a chain, from the segment holding the record after `after`.
fn lines(
    chain: &Path,
    after: u64,
) -> std::io::Result<impl Iterator<Item = std::io::Result<String>>> {
    let start = segment::Start::AfterSeq(after);
    Ok(
        segment::Reader::open(chain, start, None)?.filter_map(|l| match l {
            Ok(l) if l.complete => Some(Ok(l.text)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }),
    )
}

/// Collects the records of `subject` from the chain folder `chain` and the checkpoint that covers
/// them. Returns `(relevant seqs, lines, checkpoint line)`; without a covering checkpoint the run
/// goes to the chain's end and the checkpoint is `None`.
pub fn collect(
    chain: &Path,
    subject: &Subject,
) -> std::io::Result<(Vec<u64>, Vec<String>, Option<String>)> {
    let mut relevant = Vec::new();
    for line in lines(chain, 0)? {
        let line = line?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && subject.concerns(&v)
            && let Some(seq) = v["seq"].as_u64()
        {
            relevant.push(seq);
        }
    }
    let (Some(&first), Some(&last)) = (relevant.first(), relevant.last()) else {
        return Ok((relevant, Vec::new(), None));
    };
    let cp = std::fs::read_to_string(segment::checkpoints_path(chain))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| checkpoint::check(l, None).is_ok_and(|c| c.seq >= last))
                .map(str::to_owned)
        });
    let end = cp
        .as_deref()
        .and_then(|l| checkpoint::check(l, None).ok())
        .map_or(u64::MAX, |c| c.seq);
    let mut run = Vec::new();
    for line in lines(chain, first - 1)? {
        let line = line?;
        let Some(seq) = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["seq"].as_u64())
        else {
            continue;
        };
        if (first..=end).contains(&seq) {
            run.push(line);
        }
    }
    Ok((relevant, run, cp))
}

/// What a verified bundle proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// Records in the run.
    pub records: usize,
    /// Records about the request.
    pub relevant: usize,
    /// The first and last seq of the run.
    pub seqs: (u64, u64),
    /// Sessions whose bytes and close the trail confirms.
    pub sessions: usize,
}

/// A bundle that is not intact, and why.
fn fail<T>(why: impl Into<String>) -> Result<T, AuditError> {
    Err(AuditError::Bundle(why.into()))
}

/// Verifies a bundle with `key` (raw Ed25519 public key).
pub fn verify(b: &Bundle, key: &[u8]) -> Result<Proven, AuditError> {
    if b.format != FORMAT {
        return fail(format!("not a {FORMAT} file (format `{}`)", b.format));
    }
    let mut parsed = Vec::with_capacity(b.records.len());
    for (i, line) in b.records.iter().enumerate() {
        let (seq, prev, hash) = check_line(line).map_err(|e| {
            AuditError::Bundle(format!("record {} of the bundle: edited: {e}", i + 1))
        })?;
        if let Some((last_seq, last_hash)) = parsed
            .last()
            .map(|(s, h, _): &(u64, String, _)| (*s, h.clone()))
        {
            if seq != last_seq + 1 {
                return fail(format!(
                    "record {} of the bundle: seq {seq} follows seq {last_seq}: records are missing or out of order",
                    i + 1
                ));
            }
            if prev != last_hash {
                return fail(format!(
                    "record {} of the bundle (seq {seq}): does not link to the record before it",
                    i + 1
                ));
            }
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| AuditError::Bundle(e.to_string()))?;
        parsed.push((seq, hash, v));
    }
    let (Some(first), Some(last)) = (parsed.first(), parsed.last()) else {
        return fail("the bundle holds no records");
    };
    let seqs = (first.0, last.0);
    let cp_line = b.checkpoint.as_deref().ok_or_else(|| {
        AuditError::Bundle(format!(
            "no signed checkpoint covers seq {} yet: make the bundle again after the broker's next checkpoint",
            seqs.1
        ))
    })?;
    let cp = checkpoint::check(cp_line, Some(key))
        .map_err(|e| AuditError::Bundle(format!("checkpoint: {e}")))?;
    if cp.chain != b.customer {
        return fail(format!(
            "checkpoint: signed for chain `{}`, not `{}`",
            cp.chain, b.customer
        ));
    }
    if cp.seq != seqs.1 || cp.hash != last.1 {
        return fail(format!(
            "checkpoint: signs seq {} with another hash than the bundle's last record (seq {})",
            cp.seq, seqs.1
        ));
    }
    // What the bundle is about is recomputed from the signed records, never taken from its summaries:
    // the request's records, its grant (named by its approval), and every tunnel that grant opened.
    let rid = b.request["id"].as_str().unwrap_or_default();
    let gid = parsed
        .iter()
        .find(|(_, _, v)| v["event"] == "request_approved" && v["request_id"] == rid)
        .and_then(|(_, _, v)| v["grant_id"].as_str().map(str::to_owned));
    let opened: HashSet<String> = parsed
        .iter()
        .filter(|(_, _, v)| {
            v["event"] == "tunnel_open" && gid.as_deref().is_some_and(|g| v["grant_id"] == g)
        })
        .filter_map(|(_, _, v)| v["session_id"].as_str().map(str::to_owned))
        .collect();
    let subject = Subject {
        request_id: rid.to_owned(),
        grant_id: gid.clone(),
        sessions: opened.clone(),
    };
    let relevant: Vec<u64> = parsed
        .iter()
        .filter(|(_, _, v)| subject.concerns(v))
        .map(|(seq, _, _)| *seq)
        .collect();
    if relevant != b.relevant {
        return fail(
            "the bundle's list of records about the request differs from what its records show",
        );
    }
    let about: Vec<&serde_json::Value> = parsed
        .iter()
        .filter(|(s, _, _)| relevant.contains(s))
        .map(|(_, _, v)| v)
        .collect();
    if about.iter().any(|v| v["customer"] != b.customer.as_str()) {
        return fail("a record belongs to another customer");
    }
    if !about
        .iter()
        .any(|v| v["event"] == "request_filed" && v["request_id"] == rid)
    {
        return fail(format!("no `request_filed` record for request {rid}"));
    }
    if b.grant.as_ref().and_then(|g| g["id"].as_str()) != gid.as_deref() {
        return fail("the bundle's grant is not the one the approval record names");
    }
    let listed: HashSet<String> = b
        .sessions
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    if listed != opened {
        return fail(format!(
            "the bundle lists {} session(s), but the records show {} tunnel(s) opened under the grant",
            listed.len(),
            opened.len()
        ));
    }
    for s in &b.sessions {
        let close = about
            .iter()
            .find(|v| v["event"] == "tunnel_close" && v["session_id"] == s["id"]);
        match (close, s["closed_at"].is_null()) {
            (Some(v), false) => {
                if v["bytes_up"] != s["bytes_up"] || v["bytes_down"] != s["bytes_down"] {
                    return fail(format!(
                        "session {}: its bytes disagree with its `tunnel_close` record",
                        s["id"]
                    ));
                }
            }
            (None, false) => {
                return fail(format!("session {}: no `tunnel_close` record", s["id"]));
            }
            (_, true) => {}
        }
    }
    Ok(Proven {
        records: parsed.len(),
        relevant: about.len(),
        seqs,
        sessions: b.sessions.len(),
    })
}
