//! The command line as a new user meets it: `init` (the demo, and with `--host` a real broker's, with
//! `--group`), `certs issue`, `config check`, `serve` on embedded defaults with its printed example
//! session, invalid configs and policies (exit 64 naming file, line, key and fix), `--help`, and
//! `/healthz`.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use sallyport_testkit::{Broker, CustomerSpec, Setup, connector, request};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

#[test]
fn init_refuses_to_overwrite_without_force() {
    let s = Setup::init(BIN);
    for f in [
        "sallyport.toml",
        "pki/ca.pem",
        "pki/ca.key",
        "pki/server.pem",
        "pki/server.key",
        "pki/grant-signing.key",
        "policies/acme.cedar",
    ] {
        assert!(s.root.join(f).is_file(), "{f} missing");
    }
    for which in ["technician", "approver", "admin"] {
        for f in ["cert.pem", "key.pem", "ca.pem", "broker"] {
            assert!(
                s.root.join("identities").join(which).join(f).is_file(),
                "{which}/{f}"
            );
        }
    }
    let ca_before = std::fs::read(s.root.join("pki/ca.pem")).unwrap();
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&s.root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(s.root.join("pki/ca.pem")).unwrap(),
        ca_before,
        "CA was touched"
    );
    let out = Command::new(BIN)
        .args(["init", "--force", "--host", "broker.example", "--dir"])
        .arg(&s.root)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_ne!(std::fs::read(s.root.join("pki/ca.pem")).unwrap(), ca_before);
    let grant_key = std::fs::metadata(s.root.join("pki/grant-signing.key")).unwrap();
    assert_eq!(grant_key.permissions().mode() & 0o777, 0o600);
    let key_pem = std::fs::read_to_string(s.root.join("pki/grant-signing.key")).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "grant key is not PKCS#8 PEM"
    );
}

#[test]
fn certs_issue_writes_identity_folders_for_every_role() {
    let s = Setup::init(BIN);
    let out_dir = s.root.join("people");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "technician",
                "carol",
                "--provider",
                "northwind",
                "--group",
                "dba",
                "--group",
                "oncall",
            ],
            "spiffe://sallyport.local/technician/northwind/carol",
        ),
        (
            vec!["approver", "dave", "--customer", "acme"],
            "spiffe://sallyport.local/approver/acme/dave",
        ),
        (
            vec!["auditor", "erin", "--customer", "acme"],
            "spiffe://sallyport.local/auditor/acme/erin",
        ),
        (
            vec!["admin", "frank"],
            "spiffe://sallyport.local/admin/frank",
        ),
    ];
    for (args, spiffe) in cases {
        let out = out_dir.join(args[1]);
        let st = Command::new(BIN)
            .args(["certs", "issue"])
            .args(&args)
            .arg("--dir")
            .arg(&s.root)
            .arg("--out")
            .arg(&out)
            .args(["--hours", "2"])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let id = sallyport_certs::identity_dir::IdentityDir::read(&out).unwrap();
        assert_eq!(id.broker, "localhost:8443");
        let peer = sallyport_testkit::peer_of(&id);
        assert_eq!(peer.id.to_string(), spiffe);
        let life = peer
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(
            life <= std::time::Duration::from_secs(2 * 3600 + 5),
            "{life:?}"
        );
        let mode = std::fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        if args[0] == "technician" {
            let mut g: Vec<String> = peer.groups.iter().map(|g| g.to_string()).collect();
            g.sort();
            assert_eq!(g, ["dba", "oncall"]);
        }
    }
    // An approver for an unknown customer is refused, and nothing is written.
    let out = out_dir.join("ghost");
    let st = Command::new(BIN)
        .args([
            "certs",
            "issue",
            "approver",
            "ghost",
            "--customer",
            "initech",
            "--dir",
        ])
        .arg(&s.root)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("`initech` is not configured"));
    assert!(!out.exists());
    // A bad name is refused with the rule.
    let st = Command::new(BIN)
        .args(["certs", "issue", "admin", "Bad Name", "--dir"])
        .arg(&s.root)
        .arg("--out")
        .arg(out_dir.join("bad"))
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("invalid name `Bad Name`"));
}

