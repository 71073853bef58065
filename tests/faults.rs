//! The audit trail on a full disk, end to end: the real broker under a real file-size limit
//! (RLIMIT_FSIZE, set on the running process with `prlimit`) fails closed: new tunnels get 503, live
//! ones end, `sallyport_audit_failures_total` rises. When the limit is lifted the broker resumes by
//! itself, and the trail still verifies.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::process::Command;
use std::time::Duration;

use sallyport_audit::{AuditEvent, EventKind, GENESIS, Outcome, render};
use sallyport_testkit::{Broker, Setup, connect, connector, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

fn prlimit(pid: u32, fsize: &str) {
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={fsize}")])
        .status()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_and_the_broker_resumes_by_itself() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    // A long, valid chain, so the audit file is the broker's largest and the first to hit the limit.
    let chain = s.segment("acme");
    let mut text = String::new();
    let mut prev = GENESIS.to_owned();
    for seq in 1..=4000 {
        let mut e = AuditEvent::new(EventKind::Decision, Outcome::Deny, "earlier traffic");
        e.customer = Some("acme".parse().unwrap());
        let (line, hash) = render(&e, seq, "2026-01-01T00:00:00.000000Z", &prev);
        text.push_str(&line);
        prev = hash;
    }
    std::fs::write(&chain, text).unwrap();
    let (token, _) = s.break_glass(30);
    let b = Broker::start(&s);
    let pid = b.child.id();
    let alice = connector(&s.identity("technician"));
    let authority = format!("db01.acme:{port}");

    let mut live = connect(b.addr, &alice, &authority, Some(&token))
        .await
        .unwrap();
    assert_eq!(live.status, 200, "{}", live.body);
    live.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    live.stream.read_exact(&mut buf).await.unwrap();

    // The disk is full: no audit record fits any more.
    let size = std::fs::metadata(&chain).unwrap().len();
    prlimit(pid, &format!("{}:unlimited", size + 16));
    let refused = connect(b.addr, &alice, &authority, Some(&token))
        .await
        .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains("audit trail not writable"),
        "{}",
        refused.body
    );
    // The live tunnel ends: nothing goes on unrecorded.
    let mut rest = Vec::new();
    let ended =
        tokio::time::timeout(Duration::from_secs(10), live.stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the live tunnel kept running on a full disk");
    let root = connector(&s.identity("admin"));
    let m = request(b.addr, &root, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let failures: u64 = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("sallyport_audit_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures >= 1, "{}", m.body);
    let tech = request(b.addr, &alice, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(tech.status, 403);

    // Space again: the broker resumes without a restart.
    prlimit(pid, "unlimited:unlimited");
    let back = connect(b.addr, &alice, &authority, Some(&token))
        .await
        .unwrap();
    assert_eq!(back.status, 200, "{}", back.body);
    drop(back);
    let mut b = b;
    assert!(b.terminate().success());
    s.assert_trail_verifies();
}
