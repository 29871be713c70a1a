//! One source's loop: ownership, publication and slot, streaming, and the
//! exactly-once apply of each committed transaction.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use deadpool_postgres::Pool;
use postgres_protocol::escape::escape_literal;
use sluice_replication::pgoutput::Message;
use sluice_replication::{Event, Lsn, ReplicationClient, ReplicationStream, StartOptions, TableName};
use sluice_sdk::sql::{Upsert, qualified};
use sluice_sdk::{Table, Transaction, UpsertPlan};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;

use super::changes::Keys;
use super::config::CdcConfig;
use super::spill::TxBuffer;
use crate::runtime::{CallLimits, ChangeHandler, Runtime};

/// The table of checkpoints, in the destination schema.
pub const CHECKPOINTS: &str = "sluice_cdc_checkpoints";

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a standby tries the lock.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What a source's runner is doing, for [`Stats::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Connecting, or waiting to reconnect after a failure.
    Starting = 0,
    /// Another host holds the slot's lock; this one waits to take over.
    Standby = 1,
    /// Holds the lock and streams the slot.
    Owner = 2,
    /// Asked to stop.
    Stopped = 3,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Standby => "standby",
            State::Owner => "owner",
            State::Stopped => "stopped",
        }
    }
}

/// Counters and gauges of one source: atomics, readable from outside
/// while the runner updates them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions applied (handler effects and checkpoint committed).
    pub transactions: AtomicU64,
    /// Changes in those transactions.
    pub changes: AtomicU64,
    /// Transactions sent again by the server at or below the checkpoint.
    pub skipped_transactions: AtomicU64,
    pub handler_errors: AtomicU64,
    /// Changes delivered without an element id.
    pub without_key: Arc<AtomicU64>,
    /// The bootstrap's progress (`bootstrapProvider = "postgres"`).
    pub bootstrap: super::bootstrap::Progress,
    /// A [`State`] as u8.
    state: AtomicU8,
    /// The last LSN confirmed to the source (the slot's `confirmed_flush_lsn` follows).
    pub confirmed_lsn: AtomicU64,
    /// The source's WAL end, as of its last message or keepalive.
    pub server_wal_end: AtomicU64,
    /// Commit time (µs since the Unix epoch) the lag in seconds counts
    /// from: the last applied transaction's, or the first pending one's
    /// after an idle spell. 0: caught up.
    behind_since: AtomicI64,
}

