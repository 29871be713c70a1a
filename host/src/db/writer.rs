//! Group commit: plans from many requests gather in one queue per
//! destination and are written by a few flushes at a time, each one
//! transaction with one set-based statement per plan shape.
//!
//! A flush starts when a writer is free and the batch is full, its linger
//! window has ended, or (linger 0, the default) at once. While writers are
//! busy the next batch keeps growing, so the busier the service, the larger
//! and cheaper its transactions.
//!
//! Rows whose conflicts do nothing go by binary `COPY` first: when none of
//! them is already there (the common case) that writes exactly what the
//! upsert would, for about a third less of the database's CPU. A `COPY`
//! that meets a key already there fails whole; the transaction is then
//! written again by upsert alone, which tells new rows from duplicates, and
//! that table's rows go by upsert for a while.

use super::dead_letters::{self, DeadLetter};
use super::encode::{self, ColumnArray};
use super::{CommitChecked, discard};
use crate::config::BatchConfig;
use crate::faults;
use deadpool_postgres::Pool;
use sluice_sdk::UpsertPlan;
use sluice_sdk::sql::Upsert;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// How long a table whose `COPY` failed is written by upsert only: retried
/// requests tend to come in runs.
const COPY_REST: Duration = Duration::from_secs(10);

/// Keys set aside until a moment: statements whose `COPY` recently failed
/// (they go by upsert only), tenants whose rows were recently refused
/// (their jobs are flushed apart).
#[derive(Default)]
struct Resting(std::sync::Mutex<HashMap<String, Instant>>);

impl Resting {
    /// Whether `key` is set aside now (one whose time has passed is forgotten).
    fn holds(&self, key: &str) -> bool {
        let mut resting = self.0.lock().expect("not poisoned");
        match resting.get(key) {
            Some(&until) if until > Instant::now() => true,
            Some(_) => {
                resting.remove(key);
                false
            }
            None => false,
        }
    }

    fn rest(&self, key: &str, time: Duration) {
        self.0.lock().expect("not poisoned").insert(key.to_owned(), Instant::now() + time);
    }
}

/// A plan whose shape was checked against its table, with the statement
/// that writes it.
#[derive(Debug)]
pub struct CheckedPlan {
    pub upsert: Arc<Upsert>,
    pub plan: UpsertPlan,
}

/// For each plan of a job, for each of its rows: was it written (true) or
/// a duplicate (false)?
pub type Written = Vec<Vec<bool>>;

/// What became of one job's rows.
#[derive(Debug, Default)]
pub struct JobResult {
    pub written: Written,
    /// Events whose rows the database refused (found by `isolate`), with why
    /// and whether their rows were kept as dead letters; none of their rows
    /// were written.
    pub refused: Vec<(u32, String, Kept)>,
}

/// Whether a refused event's rows were kept in the dead-letter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Yes,
    /// Not kept: the tenant's dead letters are at their bound.
    Full,
    /// Not kept: the dead-letter table could not be written.
    Failed,
}

/// Whose rows a job holds: where refused rows are kept, and how many.
#[derive(Debug)]
pub struct Origin {
    pub tenant: String,
    pub schema: String,
    /// Most rows the tenant may keep in the dead-letter table.
    pub max_dead_letters: u64,
    /// Rows it keeps there, as last counted and since added to, and when
    /// last counted.
    pub dead_letters: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    /// Refused rows not kept since the last warning, and when it was.
    pub not_kept: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

impl Origin {
    pub fn new(tenant: &str, schema: &str, max_dead_letters: u64) -> Origin {
        Origin {
            tenant: tenant.to_owned(),
            schema: schema.to_owned(),
            max_dead_letters,
            dead_letters: Default::default(),
            not_kept: Default::default(),
        }
    }

    /// The cached count of kept rows, while fresh: it is counted again
    /// every [`DEAD_LETTER_RECOUNT`], so rows replayed or purged (here or
    /// on another host) make room again, and other hosts' rows are seen.
    fn known_dead_letters(&self) -> Option<u64> {
        let cached = *self.dead_letters.lock().unwrap();
        cached.filter(|(_, at)| at.elapsed() < DEAD_LETTER_RECOUNT).map(|(count, _)| count)
    }

    fn counted_dead_letters(&self, count: u64, recounted: bool) {
        let mut cached = self.dead_letters.lock().unwrap();
        let at = match *cached {
            Some((_, at)) if !recounted => at,
            _ => std::time::Instant::now(),
        };
        *cached = Some((count, at));
    }

