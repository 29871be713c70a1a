//! The Spin app's code path (`sluice-spin-core`) against the real test
//! server, through an executor over tokio-postgres that binds what Spin's
//! outbound PostgreSQL binds (one `text[]` per column, one statement per
//! call); the same input through the real `sluice` host and through this
//! path gives the same rows; and `spin.toml` names what the build makes.

use crate::support::{EXAMPLE, Sluice, TestDb, post, tables};
use serde_json::{Value, json};
use sluice_spin_core::{Config, DbError, Executor, Incoming};
use std::collections::BTreeMap;
use std::path::Path;
use tokio_postgres::types::ToSql;

/// The tests' executor: what the Spin component does with spin_sdk::pg.
struct Pg(tokio_postgres::Client);

fn db_error(e: tokio_postgres::Error) -> DbError {
    DbError {
        sqlstate: e.code().map(|c| c.code().to_owned()),
        message: e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_owned()),
    }
}

impl Executor for Pg {
    async fn execute_ddl(&mut self, sql: &str) -> Result<(), DbError> {
        // Extended protocol, one statement, as Spin's `execute` runs it.
        self.0.execute(sql, &[]).await.map(drop).map_err(db_error)
    }

    async fn upsert(&mut self, sql: &str, columns: &[Vec<Option<String>>]) -> Result<Vec<i64>, DbError> {
        let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let rows = self.0.query(sql, &params).await.map_err(db_error)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

/// The content type of a test body: NDJSON when it is lines of objects.
fn content_type(body: &str) -> &'static str {
    if body.trim_start().starts_with('{') && body.trim().contains("}\n{") {
        "application/x-ndjson"
    } else {
        "application/json"
    }
}

/// One request through the Spin code path: (status, JSON answer).
async fn spin(db: &TestDb, config: &Config, path_and_query: &str, body: &str) -> (u16, Value) {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let incoming = Incoming {
        method: "POST".into(),
        path: path.into(),
        query: query.into(),
        headers: vec![("content-type".into(), content_type(body).into())],
        body: body.as_bytes().to_vec(),
        received_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64,
    };
    let mut executor = Pg(db.client().await);
    let answer = sluice_spin_core::handle(&mut executor, config, incoming).await;
    (answer.status, answer.body)
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushrails_example_lands_and_a_replay_is_a_duplicate() {
    let db = TestDb::new().await;
    let config = Config::default();
    let (status, body) = spin(&db, &config, "/v1/events", EXAMPLE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"events": 1, "inserted": 1, "duplicates": 0, "rejected": []}));

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
    assert_eq!(&row.get::<_, String>(0)[14..15], "5", "a UUIDv5 from the idempotency key");
    assert_eq!(row.get::<_, &str>(1), "order.completed");
    assert_eq!(row.get::<_, &str>(2), "2026-05-26T14:21:08.493Z");
    assert_eq!(row.get::<_, &str>(3), "acct_8K2zRq");
    assert_eq!(row.get::<_, &str>(4), "billing-service");
    assert_eq!(row.get::<_, &str>(5), "req_4f30b2");
    let payload: Value = serde_json::from_str(row.get(6)).unwrap();
    assert_eq!(payload["items"][0]["sku"], "PR-PRO-MONTHLY");
    assert_eq!(serde_json::from_str::<Value>(row.get(7)).unwrap(), json!({"tier":"pro","region":"us-east-1"}));
    assert!(row.get::<_, bool>(8));
    // The host's indexes came with the table.
    let indexes: i64 =
        client.query_one("SELECT count(*) FROM pg_indexes WHERE tablename = 'events'", &[]).await.unwrap().get(0);
    assert_eq!(indexes, 3, "the key, occurred_at, type_occurred_at");

