//! Tenants: who may send, which component normalizes their requests, and
//! where their rows go. The registry is an immutable snapshot swapped
//! atomically on every change, so the request path never takes a lock; the
//! admin API changes it at run time and persists it in
//! `<data_dir>/tenants.json`.

pub mod spec;

use crate::config::{BatchConfig, DatabaseConfig, Limits};
use crate::db::{self, writer::Writer};
use crate::files::write_atomically;
use crate::hex::hex;
use crate::ingest::{Destination, Tenant};
use crate::runtime::{Normalizer, Runtime};
use crate::tenants::spec::{BUILTIN, TenantSpec, component_digest, constant_time_eq, hash_key, new_key};
use crate::write_modes::WriteModes;
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pools by connection settings; writers by pool and batch settings.
#[derive(Default)]
struct Destinations {
    pools: HashMap<String, Pool>,
    writers: HashMap<(String, String), Arc<Destination>>,
    /// Each fires when its writer has drained and stopped.
    stopped: Vec<tokio::sync::oneshot::Receiver<()>>,
}

/// The immutable view requests read.
#[derive(Default)]
pub struct Snapshot {
    pub tenants: HashMap<String, Arc<Tenant>>,
    /// Key hash → tenant id.
    keys: HashMap<String, String>,
    /// Query token hash → tenant id.
    query_tokens: HashMap<String, String>,
}

impl Snapshot {
    /// The tenant an API key belongs to.
    pub fn by_key(&self, key: &str) -> Option<&Arc<Tenant>> {
        let hashed = hash_key(key);
        let (stored, id) = self.keys.get_key_value(&hashed)?;
        // The map found it by hash; compare again without early exit.
        constant_time_eq(stored.as_bytes(), hashed.as_bytes()).then(|| self.tenants.get(id)).flatten()
    }

    /// The tenant a private access token of the query API belongs to.
    pub fn by_query_token(&self, token: &str) -> Option<&Arc<Tenant>> {
        let hashed = hash_key(token);
        let (stored, id) = self.query_tokens.get_key_value(&hashed)?;
        constant_time_eq(stored.as_bytes(), hashed.as_bytes()).then(|| self.tenants.get(id)).flatten()
    }
}

/// The tenants, and everything needed to change them.
pub struct Registry {
    pub runtime: Arc<Runtime>,
    snapshot: ArcSwap<Snapshot>,
    /// Serializes changes; requests never take it.
    changes: tokio::sync::Mutex<()>,
    destinations: Mutex<Destinations>,
    service_database: DatabaseConfig,
    service_limits: Limits,
    batch: BatchConfig,
    /// Uploaded components by digest: `<data_dir>/components/<sha256>.wasm`.
    components_dir: PathBuf,
    /// The registry on disk.
    state_file: PathBuf,
    /// The built-in events component (or the one the config puts in its place).
    builtin: Arc<Normalizer>,
    /// Loaded components by digest, shared by tenants.
    loaded: Mutex<HashMap<String, Arc<Normalizer>>>,
    /// Whether any tenant has been registered since the service started:
    /// then keyless requests stay refused once the last one is deleted.
    had_tenants: std::sync::atomic::AtomicBool,
}

impl Registry {
    pub fn new(
        runtime: Arc<Runtime>,
        builtin: Arc<Normalizer>,
        service_database: DatabaseConfig,
        service_limits: Limits,
        batch: BatchConfig,
        data_dir: &Path,
    ) -> Registry {
        Registry {
            runtime,
            snapshot: ArcSwap::default(),
            changes: tokio::sync::Mutex::new(()),
            destinations: Mutex::default(),
            service_database,
            service_limits,
            batch,
            components_dir: data_dir.join("components"),
            state_file: data_dir.join("tenants.json"),
            builtin,
            loaded: Mutex::default(),
            had_tenants: Default::default(),
        }
    }

    /// The database settings a tenant's rows go to: its own over the
    /// service's.
    pub fn database_of(&self, spec: &TenantSpec) -> DatabaseConfig {
        match &spec.database {
            Some(own) => own.over(&self.service_database),
            None => self.service_database.clone(),
        }
    }

    /// A destination for a tenant outside the registry (the default one).
    pub fn service_destination(&self) -> Result<Arc<Destination>> {
        self.destination(&self.service_database, &self.batch)
    }