    /// Counts rows not kept past the bound; warns at most once a minute.
    fn rows_not_kept(&self, rows: u64) {
        crate::metrics::metrics().dead_letters_not_kept(&self.tenant, rows);
        let mut not_kept = self.not_kept.lock().unwrap();
        not_kept.0 += rows;
        if not_kept.1.is_none_or(|at| at.elapsed() >= NOT_KEPT_WARNING_EVERY) {
            tracing::warn!(
                tenant = %self.tenant,
                rows = not_kept.0,
                max_dead_letters = self.max_dead_letters,
                "refused rows were not kept: the tenant's dead letters are at their bound \
                 ([limits] max_dead_letters); replay or purge them to make room"
            );
            *not_kept = (0, Some(std::time::Instant::now()));
        }
    }
}

/// How long a tenant's count of dead letters is trusted before it is
/// counted again.
const DEAD_LETTER_RECOUNT: Duration = Duration::from_secs(10);
/// How often, at most, rows not kept past the bound are logged.
const NOT_KEPT_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Why the database refused rows for good.
#[derive(Clone)]
struct Refusal {
    sqlstate: String,
    message: String,
}

impl Refusal {
    fn of(e: &tokio_postgres::Error) -> Refusal {
        Refusal {
            sqlstate: e.code().map_or("", |c| c.code()).to_owned(),
            message: e.as_db_error().map_or_else(|| describe(e), |db| db.message().to_owned()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The database could not be reached, or kept failing transiently,
    /// until the request's deadline. Retrying later is right.
    Unavailable(String),
    /// The destination refuses every row — a missing table or column, a
    /// missing privilege — until an operator fixes it.
    Unusable(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Unavailable(m) => write!(f, "the database is unavailable: {m}"),
            WriteError::Unusable(m) => write!(f, "the destination cannot take rows: {m}"),
        }
    }
}

// What a failed write means and how it is handled (see
// docs/operations.md): retried (a conflict only with `retry_on_deadlock`),
// its bad rows isolated, or every row refused.
pub use sluice_postgres::{Action, Kind, describe};

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> WriteError {
        match sluice_postgres::classify(&e).action() {
            Action::Stop => WriteError::Unusable(describe(&e)),
            Action::Retry | Action::Isolate => WriteError::Unavailable(describe(&e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for WriteError {
    fn from(e: deadpool_postgres::PoolError) -> WriteError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => WriteError::Unavailable(other.to_string()),
        }
    }
}

struct Job {
    plans: Vec<CheckedPlan>,
    rows: usize,
    bytes: usize,
    /// When the request stops waiting: retries end there.
    deadline: Instant,
    origin: Arc<Origin>,
    /// The HTTP request's id, for the log lines of its flush.
    request_id: Option<Arc<str>>,
    reply: oneshot::Sender<Result<JobResult, WriteError>>,
}

/// The queue in front of one destination. Cloning shares it.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the batching task. It ends, after writing everything queued,
    /// when the last clone of the writer is dropped; `done` fires then.
    pub fn start(pool: Pool, batch: BatchConfig) -> (Writer, oneshot::Receiver<()>) {
        let (jobs, queue) = mpsc::channel(4096);
        let (done_tx, done) = oneshot::channel();
        tokio::spawn(async move {
            let shared = Arc::new(Shared {
                pool,
                retry_on_deadlock: batch.retry_on_deadlock,
                rests: Resting::default(),
                isolated: Default::default(),
                isolating: tokio::sync::Notify::new(),
            });
            Batcher { shared, batch, pending: VecDeque::new(), pending_rows: 0, pending_bytes: 0 }.run(queue).await;
            let _ = done_tx.send(());
        });
        (Writer { jobs }, done)
    }

    /// Writes the plans and answers once they are committed, retrying
    /// transient failures until `deadline`.
    pub async fn write(
        &self,
        plans: Vec<CheckedPlan>,
        deadline: Instant,
        origin: &Arc<Origin>,
    ) -> Result<JobResult, WriteError> {
        if plans.is_empty() {
            return Ok(JobResult::default());
        }
        let rows = plans.iter().map(|p| p.plan.rows.len()).sum();
        let bytes = plans
            .iter()
            .flat_map(|p| &p.plan.rows)
            .map(|r| r.values.iter().map(|v| v.wire_size() + 4).sum::<usize>())
            .sum();
        let (reply, answer) = oneshot::channel();
        let request_id = crate::request_id::current();
        let metrics = crate::metrics::metrics();
        metrics.rows_queued(rows);
        let sent =
            self.jobs.send(Job { plans, rows, bytes, deadline, origin: origin.clone(), request_id, reply }).await;
        if sent.is_err() {
            metrics.rows_dequeued(rows);
            return Err(WriteError::Unavailable("the writer has stopped".into()));
        }
        answer.await.unwrap_or_else(|_| Err(WriteError::Unavailable("the writer stopped before answering".into())))
    }
}

/// How long a tenant whose rows needed isolation has its jobs flushed
/// apart from other tenants'.
const ISOLATED_FOR: Duration = Duration::from_secs(60);

/// What a writer's flushes share.
struct Shared {
    pool: Pool,
    retry_on_deadlock: crate::config::RetryOnDeadlock,
    /// Statements resting from `COPY`.
    rests: Resting,
    /// Tenants whose rows the database recently refused, and until when
    /// their jobs are flushed apart (see [`Batcher::run`]).
    isolated: Resting,
    /// Fired when a flush starts isolating: it no longer takes a writer.
    isolating: tokio::sync::Notify,
}

impl Shared {
    fn is_isolated(&self, tenant: &str) -> bool {
        self.isolated.holds(tenant)
    }

    fn isolate(&self, tenant: &str) {
        self.isolated.rest(tenant, ISOLATED_FOR);
    }
}

/// A flush running: whether it holds the jobs of an isolated tenant, and
/// whether it has started isolating refused rows.
#[derive(Default)]
struct Running {
    isolated: bool,
    isolating: std::sync::atomic::AtomicBool,
}

struct Batcher {
    shared: Arc<Shared>,
    batch: BatchConfig,
    pending: VecDeque<Job>,
    pending_rows: usize,
    pending_bytes: usize,
}

impl Batcher {
    /// Isolation (finding the refused events of a batch the database
    /// refused) can take seconds; it is kept off other tenants' paths:
    ///
    /// - a flush that starts isolating no longer counts against
    ///   `writers`, so other jobs get a writer at once;
    /// - a tenant whose rows were refused has its jobs flushed apart for
    ///   [`ISOLATED_FOR`], one flush at a time for all such tenants (its own
    ///   lane), never in a flush with other tenants' jobs;
    /// - a flush of several tenants' jobs that the database refuses is
    ///   split by tenant at once, each tenant's jobs written (and, if
    ///   refused, isolated) and answered on their own.
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let linger = Duration::from_millis(self.batch.batch_timeout_ms);
        let mut flushing: JoinSet<()> = JoinSet::new();
        let mut running: Vec<Arc<Running>> = Vec::new();
        let mut linger_ends: Option<Instant> = None;
        let mut closed = false;
        loop {
            while let Ok(job) = queue.try_recv() {
                self.push(job, &mut linger_ends, linger);
            }
            loop {
                running.retain(|r| Arc::strong_count(r) > 1);
                if self.pending.is_empty() {
                    break;
                }
                let (writer_free, lane_free) = self.free(&running);
                let full =
                    self.pending_rows >= self.batch.batch_size || self.pending_bytes >= self.batch.batch_size_bytes;
                let due = linger.is_zero() || closed || linger_ends.is_some_and(|t| t <= Instant::now());
                if !(full || due) {
                    break;
                }
                let Some((isolated, jobs)) = self.take(writer_free, lane_free) else { break };
                linger_ends = (!self.pending.is_empty()).then(|| Instant::now() + linger);
                if !jobs.is_empty() {
                    let state = Arc::new(Running { isolated, ..Default::default() });
                    running.push(state.clone());
                    flushing.spawn(flush(self.shared.clone(), jobs, state));
                }
            }
            if closed && self.pending.is_empty() && flushing.is_empty() {
                return;
            }
            // Whether a pending job could go now (once its linger ends):
            // else only a new job, a flush ending or starting to isolate
            // can change that.
            running.retain(|r| Arc::strong_count(r) > 1);
            let (writer_free, lane_free) = self.free(&running);
            let can_flush = self.pending.iter().any(|job| match self.shared.is_isolated(&job.origin.tenant) {
                true => lane_free,
                false => writer_free,
            });
            tokio::select! {
                job = queue.recv(), if !closed => match job {
                    Some(job) => self.push(job, &mut linger_ends, linger),
                    None => closed = true,
                },
                Some(_) = flushing.join_next(), if !flushing.is_empty() => {}
                _ = self.shared.isolating.notified() => {}
                _ = tokio::time::sleep_until(linger_ends.unwrap_or_else(Instant::now)), if can_flush && linger_ends.is_some() => {}
            }
        }
    }

    /// Whether a writer is free for jobs of tenants not isolated (flushes
    /// that are isolating do not count), and whether the isolated tenants'
    /// lane is free.
    fn free(&self, running: &[Arc<Running>]) -> (bool, bool) {
        let writing = running.iter().filter(|r| !r.isolated && !r.isolating.load(Ordering::Acquire)).count();
        (writing < self.batch.writers, !running.iter().any(|r| r.isolated))
    }

    fn push(&mut self, job: Job, linger_ends: &mut Option<Instant>, linger: Duration) {
        if self.pending.is_empty() {
            *linger_ends = Some(Instant::now() + linger);
        }
        self.pending_rows += job.rows;
        self.pending_bytes += job.bytes;
        self.pending.push_back(job);
    }

    /// Takes jobs for one flush, oldest first: jobs of tenants not
    /// isolated when `writer` (a writer is free), else those of one
    /// isolated tenant when `lane` (the isolated tenants' lane is free).
    /// At least one job, then while under the limits. `None` when no job
    /// may go now; whether the flush is of an isolated tenant.
    fn take(&mut self, writer: bool, lane: bool) -> Option<(bool, Vec<Job>)> {
        let first = self.pending.iter().position(|job| {
            let isolated = self.shared.is_isolated(&job.origin.tenant);
            (isolated && lane) || (!isolated && writer)
        })?;
        let tenant = self.pending[first].origin.tenant.clone();
        let isolated = self.shared.is_isolated(&tenant);
        let mut jobs = Vec::new();
        let (mut rows, mut bytes) = (0, 0);
        let mut i = first;
        while i < self.pending.len() {
            let job = &self.pending[i];
            let fits = match isolated {
                true => job.origin.tenant == tenant,
                false => !self.shared.is_isolated(&job.origin.tenant),
            };
            if !fits {
                i += 1;
                continue;
            }
            if !jobs.is_empty()
                && (rows + job.rows > self.batch.batch_size || bytes + job.bytes > self.batch.batch_size_bytes)
            {
                break;
            }
            let job = self.pending.remove(i).unwrap();
            crate::metrics::metrics().rows_dequeued(job.rows);
            self.pending_rows -= job.rows;
            self.pending_bytes -= job.bytes;
            // Its request has been answered (it timed out): writing its rows
            // now would commit what the client was told was not.
            if job.reply.is_closed() {
                continue;
            }
            rows += job.rows;
            bytes += job.bytes;
            jobs.push(job);
        }
        Some((isolated, jobs))
    }
}

/// An event of a job: the unit that is written or refused whole.
type Unit = (usize, u32);

/// Every event of the jobs, in order.
fn events_of(jobs: &[Job]) -> Vec<Unit> {
    jobs.iter()
        .enumerate()
        .flat_map(|(j, job)| {
            let mut events: Vec<u32> = job.plans.iter().flat_map(|p| p.plan.rows.iter().map(|r| r.event)).collect();
            events.sort_unstable();
            events.dedup();
            events.into_iter().map(move |e| (j, e))
        })
        .collect()
}

/// Writes the jobs in one transaction, retrying transient failures with
/// backoff until the earliest of the jobs' deadlines. When the data is
/// refused, the jobs of each tenant are written apart (when there are
/// several) and [`isolate`] finds the refused events of each tenant whose
/// jobs are refused: the rest are written, and each refused event is
/// reported with the database's reason. Each tenant's jobs are answered
/// as soon as they are done.
async fn flush(shared: Arc<Shared>, jobs: Vec<Job>, running: Arc<Running>) {
    let started = std::time::Instant::now();
    let rows = jobs.iter().map(|j| j.rows).sum();
    let deadline = jobs.iter().map(|j| j.deadline).min().expect("a flush has jobs");
    let batch = Batch { shared: &shared, jobs: &jobs, deadline };
    let refusal = match batch.write_whole().await {
        Ok(written) => return answer(&shared, jobs, Ok(written), Vec::new(), started, rows).await,
        Err(Err(e)) => return answer(&shared, jobs, Err(e), Vec::new(), started, rows).await,
        Err(Ok(refusal)) => refusal,
    };
    let mut tenants: Vec<String> = jobs.iter().map(|j| j.origin.tenant.clone()).collect();
    tenants.sort();
    tenants.dedup();
    if let [tenant] = &tenants[..] {
        shared.isolate(tenant);
    }
    // From here on it is isolating: it no longer holds a writer.
    running.isolating.store(true, Ordering::Release);
    shared.isolating.notify_one();
    if tenants.len() == 1 {
        return write_isolating(&shared, jobs, Some(refusal), started).await;
    }
    // Each tenant on its own: one tenant's refused rows cost only its jobs.
    let mut groups: Vec<Vec<Job>> = tenants.iter().map(|_| Vec::new()).collect();
    for job in jobs {
        let group = tenants.binary_search(&job.origin.tenant).expect("listed above");
        groups[group].push(job);
    }
    // Concurrently, within half the pool: the refused tenant's isolation
    // holds one connection while the others are written.
    let concurrent = (shared.pool.status().max_size / 2).max(2);
    let shared = &shared;
    futures_util::StreamExt::for_each_concurrent(futures_util::stream::iter(groups), concurrent, |group| {
        write_isolating(shared, group, None, started)
    })
    .await;
}

/// Writes the jobs of one tenant (whole, unless `refused` says the
/// database already refused them), isolating the refused events, and
/// answers them.
async fn write_isolating(shared: &Shared, jobs: Vec<Job>, refused: Option<Refusal>, started: std::time::Instant) {
    let rows = jobs.iter().map(|j| j.rows).sum();
    let deadline = jobs.iter().map(|j| j.deadline).min().expect("a flush has jobs");
    let batch = Batch { shared, jobs: &jobs, deadline };
    let mut refusals = Vec::new();
    let outcome = batch.write_isolating(refused, &mut refusals).await;
    answer(shared, jobs, outcome, refusals, started, rows).await
}

/// Keeps the refused rows as dead letters and answers each job.
async fn answer(
    shared: &Shared,
    jobs: Vec<Job>,
    outcome: Result<Vec<(usize, usize, usize)>, WriteError>,
    refusals: Vec<(Unit, Refusal)>,
    started: std::time::Instant,
    rows: usize,
) {
    let mut results: Vec<JobResult> = jobs
        .iter()
        .map(|j| JobResult {
            written: j.plans.iter().map(|p| vec![false; p.plan.rows.len()]).collect(),
            refused: vec![],
        })
        .collect();
    if !refusals.is_empty() {
        // The tenants whose rows were refused are flushed apart for a while.
        for &((j, _), _) in &refusals {
            shared.isolate(&jobs[j].origin.tenant);
        }
        let kept = keep_dead_letters(&shared.pool, &jobs, &refusals).await;
        for (((j, event), refusal), kept) in refusals.into_iter().zip(kept) {
            let reason = format!("{} (SQLSTATE {})", refusal.message, refusal.sqlstate);
            results[j].refused.push((event, reason, kept));
        }
    }
    if let Ok(written) = &outcome {
        for &(j, p, r) in written {
            results[j].written[p][r] = true;
        }
    }
    crate::metrics::metrics().flushed(rows, started.elapsed());
    for (job, result) in jobs.into_iter().zip(results) {
        let _ = job.reply.send(match &outcome {
            Ok(_) => Ok(result),
            Err(e) => Err(e.clone()),
        });
    }
}

/// The jobs of one flush and how to write them.
struct Batch<'a> {
    shared: &'a Shared,
    jobs: &'a [Job],
    deadline: Instant,
}

impl Batch<'_> {
    /// Writes every job in one transaction; `Err(Ok(_))` when the database
    /// refuses the data.
    async fn write_whole(&self) -> Result<Vec<(usize, usize, usize)>, Result<Refusal, WriteError>> {
        let pool = &self.shared.pool;
        self.retrying(None, || write_units(pool, self.jobs, &self.shared.rests, self.deadline)).await
    }

