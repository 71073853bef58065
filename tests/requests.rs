//! End-to-end tests of the just-in-time access workflow with the real binary, real TLS and the real
//! SQLite file: request -> approve -> connect -> revoke through the CLI, quorums, self-approval,
//! tenant walls, denial, expiry of grants and of pending requests, a kill -9 between approval and
//! grant fetch, signed webhooks (and a dead receiver), bad input and rate limits.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sallyport_testkit::{
    Broker, CustomerSpec, Setup, connector, echo_server, eventually, request,
    support_with_approvals, webhook_receiver,
};
use sha2::Sha256;

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// `acme` (target `db01`, `acme_approvals` approvals) and `globex` (target `app`, one approval),
/// both loopback echo servers.
fn two_customers(acme_approvals: u32, limits: &str) -> Setup {
    let s = Setup::init(BIN);
    let (acme, globex) = (
        support_with_approvals("acme", acme_approvals),
        support_with_approvals("globex", 1),
    );
    s.write_config(
        &[
            CustomerSpec {
                id: "globex",
                timezone: "UTC",
                policy: &globex,
                targets: vec![("app", echo_server().to_string(), vec![])],
            },
            CustomerSpec {
                id: "acme",
                timezone: "Europe/Berlin",
                policy: &acme,
                targets: vec![("db01", echo_server().to_string(), vec!["prod"])],
            },
        ],
        limits,
    );
    s
}

/// `sallyport connect TARGET --listen 127.0.0.1:0` (fetching the grant itself); killed on drop.
struct Forwarder {
    child: Child,
    local: SocketAddr,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward(identity: &Path, broker: SocketAddr, target: &str) -> Forwarder {
    let mut child = Command::new(BIN)
        .args(["connect", target, "--listen", "127.0.0.1:0", "--identity"])
        .arg(identity)
        .args(["--broker", &broker.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let local = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("sallyport: listening on ")
                .map(|a| a.parse().unwrap())
        })
        .expect("the forwarder did not start");
    // Keep reading what it prints, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    Forwarder { child, local }
}

/// Sends `msg` through the forwarder and reads the echo.
fn ping(local: SocketAddr, msg: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(local).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    conn
}

/// Reads until the connection ends (EOF or reset), for at most 30 s.
fn wait_closed(conn: &mut TcpStream) {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
}

/// Seconds between two audit records' times.
fn gap(earlier: &serde_json::Value, later: &serde_json::Value) -> f64 {
    let t = |r: &serde_json::Value| {
        r["time"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    t(later).duration_since(t(earlier)).as_secs_f64()
}

fn events(s: &Setup, chain: &str, request_id: &str) -> Vec<String> {
    s.audit(chain)
        .iter()
        .filter(|r| r["request_id"] == request_id)
        .map(|r| r["event"].as_str().unwrap().to_owned())
        .collect()
}

fn file(s: &Setup, b: &Broker, target: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "request",
        target,
        "--minutes",
        "30",
        "--reason",
        "rotate the TLS certificate",
    ];
    args.extend_from_slice(extra);
    let id = s
        .cli(&s.demo("technician"), b.addr, &args)
        .out()
        .trim()
        .to_owned();
    assert!(id.starts_with("r-"), "{id}");
    id
}

fn request_json(s: &Setup, b: &Broker, who: &Path, id: &str) -> serde_json::Value {
    let list = s.cli(who, b.addr, &["requests", "--json"]).json();
    list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))
}

