//! One source's loop: ownership, publication and slot, streaming, and the
//! exactly-once apply of each committed transaction.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use postgres_protocol::escape::escape_literal;
use sluice_postgres::{Action, Kind};
use sluice_replication::pgoutput::Message;
use sluice_replication::{Event, Lsn, ReplicationClient, ReplicationStream, StartOptions, TableName};
use sluice_sdk::sql::qualified;
use sluice_sdk::{Table, Transaction, UpsertPlan};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::changes::Keys;
use super::config::CdcConfig;
use super::plans::Pipeline;
use super::spill::{TxBuffer, TxReader};
use super::stats::{State, Stats};
use crate::db::CommitChecked;
use crate::runtime::{CallLimits, ChangeHandler, Runtime};

/// The table of checkpoints, in the destination schema.
pub const CHECKPOINTS: &str = "sluice_cdc_checkpoints";

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a standby tries the lock.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often the owner shows it is alive, by a statement on the session
/// that holds the lock (its `pg_stat_activity.state_change` moves). A
/// process that is frozen, or cut off from the source with its session
/// left open, stops beating. (A handler cannot hang the owner: each call
/// has its deadline.)
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a standby waits on an owner that has not beaten before it ends
/// the owner's lock session and stream (`pg_terminate_backend`) and takes
/// over. A takeover thus comes at most this long plus `STANDBY_POLL` after
/// the owner stopped.
const FROZEN_AFTER: Duration = Duration::from_secs(5);
/// How often an owner checks whether it streams more than its share of the
/// fleet's sources (then it hands one over).
const REBALANCE_EVERY: Duration = Duration::from_secs(3);
/// A standby at its share still tries a slot's lock after this many polls,
/// so a slot nobody else takes (its owner died and the fleet's list does
/// not show it yet) moves within seconds.
const POLLS_AT_SHARE: u32 = 4;

/// Beats on the session that holds the lock every [`HEARTBEAT`], until a
/// beat fails.
async fn beat(lock: &tokio_postgres::Client) -> anyhow::Error {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        heartbeat.tick().await;
        if let Err(e) = lock.batch_execute("SELECT").await {
            return anyhow::Error::new(e).context("beat on the session holding the slot's lock");
        }
    }
}

/// What a source's failure is: the first failure of a database among its
/// causes (the replication connection, the lock's session or the
/// destination); `None` for any other (a handler's, the stream's order).
fn failure_kind(e: &anyhow::Error) -> Option<Kind> {
    e.chain().find_map(|cause| match cause.downcast_ref::<sluice_replication::Error>() {
        Some(replication) => Some(replication.kind()),
        None => sluice_postgres::failure::classify_chain([cause]),
    })
}

/// The `application_name` of the sessions that apply a slot's changes.
pub fn apply_session_name(slot: &str) -> String {
    format!("sluice-cdc-apply:{slot}")
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
    /// This host's part in spreading sources over the fleet.
    fleet: FleetShare,
}

/// What a runner needs to spread the sources over the hosts of a fleet:
/// each host streams about `sources / hosts` of them.
#[derive(Clone)]
pub struct FleetShare {
    /// How many sources this host streams now, shared by its runners.
    pub owned: Arc<AtomicUsize>,
    /// How many hosts are live (from the fleet's heartbeats).
    pub hosts: watch::Receiver<usize>,
    /// How many sources every host of the fleet is configured with.
    pub sources: usize,
}

impl FleetShare {
    /// One host alone with one source.
    fn alone() -> FleetShare {
        FleetShare { owned: Arc::default(), hosts: watch::channel(1).1, sources: 1 }
    }

    /// The most sources one host should stream.
    fn share(&self) -> usize {
        self.sources.div_ceil((*self.hosts.borrow()).max(1))
    }
}

/// Counts a source this host streams, until it is dropped or handed over.
struct Owning<'a> {
    owned: &'a AtomicUsize,
    handed_over: AtomicBool,
}