    /// Drops every tenant and waits for their writers to write what is
    /// queued. Call it once no request is in flight.
    pub async fn close(&self) {
        self.snapshot.store(Arc::default());
        let stopped = {
            let mut destinations = self.destinations.lock().unwrap();
            destinations.writers.clear();
            destinations.pools.clear();
            std::mem::take(&mut destinations.stopped)
        };
        for writer in stopped {
            let _ = writer.await;
        }
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The stored registry, else the config file's tenants. Once the
    /// registry exists it is the truth: the config seeds only tenants it
    /// does not know.
    pub async fn start(&self, configured: Vec<TenantSpec>) -> Result<()> {
        let _change = self.changes.lock().await;
        let mut specs: Vec<TenantSpec> = match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("read the tenant registry {}", self.state_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).context(format!("read {}", self.state_file.display())),
        };
        for spec in configured {
            let spec = self.store_component_file(spec.normalize()?)?;
            match specs.iter().find(|s| s.id == spec.id) {
                Some(stored) if stored != &spec => tracing::warn!(
                    tenant = %spec.id,
                    "the config file's tenant differs from the registry's; the registry wins (change it with the admin API)"
                ),
                Some(_) => {}
                None => specs.push(spec),
            }
        }
        let mut next = Snapshot::default();
        for spec in specs {
            let spec = self.store_component_file(spec)?;
            let tenant = self.build(spec, None).await?;
            next.insert(tenant).map_err(anyhow::Error::msg)?;
        }
        self.publish(next)?;
        Ok(())
    }

    /// A config tenant's component given as a file path becomes a stored,
    /// content-addressed component.
    fn store_component_file(&self, mut spec: TenantSpec) -> Result<TenantSpec> {
        if spec.component != BUILTIN && !spec.component.starts_with("sha256:") {
            let wasm = std::fs::read(&spec.component)
                .with_context(|| format!("tenant {}: read component {}", spec.id, spec.component))?;
            spec.component = format!("sha256:{}", self.store_component(&wasm)?);
        }
        Ok(spec)
    }

    fn store_component(&self, wasm: &[u8]) -> Result<String> {
        let digest = hex(&Sha256::digest(wasm));
        let path = self.components_dir.join(format!("{digest}.wasm"));
        if !path.exists() {
            write_atomically(&path, wasm)?;
        }
        Ok(digest)
    }

    /// The loaded component a spec names.
    async fn normalizer(&self, spec: &TenantSpec) -> Result<Arc<Normalizer>> {
        if spec.component == BUILTIN {
            return Ok(self.builtin.clone());
        }
        // Only a digest names a file in the components folder: never a path.
        let digest = component_digest(&spec.component)
            .context("a component is builtin:standard or sha256: and 64 lower-case hex digits")?;
        if let Some(loaded) = self.loaded.lock().unwrap().get(digest) {
            return Ok(loaded.clone());
        }
        let path = self.components_dir.join(format!("{digest}.wasm"));
        let wasm =
            std::fs::read(&path).with_context(|| format!("tenant {}: component {digest} is not stored", spec.id))?;
        self.load(&spec.id, wasm).await
    }

    /// Compiles (or loads the cached compilation of) a component, off the
    /// async threads.
    async fn load(&self, tenant: &str, wasm: Vec<u8>) -> Result<Arc<Normalizer>> {
        let runtime = self.runtime.clone();
        let name = tenant.to_owned();
        let normalizer = tokio::task::spawn_blocking(move || runtime.load(&name, &wasm)).await??;
        self.loaded.lock().unwrap().insert(normalizer.digest.clone(), normalizer.clone());
        Ok(normalizer)
    }

    fn destination(&self, database: &DatabaseConfig, batch: &BatchConfig) -> Result<Arc<Destination>> {
        let pg = database.pg_config()?;
        // Debug of tokio_postgres::Config redacts the password but the key
        // must still tell two passwords apart.
        let pool_key = format!("{pg:?}/{:?}/{}", pg.get_password(), database.pool_size);
        let batch_key = format!("{batch:?}");
        let mut destinations = self.destinations.lock().unwrap();
        if let Some(d) = destinations.writers.get(&(pool_key.clone(), batch_key.clone())) {
            return Ok(d.clone());
        }
        let pool = match destinations.pools.get(&pool_key) {
            Some(pool) => pool.clone(),
            None => {
                let wait = Duration::from_millis(database.connect_timeout_ms);
                let pool = db::pool(pg, database.pool_size, wait)?;
                destinations.pools.insert(pool_key.clone(), pool.clone());
                pool
            }
        };
        let (writer, stopped) = Writer::start(pool.clone(), batch.clone());
        destinations.stopped.push(stopped);
        let destination = Arc::new(Destination { pool, writer });
        destinations.writers.insert((pool_key, batch_key), destination.clone());
        Ok(destination)
    }

