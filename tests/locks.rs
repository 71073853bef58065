//! Locks end to end, with the real binary, real TLS and real certificates: a lock by SPIFFE id cuts
//! the live tunnel at once and then CONNECT, the API and grant fetches are refused; a lock of one
//! certificate leaves a re-issued one working (by PEM, and by the serial and fingerprint `openssl`
//! prints); `certs issue --replace` locks the earlier certificate of a live broker; an approver locks
//! technicians for their own customer only; end times, unlock, bad input, webhooks and the CRL.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use sallyport_certs::identity_dir::IdentityDir;
use sallyport_testkit::{
    Answer, Broker, CustomerSpec, Setup, allow_support, connect, connector, echo_server, request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");
const ALICE: &str = "spiffe://sallyport.local/technician/northwind/alice";

/// `acme` with target `db01` and `globex` with target `app` (group `support` may request and
/// connect to both, one approval), both loopback echo servers; returns the setup and the two ports.
fn two_customers() -> (Setup, u16, u16) {
    let s = Setup::init(BIN);
    let policy = |c: &str| {
        format!(
            "{}@id(\"support-requests\")\n@approvals(\"1\")\npermit (principal in Sallyport::Group::\"support\", action == Sallyport::Action::\"request\", resource in Sallyport::Customer::\"{c}\");\n",
            allow_support(c)
        )
    };
    let (acme, globex) = (echo_server(), echo_server());
    let (pa, pg) = (policy("acme"), policy("globex"));
    s.write_config(
        &[
            CustomerSpec {
                id: "globex",
                timezone: "UTC",
                policy: &pg,
                targets: vec![("app", globex.to_string(), vec![])],
            },
            CustomerSpec {
                id: "acme",
                timezone: "UTC",
                policy: &pa,
                targets: vec![("db01", acme.to_string(), vec![])],
            },
        ],
        "",
    );
    (s, acme.port(), globex.port())
}

/// A grant for `identity` on `customer/target` for ten minutes, signed with the broker's key.
fn grant(s: &Setup, identity: &IdentityDir, customer: &str, target: &str, port: u16) -> String {
    let now = SystemTime::now();
    s.mint(
        identity,
        customer,
        target,
        port,
        now - Duration::from_secs(1),
        now + Duration::from_secs(600),
    )
}

/// CONNECT to `target.customer:port` as `identity`; on 200, one echo through the tunnel.
async fn tunnel(b: &Broker, identity: &IdentityDir, authority: &str, grant: &str) -> Answer {
    let mut a = connect(b.addr, &connector(identity), authority, Some(grant))
        .await
        .unwrap();
    if a.status == 200 {
        a.stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        a.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
    a
}

/// One `/v1` call over a fresh mTLS connection as `identity`: the status and the JSON answer.
async fn api(
    b: &Broker,
    identity: &IdentityDir,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let a = request(b.addr, &connector(identity), &head).await.unwrap();
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null),
    )
}

/// `sallyport certs issue ROLE NAME EXTRA... --out OUT` against the broker folder.
fn issue_to(s: &Setup, out: &Path, role: &str, name: &str, extra: &[&str]) -> IdentityDir {
    IdentityDir::read(&s.issue_at(out, role, name, extra)).unwrap()
}

/// The locks `who` sees (`--all`: also lifted and ended ones), as the broker's JSON.
fn listed(s: &Setup, b: &Broker, who: &Path, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["locks", "--json"];
    if all {
        args.push("--all");
    }
    s.cli(who, b.addr, &args).json()["locks"]
        .as_array()
        .unwrap()
        .clone()
}

