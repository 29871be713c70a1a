//! Tenants as the configuration file and the admin API describe them,
//! and their keys.

use crate::config::{BatchConfig, DatabaseConfig, Limits};
use crate::hex::hex;
use crate::write_modes::WriteModes;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The component of tenants that name none: events, Logflare and
/// structured logs, by route (`components/standard`).
pub const BUILTIN: &str = "builtin:standard";

/// A tenant as the config file and the admin API describe it.
#[derive(Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub id: String,
    /// Ingest API keys, stored as `sha256:<hex>`. The config file may give
    /// plain keys (e.g. `"${ACME_KEY}"`); they are hashed on load.
    #[serde(default)]
    pub keys: Vec<String>,
    /// `builtin:standard`, `sha256:<digest>` of an uploaded component, or (in
    /// the config file) the path of a `.wasm` file.
    #[serde(default = "builtin")]
    pub component: String,
    /// Where rows go; by default the service's database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseConfig>,
    /// Limits that differ from the service's.
    #[serde(default)]
    pub limits: TenantLimits,
    /// Batching that differs from the service's (a writer of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
    /// The APIs this tenant may use; by default all of them.
    #[serde(default = "all_apis")]
    pub apis: Vec<Api>,
    /// Settings for the tenant's component, passed with every request
    /// (e.g. Logflare sources, the structured-log table).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Private access tokens of the SQL query API, stored like the keys.
    /// Ingest keys never authorize queries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_tokens: Vec<String>,
    /// How conflicts are written, by table (or `prefix*`): `append`,
    /// `overwrite`, `overwrite-delete-stale`. Absent: as the component plans.
    #[serde(default, skip_serializing_if = "WriteModes::is_empty")]
    pub write_modes: WriteModes,
}

/// An ingest API a tenant can be allowed.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// `POST /v1/events`: canonical events.
    Events,
    /// `POST /api/logs` and `POST /logs`: Logflare's ingest API.
    Logflare,
    /// `POST /v1/logs`: structured log records.
    Logs,
    /// `GET|POST /api/query`: read-only SQL.
    Query,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Events => "events",
            Api::Logflare => "Logflare logs",
            Api::Logs => "structured logs",
            Api::Query => "query",
        }
    }
}

pub fn all_apis() -> Vec<Api> {
    vec![Api::Events, Api::Logflare, Api::Logs, Api::Query]
}

// By hand: keys given in the config file are plain until `normalize`.
impl std::fmt::Debug for TenantSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSpec")
            .field("id", &self.id)
            .field("keys", &self.keys.len())
            .field("component", &self.component)
            .field("database", &self.database)
            .field("limits", &self.limits)
            .field("batch", &self.batch)
            .field("apis", &self.apis)
            .field("settings", &self.settings)
            .field("query_tokens", &self.query_tokens.len())
            .field("write_modes", &self.write_modes)
            .finish()
    }
}

fn builtin() -> String {
    BUILTIN.into()
}

/// Per-tenant overrides of the service's limits.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_memory_bytes: Option<usize>,
    /// Request bytes this tenant may have in flight at once; past it, 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_bytes: Option<usize>,
    /// Component calls this tenant may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls: Option<u32>,
    /// Rows this tenant may keep in its dead-letter table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dead_letters: Option<u64>,
    /// Tables Sluice may create for this tenant on first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tables: Option<u64>,
}

impl TenantLimits {
    /// These overrides over the service's limits.
    pub fn resolve(&self, service: &Limits) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes.unwrap_or(service.max_body_bytes),
            request_timeout_ms: self.request_timeout_ms.unwrap_or(service.request_timeout_ms),
            component_deadline_ms: self.component_deadline_ms.unwrap_or(service.component_deadline_ms),
            component_memory_bytes: self.component_memory_bytes.unwrap_or(service.component_memory_bytes),
            max_in_flight_bytes: self.max_in_flight_bytes.unwrap_or(service.max_in_flight_bytes),
            max_concurrent_calls: self.max_concurrent_calls.unwrap_or(service.max_concurrent_calls).max(1),
            max_instances: service.max_instances,
            max_in_flight_bytes_total: service.max_in_flight_bytes_total,
            max_connections: service.max_connections,
            max_memory_bytes: service.max_memory_bytes,
            memory_spike_bytes: service.memory_spike_bytes,
            max_dead_letters: self.max_dead_letters.unwrap_or(service.max_dead_letters),
            max_tables: self.max_tables.unwrap_or(service.max_tables),
        }
    }
}

/// `sha256:<hex>` of an API key.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(key.as_bytes())))
}

/// A short, stable name for a stored key (for listing and revoking).
pub fn key_id(hashed: &str) -> &str {
    &hashed[7..19]
}

/// A new random API key: `sk_` and 32 random bytes in hex.
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    format!("sk_{}", hex(&bytes))
}

/// Equal in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TenantSpec {
    /// Checks the id and normalizes the keys to their hashed form.
    pub fn normalize(mut self) -> Result<TenantSpec> {
        if self.id.is_empty()
            || self.id.len() > 63
            || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("tenant id {:?} must be 1 to 63 letters, digits, '-' or '_'", self.id);
        }
        for (what, keys) in [("an API key", &mut self.keys), ("a query token", &mut self.query_tokens)] {
            for key in keys.iter_mut() {
                let stored = key
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !stored {
                    if key.len() < 16 {
                        bail!("tenant {}: {what} must be at least 16 characters", self.id);
                    }
                    *key = hash_key(key);
                }
            }
            let mut seen = std::collections::HashSet::new();
            keys.retain(|k| seen.insert(k.clone()));
        }
        if let Some(token) = self.query_tokens.iter().find(|t| self.keys.contains(t)) {
            bail!(
                "tenant {}: query token {} is also an ingest key; a query token must be a secret of its own",
                self.id,
                key_id(token)
            );
        }
        if self.component.starts_with("sha256:") && component_digest(&self.component).is_none() {
            bail!(
                "tenant {}: component {:?} is not sha256: and 64 lower-case hex digits",
                self.id,
                self.component.chars().take(80).collect::<String>()
            );
        }
        if let Some(batch) = &self.batch
            && (batch.writers == 0 || batch.batch_size == 0 || batch.batch_size_bytes == 0)
        {
            bail!("tenant {}: batch.writers, batch_size and batch_size_bytes must be at least 1", self.id);
        }
        Ok(self)
    }
}

/// The digest of a stored component, `sha256:` and 64 lower-case hex
/// digits; `None` for anything else (a path, upper case, a short digest).
pub fn component_digest(component: &str) -> Option<&str> {
    let digest = component.strip_prefix("sha256:")?;
    (digest.len() == 64 && digest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(digest)
}
