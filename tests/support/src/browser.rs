//! A real browser for the end-to-end tests of the web console: [`Browser`] runs
//! `tests/browser/driver.mjs` (Debian's Chromium, headless, under playwright-core; one process per
//! test) and speaks its line protocol: one JSON command on its stdin, one JSON answer on its stdout.
//! Each browser context is one person, with cookies and one page of their own. The ops and their
//! answers are described in `tests/browser/README.md`.
//!
//! The browser trusts no CA: [`Browser::start`] pins the public keys of the server certificates
//! the test gives it, so a page served with any other certificate fails to load.
//!
//! Chromium and the npm packages come from `tests/run` (`need_deb chromium`, `npm ci --prefix
//! tests/browser`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long the driver may take to launch Chromium and print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Browser::call`] waits for an answer. Every op has its own deadline in the driver
/// (15 s unless `timeout_ms` says otherwise), so this only fires when the driver itself is stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Drop`] lets the driver close Chromium before killing it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The browser `driver.mjs` launches.
const CHROMIUM: &str = "/usr/bin/chromium";

/// `tests/browser`, where the driver and its `node_modules` live.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../browser")
}

/// Panics unless `npm ci --prefix tests/browser` has run and Chromium is installed.
fn require_node_modules() -> PathBuf {
    let dir = browser_dir();
    for package in ["playwright-core", "axe-core"] {
        if !dir
            .join("node_modules")
            .join(package)
            .join("package.json")
            .is_file()
        {
            panic!(
                "{}/node_modules/{package} is missing: run tests/run, which runs npm ci --prefix tests/browser",
                dir.display()
            );
        }
    }
    if !Path::new(CHROMIUM).is_file() {
        panic!("{CHROMIUM} is missing: run tests/run, which installs Debian's chromium");
    }
    dir
}

