//! Observability: `/metrics` after a known workload, `/readyz` through a
//! database outage, a change stream's gauges, request ids in answers and
//! in the JSON log.

use crate::support::{Sluice, TestDb, event, http, own_cluster};
use serde_json::{Value, json};
use sluice::embedded::Cluster;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Posts events with an `x-request-id`; the status, the answer's id header and body.
async fn send(url: &str, body: &Value, request_id: &str, misbehave: Option<&str>) -> (u16, String, Value) {
    let mut request = http().post(url).header("x-request-id", request_id).json(body);
    if let Some(fault) = misbehave {
        request = request.header("x-misbehave", fault);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, id, response.json().await.unwrap())
}

/// The samples of a scrape: `name` and its labels → value.
pub(crate) struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    pub(crate) async fn of(sluice: &Sluice) -> (Scrape, String) {
        let response = http().get(sluice.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
        let text = response.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "a whole exposition:\n{text}");
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            samples.push((name.to_owned(), labels, value.parse().unwrap_or_else(|_| panic!("a number: {line}"))));
        }
        (Scrape(samples), text)
    }

    /// The sample of `name` with exactly `labels`.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.0.iter().find(|(n, l, _)| n == name && *l == wanted).map(|(_, _, v)| *v)
    }
}

/// New rows go by binary COPY. A COPY that meets a key already there is
/// redone by upsert, which tells the duplicates from the new rows, and that
/// table is then upserted for a while (a replay tends to come in runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rows_are_copied_and_a_replay_is_upserted() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let url = sluice.url("/v1/events");
    let writes = |m: &Scrape, method| m.get("sluice_table_writes_total", &[("method", method)]);
    let answer = |a: &Value| (a["inserted"].as_u64(), a["duplicates"].as_u64());

    let (status, _, a) = send(&url, &json!([event("ok", "c1"), event("ok", "c2")]), "new", None).await;
    assert_eq!((status, answer(&a)), (200, (Some(2), Some(0))), "{a}");
    let (m, text) = Scrape::of(&sluice).await;
    assert_eq!(
        (writes(&m, "copy"), writes(&m, "copy_met_a_key"), writes(&m, "upsert")),
        (Some(1.0), None, None),
        "{text}"
    );

    // c2 again, with a new c3: the COPY meets c2, the upsert writes c3 alone.
    let (status, _, a) = send(&url, &json!([event("ok", "c2"), event("ok", "c3")]), "replay", None).await;
    assert_eq!((status, answer(&a)), (200, (Some(1), Some(1))), "{a}");
    let (m, text) = Scrape::of(&sluice).await;
    let counts = (writes(&m, "copy"), writes(&m, "copy_met_a_key"), writes(&m, "upsert"));
    assert_eq!(counts, (Some(1.0), Some(1.0), Some(1.0)), "{text}");

    // Right after, even new rows go by upsert.
    let (status, _, a) = send(&url, &json!([event("ok", "c4")]), "resting", None).await;
    assert_eq!((status, answer(&a)), (200, (Some(1), Some(0))), "{a}");
    let (m, text) = Scrape::of(&sluice).await;
    assert_eq!((writes(&m, "copy"), writes(&m, "upsert")), (Some(1.0), Some(2.0)), "{text}");

    let row = db.client().await.query_one("SELECT count(*), count(DISTINCT event_id) FROM events", &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (4, 4));
}

/// A table whose columns are not quite the declared types (here `json`
/// where `jsonb` is declared) cannot be filled by binary COPY; the upsert's
/// casts bridge it, so its events are written all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_copy_cannot_fill_is_upserted() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let url = sluice.url("/v1/events");
    let (status, _, _) = send(&url, &json!([event("ok", "w")]), "warmup", None).await;
    assert_eq!(status, 200);
    db.client().await.batch_execute("ALTER TABLE events ALTER COLUMN payload TYPE json").await.unwrap();

    let (status, _, a) = send(&url, &json!([event("ok", "j1"), event("ok", "j2")]), "json", None).await;
    assert_eq!(
        (status, a["inserted"].as_u64(), a["rejected"].as_array().map(Vec::len)),
        (200, Some(2), Some(0)),
        "{a}"
    );
    let (m, text) = Scrape::of(&sluice).await;
    let writes = |method| m.get("sluice_table_writes_total", &[("method", method)]);
    assert_eq!((writes("copy"), writes("copy_failed"), writes("upsert")), (Some(1.0), Some(1.0), Some(1.0)), "{text}");
    let stored: i64 = db.client().await.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(stored, 3);
}