fn serve_fails(s: &Setup) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(s.config())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A broker that starts despite the bad input would run forever: give it 20 s, then fail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker started despite the invalid input");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn invalid_config_exits_64_naming_file_line_field_and_fix() {
    let s = Setup::init(BIN);
    let cfg = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        cfg.replace(
            "timezone = \"Europe/Berlin\"",
            "timezone = \"Europe/Atlantis\"",
        ),
    )
    .unwrap();
    let (code, err) = serve_fails(&s);
    assert_eq!(code, 64, "{err}");
    let line = cfg.lines().position(|l| l.starts_with("timezone")).unwrap() + 1;
    assert!(err.contains(&format!("sallyport.toml:{line}")), "{err}");
    assert!(err.contains("customers[0].timezone"), "{err}");
    assert!(err.contains("fix: use an IANA time zone"), "{err}");

    std::fs::write(s.config(), cfg.replace("[limits]", "[limits]\nspeed = 11")).unwrap();
    let (code, err) = serve_fails(&s);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("speed"), "{err}");
    assert!(err.contains("fix:"), "{err}");

    std::fs::write(
        s.config(),
        cfg.replace("pki/grant-signing.key", "pki/missing.key"),
    )
    .unwrap();
    let (code, err) = serve_fails(&s);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("grants.signing_key") && err.contains("missing.key"),
        "{err}"
    );
}

#[test]
fn invalid_policy_stops_start_up_naming_file_and_line() {
    let s = Setup::init(BIN);
    s.write_config(
        &[CustomerSpec {
            id: "acme",
            timezone: "UTC",
            policy: "// comment\npermit(principal, action, resource)\nwhen { resource.no_such_attribute == 1 };\n",
            targets: vec![("db01", "127.0.0.1:1".into(), vec![])],
        }],
        "",
    );
    let (code, err) = serve_fails(&s);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("policies/acme.cedar:"), "{err}");
    assert!(err.contains("customers[0].policy"), "{err}");

    std::fs::write(
        s.root.join("policies/acme.cedar"),
        "permit(principal, action, resource) when { true }\nforbid(",
    )
    .unwrap();
    let (code, err) = serve_fails(&s);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("policies/acme.cedar:"), "{err}");
}

