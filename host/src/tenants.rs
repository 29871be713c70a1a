//! Tenants: who may send, which component normalizes their requests, and
//! where their rows go. The registry lives in the service database
//! ([`store`]), shared by every host; each host serves an immutable snapshot
//! of it, swapped atomically on every change, so the request path never
//! takes a lock.

pub mod spec;
pub mod store;

use crate::config::{BatchConfig, DatabaseConfig, Limits};
use crate::db::{self, writer::Writer};
use crate::hex::hex;
use crate::ingest::{Destination, Tenant};
use crate::runtime::{Normalizer, Runtime};
use crate::tenants::spec::{BUILTIN, TenantSpec, component_digest, constant_time_eq, hash_key, new_key};
use crate::tenants::store::{Change, CommitError, Refused, StoredTenant};
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
    /// The registry version each tenant was read at, for changes that must
    /// not undo another host's.
    versions: HashMap<String, i64>,
    /// The registry version served; none until the service database has
    /// answered once.
    pub version: Option<i64>,
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

/// How often a host asks the database for the registry version even when
/// no notification came: the bound on how stale a host can be when a
/// notification is lost without its connection dropping.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// How many times a change is tried again when another host changed the
/// same tenant between this host's read and its write.
const STALE_RETRIES: usize = 3;

/// The tenants, and everything needed to change them.
///
/// The truth is the registry in the service database ([`store`]); this is
/// the host's copy, built into live tenants. Changes made here are written
/// there first and published here after; changes made by other hosts
/// arrive by notification ([`Registry::watch`]).
pub struct Registry {
    pub runtime: Arc<Runtime>,
    snapshot: ArcSwap<Snapshot>,
    /// Serializes this host's changes and reloads; requests never take it.
    changes: tokio::sync::Mutex<()>,
    destinations: Mutex<Destinations>,
    service_database: DatabaseConfig,
    service_limits: Limits,
    batch: BatchConfig,
    /// Where a single host kept its registry before it lived in the
    /// database (`tenants.json`, `components/`): imported once.
    data_dir: PathBuf,
    /// The built-in events component (or the one the config puts in its place).
    builtin: Arc<Normalizer>,
    /// Loaded components by digest, shared by tenants.
    loaded: Mutex<HashMap<String, Arc<Normalizer>>>,
    /// Whether any tenant has been registered since the service started:
    /// then keyless requests stay refused once the last one is deleted.
    had_tenants: std::sync::atomic::AtomicBool,
    /// The config file's tenants, until they are seeded into the database.
    unseeded: Mutex<Option<Vec<TenantSpec>>>,
    /// The registry version served, for whoever reports it (the heartbeat).
    applied: tokio::sync::watch::Sender<Option<i64>>,
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
            data_dir: data_dir.to_owned(),
            builtin,
            loaded: Mutex::default(),
            had_tenants: Default::default(),
            unseeded: Mutex::default(),
            applied: tokio::sync::watch::Sender::new(None),
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

