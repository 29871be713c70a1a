//! `[[cdc]]`: a change stream from a PostgreSQL source into a change-handler
//! component. The source's keys are Drasi's (camelCase accepted).

use anyhow::{Result, bail};
use serde::Deserialize;
use sluice_replication::{ReplicationConfig, TableName};

/// The built-in audit handler.
pub const BUILTIN_AUDIT: &str = "builtin:audit";
/// The built-in example aggregate: order count and total per customer.
pub const BUILTIN_AGGREGATE: &str = "builtin:aggregate";

#[derive(Debug, Clone, Deserialize)]
pub struct CdcConfig {
    /// The source's name: the checkpoint's key and the `source` of every
    /// transaction. Defaults to the slot name.
    #[serde(default)]
    pub name: Option<String>,
    /// The change handler: `builtin:audit` or the path of a `.wasm`
    /// component of the `change-handler` world.
    #[serde(default = "default_component")]
    pub component: String,
    /// The destination schema of the handler's tables and the checkpoint
    /// (default `database.schema`).
    #[serde(default)]
    pub schema: Option<String>,
    /// Key columns for tables without a primary key (or to use instead of it).
    #[serde(default, alias = "tableKeys")]
    pub table_keys: Vec<TableKey>,
    /// Drasi's bootstrap provider: `postgres` reads the rows already in the
    /// tables from the new slot's snapshot; `none` (the default) does not.
    #[serde(default, alias = "bootstrapProvider")]
    pub bootstrap_provider: Option<String>,
    /// Most changes handed to the component in one call; a larger
    /// transaction is delivered in parts (committed together).
    #[serde(default = "default_batch_changes", alias = "batchChanges")]
    pub batch_changes: usize,
    /// Changes of one transaction kept in memory before the rest are
    /// spilled to a file under the data folder.
    #[serde(default = "default_memory_changes", alias = "memoryChanges")]
    pub memory_changes: usize,
    /// How long one handler call may run, in milliseconds (default `limits.component_deadline_ms`).
    #[serde(default, alias = "deadlineMs")]
    pub deadline_ms: Option<u64>,
    /// Handler calls run at once, each on its own transaction (or part) in
    /// a fresh instance; their effects are still applied in commit order.
    /// Default: the number of CPUs, at most 8.
    #[serde(default = "default_concurrent_calls", alias = "concurrentCalls")]
    pub concurrent_calls: usize,
    /// How often a source stopped by a failure that retrying soon cannot
    /// mend (a privilege revoked, a publication or table dropped, a login
    /// refused) tries again, in milliseconds: it resumes once the cause is
    /// gone, without flooding the source's log meanwhile.
    #[serde(default = "default_failed_retry_ms", alias = "failedRetryMs")]
    pub failed_retry_ms: u64,
    /// The connection: host, port, database, user, password, tables,
    /// slotName, publicationName, sslMode.
    #[serde(flatten)]
    pub source: ReplicationConfig,
}

/// Drasi's `tableKeys` entry: `{ table = "orders", keyColumns = ["a", "b"] }`.
#[derive(Debug, Clone, Deserialize)]
pub struct TableKey {
    /// `table` (in `public`) or `schema.table`.
    pub table: String,
    #[serde(alias = "keyColumns")]
    pub key_columns: Vec<String>,
}

fn default_component() -> String {
    BUILTIN_AUDIT.into()
}
// Measured on a 1,000,000-row transaction: these keep the host's peak near
// 85 MiB (10,000 / 100,000 took 325 MiB) and applied it faster.
fn default_batch_changes() -> usize {
    2_000
}
fn default_memory_changes() -> usize {
    10_000
}
fn default_failed_retry_ms() -> u64 {
    30_000
}
fn default_concurrent_calls() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

