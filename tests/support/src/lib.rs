//! Test helpers for the end-to-end tests in `tests/`: a broker folder made by the real `sallyport init`,
//! the real broker started on port 0, a loopback echo target, a raw TLS CONNECT client, grants minted
//! with the project's own certs crate, and readers for the audit trail.
//!
//! These helpers panic on set-up failures: they only run inside tests.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

pub mod browser;
pub mod idp;
pub mod postgres;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sallyport_certs::grant::{GrantSigner, GrantSpec};
use sallyport_certs::identity::PeerIdentity;
use sallyport_certs::identity_dir::IdentityDir;
use sallyport_certs::pki::{CertificateAuthority, Validity};
use sallyport_certs::tls::PemFiles;
use sallyport_ids::{Principal, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// One customer in a test configuration.
pub struct CustomerSpec<'a> {
    /// Customer id.
    pub id: &'a str,
    /// Time zone.
    pub timezone: &'a str,
    /// Cedar policy text.
    pub policy: &'a str,
    /// `(id, address, tags)` of each target.
    pub targets: Vec<(&'a str, String, Vec<&'a str>)>,
}

/// A policy letting the `support` group connect anywhere in a customer.
pub fn allow_support(customer: &str) -> String {
    format!(
        "@id(\"support\")\npermit(principal in Sallyport::Group::\"support\", action == Sallyport::Action::\"connect\", resource in Sallyport::Customer::\"{customer}\");\n"
    )
}

/// Technicians of group `support` may request and connect (up to 60 minutes, after `approvals`
/// approvals); the customer's approvers may approve.
pub fn support_with_approvals(customer: &str, approvals: u32) -> String {
    format!(
        r#"@id("support-requests")
@approvals("{approvals}")
@max_minutes("60")
permit (
  principal in Sallyport::Group::"support",
  action in [Sallyport::Action::"request", Sallyport::Action::"connect"],
  resource in Sallyport::Customer::"{customer}"
);
@id("approvers")
permit (
  principal is Sallyport::Approver in Sallyport::Customer::"{customer}",
  action == Sallyport::Action::"approve",
  resource in Sallyport::Customer::"{customer}"
);
"#
    )
}

/// A broker folder created by the real `sallyport init` in a temporary directory.
pub struct Setup {
    _tmp: tempfile::TempDir,
    /// The broker folder.
    pub root: PathBuf,
    /// The `sallyport` binary.
    pub bin: PathBuf,
}

