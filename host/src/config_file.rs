//! The configuration file: TOML, with `${VAR}` and `${VAR:-default}`
//! expanded from the environment in every string value. Each section's
//! type lives with the part of the service that owns it.

use crate::cdc::config::CdcConfig;
use crate::config::{BatchConfig, DatabaseConfig, Limits, Secret};
use crate::listener::HttpConfig;
use crate::metrics::{LogConfig, MetricsConfig};
use crate::query::config::QueryConfig;
use crate::spool::SpoolConfig;
use crate::tenants::spec::TenantSpec;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

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
    /// How long clients may take, and connections per address (see
    /// `listener.rs`).
    pub http: HttpConfig,
    pub components: ComponentsConfig,
    /// The bearer token of the admin API (`/admin/…`). Without one the
    /// admin API is off.
    pub admin_token: Option<Secret>,
    /// Tenants to seed the registry with (see docs/tenants.md).
    pub tenants: Vec<TenantSpec>,
    /// Single-user mode: while no tenant has been registered since the
    /// start, a default tenant takes requests without a key, from loopback
    /// addresses only. Off unless set; deleting the last tenant never turns
    /// it on.
    pub keyless_loopback: bool,
    /// The component settings of the default tenant (the one that takes
    /// keyless loopback requests, with `keyless_loopback`).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The SQL query API (`/api/query`, see docs/query.md).
    pub query: QueryConfig,
    /// Change streams from PostgreSQL sources (see docs/cdc.md).
    pub cdc: Vec<CdcConfig>,
    /// Where requests wait on disk while their destination cannot take them.
    pub spool: SpoolConfig,
    /// Log format and level (see docs/observability.md).
    pub log: LogConfig,
    /// `/metrics` and the status page (see docs/observability.md).
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().unwrap(),
            data_dir: PathBuf::from(".sluice"),
            database: DatabaseConfig::default(),
            batch: BatchConfig::default(),
            limits: Limits::default(),
            http: Default::default(),
            components: ComponentsConfig::default(),
            admin_token: None,
            tenants: Vec::new(),
            keyless_loopback: false,
            settings: Default::default(),
            query: Default::default(),
            cdc: Vec::new(),
            spool: Default::default(),
            log: Default::default(),
            metrics: Default::default(),
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
        if self.limits.memory_spike_bytes.is_some_and(|spike| spike >= self.limits.max_memory_bytes) {
            bail!("limits.memory_spike_bytes must be less than limits.max_memory_bytes");
        }
        self.http.validate()?;
        self.query.validate()?;
        for source in &self.cdc {
            source.validate()?;
        }
        Ok(())
    }

    /// The memory limiter's spike allowance (see `memory.rs`).
    pub fn memory_spike_bytes(&self) -> usize {
        self.limits.memory_spike_bytes.unwrap_or(self.limits.max_memory_bytes / 5)
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