#[test]
fn the_whole_story_through_the_cli_request_approve_connect_revoke() {
    let s = two_customers(1, "");
    let b = Broker::start(&s);
    let (alice, bob) = (s.demo("technician"), s.demo("approver"));

    let id = file(&s, &b, "acme/db01", &["--ticket", "CHG-7"]);
    let table = s
        .cli(&bob, b.addr, &["requests", "--status", "pending"])
        .out()
        .to_owned();
    assert!(table.contains("APPROVALS"), "{table}");
    let row = table.lines().find(|l| l.contains(&id)).unwrap();
    assert!(
        row.contains("pending") && row.contains("northwind/alice") && row.contains("0/1"),
        "{row}"
    );
    let approved = s.cli(&bob, b.addr, &["approve", &id, "--comment", "go ahead"]);
    assert!(approved.out().contains("granted"), "{}", approved.stdout);

    // `connect` without --grant fetches the approved grant; bytes flow.
    let fwd = forward(&alice, b.addr, "acme/db01");
    let mut conn = ping(fwd.local, b"ping");
    let live = s
        .cli(&bob, b.addr, &["sessions", "--live", "--json"])
        .json();
    let sessions = live["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{live}");
    assert_eq!(sessions[0]["live"], true);
    assert_eq!(
        (
            sessions[0]["bytes_up"].as_u64(),
            sessions[0]["bytes_down"].as_u64()
        ),
        (Some(4), Some(4)),
        "{live}"
    );
    let table = s.cli(&bob, b.addr, &["sessions"]).out().to_owned();
    assert!(
        table
            .lines()
            .any(|l| l.contains("live") && l.contains("acme/db01")),
        "{table}"
    );

    // The approver revokes; the live tunnel closes within a second.
    let gid = request_json(&s, &b, &bob, &id)["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = s.cli(&bob, b.addr, &["revoke", &gid, "--reason", "work done"]);
    assert!(
        revoked.out().contains("1 live session(s) closed"),
        "{}",
        revoked.stdout
    );
    wait_closed(&mut conn);
    let close = s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    let revocation = s.wait_for_audit("acme", |r| r["event"] == "grant_revoked");
    assert!(
        gap(&revocation, &close) < 1.0,
        "the tunnel outlived its revocation: {revocation} {close}"
    );

    // Reconnecting is refused: through the running forwarder, and by a new `connect`.
    let mut again = TcpStream::connect(fwd.local).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = again.write_all(b"ping");
    let mut buf = [0u8; 4];
    assert!(
        matches!(again.read(&mut buf), Ok(0) | Err(_)),
        "a revoked grant carried bytes"
    );
    s.wait_for_audit("acme", |r| {
        r["event"] == "decision"
            && r["outcome"] == "deny"
            && r["reason"].as_str().unwrap().contains("was revoked")
    });
    let refused = s.cli(
        &alice,
        b.addr,
        &["connect", "acme/db01", "--listen", "127.0.0.1:0"],
    );
    assert!(refused.err().contains("revoked"), "{}", refused.stderr);

    // The session is listed as closed by the revocation; every step is on acme's trail.
    let closed = eventually(10, "the session close to be recorded", || {
        let v = s.cli(&bob, b.addr, &["sessions", "--json"]).json();
        let first = v["sessions"][0].clone();
        (first["live"] == false).then_some(first)
    });
    assert_eq!(closed["close_reason"], "grant revoked");
    assert_eq!(
        events(&s, "acme", &id),
        [
            "request_filed",
            "request_approved",
            "grant_minted",
            "grant_revoked"
        ]
    );
    let trail = s.audit("acme");
    let filed = trail
        .iter()
        .find(|r| r["event"] == "request_filed")
        .unwrap();
    // The technician's words, with minutes and ticket as fields of their own.
    assert_eq!(filed["reason"], "rotate the TLS certificate");
    assert_eq!(filed["ticket"], "CHG-7");
    assert_eq!(filed["minutes"], 30);
    assert_eq!(close["reason"], "grant revoked");
    assert_eq!(close["grant_id"], gid.as_str());
    assert!(s.audit("globex").iter().all(|r| r["request_id"].is_null()));
}

#[test]
fn quorum_self_approval_tenant_walls_and_denial() {
    let s = two_customers(2, "");
    let b = Broker::start(&s);
    let (alice, bob) = (s.demo("technician"), s.demo("approver"));
    let carol = s.issue("approver", "carol", &["--customer", "acme"]);
    let dave = s.issue("approver", "dave", &["--customer", "globex"]);

    let id = file(&s, &b, "acme/db01", &[]);
    assert_eq!(request_json(&s, &b, &alice, &id)["approvals_required"], 2);

    // An approver of another customer can neither see nor approve it.
    let theirs = s.cli(&dave, b.addr, &["requests", "--json"]).json();
    assert_eq!(theirs["requests"].as_array().unwrap().len(), 0, "{theirs}");
    let e = s.cli(&dave, b.addr, &["approve", &id]);
    assert!(
        e.err().contains("404") && e.stderr.contains("no request"),
        "{}",
        e.stderr
    );
    // The requester cannot approve.
    let e = s.cli(&alice, b.addr, &["approve", &id]);
    assert!(e.err().contains("403"), "{}", e.stderr);

    // One approval of two: recorded, not granted.
    let one = s.cli(&bob, b.addr, &["approve", &id]);
    assert!(one.out().contains("1 more needed"), "{}", one.stdout);
    let twice = s.cli(&bob, b.addr, &["approve", &id]);
    assert!(twice.err().contains("409") && twice.stderr.contains("already approved"));
    let early = s.cli(
        &alice,
        b.addr,
        &["connect", "acme/db01", "--listen", "127.0.0.1:0"],
    );
    assert!(
        early.err().contains("is still pending") && early.stderr.contains("--wait"),
        "{}",
        early.stderr
    );
    assert_eq!(request_json(&s, &b, &alice, &id)["status"], "pending");

    // The second approver completes the quorum.
    let two = s.cli(&carol, b.addr, &["approve", &id, "--comment", "ok"]);
    assert!(two.out().contains("granted"), "{}", two.stdout);
    let rec = request_json(&s, &b, &bob, &id);
    assert_eq!(rec["status"], "approved");
    assert_eq!(rec["approvals"].as_array().unwrap().len(), 2);
    let fwd = forward(&alice, b.addr, "acme/db01");
    drop(ping(fwd.local, b"after quorum"));

    // A denied request stays denied.
    let other = file(&s, &b, "acme/db01", &[]);
    assert!(
        s.cli(
            &bob,
            b.addr,
            &["deny", &other, "--reason", "not during the freeze"]
        )
        .out()
        .contains("denied")
    );
    let late = s.cli(&carol, b.addr, &["approve", &other]);
    assert!(
        late.err().contains("409") && late.stderr.contains("already denied"),
        "{}",
        late.stderr
    );
    let rec = request_json(&s, &b, &alice, &other);
    assert_eq!(
        (rec["status"].as_str(), rec["deny_reason"].as_str()),
        (Some("denied"), Some("not during the freeze"))
    );
    assert_eq!(
        events(&s, "acme", &id),
        [
            "request_filed",
            // globex's approver, then the requester, trying to approve.
            "access_refused",
            "access_refused",
            "approval_recorded",
            "request_approved",
            "grant_minted"
        ]
    );
    assert_eq!(
        events(&s, "acme", &other),
        ["request_filed", "request_denied"]
    );
    // globex's chain names acme's request only where its own approver tried it, and says no more
    // than he was told.
    let about: Vec<_> = s
        .audit("globex")
        .into_iter()
        .filter(|r| !r["request_id"].is_null())
        .collect();
    assert_eq!(about.len(), 1, "{about:#?}");
    assert_eq!(about[0]["event"], "access_refused");
    assert_eq!(
        about[0]["reason"],
        format!("approve request `{id}`: refused: no request `{id}`")
    );
}

#[test]
fn instant_approval_is_audited_and_sessions_are_ended_by_the_customer_only() {
    let s = Setup::init(BIN);
    let (acme, globex) = (
        support_with_approvals("acme", 1),
        support_with_approvals("globex", 0),
    );
    s.write_config(
        &[
            CustomerSpec {
                id: "acme",
                timezone: "UTC",
                policy: &acme,
                targets: vec![("db01", echo_server().to_string(), vec![])],
            },
            CustomerSpec {
                id: "globex",
                timezone: "UTC",
                policy: &globex,
                targets: vec![("app", echo_server().to_string(), vec![])],
            },
        ],
        "",
    );
    let b = Broker::start(&s);
    let (alice, bob) = (s.demo("technician"), s.demo("approver"));
    let dave = s.issue("approver", "dave", &["--customer", "globex"]);
    let erin = s.issue("auditor", "erin", &["--customer", "globex"]);
    let frank = s.issue("auditor", "frank", &["--customer", "acme"]);

    // An auditor sees a customer's requests but cannot decide them.
    let pending = file(&s, &b, "acme/db01", &[]);
    assert_eq!(request_json(&s, &b, &frank, &pending)["status"], "pending");
    let e = s.cli(&frank, b.addr, &["approve", &pending]);
    assert!(e.err().contains("403"), "{}", e.stderr);
    assert_eq!(
        request_json(&s, &b, &bob, &pending)["approvals"],
        serde_json::json!([])
    );

    // globex's policy needs no approval: approved at once, and the trail says which policy did it.
    let filed = s.cli(
        &alice,
        b.addr,
        &[
            "request",
            "globex/app",
            "--minutes",
            "10",
            "--reason",
            "restart the app",
        ],
    );
    let id = filed.out().trim().to_owned();
    assert!(
        filed.stderr.contains("approved at once"),
        "{}",
        filed.stderr
    );
    let approved = s
        .audit("globex")
        .into_iter()
        .find(|r| r["event"] == "request_approved")
        .unwrap();
    assert_eq!(approved["actor"], "policy");
    assert_eq!(approved["request_id"], id.as_str());
    assert_eq!(
        approved["reason"],
        "approved at once: policy `support-requests` requires no approval"
    );

    let fwd = forward(&alice, b.addr, "globex/app");
    let mut conn = ping(fwd.local, b"hello");
    let live = s
        .cli(&erin, b.addr, &["sessions", "--live", "--json"])
        .json();
    let sid = live["sessions"][0]["id"].as_str().unwrap().to_owned();
    // The auditor may look but not end it; another customer's approver cannot even see it.
    let e = s.cli(&erin, b.addr, &["sessions", "--end", &sid]);
    assert!(e.err().contains("403"), "{}", e.stderr);
    let e = s.cli(&bob, b.addr, &["sessions", "--end", &sid]);
    assert!(e.err().contains("404"), "{}", e.stderr);
    let theirs = s.cli(&bob, b.addr, &["sessions", "--json"]).json();
    assert_eq!(theirs["sessions"], serde_json::json!([]));
    // globex's approver ends it.
    assert!(
        s.cli(&dave, b.addr, &["sessions", "--end", &sid])
            .out()
            .contains("ended session")
    );
    wait_closed(&mut conn);
    let again = s.cli(&dave, b.addr, &["sessions", "--end", &sid]);
    assert!(
        again.err().contains("409") && again.stderr.contains("already closed"),
        "{}",
        again.stderr
    );
    let ended = s.wait_for_audit("globex", |r| r["event"] == "session_ended");
    assert_eq!(
        ended["actor"],
        "spiffe://sallyport.local/approver/globex/dave"
    );
    assert_eq!(ended["session_id"], sid.as_str());
    let close = s.wait_for_audit("globex", |r| r["event"] == "tunnel_close");
    assert_eq!(
        close["reason"],
        "ended by spiffe://sallyport.local/approver/globex/dave"
    );
    assert!(gap(&ended, &close) < 1.0, "{ended} {close}");
    // acme's chain names globex's session only where acme's approver tried to end it, as he was
    // told.
    let about: Vec<_> = s
        .audit("acme")
        .into_iter()
        .filter(|r| r["session_id"] == sid.as_str())
        .collect();
    assert_eq!(about.len(), 1, "{about:#?}");
    assert_eq!(
        about[0]["reason"],
        format!("end session `{sid}`: refused: no session `{sid}`")
    );
    assert!(
        about[0]["target"].is_null() && about[0]["grant_id"].is_null(),
        "{}",
        about[0]
    );
    // globex's chain has the attempt with what it was about.
    let seen = s
        .audit("globex")
        .into_iter()
        .find(|r| {
            r["event"] == "access_refused"
                && r["session_id"] == sid.as_str()
                && r["actor"] == "spiffe://sallyport.local/approver/acme/bob"
        })
        .unwrap();
    assert!(
        seen["grant_id"].is_string() && seen["target"] == "app",
        "{seen}"
    );
}

/// `--start-at` for a one-minute window that ends `secs_left` seconds from now.
fn window_ending_in(secs_left: i64) -> (String, i64) {
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60 - secs_left);
    (start.to_string(), start.as_second() + 60)
}

