//! A real OpenID provider for the end-to-end tests, and a headless browser to sign in through it:
//! [`Idp`] runs `tests/oidc/idp.mjs` (panva's `oidc-provider` under node, one process per IdP, on
//! 127.0.0.1 port 0) and drives its test-only control API (`/_test/…`); [`browse`] runs
//! `tests/oidc/browse.mjs`, which follows the redirects of an authorization with a cookie jar.
//! [`http_request`] is the small blocking HTTP/1.1 client both use for plain http on loopback.
//!
//! The npm packages come from `tests/run` (`npm ci --prefix tests/oidc`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// How long the IdP may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `tests/oidc`, where the node scripts and their `node_modules` live.
fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../oidc")
}

/// Panics unless `npm ci --prefix tests/oidc` has run.
fn require_node_modules() -> PathBuf {
    let dir = oidc_dir();
    if !dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        panic!(
            "{}/node_modules is missing: run tests/run, which runs npm ci --prefix tests/oidc",
            dir.display()
        );
    }
    dir
}

/// A running `tests/oidc/idp.mjs`: an OpenID provider with one client, whose sign-ins complete at
/// once as the person set with [`Idp::next`]. Killed when dropped.
pub struct Idp {
    child: Child,
    issuer: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Idp {
    /// Starts `tests/oidc/idp.mjs` for one client (`client_secret`: a confidential client using
    /// `client_secret_basic`, else a public one), whose ID tokens carry the groups in the claim
    /// `groups_claim`, and waits (30 s at most) for its issuer line. Its stderr goes to the test's
    /// stderr, prefixed `[idp]`. Panics when `node_modules` is missing or the IdP does not start.
    pub fn start(client_id: &str, client_secret: Option<&str>, groups_claim: &str) -> Idp {
        Self::launch(client_id, client_secret, groups_claim, &[])
    }

    /// As [`Idp::start`], but like a real IdP to a browser: another site than a broker reached at
    /// 127.0.0.1 (its issuer names `localhost`), with a sign-in page whose button
    /// (`#idp-continue`) must be clicked, so that the redirect back starts from the IdP's page
    /// and browsers apply their cross-site cookie rules to it.
    pub fn start_elsewhere(
        client_id: &str,
        client_secret: Option<&str>,
        groups_claim: &str,
    ) -> Idp {
        Self::launch(
            client_id,
            client_secret,
            groups_claim,
            &["--host", "localhost", "--login-page"],
        )
    }

    fn launch(
        client_id: &str,
        client_secret: Option<&str>,
        groups_claim: &str,
        extra: &[&str],
    ) -> Idp {
        let dir = require_node_modules();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("idp.mjs")).args([
            "--client-id",
            client_id,
            "--groups-claim",
            groups_claim,
        ]);
        cmd.args(extra);
        if let Some(secret) = client_secret {
            cmd.args(["--client-secret", secret]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node for tests/oidc/idp.mjs: {e}"));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[idp] {line}");
                sink.lock().unwrap().push(line);
            }
        });

        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut line = String::new();
            let read = out.read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
            // Keep draining, so that a stray write never blocks the IdP.
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => fail_start(
                "tests/oidc/idp.mjs",
                child,
                &stderr,
                &format!("reading its stdout: {e}"),
            ),
            Err(_) => fail_start(
                "tests/oidc/idp.mjs",
                child,
                &stderr,
                "no ready line within 30 s",
            ),
        };
        let issuer = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_owned));
        let Some(issuer) = issuer else {
            fail_start(
                "tests/oidc/idp.mjs",
                child,
                &stderr,
                &format!("unexpected ready line {line:?}"),
            )
        };
        Idp {
            child,
            issuer,
            stderr,
        }
    }

    /// The issuer, `http://127.0.0.1:PORT`, also the base of every endpoint.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Sets who signs in next (`POST /_test/next`), e.g. `{"sub": "alice", "name": "Alice",
    /// "preferred_username": "alice", "email": "alice@example.test", "groups": ["support"],
    /// "amr": ["pwd", "otp"], "clock_offset_s": 0}`; every field may be left out (`sub` "tech",
    /// `groups` [], `amr` ["pwd"]). `acr` is derived from `amr` unless given. `clock_offset_s`
    /// shifts the IdP's clock for the flows that follow, until the next call (-7200: ID tokens that
    /// expired an hour ago). Panics when the IdP refuses it.
    pub fn next(&self, person: serde_json::Value) {
        let url = format!("{}/_test/next", self.issuer);
        let body = person.to_string();
        let (status, answer) = http_request(
            &url,
            "POST",
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        assert_eq!(status, 200, "POST /_test/next {body}: {answer}");
    }

    /// The public JWKS (`GET /_test/jwks`, the same keys as the `jwks_uri`), as JSON text.
    pub fn jwks(&self) -> String {
        self.get_ok("/_test/jwks")
    }

    /// The last ID token that the token endpoint issued, if any (`GET /_test/last-id-token`).
    pub fn last_id_token(&self) -> Option<String> {
        let body = self.get_ok("/_test/last-id-token");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        value["id_token"].as_str().map(str::to_owned)
    }

    /// Signs the next person in as a relying party would (authorization code with PKCE, the code
    /// exchanged with `client_secret_basic`) for `client_id` with `nonce`, and returns the ID token.
    /// The redirect URI, `https://127.0.0.1:9/oidc/callback`, is never dialled: the flow stops at
    /// it. For tests that hand a token to the broker themselves.
    pub fn id_token(&self, client_id: &str, client_secret: &str, nonce: &str) -> String {
        use base64::Engine as _;
        const REDIRECT: &str = "https://127.0.0.1:9/oidc/callback";
        let (status, discovery) = http_request(
            &format!("{}/.well-known/openid-configuration", self.issuer),
            "GET",
            &[],
            None,
        );
        assert_eq!(status, 200, "{discovery}");
        let discovery: serde_json::Value = serde_json::from_str(&discovery).unwrap();
        let pkce = sallyport_oidc::Pkce::new();
        let url = sallyport_oidc::AuthorizationRequest {
            endpoint: discovery["authorization_endpoint"].as_str().unwrap(),
            client_id,
            redirect_uri: REDIRECT,
            scope: "openid profile email groups",
            state: "state",
            nonce,
            code_challenge: &pkce.challenge,
            prompt: Some("login"),
            max_age: Some(0),
            login_hint: None,
        }
        .url();
        let end = browse(&url, None, Some(REDIRECT));
        let code = end
            .url
            .split_once('?')
            .and_then(|(_, q)| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_else(|| panic!("no code: {end:?}"));
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", &code)
            .append_pair("code_verifier", &pkce.verifier)
            .append_pair("redirect_uri", REDIRECT)
            .finish();
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(client_id),
                enc(client_secret)
            ))
        );
        let (status, tokens) = http_request(
            discovery["token_endpoint"].as_str().unwrap(),
            "POST",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic),
            ],
            Some(form.as_bytes()),
        );
        assert_eq!(status, 200, "{tokens}");
        let tokens: serde_json::Value = serde_json::from_str(&tokens).unwrap();
        tokens["id_token"].as_str().unwrap().to_owned()
    }
    /// What the IdP printed on stderr so far, one entry a line.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn get_ok(&self, path: &str) -> String {
        let (status, body) = http_request(&format!("{}{path}", self.issuer), "GET", &[], None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`browse`] ended at.
