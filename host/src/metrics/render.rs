//! `/metrics` and `/status.json` as read: the recorded metrics with the
//! counters the service's state keeps (tenants, change streams, spool,
//! pools), and the per-second samples of those counters.

use super::{FloatGauge, HISTORY_SECONDS, Labels, Metrics, Point, Totals, metrics, round1};
use crate::ingest::Tenant;
use crate::state::App;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

impl Metrics {
    /// Every metric, in the OpenMetrics text format. Without
    /// `show_tenants`, only the service-wide series: none labelled with a
    /// tenant id (nor a component, which is named after a tenant).
    pub fn render(&self, app: &App, show_tenants: bool) -> String {
        let mut registry = Registry::with_prefix("sluice");
        self.register_recorded(&mut registry, show_tenants);
        if show_tenants {
            register_tenants(&mut registry, &tenants(app));
        }
        self.register_state(&mut registry, app, show_tenants);
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }

    fn register_recorded(&self, registry: &mut Registry, show_tenants: bool) {
        if show_tenants {
            registry.register(
                "rows",
                "Rows written, by tenant, table (a template's name for tables made from it) and outcome: \
                 inserted, duplicate (already there), dead_lettered (refused by the database, kept)",
                self.rows.clone(),
            );
        }
        registry.register("batch_rows", "Rows per writer flush (one transaction)", self.batch_rows.clone());
        registry.register_with_unit(
            "flush_duration",
            "Time of a writer flush, retries included",
            prometheus_client::registry::Unit::Seconds,
            self.flush_seconds.clone(),
        );
        registry.register(
            "write_retries",
            "Write attempts retried after a transient failure",
            self.write_retries.clone(),
        );
        registry.register(
            "table_writes",
            "A flush's writes of one table, by method: copy, upsert, or a COPY the database refused: \
             copy_met_a_key (a key already there) or copy_failed (a table COPY cannot fill: row security, columns \
             not of the declared types); the flush was then written again by upsert, and the table rests from COPY for 10 s",
            self.table_writes.clone(),
        );
        registry.register(
            "connections_cut",
            "HTTP connections the service closed or refused to hold a client off, by reason: header_timeout \
             (headers slower than [http] header_read_timeout_ms), idle (idle_timeout_ms), body_too_slow (a body \
             past body_read_timeout_ms or under min_body_bytes_per_second; answered 408), per_address \
             (max_connections_per_address; answered 503), evicted (waiting longest for a request when a new \
             connection arrived at [limits] max_connections)",
            self.connections_cut.clone(),
        );
        registry.register(
            "writer_queued_rows",
            "Rows handed to the writers and waiting for a flush, all tenants",
            self.writer_queued_rows.clone(),
        );
        if !show_tenants {
            return;
        }
        registry.register(
            "dead_letters_not_kept",
            "Rows the database refused that were not kept as dead letters because the tenant's dead letters \
             were at their bound ([limits] max_dead_letters), by tenant",
            self.dead_letters_not_kept.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Ingest requests being processed, by tenant",
            self.requests_in_flight.clone(),
        );
        registry.register_with_unit(
            "component_instantiate",
            "Time to instantiate a component for one call, by component",
            prometheus_client::registry::Unit::Seconds,
            self.instantiate_seconds.clone(),
        );
        registry.register("component_calls", "Component instances started, by component", self.component_calls.clone());
        registry.register(
            "component_failures",
            "Component calls that failed, by component and kind: trap, deadline (ran past its deadline), \
             memory (past its memory cap), busy (no instance slot came free)",
            self.component_failures.clone(),
        );
    }

    /// What is read from the host's state at scrape time.
    fn register_state(&self, registry: &mut Registry, app: &App, show_tenants: bool) {
        let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
            let g: Gauge = Gauge::default();
            g.set(value);
            registry.register(name, help, g);
        };
        gauge(
            registry,
            "in_flight_bytes_all",
            "Request bytes being processed now, all tenants",
            app.in_flight_bytes.load(Ordering::Relaxed) as i64,
        );
        gauge(
            registry,
            "resident_memory_bytes",
            "The process's resident memory",
            crate::memory::resident_bytes().unwrap_or(0) as i64,
        );
        gauge(registry, "memory_limit_bytes", "[limits] max_memory_bytes (0: no limit)", app.memory.limit() as i64);
        gauge(registry, "spool_bytes", "Bytes of requests kept in the spool", app.spool.bytes() as i64);
        gauge(registry, "spool_files", "Requests kept in the spool", app.spool.len() as i64);
        gauge(registry, "uptime_seconds", "Seconds since the process started", self.started.elapsed().as_secs() as i64);