    /// Writes the jobs, splitting them while the database refuses the data
    /// (it did already when `refused` is given); returns the rows written
    /// and adds each event refused alone to `refusals`.
    async fn write_isolating(
        &self,
        refused: Option<Refusal>,
        refusals: &mut Vec<(Unit, Refusal)>,
    ) -> Result<Vec<(usize, usize, usize)>, WriteError> {
        // The whole batch first: its events are listed only when the
        // database refuses it, off the common path.
        let refusal = match refused {
            Some(refusal) => refusal,
            None => match self.write_whole().await {
                Ok(rows) => return Ok(rows),
                Err(Err(e)) => return Err(e),
                Err(Ok(refusal)) => refusal,
            },
        };
        // The jobs are one tenant's: its next ones are flushed apart at once,
        // before this isolation ends.
        for job in self.jobs {
            self.shared.isolate(&job.origin.tenant);
        }
        let units = events_of(self.jobs);
        if let [unit] = units[..] {
            refusals.push((unit, refusal));
            return Ok(Vec::new());
        }
        let pool = &self.shared.pool;
        match self.retrying(Some(&units), || isolate(pool, self.jobs, &units, self.deadline)).await {
            Ok((written, refused)) => {
                refusals.extend(refused);
                Ok(written)
            }
            Err(Err(e)) => Err(e),
            // `isolate` checks constraints statement by statement, so its
            // commit cannot refuse the data; were it to, nothing is written
            // and every event is refused with the reason.
            Err(Ok(refusal)) => {
                refusals.extend(units.iter().map(|&unit| (unit, refusal.clone())));
                Ok(Vec::new())
            }
        }
    }

