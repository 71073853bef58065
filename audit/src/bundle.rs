//! Evidence bundles: everything about one access request in one file that an auditor can verify
//! offline. A bundle holds the request with its approvals, the grant, every session the grant opened
//! (bytes and times), and the contiguous run of chain records from the request's first record to the
//! first signed checkpoint after its last one, with that checkpoint and the audit public key.
//!
//! The request, grant and session views a person reads are not copied from the broker's store: they
//! are [`derive`]d from the signed records, and verifying a bundle derives them again and compares
//! every field. An edited approver, comment, reason, ticket, expiry or revocation is named as the
//! field that differs. Verifying also checks each record's hash, that the run is unbroken (seq +1,
//! `prev_hash` links), and that the checkpoint's signature verifies and signs the run's last record.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AuditError, check_line, checkpoint, segment};

/// The bundle format's name and version.
pub const FORMAT: &str = "sallyport-evidence-bundle/2";

/// The format of bundles made by earlier versions, whose views were not derived from the records.
const FORMAT_1: &str = "sallyport-evidence-bundle/1";

/// One evidence bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// When it was made.
    pub created_at: String,
    /// The customer whose chain the records are on.
    pub customer: String,
    /// The request with its approvals, as its records show it ([`derive`]).
    pub request: serde_json::Value,
    /// Its grant (id, window, revocation), if one was issued, as its records show it.
    pub grant: Option<serde_json::Value>,
    /// The sessions the grant opened, as their records show them.
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
    if b.format == FORMAT_1 {
        return fail(format!(
            "a {FORMAT_1} bundle, made by an earlier version: its request, grant and session views were not derived from the records and cannot be proven; make it again with `sallyport audit bundle`"
        ));
    }
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
    // Every field a person reads is recomputed from the signed records.
    let records: Vec<serde_json::Value> = about.iter().map(|v| (*v).clone()).collect();
    let views = derive(&records, rid)?;
    if let Some(field) = differs("request", &b.request, &views.request) {
        return fail(field);
    }
    let grant = b.grant.clone().unwrap_or(serde_json::Value::Null);
    let derived = views.grant.unwrap_or(serde_json::Value::Null);
    if let Some(field) = differs("grant", &grant, &derived) {
        return fail(field);
    }
    let (shown, derived) = (
        serde_json::Value::Array(b.sessions.clone()),
        serde_json::Value::Array(views.sessions),
    );
    if let Some(field) = differs("sessions", &shown, &derived) {
        return fail(field);
    }
    Ok(Proven {
        records: parsed.len(),
        relevant: about.len(),
        seqs,
        sessions: b.sessions.len(),
    })
}

/// The views of a bundle, derived from records.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    /// The request with its approvals, denial and grant summary.
    pub request: serde_json::Value,
    /// The grant, if the request was approved.
    pub grant: Option<serde_json::Value>,
    /// The sessions opened under the grant, in the order they opened.
    pub sessions: Vec<serde_json::Value>,
}

