//! End-to-end tests of a technician's day with the real binary: what may be requested (`targets`),
//! waiting for a decision (`connect --wait`), a grant not valid yet and one about to end, one SOCKS5
//! port for every granted target used by real curl (and a refused target given a SOCKS error and a
//! reason in words), one tunnel over stdin/stdout, a revocation said in words mid-session,
//! withdrawing a request (`cancel`), the requests and sessions columns, `audit export | head`, and
//! `serve --demo-port`. Every wait is on a line the program prints or a record it writes.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use sallyport_testkit::{
    Broker, CustomerSpec, Setup, echo_server, support_with_approvals, webhook_receiver,
};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// Technicians of group `support` may request and connect (up to 60 minutes, one approval);
/// the customer's approvers may approve.
fn policy(customer: &str) -> String {
    support_with_approvals(customer, 1)
}

/// A policy that lets nobody request anything.
const NOBODY: &str = r#"@id("oncall-only")
permit (
  principal in Sallyport::Group::"oncall",
  action in [Sallyport::Action::"request", Sallyport::Action::"connect"],
  resource
);
"#;

/// A loopback HTTP server answering every request with `body`; runs until the test ends.
fn http_server(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// A loopback server that greets each connection with an SSH banner, reads a line and hangs up.
fn ssh_banner_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.write_all(b"SSH-2.0-sallyport-test\r\n");
                let _ = BufReader::new(conn).read_line(&mut String::new());
            });
        }
    });
    addr
}

/// `globex` (target `app`, whose policy lets nobody of group `support` in) and `acme` (targets
/// `web`, an HTTP page, `db01`, an echo server, `vault`, which acme's policy lets technicians
/// request but never connect to, and `bastion`, an SSH banner).
fn world() -> (Setup, u16) {
    let s = Setup::init(BIN);
    let web = http_server("hello from acme/web\n");
    // A vault may be asked for, but nobody connects to it.
    let acme = policy("acme")
        + "@id(\"no-vault\")\nforbid (principal, action == Sallyport::Action::\"connect\", resource)\nwhen { resource.tags.contains(\"vault\") };\n";
    // acme last, so a test can append its webhook table.
    s.write_config(
        &[
            CustomerSpec {
                id: "globex",
                timezone: "UTC",
                policy: NOBODY,
                targets: vec![("app", echo_server().to_string(), vec![])],
            },
            CustomerSpec {
                id: "acme",
                timezone: "UTC",
                policy: &acme,
                targets: vec![
                    ("web", web.to_string(), vec!["http"]),
                    ("db01", echo_server().to_string(), vec!["prod"]),
                    ("vault", echo_server().to_string(), vec!["vault"]),
                    ("bastion", ssh_banner_server().to_string(), vec!["ssh"]),
                ],
            },
        ],
        "",
    );
    (s, web.port())
}

/// A running `sallyport connect`: its output lines, as they come; killed on drop.
struct Running {
    child: Child,
    lines: Receiver<(bool, String)>,
    /// Every line so far: on stderr, the text, and whether [`Running::line`] returned it.
    seen: Vec<(bool, String, bool)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Waits (up to 30 s) for a line (`stderr`: on stderr, else on stdout) for which `pred` holds,
    /// among those not returned before, in the order printed.
    fn line(&mut self, stderr: bool, pred: impl Fn(&str) -> bool) -> String {
        if let Some(i) = self
            .seen
            .iter()
            .position(|(err, l, taken)| !taken && *err == stderr && pred(l))
        {
            self.seen[i].2 = true;
            return self.seen[i].1.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((err, l)) => {
                    let hit = err == stderr && pred(&l);
                    self.seen.push((err, l.clone(), hit));
                    if hit {
                        return l;
                    }
                }
                Err(_) => panic!("no such line; it printed {:#?}", self.seen),
            }
        }
    }

    /// The local address from a `... on ADDR` line on stdout.
    fn local(&mut self, prefix: &str) -> SocketAddr {
        let l = self.line(false, |l| l.starts_with(prefix));
        l[prefix.len()..].trim().parse().unwrap()
    }

    /// Waits for the process to end; returns whether it succeeded and every stderr line.
    fn finish(mut self) -> (bool, String) {
        let status = self.child.wait().unwrap();
        let mut err: String = self
            .seen
            .iter()
            .filter(|(e, _, _)| *e)
            .map(|(_, l, _)| format!("{l}\n"))
            .collect();
        while let Ok((e, l)) = self.lines.recv_timeout(Duration::from_secs(10)) {
            if e {
                err.push_str(&l);
                err.push('\n');
            }
        }
        (status.success(), err)
    }
}

