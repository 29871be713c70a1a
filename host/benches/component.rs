//! What a request costs in the component: a fresh instance plus the call,
//! against the same normalizer compiled natively.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::Limits;
use sluice::runtime::Runtime;
use sluice_sdk::Request;
use std::hint::black_box;

const EVENT: &str = r#"{"eventType":"order.completed","occurredAt":"2026-05-26T14:21:08.493Z","source":"billing-service","customerExternalId":"acct_8K2zRq","idempotencyKey":"order_38a91f-completed","correlationId":"req_4f30b2","payload":{"orderId":"ord_38a91f","amount":12900,"currency":"USD"},"metadata":{"tier":"pro","region":"us-east-1"}}"#;

fn request(events: usize) -> Request {
    let body = if events == 1 {
        EVENT.to_owned()
    } else {
        let items: Vec<String> =
            (0..events).map(|i| EVENT.replace("order_38a91f-completed", &format!("order-{i}"))).collect();
        format!("[{}]", items.join(","))
    };
    Request {
        tenant: "default".into(),
        method: "POST".into(),
        path: "/v1/events".into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into_bytes(),
        received_at: 1_780_000_000_000_000,
        settings: "{}".into(),
    }
}

fn component(c: &mut Criterion) {
    let cache = std::env::temp_dir().join("sluice-bench-cache");
    let runtime = Runtime::new(&Limits::default(), &cache).unwrap();
    // SLUICE_BENCH_COMPONENT: another build of the component, e.g. one with
    // symbols for a profiler.
    let wasm = match std::env::var_os("SLUICE_BENCH_COMPONENT") {
        Some(path) => std::fs::read(path).unwrap(),
        None => sluice_artifacts::EVENTS.to_vec(),
    };
    let normalizer = runtime.load("events", &wasm).unwrap();

    let mut group = c.benchmark_group("normalize");
    for events in [1usize, 1000] {
        let request = request(events);
        group.throughput(Throughput::Elements(events as u64));
        group.bench_with_input(BenchmarkId::new("native", events), &request, |b, r| {
            b.iter(|| black_box(sluice_events::handle(r).unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("wasm-fresh-instance", events), &request, |b, r| {
            b.iter(|| black_box(runtime.handle_blocking(&normalizer, r, runtime.default_limits()).unwrap().unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, component);
criterion_main!(benches);