#[derive(Debug)]
pub struct Browsed {
    /// The last HTTP status: the final page's, or the redirect's when stopped at one.
    pub status: u16,
    /// The last URL fetched, or the redirect target it stopped at.
    pub url: String,
    /// The last body (at most 64 KiB); for a form it stopped at, the form's urlencoded fields.
    pub body: String,
}

/// Runs `tests/oidc/browse.mjs` on `url`: GETs it and follows its redirects (at most 20) with a
/// cookie jar, trusting the PEM `ca_file` as well (`NODE_EXTRA_CA_CERTS`), and stops before a
/// redirect to a URL starting with `stop_at`. Panics on a network error or too many redirects.
pub fn browse(url: &str, ca_file: Option<&Path>, stop_at: Option<&str>) -> Browsed {
    let dir = require_node_modules();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("browse.mjs")).arg(url);
    if let Some(prefix) = stop_at {
        cmd.args(["--stop-at", prefix]);
    }
    if let Some(ca) = ca_file {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node for tests/oidc/browse.mjs: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browse {url} failed ({}): {stderr}",
        out.status
    );
    let value: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("browse {url}: bad output {stdout:?} ({e}); stderr: {stderr}"));
    Browsed {
        status: u16::try_from(value["status"].as_u64().unwrap()).unwrap(),
        url: value["url"].as_str().unwrap().to_owned(),
        body: value["body"].as_str().unwrap().to_owned(),
    }
}

/// One blocking HTTP/1.1 request over plain http (an `http://host:port/path` URL, loopback in
/// practice), with `Connection: close`; returns the status and the body (chunked answers decoded).
/// `headers` are sent as given, plus `Host` and, with a body, `Content-Length`. Panics on I/O
/// errors, and times out after 30 s without data.
pub fn http_request(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("http_request: only http:// URLs, not {url}"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut conn = TcpStream::connect(authority)
        .unwrap_or_else(|e| panic!("http_request: connect {authority}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        conn.write_all(body).unwrap();
    }
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("http_request: {method} {url}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("http_request: {method} {url}: no header end"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("http_request: {method} {url}: bad status line in {head:?}"));
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if chunked {
        body = dechunk(&body);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .unwrap_or_else(|_| panic!("http_request: bad chunk size {size_hex:?}"));
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
}

/// Kills a node child (`script`) that did not start and panics with what it printed.
pub(crate) fn fail_start(
    script: &str,
    mut child: Child,
    stderr: &Mutex<Vec<String>>,
    why: &str,
) -> ! {
    let _ = child.kill();
    let status = child.wait().unwrap();
    // Give the stderr thread a moment to collect the last lines.
    std::thread::sleep(Duration::from_millis(200));
    panic!(
        "{script} did not start ({why}; {status}):\n{}",
        stderr.lock().unwrap().join("\n")
    );
}
