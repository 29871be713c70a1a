//! The tenant registry's rows in the service database: the one truth that
//! every host of a fleet serves from.
//!
//! - `_sluice.registry`: one row, the registry's schema version (a host
//!   refuses a schema newer than it knows) and its version, which every
//!   change raises by one in the change's own transaction.
//! - `_sluice.tenants`: each tenant's spec (keys and query tokens hashed) and
//!   the registry version that last wrote it.
//! - `_sluice.components`: uploaded components, by the SHA-256 of their bytes.
//! - `_sluice.hosts`: the fleet's hosts and their heartbeats (the fleet module).
//!
//! A change locks the registry row, so changes from any host are serialized
//! by the database, and notifies [`CHANNEL`] with the new version on commit.

use crate::db::{CommitChecked, INTERNAL_SCHEMA};
use crate::tenants::spec::TenantSpec;
use anyhow::{Context, Result, bail};

/// The registry schema this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// Notified with the new version when a change commits.
pub const CHANNEL: &str = "sluice_registry";

/// The registry as stored at one version.
pub struct Stored {
    pub version: i64,
    pub tenants: Vec<StoredTenant>,
}

pub struct StoredTenant {
    pub spec: TenantSpec,
    /// The registry version that last wrote this tenant.
    pub version: i64,
}

/// One change to the registry.
pub enum Change {
    /// A new tenant; refused if the id is taken.
    Create(TenantSpec),
    /// A tenant as it is now, replacing the one stored at version `was`.
    Replace { spec: TenantSpec, was: i64 },
    /// Removes the tenant stored at version `was`.
    Delete { id: String, was: i64 },
    /// Tenants added unless their id is taken (the config file's, a
    /// `tenants.json` being imported).
    Seed(Vec<TenantSpec>),
    /// Notes that `<data_dir>/tenants.json` (this path) was imported, so no
    /// host imports one again.
    Imported(String),
}

/// Why a change was not made.
#[derive(Debug)]
pub enum Refused {
    /// The id is taken, or a key or token is another tenant's.
    Conflict(String),
    NotFound(String),
    /// The tenant cannot be stored as it is; the reason says why.
    Invalid(String),
    /// The tenant changed since this host read it: read it again and retry.
    Stale,
}

#[derive(Debug)]
pub enum CommitError {
    Refused(Refused),
    Failed(anyhow::Error),
}

impl From<tokio_postgres::Error> for CommitError {
    fn from(e: tokio_postgres::Error) -> Self {
        CommitError::Failed(e.into())
    }
}

fn table(name: &str) -> String {
    format!("{}.{name}", sluice_sdk::sql::quote_ident(INTERNAL_SCHEMA))
}

