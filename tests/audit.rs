//! End-to-end tests of the audit trail with the real binary: signed checkpoints from a running broker,
//! `sallyport audit verify` on intact and tampered trails, the published key, and a torn tail left by
//! a crash being quarantined at the next start, daily segments and retention, export, bundles and
//! session captures.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

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
    assert!(out.contains("acme: intact: 4 records, "), "{out}");
    assert!(out.contains("all intact"), "{out}");

    let chain = s.segment("acme");
    let name = chain.file_name().unwrap().to_string_lossy().into_owned();
    let original = std::fs::read_to_string(&chain).unwrap();
    // An edited record.
    let edited = original.replacen("test emergency", "test exercise", 1);
    assert_ne!(edited, original);
    std::fs::write(&chain, &edited).unwrap();
    let (ok, out, _) = verify(&data, &["--key", key_arg, "--customer", "acme"]);
    assert!(!ok);
    assert!(
        out.contains(&format!("acme/{name}:2: seq 2: edited")),
        "the report names file, line, seq and kind: {out}"
    );
    assert!(out.contains("1 problem(s)"), "{out}");
    // A truncated tail, past the checkpoint signed at shutdown.
    let two: String = original.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&chain, two).unwrap();
    let (ok, out, _) = verify(&data, &["--key", key_arg]);
    assert!(!ok);
    assert!(out.contains("truncated: the chain ends at seq 2"), "{out}");
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
    // Cut back consistently, chain and checkpoints together: only a checkpoint kept elsewhere shows it.
    let cps = data.join("audit/acme/checkpoints.jsonl");
    let saved = std::fs::read_to_string(&cps).unwrap();
    let kept = s.root.join("kept-checkpoints.jsonl");
    std::fs::write(&kept, &saved).unwrap();
    let two_cps: String = saved.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&cps, two_cps).unwrap();
    // The chain cut back to what the second checkpoint signs.
    let signed = serde_json::from_str::<serde_json::Value>(saved.lines().nth(1).unwrap()).unwrap()
        ["seq"]
        .as_u64()
        .unwrap();
    let cut: String = original
        .lines()
        .take(usize::try_from(signed).unwrap())
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&chain, cut).unwrap();
    let (ok, out, _) = verify(&data, &["--key", key_arg]);
    assert!(
        ok,
        "a consistent cut is invisible without an outside anchor: {out}"
    );
    let (ok, out, _) = verify(
        &data,
        &[
            "--key",
            key_arg,
            "--expect-checkpoints",
            kept.to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("truncated"), "{out}");
    std::fs::write(&cps, &saved).unwrap();
    std::fs::write(&chain, &original).unwrap();
    // Without any key there is nothing to check the checkpoints with: that is a failure.
    std::fs::remove_file(data.join("audit/audit-key.pub")).unwrap();
    let (ok, _, err) = verify(&data, &[]);
    assert!(!ok && err.contains("no audit key"), "{err}");
    // Unknown customer: a clear error.
    let (ok, _, err) = verify(&data, &["--customer", "nope", "--key", key_arg]);
    assert!(!ok && err.contains("no chain for customer `nope`"), "{err}");
}