    /// The snapshot requests are served from, once the registry has been
    /// read from the database; before, why not.
    pub fn loaded(&self) -> Result<arc_swap::Guard<Arc<Snapshot>>, &'static str> {
        let snapshot = self.snapshot.load();
        match snapshot.version {
            Some(_) => Ok(snapshot),
            None => Err("the tenant registry is not loaded yet: the service database has not answered since the start"),
        }
    }

    /// A connection to the service database, where the registry lives.
    async fn store(&self) -> Result<deadpool_postgres::Object> {
        self.service_destination()?.pool.get().await.context("connect to the service database")
    }

    /// Loads the registry from the service database: creates its tables if
    /// need be, imports a single host's `tenants.json` once, and seeds the
    /// config file's tenants it does not know. While the database cannot be
    /// reached this returns at once and [`watch`](Self::watch) finishes the
    /// work when it answers.
    pub async fn start(&self, configured: Vec<TenantSpec>) -> Result<()> {
        let mut seeds = Vec::new();
        for spec in configured {
            seeds.push(spec.normalize()?);
        }
        *self.unseeded.lock().unwrap() = Some(seeds);
        match self.sync().await {
            Ok(()) => Ok(()),
            Err(e) if db::is_unreachable(&e) => {
                tracing::warn!(
                    "the service database is unreachable, so the tenant registry is not loaded yet: requests with a \
                     key are answered 503 until it answers: {e:#}"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the registry's tables, imports `tenants.json`, seeds the
    /// config file's tenants: once per start, before the first load.
    async fn set_up(&self, client: &mut deadpool_postgres::Object) -> Result<()> {
        let Some(seeds) = self.unseeded.lock().unwrap().clone() else { return Ok(()) };
        store::migrate(client).await?;
        self.import_files(client).await?;
        let mut stored = Vec::with_capacity(seeds.len());
        for spec in seeds {
            stored.push(self.store_component_file(client, spec).await?);
        }
        if !stored.is_empty() {
            store::commit(client, vec![Change::Seed(stored)]).await.map_err(commit_error)?;
        }
        *self.unseeded.lock().unwrap() = None;
        Ok(())
    }

    /// A registry kept in `<data_dir>/tenants.json` with its
    /// `components/` (before the registry lived in the database) is
    /// imported into an empty registry, once; the files are then left alone.
    async fn import_files(&self, client: &mut deadpool_postgres::Object) -> Result<()> {
        let file = self.data_dir.join("tenants.json");
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).context(format!("read {}", file.display())),
        };
        let (version, imported) = store::version(client).await?;
        if version > 0 || imported.is_some() {
            return Ok(());
        }
        let specs: Vec<TenantSpec> =
            serde_json::from_slice(&bytes).with_context(|| format!("read the tenant registry {}", file.display()))?;
        for spec in &specs {
            if let Some(digest) = component_digest(&spec.component) {
                let path = self.data_dir.join("components").join(format!("{digest}.wasm"));
                let wasm = std::fs::read(&path)
                    .with_context(|| format!("tenant {}: read its component {}", spec.id, path.display()))?;
                store::put_component(client, digest, &wasm).await?;
            }
        }
        let tenants = specs.len();
        let path = file.display().to_string();
        store::commit(client, vec![Change::Seed(specs), Change::Imported(path.clone())]).await.map_err(commit_error)?;
        tracing::info!(
            tenants,
            file = %path,
            "imported the tenant registry into the service database; this file and components/ beside it are no \
             longer read (the database is the registry now)"
        );
        Ok(())
    }

    /// A config tenant's component given as a file path becomes a stored,
    /// content-addressed component.
    async fn store_component_file(
        &self,
        client: &deadpool_postgres::Object,
        mut spec: TenantSpec,
    ) -> Result<TenantSpec> {
        if spec.component != BUILTIN && !spec.component.starts_with("sha256:") {
            let wasm = std::fs::read(&spec.component)
                .with_context(|| format!("tenant {}: read component {}", spec.id, spec.component))?;
            let digest = hex(&Sha256::digest(&wasm));
            store::put_component(client, &digest, &wasm).await?;
            spec.component = format!("sha256:{digest}");
        }
        Ok(spec)
    }

    /// Follows the registry in the database: applies each change another
    /// host notifies, reloads whenever the notifications may have been
    /// missed (the listening connection dropped), and checks the version
    /// every [`RESYNC_EVERY`] besides. Runs until the process ends.
    pub fn watch(self: &Arc<Self>) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(this) = registry.upgrade() else { return };
                let settings = match this.service_database.pg_config() {
                    Ok(settings) => settings,
                    Err(e) => {
                        tracing::error!("the tenant registry cannot be followed: {e:#}");
                        return;
                    }
                };
                let (client, mut notifications) = match db::listen(&settings, store::CHANNEL).await {
                    Ok(listening) => listening,
                    Err(e) => {
                        tracing::debug!("listen for registry changes: {e:#}");
                        drop(this);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                // Listening now: whatever changed before is read here.
                this.sync_logged().await;
                drop(this);
                let mut tick = tokio::time::interval(RESYNC_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        notified = notifications.recv() => {
                            let Some(payload) = notified else { break };
                            let Some(this) = registry.upgrade() else { return };
                            let newer = payload.parse::<i64>().map_or(true, |v| Some(v) > this.snapshot().version);
                            if newer {
                                this.sync_logged().await;
                            }
                        }
                        _ = tick.tick() => {
                            let Some(this) = registry.upgrade() else { return };
                            match store::version(&client).await {
                                Ok((version, _)) if Some(version) == this.snapshot().version => {}
                                Ok(_) => this.sync_logged().await,
                                Err(_) => break,
                            }
                        }
                    }
                }
                tracing::warn!("lost the connection that follows registry changes; reconnecting");
            }
        });
    }

    async fn sync_logged(&self) {
        if let Err(e) = self.sync().await {
            tracing::warn!("reload the tenant registry from the service database: {e:#}");
        }
    }

    /// Reloads the registry from the database and serves it: tenants whose
    /// spec is unchanged stay as they are; changed ones are rebuilt (a new
    /// component compiled, or read from the compile cache); a tenant that
    /// cannot be built keeps its old form and the error is logged.
    pub async fn sync(&self) -> Result<()> {
        let _change = self.changes.lock().await;
        self.sync_locked().await
    }

    async fn sync_locked(&self) -> Result<()> {
        let mut client = self.store().await?;
        self.set_up(&mut client).await?;
        let stored = store::load(&mut client).await?;
        let current = self.snapshot.load_full();
        if current.version == Some(stored.version) {
            return Ok(());
        }
        let mut next = Snapshot { version: Some(stored.version), ..Snapshot::default() };
        for StoredTenant { spec, version } in stored.tenants {
            let old = current.tenants.get(&spec.id);
            let tenant = match old {
                Some(old) if old.spec == spec => old.clone(),
                _ => match self.build(&client, spec.clone(), old.map(|t| &**t)).await {
                    Ok(tenant) => tenant,
                    Err(e) => {
                        tracing::error!(tenant = %spec.id, "the registry's change of this tenant cannot be served: {e:#}");
                        match old {
                            Some(old) => old.clone(),
                            None => continue,
                        }
                    }
                },
            };
            if let Err(e) = next.insert(tenant, version) {
                tracing::error!(tenant = %spec.id, "{e}");
            }
        }
        let (added, removed) = (
            next.tenants.keys().filter(|id| !current.tenants.contains_key(*id)).count(),
            current.tenants.keys().filter(|id| !next.tenants.contains_key(*id)).count(),
        );
        tracing::debug!(version = stored.version, added, removed, "registry loaded");
        if stored.version > 0 {
            self.had_tenants.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.publish(next);
        Ok(())
    }

    /// The loaded component a spec names: compiled once per host from the
    /// bytes in the database (the compile cache on disk spares even that).
    async fn normalizer(&self, client: &deadpool_postgres::Object, spec: &TenantSpec) -> Result<Arc<Normalizer>> {
        if spec.component == BUILTIN {
            return Ok(self.builtin.clone());
        }
        let digest = component_digest(&spec.component)
            .context("a component is builtin:standard or sha256: and 64 lower-case hex digits")?;
        if let Some(loaded) = self.loaded.lock().unwrap().get(digest) {
            return Ok(loaded.clone());
        }
        let wasm = store::component(client, digest)
            .await?
            .with_context(|| format!("tenant {}: component {digest} is not stored", spec.id))?;
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

    /// Everything a live tenant for `spec` needs, made without touching the
    /// tenant it replaces: its component loaded and its tables migrated.
    async fn prepare(
        &self,
        client: &deadpool_postgres::Object,
        spec: TenantSpec,
        old: Option<&Tenant>,
    ) -> Result<Prepared> {
        let database = self.database_of(&spec);
        let destination = self.destination(&database, spec.batch.as_ref().unwrap_or(&self.batch))?;
        let (normalizer, migrated) = match old {
            // The kept component slot keeps its own record of migration.
            Some(old)
                if old.spec.component == spec.component
                    && old.spec.database == spec.database
                    && old.spec.write_modes == spec.write_modes =>
            {
                (old.normalizer(), true)
            }
            _ => {
                let normalizer = self.normalizer(client, &spec).await?;
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
        Ok(Prepared { spec, schema: database.schema, destination, limits, normalizer, migrated })
    }

    /// A live tenant for `spec`. `keep` is the tenant it replaces: its
    /// component slot and counters carry over, so in-flight and later
    /// requests see one tenant.
    async fn build(
        &self,
        client: &deadpool_postgres::Object,
        spec: TenantSpec,
        keep: Option<&Tenant>,
    ) -> Result<Arc<Tenant>> {
        Ok(self.prepare(client, spec, keep).await?.into_tenant(keep))
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

    fn publish(&self, next: Snapshot) {
        if !next.tenants.is_empty() {
            self.had_tenants.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let version = next.version;
        self.snapshot.store(Arc::new(next));
        self.applied.send_if_modified(|applied| std::mem::replace(applied, version) != version);
    }

    /// The registry version this host serves, as it changes.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<Option<i64>> {
        self.applied.subscribe()
    }

    /// Serves a change this host committed as registry `version`. When
    /// another host's change came in between, the whole registry is
    /// reloaded after (this change is already in it).
    async fn publish_committed(&self, version: i64, apply: impl FnOnce(&mut Snapshot)) {
        let current = self.snapshot.load();
        let follows = current.version.is_some_and(|v| v + 1 == version);
        let mut next = Snapshot {
            tenants: current.tenants.clone(),
            keys: current.keys.clone(),
            query_tokens: current.query_tokens.clone(),
            versions: current.versions.clone(),
            version: current.version,
        };
        drop(current);
        apply(&mut next);
        if follows {
            next.version = Some(version);
        }
        self.publish(next);
        if !follows {
            self.sync_locked().await.unwrap_or_else(|e| tracing::warn!("reload the tenant registry: {e:#}"));
        }
    }

    /// Whether a tenant has been registered at any time since the start.
    pub fn had_tenants(&self) -> bool {
        self.had_tenants.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The registry must be loaded before it is changed.
    fn loaded_or_unavailable(&self) -> Result<(), RegistryError> {
        self.loaded().map(drop).map_err(|reason| RegistryError::Unavailable(reason.into()))
    }

    /// Adds a tenant. Returns it and the plain keys it was given (a new one
    /// when the spec had none), which are shown this once.
    pub async fn create(&self, mut spec: TenantSpec) -> Result<(Arc<Tenant>, Vec<String>), RegistryError> {
        let _change = self.changes.lock().await;
        self.loaded_or_unavailable()?;
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
        let mut client = self.store().await.map_err(failed)?;
        let prepared = self.prepare(&client, spec.clone(), None).await.map_err(RegistryError::Invalid)?;
        let version = store::commit(&mut client, vec![Change::Create(spec)]).await.map_err(refused)?;
        let tenant = prepared.into_tenant(None);
        let published = tenant.clone();
        self.publish_committed(version, |next| next.replace(published, version)).await;
        Ok((tenant, plain))
    }

    /// Replaces a tenant's spec with `change(spec)`. Made on the spec as
    /// the database has it: when another host changed the tenant since this
    /// one read it, the change is made again on the newer spec.
    pub async fn update(
        &self,
        id: &str,
        change: impl Fn(&mut TenantSpec) -> Result<(), RegistryError>,
    ) -> Result<Arc<Tenant>, RegistryError> {
        let _change = self.changes.lock().await;
        self.loaded_or_unavailable()?;
        let mut client = self.store().await.map_err(failed)?;
        for _ in 0..STALE_RETRIES {
            let (old, was) = self.get_versioned(id)?;
            let mut spec = old.spec.clone();
            change(&mut spec)?;
            let spec = spec.normalize().map_err(RegistryError::Invalid)?;
            let prepared = self.prepare(&client, spec.clone(), Some(&old)).await.map_err(RegistryError::Invalid)?;
            let commit = store::commit(&mut client, vec![Change::Replace { spec, was }]).await;
            if let Some(version) = self.unless_stale(commit).await? {
                let tenant = prepared.into_tenant(Some(&old));
                let published = tenant.clone();
                self.publish_committed(version, |next| next.replace(published, version)).await;
                return Ok(tenant);
            }
        }
        Err(kept_changing(id))
    }

    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let _change = self.changes.lock().await;
        self.loaded_or_unavailable()?;
        let mut client = self.store().await.map_err(failed)?;
        for _ in 0..STALE_RETRIES {
            let (_, was) = self.get_versioned(id)?;
            let commit = store::commit(&mut client, vec![Change::Delete { id: id.to_owned(), was }]).await;
            if let Some(version) = self.unless_stale(commit).await? {
                self.publish_committed(version, |next| next.remove(id)).await;
                return Ok(());
            }
        }
        Err(kept_changing(id))
    }

    /// Validates `wasm` (it compiles, implements the contract, its tables
    /// migrate in the tenant's database), stores it in the service
    /// database, then switches the tenant to it on every host. Requests in
    /// flight finish on the old one.
    pub async fn swap_component(&self, id: &str, wasm: Vec<u8>) -> Result<Arc<Tenant>, RegistryError> {
        let _change = self.changes.lock().await;
        self.loaded_or_unavailable()?;
        let normalizer = self.load(id, wasm.clone()).await.map_err(RegistryError::Invalid)?;
        let mut client = self.store().await.map_err(failed)?;
        store::put_component(&client, &normalizer.digest, &wasm).await.map_err(failed)?;
        for _ in 0..STALE_RETRIES {
            let (old, was) = self.get_versioned(id)?;
            self.migrate(&old.destination, &old.schema, &normalizer, &old.spec.write_modes)
                .await
                .map_err(RegistryError::Invalid)?;
            let mut spec = old.spec.clone();
            spec.component = format!("sha256:{}", normalizer.digest);
            let commit = store::commit(&mut client, vec![Change::Replace { spec: spec.clone(), was }]).await;
            let Some(version) = self.unless_stale(commit).await? else { continue };
            // The same tenant object keeps serving; only its component changes.
            old.swap(normalizer.clone(), true);
            let tenant = Arc::new(Tenant::new(
                spec,
                old.schema.clone(),
                old.destination.clone(),
                old.limits.clone(),
                old.normalizer(),
                true,
                Some(&old),
            ));
            let published = tenant.clone();
            self.publish_committed(version, |next| next.replace(published, version)).await;
            return Ok(tenant);
        }
        Err(kept_changing(id))
    }

    /// The version a change committed as; none when the database refused
    /// it as stale (another host changed the tenant since this host read
    /// it), after reloading the registry, so the caller can make the change
    /// again on the newer tenant.
    async fn unless_stale(&self, commit: Result<i64, CommitError>) -> Result<Option<i64>, RegistryError> {
        match commit {
            Ok(version) => Ok(Some(version)),
            Err(CommitError::Refused(Refused::Stale)) => {
                self.sync_locked().await.map_err(failed)?;
                Ok(None)
            }
            Err(e) => Err(refused(e)),
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Tenant>, RegistryError> {
        self.snapshot.load().tenants.get(id).cloned().ok_or_else(|| RegistryError::NotFound(format!("no tenant {id}")))
    }

    fn get_versioned(&self, id: &str) -> Result<(Arc<Tenant>, i64), RegistryError> {
        let snapshot = self.snapshot.load();
        match (snapshot.tenants.get(id), snapshot.versions.get(id)) {
            (Some(tenant), Some(version)) => Ok((tenant.clone(), *version)),
            _ => Err(RegistryError::NotFound(format!("no tenant {id}"))),
        }
    }
}

/// A tenant ready to serve once its change is committed.
struct Prepared {
    spec: TenantSpec,
    schema: String,
    destination: Arc<Destination>,
    limits: Limits,
    normalizer: Arc<Normalizer>,
    migrated: bool,
}

impl Prepared {
    fn into_tenant(self, keep: Option<&Tenant>) -> Arc<Tenant> {
        Arc::new(Tenant::new(
            self.spec,
            self.schema,
            self.destination,
            self.limits,
            self.normalizer,
            self.migrated,
            keep,
        ))
    }
}

fn refused(e: CommitError) -> RegistryError {
    match e {
        CommitError::Refused(Refused::Conflict(m)) => RegistryError::Conflict(m),
        CommitError::Refused(Refused::NotFound(m)) => RegistryError::NotFound(m),
        CommitError::Refused(Refused::Invalid(m)) => RegistryError::Invalid(anyhow::anyhow!(m)),
        CommitError::Refused(Refused::Stale) => {
            RegistryError::Conflict("the tenant changed meanwhile; try again".into())
        }
        CommitError::Failed(e) => failed(e),
    }
}

/// A failure of the service database: unavailable when it cannot be
/// reached (the client may retry), else internal.
fn failed(e: anyhow::Error) -> RegistryError {
    if db::is_unreachable(&e) { RegistryError::Unavailable(format!("{e:#}")) } else { RegistryError::Internal(e) }
}

fn kept_changing(id: &str) -> RegistryError {
    RegistryError::Conflict(format!("tenant {id} kept changing under this change; try again"))
}

fn commit_error(e: CommitError) -> anyhow::Error {
    match e {
        CommitError::Failed(e) => e,
        CommitError::Refused(Refused::Conflict(m) | Refused::NotFound(m) | Refused::Invalid(m)) => anyhow::anyhow!(m),
        CommitError::Refused(Refused::Stale) => anyhow::anyhow!("the registry changed meanwhile"),
    }
}

impl Snapshot {
    /// Puts `tenant` in place of any tenant with its id.
    fn replace(&mut self, tenant: Arc<Tenant>, version: i64) {
        let id = tenant.spec.id.clone();
        self.remove(&id);
        if let Err(e) = self.insert(tenant, version) {
            // The database refused the same clash when the change was made.
            tracing::error!(tenant = %id, "{e}");
        }
    }

    fn insert(&mut self, tenant: Arc<Tenant>, version: i64) -> Result<(), String> {
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
        self.versions.insert(tenant.spec.id.clone(), version);
        self.tenants.insert(tenant.spec.id.clone(), tenant);
        Ok(())
    }

    fn remove(&mut self, id: &str) {
        self.tenants.remove(id);
        self.versions.remove(id);
        self.keys.retain(|_, owner| owner != id);
        self.query_tokens.retain(|_, owner| owner != id);
    }
}

#[derive(Debug)]
pub enum RegistryError {
    NotFound(String),
    Conflict(String),
    /// The service database cannot be reached (or has not been yet).
    Unavailable(String),
    /// The request or the component is not acceptable; the reason says why.
    Invalid(anyhow::Error),
    Internal(anyhow::Error),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::NotFound(m) | RegistryError::Conflict(m) | RegistryError::Unavailable(m) => f.write_str(m),
            RegistryError::Invalid(e) | RegistryError::Internal(e) => write!(f, "{e:#}"),
        }
    }
}