    /// A live tenant for `spec`: its component loaded and its tables
    /// migrated. `keep` carries the component slot and counters of the
    /// tenant it replaces, so in-flight and later requests see one tenant.
    async fn build(&self, spec: TenantSpec, keep: Option<&Tenant>) -> Result<Arc<Tenant>> {
        let database = self.database_of(&spec);
        let destination = self.destination(&database, spec.batch.as_ref().unwrap_or(&self.batch))?;
        let (normalizer, migrated) = match keep {
            // The kept component slot keeps its own record of migration.
            Some(old)
                if old.spec.component == spec.component
                    && old.spec.database == spec.database
                    && old.spec.write_modes == spec.write_modes =>
            {
                (old.normalizer(), true)
            }
            _ => {
                let normalizer = self.normalizer(&spec).await?;
                let migrated = match self.migrate(&destination, &database.schema, &normalizer, &spec.write_modes).await
                {
                    Ok(()) => true,
                    Err(e) if db::is_unreachable(&e) => {
                        tracing::warn!(
                            tenant = %spec.id,
                            "the database is unreachable; the tables are created when it answers: {e:#}"
                        );
                        false
                    }
                    Err(e) => return Err(e),
                };
                (normalizer, migrated)
            }
        };
        let limits = spec.limits.resolve(&self.service_limits);
        Ok(Arc::new(Tenant::new(spec, database.schema, destination, limits, normalizer, migrated, keep)))
    }

    /// Creates `normalizer`'s tables in `schema`, as `modes` shape them.
    pub async fn migrate(
        &self,
        destination: &Destination,
        schema: &str,
        normalizer: &Normalizer,
        modes: &WriteModes,
    ) -> Result<()> {
        let mut client = destination.pool.get().await.context("connect to the tenant's database")?;
        db::migrate::migrate(&mut client, schema, &modes.tables(&normalizer.tables)).await
    }

