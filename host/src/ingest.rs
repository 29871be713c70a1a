//! One ingest request, from component outcome to committed rows: the plans
//! are checked against the tables the component declared, written through
//! the tenant's batching writer, and tallied per event.

use crate::config::Limits;
use crate::db::CommitChecked;
use crate::db::writer::{CheckedPlan, Kept, Origin, WriteError, Writer};
use crate::runtime::{CallLimits, ComponentFailure, Normalizer, Runtime};
use crate::tenants::spec::TenantSpec;
use crate::write_modes::{SyncRun, WriteMode, delete_stale_sql};
use anyhow::Context;
use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use serde::Serialize;
use sluice_sdk::sql::Upsert;
use sluice_sdk::{Conflict, Outcome, Request, RequestError, Table, UpsertPlan};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A connection pool and its batching writer, shared by every tenant with
/// the same database and batch settings.
pub struct Destination {
    pub pool: Pool,
    pub writer: Writer,
}

/// A live tenant: its spec, its current component, where its rows go.
pub struct Tenant {
    pub spec: TenantSpec,
    /// `spec.settings` as the JSON text requests carry.
    pub settings: String,
    pub schema: String,
    pub destination: Arc<Destination>,
    pub limits: Limits,
    /// Swapped atomically; a request holds the one it started with.
    component: Arc<ArcSwap<Loaded>>,
    pub stats: Arc<TenantStats>,
    /// Component calls running at once for this tenant.
    calls: Arc<tokio::sync::Semaphore>,
    /// Consecutive component failures, and until when they bar new calls.
    penalty: Arc<Mutex<Penalty>>,
    /// Statements by component and plan shape, built once.
    upserts: Mutex<HashMap<UpsertKey, Arc<Upsert>>>,
    /// Tables made from a component's templates that exist in the
    /// database, by component digest and table name.
    instances: Mutex<HashMap<(String, String), Arc<Table>>>,
    /// Where refused rows are kept.
    origin: Arc<Origin>,
    /// Taken while creating an instance table, so concurrent first uses
    /// create it once.
    creating: tokio::sync::Mutex<()>,
    /// When the tenant was last found at its quota of tables made on first
    /// use, and why: for a while new tables are refused without asking the
    /// database (and taking the migration lock) again.
    tables_full: Mutex<Option<(Instant, String)>>,
}

/// How long a tenant found at its quota of tables is refused new ones
/// without counting again.
const TABLES_FULL_FOR: Duration = Duration::from_secs(5);

type UpsertKey = (String, String, Vec<String>, Conflict);

/// A component that fails call after call is given a rest: after
/// `PENALTY_AFTER` consecutive failures its tenant's requests are held back
/// for a cool-down that doubles with each further failure, so a broken or
/// hostile component cannot take the CPU other tenants need.
#[derive(Default)]
struct Penalty {
    failures: u32,
    until: Option<Instant>,
}

const PENALTY_AFTER: u32 = 3;
const PENALTY_FIRST: Duration = Duration::from_millis(100);
const PENALTY_MAX: Duration = Duration::from_secs(5);

impl Penalty {
    fn failed(&mut self) {
        self.failures += 1;
        if self.failures >= PENALTY_AFTER {
            let doublings = (self.failures - PENALTY_AFTER).min(16);
            let rest = (PENALTY_FIRST * 2u32.pow(doublings)).min(PENALTY_MAX);
            self.until = Some(Instant::now() + rest);
        }
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.until = None;
    }

    /// How long new calls must still wait.
    fn remaining(&self) -> Option<Duration> {
        self.until.and_then(|until| until.checked_duration_since(Instant::now()))
    }
}

/// A component as a tenant runs it.
pub struct Loaded {
    pub normalizer: Arc<Normalizer>,
    pub loaded_at: SystemTime,
    /// Its tables exist in the tenant's schema. False while the database
    /// was unreachable when the component was loaded; the first request
    /// after it comes back migrates.
    pub migrated: std::sync::atomic::AtomicBool,
}

