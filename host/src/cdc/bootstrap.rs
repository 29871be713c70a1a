//! Bootstrap (`bootstrapProvider = "postgres"`): the rows a source's tables
//! held when the slot was made, read from the slot's exported snapshot and
//! handed to the component as inserts before the stream starts.
//!
//! The slot is created with `EXPORT_SNAPSHOT`; while its replication
//! connection stays idle, a plain connection imports the snapshot in a
//! `REPEATABLE READ` transaction and reads every published table with a
//! cursor, `batch_changes` rows at a time, as text with the walsender's
//! session settings, so values, keys and element ids come out exactly as
//! for streamed changes. Changes committed after the slot's consistent
//! point are not in the snapshot and are streamed: no gap, no overlap.
//!
//! The whole bootstrap is one destination transaction: every part's plans,
//! the checkpoint set to the consistent point, and a row in
//! `sluice_cdc_bootstraps`. A crash before its commit leaves nothing, and as
//! the snapshot dies with the replication connection, the next start drops
//! the slot, makes it again and redoes the bootstrap from a new snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use postgres_protocol::escape::escape_literal;
use sluice_replication::pgoutput::{self as pg, Column, Relation, ReplicaIdentity, Tuple};
use sluice_replication::{EnsuredSlot, Lsn, ReplicationClient, ReplicationConfig};
use sluice_sdk::Transaction;
use sluice_sdk::sql::{qualified, quote_ident};
use tokio_postgres::SimpleQueryMessage;

use super::bootstraps::{BOOTSTRAPS, Completed, completed};
use super::changes::Keys;
use super::runner::{CHECKPOINTS, Runner};
use crate::db::CommitChecked;

/// The settings the walsender prints values with (see
/// `sluice_replication::client`): the snapshot's text must match the stream's.
const SESSION_SETTINGS: &str = "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO'; SET TimeZone = 'UTC'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// How often a running bootstrap logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A plain (non-replication) connection's settings for the source.
pub fn source_pg_config(source: &ReplicationConfig, application: &str) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&source.host).port(source.port).user(&source.user).dbname(&source.database);
    pg.application_name(application).connect_timeout(Duration::from_secs(source.connect_timeout_secs));
    if let Some(password) = &source.password {
        pg.password(password);
    }
    pg
}

/// A published table as of the snapshot.
struct SnapshotTable {
    relation: Arc<Relation>,
    partitioned: bool,
}

/// What [`Runner::bootstrap_now`] did.
pub enum Outcome {
    /// Bootstrapped from a new slot's snapshot.
    Done(Completed),
    /// The slot's bootstrap had completed already (and no redo was asked for).
    AlreadyDone(Completed),
}

