//! Granted sessions end to end: `sallyport grant` + `sallyport connect` relay bytes exactly, tunnels are
//! cut at the grant's expiry and at shutdown, and the audit chain recomputes from the records.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rand::RngCore;
use sallyport_testkit::{Broker, Setup, connect, connector};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// A broker with one echo target and a tunnel open to it under a grant expiring at `exp`.
async fn open_tunnel(exp: SystemTime) -> (Setup, Broker, sallyport_testkit::Answer) {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let alice = s.identity("technician");
    let nbf = SystemTime::now() - Duration::from_secs(1);
    let grant = s.mint(&alice, "acme", "db01", port, nbf, exp);
    let a = ping_through(&b, &alice, port, &grant).await;
    (s, b, a)
}

/// Opens a tunnel to `db01.acme:port` as `identity` and checks one echo through it.
async fn ping_through(
    b: &Broker,
    identity: &sallyport_certs::identity_dir::IdentityDir,
    port: u16,
    grant: &str,
) -> sallyport_testkit::Answer {
    let authority = format!("db01.acme:{port}");
    let mut a = connect(b.addr, &connector(identity), &authority, Some(grant))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    a.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    a.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    a
}

/// Kills the forwarder when the test ends.
struct Reaper(std::process::Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn granted_session_through_the_forwarder_relays_one_mebibyte_both_ways() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let tech = s.root.join("identities/technician");

    let (token, _) = s.break_glass(30);
    let grant = s.root.join("grant.jwt");
    std::fs::write(&grant, &token).unwrap();
    let minted = s.audit("acme").into_iter().last().unwrap();
    assert_eq!(minted["event"], "grant_minted");
    assert!(minted["reason"].as_str().unwrap().contains("break-glass"));
    assert_eq!(
        minted["subject"],
        "spiffe://sallyport.local/technician/northwind/alice"
    );

    let mut fwd = Command::new(BIN)
        .args(["connect", "acme/db01", "--grant"])
        .arg(&grant)
        .args(["--listen", "127.0.0.1:0", "--broker", &b.addr.to_string()])
        .env("SALLYPORT_IDENTITY", &tech)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(fwd.stdout.take().unwrap()).lines();
    let _reaper = Reaper(fwd);
    let local: std::net::SocketAddr = lines
        .find_map(|l| {
            l.ok()?
                .strip_prefix("sallyport: listening on ")
                .map(str::to_owned)
        })
        .unwrap()
        .parse()
        .unwrap();

    let mut payload = vec![0u8; 1024 * 1024];
    rand::rng().fill_bytes(&mut payload);
    let mut conn = std::net::TcpStream::connect(local).unwrap();
    let mut reader = conn.try_clone().unwrap();
    let expected = payload.clone();
    let receiver = std::thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).unwrap();
        got == expected
    });
    conn.write_all(&payload).unwrap();
    assert!(receiver.join().unwrap(), "echoed bytes differ");
    drop(conn);

    let close = s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    assert_eq!(close["bytes_up"], 1024 * 1024);
    assert_eq!(close["bytes_down"], 1024 * 1024);
    assert!(close["duration_ms"].as_u64().is_some());
    // The close names the same session, people and place as the open.
    let open = s.wait_for_audit("acme", |r| r["event"] == "tunnel_open");
    for field in [
        "customer",
        "actor",
        "target",
        "grant_id",
        "session_id",
        "source_ip",
    ] {
        assert!(open[field].is_string(), "tunnel_open lacks {field}");
        assert_eq!(close[field], open[field], "{field} differs");
    }
    let events: Vec<String> = s
        .audit("acme")
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events,
        [
            "policy_loaded",
            "grant_minted",
            "decision",
            "tunnel_open",
            "tunnel_close"
        ]
    );
    let allow = &s.audit("acme")[2];
    assert_eq!(allow["outcome"], "allow");
    assert_eq!(allow["policy_ids"], serde_json::json!(["support"]));
    assert_eq!(allow["grant_id"], minted["grant_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_open_at_expiry_is_cut_within_two_seconds() {
    let exp = SystemTime::now() + Duration::from_secs(3);
    let (s, _b, mut a) = open_tunnel(exp).await;
    // Wait for the broker to end the tunnel: read returns EOF (or an error) when it does.
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), a.stream.read_to_end(&mut rest)).await;
    let cut_at = SystemTime::now();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "tunnel was not cut"
    );
    assert!(
        cut_at >= exp - Duration::from_millis(1100),
        "cut before expiry"
    );
    assert!(
        cut_at.duration_since(exp).unwrap_or_default() < Duration::from_secs(2),
        "cut more than 2 s after expiry"
    );
    let close = s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    assert_eq!(close["reason"], "grant expired");
    assert_eq!(close["bytes_up"], 4);
    assert_eq!(close["bytes_down"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_live_tunnels_and_records_them() {
    let (s, mut b, _tunnel) = open_tunnel(SystemTime::now() + Duration::from_secs(600)).await;
    let status = tokio::task::spawn_blocking(move || {
        let st = b.terminate();
        drop(b);
        st
    })
    .await
    .unwrap();
    assert!(status.success(), "broker exit status {status}");
    // The close record is written before the process exits: no waiting.
    let close = s.audit("acme").into_iter().last().unwrap();
    assert_eq!(close["event"], "tunnel_close");
    assert_eq!(close["reason"], "broker shutting down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_recomputes_from_the_records() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let alice = s.identity("technician");
    let now = SystemTime::now();
    let grant = s.mint(
        &alice,
        "acme",
        "db01",
        port,
        now,
        now + Duration::from_secs(600),
    );
    let c = connector(&alice);
    for i in 0..3 {
        let mut a = connect(b.addr, &c, &format!("db01.acme:{port}"), Some(&grant))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "round {i}");
        a.stream.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        a.stream.read_exact(&mut buf).await.unwrap();
        a.stream.shutdown().await.unwrap();
    }
    let a = connect(b.addr, &c, "nope.acme:1", Some(&grant))
        .await
        .unwrap();
    assert_eq!(a.status, 404);
    let a = connect(b.addr, &c, "db01.acme:1", None).await.unwrap();
    assert_eq!(a.status, 407);
    s.wait_for_audit("acme", |r| {
        r["event"] == "tunnel_close" && r["seq"].as_u64() > Some(8)
    });

    // Recompute independently of the broker's code: hash = sha256(line without the trailing hash member).
    for chain in ["acme", "_broker"] {
        let text = sallyport_testkit::trail_text(&s.root.join("data"), chain);
        let mut prev = "0".repeat(64);
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["seq"], i as u64 + 1, "{chain} seq");
            assert_eq!(
                v["prev_hash"],
                prev.as_str(),
                "{chain} line {} prev_hash",
                i + 1
            );
            for field in [
                "time",
                "customer",
                "event",
                "actor",
                "target",
                "grant_id",
                "source_ip",
                "outcome",
                "reason",
            ] {
                assert!(
                    v.get(field).is_some(),
                    "{chain} line {}: no `{field}`",
                    i + 1
                );
            }
            let hash = v["hash"].as_str().unwrap();
            let body = line
                .strip_suffix(&format!(",\"hash\":\"{hash}\"}}"))
                .unwrap();
            let computed = hex::encode(sha2::Sha256::digest(format!("{body}}}").as_bytes()));
            assert_eq!(computed, hash, "{chain} line {}", i + 1);
            prev = hash.to_owned();
            n += 1;
        }
        assert!(n >= 1, "{chain} is empty");
    }
    // And an edit is caught by the same recomputation.
    let path = s.segment("acme");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"outcome\":\"deny\"", "\"outcome\":\"allow\"", 1);
    assert_ne!(edited, text);
    let first_bad = edited
        .lines()
        .zip(text.lines())
        .position(|(a, b)| a != b)
        .unwrap();
    let line = edited.lines().nth(first_bad).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let hash = v["hash"].as_str().unwrap();
    let body = line
        .strip_suffix(&format!(",\"hash\":\"{hash}\"}}"))
        .unwrap();
    assert_ne!(
        hex::encode(sha2::Sha256::digest(format!("{body}}}").as_bytes())),
        hash
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_grant_cuts_its_live_tunnel_within_a_second_and_refuses_it_after() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let (token, gid) = s.break_glass(30);
    let alice = s.identity("technician");
    let authority = format!("db01.acme:{port}");
    let mut a = ping_through(&b, &alice, port, &token).await;

    let revoke = |identity: std::path::PathBuf| {
        let broker = b.addr.to_string();
        let gid = gid.clone();
        move || {
            Command::new(BIN)
                .args([
                    "revoke",
                    &gid,
                    "--reason",
                    "ticket closed",
                    "--broker",
                    &broker,
                ])
                .arg("--identity")
                .arg(identity)
                .output()
                .unwrap()
        }
    };
    // An auditor may not revoke; nothing changes.
    let auditor = s.root.join("people/erin");
    let issued = Command::new(BIN)
        .args([
            "certs",
            "issue",
            "auditor",
            "erin",
            "--customer",
            "acme",
            "--dir",
        ])
        .arg(&s.root)
        .arg("--out")
        .arg(&auditor)
        .output()
        .unwrap();
    assert!(issued.status.success());
    let denied = tokio::task::spawn_blocking(revoke(auditor)).await.unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("auditors cannot revoke"));

    // The customer's approver revokes: the live tunnel ends within a second.
    let done = tokio::task::spawn_blocking(revoke(s.root.join("identities/approver")))
        .await
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("1 live session(s) closed"));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), a.stream.read_to_end(&mut rest)).await;
    let close = s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    assert_eq!(close["reason"], "grant revoked");
    let revoked = s
        .audit("acme")
        .into_iter()
        .find(|r| r["event"] == "grant_revoked")
        .unwrap();
    let t = |r: &serde_json::Value| {
        r["time"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    let lag = t(&close).duration_since(t(&revoked)).as_secs_f64();
    assert!(
        (0.0..1.0).contains(&lag),
        "the tunnel outlived its revocation by {lag} s"
    );
    assert_eq!(
        revoked["actor"],
        "spiffe://sallyport.local/approver/acme/bob"
    );
    assert_eq!(
        revoked["subject"],
        "spiffe://sallyport.local/technician/northwind/alice"
    );
    assert_eq!(revoked["reason"], "ticket closed");

    // The token is refused from now on.
    let again = connect(b.addr, &connector(&alice), &authority, Some(&token))
        .await
        .unwrap();
    assert_eq!(again.status, 403, "{}", again.body);
    assert!(again.body.contains("was revoked"));
}