impl Loaded {
    fn new(normalizer: Arc<Normalizer>, migrated: bool) -> Loaded {
        Loaded { normalizer, loaded_at: SystemTime::now(), migrated: migrated.into() }
    }
}

#[derive(Default)]
pub struct TenantStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub events_inserted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_rejected: AtomicU64,
    /// Events the database refused whose rows went to the dead-letter table.
    pub events_dead_lettered: AtomicU64,
    /// Request bytes being processed now.
    pub in_flight_bytes: AtomicUsize,
}

/// What the response says about a request's events.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Tally {
    /// Events in the request.
    pub events: u32,
    /// Events with at least one row newly written.
    pub inserted: u32,
    /// Events whose rows were all there already.
    pub duplicates: u32,
    /// Events refused, with why.
    pub rejected: Vec<Rejected>,
    /// Rows of earlier syncs deleted at the end of this one
    /// (`overwrite-delete-stale` tables, a request that ends a sync).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_stale: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Rejected {
    /// The event's position in the request, from 0.
    pub index: u32,
    pub reason: String,
}

#[derive(Debug)]
pub enum IngestError {
    Request(RequestError),
    Component(ComponentFailure),
    /// The tenant's component failed repeatedly; retry after this long.
    Resting(Duration),
    Write(WriteError),
}