/// Starts `sallyport ARGS --identity I --broker B`, reading both its outputs line by line.
fn run(identity: &Path, broker: SocketAddr, args: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--identity")
        .arg(identity)
        .args(["--broker", &broker.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = channel();
    for (err, pipe) in [
        (
            false,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        (true, Box::new(child.stderr.take().unwrap())),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send((err, l));
            }
        });
    }
    Running {
        child,
        lines: rx,
        seen: Vec::new(),
    }
}

/// Files a request as the demo technician; returns its id.
fn file(s: &Setup, b: &Broker, target: &str, minutes: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "request",
        target,
        "--minutes",
        minutes,
        "--reason",
        "look at the logs",
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

fn approve(s: &Setup, b: &Broker, id: &str) -> String {
    let out = s.cli(&s.demo("approver"), b.addr, &["approve", id]);
    let text = out.out();
    text.split("(grant ")
        .nth(1)
        .unwrap()
        .trim_end_matches([')', '\n'])
        .to_owned()
}

/// Sends `msg` over `conn` and reads the echo.
fn ping(conn: &mut TcpStream, msg: &[u8]) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn socks_reaches_every_granted_target_with_real_curl_and_refuses_the_rest_in_words() {
    let (s, web_port) = world();
    let b = Broker::start(&s);
    let alice = s.demo("technician");
    let id = file(&s, &b, "acme/web", "30", &[]);
    approve(&s, &b, &id);

    let mut socks = run(&alice, b.addr, &["connect", "--socks", "127.0.0.1:0"]);
    let proxy = socks.local("sallyport: SOCKS5 on ").to_string();
    let url = format!("http://web.acme:{web_port}/");
    let got = curl(&["--socks5-hostname", &proxy, &url]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "hello from acme/web\n"
    );
    // The grant is kept: a second request needs no second fetch, and works the same.
    let again = curl(&["--socks5-hostname", &proxy, &url]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "hello from acme/web\n"
    );
    s.wait_for_audit("acme", |r| r["event"] == "tunnel_open");
    assert_eq!(
        s.audit("acme")
            .iter()
            .filter(|r| r["event"] == "grant_minted")
            .count(),
        1,
        "one grant fetched for both connections"
    );

    // A target with no grant: the SOCKS reply is 0x02 (not allowed by ruleset), and why is said.
    let refused = curl(&["--socks5-hostname", &proxy, "http://db01.acme:9/"]);
    assert!(!refused.status.success());
    let why = socks.line(true, |l| l.contains("refused acme/db01"));
    assert!(
        why.contains("SOCKS reply 0x02") && why.contains("no approved request for acme/db01"),
        "{why}"
    );
    // The right target on the wrong port: refused by the broker, in its words.
    let refused = curl(&["--socks5-hostname", &proxy, "http://web.acme:1/"]);
    assert!(!refused.status.success());
    let why = socks.line(true, |l| l.contains("refused acme/web"));
    assert!(
        why.contains("0x02") && why.contains(&format!("reached on port {web_port}")),
        "{why}"
    );
    assert!(!why.contains("403"), "no raw status: {why}");
    // An address instead of a name: 0x08, and the reason.
    let refused = curl(&["--socks5", &proxy, "http://127.0.0.1:80/"]);
    assert!(!refused.status.success());
    let why = socks.line(true, |l| l.contains("SOCKS request refused"));
    assert!(why.contains("never addressed by IP"), "{why}");
}

#[test]
fn stdio_carries_one_tunnel_and_nothing_else() {
    let (s, _) = world();
    let b = Broker::start(&s);
    let id = file(&s, &b, "acme/db01", "30", &[]);
    approve(&s, &b, &id);
    let mut child = Command::new(BIN)
        .args(["connect", "acme/db01", "--stdio", "--identity"])
        .arg(s.demo("technician"))
        .args(["--broker", &b.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"SSH-2.0-test\r\n").unwrap();
    let mut back = [0u8; 14];
    stdout.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"SSH-2.0-test\r\n");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty() && out.stdout.is_empty(),
        "only tunnel bytes on stdout"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_for_audit("acme", |r| {
        r["event"] == "tunnel_close" && r["bytes_up"] == 14 && r["bytes_down"] == 14
    });

    // Real ssh through `--stdio` as its ProxyCommand: the bastion's banner reaches ssh through the
    // tunnel (the bastion then hangs up, so ssh fails after reading it).
    let proxy = format!(
        "{BIN} connect acme/bastion --stdio --identity {} --broker {}",
        s.demo("technician").display(),
        b.addr
    );
    let id = file(&s, &b, "acme/bastion", "30", &[]);
    approve(&s, &b, &id);
    let ssh = Command::new("timeout")
        .args([
            "60",
            "ssh",
            "-v",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
        ])
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg("bastion.acme")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ssh.stderr);
    assert!(
        said.contains("Remote protocol version 2.0, remote software version sallyport-test"),
        "{said}"
    );

    // A policy's refusal is said as the customer's policy's, without a status.
    let id = file(&s, &b, "acme/vault", "30", &[]);
    approve(&s, &b, &id);
    let denied = s.cli(
        &s.demo("technician"),
        b.addr,
        &["connect", "acme/vault", "--stdio"],
    );
    assert_eq!(
        denied.err().trim(),
        "sallyport: the broker refused the tunnel to acme/vault: denied by acme's policy: forbidden by policy `no-vault`"
    );
    assert!(denied.stdout.is_empty());
}