#[test]
fn a_grant_expires_on_time_and_its_tunnel_is_cut() {
    let s = two_customers(1, "");
    let b = Broker::start(&s);
    let (alice, bob) = (s.demo("technician"), s.demo("approver"));
    // A window that started 48 s ago and lasts one minute: the grant ends in 12 s.
    let (start, window_end) = window_ending_in(12);
    let id = s
        .cli(
            &alice,
            b.addr,
            &[
                "request",
                "acme/db01",
                "--minutes",
                "1",
                "--reason",
                "short fix",
                "--start-at",
                &start,
            ],
        )
        .out()
        .trim()
        .to_owned();
    s.cli(&bob, b.addr, &["approve", &id]).out();
    let grant = request_json(&s, &b, &alice, &id)["grant"].clone();
    assert_eq!(
        grant["expires_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second(),
        window_end
    );
    let fwd = forward(&alice, b.addr, "acme/db01");
    let mut conn = ping(fwd.local, b"tick");
    wait_closed(&mut conn);
    let cut_at = jiff::Timestamp::now().as_second();
    let close = s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    assert_eq!(close["reason"], "grant expired");
    assert!(
        (window_end - 1..=window_end + 2).contains(&cut_at),
        "cut at {cut_at}, window ends {window_end}"
    );
    // The expired grant is not handed out again.
    let again = s.cli(
        &alice,
        b.addr,
        &["connect", "acme/db01", "--listen", "127.0.0.1:0"],
    );
    assert!(again.err().contains("expired"), "{}", again.stderr);
}

#[test]
fn a_pending_request_expires_and_cannot_be_approved_after() {
    let s = two_customers(1, "");
    s.append_config("[requests]\npending_expiry_seconds = 2\nsweep_interval_seconds = 1\n");
    let b = Broker::start(&s);
    let bob = s.demo("approver");
    let pending = file(&s, &b, "acme/db01", &[]);
    let expires = request_json(&s, &b, &bob, &pending)["expires_at"].clone();
    let created = request_json(&s, &b, &bob, &pending)["created_at"].clone();
    let secs = |v: &serde_json::Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    assert_eq!(secs(&expires).as_second() - secs(&created).as_second(), 2);
    eventually(15, "the request to expire", || {
        let v = s
            .cli(&bob, b.addr, &["requests", "--status", "expired", "--json"])
            .json();
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == pending.as_str())
            .then_some(())
    });
    let late = s.cli(&bob, b.addr, &["approve", &pending]);
    assert!(
        late.err().contains("409") && late.stderr.contains("expired"),
        "{}",
        late.stderr
    );
    assert_eq!(
        events(&s, "acme", &pending),
        ["request_filed", "request_expired"]
    );
    let expired = s.wait_for_audit("acme", |r| r["event"] == "request_expired");
    assert_eq!(expired["actor"], "broker");
}