/// Creates the registry's tables, or checks that they are of a schema this
/// build knows. Needs no privilege beyond reading them once they exist, so
/// `sluice migrate` can create them with an admin connection and `serve` run
/// as a writer that cannot create.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<()> {
    let registry = table("registry");
    match client.query_opt(&format!("SELECT schema_version FROM {registry}"), &[]).await {
        Ok(Some(row)) if row.get::<_, i32>(0) == SCHEMA_VERSION => return Ok(()),
        Ok(Some(row)) => check_schema(row.get(0))?,
        // Not there yet (or unreadable): create it below, which says why if
        // this login cannot.
        Ok(None) | Err(_) => {}
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('sluice:registry'))", &[]).await?;
    let schema = sluice_sdk::sql::quote_ident(INTERNAL_SCHEMA);
    let exists: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&INTERNAL_SCHEMA])
        .await?
        .get(0);
    if !exists {
        // Created by Sluice's login: PUBLIC has no USAGE on a new schema.
        tx.batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .context("create schema _sluice for the tenant registry")?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {registry} (\
           singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), \
           schema_version integer NOT NULL, \
           version bigint NOT NULL, \
           imported text); \
         INSERT INTO {registry} (schema_version, version) VALUES ({SCHEMA_VERSION}, 0) ON CONFLICT DO NOTHING"
    ))
    .await
    .context("create table _sluice.registry")?;
    let found: i32 = tx.query_one(&format!("SELECT schema_version FROM {registry}"), &[]).await?.get(0);
    check_schema(found)?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {tenants} (id text PRIMARY KEY, spec jsonb NOT NULL, version bigint NOT NULL); \
         CREATE TABLE IF NOT EXISTS {components} (digest text PRIMARY KEY, wasm bytea NOT NULL, \
           stored_at timestamptz NOT NULL DEFAULT now()); \
         CREATE TABLE IF NOT EXISTS {hosts} (id text PRIMARY KEY, address text NOT NULL, version text NOT NULL, \
           started_at timestamptz NOT NULL, heartbeat_at timestamptz NOT NULL, registry_version bigint, \
           draining boolean NOT NULL DEFAULT false, requests bigint NOT NULL DEFAULT 0, \
           events_inserted bigint NOT NULL DEFAULT 0, spooled bigint NOT NULL DEFAULT 0, \
           spooled_bytes bigint NOT NULL DEFAULT 0); \
         REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; \
         REVOKE ALL ON {registry}, {tenants}, {components}, {hosts} FROM PUBLIC",
        tenants = table("tenants"),
        components = table("components"),
        hosts = table("hosts"),
    ))
    .await
    .context("create the tables of _sluice's tenant registry")?;
    tx.commit_checked().await?;
    Ok(())
}

fn check_schema(found: i32) -> Result<()> {
    if found > SCHEMA_VERSION {
        bail!(
            "the tenant registry in the service database has schema version {found}, newer than this Sluice ({}) \
             knows (up to {SCHEMA_VERSION}): run a Sluice as new as the hosts that migrated it",
            env!("CARGO_PKG_VERSION")
        );
    }
    // Older schemas would be migrated here; version 1 is the first.
    Ok(())
}

