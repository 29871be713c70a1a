//! The results, as text for people or one JSON line for scripts.

use crate::run::{Plan, Stats};
use serde_json::json;

pub struct Setup {
    /// Who reports: `sluice-load`, `sluice bench`.
    pub program: &'static str,
    pub mode: &'static str,
    /// The URL, or the database and schema.
    pub target: String,
    pub body: &'static str,
    pub events_per_request: u32,
    pub concurrency: u32,
    pub plan: Plan,
    /// The table written and its rows after the run, when it was truncated
    /// first.
    pub rows_in_table: Option<(String, i64)>,
    /// Mode `query`: the SQL. Its requests are queries, and what they
    /// acknowledged are rows returned.
    pub sql: Option<String>,
}

struct Figures {
    elapsed_s: f64,
    requests_per_s: f64,
    events_per_s: f64,
    mib_per_s: f64,
    /// p50, p90, p99, max, mean in ms (zero when nothing was acknowledged).
    latency_ms: [f64; 5],
}

fn figures(stats: &Stats) -> Figures {
    let elapsed_s = stats.elapsed.as_secs_f64().max(1e-9);
    let h = &stats.latency;
    let ms = |micros: u64| micros as f64 / 1000.0;
    let latency_ms = if h.is_empty() {
        [0.0; 5]
    } else {
        [
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.90)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            h.mean() / 1000.0,
        ]
    };
    Figures {
        elapsed_s,
        requests_per_s: stats.requests_ok as f64 / elapsed_s,
        events_per_s: stats.events_acknowledged as f64 / elapsed_s,
        mib_per_s: stats.bytes_sent as f64 / elapsed_s / (1024.0 * 1024.0),
        latency_ms,
    }
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

pub fn print(setup: &Setup, stats: &Stats, json: bool) {
    let f = figures(stats);
    if json {
        let [p50, p90, p99, max, mean] = f.latency_ms.map(|x| round(x, 3));
        let mut line = json!({
            "mode": setup.mode,
            "target": setup.target,
            "body": setup.body,
            "events_per_request": setup.events_per_request,
            "concurrency": setup.concurrency,
            "duration_s": setup.plan.duration.as_secs_f64(),
            "rate": setup.plan.rate,
            "elapsed_s": round(f.elapsed_s, 3),
            "requests": stats.requests,
            "requests_ok": stats.requests_ok,
            "events_acknowledged": stats.events_acknowledged,
            "requests_per_s": round(f.requests_per_s, 2),
            "events_per_s": round(f.events_per_s, 1),
            "mib_per_s": round(f.mib_per_s, 2),
            "latency_ms": { "p50": p50, "p90": p90, "p99": p99, "max": max, "mean": mean },
            "errors": stats.error_count(),
            "errors_by_kind": stats.errors,
            "error_samples": stats.error_samples.iter().map(|(_, sample)| sample).collect::<Vec<_>>(),
            "unsent": setup.plan.rate.map(|_| stats.unsent),
            "rows_in_table": setup.rows_in_table.as_ref().map(|(_, rows)| rows),
            "answers": stats.answers,
            "started_at_unix": round(unix(stats.started_at), 3),
        });
        if let Some((table, _)) = &setup.rows_in_table {
            line["table"] = table.as_str().into();
        }
        if let Some(interval) = setup.plan.interval {
            line["timeline"] = json!({
                "interval_s": interval.as_secs_f64(),
                "buckets": stats.timeline.iter().enumerate().map(|(i, b)| json!({
                    "t": round(i as f64 * interval.as_secs_f64(), 3),
                    "requests": b.requests,
                    "requests_ok": b.requests_ok,
                    "events_acknowledged": b.events_acknowledged,
                    "events_per_s": round(b.events_acknowledged as f64 / interval.as_secs_f64(), 1),
                    "answers": b.answers,
                })).collect::<Vec<_>>(),
            });
        }
        if let Some(sql) = &setup.sql {
            line["sql"] = sql.as_str().into();
            line["queries_per_s"] = line["requests_per_s"].clone();
            line["rows_returned"] = stats.events_acknowledged.into();
        }
        println!("{line}");
        return;
    }
    let pacing = match setup.plan.rate {
        Some(rate) => format!("paced at {rate} req/s (latency from due time)"),
        None => "back to back".to_owned(),
    };
    println!("{} {} → {}", setup.program, setup.mode, setup.target);
    if let Some(sql) = &setup.sql {
        let pacing = pacing.replace("req/s", "queries/s");
        println!("  sql         {sql}");
        println!("  setup       concurrency {}, {:?}, {pacing}", setup.concurrency, setup.plan.duration);
        println!(
            "  queries     {} sent, {} answered in {:.2} s ({:.1} queries/s)",
            stats.requests, stats.requests_ok, f.elapsed_s, f.requests_per_s
        );
        println!("  rows        {} returned", stats.events_acknowledged);
    } else {
        println!(
            "  setup       {} events/request, concurrency {}, {:?}, {}, {}",
            setup.events_per_request, setup.concurrency, setup.plan.duration, setup.body, pacing
        );
        println!(
            "  requests    {} sent, {} acknowledged in {:.2} s ({:.1} req/s, {:.1} MiB/s sent)",
            stats.requests, stats.requests_ok, f.elapsed_s, f.requests_per_s, f.mib_per_s
        );
        println!("  events      {} acknowledged, {:.0} events/s", stats.events_acknowledged, f.events_per_s);
    }
    let [p50, p90, p99, max, mean] = f.latency_ms;
    println!("  latency ms  p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  max {max:.2}  mean {mean:.2}");
    if setup.plan.rate.is_some() {
        println!("  unsent      {} (slots no worker could take before the end)", stats.unsent);
    }
    if let Some((table, rows)) = &setup.rows_in_table {
        println!("  table       {rows} rows in {table} after the run");
    }
    if setup.sql.is_none() {
        let answers: Vec<String> = stats.answers.iter().map(|(a, n)| format!("{n} × {a}")).collect();
        println!("  answers     {}", answers.join(", "));
    }
    println!("  errors      {}", stats.error_count());
    for (kind, n) in &stats.errors {
        println!("    {n:>8} × {kind}");
    }
    for (_, sample) in &stats.error_samples {
        println!("    e.g. {sample}");
    }
    if let Some(interval) = setup.plan.interval {
        println!("  timeline    (by arrival; events acknowledged a second, then answers)");
        for (i, b) in stats.timeline.iter().enumerate() {
            let answers: Vec<String> = b.answers.iter().map(|(a, n)| format!("{n} × {a}")).collect();
            println!(
                "    {:>8.2} s  {:>10.0} events/s  {}",
                i as f64 * interval.as_secs_f64(),
                b.events_acknowledged as f64 / interval.as_secs_f64(),
                answers.join(", ")
            );
        }
    }
}

fn unix(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
