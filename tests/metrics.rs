//! Health, readiness and metrics an operator can scrape, end to end: the real broker with its admin
//! listener on port 0 (plain HTTP, no certificate), driven through a tunnel with bytes, refusals, a
//! request filed and approved, a lock, failed handshakes, a dead webhook and a dead SIEM, then
//! scraped; every documented family is there and the counts moved where the test drove them. The
//! mTLS `/metrics` answers admins from the same registry and refuses others; the admin listener
//! serves nothing else (404), only GET (405), and a bounded head; `/readyz` and `sallyport health`
//! name the audit trail when it cannot be written (a real file-size limit, as in tests/faults.rs).
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::net::SocketAddr;
use std::process::Command;

use sallyport_audit::{AuditEvent, EventKind, GENESIS, Outcome, render};
use sallyport_testkit::{
    Broker, CustomerSpec, Setup, anonymous_connector, closed_port, connect, connector, echo_server,
    eventually, http, request, tls_on, valid_for,
};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// Every family README.md documents, as it appears in `# TYPE` lines.
const FAMILIES: [&str; 20] = [
    "sallyport_tunnels_opened",
    "sallyport_tunnels_refused",
    "sallyport_tunnels_live",
    "sallyport_tunnel_bytes",
    "sallyport_handshake_failures",
    "sallyport_decision_duration_seconds",
    "sallyport_audit_commit_duration_seconds",
    "sallyport_audit_failures",
    "sallyport_requests",
    "sallyport_request_approval_wait_seconds",
    "sallyport_webhook_failures",
    "sallyport_webhook_queued",
    "sallyport_siem_failures",
    "sallyport_siem_lag_seconds",
    "sallyport_locks_active",
    "sallyport_rate_limited",
    "sallyport_live_sessions",
    "sallyport_handshakes_in_progress",
    "sallyport_handshake_slots_refused",
    "sallyport_config_reloads",
];

/// Technicians of group `support` may request and connect; acme's approvers approve (one needed).
const POLICY: &str = r#"@id("support")
@approvals("1")
@max_minutes("60")
permit (
  principal in Sallyport::Group::"support",
  action in [Sallyport::Action::"request", Sallyport::Action::"connect"],
  resource in Sallyport::Customer::"acme"
);
@id("approvers")
permit (
  principal is Sallyport::Approver in Sallyport::Customer::"acme",
  action == Sallyport::Action::"approve",
  resource in Sallyport::Customer::"acme"
);
"#;

/// The value of the sample `series` (name and labels as rendered), if it is there.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

