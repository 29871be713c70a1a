//! Settings several parts of the service share: the destination
//! database, batching and limits. The sections one part owns live with
//! it; the file that gathers them all is `config_file.rs`.

use anyhow::{Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sluice_postgres::Secret;

/// The destination database: `url` (a `postgres://` URI or a libpq
/// `key=value` DSN), or the split fields, never both. With neither, Sluice
/// runs its own embedded PostgreSQL. Logflare's names (`hostname`,
/// `username`, `database`) are read as `host`, `user`, `dbname`; the libpq
/// `PG*` variables fill what neither gives.
#[derive(Clone, Deserialize, serde::Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Also read as CloudQuery's `connection_string`.
    #[serde(alias = "connection_string")]
    pub url: Option<String>,
    #[serde(alias = "hostname")]
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(alias = "username")]
    pub user: Option<String>,
    pub password: Option<String>,
    #[serde(alias = "database")]
    pub dbname: Option<String>,
    /// The schema tables are created in.
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long to wait for a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// libpq's sslmode: disable, prefer (default), require, verify-ca, verify-full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
    /// CA certificate file (PEM) for verify-ca / verify-full, or `system`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub sslrootcert: Option<PathBuf>,
    /// `password` (default) or `rds-iam`: a fresh AWS RDS IAM token per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The AWS region of the RDS instance (default `$AWS_REGION`), for `rds-iam`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
}

/// The environment variable `%PASSWORD%` in a URL, DSN or `password` is read
/// from (stogger's placeholder).
pub const PASSWORD_VAR: &str = "SLUICE_DATABASE_PASSWORD";
const PASSWORD_PLACEHOLDER: &str = "%PASSWORD%";

impl Default for DatabaseConfig {
    fn default() -> DatabaseConfig {
        DatabaseConfig {
            url: None,
            host: None,
            port: None,
            user: None,
            password: None,
            dbname: None,
            schema: "public".into(),
            pool_size: 8,
            connect_timeout_ms: 5_000,
            sslmode: None,
            sslrootcert: None,
            auth: None,
            aws_region: None,
        }
    }
}

// By hand, so the password and the URL (which may hold one) never print.
// (Serialize writes them: it is used only for the registry file, which
// keeps a tenant's own database settings.)
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("auth", &self.auth)
            .field("aws_region", &self.aws_region)
            .finish()
    }
}

/// What Sluice reads from a URL or DSN itself (tokio-postgres does not know
/// these, or knows fewer of their values).
#[derive(Default)]
struct Extracted {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    search_path: Option<String>,
}

impl Extracted {
    /// Takes `key` if it is one of ours.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "search_path" => &mut self.search_path,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Splits our keys out of a `postgres://` URI's query, leaving the rest as written.
fn extract_from_uri(url: &str, out: &mut Extracted) -> Result<String> {
    let Some((base, query)) = url.split_once('?') else { return Ok(url.to_owned()) };
    let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8().map(|v| v.into_owned());
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value).map_err(|_| anyhow::anyhow!("database.url: the value of {key:?} is not UTF-8"))?;
        if !out.take(key, value) {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) })
}

/// Splits our keys out of a libpq `key=value` DSN, leaving the rest as written.
fn extract_from_dsn(dsn: &str, out: &mut Extracted) -> Result<String> {
    let mut kept = Vec::new();
    let mut rest = dsn.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or_else(|| anyhow::anyhow!("database.url: a DSN item has no `=`"))?;
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        // The value: 'quoted' (with \' and \\) or up to the next space.
        let (value, end) = if let Some(quoted) = after.strip_prefix('\'') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '\'' => {
                        end = Some(i + 2);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| anyhow::anyhow!("database.url: the value of {key:?} has no closing quote"))?;
            (value, end)
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].replace("\\", ""), end)
        };
        let item_len = rest.len() - after.len() + end;
        if !out.take(key, value) {
            kept.push(&rest[..item_len]);
        }
        rest = rest[item_len..].trim_start();
    }
    Ok(kept.join(" "))
}

