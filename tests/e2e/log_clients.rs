//! Logflare's client libraries, as published on npm (`tests/clients`,
//! installed by `npm ci --prefix tests/clients`), sending to a real
//! service with their own code: every line they log is a row of the
//! source's table, with its metadata.

use crate::support::{Sluice, TestDb};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const KEY: &str = "acme-ingest-key-0123456789";
const SOURCE: &str = "0d6c3d8e-6a1f-4c55-9e8b-3f2a1b0c9d7e";
const LINES: usize = 25;

fn clients() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients")
}

/// Runs `client` of `tests/clients/send.mjs` against the service.
fn send(sluice: &Sluice, client: &str) {
    let dir = clients();
    assert!(
        dir.join("node_modules").exists(),
        "the npm clients are not installed: run `npm ci --prefix tests/clients` (Node.js 20 or later)"
    );
    let output = std::process::Command::new("node")
        .current_dir(&dir)
        .args(["send.mjs", client, &sluice.base, KEY, SOURCE, &LINES.to_string()])
        .output()
        .expect("run node (Node.js 20 or later)");
    assert!(
        output.status.success(),
        "{client} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The source table's (event_message, body) once it holds `LINES` rows.
async fn rows(db: &TestDb) -> Vec<(String, Value)> {
    let client = db.client().await;
    let table = format!("log_events_{}", SOURCE.replace('-', "_"));
    let query = format!("SELECT event_message, body::text FROM {table} ORDER BY timestamp, event_message");
    let started = Instant::now();
    loop {
        if let Ok(rows) = client.query(&query, &[]).await
            && (rows.len() >= LINES || started.elapsed() > Duration::from_secs(10))
        {
            return rows.iter().map(|r| (r.get(0), serde_json::from_str(r.get(1)).unwrap())).collect();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no table {table} after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn every_line_lands(client: &str) {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &format!("[[tenants]]\nid = \"acme\"\nkeys = [\"{KEY}\"]\n"));
    tokio::task::block_in_place(|| send(&sluice, client));
    let rows = rows(&db).await;
    assert_eq!(rows.len(), LINES, "{client}: {rows:?}");
    let mut seen: Vec<(String, i64)> = rows
        .iter()
        .map(|(message, body)| {
            assert_eq!(body["event_message"], message.as_str(), "{body}");
            let n = body["metadata"]["n"].as_i64().unwrap_or_else(|| panic!("{client}: no metadata.n in {body}"));
            (message.clone(), n)
        })
        .collect();
    seen.sort_by_key(|(_, n)| *n);
    let expected: Vec<(String, i64)> = (0..LINES).map(|i| (format!("{client} line {i}"), i as i64)).collect();
    assert_eq!(seen, expected);
}

/// winston-logflare posts `{"batch": [...], "source": "<uuid>"}` to `/logs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn winston_logflare() {
    every_line_lands("winston-logflare").await;
}

/// pino-logflare's server stream posts batches to `/logs?source=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pino_logflare() {
    every_line_lands("pino-logflare").await;
}

/// pino-logflare's browser and edge sender names the message `log_entry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pino_logflare_browser() {
    every_line_lands("pino-logflare-browser").await;
}

/// @loglayer/transport-logflare posts batches to `/logs/json?source=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loglayer() {
    every_line_lands("loglayer").await;
}