/// A record's `time` as whole seconds (the views' precision).
fn at(v: &serde_json::Value) -> serde_json::Value {
    v["time"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(serde_json::Value::Null, |t| {
            sallyport_ids::time::rfc3339(t.as_second()).into()
        })
}

fn seconds(v: &serde_json::Value) -> Option<i64> {
    v["time"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

/// Derives the request, grant and session views of request `rid` from its `records` (the records
/// about it, its grant and the grant's sessions, in chain order). What a record does not carry (a
/// chain written by an earlier version has no `minutes` or `ticket` fields) shows as `null`.
pub fn derive(records: &[serde_json::Value], rid: &str) -> Result<Views, AuditError> {
    use serde_json::{Value, json};
    let of = |event: &'static str| {
        records
            .iter()
            .filter(move |v| v["event"] == event && v["request_id"] == rid)
    };
    let succeeded = |v: &&Value| v["outcome"] == "success";
    let Some(filed) = of("request_filed").find(succeeded) else {
        return fail(format!("no `request_filed` record for request {rid}"));
    };
    let approved = of("request_approved").find(succeeded);
    let denied = of("request_denied").find(succeeded);
    let expired = of("request_expired").next();
    let cancelled = of("request_cancelled").find(succeeded);
    let status = match (approved, denied, expired, cancelled) {
        (Some(_), _, _, _) => "approved",
        (_, Some(_), _, _) => "denied",
        (_, _, Some(_), _) => "expired",
        (_, _, _, Some(_)) => "cancelled",
        _ => "pending",
    };
    let approval = |v: &Value| {
        json!({
            "approver": v["actor"], "comment": v["comment"], "at": at(v),
            "policy_ids": v["policy_ids"],
        })
    };
    let mut approvals: Vec<Value> = of("approval_recorded")
        .filter(succeeded)
        .map(approval)
        .collect();
    // The approval that completes the quorum is the `request_approved` record itself (by a person;
    // `policy` approves a request that needs no approval).
    if let Some(v) = approved.filter(|v| v["actor"] != "policy") {
        approvals.push(approval(v));
    }
    let gid = approved.and_then(|v| v["grant_id"].as_str());
    let revoked = gid.and_then(|g| {
        records
            .iter()
            .find(|v| v["event"] == "grant_revoked" && v["grant_id"] == g)
    });
    let grant_summary = approved.filter(|_| gid.is_some()).map(|v| {
        json!({
            "id": v["grant_id"], "not_before": v["not_before"], "expires_at": v["expires_at"],
            "revoked": revoked.is_some(),
        })
    });
    let request = json!({
        "id": rid,
        "customer": filed["customer"],
        "target": filed["target"],
        "technician": filed["actor"],
        "minutes": filed["minutes"],
        "reason": filed["reason"],
        "ticket": filed["ticket"],
        "start_at": filed["start_at"],
        "status": status,
        "approvals_required": filed["approvals_required"],
        "approvals": approvals,
        "denied_by": denied.map_or(Value::Null, |v| v["actor"].clone()),
        "deny_reason": denied.map_or(Value::Null, |v| v["reason"].clone()),
        "grant_id": gid,
        "grant": grant_summary,
        "policy_id": filed["terms_policy_id"],
        "policy_ids": filed["policy_ids"],
        "policy_digest": filed["policy_digest"],
        "created_at": at(filed),
        "expires_at": filed["expires_at"],
    });
    let grant = approved.filter(|_| gid.is_some()).map(|v| {
        json!({
            "id": v["grant_id"],
            "technician": filed["actor"],
            "target": filed["target"],
            "not_before": v["not_before"],
            "expires_at": v["expires_at"],
            "revoked": revoked.map(|r| json!({
                "at": at(r), "by": r["actor"], "reason": r["reason"],
            })),
        })
    });
    let sessions = records
        .iter()
        .filter(|v| v["event"] == "tunnel_open" && gid.is_some_and(|g| v["grant_id"] == g))
        .map(|open| {
            let close = records
                .iter()
                .find(|v| v["event"] == "tunnel_close" && v["session_id"] == open["session_id"]);
            let field = |k: &str| close.map_or(Value::Null, |c| c[k].clone());
            let duration = close
                .and_then(|c| Some(seconds(c)? - seconds(open)?))
                .map(|d| d.max(0));
            json!({
                "id": open["session_id"],
                "grant_id": open["grant_id"],
                "customer": open["customer"],
                "target": open["target"],
                "technician": open["actor"],
                "source_ip": open["source_ip"],
                "opened_at": at(open),
                "closed_at": close.map_or(Value::Null, at),
                "live": close.is_none(),
                "duration_seconds": duration,
                "bytes_up": field("bytes_up"),
                "bytes_down": field("bytes_down"),
                "close_reason": field("reason"),
            })
        })
        .collect();
    Ok(Views {
        request,
        grant,
        sessions,
    })
}

/// The first field where `shown` differs from what the records show, as a path (`request.approvals[0].comment`)
/// with both values; `None` when they agree.
fn differs(path: &str, shown: &serde_json::Value, derived: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (shown, derived) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                if !a.contains_key(k) && !y.is_null() {
                    return Some(format!("{path}.{k}: missing from the bundle"));
                }
                if !b.contains_key(k) {
                    return Some(format!("{path}.{k}: not a field the records show"));
                }
                differs(&format!("{path}.{k}"), x, y)
            })
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!(
                    "{path}: the bundle shows {} entr{}, the records show {}",
                    a.len(),
                    if a.len() == 1 { "y" } else { "ies" },
                    b.len()
                ));
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (x, y))| differs(&format!("{path}[{i}]"), x, y))
        }
        (x, y) if x == y => None,
        (x, y) => Some(format!(
            "{path}: the bundle shows {}, the signed records show {}",
            short(x),
            short(y)
        )),
    }
}

/// A value for an error line: at most 80 characters of its JSON.
fn short(v: &serde_json::Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}