#[test]
fn a_revocation_mid_session_is_said_with_who_and_why() {
    let (s, _) = world();
    let b = Broker::start(&s);
    let id = file(&s, &b, "acme/db01", "30", &["--ticket", "CHG-9"]);
    let gid = approve(&s, &b, &id);
    let mut fwd = run(
        &s.demo("technician"),
        b.addr,
        &["connect", "acme/db01", "--listen", "127.0.0.1:0"],
    );
    let local = fwd.local("sallyport: listening on ");
    let mut conn = TcpStream::connect(local).unwrap();
    ping(&mut conn, b"ping");

    // The requests and sessions tables show ticket, grant and its state; grant and break-glass.
    let bob = s.demo("approver");
    let table = s.cli(&bob, b.addr, &["requests"]).out().to_owned();
    let head = table.lines().next().unwrap();
    assert!(
        head.contains("TICKET") && head.contains("GRANT") && head.contains("GRANT STATE"),
        "{table}"
    );
    let row = table.lines().find(|l| l.contains(&id)).unwrap();
    assert!(
        row.contains("CHG-9") && row.contains(&gid) && row.contains("active"),
        "{row}"
    );
    let table = s.cli(&bob, b.addr, &["sessions"]).out().to_owned();
    assert!(
        table.lines().next().unwrap().contains("BREAK-GLASS"),
        "{table}"
    );
    let row = table.lines().find(|l| l.contains("live")).unwrap();
    assert!(row.contains(&gid) && row.contains(" no "), "{row}");

    s.cli(
        &bob,
        b.addr,
        &["revoke", &gid, "--reason", "done for today"],
    )
    .out();
    let said = fwd.line(true, |l| l.contains("ended"));
    assert_eq!(
        said,
        "sallyport: tunnel to acme/db01 ended: grant revoked by acme/bob: done for today"
    );
    // A new tunnel through the same forwarder is refused, in the broker's words.
    let mut again = TcpStream::connect(local).unwrap();
    let _ = again.write_all(b"ping");
    let said = fwd.line(true, |l| l.contains("refused"));
    assert!(
        said.contains("was revoked by acme/bob: done for today") && !said.contains("403"),
        "{said}"
    );
    let table = s.cli(&bob, b.addr, &["requests"]).out().to_owned();
    let row = table.lines().find(|l| l.contains(&id)).unwrap();
    assert!(row.contains("revoked"), "{row}");
}

