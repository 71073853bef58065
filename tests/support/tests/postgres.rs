//! The test kit's PostgreSQL: a fresh cluster from Debian's packages starts, takes the test role
//! with its password over TCP (and refuses a wrong one), goes away when stopped and comes back on
//! the same port when restarted.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::process::Command;

use sallyport_testkit::postgres::{PASSWORD, Postgres, ROLE};

/// `SELECT 1` over TCP as the test role with `password`: (worked, what psql said).
fn select_one(pg: &Postgres, password: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            ROLE,
            "-d",
            ROLE,
            "-c",
            "SELECT 1",
        ])
        .arg("-p")
        .arg(pg.port().to_string())
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_test_cluster_starts_authenticates_stops_and_restarts() {
    let pg = Postgres::start();
    assert!(pg.url().starts_with("postgres://sallyport@127.0.0.1:"));
    assert!(!pg.url().contains(PASSWORD), "no password in the URL");
    assert_eq!(
        std::fs::read_to_string(pg.password_file()).unwrap(),
        PASSWORD
    );
    let (ok, said) = select_one(&pg, PASSWORD);
    assert!(ok && said.trim() == "1", "{said}");
    let (ok, said) = select_one(&pg, "wrong");
    assert!(
        !ok && said.contains("password authentication failed"),
        "{said}"
    );

    pg.stop();
    let (ok, said) = select_one(&pg, PASSWORD);
    assert!(!ok, "stopped, yet: {said}");
    pg.restart();
    let (ok, said) = select_one(&pg, PASSWORD);
    assert!(ok, "{said}");
    assert_eq!(pg.psql_superuser("SELECT current_user").trim(), "postgres");
}