impl Runner {
    /// Runs the bootstrap now, outside the service (`sluice cdc bootstrap`):
    /// when the slot has none completed, or always with `redo`. Refused
    /// while another host owns the source.
    pub async fn bootstrap_now(&self, redo: bool) -> Result<Outcome> {
        if !self.config.bootstraps() {
            bail!("source {:?} has no bootstrap: set bootstrapProvider = \"postgres\"", self.name);
        }
        let source = &self.config.source;
        let mut checkpoint = self.prepare_destination().await.context("prepare the destination")?;
        let (lock, connection) =
            crate::db::tls::connect_spawned(source_pg_config(source, "sluice-cdc-lock"), &source.tls())
                .await
                .context("connect to the source")?;
        let _connection = AbortOnDrop(connection);
        let locked: bool = lock
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&format!("sluice:cdc:{}", source.slot_name)],
            )
            .await?
            .get(0);
        if !locked {
            bail!(
                "another host streams source {:?} now (it holds the lock of slot {:?}): stop it, then bootstrap",
                self.name,
                source.slot_name
            );
        }
        let mut client = ReplicationClient::connect(source).await?;
        client.ensure_publication(&source.publication_name, &source.tables).await?;
        let destination = self.pool.get().await.context("connect to the destination")?;
        let done = completed(&destination, &self.schema, &self.name).await?;
        drop(destination);
        if !redo
            && let Some(done) = done.filter(|d| d.slot == source.slot_name)
            && client.replication_slot(&source.slot_name).await?.is_some()
        {
            return Ok(Outcome::AlreadyDone(done));
        }
        let mut keys =
            Keys::new(self.configured_keys(), self.primary_keys(&mut client).await?, self.stats.without_key.clone());
        self.prepare_slot(&mut client, &mut keys, &mut checkpoint, redo).await?;
        let _ = client.close().await;
        let destination = self.pool.get().await.context("connect to the destination")?;
        let done = completed(&destination, &self.schema, &self.name)
            .await?
            .ok_or_else(|| anyhow!("the bootstrap of source {:?} left no record", self.name))?;
        Ok(Outcome::Done(done))
    }

    /// Ensures the slot. With `bootstrapProvider = "postgres"`, a new slot's
    /// snapshot is read first; an existing slot whose bootstrap never
    /// completed (or all of them, with `redo`) is dropped and made again,
    /// as its snapshot is gone. Returns whether a bootstrap ran.
    pub(super) async fn prepare_slot(
        &self,
        client: &mut ReplicationClient,
        keys: &mut Keys,
        checkpoint: &mut Lsn,
        redo: bool,
    ) -> Result<bool> {
        let slot_name = &self.config.source.slot_name;
        let bootstraps = self.config.bootstraps();
        if bootstraps {
            let destination = self.pool.get().await.context("connect to the destination")?;
            let done = completed(&destination, &self.schema, &self.name).await?;
            let done_here = done.is_some_and(|d| d.slot == *slot_name) && !redo;
            if !done_here && let Some(slot) = client.replication_slot(slot_name).await? {
                tracing::info!(
                    source = %self.name,
                    slot = %slot_name,
                    active = slot.active,
                    "dropping the replication slot to bootstrap again: {}",
                    if redo { "asked to redo the bootstrap" } else { "its bootstrap never completed, and its snapshot is gone" }
                );
                client.drop_replication_slot(slot_name, true).await?;
            }
        } else if redo {
            bail!("source {:?} has no bootstrap: set bootstrapProvider = \"postgres\"", self.name);
        }
        match client.ensure_slot(slot_name).await? {
            EnsuredSlot::Created(slot) if bootstraps => {
                let snapshot = slot
                    .snapshot_name
                    .clone()
                    .ok_or_else(|| anyhow!("the server exported no snapshot with the new slot {slot_name:?}"))?;
                tracing::info!(
                    source = %self.name,
                    slot = %slot.slot_name,
                    consistent_point = %slot.consistent_point,
                    "created the replication slot: bootstrapping from its snapshot"
                );
                // The replication connection stays idle until the read is
                // done: the next command on it would end the snapshot.
                self.bootstrap(&snapshot, slot.consistent_point, keys).await?;
                *checkpoint = slot.consistent_point;
                return Ok(true);
            }
            EnsuredSlot::Created(slot) => tracing::info!(
                source = %self.name,
                slot = %slot.slot_name,
                consistent_point = %slot.consistent_point,
                "created the replication slot: changes from here on are streamed (no bootstrap of existing rows)"
            ),
            EnsuredSlot::Existing(slot) => tracing::info!(
                source = %self.name,
                slot = %slot.slot_name,
                confirmed = ?slot.confirmed_flush_lsn.map(|l| l.to_string()),
                "reusing the replication slot"
            ),
        }
        Ok(false)
    }

    /// Reads every published table from `snapshot` and hands the rows to
    /// the component as the inserts of one transaction (xid 0, commit and
    /// end LSN the consistent point), committed with the checkpoint.
    async fn bootstrap(&self, snapshot: &str, consistent_point: Lsn, keys: &mut Keys) -> Result<()> {
        let progress = &self.stats.bootstrap;
        let started = Instant::now();
        let (source, connection) = crate::db::tls::connect_spawned(
            source_pg_config(&self.config.source, "sluice-cdc-bootstrap"),
            &self.config.source.tls(),
        )
        .await
        .context("connect to the source to bootstrap")?;
        let _connection = AbortOnDrop(connection);
        source.batch_execute(SESSION_SETTINGS).await?;
        source
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                escape_literal(snapshot)
            ))
            .await
            .context("import the slot's snapshot")?;
        let tables = self.snapshot_tables(&source).await?;
        let commit_time: i64 =
            source.query_one("SELECT (extract(epoch FROM now()) * 1000000)::int8", &[]).await?.get(0);
        let estimate: i64 = source
            .query_one(
                "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::int8 FROM pg_catalog.pg_class c \
                 WHERE c.oid = ANY($1::oid[])",
                &[&tables.iter().map(|t| t.relation.id).collect::<Vec<u32>>()],
            )
            .await?
            .get(0);
        progress.tables_total.store(tables.len() as u64, Ordering::Relaxed);
        progress.tables_done.store(0, Ordering::Relaxed);
        progress.rows_done.store(0, Ordering::Relaxed);
        progress.rows_estimate.store(estimate.max(0) as u64, Ordering::Relaxed);
        progress.running.store(true, Ordering::Relaxed);
        let _running = ClearOnDrop(&progress.running);
        tracing::info!(
            source = %self.name,
            %consistent_point,
            tables = tables.len(),
            estimated_rows = estimate,
            "bootstrap started"
        );

        let mut destination = self.pool.get().await.context("connect to the destination")?;
        let tx = destination.transaction().await?;
        // Locked for the whole bootstrap: a second host cannot apply meanwhile.
        tx.query_one(
            &format!("SELECT 1 FROM {} WHERE source = $1 FOR UPDATE", qualified(&self.schema, CHECKPOINTS)),
            &[&self.name],
        )
        .await?;

        let batch = self.config.batch_changes;
        let mut part = Vec::with_capacity(batch.min(10_000));
        let mut first: u64 = 0;
        let mut last_log = Instant::now();
        let tx_part = |changes: Vec<sluice_sdk::RowChange>, first: u64, last: bool| -> Result<Transaction> {
            Ok(Transaction {
                source: self.name.clone(),
                xid: 0,
                commit_lsn: consistent_point.0,
                end_lsn: consistent_point.0,
                commit_time,
                first_change: u32::try_from(first).map_err(|_| anyhow!("a bootstrap of more than 2^32 rows"))?,
                last,
                changes,
            })
        };
        for table in &tables {
            let relation = &table.relation;
            let columns: Vec<String> = relation.columns.iter().map(|c| quote_ident(&c.name)).collect();
            // ONLY: inheritance children are published (and read) on their own.
            source
                .batch_execute(&format!(
                    "DECLARE sluice_bootstrap NO SCROLL CURSOR FOR SELECT {} FROM {}{}",
                    columns.join(", "),
                    if table.partitioned { "" } else { "ONLY " },
                    qualified(relation.schema(), &relation.name)
                ))
                .await
                .with_context(|| format!("read table {}.{}", relation.schema(), relation.name))?;
            let mut table_rows: u64 = 0;
            loop {
                let fetched = source.simple_query(&format!("FETCH {batch} FROM sluice_bootstrap")).await?;
                let mut got = 0;
                for message in fetched {
                    let SimpleQueryMessage::Row(row) = message else { continue };
                    got += 1;
                    let values = relation
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, c)| row.get(i).map_or(pg::Value::Null, |text| pg::Value::from_text(c.type_oid, text)))
                        .collect();
                    if part.len() == batch {
                        let count = part.len() as u64;
                        self.handle_part(&tx, tx_part(std::mem::take(&mut part), first, false)?).await?;
                        first += count;
                        progress.rows_done.fetch_add(count, Ordering::Relaxed);
                    }
                    part.push(keys.insert(pg::Insert { xid: None, relation: relation.clone(), new: Tuple(values) }));
                }
                table_rows += got;
                if last_log.elapsed() >= LOG_EVERY {
                    last_log = Instant::now();
                    tracing::info!(
                        source = %self.name,
                        rows = progress.rows_done.load(Ordering::Relaxed),
                        tables_done = progress.tables_done.load(Ordering::Relaxed),
                        tables = tables.len(),
                        "bootstrap progress"
                    );
                }
                if got < batch as u64 {
                    break;
                }
            }
            source.batch_execute("CLOSE sluice_bootstrap").await?;
            progress.tables_done.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                source = %self.name,
                table = %format!("{}.{}", relation.schema(), relation.name),
                rows = table_rows,
                "bootstrap: table read"
            );
        }
        // The last part, empty when there are no rows at all: the component
        // still learns that a bootstrap happened.
        let count = part.len() as u64;
        self.handle_part(&tx, tx_part(part, first, true)?).await?;
        let rows = first + count;
        tx.execute(
            &format!(
                "UPDATE {} SET lsn = $2::text::pg_lsn, updated_at = now() WHERE source = $1",
                qualified(&self.schema, CHECKPOINTS)
            ),
            &[&self.name, &consistent_point.to_string()],
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO {} (source, slot, consistent_point, tables, rows) VALUES ($1, $2, $3::text::pg_lsn, $4, $5) \
                 ON CONFLICT (source) DO UPDATE SET slot = EXCLUDED.slot, consistent_point = EXCLUDED.consistent_point, \
                 tables = EXCLUDED.tables, rows = EXCLUDED.rows, completed_at = now()",
                qualified(&self.schema, BOOTSTRAPS)
            ),
            &[&self.name, &self.config.source.slot_name, &consistent_point.to_string(), &(tables.len() as i32), &(rows as i64)],
        )
        .await?;
        tx.commit_checked().await.context("commit the bootstrap")?;
        let _ = source.batch_execute("COMMIT").await;
        progress.rows_done.store(rows, Ordering::Relaxed);
        progress.completed_lsn.store(consistent_point.0, Ordering::Relaxed);
        tracing::info!(
            source = %self.name,
            %consistent_point,
            tables = tables.len(),
            rows,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "bootstrap complete: streaming from the consistent point"
        );
        Ok(())
    }

    /// The publication's tables and their columns, as of the snapshot, in
    /// the shape of pgoutput's relations (key columns flagged as the
    /// replica identity makes them).
    async fn snapshot_tables(&self, source: &tokio_postgres::Client) -> Result<Vec<SnapshotTable>> {
        let rows = source
            .query(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, c.relkind::text, \
                        a.attname::text, a.atttypid, a.atttypmod, \
                        c.relreplident = 'f' OR a.attnum = ANY(coalesce((SELECT i.indkey::int2[] FROM pg_catalog.pg_index i \
                            WHERE i.indrelid = c.oid AND (i.indisreplident OR (c.relreplident = 'd' AND i.indisprimary)) \
                            LIMIT 1), '{}')) \
                 FROM pg_catalog.pg_publication_tables p \
                 JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname \
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                 WHERE p.pubname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                 ORDER BY n.nspname, c.relname, a.attnum",
                &[&self.config.source.publication_name],
            )
            .await
            .context("read the publication's tables")?;
        let mut tables: Vec<SnapshotTable> = Vec::new();
        let mut building: Option<(Relation, bool)> = None;
        for row in rows {
            let oid: u32 = row.get(0);
            if building.as_ref().is_none_or(|(r, _)| r.id != oid) {
                if let Some((relation, partitioned)) = building.take() {
                    tables.push(SnapshotTable { relation: Arc::new(relation), partitioned });
                }
                let identity = match row.get::<_, String>(3).as_str() {
                    "f" => ReplicaIdentity::Full,
                    "n" => ReplicaIdentity::Nothing,
                    "i" => ReplicaIdentity::Index,
                    _ => ReplicaIdentity::Default,
                };
                building = Some((
                    Relation {
                        id: oid,
                        namespace: row.get(1),
                        name: row.get(2),
                        replica_identity: identity,
                        columns: Vec::new(),
                    },
                    row.get::<_, String>(4) == "p",
                ));
            }
            let (relation, _) = building.as_mut().expect("set above");
            relation.columns.push(Column {
                name: row.get(5),
                type_oid: row.get(6),
                type_modifier: row.get(7),
                is_key: row.get(8),
            });
        }
        if let Some((relation, partitioned)) = building {
            tables.push(SnapshotTable { relation: Arc::new(relation), partitioned });
        }
        if tables.is_empty() {
            bail!("publication {:?} has no tables to bootstrap", self.config.source.publication_name);
        }
        Ok(tables)
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
