//! The throwaway PostgreSQL cluster of this crate's tests
//! (`sluice-embedded-postgres`): started once per test binary (on first
//! use) with `wal_level=logical`, on a free port of 127.0.0.1 and a unix
//! socket in its data folder, and stopped (its files removed) by its
//! watchdog when the test binary exits.
//!
//! Authentication: `trust` over the unix socket (for the `postgres`
//! superuser that sets tests up), and over TCP one role per method: SCRAM,
//! MD5, cleartext and trust.

#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_embedded_postgres::{self as embedded, ClusterOptions};
use sluice_replication::ReplicationConfig;

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASSWORD: &str = "scram-Secret-7f3a";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5-Secret-91bc";
pub const CLEAR_USER: &str = "clear_user";
pub const CLEAR_PASSWORD: &str = "clear-Secret-2d4e";
pub const TRUST_USER: &str = "trust_user";

pub struct Cluster {
    postgres: embedded::Cluster,
    pub port: u16,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

impl Cluster {
    fn start() -> Cluster {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let data = std::env::temp_dir().join(format!("sluice-repl-{}-{nanos}", std::process::id()));
        let mut options = ClusterOptions::new(&data);
        options.fsync = false;
        options.remove_on_stop = true;
        // The data folder belongs to the user the server runs as, so the
        // socket can live there.
        let settings = [
            ("unix_socket_directories", data.to_str().unwrap()),
            ("max_replication_slots", "64"),
            ("max_wal_senders", "64"),
            ("max_connections", "150"),
            // Small, so that a modest transaction is streamed before it commits.
            ("logical_decoding_work_mem", "64kB"),
        ];
        options.settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let postgres = embedded::Cluster::start(options).unwrap_or_else(|e| panic!("{e:#}"));
        fs::write(
            postgres.data_dir().join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 host all {TRUST_USER} 127.0.0.1/32 trust\n\
                 host all {MD5_USER} 127.0.0.1/32 md5\n\
                 host all {CLEAR_USER} 127.0.0.1/32 password\n\
                 host all all 127.0.0.1/32 scram-sha-256\n"
            ),
        )
        .unwrap();
        // The embedded cluster's own superuser sets up `postgres`, the one
        // these tests use.
        let out = Command::new(postgres.bindir().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", embedded::HOST, "-U", embedded::USER])
            .args(["-d", embedded::DATABASE, "-p", &postgres.port().to_string()])
            .args(["-c", "CREATE ROLE postgres LOGIN SUPERUSER", "-c", "SELECT pg_reload_conf()"])
            .env("PGPASSWORD", postgres.password())
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        let cluster = Cluster { port: postgres.port(), postgres };
        // The server reads pg_hba.conf again when it gets to the signal.
        wait_until(Duration::from_secs(30), "the new pg_hba.conf", || cluster.try_psql("postgres", "SELECT 1").is_ok());
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
        self.postgres.data_dir()
    }

    /// Runs `sql` in `database` as `postgres` over the unix socket; returns the unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql).unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.postgres.bindir().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", database])
            .arg("-h")
            .arg(self.socket_dir())
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

/// Waits for `cond` to hold, up to `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
