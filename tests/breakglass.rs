//! End-to-end tests of break-glass (`sallyport grant`) with the real binary: the grant needs a
//! reason, puts the administrator (admin identity, operating-system user and host) and the ticket on
//! the customer's trail, is announced to the customer's webhook before the command returns, writes
//! its token 0600 with `--out`, and is marked as break-glass where sessions are listed.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use sallyport_testkit::{Broker, Setup, webhook_receiver};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

fn grant(s: &Setup, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["grant", "--config"])
        .arg(s.config())
        .arg("--technician-cert")
        .arg(s.root.join("identities/technician/cert.pem"))
        .args(["--customer", "acme", "--target", "db01", "--minutes", "5"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_break_glass_grant_is_announced_at_once_recorded_with_its_admin_and_listed_as_such() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let (hook, deliveries) = webhook_receiver();
    std::fs::write(
        s.root.join("acme-webhook.secret"),
        "a secret of 16+ bytes\n",
    )
    .unwrap();
    s.append_config(&format!(
        "[customers.webhook]\nurl = \"http://{hook}/hooks/acme\"\nsecret_file = \"acme-webhook.secret\"\n"
    ));
    let token_file = s.root.join("token.jwt");
    let admin = s.demo("admin");
    let out = grant(
        &s,
        &[
            "--reason",
            "database down, on-call approver unreachable",
            "--ticket",
            "INC-4711",
            "--identity",
            admin.to_str().unwrap(),
            "--out",
            token_file.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(out.stdout.is_empty(), "the token goes to the file only");
    assert!(err.contains("webhook answered"), "{err}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();

    // The customer was told before the command returned: the delivery is already here.
    let told = deliveries
        .try_recv()
        .expect("announced before `grant` returned");
    assert_eq!(told.header("X-Sallyport-Event"), "grant_break_glass");
    let body: serde_json::Value = serde_json::from_str(&told.body).unwrap();
    assert_eq!(body["event"], "grant_break_glass");
    assert!(
        body["text"].as_str().unwrap().contains("BREAK-GLASS"),
        "{body}"
    );
    assert_eq!(
        body["data"]["break_glass"]["reason"],
        "database down, on-call approver unreachable"
    );
    assert_eq!(body["data"]["break_glass"]["ticket"], "INC-4711");

    // The trail names the administrator, the machine, the reason and the ticket.
    let minted = s
        .audit("acme")
        .into_iter()
        .find(|r| r["event"] == "grant_minted")
        .unwrap();
    let admin_id = "spiffe://sallyport.local/admin/root";
    assert_eq!(minted["actor"], format!("break-glass:{admin_id}"));
    assert_eq!(minted["operator"]["identity"], admin_id);
    assert!(
        minted["operator"]["user"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert!(
        minted["operator"]["host"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    assert_eq!(minted["ticket"], "INC-4711");
    assert!(
        minted["reason"]
            .as_str()
            .unwrap()
            .contains("database down, on-call approver unreachable"),
        "{minted}"
    );

    // Its sessions are listed as break-glass.
    let b = Broker::start(&s);
    s.echo_once(b.addr, port, &token, b"ping");
    let listed = s
        .cli(&s.demo("approver"), b.addr, &["sessions", "--json"])
        .json();
    assert_eq!(listed["sessions"][0]["break_glass"], true, "{listed}");
    // And so is the grant, with who minted it and why, for the customer's approvers.
    let approver = s.demo("approver");
    let grants = s
        .cli(&approver, b.addr, &["grants", "--break-glass", "--json"])
        .json();
    let listed = &grants["grants"][0];
    assert_eq!(listed["break_glass"]["by"], admin_id, "{grants}");
    assert_eq!(listed["break_glass"]["ticket"], "INC-4711");
    assert_eq!(listed["request_id"], serde_json::Value::Null);
    let table = s.cli(&approver, b.addr, &["grants"]).out().to_owned();
    assert!(table.contains("BREAK-GLASS by spiffe://"), "{table}");
    // Another customer's approver sees none of it.
    let refused = s.cli(&approver, b.addr, &["grants", "--customer", "globex"]);
    assert!(
        !refused.ok && refused.err().contains("customer `acme`"),
        "{}",
        refused.stderr
    );
    s.assert_trail_verifies();
}

#[test]
fn break_glass_without_a_reason_or_with_a_non_admin_identity_is_refused_and_records_nothing() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let approver = s.demo("approver");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "--reason"),
        (
            vec!["--reason", "   "],
            "--reason: `reason` must be 1 to 1000",
        ),
        (vec!["--reason", "bad\u{7}bell"], "--reason"),
        (
            vec!["--reason", "outage", "--ticket", ""],
            "--ticket: `ticket` must be",
        ),
        (
            vec![
                "--reason",
                "outage",
                "--identity",
                approver.to_str().unwrap(),
            ],
            "is not an admin identity",
        ),
        (
            vec!["--reason", "outage", "--identity", "/nonexistent"],
            "--identity /nonexistent",
        ),
    ];
    for (extra, needle) in cases {
        let out = grant(&s, &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}");
        assert!(out.stdout.is_empty(), "{extra:?}: a token was printed");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    let recorded = sallyport_testkit::trail_text(&s.root.join("data"), "acme");
    assert!(
        !recorded.contains("grant_minted"),
        "a refused grant was recorded"
    );
}