#[test]
fn a_grant_not_valid_yet_says_when_it_starts_and_one_about_to_end_warns() {
    let (s, _) = world();
    let b = Broker::start(&s);
    let start = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600);
    let start = jiff::Timestamp::from_second(start.as_second()).unwrap();
    let id = file(
        &s,
        &b,
        "acme/db01",
        "30",
        &["--start-at", &start.to_string()],
    );
    approve(&s, &b, &id);
    let mut early = run(
        &s.demo("technician"),
        b.addr,
        &["connect", "acme/db01", "--listen", "127.0.0.1:0"],
    );
    let said = early.line(true, |l| l.contains("not valid yet"));
    let at: jiff::Timestamp = said
        .split("starts at ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(at, start, "{said}");
    assert!(
        said.contains("in 10 min") && said.contains("waiting"),
        "{said}"
    );
    drop(early);

    // A grant shorter than five minutes warns at once, once.
    let id = file(&s, &b, "acme/web", "2", &[]);
    approve(&s, &b, &id);
    let mut short = run(
        &s.demo("technician"),
        b.addr,
        &["connect", "acme/web", "--listen", "127.0.0.1:0"],
    );
    let warned = short.line(true, |l| l.contains("warning"));
    assert!(
        warned.contains("the grant for acme/web ends at") && warned.contains("in 2 min"),
        "{warned}"
    );
    short.local("sallyport: listening on ");
}

#[test]
fn wait_sees_an_approval_and_a_denial() {
    let (s, _) = world();
    let b = Broker::start(&s);
    let alice = s.demo("technician");
    let id = file(&s, &b, "acme/db01", "30", &[]);
    let mut waiting = run(
        &alice,
        b.addr,
        &["connect", "acme/db01", "--wait", "--listen", "127.0.0.1:0"],
    );
    let said = waiting.line(true, |l| l.contains("waiting for request"));
    assert!(
        said.contains(&id) && said.contains("pending, 0 of 1"),
        "{said}"
    );
    approve(&s, &b, &id);
    let said = waiting.line(true, |l| l.contains("approved"));
    assert!(said.contains("approved by acme/bob"), "{said}");
    let local = waiting.local("sallyport: listening on ");
    ping(&mut TcpStream::connect(local).unwrap(), b"after the wait");

    // A denial ends the wait with the approver's words, and a failure.
    let id = file(&s, &b, "acme/web", "30", &[]);
    let mut waiting = run(
        &alice,
        b.addr,
        &["connect", "acme/web", "--wait", "--listen", "127.0.0.1:0"],
    );
    waiting.line(true, |l| l.contains("waiting for request"));
    s.cli(
        &s.demo("approver"),
        b.addr,
        &["deny", &id, "--reason", "not during the freeze"],
    )
    .out();
    let (ok, err) = waiting.finish();
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "request {id} for acme/web was denied by acme/bob: not during the freeze"
        )),
        "{err}"
    );
    // Without --wait, a pending request is named, with the way to wait for it.
    let id = file(&s, &b, "acme/web", "30", &[]);
    let c = s.cli(
        &alice,
        b.addr,
        &["connect", "acme/web", "--listen", "127.0.0.1:0"],
    );
    assert!(
        c.err()
            .contains(&format!("request {id} for acme/web is still pending"))
            && c.err().contains("--wait"),
        "{}",
        c.stderr
    );
}

#[test]
fn connect_needs_one_way_in_and_says_so() {
    let (s, _) = world();
    let alice = s.demo("technician");
    let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let err = |args: &[&str]| s.cli(&alice, b, args).err().to_owned();
    let none = err(&["connect", "acme/db01"]);
    assert!(
        none.contains("say how to connect: --listen")
            && none.contains("--socks")
            && none.contains("--stdio"),
        "{none}"
    );
    let two = err(&["connect", "acme/db01", "--stdio", "--listen", "127.0.0.1:0"]);
    assert!(two.contains("cannot be used with"), "{two}");
    let named = err(&["connect", "acme/db01", "--socks", "127.0.0.1:0"]);
    assert!(named.contains("leave out `acme/db01`"), "{named}");
    let remote = err(&["connect", "--socks", "0.0.0.0:1080"]);
    assert!(remote.contains("not a loopback address"), "{remote}");
    let nameless = err(&["connect", "--stdio"]);
    assert!(nameless.contains("CUSTOMER/TARGET"), "{nameless}");
}