fn lock_id_of(out: &str) -> String {
    let start = out.find("(lock l-").unwrap() + "(lock ".len();
    out[start..].split(')').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_by_spiffe_id_cuts_the_live_tunnel_at_once_and_refuses_tunnels_the_api_and_grants() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let alice = s.identity("technician");
    let token = grant(&s, &alice, "acme", "db01", port);
    let authority = format!("db01.acme:{port}");
    let mut live = tunnel(&b, &alice, &authority, &token).await;
    assert_eq!(live.status, 200, "{}", live.body);

    let admin = s.demo("admin");
    let out = s
        .cli(
            &admin,
            b.addr,
            &["lock", "--spiffe-id", ALICE, "--reason", "laptop stolen"],
        )
        .out()
        .to_owned();
    assert!(
        out.contains("locked northwind/alice everywhere until unlocked")
            && out.contains("1 live session(s) closed"),
        "{out}"
    );
    let lock_id = lock_id_of(&out);
    live.wait_cut().await;
    let close = s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    assert_eq!(
        close["reason"],
        format!("identity locked (lock {lock_id})").as_str()
    );
    // On the trail, on the broker's chain and the customer's, before the close.
    let locked = s
        .audit("acme")
        .into_iter()
        .find(|r| r["event"] == "identity_locked")
        .unwrap();
    assert_eq!(locked["lock_id"], lock_id.as_str());
    assert_eq!(locked["subject"], ALICE);
    assert_eq!(locked["actor"], "spiffe://sallyport.local/admin/root");
    assert_eq!(locked["lock_scope"], "*");
    assert!(locked["seq"].as_u64() < close["seq"].as_u64());
    assert!(
        s.audit("_broker")
            .iter()
            .any(|r| r["event"] == "identity_locked" && r["lock_id"] == lock_id.as_str())
    );

    // CONNECT with the same (valid) grant: 403, saying who locked and why; recorded with the lock.
    let again = tunnel(&b, &alice, &authority, &token).await;
    assert_eq!(again.status, 403, "{}", again.body);
    assert!(
        again.body.contains("this identity is locked by admin/root")
            && again.body.contains("laptop stolen"),
        "{}",
        again.body
    );
    let refusal = s.wait_for_audit("acme", |r| {
        r["event"] == "auth_failure" && r["lock_id"] == lock_id.as_str()
    });
    assert_eq!(refusal["outcome"], "deny");
    assert_eq!(refusal["actor"], ALICE);
    // The API, and a grant fetch, are refused too.
    let listed_req = s.cli(&s.demo("technician"), b.addr, &["requests"]);
    assert!(
        listed_req.err().contains("403") && listed_req.err().contains("locked"),
        "{}",
        listed_req.stderr
    );
    let (status, body) = api(&b, &alice, "GET", "/v1/requests/r-1/grant", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("locked"))
    );
    // So is a certificate issued to alice after the lock: the lock is on the identity.
    let fresh = issue_to(
        &s,
        &s.root.join("people/alice-new"),
        "technician",
        "alice",
        &["--provider", "northwind", "--group", "support"],
    );
    let fresh_grant = grant(&s, &fresh, "acme", "db01", port);
    assert_eq!(
        tunnel(&b, &fresh, &authority, &fresh_grant).await.status,
        403
    );

    // Listed as active; unlocking restores access, and is on the trail.
    let locks = listed(&s, &b, &admin, false);
    assert_eq!(locks.len(), 1);
    assert_eq!(
        (locks[0]["id"].as_str(), locks[0]["active"].as_bool()),
        (Some(lock_id.as_str()), Some(true))
    );
    let table = s.cli(&admin, b.addr, &["locks"]).out().to_owned();
    assert!(
        table.contains(&lock_id) && table.contains("everywhere") && table.contains("laptop stolen"),
        "{table}"
    );
    let out = s
        .cli(
            &admin,
            b.addr,
            &["unlock", &lock_id, "--reason", "laptop found"],
        )
        .out()
        .to_owned();
    assert!(out.contains("unlocked northwind/alice everywhere"), "{out}");
    assert_eq!(tunnel(&b, &alice, &authority, &token).await.status, 200);
    s.cli(&s.demo("technician"), b.addr, &["requests"]).out();
    let unlocked = s.wait_for_audit("acme", |r| r["event"] == "identity_unlocked");
    assert!(
        unlocked["reason"]
            .as_str()
            .unwrap()
            .contains("laptop found")
    );
    assert!(listed(&s, &b, &admin, false).is_empty());
    s.assert_trail_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_of_one_certificate_refuses_it_but_a_reissued_certificate_works() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let args = ["--provider", "northwind", "--group", "support"];
    let old = issue_to(
        &s,
        &s.root.join("people/carl-1"),
        "technician",
        "carl",
        &args,
    );
    let new = issue_to(
        &s,
        &s.root.join("people/carl-2"),
        "technician",
        "carl",
        &args,
    );
    let third = issue_to(
        &s,
        &s.root.join("people/carl-3"),
        "technician",
        "carl",
        &args,
    );
    let authority = format!("db01.acme:{port}");
    let old_grant = grant(&s, &old, "acme", "db01", port);
    let mut live_old = tunnel(&b, &old, &authority, &old_grant).await;
    let mut live_new = tunnel(&b, &new, &authority, &grant(&s, &new, "acme", "db01", port)).await;
    assert_eq!((live_old.status, live_new.status), (200, 200));

    let admin = s.demo("admin");
    let cert = old.dir.join("cert.pem");
    let out = s
        .cli(
            &admin,
            b.addr,
            &[
                "lock",
                "--cert",
                cert.to_str().unwrap(),
                "--reason",
                "key copied",
            ],
        )
        .out()
        .to_owned();
    assert!(
        out.contains("locked certificate ") && out.contains("of northwind/carl"),
        "{out}"
    );
    assert!(out.contains("1 live session(s) closed"), "{out}");
    live_old.wait_cut().await;
    let refused = tunnel(&b, &old, &authority, &old_grant).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.body.contains("this certificate is locked"),
        "{}",
        refused.body
    );
    // The other certificate of the same identity keeps its tunnel and opens new ones.
    live_new.stream.write_all(b"pong").await.unwrap();
    let mut buf = [0u8; 4];
    live_new.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    let new_grant = grant(&s, &new, "acme", "db01", port);
    assert_eq!(tunnel(&b, &new, &authority, &new_grant).await.status, 200);

    // By serial and fingerprint, as openssl prints them.
    let shown = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-serial",
            "-fingerprint",
            "-sha256",
            "-in",
        ])
        .arg(third.dir.join("cert.pem"))
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    let field = |prefix: &str| {
        shown
            .lines()
            .find_map(|l| l.split_once('=').filter(|(k, _)| k.contains(prefix)))
            .unwrap()
            .1
            .to_owned()
    };
    let (serial, sha256) = (field("serial"), field("Fingerprint"));
    assert!(sha256.contains(':'), "{shown}");
    let third_grant = grant(&s, &third, "acme", "db01", port);
    assert_eq!(
        tunnel(&b, &third, &authority, &third_grant).await.status,
        200
    );
    let out = s
        .cli(
            &admin,
            b.addr,
            &[
                "lock",
                "--serial",
                &serial,
                "--sha256",
                &sha256,
                "--reason",
                "decommissioned",
            ],
        )
        .out()
        .to_owned();
    assert!(
        out.contains("of northwind/carl"),
        "the register names the holder: {out}"
    );
    assert_eq!(
        tunnel(&b, &third, &authority, &third_grant).await.status,
        403
    );
    let rec = s
        .audit("acme")
        .into_iter()
        .rfind(|r| r["event"] == "identity_locked")
        .unwrap();
    assert_eq!(
        rec["cert_serial"],
        serial.to_ascii_lowercase().trim_start_matches('0')
    );
    assert_eq!(
        rec["cert_sha256"],
        sha256.replace(':', "").to_ascii_lowercase()
    );
    assert_eq!(tunnel(&b, &new, &authority, &new_grant).await.status, 200);
    s.assert_trail_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_issue_replace_locks_the_earlier_certificate_of_a_running_broker() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let args = ["--provider", "northwind", "--group", "support"];
    let old = issue_to(
        &s,
        &s.root.join("people/dana-laptop"),
        "technician",
        "dana",
        &args,
    );
    let authority = format!("db01.acme:{port}");
    let old_grant = grant(&s, &old, "acme", "db01", port);
    let mut live = tunnel(&b, &old, &authority, &old_grant).await;
    assert_eq!(live.status, 200, "{}", live.body);

    let out = Command::new(BIN)
        .args(["certs", "issue", "technician", "dana"])
        .args(args)
        .arg("--replace")
        .arg("--dir")
        .arg(&s.root)
        .arg("--out")
        .arg(s.root.join("people/dana-new"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("locked earlier certificate"), "{stdout}");
    // The running broker picks the lock up by itself and cuts the old certificate's tunnel.
    live.wait_cut().await;
    let close = s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    assert!(
        close["reason"]
            .as_str()
            .unwrap()
            .starts_with("identity locked"),
        "{close}"
    );
    let locked = s.wait_for_audit("acme", |r| r["event"] == "identity_locked");
    assert!(
        locked["actor"]
            .as_str()
            .unwrap()
            .starts_with("certs-issue:"),
        "{locked}"
    );
    assert!(
        locked["reason"]
            .as_str()
            .unwrap()
            .contains("replaced by certificate")
    );
    assert!(
        locked["expires_at"].is_string(),
        "until the old certificate expires"
    );
    assert_eq!(tunnel(&b, &old, &authority, &old_grant).await.status, 403);
    let new = IdentityDir::read(&s.root.join("people/dana-new")).unwrap();
    let new_grant = grant(&s, &new, "acme", "db01", port);
    assert_eq!(tunnel(&b, &new, &authority, &new_grant).await.status, 200);
    s.assert_trail_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_locks_technicians_for_their_own_customer_only() {
    let (s, acme_port, globex_port) = two_customers();
    let b = Broker::start(&s);
    let alice = s.identity("technician");
    let bob = s.demo("approver");
    let dave = s.issue("approver", "dave", &["--customer", "globex"]);
    let acme = format!("db01.acme:{acme_port}");
    let globex = format!("app.globex:{globex_port}");
    let mut in_acme = tunnel(
        &b,
        &alice,
        &acme,
        &grant(&s, &alice, "acme", "db01", acme_port),
    )
    .await;
    let mut in_globex = tunnel(
        &b,
        &alice,
        &globex,
        &grant(&s, &alice, "globex", "app", globex_port),
    )
    .await;
    assert_eq!((in_acme.status, in_globex.status), (200, 200));

    // Another customer's approver cannot lock for acme, nor lock an admin or an approver.
    for (args, needle) in [
        (
            vec!["--spiffe-id", ALICE, "--customer", "acme"],
            "only lock access to customer `globex`",
        ),
        (
            vec!["--spiffe-id", "spiffe://sallyport.local/admin/root"],
            "technicians only",
        ),
        (
            vec!["--spiffe-id", "spiffe://sallyport.local/approver/acme/bob"],
            "technicians only",
        ),
    ] {
        let mut all = vec!["lock", "--reason", "x"];
        all.extend(args);
        let r = s.cli(&dave, b.addr, &all);
        assert!(
            r.err().contains("403") && r.err().contains(needle),
            "{all:?}: {}",
            r.stderr
        );
    }
    assert!(
        listed(&s, &b, &s.demo("admin"), true).is_empty(),
        "nothing was locked"
    );

    // acme's approver locks alice: her tunnel into acme is cut, the one into globex stays.
    let out = s
        .cli(
            &bob,
            b.addr,
            &["lock", "--spiffe-id", ALICE, "--reason", "odd hours"],
        )
        .out()
        .to_owned();
    assert!(
        out.contains("for customer acme") && out.contains("1 live session(s) closed"),
        "{out}"
    );
    let lock_id = lock_id_of(&out);
    in_acme.wait_cut().await;
    in_globex.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    in_globex.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        tunnel(
            &b,
            &alice,
            &acme,
            &grant(&s, &alice, "acme", "db01", acme_port)
        )
        .await
        .status,
        403
    );
    assert_eq!(
        tunnel(
            &b,
            &alice,
            &globex,
            &grant(&s, &alice, "globex", "app", globex_port)
        )
        .await
        .status,
        200
    );
    // Filing for acme is refused; for globex it works, and so does the rest of the API.
    let technician = s.demo("technician");
    let filed = |target: &str| {
        s.cli(
            &technician,
            b.addr,
            &["request", target, "--minutes", "10", "--reason", "patching"],
        )
    };
    let refused = filed("acme/db01");
    assert!(
        refused.err().contains("403") && refused.err().contains("locked for customer `acme`"),
        "{}",
        refused.stderr
    );
    assert!(filed("globex/app").out().starts_with("r-"));
    // Only on acme's chain; globex's approver neither sees it nor can lift it.
    assert!(
        s.audit("acme")
            .iter()
            .any(|r| r["event"] == "identity_locked" && r["lock_scope"] == "acme")
    );
    assert!(
        !s.audit("globex")
            .iter()
            .any(|r| r["event"] == "identity_locked")
    );
    assert!(
        !s.audit("_broker")
            .iter()
            .any(|r| r["event"] == "identity_locked")
    );
    assert!(listed(&s, &b, &dave, true).is_empty());
    let r = s.cli(&dave, b.addr, &["unlock", &lock_id]);
    assert!(
        r.err().contains("404") && r.err().contains("no lock"),
        "{}",
        r.stderr
    );
    assert_eq!(listed(&s, &b, &bob, false).len(), 1);
    assert_eq!(
        listed(&s, &b, &technician, false).len(),
        1,
        "alice sees the lock on herself"
    );
    s.cli(&bob, b.addr, &["unlock", &lock_id]).out();
    assert_eq!(
        tunnel(
            &b,
            &alice,
            &acme,
            &grant(&s, &alice, "acme", "db01", acme_port)
        )
        .await
        .status,
        200
    );
    s.assert_trail_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lock_requests_are_refused_clearly_and_lock_nothing() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let admin = s.demo("admin");
    let cert = s.demo("technician").join("cert.pem");
    let cert = cert.to_str().unwrap();
    for (args, needle) in [
        (vec!["lock", "--spiffe-id", ALICE], "--reason <REASON>"),
        (
            vec!["lock", "--spiffe-id", ALICE, "--reason", "  "],
            "`reason` must be 1 to 1000 printable characters",
        ),
        (
            vec![
                "lock",
                "--spiffe-id",
                ALICE,
                "--cert",
                cert,
                "--reason",
                "x",
            ],
            "cannot be used with",
        ),
        (
            vec!["lock", "--reason", "x"],
            "required arguments were not provided",
        ),
        (
            vec!["lock", "--serial", "5f", "--reason", "x"],
            "--sha256 <HEX>",
        ),
        (
            vec![
                "lock",
                "--spiffe-id",
                ALICE,
                "--reason",
                "x",
                "--until",
                "2020-01-01T00:00:00Z",
            ],
            "is not in the future",
        ),
        (
            vec![
                "lock",
                "--spiffe-id",
                ALICE,
                "--reason",
                "x",
                "--until",
                "soon",
            ],
            "not an RFC 3339 time",
        ),
        (
            vec![
                "lock",
                "--spiffe-id",
                ALICE,
                "--reason",
                "x",
                "--until",
                "2099-01-01T00:00:00Z",
                "--minutes",
                "5",
            ],
            "cannot be used with",
        ),
        (
            vec![
                "lock",
                "--spiffe-id",
                ALICE,
                "--reason",
                "x",
                "--minutes",
                "0",
            ],
            "`minutes` must be 1 to",
        ),
        (
            vec!["lock", "--spiffe-id", "alice", "--reason", "x"],
            "invalid SPIFFE id",
        ),
        (
            vec![
                "lock",
                "--spiffe-id",
                "spiffe://sallyport.local/admin/root",
                "--reason",
                "x",
            ],
            "cannot lock yourself",
        ),
        (
            vec![
                "lock", "--serial", "5f", "--sha256", "beef", "--reason", "x",
            ],
            "invalid certificate fingerprint",
        ),
        (
            vec![
                "lock",
                "--spiffe-id",
                ALICE,
                "--reason",
                "x",
                "--customer",
                "initech",
            ],
            "no customer `initech`",
        ),
        (
            vec!["unlock", "l-0123456789abcdef0123456789abcdef"],
            "no lock `l-0123456789abcdef0123456789abcdef`",
        ),
    ] {
        let r = s.cli(&admin, b.addr, &args);
        assert!(r.err().contains(needle), "{args:?}: {}", r.stderr);
    }
    // The same over the API, with its codes.
    let root = s.identity("admin");
    for (body, status, code, needle) in [
        (format!(r#"{{"spiffe_id":"{ALICE}","certificate":{{"serial":"5f","sha256":"{}"}},"reason":"x"}}"#, "ab".repeat(32)), 400, "bad_target", "not both"),
        (r#"{"reason":"x"}"#.to_owned(), 400, "bad_target", "say what to lock"),
        (format!(r#"{{"spiffe_id":"{ALICE}"}}"#), 400, "bad_reason", "`reason` must be"),
        (format!(r#"{{"spiffe_id":"{ALICE}","reason":"x","expires_at":"2020-01-01T00:00:00Z"}}"#), 400, "bad_expires_at", "not in the future"),
        (format!(r#"{{"spiffe_id":"{ALICE}","reason":"x","until":"tomorrow"}}"#), 400, "bad_json", "unknown field `until`"),
        (r#"{"certificate":{"pem":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},"reason":"x"}"#.to_owned(), 400, "bad_certificate", "certificate"),
    ] {
        let (got, v) = api(&b, &root, "POST", "/v1/locks", Some(&body)).await;
        assert_eq!(got, status, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    // An auditor or a technician locks nobody.
    let carol = s.issue("auditor", "carol", &["--customer", "acme"]);
    let r = s.cli(
        &carol,
        b.addr,
        &["lock", "--spiffe-id", ALICE, "--reason", "x"],
    );
    assert!(r.err().contains("auditors cannot lock"), "{}", r.stderr);
    let r = s.cli(
        &s.demo("technician"),
        b.addr,
        &[
            "lock",
            "--spiffe-id",
            "spiffe://sallyport.local/technician/northwind/eve",
            "--reason",
            "x",
        ],
    );
    assert!(r.err().contains("technicians cannot lock"), "{}", r.stderr);
    // Nothing was locked, and nothing was recorded as locked.
    assert!(listed(&s, &b, &admin, true).is_empty());
    assert!(
        ["acme", "_broker"]
            .iter()
            .all(|c| s.audit(c).iter().all(|r| r["event"] != "identity_locked"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_with_an_end_time_is_listed_with_it_and_unlock_lifts_it_once() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let admin = s.demo("admin");
    let before = jiff::Timestamp::now();
    let out = s
        .cli(
            &admin,
            b.addr,
            &[
                "lock",
                "--spiffe-id",
                ALICE,
                "--reason",
                "on leave",
                "--minutes",
                "90",
            ],
        )
        .out()
        .to_owned();
    let lock_id = lock_id_of(&out);
    let locks = listed(&s, &b, &admin, false);
    let until: jiff::Timestamp = locks[0]["expires_at"].as_str().unwrap().parse().unwrap();
    let ahead = until.duration_since(before).as_secs();
    assert!(
        (90 * 60 - 5..=90 * 60 + 5).contains(&ahead),
        "{ahead} s ahead"
    );
    assert!(
        out.contains(&format!(
            "until {}",
            locks[0]["expires_at"].as_str().unwrap()
        )),
        "{out}"
    );
    let alice = s.identity("technician");
    let token = grant(&s, &alice, "acme", "db01", port);
    let authority = format!("db01.acme:{port}");
    let refused = tunnel(&b, &alice, &authority, &token).await;
    assert!(
        refused.body.contains(&format!(
            "until {}",
            locks[0]["expires_at"].as_str().unwrap()
        )),
        "{}",
        refused.body
    );
    // Until can also be given as a time; a second lock of the same identity is refused.
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 30)).to_string();
    let r = s.cli(
        &admin,
        b.addr,
        &[
            "lock",
            "--spiffe-id",
            ALICE,
            "--reason",
            "again",
            "--until",
            &later,
        ],
    );
    assert!(
        r.err().contains("409") && r.err().contains("already locked"),
        "{}",
        r.stderr
    );
    s.cli(&admin, b.addr, &["unlock", &lock_id]).out();
    assert_eq!(tunnel(&b, &alice, &authority, &token).await.status, 200);
    let r = s.cli(&admin, b.addr, &["unlock", &lock_id]);
    assert!(
        r.err().contains("409") && r.err().contains("already lifted by admin/root"),
        "{}",
        r.stderr
    );
    assert!(listed(&s, &b, &admin, false).is_empty());
    let all = listed(&s, &b, &admin, true);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["unlocked_by"], "spiffe://sallyport.local/admin/root");
    let table = s.cli(&admin, b.addr, &["locks", "--all"]).out().to_owned();
    assert!(table.contains("lifted"), "{table}");
}

/// One webhook delivery: its event header and JSON body.
fn webhook_receiver() -> (SocketAddr, mpsc::Receiver<(String, serde_json::Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut reader = BufReader::new(conn);
            let (mut event, mut len) = (String::new(), 0usize);
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((n, v)) = l.split_once(':') {
                    match n.trim().to_ascii_lowercase().as_str() {
                        "x-sallyport-event" => event = v.trim().to_owned(),
                        "content-length" => len = v.trim().parse().unwrap(),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send((event, serde_json::from_slice(&body).unwrap()));
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customers_webhook_hears_of_locks_and_the_ca_signs_a_crl_of_locked_certificates() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let (hook, deliveries) = webhook_receiver();
    std::fs::write(
        s.root.join("acme-webhook.secret"),
        "a shared secret of 16+ bytes\n",
    )
    .unwrap();
    s.append_config(&format!(
        "[customers.webhook]\nurl = \"http://{hook}/hooks/acme\"\nsecret_file = \"acme-webhook.secret\"\n\n[tls]\ncrl = true\n"
    ));
    let b = Broker::start(&s);
    let admin = s.demo("admin");
    let args = ["--provider", "northwind", "--group", "support"];
    let locked = issue_to(
        &s,
        &s.root.join("people/erik-1"),
        "technician",
        "erik",
        &args,
    );
    let other = issue_to(
        &s,
        &s.root.join("people/erik-2"),
        "technician",
        "erik",
        &args,
    );
    let cert: PathBuf = locked.dir.join("cert.pem");
    let out = s
        .cli(
            &admin,
            b.addr,
            &[
                "lock",
                "--cert",
                cert.to_str().unwrap(),
                "--reason",
                "stolen",
            ],
        )
        .out()
        .to_owned();
    let lock_id = lock_id_of(&out);
    let (event, body) = deliveries.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(event, "identity_locked");
    assert_eq!(body["customer"], "acme");
    assert_eq!(body["data"]["id"], lock_id.as_str());
    assert_eq!(
        body["data"]["spiffe_id"],
        "spiffe://sallyport.local/technician/northwind/erik"
    );
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("admin/root locked certificate"),
        "{body}"
    );

    // The CRL, from the API and the data folder, signed by the CA, lists the locked certificate only.
    let (status, _) = api(&b, &locked, "GET", "/v1/crl", None).await;
    assert_eq!(
        status, 403,
        "a locked certificate gets nothing, the CRL included"
    );
    let a = request(
        b.addr,
        &connector(&other),
        "GET /v1/crl HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert!(a.body.starts_with("-----BEGIN X509 CRL-----"), "{}", a.body);
    let file = s.root.join("data/crl.pem");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), a.body);
    let verify = |c: &Path| {
        Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(s.root.join("pki/ca.pem"))
            .arg("-CRLfile")
            .arg(&file)
            .arg(c)
            .output()
            .unwrap()
    };
    let refused = verify(&cert);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("certificate revoked"), "{said}");
    let fine = verify(&other.dir.join("cert.pem"));
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );

    // Unlocking is announced too, and takes the certificate off the CRL.
    s.cli(
        &admin,
        b.addr,
        &["unlock", &lock_id, "--reason", "recovered"],
    )
    .out();
    let (event, body) = deliveries.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(event, "identity_unlocked");
    assert_eq!(body["data"]["unlock_reason"], "recovered");
    assert!(verify(&cert).status.success());

    // In OCSF, locks are Account Changes, valid against the official schema.
    let events = s.ocsf_export("acme");
    let changes: Vec<u64> = events
        .iter()
        .filter(|e| e["class_uid"] == 3001)
        .map(|e| e["activity_id"].as_u64().unwrap())
        .collect();
    assert_eq!(changes, [9, 12], "lock, then unlock");
}
