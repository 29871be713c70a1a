//! The read-only SQL query API (`GET|POST /api/query`) against a real
//! server: rows ingested through `/v1/events` read back with their types,
//! what is refused and why, the limits, and who may query what.

use crate::support::{EXAMPLE, Sluice, TestDb, http};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub(crate) const ACME_KEY: &str = "acme-ingest-key-0123456789";
pub(crate) const ACME_TOKEN: &str = "acme-query-token-0123456789";
pub(crate) const GLOBEX_KEY: &str = "globex-ingest-key-0123456789";
pub(crate) const GLOBEX_TOKEN: &str = "globex-query-token-0123456789";
const INITECH_KEY: &str = "initech-ingest-key-0123456789";
const INITECH_TOKEN: &str = "initech-query-token-0123456789";

/// A second event for acme, a minute after the example.
const LATER: &str = r#"{"eventType":"invoice.paid","occurredAt":"2026-05-26T14:22:08Z","idempotencyKey":"inv-1","payload":{"amount":50,"currency":"EUR"}}"#;

/// Three tenants in their own schemas; initech may not query. A short
/// statement timeout and a small row cap, so the tests see both.
pub(crate) fn config(query: &str) -> String {
    format!(
        r#"[query]
statement_timeout_ms = 1000
max_rows = 5
{query}

[[tenants]]
id = "acme"
keys = ["{ACME_KEY}"]
query_tokens = ["{ACME_TOKEN}"]
database = {{ schema = "acme" }}

[[tenants]]
id = "globex"
keys = ["{GLOBEX_KEY}"]
query_tokens = ["{GLOBEX_TOKEN}"]
database = {{ schema = "globex" }}

[[tenants]]
id = "initech"
keys = ["{INITECH_KEY}"]
query_tokens = ["{INITECH_TOKEN}"]
database = {{ schema = "initech" }}
apis = ["events"]
"#
    )
}

pub(crate) async fn ingest(sluice: &Sluice, key: &str, body: &str) {
    let response = http()
        .post(sluice.url("/v1/events"))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap());
}

/// The status, the JSON answer and its text as sent.
pub(crate) async fn answer(response: reqwest::Response) -> (u16, Value, String) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, json, text)
}