#[test]
fn a_torn_tail_left_by_a_crash_is_quarantined_at_the_next_start() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let key = trail(&s);
    let chain = s.segment("acme");
    let name = chain.file_name().unwrap().to_string_lossy().into_owned();
    let mut text = std::fs::read_to_string(&chain).unwrap();
    text.push_str("{\"seq\":4,\"time\":\"2026-");
    std::fs::write(&chain, text).unwrap();
    let (ok, out, _) = verify(&s.root.join("data"), &["--key", key.to_str().unwrap()]);
    assert!(!ok && out.contains("torn tail"), "{out}");

    let mut b = Broker::start(&s);
    assert!(b.terminate().success());
    let records = s.audit("acme");
    let q = records
        .iter()
        .rfind(|r| r["event"] == "torn_tail_quarantined")
        .unwrap();
    assert!(
        q["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{name}.torn-")),
        "{q}"
    );
    let (ok, out, err) = verify(&s.root.join("data"), &["--key", key.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let aside = std::fs::read_dir(s.root.join("data/audit/acme"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.torn-"))
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
    let chain = s.segment("acme");
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

#[test]
fn auditors_query_and_export_their_customers_records() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let (token, gid) = s.break_glass(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // One tunnel, so the chain holds a decision, an open and a close.
    s.echo_once(b.addr, port, &token, b"");
    let get = |who: &str, query: &str| {
        let head = format!("GET /v1/audit{query} HTTP/1.1\r\nHost: x\r\n\r\n");
        let a = rt
            .block_on(request(b.addr, &connector(&s.identity(who)), &head))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
        (a.status, v)
    };
    let (status, all) = get("approver", "");
    assert_eq!(status, 200, "{all}");
    let records = all["records"].as_array().unwrap();
    // The policy set in force, then the grant, the decision, the open and the close.
    assert_eq!(records.len(), 5, "{all}");
    assert!(records.iter().all(|r| r["customer"] == "acme"));
    assert_eq!(records[0]["event"], "policy_loaded");
    assert_eq!(records[1]["grant_id"], gid.as_str());
    let (_, opens) = get("approver", "?event=tunnel_open");
    assert_eq!(opens["records"].as_array().unwrap().len(), 1);
    // Paging: one at a time, about the technician.
    let (_, page) = get("approver", "?technician=northwind/alice&limit=1");
    assert_eq!(page["more"], true, "{page}");
    let next = page["next_after_seq"].as_u64().unwrap();
    let (_, rest) = get(
        "approver",
        &format!("?technician=northwind/alice&after_seq={next}"),
    );
    assert_eq!(rest["more"], false);
    assert_eq!(rest["records"].as_array().unwrap().len(), 3, "{rest}");
    let (_, none) = get("approver", "?since=2999-01-01");
    assert_eq!(none["records"], serde_json::json!([]));
    // Walls and bad input; the refused read of another customer's trail is on acme's own chain.
    for (who, query, status, code) in [
        ("technician", "", 403, "forbidden"),
        ("approver", "?customer=globex", 403, "forbidden"),
        ("admin", "", 400, "bad_query"),
        ("approver", "?since=yesterday", 400, "bad_since"),
        ("approver", "?limit=0", 400, "bad_limit"),
        ("admin", "?customer=nope", 404, "not_found"),
    ] {
        let (got, v) = get(who, query);
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{who} {query}: {v}"
        );
    }
    let (status, v) = get("admin", "?customer=acme&event=grant_minted");
    assert_eq!(
        (status, v["records"].as_array().unwrap().len()),
        (200, 1),
        "{v}"
    );

    // The CLI export writes the stored lines, byte for byte.
    let out = Command::new(BIN)
        .args([
            "audit",
            "export",
            "--customer",
            "acme",
            "--since",
            "2020-01-01",
            "--data",
        ])
        .arg(s.root.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = sallyport_testkit::trail_text(&s.root.join("data"), "acme");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), stored);
    // The OCSF export validates against the official OCSF schema of each event's class.
    let events = s.ocsf_export("acme");
    let classes: Vec<u64> = events
        .iter()
        .map(|e| e["class_uid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        classes,
        [6003, 6003, 4001, 4001, 4001, 6003],
        "policy loaded, grant minted, decision, open, close, and the approver's refused read of another trail"
    );
    assert_eq!(events[5]["activity_name"], "Refuse");
    assert_eq!(events[5]["api"]["operation"], "access_refused");
    assert_eq!(events[3]["unmapped"]["seq"], 4);
    let out = Command::new(BIN)
        .args(["audit", "export", "--customer", "nope", "--data"])
        .arg(s.root.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no chain for customer `nope`"));
}

#[test]
fn an_evidence_bundle_proves_a_request_offline_and_catches_changes() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    std::fs::write(
        s.root.join("policies/acme.cedar"),
        r#"@id("support")
permit (principal in Sallyport::Group::"support",
        action in [Sallyport::Action::"request", Sallyport::Action::"connect"],
        resource in Sallyport::Customer::"acme");
@id("approvers")
permit (principal is Sallyport::Approver in Sallyport::Customer::"acme",
        action == Sallyport::Action::"approve", resource in Sallyport::Customer::"acme");
"#,
    )
    .unwrap();
    let mut b = Broker::start(&s);
    let (alice, bob) = (s.demo("technician"), s.demo("approver"));
    let id = s
        .cli(
            &alice,
            b.addr,
            &[
                "request",
                "acme/db01",
                "--minutes",
                "10",
                "--reason",
                "patch",
                "--ticket",
                "CHG-7",
            ],
        )
        .out()
        .trim()
        .to_owned();
    s.cli(
        &bob,
        b.addr,
        &["approve", &id, "--comment", "ok for tonight"],
    )
    .out();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tech = connector(&s.identity("technician"));
    let grant = rt
        .block_on(request(
            b.addr,
            &tech,
            &format!("GET /v1/requests/{id}/grant HTTP/1.1\r\nHost: x\r\n\r\n"),
        ))
        .unwrap();
    let token = serde_json::from_str::<serde_json::Value>(&grant.body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    s.echo_once(b.addr, port, &token, b"evidence");
    let gid = s.wait_for_audit("acme", |r| r["event"] == "request_approved")["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.cli(&bob, b.addr, &["revoke", &gid, "--reason", "done"])
        .out();
    // The chain itself carries what the bundle shows: the ticket and the comment as fields, the
    // policies that permitted the filing and the approval, and the digest of the policy text.
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(
        std::fs::read(s.root.join("policies/acme.cedar")).unwrap(),
    ));
    let trail = s.audit("acme");
    let loaded = trail
        .iter()
        .find(|r| r["event"] == "policy_loaded")
        .expect("the policy set in force is on the trail");
    assert_eq!(loaded["policy_digest"], digest.as_str());
    assert_eq!(
        loaded["policy_ids"],
        serde_json::json!(["support", "approvers"])
    );
    let filed = trail
        .iter()
        .find(|r| r["event"] == "request_filed")
        .unwrap();
    assert_eq!(filed["ticket"], "CHG-7");
    assert_eq!(filed["reason"], "patch");
    assert_eq!(filed["minutes"], 10);
    assert_eq!(filed["policy_ids"], serde_json::json!(["support"]));
    let approval = trail
        .iter()
        .find(|r| r["event"] == "request_approved")
        .unwrap();
    assert_eq!(approval["comment"], "ok for tonight");
    assert_eq!(approval["policy_ids"], serde_json::json!(["approvers"]));
    for decided in trail.iter().filter(|r| {
        ["request_filed", "request_approved", "decision"].contains(&r["event"].as_str().unwrap())
    }) {
        assert_eq!(decided["policy_digest"], digest.as_str(), "{decided}");
    }
    let key = s.root.join("audit-key.json");
    let k = rt
        .block_on(request(
            b.addr,
            &tech,
            "GET /v1/audit/key HTTP/1.1\r\nHost: x\r\n\r\n",
        ))
        .unwrap();
    std::fs::write(&key, k.body).unwrap();
    // The broker signs a checkpoint as it stops.
    assert!(b.terminate().success());

    let file = s.root.join("evidence.json");
    let out = Command::new(BIN)
        .args(["audit", "bundle", "--request", &id, "--out"])
        .arg(&file)
        .arg("--data")
        .arg(s.root.join("data"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("1 session(s)") && printed.contains("signed checkpoint"),
        "{printed}"
    );
    let check = |path: &Path| {
        let out = Command::new(BIN)
            .args(["audit", "verify", "--bundle"])
            .arg(path)
            .arg("--key")
            .arg(&key)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = check(&file);
    assert!(ok, "{out}");
    assert!(
        out.contains("intact") && out.contains("1 session(s)"),
        "{out}"
    );
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(bundle["sessions"][0]["bytes_up"], 8);
    assert_eq!(bundle["request"]["id"], id.as_str());
    assert_eq!(bundle["request"]["ticket"], "CHG-7");
    assert_eq!(
        bundle["request"]["approvals"][0]["comment"],
        "ok for tonight"
    );
    assert_eq!(bundle["request"]["policy_digest"], digest.as_str());
    assert_eq!(bundle["grant"]["revoked"]["reason"], "done");

    // Without --key the bundle's own key is not trusted silently.
    let out = Command::new(BIN)
        .args(["audit", "verify", "--bundle"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--key"), "{err}");
    let out = Command::new(BIN)
        .args(["audit", "verify", "--trust-bundle-key", "--bundle"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("not proven to be the broker's"),
        "{said}"
    );

    // Each change is caught.
    let tampered = s.root.join("tampered.json");
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|v| v["sessions"][0]["bytes_up"] = 1_000_000.into()),
            "sessions[0].bytes_up: the bundle shows 1000000, the signed records show 8",
        ),
        (
            Box::new(|v| {
                v["request"]["approvals"][0]["approver"] =
                    "spiffe://sallyport.local/customer/acme/approver/mallory".into();
            }),
            "request.approvals[0].approver",
        ),
        (
            Box::new(|v| v["request"]["approvals"][0]["comment"] = "fine".into()),
            "request.approvals[0].comment",
        ),
        (
            Box::new(|v| v["request"]["reason"] = "routine".into()),
            "request.reason",
        ),
        (
            Box::new(|v| v["request"]["ticket"] = "CHG-8".into()),
            "request.ticket",
        ),
        (
            Box::new(|v| v["grant"]["expires_at"] = "2030-01-01T00:00:00Z".into()),
            "grant.expires_at",
        ),
        (
            Box::new(|v| v["grant"]["revoked"] = serde_json::Value::Null),
            "grant.revoked",
        ),
        (
            Box::new(|v| v["request"]["grant"]["revoked"] = false.into()),
            "request.grant.revoked",
        ),
        (
            Box::new(|v| v["request"]["policy_digest"] = "0".repeat(64).into()),
            "request.policy_digest",
        ),
        (
            Box::new(|v| {
                v["request"]["approvals"].as_array_mut().unwrap().clear();
            }),
            "request.approvals: the bundle shows 0 entries, the records show 1",
        ),
        (
            Box::new(|v| {
                let line = v["records"][0].as_str().unwrap().replace("patch", "audit");
                v["records"][0] = line.into();
            }),
            "edited",
        ),
        (
            Box::new(|v| {
                v["records"].as_array_mut().unwrap().remove(1);
            }),
            "missing or out of order",
        ),
        (
            Box::new(|v| v["checkpoint"] = serde_json::Value::Null),
            "no signed checkpoint",
        ),
    ];
    for (change, needle) in cases {
        let mut v = bundle.clone();
        change(&mut v);
        std::fs::write(&tampered, v.to_string()).unwrap();
        let (ok, out) = check(&tampered);
        assert!(!ok && out.contains(needle), "{needle}: {out}");
    }
}

#[test]
fn a_recorded_session_is_captured_covered_by_the_chain_and_extracted() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    // The target table is the config's last: mark it recorded.
    s.append_config("record = true\n");
    let b = Broker::start(&s);
    let (token, _) = s.break_glass(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let alice = connector(&s.identity("technician"));
        let mut a =
            sallyport_testkit::connect(b.addr, &alice, &format!("db01.acme:{port}"), Some(&token))
                .await
                .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        a.stream.write_all(b"SELECT secret;").await.unwrap();
        let mut back = [0u8; 14];
        a.stream.read_exact(&mut back).await.unwrap();
        a.stream.shutdown().await.unwrap();
        a.header("sallyport-session").unwrap().to_owned()
    });
    let close = s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    assert_eq!(close["session_id"], session.as_str());
    let sha = close["capture_sha256"]
        .as_str()
        .expect("the close covers the capture");
    let file = s.root.join(format!("data/captures/acme/{session}.cap"));
    let bytes = std::fs::read(&file).unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), sha);

    let extract = |id: &str| {
        Command::new(BIN)
            .args(["audit", "capture", id, "--out"])
            .arg(s.root.join("session.jsonl"))
            .arg("--data")
            .arg(s.root.join("data"))
            .output()
            .unwrap()
    };
    // Extracts a session that must succeed, and returns its frames.
    let frames_of = |id: &str| -> Vec<serde_json::Value> {
        let out = extract(id);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(s.root.join("session.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let frames = frames_of(&session);
    use base64::Engine;
    let decode = |f: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(f["data"].as_str().unwrap())
            .unwrap()
    };
    let up: Vec<u8> = frames
        .iter()
        .filter(|f| f["dir"] == "up")
        .flat_map(decode)
        .collect();
    let down: Vec<u8> = frames
        .iter()
        .filter(|f| f["dir"] == "down")
        .flat_map(decode)
        .collect();
    assert_eq!(
        (up.as_slice(), down.as_slice()),
        (&b"SELECT secret;"[..], &b"SELECT secret;"[..])
    );

    // A bulk session is captured whole: the tunnel waits for the capture, it never loses bytes.
    let big = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let alice = connector(&s.identity("technician"));
        let a =
            sallyport_testkit::connect(b.addr, &alice, &format!("db01.acme:{port}"), Some(&token))
                .await
                .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        let id = a.header("sallyport-session").unwrap().to_owned();
        let (mut rd, mut wr) = tokio::io::split(a.stream);
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await.unwrap();
            wr.shutdown().await.unwrap();
        });
        let mut back = vec![0u8; payload.len()];
        rd.read_exact(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == payload, "the echo differs");
        id
    });
    s.wait_for_audit("acme", |r| {
        r["event"] == "tunnel_close"
            && r["session_id"] == big.as_str()
            && r["capture_sha256"].is_string()
    });
    let frames = frames_of(&big);
    let total = |dir: &str| -> usize {
        frames
            .iter()
            .filter(|f| f["dir"] == dir)
            .map(|f| decode(f).len())
            .sum()
    };
    assert_eq!(
        (total("up"), total("down")),
        (4 * 1024 * 1024, 4 * 1024 * 1024)
    );

    // An altered capture no longer matches its record.
    let mut altered = bytes.clone();
    let last = altered.len() - 1;
    altered[last] ^= 0x20;
    std::fs::write(&file, altered).unwrap();
    let out = extract(&session);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the capture was altered"));
    let out = extract("s-none");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no capture of session `s-none`"));
}

