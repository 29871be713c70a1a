//! Prometheus metrics (`GET /metrics`, OpenMetrics text) and the
//! per-second history the status page draws (`GET /status.json`).
//!
//! Counters the host already keeps (per tenant, per change stream, the
//! spool, the pools) are read when scraped; what only exists as an event
//! (a flush, an instantiation, a trap) is recorded here as it happens.
//! Labels are tenant ids, table and component names and source names: all
//! bounded by the configuration, never taken from request data.
//!
//! One process-wide instance: the writer and the runtime record into it
//! without the HTTP state being threaded down to them. What the service's
//! state adds when read is in `render`, above that state.

use crate::cdc::stats::Stats as CdcStats;
pub mod render;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Seconds of per-second samples kept for the status page.
pub const HISTORY_SECONDS: usize = 600;

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

pub struct Metrics {
    started: Instant,
    /// Rows by tenant, table and outcome (`inserted`, `duplicate`, `dead_lettered`).
    rows: Family<Labels, Counter>,
    batch_rows: Histogram,
    flush_seconds: Histogram,
    write_retries: Counter,
    /// A flush's writes of one table, by how: `copy`, `upsert`, or a COPY
    /// refused where the upsert may not be (`copy_met_a_key`,
    /// `copy_failed`), which was redone by upsert.
    table_writes: Family<Labels, Counter>,
    /// Rows handed to writers and not yet taken into a flush.
    writer_queued_rows: Gauge,
    requests_in_flight: Family<Labels, Gauge>,
    instantiate_seconds: HistogramFamily,
    component_calls: Family<Labels, Counter>,
    /// By component and kind: `trap`, `deadline`, `memory`, `busy`.
    component_failures: Family<Labels, Counter>,
    cdc: Mutex<Vec<(String, Arc<CdcStats>)>>,
    history: Mutex<History>,
    /// Connections the service cut or refused, by reason (see `listener.rs`).
    connections_cut: Family<Labels, Counter>,
    /// Refused rows not kept as dead letters (the tenant's were at their bound), by tenant.
    dead_letters_not_kept: Family<Labels, Counter>,
}

fn instantiate_histogram() -> Histogram {
    // 50 µs .. ~0.4 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 14))
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            rows: Family::default(),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            // 1 ms .. ~16 s
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            write_retries: Counter::default(),
            table_writes: Family::default(),
            writer_queued_rows: Gauge::default(),
            requests_in_flight: Family::default(),
            instantiate_seconds: Family::new_with_constructor(instantiate_histogram),
            component_calls: Family::default(),
            component_failures: Family::default(),
            cdc: Mutex::default(),
            history: Mutex::default(),
            connections_cut: Family::default(),
            dead_letters_not_kept: Family::default(),
        }
    }

    /// Rows of one request's plans, by the table they went to, once written.
    pub fn rows_written(&self, tenant: &str, table: &str, inserted: u64, duplicate: u64, dead_lettered: u64) {
        for (outcome, n) in [("inserted", inserted), ("duplicate", duplicate), ("dead_lettered", dead_lettered)] {
            if n > 0 {
                let labels =
                    vec![("tenant", tenant.to_owned()), ("table", table.to_owned()), ("outcome", outcome.into())];
                self.rows.get_or_create(&labels).inc_by(n);
            }
        }
    }

    /// A connection was cut or refused: `header_timeout`, `idle`,
    /// `body_too_slow`, `per_address` or `evicted`.
    pub fn connection_cut(&self, reason: &'static str) {
        self.connections_cut.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    /// `rows` refused rows of `tenant` were not kept: its dead letters are at their bound.
    pub fn dead_letters_not_kept(&self, tenant: &str, rows: u64) {
        self.dead_letters_not_kept.get_or_create(&vec![("tenant", tenant.to_owned())]).inc_by(rows);
    }

    /// A writer flush ended (committed or not) after `elapsed`.
    pub fn flushed(&self, rows: usize, elapsed: Duration) {
        self.batch_rows.observe(rows as f64);
        self.flush_seconds.observe(elapsed.as_secs_f64());
    }

    /// A flush wrote one table's rows `how`.
    pub fn table_write(&self, how: &'static str) {
        self.table_writes.get_or_create(&vec![("method", how.to_owned())]).inc();
    }

    pub fn write_retried(&self) {
        self.write_retries.inc();
    }

    pub fn rows_queued(&self, rows: usize) {
        self.writer_queued_rows.inc_by(rows as i64);
    }

    pub fn rows_dequeued(&self, rows: usize) {
        self.writer_queued_rows.dec_by(rows as i64);
    }

    /// Counts a request of `tenant` as in flight until the guard drops.
    pub fn request_started(&self, tenant: &str) -> InFlightRequest {
        let gauge = self.requests_in_flight.get_or_create_owned(&vec![("tenant", tenant.to_owned())]);
        gauge.inc();
        InFlightRequest(gauge)
    }

    pub fn instantiated(&self, component: &str, elapsed: Duration) {
        let labels = vec![("component", component.to_owned())];
        self.instantiate_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
        self.component_calls.get_or_create(&labels).inc();
    }

    /// A component call failed; `kind` is `trap`, `deadline`, `memory` or `busy`.
    pub fn component_failed(&self, component: &str, kind: &'static str) {
        let labels = vec![("component", component.to_owned()), ("kind", kind.to_owned())];
        self.component_failures.get_or_create(&labels).inc();
    }

    /// A change stream to report on.
    pub fn add_cdc_source(&self, name: &str, stats: Arc<CdcStats>) {
        self.cdc.lock().unwrap().push((name.to_owned(), stats));
    }

    /// The change streams and their counters.
    pub fn cdc_sources(&self) -> Vec<(String, Arc<CdcStats>)> {
        self.cdc.lock().unwrap().clone()
    }
}

