//! The end-to-end harness: a real PostgreSQL (`SLUICE_TEST_DATABASE_URL`, or
//! a throwaway cluster per test process copied from a template), a fresh
//! database per test, and the real `sluice` binary serving real HTTP.

#![allow(dead_code)]

use sluice::embedded::{Cluster, ClusterOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const EXAMPLE: &str = r#"{"eventType":"order.completed","occurredAt":"2026-05-26T14:21:08.493Z","source":"billing-service","customerExternalId":"acct_8K2zRq","idempotencyKey":"order_38a91f-completed","correlationId":"req_4f30b2","payload":{"orderId":"ord_38a91f","amount":12900,"currency":"USD","items":[{"sku":"PR-PRO-MONTHLY","qty":1,"price":12900}]},"metadata":{"tier":"pro","region":"us-east-1"}}"#;

/// The server every test of this process uses: its superuser URL.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("SLUICE_TEST_DATABASE_URL") {
            return url;
        }
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let options = ClusterOptions {
            fsync: false,
            template: Some(tmp.join("pg-template")),
            remove_on_stop: true,
            ..ClusterOptions::new(tmp.join(format!("pg-{}", std::process::id())))
        };
        let cluster = Cluster::start(options).expect("start a throwaway PostgreSQL for the tests");
        let url = cluster.url();
        // A static is never dropped: the cluster's watchdog stops it and
        // removes its files when this process ends.
        std::mem::forget(cluster);
        url
    })
}

/// Options for a PostgreSQL of the test's own in `<tmp>/<name>-<pid>/pg`,
/// on a fixed port so it can stop and start again at the same address;
/// and that folder, for the service's data beside it.
pub fn own_cluster(name: &str) -> (ClusterOptions, PathBuf) {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join(format!("{name}-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let options = ClusterOptions {
        fsync: false,
        template: Some(tmp.join("pg-template")),
        port: Some(port),
        ..ClusterOptions::new(dir.join("pg"))
    };
    (options, dir)
}

/// Held by the tests that time latencies and by the tests that load the
/// machine most (several hosts under load), so those never overlap: on 2
/// cores one would measure the other.
pub fn timing_exclusive() -> std::sync::MutexGuard<'static, ()> {
    static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    EXCLUSIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fresh, empty database on the test server.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = connect(server_url()).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the test database");
        let mut config: tokio_postgres::Config = server_url().parse().unwrap();
        config.dbname(&name);
        TestDb { url: url_with_db(server_url(), &name), name }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

/// `url` with its database replaced by `dbname`.
fn url_with_db(url: &str, dbname: &str) -> String {
    if url.contains("://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let scheme_end = base.find("://").unwrap() + 3;
        let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
        let mut out = format!("{}/{dbname}", &base[..host_end]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    } else {
        format!("{url} dbname={dbname}")
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to the test server");
    tokio::spawn(connection);
    client
}

/// A running `sluice serve`.
pub struct Sluice {
    pub child: Child,
    pub base: String,
    /// What it wrote to stderr and stdout, line by line.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    _config: tempfile_path::TempPath,
}

/// Where compiled components are cached across the test processes.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

impl Sluice {
    /// Starts `sluice serve` on a free port against `db`, with extra TOML.
    pub fn start(db: Option<&TestDb>, extra_toml: &str) -> Sluice {
        Sluice::start_in(db, extra_toml, None)
    }

    pub fn start_in(db: Option<&TestDb>, extra_toml: &str, data_dir: Option<&Path>) -> Sluice {
        let env: Vec<(&str, &str)> = db.map(|db| ("SLUICE_DATABASE_URL", db.url.as_str())).into_iter().collect();
        Sluice::launch(extra_toml, data_dir, &env)
    }

    /// Starts `sluice serve` with these environment variables (the
    /// database's URL among them, if it is to have one).
    pub fn start_with_env(extra_toml: &str, env: &[(&str, &str)]) -> Sluice {
        Sluice::launch(extra_toml, None, env)
    }

    fn launch(extra_toml: &str, data_dir: Option<&Path>, env: &[(&str, &str)]) -> Sluice {
        let config = tempfile_path::TempPath::new("toml");
        let data_dir = data_dir.map(Path::to_path_buf).unwrap_or_else(|| config.path().with_extension("data"));
        let cache = format!("[components]\ncache_dir = {:?}\n", cache_dir());
        let extra = if extra_toml.contains("cache_dir") {
            extra_toml.to_owned()
        } else if extra_toml.contains("[components]") {
            extra_toml.replace("[components]\n", &cache)
        } else {
            format!("{extra_toml}\n{cache}")
        };
        // Most tests ingest as the keyless default tenant; a test that
        // says otherwise keeps its own setting.
        let keyless = if extra.contains("keyless_loopback") { "" } else { "keyless_loopback = true\n" };
        // And read tenants' series in /metrics without a token.
        let extra = if extra.contains("show_tenants") {
            extra
        } else if extra.contains("[metrics]\n") {
            extra.replace("[metrics]\n", "[metrics]\nshow_tenants = true\n")
        } else {
            format!("{extra}\n[metrics]\nshow_tenants = true\n")
        };
        // A test that restarts a host at the same address names its own.
        let listen = if extra.contains("listen = ") { "" } else { "listen = \"127.0.0.1:0\"\n" };
        let toml = format!("{listen}data_dir = {data_dir:?}\n{keyless}{extra}");
        std::fs::write(config.path(), toml).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["serve", "--config"])
            .arg(config.path())
            .env_remove("SLUICE_DATABASE_URL")
            .env("SLUICE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start sluice");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = |line: &str, log: &std::sync::Mutex<String>| {
            let mut log = log.lock().unwrap();
            log.push_str(line);
            log.push('\n');
        };
        {
            let log = log.clone();
            let pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    keep(&line, &log);
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            let pipe = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    // stdout is output too: kept with the log (the secrets checks read it).
                    keep(&line, &log);
                    let _ = tx.send(line);
                }
            });
        }
        let base = loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("sluice listening on ") {
                        break url.to_owned();
                    }
                }
                Err(_) => panic!("sluice did not start; its log:\n{}", log.lock().unwrap()),
            }
        };
        Sluice { child, base, log, _config: config }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        self.child.wait().unwrap()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().tcp_nodelay(true).build().unwrap()
}