impl<'a> Owning<'a> {
    fn new(owned: &'a AtomicUsize) -> Owning<'a> {
        owned.fetch_add(1, Ordering::SeqCst);
        Owning { owned, handed_over: AtomicBool::new(false) }
    }

    /// Stops counting this source if the host streams more than `share`:
    /// one runner at a time, so the host hands over only the excess.
    fn hand_over_past(&self, share: usize) -> bool {
        let handed =
            self.owned.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > share).then(|| n - 1)).is_ok();
        if handed {
            self.handed_over.store(true, Ordering::SeqCst);
        }
        handed
    }
}

impl Drop for Owning<'_> {
    fn drop(&mut self) {
        if !self.handed_over.load(Ordering::SeqCst) {
            self.owned.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// How a connection's life ended without a failure.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// Handed the slot over to a host that streams fewer sources.
    HandedOver,
}

/// A transaction being gathered.
struct Pending {
    xid: u32,
    changes: TxBuffer,
}

impl Pending {
    fn committed(self, commit_lsn: Lsn, end_lsn: Lsn, commit_time: i64) -> Ready {
        Ready { changes: self.changes, commit: Commit { xid: self.xid, commit_lsn, end_lsn, commit_time } }
    }
}

/// The transactions being received: the open one, and streamed ones
/// (PostgreSQL 14+ sends large transactions before they commit).
#[derive(Default)]
struct Gather {
    current: Option<Pending>,
    streamed: HashMap<u32, Pending>,
    stream_xid: Option<u32>,
}

impl Gather {
    /// No transaction is being received.
    fn is_empty(&self) -> bool {
        self.current.is_none() && self.streamed.is_empty()
    }
}

/// A committed transaction being handed to the handler, part by part.
struct Delivery {
    reader: TxReader,
    commit: Commit,
    total: u64,
    /// Changes handed out so far.
    first: u64,
    /// Its last part is out.
    done: bool,
}

/// A handler call in flight, and what it gives the writer.
type Call<'a> = BoxFuture<'a, Result<ToWriter>>;

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

/// A group also closes at this many changes (or `batch_changes`, if more),
/// or once its plans hold [`GROUP_BYTES`] of values. Handler calls stay at
/// `batch_changes`. For a derived table, whose plans are small, the more
/// changes a group holds, the more of them fold into one row update (the
/// aggregate bench applied 2,000-change groups at 66 k changes/s and
/// 10,000-change groups at 87 k); large rows (an audit's images) close it
/// by their size first, so its statements stay short and lag stays low.
const GROUP_CHANGES: usize = 10_000;
const GROUP_BYTES: usize = 1 << 20;

/// From the first stage to the writer, in commit order.
enum ToWriter {
    /// One part of a source transaction, through the handler.
    Part(Part),
    /// A transaction with nothing to apply (empty, or at or below the
    /// checkpoint): its end is confirmed once everything before it is.
    Position(Lsn),
}

struct Part {
    plans: Vec<UpsertPlan>,
    /// What the plans' values take ([`plans::value_bytes`]).
    bytes: usize,
    /// Its share of the queue's budget, given back once it is written.
    budget: OwnedSemaphorePermit,
    changes: u64,
    end_lsn: Lsn,
    commit_time: i64,
    /// The transaction's last part: a destination transaction may end after it.
    last: bool,
}

/// The first stage's way to the writer. The handler's results it may have
/// ahead of the writer are bounded in changes (twice a group's), so memory
/// stays flat and a commit in flight does not stall the handler.
struct ToWriterQueue {
    items: mpsc::UnboundedSender<ToWriter>,
    budget: Arc<Semaphore>,
    size: u32,
}

impl ToWriterQueue {
    fn new(group_changes: usize) -> (ToWriterQueue, mpsc::UnboundedReceiver<ToWriter>) {
        let size = u32::try_from(group_changes.saturating_mul(2)).unwrap_or(u32::MAX).max(1);
        let (items, from_stream) = mpsc::unbounded_channel();
        (ToWriterQueue { items, budget: Arc::new(Semaphore::new(size as usize)), size }, from_stream)
    }

    /// Waits for room for `changes` in the budget.
    async fn reserve(&self, changes: u64) -> OwnedSemaphorePermit {
        let permits = u32::try_from(changes).unwrap_or(u32::MAX).clamp(1, self.size);
        self.budget.clone().acquire_many_owned(permits).await.expect("the budget is never closed")
    }

    /// Queues an item; it is gone only when the writer failed, whose error
    /// is the one reported.
    fn send(&self, item: ToWriter) -> Result<()> {
        self.items.send(item).map_err(|_| anyhow!("the destination writer stopped"))
    }
}

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
            fleet: FleetShare::alone(),
        }
    }

    /// Spreads this source over the fleet with the host's other runners.
    pub fn join_fleet(&mut self, fleet: FleetShare) {
        self.fleet = fleet;
    }

    /// Streams until `stop` turns true, reconnecting with backoff.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let _ = std::fs::remove_dir_all(&self.spill_dir);
        let mut backoff = FIRST_BACKOFF;
        let failed_retry = Duration::from_millis(self.config.failed_retry_ms);
        // Said once per cause, not at every try.
        let mut said: Option<String> = None;
        loop {
            let started = tokio::time::Instant::now();
            self.stats.set_state(State::Starting);
            let wait = match self.run_once(&mut stop).await {
                Ok(Ended::Stopped) => {
                    self.stats.set_state(State::Stopped);
                    tracing::info!(source = %self.name, "change stream stopped");
                    return;
                }
                Ok(Ended::HandedOver) => {
                    tracing::info!(
                        source = %self.name,
                        "handed the slot over: this host streams more than its share of the fleet's sources"
                    );
                    backoff = FIRST_BACKOFF;
                    STANDBY_POLL
                }
                Err(e) => match failure_kind(&e).filter(|kind| kind.action() == Action::Stop) {
                    Some(kind) => {
                        let reason = format!("{e:#}");
                        if said.as_ref() != Some(&reason) {
                            tracing::error!(
                                source = %self.name, failure = %kind,
                                "change stream stopped until the cause is mended, trying again every {failed_retry:?}: {reason}"
                            );
                        }
                        self.stats.fail(reason.clone());
                        said = Some(reason);
                        backoff = FIRST_BACKOFF;
                        failed_retry
                    }
                    None => {
                        said = None;
                        tracing::warn!(source = %self.name, "change stream failed, reconnecting in {backoff:?}: {e:#}");
                        if started.elapsed() > MAX_BACKOFF * 2 {
                            backoff = FIRST_BACKOFF;
                        }
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                },
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut stop) => {
                    self.stats.set_state(State::Stopped);
                    return;
                }
            }
        }
    }

    /// One connection's life. `Ok` when asked to stop, or when it handed
    /// the slot over.
    async fn run_once(&self, stop: &mut watch::Receiver<bool>) -> Result<Ended> {
        let source = &self.config.source;
        let checkpoint = self.prepare_destination().await.context("prepare the destination")?;

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
        let mut polls_at_share = 0;
        loop {
            // Sources spread over the fleet: a host streaming its share
            // leaves a free slot to hosts streaming fewer, and takes it only
            // when none has for a few polls.
            let at_share = self.fleet.owned.load(Ordering::SeqCst) >= self.fleet.share();
            if at_share && polls_at_share < POLLS_AT_SHARE {
                polls_at_share += 1;
                if !said_standby {
                    self.stats.set_state(State::Standby);
                    said_standby = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(STANDBY_POLL) => {}
                    _ = stopped(stop) => return Ok(Ended::Stopped),
                }
                continue;
            }
            polls_at_share = 0;
            let row = lock.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&lock_key]).await?;
            if row.get::<_, bool>(0) {
                break;
            }
            if !said_standby {
                self.stats.set_state(State::Standby);
                tracing::info!(source = %self.name, slot = %source.slot_name, "standby: another host streams this slot");
                said_standby = true;
            }
            if let Some(silent) = self.end_a_frozen_owner(&lock, &lock_key).await? {
                tracing::warn!(
                    source = %self.name, slot = %source.slot_name, silent_ms = silent.as_millis() as u64,
                    "the owner of the slot stopped beating: its lock session and stream were ended to take over"
                );
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_POLL) => {}
                _ = stopped(stop) => return Ok(Ended::Stopped),
            }
        }
        let owning = Owning::new(&self.fleet.owned);
        self.stats.set_state(State::Owner);
        tracing::info!(source = %self.name, slot = %source.slot_name, %checkpoint, "owns the slot");
        // The stream stops (after the transaction it is applying) when the
        // service stops, or when this host streams more than its share.
        let (ending, mut end) = watch::channel(false);
        let mut global = stop.clone();
        let until_ended = async {
            let mut check = tokio::time::interval(REBALANCE_EVERY);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            check.tick().await;
            loop {
                tokio::select! {
                    _ = stopped(&mut global) => break,
                    _ = check.tick() => if owning.hand_over_past(self.fleet.share()) { break },
                }
            }
            let _ = ending.send(true);
            std::future::pending::<()>().await
        };
        tokio::select! {
            owned = self.own(&mut end, checkpoint, &mut lock_connection) => owned?,
            failed = beat(&lock) => return Err(failed),
            () = until_ended => unreachable!("it never completes"),
        }
        Ok(if owning.handed_over.load(Ordering::SeqCst) { Ended::HandedOver } else { Ended::Stopped })
    }

    /// Ends the sessions of an owner that stopped beating: the session holding
    /// `lock_key` when it has been idle past [`FROZEN_AFTER`], the stream on
    /// the slot, and the owner's open transaction on the destination.
    /// Returns how long the owner was silent, if it was ended. (A session
    /// may end another of the same role; a server that refuses, `42501`,
    /// leaves the standby failed until its role may, as with any privilege.)
    async fn end_a_frozen_owner(&self, lock: &tokio_postgres::Client, lock_key: &str) -> Result<Option<Duration>> {
        let slot = &self.config.source.slot_name;
        let row = lock
            .query_opt(
                "WITH k AS (SELECT hashtextextended($1, 0) AS key) \
                 SELECT a.pid, extract(epoch FROM now() - a.state_change)::float8 \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, k \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                   AND l.classid::bigint = (k.key >> 32) & 4294967295 AND l.objid::bigint = k.key & 4294967295 \
                   AND a.state = 'idle' AND a.state_change < now() - make_interval(secs => $2)",
                &[&lock_key, &FROZEN_AFTER.as_secs_f64()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (pid, silent): (i32, f64) = (row.get(0), row.get(1));
        lock.execute(
            "SELECT pg_terminate_backend(pid) FROM (SELECT $1::int AS pid UNION ALL \
             SELECT active_pid FROM pg_replication_slots WHERE slot_name = $2 AND active_pid IS NOT NULL) owner",
            &[&pid, &slot],
        )
        .await?;
        // Its transaction on the destination, if it froze in one, would hold
        // the checkpoint row's lock: ended too.
        let destination = self.pool.get().await.context("connect to the destination")?;
        destination
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
                &[&apply_session_name(slot)],
            )
            .await?;
        Ok(Some(Duration::from_secs_f64(silent.max(0.0))))
    }

    /// The slot's owner: streams and applies until asked to stop.
    async fn own<L: std::future::Future + Unpin>(
        &self,
        stop: &mut watch::Receiver<bool>,
        mut checkpoint: Lsn,
        lock_connection: &mut L,
    ) -> Result<()>
    where
        L::Output: std::fmt::Debug,
    {
        let source = &self.config.source;

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
        let stream = client.start_replication(options).await?;
        self.stats.streaming();

        // Two stages run side by side: this task gathers transactions and
        // runs the handler; the writer applies the plans and commits, and
        // reports each committed position back to be confirmed.
        let (to_writer, from_stream) = ToWriterQueue::new(self.group_changes());
        let (committed, confirmations) = watch::channel(Lsn::INVALID);
        let streaming = self.stream_changes(stream, lock_connection, stop, keys, checkpoint, to_writer, confirmations);
        tokio::try_join!(streaming, self.write_changes(from_stream, committed, checkpoint))?;
        Ok(())
    }

    /// The first stage: receives messages, gathers committed transactions
    /// and hands them, part by part, to the handler, up to
    /// `concurrent_calls` calls at once; their plans go to the writer in
    /// commit order. Positions the writer has committed are confirmed to
    /// the server. Ends (dropping `to_writer`) when asked to stop.
    #[allow(clippy::too_many_arguments)]
    async fn stream_changes<L: std::future::Future + Unpin>(
        &self,
        mut stream: ReplicationStream,
        lock_connection: &mut L,
        stop: &mut watch::Receiver<bool>,
        mut keys: Keys,
        checkpoint: Lsn,
        to_writer: ToWriterQueue,
        mut confirmations: watch::Receiver<Lsn>,
    ) -> Result<()>
    where
        L::Output: std::fmt::Debug,
    {
        let mut gather = Gather::default();
        // The last idle position sent to the server.
        let mut reported = Lsn::INVALID;
        let mut calls: FuturesOrdered<Call<'_>> = FuturesOrdered::new();
        let mut delivering: Option<Delivery> = None;
        let parallel = self.config.concurrent_calls;
        loop {
            while calls.len() < parallel
                && let Some(delivery) = &mut delivering
            {
                calls.push_back(self.next_call(delivery, &to_writer)?);
                if delivery.done {
                    delivering = None;
                }
            }
            // New messages only when the handler has room for them.
            let receive = delivering.is_none() && calls.len() < parallel;
            let event = tokio::select! {
                Some(done) = calls.next() => {
                    to_writer.send(done?)?;
                    // A long transaction must not leave the source without news.
                    stream.send_status_if_due().await?;
                    continue;
                }
                event = stream.recv(), if receive => event?,
                ended = &mut *lock_connection => {
                    bail!("the connection holding the slot's lock ended: {ended:?}");
                }
                _ = stopped(stop) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), stream.stop()).await;
                    return Ok(());
                }
                Ok(()) = confirmations.changed() => {
                    // Effects and checkpoint are committed up to here:
                    // the server may recycle the WAL behind it.
                    let lsn = *confirmations.borrow_and_update();
                    stream.confirm(lsn);
                    let caught_up = gather.is_empty() && lsn >= stream.server_wal_end();
                    self.stats.positions(&stream, lsn, caught_up);
                    stream.send_status_now().await?;
                    continue;
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
            let Some(Ready { changes, commit }) = self.gather(&mut gather, &mut keys, message, send_time)? else {
                continue;
            };
            let total = changes.delivered();
            if commit.end_lsn <= checkpoint || total == 0 {
                // Applied before (a restart re-sent it) or empty: only its
                // position goes on, in order, to be confirmed.
                if commit.end_lsn <= checkpoint {
                    self.stats.skipped_transactions.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(source = %self.name, lsn = %commit.end_lsn, "skipping a transaction at or below the checkpoint");
                }
                let position = ToWriter::Position(commit.end_lsn);
                calls.push_back(Box::pin(std::future::ready(Ok(position))));
                continue;
            }
            let reader = changes.into_reader().context("read a spilled transaction")?;
            delivering = Some(Delivery { reader, commit, total, first: 0, done: false });
        }
    }

    /// Takes one message into the transactions being received; returns a
    /// transaction once it is committed.
    fn gather(&self, gather: &mut Gather, keys: &mut Keys, message: Message, send_time: i64) -> Result<Option<Ready>> {
        let Gather { current, streamed, stream_xid } = gather;
        match message {
            Message::Begin(begin) => {
                self.stats.behind(begin.commit_time);
                *current = Some(self.pending(begin.xid));
            }
            Message::Commit(commit) => {
                let pending = current.take().ok_or_else(|| anyhow!("a commit without a begin"))?;
                return Ok(Some(pending.committed(commit.commit_lsn, commit.end_lsn, commit.commit_time)));
            }
            Message::StreamStart { xid, .. } => {
                // The commit time comes only with the stream's commit.
                self.stats.behind(send_time);
                *stream_xid = Some(xid);
                streamed.entry(xid).or_insert_with(|| self.pending(xid));
            }
            Message::StreamStop => *stream_xid = None,
            Message::StreamCommit(commit) => {
                let pending = streamed
                    .remove(&commit.xid)
                    .ok_or_else(|| anyhow!("a stream commit for an unknown transaction"))?;
                return Ok(Some(pending.committed(commit.commit_lsn, commit.end_lsn, commit.commit_time)));
            }
            Message::StreamAbort(abort) => {
                if abort.xid == abort.subxid {
                    streamed.remove(&abort.xid);
                } else if let Some(pending) = streamed.get_mut(&abort.xid) {
                    pending.changes.abort_subtransaction(abort.subxid);
                }
            }
            Message::Insert(m) => self.push(current, streamed, *stream_xid, m.xid, keys.insert(m))?,
            Message::Update(m) => self.push(current, streamed, *stream_xid, m.xid, keys.update(m))?,
            Message::Delete(m) => self.push(current, streamed, *stream_xid, m.xid, keys.delete(m))?,
            Message::Truncate(m) => {
                for change in keys.truncate(&m) {
                    self.push(current, streamed, *stream_xid, m.xid, change)?;
                }
            }
            Message::Origin(_) | Message::Relation { .. } | Message::Type(_) | Message::Message(_) => {}
        }
        Ok(None)
    }

    /// A transaction to gather, its changes kept in memory up to
    /// `memory_changes`, then spilled.
    fn pending(&self, xid: u32) -> Pending {
        Pending { xid, changes: TxBuffer::new(self.config.memory_changes, &self.spill_dir) }
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

    /// The most changes a destination transaction takes (see [`GROUP_CHANGES`]).
    fn group_changes(&self) -> usize {
        self.config.batch_changes.max(GROUP_CHANGES)
    }

    /// The handler call for the next part of `delivery`: it waits for room
    /// in the writer's budget, then runs.
    fn next_call<'a>(&'a self, delivery: &mut Delivery, to_writer: &'a ToWriterQueue) -> Result<Call<'a>> {
        let part = delivery.reader.next_part(self.config.batch_changes).context("read a spilled transaction")?;
        let count = part.len() as u64;
        let first = delivery.first;
        let last = first + count >= delivery.total || count == 0;
        let commit = &delivery.commit;
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
        delivery.first += count;
        delivery.done = last;
        let (end_lsn, commit_time) = (commit.end_lsn, commit.commit_time);
        Ok(Box::pin(async move {
            let budget = to_writer.reserve(count).await;
            let plans = self.call_handler(part).await?;
            let bytes = plans.iter().map(super::plans::value_bytes).sum();
            Ok(ToWriter::Part(Part { plans, bytes, budget, changes: count, end_lsn, commit_time, last }))
        }))
    }

    /// The second stage: applies the handler's plans in destination
    /// transactions, each with the checkpoint of its last source
    /// transaction, and reports each committed position. A destination
    /// transaction takes what has arrived, at source transaction bounds, up
    /// to [`GROUP_CHANGES`] changes, [`GROUP_BYTES`] or [`GROUP_TIME`]: a backlog commits in
    /// groups, and a commit in flight never stalls the handler.
    async fn write_changes(
        &self,
        mut from_stream: mpsc::UnboundedReceiver<ToWriter>,
        committed: watch::Sender<Lsn>,
        mut checkpoint: Lsn,
    ) -> Result<()> {
        let checkpoints = qualified(&self.schema, CHECKPOINTS);
        let group_changes = self.group_changes() as u64;
        while let Some(mut item) = from_stream.recv().await {
            if let ToWriter::Position(lsn) = item {
                // Everything before it is committed: confirm at once.
                committed.send_replace(lsn);
                continue;
            }
            let mut client = self.pool.get().await.context("connect to the destination")?;
            let tx = client.transaction().await?;
            // The checkpoint row, locked: if another host applied these
            // transactions meanwhile, they are not applied twice.
            let stored: String = tx
                .query_one(&format!("SELECT lsn::text FROM {checkpoints} WHERE source = $1 FOR UPDATE"), &[&self.name])
                .await?
                .get(0);
            checkpoint = checkpoint.max(Lsn::from_str(&stored).map_err(|e| anyhow!("{e}"))?);
            let started = tokio::time::Instant::now();
            let (mut last, mut transactions, mut changes, mut last_commit_time) = (Lsn::INVALID, 0u64, 0u64, 0);
            let mut bytes = 0;
            let mut pipeline = Pipeline::new(&tx, &self.schema);
            loop {
                let bound = match item {
                    ToWriter::Position(lsn) => {
                        last = last.max(lsn);
                        true
                    }
                    ToWriter::Part(part) => {
                        let Part { plans, bytes: size, budget, changes: count, end_lsn, commit_time, last: last_part } =
                            part;
                        if end_lsn <= checkpoint {
                            self.stats.skipped_transactions.fetch_add(u64::from(last_part), Ordering::Relaxed);
                        } else {
                            self.send_plans(&mut pipeline, plans, Arc::new(budget)).await?;
                            changes += count;
                            bytes += size;
                            if last_part {
                                transactions += 1;
                                last_commit_time = commit_time;
                            }
                        }
                        if last_part {
                            last = last.max(end_lsn);
                        }
                        last_part
                    }
                };
                let full = changes >= group_changes || bytes >= GROUP_BYTES;
                if bound && (full || started.elapsed() >= GROUP_TIME) {
                    break;
                }
                item = if bound {
                    // Only what is already at hand: waiting would add latency.
                    match from_stream.try_recv() {
                        Ok(item) => item,
                        Err(_) => break,
                    }
                } else {
                    // The rest of a transaction, whose parts commit together;
                    // meanwhile the answers come in (and free the budget).
                    pipeline.flush().await?;
                    loop {
                        tokio::select! {
                            item = from_stream.recv() => match item {
                                Some(item) => break item,
                                None => return Ok(()),
                            },
                            Some(done) = pipeline.next() => done?,
                        }
                    }
                };
            }
            pipeline.finish().await?;
            drop(pipeline);
            if transactions == 0 {
                tx.rollback().await?;
            } else {
                if crate::faults::fires("cdc-before-checkpoint") {
                    bail!("failpoint cdc-before-checkpoint");
                }
                tx.execute(
                    &format!("UPDATE {checkpoints} SET lsn = $2::text::pg_lsn, updated_at = now() WHERE source = $1"),
                    &[&self.name, &last.to_string()],
                )
                .await?;
                tx.commit_checked().await?;
                self.stats.applied(last_commit_time);
            }
            checkpoint = checkpoint.max(last);
            self.stats.transactions.fetch_add(transactions, Ordering::Relaxed);
            self.stats.changes.fetch_add(changes, Ordering::Relaxed);
            tracing::debug!(source = %self.name, lsn = %last, transactions, changes, "applied transactions");
            if crate::faults::fires("cdc-before-confirm") {
                bail!("failpoint cdc-before-confirm");
            }
            committed.send_replace(last);
        }
        Ok(())
    }

    /// Hands one part of a transaction (or of the bootstrap, xid 0) to a
    /// fresh instance of the component and writes its plans in `tx`.
    pub(super) async fn handle_part(&self, tx: &deadpool_postgres::Transaction<'_>, part: Transaction) -> Result<()> {
        let plans = self.call_handler(part).await?;
        let mut pipeline = Pipeline::new(tx, &self.schema);
        self.send_plans(&mut pipeline, plans, ()).await?;
        pipeline.finish().await
    }

    /// Hands one part of a transaction to a fresh instance of the component;
    /// returns its plans.
    async fn call_handler(&self, part: Transaction) -> Result<Vec<UpsertPlan>> {
        let what = if part.xid == 0 {
            "the bootstrap".to_owned()
        } else {
            format!("the transaction committed at {}", Lsn(part.commit_lsn))
        };
        match self.runtime.handle_transaction(self.handler.clone(), part, self.limits).await {
            Ok(Ok(plans)) => Ok(plans),
            Ok(Err(refused)) => {
                self.stats.handler_errors.fetch_add(1, Ordering::Relaxed);
                bail!("the handler refused {what}: {refused}");
            }
            Err(failure) => {
                self.stats.handler_errors.fetch_add(1, Ordering::Relaxed);
                bail!("the handler failed on {what}: {failure}");
            }
        }
    }

    /// Sends `plans` down the destination transaction's pipeline, each to a
    /// table the handler declares; `hold` is kept until they are answered.
    async fn send_plans<'t, H: Clone + Send + 't>(
        &'t self,
        pipeline: &mut Pipeline<'t>,
        plans: Vec<UpsertPlan>,
        hold: H,
    ) -> Result<()> {
        for plan in plans {
            let table = self.tables.get(&plan.table).filter(|t| !t.template).ok_or_else(|| {
                anyhow!("the handler plans rows for table {:?}, which it does not declare", plan.table)
            })?;
            pipeline.push(table, plan, hold.clone()).await?;
        }
        Ok(())
    }

    /// Creates the handler's tables and the checkpoint table; returns the checkpoint.
    pub(super) async fn prepare_destination(&self) -> Result<Lsn> {
        let mut client = self.pool.get().await?;
        crate::db::migrate::migrate(&mut client, &self.schema, &self.handler.tables).await?;
        super::bootstraps::create_table(&client, &self.schema).await?;
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

    #[test]
    fn a_failed_source_keeps_its_reason_while_it_tries_again_and_drops_it_once_it_streams() {
        let stats = Stats::default();
        stats.fail("permission denied (SQLSTATE 42501)".into());
        assert_eq!(
            (stats.state(), stats.reason().as_deref()),
            (State::Failed, Some("permission denied (SQLSTATE 42501)"))
        );
        stats.set_state(State::Starting);
        stats.set_state(State::Owner);
        assert_eq!(stats.state().as_str(), "failed", "trying again is still failed, the slot's lock taken or not");
        stats.streaming();
        assert_eq!((stats.state(), stats.reason()), (State::Owner, None));
        stats.fail("gone".into());
        stats.set_state(State::Standby);
        assert_eq!((stats.state(), stats.reason()), (State::Standby, None));
    }

    #[test]
    fn only_a_failure_retrying_cannot_mend_stops_a_source() {
        let stops = |e: anyhow::Error| failure_kind(&e).is_some_and(|kind| kind.action() == Action::Stop);
        let unusable = sluice_replication::Error::Config("publication \"p\" does not exist".into());
        assert!(stops(anyhow::Error::new(unusable).context("start the stream")));
        assert!(!stops(anyhow::Error::new(sluice_replication::Error::Closed).context("stream")));
        assert!(!stops(anyhow!("the handler refused the transaction")));
        let pool = deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        assert!(!stops(anyhow::Error::new(pool).context("connect to the destination")));
    }
}
