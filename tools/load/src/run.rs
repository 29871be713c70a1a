//! Drives workers for a fixed time, closed-loop or paced, and tallies what
//! they saw.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Error bodies kept for the report.
const MAX_SAMPLES: usize = 5;
/// Longest error text kept, in bytes.
const MAX_SAMPLE_BYTES: usize = 600;

/// What one request came to.
pub struct Attempt {
    /// Events acknowledged, or why the request does not count.
    pub result: Result<u64, Failure>,
    /// Time the request took as the worker measured it (the HTTP exchange,
    /// or the transaction).
    pub latency: Duration,
    /// Body bytes sent.
    pub bytes: u64,
}

pub struct Failure {
    /// A short class for counting: `HTTP 503`, `connect`, `partial`…
    pub kind: String,
    /// Details, such as the response body.
    pub detail: String,
}

impl Failure {
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Failure {
        Failure { kind: kind.into(), detail: detail.into() }
    }
}

/// One connection's worth of load.
pub trait Worker: Send + 'static {
    /// Sends one request of fresh events and waits for its answer.
    fn send(&mut self) -> impl Future<Output = Attempt> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub duration: Duration,
    /// Requests a second over all workers; `None` is closed-loop.
    pub rate: Option<f64>,
}

pub struct Stats {
    pub requests: u64,
    pub requests_ok: u64,
    pub events_acknowledged: u64,
    pub bytes_sent: u64,
    /// Microseconds, of acknowledged requests only.
    pub latency: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    /// The first error of each kind: its kind, and `kind: details`.
    pub error_samples: Vec<(String, String)>,
    /// Paced runs: requests whose slot came before the end but that no
    /// worker was free to send in time.
    pub unsent: u64,
    pub elapsed: Duration,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests: 0,
            requests_ok: 0,
            events_acknowledged: 0,
            bytes_sent: 0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            errors: BTreeMap::new(),
            error_samples: Vec::new(),
            unsent: 0,
            elapsed: Duration::ZERO,
        }
    }

    pub fn record(&mut self, attempt: Attempt, latency: Duration) {
        self.requests += 1;
        self.bytes_sent += attempt.bytes;
        match attempt.result {
            Ok(events) => {
                self.requests_ok += 1;
                self.events_acknowledged += events;
                self.latency.saturating_record((latency.as_micros() as u64).max(1));
            }
            Err(failure) => {
                // Keep the first of each kind.
                if !self.errors.contains_key(&failure.kind) && self.error_samples.len() < MAX_SAMPLES {
                    let detail = failure.detail.trim();
                    let detail = if detail.is_empty() { "(no details)" } else { detail };
                    let mut sample = format!("{}: {detail}", failure.kind);
                    truncate(&mut sample, MAX_SAMPLE_BYTES);
                    self.error_samples.push((failure.kind.clone(), sample));
                }
                *self.errors.entry(failure.kind).or_default() += 1;
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        self.requests += other.requests;
        self.requests_ok += other.requests_ok;
        self.events_acknowledged += other.events_acknowledged;
        self.bytes_sent += other.bytes_sent;
        self.latency.add(&other.latency).expect("histograms with the same bounds");
        for (kind, sample) in other.error_samples {
            if !self.errors.contains_key(&kind) && self.error_samples.len() < MAX_SAMPLES {
                self.error_samples.push((kind, sample));
            }
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// Runs the workers for `plan.duration`.
///
/// Closed-loop: each worker sends back to back until the time is up, and
/// latency is what the worker measured.
///
/// Paced: request `i` is due at `start + i / rate`; a free worker takes the
/// next slot, waits for it, and sends. Latency runs from the slot's due time
/// to the answer, so a server (or a pool of workers) that falls behind shows
/// it as latency rather than as a slower schedule. Slots still unsent when
/// the time is up are counted as `unsent`.
pub async fn run<W: Worker>(workers: Vec<W>, plan: Plan) -> Stats {
    let start = Instant::now();
    let deadline = start + plan.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::new();
            match plan.rate {
                None => {
                    while Instant::now() < deadline {
                        let attempt = worker.send().await;
                        let latency = attempt.latency;
                        stats.record(attempt, latency);
                    }
                }
                Some(rate) => loop {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let slot = next.fetch_add(1, Ordering::Relaxed);
                    let due = start + Duration::from_secs_f64(slot as f64 / rate);
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    let attempt = worker.send().await;
                    stats.record(attempt, due.elapsed());
                },
            }
            stats
        }));
    }
    let mut total = Stats::new();
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(e) => {
                *total.errors.entry("worker panicked".into()).or_default() += 1;
                total.error_samples.push(("worker panicked".into(), format!("worker panicked: {e}")));
            }
        }
    }
    total.elapsed = start.elapsed();
    if let Some(rate) = plan.rate {
        let slots = (plan.duration.as_secs_f64() * rate).ceil() as u64;
        total.unsent = slots.saturating_sub(total.requests);
    }
    total
}
