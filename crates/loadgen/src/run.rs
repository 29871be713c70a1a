//! Drives workers for a fixed time, closed-loop or paced, and tallies what
//! they saw.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
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
    /// Tally the answers in intervals of this long, by when they arrived.
    pub interval: Option<Duration>,
    /// Keep every request's answer, in order, per worker.
    pub outcomes: bool,
}

/// What came back in one interval of the run, by arrival.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    pub requests: u64,
    pub requests_ok: u64,
    pub events_acknowledged: u64,
    /// By [`answer`].
    pub answers: BTreeMap<String, u64>,
}

/// How a request was answered, for counting: the HTTP status (`200`,
/// `429`, `503`, …; a 200 whose events were not all inserted is still a
/// 200), or, when there was no answer, the failure (`timeout`, `connect`,
/// `transport`). The baseline's committed transactions count as `200`.
pub fn answer(result: &Result<u64, Failure>) -> String {
    match result {
        Ok(_) => "200".into(),
        Err(failure) => match failure.kind.strip_prefix("HTTP ") {
            Some(status) => status.to_owned(),
            // What `http::judge` says of a 200.
            None if matches!(failure.kind.as_str(), "not all inserted" | "bad response") => "200".into(),
            None => failure.kind.clone(),
        },
    }
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
    /// Requests by [`answer`].
    pub answers: BTreeMap<String, u64>,
    /// With `Plan::interval`: what arrived in each interval from the start.
    pub timeline: Vec<Bucket>,
    /// With `Plan::outcomes`: each worker's answers, in the order sent.
    pub outcomes: Vec<(usize, Vec<String>)>,
    /// When the run started.
    pub started_at: SystemTime,
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
            answers: BTreeMap::new(),
            timeline: Vec::new(),
            outcomes: Vec::new(),
            started_at: SystemTime::now(),
        }
    }

    /// Adds a request answered `since_start` into the run to the timeline
    /// and the worker's outcomes, as the plan asks.
    fn track(&mut self, worker: usize, attempt: &Attempt, since_start: Duration, plan: &Plan) {
        if let Some(interval) = plan.interval {
            let index = (since_start.as_secs_f64() / interval.as_secs_f64()) as usize;
            if self.timeline.len() <= index {
                self.timeline.resize(index + 1, Bucket::default());
            }
            let bucket = &mut self.timeline[index];
            bucket.requests += 1;
            if let Ok(events) = attempt.result {
                bucket.requests_ok += 1;
                bucket.events_acknowledged += events;
            }
            *bucket.answers.entry(answer(&attempt.result)).or_default() += 1;
        }
        if plan.outcomes {
            match self.outcomes.first_mut() {
                Some((_, answers)) => answers.push(answer(&attempt.result)),
                None => self.outcomes.push((worker, vec![answer(&attempt.result)])),
            }
        }
    }

    pub fn record(&mut self, attempt: Attempt, latency: Duration) {
        self.requests += 1;
        self.bytes_sent += attempt.bytes;
        *self.answers.entry(answer(&attempt.result)).or_default() += 1;
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
        for (answer, n) in other.answers {
            *self.answers.entry(answer).or_default() += n;
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), Bucket::default());
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            mine.requests += theirs.requests;
            mine.requests_ok += theirs.requests_ok;
            mine.events_acknowledged += theirs.events_acknowledged;
            for (answer, n) in theirs.answers {
                *mine.answers.entry(answer).or_default() += n;
            }
        }
        self.outcomes.extend(other.outcomes);
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
    run_counted(workers, plan, None).await
}

/// Running totals while a run goes on (for a progress bar).
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests that counted (a 200 with every event inserted).
    pub requests_ok: AtomicU64,
    pub events_acknowledged: AtomicU64,
}

impl Progress {
    fn add(&self, attempt: &Attempt) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(events) = attempt.result {
            self.requests_ok.fetch_add(1, Ordering::Relaxed);
            self.events_acknowledged.fetch_add(events, Ordering::Relaxed);
        }
    }
}

/// As [`run`], adding every answer to `progress` as it comes.
pub async fn run_counted<W: Worker>(workers: Vec<W>, plan: Plan, progress: Option<Arc<Progress>>) -> Stats {
    let started_at = SystemTime::now();
    let start = Instant::now();
    let deadline = start + plan.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(workers.len());
    for (w, mut worker) in workers.into_iter().enumerate() {
        let next = next.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::new();
            match plan.rate {
                None => {
                    while Instant::now() < deadline {
                        let attempt = worker.send().await;
                        if let Some(progress) = &progress {
                            progress.add(&attempt);
                        }
                        let latency = attempt.latency;
                        stats.track(w, &attempt, start.elapsed(), &plan);
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
                    if let Some(progress) = &progress {
                        progress.add(&attempt);
                    }
                    stats.track(w, &attempt, start.elapsed(), &plan);
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
    total.started_at = started_at;
    total.outcomes.sort_by_key(|(w, _)| *w);
    if let Some(rate) = plan.rate {
        let slots = (plan.duration.as_secs_f64() * rate).ceil() as u64;
        total.unsent = slots.saturating_sub(total.requests);
    }
    total
}

/// `10s`, `500ms`, `2m`, `1h`, `1.5` (seconds): the durations the load tool
/// and `sluice bench` take.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 10s or 500ms"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    fn attempt(result: Result<u64, Failure>) -> Attempt {
        Attempt { result, latency: Duration::from_millis(1), bytes: 10 }
    }

    #[test]
    fn answers_are_statuses_or_failures() {
        assert_eq!(answer(&Ok(5)), "200");
        assert_eq!(answer(&Err(Failure::new("HTTP 429", "busy"))), "429");
        assert_eq!(answer(&Err(Failure::new("not all inserted", ""))), "200");
        assert_eq!(answer(&Err(Failure::new("timeout", ""))), "timeout");
    }

    #[test]
    fn timelines_and_outcomes_merge() {
        let plan = Plan {
            duration: Duration::from_secs(3),
            rate: None,
            interval: Some(Duration::from_secs(1)),
            outcomes: true,
        };
        let mut a = Stats::new();
        a.track(1, &attempt(Ok(5)), Duration::from_millis(200), &plan);
        a.track(1, &attempt(Err(Failure::new("HTTP 503", ""))), Duration::from_millis(2500), &plan);
        let mut b = Stats::new();
        b.track(0, &attempt(Ok(5)), Duration::from_millis(900), &plan);
        a.merge(b);
        assert_eq!(a.timeline.len(), 3);
        assert_eq!((a.timeline[0].requests_ok, a.timeline[0].events_acknowledged), (2, 10));
        assert_eq!(a.timeline[1].requests, 0);
        assert_eq!(a.timeline[2].answers.get("503"), Some(&1));
        assert_eq!(a.outcomes, vec![(1, vec!["200".to_owned(), "503".to_owned()]), (0, vec!["200".to_owned()])]);
    }
}