impl DatabaseConfig {
    fn split_fields_given(&self) -> bool {
        self.host.is_some()
            || self.port.is_some()
            || self.user.is_some()
            || self.password.is_some()
            || self.dbname.is_some()
    }

    /// These settings over `base`: a tenant that names only a schema or a
    /// pool size writes to the service's database.
    pub fn over(&self, base: &DatabaseConfig) -> DatabaseConfig {
        if self.is_configured() {
            self.clone()
        } else {
            DatabaseConfig {
                schema: self.schema.clone(),
                pool_size: self.pool_size,
                connect_timeout_ms: self.connect_timeout_ms,
                ..base.clone()
            }
        }
    }

    /// Whether a database is configured at all.
    pub fn is_configured(&self) -> bool {
        self.url.is_some() || self.split_fields_given()
    }

    /// The connection settings, with the `PG*` environment variables as
    /// defaults. Errors never quote the URL or password.
    pub fn pg_config(&self) -> Result<crate::db::PgSettings> {
        self.pg_config_with(&|name| std::env::var(name).ok())
    }

    /// [`pg_config`](Self::pg_config) with the environment read through `env`.
    pub fn pg_config_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<crate::db::PgSettings> {
        use sluice_replication::tls::{SslMode, TlsSettings};
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let mut extracted = Extracted::default();
        let mut config = match &self.url {
            Some(_) if self.split_fields_given() => bail!(
                "database.url and the split credentials (host/hostname, port, user/username, password, \
                 dbname/database) are both set; use one or the other"
            ),
            Some(url) => {
                let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
                let rest = if is_uri {
                    extract_from_uri(url, &mut extracted)?
                } else {
                    extract_from_dsn(url, &mut extracted)?
                };
                rest.parse::<tokio_postgres::Config>().map_err(|e| {
                    anyhow::anyhow!("database.url is not a valid postgres:// URL or key=value DSN ({e})")
                })?
            }
            None => {
                let mut config = tokio_postgres::Config::new();
                if let Some(host) = &self.host {
                    config.host(host);
                }
                if let Some(port) = self.port {
                    config.port(port);
                }
                if let Some(user) = &self.user {
                    config.user(user);
                }
                if let Some(password) = &self.password {
                    config.password(password);
                }
                if let Some(dbname) = &self.dbname {
                    config.dbname(dbname);
                }
                config
            }
        };
        // libpq's environment variables fill what the configuration leaves out.
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            for host in env("PGHOST").as_deref().unwrap_or("localhost").split(',') {
                config.host(host.trim());
            }
        }
        if config.get_ports().is_empty() {
            match env("PGPORT") {
                Some(port) => {
                    config.port(port.parse().map_err(|_| anyhow::anyhow!("PGPORT={port:?} is not a port number"))?);
                }
                None => {
                    config.port(5432);
                }
            }
        }
        if config.get_user().is_none() {
            config.user(env("PGUSER").as_deref().unwrap_or("postgres"));
        }
        if config.get_password().is_none()
            && let Some(password) = env("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_dbname().is_none()
            && let Some(dbname) = env("PGDATABASE")
        {
            config.dbname(dbname);
        }
        if config.get_application_name().is_none() {
            config.application_name(env("PGAPPNAME").as_deref().unwrap_or("sluice"));
        }
        if config.get_connect_timeout().is_none() {
            let timeout = match env("PGCONNECT_TIMEOUT") {
                Some(secs) => Duration::from_secs(
                    secs.parse()
                        .map_err(|_| anyhow::anyhow!("PGCONNECT_TIMEOUT={secs:?} is not a number of seconds"))?,
                ),
                None => Duration::from_millis(self.connect_timeout_ms),
            };
            config.connect_timeout(timeout);
        }
        // stogger's placeholder: the password comes from the environment.
        if config.get_password() == Some(PASSWORD_PLACEHOLDER.as_bytes()) {
            let password = env(PASSWORD_VAR).ok_or_else(|| {
                anyhow::anyhow!("the database password is {PASSWORD_PLACEHOLDER} but {PASSWORD_VAR} is not set")
            })?;
            config.password(password);
        }
        if let Some(search_path) = &extracted.search_path {
            // A startup option, so every session (and every pooled one) has it.
            let escaped = search_path.replace('\\', "\\\\").replace(' ', "\\ ");
            let options = match config.get_options() {
                Some(options) => format!("{options} -c search_path={escaped}"),
                None => format!("-c search_path={escaped}"),
            };
            config.options(options);
        }

        let sslmode = match (&self.sslmode, &extracted.sslmode) {
            (Some(_), Some(_)) => bail!("sslmode is given in both database.url and database.sslmode; use one"),
            (Some(mode), None) | (None, Some(mode)) => Some(mode.clone()),
            (None, None) => env("PGSSLMODE"),
        };
        let sslmode = match sslmode {
            Some(mode) => Some(SslMode::parse(&mode).map_err(|e| anyhow::anyhow!("database: {e}"))?),
            None => None,
        };
        let root_cert = match (&self.sslrootcert, &extracted.sslrootcert) {
            (Some(_), Some(_)) => bail!("sslrootcert is given in both database.url and database.sslrootcert; use one"),
            (Some(path), None) => Some(path.clone()),
            (None, Some(path)) => Some(PathBuf::from(path)),
            (None, None) => env("PGSSLROOTCERT").map(PathBuf::from),
        };

        let rds_iam = match self.auth.as_deref() {
            None | Some("password") => None,
            Some("rds-iam") => {
                if let Some(mode @ (SslMode::Disable | SslMode::Prefer)) = sslmode {
                    bail!(
                        "database.auth = \"rds-iam\" sends a token as the password, so it needs TLS: \
                         use sslmode require, verify-ca or verify-full, not {mode}"
                    );
                }
                if config.get_password().is_some() {
                    bail!("database.auth = \"rds-iam\" makes its own password (a token); remove the configured one");
                }
                if !matches!(config.get_hosts(), [tokio_postgres::config::Host::Tcp(_)]) {
                    bail!("database.auth = \"rds-iam\" needs exactly one host name (the RDS endpoint)");
                }
                let region = self.aws_region.clone().or_else(|| env("AWS_REGION")).ok_or_else(|| {
                    anyhow::anyhow!("database.auth = \"rds-iam\" needs database.aws_region (or AWS_REGION)")
                })?;
                let credentials = crate::db::rds_iam::Credentials::from_env(&env)?;
                Some(crate::db::rds_iam::RdsIam { region, credentials })
            }
            Some(other) => bail!("database.auth {other:?} is not `password` or `rds-iam`"),
        };
        // RDS IAM without an sslmode: encrypted, as AWS requires.
        let default_mode = if rds_iam.is_some() { SslMode::Require } else { SslMode::Prefer };
        let tls = TlsSettings::new(sslmode.unwrap_or(default_mode), root_cert);
        if let Some(path) = &tls.root_cert
            && path != Path::new("system")
            && !path.is_file()
        {
            bail!("database sslrootcert {} is not a readable file", path.display());
        }
        Ok(crate::db::PgSettings::new(config, tls, rds_iam))
    }
}