/// A known workload, counted exactly: accepted, duplicate, rejected and
/// dead-lettered events and rows, flushes, instantiations and a trap; each
/// answer carries its request id, and the JSON log line of the trap too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_exactly() {
    let db = TestDb::new().await;
    // The misbehaving component normalizes events like the standard one
    // unless a request asks it to fail.
    let wasm = crate::support::cache_dir().with_file_name("misbehave-metrics.wasm");
    std::fs::write(&wasm, sluice_artifacts::MISBEHAVE).unwrap();
    let sluice = Sluice::start(Some(&db), &format!("[log]\nformat = \"json\"\n[components]\nbuiltin = {wasm:?}\n"));
    let url = sluice.url("/v1/events");

    let (status, id, _) = send(&url, &json!([event("warmup", "w")]), "warmup-1", None).await;
    assert_eq!((status, id.as_str()), (200, "warmup-1"), "the client's request id comes back");
    db.client()
        .await
        .batch_execute("ALTER TABLE events ADD CONSTRAINT no_bad CHECK (event_type <> 'bad')")
        .await
        .unwrap();

    // 10 events, 2 of which the database refuses: 8 accepted, 2 dead letters.
    let body: Vec<Value> =
        (0..10).map(|i| event(if i == 3 || i == 7 { "bad" } else { "ok" }, &format!("a{i}"))).collect();
    let (status, _, answer) = send(&url, &json!(body), "batch-a", None).await;
    assert_eq!(
        (status, answer["inserted"].as_u64(), answer["rejected"].as_array().map(Vec::len)),
        (200, Some(8), Some(2))
    );
    // 3 repeats and 2 events the component rejects.
    let body = json!([event("ok", "a0"), event("ok", "a1"), event("ok", "a2"), {"eventType": "x"}, {"eventType": "y"}]);
    let (status, _, answer) = send(&url, &body, "batch-b", None).await;
    assert_eq!(
        (status, answer["duplicates"].as_u64(), answer["rejected"].as_array().map(Vec::len)),
        (200, Some(3), Some(2))
    );
    let (status, id, _) = send(&url, &json!([event("ok", "t")]), "trap-req-7", Some("trap")).await;
    assert_eq!((status, id.as_str()), (500, "trap-req-7"));
    // Without an id of its own (or with an unprintable one) a request gets one.
    let response = http().get(sluice.url("/healthz")).header("x-request-id", "bad\tid").send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert!(generated.len() == 32 && generated.chars().all(|c| c.is_ascii_hexdigit()), "{generated}");

    let (m, text) = Scrape::of(&sluice).await;
    let tenant = ("tenant", "default");
    let events = |outcome| m.get("sluice_events_total", &[tenant, ("outcome", outcome)]);
    assert_eq!(events("accepted"), Some(9.0), "{text}");
    assert_eq!(events("duplicate"), Some(3.0), "{text}");
    assert_eq!(events("rejected"), Some(4.0), "{text}");
    assert_eq!(m.get("sluice_events_dead_lettered_total", &[tenant]), Some(2.0), "{text}");
    let rows = |outcome| m.get("sluice_rows_total", &[tenant, ("table", "events"), ("outcome", outcome)]);
    assert_eq!(
        (rows("inserted"), rows("duplicate"), rows("dead_lettered")),
        (Some(9.0), Some(3.0), Some(2.0)),
        "{text}"
    );
    assert_eq!(m.get("sluice_requests_total", &[tenant]), Some(4.0), "{text}");
    assert_eq!(m.get("sluice_request_errors_total", &[tenant]), Some(1.0), "{text}");
    assert_eq!(m.get("sluice_requests_in_flight", &[tenant]), Some(0.0), "{text}");

    // One flush per request that reached the writer: 1 + 10 + 3 rows.
    assert_eq!(m.get("sluice_batch_rows_count", &[]), Some(3.0), "{text}");
    assert_eq!(m.get("sluice_batch_rows_sum", &[]), Some(14.0), "{text}");
    assert_eq!(m.get("sluice_flush_duration_seconds_count", &[]), Some(3.0), "{text}");
    assert!(m.get("sluice_flush_duration_seconds_sum", &[]).unwrap() > 0.0, "{text}");
    assert_eq!(m.get("sluice_writer_queued_rows", &[]), Some(0.0), "{text}");
    // The warm-up went by COPY; batch-a's COPY hit the check, and its events
    // were isolated by upsert; batch-b's COPY met its repeats, and the
    // upsert told them apart.
    let writes = |method| m.get("sluice_table_writes_total", &[("method", method)]);
    assert_eq!(
        (writes("copy"), writes("copy_failed"), writes("copy_met_a_key")),
        (Some(1.0), None, Some(1.0)),
        "{text}"
    );

    // The load-time check and four requests, each in a fresh instance.
    let builtin = ("component", "builtin");
    assert_eq!(m.get("sluice_component_calls_total", &[builtin]), Some(5.0), "{text}");
    assert_eq!(m.get("sluice_component_instantiate_seconds_count", &[builtin]), Some(5.0), "{text}");
    assert_eq!(m.get("sluice_component_failures_total", &[builtin, ("kind", "trap")]), Some(1.0), "{text}");
    assert_eq!(m.get("sluice_component_failures_total", &[builtin, ("kind", "deadline")]), None, "{text}");

    assert_eq!(m.get("sluice_db_pool_connections", &[("pool", "service"), ("state", "max")]), Some(8.0), "{text}");
    assert!(m.get("sluice_db_pool_connections", &[("pool", "service"), ("state", "idle")]).unwrap() >= 1.0, "{text}");
    assert_eq!(m.get("sluice_spool_files", &[]), Some(0.0), "{text}");
    assert_eq!(m.get("sluice_in_flight_bytes_all", &[]), Some(0.0), "{text}");

    // The trap's warning names its request, as a field of the request's span
    // (the log is read from the pipe as it comes).
    let started = Instant::now();
    let line = loop {
        let log = sluice.log();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["level"] == "WARN" && l["span"]["request_id"] == "trap-req-7");
        match found {
            Some(line) => break line,
            None if started.elapsed() > Duration::from_secs(5) => {
                panic!("no JSON warning carries the request id; log:\n{log}")
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(line["fields"]["message"].as_str().unwrap().contains("component builtin failed"), "{line}");
    assert_eq!(line["span"]["path"], "/v1/events");

    // A second scrape after more work moves the counters, no more.
    let (status, _, _) = send(&url, &json!([event("ok", "a9")]), "again", None).await;
    assert_eq!(status, 200);
    let (after, text) = Scrape::of(&sluice).await;
    assert_eq!(after.get("sluice_events_total", &[tenant, ("outcome", "duplicate")]), Some(4.0), "{text}");
    assert_eq!(after.get("sluice_batch_rows_count", &[]), Some(4.0), "{text}");
}

/// With `[metrics] require_admin_token`, `/metrics` and `/status.json`
/// need the admin token; the page and the health checks do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_the_admin_token() {
    let db = TestDb::new().await;
    let sluice =
        Sluice::start(Some(&db), "admin_token = \"s3cret-admin-token-0123\"\n[metrics]\nrequire_admin_token = true\n");
    for path in ["/metrics", "/status.json"] {
        let refused = http().get(sluice.url(path)).send().await.unwrap();
        assert_eq!(refused.status().as_u16(), 401, "{path}");
        let wrong = http().get(sluice.url(path)).bearer_auth("nope").send().await.unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{path}");
        let allowed = http().get(sluice.url(path)).bearer_auth("s3cret-admin-token-0123").send().await.unwrap();
        assert_eq!(allowed.status().as_u16(), 200, "{path}");
    }
    for path in ["/", "/healthz", "/readyz"] {
        assert_eq!(http().get(sluice.url(path)).send().await.unwrap().status().as_u16(), 200, "{path}");
    }
}

