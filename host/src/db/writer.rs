//! Group commit: plans from many requests gather in one queue per
//! destination and are written by a few flushes at a time, each one
//! transaction with one set-based statement per plan shape.
//!
//! A flush starts when a writer is free and the batch is full, its linger
//! window has ended, or (linger 0, the default) at once. While writers are
//! busy the next batch keeps growing, so the busier the service, the larger
//! and cheaper its transactions.

use super::encode::ColumnArray;
use crate::config::BatchConfig;
use deadpool_postgres::Pool;
use sluice_sdk::UpsertPlan;
use sluice_sdk::sql::Upsert;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The database refused the data (SQLSTATE class 22 or 23).
    Rejected(String),
    /// The database could not be reached or failed; the write may be retried.
    Unavailable(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Rejected(m) => write!(f, "the database refused the rows: {m}"),
            WriteError::Unavailable(m) => write!(f, "the database is unavailable: {m}"),
        }
    }
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> WriteError {
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                let message = format!("{} (SQLSTATE {code})", db.message());
                if code.starts_with("22") || code.starts_with("23") {
                    WriteError::Rejected(message)
                } else {
                    WriteError::Unavailable(message)
                }
            }
            None => WriteError::Unavailable(e.to_string()),
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
    reply: oneshot::Sender<Result<Written, WriteError>>,
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
            Batcher { pool, batch, pending: VecDeque::new(), pending_rows: 0, pending_bytes: 0 }.run(queue).await;
            let _ = done_tx.send(());
        });
        (Writer { jobs }, done)
    }

    /// Writes the plans and answers once they are committed.
    pub async fn write(&self, plans: Vec<CheckedPlan>) -> Result<Written, WriteError> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let rows = plans.iter().map(|p| p.plan.rows.len()).sum();
        let bytes = plans
            .iter()
            .flat_map(|p| &p.plan.rows)
            .map(|r| r.values.iter().map(|v| v.wire_size() + 4).sum::<usize>())
            .sum();
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { plans, rows, bytes, reply })
            .await
            .map_err(|_| WriteError::Unavailable("the writer has stopped".into()))?;
        answer.await.unwrap_or_else(|_| Err(WriteError::Unavailable("the writer stopped before answering".into())))
    }
}

struct Batcher {
    pool: Pool,
    batch: BatchConfig,
    pending: VecDeque<Job>,
    pending_rows: usize,
    pending_bytes: usize,
}

impl Batcher {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let linger = Duration::from_millis(self.batch.batch_timeout_ms);
        let mut flushing = JoinSet::new();
        let mut linger_ends: Option<Instant> = None;
        let mut closed = false;
        loop {
            while let Ok(job) = queue.try_recv() {
                self.push(job, &mut linger_ends, linger);
            }
            while flushing.len() < self.batch.writers && !self.pending.is_empty() {
                let full = self.pending_rows >= self.batch.batch_size || self.pending_bytes >= self.batch.batch_size_bytes;
                let due = linger.is_zero() || closed || linger_ends.is_some_and(|t| t <= Instant::now());
                if !(full || due) {
                    break;
                }
                let jobs = self.take();
                linger_ends = (!self.pending.is_empty()).then(|| Instant::now() + linger);
                flushing.spawn(flush(self.pool.clone(), jobs));
            }
            if closed && self.pending.is_empty() && flushing.is_empty() {
                return;
            }
            let can_flush = flushing.len() < self.batch.writers;
            tokio::select! {
                job = queue.recv(), if !closed => match job {
                    Some(job) => self.push(job, &mut linger_ends, linger),
                    None => closed = true,
                },
                Some(_) = flushing.join_next(), if !flushing.is_empty() => {}
                _ = tokio::time::sleep_until(linger_ends.unwrap_or_else(Instant::now)), if can_flush && linger_ends.is_some() => {}
            }
        }
    }

    fn push(&mut self, job: Job, linger_ends: &mut Option<Instant>, linger: Duration) {
        if self.pending.is_empty() {
            *linger_ends = Some(Instant::now() + linger);
        }
        self.pending_rows += job.rows;
        self.pending_bytes += job.bytes;
        self.pending.push_back(job);
    }

    /// Takes jobs for one flush: at least one, then while under the limits.
    fn take(&mut self) -> Vec<Job> {
        let mut jobs = Vec::new();
        let (mut rows, mut bytes) = (0, 0);
        while let Some(job) = self.pending.front() {
            if !jobs.is_empty() && (rows + job.rows > self.batch.batch_size || bytes + job.bytes > self.batch.batch_size_bytes) {
                break;
            }
            let job = self.pending.pop_front().unwrap();
            rows += job.rows;
            bytes += job.bytes;
            self.pending_rows -= job.rows;
            self.pending_bytes -= job.bytes;
            jobs.push(job);
        }
        jobs
    }
}

/// Writes the jobs in one transaction. When that fails and there was more
/// than one job, each is tried alone so one bad request fails only itself.
async fn flush(pool: Pool, jobs: Vec<Job>) {
    let result = write_batch(&pool, &jobs).await;
    match result {
        Ok(written) => {
            for (job, written) in jobs.into_iter().zip(written) {
                let _ = job.reply.send(Ok(written));
            }
        }
        Err(_) if jobs.len() > 1 => {
            for job in jobs {
                let result = write_batch(&pool, std::slice::from_ref(&job)).await;
                let _ = job.reply.send(result.map(|mut w| w.remove(0)));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn write_batch(pool: &Pool, jobs: &[Job]) -> Result<Vec<Written>, WriteError> {
    let mut written: Vec<Written> =
        jobs.iter().map(|j| j.plans.iter().map(|p| vec![false; p.plan.rows.len()]).collect()).collect();

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

    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    for (upsert, members) in &groups {
        let total: usize = members.iter().map(|&(j, p)| jobs[j].plans[p].plan.rows.len()).sum();
        let mut columns: Vec<ColumnArray> = upsert
            .param_types
            .iter()
            .map(|&param_type| ColumnArray { param_type, values: Vec::with_capacity(total) })
            .collect();
        let mut origin = Vec::with_capacity(total);
        for &(j, p) in members {
            for (r, row) in jobs[j].plans[p].plan.rows.iter().enumerate() {
                for (column, value) in columns.iter_mut().zip(&row.values) {
                    column.values.push(value);
                }
                origin.push((j, p, r));
            }
        }
        let statement = tx.prepare_cached(&upsert.sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        for row in tx.query(&statement, &params).await? {
            let position: i64 = row.get(0);
            let (j, p, r) = origin[(position - 1) as usize];
            written[j][p][r] = true;
        }
    }
    tx.commit().await?;
    Ok(written)
}