/// How rows from many requests are gathered into one statement.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most rows in one flush.
    pub batch_size: usize,
    /// Most bytes of row data in one flush.
    pub batch_size_bytes: usize,
    /// How long rows may wait for more to join them, in milliseconds. 0
    /// flushes at once whenever a writer is idle (group commit).
    /// Also read as CloudQuery's `batch_timeout`, a duration such as
    /// `"20s"` or `"500ms"`.
    #[serde(alias = "batch_timeout", deserialize_with = "millis")]
    pub batch_timeout_ms: u64,
    /// Flushes that may run at once (each on its own connection).
    pub writers: usize,
    /// Whether, and how often, a batch that failed on a deadlock (`40P01`)
    /// or serialization failure (`40001`) is retried.
    pub retry_on_deadlock: RetryOnDeadlock,
}

/// `[batch] retry_on_deadlock`: `true` retries a batch that hit a deadlock
/// or serialization failure as other transient failures are, until the
/// request's deadline; `false` or `0` answers 503 at once; a number (as
/// CloudQuery's `retry_on_deadlock` is) retries it at most that many times.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RetryOnDeadlock {
    Always(bool),
    Times(u32),
}

impl RetryOnDeadlock {
    /// Whether a batch whose conflicts were retried `retried` times already
    /// is retried again.
    pub fn allows(self, retried: u32) -> bool {
        match self {
            RetryOnDeadlock::Always(retry) => retry,
            RetryOnDeadlock::Times(times) => retried < times,
        }
    }
}