impl Tenant {
    /// A tenant running `normalizer`. With `keep`, it takes over that
    /// tenant's component slot and counters (a changed spec is the same
    /// tenant to requests in flight and to its status).
    pub fn new(
        spec: TenantSpec,
        schema: String,
        destination: Arc<Destination>,
        limits: Limits,
        normalizer: Arc<Normalizer>,
        migrated: bool,
        keep: Option<&Tenant>,
    ) -> Tenant {
        let (component, stats, penalty) = match keep {
            Some(old) => {
                if !Arc::ptr_eq(&old.normalizer(), &normalizer) {
                    old.swap(normalizer, migrated);
                }
                (old.component.clone(), old.stats.clone(), old.penalty.clone())
            }
            None => {
                let loaded = Loaded::new(normalizer, migrated);
                (Arc::new(ArcSwap::from_pointee(loaded)), Arc::default(), Arc::default())
            }
        };
        let calls = match keep {
            Some(old) if old.limits.max_concurrent_calls == limits.max_concurrent_calls => old.calls.clone(),
            _ => Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_calls as usize)),
        };
        let settings = serde_json::Value::Object(spec.settings.clone()).to_string();
        let origin = Arc::new(Origin::new(&spec.id, &schema, limits.max_dead_letters));
        Tenant {
            origin,
            spec,
            settings,
            schema,
            destination,
            limits,
            component,
            stats,
            calls,
            penalty,
            upserts: Mutex::default(),
            instances: Mutex::default(),
            creating: tokio::sync::Mutex::default(),
            tables_full: Mutex::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn normalizer(&self) -> Arc<Normalizer> {
        self.component.load().normalizer.clone()
    }

    pub fn loaded(&self) -> Arc<Loaded> {
        self.component.load_full()
    }

    /// Switches to another component; requests in flight keep theirs. The
    /// new component starts with a clean record.
    pub fn swap(&self, normalizer: Arc<Normalizer>, migrated: bool) {
        self.component.store(Arc::new(Loaded::new(normalizer, migrated)));
        self.penalty.lock().unwrap().succeeded();
    }

    /// Runs the component on `request` within the tenant's share: at most
    /// `max_concurrent_calls` at once, none while it is resting.
    async fn normalize(
        &self,
        runtime: &Arc<Runtime>,
        normalizer: Arc<Normalizer>,
        request: Arc<Request>,
    ) -> Result<Outcome, IngestError> {
        let resting = self.penalty.lock().unwrap().remaining();
        if let Some(rest) = resting {
            // Hold the request for (part of) the rest: a client hammering a
            // broken component is slowed down instead of answered at once.
            tokio::time::sleep(rest.min(Duration::from_secs(1))).await;
            return Err(IngestError::Resting(rest));
        }
        let _call = self.calls.acquire().await.expect("the semaphore is never closed");
        let limits = CallLimits {
            deadline_ms: self.limits.component_deadline_ms,
            memory_bytes: self.limits.component_memory_bytes,
        };
        let result = runtime.handle(normalizer, request, limits).await;
        let mut penalty = self.penalty.lock().unwrap();
        match result {
            Ok(outcome) => {
                penalty.succeeded();
                outcome.map_err(IngestError::Request)
            }
            Err(failure @ ComponentFailure::Busy(_)) => Err(IngestError::Component(failure)),
            Err(failure) => {
                penalty.failed();
                Err(IngestError::Component(failure))
            }
        }
    }

    /// Normalizes and writes one request; answers after the rows commit.
    /// The request is shared so a caller can keep it (to spool it) without
    /// copying its body.
    pub async fn ingest(&self, runtime: &Arc<Runtime>, request: Arc<Request>) -> Result<Tally, IngestError> {
        // Writes stop retrying a little before the request times out, so it
        // can still be answered (or spooled) in time.
        let timeout = self.limits.request_timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout - (timeout / 5).min(2_000));
        let loaded = self.loaded();
        let normalizer = loaded.normalizer.clone();
        let write_modes = &self.spec.write_modes;
        let sync = match write_modes.is_empty() {
            true => None,
            false => Some(SyncRun::of(&request).map_err(|m| IngestError::Request(RequestError::Malformed(m)))?),
        };
        let outcome = self.normalize(runtime, normalizer.clone(), request).await?;
        if !loaded.migrated.load(Ordering::Acquire) {
            self.migrate_late(&loaded, deadline).await?;
        }
        let mut rejected: BTreeMap<u32, String> = BTreeMap::new();
        for rejection in outcome.rejections {
            if rejection.index < outcome.events {
                rejected.entry(rejection.index).or_insert(rejection.reason);
            }
        }
        for plan in &outcome.plans {
            if let Some(template) = &plan.template
                && let Err(reason) = self.create_instance(&normalizer, template, &plan.table).await?
            {
                for row in &plan.rows {
                    rejected.entry(row.event.min(outcome.events.saturating_sub(1))).or_insert_with(|| reason.clone());
                }
            }
        }
        let (plans, row_events): (Vec<CheckedPlan>, Vec<Vec<u32>>) =
            self.check(&normalizer, outcome.plans, outcome.events, sync.as_ref(), &mut rejected).into_iter().unzip();
        // A template's tables are labelled by the template: bounded by the component.
        let tables: Vec<String> =
            plans.iter().map(|p| p.plan.template.as_ref().unwrap_or(&p.plan.table).clone()).collect();
        let result = self.destination.writer.write(plans, deadline, &self.origin).await.map_err(IngestError::Write)?;
        let mut dead_lettered: BTreeMap<u32, bool> = BTreeMap::new();
        for (event, reason, kept) in result.refused {
            let kept = match kept {
                Kept::Yes => "; its rows are kept in sluice_dead_letters".to_owned(),
                Kept::Full => format!(
                    "; its rows were not kept: the tenant's dead letters are at their bound \
                     ([limits] max_dead_letters = {})",
                    self.limits.max_dead_letters
                ),
                Kept::Failed => String::new(),
            };
            if !rejected.contains_key(&event) {
                dead_lettered.insert(event, kept.starts_with("; its rows are kept"));
            }
            rejected.entry(event).or_insert_with(|| format!("the database refused it: {reason}{kept}"));
        }
        let events_kept = dead_lettered.values().filter(|k| **k).count() as u64;
        self.stats.events_dead_lettered.fetch_add(events_kept, Ordering::Relaxed);
        let written = result.written;
        self.count_rows(&tables, &row_events, &written, &rejected, &dead_lettered);

        // An event counts as inserted when any of its rows was written.
        let mut stored: BTreeMap<u32, bool> = BTreeMap::new();
        for (events, rows) in row_events.iter().zip(&written) {
            for (event, was_written) in events.iter().zip(rows) {
                if !rejected.contains_key(event) {
                    *stored.entry(*event).or_default() |= *was_written;
                }
            }
        }
        let deleted_stale = match &sync {
            Some(sync) if sync.last => Some(self.delete_stale(&normalizer, sync).await?),
            _ => None,
        };
        let tally = Tally {
            deleted_stale,
            events: outcome.events,
            inserted: stored.values().filter(|w| **w).count() as u32,
            duplicates: stored.values().filter(|w| !**w).count() as u32,
            rejected: rejected.into_iter().map(|(index, reason)| Rejected { index, reason }).collect(),
        };
        self.stats.events_inserted.fetch_add(tally.inserted as u64, Ordering::Relaxed);
        self.stats.events_duplicate.fetch_add(tally.duplicates as u64, Ordering::Relaxed);
        self.stats.events_rejected.fetch_add(tally.rejected.len() as u64, Ordering::Relaxed);
        Ok(tally)
    }

    /// Adds the written plans' rows to `sluice_rows_total`, by table. Rows
    /// of events rejected now were refused by the database.
    fn count_rows(
        &self,
        tables: &[String],
        row_events: &[Vec<u32>],
        written: &[Vec<bool>],
        rejected: &BTreeMap<u32, String>,
        dead_lettered: &BTreeMap<u32, bool>,
    ) {
        for ((table, events), rows) in tables.iter().zip(row_events).zip(written) {
            let (mut inserted, mut duplicate, mut dead) = (0, 0, 0);
            for (event, was_written) in events.iter().zip(rows) {
                match (rejected.contains_key(event), was_written) {
                    (true, _) => dead += u64::from(dead_lettered.get(event).copied().unwrap_or(false)),
                    (false, true) => inserted += 1,
                    (false, false) => duplicate += 1,
                }
            }
            crate::metrics::metrics().rows_written(self.id(), table, inserted, duplicate, dead);
        }
    }

    /// Checks each plan against the declared tables and each row against
    /// its columns. An event with any bad row is rejected whole: none of its
    /// rows are written. Returns the plans with each row's event.
    fn check(
        &self,
        normalizer: &Normalizer,
        plans: Vec<UpsertPlan>,
        events: u32,
        sync: Option<&SyncRun>,
        rejected: &mut BTreeMap<u32, String>,
    ) -> Vec<(CheckedPlan, Vec<u32>)> {
        let mut checked = Vec::with_capacity(plans.len());
        for mut plan in plans {
            let upsert = self.table(normalizer, &plan).and_then(|table| {
                if let Some(sync) = sync {
                    self.spec.write_modes.apply(&table, &mut plan, sync)?;
                }
                self.upsert(normalizer, &plan, table)
            });
            for row in &plan.rows {
                let problem = if row.event >= events {
                    Some(format!("the component tied a row to event {} of {events}", row.event))
                } else {
                    match &upsert {
                        Err(e) => Some(format!("the component's plan is invalid: {e}")),
                        Ok((_, table)) => table.check_row(&plan.columns, &row.values).err(),
                    }
                };
                if let Some(reason) = problem {
                    rejected.entry(row.event.min(events.saturating_sub(1))).or_insert(reason);
                }
            }
            if let Ok((upsert, _)) = upsert {
                checked.push((upsert, plan));
            }
        }
        checked
            .into_iter()
            .map(|(upsert, mut plan)| {
                plan.rows.retain(|row| !rejected.contains_key(&row.event));
                let events = plan.rows.iter().map(|r| r.event).collect();
                (CheckedPlan { upsert, plan }, events)
            })
            .filter(|(p, _)| !p.plan.rows.is_empty())
            .collect()
    }

    /// Creates the component's tables now that the database answers,
    /// trying until `deadline` while it still does not.
    async fn migrate_late(&self, loaded: &Loaded, deadline: tokio::time::Instant) -> Result<(), IngestError> {
        let _creating = self.creating.lock().await;
        while !loaded.migrated.load(Ordering::Acquire) {
            let attempt = async {
                let mut client = self.destination.pool.get().await.context("connect to the tenant's database")?;
                let tables = self.spec.write_modes.tables(&loaded.normalizer.tables);
                crate::db::migrate::migrate(&mut client, &self.schema, &tables).await
            };
            match attempt.await {
                Ok(()) => {
                    tracing::info!(tenant = %self.id(), "the database answers again: tables migrated");
                    loaded.migrated.store(true, Ordering::Release);
                }
                Err(e) if crate::db::is_unreachable(&e) => {
                    let wait = Duration::from_millis(250);
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(IngestError::Write(WriteError::Unavailable(format!("{e:#}"))));
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(IngestError::Write(WriteError::Unusable(format!("{e:#}")))),
            }
        }
        Ok(())
    }

    /// Makes sure the table `name` of the component's template `template`
    /// exists, creating it on first use. `Ok(Err(reason))` when the plan
    /// cannot have it (its rows are rejected); `Err` when the database
    /// cannot be reached.
    async fn create_instance(
        &self,
        normalizer: &Normalizer,
        template: &str,
        name: &str,
    ) -> Result<Result<(), String>, IngestError> {
        let key = (normalizer.digest.clone(), name.to_owned());
        if self.instances.lock().unwrap().contains_key(&key) {
            return Ok(Ok(()));
        }
        let table = match sluice_sdk::sql::template_instance(&normalizer.tables, template, name) {
            Ok(table) => self.spec.write_modes.shape(&table).unwrap_or(table),
            Err(reason) => return Ok(Err(reason)),
        };
        let _creating = self.creating.lock().await;
        if self.instances.lock().unwrap().contains_key(&key) {
            return Ok(Ok(()));
        }
        let full = self.tables_full.lock().unwrap().clone().filter(|(at, _)| at.elapsed() < TABLES_FULL_FOR);
        let mut client = self.destination.pool.get().await.map_err(|e| IngestError::Write(WriteError::from(e)))?;
        if let Some((_, reason)) = full {
            // A table that exists (made earlier, or by another host) is
            // migrated as always; only a new one is refused.
            let qualified = sluice_sdk::sql::qualified(&self.schema, name);
            let exists = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
                .await
                .map_err(|e| IngestError::Write(WriteError::from(e)))?
                .get::<_, bool>(0);
            if !exists {
                return Ok(Err(format!("table {name:?} was not created: {reason}")));
            }
        }
        let quota = crate::db::migrate::Quota { tenant: self.id(), max_tables: self.limits.max_tables };
        let created =
            crate::db::migrate::migrate_counted(&mut client, &self.schema, std::slice::from_ref(&table), Some(quota))
                .await;
        if let Err(e) = created {
            if let Some(reached) = e.downcast_ref::<crate::db::migrate::QuotaReached>() {
                *self.tables_full.lock().unwrap() = Some((Instant::now(), reached.to_string()));
                return Ok(Err(format!("table {name:?} was not created: {reached}")));
            }
            return match e.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) if sluice_postgres::classify(pg) == sluice_postgres::Kind::Connection => Err(
                    IngestError::Write(WriteError::from(e.downcast::<tokio_postgres::Error>().expect("checked above"))),
                ),
                _ => Ok(Err(format!("table {name:?} could not be created: {e:#}"))),
            };
        }
        self.instances.lock().unwrap().insert(key, Arc::new(table));
        Ok(Ok(()))
    }

    /// The table a plan writes, as this tenant stores it.
    fn table<'n>(&self, normalizer: &'n Normalizer, plan: &UpsertPlan) -> Result<TableRef<'n>, String> {
        let instance =
            |name: &str| self.instances.lock().unwrap().get(&(normalizer.digest.clone(), name.to_owned())).cloned();
        match &plan.template {
            None => {
                let declared = normalizer
                    .tables
                    .iter()
                    .find(|t| t.name == plan.table && !t.template)
                    .ok_or_else(|| format!("it writes table {:?}, which it does not declare", plan.table))?;
                // A declared table with sync columns is kept like an instance,
                // shaped once.
                if self.spec.write_modes.of(&plan.table) != Some(WriteMode::OverwriteDeleteStale) {
                    return Ok(TableRef::Declared(declared));
                }
                Ok(TableRef::Instance(instance(&plan.table).unwrap_or_else(|| {
                    let shaped = Arc::new(self.spec.write_modes.shape(declared).expect("its mode adds sync columns"));
                    let key = (normalizer.digest.clone(), plan.table.clone());
                    self.instances.lock().unwrap().entry(key).or_insert(shaped).clone()
                })))
            }
            Some(template) => instance(&plan.table)
                .map(TableRef::Instance)
                .ok_or_else(|| format!("table {:?} of template {template:?} does not exist", plan.table)),
        }
    }

    fn upsert<'n>(
        &self,
        normalizer: &Normalizer,
        plan: &UpsertPlan,
        table: TableRef<'n>,
    ) -> Result<(Arc<Upsert>, TableRef<'n>), String> {
        let key = (normalizer.digest.clone(), plan.table.clone(), plan.columns.clone(), plan.conflict.clone());
        let mut cache = self.upserts.lock().unwrap();
        if let Some(upsert) = cache.get(&key) {
            return Ok((upsert.clone(), table));
        }
        let upsert = Arc::new(Upsert::new(&self.schema, &table, &plan.columns, &plan.conflict)?);
        cache.insert(key, upsert.clone());
        Ok((upsert, table))
    }

    /// At the end of a sync, deletes the rows of its source that earlier
    /// syncs wrote, in every `overwrite-delete-stale` table that exists.
    async fn delete_stale(&self, normalizer: &Normalizer, sync: &SyncRun) -> Result<u64, IngestError> {
        let mut tables: Vec<String> = normalizer
            .tables
            .iter()
            .filter(|t| !t.template && self.spec.write_modes.of(&t.name) == Some(WriteMode::OverwriteDeleteStale))
            .map(|t| t.name.clone())
            .collect();
        let instances = self
            .instances
            .lock()
            .unwrap()
            .keys()
            .filter(|(d, _)| *d == normalizer.digest)
            .map(|(_, n)| n.clone())
            .collect::<Vec<_>>();
        tables.extend(
            instances.into_iter().filter(|n| self.spec.write_modes.of(n) == Some(WriteMode::OverwriteDeleteStale)),
        );
        tables.sort();
        tables.dedup();
        let unavailable = |e: tokio_postgres::Error| IngestError::Write(WriteError::from(e));
        let mut client = self.destination.pool.get().await.map_err(|e| IngestError::Write(WriteError::from(e)))?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let mut deleted = 0;
        for table in tables {
            let name = sluice_sdk::sql::qualified(&self.schema, &table);
            let exists: bool =
                tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await.map_err(unavailable)?.get(0);
            if exists {
                let sql = delete_stale_sql(&self.schema, &table);
                deleted += tx.execute(&sql, &[&sync.source, &Timestamp(sync.time)]).await.map_err(unavailable)?;
            }
        }
        tx.commit_checked().await.map_err(unavailable)?;
        Ok(deleted)
    }
}

/// A timestamptz parameter from µs since the Unix epoch.
#[derive(Debug)]
struct Timestamp(i64);

impl tokio_postgres::types::ToSql for Timestamp {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // PostgreSQL counts from 2000-01-01.
        postgres_protocol::types::timestamp_to_sql(self.0 - 946_684_800_000_000, out);
        Ok(tokio_postgres::types::IsNull::No)
    }

    tokio_postgres::types::accepts!(TIMESTAMPTZ);
    tokio_postgres::types::to_sql_checked!();
}

/// A table a plan writes: declared by the component, or made from one of
/// its templates.
enum TableRef<'n> {
    Declared(&'n Table),
    Instance(Arc<Table>),
}

impl std::ops::Deref for TableRef<'_> {
    type Target = Table;

    fn deref(&self) -> &Table {
        match self {
            TableRef::Declared(table) => table,
            TableRef::Instance(table) => table,
        }
    }
}