/// Posts `body` as `content_type` and returns the status and JSON answer.
pub async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let response = http().post(url).header("content-type", content_type).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, json)
}

/// A canonical event of `event_type` with idempotency key `key`.
pub fn event(event_type: &str, key: &str) -> serde_json::Value {
    serde_json::json!({"eventType": event_type, "occurredAt": "2026-05-26T14:21:08Z", "idempotencyKey": key, "payload": {}})
}

/// Posts `body` as JSON with `key` (as X-API-KEY) and returns the status and
/// JSON answer.
pub async fn send(url: &str, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut request = http().post(url).header("content-type", "application/json").body(body.to_owned());
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// The 99th percentile of `samples` (nearest rank: the smallest sample at
/// or above 99 % of them).
pub fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

/// The rows of `table` in the test database; 0 while it does not exist.
pub async fn count(db: &TestDb, table: &str) -> i64 {
    let client = db.client().await;
    match client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}

/// The tables of `schema` whose names start with `prefix`.
pub async fn tables(client: &tokio_postgres::Client, schema: &str, prefix: &str) -> Vec<String> {
    client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 AND starts_with(tablename, $2) ORDER BY 1",
            &[&schema, &prefix],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The `[[cdc]]` section streaming `tables` of `db` into the audit handler.
pub fn cdc_toml(db: &TestDb, tables: &[&str], extra: &str) -> String {
    source_toml(db, "shop", "s", tables, extra)
}

/// A `[[cdc]]` section named `name`, its slot `<slot>_<db>` and its
/// publication `p_<db>` (shared by the sources of one test).
pub fn source_toml(db: &TestDb, name: &str, slot: &str, tables: &[&str], extra: &str) -> String {
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    format!(
        "[[cdc]]\nname = {name:?}\nhost = {host:?}\nport = {}\ndatabase = {:?}\nuser = {:?}\npassword = {password:?}\n\
         slotName = \"{slot}_{}\"\npublicationName = \"p_{}\"\nsslMode = \"disable\"\ntables = {tables:?}\n{extra}\n",
        config.get_ports()[0],
        db.name,
        config.get_user().unwrap(),
        db.name,
        db.name,
    )
}

/// A temporary file path, removed on drop.
mod tempfile_path {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct TempPath(PathBuf);

    impl TempPath {
        pub fn new(extension: &str) -> TempPath {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let name = format!("sluice-{}-{}.{extension}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            TempPath(Path::new(env!("CARGO_TARGET_TMPDIR")).join(name))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_dir_all(self.0.with_extension("data"));
        }
    }
}
