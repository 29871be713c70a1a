//! What a change stream's runner reports while it runs: its state,
//! counters and positions, and its bootstrap's progress, all atomics read
//! by metrics and the CLI.

use sluice_replication::{Lsn, ReplicationStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};

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
    /// Stopped by a failure that retrying soon cannot mend (a privilege
    /// revoked, an object gone, a login refused): tried again every
    /// `failed_retry_ms`; [`Stats::reason`] says why.
    Failed = 4,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Standby => "standby",
            State::Owner => "owner",
            State::Stopped => "stopped",
            State::Failed => "failed",
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
    pub bootstrap: Progress,
    /// A [`State`] as u8.
    state: AtomicU8,
    /// The last LSN confirmed to the source (the slot's `confirmed_flush_lsn` follows).
    pub confirmed_lsn: AtomicU64,
    /// The source's WAL end, as of its last message or keepalive.
    pub server_wal_end: AtomicU64,
    /// Commit time (µs since the Unix epoch) the lag in seconds counts
    /// from: the last applied transaction's, or the first pending one's
    /// after an idle spell. 0: caught up.
    pub(super) behind_since: AtomicI64,
    /// Why the source is [`State::Failed`].
    reason: std::sync::Mutex<Option<String>>,
}

impl Stats {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Standby,
            2 => State::Owner,
            3 => State::Stopped,
            4 => State::Failed,
            _ => State::Starting,
        }
    }

    /// Why the source is [`State::Failed`]; `None` in any other state.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap().clone()
    }

    /// A failed source keeps its state and reason while it tries again
    /// (connecting, taking the lock), until it streams ([`Stats::streaming`])
    /// or stands by or stops.
    pub(super) fn set_state(&self, state: State) {
        let mut reason = self.reason.lock().unwrap();
        if matches!(state, State::Starting | State::Owner) && reason.is_some() {
            return;
        }
        *reason = None;
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The owner's stream has started: whatever failed is mended.
    pub(super) fn streaming(&self) {
        *self.reason.lock().unwrap() = None;
        self.state.store(State::Owner as u8, Ordering::Relaxed);
    }

    /// Stopped by a failure retrying soon cannot mend.
    pub(super) fn fail(&self, why: String) {
        *self.reason.lock().unwrap() = Some(why);
        self.state.store(State::Failed as u8, Ordering::Relaxed);
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
    pub(super) fn behind(&self, commit_time: i64) {
        let _ = self.behind_since.compare_exchange(0, commit_time.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A transaction committed at `commit_time` is applied.
    pub(super) fn applied(&self, commit_time: i64) {
        if self.behind_since.load(Ordering::Relaxed) != 0 {
            self.behind_since.store(commit_time.max(1), Ordering::Relaxed);
        }
    }

    /// Records the stream's positions; `caught_up` when the server has
    /// nothing more to send and everything it sent is confirmed.
    pub(super) fn positions(&self, stream: &ReplicationStream, wal_end: Lsn, caught_up: bool) {
        self.server_wal_end.fetch_max(wal_end.0.max(stream.server_wal_end().0), Ordering::Relaxed);
        self.confirmed_lsn.fetch_max(stream.confirmed_lsn().0, Ordering::Relaxed);
        if caught_up {
            self.behind_since.store(0, Ordering::Relaxed);
        }
    }
}

/// A bootstrap's progress, readable while it runs (the CLI's progress bar,
/// metrics).
#[derive(Debug, Default)]
pub struct Progress {
    pub running: AtomicBool,
    pub tables_total: AtomicU64,
    pub tables_done: AtomicU64,
    /// Rows handed to the component (committed only when the bootstrap completes).
    pub rows_done: AtomicU64,
    /// The planner's estimate of all the rows (`pg_class.reltuples`).
    pub rows_estimate: AtomicU64,
    /// The consistent point of the last bootstrap this process completed (0: none).
    pub completed_lsn: AtomicU64,
}
