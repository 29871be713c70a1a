//! Write modes per table: append, overwrite, overwrite-delete-stale.

use crate::support::{Sluice, TestDb, http};
use serde_json::{Value, json};

const KEY: &str = "modes-ingest-key-0123456789";

fn event(key: &str, v: i64) -> Value {
    json!({"eventType": "item", "occurredAt": "2026-05-26T14:21:08Z", "idempotencyKey": key, "payload": {"v": v}})
}

async fn send(url: &str, body: &Value, headers: &[(&str, &str)]) -> Value {
    let mut request = http().post(url).header("x-api-key", KEY).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    answer
}

fn config(modes: &str) -> String {
    format!(
        "[[tenants]]\nid = \"acme\"\nkeys = [\"{KEY}\"]\ndatabase = {{ schema = \"acme\" }}\nwrite_modes = {{ {modes} }}\n"
    )
}

/// (idempotency key as stored in payload order, v) of every stored event.
async fn payloads(client: &tokio_postgres::Client, table: &str) -> Vec<i64> {
    client
        .query(&format!("SELECT (payload->>'v')::int8 FROM acme.{table} ORDER BY 1"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_replaces_and_append_keeps() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config(r#"events = "overwrite", "log_events_*" = "append""#));
    let client = db.client().await;
    let url = sluice.url("/v1/events");
    send(&url, &json!([event("a", 1), event("b", 1)]), &[]).await;
    // The same keys again: the stored rows take the new values; duplicate
    // keys in one batch are merged, the last one winning.
    let answer = send(&url, &json!([event("a", 2), event("b", 3), event("b", 4)]), &[]).await;
    // The superseded b counts as a duplicate: its row was never written.
    assert_eq!((answer["inserted"].as_u64(), answer["duplicates"].as_u64()), (Some(2), Some(1)), "{answer}");
    assert_eq!(payloads(&client, "events").await, [2, 4]);

    // Logflare's tables match the prefix: append keeps the first.
    let logs = sluice.url("/api/logs?source_name=app");
    let id = "0b6e3c2a-5f4d-4e3b-8a1c-9d8e7f6a5b4c";
    send(&logs, &json!({"id": id, "message": "first"}), &[]).await;
    let answer = send(&logs, &json!({"id": id, "message": "second"}), &[]).await;
    assert_eq!(answer["duplicates"], 1, "{answer}");
    let table: String = client
        .query_one(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'acme' AND tablename LIKE 'log_events_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let message: String =
        client.query_one(&format!("SELECT event_message FROM acme.{table}"), &[]).await.unwrap().get(0);
    assert_eq!(message, "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_delete_stale_removes_what_the_latest_sync_did_not_write() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config(r#"events = "overwrite-delete-stale""#));
    let client = db.client().await;
    let url = sluice.url("/v1/events");
    let sync = |source: &'static str, time: &'static str, last: &'static str| {
        [("x-sluice-sync-source", source), ("x-sluice-sync-time", time), ("x-sluice-sync-final", last)]
    };

    // First sync of source crm: a, b, c. Another source writes z.
    send(&url, &json!([event("a", 1), event("b", 1)]), &sync("crm", "2026-05-26T10:00:00Z", "false")).await;
    let answer = send(&url, &json!([event("c", 1)]), &sync("crm", "2026-05-26T10:00:00Z", "true")).await;
    assert_eq!(answer["deleted_stale"], 0, "{answer}");
    send(&url, &json!([event("z", 9)]), &sync("erp", "2026-05-26T10:00:00Z", "true")).await;

    // The next sync of crm writes a and b only (over two requests); at its
    // end c, which it did not write, is deleted. erp's row stays.
    send(&url, &json!([event("a", 2)]), &sync("crm", "2026-05-27T10:00:00Z", "false")).await;
    let answer = send(&url, &json!([event("b", 2)]), &sync("crm", "2026-05-27T10:00:00Z", "true")).await;
    assert_eq!(answer["deleted_stale"], 1, "{answer}");
    assert_eq!(payloads(&client, "events").await, [2, 2, 9]);
    let sources: Vec<(String, String)> = client
        .query("SELECT _sluice_source, _sluice_synced_at::text FROM acme.events ORDER BY 1, 2", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(sources[0].0, "crm");
    assert!(sources[0].1.starts_with("2026-05-27 10:00:00"), "{sources:?}");
    assert_eq!(sources[2].0, "erp");

    // A bad sync header is a clear 400.
    let response = http()
        .post(&url)
        .header("x-api-key", KEY)
        .header("x-sluice-sync-time", "yesterday")
        .json(&json!([event("q", 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("x-sluice-sync-time"), "{answer}");
}
