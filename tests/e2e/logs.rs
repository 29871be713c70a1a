//! Logs against a real server: Logflare's ingest API, stogger-style
//! structured logs, and canonical events routed to a table per event type.

use crate::support::{Sluice, TestDb, http, post, send, tables};
use serde_json::{Value, json};

const KEY: &str = "acme-ingest-key-0123456789";
/// 2026-05-26T14:21:08.493Z in unix microseconds.
const AT_MICROS: i64 = 1_779_805_268_493_000;

/// (id, timestamp, event_message, body) of a source table, by event_message.
async fn log_rows(client: &tokio_postgres::Client, table: &str) -> Vec<(String, i64, String, Value)> {
    client
        .query(
            &format!("SELECT id::text, timestamp, event_message, body::text FROM {table} ORDER BY event_message"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), serde_json::from_str(r.get(3)).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logflare_single_batch_and_array_forms_land_in_the_source_table() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let client = db.client().await;
    let url = sluice.url("/api/logs?source_name=app");

    let single = r#"{"message": "one", "metadata": {"user": {"id": 7}}, "timestamp": "2026-05-26T14:21:08.493Z", "host": "web-1"}"#;
    let (status, body) = send(&url, None, single).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Logged!");
    assert_eq!((body["events"].as_u64(), body["inserted"].as_u64()), (Some(1), Some(1)), "{body}");

    let batch = r#"{"batch": [{"event_message": "two", "timestamp": 1779805268493000}, {"message": "three"}]}"#;
    let (status, body) = send(&url, None, batch).await;
    assert_eq!((status, body["inserted"].as_u64()), (200, Some(2)), "{body}");
    // The other path Logflare serves, with an array body.
    let array = r#"[{"message": "four", "timestamp": 1779805268.493}]"#;
    let (status, body) = send(&sluice.url("/logs?source_name=app"), None, array).await;
    assert_eq!((status, body["inserted"].as_u64()), (200, Some(1)), "{body}");

    let sources = tables(&client, "public", "log_events_").await;
    assert_eq!(sources.len(), 1, "one table for source app: {sources:?}");
    let rows = log_rows(&client, &sources[0]).await;
    let messages: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(messages, ["four", "one", "three", "two"]);
    let one = &rows[1];
    assert_eq!(one.1, AT_MICROS);
    assert_eq!(one.3["event_message"], "one");
    assert_eq!(one.3["metadata"], json!({"user": {"id": 7}}));
    assert_eq!(one.3["host"], "web-1", "unknown top-level fields are kept");
    assert_eq!(one.3["timestamp"], AT_MICROS);
    assert_eq!(one.3["id"], one.0.as_str(), "the body carries the row's id");
    assert_eq!(rows[3].1, AT_MICROS, "µs timestamps");
    assert_eq!(rows[0].1, AT_MICROS, "second timestamps with a fraction");
    // No timestamp: the time the request arrived.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    assert!((now - rows[2].1).abs() < 60_000_000, "{} vs {now}", rows[2].1);

    // Time-range scans have an index on the source table.
    let indexed: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE '%(\"timestamp\"%')",
            &[&sources[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(indexed);

    // An explicit source id makes (or finds) the table named after it.
    let id = "6f1d4a8e-3b7c-4e1a-9d2f-0a1b2c3d4e5f";
    let (status, body) = send(&sluice.url(&format!("/api/logs?source={id}")), None, r#"{"message":"by id"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(tables(&client, "public", "log_events_").await.contains(&format!("log_events_{}", id.replace('-', "_"))));

    // Bad bodies and missing sources get clear answers.
    let (status, body) = send(&sluice.url("/api/logs"), None, r#"{"message":"x"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("source"), "{body}");
    let (status, body) = send(&url, None, r#"{"metadata": {}}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["rejected"][0]["reason"].as_str().unwrap().contains("message"), "{body}");
    let (status, body) = send(&url, None, "{nope").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logflare_timestamp_forms_decode_to_the_same_microseconds_and_ids_make_retries_idempotent() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let client = db.client().await;
    let url = sluice.url("/api/logs?source_name=times");
    let batch = json!({"batch": [
        {"id": "0b6e3c2a-5f4d-4e3b-8a1c-9d8e7f6a5b4c", "message": "iso", "timestamp": "2026-05-26T14:21:08.493Z"},
        {"id": "offset", "message": "iso-offset", "timestamp": "2026-05-26T16:21:08.493+02:00"},
        {"id": 3, "message": "seconds", "timestamp": 1779805268.493},
        {"id": "ms", "message": "milliseconds", "timestamp": 1779805268493i64},
        {"id": "us", "message": "microseconds", "timestamp": 1779805268493000i64},
    ]})
    .to_string();
    let (status, body) = send(&url, None, &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["inserted"], 5, "{body}");
    let table = tables(&client, "public", "log_events_").await.remove(0);
    let rows = log_rows(&client, &table).await;
    assert!(rows.iter().all(|r| r.1 == AT_MICROS), "{rows:?}");
    assert!(rows.iter().any(|r| r.0 == "0b6e3c2a-5f4d-4e3b-8a1c-9d8e7f6a5b4c"), "a UUID id is kept");

    // A retry of the same events adds nothing.
    let (status, body) = send(&url, None, &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["inserted"].as_u64(), body["duplicates"].as_u64()), (Some(0), Some(5)), "{body}");
    assert_eq!(log_rows(&client, &table).await.len(), 5);

    let (status, body) = send(&url, None, r#"{"message": "bad", "timestamp": "yesterday"}"#).await;
    assert_eq!(status, 400);
    assert!(body["rejected"][0]["reason"].as_str().unwrap().contains("timestamp"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logflare_keys_and_declared_sources() {
    let db = TestDb::new().await;
    let source = "1c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5";
    let sluice = Sluice::start(
        Some(&db),
        &format!(
            r#"
[[tenants]]
id = "acme"
keys = ["{KEY}"]
database = {{ schema = "acme" }}
settings = {{ logflare = {{ create_sources = false, sources = {{ app = "{source}" }} }} }}
"#
        ),
    );
    let client = db.client().await;
    let body = r#"{"message": "hello"}"#;
    let url = sluice.url("/api/logs?source_name=app");

    let (status, answer) = send(&url, None, body).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = send(&url, Some("not-the-key-0123456789"), body).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["message"], "the API key is not valid");

    // X-API-KEY, a bearer token and the api_key query parameter all work.
    let (status, answer) = send(&url, Some(KEY), body).await;
    assert_eq!((status, answer["message"].as_str()), (200, Some("Logged!")), "{answer}");
    let response = http()
        .post(&url)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, answer) =
        send(&sluice.url(&format!("/api/logs?api_key={KEY}&source={source}")), None, r#"{"message":"q"}"#).await;
    assert_eq!(status, 200, "{answer}");

    let table = format!("log_events_{}", source.replace('-', "_"));
    assert_eq!(tables(&client, "acme", "log_events_").await, std::slice::from_ref(&table));
    let count: i64 = client.query_one(&format!("SELECT count(*) FROM acme.{table}"), &[]).await.unwrap().get(0);
    assert_eq!(count, 3);

    // Sources that are not declared do not exist for this tenant.
    let (status, answer) = send(&sluice.url("/api/logs?source_name=typo"), Some(KEY), body).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("typo"), "{answer}");
    let (status, _) = send(&sluice.url("/api/logs?source=00000000-0000-4000-8000-000000000000"), Some(KEY), body).await;
    assert_eq!(status, 404);
    assert_eq!(tables(&client, "acme", "log_events_").await.len(), 1);
    assert!(!sluice.log().contains(KEY), "the key appears in the log");
}

/// stogger's documented queries, run unchanged against the table Sluice
/// fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_logs_answer_stoggers_queries() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let client = db.client().await;
    let now = time_text(0);
    let hour_ago = time_text(-3600);
    let two_days_ago = time_text(-2 * 86400);
    let records = [
        json!({"timestamp": hour_ago, "level": "info", "event": "payment_started", "func": "process_payment", "scope": "billing", "user_id": "123", "amount": 10}),
        json!({"timestamp": now, "level": "error", "event": "payment_failed", "func": "process_payment", "scope": "billing", "user_id": "123", "error": "card declined"}),
        json!({"timestamp": hour_ago, "level": "ERROR", "event": "db_timeout", "func": "load_user", "scope": "accounts", "user_id": "456"}),
        json!({"timestamp": two_days_ago, "level": "error", "event": "payment_failed", "func": "process_payment", "scope": "billing", "user_id": "789"}),
        json!({"timestamp": now, "level": "debug", "event": "cache_miss", "key": "u:123"}),
    ];
    let ndjson: String = records.iter().map(|r| format!("{r}\n")).collect();
    let (status, body) = post(&sluice.url("/v1/logs"), "application/x-ndjson", ndjson.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["inserted"], 5, "{body}");

    // A replay of the same records adds no rows.
    let (status, body) = post(&sluice.url("/v1/logs"), "application/x-ndjson", ndjson).await;
    assert_eq!((status, body["duplicates"].as_u64()), (200, Some(5)), "{body}");
    let (status, body) = post(&sluice.url("/v1/logs"), "application/json", r#"[{"level": "info"}]"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["rejected"][0]["reason"].as_str().unwrap().contains("event"), "{body}");

    let strings = |rows: Vec<tokio_postgres::Row>| -> Vec<String> { rows.iter().map(|r| r.get(0)).collect() };
    // Recent errors, newest first.
    let errors = client
        .query("SELECT event FROM stogger_logs WHERE level = 'error' ORDER BY timestamp DESC LIMIT 10", &[])
        .await
        .unwrap();
    assert_eq!(strings(errors), ["payment_failed", "db_timeout", "payment_failed"]);
    // Everything one function logged.
    let by_func = client
        .query("SELECT event FROM stogger_logs WHERE func = 'process_payment' ORDER BY timestamp", &[])
        .await
        .unwrap();
    assert_eq!(strings(by_func), ["payment_failed", "payment_started", "payment_failed"]);
    // By a field of the catch-all data.
    let by_user = client
        .query("SELECT event FROM stogger_logs WHERE data->>'user_id' = '123' ORDER BY timestamp", &[])
        .await
        .unwrap();
    assert_eq!(strings(by_user), ["payment_started", "payment_failed"]);
    // Counts by event over the last 24 hours.
    let counts: Vec<(String, i64)> = client
        .query(
            "SELECT event, count(*) FROM stogger_logs WHERE timestamp > now() - interval '24 hours' \
             GROUP BY event ORDER BY count(*) DESC, event",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        counts,
        [
            ("cache_miss".into(), 1),
            ("db_timeout".into(), 1),
            ("payment_failed".into(), 1),
            ("payment_started".into(), 1)
        ]
    );
    // Within a scope.
    let scoped = client
        .query("SELECT event FROM stogger_logs WHERE scope = 'billing' ORDER BY timestamp DESC", &[])
        .await
        .unwrap();
    assert_eq!(strings(scoped), ["payment_failed", "payment_started", "payment_failed"]);

    // stogger's columns and indexes, with data holding only the other fields.
    let data: String = client
        .query_one("SELECT data::text FROM stogger_logs WHERE event = 'payment_started'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap(), json!({"user_id": "123", "amount": 10}));
    let id_default: String = client
        .query_one(
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid \
             AND a.attnum = d.adnum WHERE d.adrelid = 'stogger_logs'::regclass AND a.attname = 'id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(id_default.starts_with("nextval("), "{id_default}");
    let index_defs: Vec<String> = client
        .query("SELECT indexdef FROM pg_indexes WHERE tablename = 'stogger_logs'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for wanted in ["(\"timestamp\" DESC)", "(level)", "(event)", "USING gin (data)"] {
        assert!(index_defs.iter().any(|d| d.contains(wanted)), "no index {wanted}: {index_defs:?}");
    }
}

/// An RFC 3339 time `offset` seconds from now.
fn time_text(offset: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset);
    at.format(&time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_can_go_to_a_table_per_event_type() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(
        Some(&db),
        &format!(
            r#"
[[tenants]]
id = "acme"
keys = ["{KEY}"]
database = {{ schema = "acme" }}
settings = {{ events = {{ table_per_event_type = true }} }}
"#
        ),
    );
    let client = db.client().await;
    let event = |t: &str, key: &str| json!({"eventType": t, "occurredAt": "2026-05-26T14:21:08Z", "idempotencyKey": key, "payload": {}});
    let body = json!([event("order_completed", "a"), event("order_completed", "b"), event("User Signed Up!", "c")]);
    let (status, answer) = send(&sluice.url("/v1/events"), Some(KEY), &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["inserted"], 3, "{answer}");

    let made = tables(&client, "acme", "events_").await;
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made.contains(&"events_order_completed".to_owned()), "{made:?}");
    let other = made.iter().find(|t| t.as_str() != "events_order_completed").unwrap();
    assert!(other.starts_with("events_user_signed_up"), "a safe name for an unsafe type: {other}");
    let count = |table: String| {
        let client = &client;
        async move { client.query_one(&format!("SELECT count(*) FROM acme.{table}"), &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("events_order_completed".into()).await, 2);
    assert_eq!(count(format!("\"{other}\"")).await, 1);
    assert_eq!(count("events".into()).await, 0, "nothing in the single events table");

    // The same event again is a duplicate in its type's table.
    let (_, answer) =
        send(&sluice.url("/v1/events"), Some(KEY), &json!([event("order_completed", "a")]).to_string()).await;
    assert_eq!(answer["duplicates"], 1, "{answer}");
}

/// A line logged many times within a second (stogger timestamps to the
/// second) is as many rows; a replay of the request adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_records_are_all_kept_and_a_replay_adds_none() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let line = r#"{"timestamp": "2026-05-26T14:21:08Z", "level": "debug", "event": "cache_miss", "key": "u:123"}"#;
    let ndjson = format!("{line}\n").repeat(100) + "{\"event\": \"other\"}\n";
    let (status, body) = post(&sluice.url("/v1/logs"), "application/x-ndjson", ndjson.clone()).await;
    assert_eq!((status, body["inserted"].as_u64()), (200, Some(101)), "{body}");
    let (status, body) = post(&sluice.url("/v1/logs"), "application/x-ndjson", ndjson).await;
    assert_eq!((status, body["inserted"].as_u64(), body["duplicates"].as_u64()), (200, Some(0), Some(101)), "{body}");
    let client = db.client().await;
    let misses: i64 =
        client.query_one("SELECT count(*) FROM stogger_logs WHERE event = 'cache_miss'", &[]).await.unwrap().get(0);
    assert_eq!(misses, 100);
}
