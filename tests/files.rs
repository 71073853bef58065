//! End-to-end tests of what the broker leaves on disk: the signing keys `init` writes are read by
//! OpenSSL and Python's `cryptography`, and everything under the data folder (the folder itself, the
//! SQLite store and its journal files, audit segments and checkpoints, session captures) is private to
//! the broker's user even when it runs under a umask of 000.
#![expect(clippy::panic, reason = "a test fails loudly on anything unexpected")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use sallyport_testkit::{Broker, Setup, connector};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

#[test]
fn the_signing_keys_init_writes_are_read_by_openssl_and_python() {
    let s = Setup::init(BIN);
    for key in ["pki/grant-signing.key", "pki/audit-signing.key"] {
        let path = s.root.join(key);
        let out = Command::new("openssl")
            .args(["pkey", "-noout", "-text", "-in"])
            .arg(&path)
            .output()
            .expect("openssl is installed by the test entry point");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("ED25519 Private-Key"),
            "openssl could not read {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys\n\
                 from cryptography.hazmat.primitives.serialization import load_pem_private_key\n\
                 from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n\
                 k = load_pem_private_key(open(sys.argv[1], 'rb').read(), None)\n\
                 assert isinstance(k, Ed25519PrivateKey)\n\
                 print('ed25519')",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ed25519",
            "python could not read {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_key_written_by_openssl_is_used_by_the_broker() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    let key = s.root.join("pki/grant-signing.key");
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    // The broker starts on it and the grants it signs carry it: a break-glass grant verifies.
    let b = Broker::start(&s);
    let (token, _) = s.break_glass(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let alice = connector(&s.identity("technician"));
        sallyport_testkit::connect(b.addr, &alice, &format!("db01.acme:{port}"), Some(&token))
            .await
            .unwrap()
            .status
    });
    assert_eq!(status, 200);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_data_folder_is_private_whatever_the_umask() {
    let (s, port) = Setup::with_echo_target(BIN, "");
    s.append_config("record = true\n");
    // The broker runs under umask 000: every file would be world-writable if created with defaults.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 000 && exec \"$0\" serve --config \"$1\""])
        .arg(BIN)
        .arg(s.config());
    let b = Broker::spawn(cmd);
    let (token, _) = s.break_glass(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let alice = connector(&s.identity("technician"));
        let mut a =
            sallyport_testkit::connect(b.addr, &alice, &format!("db01.acme:{port}"), Some(&token))
                .await
                .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        a.stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        a.stream.read_exact(&mut back).await.unwrap();
        a.stream.shutdown().await.unwrap();
    });
    s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");

    let data = s.root.join("data");
    let mut dirs = vec![data.clone()];
    let mut files = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path.clone());
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    // What must be there, so the walk cannot pass on an empty folder.
    for name in [
        "sallyport.db",
        "sallyport.db-wal",
        "broker.lock",
        ".cap",
        ".jsonl",
    ] {
        assert!(
            files.iter().any(|f| f.to_string_lossy().ends_with(name)),
            "no {name} in {files:?}"
        );
    }
    for dir in &dirs {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
}
