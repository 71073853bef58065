//! End-to-end tests of the audit trail with the real binary: signed checkpoints from a running broker,
//! `sallyport audit verify` on intact and tampered trails, the published key, and a torn tail left by
//! a crash being quarantined at the next start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use sallyport_testkit::{Broker, Setup, connector, request};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

fn verify(data: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A trail written by a real broker (grants, a refused tunnel), stopped cleanly; returns the key file
/// fetched from `GET /v1/audit/key`.
fn trail(s: &Setup) -> std::path::PathBuf {
    let mut b = Broker::start(s);
    for _ in 0..3 {
        s.break_glass(5);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let auditor = connector(&s.identity("approver"));
    let a = rt
        .block_on(request(
            b.addr,
            &auditor,
            "GET /v1/audit/key HTTP/1.1\r\nHost: x\r\n\r\n",
        ))
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let key: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(key["alg"], "Ed25519");
    let file = s.root.join("audit-key.json");
    std::fs::write(&file, &a.body).unwrap();
    assert!(b.terminate().success());
    file
}

#[test]
fn verify_passes_an_intact_trail_and_names_each_tampering() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let key = trail(&s);
    let data = s.root.join("data");
    let key_arg = key.to_str().unwrap();
    let (ok, out, err) = verify(&data, &["--key", key_arg]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("acme: intact: 3 records, 3 checkpoints"),
        "{out}"
    );
    assert!(out.contains("all intact"), "{out}");

    let chain = data.join("audit/acme.jsonl");
    let original = std::fs::read_to_string(&chain).unwrap();
    // An edited record.
    let edited = original.replacen("for 5 minutes", "for 50 minutes", 1);
    assert_ne!(edited, original);
    std::fs::write(&chain, &edited).unwrap();
    let (ok, out, _) = verify(&data, &["--key", key_arg, "--customer", "acme"]);
    assert!(!ok);
    assert!(
        out.contains("acme.jsonl:1: seq 1: edited"),
        "the report names file, line, seq and kind: {out}"
    );
    assert!(out.contains("1 chain(s) with problems"), "{out}");
    // A truncated tail, past the checkpoint signed at shutdown.
    let two: String = original.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&chain, two).unwrap();
    let (ok, out, _) = verify(&data, &["--key", key_arg]);
    assert!(!ok);
    assert!(
        out.contains("truncated") && out.contains("signed seq 3"),
        "{out}"
    );
    std::fs::write(&chain, &original).unwrap();

    // Checkpoints checked against another key are forged; without any key they are not checked.
    let foreign = s.root.join("foreign-key.json");
    std::fs::write(
        &foreign,
        r#"{"alg":"Ed25519","key_id":"x","public_key":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
    )
    .unwrap();
    let (ok, out, _) = verify(&data, &["--key", foreign.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("forged checkpoint"), "{out}");
    std::fs::remove_file(data.join("audit/audit-key.pub")).unwrap();
    let (ok, out, err) = verify(&data, &[]);
    assert!(ok, "{out}{err}");
    assert!(err.contains("not checked"), "{err}");
    // Unknown customer: a clear error.
    let (ok, _, err) = verify(&data, &["--customer", "nope"]);
    assert!(!ok && err.contains("no chain for customer `nope`"), "{err}");
}

#[test]
fn a_torn_tail_left_by_a_crash_is_quarantined_at_the_next_start() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let key = trail(&s);
    let chain = s.root.join("data/audit/acme.jsonl");
    let mut text = std::fs::read_to_string(&chain).unwrap();
    text.push_str("{\"seq\":4,\"time\":\"2026-");
    std::fs::write(&chain, text).unwrap();
    let (ok, out, _) = verify(&s.root.join("data"), &["--key", key.to_str().unwrap()]);
    assert!(!ok && out.contains("torn tail"), "{out}");

    let mut b = Broker::start(&s);
    assert!(b.terminate().success());
    let records = s.audit("acme");
    let q = records.last().unwrap();
    assert_eq!(q["event"], "torn_tail_quarantined");
    assert!(
        q["reason"].as_str().unwrap().contains("acme.jsonl.torn-"),
        "{q}"
    );
    let (ok, out, err) = verify(&s.root.join("data"), &["--key", key.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let aside = std::fs::read_dir(s.root.join("data/audit"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("acme.jsonl.torn-")
        })
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(aside.path()).unwrap(),
        "{\"seq\":4,\"time\":\"2026-"
    );
}

#[test]
fn a_broker_does_not_start_on_a_chain_whose_last_record_was_altered() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    trail(&s);
    let chain = s.root.join("data/audit/acme.jsonl");
    let text = std::fs::read_to_string(&chain).unwrap();
    let last = text.lines().last().unwrap().to_owned();
    std::fs::write(
        &chain,
        text.replace(
            &last,
            &last.replace("\"outcome\":\"success\"", "\"outcome\":\"failure\""),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not verify") && err.contains("sallyport audit verify"),
        "{err}"
    );
}
