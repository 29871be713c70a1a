//! The configuration file: TOML, with `${VAR}` and `${VAR:-default}`
//! expanded from the environment in every string value.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// A string that never prints.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen for HTTP.
    pub listen: SocketAddr,
    /// Where Sluice keeps its state: the embedded PostgreSQL cluster and
    /// compiled components.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub batch: BatchConfig,
    pub limits: Limits,
    pub components: ComponentsConfig,
    /// The bearer token of the admin API (`/admin/…`). Without one the
    /// admin API is off.
    pub admin_token: Option<Secret>,
    /// Tenants to seed the registry with (see docs/tenants.md).
    pub tenants: Vec<crate::tenants::TenantSpec>,
    /// The component settings of the default tenant (the one that takes
    /// keyless loopback requests while no tenant is configured).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The SQL query API (`/api/query`, see docs/query.md).
    pub query: crate::query::QueryConfig,
    /// Change streams from PostgreSQL sources (see docs/cdc.md).
    pub cdc: Vec<crate::cdc::CdcConfig>,
    /// Where requests wait on disk while their destination cannot take them.
    pub spool: crate::spool::SpoolConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().unwrap(),
            data_dir: PathBuf::from(".sluice"),
            database: DatabaseConfig::default(),
            batch: BatchConfig::default(),
            limits: Limits::default(),
            components: ComponentsConfig::default(),
            admin_token: None,
            tenants: Vec::new(),
            settings: Default::default(),
            query: Default::default(),
            cdc: Vec::new(),
            spool: Default::default(),
        }
    }
}

/// The destination database: `url` (a `postgres://` URI or a libpq
/// `key=value` DSN), or the split fields, never both. With neither, Sluice
/// runs its own embedded PostgreSQL.
#[derive(Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
    /// The schema tables are created in.
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long to wait for a connection, in milliseconds.
    pub connect_timeout_ms: u64,
}

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
            .finish()
    }
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

    /// The connection settings. Errors never quote the URL or password.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config> {
        let mut config = match &self.url {
            Some(_) if self.split_fields_given() => bail!(
                "database.url and the split fields (host, port, user, password, dbname) are both set; use one or the other"
            ),
            Some(url) => url
                .parse::<tokio_postgres::Config>()
                .map_err(|e| anyhow::anyhow!("database.url is not a valid postgres:// URL or key=value DSN ({e})"))?,
            None => {
                let mut config = tokio_postgres::Config::new();
                config.host(self.host.as_deref().unwrap_or("localhost"));
                config.port(self.port.unwrap_or(5432));
                config.user(self.user.as_deref().unwrap_or("postgres"));
                if let Some(password) = &self.password {
                    config.password(password);
                }
                if let Some(dbname) = &self.dbname {
                    config.dbname(dbname);
                }
                config
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_millis(self.connect_timeout_ms));
        }
        if config.get_application_name().is_none() {
            config.application_name("sluice");
        }
        Ok(config)
    }
}

/// How rows from many requests are gathered into one statement.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
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
    /// Retry a batch that failed on a deadlock (`40P01`) or serialization
    /// failure (`40001`), as other transient failures are.
    pub retry_on_deadlock: bool,
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
            retry_on_deadlock: true,
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
        }
    }
}

/// Components to use in place of the built-in ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentsConfig {
    /// A `.wasm` component to serve in place of the built-in one
    /// (`builtin:standard`): for the default tenant and every tenant whose
    /// component is `builtin:standard`.
    pub builtin: Option<PathBuf>,
    /// Where compiled components are cached (default `<data_dir>/cache`).
    pub cache_dir: Option<PathBuf>,
}

impl Config {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
        Config::parse(&text, &|name| std::env::var(name).ok())
            .with_context(|| format!("config file {}", path.display()))
    }

    /// Parses TOML, expanding variables with `lookup`.
    pub fn parse(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let mut value: toml::Table = text.parse().map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))?;
        for (key, v) in value.iter_mut() {
            expand_value(key, v, lookup)?;
        }
        let config: Config = toml::Table::try_into(value).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        sluice_sdk::sql::check_ident(&self.database.schema).map_err(|e| anyhow::anyhow!("database.schema: {e}"))?;
        if self.database.pool_size == 0 {
            bail!("database.pool_size must be at least 1");
        }
        if self.batch.writers == 0 || self.batch.writers > self.database.pool_size {
            bail!("batch.writers must be between 1 and database.pool_size ({})", self.database.pool_size);
        }
        if self.batch.batch_size == 0 || self.batch.batch_size_bytes == 0 {
            bail!("batch.batch_size and batch.batch_size_bytes must be at least 1");
        }
        if self.admin_token.as_ref().is_some_and(|t| t.0.len() < 16) {
            bail!("admin_token must be at least 16 characters");
        }
        if self.limits.max_concurrent_calls == 0 {
            bail!("limits.max_concurrent_calls must be at least 1");
        }
        if self.limits.max_instances == 0 {
            bail!("limits.max_instances must be at least 1");
        }
        self.query.validate()?;
        for source in &self.cdc {
            source.validate()?;
        }
        Ok(())
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.components.cache_dir.clone().unwrap_or_else(|| self.data_dir.join("cache"))
    }
}

fn expand_value(path: &str, value: &mut toml::Value, lookup: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    match value {
        toml::Value::String(s) => *s = expand(s, lookup).with_context(|| format!("in {path}"))?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(&format!("{path}[{i}]"), item, lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                expand_value(&format!("{path}.{key}"), item, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| anyhow::anyhow!("unclosed ${{ in a value"))?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("${{{inner}}} does not name an environment variable");
            }
            match lookup(name).filter(|v| !v.is_empty()).or(default.map(str::to_owned)) {
                Some(v) => out.push_str(&v),
                None => bail!("environment variable {name} is not set and ${{{name}}} has no default"),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!config.batch.retry_on_deadlock);
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
