//! Reading records back for auditors: filters by time, event, technician and sequence, over one
//! chain streamed across its segments (skipping segments that cannot match), with a bound on how many
//! come back. Records are returned as the
//! exact lines on disk, so an export stays verifiable.

use std::path::Path;

use crate::{AuditError, segment};

/// Which records.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// At or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Before this time.
    pub until: Option<jiff::Timestamp>,
    /// Only this event (`tunnel_open`, ...).
    pub event: Option<String>,
    /// Only records whose actor or subject is this technician: a SPIFFE id, or `provider/name`.
    pub technician: Option<String>,
    /// Only records with a seq above this (paging).
    pub after_seq: Option<u64>,
    /// Only records about this target (its id, or `customer/target`).
    pub target: Option<String>,
    /// Only records with this outcome (`success`, `failure`, `allow`, `deny`).
    pub outcome: Option<String>,
}

fn short(spiffe: &str) -> Option<String> {
    let mut parts = spiffe.strip_prefix("spiffe://")?.rsplit('/');
    let name = parts.next()?;
    let scope = parts.next()?;
    Some(format!("{scope}/{name}"))
}

impl Filter {
    /// Whether a parsed record matches.
    pub fn matches(&self, v: &serde_json::Value) -> bool {
        if let Some(after) = self.after_seq
            && v["seq"].as_u64().is_none_or(|s| s <= after)
        {
            return false;
        }
        if let Some(e) = &self.event
            && v["event"] != e.as_str()
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = v["time"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        if let Some(o) = &self.outcome
            && v["outcome"] != o.as_str()
        {
            return false;
        }
        if let Some(t) = &self.target {
            let bare = t.rsplit('/').next().unwrap_or(t);
            let customer_ok = match t.split_once('/') {
                Some((c, _)) => v["customer"] == c,
                None => true,
            };
            if !(customer_ok && v["target"] == bare) {
                return false;
            }
        }
        if let Some(who) = &self.technician {
            let hit = ["actor", "subject"].iter().any(|k| {
                v[*k].as_str().is_some_and(|id| {
                    id.contains("/technician/")
                        && (id == who || short(id).as_deref() == Some(who.as_str()))
                })
            });
            if !hit {
                return false;
            }
        }
        true
    }
}

/// The segments of `chain_dir` that can hold records the filter matches, opened for reading.
fn records(chain_dir: &Path, filter: &Filter) -> std::io::Result<segment::Reader> {
    let start = match (filter.after_seq, filter.since) {
        (Some(after), _) => segment::Start::AfterSeq(after),
        (None, Some(since)) => segment::Start::Since(since),
        (None, None) => segment::Start::Oldest,
    };
    segment::Reader::open(chain_dir, start, filter.until.map(segment::date_of))
}

/// Matching lines of a chain (its folder), oldest first, at most `limit`; the flag says whether
/// more matched. A missing chain has no records.
pub fn read(
    chain_dir: &Path,
    filter: &Filter,
    limit: usize,
) -> std::io::Result<(Vec<String>, bool)> {
    let mut out = Vec::new();
    let mut more = false;
    each_until(chain_dir, filter, |line| {
        if out.len() == limit {
            more = true;
            return Ok(false);
        }
        out.push(line.to_owned());
        Ok(true)
    })?;
    Ok((out, more))
}

/// Calls `f` with every matching line of a chain (its folder), oldest first, without holding the
/// chain in memory; returns how many matched. A missing chain has no records.
pub fn each(
    chain_dir: &Path,
    filter: &Filter,
    mut f: impl FnMut(&str) -> std::io::Result<()>,
) -> std::io::Result<usize> {
    each_until(chain_dir, filter, |line| f(line).map(|()| true))
}

/// [`each`], stopping when `f` returns `false` (that line does not count).
fn each_until(
    chain_dir: &Path,
    filter: &Filter,
    mut f: impl FnMut(&str) -> std::io::Result<bool>,
) -> std::io::Result<usize> {
    let mut n = 0;
    for line in records(chain_dir, filter)? {
        let line = line?;
        // A torn last line is no record.
        if !line.complete {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.text) else {
            continue;
        };
        if filter.matches(&v) {
            if !f(&line.text)? {
                break;
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Parses `--since`/`--until` values: RFC 3339 (`2026-01-31T00:00:00Z`) or a date (`2026-01-31`, UTC).
pub fn parse_time(s: &str) -> Result<jiff::Timestamp, AuditError> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    s.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            AuditError::Time(format!(
                "`{s}` is not a time: use RFC 3339 (2026-01-31T22:00:00Z) or a date (2026-01-31)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, time: &str, event: &str, actor: &str) -> serde_json::Value {
        serde_json::json!({"seq": seq, "time": time, "event": event, "actor": actor, "subject": null,
                           "customer": "acme", "target": "db01", "outcome": "allow"})
    }

    #[test]
    fn filters_combine() {
        let alice = "spiffe://sallyport.local/technician/northwind/alice";
        let r = rec(5, "2026-03-01T10:00:00.000001Z", "tunnel_open", alice);
        let f = |f: Filter| f.matches(&r);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            since: Some(parse_time("2026-03-01").unwrap()),
            until: Some(parse_time("2026-03-02").unwrap()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            until: Some(parse_time("2026-03-01T10:00:00.000001Z").unwrap()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            technician: Some("northwind/alice".into()),
            event: Some("tunnel_open".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            technician: Some(alice.into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            technician: Some("northwind/bob".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            after_seq: Some(5),
            ..Filter::default()
        }));
        assert!(f(Filter {
            target: Some("acme/db01".into()),
            outcome: Some("allow".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            target: Some("db01".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            target: Some("globex/db01".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            outcome: Some("deny".into()),
            ..Filter::default()
        }));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn reading_is_bounded_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path().join("acme");
        std::fs::create_dir(&chain).unwrap();
        let path = chain.join("2026-03-01.jsonl");
        let mut text = String::new();
        for i in 1..=5 {
            text.push_str(&rec(i, "2026-03-01T10:00:00Z", "decision", "x").to_string());
            text.push('\n');
        }
        text.push_str("{\"seq\":6,");
        std::fs::write(&path, text).unwrap();
        let (lines, more) = read(&chain, &Filter::default(), 3).unwrap();
        assert_eq!((lines.len(), more), (3, true));
        let (lines, more) = read(&chain, &Filter::default(), 5).unwrap();
        assert_eq!((lines.len(), more), (5, false));
        let (lines, more) = read(&chain, &Filter::default(), 10).unwrap();
        assert_eq!((lines.len(), more), (5, false));
        assert_eq!(
            read(&dir.path().join("none"), &Filter::default(), 3)
                .unwrap()
                .0
                .len(),
            0
        );
    }
}