#[test]
fn help_explains_the_commands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "init", "config", "certs", "grant", "connect"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
    let out = Command::new(BIN)
        .args(["connect", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SALLYPORT_IDENTITY"));
    let out = Command::new(BIN).args(["init", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for what in [
        "0.0.0.0:8443",
        "/var/lib/sallyport",
        "--data-dir",
        "--group",
        "demo",
    ] {
        assert!(text.contains(what), "init --help lacks {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_on_the_listener() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let a = request(
        b.addr,
        &connector(&s.identity("approver")),
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert!(a.body.contains("ok"));
}

#[test]
fn serve_on_embedded_defaults_prints_a_session_that_works() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(tmp.path())
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let b = Broker::spawn(cmd);
    // Wait for the printed example (the last line mentions the audit trail).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let printed = loop {
        let lines = b.stdout.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("audit trail")) {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no example printed: {lines:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        printed
            .iter()
            .any(|l| l.contains("demo target acme/web served on")),
        "{printed:?}"
    );
    let steps: Vec<String> = printed
        .iter()
        .skip_while(|l| !l.starts_with("Try the access workflow"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect();
    let step = |word: &str| -> String {
        steps
            .iter()
            .find(|l| l.contains(word))
            .unwrap_or_else(|| panic!("no `{word}` step in {printed:?}"))
            .split("    #")
            .next()
            .unwrap()
            .to_owned()
    };
    let vars = step("T=");
    let sh = |script: String| {
        let mut cmd = Command::new("sh");
        cmd.current_dir(tmp.path()).arg("-c").arg(script);
        cmd
    };
    // Steps 1 to 3 as printed (request, list, approve), then the forwarder with port 0 instead of
    // 7001 and without the trailing `&`, in the same shell.
    let connect_line = step(" connect ").replace("127.0.0.1:7001", "127.0.0.1:0");
    let connect_line = connect_line.trim_end_matches('&').trim();
    let mut fwd = sh(format!(
        "set -e\n{vars}\n{}\n{}\n{}\nexec {connect_line}",
        step(" request "),
        step(" requests "),
        step(" approve ")
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(fwd.stdout.take().unwrap()).lines();
    let mut before = Vec::new();
    let local = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let found = l
                .strip_prefix("sallyport: listening on ")
                .map(str::to_owned);
            before.push(l);
            found
        })
        .unwrap_or_else(|| {
            let mut err = String::new();
            fwd.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the printed steps failed: {before:?} {err}")
        });
    std::thread::spawn(move || lines.for_each(drop));
    assert!(
        before.iter().any(|l| l.contains("pending")),
        "the approver's list: {before:?}"
    );
    let gid = before
        .iter()
        .find_map(|l| l.split("(grant ").nth(1))
        .map(|g| g.trim_end_matches(')').to_owned())
        .unwrap_or_else(|| panic!("approve printed no grant: {before:?}"));
    // The curl step: an HTTP request through the forwarder reaches the demo page.
    let mut conn = std::net::TcpStream::connect(&local).unwrap();
    std::io::Write::write_all(
        &mut conn,
        b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert!(page.contains("Hello from acme/web"), "{page}");
    // The sessions and revoke steps, with the grant id approve printed.
    let rest = sh(format!(
        "set -e\n{vars}\n{}\n{}",
        step(" sessions "),
        step(" revoke ").replace("GRANT_ID", &gid)
    ))
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&rest.stdout);
    assert!(
        rest.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&rest.stderr)
    );
    assert!(
        out.contains("acme/web") && out.contains(&format!("revoked grant {gid}")),
        "{out}"
    );
    // The break-glass step.
    let glass = printed
        .iter()
        .skip_while(|l| !l.starts_with("Break-glass"))
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let grant = sh(format!("{vars}\n{glass}")).output().unwrap();
    assert!(
        grant.status.success(),
        "{}",
        String::from_utf8_lossy(&grant.stderr)
    );
    assert!(tmp.path().join("grant.jwt").metadata().unwrap().len() > 100);
    let audit = sallyport_testkit::trail_text(&tmp.path().join("sallyport-data/data"), "acme");
    for event in [
        "request_filed",
        "request_approved",
        "tunnel_open",
        "grant_revoked",
    ] {
        assert!(audit.contains(&format!("\"event\":\"{event}\"")), "{event}");
    }
}

#[test]
fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let _first = Broker::start(&s);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another broker is already running") && err.contains("server.data_dir"),
        "{err}"
    );
}

#[test]
fn the_forwarder_refuses_a_non_loopback_listen_address() {
    let s = Setup::init(BIN);
    std::fs::write(s.root.join("grant.jwt"), "x.y.z").unwrap();
    let out = Command::new(BIN)
        .args(["connect", "acme/web", "--listen", "0.0.0.0:0", "--grant"])
        .arg(s.root.join("grant.jwt"))
        .arg("--identity")
        .arg(s.root.join("identities/technician"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--allow-remote"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revoke_api_refuses_bad_input_with_json_errors_and_changes_nothing() {
    let (s, _) = Setup::with_echo_target(BIN, "");
    let b = Broker::start(&s);
    let (_, gid) = s.break_glass(5);
    let approver = connector(&s.identity("approver"));
    let post = |path: String, body: String| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let path = format!("/v1/grants/{gid}/revoke");
    let cases = [
        (
            post(path.clone(), "{\"reason\": 1}".into()),
            400,
            "bad_json",
        ),
        (
            post(path.clone(), "{\"reason\":\"x\",\"extra\":1}".into()),
            400,
            "unknown field",
        ),
        (
            post(path.clone(), "{\"reason\":\"  \"}".into()),
            400,
            "bad_reason",
        ),
        (
            post(
                path.clone(),
                format!("{{\"reason\":\"{}\"}}", "a".repeat(70_000)),
            ),
            413,
            "body_too_large",
        ),
        (
            post(
                "/v1/grants/g-nope/revoke".into(),
                "{\"reason\":\"x\"}".into(),
            ),
            404,
            "not_found",
        ),
    ];
    for (head, status, needle) in cases {
        let a = request(b.addr, &approver, &head).await.unwrap();
        assert_eq!(a.status, status, "{}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert!(v["error"]["code"].is_string(), "{}", a.body);
        assert!(a.body.contains(needle), "{needle}: {}", a.body);
    }
    // Another technician cannot see the grant at all.
    let carol = s.technician("carol", &["support"], sallyport_testkit::valid_for(3600));
    let a = request(
        b.addr,
        &connector(&carol),
        &post(path, "{\"reason\":\"x\"}".into()),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(
        s.audit("acme")
            .iter()
            .all(|r| r["event"] != "grant_revoked"),
        "a refused revocation was recorded as done"
    );
}

#[test]
fn break_glass_refuses_bad_input_and_records_nothing() {
    let s = Setup::init(BIN);
    let other = tempfile::tempdir().unwrap();
    let foreign = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(foreign.status.success());
    let tech = s.root.join("identities/technician/cert.pem");
    let cases: Vec<(String, std::path::PathBuf, &str)> = vec![
        (
            "--customer initech --target web --minutes 5".into(),
            tech.clone(),
            "unknown customer `initech`",
        ),
        (
            "--customer acme --target db99 --minutes 5".into(),
            tech.clone(),
            "has no target `db99`",
        ),
        (
            "--customer acme --target web --minutes 0".into(),
            tech.clone(),
            "--minutes 0 is out of range",
        ),
        (
            "--customer acme --target web --minutes 100000".into(),
            tech.clone(),
            "is out of range",
        ),
        (
            "--customer acme --target web --minutes 5".into(),
            other.path().join("identities/technician/cert.pem"),
            "not a valid certificate of this broker's CA",
        ),
        (
            "--customer acme --target web --minutes 5".into(),
            s.root.join("identities/approver/cert.pem"),
            "is not a technician",
        ),
    ];
    for (args, cert, needle) in cases {
        let out = Command::new(BIN)
            .args(["grant", "--config"])
            .arg(s.config())
            .arg("--technician-cert")
            .arg(&cert)
            .args(args.split(' '))
            .args(["--reason", "outage"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args}");
        assert!(out.stdout.is_empty(), "{args}: a token was printed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args}: {err}");
    }
    let recorded = sallyport_testkit::trail_text(&s.root.join("data"), "acme");
    assert!(
        !recorded.contains("grant_minted"),
        "a refused grant was recorded"
    );
}

/// Runs `sallyport ARGS`; returns (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn init_with_host_writes_a_real_broker_with_no_demo_customer_or_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc-sallyport");
    let state = tmp.path().join("state");
    let (code, out, err) = run(&[
        os("init"),
        os("--dir"),
        dir.as_os_str(),
        os("--host"),
        os("broker.msp.example"),
        os("--host"),
        os("10.0.0.10"),
        os("--data-dir"),
        state.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    let cfg = sallyport_config::Config::load(&dir.join("sallyport.toml")).unwrap();
    assert_eq!(cfg.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(cfg.public_address, "broker.msp.example:8443");
    assert_eq!(cfg.data_dir, state);
    assert_eq!(
        cfg.admin.listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090"),
        "the HEALTHCHECK's admin listener, on loopback"
    );
    assert!(cfg.customers.is_empty());
    assert!(!dir.join("identities").exists(), "demo identities written");
    assert!(
        !dir.join("policies/acme.cedar").exists(),
        "demo policy written"
    );
    assert!(!state.exists(), "init touched the state directory");
    // It says what it did and what comes next.
    for text in [
        "broker.msp.example:8443",
        "no customer and no identity",
        "sallyport config check --config",
        "sallyport certs issue",
        "--group sallyport",
    ] {
        assert!(out.contains(text), "{text} not in:\n{out}");
    }
    let san = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.join("pki/server.pem"))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&san.stdout);
    assert!(
        san.contains("DNS:broker.msp.example") && san.contains("IP Address:10.0.0.10"),
        "{san}"
    );
    // The configuration checks as it is, with no customer.
    let (code, out, err) = run(&[
        os("config"),
        os("check"),
        os("--config"),
        dir.join("sallyport.toml").as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("customers: 0"), "{out}");
    // Identities issued from it point at the host, and are registered in the state directory.
    let alice = tmp.path().join("alice");
    let (code, _, err) = run(&[
        os("certs"),
        os("issue"),
        os("technician"),
        os("alice"),
        os("--provider"),
        os("northwind"),
        os("--dir"),
        dir.as_os_str(),
        os("--out"),
        alice.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(alice.join("broker"))
            .unwrap()
            .trim(),
        "broker.msp.example:8443"
    );
    assert!(state.join("sallyport.db").is_file());
    // Without --data-dir, the state directory is the packages' one.
    let dir2 = tmp.path().join("second");
    let (code, _, err) = run(&[
        os("init"),
        os("--dir"),
        dir2.as_os_str(),
        os("--host"),
        os("broker.msp.example"),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(dir2.join("sallyport.toml")).unwrap();
    assert!(text.contains("data_dir = \"/var/lib/sallyport\""), "{text}");
}

#[test]
fn init_refuses_bad_hosts_data_dirs_and_groups_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broker");
    let d = dir.as_os_str();
    for (args, expect) in [
        (
            vec![os("--host"), os("broker msp!")],
            "--host `broker msp!`: not a DNS name or an IP address",
        ),
        (
            vec![os("--host"), os("b.example"), os("--data-dir"), os("state")],
            "--data-dir state: use an absolute path",
        ),
        (vec![os("--data-dir"), os("/srv/state")], "--host"),
        (
            vec![os("--group"), os("no-such-group-here")],
            "--group no-such-group-here: no such group in /etc/group",
        ),
    ] {
        let mut all = vec![os("init"), os("--dir"), d];
        all.extend(args);
        let (code, _, err) = run(&all);
        assert_ne!(code, 0);
        assert!(err.contains(expect), "{expect} not in: {err}");
        assert!(!dir.join("pki").exists(), "written despite: {err}");
    }
}

#[test]
fn init_with_group_lets_that_group_read_the_config_and_the_brokers_keys() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broker");
    // Root may give files to any group; anyone else to a group they are in.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let gid = if root {
        4242
    } else {
        std::fs::metadata(tmp.path()).unwrap().gid()
    };
    let (code, _, err) = run(&[
        os("init"),
        os("--dir"),
        dir.as_os_str(),
        os("--host"),
        os("broker.msp.example"),
        os("--data-dir"),
        tmp.path().join("state").as_os_str(),
        os("--group"),
        os(&gid.to_string()),
    ]);
    assert_eq!(code, 0, "{err}");
    for (path, mode, group) in [
        ("", 0o750, true),
        ("pki", 0o750, true),
        ("policies", 0o750, true),
        ("sallyport.toml", 0o640, true),
        ("pki/server.key", 0o640, true),
        ("pki/grant-signing.key", 0o640, true),
        ("pki/audit-signing.key", 0o640, true),
        ("pki/ca.pem", 0o644, true),
        ("pki/server.pem", 0o644, true),
        ("pki/ca.key", 0o600, false),
    ] {
        let m = std::fs::metadata(dir.join(path)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, mode, "mode of {path}");
        if group {
            assert_eq!(m.gid(), gid, "group of {path}");
        }
    }
}

#[test]
fn config_check_prints_customers_targets_policies_and_sinks() {
    use sha2::Digest as _;
    let (s, port) = Setup::with_echo_target(BIN, "");
    std::fs::write(s.root.join("hook.secret"), "0123456789abcdef0123").unwrap();
    s.append_config(
        "[customers.webhook]\nurl = \"https://hooks.example/services/T0/B0/SECRETPATH\"\nsecret_file = \"hook.secret\"\n\n[[customers.siem]]\nkind = \"syslog\"\naddress = \"siem.acme.example:514\"\n",
    );
    let (code, out, err) = run(&[
        os("config"),
        os("check"),
        os("--config"),
        s.config().as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    let policy = std::fs::read(s.root.join("policies/acme.cedar")).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(&policy));
    for text in [
        ": valid".to_owned(),
        "customers: 1".to_owned(),
        "acme (time zone Europe/Berlin)".to_owned(),
        format!("db01 -> 127.0.0.1:{port} (tcp; tags prod)"),
        format!("(sha256 {digest})"),
        "      support\n".to_owned(),
        "webhook: https://hooks.example/...".to_owned(),
        "siem: syslog siem.acme.example:514".to_owned(),
    ] {
        assert!(out.contains(&text), "{text:?} not in:\n{out}");
    }
    assert!(
        !out.contains("SECRETPATH"),
        "the webhook's path is printed:\n{out}"
    );
}

#[test]
fn config_check_exits_64_naming_the_key_line_and_fix() {
    let s = Setup::init(BIN);
    let cfg = std::fs::read_to_string(s.config()).unwrap();
    let check = || {
        run(&[
            os("config"),
            os("check"),
            os("--config"),
            s.config().as_os_str(),
        ])
    };
    std::fs::write(s.config(), cfg.replace("\nlisten = ", "\nlistn = ")).unwrap();
    let line = cfg.lines().position(|l| l.starts_with("listen")).unwrap() + 1;
    let (code, out, err) = check();
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains(&format!(
            "sallyport.toml:{line}: `server.listn`: unknown key `listn` in [server]"
        )),
        "{err}"
    );
    assert!(err.contains("fix: did you mean `listen`?"), "{err}");
    assert!(out.is_empty(), "{out}");
    // The fix points to documentation the binary carries, not to a file of the source tree.
    assert!(err.contains("`sallyport config example`"), "{err}");
    assert!(!err.contains("deploy/"), "{err}");
    let (code, example, _) = run(&[os("config"), os("example")]);
    assert_eq!(code, 0);
    assert_eq!(
        example,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/sallyport.toml"
        ))
        .unwrap()
    );
    for key in [
        "listen",
        "public_address",
        "[admin]",
        "[limits]",
        "[[customers]]",
    ] {
        assert!(example.contains(key), "{key} not in the example");
    }

    std::fs::write(
        s.config(),
        cfg.replace("\"pki/server.key\"", "\"pki/gone.key\""),
    )
    .unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("`tls.key`") && err.contains("gone.key"),
        "{err}"
    );

    let (code, _, err) = run(&[
        os("config"),
        os("check"),
        os("--config"),
        s.root.join("nope.toml").as_os_str(),
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("cannot read the configuration"), "{err}");
}