#[test]
fn targets_lists_what_each_may_request_per_customer() {
    let (s, _) = world();
    let b = Broker::start(&s);
    let alice = s.demo("technician");
    let table = s.cli(&alice, b.addr, &["targets"]).out().to_owned();
    let head = table.lines().next().unwrap();
    assert!(
        head.contains("CUSTOMER") && head.contains("MAX MINUTES") && head.contains("APPROVALS"),
        "{table}"
    );
    let web = table.lines().find(|l| l.contains(" web ")).unwrap();
    assert!(
        web.starts_with("acme") && web.contains("60") && web.contains("http"),
        "{web}"
    );
    assert!(
        !table.contains("globex"),
        "globex's policy lets support in nowhere: {table}"
    );
    let v = s.cli(&alice, b.addr, &["targets", "--json"]).json();
    let listed: Vec<(String, String)> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["customer"].as_str().unwrap().to_owned(),
                t["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("acme".into(), "web".into()),
            ("acme".into(), "db01".into()),
            ("acme".into(), "vault".into()),
            ("acme".into(), "bastion".into())
        ]
    );
    assert_eq!(v["targets"][0]["approvals_required"], 1);
    assert_eq!(v["targets"][0]["policy_ids"][0], "support-requests");
    // acme's approver sees acme's targets, and only them.
    let v = s
        .cli(&s.demo("approver"), b.addr, &["targets", "--json"])
        .json();
    let all = v["targets"].as_array().unwrap();
    assert_eq!(all.len(), 4, "{v}");
    assert!(all.iter().all(|t| t["customer"] == "acme"), "{v}");
}

#[test]
fn a_technician_cancels_their_own_pending_request_and_nobody_approves_it_after() {
    let (s, _) = world();
    let (hook, deliveries) = webhook_receiver();
    std::fs::write(s.root.join("acme-hook"), "0123456789abcdef0123").unwrap();
    s.append_config(&format!(
        "[customers.webhook]\nurl = \"http://{hook}/\"\nsecret_file = \"acme-hook\"\n"
    ));
    let b = Broker::start(&s);
    let (alice, bob) = (s.demo("technician"), s.demo("approver"));
    let id = file(&s, &b, "acme/db01", "30", &[]);

    // Nobody else withdraws it: not another technician (who does not see it), not an approver.
    let tom = s.issue(
        "technician",
        "tom",
        &["--provider", "northwind", "--group", "support"],
    );
    let by_tom = s.cli(&tom, b.addr, &["cancel", &id]);
    assert!(
        by_tom.err().contains(&format!("no request `{id}`")),
        "{}",
        by_tom.stderr
    );
    let by_bob = s.cli(&bob, b.addr, &["cancel", &id]);
    assert!(
        by_bob
            .err()
            .contains("only the technician who filed a request cancels it"),
        "{}",
        by_bob.stderr
    );
    let done = s.cli(
        &alice,
        b.addr,
        &["cancel", &id, "--reason", "fixed it another way"],
    );
    assert!(
        done.out().contains(&format!("cancelled {id}")),
        "{}",
        done.stdout
    );

    // On acme's trail, with the technician's words.
    let rec = s.wait_for_audit("acme", |r| r["event"] == "request_cancelled");
    assert_eq!(rec["request_id"], id.as_str());
    assert_eq!(rec["reason"], "fixed it another way");
    assert_eq!(rec["outcome"], "success");
    assert!(
        rec["actor"]
            .as_str()
            .unwrap()
            .ends_with("/technician/northwind/alice")
    );
    // The refusals are on the trail too.
    assert!(
        s.audit("acme")
            .iter()
            .any(|r| r["event"] == "access_refused" && r["request_id"] == id.as_str()),
        "{:#?}",
        s.audit("acme")
    );

    // Approving it now is refused, clearly; cancelling again too.
    let late = s.cli(&bob, b.addr, &["approve", &id]);
    assert!(
        late.err()
            .contains("was cancelled by the technician who filed it"),
        "{}",
        late.stderr
    );
    let twice = s.cli(&alice, b.addr, &["cancel", &id]);
    assert!(
        twice.err().contains("already cancelled"),
        "{}",
        twice.stderr
    );
    let table = s
        .cli(&bob, b.addr, &["requests", "--status", "cancelled"])
        .out()
        .to_owned();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&id) && l.contains("cancelled")),
        "{table}"
    );

    // The customer's webhook is told.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = deliveries
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no request_cancelled delivery");
        let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        if v["event"] == "request_cancelled" {
            assert_eq!(v["data"]["id"], id.as_str());
            assert!(v["text"].as_str().unwrap().contains("cancelled"), "{v}");
            break;
        }
    }
    s.assert_trail_verifies();
    // And it maps to a valid OCSF event.
    let ocsf = s.ocsf_export("acme");
    assert!(
        ocsf.iter()
            .any(|e| e["api"]["operation"] == "request_cancelled" && e["class_uid"] == 6003),
        "{ocsf:#?}"
    );
}