    /// Runs `attempt` (a write of `units`, all of the batch when `None`)
    /// until it succeeds, the data is refused, or the deadline comes.
    async fn retrying<T, F: Future<Output = Result<T, Attempt>>>(
        &self,
        units: Option<&[Unit]>,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T, Result<Refusal, WriteError>> {
        let (jobs, deadline) = (self.jobs, self.deadline);
        let retry_on_deadlock = self.shared.retry_on_deadlock;
        let mut backoff = FIRST_BACKOFF;
        let mut conflicts = 0;
        loop {
            let error = match attempt().await {
                Ok(written) => return Ok(written),
                Err(error) => error,
            };
            // A pool that gave no connection, or one that stalled, is
            // retried as a lost connection is.
            let (kind, message) = match &error {
                Attempt::Pool(e) => (Kind::Connection, e.to_string()),
                Attempt::Database(e) => (sluice_postgres::classify(e), describe(e)),
                Attempt::Stalled => (Kind::Connection, STALLED.to_owned()),
            };
            match kind.action() {
                Action::Isolate => {
                    return Err(Ok(match &error {
                        Attempt::Database(e) => Refusal::of(e),
                        Attempt::Pool(_) | Attempt::Stalled => Refusal { sqlstate: String::new(), message },
                    }));
                }
                Action::Stop => return Err(Err(WriteError::Unusable(message))),
                Action::Retry if kind == Kind::Conflict && !retry_on_deadlock.allows(conflicts) => {
                    return Err(Err(WriteError::Unavailable(message)));
                }
                Action::Retry => conflicts += u32::from(kind == Kind::Conflict),
            }
            // Nobody waits any more, or the next try would end past the deadline.
            let abandoned = match units {
                Some(units) => units.iter().all(|&(j, _)| jobs[j].reply.is_closed()),
                None => jobs.iter().all(|job| job.reply.is_closed()),
            };
            let jitter = Duration::from_micros(u64::from(rand_u32()) % (backoff.as_micros() as u64 / 2 + 1));
            let wait = backoff / 2 + jitter;
            if abandoned || Instant::now() + wait >= deadline {
                return Err(Err(WriteError::Unavailable(message)));
            }
            crate::metrics::metrics().write_retried();
            let requests = request_ids(jobs);
            tracing::warn!(retry_in_ms = wait.as_millis() as u64, requests, "write failed, retrying: {message}");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Keeps the rows of refused events in their tenants' dead-letter tables,
/// each tenant within its bound; returns whether each refusal's rows were
/// kept (the refusal is reported either way).
async fn keep_dead_letters(pool: &Pool, jobs: &[Job], refusals: &[(Unit, Refusal)]) -> Vec<Kept> {
    // By origin: its letters, and the refusal each belongs to.
    let mut by_origin: Vec<(&Origin, Vec<DeadLetter>, Vec<usize>)> = Vec::new();
    for (i, &((j, event), ref refusal)) in refusals.iter().enumerate() {
        let job = &jobs[j];
        let letters: Vec<DeadLetter> = job
            .plans
            .iter()
            .flat_map(|p| {
                p.plan
                    .rows
                    .iter()
                    .enumerate()
                    .filter(|(_, row)| row.event == event)
                    .map(|(r, _)| DeadLetter::of(&p.plan, r, &p.upsert, &refusal.sqlstate, &refusal.message))
            })
            .collect();
        let index = match by_origin.iter().position(|(o, _, _)| std::ptr::eq(*o, &*job.origin)) {
            Some(index) => index,
            None => {
                by_origin.push((&job.origin, Vec::new(), Vec::new()));
                by_origin.len() - 1
            }
        };
        let (_, kept, owners) = &mut by_origin[index];
        owners.extend(std::iter::repeat_n(i, letters.len()));
        kept.extend(letters);
    }
    let keep = async {
        let mut client = pool.get().await.map_err(|e| e.to_string())?;
        let kept = async {
            let tx = client.transaction().await?;
            let mut all = Vec::new();
            for (origin, letters, _) in &by_origin {
                let known = origin.known_dead_letters();
                let max = origin.max_dead_letters;
                let (kept, count) =
                    dead_letters::keep(&*tx, &origin.schema, &origin.tenant, letters, max, known).await?;
                all.push((kept, count, known.is_none()));
            }
            tx.commit_checked().await?;
            Ok(all)
        }
        .await;
        if kept.is_err() {
            discard(client);
        }
        kept.map_err(|e| describe(&e))
    };
    let mut outcome = vec![Kept::Yes; refusals.len()];
    match keep.await {
        Ok(all) => {
            for ((origin, _, owners), (kept, count, recounted)) in by_origin.iter().zip(all) {
                origin.counted_dead_letters(count, recounted);
                let not_kept = kept.iter().filter(|k| !**k).count() as u64;
                if not_kept > 0 {
                    origin.rows_not_kept(not_kept);
                }
                for (&owner, kept) in owners.iter().zip(kept) {
                    if !kept {
                        outcome[owner] = Kept::Full;
                    }
                }
            }
        }
        Err(e) => {
            let requests = request_ids(jobs);
            tracing::error!(requests, "refused rows could not be kept as dead letters: {e}");
            outcome.fill(Kept::Failed);
        }
    }
    outcome
}

/// The ids of the requests whose rows a flush holds, for its log lines.
fn request_ids(jobs: &[Job]) -> String {
    let ids: Vec<&str> = jobs.iter().filter_map(|j| j.request_id.as_deref()).collect();
    ids.join(",")
}

/// The first wait between retries; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).unwrap_or_default();
    u32::from_ne_bytes(bytes)
}

enum Attempt {
    Pool(deadpool_postgres::PoolError),
    Database(tokio_postgres::Error),
    /// Still unanswered at the deadline: its connection was closed.
    Stalled,
}

const STALLED: &str = "the database did not answer before the request's deadline; the connection was closed";

impl From<tokio_postgres::Error> for Attempt {
    fn from(e: tokio_postgres::Error) -> Attempt {
        Attempt::Database(e)
    }
}

/// One transaction writing every row of the jobs; returns (job, plan, row)
/// of each row written.
async fn write_units(
    pool: &Pool,
    jobs: &[Job],
    rests: &Resting,
    deadline: Instant,
) -> Result<Vec<(usize, usize, usize)>, Attempt> {
    on_connection(pool, deadline, async |client| write_units_on(client, jobs, rests).await).await
}

/// Runs `work` on a pooled connection, cut at `deadline`. A connection
/// the work failed on, or that was cut, is closed rather than returned.
async fn on_connection<T>(
    pool: &Pool,
    deadline: Instant,
    work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, Attempt>,
) -> Result<T, Attempt> {
    let mut client = connect(pool).await?;
    let done = tokio::time::timeout_at(deadline, work(&mut client)).await.unwrap_or(Err(Attempt::Stalled));
    if done.is_err() {
        discard(client);
    }
    done
}

async fn write_units_on(
    client: &mut deadpool_postgres::Object,
    jobs: &[Job],
    rests: &Resting,
) -> Result<Vec<(usize, usize, usize)>, Attempt> {
    let mut copy = Some(rests);
    loop {
        let tx = client.transaction().await?;
        match write_rows(&tx, jobs, None, copy).await {
            Ok(written) => {
                faults::lose_connection(&*tx, "write-before-commit").await?;
                tx.commit_checked().await?;
                // Committed, but the answer lost: the outcome is unknown to the client.
                faults::lose_connection(&***client, "write-after-commit").await?;
                return Ok(written);
            }
            // Again, by upsert alone: it tells duplicates from new rows.
            Err(RowsError::CopyFailed) => {
                tx.rollback().await?;
                copy = None;
            }
            Err(RowsError::Database(e)) => return Err(e.into()),
        }
    }
}

async fn connect(pool: &Pool) -> Result<deadpool_postgres::Object, Attempt> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => Attempt::Database(e),
        other => Attempt::Pool(other),
    })
}

/// Finds the events the database refuses in a batch it refused whole, in
/// one transaction: the events are written in `PARTS` parts, each under a
/// savepoint; a refused part is rolled back to it and split again, depth
/// first, until a refused part is one event. What was written commits
/// together. Deferrable constraints are checked at once, so a refusal
/// always belongs to a part. With one bad event in N this writes about
/// 1.5 N rows (rows are written in order and a statement stops at the bad
/// one) in a few dozen statements and one commit; halving in separate
/// transactions took ~3 N rows and ~20 commits.
async fn isolate(
    pool: &Pool,
    jobs: &[Job],
    units: &[Unit],
    deadline: Instant,
) -> Result<(Vec<(usize, usize, usize)>, Vec<(Unit, Refusal)>), Attempt> {
    on_connection(pool, deadline, async |client| isolate_on(client, jobs, units).await).await
}

async fn isolate_on(
    client: &mut deadpool_postgres::Object,
    jobs: &[Job],
    units: &[Unit],
) -> Result<(Vec<(usize, usize, usize)>, Vec<(Unit, Refusal)>), Attempt> {
    let mut tx = client.transaction().await?;
    tx.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await?;
    let (mut written, mut refusals) = (Vec::new(), Vec::new());
    let mut pending: Vec<&[Unit]> = units.chunks(units.len().div_ceil(PARTS)).rev().collect();
    while let Some(part) = pending.pop() {
        let chosen: HashSet<Unit> = part.iter().copied().collect();
        let savepoint = tx.savepoint("part").await?;
        match write_rows(&savepoint, jobs, Some(&chosen), None).await {
            Ok(rows) => {
                savepoint.commit().await?;
                written.extend(rows);
            }
            Err(RowsError::Database(e)) if sluice_postgres::classify(&e).action() == Action::Isolate => {
                savepoint.rollback().await?;
                match part {
                    [unit] => refusals.push((*unit, Refusal::of(&e))),
                    _ => pending.extend(part.chunks(part.len().div_ceil(PARTS)).rev()),
                }
            }
            Err(RowsError::Database(e)) => return Err(e.into()),
            Err(RowsError::CopyFailed) => unreachable!("isolate writes without COPY"),
        }
    }
    tx.commit_checked().await?;
    Ok((written, refusals))
}

/// Sends one binary `COPY` stream ([`encode::copy_data`]) by `copy_sql`;
/// returns the rows written.
pub async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    copy_sql: &str,
    data: bytes::Bytes,
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::SinkExt;
    // Boxed, so that dropping it ends the COPY.
    let mut sink = Box::pin(tx.copy_in(copy_sql).await?);
    sink.send(data).await?;
    if faults::fires("write-copy-before-end") {
        // The data sent, the COPY is abandoned (CopyFail): the transaction is aborted.
        drop(sink);
        tx.batch_execute("SELECT").await?;
        return Ok(0);
    }
    sink.as_mut().finish().await
}