#[test]
fn state_survives_a_kill_between_approval_and_grant_fetch() {
    let s = two_customers(1, "");
    let mut b = Broker::start(&s);
    let (alice, bob) = (s.demo("technician"), s.demo("approver"));
    let approved = file(&s, &b, "acme/db01", &[]);
    s.cli(&bob, b.addr, &["approve", &approved]).out();
    let pending = file(&s, &b, "acme/db01", &[]);
    let revoked = file(&s, &b, "acme/db01", &[]);
    s.cli(&bob, b.addr, &["approve", &revoked]).out();
    let gid = request_json(&s, &b, &bob, &revoked)["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.cli(&bob, b.addr, &["revoke", &gid, "--reason", "wrong window"])
        .out();

    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let b = Broker::start(&s);

    assert_eq!(
        request_json(&s, &b, &alice, &approved)["status"],
        "approved"
    );
    assert_eq!(request_json(&s, &b, &alice, &pending)["status"], "pending");
    // The revoked grant stays revoked; the approved one is fetched and works.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fetch = |id: &str| {
        let head = format!("GET /v1/requests/{id}/grant HTTP/1.1\r\nHost: x\r\n\r\n");
        rt.block_on(request(
            b.addr,
            &connector(&s.identity("technician")),
            &head,
        ))
        .unwrap()
    };
    let a = fetch(&revoked);
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("was revoked"), "{}", a.body);
    let a = fetch(&approved);
    assert_eq!(a.status, 200, "{}", a.body);
    let fwd = forward(&alice, b.addr, "acme/db01");
    drop(ping(fwd.local, b"after restart"));
    // The pending request can still be decided.
    assert!(
        s.cli(&bob, b.addr, &["approve", &pending])
            .out()
            .contains("granted")
    );
}

