//! A PostgreSQL cluster of a test's own, for tests that stop, kill, fence or fail over
//! the database: never the shared server the other tests use. `initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/<version>/bin` (or `BERTH_PG_BIN`), in a temporary directory, on
//! a free loopback port; run as the `postgres` user when the test runs as root (PostgreSQL
//! refuses root). Trust authentication on 127.0.0.1 only.
//!
//! [`TcpProxy`] sits between Berth and the cluster so that a test can move the address
//! Berth connects to (a failover behind a DNS name or a load balancer) without closing
//! the connections already open.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// One PostgreSQL server in a directory of its own.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

fn pg_bin() -> PathBuf {
    if let Ok(b) = std::env::var("BERTH_PG_BIN") {
        return PathBuf::from(b);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or BERTH_PG_BIN)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with pg_ctl")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl PgCluster {
    /// A new cluster, started, with superuser `berth` and database `berth`.
    pub fn start() -> PgCluster {
        let c = PgCluster::empty();
        c.run(
            "initdb",
            &[
                "-D",
                &c.data(),
                "-U",
                "berth",
                "--auth=trust",
                "-N",
                "-E",
                "UTF8",
            ],
        );
        c.start_server();
        c.sql("postgres", "CREATE DATABASE berth");
        c
    }

    fn empty() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("berth-pg-")
            .tempdir()
            .expect("tempdir");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        PgCluster {
            dir,
            bin: pg_bin(),
            port: free_port(),
            as_postgres,
        }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn start_server(&self) {
        let log = self.dir.path().join("server.log").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c max_connections=100 -c wal_level=replica -c hot_standby=on",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// Stops the server: `fast` (clients are told, transactions roll back) or `immediate`
    /// (like a crash).
    pub fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    /// `pg_ctl promote`: a standby becomes a primary.
    pub fn promote(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-w", "promote"]);
    }

    /// A streaming standby of this server (a base backup with `standby.signal`), started.
    pub fn standby(&self) -> PgCluster {
        let s = PgCluster::empty();
        s.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "berth",
                "-D",
                &s.data(),
                "-R",
                "-X",
                "stream",
                // An immediate checkpoint: the default spreads it over minutes.
                "-c",
                "fast",
            ],
        );
        s.start_server();
        s
    }

    /// The URL of database `berth`.
    pub fn url(&self) -> String {
        self.url_at(self.port)
    }

    /// The URL of database `berth` through another port (a [`TcpProxy`]).
    pub fn url_at(&self, port: u16) -> String {
        format!("postgres://berth@127.0.0.1:{port}/berth")
    }

    /// Runs `sql` in `db` with psql, and returns what it printed (unaligned, tuples only).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "berth",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if Path::new(&self.data()).join("postmaster.pid").exists() {
            let exe = self.bin.join("pg_ctl");
            let mut cmd = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&exe);
                c
            } else {
                Command::new(&exe)
            };
            let _ = cmd
                .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A TCP forwarder on a loopback port whose target can be changed: connections already
/// open stay with the server they reached.
pub struct TcpProxy {
    pub port: u16,
    target: Arc<Mutex<u16>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: u16) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = Arc::new(Mutex::new(target));
        let t = Arc::clone(&target);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *t.lock().unwrap_or_else(|p| p.into_inner());
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        TcpProxy { port, target, task }
    }

    /// New connections go to `port` from now on.
    pub fn point_at(&self, port: u16) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = port;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
