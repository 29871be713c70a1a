//! A throwaway PostgreSQL cluster for the tests of this crate: started once
//! per test binary (on first use) with `wal_level=logical`, on a free port of
//! 127.0.0.1 and a private unix-socket folder, and stopped (its files
//! removed) by a watchdog process when the test binary exits.
//!
//! Authentication: `trust` over the unix socket (for the `postgres`
//! superuser that sets tests up), and over TCP one role per method: SCRAM,
//! MD5, cleartext and trust.
//!
//! PostgreSQL refuses to run as root: then the server programs run as the
//! `postgres` user, which owns the cluster's folder.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_replication::ReplicationConfig;

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASSWORD: &str = "scram-Secret-7f3a";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5-Secret-91bc";
pub const CLEAR_USER: &str = "clear_user";
pub const CLEAR_PASSWORD: &str = "clear-Secret-2d4e";
pub const TRUST_USER: &str = "trust_user";

pub struct Cluster {
    pub bindir: PathBuf,
    pub root: PathBuf,
    pub port: u16,
    /// Keeps the watchdog's stdin open; see the module docs.
    _watchdog: Child,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: install PostgreSQL or set SLUICE_PG_BINDIR")
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL server in /usr/lib/postgresql/*/bin").1
}

/// `(uid, gid)` of the `postgres` user when running as root.
fn run_as() -> Option<(u32, u32)> {
    let out = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().unwrap();
        assert!(out.status.success(), "running as root and there is no `postgres` user to run PostgreSQL as");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Some((id("-u"), id("-g")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    fn start() -> Cluster {
        let bindir = bindir();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let root = std::env::temp_dir().join(format!("sluice-repl-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let owner = run_as();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        }
        let server = |program: &str| {
            let mut cmd = Command::new(bindir.join(program));
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
            cmd.current_dir(&root).stdin(Stdio::null());
            for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGPASSWORD"] {
                cmd.env_remove(var);
            }
            cmd
        };
        let data = root.join("data");
        let out = server("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 host all {TRUST_USER} 127.0.0.1/32 trust\n\
                 host all {MD5_USER} 127.0.0.1/32 md5\n\
                 host all {CLEAR_USER} 127.0.0.1/32 password\n\
                 host all all 127.0.0.1/32 scram-sha-256\n"
            ),
        )
        .unwrap();

        let settings = [
            ("listen_addresses", "127.0.0.1"),
            ("wal_level", "logical"),
            ("max_replication_slots", "64"),
            ("max_wal_senders", "64"),
            ("max_connections", "150"),
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("synchronous_commit", "on"),
            ("password_encryption", "scram-sha-256"),
            // Small, so that a modest transaction is streamed before it commits.
            ("logical_decoding_work_mem", "64kB"),
        ];
        let mut port = 0;
        for attempt in 0..3 {
            port = free_port();
            let mut options = format!("-p {port} -k {}", root.display());
            for (k, v) in settings {
                options.push_str(&format!(" -c {k}={v}"));
            }
            let out = server("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(root.join("log"))
                .args(["-w", "-s", "-t", "60", "-o", &options])
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            let log = fs::read_to_string(root.join("log")).unwrap_or_default();
            assert!(attempt < 2 && log.contains("could not bind"), "pg_ctl start failed: {log}");
        }
        let watchdog = spawn_watchdog(&root, &data);
        let cluster = Cluster { bindir, root, port, _watchdog: watchdog };
        cluster.psql(
            "postgres",
            &format!(
                "CREATE ROLE {SCRAM_USER} LOGIN REPLICATION SUPERUSER PASSWORD '{SCRAM_PASSWORD}';
                 SET password_encryption = 'md5';
                 CREATE ROLE {MD5_USER} LOGIN REPLICATION SUPERUSER PASSWORD '{MD5_PASSWORD}';
                 RESET password_encryption;
                 CREATE ROLE {CLEAR_USER} LOGIN REPLICATION SUPERUSER PASSWORD '{CLEAR_PASSWORD}';
                 CREATE ROLE {TRUST_USER} LOGIN REPLICATION SUPERUSER;"
            ),
        );
        cluster
    }

    /// The unix-socket folder.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// Runs `sql` in `database` as `postgres` over the unix socket; returns the unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql).unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", database])
            .arg("-h")
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-c", sql])
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A new, empty database for one test.
    pub fn new_database(&self, prefix: &str) -> String {
        let name = format!("{prefix}_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// A configuration for the SCRAM role over TCP.
    pub fn config(&self, database: &str) -> ReplicationConfig {
        let mut config = ReplicationConfig::new(database, SCRAM_USER);
        config.host = "127.0.0.1".into();
        config.port = self.port;
        config.password = Some(SCRAM_PASSWORD.into());
        config.connect_timeout_secs = 20;
        config
    }
}

/// A `sh` waiting for EOF on its stdin, whose write end only this process
/// holds: when the test binary exits (however), it stops the server at once
/// and removes the cluster's folder.
fn spawn_watchdog(root: &Path, data: &Path) -> Child {
    const SCRIPT: &str = r#"trap '' INT HUP
read -r _ignored
pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -QUIT "$pid" 2>/dev/null
  n=0
  while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 300 ]; do sleep 0.1; n=$((n+1)); done
fi
rm -rf -- "$2"
"#;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("sluice-replication-test-watchdog")
        .arg(data)
        .arg(root)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Waits for `cond` to hold, up to `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
