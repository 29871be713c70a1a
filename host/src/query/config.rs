//! `[query]` of the configuration file.

use serde::Deserialize;

/// `[query]` in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// How long one statement may run, in milliseconds; past it the query
    /// is cancelled and answered 408.
    pub statement_timeout_ms: u64,
    /// Most rows one answer carries; more set `truncated`.
    pub max_rows: usize,
    /// Most bytes of rows one answer carries; more set `truncated`.
    pub max_bytes: usize,
    /// Connections per tenant for queries, apart from the ingest pool: one
    /// tenant's queries never wait for another's.
    pub pool_size: usize,
    /// Longest SQL text accepted, in bytes.
    pub max_sql_bytes: usize,
    /// Most tokens (words, numbers, operators, strings) in one SQL text:
    /// it bounds how deep the syntax tree the checks walk can be.
    pub max_sql_tokens: usize,
    /// `work_mem` of the roles Sluice makes, in kB.
    pub work_mem_kb: u64,
    /// `temp_file_limit` of the roles Sluice makes, in kB (set where
    /// Sluice's login is a superuser; elsewhere the server's holds).
    pub temp_file_limit_kb: u64,
    /// A login of the operator's for queries, in place of the roles Sluice
    /// makes; `{tenant}` is replaced by the tenant's id. It must only be
    /// able to read the tenant's schema (Sluice refuses a privileged one).
    pub reader_user: Option<String>,
    /// Its password; `{tenant}` is replaced too.
    pub reader_password: Option<String>,
}

impl Default for QueryConfig {
    fn default() -> QueryConfig {
        QueryConfig {
            statement_timeout_ms: 5_000,
            max_rows: 10_000,
            max_bytes: 16 << 20,
            pool_size: 4,
            max_sql_bytes: 256 << 10,
            max_sql_tokens: 20_000,
            work_mem_kb: 4 << 10,
            temp_file_limit_kb: 1 << 20,
            reader_user: None,
            reader_password: None,
        }
    }
}

/// Bounds of `max_sql_tokens`: the checks' stack is sized for the deepest
/// syntax tree this many tokens make.
pub(crate) const MAX_SQL_TOKENS: usize = 100_000;

impl QueryConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.statement_timeout_ms == 0 {
            anyhow::bail!("query.statement_timeout_ms must be at least 1 (PostgreSQL takes 0 as no limit)");
        }
        if self.max_rows == 0 || self.max_rows > 10_000_000 {
            anyhow::bail!("query.max_rows must be between 1 and 10000000");
        }
        if self.max_bytes < 1024 || self.max_bytes > 1 << 30 {
            anyhow::bail!("query.max_bytes must be between 1024 and 1073741824");
        }
        if self.pool_size == 0 {
            anyhow::bail!("query.pool_size must be at least 1");
        }
        if self.max_sql_bytes == 0 || self.max_sql_bytes > 2 << 20 {
            anyhow::bail!("query.max_sql_bytes must be between 1 and 2097152");
        }
        if self.max_sql_tokens == 0 || self.max_sql_tokens > MAX_SQL_TOKENS {
            anyhow::bail!("query.max_sql_tokens must be between 1 and {MAX_SQL_TOKENS}");
        }
        if self.work_mem_kb < 64 || self.temp_file_limit_kb == 0 {
            anyhow::bail!("query.work_mem_kb must be at least 64 and query.temp_file_limit_kb at least 1");
        }
        if let Some(user) = &self.reader_user
            && user.trim().is_empty()
        {
            anyhow::bail!("query.reader_user is empty");
        }
        if self.reader_password.is_some() && self.reader_user.is_none() {
            anyhow::bail!("query.reader_password is set without query.reader_user");
        }
        Ok(())
    }
}