    fn publish(&self, next: Snapshot) -> Result<()> {
        let specs: Vec<&TenantSpec> = {
            let mut specs: Vec<_> = next.tenants.values().map(|t| &t.spec).collect();
            specs.sort_by(|a, b| a.id.cmp(&b.id));
            specs
        };
        // It may hold a tenant's database password: written owner-only.
        write_atomically(&self.state_file, &serde_json::to_vec_pretty(&specs)?)?;
        if !next.tenants.is_empty() {
            self.had_tenants.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.snapshot.store(Arc::new(next));
        Ok(())
    }

    /// Whether a tenant has been registered at any time since the start.
    pub fn had_tenants(&self) -> bool {
        self.had_tenants.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A copy of the current snapshot, with the tenants shared.
    fn next(&self) -> Snapshot {
        let current = self.snapshot.load();
        Snapshot {
            tenants: current.tenants.clone(),
            keys: current.keys.clone(),
            query_tokens: current.query_tokens.clone(),
        }
    }

    /// Adds a tenant. Returns it and the plain keys it was given (a new one
    /// when the spec had none), which are shown this once.
    pub async fn create(&self, mut spec: TenantSpec) -> Result<(Arc<Tenant>, Vec<String>), RegistryError> {
        let _change = self.changes.lock().await;
        if self.snapshot.load().tenants.contains_key(&spec.id) {
            return Err(RegistryError::Conflict(format!("tenant {} exists", spec.id)));
        }
        if spec.component != BUILTIN && !spec.component.starts_with("sha256:") {
            return Err(RegistryError::Invalid(anyhow::anyhow!(
                "component must be builtin:standard or sha256:<digest> of an uploaded component; \
                 upload a new one with PUT /admin/tenants/{}/component",
                spec.id
            )));
        }
        let mut plain = Vec::new();
        if spec.keys.is_empty() {
            let key = new_key();
            spec.keys.push(key.clone());
            plain.push(key);
        } else {
            plain.extend(spec.keys.iter().filter(|k| !k.starts_with("sha256:")).cloned());
        }
        let spec = spec.normalize().map_err(RegistryError::Invalid)?;
        let tenant = self.build(spec, None).await.map_err(RegistryError::Invalid)?;
        let mut next = self.next();
        next.insert(tenant.clone()).map_err(RegistryError::Conflict)?;
        self.publish(next).map_err(RegistryError::Internal)?;
        Ok((tenant, plain))
    }

    /// Replaces a tenant's spec with `change(spec)`.
    pub async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut TenantSpec) -> Result<(), RegistryError>,
    ) -> Result<Arc<Tenant>, RegistryError> {
        let _change = self.changes.lock().await;
        let old = self.get(id)?;
        let mut spec = old.spec.clone();
        change(&mut spec)?;
        let spec = spec.normalize().map_err(RegistryError::Invalid)?;
        let tenant = self.build(spec, Some(&old)).await.map_err(RegistryError::Invalid)?;
        let mut next = self.next();
        next.remove(id);
        next.insert(tenant.clone()).map_err(RegistryError::Conflict)?;
        self.publish(next).map_err(RegistryError::Internal)?;
        Ok(tenant)
    }

    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let _change = self.changes.lock().await;
        self.get(id)?;
        let mut next = self.next();
        next.remove(id);
        self.publish(next).map_err(RegistryError::Internal)
    }

    /// Validates `wasm` (it compiles, implements the contract, its tables
    /// migrate in the tenant's database), stores it, then switches the
    /// tenant to it at once. Requests in flight finish on the old one.
    pub async fn swap_component(&self, id: &str, wasm: Vec<u8>) -> Result<Arc<Tenant>, RegistryError> {
        let _change = self.changes.lock().await;
        let old = self.get(id)?;
        let normalizer = self.load(id, wasm.clone()).await.map_err(RegistryError::Invalid)?;
        self.migrate(&old.destination, &old.schema, &normalizer, &old.spec.write_modes)
            .await
            .map_err(RegistryError::Invalid)?;
        let digest = self.store_component(&wasm).map_err(RegistryError::Internal)?;
        let mut spec = old.spec.clone();
        spec.component = format!("sha256:{digest}");
        // The same tenant object keeps serving; only its component changes.
        old.swap(normalizer, true);
        let tenant = Arc::new(Tenant::new(
            spec,
            old.schema.clone(),
            old.destination.clone(),
            old.limits.clone(),
            old.normalizer(),
            true,
            Some(&old),
        ));
        let mut next = self.next();
        next.remove(id);
        next.insert(tenant.clone()).map_err(RegistryError::Conflict)?;
        self.publish(next).map_err(RegistryError::Internal)?;
        Ok(tenant)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Tenant>, RegistryError> {
        self.snapshot.load().tenants.get(id).cloned().ok_or_else(|| RegistryError::NotFound(format!("no tenant {id}")))
    }
}

impl Snapshot {
    fn insert(&mut self, tenant: Arc<Tenant>) -> Result<(), String> {
        for key in &tenant.spec.keys {
            if let Some(other) = self.keys.get(key)
                && other != &tenant.spec.id
            {
                return Err(format!("an API key of tenant {} is already a key of tenant {other}", tenant.spec.id));
            }
        }
        for token in &tenant.spec.query_tokens {
            if let Some(other) = self.query_tokens.get(token)
                && other != &tenant.spec.id
            {
                return Err(format!("a query token of tenant {} is already a token of tenant {other}", tenant.spec.id));
            }
        }
        for key in &tenant.spec.keys {
            self.keys.insert(key.clone(), tenant.spec.id.clone());
        }
        for token in &tenant.spec.query_tokens {
            self.query_tokens.insert(token.clone(), tenant.spec.id.clone());
        }
        self.tenants.insert(tenant.spec.id.clone(), tenant);
        Ok(())
    }

    fn remove(&mut self, id: &str) {
        self.tenants.remove(id);
        self.keys.retain(|_, owner| owner != id);
        self.query_tokens.retain(|_, owner| owner != id);
    }
}

#[derive(Debug)]
pub enum RegistryError {
    NotFound(String),
    Conflict(String),
    /// The request or the component is not acceptable; the reason says why.
    Invalid(anyhow::Error),
    Internal(anyhow::Error),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::NotFound(m) | RegistryError::Conflict(m) => f.write_str(m),
            RegistryError::Invalid(e) | RegistryError::Internal(e) => write!(f, "{e:#}"),
        }
    }
}