/// The registry's version, and whether a `tenants.json` was imported.
pub async fn version(client: &tokio_postgres::Client) -> Result<(i64, Option<String>)> {
    let row = client.query_one(&format!("SELECT version, imported FROM {}", table("registry")), &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// Every tenant, at one version.
pub async fn load(client: &mut tokio_postgres::Client) -> Result<Stored> {
    let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await?;
    let version: i64 = tx.query_one(&format!("SELECT version FROM {}", table("registry")), &[]).await?.get(0);
    let rows = tx.query(&format!("SELECT id, spec::text, version FROM {} ORDER BY id", table("tenants")), &[]).await?;
    tx.commit().await?;
    let mut tenants = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get(0);
        let spec: &str = row.get(1);
        let spec: TenantSpec =
            serde_json::from_str(spec).with_context(|| format!("tenant {id} in the registry is not readable"))?;
        tenants.push(StoredTenant { spec, version: row.get(2) });
    }
    Ok(Stored { version, tenants })
}

/// Makes `changes` in one transaction, as registry version + 1 (notified on
/// [`CHANNEL`]), and returns that version. Nothing changes, and the version
/// stays, when any change is refused or none changes anything.
pub async fn commit(client: &mut tokio_postgres::Client, changes: Vec<Change>) -> Result<i64, CommitError> {
    let tx = client.transaction().await?;
    let registry = table("registry");
    let tenants = table("tenants");
    let current: i64 = tx.query_one(&format!("SELECT version FROM {registry} FOR UPDATE"), &[]).await?.get(0);
    let next = current + 1;
    let mut changed = false;
    let stored_version = |id: String| {
        let tx = &tx;
        let tenants = &tenants;
        async move {
            let row = tx.query_opt(&format!("SELECT version FROM {tenants} WHERE id = $1"), &[&id]).await?;
            Ok::<_, tokio_postgres::Error>(row.map(|r| r.get::<_, i64>(0)))
        }
    };
    for change in changes {
        match change {
            Change::Create(spec) => {
                if stored_version(spec.id.clone()).await?.is_some() {
                    return Err(CommitError::Refused(Refused::Conflict(format!("tenant {} exists", spec.id))));
                }
                put(&tx, &spec, next).await?;
                changed = true;
            }
            Change::Seed(specs) => {
                for spec in specs {
                    if stored_version(spec.id.clone()).await?.is_none() {
                        put(&tx, &spec, next).await?;
                        changed = true;
                    }
                }
            }
            Change::Replace { spec, was } => {
                match stored_version(spec.id.clone()).await? {
                    None => return Err(CommitError::Refused(Refused::NotFound(format!("no tenant {}", spec.id)))),
                    Some(v) if v != was => return Err(CommitError::Refused(Refused::Stale)),
                    Some(_) => {}
                }
                put(&tx, &spec, next).await?;
                changed = true;
            }
            Change::Delete { id, was } => {
                match stored_version(id.clone()).await? {
                    None => return Err(CommitError::Refused(Refused::NotFound(format!("no tenant {id}")))),
                    Some(v) if v != was => return Err(CommitError::Refused(Refused::Stale)),
                    Some(_) => {}
                }
                tx.execute(&format!("DELETE FROM {tenants} WHERE id = $1"), &[&id]).await?;
                changed = true;
            }
            Change::Imported(path) => {
                tx.execute(&format!("UPDATE {registry} SET imported = $1"), &[&path]).await?;
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(current);
    }
    tx.execute(&format!("UPDATE {registry} SET version = $1"), &[&next]).await?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()]).await?;
    tx.commit_checked().await?;
    Ok(next)
}

/// Writes one tenant, refusing keys and tokens another tenant has.
async fn put(tx: &tokio_postgres::Transaction<'_>, spec: &TenantSpec, version: i64) -> Result<(), CommitError> {
    let tenants = table("tenants");
    for (field, hashes, what) in
        [("keys", &spec.keys, "an API key"), ("query_tokens", &spec.query_tokens, "a query token")]
    {
        if hashes.is_empty() {
            continue;
        }
        let other = tx
            .query_opt(
                &format!("SELECT id FROM {tenants} WHERE id <> $1 AND spec->'{field}' ?| $2::text[] LIMIT 1"),
                &[&spec.id, hashes],
            )
            .await?;
        if let Some(other) = other {
            let other: String = other.get(0);
            return Err(CommitError::Refused(Refused::Conflict(format!(
                "{what} of tenant {} is already one of tenant {other}",
                spec.id
            ))));
        }
    }
    let value = serde_json::to_value(spec).map_err(|e| CommitError::Failed(e.into()))?;
    // jsonb cannot hold the NUL character (JSON's `\u0000`).
    if has_nul(&value) {
        return Err(CommitError::Refused(Refused::Invalid(format!(
            "tenant {}: a setting or name holds the NUL character (\\u0000), which PostgreSQL cannot store",
            spec.id
        ))));
    }
    tx.execute(
        &format!(
            "INSERT INTO {tenants} (id, spec, version) VALUES ($1, $2::text::jsonb, $3) \
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, version = excluded.version"
        ),
        &[&spec.id, &value.to_string(), &version],
    )
    .await?;
    Ok(())
}

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Stores a component's bytes under their digest (once; the same bytes
/// always have the same digest).
pub async fn put_component(client: &tokio_postgres::Client, digest: &str, wasm: &[u8]) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO {} (digest, wasm) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
                table("components")
            ),
            &[&digest, &wasm],
        )
        .await
        .context("store the component in the service database")?;
    Ok(())
}

/// A stored component's bytes.
pub async fn component(client: &tokio_postgres::Client, digest: &str) -> Result<Option<Vec<u8>>> {
    let row = client
        .query_opt(&format!("SELECT wasm FROM {} WHERE digest = $1", table("components")), &[&digest])
        .await
        .context("read the component from the service database")?;
    Ok(row.map(|r| r.get(0)))
}