impl CdcConfig {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.source.slot_name)
    }

    pub fn validate(&self) -> Result<()> {
        self.source.validate().map_err(|e| anyhow::anyhow!("cdc {:?}: {e}", self.name()))?;
        if self.name().is_empty() {
            bail!("cdc: `name` is empty");
        }
        if let Some(schema) = &self.schema {
            sluice_sdk::sql::check_ident(schema).map_err(|e| anyhow::anyhow!("cdc {:?}: schema: {e}", self.name()))?;
        }
        for key in &self.table_keys {
            TableName::parse(&key.table).map_err(|e| anyhow::anyhow!("cdc {:?}: tableKeys: {e}", self.name()))?;
            if key.key_columns.is_empty() {
                bail!("cdc {:?}: tableKeys for {:?} lists no columns", self.name(), key.table);
            }
        }
        if self.batch_changes == 0 || self.memory_changes == 0 || self.concurrent_calls == 0 {
            bail!("cdc {:?}: batch_changes, memory_changes and concurrent_calls must be at least 1", self.name());
        }
        if self.failed_retry_ms == 0 {
            bail!("cdc {:?}: failed_retry_ms must be at least 1", self.name());
        }
        match self.bootstrap_provider.as_deref() {
            None | Some("") | Some("none") | Some("noop") | Some("postgres") => {}
            Some(other) => bail!(
                "cdc {:?}: bootstrapProvider {other:?} is not supported: use \"postgres\" (read the rows already in \
                 the tables from the slot's snapshot) or \"none\" (stream changes from the slot's creation on)",
                self.name()
            ),
        }
        Ok(())
    }

    /// Whether a new slot's snapshot is read first (`bootstrapProvider = "postgres"`).
    pub fn bootstraps(&self) -> bool {
        self.bootstrap_provider.as_deref() == Some("postgres")
    }

    /// The configured key columns of `schema.table`, if any.
    pub fn table_key(&self, schema: &str, table: &str) -> Option<&[String]> {
        self.table_keys
            .iter()
            .find(|k| TableName::parse(&k.table).is_ok_and(|t| t.schema == schema && t.name == table))
            .map(|k| k.key_columns.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_drasi_keys_and_snake_case() {
        let camel: CdcConfig = toml::from_str(
            r#"
            host = "db"
            port = 5433
            database = "shop"
            user = "u"
            password = "hunter2"
            tables = ["orders", "inv.items"]
            slotName = "shop_slot"
            publicationName = "shop_pub"
            sslMode = "disable"
            bootstrapProvider = "none"
            tableKeys = [{ table = "inv.items", keyColumns = ["sku", "site"] }]
            "#,
        )
        .unwrap();
        camel.validate().unwrap();
        assert_eq!(camel.name(), "shop_slot");
        assert_eq!(camel.source.publication_name, "shop_pub");
        assert_eq!(camel.component, BUILTIN_AUDIT);
        assert_eq!(camel.table_key("inv", "items").unwrap(), ["sku", "site"]);
        assert!(camel.table_key("public", "items").is_none());
        assert!(!format!("{camel:?}").contains("hunter2"));

        let snake: CdcConfig = toml::from_str(
            r#"
            name = "orders"
            database = "shop"
            user = "u"
            slot_name = "s2"
            publication_name = "p2"
            table_keys = [{ table = "orders", key_columns = ["id"] }]
            component = "/x/handler.wasm"
            batch_changes = 10
            concurrent_calls = 3
            "#,
        )
        .unwrap();
        snake.validate().unwrap();
        assert_eq!((snake.name(), snake.source.slot_name.as_str(), snake.batch_changes), ("orders", "s2", 10));
        assert_eq!((snake.concurrent_calls, camel.concurrent_calls >= 1), (3, true));
        assert_eq!(snake.table_key("public", "orders").unwrap(), ["id"]);

        let none: CdcConfig = toml::from_str("database = \"d\"\nuser = \"u\"\nconcurrentCalls = 0").unwrap();
        assert!(none.validate().unwrap_err().to_string().contains("concurrent_calls must be at least 1"));
        let bad: CdcConfig =
            toml::from_str("database = \"d\"\nuser = \"u\"\nbootstrapProvider = \"application\"").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("\"application\" is not supported"));
        let postgres: CdcConfig =
            toml::from_str("database = \"d\"\nuser = \"u\"\nbootstrapProvider = \"postgres\"").unwrap();
        postgres.validate().unwrap();
        assert!(postgres.bootstraps() && !camel.bootstraps());
    }
}