#[test]
fn webhooks_are_signed_per_customer_and_a_dead_receiver_blocks_nothing() {
    let s = two_customers(1, "");
    let secret = "a shared secret of the acme SOC";
    std::fs::write(s.root.join("acme-webhook.secret"), format!("{secret}\n")).unwrap();
    std::fs::write(s.root.join("globex-webhook.secret"), "another secret, 16+").unwrap();
    let (addr, deliveries) = webhook_receiver();
    let dead = sallyport_testkit::closed_port();
    // acme is the last customer written, so its webhook table follows it; globex's is inserted.
    s.append_config(&format!(
        "[customers.webhook]\nurl = \"http://{addr}/hooks/acme\"\nsecret_file = \"acme-webhook.secret\"\n\n[requests]\nsweep_interval_seconds = 1\n"
    ));
    let cfg = std::fs::read_to_string(s.config()).unwrap().replacen(
        "\n[[customers]]\nid = \"acme\"",
        &format!(
            "\n[customers.webhook]\nurl = \"http://{dead}/hooks/globex\"\nsecret_file = \"globex-webhook.secret\"\nmax_attempts = 2\nfirst_backoff_ms = 10\n\n[[customers]]\nid = \"acme\""
        ),
        1,
    );
    std::fs::write(s.config(), cfg).unwrap();
    let b = Broker::start(&s);
    let (bob, alice) = (s.demo("approver"), s.demo("technician"));

    let next = || {
        let d = deliveries.recv_timeout(Duration::from_secs(10)).unwrap();
        // The signature is HMAC-SHA256 over "<timestamp>.<body>" with the shared secret.
        let ts = d.header("x-sallyport-timestamp");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.{}", d.body).as_bytes());
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(d.header("x-sallyport-signature"), expected);
        let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(d.header("x-sallyport-event"), v["event"].as_str().unwrap());
        assert_eq!(v["customer"], "acme");
        assert!(v["text"].as_str().unwrap().len() > 10, "{v}");
        v
    };

    let id = file(&s, &b, "acme/db01", &[]);
    let v = next();
    assert_eq!(v["event"], "request_filed");
    assert_eq!(v["data"]["id"], id.as_str());
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .contains("northwind/alice asks for 30 minutes on acme/db01"),
        "{v}"
    );
    s.cli(&bob, b.addr, &["approve", &id]).out();
    let v = next();
    assert_eq!(v["event"], "request_approved");
    let gid = v["data"]["grant_id"].as_str().unwrap().to_owned();
    s.cli(&alice, b.addr, &["revoke", &gid, "--reason", "done early"])
        .out();
    let v = next();
    assert_eq!(
        (v["event"].as_str(), v["data"]["reason"].as_str()),
        (Some("grant_revoked"), Some("done early"))
    );
    let denied = file(&s, &b, "acme/db01", &[]);
    assert_eq!(next()["event"], "request_filed");
    s.cli(&bob, b.addr, &["deny", &denied, "--reason", "no"])
        .out();
    assert_eq!(next()["event"], "request_denied");
    // A request for a window that ends in 3 s expires then if nobody decides.
    let (start, _) = window_ending_in(3);
    let lapsed = s
        .cli(
            &alice,
            b.addr,
            &[
                "request",
                "acme/db01",
                "--minutes",
                "1",
                "--reason",
                "quick",
                "--start-at",
                &start,
            ],
        )
        .out()
        .trim()
        .to_owned();
    assert_eq!(next()["event"], "request_filed");
    let v = next();
    assert_eq!(
        (v["event"].as_str(), v["data"]["id"].as_str()),
        (Some("request_expired"), Some(lapsed.as_str()))
    );

    // globex's receiver is down: the workflow goes on, and the failure is logged and audited.
    let dave = s.issue("approver", "dave", &["--customer", "globex"]);
    let theirs = file(&s, &b, "globex/app", &[]);
    assert!(
        s.cli(&dave, b.addr, &["approve", &theirs])
            .out()
            .contains("granted")
    );
    let failed = s.wait_for_audit("globex", |r| r["event"] == "webhook_failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("not delivered after 2 attempt(s)"),
        "{failed}"
    );
    assert!(
        !failed.to_string().contains("/hooks/globex"),
        "the webhook URL's path (which may hold a token) reached the trail: {failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_nothing_is_filed() {
    let s = two_customers(1, "");
    let mallory = s.technician(
        "mallory",
        &["contractors"],
        sallyport_testkit::valid_for(3600),
    );
    let b = Broker::start(&s);
    let alice = connector(&s.identity("technician"));
    let bob = connector(&s.identity("approver"));
    let send = |method: &str, path: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let filing = |fields: &str| send("POST", "/v1/requests", &format!("{{{fields}}}"));
    let ok = r#""customer":"acme","target":"db01","reason":"fix""#;
    let cases: Vec<(&tokio_rustls::TlsConnector, String, u16, &str)> = vec![
        (&alice, filing(r#""customer":"acme""#), 400, "missing field"),
        (
            &alice,
            filing(&format!(r#"{ok},"minutes":5,"x":1"#)),
            400,
            "unknown field",
        ),
        (
            &alice,
            filing(&format!(r#"{ok},"minutes":0"#)),
            400,
            "bad_minutes",
        ),
        (
            &alice,
            filing(&format!(r#"{ok},"minutes":100000"#)),
            400,
            "bad_minutes",
        ),
        (
            &alice,
            filing(r#""customer":"acme","target":"db01","reason":"  ","minutes":5"#),
            400,
            "bad_reason",
        ),
        (
            &alice,
            filing(&format!(r#"{ok},"minutes":5,"start_at":"tomorrow""#)),
            400,
            "bad_start_at",
        ),
        (
            &alice,
            filing(&format!(
                r#"{ok},"minutes":5,"start_at":"2020-01-01T00:00:00Z""#
            )),
            400,
            "already over",
        ),
        (
            &alice,
            filing(r#""customer":"nope","target":"db01","reason":"x","minutes":5"#),
            404,
            "no customer",
        ),
        (
            &alice,
            filing(r#""customer":"acme","target":"nope","reason":"x","minutes":5"#),
            404,
            "no target",
        ),
        (
            &alice,
            filing(&format!(r#"{ok},"minutes":61"#)),
            403,
            "at most 60 minutes",
        ),
        (
            &bob,
            filing(&format!(r#"{ok},"minutes":5"#)),
            403,
            "only technicians",
        ),
        (
            &bob,
            send("GET", "/v1/requests?status=bogus", ""),
            400,
            "bad_status",
        ),
        (
            &bob,
            send("GET", "/v1/requests?colour=red", ""),
            400,
            "bad_query",
        ),
        (
            &bob,
            send("POST", "/v1/requests/r-nope/approve", ""),
            404,
            "no request",
        ),
        (
            &bob,
            send("POST", "/v1/requests/r-nope/deny", r#"{"reason":""}"#),
            400,
            "bad_reason",
        ),
        (
            &alice,
            send("GET", "/v1/requests/r-nope/grant", ""),
            404,
            "no request",
        ),
        (
            &bob,
            send("DELETE", "/v1/sessions/s-nope", ""),
            404,
            "no session",
        ),
        (
            &bob,
            send("GET", "/v1/sessions?customer=globex", ""),
            403,
            "customer `acme`",
        ),
        (&bob, send("PUT", "/v1/requests", ""), 404, "no route"),
    ];
    for (who, head, status, needle) in cases {
        let a = request(b.addr, who, &head).await.unwrap();
        assert_eq!(a.status, status, "{head}\n{}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert!(v["error"]["code"].is_string(), "{}", a.body);
        assert!(a.body.contains(needle), "{needle}: {}", a.body);
    }
    // A technician outside the permitted group is refused by the customer's policy, and recorded.
    let a = request(
        b.addr,
        &connector(&mallory),
        &filing(&format!(r#"{ok},"minutes":5"#)),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    let refusal = s.wait_for_audit("acme", |r| {
        r["event"] == "request_filed" && r["actor"].as_str().unwrap().ends_with("/mallory")
    });
    assert_eq!(refusal["outcome"], "deny");
    assert!(
        refusal["actor"].as_str().unwrap().ends_with("/mallory"),
        "{refusal}"
    );

    // Nothing was filed, and no filing was recorded as done.
    let root = connector(&s.identity("admin"));
    let all = request(b.addr, &root, &send("GET", "/v1/requests", ""))
        .await
        .unwrap();
    assert_eq!(all.status, 200);
    let v: serde_json::Value = serde_json::from_str(&all.body).unwrap();
    assert_eq!(v["requests"].as_array().unwrap().len(), 0, "{v}");
    assert!(
        s.audit("acme")
            .iter()
            .all(|r| r["event"] != "request_filed" || r["outcome"] == "deny")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filings_and_api_calls_are_rate_limited_per_identity() {
    let s = two_customers(
        1,
        "request_filings_per_minute = 1\nrequest_filing_burst = 2\napi_calls_per_minute = 1\napi_call_burst = 4\n",
    );
    let b = Broker::start(&s);
    let alice = connector(&s.identity("technician"));
    let body = r#"{"customer":"acme","target":"db01","reason":"fix","minutes":5}"#;
    let filing = format!(
        "POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..2 {
        let a = request(b.addr, &alice, &filing).await.unwrap();
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let a = request(b.addr, &alice, &filing).await.unwrap();
    assert_eq!(a.status, 429, "{}", a.body);
    let wait: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(a.body.contains("rate_limited"), "{}", a.body);

    // API calls are counted per identity: bob runs out, the admin does not.
    let bob = connector(&s.identity("approver"));
    let list = "GET /v1/requests HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..4 {
        assert_eq!(request(b.addr, &bob, list).await.unwrap().status, 200);
    }
    let a = request(b.addr, &bob, list).await.unwrap();
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.header("retry-after").is_some());
    let root = connector(&s.identity("admin"));
    let a = request(b.addr, &root, list).await.unwrap();
    assert_eq!(a.status, 200);
    // The refused filing stored nothing.
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["requests"].as_array().unwrap().len(), 2, "{v}");
}

/// A raw `/v1` call: `METHOD PATH` with a JSON body (its length in bytes).
fn call(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The records of `chain` after the first `from`.
fn since(s: &Setup, chain: &str, from: usize) -> Vec<serde_json::Value> {
    s.audit(chain).into_iter().skip(from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_api_calls_are_on_both_chains_and_answered_as_before() {
    let s = two_customers(1, "");
    let b = Broker::start(&s);
    let read = |p: &Path| connector(&sallyport_certs::identity_dir::IdentityDir::read(p).unwrap());
    let alice = connector(&s.identity("technician"));
    let bob = connector(&s.identity("approver"));
    let gus = read(&s.issue("approver", "gus", &["--customer", "globex"]));
    let carol = read(&s.issue("auditor", "carol", &["--customer", "acme"]));
    let tom = connector(&s.technician("tom", &["support"], sallyport_testkit::valid_for(3600)));
    const GUS: &str = "spiffe://sallyport.local/approver/globex/gus";
    const ALICE: &str = "spiffe://sallyport.local/technician/northwind/alice";

    let body = r#"{"customer":"acme","target":"db01","minutes":5,"reason":"fix"}"#;
    let filed = request(b.addr, &alice, &call("POST", "/v1/requests", body))
        .await
        .unwrap();
    assert_eq!(filed.status, 201, "{}", filed.body);
    let id = serde_json::from_str::<serde_json::Value>(&filed.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let approve = |id: &str| call("POST", &format!("/v1/requests/{id}/approve"), "");

    // An approver of globex approving acme's request: the 404 anyone gets for a request nobody
    // filed, word for word.
    let (acme0, globex0) = (s.audit("acme").len(), s.audit("globex").len());
    let theirs = request(b.addr, &gus, &approve(&id)).await.unwrap();
    let nobodys = "r-00000000000000000000000000000000";
    let acme1 = s.audit("acme").len();
    let missing = request(b.addr, &gus, &approve(nobodys)).await.unwrap();
    assert_eq!((theirs.status, missing.status), (404, 404));
    assert_eq!(theirs.body.replace(&id, nobodys), missing.body);
    // On globex's chain, both exactly as gus was told: nothing says one of them exists.
    let told = since(&s, "globex", globex0);
    assert_eq!(told.len(), 2, "{told:#?}");
    for (r, asked) in told.iter().zip([id.as_str(), nobodys]) {
        assert_eq!(r["event"], "access_refused");
        assert_eq!(r["outcome"], "deny");
        assert_eq!(r["actor"], GUS);
        assert_eq!(r["request_id"], asked);
        assert_eq!(
            r["reason"],
            format!("approve request `{asked}`: refused: no request `{asked}`")
        );
        assert!(r.get("subject").is_none() && r["target"].is_null(), "{r}");
    }
    // On acme's chain, only the attempt on its own request, with who tried and what it was.
    let seen = since(&s, "acme", acme0);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(s.audit("acme").len(), acme1);
    let r = &seen[0];
    assert_eq!(
        (
            r["event"].as_str(),
            r["actor"].as_str(),
            r["request_id"].as_str()
        ),
        (Some("access_refused"), Some(GUS), Some(id.as_str()))
    );
    assert_eq!(
        (r["subject"].as_str(), r["target"].as_str()),
        (Some(ALICE), Some("db01"))
    );
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.contains("approver of customer `globex`") && why.contains("no request"),
        "{why}"
    );

    // A technician approving (her own request): 403 as before, on `_broker` and on acme's chain.
    let (acme0, broker0) = (s.audit("acme").len(), s.audit("_broker").len());
    let own = request(b.addr, &alice, &approve(&id)).await.unwrap();
    assert_eq!(own.status, 403, "{}", own.body);
    assert!(
        own.body
            .contains("only the customer's approvers approve requests")
    );
    let told = since(&s, "_broker", broker0);
    assert_eq!((told.len(), told[0]["actor"].as_str()), (1, Some(ALICE)));
    let seen = since(&s, "acme", acme0);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert!(seen[0]["reason"].as_str().unwrap().contains("technician"));

    // Another technician reading alice's request: 404, on `_broker` and acme's chain.
    let (acme0, broker0) = (s.audit("acme").len(), s.audit("_broker").len());
    let peek = request(
        b.addr,
        &tom,
        &call("GET", &format!("/v1/requests/{id}"), ""),
    )
    .await
    .unwrap();
    assert_eq!(peek.status, 404, "{}", peek.body);
    assert_eq!(since(&s, "_broker", broker0).len(), 1);
    assert_eq!(since(&s, "acme", acme0)[0]["event"], "access_refused");

    // The request was approved by acme's approver; acme's auditor trying to revoke its grant gets
    // 403, recorded once on acme's chain, with the grant and whose it is.
    let ok = request(b.addr, &bob, &approve(&id)).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let gid = serde_json::from_str::<serde_json::Value>(&ok.body).unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let acme0 = s.audit("acme").len();
    let revoke = call(
        "POST",
        &format!("/v1/grants/{gid}/revoke"),
        r#"{"reason":"curious"}"#,
    );
    let no = request(b.addr, &carol, &revoke).await.unwrap();
    assert_eq!(no.status, 403, "{}", no.body);
    assert!(
        no.body.contains("auditors cannot revoke grants"),
        "{}",
        no.body
    );
    let seen = since(&s, "acme", acme0);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(
        (seen[0]["grant_id"].as_str(), seen[0]["subject"].as_str()),
        (Some(gid.as_str()), Some(ALICE))
    );
    // And gus revoking it: 404, on both chains.
    let (acme0, globex0) = (s.audit("acme").len(), s.audit("globex").len());
    let no = request(b.addr, &gus, &revoke).await.unwrap();
    assert_eq!(no.status, 404, "{}", no.body);
    assert_eq!(since(&s, "globex", globex0).len(), 1);
    assert_eq!(since(&s, "acme", acme0).len(), 1);

    // An approver of globex asking for acme's trail or sessions: 403, on both chains.
    for path in ["/v1/audit?customer=acme", "/v1/sessions?customer=acme"] {
        let (acme0, globex0) = (s.audit("acme").len(), s.audit("globex").len());
        let no = request(b.addr, &gus, &call("GET", path, "")).await.unwrap();
        assert_eq!(no.status, 403, "{path}: {}", no.body);
        assert_eq!(since(&s, "globex", globex0).len(), 1, "{path}");
        let seen = since(&s, "acme", acme0);
        assert_eq!(
            (seen.len(), seen[0]["actor"].as_str()),
            (1, Some(GUS)),
            "{path}"
        );
    }

    // None of it changed anything: one approval, the grant not revoked; the trail verifies.
    let now = request(
        b.addr,
        &bob,
        &call("GET", &format!("/v1/requests/{id}"), ""),
    )
    .await
    .unwrap();
    let now: serde_json::Value = serde_json::from_str(&now.body).unwrap();
    assert_eq!(now["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(now["grant"]["revoked"], false);
    s.assert_trail_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_spoofs_a_reader_and_bodies_that_are_not_objects_are_refused() {
    let s = two_customers(1, "");
    let b = Broker::start(&s);
    let alice = connector(&s.identity("technician"));
    let bob = connector(&s.identity("approver"));
    let body = r#"{"customer":"acme","target":"db01","minutes":5,"reason":"fix"}"#;
    let filed = request(b.addr, &alice, &call("POST", "/v1/requests", body))
        .await
        .unwrap();
    assert_eq!(filed.status, 201, "{}", filed.body);
    let id = serde_json::from_str::<serde_json::Value>(&filed.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = (s.audit("acme"), s.audit("_broker"));
    let filing = |extra: &str| {
        call(
            "POST",
            "/v1/requests",
            &format!(r#"{{"customer":"acme","target":"db01","minutes":5,{extra}}}"#),
        )
    };
    let approve = format!("/v1/requests/{id}/approve");
    let deny = format!("/v1/requests/{id}/deny");
    let cases: Vec<(&tokio_rustls::TlsConnector, String, &str, &str)> = vec![
        // Right-to-left override: "fix \u{202E}evol" reads as "fix love".
        (
            &alice,
            filing("\"reason\":\"fix \u{202E}evol\""),
            "bad_reason",
            "U+202E",
        ),
        (
            &alice,
            filing("\"reason\":\"fix\u{2066}x\""),
            "bad_reason",
            "U+2066",
        ),
        (
            &alice,
            filing("\"reason\":\"fix\",\"ticket\":\"CHG-1\u{200F}\""),
            "bad_ticket",
            "U+200F",
        ),
        (
            &alice,
            filing("\"reason\":\"fix\",\"ticket\":\"CHG-1\u{061C}\""),
            "bad_ticket",
            "U+061C",
        ),
        (
            &bob,
            call(
                "POST",
                &approve,
                "{\"comment\":\"ok\u{2028}approved by security\"}",
            ),
            "bad_comment",
            "U+2028",
        ),
        (
            &bob,
            call("POST", &deny, "{\"reason\":\"no\u{2029}yes\"}"),
            "bad_reason",
            "U+2029",
        ),
        (
            &bob,
            call("POST", &deny, "{\"reason\":\"\u{202A}no\u{202C}\"}"),
            "bad_reason",
            "U+202A",
        ),
        // Bodies that are not a JSON object, though serde could read the fields from an array.
        (
            &alice,
            call("POST", "/v1/requests", r#"["acme","db01",5,"fix"]"#),
            "bad_json",
            "must be a JSON object",
        ),
        (
            &bob,
            call("POST", &deny, r#""no""#),
            "bad_json",
            "must be a JSON object",
        ),
        (
            &bob,
            call("POST", &approve, "null"),
            "bad_json",
            "must be a JSON object",
        ),
        (
            &bob,
            call("POST", &approve, "[]"),
            "bad_json",
            "must be a JSON object",
        ),
        (
            &bob,
            call("POST", &deny, "42"),
            "bad_json",
            "must be a JSON object",
        ),
    ];
    for (who, head, code, needle) in cases {
        let a = request(b.addr, who, &head).await.unwrap();
        assert_eq!(a.status, 400, "{head}\n{}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["error"]["code"], code, "{head}\n{}", a.body);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{head}\n{message}");
        if code != "bad_json" {
            let field = code.trim_start_matches("bad_");
            assert!(message.contains(&format!("`{field}`")), "{message}");
        }
    }
    // Nothing was filed, approved or denied, and nothing was recorded.
    assert_eq!((s.audit("acme"), s.audit("_broker")), before);
    let all = request(b.addr, &bob, &call("GET", "/v1/requests", ""))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&all.body).unwrap();
    let list = v["requests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(
        (
            list[0]["status"].as_str(),
            list[0]["approvals"].as_array().unwrap().len()
        ),
        (Some("pending"), 0)
    );
}