/// Ends a request's count in `sluice_requests_in_flight` when dropped.
pub struct InFlightRequest(Gauge);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A tenant's counters at one moment.
#[derive(Clone, Copy, Default)]
struct Totals {
    requests: u64,
    errors: u64,
    inserted: u64,
    duplicates: u64,
    rejected: u64,
    dead_lettered: u64,
}

impl Totals {
    fn events(&self) -> u64 {
        self.inserted + self.duplicates + self.rejected
    }
}

/// One second of the status page's chart.
#[derive(Serialize)]
struct Point {
    /// Seconds since the Unix epoch.
    t: f64,
    /// Events per second by tenant.
    events: BTreeMap<String, f64>,
    /// Rejected events and 5xx answers per second by tenant.
    errors: BTreeMap<String, f64>,
}

#[derive(Default)]
struct History {
    points: VecDeque<Point>,
    last: Option<(f64, BTreeMap<String, Totals>)>,
}

impl Point {
    /// The point with its rates summed over tenants, under `all`.
    fn summed(&self) -> Point {
        let all = |m: &BTreeMap<String, f64>| BTreeMap::from([("all".to_owned(), round1(m.values().sum()))]);
        Point { t: self.t, events: all(&self.events), errors: all(&self.errors) }
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// `[metrics]`: who may read `/metrics` and `/status.json`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Require the admin token (`Authorization: Bearer …`) for `/metrics`
    /// and `/status.json`. Off by default, as Prometheus exporters are;
    /// then whoever sends the admin token sees every series, and others
    /// see no tenant ids unless `show_tenants` is set.
    pub require_admin_token: bool,
    /// List tenant ids (and their series) to whoever asks, token or not.
    /// Off by default: without the admin token, `/metrics` has only the
    /// service-wide series and `/status.json` no tenants.
    pub show_tenants: bool,
}

/// `[log]`: the format and level of the service's logs (stderr).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (the default) or `json`, one object per line;
    /// `SLUICE_LOG_FORMAT` wins over it.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,sluice::db=debug`;
    /// `SLUICE_LOG` or `RUST_LOG` win over it. Default `info`.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(format: String) -> Result<LogFormat, String> {
        match format.as_str() {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log.format must be \"human\" or \"json\", not {other:?}")),
        }
    }
}
