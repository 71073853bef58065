//! Reading records back for auditors: filters by time, event, technician and sequence, over one
//! chain file read line by line, with a bound on how many come back. Records are returned as the
//! exact lines on disk, so an export stays verifiable.

use std::io::BufRead;
use std::path::Path;

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

/// Matching lines of a chain file, oldest first, at most `limit`; the flag says whether more matched.
/// A missing file has no records.
pub fn read(path: &Path, filter: &Filter, limit: usize) -> std::io::Result<(Vec<String>, bool)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        // A torn last line is no record.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if filter.matches(&v) {
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(line);
        }
    }
    Ok((out, false))
}

/// Calls `f` with every matching line of a chain file, oldest first, without holding the file in
/// memory; returns how many matched. A missing file has no records.
pub fn each(
    path: &Path,
    filter: &Filter,
    mut f: impl FnMut(&str) -> std::io::Result<()>,
) -> std::io::Result<usize> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if filter.matches(&v) {
            f(&line)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Parses `--since`/`--until` values: RFC 3339 (`2026-01-31T00:00:00Z`) or a date (`2026-01-31`, UTC).
pub fn parse_time(s: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    s.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            format!(
                "`{s}` is not a time: use RFC 3339 (2026-01-31T22:00:00Z) or a date (2026-01-31)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, time: &str, event: &str, actor: &str) -> serde_json::Value {
        serde_json::json!({"seq": seq, "time": time, "event": event, "actor": actor, "subject": null})
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
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn reading_is_bounded_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme.jsonl");
        let mut text = String::new();
        for i in 1..=5 {
            text.push_str(&rec(i, "2026-03-01T10:00:00Z", "decision", "x").to_string());
            text.push('\n');
        }
        text.push_str("{\"seq\":6,");
        std::fs::write(&path, text).unwrap();
        let (lines, more) = read(&path, &Filter::default(), 3).unwrap();
        assert_eq!((lines.len(), more), (3, true));
        let (lines, more) = read(&path, &Filter::default(), 10).unwrap();
        assert_eq!((lines.len(), more), (5, false));
        assert_eq!(
            read(&dir.path().join("none.jsonl"), &Filter::default(), 3)
                .unwrap()
                .0
                .len(),
            0
        );
    }
}
