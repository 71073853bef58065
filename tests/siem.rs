//! SIEM forwarding to a real syslog receiver from Debian (rsyslog, started by the test): every record
//! arrives in order; with the receiver stopped mid-stream records wait on disk, and after it restarts
//! nothing is missing.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sallyport_testkit::{Broker, Setup, connect, connector, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// rsyslogd in the foreground with a config of our own: RFC 5424 over TCP in, the message part of
/// each line out to a file.
struct Rsyslog {
    child: Child,
}

impl Rsyslog {
    fn start(dir: &Path, port: u16, out: &Path) -> Rsyslog {
        Self::start_with(dir, port, out, None)
    }

    /// With `tls = Some((cert, key))`, the receiver speaks RFC 5425 (TLS) with that certificate.
    fn start_with(
        dir: &Path,
        port: u16,
        out: &Path,
        tls: Option<(&Path, &Path, &Path)>,
    ) -> Rsyslog {
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let conf = dir.join("rsyslog.conf");
        let (global, module) = match tls {
            None => (String::new(), r#"module(load="imtcp")"#.to_owned()),
            Some((ca, cert, key)) => (
                format!(
                    r#" defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{}" defaultNetstreamDriverCertFile="{}" defaultNetstreamDriverKeyFile="{}""#,
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
                r#"module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")"#.to_owned(),
            ),
        };
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}"{global})
{module}
template(name="msgonly" type="string" string="%msg%\n")
ruleset(name="sallyport") {{
  action(type="omfile" file="{out}" template="msgonly")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="sallyport")
"#,
                work = work.display(),
                out = out.display()
            ),
        )
        .unwrap();
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "rsyslogd (Debian package rsyslog) is needed for this test; .ci/run installs it",
            );
        eventually(20, "rsyslogd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Rsyslog { child }
    }

    /// SIGTERM: rsyslog writes out what it has read, then exits.
    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seqs that reached the receiver's file, in arrival order; each line must be the record exactly
/// as stored (its hash still verifies).
fn received(out: &Path) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(out) else {
        return Vec::new();
    };
    text.lines()
        // Signed checkpoints follow the records; the HTTPS test checks them.
        .filter(|l| !l.trim().is_empty() && !l.contains("\"sig\":"))
        .map(|l| {
            let (seq, _, _) =
                sallyport_audit::check_line(l.trim()).unwrap_or_else(|e| panic!("{e}: {l}"));
            seq
        })
        .collect()
}