fn scrape(admin: SocketAddr) -> String {
    let (status, headers, body) = http(admin, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    let ctype = headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        ctype,
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    body
}

/// Scrapes until `series` is at least `min` (for what the broker counts after answering: a webhook
/// or SIEM delivery giving up, a refused handshake); returns that scrape.
fn scrape_until(admin: SocketAddr, series: &str, min: f64) -> String {
    eventually(10, series, || {
        let text = scrape(admin);
        (sample(&text, series).unwrap_or(0.0) >= min).then_some(text)
    })
}

fn health(admin: SocketAddr) -> std::process::Output {
    Command::new(BIN)
        .args(["health", "--admin", &admin.to_string()])
        .output()
        .expect("run sallyport health")
}

/// `acme` with target `db01` (an echo server), a webhook and a syslog SIEM that nobody answers, the
/// admin listener on port 0, and a budget of one failed handshake per address.
fn setup() -> (Setup, u16) {
    let s = Setup::init(BIN);
    let echo = echo_server();
    s.write_config(
        &[CustomerSpec {
            id: "acme",
            timezone: "UTC",
            policy: POLICY,
            targets: vec![("db01", echo.to_string(), vec![])],
        }],
        "unauthenticated_failure_burst = 1\nunauthenticated_failures_per_minute = 1\n",
    );
    std::fs::write(
        s.root.join("acme-webhook.secret"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .expect("write the webhook secret");
    s.append_config(&format!(
        "[customers.webhook]\nurl = \"http://{}/hooks/acme\"\nsecret_file = \"acme-webhook.secret\"\nmax_attempts = 1\nfirst_backoff_ms = 10\n\n[[customers.siem]]\nkind = \"syslog\"\naddress = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        closed_port(),
        closed_port()
    ));
    (s, echo.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_scraped_without_a_certificate_and_counts_what_happened() {
    let (s, port) = setup();
    let b = Broker::start(&s);
    let admin = b.admin.expect("the broker printed its admin address");
    assert!(admin.ip().is_loopback() && admin.port() != 0, "{admin}");

    let (status, _, body) = http(admin, "GET", "/healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _, body) = http(admin, "GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["status"], "ready");
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            assert_eq!(c["ok"], true, "{c}");
            c["name"].as_str().expect("a name")
        })
        .collect();
    assert_eq!(names, ["audit", "store", "policies"]);
    let ok = health(admin);
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout)
            .starts_with("ready (audit: ok; store: ok; policies: ok)")
    );

    // A grant minted with the broker's key (break-glass would announce it to the dead webhook).
    let now = std::time::SystemTime::now();
    let token = s.mint(
        &s.identity("technician"),
        "acme",
        "db01",
        port,
        now,
        now + std::time::Duration::from_secs(1800),
    );
    // A request filed and approved (the filing's webhook goes nowhere).
    let tech = s.demo("technician");
    let filed = s.cli(
        &tech,
        b.addr,
        &[
            "request",
            "acme/db01",
            "--minutes",
            "30",
            "--reason",
            "patch the database",
        ],
    );
    let id = filed.out().trim().to_owned();
    s.cli(&s.demo("approver"), b.addr, &["approve", &id]).out();

    // A tunnel with bytes both ways.
    let alice = connector(&s.identity("technician"));
    let authority = format!("db01.acme:{port}");
    let mut tunnel = connect(b.addr, &alice, &authority, Some(&token))
        .await
        .expect("CONNECT");
    assert_eq!(tunnel.status, 200, "{}", tunnel.body);
    let session = tunnel
        .header("sallyport-session")
        .expect("session")
        .to_owned();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tunnel
            .stream
            .write_all(b"twelve bytes")
            .await
            .expect("send");
        let mut back = [0u8; 12];
        tunnel.stream.read_exact(&mut back).await.expect("echo");
        tunnel.stream.shutdown().await.expect("close");
    }
    let closed = s.wait_for_audit("acme", |r| {
        r["event"] == "tunnel_close" && r["session_id"] == session.as_str()
    });
    assert_eq!(closed["bytes_up"], 12);

    // Refusals: no grant (names no customer), an unknown target of acme, a locked identity.
    let none = connect(b.addr, &alice, &authority, None)
        .await
        .expect("CONNECT");
    assert_eq!(none.status, 407);
    let unknown = connect(b.addr, &alice, "nope.acme:1", Some(&token))
        .await
        .expect("CONNECT");
    assert_eq!(unknown.status, 404);
    let mallory = s.technician("mallory", &["support"], valid_for(3600));
    let locked = s.cli(
        &s.demo("admin"),
        b.addr,
        &[
            "lock",
            "--spiffe-id",
            "spiffe://sallyport.local/technician/northwind/mallory",
            "--reason",
            "left the company",
        ],
    );
    locked.out();
    let refused = connect(b.addr, &connector(&mallory), &authority, Some(&token))
        .await
        .expect("CONNECT");
    assert_eq!(refused.status, 403, "{}", refused.body);

    // Two handshakes without a certificate from one address: the second is past its budget.
    let anon = anonymous_connector(&s.identity("technician").ca_pem);
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(b.addr).await.expect("dial");
        if let Ok(mut tls) = tls_on(tcp, &anon).await {
            use tokio::io::AsyncReadExt;
            let _ = tls.read(&mut [0u8; 1]).await;
        }
    }

    // What is counted after the answer (a refused handshake, a delivery giving up) is waited for;
    // counters only rise, so one scrape after all three has every count.
    for series in [
        "sallyport_rate_limited_total{limiter=\"unauthenticated_failures\"}",
        "sallyport_webhook_failures_total{customer=\"acme\"}",
        "sallyport_siem_failures_total{customer=\"acme\",sink=\"0\"}",
    ] {
        scrape_until(admin, series, 1.0);
    }
    let text = scrape(admin);
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} is missing:\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    for (series, want) in [
        ("sallyport_tunnels_opened_total{customer=\"acme\"}", 1.0),
        ("sallyport_tunnels_live{customer=\"acme\"}", 0.0),
        (
            "sallyport_tunnel_bytes_total{customer=\"acme\",direction=\"up\"}",
            12.0,
        ),
        (
            "sallyport_tunnel_bytes_total{customer=\"acme\",direction=\"down\"}",
            12.0,
        ),
        (
            "sallyport_tunnels_refused_total{customer=\"_none\",reason=\"missing_grant\"}",
            1.0,
        ),
        (
            "sallyport_tunnels_refused_total{customer=\"acme\",reason=\"unknown_target\"}",
            1.0,
        ),
        (
            "sallyport_tunnels_refused_total{customer=\"acme\",reason=\"locked\"}",
            1.0,
        ),
        (
            "sallyport_tunnels_refused_total{customer=\"acme\",reason=\"policy_denied\"}",
            0.0,
        ),
        (
            "sallyport_requests{customer=\"acme\",state=\"approved\"}",
            1.0,
        ),
        (
            "sallyport_requests{customer=\"acme\",state=\"pending\"}",
            0.0,
        ),
        (
            "sallyport_request_approval_wait_seconds_count{customer=\"acme\"}",
            1.0,
        ),
        ("sallyport_locks_active", 1.0),
        ("sallyport_live_sessions", 0.0),
        ("sallyport_audit_failures_total", 0.0),
        ("sallyport_handshake_slots_refused_total", 0.0),
        ("sallyport_webhook_queued{customer=\"acme\"}", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series}:\n{text}");
    }
    for (series, at_least) in [
        // The tunnel, the missing grant and the unknown target were decided.
        ("sallyport_decision_duration_seconds_count", 3.0),
        ("sallyport_audit_commit_duration_seconds_count", 1.0),
        (
            "sallyport_handshake_failures_total{kind=\"no_certificate\"}",
            2.0,
        ),
        (
            "sallyport_rate_limited_total{limiter=\"unauthenticated_failures\"}",
            1.0,
        ),
        ("sallyport_webhook_failures_total{customer=\"acme\"}", 1.0),
        (
            "sallyport_siem_failures_total{customer=\"acme\",sink=\"0\"}",
            1.0,
        ),
        (
            "sallyport_siem_lag_seconds{customer=\"acme\",sink=\"0\"}",
            0.0,
        ),
    ] {
        let got = sample(&text, series).unwrap_or(-1.0);
        assert!(got >= at_least, "{series} = {got}:\n{text}");
    }
    // Labels are configured customers and closed sets: no technician's name, no client's text.
    for never in ["alice", "mallory", "northwind", "nope"] {
        assert!(!text.contains(never), "`{never}` became a label:\n{text}");
    }

    // The mTLS /metrics answers admins from the same registry, and refuses everyone else.
    let root = connector(&s.identity("admin"));
    let m = request(b.addr, &root, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("GET /metrics");
    assert_eq!(m.status, 200);
    assert_eq!(
        sample(&m.body, "sallyport_tunnels_opened_total{customer=\"acme\"}"),
        Some(1.0),
        "{}",
        m.body
    );
    let tech_m = request(b.addr, &alice, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("GET /metrics");
    assert_eq!(tech_m.status, 403, "{}", tech_m.body);
    let h = request(b.addr, &alice, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("GET /healthz");
    assert_eq!(h.status, 200);

    // Nothing else on the admin listener, and only GET.
    for path in ["/", "/v1/requests", "/metrics/", "/healthz?x=1/../v1"] {
        let (status, _, body) = http(admin, "GET", path);
        if path.starts_with("/healthz?") {
            assert_eq!(status, 200, "a query is not a path: {body}");
        } else {
            assert_eq!(status, 404, "{path}: {body}");
        }
    }
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let (status, headers, _) = http(admin, method, "/metrics");
        assert_eq!(status, 405, "{method}");
        assert!(
            headers.contains(&("allow".into(), "GET".into())),
            "{headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_bounds_what_a_client_sends() {
    let (s, _) = setup();
    let mut cmd = Command::new(BIN);
    // --admin-listen overrides admin.listen.
    cmd.args(["serve", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(s.config());
    let b = Broker::spawn(cmd);
    let admin = b.admin.expect("admin address printed");
    // A head past 8 KiB is refused, not buffered.
    let mut conn = std::net::TcpStream::connect(admin).expect("dial");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let big = "a".repeat(16 * 1024);
    use std::io::{Read, Write};
    let _ = write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // A client that sends nothing is dropped after the head timeout, not held.
    let mut idle = std::net::TcpStream::connect(admin).expect("dial");
    idle.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let started = std::time::Instant::now();
    let n = idle.read(&mut buf).unwrap_or(0);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "held {:?} ({n} bytes)",
        started.elapsed()
    );
    // It still serves.
    assert_eq!(http(admin, "GET", "/healthz").0, 200);
}

fn prlimit(pid: u32, fsize: &str) {
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={fsize}")])
        .status()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_audit_trail_when_it_cannot_be_written() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    s.append_config("[admin]\nlisten = \"127.0.0.1:0\"\n");
    // A long chain, so the audit file is the broker's largest and the first to hit the limit.
    let chain = s.segment("acme");
    let mut text = String::new();
    let mut prev = GENESIS.to_owned();
    for seq in 1..=4000 {
        let mut e = AuditEvent::new(EventKind::Decision, Outcome::Deny, "earlier traffic");
        e.customer = Some("acme".parse().expect("id"));
        let (line, hash) = render(&e, seq, "2026-01-01T00:00:00.000000Z", &prev);
        text.push_str(&line);
        prev = hash;
    }
    std::fs::write(&chain, text).expect("write the chain");
    let (token, _) = s.break_glass(30);
    let mut b = Broker::start(&s);
    let admin = b.admin.expect("admin address printed");
    let alice = connector(&s.identity("technician"));
    let authority = format!("db01.acme:{port}");
    assert!(health(admin).status.success());

    let size = std::fs::metadata(&chain).expect("chain").len();
    prlimit(b.child.id(), &format!("{}:unlimited", size + 16));
    let refused = connect(b.addr, &alice, &authority, Some(&token))
        .await
        .expect("CONNECT");
    assert_eq!(refused.status, 503, "{}", refused.body);
    let (status, _, body) = http(admin, "GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "not ready");
    assert_eq!(v["failing"], serde_json::json!(["audit"]), "{body}");
    let audit = &v["checks"][0];
    assert_eq!(
        (audit["name"].as_str(), audit["ok"].as_bool()),
        (Some("audit"), Some(false))
    );
    assert!(
        audit["error"]
            .as_str()
            .is_some_and(|e| e.contains("audit write failed")),
        "{body}"
    );
    let not_ready = health(admin);
    assert_eq!(not_ready.status.code(), Some(1), "{not_ready:?}");
    let why = String::from_utf8_lossy(&not_ready.stderr);
    assert!(
        why.contains("not ready: audit: the last audit write failed"),
        "{why}"
    );
    let m = scrape(admin);
    assert!(
        sample(&m, "sallyport_audit_failures_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "sallyport_tunnels_refused_total{customer=\"acme\",reason=\"unavailable\"}"
        ),
        Some(1.0),
        "{m}"
    );

    // Space again: the next record goes through and the broker is ready again by itself.
    prlimit(b.child.id(), "unlimited:unlimited");
    let back = connect(b.addr, &alice, &authority, Some(&token))
        .await
        .expect("CONNECT");
    assert_eq!(back.status, 200, "{}", back.body);
    drop(back);
    let (status, _, body) = http(admin, "GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(health(admin).status.success());
    assert!(b.terminate().success());
    s.assert_trail_verifies();
}

#[test]
fn health_says_why_when_no_admin_listener_answers() {
    let dead = closed_port();
    let out = health(dead);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains(&format!("cannot reach the admin listener at {dead}")),
        "{why}"
    );
    let bad = Command::new(BIN)
        .args(["health"])
        .output()
        .expect("run sallyport health");
    assert_eq!(bad.status.code(), Some(2), "--admin is required: {bad:?}");
}

#[test]
fn a_bad_admin_listen_stops_serve_with_exit_64_naming_the_key() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    s.append_config("[admin]\nlisten = \"localhost:9090\"\n");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`admin.listen`: `localhost:9090` is not an address"),
        "{err}"
    );
}
