//! Running normalizer components: one wasmtime `Engine` with a pooling
//! allocator, a pre-instantiated component per normalizer, and a fresh
//! instance per request under an epoch deadline and a memory cap.

use crate::config::Limits;
use crate::files::write_atomically;
use crate::hex::hex;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use sluice_sdk::{Outcome, Request, RequestError, Table, Transaction, UpsertPlan};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, ComponentExportIndex, Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Memory per instance slot kept mapped between instances.
const KEEP_RESIDENT: usize = 4 << 20;

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why a component call failed. The message names the component and the
/// limit, never request data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentFailure {
    /// It ran past its deadline.
    Deadline(String),
    /// It tried to grow its memory past the cap.
    Memory(String),
    /// It trapped (a panic, an invalid operation).
    Trap(String),
    /// No instance slot came free in time.
    Busy(String),
}

impl ComponentFailure {
    /// Its kind, as `sluice_component_failures_total` labels it.
    pub fn kind(&self) -> &'static str {
        match self {
            ComponentFailure::Deadline(_) => "deadline",
            ComponentFailure::Memory(_) => "memory",
            ComponentFailure::Trap(_) => "trap",
            ComponentFailure::Busy(_) => "busy",
        }
    }
}

impl std::fmt::Display for ComponentFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComponentFailure::Deadline(m)
            | ComponentFailure::Memory(m)
            | ComponentFailure::Trap(m)
            | ComponentFailure::Busy(m) => f.write_str(m),
        }
    }
}

/// The limits of one call.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub deadline_ms: u64,
    /// Capped by the pool's `limits.component_memory_bytes`.
    pub memory_bytes: usize,
}

/// Per-instance state: an empty WASI context (no files, sockets,
/// environment or arguments) and the memory limiter.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Refuses growth past `max` bytes and remembers that it did.
struct MemoryCap {
    max: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            wasmtime::bail!("memory limit reached");
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The wasmtime engine and everything shared by all components.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    cache_dir: PathBuf,
    limits: Limits,
    slots: Arc<Semaphore>,
}

/// One loaded normalizer component, ready to instantiate.
pub struct Normalizer {
    pub name: String,
    /// SHA-256 of the component's bytes.
    pub digest: String,
    pub tables: Vec<Table>,
    pre: InstancePre<State>,
    exports: Exports,
}

/// The contract's exports, looked up once per component.
#[derive(Clone, Copy)]
struct Exports {
    tables: ComponentExportIndex,
    handle: ComponentExportIndex,
}

type TablesFn = (Vec<Table>,);
type HandleTransactionResult = (Result<Vec<UpsertPlan>, String>,);

/// One loaded change-handler component (`sluice:ingest/change-handler`).
pub struct ChangeHandler {
    pub name: String,
    /// SHA-256 of the component's bytes.
    pub digest: String,
    pub tables: Vec<Table>,
    pre: InstancePre<State>,
    exports: HandlerExports,
}

#[derive(Clone, Copy)]
struct HandlerExports {
    tables: ComponentExportIndex,
    handle_transaction: ComponentExportIndex,
}
type HandleResult = (Result<Outcome, RequestError>,);

