//! `POST /v1/events` against a real server.

use crate::support::{EXAMPLE, Sluice, TestDb, post};
use serde_json::{Value, json};
use std::io::Write;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_round_trips_and_a_replay_is_a_duplicate() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let (status, body) = post(&sluice.url("/v1/events"), "application/json", EXAMPLE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"events": 1, "inserted": 1, "duplicates": 0, "rejected": []}));

    // The row is there as soon as the response is.
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT event_id::text, event_type, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    customer_external_id, source, correlation_id, payload::text, metadata::text, \
                    received_at > now() - interval '1 minute' \
             FROM events",
            &[],
        )
        .await
        .unwrap();
    let event_id: String = row.get(0);
    assert_eq!(&event_id[14..15], "5", "a UUIDv5 from the idempotency key: {event_id}");
    assert_eq!(row.get::<_, &str>(1), "order.completed");
    assert_eq!(row.get::<_, &str>(2), "2026-05-26T14:21:08.493Z");
    assert_eq!(row.get::<_, &str>(3), "acct_8K2zRq");
    assert_eq!(row.get::<_, &str>(4), "billing-service");
    assert_eq!(row.get::<_, &str>(5), "req_4f30b2");
    let payload: Value = serde_json::from_str(row.get(6)).unwrap();
    assert_eq!(
        payload,
        json!({"orderId":"ord_38a91f","amount":12900,"currency":"USD","items":[{"sku":"PR-PRO-MONTHLY","qty":1,"price":12900}]})
    );
    let metadata: Value = serde_json::from_str(row.get(7)).unwrap();
    assert_eq!(metadata, json!({"tier":"pro","region":"us-east-1"}));
    assert!(row.get::<_, bool>(8));

    let (status, body) = post(&sluice.url("/v1/events"), "application/json", EXAMPLE).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"events": 1, "inserted": 0, "duplicates": 1, "rejected": []}));
    let count: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(count, 1);

    // The database URL (with its password) was given to the service; it
    // appears nowhere in its log.
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    if let Some(password) = config.get_password() {
        let password = std::str::from_utf8(password).unwrap();
        assert!(!sluice.log().contains(password), "{}", sluice.log());
    }
}

fn event(i: usize) -> String {
    format!(
        r#"{{"eventType":"load.test","occurredAt":"2026-05-26T14:21:08Z","idempotencyKey":"k-{i}","payload":{{"i":{i}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_ndjson_events_land_as_ten_thousand_rows() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let body: String = (0..10_000).map(|i| event(i) + "\n").collect();
    let (status, answer) = post(&sluice.url("/v1/events"), "application/x-ndjson", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["inserted"], 10_000);
    let client = db.client().await;
    let row = client.query_one("SELECT count(*), count(DISTINCT payload->>'i') FROM events", &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (10_000, 10_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_request_stores_the_good_and_names_the_bad() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let body = format!(
        r#"[{}, {{"eventType":"x"}}, {}, {{"eventType":"x","occurredAt":"2026-01-01T00:00:00Z","payload":"nope"}}]"#,
        event(1),
        event(2)
    );
    let (status, answer) = post(&sluice.url("/v1/events"), "application/json", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["events"], 4);
    assert_eq!(answer["inserted"], 2);
    assert_eq!(
        answer["rejected"],
        json!([{"index": 1, "reason": "occurredAt is required"}, {"index": 3, "reason": "payload must be a JSON object"}])
    );
    let keys: Vec<String> = db
        .client()
        .await
        .query("SELECT payload->>'i' FROM events ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["1", "2"]);

    // A request whose every event is bad is a 400 with the same shape.
    let (status, answer) = post(&sluice.url("/v1/events"), "application/json", r#"{"eventType":"x"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(answer["rejected"][0]["reason"], "occurredAt is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_clear_errors() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "[limits]\nmax_body_bytes = 100000\n");
    let url = sluice.url("/v1/events");

    let (status, answer) = post(&url, "application/json", r#"{"eventType": "#).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("not valid JSON"), "{answer}");

    let (status, answer) = post(&url, "application/x-ndjson", format!("{}\n{{oops\n", event(1))).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("line 2"), "{answer}");

    let big: String = (0..2_000).map(|i| event(i) + "\n").collect();
    let (status, answer) = post(&url, "application/x-ndjson", big.clone()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("100000"), "{answer}");

    // A small gzip body that inflates past the limit is refused too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(big.as_bytes()).unwrap();
    let response = crate::support::http()
        .post(&url)
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    let response = crate::support::http()
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body(EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("\"br\""), "{answer}");

    let (status, answer) = post(&url, "text/csv", "a,b\n1,2").await;
    assert_eq!(status, 415);
    assert!(answer["error"].as_str().unwrap().contains("text/csv"), "{answer}");

    let count: i64 = db.client().await.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(count, 0, "nothing from a refused request is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_bodies_are_read() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let body: String = (0..100).map(|i| event(i) + "\n").collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes()).unwrap();
    let zst = zstd::encode_all(body.as_bytes(), 3).unwrap();
    for (encoding, bytes) in [("gzip", gz.finish().unwrap()), ("zstd", zst)] {
        let response = crate::support::http()
            .post(sluice.url("/v1/events"))
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", encoding)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{encoding}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["events"], 100, "{encoding}: {answer}");
    }
    let count: i64 = db.client().await.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(count, 100, "the zstd body repeats the gzip one's keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_component_fails_only_its_request() {
    let db = TestDb::new().await;
    let wasm = crate::support::cache_dir().with_file_name("misbehave.wasm");
    std::fs::write(&wasm, sluice_artifacts::MISBEHAVE).unwrap();
    let sluice = Sluice::start(
        Some(&db),
        &format!(
            "[limits]\ncomponent_deadline_ms = 200\ncomponent_memory_bytes = 33554432\n[components]\nbuiltin = {wasm:?}\n"
        ),
    );
    for (fault, expect) in [("trap", "failed"), ("loop", "deadline of 200 ms"), ("alloc", "memory limit of 32 MiB")] {
        let response = crate::support::http()
            .post(sluice.url("/v1/events"))
            .header("content-type", "application/json")
            .header("x-misbehave", fault)
            .body(EXAMPLE)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 500, "{fault}");
        let answer: Value = response.json().await.unwrap();
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(expect), "{fault}: {message}");

        // The next request is served.
        let (status, answer) = post(&sluice.url("/v1/events"), "application/json", EXAMPLE).await;
        assert_eq!(status, 200, "after {fault}: {answer}");
    }
}