async fn tunnels(s: &Setup, addr: std::net::SocketAddr, port: u16, token: &str, n: usize) {
    let alice = connector(&s.identity("technician"));
    for _ in 0..n {
        let mut a = connect(addr, &alice, &format!("db01.acme:{port}"), Some(token))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        a.stream.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        a.stream.read_exact(&mut b).await.unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_syslog_receiver_gets_every_record_in_order_across_a_restart() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let syslog_port = free_port();
    s.append_config(&format!(
        "[[customers.siem]]\nkind = \"syslog\"\naddress = \"127.0.0.1:{syslog_port}\"\n"
    ));
    let dir: PathBuf = s.root.join("rsyslog");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("acme.log");
    let rsyslog = Rsyslog::start(&dir, syslog_port, &out);
    let (token, _) = s.break_glass(30);
    let b = Broker::start(&s);
    tunnels(&s, b.addr, port, &token, 3).await;
    let chain_len = || s.audit("acme").len() as u64;
    let all_there = |n: u64| {
        let got = received(&out);
        let set: BTreeSet<u64> = got.iter().copied().collect();
        (1..=n).all(|s| set.contains(&s)).then_some(got)
    };
    let closes = |k: usize| {
        eventually(10, "the tunnels' closes to be recorded", || {
            (s.audit("acme")
                .iter()
                .filter(|r| r["event"] == "tunnel_close")
                .count()
                >= k)
                .then_some(())
        })
    };
    closes(3);
    let n = chain_len();
    let first = eventually(20, "the records to reach rsyslog", || all_there(n));
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "out of order: {first:?}"
    );

    // The receiver goes away mid-stream, while records are being written; the broker goes on, and
    // records wait on disk.
    let more = {
        let (addr, token) = (b.addr, token.clone());
        let s = &s;
        async move { tunnels(s, addr, port, &token, 3).await }
    };
    let (_, ()) = tokio::join!(async { rsyslog.stop() }, more);
    closes(6);
    let total = chain_len();
    assert!(total > n);
    let cursor: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.root.join("data/siem/acme.0.cursor")).unwrap(),
    )
    .unwrap();
    assert!(cursor["seq"].as_u64().unwrap() <= n, "{cursor}");

    // Back again: delivery resumes from the cursor; nothing is missing.
    let _rsyslog = Rsyslog::start(&dir, syslog_port, &out);
    let got = eventually(40, "delivery to resume after the restart", || {
        all_there(total)
    });
    // At least once: a batch may arrive twice, but every record arrives, in order of first arrival.
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = got.into_iter().filter(|s| seen.insert(*s)).collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "out of order: {firsts:?}"
    );
    assert!(firsts.iter().all(|s| *s <= chain_len()), "{firsts:?}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_reaches_a_real_receiver_that_the_broker_authenticates() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let dir: PathBuf = s.root.join("rsyslog");
    std::fs::create_dir_all(&dir).unwrap();
    // The SIEM's certificate, from a CA the sink is told to trust.
    let issued = s
        .ca()
        .issue_server(&["localhost".into()], sallyport_testkit::valid_for(3600))
        .unwrap();
    let (cert, key) = (dir.join("siem.pem"), dir.join("siem.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let ca = s.root.join("pki/ca.pem");
    let syslog_port = free_port();
    // A second sink trusts another CA: it must never deliver to this receiver.
    let other = Setup::init(BIN);
    std::fs::copy(
        other.root.join("pki/ca.pem"),
        s.root.join("pki/foreign-ca.pem"),
    )
    .unwrap();
    s.append_config(&format!(
        "[[customers.siem]]\nkind = \"syslog-tls\"\naddress = \"localhost:{syslog_port}\"\nca = \"pki/ca.pem\"\n\n[[customers.siem]]\nkind = \"syslog-tls\"\naddress = \"localhost:{syslog_port}\"\nca = \"pki/foreign-ca.pem\"\n"
    ));
    let out = dir.join("acme.log");
    let _rsyslog = Rsyslog::start_with(&dir, syslog_port, &out, Some((&ca, &cert, &key)));
    let (token, _) = s.break_glass(30);
    let b = Broker::start(&s);
    tunnels(&s, b.addr, port, &token, 2).await;
    let n = eventually(10, "the tunnels' closes to be recorded", || {
        let records = s.audit("acme");
        (records
            .iter()
            .filter(|r| r["event"] == "tunnel_close")
            .count()
            >= 2)
            .then_some(records.len() as u64)
    });
    let got = eventually(20, "the records to reach rsyslog over TLS", || {
        let got = received(&out);
        let set: BTreeSet<u64> = got.iter().copied().collect();
        (1..=n).all(|s| set.contains(&s)).then_some(got)
    });
    assert_eq!(got.first(), Some(&1));
    assert!(
        !s.root.join("data/siem/acme.1.cursor").exists(),
        "a sink delivered to a receiver whose certificate it must not trust"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_sink_gets_json_lines_with_its_bearer_token() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
    std::thread::spawn(move || {
        use std::io::{BufRead, Read, Write};
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut r = std::io::BufReader::new(conn);
            let (mut auth, mut len, mut line) = (String::new(), 0usize, String::new());
            r.read_line(&mut line).unwrap();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "authorization" => auth = v.trim().to_owned(),
                    "content-length" => len = v.trim().parse().unwrap(),
                    _ => {}
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            r.get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send((auth, String::from_utf8(body).unwrap()));
        }
    });
    std::fs::write(s.root.join("siem-token"), "t0ken-for-the-intake\n").unwrap();
    s.append_config(&format!(
        "[[customers.siem]]\nkind = \"https\"\nurl = \"http://{addr}/ingest\"\ntoken_file = \"siem-token\"\n\n[audit]\ncheckpoint_every_records = 2\n"
    ));
    let (token, _) = s.break_glass(30);
    let b = Broker::start(&s);
    tunnels(&s, b.addr, port, &token, 1).await;
    let key = sallyport_audit::checkpoint::read_public_key(
        s.root.join("data/audit/audit-key.pub").to_str().unwrap(),
    )
    .unwrap();
    // Every record, then signed checkpoints of records already delivered.
    let (mut seqs, mut signed) = (BTreeSet::new(), BTreeSet::new());
    while seqs.len() < 4 || signed.is_empty() {
        let (auth, body) = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
        assert_eq!(auth, "Bearer t0ken-for-the-intake");
        for l in body.lines() {
            if l.contains("\"sig\":") {
                let cp = sallyport_audit::checkpoint::check(l, Some(&key)).unwrap();
                assert!(
                    seqs.contains(&cp.seq),
                    "a checkpoint came before its record"
                );
                signed.insert(cp.seq);
            } else {
                seqs.insert(sallyport_audit::check_line(l).unwrap().0);
            }
        }
    }
    assert_eq!(seqs.into_iter().take(4).collect::<Vec<_>>(), [1, 2, 3, 4]);
    drop(b);
}