    let (status, body) = spin(&db, &config, "/v1/events", EXAMPLE).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"events": 1, "inserted": 0, "duplicates": 1, "rejected": []}));
    assert_eq!(count(&client, "events").await, 1);

    // Request errors: the host's statuses.
    assert_eq!(spin(&db, &config, "/v1/events", "{").await.0, 400);
    assert_eq!(spin(&db, &config, "/v2/events", EXAMPLE).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logflare_batch_lands_in_its_sources_table() {
    let db = TestDb::new().await;
    let config = Config::default();
    let batch = r#"{"batch":[
        {"message":"user signed in","metadata":{"user_id":42}},
        {"event_message":"payment failed","timestamp":"2026-05-26T14:21:08.493Z","level":"error"}
    ]}"#;
    let (status, body) = spin(&db, &config, "/api/logs?source_name=app", batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Logged!");
    assert_eq!((body["events"].as_u64(), body["inserted"].as_u64()), (Some(2), Some(2)));

    let client = db.client().await;
    let sources = tables(&client, "public", "log_events_").await;
    assert_eq!(sources.len(), 1, "{sources:?}");
    let rows = client
        .query(
            &format!("SELECT timestamp, event_message, body::text FROM \"{}\" ORDER BY event_message", sources[0]),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, i64>(0), 1_779_805_268_493_000);
    assert_eq!(rows[0].get::<_, &str>(1), "payment failed");
    let body: Value = serde_json::from_str(rows[1].get(2)).unwrap();
    assert_eq!(body["metadata"]["user_id"], 42, "{body}");

    // Over /logs, to the same source: a replay of the same ids is a duplicate.
    let one = r#"{"message":"once","id":"7d5f3a4e-0000-4000-8000-000000000001"}"#;
    assert_eq!(spin(&db, &config, "/logs?source_name=app", one).await.1["inserted"], 1);
    let (status, body) = spin(&db, &config, "/logs?source_name=app", one).await;
    assert_eq!((status, &body["duplicates"], &body["message"]), (200, &json!(1), &json!("Logged!")));
    assert_eq!(count(&client, &format!("\"{}\"", sources[0])).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_logs_land_in_typed_columns() {
    let db = TestDb::new().await;
    let config = Config::default();
    let ndjson = concat!(
        r#"{"event":"worker started","level":"info","timestamp":"2026-05-26T14:21:08.493Z","func":"main","pid":7}"#,
        "\n",
        r#"{"event":"job failed","level":"error","timestamp":"2026-05-26T14:21:09Z","scope":"jobs","job":"a"}"#,
        "\n",
    );
    let (status, body) = spin(&db, &config, "/v1/logs", ndjson).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"events": 2, "inserted": 2, "duplicates": 0, "rejected": []}));
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT to_char(timestamp AT TIME ZONE 'UTC', 'HH24:MI:SS.MS'), level, event, func, scope, data::text \
             FROM stogger_logs ORDER BY timestamp",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, &str>(0), "14:21:08.493");
    assert_eq!((rows[0].get::<_, &str>(1), rows[0].get::<_, &str>(2)), ("info", "worker started"));
    assert_eq!(rows[0].get::<_, Option<&str>>(3), Some("main"));
    assert_eq!(rows[1].get::<_, Option<&str>>(4), Some("jobs"));
    let data: Value = serde_json::from_str(rows[1].get(5)).unwrap();
    assert_eq!(data["job"], "a", "{data}");
    // A replay is a duplicate; the serial ids did not move on.
    let (_, body) = spin(&db, &config, "/v1/logs", ndjson).await;
    assert_eq!(body["duplicates"], 2);
    assert_eq!(count(&client, "stogger_logs").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_stores_the_good_and_reports_the_bad() {
    let db = TestDb::new().await;
    // Another schema and a table per event type: instances of the template.
    let config = Config {
        schema: "acme".into(),
        tenant: "acme".into(),
        settings: r#"{"events":{"table_per_event_type":true}}"#.into(),
    };
    let batch = r#"[
        {"eventType":"signup","occurredAt":"2026-05-26T14:21:08Z","idempotencyKey":"a"},
        {"occurredAt":"2026-05-26T14:21:08Z","idempotencyKey":"b"},
        {"eventType":"signup","occurredAt":"not a time","idempotencyKey":"c"},
        {"eventType":"order.completed","occurredAt":"2026-05-26T14:21:08Z","idempotencyKey":"d"}
    ]"#;
    let (status, body) = spin(&db, &config, "/t/acme/v1/events", batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["events"].as_u64(), body["inserted"].as_u64()), (Some(4), Some(2)), "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.iter().map(|r| r["index"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2], "{body}");
    assert!(rejected.iter().all(|r| !r["reason"].as_str().unwrap().is_empty()));
    let client = db.client().await;
    let made = tables(&client, "acme", "events_").await;
    assert_eq!(made.len(), 2, "{made:?}");
    for table in &made {
        assert_eq!(count(&client, &format!("acme.\"{table}\"")).await, 1, "{table}");
    }
    // All bad: 400, nothing written.
    let (status, body) = spin(&db, &config, "/t/acme/v1/events", r#"[{"occurredAt":"x"}]"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["rejected"][0]["index"], 0);
}

/// Every row of every table in `schema` but Sluice's own, as JSON text
/// without the columns that hold the time of arrival, sorted.
async fn rows(client: &tokio_postgres::Client, schema: &str) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let mut out = BTreeMap::new();
    for table in tables(client, schema, "").await {
        if table.starts_with("sluice_") {
            continue;
        }
        let columns: Vec<String> = client
            .query(
                "SELECT column_name::text || ' ' || data_type || ' ' || is_nullable FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[&schema, &table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let values: Vec<String> = client
            .query(&format!("SELECT (to_jsonb(t) - 'received_at')::text FROM {schema}.\"{table}\" t ORDER BY 1"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.insert(table, (columns, values));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_and_the_spin_path_write_the_same_rows() {
    let host_db = TestDb::new().await;
    let spin_db = TestDb::new().await;
    let sluice = Sluice::start(Some(&host_db), "");
    let config = Config::default();
    let inputs = [
        ("/v1/events", EXAMPLE.to_owned()),
        (
            "/v1/events",
            r#"[{"eventType":"a","occurredAt":"2026-05-26T14:21:08.123456Z","idempotencyKey":"k1","payload":{"n":1.5,"s":"é\"\\"}},
                {"eventType":"a","occurredAt":"1999-12-31T23:59:59Z","idempotencyKey":"k2","metadata":{}},
                {"eventType":"b","occurredAt":"2026-05-26T14:21:08Z","idempotencyKey":"k1"},
                {"occurredAt":"2026-05-26T14:21:08Z"}]"#
                .to_owned(),
        ),
        (
            "/api/logs?source_name=app",
            r#"{"batch":[{"message":"a","id":"7d5f3a4e-0000-4000-8000-000000000001","timestamp":1779805268493000,"metadata":{"x":[1,2]}},
                         {"event_message":"b","id":"client-id-2","timestamp":"2026-05-26T14:21:08.493Z"}]}"#
                .to_owned(),
        ),
        (
            "/logs?source=0b7cbd5e-7a4a-4c39-9c3e-0e0c4a8a2f10",
            r#"{"message":"c","id":"client-id-3","timestamp":"2026-05-26T14:21:08Z"}"#.to_owned(),
        ),
        (
            "/v1/logs",
            concat!(
                r#"{"event":"started","level":"info","timestamp":"2026-05-26T14:21:08.493Z","func":"main","pid":7}"#,
                "\n",
                r#"{"event":"failed","level":"error","timestamp":"2026-05-26T14:21:09Z","scope":"jobs"}"#,
                "\n"
            )
            .to_owned(),
        ),
    ];
    for (path, body) in &inputs {
        let (host_status, host_answer) = post(&sluice.url(path), content_type(body), body.clone()).await;
        let (spin_status, spin_answer) = spin(&spin_db, &config, path, body).await;
        assert_eq!((spin_status, &spin_answer), (host_status, &host_answer), "{path}: {body}");
    }
    let (host, spin) = (rows(&host_db.client().await, "public").await, rows(&spin_db.client().await, "public").await);
    // The host creates every declared table at start; the Spin path those
    // it writes. Every table the Spin path made matches the host's.
    assert_eq!(spin.len(), 4, "events, two sources, stogger_logs: {:?}", spin.keys());
    for (table, spin_rows) in &spin {
        assert_eq!(Some(spin_rows), host.get(table), "{table}");
    }
    for (table, host_rows) in &host {
        assert!(spin.contains_key(table) || host_rows.1.is_empty(), "the host wrote {table}; the Spin path did not");
    }
}

/// `spin.toml` names artifacts the build makes, routes that reach its
/// components, and only variables it declares.
#[test]
fn spin_toml_is_consistent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("spin.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    assert!(manifest["application"]["name"].is_str());

    // Variables: each with a default or required; db_url a required secret.
    let variables = manifest["variables"].as_table().unwrap();
    for (name, spec) in variables {
        let spec = spec.as_table().unwrap();
        assert!(
            spec.contains_key("default") ^ (spec.get("required").and_then(|r| r.as_bool()) == Some(true)),
            "{name}"
        );
    }
    assert_eq!(variables["db_url"]["required"].as_bool(), Some(true));
    assert_eq!(variables["db_url"]["secret"].as_bool(), Some(true));
    // Every {{ name }} anywhere in the manifest is declared.
    let mut rest = text.as_str();
    let mut used = 0;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").expect("a closed template") + start;
        let name = rest[start + 2..end].trim();
        assert!(variables.contains_key(name), "{{{{ {name} }}}} is not declared");
        used += 1;
        rest = &rest[end + 2..];
    }
    assert!(used > 0);

    // Components: a source the build command produces, outbound hosts from
    // variables only, the variables the component reads.
    let components = manifest["component"].as_table().unwrap();
    for (id, component) in components {
        let source = component["source"].as_str().unwrap();
        let command = component["build"]["command"].as_str().unwrap();
        let words: Vec<&str> = command.split_whitespace().collect();
        let package = words[words.iter().position(|w| *w == "-p").expect("the build names its package") + 1];
        assert!(command.starts_with("cargo build --profile component --target wasm32-wasip2 "), "{id}: {command}");
        assert_eq!(source, format!("target/wasm32-wasip2/component/{}.wasm", package.replace('-', "_")), "{id}");
        let cargo_toml = std::fs::read_to_string(root.join("components/spin/Cargo.toml")).unwrap();
        assert!(cargo_toml.contains(&format!("name = \"{package}\"")), "{id}: {package} is not components/spin");
        assert!(cargo_toml.contains("crate-type = [\"cdylib\"]"));
        for host in component["allowed_outbound_hosts"].as_array().unwrap() {
            let host = host.as_str().unwrap();
            let target = host.strip_prefix("postgres://").unwrap_or_else(|| panic!("{id}: {host} is not PostgreSQL"));
            assert!(target.starts_with("{{") && target.ends_with("}}"), "{id}: {host} is not from a variable");
        }
        let mut names: Vec<&str> = component["variables"].as_table().unwrap().keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["db_url", "schema", "settings", "tenant"], "{id}");
        // When the component was built (CI builds it first), it is a Spin
        // HTTP component of WASI 0.3.
        if let Ok(wasm) = std::fs::read(root.join(source)) {
            assert!(wasm.len() <= 2 << 20, "{source} is {} bytes", wasm.len());
            let export = b"wasi:http/handler@0.3.0";
            assert!(wasm.windows(export.len()).any(|w| w == export), "{source} does not export {export:?}");
        }
    }

    // Routes: each bound to a declared component, every component routed,
    // the APIs served, and a tenant on a component of its own.
    let triggers = manifest["trigger"]["http"].as_array().unwrap();
    let mut routes = BTreeMap::new();
    for trigger in triggers {
        let component = trigger["component"].as_str().unwrap();
        assert!(components.contains_key(component), "route to undeclared component {component}");
        assert!(routes.insert(trigger["route"].as_str().unwrap(), component).is_none(), "a route twice");
    }
    for id in components.keys() {
        assert!(routes.values().any(|c| c == id), "component {id} has no route");
    }
    for path in ["/v1/events", "/api/logs", "/logs", "/v1/logs"] {
        assert!(routes.contains_key(path), "no route {path}");
        assert!(sluice_spin_core::Api::of(path).is_some());
    }
    let tenant = routes.iter().find(|(r, _)| r.starts_with("/t/")).expect("a per-tenant route");
    assert_ne!(tenant.1, &routes["/v1/events"], "the tenant's route goes to its own component");
    assert!(tenant.0.ends_with("/..."), "{}: a wildcard reaching every API", tenant.0);
}