impl Setup {
    /// Runs `sallyport init` in a fresh temporary folder.
    pub fn init(bin: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("broker");
        let out = Command::new(bin)
            .args(["init", "--dir"])
            .arg(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Setup {
            _tmp: tmp,
            root,
            bin: bin.into(),
        }
    }

    /// Replaces the config with one listening on port 0 and serving `customers`; `limits` are extra
    /// lines for the `[limits]` table.
    pub fn write_config(&self, customers: &[CustomerSpec<'_>], limits: &str) {
        let mut cfg = String::from(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\ntrust_domain = \"sallyport.local\"\n\n[limits]\n",
        );
        cfg.push_str(limits);
        // Tests fail many authentications on purpose: lift the limits unless a test sets them.
        for (key, value) in [
            ("auth_failures_per_minute", 10000),
            ("auth_failure_burst", 10000),
        ] {
            if !limits.contains(key) {
                cfg.push_str(&format!("{key} = {value}\n"));
            }
        }
        for c in customers {
            std::fs::write(self.root.join(format!("policies/{}.cedar", c.id)), c.policy).unwrap();
            cfg.push_str(&format!(
                "\n[[customers]]\nid = \"{}\"\npolicy = \"policies/{}.cedar\"\ntimezone = \"{}\"\n",
                c.id, c.id, c.timezone
            ));
            for (id, addr, tags) in &c.targets {
                cfg.push_str(&format!(
                    "\n[[customers.targets]]\nid = \"{id}\"\naddress = \"{addr}\"\ntags = {tags:?}\n"
                ));
            }
        }
        std::fs::write(self.root.join("sallyport.toml"), cfg).unwrap();
    }

    /// `init`, then one customer `acme` (group `support` may connect) with target `db01`, a loopback
    /// echo server; returns the echo port.
    pub fn with_echo_target(bin: &str, limits: &str) -> (Setup, u16) {
        let s = Setup::init(bin);
        let echo = echo_server();
        s.write_config(
            &[CustomerSpec {
                id: "acme",
                timezone: "Europe/Berlin",
                policy: &allow_support("acme"),
                targets: vec![("db01", echo.to_string(), vec!["prod"])],
            }],
            limits,
        );
        (s, echo.port())
    }

    /// Runs the real `sallyport grant` (break-glass) for the demo technician on `acme/db01`; returns
    /// the token and its grant id (read back from the audit trail).
    pub fn break_glass(&self, minutes: u32) -> (String, String) {
        let out = Command::new(&self.bin)
            .args(["grant", "--config"])
            .arg(self.config())
            .arg("--technician-cert")
            .arg(self.root.join("identities/technician/cert.pem"))
            .args(["--customer", "acme", "--target", "db01", "--minutes"])
            .arg(minutes.to_string())
            .args(["--reason", "test emergency"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let gid = self.audit("acme").last().unwrap()["grant_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (token, gid)
    }

    /// Appends TOML to the config (a `[requests]` table, or `[customers.webhook]` for the last customer).
    pub fn append_config(&self, toml: &str) {
        let mut cfg = std::fs::read_to_string(self.config()).unwrap();
        cfg.push('\n');
        cfg.push_str(toml);
        std::fs::write(self.config(), cfg).unwrap();
    }

    /// Issues an identity folder with the real `sallyport certs issue ROLE NAME EXTRA...`; returns it.
    pub fn issue(&self, role: &str, name: &str, extra: &[&str]) -> PathBuf {
        self.issue_at(&self.root.join("people").join(name), role, name, extra)
    }

    /// As [`Setup::issue`], into the folder `out` (several certificates of one identity).
    pub fn issue_at(&self, out: &Path, role: &str, name: &str, extra: &[&str]) -> PathBuf {
        let out = out.to_owned();
        let done = Command::new(&self.bin)
            .args(["certs", "issue", role, name])
            .args(extra)
            .arg("--dir")
            .arg(&self.root)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        out
    }

    /// Runs the CLI as `identity` (a folder) against `broker`: `sallyport ARGS --identity I --broker A`.
    pub fn cli(&self, identity: &Path, broker: SocketAddr, args: &[&str]) -> Cli {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--identity")
            .arg(identity)
            .arg("--broker")
            .arg(broker.to_string())
            .output()
            .unwrap();
        Cli {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Opens one tunnel to `db01.acme:{port}` through `broker` as the demo technician with `token`,
    /// sends `payload` and reads it back from the echo target, closes it, and waits for the
    /// session's `tunnel_close` record; returns that record.
    pub fn echo_once(
        &self,
        broker: SocketAddr,
        port: u16,
        token: &str,
        payload: &[u8],
    ) -> serde_json::Value {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let session = rt.block_on(async {
            let alice = connector(&self.identity("technician"));
            let mut a = connect(broker, &alice, &format!("db01.acme:{port}"), Some(token))
                .await
                .unwrap();
            assert_eq!(a.status, 200, "{}", a.body);
            a.stream.write_all(payload).await.unwrap();
            let mut back = vec![0u8; payload.len()];
            a.stream.read_exact(&mut back).await.unwrap();
            assert_eq!(back, payload);
            a.stream.shutdown().await.unwrap();
            a.header("sallyport-session").unwrap().to_owned()
        });
        self.wait_for_audit("acme", |r| {
            r["event"] == "tunnel_close" && r["session_id"] == session.as_str()
        })
    }

    /// Exports `chain` with the real `sallyport audit export --format ocsf`, checks every event
    /// against the official OCSF schema (`tests/ocsf/validate.py`), and returns the events.
    pub fn ocsf_export(&self, chain: &str) -> Vec<serde_json::Value> {
        let out = Command::new(&self.bin)
            .args([
                "audit",
                "export",
                "--format",
                "ocsf",
                "--customer",
                chain,
                "--data",
            ])
            .arg(self.root.join("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut check = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../ocsf/validate.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check.stdin.take().unwrap().write_all(&out.stdout).unwrap();
        let checked = check.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&checked.stdout).into_owned()
            + &String::from_utf8_lossy(&checked.stderr);
        assert!(
            checked.status.success()
                && report.contains(&format!("validated {} events", events.len())),
            "OCSF validation of {chain} failed (pip install ocsf-json-schema==1.2.0 jsonschema==4.26.0): {report}"
        );
        events
    }

    /// A demo identity's folder (`technician`, `approver`, `admin`).
    pub fn demo(&self, which: &str) -> PathBuf {
        self.root.join("identities").join(which)
    }

    /// Runs the real `sallyport audit verify` on this broker's data and asserts the trail is intact.
    pub fn assert_trail_verifies(&self) {
        let out = Command::new(&self.bin)
            .args(["audit", "verify", "--data"])
            .arg(self.root.join("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.root.join("sallyport.toml")
    }

    /// The broker CA (with its key).
    pub fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::from_pem(
            &std::fs::read_to_string(self.root.join("pki/ca.pem")).unwrap(),
            &std::fs::read_to_string(self.root.join("pki/ca.key")).unwrap(),
            "ca",
        )
        .unwrap()
    }

    /// The broker's grant signer.
    pub fn signer(&self) -> GrantSigner {
        GrantSigner::from_pkcs8_pem(
            &std::fs::read_to_string(self.root.join("pki/grant-signing.key")).unwrap(),
            "sallyport",
            "sallyport",
        )
        .unwrap()
    }

    /// A demo identity written by `init` (`technician`, `approver`, `admin`).
    pub fn identity(&self, which: &str) -> IdentityDir {
        IdentityDir::read(&self.root.join("identities").join(which)).unwrap()
    }

    /// Issues a technician of provider `northwind` with `groups`, valid as given.
    pub fn technician(&self, name: &str, groups: &[&str], validity: Validity) -> IdentityDir {
        technician_from(
            &self.ca(),
            &self.root.join("identities").join(name),
            name,
            groups,
            validity,
        )
    }

    /// Mints a grant for `identity` with the broker's own key.
    pub fn mint(
        &self,
        identity: &IdentityDir,
        customer: &str,
        target: &str,
        port: u16,
        not_before: SystemTime,
        expires_at: SystemTime,
    ) -> String {
        let peer = peer_of(identity);
        self.signer()
            .mint(&GrantSpec {
                sub: peer.id,
                customer: customer.parse().unwrap(),
                target: target.parse().unwrap(),
                port,
                gid: format!("g-test-{}", std::process::id()).parse().unwrap(),
                not_before,
                expires_at,
                cert_thumbprint: peer.thumbprint,
            })
            .unwrap()
            .0
    }

    /// The audit records of `chain` (`acme`, `_broker`, ...), parsed. A torn last line (a write
    /// cut short by a kill) is no record and is skipped.
    pub fn audit(&self, chain: &str) -> Vec<serde_json::Value> {
        let text = trail_text(&self.root.join("data"), chain);
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The newest segment file of `chain` in this setup's data directory (see [`segment`]).
    pub fn segment(&self, chain: &str) -> PathBuf {
        segment(&self.root.join("data"), chain)
    }

    /// Waits (up to 10 s) for a record of `chain` matching `pred`: for records written after the
    /// client already saw the outcome (a refused handshake, a tunnel close).
    pub fn wait_for_audit(
        &self,
        chain: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.audit(chain).into_iter().find(&pred) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no matching audit record in {chain}: {:#?}",
                self.audit(chain)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a CLI run printed.
#[derive(Debug, Clone)]
pub struct Cli {
    /// Exit status was 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Cli {
    /// Standard output, asserting success.
    pub fn out(&self) -> &str {
        assert!(self.ok, "command failed: {}{}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Standard output parsed as JSON, asserting success.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.out()).unwrap()
    }

    /// Standard error, asserting failure.
    pub fn err(&self) -> &str {
        assert!(!self.ok, "command succeeded: {}", self.stdout);
        &self.stderr
    }
}

/// The segment files of `chain` (`acme`, `_broker`) under the data directory `data`, oldest first:
/// `data/audit/<chain>/<YYYY-MM-DD>.jsonl`.
pub fn segments(data: &Path, chain: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data.join("audit").join(chain)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
                .is_some_and(|d| d.parse::<jiff::civil::Date>().is_ok())
        })
        .collect();
    out.sort();
    out
}

/// The newest segment file of `chain`; today's (UTC), its folder created, when there is none yet.
pub fn segment(data: &Path, chain: &str) -> PathBuf {
    segments(data, chain).pop().unwrap_or_else(|| {
        let dir = data.join("audit").join(chain);
        std::fs::create_dir_all(&dir).unwrap();
        let today = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        dir.join(format!("{today}.jsonl"))
    })
}

/// A chain's stored text: its segments, oldest first, joined.
pub fn trail_text(data: &Path, chain: &str) -> String {
    segments(data, chain)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// Polls `f` every 20 ms until it returns `Some`, for up to `secs` seconds: for outcomes the broker
/// reaches on its own clock (expiry), where there is no event to wait on.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issues a technician identity folder with `ca`.
pub fn technician_from(
    ca: &CertificateAuthority,
    out: &Path,
    name: &str,
    groups: &[&str],
    validity: Validity,
) -> IdentityDir {
    let id = SpiffeId::new(
        "sallyport.local".parse().unwrap(),
        Principal::Technician {
            provider: "northwind".parse().unwrap(),
            name: name.parse().unwrap(),
        },
    );
    let groups: Vec<_> = groups.iter().map(|g| g.parse().unwrap()).collect();
    let issued = ca.issue_client(&id, &groups, validity).unwrap();
    IdentityDir::write(out, &issued, ca.cert_pem(), "localhost:0").unwrap()
}

/// The identity in an identity folder's certificate.
pub fn peer_of(identity: &IdentityDir) -> PeerIdentity {
    let der = sallyport_certs::tls::certs_from_pem(&identity.cert_pem, "cert").unwrap();
    PeerIdentity::from_der(&der[0], &"sallyport.local".parse().unwrap()).unwrap()
}

/// The real broker, started on port 0; killed on drop.
pub struct Broker {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin listener listens (`admin.listen` or `--admin-listen`), when it has one.
    pub admin: Option<SocketAddr>,
    /// Where its sign-in listener listens (`web.listen` or `--web-listen`), when it has one.
    pub web: Option<SocketAddr>,
    /// Lines it printed on stdout after the listening line, collected by a thread.
    pub stdout: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Broker {
    /// Starts `sallyport serve --config` for `setup` and waits until it listens.
    pub fn start(setup: &Setup) -> Broker {
        let mut cmd = Command::new(&setup.bin);
        cmd.arg("serve").arg("--config").arg(setup.config());
        Self::spawn(cmd)
    }

    /// Starts a prepared `serve` command and waits for its `listening on` line.
    pub fn spawn(mut cmd: Command) -> Broker {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let err_lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = err_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut admin = None;
        let mut web = None;
        let addr = loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().unwrap();
                panic!(
                    "broker exited ({status}) before listening:\n{}",
                    err_lines.lock().unwrap().join("\n")
                );
            }
            if let Some(a) = line.trim().strip_prefix("sallyport: admin listening on ") {
                admin = Some(a.parse().unwrap());
            }
            if let Some(a) = line.trim().strip_prefix("sallyport: sign-in listening on ") {
                web = Some(a.parse().unwrap());
            }
            if let Some(a) = line.trim().strip_prefix("sallyport: listening on ") {
                break a.parse().unwrap();
            }
        };
        let stdout = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Broker {
            child,
            addr,
            admin,
            web,
            stdout,
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request (no TLS, no certificate) to `addr`, as a load balancer or Prometheus
/// sends it; returns the status, the headers (lowercase names) and the body, read until the server
/// closes.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// A loopback echo server on port 0, one thread per connection; runs until the test process ends.
pub fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// An address on which nothing listens.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A TLS connector presenting `identity` and trusting `ca_pem`.
pub fn connector(identity: &IdentityDir) -> TlsConnector {
    let cfg = sallyport_certs::tls::client_config(PemFiles {
        ca: (&identity.ca_pem, "ca"),
        cert: (&identity.cert_pem, "cert"),
        key: (&identity.key_pem, "key"),
    })
    .unwrap();
    TlsConnector::from(Arc::new(cfg))
}

/// A TLS connector that presents no client certificate.
pub fn anonymous_connector(ca_pem: &str) -> TlsConnector {
    TlsConnector::from(sallyport_certs::tls::client_trusting(ca_pem, "ca").unwrap())
}

/// A broker's answer to a raw request.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers, lowercase names.
    pub headers: Vec<(String, String)>,
    /// Response body (for non-200 answers).
    pub body: String,
    /// The connection, positioned after the response head (a tunnel on 200).
    pub stream: TlsStream<TcpStream>,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Waits for the broker to end this tunnel (EOF or reset); fails after a generous 30 s.
    pub async fn wait_cut(&mut self) {
        let mut rest = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(30), self.stream.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the tunnel was not cut");
    }
}

/// A TCP connection to `addr` from the local address `from`: every address of 127/8 is loopback on
/// Linux, so `127.0.0.2` is a second source, and two clients on `127.0.0.5` share one address.
pub async fn dial_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// A TLS connection over `tcp`, presenting what `connector` presents, to a broker whose
/// certificate names `localhost` (the demo's).
pub async fn tls_on(
    tcp: TcpStream,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_on_named(tcp, connector, "localhost").await
}

/// A TLS connection over `tcp` to a broker verified as `server_name` (a real broker's host name,
/// reached at a loopback address).
pub async fn tls_on_named(
    tcp: TcpStream,
    connector: &TlsConnector,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// Sends one raw HTTP/1.1 request head over TLS and reads the answer's head and `Content-Length` body.
pub async fn request(
    addr: SocketAddr,
    connector: &TlsConnector,
    head: &str,
) -> std::io::Result<Answer> {
    request_on(TcpStream::connect(addr).await?, connector, head).await
}

/// [`request`] from the local address `from` (see [`dial_from`]).
pub async fn request_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    connector: &TlsConnector,
    head: &str,
) -> std::io::Result<Answer> {
    request_on(dial_from(from, addr).await?, connector, head).await
}

/// [`request`] over an open TCP connection.
pub async fn request_on(
    tcp: TcpStream,
    connector: &TlsConnector,
    head: &str,
) -> std::io::Result<Answer> {
    request_named(tcp, connector, "localhost", head).await
}

/// [`request_on`] to a broker verified as `server_name`; `head` may carry a body after it.
pub async fn request_named(
    tcp: TcpStream,
    connector: &TlsConnector,
    server_name: &str,
    head: &str,
) -> std::io::Result<Answer> {
    let mut tls = tls_on_named(tcp, connector, server_name).await?;
    tls.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.push(byte[0]);
        assert!(buf.len() < 64 * 1024, "response head too long");
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf).unwrap();
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).await?;
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        stream: tls,
    })
}

/// Sends `CONNECT authority` with an optional bearer grant.
pub async fn connect(
    addr: SocketAddr,
    connector: &TlsConnector,
    authority: &str,
    grant: Option<&str>,
) -> std::io::Result<Answer> {
    request(addr, connector, &connect_head(authority, grant)).await
}

/// [`connect`] from the local address `from` (see [`dial_from`]).
pub async fn connect_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    connector: &TlsConnector,
    authority: &str,
    grant: Option<&str>,
) -> std::io::Result<Answer> {
    request_from(from, addr, connector, &connect_head(authority, grant)).await
}

/// The head of `CONNECT authority`, with an optional bearer grant.
pub fn connect_head(authority: &str, grant: Option<&str>) -> String {
    let auth = grant
        .map(|g| format!("Proxy-Authorization: Bearer {g}\r\n"))
        .unwrap_or_default();
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n")
}

/// Validity from now for `secs` seconds.
pub fn valid_for(secs: u64) -> Validity {
    Validity::from_now(Duration::from_secs(secs))
}

/// One webhook delivery as received.
pub struct Delivery {
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: String,
}

impl Delivery {
    /// The value of header `name` (any case), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// A plain HTTP/1.1 receiver on loopback that answers 200 and hands each delivery to the test.
pub fn webhook_receiver() -> (SocketAddr, std::sync::mpsc::Receiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut reader = BufReader::new(conn);
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                let (n, v) = l.split_once(':').unwrap();
                headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap();
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send(Delivery {
                headers,
                body: String::from_utf8(body).unwrap(),
            });
        }
    });
    (addr, rx)
}