impl Stats {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Standby,
            2 => State::Owner,
            3 => State::Stopped,
            _ => State::Starting,
        }
    }

    fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// WAL the slot holds back: the source's WAL end minus the confirmed LSN.
    pub fn lag_bytes(&self) -> u64 {
        self.server_wal_end.load(Ordering::Relaxed).saturating_sub(self.confirmed_lsn.load(Ordering::Relaxed))
    }

    /// How far behind the source the applied changes are, in seconds: now
    /// minus the commit time of the last applied transaction while more
    /// is pending; 0 when caught up.
    pub fn lag_seconds(&self) -> f64 {
        match self.behind_since.load(Ordering::Relaxed) {
            0 => 0.0,
            since => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                (now.as_micros() as i64 - since).max(0) as f64 / 1e6
            }
        }
    }

    /// A transaction committed at `commit_time` (µs) arrived: the source
    /// is ahead. After an idle spell the lag counts from this commit.
    fn behind(&self, commit_time: i64) {
        let _ = self.behind_since.compare_exchange(0, commit_time.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A transaction committed at `commit_time` is applied.
    fn applied(&self, commit_time: i64) {
        if self.behind_since.load(Ordering::Relaxed) != 0 {
            self.behind_since.store(commit_time.max(1), Ordering::Relaxed);
        }
    }

    /// Records the stream's positions; `caught_up` when the server has
    /// nothing more to send and everything it sent is confirmed.
    fn positions(&self, stream: &ReplicationStream, wal_end: Lsn, caught_up: bool) {
        self.server_wal_end.fetch_max(wal_end.0.max(stream.server_wal_end().0), Ordering::Relaxed);
        self.confirmed_lsn.fetch_max(stream.confirmed_lsn().0, Ordering::Relaxed);
        if caught_up {
            self.behind_since.store(0, Ordering::Relaxed);
        }
    }
}

pub struct Runner {
    pub(super) config: CdcConfig,
    pub(super) name: String,
    runtime: Arc<Runtime>,
    handler: Arc<ChangeHandler>,
    pub(super) pool: Pool,
    pub(super) schema: String,
    spill_dir: PathBuf,
    limits: CallLimits,
    tables: HashMap<String, Table>,
    pub stats: Arc<Stats>,
}

/// A transaction being gathered.
struct Pending {
    xid: u32,
    changes: TxBuffer,
}

/// The transactions being received: the open one, and streamed ones
/// (PostgreSQL 14+ sends large transactions before they commit).
#[derive(Default)]
struct Gather {
    current: Option<Pending>,
    streamed: HashMap<u32, Pending>,
    stream_xid: Option<u32>,
}

/// A committed transaction, ready to apply.
struct Ready {
    changes: TxBuffer,
    commit: Commit,
}

/// A destination transaction takes in the source transactions already
/// received (a backlog) up to this many changes or this long, so that a
/// backlog is applied with one commit and checkpoint update per group
/// instead of per source transaction.
const GROUP_TIME: Duration = Duration::from_millis(100);

/// What the commit says of a transaction.
struct Commit {
    xid: u32,
    commit_lsn: Lsn,
    end_lsn: Lsn,
    commit_time: i64,
}

impl Runner {
    pub fn new(
        config: CdcConfig,
        runtime: Arc<Runtime>,
        handler: Arc<ChangeHandler>,
        pool: Pool,
        schema: String,
        spill_dir: PathBuf,
    ) -> Runner {
        let mut limits = runtime.default_limits();
        if let Some(ms) = config.deadline_ms {
            limits.deadline_ms = ms;
        }
        let tables = handler.tables.iter().map(|t| (t.name.clone(), t.clone())).collect();
        Runner {
            name: config.name().to_owned(),
            config,
            runtime,
            handler,
            pool,
            schema,
            spill_dir,
            limits,
            tables,
            stats: Default::default(),
        }
    }

    /// Streams until `stop` turns true, reconnecting with backoff.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let _ = std::fs::remove_dir_all(&self.spill_dir);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            self.stats.set_state(State::Starting);
            match self.run_once(&mut stop).await {
                Ok(()) => {
                    self.stats.set_state(State::Stopped);
                    tracing::info!(source = %self.name, "change stream stopped");
                    return;
                }
                Err(e) => {
                    tracing::warn!(source = %self.name, "change stream failed, reconnecting in {backoff:?}: {e:#}")
                }
            }
            if started.elapsed() > MAX_BACKOFF * 2 {
                backoff = FIRST_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut stop) => {
                    self.stats.set_state(State::Stopped);
                    return;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life. `Ok` only when asked to stop.
    async fn run_once(&self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        let source = &self.config.source;
        let mut checkpoint = self.prepare_destination().await.context("prepare the destination")?;

        // Ownership: one host streams the slot at a time.
        let mut pg = tokio_postgres::Config::new();
        pg.host(&source.host).port(source.port).user(&source.user).dbname(&source.database);
        pg.application_name("sluice-cdc-lock").connect_timeout(Duration::from_secs(source.connect_timeout_secs));
        if let Some(password) = &source.password {
            pg.password(password);
        }
        let (lock, mut lock_connection) =
            crate::db::tls::connect_spawned(pg, &source.tls()).await.context("connect to the source")?;
        let lock_key = format!("sluice:cdc:{}", source.slot_name);
        let mut said_standby = false;
        loop {
            let row = lock.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&lock_key]).await?;
            if row.get::<_, bool>(0) {
                break;
            }
            if !said_standby {
                self.stats.set_state(State::Standby);
                tracing::info!(source = %self.name, slot = %source.slot_name, "standby: another host streams this slot");
                said_standby = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_POLL) => {}
                _ = stopped(stop) => return Ok(()),
            }
        }
        self.stats.set_state(State::Owner);
        tracing::info!(source = %self.name, slot = %source.slot_name, %checkpoint, "owns the slot");

        let mut client = ReplicationClient::connect(source).await?;
        if client.ensure_publication(&source.publication_name, &source.tables).await? {
            tracing::info!(source = %self.name, publication = %source.publication_name, "created the publication");
        }
        // Keys first: once a slot is made, its snapshot lives only while
        // the replication connection stays idle.
        let mut keys =
            Keys::new(self.configured_keys(), self.primary_keys(&mut client).await?, self.stats.without_key.clone());
        self.prepare_slot(&mut client, &mut keys, &mut checkpoint, false).await?;
        let mut options = StartOptions::new(&source.slot_name, &source.publication_name);
        options.messages = false;
        let mut stream = client.start_replication(options).await?;

        let mut gather = Gather::default();
        // The last idle position sent to the server.
        let mut reported = Lsn::INVALID;
        loop {
            let event = tokio::select! {
                event = stream.recv() => event?,
                ended = &mut lock_connection => {
                    bail!("the connection holding the slot's lock ended: {ended:?}");
                }
                _ = stopped(stop) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), stream.stop()).await;
                    return Ok(());
                }
            };
            let Some(event) = event else { bail!("the server ended the replication stream") };
            let (message, send_time) = match event {
                Event::Keepalive { wal_end, reply_requested, .. } => {
                    // Everything sent is confirmed: caught up.
                    let caught_up = stream.confirmed_lsn() >= wal_end;
                    self.stats.positions(&stream, wal_end, caught_up);
                    // An idle slot's new position goes out now rather than at the
                    // next status interval, so the server can recycle the WAL
                    // behind it. (The server pings once per idle spell.)
                    if caught_up && !reply_requested && wal_end > reported {
                        stream.send_status_now().await?;
                        reported = wal_end;
                    }
                    continue;
                }
                Event::Data { message, wal_end, send_time, .. } => {
                    self.stats.positions(&stream, wal_end, false);
                    (message, send_time)
                }
            };
            let Some(ready) = self.gather(&mut gather, &mut keys, message, send_time)? else { continue };
            self.apply(&mut stream, &mut gather, &mut keys, ready, &mut checkpoint).await?;
        }
    }

    /// Takes one message into the transactions being received; returns a
    /// transaction once it is committed.
    fn gather(&self, gather: &mut Gather, keys: &mut Keys, message: Message, send_time: i64) -> Result<Option<Ready>> {
        let Gather { current, streamed, stream_xid } = gather;
        match message {
            Message::Begin(begin) => {
                self.stats.behind(begin.commit_time);
                *current = Some(Pending {
                    xid: begin.xid,
                    changes: TxBuffer::new(self.config.memory_changes, &self.spill_dir),
                });
            }
            Message::Commit(commit) => {
                let pending = current.take().ok_or_else(|| anyhow!("a commit without a begin"))?;
                let commit = Commit {
                    xid: pending.xid,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time: commit.commit_time,
                };
                return Ok(Some(Ready { changes: pending.changes, commit }));
            }
            Message::StreamStart { xid, .. } => {
                // The commit time comes only with the stream's commit.
                self.stats.behind(send_time);
                *stream_xid = Some(xid);
                streamed.entry(xid).or_insert_with(|| Pending {
                    xid,
                    changes: TxBuffer::new(self.config.memory_changes, &self.spill_dir),
                });
            }
            Message::StreamStop => *stream_xid = None,
            Message::StreamCommit(commit) => {
                let pending = streamed
                    .remove(&commit.xid)
                    .ok_or_else(|| anyhow!("a stream commit for an unknown transaction"))?;
                let commit = Commit {
                    xid: commit.xid,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time: commit.commit_time,
                };
                return Ok(Some(Ready { changes: pending.changes, commit }));
            }
            Message::StreamAbort(abort) => {
                if abort.xid == abort.subxid {
                    streamed.remove(&abort.xid);
                } else if let Some(pending) = streamed.get_mut(&abort.xid) {
                    pending.changes.abort_subtransaction(abort.subxid);
                }
            }
            Message::Insert(m) => self.push(current, streamed, *stream_xid, m.xid, keys.insert(&m))?,
            Message::Update(m) => self.push(current, streamed, *stream_xid, m.xid, keys.update(&m))?,
            Message::Delete(m) => self.push(current, streamed, *stream_xid, m.xid, keys.delete(&m))?,
            Message::Truncate(m) => {
                for change in keys.truncate(&m) {
                    self.push(current, streamed, *stream_xid, m.xid, change)?;
                }
            }
            Message::Origin(_) | Message::Relation { .. } | Message::Type(_) | Message::Message(_) => {}
        }
        Ok(None)
    }

    /// Adds a change to the open transaction (plain or streamed).
    fn push(
        &self,
        current: &mut Option<Pending>,
        streamed: &mut HashMap<u32, Pending>,
        stream_xid: Option<u32>,
        subxid: Option<u32>,
        change: sluice_sdk::RowChange,
    ) -> Result<()> {
        let (pending, sub) = match (stream_xid, subxid) {
            (Some(top), Some(sub)) => (streamed.get_mut(&top), sub),
            _ => {
                let pending = current.as_mut();
                let xid = pending.as_ref().map_or(0, |p| p.xid);
                (pending, xid)
            }
        };
        let pending = pending.ok_or_else(|| anyhow!("a change outside a transaction"))?;
        pending.changes.push(sub, change).context("spill a large transaction to disk")?;
        Ok(())
    }

    /// Hands a committed transaction to the component, writes its plans and
    /// the checkpoint in one destination transaction, then confirms it.
    /// Transactions already received behind it (a backlog) join that
    /// destination transaction, up to `batch_changes` changes or
    /// [`GROUP_TIME`]: their effects and the checkpoint of the last one
    /// commit together, so exactly-once holds for the group.
    async fn apply(
        &self,
        stream: &mut ReplicationStream,
        gather: &mut Gather,
        keys: &mut Keys,
        ready: Ready,
        checkpoint: &mut Lsn,
    ) -> Result<()> {
        let end = ready.commit.end_lsn;
        if end <= *checkpoint || ready.changes.len() == 0 {
            // Applied before (a restart re-sent it), or nothing to apply.
            if end <= *checkpoint {
                self.stats.skipped_transactions.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(source = %self.name, lsn = %end, "skipping a transaction at or below the checkpoint");
            }
            stream.confirm(end);
            return Ok(());
        }
        let mut client = self.pool.get().await.context("connect to the destination")?;
        let tx = client.transaction().await?;
        // The checkpoint row, locked: if another host applied these
        // transactions meanwhile, they are not applied twice.
        let stored: String = tx
            .query_one(
                &format!("SELECT lsn::text FROM {} WHERE source = $1 FOR UPDATE", qualified(&self.schema, CHECKPOINTS)),
                &[&self.name],
            )
            .await?
            .get(0);
        let stored = Lsn::from_str(&stored).map_err(|e| anyhow!("{e}"))?;
        *checkpoint = (*checkpoint).max(stored);
        let started = tokio::time::Instant::now();
        let (mut last, mut transactions, mut changes) = (ready.commit.end_lsn, 0u64, 0u64);
        let mut next = Some(ready);
        loop {
            if let Some(Ready { changes: buffer, commit }) = next.take() {
                let total = buffer.len();
                if commit.end_lsn <= *checkpoint {
                    self.stats.skipped_transactions.fetch_add(1, Ordering::Relaxed);
                } else if total > 0 {
                    self.apply_parts(&tx, stream, buffer, &commit).await?;
                    transactions += 1;
                    changes += total;
                    self.stats.applied(commit.commit_time);
                }
                last = last.max(commit.end_lsn);
            }
            if changes >= self.config.batch_changes as u64 || started.elapsed() >= GROUP_TIME {
                break;
            }
            // Only what is already at hand: waiting would add latency.
            let event = tokio::select! {
                biased;
                event = stream.recv() => event?,
                _ = std::future::ready(()) => break,
            };
            match event {
                None => bail!("the server ended the replication stream"),
                Some(Event::Keepalive { wal_end, .. }) => {
                    // The server has sent everything it has.
                    self.stats.positions(stream, wal_end, false);
                    break;
                }
                Some(Event::Data { message, wal_end, send_time, .. }) => {
                    self.stats.positions(stream, wal_end, false);
                    next = self.gather(gather, keys, message, send_time)?;
                }
            }
        }
        if transactions == 0 {
            tx.rollback().await?;
        } else {
            tx.execute(
                &format!(
                    "UPDATE {} SET lsn = $2::text::pg_lsn, updated_at = now() WHERE source = $1",
                    qualified(&self.schema, CHECKPOINTS)
                ),
                &[&self.name, &last.to_string()],
            )
            .await?;
            tx.commit().await?;
        }
        stream.confirm(last);
        *checkpoint = (*checkpoint).max(last);
        self.stats.transactions.fetch_add(transactions, Ordering::Relaxed);
        self.stats.changes.fetch_add(changes, Ordering::Relaxed);
        self.stats.positions(stream, last, false);
        tracing::debug!(source = %self.name, lsn = %last, transactions, changes, "applied transactions");
        Ok(())
    }

    /// Hands one committed transaction to the component, part by part,
    /// writing each part's plans in `tx`.
    async fn apply_parts(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        stream: &mut ReplicationStream,
        changes: TxBuffer,
        commit: &Commit,
    ) -> Result<()> {
        let total = changes.len();
        let mut reader = changes.into_reader().context("read a spilled transaction")?;
        let mut first: u64 = 0;
        loop {
            let part = reader.next_part(self.config.batch_changes).context("read a spilled transaction")?;
            let count = part.len() as u64;
            let last = first + count >= total;
            let part = Transaction {
                source: self.name.clone(),
                xid: commit.xid,
                commit_lsn: commit.commit_lsn.0,
                end_lsn: commit.end_lsn.0,
                commit_time: commit.commit_time,
                first_change: u32::try_from(first).map_err(|_| anyhow!("a transaction of more than 2^32 changes"))?,
                last,
                changes: part,
            };
            self.handle_part(tx, part).await?;
            // A long transaction must not leave the source without news.
            stream.send_status_if_due().await?;
            first += count;
            if last || count == 0 {
                return Ok(());
            }
        }
    }

    /// Hands one part of a transaction (or of the bootstrap, xid 0) to a
    /// fresh instance of the component and writes its plans in `tx`.
    pub(super) async fn handle_part(&self, tx: &deadpool_postgres::Transaction<'_>, part: Transaction) -> Result<()> {
        let what = if part.xid == 0 {
            "the bootstrap".to_owned()
        } else {
            format!("the transaction committed at {}", Lsn(part.commit_lsn))
        };
        let plans = match self.runtime.handle_transaction(self.handler.clone(), part, self.limits).await {
            Ok(Ok(plans)) => plans,
            Ok(Err(refused)) => {
                self.stats.handler_errors.fetch_add(1, Ordering::Relaxed);
                bail!("the handler refused {what}: {refused}");
            }
            Err(failure) => {
                self.stats.handler_errors.fetch_add(1, Ordering::Relaxed);
                bail!("the handler failed on {what}: {failure}");
            }
        };
        self.write_plans(tx, &plans).await
    }

    /// Writes plans inside the open transaction: one set-based statement
    /// each (an upsert, an accumulation, or emptying a table).
    async fn write_plans(&self, tx: &deadpool_postgres::Transaction<'_>, plans: &[UpsertPlan]) -> Result<()> {
        for plan in plans {
            if plan.columns.is_empty() || super::plans::accumulates(plan) {
                let table = self.tables.get(&plan.table).filter(|t| !t.template).ok_or_else(|| {
                    anyhow!("the handler plans rows for table {:?}, which it does not declare", plan.table)
                })?;
                super::plans::write(tx, &self.schema, table, plan).await?;
                continue;
            }
            if plan.rows.is_empty() {
                continue;
            }
            if plan.template.is_some() {
                bail!(
                    "the handler's plan for {:?} names a template: change handlers cannot use templates yet",
                    plan.table
                );
            }
            let table = self.tables.get(&plan.table).filter(|t| !t.template).ok_or_else(|| {
                anyhow!("the handler plans rows for table {:?}, which it does not declare", plan.table)
            })?;
            let upsert = Upsert::new(&self.schema, table, &plan.columns, &plan.conflict).map_err(|e| anyhow!(e))?;
            let types: Vec<sluice_sdk::ColumnType> = plan
                .columns
                .iter()
                .map(|name| table.column(name).map(|c| c.data_type))
                .collect::<Option<_>>()
                .ok_or_else(|| anyhow!("a plan for table {:?} names a column it does not have", plan.table))?;
            let columns = super::plans::column_arrays(plan, &types)?;
            let statement = tx.prepare_cached(&upsert.sql).await?;
            let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            tx.query(&statement, &params).await.with_context(|| format!("write to table {:?}", plan.table))?;
        }
        Ok(())
    }

    /// Creates the handler's tables and the checkpoint table; returns the checkpoint.
    pub(super) async fn prepare_destination(&self) -> Result<Lsn> {
        let mut client = self.pool.get().await?;
        crate::db::migrate::migrate(&mut client, &self.schema, &self.handler.tables).await?;
        super::bootstrap::create_table(&client, &self.schema).await?;
        let table = qualified(&self.schema, CHECKPOINTS);
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (source text PRIMARY KEY, lsn pg_lsn NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
        client
            .execute(
                &format!("INSERT INTO {table} (source, lsn) VALUES ($1, '0/0') ON CONFLICT DO NOTHING"),
                &[&self.name],
            )
            .await?;
        let lsn: String =
            client.query_one(&format!("SELECT lsn::text FROM {table} WHERE source = $1"), &[&self.name]).await?.get(0);
        Lsn::from_str(&lsn).map_err(|e| anyhow!("{e}"))
    }

    pub(super) fn configured_keys(&self) -> HashMap<(String, String), Vec<String>> {
        self.config
            .table_keys
            .iter()
            .filter_map(|k| TableName::parse(&k.table).ok().map(|t| ((t.schema, t.name), k.key_columns.clone())))
            .collect()
    }

    /// The primary keys of the publication's tables.
    pub(super) async fn primary_keys(
        &self,
        client: &mut ReplicationClient,
    ) -> Result<HashMap<(String, String), Vec<String>>> {
        let sql = format!(
            "SELECT p.schemaname, p.tablename, a.attname \
             FROM pg_catalog.pg_publication_tables p \
             JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
             JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
             WHERE p.pubname = {} \
             ORDER BY 1, 2, array_position(i.indkey::int2[], a.attnum)",
            escape_literal(&self.config.source.publication_name)
        );
        let mut keys: HashMap<(String, String), Vec<String>> = HashMap::new();
        for row in client.simple_query(&sql).await? {
            let (Some(schema), Some(table), Some(column)) = (row.get(0), row.get(1), row.get(2)) else { continue };
            keys.entry((schema.to_owned(), table.to_owned())).or_default().push(column.to_owned());
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_micros() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
    }

    #[test]
    fn lag_counts_from_the_first_pending_commit_then_the_last_applied_one() {
        let stats = Stats::default();
        assert_eq!(stats.lag_seconds(), 0.0);
        assert_eq!(stats.state(), State::Starting);
        // After an idle spell, a transaction committed 5 s ago arrives.
        stats.behind(now_micros() - 5_000_000);
        // A later one does not reset where the lag counts from.
        stats.behind(now_micros() - 1_000_000);
        assert!((4.9..6.0).contains(&stats.lag_seconds()), "{}", stats.lag_seconds());
        // The first is applied: the lag is now from its commit, the second pending.
        stats.applied(now_micros() - 2_000_000);
        assert!((1.9..3.0).contains(&stats.lag_seconds()), "{}", stats.lag_seconds());
        // Caught up.
        stats.behind_since.store(0, Ordering::Relaxed);
        stats.applied(now_micros() - 2_000_000);
        assert_eq!(stats.lag_seconds(), 0.0, "applying while caught up is no lag");
        stats.server_wal_end.store(1000, Ordering::Relaxed);
        stats.confirmed_lsn.store(400, Ordering::Relaxed);
        assert_eq!(stats.lag_bytes(), 600);
        stats.set_state(State::Standby);
        assert_eq!(stats.state().as_str(), "standby");
    }
}
