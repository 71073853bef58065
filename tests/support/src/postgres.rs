//! A real PostgreSQL server for the tests, from Debian's packages: a fresh cluster made with
//! `initdb` in a temporary folder, started with `pg_ctl` on a free loopback port, with one role and
//! database (`sallyport`, password-authenticated over TCP with SCRAM) and the superuser reachable
//! only over its Unix socket. It can be stopped and started again (a database outage, for the
//! tests that need one), and is stopped, fast, when dropped.
//!
//! PostgreSQL will not run as root, and tests run as root in CI: the cluster then belongs to the
//! `postgres` user the Debian package creates, and every server command runs as that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The role and database the tests use.
pub const ROLE: &str = "sallyport";
/// That role's password (a test secret).
pub const PASSWORD: &str = "sallyport-test-password";

/// A running test cluster. Stopped when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest PostgreSQL server binaries Debian installed (`/usr/lib/postgresql/N/bin`).
fn server_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server under {}: run tests/run, which installs Debian's postgresql",
                root.display()
            )
        });
    root.join(newest.to_string()).join("bin")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// Makes and starts a fresh cluster, with the role and database [`ROLE`].
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("sallyport-pg")
            .tempdir()
            .unwrap();
        let pg = Postgres {
            bin: server_bin(),
            port: free_port(),
            as_postgres: is_root(),
            dir,
        };
        if pg.as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(chown.success(), "chown of the test cluster's folder failed");
        }
        std::fs::write(pg.dir.path().join("pwfile"), PASSWORD).unwrap();
        pg.must(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "--username=postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        pg.start_server();
        pg.psql_superuser(&format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"));
        pg.psql_superuser(&format!("CREATE DATABASE {ROLE} OWNER {ROLE}"));
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Runs a server program (`initdb`, `pg_ctl`, `psql`), as `postgres` when the tests are root.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .env("PGHOST", self.socket_dir())
            .env("PGPORT", self.port.to_string())
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    fn must(&self, program: &str, args: &[&str]) -> Output {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn start_server(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=100",
            self.port,
            self.socket_dir().display()
        );
        let data = self.data().display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        );
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // `pg_ctl -w` returns once the server takes connections.
        assert!(
            self.accepts(),
            "PostgreSQL started but does not accept connections"
        );
    }

    /// Whether the server answers on its socket now.
    fn accepts(&self) -> bool {
        self.run("pg_isready", &["-q"]).status.success()
    }

    /// Runs `sql` as the superuser over the Unix socket; returns what psql printed.
    pub fn psql_superuser(&self, sql: &str) -> String {
        let out = self.must(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://sallyport@127.0.0.1:PORT/sallyport`: the URL of the test database, without its
    /// password (that goes in a file, as a broker takes it: [`Postgres::password_file`]).
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{ROLE}", self.port)
    }

    /// A file holding the role's password, for `[store] password_file`.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("pwfile")
    }

    /// Stops the server (`fast`: sessions are cut), as an outage would.
    pub fn stop(&self) {
        let data = self.data().display().to_string();
        self.must("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    /// Starts it again after [`Postgres::stop`], on the same port.
    pub fn restart(&self) {
        self.start_server();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}