async fn readyz(sluice: &Sluice) -> (u16, Value) {
    let response = http().get(sluice.url("/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn until_ready(sluice: &Sluice, ready: bool, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(sluice).await;
        if (status == 200) == ready {
            assert_eq!(body["ready"], ready, "{body}");
            return body;
        }
        assert!(started.elapsed() < within, "/readyz still answers {status} {body} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz` says 503 and which check failed while the database is down,
/// and 200 again once it is back; `/healthz` says 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database() {
    let (options, dir) = own_cluster("readyz");
    let mut cluster = Cluster::start(options.clone()).unwrap();
    let db = TestDb { url: cluster.url(), name: "sluice".into() };
    let sluice = Sluice::start_in(Some(&db), "[limits]\nrequest_timeout_ms = 1500\n", Some(&dir.join("sluice")));

    let body = until_ready(&sluice, true, Duration::from_secs(10)).await;
    assert_eq!(body["failed"], json!([]), "{body}");
    assert_eq!(body["checks"]["database"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["components"]["ok"], true, "{body}");

    cluster.stop().unwrap();
    let body = until_ready(&sluice, false, Duration::from_secs(5)).await;
    assert_eq!(body["failed"], json!(["database"]), "{body}");
    let error = body["checks"]["database"]["error"].as_str().unwrap();
    assert!(error.contains("database"), "{error}");
    assert!(!error.contains(&db.url), "no connection string in the answer: {error}");
    let health = http().get(sluice.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "alive while not ready");
    // The writer's retries name the request whose rows they hold.
    let (status, id, answer) = send(&sluice.url("/v1/events"), &json!([event("ok", "o")]), "outage-req-1", None).await;
    assert_eq!((status, id.as_str(), &answer["spooled"]), (202, "outage-req-1", &json!(true)), "{answer}");
    let started = Instant::now();
    while !sluice.log().lines().any(|l| l.contains("write failed, retrying") && l.contains("outage-req-1")) {
        assert!(started.elapsed() < Duration::from_secs(5), "no retry line names the request; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _cluster = Cluster::start(options).unwrap();
    let body = until_ready(&sluice, true, Duration::from_secs(10)).await;
    assert_eq!(body["checks"]["database"]["ok"], true, "{body}");
    drop(sluice);
    let _ = std::fs::remove_dir_all(dir.join("sluice"));
}

/// A change stream's gauges: owner, lag, transactions and changes applied;
/// `/readyz` and `/status.json` report it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_shows_its_gauges() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)").await.unwrap();
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else { panic!("a TCP test server") };
    let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    let toml = format!(
        "[[cdc]]\nname = \"shop\"\nhost = {host:?}\nport = {}\ndatabase = {:?}\nuser = {:?}\npassword = {password:?}\n\
         slotName = \"m_{}\"\npublicationName = \"pm_{}\"\nsslMode = \"disable\"\ntables = [\"items\"]\n",
        config.get_ports()[0],
        db.name,
        config.get_user().unwrap(),
        db.name,
        db.name,
    );
    let sluice = Sluice::start(Some(&db), &toml);
    // Changes count from when the slot is streamed.
    let slot = format!("m_{}", db.name);
    let started = Instant::now();
    loop {
        let row = client.query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await;
        if row.unwrap().is_some_and(|row| row.get::<_, bool>(0)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the slot was never streamed; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.batch_execute("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')").await.unwrap();
    client.batch_execute("UPDATE items SET name = 'z' WHERE id = 2").await.unwrap();

    let source = ("source", "shop");
    let started = Instant::now();
    let (m, text) = loop {
        let (m, text) = Scrape::of(&sluice).await;
        if m.get("sluice_cdc_transactions_total", &[source]) == Some(2.0) {
            break (m, text);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "two transactions never applied:\n{text}\n{}",
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(m.get("sluice_cdc_owner", &[source]), Some(1.0), "{text}");
    assert_eq!(m.get("sluice_cdc_changes_total", &[source]), Some(4.0), "{text}");
    assert_eq!(m.get("sluice_cdc_handler_errors_total", &[source]), Some(0.0), "{text}");
    assert!(m.get("sluice_cdc_slot_lag_bytes", &[source]).is_some(), "{text}");
    assert!(m.get("sluice_cdc_lag_seconds", &[source]).is_some_and(|s| s >= 0.0), "{text}");
    let handler = ("component", "cdc:shop");
    assert!(m.get("sluice_component_calls_total", &[handler]).unwrap() >= 3.0, "load and two transactions: {text}");

    let (status, body) = readyz(&sluice).await;
    assert_eq!((status, &body["checks"]["cdc"]["sources"]["shop"]), (200, &json!("owner")), "{body}");
    let status: Value = http().get(sluice.url("/status.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["cdc"][0]["name"], "shop", "{status}");
    assert_eq!(status["cdc"][0]["state"], "owner", "{status}");
    assert_eq!(status["cdc"][0]["changes"], 4, "{status}");
}

/// Bad `[log]` and `[metrics]` settings stop `serve` with an error naming them.
#[test]
fn bad_observability_settings_are_refused_by_name() {
    let cases = [
        ("[log]\nformat = \"xml\"\n", "log.format must be \"human\" or \"json\", not \"xml\""),
        ("[log]\nlevel = \"info,==\"\n", "log.level \"info,==\" is not a valid filter"),
        ("[metrics]\nrequire_admin_token = true\n", "metrics.require_admin_token is set but admin_token is not"),
    ];
    for (n, (toml, expected)) in cases.into_iter().enumerate() {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = tmp.join(format!("bad-observability-{}-{n}.toml", std::process::id()));
        let data_dir = tmp.join(format!("bad-observability-{}-{n}", std::process::id()));
        std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\ndata_dir = {data_dir:?}\n{toml}")).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("SLUICE_LOG")
            .env_remove("RUST_LOG")
            .env_remove("SLUICE_LOG_FORMAT")
            .env("SLUICE_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{toml}: {stderr}");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&data_dir);
    }
}