/// Every column type, edge values included, through the Spin path's text
/// parameters and through the host's binary ones: the same stored values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_stores_the_same_as_the_hosts_binary_parameters() {
    use sluice::db::encode::{ColumnArray, array_type};
    use sluice_sdk::{Column, ColumnType, Conflict, Outcome, Row, Table, UpsertPlan, Value};

    let db = TestDb::new().await;
    let types = [
        ColumnType::Boolean,
        ColumnType::Int8,
        ColumnType::Float8,
        ColumnType::Numeric,
        ColumnType::Text,
        ColumnType::Jsonb,
        ColumnType::Uuid,
        ColumnType::Timestamptz,
        ColumnType::Bytea,
    ];
    let shape = |name: &str| Table {
        name: name.into(),
        columns: std::iter::once(Column::new("k", ColumnType::Int8).not_null())
            .chain(types.iter().enumerate().map(|(i, t)| Column::new(&format!("c{i}"), *t)))
            .collect(),
        primary_key: vec!["k".into()],
        indexes: vec![],
        template: false,
    };
    let rows: Vec<Vec<Value>> = vec![
        vec![
            Value::Boolean(true),
            Value::Int8(i64::MIN),
            Value::Float8(0.1),
            Value::Numeric("12345678901234567890.000000000001".into()),
            Value::Text("é \" \\ ' , {} NULL".into()),
            Value::Jsonb(r#"{"a":[1,2.5,"x"],"b":null}"#.into()),
            Value::uuid(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            Value::Timestamptz(1_779_805_268_493_123),
            Value::Bytea(vec![0, 1, 254, 255]),
        ],
        vec![
            Value::Boolean(false),
            Value::Int8(i64::MAX),
            Value::Float8(f64::NAN),
            Value::Numeric("-0.5".into()),
            Value::Text(String::new()),
            Value::Jsonb("\"NULL\"".into()),
            Value::uuid(u128::MAX),
            Value::Timestamptz(-62_135_596_800_000_000 - 1),
            Value::Bytea(vec![]),
        ],
        vec![
            Value::Null,
            Value::Int8(0),
            Value::Float8(f64::NEG_INFINITY),
            Value::Null,
            Value::Null,
            Value::Jsonb("[]".into()),
            Value::Null,
            Value::Timestamptz(-1),
            Value::Null,
        ],
        vec![
            Value::Null,
            Value::Null,
            Value::Float8(-1.7976931348623157e308),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
    ];
    let columns: Vec<String> =
        std::iter::once("k".to_owned()).chain((0..types.len()).map(|i| format!("c{i}"))).collect();
    let plan = |table: &str| UpsertPlan {
        table: table.into(),
        template: None,
        columns: columns.clone(),
        conflict: Conflict::DoNothing,
        rows: rows
            .iter()
            .enumerate()
            .map(|(i, values)| Row {
                event: i as u32,
                values: std::iter::once(Value::Int8(i as i64)).chain(values.iter().cloned()).collect(),
            })
            .collect(),
    };

    // The Spin path.
    let outcome = Outcome { events: rows.len() as u32, plans: vec![plan("by_text")], rejections: vec![] };
    let prepared = sluice_spin_core::render(sluice_spin_core::Api::Events, "public", &[shape("by_text")], outcome);
    let mut executor = Pg(db.client().await);
    let answer = sluice_spin_core::write(&mut executor, "public", prepared).await;
    assert_eq!(answer.body["inserted"], 4, "{}", answer.body);

    // The host's statement and binary parameters.
    let client = db.client().await;
    let table = shape("by_binary");
    for sql in sluice_sdk::sql::create_table("public", &table).unwrap() {
        client.batch_execute(&sql).await.unwrap();
    }
    let upsert = sluice_sdk::sql::Upsert::new("public", &table, &columns, &Conflict::DoNothing).unwrap();
    let plan = plan("by_binary");
    let arrays: Vec<ColumnArray> = upsert
        .param_types
        .iter()
        .enumerate()
        .map(|(c, &param_type)| ColumnArray { param_type, values: plan.rows.iter().map(|r| &r.values[c]).collect() })
        .collect();
    let statement = client
        .prepare_typed(&upsert.sql, &arrays.iter().map(|a| array_type(a.param_type)).collect::<Vec<_>>())
        .await
        .unwrap();
    let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    assert_eq!(client.query(&statement, &params).await.unwrap().len(), 4);

    let read = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query(&format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY k"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    let (by_text, by_binary) = (read("by_text").await, read("by_binary").await);
    assert_eq!(by_text, by_binary);
    assert!(by_text[1].contains(" BC"), "a timestamp before year 1: {}", by_text[1]);
}