/// A running `tests/browser/driver.mjs`. Dropping it closes the driver's stdin (it closes Chromium
/// and exits) and kills it if it has not exited within 10 s.
pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The driver's stdout, a line at a time, from a reader thread: a dead or stuck driver then
    /// fails the test with a timeout instead of hanging it on a blocking read.
    lines: mpsc::Receiver<std::io::Result<String>>,
    next_id: u64,
    version: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    /// Starts the driver, trusting exactly the servers whose certificates (PEM files) are in
    /// `trust_certs`, and waits (60 s at most) for Chromium to be up. Its stderr goes to the test's
    /// stderr, prefixed `[browser]`. Panics when Chromium or `node_modules` is missing or the driver
    /// does not start.
    pub fn start(trust_certs: &[&Path]) -> Browser {
        let dir = require_node_modules();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("driver.mjs"));
        for cert in trust_certs {
            cmd.arg("--trust-cert").arg(cert);
        }
        let mut child = cmd
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node for tests/browser/driver.mjs: {e}"));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[browser] {line}");
                sink.lock().unwrap().push(line);
            }
        });

        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let end = line.is_err();
                if tx.send(line).is_err() || end {
                    break;
                }
            }
        });

        let stdin = child.stdin.take();
        let ready = match lines.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => crate::idp::fail_start(
                "tests/browser/driver.mjs",
                child,
                &stderr,
                &format!("reading its stdout: {e}"),
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => crate::idp::fail_start(
                "tests/browser/driver.mjs",
                child,
                &stderr,
                "no ready line within 60 s",
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                crate::idp::fail_start("tests/browser/driver.mjs", child, &stderr, "it exited")
            }
        };
        let version = serde_json::from_str::<Value>(&ready)
            .ok()
            .filter(|v| v["ready"] == true)
            .and_then(|v| v["version"].as_str().map(str::to_owned));
        let Some(version) = version else {
            crate::idp::fail_start(
                "tests/browser/driver.mjs",
                child,
                &stderr,
                &format!("unexpected ready line {ready:?}"),
            )
        };
        Browser {
            child,
            stdin,
            lines,
            next_id: 1,
            version,
            stderr,
        }
    }

    /// The Chromium version, e.g. `156.0.8078.114`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What the driver printed on stderr so far, one entry a line.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends one command (a JSON object with `op` and its fields; the `id` is added here) and
    /// returns its `value`, or the driver's error message. Also an error: the driver died, or gave
    /// no answer within 60 s (or `timeout_ms` plus 15 s, when that is longer).
    pub fn call(&mut self, mut op: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let Some(fields) = op.as_object_mut() else {
            return Err(format!("a command is a JSON object, not {op}"));
        };
        fields.insert("id".into(), json!(id));
        let wait = op["timeout_ms"]
            .as_u64()
            .map(|ms| Duration::from_millis(ms) + Duration::from_secs(15))
            .map_or(CALL_TIMEOUT, |d| d.max(CALL_TIMEOUT));
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| "the driver's stdin is closed".to_owned())?;
        if let Err(e) = writeln!(stdin, "{op}").and_then(|()| stdin.flush()) {
            return Err(format!(
                "writing to the driver: {e}; its stderr:\n{}",
                self.stderr().join("\n")
            ));
        }

        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => return Err(format!("reading the driver's stdout: {e}")),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no answer to {op} within {} s", wait.as_secs()));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    return Err(format!(
                        "the driver exited ({status:?}) before answering {op}; its stderr:\n{}",
                        self.stderr().join("\n")
                    ));
                }
            };
            let Ok(answer) = serde_json::from_str::<Value>(&line) else {
                return Err(format!(
                    "the driver printed a line that is not JSON: {line:?}"
                ));
            };
            // An answer to an earlier command that timed out on this side: skip it.
            if answer["id"] != json!(id) {
                continue;
            }
            return if answer["ok"] == true {
                Ok(answer["value"].clone())
            } else {
                Err(answer["error"]
                    .as_str()
                    .unwrap_or("(no error message)")
                    .to_owned())
            };
        }
    }

    /// [`Browser::call`], panicking with the command and the error when it fails.
    fn must(&mut self, op: Value) -> Value {
        let shown = op.to_string();
        self.call(op)
            .unwrap_or_else(|e| panic!("browser {shown} failed: {e}"))
    }

    /// Opens a browser context `name` (one person: own cookies, one page) with a `width` x `height`
    /// viewport; downloads are accepted, console messages recorded.
    pub fn context(&mut self, name: &str, width: u32, height: u32) {
        self.must(json!({"op": "context", "ctx": name, "width": width, "height": height}));
    }

    /// Loads `url` and waits for its `load` event; returns the main response's status (none for,
    /// e.g., a same-document navigation) and the final URL, after redirects.
    pub fn goto(&mut self, ctx: &str, url: &str) -> (Option<u16>, String) {
        let v = self.must(json!({"op": "goto", "ctx": ctx, "url": url}));
        (status(&v), string(&v["url"]))
    }

    /// Clicks the first element matching `selector`; when that starts a navigation, waits for the
    /// new page to load. Returns the URL after it.
    pub fn click(&mut self, ctx: &str, selector: &str) -> String {
        let v = self.must(json!({"op": "click", "ctx": ctx, "selector": selector}));
        string(&v["url"])
    }

    /// Clicks the first element matching `selector`, which must start a navigation (a form's
    /// submit button); returns the status of its last response (after redirects) and the URL.
    pub fn submit(&mut self, ctx: &str, selector: &str) -> (Option<u16>, String) {
        let v = self.must(json!({"op": "submit", "ctx": ctx, "selector": selector}));
        (status(&v), string(&v["url"]))
    }

    /// Types `value` into the first input matching `selector`, replacing what was there.
    pub fn fill(&mut self, ctx: &str, selector: &str, value: &str) {
        self.must(json!({"op": "fill", "ctx": ctx, "selector": selector, "value": value}));
    }

    /// Selects the option with value (or label) `value` of the first `<select>` matching `selector`.
    pub fn select(&mut self, ctx: &str, selector: &str, value: &str) {
        self.must(json!({"op": "select", "ctx": ctx, "selector": selector, "value": value}));
    }

    /// Checks the first checkbox or radio button matching `selector`.
    pub fn check(&mut self, ctx: &str, selector: &str) {
        self.must(json!({"op": "check", "ctx": ctx, "selector": selector}));
    }

    /// The innerText of the first element matching `selector` (waiting for one to exist).
    pub fn text(&mut self, ctx: &str, selector: &str) -> String {
        string(&self.must(json!({"op": "text", "ctx": ctx, "selector": selector})))
    }

    /// The innerText of every element matching `selector` now, in document order.
    pub fn texts(&mut self, ctx: &str, selector: &str) -> Vec<String> {
        let v = self.must(json!({"op": "texts", "ctx": ctx, "selector": selector}));
        v.as_array()
            .unwrap_or_else(|| panic!("texts: not a list: {v}"))
            .iter()
            .map(string)
            .collect()
    }

    /// How many elements match `selector` now.
    pub fn count(&mut self, ctx: &str, selector: &str) -> usize {
        let v = self.must(json!({"op": "count", "ctx": ctx, "selector": selector}));
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or_else(|| panic!("count: not a number: {v}"))
    }

    /// Attribute `name` of the first element matching `selector`, if it has it.
    pub fn attr(&mut self, ctx: &str, selector: &str, name: &str) -> Option<String> {
        let v = self.must(json!({"op": "attr", "ctx": ctx, "selector": selector, "name": name}));
        v.as_str().map(str::to_owned)
    }

    /// The page's HTML as the browser has it now (after scripts).
    pub fn content(&mut self, ctx: &str) -> String {
        string(&self.must(json!({"op": "content", "ctx": ctx})))
    }

    /// The page's URL.
    pub fn url(&mut self, ctx: &str) -> String {
        string(&self.must(json!({"op": "url", "ctx": ctx})))
    }

    /// The page's title.
    pub fn title(&mut self, ctx: &str) -> String {
        string(&self.must(json!({"op": "title", "ctx": ctx})))
    }

    /// Waits (15 s at most) until the first element matching `selector` has innerText containing
    /// `text`, through htmx swaps and navigations; returns that innerText. The panic names the last
    /// text seen.
    pub fn wait_text(&mut self, ctx: &str, selector: &str, text: &str) -> String {
        string(
            &self.must(json!({"op": "wait_text", "ctx": ctx, "selector": selector, "text": text})),
        )
    }

    /// Waits (15 s at most) until no element matches `selector`.
    pub fn wait_gone(&mut self, ctx: &str, selector: &str) {
        self.must(json!({"op": "wait_gone", "ctx": ctx, "selector": selector}));
    }

    /// Waits (15 s at most) until the page's URL contains `contains` and that page has loaded;
    /// returns the URL.
    pub fn wait_url(&mut self, ctx: &str, contains: &str) -> String {
        string(&self.must(json!({"op": "wait_url", "ctx": ctx, "contains": contains})))
    }

    /// Saves a PNG of the viewport (or of the whole page) at `path`, creating its folders.
    pub fn screenshot(&mut self, ctx: &str, path: &Path, full_page: bool) {
        self.must(json!({
            "op": "screenshot", "ctx": ctx, "path": path_str(path), "full_page": full_page,
        }));
    }

    /// Resizes the page's viewport.
    pub fn viewport(&mut self, ctx: &str, width: u32, height: u32) {
        self.must(json!({"op": "viewport", "ctx": ctx, "width": width, "height": height}));
    }

    /// Runs axe-core on the page for WCAG 2.0 and 2.1, levels A and AA; returns the violations,
    /// each `{id, impact, help, nodes: [target selector]}` (none on an accessible page).
    pub fn axe(&mut self, ctx: &str) -> Vec<Value> {
        let v = self.must(json!({"op": "axe", "ctx": ctx}));
        v["violations"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("axe: no violations list: {v}"))
    }

    /// Clicks the first element matching `selector`, waits for the download it starts and saves
    /// it at `path`; returns the file name the server suggested.
    pub fn download(&mut self, ctx: &str, selector: &str, path: &Path) -> String {
        let v = self.must(json!({
            "op": "download", "ctx": ctx, "selector": selector, "path": path_str(path),
        }));
        string(&v["suggested_filename"])
    }

    /// Runs `fetch(url, {method, body})` in the page, so with its cookies, its origin and under its
    /// CSP (`connect-src` must allow `url`); returns the status and the body.
    pub fn fetch(
        &mut self,
        ctx: &str,
        url: &str,
        method: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let v = self.must(json!({
            "op": "fetch", "ctx": ctx, "url": url, "method": method, "body": body,
        }));
        let status = status(&v).unwrap_or_else(|| panic!("fetch: no status: {v}"));
        (status, string(&v["body"]))
    }

    /// The console messages, page errors (type `pageerror`) and CSP violations (console errors)
    /// of the context's page so far, each `{type, text}`.
    pub fn console(&mut self, ctx: &str) -> Vec<Value> {
        let v = self.must(json!({"op": "console", "ctx": ctx}));
        v.as_array()
            .cloned()
            .unwrap_or_else(|| panic!("console: not a list: {v}"))
    }

    /// Closes the browser context `ctx` (the person leaves; their cookies go with it).
    pub fn close(&mut self, ctx: &str) {
        self.must(json!({"op": "close", "ctx": ctx}));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // EOF on stdin: the driver closes Chromium and exits. Killing node at once could leave
        // Chromium's processes behind.
        drop(self.stdin.take());
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `status` field of an answer, when it is a number.
fn status(v: &Value) -> Option<u16> {
    v["status"].as_u64().and_then(|s| u16::try_from(s).ok())
}

/// A string in an answer; panics on anything else.
fn string(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("the browser answered {v}, not a string"))
        .to_owned()
}

/// A path for the driver, which takes JSON strings.
fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("not a UTF-8 path: {}", path.display()))
}