impl Runtime {
    pub fn new(limits: &Limits, cache_dir: &Path) -> Result<Arc<Runtime>> {
        let instances = limits.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .max_memory_size(limits.component_memory_bytes)
            // Reset only the pages an instance dirtied, with memset, and keep
            // them mapped: a fresh instance then neither page-faults nor
            // pays for madvise and its TLB shootdowns (Linux 6.7+; older
            // kernels fall back to madvise).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .decommit_batch_size(16);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow::Error::from(e).context("configure wasmtime"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::Error::from(e).context("link WASI"))?;

        // Epochs advance on one thread; it ends when the engine is dropped.
        let weak = engine.weak();
        std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;

        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache_dir: cache_dir.to_owned(),
            limits: limits.clone(),
            slots: Arc::new(Semaphore::new(instances as usize)),
        }))
    }

    /// Compiles (or loads from the cache) a component, links it, and finds
    /// the exports of `world` it must have: its digest, its instance-to-be
    /// and those exports.
    fn prepare<const N: usize>(
        &self,
        name: &str,
        wasm: &[u8],
        world: &str,
        exports: [&str; N],
    ) -> Result<(String, InstancePre<State>, [ComponentExportIndex; N])> {
        let digest = hex(&Sha256::digest(wasm));
        let component = self.compile_cached(&digest, wasm).with_context(|| format!("compile component {name}"))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("component {name} imports something Sluice does not provide: {e}"))?;
        let mut found = [None; N];
        for (slot, export) in found.iter_mut().zip(exports) {
            *slot = Some(component.get_export_index(None, export).ok_or_else(|| {
                anyhow::anyhow!(
                    "component {name} does not implement sluice:ingest/{world}: it has no `{export}` export"
                )
            })?);
        }
        Ok((digest, pre, found.map(|f| f.expect("every export was found"))))
    }

    /// Compiles (or loads from the cache) a component, checks it implements
    /// the normalizer world, and reads the tables it declares.
    pub fn load(&self, name: &str, wasm: &[u8]) -> Result<Arc<Normalizer>> {
        let (digest, pre, [tables, handle]) = self.prepare(name, wasm, "normalizer", ["tables", "handle"])?;
        let exports = Exports { tables, handle };
        let mut normalizer = Normalizer { name: name.to_owned(), digest, tables: Vec::new(), pre, exports };
        // Typing both exports here refuses a component of another contract
        // before it serves anything.
        let limits = self.default_limits();
        let tables = self
            .call(name, &normalizer.pre, limits, |instance, store| {
                instance.get_typed_func::<(&Request,), HandleResult>(&mut *store, exports.handle)?;
                let (tables,) =
                    instance.get_typed_func::<(), TablesFn>(&mut *store, exports.tables)?.call(&mut *store, ())?;
                Ok(tables)
            })
            .map_err(|e| anyhow::anyhow!("component {name} does not fit the contract: {e}"))?;
        for table in &tables {
            table.validate().map_err(|e| anyhow::anyhow!("component {name} declares a bad table: {e}"))?;
        }
        normalizer.tables = tables;
        Ok(Arc::new(normalizer))
    }

    fn compile_cached(&self, digest: &str, wasm: &[u8]) -> Result<Component> {
        let mut key = Sha256::new();
        key.update(digest.as_bytes());
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut HashWriter(&mut key));
        let path = self.cache_dir.join(format!("{}.cwasm", hex(&key.finalize())));
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash (it is in the name).
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "recompiling a cached component that did not load: {e:#}")
                }
            }
        }
        let started = Instant::now();
        let compiled = self.engine.precompile_component(wasm)?;
        tracing::info!(ms = started.elapsed().as_millis() as u64, "compiled component {digest:.12}");
        // SAFETY: these bytes were just produced by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled)? };
        if let Err(e) = write_atomically(&path, &compiled) {
            tracing::warn!(path = %path.display(), "could not cache a compiled component: {e:#}");
        }
        Ok(component)
    }

    /// Normalizes one request in a fresh instance, on a blocking thread,
    /// once an instance slot is free.
    pub async fn handle(
        self: &Arc<Self>,
        normalizer: Arc<Normalizer>,
        request: Arc<Request>,
        limits: CallLimits,
    ) -> Result<Result<Outcome, RequestError>, ComponentFailure> {
        let busy = || ComponentFailure::Busy(format!("no instance of component {} came free in time", normalizer.name));
        let wait = Duration::from_millis(self.limits.request_timeout_ms);
        let slot = match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => {
                crate::metrics::metrics().component_failed(&normalizer.name, "busy");
                return Err(busy());
            }
        };
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            runtime.handle_blocking(&normalizer, &request, limits)
        })
        .await
        .unwrap_or_else(|e| Err(ComponentFailure::Trap(format!("component call panicked in the host: {e}"))))
    }

    /// Normalizes one request in a fresh instance on this thread, without
    /// waiting for a slot (benchmarks, and `handle` once it has one).
    pub fn handle_blocking(
        &self,
        normalizer: &Normalizer,
        request: &Request,
        limits: CallLimits,
    ) -> Result<Result<Outcome, RequestError>, ComponentFailure> {
        let handle = normalizer.exports.handle;
        self.call(&normalizer.name, &normalizer.pre, limits, |instance, store| {
            let func = instance.get_typed_func::<(&Request,), HandleResult>(&mut *store, handle)?;
            Ok(func.call(&mut *store, (request,))?.0)
        })
    }

    /// Compiles (or loads from the cache) a component of the
    /// `change-handler` world and reads the tables it declares.
    pub fn load_change_handler(&self, name: &str, wasm: &[u8]) -> Result<Arc<ChangeHandler>> {
        let (digest, pre, [tables, handle_transaction]) =
            self.prepare(name, wasm, "change-handler", ["tables", "handle-transaction"])?;
        let exports = HandlerExports { tables, handle_transaction };
        let tables = self
            .call(name, &pre, self.default_limits(), |instance, store| {
                instance.get_typed_func::<(&Transaction,), HandleTransactionResult>(
                    &mut *store,
                    exports.handle_transaction,
                )?;
                let (tables,) =
                    instance.get_typed_func::<(), TablesFn>(&mut *store, exports.tables)?.call(&mut *store, ())?;
                Ok(tables)
            })
            .map_err(|e| anyhow::anyhow!("component {name} does not fit the change-handler contract: {e}"))?;
        for table in &tables {
            table.validate().map_err(|e| anyhow::anyhow!("component {name} declares a bad table: {e}"))?;
        }
        Ok(Arc::new(ChangeHandler { name: name.to_owned(), digest, tables, pre, exports }))
    }

    /// Hands one committed transaction (or part of one) to a fresh
    /// instance of `handler`, on a blocking thread, once an instance slot
    /// is free (it waits for one as long as it takes).
    pub async fn handle_transaction(
        self: &Arc<Self>,
        handler: Arc<ChangeHandler>,
        tx: Transaction,
        limits: CallLimits,
    ) -> Result<Result<Vec<UpsertPlan>, String>, ComponentFailure> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ComponentFailure::Busy(format!("no instance of component {} can be had", handler.name)))?;
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let func = handler.exports.handle_transaction;
            runtime.call(&handler.name, &handler.pre, limits, |instance, store| {
                let func = instance.get_typed_func::<(&Transaction,), HandleTransactionResult>(&mut *store, func)?;
                Ok(func.call(&mut *store, (&tx,))?.0)
            })
        })
        .await
        .unwrap_or_else(|e| Err(ComponentFailure::Trap(format!("component call panicked in the host: {e}"))))
    }

    /// The service-wide limits of one call.
    pub fn default_limits(&self) -> CallLimits {
        CallLimits { deadline_ms: self.limits.component_deadline_ms, memory_bytes: self.limits.component_memory_bytes }
    }

    /// Runs `f` in a fresh instance of the component `name`.
    fn call<R>(
        &self,
        name: &str,
        pre: &InstancePre<State>,
        limits: CallLimits,
        f: impl FnOnce(Instance, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, ComponentFailure> {
        let mut store = Store::new(
            &self.engine,
            State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                limiter: MemoryCap { max: limits.memory_bytes.min(self.limits.component_memory_bytes), hit: false },
            },
        );
        store.limiter(|state| &mut state.limiter);
        let ticks = limits.deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1) + 1;
        store.set_epoch_deadline(ticks);
        let metrics = crate::metrics::metrics();
        let started = Instant::now();
        let instance = pre.instantiate(&mut store);
        metrics.instantiated(name, started.elapsed());
        let result = instance.and_then(|instance| f(instance, &mut store));
        result.map_err(|error| {
            let failure = Self::failure(name, &store, limits, error);
            metrics.component_failed(name, failure.kind());
            failure
        })
    }

    /// What an error of a call means.
    fn failure(name: &str, store: &Store<State>, limits: CallLimits, error: wasmtime::Error) -> ComponentFailure {
        if store.data().limiter.hit {
            ComponentFailure::Memory(format!(
                "component {name} exceeded its memory limit of {} MiB",
                store.data().limiter.max >> 20
            ))
        } else if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            ComponentFailure::Deadline(format!("component {name} ran past its deadline of {} ms", limits.deadline_ms))
        } else {
            let trap = error.downcast_ref::<Trap>().map(|t| t.to_string()).unwrap_or_else(|| format!("{error:#}"));
            ComponentFailure::Trap(format!("component {name} failed: {trap}"))
        }
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::hash::Hasher for HashWriter<'_> {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
