//! The writer against real files: chains per customer, reopening, two writers on one chain, torn
//! tails, a full disk, corruption, daily segments and retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::writer::now_rfc3339;
use crate::*;

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
    e.customer = customer.map(|c| c.parse().unwrap());
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
    assert!(err.to_string().contains(":1: hash mismatch"), "{err}");
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
    let metrics = sallyport_metrics::Metrics::default();
    let (log, w) =
        AuditLog::open_metered(dir.path(), &["acme"], None, None, metrics.clone()).unwrap();
    assert!(!log.health().is_failing());
    let err = log.append_blocking(ev(Some("acme"), "lost")).unwrap_err();
    assert!(
        matches!(&err, AuditError::Io { message, .. } if message.contains("No space left")),
        "{err}"
    );
    assert_eq!(log.health().failures(), 1);
    assert!(log.health().is_failing(), "readiness sees the failure");
    let text = metrics.encode();
    assert!(
        text.contains("sallyport_audit_failures_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("sallyport_audit_commit_duration_seconds_count 0\n"),
        "a failed batch is no commit: {text}"
    );
    // The disk recovers: the next record reopens the chain and is written.
    std::fs::remove_file(&path).unwrap();
    let ok = log.append_blocking(ev(Some("acme"), "after")).unwrap();
    assert_eq!(ok.seq, 1);
    assert_eq!(log.health().failures(), 1);
    assert!(!log.health().is_failing(), "a durable batch clears it");
    let text = metrics.encode();
    assert!(
        text.contains("sallyport_audit_commit_duration_seconds_count 1\n"),
        "{text}"
    );
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