/// Whether the upsert may write what a `COPY` failed to: the `COPY` met a
/// key already there; or the table is one `COPY` cannot fill (row
/// security), or whose columns are not of the declared types, which the
/// upsert's casts bridge and binary `COPY` cannot (a data exception, class
/// 22; the upsert refuses values that are bad in themselves all the same).
/// Any other failure (a constraint, a deadlock, a lost connection) the
/// upsert would meet too, and is handled as such.
fn upsert_may_write(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::FEATURE_NOT_SUPPORTED || code.code().starts_with("22")
    })
}

/// Parts a refused batch (or part) is split into by [`isolate`].
const PARTS: usize = 8;

/// Why [`write_rows`] stopped.
enum RowsError {
    /// A `COPY` failed where the upsert may not: it met a key already
    /// there, or the table cannot be filled by `COPY`. The transaction is
    /// aborted; the statement rests from `COPY`.
    CopyFailed,
    Database(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for RowsError {
    fn from(e: tokio_postgres::Error) -> RowsError {
        RowsError::Database(e)
    }
}

/// Writes the rows of the `chosen` events (all when `None`) in `tx`, by
/// `COPY` where a plan allows it, `copy` (the statements resting from it)
/// is given and the statement is not resting, else by upsert.
async fn write_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    jobs: &[Job],
    chosen: Option<&HashSet<Unit>>,
    copy: Option<&Resting>,
) -> Result<Vec<(usize, usize, usize)>, RowsError> {
    // Plans of the same shape, from any job, share one statement.
    let mut groups: Vec<(&Upsert, Vec<(usize, usize)>)> = Vec::new();
    let mut by_sql: HashMap<&str, usize> = HashMap::new();
    for (j, job) in jobs.iter().enumerate() {
        for (p, plan) in job.plans.iter().enumerate() {
            let group = *by_sql.entry(plan.upsert.sql.as_str()).or_insert_with(|| {
                groups.push((&plan.upsert, Vec::new()));
                groups.len() - 1
            });
            groups[group].1.push((j, p));
        }
    }

    let mut written = Vec::new();
    for (upsert, members) in &groups {
        let origin: Vec<(usize, usize, usize)> = members
            .iter()
            .flat_map(|&(j, p)| {
                let rows = jobs[j].plans[p].plan.rows.iter().enumerate();
                rows.filter(move |(_, row)| chosen.is_none_or(|c| c.contains(&(j, row.event))))
                    .map(move |(r, _)| (j, p, r))
            })
            .collect();
        if origin.is_empty() {
            continue;
        }
        let values = |&(j, p, r): &(usize, usize, usize)| &jobs[j].plans[p].plan.rows[r].values[..];
        if let (Some(rests), Some(copy_sql)) = (copy, &upsert.copy_sql)
            && !rests.holds(copy_sql)
            && let Ok(data) = encode::copy_data(origin.iter().map(values))
        {
            faults::lose_connection(&**tx, "write-before-statement").await?;
            let copied = copy_in(tx, copy_sql, data.freeze()).await;
            faults::lose_connection(&**tx, "write-after-statement").await?;
            match copied {
                Ok(_) => {
                    crate::metrics::metrics().table_write("copy");
                    written.extend(origin);
                    continue;
                }
                Err(e) if upsert_may_write(&e) => {
                    let met_a_key = e.code() == Some(&SqlState::UNIQUE_VIOLATION);
                    crate::metrics::metrics().table_write(if met_a_key { "copy_met_a_key" } else { "copy_failed" });
                    rests.rest(copy_sql, COPY_REST);
                    return Err(RowsError::CopyFailed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        crate::metrics::metrics().table_write("upsert");
        let mut columns: Vec<ColumnArray> = upsert
            .param_types
            .iter()
            .map(|&param_type| ColumnArray { param_type, values: Vec::with_capacity(origin.len()) })
            .collect();
        for row in &origin {
            for (column, value) in columns.iter_mut().zip(values(row)) {
                column.values.push(value);
            }
        }
        let statement = tx.prepare_cached(&upsert.sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        faults::lose_connection(&**tx, "write-before-statement").await?;
        let rows = tx.query(&statement, &params).await?;
        faults::lose_connection(&**tx, "write-after-statement").await?;
        for row in rows {
            let position: i64 = row.get(0);
            written.push(origin[(position - 1) as usize]);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batcher over a pool that never connects (`take` writes nothing).
    fn batcher_of(batch_size: usize, batch_size_bytes: usize) -> Batcher {
        let settings = super::super::PgSettings::new(
            tokio_postgres::Config::new(),
            sluice_replication::tls::TlsSettings::new(sluice_replication::tls::SslMode::Disable, None),
            None,
        );
        let pool = super::super::pool(settings, 1, Duration::from_millis(10)).unwrap();
        let shared = Arc::new(Shared {
            pool,
            retry_on_deadlock: crate::config::RetryOnDeadlock::Always(true),
            rests: Resting::default(),
            isolated: Resting::default(),
            isolating: tokio::sync::Notify::new(),
        });
        let batch = BatchConfig { batch_size, batch_size_bytes, ..Default::default() };
        Batcher { shared, batch, pending: VecDeque::new(), pending_rows: 0, pending_bytes: 0 }
    }

    /// A job of `tenant` with `rows` rows of 10 bytes each; the receiver
    /// keeps its request waiting.
    fn job(tenant: &str, rows: usize) -> (Job, oneshot::Receiver<Result<JobResult, WriteError>>) {
        let (reply, answer) = oneshot::channel();
        let origin = Arc::new(Origin::new(tenant, tenant, 100));
        let deadline = Instant::now() + Duration::from_secs(10);
        (Job { plans: Vec::new(), rows, bytes: rows * 10, deadline, origin, request_id: None, reply }, answer)
    }

    /// Pushes jobs of `(tenant, rows)`; their answers are kept open.
    fn queue(batcher: &mut Batcher, jobs: &[(&str, usize)]) -> Vec<oneshot::Receiver<Result<JobResult, WriteError>>> {
        let mut linger = None;
        jobs.iter()
            .map(|(tenant, rows)| {
                let (job, answer) = job(tenant, *rows);
                batcher.push(job, &mut linger, Duration::ZERO);
                answer
            })
            .collect()
    }

    fn tenants(jobs: &[Job]) -> Vec<(&str, usize)> {
        jobs.iter().map(|j| (j.origin.tenant.as_str(), j.rows)).collect()
    }

    #[tokio::test]
    async fn a_flush_takes_jobs_oldest_first_up_to_the_limits() {
        let mut batcher = batcher_of(6, usize::MAX);
        let _answers = queue(&mut batcher, &[("a", 3), ("b", 3), ("a", 1), ("c", 9)]);
        let (isolated, jobs) = batcher.take(true, true).unwrap();
        assert!(!isolated);
        assert_eq!(tenants(&jobs), [("a", 3), ("b", 3)], "a third job would pass batch_size");
        // A job larger than the limit still goes, alone.
        let (_, jobs) = batcher.take(true, true).unwrap();
        assert_eq!(tenants(&jobs), [("a", 1)]);
        let (_, jobs) = batcher.take(true, true).unwrap();
        assert_eq!(tenants(&jobs), [("c", 9)]);
        assert_eq!((batcher.pending_rows, batcher.pending_bytes), (0, 0));
        assert!(batcher.take(true, true).is_none());

        // The byte limit counts as the row limit does.
        let mut batcher = batcher_of(usize::MAX, 30);
        let _answers = queue(&mut batcher, &[("a", 2), ("a", 2)]);
        assert_eq!(batcher.take(true, true).unwrap().1.len(), 1);
    }

    #[tokio::test]
    async fn an_isolated_tenant_is_flushed_apart_in_its_own_lane() {
        let mut batcher = batcher_of(100, usize::MAX);
        batcher.shared.isolate("bad");
        let _answers = queue(&mut batcher, &[("bad", 1), ("good", 1), ("other", 1), ("bad", 1), ("good", 1)]);
        // With no writer free, only the lane: the isolated tenant's jobs alone.
        let (isolated, jobs) = batcher.take(false, true).unwrap();
        assert!(isolated);
        assert_eq!(tenants(&jobs), [("bad", 1), ("bad", 1)]);
        let (isolated, jobs) = batcher.take(true, false).unwrap();
        assert!(!isolated);
        assert_eq!(tenants(&jobs), [("good", 1), ("other", 1), ("good", 1)], "never mixed with the isolated tenant's");

        // The lane busy and no writer free: nothing may go.
        let _answers = queue(&mut batcher, &[("bad", 1), ("good", 1)]);
        assert!(batcher.take(false, false).is_none());
        // A writer free: the others go; the isolated tenant's waits for its lane.
        assert_eq!(tenants(&batcher.take(true, false).unwrap().1), [("good", 1)]);
        assert!(batcher.take(true, false).is_none());
        assert_eq!(tenants(&batcher.take(true, true).unwrap().1), [("bad", 1)]);
    }

    #[tokio::test]
    async fn a_job_whose_request_was_answered_is_not_written() {
        let mut batcher = batcher_of(100, usize::MAX);
        let mut answers = queue(&mut batcher, &[("a", 1), ("a", 2), ("a", 3)]);
        // The second request timed out: its answer is gone.
        drop(answers.remove(1));
        let (_, jobs) = batcher.take(true, true).unwrap();
        assert_eq!(tenants(&jobs), [("a", 1), ("a", 3)]);
        assert_eq!(batcher.pending_rows, 0);
    }

    #[test]
    fn events_are_the_units_of_each_job_once_in_order() {
        use sluice_sdk::{Column, ColumnType, Conflict, Row, Table, UpsertPlan};
        let table = Table {
            name: "t".into(),
            columns: vec![Column::new("id", ColumnType::Text).not_null()],
            primary_key: vec!["id".into()],
            indexes: Vec::new(),
            template: false,
        };
        let upsert = Arc::new(Upsert::new("s", &table, &["id".into()], &Conflict::DoNothing).unwrap());
        let plan = |events: &[u32]| CheckedPlan {
            upsert: upsert.clone(),
            plan: UpsertPlan {
                table: "t".into(),
                template: None,
                columns: vec!["id".into()],
                conflict: Conflict::DoNothing,
                rows: events.iter().map(|&event| Row { event, values: Vec::new() }).collect(),
            },
        };
        let (mut first, _a) = job("a", 0);
        first.plans = vec![plan(&[2, 0, 2]), plan(&[1, 0])];
        let (mut second, _b) = job("b", 0);
        second.plans = vec![plan(&[5])];
        assert_eq!(events_of(&[first, second]), [(0, 0), (0, 1), (0, 2), (1, 5)]);
    }
}