/// `POST /api/query` with a bearer token.
pub(crate) async fn query(sluice: &Sluice, token: Option<&str>, sql: &str, params: Value) -> (u16, Value, String) {
    let mut request = http().post(sluice.url("/api/query")).json(&json!({ "sql": sql, "params": params }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.unwrap()).await
}

/// `GET /api/query?{name}={sql}` with the token as X-API-KEY.
async fn query_get(sluice: &Sluice, token: Option<&str>, name: &str, sql: &str) -> (u16, Value, String) {
    let query = form_urlencoded::Serializer::new(String::new()).append_pair(name, sql).finish();
    let mut request = http().get(sluice.url(&format!("/api/query?{query}")));
    if let Some(token) = token {
        request = request.header("x-api-key", token);
    }
    answer(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingested_rows_come_back_with_their_columns_and_types() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config(""));
    ingest(&sluice, ACME_KEY, EXAMPLE).await;
    ingest(&sluice, ACME_KEY, LATER).await;
    ingest(&sluice, GLOBEX_KEY, EXAMPLE).await;

    let sql = r#"
        SELECT event_id, event_type, occurred_at, payload,
               (payload->>'amount')::bigint AS amount,
               ((payload->>'amount')::numeric / 100)::numeric(12, 2) AS dollars,
               9007199254740993::bigint AS big,
               '\x01ff'::bytea AS raw, NULL::text AS nothing, true AS yes
        FROM events
        ORDER BY occurred_at; -- oldest first
    "#;
    let (status, body, text) = query(&sluice, Some(ACME_TOKEN), sql, json!([])).await;
    assert_eq!(status, 200, "{body}");
    let types: Vec<(&str, &str)> = body["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        types,
        [
            ("event_id", "uuid"),
            ("event_type", "text"),
            ("occurred_at", "timestamptz"),
            ("payload", "jsonb"),
            ("amount", "int8"),
            ("dollars", "numeric"),
            ("big", "int8"),
            ("raw", "bytea"),
            ("nothing", "text"),
            ("yes", "bool"),
        ]
    );
    assert_eq!((&body["rows"], &body["truncated"]), (&json!(2), &json!(false)));
    let ids: Vec<String> = db
        .client()
        .await
        .query("SELECT event_id::text FROM acme.events ORDER BY occurred_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let first = &body["result"][0];
    assert_eq!(first["event_id"], ids[0].as_str());
    assert_eq!(first["event_type"], "order.completed");
    assert_eq!(first["occurred_at"], "2026-05-26T14:21:08.493+00:00", "ISO 8601, in UTC");
    assert_eq!(
        first["payload"],
        json!({"orderId":"ord_38a91f","amount":12900,"currency":"USD","items":[{"sku":"PR-PRO-MONTHLY","qty":1,"price":12900}]}),
        "jsonb is JSON, not a string"
    );
    assert_eq!(first["amount"], 12900);
    assert_eq!((&first["raw"], &first["nothing"], &first["yes"]), (&json!("\\x01ff"), &Value::Null, &json!(true)));
    // Exact digits, as PostgreSQL wrote them (beyond what a double holds).
    assert!(text.contains(r#""dollars":129.00"#), "{text}");
    assert!(text.contains(r#""big":9007199254740993"#), "{text}");
    let second = &body["result"][1];
    assert_eq!((&second["event_id"], &second["event_type"]), (&json!(ids[1]), &json!("invoice.paid")));
    assert_eq!(second["occurred_at"], "2026-05-26T14:22:08+00:00");
    assert!(text.contains(r#""dollars":0.50"#), "{text}");

    // GET, as `sql` (bearer) and as Logflare's `pg_sql` (X-API-KEY).
    for name in ["sql", "pg_sql"] {
        let (status, body, _) =
            query_get(&sluice, Some(ACME_TOKEN), name, "SELECT count(*) AS n, 'a&b=c' AS s FROM events").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"], json!([{"n": 2, "s": "a&b=c"}]));
        assert_eq!(body["columns"], json!([{"name": "n", "type": "int8"}, {"name": "s", "type": "text"}]));
    }
    let response = http().get(sluice.url("/api/query")).bearer_auth(ACME_TOKEN).send().await.unwrap();
    let (status, body, _) = answer(response).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("?sql="), "{body}");

    // Parameters: typed as the statement needs them.
    let (status, body, _) = query(
        &sluice,
        Some(ACME_TOKEN),
        "SELECT event_type FROM events WHERE event_type = $1 AND (payload->>'amount')::bigint >= $2 AND occurred_at > $3 AND event_id <> $4",
        json!(["order.completed", 100, "2026-01-01T00:00:00Z", "00000000-0000-0000-0000-000000000000"]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!([{"event_type": "order.completed"}]));
    let (status, body, text) = query(
        &sluice,
        Some(ACME_TOKEN),
        "SELECT $1::jsonb -> 'a' AS a, $2::int8 AS n, $3::text AS t, $4::numeric AS x",
        json!([{"a": [1, 2]}, 9007199254740993u64, null, 1.25]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"][0]["a"], json!([1, 2]));
    assert_eq!(body["result"][0]["t"], Value::Null);
    assert!(text.contains(r#""n":9007199254740993"#) && text.contains(r#""x":1.25"#), "{text}");
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT $1::int AS a, $2::int AS b", json!([1])).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "the query has 2 parameters but 1 was given");
    // The second time a statement comes, its shape is remembered and it
    // runs in one round trip: the same answers, and the same errors.
    for _ in 0..2 {
        let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT $1::int8 AS a", json!([12])).await;
        assert_eq!((status, &body["result"]), (200, &json!([{"a": 12}])), "{body}");
        assert_eq!(body["columns"], json!([{"name": "a", "type": "int8"}]));
    }
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT $1::int8 AS a", json!(["twelve"])).await;
    assert_eq!((status, &body["sqlstate"]), (400, &json!("22P02")), "{body}");
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT $1::int8 AS a", json!([1, 2])).await;
    assert_eq!((status, &body["error"]), (400, &json!("the query has 1 parameter but 2 were given")));

    // PostgreSQL's own errors come back with their SQLSTATE and position.
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT no_such_column FROM events", json!([])).await;
    assert_eq!(status, 400);
    assert_eq!(body["sqlstate"], "42703");
    assert_eq!(body["position"], 8);
    assert!(body["error"].as_str().unwrap().contains("no_such_column"), "{body}");

    // Each tenant's token sees its own schema: `events` is globex's own.
    let (status, body, _) = query(&sluice, Some(GLOBEX_TOKEN), "SELECT count(*) AS n FROM events", json!([])).await;
    assert_eq!((status, &body["result"]), (200, &json!([{"n": 1}])), "{body}");
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT count(*) FROM globex.events", json!([])).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("outside this tenant's schema acme"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_other_schemas_and_server_functions_are_refused() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config(""));
    ingest(&sluice, ACME_KEY, EXAMPLE).await;
    let client = db.client().await;
    client.batch_execute("CREATE SCHEMA other_schema; CREATE TABLE other_schema.t (a int)").await.unwrap();

    for (sql, says) in [
        ("INSERT INTO events (event_id, event_type, occurred_at) VALUES (gen_random_uuid(), 'x', now())", "INSERT"),
        ("UPDATE events SET source = 'x'", "UPDATE"),
        ("DELETE FROM events", "DELETE"),
        ("DROP TABLE events", "DROP TABLE"),
        ("CREATE TABLE acme.x (a int)", "CREATE TABLE"),
        ("TRUNCATE events", "TRUNCATE"),
        ("COPY events TO STDOUT", "COPY"),
        ("SET search_path = globex", "SET"),
        ("SELECT 1; SELECT 2", "one statement at a time"),
        ("SELECT 1; DROP TABLE events", "one statement at a time"),
        ("WITH gone AS (DELETE FROM events RETURNING *) SELECT count(*) FROM gone", "data-modifying WITH"),
        ("SELECT * FROM events FOR UPDATE", "FOR UPDATE"),
        ("SELECT * FROM pg_catalog.pg_authid", "schema pg_catalog"),
        ("SELECT rolname FROM pg_authid", "system catalog"),
        ("SELECT * FROM information_schema.tables", "schema information_schema"),
        ("SELECT * FROM other_schema.t", "schema other_schema"),
        ("SELECT pg_read_file('/etc/passwd')", "server's files"),
        ("SELECT * FROM pg_ls_dir('.')", "server's files"),
        ("SELECT lo_import('/etc/passwd')", "large objects"),
        ("SELECT set_config('search_path', 'globex', true)", "changes settings"),
        ("SELECT query_to_xml('SELECT * FROM globex.events', true, true, '')", "SQL given as text"),
        ("SELECT pg_terminate_backend(1)", "stops other sessions"),
        ("SELEKT 1", "does not parse"),
    ] {
        let (status, body, _) = query(&sluice, Some(ACME_TOKEN), sql, json!([])).await;
        assert_eq!(status, 400, "{sql}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{sql}: {error:?} does not say {says:?}");
    }

    // What the checks cannot see, the read-only transaction still stops: a
    // function of the tenant's own schema that writes.
    client
        .batch_execute(
            "CREATE FUNCTION acme.sneaky() RETURNS int LANGUAGE plpgsql AS \
             $$ BEGIN CREATE TABLE acme.sneaked (a int); DELETE FROM acme.events; RETURN 1; END $$",
        )
        .await
        .unwrap();
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT sneaky()", json!([])).await;
    assert_eq!((status, &body["sqlstate"]), (400, &json!("25006")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("read-only"), "{body}");

    let row = client
        .query_one("SELECT (SELECT count(*) FROM acme.events), to_regclass('acme.sneaked') IS NULL", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (1, true), "nothing was written");
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT count(*) AS n FROM events", json!([])).await;
    assert_eq!((status, &body["result"]), (200, &json!([{"n": 1}])), "connections were left clean: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_is_cancelled_and_the_row_cap_truncates() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config(""));

    let started = Instant::now();
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT pg_sleep(60)", json!([])).await;
    let took = started.elapsed();
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["sqlstate"], "57014");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("cancelled after 1000 ms") && error.contains("timeout"), "{error}");
    assert!(took < Duration::from_secs(10), "answered after {took:?}, not 60 s");

    let (status, body, _) =
        query(&sluice, Some(ACME_TOKEN), "SELECT g FROM generate_series(1, 20) g ORDER BY g", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!([{"g": 1}, {"g": 2}, {"g": 3}, {"g": 4}, {"g": 5}]));
    assert_eq!((&body["rows"], &body["truncated"]), (&json!(5), &json!(true)));
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "VALUES (1), (2), (3), (4), (5)", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["rows"], &body["truncated"]), (&json!(5), &json!(false)));
    assert_eq!(body["columns"], json!([{"name": "column1", "type": "int4"}]));

    // Queries on every connection of the query pool leave ingest alone.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let url = sluice.url("/api/query");
            tokio::spawn(async move {
                http().post(url).bearer_auth(ACME_TOKEN).json(&json!({"sql": "SELECT pg_sleep(0.9)"})).send().await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    ingest(&sluice, ACME_KEY, EXAMPLE).await;
    for request in slow {
        assert_eq!(request.await.unwrap().unwrap().status().as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_query_tokens_of_tenants_with_the_query_api_may_query() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config(""));

    let (status, body, _) = query(&sluice, None, "SELECT 1", json!([])).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("query token is required"), "{body}");
    // An ingest key is refused exactly as a made-up token is: the answer
    // says nothing about whether it is a key.
    let (status, with_key, _) = query(&sluice, Some(ACME_KEY), "SELECT 1", json!([])).await;
    assert_eq!(status, 401);
    assert!(with_key["error"].as_str().unwrap().contains("not a query token"), "{with_key}");
    let (_, with_nonsense, _) = query(&sluice, Some("made-up-token-0123456789"), "SELECT 1", json!([])).await;
    assert_eq!(with_key, with_nonsense);
    let (status, _, _) = query_get(&sluice, Some(GLOBEX_KEY), "sql", "SELECT 1").await;
    assert_eq!(status, 401);
    // And a query token does not ingest.
    let response = http()
        .post(sluice.url("/v1/events"))
        .header("x-api-key", ACME_TOKEN)
        .header("content-type", "application/json")
        .body(EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let (status, body, _) = query(&sluice, Some(INITECH_TOKEN), "SELECT 1", json!([])).await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("initech may not use the query API"), "{body}");
    let (status, body, _) = query(&sluice, Some(GLOBEX_TOKEN), "SELECT 1 AS one", json!([])).await;
    assert_eq!((status, &body["result"]), (200, &json!([{"one": 1}])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tenants_the_default_tenant_queries_from_loopback() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let response = http()
        .post(sluice.url("/v1/events"))
        .header("content-type", "application/json")
        .body(EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (status, body, _) = query_get(&sluice, None, "sql", "SELECT event_type FROM events").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!([{"event_type": "order.completed"}]));
    assert_eq!(body["truncated"], false);
}
