//! SIEM forwarding to a real syslog receiver from Debian (rsyslog, started by the test): every record
//! arrives in order; with the receiver stopped mid-stream records wait on disk, and after it restarts
//! nothing is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}")
module(load="imtcp")
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
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (seq, _, _) =
                sallyport_proxy::audit::check_line(l.trim()).unwrap_or_else(|e| panic!("{e}: {l}"));
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

    // The receiver goes away mid-stream; the broker goes on, and records wait on disk.
    rsyslog.stop();
    tunnels(&s, b.addr, port, &token, 3).await;
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