/// Milliseconds as a number, or a duration text: `"500ms"`, `"20s"`, `"1m"`.
fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Millis {
        Number(u64),
        Text(String),
    }
    match Millis::deserialize(d)? {
        Millis::Number(n) => Ok(n),
        Millis::Text(text) => {
            let text = text.trim();
            let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
            let (number, unit) = text.split_at(split);
            let number: u64 = number
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a duration such as 500ms or 20s")))?;
            let scale = match unit.trim() {
                "ms" => 1,
                "" | "s" => 1_000,
                "m" => 60_000,
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "unknown unit {other:?} in {text:?}: use ms, s or m"
                    )));
                }
            };
            Ok(number * scale)
        }
    }
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            batch_size: 10_000,
            batch_size_bytes: 16 << 20,
            batch_timeout_ms: 0,
            writers: 2,
            retry_on_deadlock: RetryOnDeadlock::Always(true),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body, after decompression.
    pub max_body_bytes: usize,
    /// How long a request may take in all, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long one component call may run, in milliseconds.
    pub component_deadline_ms: u64,
    /// Most linear memory one component instance may use.
    pub component_memory_bytes: usize,
    /// Request bytes a tenant may have in flight at once; past it, 429.
    pub max_in_flight_bytes: usize,
    /// Request bytes the whole service may have in flight at once; past
    /// it, 503. With `max_body_bytes` it bounds the memory requests take.
    pub max_in_flight_bytes_total: usize,
    /// HTTP connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Component calls one tenant may run at once; more wait their turn.
    pub max_concurrent_calls: u32,
    /// Component instances that may run at once.
    pub max_instances: u32,
    /// Resident memory the service keeps under (0: no limit): past
    /// `max_memory_bytes - memory_spike_bytes` new requests get 503 until
    /// memory falls again (see `memory.rs`).
    pub max_memory_bytes: usize,
    /// What may arrive between two checks of memory (default: a fifth of
    /// `max_memory_bytes`).
    pub memory_spike_bytes: Option<usize>,
    /// Rows a tenant may keep in its dead-letter table; refused rows past
    /// it are reported but not kept.
    pub max_dead_letters: u64,
    /// Tables Sluice may create for a tenant on first use (from a
    /// component's templates: Logflare sources, tables per event type);
    /// past it, events that need a new table are rejected.
    pub max_tables: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 16 << 20,
            request_timeout_ms: 30_000,
            component_deadline_ms: 2_000,
            component_memory_bytes: 256 << 20,
            max_in_flight_bytes: 256 << 20,
            max_in_flight_bytes_total: 1 << 30,
            max_connections: 1024,
            max_concurrent_calls: 4,
            max_instances: 64,
            max_memory_bytes: 0,
            memory_spike_bytes: None,
            max_dead_letters: 100_000,
            max_tables: 200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file::{Config, expand};

    #[test]
    fn the_documented_example_parses_with_the_http_limits() {
        let doc = include_str!("../../docs/configuration.md");
        let example = doc.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).unwrap();
        let config = Config::parse(example, &|_| Some("a-value-of-sixteen-chars-or-more".into())).unwrap();
        assert_eq!(config.http.header_read_timeout_ms, 10_000);
        assert_eq!(config.http.max_connections_per_address, 256);
        assert!(!config.keyless_loopback && !config.metrics.show_tenants);
        assert_eq!((config.limits.max_dead_letters, config.limits.max_tables), (100_000, 200));
        let e = Config::parse("[http]\nidle_timeout_ms = 0", &env).unwrap_err().to_string();
        assert!(e.contains("idle_timeout_ms"), "{e}");
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "PGPASS" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_with_defaults() {
        assert_eq!(expand("a${PGPASS}b", &env).unwrap(), "as3cretb");
        assert_eq!(expand("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand("$$HOME $x", &env).unwrap(), "$HOME $x");
        let e = expand("${NOPE}", &env).unwrap_err().to_string();
        assert!(e.contains("NOPE is not set"), "{e}");
        assert!(expand("${bad name}", &env).is_err());
    }

    #[test]
    fn parses_a_file() {
        let config = Config::parse(
            r#"
            listen = "0.0.0.0:9000"
            [database]
            host = "db"
            password = "${PGPASS}"
            schema = "ingest"
            [batch]
            batch_size = 500
            "#,
            &env,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.database.password.as_deref(), Some("s3cret"));
        assert_eq!(config.batch.batch_size, 500);
        let pg = config.database.pg_config().unwrap();
        assert_eq!(pg.get_user(), Some("postgres"));
        assert!(!format!("{:?}", config).contains("s3cret"));
    }

    #[test]
    fn reads_cloudquerys_batch_knobs() {
        let config =
            Config::parse("[batch]\nbatch_timeout = \"20s\"\nretry_on_deadlock = false\nbatch_size_bytes = 1024", &env)
                .unwrap();
        assert_eq!(config.batch.batch_timeout_ms, 20_000);
        assert_eq!(config.batch.retry_on_deadlock, RetryOnDeadlock::Always(false));
        let times = Config::parse("[batch]\nretry_on_deadlock = 3", &env).unwrap().batch.retry_on_deadlock;
        assert_eq!(times, RetryOnDeadlock::Times(3));
        assert!(times.allows(2) && !times.allows(3));
        assert!(RetryOnDeadlock::Always(true).allows(1000) && !RetryOnDeadlock::Always(false).allows(0));
        let url = Config::parse("[database]\nconnection_string = \"postgres://u@db/x\"", &env).unwrap().database.url;
        assert_eq!(url.as_deref(), Some("postgres://u@db/x"));
        assert_eq!(Config::parse("[batch]\nbatch_timeout_ms = 5", &env).unwrap().batch.batch_timeout_ms, 5);
        assert_eq!(Config::parse("[batch]\nbatch_timeout = \"250ms\"", &env).unwrap().batch.batch_timeout_ms, 250);
        let e = Config::parse("[batch]\nbatch_timeout = \"2 fortnights\"", &env).unwrap_err().to_string();
        assert!(e.contains("fortnights"), "{e}");
    }

    #[test]
    fn refuses_url_with_split_fields_and_unknown_keys() {
        let config = Config::parse("[database]\nurl = \"postgres://u:pw@h/db\"\nhost = \"x\"", &env).unwrap();
        let e = config.database.pg_config().unwrap_err().to_string();
        assert!(e.contains("both set") && !e.contains("pw"), "{e}");
        let e = Config::parse("[database]\nurll = 1", &env).unwrap_err().to_string();
        assert!(e.contains("urll"), "{e}");
    }

    fn settings(url: &str, env: &dyn Fn(&str) -> Option<String>) -> crate::db::PgSettings {
        DatabaseConfig { url: Some(url.into()), ..Default::default() }.pg_config_with(env).unwrap()
    }

    #[test]
    fn reads_libpq_options_tokio_postgres_does_not_know() {
        use sluice_replication::tls::SslMode;
        use tokio_postgres::config::Host;
        let none = |_: &str| None;
        for url in [
            "postgres://u:p%40ss%20w%3Ard@db.example:6432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=ingest&search_path=ingest,public&connect_timeout=3",
            "host=db.example port=6432 user=u password='p@ss w:rd' dbname=app sslmode=verify-full sslrootcert=/etc/ca.pem application_name=ingest search_path=ingest,public connect_timeout=3",
        ] {
            let db = DatabaseConfig { url: Some(url.into()), ..Default::default() };
            // The root file must exist; check the rest with it left out.
            let e = db.pg_config_with(&none).unwrap_err().to_string();
            assert!(e.contains("/etc/ca.pem"), "{e}");
            let s = settings(&url.replace("/etc/ca.pem", "system"), &none);
            assert_eq!(s.get_hosts(), &[Host::Tcp("db.example".into())]);
            assert_eq!(s.get_ports(), &[6432]);
            assert_eq!(s.get_password(), Some("p@ss w:rd".as_bytes()));
            assert_eq!(s.get_dbname(), Some("app"));
            assert_eq!(s.get_application_name(), Some("ingest"));
            assert_eq!(s.get_options(), Some("-c search_path=ingest,public"));
            assert_eq!(s.get_connect_timeout(), Some(&Duration::from_secs(3)));
            assert_eq!(s.tls.mode, SslMode::VerifyFull);
            assert_eq!(s.tls.root_cert.as_deref(), Some(Path::new("system")));
        }
        let s = settings("postgres://u:pw@/app?host=%2Frun%2Fpostgresql&port=5433", &none);
        assert_eq!(s.get_hosts(), &[Host::Unix("/run/postgresql".into())]);
        let s = settings("postgres:///app?host=/run/postgresql&user=w", &none);
        assert_eq!(s.get_hosts(), &[Host::Unix("/run/postgresql".into())]);
        assert_eq!(s.get_ports(), &[5432]);
        assert_eq!(s.tls.mode, SslMode::Prefer);
        let e = DatabaseConfig { url: Some("postgres://h/db?sslmode=sometimes".into()), ..Default::default() }
            .pg_config_with(&none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes") && e.contains("verify-full"), "{e}");
    }

    #[test]
    fn logflare_split_fields_and_pg_environment() {
        let config = Config::parse(
            "[database]\nhostname = \"db\"\nport = 6543\nusername = \"logflare\"\npassword = \"pw\"\n\
             database = \"logs\"\nschema = \"lf\"\npool_size = 3\nsslmode = \"require\"",
            &env,
        )
        .unwrap();
        let s = config.database.pg_config_with(&|_| None).unwrap();
        assert_eq!((s.get_user(), s.get_dbname(), s.get_ports()), (Some("logflare"), Some("logs"), &[6543][..]));
        assert_eq!((config.database.schema.as_str(), config.database.pool_size), ("lf", 3));
        assert_eq!(s.tls.mode, sluice_replication::tls::SslMode::Require);

        let pg_env = |name: &str| {
            Some(
                match name {
                    "PGHOST" => "pg.internal",
                    "PGPORT" => "5433",
                    "PGUSER" => "envuser",
                    "PGPASSWORD" => "envpw",
                    "PGDATABASE" => "envdb",
                    "PGSSLMODE" => "verify-ca",
                    "PGSSLROOTCERT" => "system",
                    "PGAPPNAME" => "from-env",
                    "PGCONNECT_TIMEOUT" => "7",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let s = DatabaseConfig::default().pg_config_with(&pg_env).unwrap();
        assert_eq!(s.get_hosts(), &[tokio_postgres::config::Host::Tcp("pg.internal".into())]);
        assert_eq!((s.get_ports(), s.get_user(), s.get_dbname()), (&[5433][..], Some("envuser"), Some("envdb")));
        assert_eq!(s.get_password(), Some("envpw".as_bytes()));
        assert_eq!(s.get_application_name(), Some("from-env"));
        assert_eq!(s.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(s.tls.mode, sluice_replication::tls::SslMode::VerifyCa);
        // What the configuration says wins over the environment.
        let s = settings("postgres://cfg@cfghost/cfgdb?sslmode=disable", &pg_env);
        assert_eq!((s.get_user(), s.get_dbname()), (Some("cfg"), Some("cfgdb")));
        // (A URI with a host has its port, 5432 when it names none.)
        assert_eq!(s.get_ports(), &[5432]);
        assert_eq!(s.tls.mode, sluice_replication::tls::SslMode::Disable);
        let s = settings("host=cfghost dbname=cfgdb", &pg_env);
        assert_eq!((s.get_ports(), s.get_user()), (&[5433][..], Some("envuser")));
        let e = DatabaseConfig::default().pg_config_with(&|n| (n == "PGPORT").then(|| "x".into())).unwrap_err();
        assert!(e.to_string().contains("PGPORT"), "{e}");
    }

    #[test]
    fn password_placeholder_comes_from_the_environment() {
        let env = |name: &str| (name == PASSWORD_VAR).then(|| "fr0m-env".to_owned());
        for url in ["postgres://u:%PASSWORD%@h/db", "host=h user=u password=%PASSWORD% dbname=db"] {
            assert_eq!(settings(url, &env).get_password(), Some("fr0m-env".as_bytes()), "{url}");
            let e = DatabaseConfig { url: Some(url.into()), ..Default::default() }
                .pg_config_with(&|_| None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(PASSWORD_VAR), "{e}");
        }
        let split =
            DatabaseConfig { host: Some("h".into()), password: Some("%PASSWORD%".into()), ..Default::default() };
        assert_eq!(split.pg_config_with(&env).unwrap().get_password(), Some("fr0m-env".as_bytes()));
    }

    #[test]
    fn rds_iam_needs_tls_a_region_and_credentials() {
        let aws = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned()),
            _ => None,
        };
        let iam = |extra: &str| {
            DatabaseConfig {
                url: Some(format!("postgres://app@db.abc.us-east-1.rds.amazonaws.com/app{extra}")),
                auth: Some("rds-iam".into()),
                aws_region: Some("us-east-1".into()),
                ..Default::default()
            }
            .pg_config_with(&aws)
        };
        let s = iam("").unwrap();
        assert_eq!(s.tls.mode, sluice_replication::tls::SslMode::Require);
        assert_eq!(s.rds_iam.as_ref().unwrap().region, "us-east-1");
        let shown = format!("{s:?}");
        assert!(!shown.contains("EXAMPLEKEY"), "{shown}");
        for mode in ["disable", "prefer"] {
            let e = iam(&format!("?sslmode={mode}")).unwrap_err().to_string();
            assert!(e.contains("needs TLS") && e.contains(mode), "{e}");
        }
        assert!(iam("?sslmode=verify-full").is_ok());
        let no_keys = DatabaseConfig {
            url: Some("postgres://app@h/app".into()),
            auth: Some("rds-iam".into()),
            aws_region: Some("us-east-1".into()),
            ..Default::default()
        };
        assert!(no_keys.pg_config_with(&|_| None).unwrap_err().to_string().contains("AWS_ACCESS_KEY_ID"));
        let no_region = DatabaseConfig { aws_region: None, ..no_keys };
        assert!(no_region.pg_config_with(&aws).unwrap_err().to_string().contains("aws_region"));
    }

    #[test]
    fn reads_uri_and_dsn() {
        for url in ["postgres://u:pw@h:6543/db?application_name=x", "host=h port=6543 user=u password=pw dbname=db"] {
            let db = DatabaseConfig { url: Some(url.into()), ..Default::default() };
            let pg = db.pg_config().unwrap();
            assert_eq!(pg.get_ports(), &[6543]);
            assert_eq!(pg.get_dbname(), Some("db"));
        }
        let db = DatabaseConfig { url: Some("postgres://u:hunter2@h:notaport/db".into()), ..Default::default() };
        let e = db.pg_config().unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
