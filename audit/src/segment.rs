//! The on-disk layout of the audit trail, and reading a chain back across its segments.
//!
//! Each chain (a customer id, or `_broker`) has a folder `<data_dir>/audit/<chain>/` holding:
//! - daily segment files `<YYYY-MM-DD>.jsonl`, named by the UTC date on which the segment was started;
//!   a chain is its segments read in date order, and `seq` and `prev_hash` run on across segment
//!   boundaries, so rotation never breaks a chain;
//! - `checkpoints.jsonl`, the signed checkpoints of the chain;
//! - `.lock`, locked (`flock`) by whoever appends, so a CLI command and the broker take turns.
//!
//! Retention retires whole segments once every record in them is older than the retention period. The
//! `segments_retired` record written first names each retired segment's last seq and hash, so a
//! verifier can anchor the oldest segment kept (see `docs/audit-format.md`).
//!
//! [`Reader`] streams a chain's lines across segments without holding them in memory, one open file
//! at a time; a segment retired while it reads is reported, never skipped silently.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use jiff::civil::Date;

/// The signed checkpoints of a chain, in its folder.
pub const CHECKPOINTS: &str = "checkpoints.jsonl";
/// The lock file of a chain, in its folder.
pub const LOCK: &str = ".lock";

/// One segment file of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The UTC date its first record was written on.
    pub date: Date,
    /// The file.
    pub path: PathBuf,
}

/// The folder of `chain` in the audit folder.
pub fn chain_dir(audit: &Path, chain: &str) -> PathBuf {
    audit.join(chain)
}

/// The segment file of `date` in a chain folder.
pub fn segment_path(chain_dir: &Path, date: Date) -> PathBuf {
    chain_dir.join(format!("{date}.jsonl"))
}

/// The checkpoint file of a chain folder.
pub fn checkpoints_path(chain_dir: &Path) -> PathBuf {
    chain_dir.join(CHECKPOINTS)
}

/// The UTC date of an instant.
pub fn date_of(t: jiff::Timestamp) -> Date {
    t.to_zoned(jiff::tz::TimeZone::UTC).date()
}

/// The date a segment file name stands for (`2026-11-23.jsonl`), if it is one.
fn segment_date(name: &str) -> Option<Date> {
    let stem = name.strip_suffix(".jsonl")?;
    // Only the canonical spelling: `2026-1-3.jsonl` or a torn-tail file is not a segment.
    let date: Date = stem.parse().ok()?;
    (date.to_string() == stem).then_some(date)
}

