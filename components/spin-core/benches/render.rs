//! A 1,000-event request's work before the database, native builds of the
//! same code: the Spin path (normalize, check, render every column as a
//! `text[]` parameter) against the host's (normalize, render the upsert,
//! encode every column as a binary array parameter, as its writer does).
//!
//! `cargo bench -p sluice-spin-core --bench render`

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use sluice_postgres::encode::{ColumnArray, array_type};
use sluice_sdk::sql::Upsert;
use sluice_spin_core::{Config, Incoming};
use std::hint::black_box;
use std::time::Instant;
use tokio_postgres::types::ToSql;

const EVENT: &str = r#"{"eventType":"order.completed","occurredAt":"2026-05-26T14:21:08.493Z","source":"billing-service","customerExternalId":"acct_8K2zRq","idempotencyKey":"order_38a91f-completed","correlationId":"req_4f30b2","payload":{"orderId":"ord_38a91f","amount":12900,"currency":"USD"},"metadata":{"tier":"pro","region":"us-east-1"}}"#;
const LOG: &str = r#"{"message":"user signed in","timestamp":"2026-05-26T14:21:08.493Z","metadata":{"user_id":42,"region":"us-east-1"}}"#;
const RECORD: &str =
    r#"{"event":"job finished","level":"info","timestamp":"2026-05-26T14:21:08.493Z","func":"run","job":"n"}"#;

fn body(kind: &str, events: usize) -> (String, String, &'static str) {
    match kind {
        "events" => {
            let items: Vec<String> =
                (0..events).map(|i| EVENT.replace("order_38a91f-completed", &format!("order-{i}"))).collect();
            ("/v1/events".into(), format!("[{}]", items.join(",")), "application/json")
        }
        "logflare" => {
            let items: Vec<String> = (0..events).map(|i| LOG.replace("signed in", &format!("signed in {i}"))).collect();
            ("/api/logs".into(), format!("{{\"batch\":[{}]}}", items.join(",")), "application/json")
        }
        _ => {
            let items: Vec<String> = (0..events).map(|i| RECORD.replace("\"n\"", &format!("\"{i}\""))).collect();
            ("/v1/logs".into(), items.join("\n"), "application/x-ndjson")
        }
    }
}

/// The host's work for one request: the normalizer (natively, as the
/// component runs it), the statement, the binary parameters.
fn host(request: &sluice_sdk::Request, schema: &str, tables: &[sluice_sdk::Table]) -> usize {
    let outcome = sluice_standard::handle(request).unwrap();
    let mut bytes = 0;
    for plan in &outcome.plans {
        let table = match &plan.template {
            Some(t) => tables.iter().find(|d| &d.name == t).unwrap().instance(&plan.table),
            None => tables.iter().find(|d| d.name == plan.table).unwrap().clone(),
        };
        let upsert = Upsert::new(schema, &table, &plan.columns, &plan.conflict).unwrap();
        let mut columns: Vec<ColumnArray> =
            upsert.param_types.iter().map(|&param_type| ColumnArray { param_type, values: Vec::new() }).collect();
        for row in &plan.rows {
            for (column, value) in columns.iter_mut().zip(&row.values) {
                column.values.push(value);
            }
        }
        let mut out = BytesMut::new();
        for column in &columns {
            column.to_sql(&array_type(column.param_type), &mut out).unwrap();
        }
        bytes += out.len() + upsert.sql.len();
    }
    bytes
}

fn render(c: &mut Criterion) {
    let config = Config::default();
    let tables = sluice_standard::tables();
    let events = 1000;
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(events as u64));
    for kind in ["events", "logflare", "structlog"] {
        let (path, body, content_type) = body(kind, events);
        let incoming = Incoming {
            method: "POST".into(),
            path,
            query: "source_name=app".into(),
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into_bytes(),
            received_at: 1_780_000_000_000_000,
        };
        let request = sluice_sdk::Request {
            tenant: config.tenant.clone(),
            method: incoming.method.clone(),
            path: incoming.path.clone(),
            query: incoming.query.clone(),
            headers: incoming.headers.clone(),
            body: incoming.body.clone(),
            received_at: incoming.received_at,
            settings: config.settings.clone(),
        };
        let prepared = sluice_spin_core::prepare(&config, incoming.clone()).unwrap();
        assert!(prepared.rejected.is_empty(), "{kind}: {:?}", prepared.rejected.first_key_value());
        assert_eq!(prepared.statements.iter().flat_map(|s| &s.chunks).map(|c| c.events.len()).sum::<usize>(), events);
        // Both start from an owned copy of the request, as each path gets one.
        group.bench_function(BenchmarkId::new("host", kind), |b| {
            b.iter(|| black_box(host(&request.clone(), &config.schema, &tables)))
        });
        group.bench_function(BenchmarkId::new("spin", kind), |b| {
            b.iter(|| black_box(sluice_spin_core::prepare(&config, incoming.clone()).unwrap()))
        });
    }
    group.finish();
}

/// Host and Spin path alternately, one request each per round: the medians
/// and their ratio, robust to other load on a shared machine (criterion
/// measures each side in its own stretch of time).
fn paired() {
    let config = Config::default();
    let tables = sluice_standard::tables();
    for kind in ["events", "logflare", "structlog"] {
        let (path, body, content_type) = body(kind, 1000);
        let incoming = Incoming {
            method: "POST".into(),
            path,
            query: "source_name=app".into(),
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into_bytes(),
            received_at: 1_780_000_000_000_000,
        };
        let request = sluice_sdk::Request {
            tenant: config.tenant.clone(),
            method: incoming.method.clone(),
            path: incoming.path.clone(),
            query: incoming.query.clone(),
            headers: incoming.headers.clone(),
            body: incoming.body.clone(),
            received_at: incoming.received_at,
            settings: config.settings.clone(),
        };
        let (mut host_times, mut spin_times) = (Vec::new(), Vec::new());
        for _ in 0..400 {
            let start = Instant::now();
            black_box(host(&request.clone(), &config.schema, &tables));
            host_times.push(start.elapsed());
            let start = Instant::now();
            black_box(sluice_spin_core::prepare(&config, incoming.clone()).unwrap());
            spin_times.push(start.elapsed());
        }
        host_times.sort();
        spin_times.sort();
        let (host, spin) = (host_times[200], spin_times[200]);
        println!(
            "paired/{kind}: host {:.3} ms, spin {:.3} ms, ratio {:.2} (medians of 400 alternating requests of 1,000 events)",
            host.as_secs_f64() * 1e3,
            spin.as_secs_f64() * 1e3,
            spin.as_secs_f64() / host.as_secs_f64()
        );
    }
}

criterion_group!(benches, render);

fn main() {
    paired();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