#[test]
fn audit_export_into_head_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = tmp.path().join("audit/acme");
    std::fs::create_dir_all(&chain).unwrap();
    // Far more than a pipe holds, so the export is still writing when `head` goes away.
    let mut text = String::new();
    for seq in 1..=5000 {
        text.push_str(&format!(
            "{{\"seq\":{seq},\"time\":\"2020-01-01T00:00:00Z\",\"customer\":\"acme\",\"event\":\"decision\",\"outcome\":\"allow\",\"reason\":\"{}\"}}\n",
            "x".repeat(100)
        ));
    }
    std::fs::write(chain.join("2020-01-01.jsonl"), text).unwrap();
    for format in ["jsonl", "ocsf"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; \"$0\" audit export --customer acme --format {format} --data \"$1\" | head -1"
            ))
            .arg(BIN)
            .arg(tmp.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{format}: {err}");
        assert!(err.is_empty(), "{format}: nothing said: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
}

/// Starts `serve` on the embedded defaults in a fresh folder with `extra` flags; returns the broker
/// and the lines it printed up to the example session's end.
fn serve_embedded(tmp: &Path, extra: &[&str]) -> (Broker, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(tmp)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra);
    let b = Broker::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let printed = loop {
        let lines = b.stdout.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("audit trail")) {
            break lines;
        }
        assert!(Instant::now() < deadline, "no example printed: {lines:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    (b, printed)
}

#[test]
fn serve_takes_a_demo_port_and_says_plainly_when_it_is_taken() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let tmp = tempfile::tempdir().unwrap();
    let (b, printed) = serve_embedded(tmp.path(), &["--demo-port", &port.to_string()]);
    assert!(
        printed
            .iter()
            .any(|l| l == &format!("demo target acme/web served on 127.0.0.1:{port}")),
        "{printed:?}"
    );
    // The demo session reaches the demo page on that port.
    let t = tmp.path().join("sallyport-data/identities/technician");
    let a = tmp.path().join("sallyport-data/identities/approver");
    let id = Command::new(BIN)
        .args([
            "request",
            "acme/web",
            "--minutes",
            "5",
            "--reason",
            "demo",
            "--identity",
        ])
        .arg(&t)
        .args(["--broker", &b.addr.to_string()])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    let ok = Command::new(BIN)
        .args(["approve", &id, "--identity"])
        .arg(&a)
        .args(["--broker", &b.addr.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let mut socks = run(&t, b.addr, &["connect", "--socks", "127.0.0.1:0"]);
    let proxy = socks.local("sallyport: SOCKS5 on ").to_string();
    let got = curl(&[
        "--socks5-hostname",
        &proxy,
        &format!("http://web.acme:{port}/"),
    ]);
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("Hello from acme/web"),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    drop(socks);
    drop(b);

    // A port in use: said plainly, with what to do.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let (_b, printed) = serve_embedded(tmp.path(), &["--demo-port", &port.to_string()]);
    let warning = printed
        .iter()
        .find(|l| l.starts_with("warning: the demo target"))
        .unwrap_or_else(|| panic!("{printed:?}"));
    assert!(
        warning.contains(&format!("port {port}")) && warning.contains("reaches that program"),
        "{warning}"
    );
    assert!(
        printed.iter().any(|l| l.contains("--demo-port N")),
        "{printed:?}"
    );

    // Only on the embedded defaults.
    let out = Command::new(BIN)
        .args(["serve", "--config", "x.toml", "--demo-port", "7071"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