/// A chain's segments, oldest first. A missing folder has none.
pub fn segments(chain_dir: &Path) -> std::io::Result<Vec<Segment>> {
    let entries = match std::fs::read_dir(chain_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(date) = entry.file_name().to_str().and_then(segment_date) {
            out.push(Segment {
                date,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.date);
    Ok(out)
}

/// Whether `name` can be a chain folder: a customer id or `_broker` (letters, digits, `-`, `_`).
fn is_chain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The chains in an audit folder, sorted by name: every folder holding segments or checkpoints.
pub fn chains(audit: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(audit)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_chain_name(&name) || !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.path();
        if checkpoints_path(&dir).exists() || !segments(&dir)?.is_empty() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The chains an earlier version left flat in the audit folder (`<chain>.jsonl`,
/// `<chain>.checkpoints.jsonl`), sorted.
pub fn flat_chains(audit: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(audit)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let chain = name
            .strip_suffix(".checkpoints.jsonl")
            .or_else(|| name.strip_suffix(".jsonl"));
        if let Some(chain) = chain
            && is_chain_name(chain)
            && !out.iter().any(|c| c == chain)
        {
            out.push(chain.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Moves a chain written by an earlier version (`<audit>/<chain>.jsonl` and
/// `<audit>/<chain>.checkpoints.jsonl`) into the chain's folder: the records as the segment of the
/// first record's date (unless the folder has segments already), the checkpoints as its checkpoint
/// file (unless it has one). Run under the chain's lock.
pub fn migrate_flat(audit: &Path, chain: &str) -> std::io::Result<()> {
    let dir = chain_dir(audit, chain);
    let mut moved = false;
    let flat = audit.join(format!("{chain}.jsonl"));
    if flat.is_file() && segments(&dir)?.is_empty() {
        sallyport_ids::private::dir_all(&dir)?;
        let first = BufReader::new(File::open(&flat)?)
            .lines()
            .next()
            .transpose()?;
        let date = first
            .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .and_then(|v| v["time"].as_str()?.parse::<jiff::Timestamp>().ok())
            .map_or_else(|| date_of(jiff::Timestamp::now()), date_of);
        std::fs::rename(&flat, segment_path(&dir, date))?;
        moved = true;
    }
    let cps = audit.join(format!("{chain}.checkpoints.jsonl"));
    if cps.is_file() && !checkpoints_path(&dir).exists() {
        sallyport_ids::private::dir_all(&dir)?;
        std::fs::rename(&cps, checkpoints_path(&dir))?;
        moved = true;
    }
    if moved {
        File::open(&dir)?.sync_all()?;
        File::open(audit)?.sync_all()?;
        tracing::info!(chain, folder = %dir.display(), "moved an audit chain into the segmented layout");
    }
    Ok(())
}

/// The first line of a file, if it has a whole one.
pub fn first_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    BufReader::new(File::open(path)?).read_line(&mut line)?;
    Ok(line.strip_suffix('\n').map(str::to_owned))
}

/// The last whole line of a file (read from its last 64 KiB), if it has one.
pub fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
    let mut tail = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    let Some(body) = text.strip_suffix('\n') else {
        return Ok(None);
    };
    Ok(body.rsplit('\n').next().map(str::to_owned))
}

fn seq_of(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("seq")?
        .as_u64()
}

/// Where a [`Reader`] starts.
#[derive(Debug, Clone, Copy, Default)]
pub enum Start {
    /// The oldest segment kept.
    #[default]
    Oldest,
    /// The segment holding the record after this seq (records before it are still yielded).
    AfterSeq(u64),
    /// The first segment that can hold records at or after this time.
    Since(jiff::Timestamp),
    /// This offset of this segment.
    At(Date, u64),
}

/// One stored line of a chain.
#[derive(Debug, Clone)]
pub struct Line {
    /// The segment file it is in.
    pub file: PathBuf,
    /// Its 1-based line number in that file.
    pub line: usize,
    /// The segment's date.
    pub date: Date,
    /// The offset just after it in that file.
    pub end: u64,
    /// The line without its newline.
    pub text: String,
    /// Whether it ended in a newline (a last line cut short by a crash does not).
    pub complete: bool,
}

/// Streams a chain's lines across its segments, oldest first, opening one segment at a time.
#[derive(Debug)]
pub struct Reader {
    pending: VecDeque<Segment>,
    current: Option<Current>,
    /// Whether a segment was opened.
    started: bool,
}

#[derive(Debug)]
struct Current {
    seg: Segment,
    reader: BufReader<File>,
    line: usize,
    offset: u64,
}

impl Reader {
    /// Opens the segments of the chain in `chain_dir` from `start` on. With `until`, segments
    /// started after that date are left out (they hold only later records).
    pub fn open(chain_dir: &Path, start: Start, until: Option<Date>) -> std::io::Result<Reader> {
        let mut segs = segments(chain_dir)?;
        if let Some(u) = until {
            segs.retain(|s| s.date <= u);
        }
        let mut offset = 0;
        let from = match start {
            Start::Oldest => 0,
            Start::Since(t) => {
                let d = date_of(t);
                segs.iter().rposition(|s| s.date <= d).unwrap_or(0)
            }
            Start::AfterSeq(after) => {
                // The last segment whose first record is at or before the one wanted.
                let mut from = 0;
                for (i, s) in segs.iter().enumerate().skip(1) {
                    match first_line(&s.path)?.as_deref().and_then(seq_of) {
                        Some(first) if first <= after.saturating_add(1) => from = i,
                        Some(_) => break,
                        None => {}
                    }
                }
                from
            }
            Start::At(date, at) => match segs.iter().position(|s| s.date == date) {
                Some(i) => {
                    offset = at;
                    i
                }
                None => return Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            },
        };
        let mut reader = Reader {
            pending: segs.into_iter().skip(from).collect(),
            current: None,
            started: false,
        };
        if offset > 0 {
            // The cursor's own segment: gone is an answer, not a reason to read the next one.
            reader.started = true;
            reader.advance()?;
            if let Some(c) = &mut reader.current {
                c.reader.seek(SeekFrom::Start(offset))?;
                c.offset = offset;
                // Line numbers are unknown after a seek; they count from the offset.
            }
        }
        Ok(reader)
    }

    /// Opens the next segment. One retired before anything was read is skipped (it was older than
    /// anything kept); one gone after reading started is an error, so nothing is skipped unnoticed.
    fn advance(&mut self) -> std::io::Result<bool> {
        while let Some(seg) = self.pending.pop_front() {
            match File::open(&seg.path) {
                Ok(file) => {
                    self.started = true;
                    self.current = Some(Current {
                        seg,
                        reader: BufReader::new(file),
                        line: 0,
                        offset: 0,
                    });
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.started => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "{}: retired while the chain was being read; read it again",
                            seg.path.display()
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        self.current = None;
        Ok(false)
    }

    fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            if self.current.is_none() && !self.advance()? {
                return Ok(None);
            }
            let Some(c) = &mut self.current else {
                return Ok(None);
            };
            let mut buf = Vec::new();
            let n = c.reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                self.current = None;
                continue;
            }
            c.line += 1;
            c.offset += n as u64;
            let complete = buf.last() == Some(&b'\n');
            if complete {
                buf.pop();
            }
            return Ok(Some(Line {
                file: c.seg.path.clone(),
                line: c.line,
                date: c.seg.date,
                end: c.offset,
                text: String::from_utf8_lossy(&buf).into_owned(),
                complete,
            }));
        }
    }
}

impl Iterator for Reader {
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_line().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, date: &str, lines: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.join(format!("{date}.jsonl")), text).unwrap();
    }

    fn texts(r: Reader) -> Vec<String> {
        r.map(|l| l.unwrap().text).collect()
    }

    #[test]
    fn only_canonical_dates_are_segments() {
        assert_eq!(
            segment_date("2026-11-23.jsonl"),
            Some("2026-11-23".parse().unwrap())
        );
        for name in [
            "2026-1-3.jsonl",
            "2026-11-23.jsonl.torn-17",
            "checkpoints.jsonl",
            ".lock",
            "2026-13-01.jsonl",
        ] {
            assert_eq!(segment_date(name), None, "{name}");
        }
    }

    #[test]
    fn reads_across_segments_in_date_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("acme");
        write(&dir, "2026-11-02", &[r#"{"seq":3}"#]);
        write(&dir, "2026-10-30", &[r#"{"seq":1}"#, r#"{"seq":2}"#]);
        write(&dir, "2026-11-05", &[r#"{"seq":4}"#, r#"{"seq":5}"#]);
        std::fs::write(dir.join("2026-11-05.jsonl.torn-1"), "{\"seq\"").unwrap();
        let all = texts(Reader::open(&dir, Start::Oldest, None).unwrap());
        assert_eq!(all.len(), 5);
        assert!(all[0].contains("\"seq\":1") && all[4].contains("\"seq\":5"));

        let from4 = texts(Reader::open(&dir, Start::AfterSeq(3), None).unwrap());
        assert_eq!(from4, vec![r#"{"seq":4}"#, r#"{"seq":5}"#]);
        let from3 = texts(Reader::open(&dir, Start::AfterSeq(2), None).unwrap());
        assert_eq!(from3.len(), 3);

        let t: jiff::Timestamp = "2026-11-03T12:00:00Z".parse().unwrap();
        assert_eq!(
            texts(Reader::open(&dir, Start::Since(t), None).unwrap()).len(),
            3
        );
        let until: Date = "2026-11-02".parse().unwrap();
        assert_eq!(
            texts(Reader::open(&dir, Start::Oldest, Some(until)).unwrap()).len(),
            3
        );

        let mut at =
            Reader::open(&dir, Start::At("2026-10-30".parse().unwrap(), 10), None).unwrap();
        let l = at.next().unwrap().unwrap();
        assert_eq!((l.text.as_str(), l.end), (r#"{"seq":2}"#, 20));
        assert_eq!(at.count(), 3);
    }

    #[test]
    fn a_missing_chain_has_no_lines_and_a_torn_line_is_flagged() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            texts(Reader::open(&tmp.path().join("none"), Start::Oldest, None).unwrap()).len(),
            0
        );
        let dir = tmp.path().join("acme");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("2026-11-05.jsonl"), "{\"seq\":1}\n{\"se").unwrap();
        let lines: Vec<Line> = Reader::open(&dir, Start::Oldest, None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(lines[0].complete && !lines[1].complete);
        assert_eq!(chains(tmp.path()).unwrap(), vec!["acme".to_owned()]);
    }

    #[test]
    fn flat_chains_move_into_their_folder() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("acme.jsonl"),
            "{\"seq\":1,\"time\":\"2026-03-04T05:06:07Z\"}\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("acme.checkpoints.jsonl"), "{}\n").unwrap();
        migrate_flat(tmp.path(), "acme").unwrap();
        let dir = tmp.path().join("acme");
        assert!(dir.join("2026-03-04.jsonl").is_file());
        assert!(dir.join(CHECKPOINTS).is_file());
        assert!(!tmp.path().join("acme.jsonl").exists());
        migrate_flat(tmp.path(), "acme").unwrap();
    }
}