/// Writes `n` valid records per `(days ago, n)` into segments of those dates, as an older broker
/// would have; returns the hashes by seq - 1.
fn old_segments(data: &Path, days: &[(i64, u64)]) -> Vec<String> {
    use sallyport_audit::{AuditEvent, EventKind, GENESIS, Outcome, render};
    let dir = data.join("audit/acme");
    std::fs::create_dir_all(&dir).unwrap();
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let (mut seq, mut head, mut hashes) = (0, GENESIS.to_owned(), Vec::new());
    for (ago, n) in days {
        let date = today.checked_sub(jiff::Span::new().days(*ago)).unwrap();
        let mut text = String::new();
        for _ in 0..*n {
            seq += 1;
            let mut e = AuditEvent::new(EventKind::Decision, Outcome::Deny, "old traffic");
            e.customer = Some("acme".parse().unwrap());
            let (line, hash) = render(&e, seq, &format!("{date}T12:00:00.000000Z"), &head);
            text.push_str(&line);
            hashes.push(hash.clone());
            head = hash;
        }
        std::fs::write(dir.join(format!("{date}.jsonl")), text).unwrap();
    }
    hashes
}

#[test]
fn daily_segments_past_retention_are_retired_and_the_trail_still_verifies() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let data = s.root.join("data");
    // 400 and 380 days ago, and the day before yesterday; the default retention is 365 days.
    let hashes = old_segments(&data, &[(400, 3), (380, 2), (2, 2)]);
    let before = sallyport_testkit::segments(&data, "acme");
    let mut b = Broker::start(&s);
    // A CLI command appends to the same chain while the broker runs: today's segment.
    let (_, gid) = s.break_glass(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |query: &str| {
        let head = format!("GET /v1/audit{query} HTTP/1.1\r\nHost: x\r\n\r\n");
        let a = rt
            .block_on(request(b.addr, &connector(&s.identity("approver")), &head))
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str::<serde_json::Value>(&a.body).unwrap()
    };
    // Paging across segments starts in the segment that holds the record after `after_seq`.
    let page = get("?after_seq=5&limit=2");
    let seqs: Vec<u64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (seqs, &page["more"]),
        (vec![6, 7], &serde_json::json!(true))
    );
    let recent = get(&format!(
        "?since={}",
        jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_hours(24 * 3))
            .unwrap()
    ));
    assert_eq!(recent["records"][0]["seq"], 6, "{recent}");
    assert!(b.terminate().success());

    // The oldest segment went; the others stay, and today's was added.
    let after = sallyport_testkit::segments(&data, "acme");
    assert!(!after.contains(&before[0]), "{after:?}");
    assert_eq!(&after[..2], &before[1..]);
    assert_eq!(after.len(), 3, "{after:?}");
    let records = s.audit("acme");
    assert_eq!(records[0]["seq"], 4);
    let retired = records
        .iter()
        .find(|r| r["event"] == "segments_retired")
        .expect("the retirement is recorded");
    assert_eq!(retired["retired"][0]["last_seq"], 3);
    assert_eq!(retired["retired"][0]["last_hash"], hashes[2].as_str());
    assert_eq!(retired["actor"], "broker");
    assert!(records.iter().any(|r| r["grant_id"] == gid.as_str()));

    let key = s.root.join("data/audit/audit-key.pub");
    let key = key.to_str().unwrap();
    let (ok, out, err) = verify(&data, &["--key", key, "--customer", "acme"]);
    assert!(ok, "{out}{err}");
    let n = records.len();
    assert!(out.contains(&format!("acme: intact: {n} records")), "{out}");
    // An export reads across segments.
    let out = Command::new(BIN)
        .args(["audit", "export", "--customer", "acme", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), n);
    // A segment removed by hand (not by retention) leaves an unexplained gap.
    std::fs::remove_file(&after[0]).unwrap();
    let (ok, out, _) = verify(&data, &["--key", key, "--customer", "acme"]);
    assert!(!ok);
    assert!(
        out.contains("seq 6: deleted") && out.contains("no segments_retired record"),
        "{out}"
    );
}