        let pools = Family::<Labels, Gauge>::default();
        let pool = |name: String, status: deadpool_postgres::Status| {
            let of = |state: &'static str| vec![("pool", name.clone()), ("state", state.to_owned())];
            pools.get_or_create(&of("in_use")).set(status.size.saturating_sub(status.available) as i64);
            pools.get_or_create(&of("idle")).set(status.available as i64);
            pools.get_or_create(&of("waiting")).set(status.waiting as i64);
            pools.get_or_create(&of("max")).set(status.max_size as i64);
        };
        pool("service".into(), app.pool.status());
        for (id, tenant) in app.registry.snapshot().tenants.iter().filter(|_| show_tenants) {
            // Only tenants with a connection of their own have a pool of their own.
            if tenant.spec.database.as_ref().is_some_and(|d| d.is_configured()) {
                pool(format!("tenant:{id}"), tenant.destination.pool.status());
            }
        }
        registry.register(
            "db_pool_connections",
            "Database connections by pool (service, or tenant:ID for a tenant's own database) and state: \
             in_use, idle, waiting (tasks waiting for one), max",
            pools,
        );

        let sources = self.cdc_sources();
        let state = Family::<Labels, Gauge>::default();
        let failed = Family::<Labels, Gauge>::default();
        let lag_bytes = Family::<Labels, Gauge>::default();
        let lag_seconds = Family::<Labels, FloatGauge>::default();
        let transactions = Family::<Labels, Counter>::default();
        let changes = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        for (name, stats) in &sources {
            let labels = vec![("source", name.clone())];
            let owner = stats.state() == crate::cdc::stats::State::Owner;
            state.get_or_create(&labels).set(i64::from(owner));
            failed.get_or_create(&labels).set(i64::from(stats.state() == crate::cdc::stats::State::Failed));
            lag_bytes.get_or_create(&labels).set(stats.lag_bytes() as i64);
            lag_seconds.get_or_create(&labels).set(stats.lag_seconds());
            transactions.get_or_create(&labels).inc_by(stats.transactions.load(Ordering::Relaxed));
            changes.get_or_create(&labels).inc_by(stats.changes.load(Ordering::Relaxed));
            errors.get_or_create(&labels).inc_by(stats.handler_errors.load(Ordering::Relaxed));
        }
        registry.register("cdc_owner", "1 while this host owns the change stream's slot, else 0 (standby)", state);
        registry.register(
            "cdc_failed",
            "1 while the change stream is stopped by a failure retrying soon cannot mend (see /status.json for why)",
            failed,
        );
        registry.register(
            "cdc_slot_lag_bytes",
            "WAL the slot holds back: the source's WAL end minus the LSN confirmed",
            lag_bytes,
        );
        registry.register(
            "cdc_lag_seconds",
            "How far behind its source a change stream is; 0 when caught up",
            lag_seconds,
        );
        registry.register("cdc_transactions", "Source transactions applied, by source", transactions);
        registry.register("cdc_changes", "Row changes applied, by source", changes);
        registry.register("cdc_handler_errors", "Transactions the change handler failed or refused, by source", errors);
    }

    /// Takes one sample of every tenant's counters; the status page's
    /// rates are the differences between consecutive samples.
    pub fn sample(&self, app: &App) {
        // Whole milliseconds: a client parses them back exactly (for `since`).
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_millis() as f64 / 1000.0);
        let totals: BTreeMap<String, Totals> =
            tenants(app).iter().map(|t| (t.id().to_owned(), Totals::of(t))).collect();
        let mut history = self.history.lock().unwrap();
        let mut point = Point { t: now, events: BTreeMap::new(), errors: BTreeMap::new() };
        if let Some((at, last)) = &history.last {
            let seconds = (now - at).max(0.001);
            for (id, total) in &totals {
                let before = last.get(id).copied().unwrap_or_default();
                let rate = |now: u64, then: u64| round1(now.saturating_sub(then) as f64 / seconds);
                point.events.insert(id.clone(), rate(total.events(), before.events()));
                point.errors.insert(id.clone(), rate(total.errors + total.rejected, before.errors + before.rejected));
            }
            if history.points.len() == HISTORY_SECONDS {
                history.points.pop_front();
            }
            history.points.push_back(point);
        }
        history.last = Some((now, totals));
    }

    /// What `/status.json` answers: now, and the last minutes second by
    /// second (only the seconds after `since`, when given, so a page that
    /// polls fetches each second once).
    /// Without `show_tenants`, `tenants` is empty and the history's rates
    /// are summed under `all`.
    pub fn status(&self, app: &App, since: Option<f64>, show_tenants: bool) -> serde_json::Value {
        let history = self.history.lock().unwrap();
        let latest = history.points.back();
        let tenants: Vec<serde_json::Value> = tenants(app)
            .iter()
            .filter(|_| show_tenants)
            .map(|t| {
                let total = Totals::of(t);
                let rate = |m: Option<&BTreeMap<String, f64>>| m.and_then(|m| m.get(t.id())).copied().unwrap_or(0.0);
                serde_json::json!({
                    "id": t.id(),
                    "events_per_second": rate(latest.map(|p| &p.events)),
                    "errors_per_second": rate(latest.map(|p| &p.errors)),
                    "requests": total.requests,
                    "errors": total.errors,
                    "inserted": total.inserted,
                    "duplicates": total.duplicates,
                    "rejected": total.rejected,
                    "dead_lettered": total.dead_lettered,
                    "in_flight_bytes": t.stats.in_flight_bytes.load(Ordering::Relaxed),
                })
            })
            .collect();
        let cdc: Vec<serde_json::Value> = self
            .cdc_sources()
            .iter()
            .map(|(name, stats)| {
                serde_json::json!({
                    "name": name,
                    "state": stats.state().as_str(),
                    "reason": stats.reason(),
                    "lag_bytes": stats.lag_bytes(),
                    "lag_seconds": round1(stats.lag_seconds()),
                    "transactions": stats.transactions.load(Ordering::Relaxed),
                    "changes": stats.changes.load(Ordering::Relaxed),
                    "handler_errors": stats.handler_errors.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "uptime_seconds": self.started.elapsed().as_secs(),
            "tenants": tenants,
            "cdc": cdc,
            "spool": { "bytes": app.spool.bytes(), "files": app.spool.len() },
            "tenants_shown": show_tenants,
            "history": history
                .points
                .iter()
                .filter(|p| since.is_none_or(|since| p.t > since))
                .map(|p| if show_tenants { serde_json::json!(p) } else { serde_json::json!(p.summed()) })
                .collect::<Vec<_>>(),
        })
    }
}

/// The tenants taking requests: the configured ones, or the default one
/// while none is configured.
fn tenants(app: &App) -> Vec<Arc<Tenant>> {
    let snapshot = app.registry.snapshot();
    if snapshot.tenants.is_empty() {
        return vec![app.default_tenant.clone()];
    }
    let mut tenants: Vec<Arc<Tenant>> = snapshot.tenants.values().cloned().collect();
    tenants.sort_by(|a, b| a.id().cmp(b.id()));
    tenants
}

fn register_tenants(registry: &mut Registry, tenants: &[Arc<Tenant>]) {
    let events = Family::<Labels, Counter>::default();
    let dead_lettered = Family::<Labels, Counter>::default();
    let requests = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    let in_flight = Family::<Labels, Gauge>::default();
    for tenant in tenants {
        let id = || ("tenant", tenant.id().to_owned());
        let total = Totals::of(tenant);
        for (outcome, n) in
            [("accepted", total.inserted), ("duplicate", total.duplicates), ("rejected", total.rejected)]
        {
            events.get_or_create(&vec![id(), ("outcome", outcome.to_owned())]).inc_by(n);
        }
        dead_lettered.get_or_create(&vec![id()]).inc_by(total.dead_lettered);
        requests.get_or_create(&vec![id()]).inc_by(total.requests);
        errors.get_or_create(&vec![id()]).inc_by(total.errors);
        in_flight.get_or_create(&vec![id()]).set(tenant.stats.in_flight_bytes.load(Ordering::Relaxed) as i64);
    }
    registry.register(
        "events",
        "Events by tenant and outcome: accepted (a row newly written), duplicate (all its rows were there), \
         rejected (refused by the component, the row checks or the database)",
        events,
    );
    registry.register(
        "events_dead_lettered",
        "Rejected events the database refused whose rows were kept as dead letters, by tenant",
        dead_lettered,
    );
    registry.register("requests", "Ingest requests, by tenant", requests);
    registry.register("request_errors", "Ingest requests answered with a 5xx status, by tenant", errors);
    registry.register("in_flight_bytes", "Request bytes being processed now, by tenant", in_flight);
}

impl Totals {
    fn of(tenant: &Tenant) -> Totals {
        let s = &tenant.stats;
        Totals {
            requests: s.requests.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            inserted: s.events_inserted.load(Ordering::Relaxed),
            duplicates: s.events_duplicate.load(Ordering::Relaxed),
            rejected: s.events_rejected.load(Ordering::Relaxed),
            dead_lettered: s.events_dead_lettered.load(Ordering::Relaxed),
        }
    }
}

/// Samples every second while the process runs.
pub fn start_sampling(app: &Arc<App>) {
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { return };
            metrics().sample(&app);
        }
    });
}
