//! Delivery when the database refuses rows or the destination breaks.

use crate::support::{Sluice, TestDb, event, http, own_cluster};
use serde_json::{Value, json};
use sluice::embedded::Cluster;
use std::path::Path;
use std::time::{Duration, Instant};

async fn send(url: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = http().post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

/// One bad row must not sink its batch: bisection finds the events the
/// database refuses, the others commit, and each refused event is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_database_refuses_are_isolated_and_reported() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let client = db.client().await;
    // Create the table, then give it a rule some events break (SQLSTATE 23514).
    let (status, _, _) = send(&sluice.url("/v1/events"), &json!([event("warmup", "w")])).await;
    assert_eq!(status, 200);
    client.batch_execute("ALTER TABLE events ADD CONSTRAINT no_bad CHECK (event_type <> 'bad')").await.unwrap();

    let kinds = ["ok", "bad", "ok", "ok", "ok", "bad", "ok", "ok", "ok", "ok", "ok", "bad"];
    let body: Vec<Value> = kinds.iter().enumerate().map(|(i, k)| event(k, &format!("k{i}"))).collect();
    let (status, _, answer) =
        tokio::time::timeout(Duration::from_secs(20), send(&sluice.url("/v1/events"), &json!(body)))
            .await
            .unwrap_or_else(|_| panic!("no answer in 20 s; the service's log:\n{}", sluice.log()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["inserted"], 9, "{answer}");
    let rejected: Vec<u64> =
        answer["rejected"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(rejected, [1, 5, 11], "{answer}");
    let reason = answer["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("no_bad") && reason.contains("23514"), "{reason}");
    let stored: i64 =
        client.query_one("SELECT count(*) FROM events WHERE event_type = 'ok'", &[]).await.unwrap().get(0);
    assert_eq!(stored, 9);

    // Requests flushed together are isolated from each other as well.
    let url = sluice.url("/v1/events");
    let sends = (0..8).map(|i| {
        let url = url.clone();
        let kind = if i % 4 == 0 { "bad" } else { "ok" };
        async move { send(&url, &json!([event(kind, &format!("c{i}"))])).await }
    });
    let answers = tokio::time::timeout(Duration::from_secs(20), futures_join(sends))
        .await
        .unwrap_or_else(|_| panic!("no answer in 20 s; the service's log:\n{}", sluice.log()));
    for (i, (status, _, answer)) in answers.iter().enumerate() {
        if i % 4 == 0 {
            assert_eq!((*status, answer["rejected"][0]["index"].as_u64()), (400, Some(0)), "{answer}");
        } else {
            assert_eq!((*status, answer["inserted"].as_u64()), (200, Some(1)), "{answer}");
        }
    }
}

/// A destination that refuses everything: with the spool off, 503 with
/// Retry-After and the reason; with it on (the default), 202 and the
/// request waits on disk until the destination takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_destination_spools_or_answers_503() {
    let db = TestDb::new().await;
    let data_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("unusable-{}", std::process::id()));
    let sluice = Sluice::start(Some(&db), "[spool]\nenabled = false\n");
    let client = db.client().await;
    let (status, _, _) = send(&sluice.url("/v1/events"), &json!([event("a", "1")])).await;
    assert_eq!(status, 200);
    client.batch_execute("ALTER TABLE events RENAME TO events_away").await.unwrap();
    let (status, retry_after, answer) = send(&sluice.url("/v1/events"), &json!([event("a", "2")])).await;
    assert_eq!(status, 503, "{answer}");
    assert!(retry_after.is_some());
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("events") && message.contains("42P01"), "{message}");
    drop(sluice);

    // Started again, the service creates the table anew; take it away again.
    let sluice = Sluice::start_in(Some(&db), "[spool]\nretry_interval_ms = 100\n", Some(&data_dir));
    client.batch_execute("ALTER TABLE events RENAME TO events_gone").await.unwrap();
    let (status, _, answer) = send(&sluice.url("/v1/events"), &json!([event("a", "2"), event("a", "3")])).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["spooled"], true);
    assert!(answer["message"].as_str().unwrap().contains("42P01"), "{answer}");
    assert_eq!(spooled(&data_dir), 1);
    // Spooled bodies are tenants' data: the service user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir.join("spool")), 0o700, "the spool folder");
    for file in std::fs::read_dir(data_dir.join("spool")).unwrap() {
        let file = file.unwrap().path();
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // Put right, the spooled request is written by itself.
    client.batch_execute("ALTER TABLE events_gone RENAME TO events").await.unwrap();
    drained(&data_dir).await;
    let count: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(count, 2);
    let (status, _, answer) = send(&sluice.url("/v1/events"), &json!([event("a", "2")])).await;
    assert_eq!((status, answer["duplicates"].as_u64()), (200, Some(1)), "{answer}");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Requests waiting in the spool of a service with data folder `dir`.
fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("spool"))
        .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "req"))).count())
        .unwrap_or(0)
}

/// Waits until the spool is empty.
async fn drained(dir: &Path) {
    let started = Instant::now();
    while spooled(dir) > 0 {
        assert!(started.elapsed() < Duration::from_secs(15), "the spool still holds {} requests", spooled(dir));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One event in 1,000 breaks a CHECK constraint (23514): its 999 neighbours
/// commit, it alone is refused by index and kept as a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_event_in_a_thousand_is_dead_lettered_and_the_rest_commit() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let client = db.client().await;
    let (status, _, _) = send(&sluice.url("/v1/events"), &json!([event("warmup", "w")])).await;
    assert_eq!(status, 200);
    client.batch_execute("ALTER TABLE events ADD CONSTRAINT no_bad CHECK (event_type <> 'bad')").await.unwrap();
    let body: Vec<Value> = (0..1000).map(|i| event(if i == 617 { "bad" } else { "ok" }, &format!("t{i}"))).collect();
    let (status, _, answer) = send(&sluice.url("/v1/events"), &json!(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["inserted"], 999, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{answer}");
    assert_eq!(rejected[0]["index"], 617, "{answer}");
    assert!(rejected[0]["reason"].as_str().unwrap().contains("23514"), "{answer}");
    let ok: i64 = client.query_one("SELECT count(*) FROM events WHERE event_type = 'ok'", &[]).await.unwrap().get(0);
    assert_eq!(ok, 999);
    let letters =
        client.query("SELECT target_table, sqlstate, row->>'event_type' FROM sluice_dead_letters", &[]).await.unwrap();
    let letters: Vec<(String, String, String)> = letters.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(letters, [("events".to_owned(), "23514".to_owned(), "bad".to_owned())]);
}

/// A deferred constraint refuses only at commit; the refused event is
/// still found alone, and its neighbours commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_a_deferred_constraint_refuses_is_isolated() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "");
    let client = db.client().await;
    let (status, _, _) = send(&sluice.url("/v1/events"), &json!([event("warmup", "w")])).await;
    assert_eq!(status, 200);
    client
        .batch_execute(
            "CREATE TABLE allowed (event_type text PRIMARY KEY);
             INSERT INTO allowed VALUES ('warmup'), ('ok');
             ALTER TABLE events ADD CONSTRAINT known FOREIGN KEY (event_type) REFERENCES allowed
                 DEFERRABLE INITIALLY DEFERRED;",
        )
        .await
        .unwrap();
    let body = json!([event("ok", "d1"), event("unknown", "d2"), event("ok", "d3")]);
    let (status, _, answer) = send(&sluice.url("/v1/events"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["inserted"], 2, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!((rejected.len(), &rejected[0]["index"]), (1, &json!(1)), "{answer}");
    assert!(rejected[0]["reason"].as_str().unwrap().contains("23503"), "{answer}");
    let ok: i64 = client.query_one("SELECT count(*) FROM events WHERE event_type = 'ok'", &[]).await.unwrap().get(0);
    assert_eq!(ok, 2);
}

/// Two flushes that insert the same keys in opposite orders deadlock in
/// PostgreSQL (40P01); the one chosen as the victim is retried, and both
/// requests succeed with every event stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_between_two_writers_is_retried_and_both_succeed() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "[batch]\nwriters = 2\n");
    let client = db.client().await;
    let (status, _, _) = send(&sluice.url("/v1/events"), &json!([event("warmup", "w")])).await;
    assert_eq!(status, 200);
    // Each row waits before it is inserted, so the two flushes interleave:
    // A takes k1, B takes k2, then each waits for the other's key.
    client
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW WHEN (NEW.event_type <> 'warmup') EXECUTE FUNCTION slow();",
        )
        .await
        .unwrap();
    let deadlocks = || async {
        let row = client
            .query_one("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let before = deadlocks().await;
    let url = sluice.url("/v1/events");
    let a = tokio::spawn({
        let url = url.clone();
        async move { send(&url, &json!([event("a", "k1"), event("a", "k2")])).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b = send(&url, &json!([event("b", "k2"), event("b", "k1")])).await;
    let a = a.await.unwrap();
    for (status, _, answer) in [&a, &b] {
        assert_eq!(*status, 200, "{answer}; log:\n{}", sluice.log());
        assert_eq!(answer["rejected"].as_array().map_or(0, |r| r.len()), 0, "{answer}");
    }
    // Between them every key is stored once: the one that committed first
    // inserted both, the retried one found them (duplicates).
    let inserted = a.2["inserted"].as_u64().unwrap() + b.2["inserted"].as_u64().unwrap();
    let duplicates = a.2["duplicates"].as_u64().unwrap() + b.2["duplicates"].as_u64().unwrap();
    assert_eq!((inserted, duplicates), (2, 2), "a: {}, b: {}", a.2, b.2);
    let stored: i64 =
        client.query_one("SELECT count(*) FROM events WHERE event_type IN ('a', 'b')", &[]).await.unwrap().get(0);
    assert_eq!(stored, 2);
    // It was a real deadlock, and the writer said it retried.
    let started = Instant::now();
    while deadlocks().await <= before {
        assert!(started.elapsed() < Duration::from_secs(5), "PostgreSQL counted no deadlock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sluice.log().contains("40P01"), "{}", sluice.log());
}

/// Past the service's in-flight cap a request is turned away with 503 and
/// Retry-After before it costs anything more; smaller ones still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_in_flight_cap_answers_503_with_retry_after() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "[limits]\nmax_in_flight_bytes_total = 2000\n");
    let big: Vec<Value> = (0..30).map(|i| event("big", &format!("b{i}"))).collect();
    let (status, retry_after, answer) = send(&sluice.url("/v1/events"), &json!(big)).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("2000 bytes in flight"), "{answer}");
    let (status, _, answer) = send(&sluice.url("/v1/events"), &json!([event("small", "s")])).await;
    assert_eq!(status, 200, "{answer}");
}

/// Past its memory limit the service turns new requests away with 503 and
/// Retry-After, names the limit, and writes nothing of them; a request that
/// is alone in flight is still taken, so the service keeps making progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_memory_limit_the_service_answers_503_and_writes_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    // Below any process's resident set: every request meets the limit.
    let sluice = Sluice::start(Some(&db), "[limits]\nmax_memory_bytes = 1048576\nmemory_spike_bytes = 1024\n");
    // A first request, alone, whose body is still arriving.
    let body = json!([event("alone", "m0")]).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let address = sluice.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // With it in flight, another is refused and leaves no row.
    let (status, retry_after, answer) = send(&sluice.url("/v1/events"), &json!([event("refused", "m1")])).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{answer}");
    let reason = answer["error"].as_str().unwrap();
    assert!(reason.contains("memory limit") && reason.contains("of 1048576 bytes"), "{answer}");

    // The first completes and commits.
    slow.write_all(tail.as_bytes()).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let client = db.client().await;
    let rows: Vec<String> =
        client.query("SELECT event_type FROM events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(rows, ["alone"]);
}

/// Polls `url` until it answers `status`, for at most `within`.
async fn until_status(url: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let answer = http().get(url).send().await.map(|r| r.status().as_u16());
        if answer.as_ref().ok() == Some(&status) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{url} still answers {answer:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PostgreSQL down at start and again mid-run: the service stays up, says
/// it is not ready, answers 503 once a request's deadline passes, and
/// resumes by itself when the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_rides_out_database_outages() {
    // A server of its own, so it can stop and come back.
    let (options, dir) = own_cluster("outage");
    let mut cluster = Cluster::start(options.clone()).unwrap();
    let db = TestDb { url: cluster.url(), name: "sluice".into() };
    cluster.stop().unwrap();

    let data_dir = dir.join("sluice");
    let sluice = Sluice::start_in(
        Some(&db),
        "[limits]\nrequest_timeout_ms = 1500\n[spool]\nretry_interval_ms = 100\n",
        Some(&data_dir),
    );
    until_status(&sluice.url("/readyz"), 503, Duration::from_secs(5)).await;
    let ready = http().get(sluice.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"), "every 503 says when to retry");
    let started = Instant::now();
    // Past its deadline the request is spooled: accepted, on disk.
    let (status, _, answer) = send(&sluice.url("/v1/events"), &json!([event("a", "1")])).await;
    assert_eq!((status, answer["spooled"].as_bool()), (202, Some(true)), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered within its deadline");
    assert_eq!(spooled(&data_dir), 1);

    // The server comes up: the service is ready and writes, tables created late.
    let mut cluster = Cluster::start(options.clone()).unwrap();
    until_status(&sluice.url("/readyz"), 200, Duration::from_secs(10)).await;
    drained(&data_dir).await;
    let (status, _, answer) = send(&sluice.url("/v1/events"), &json!([event("a", "1")])).await;
    assert_eq!((status, answer["duplicates"].as_u64()), (200, Some(1)), "written from the spool: {answer}");

    // Down mid-run, with connections open in the pool.
    cluster.stop().unwrap();
    until_status(&sluice.url("/readyz"), 503, Duration::from_secs(5)).await;
    let (status, _, answer) = send(&sluice.url("/v1/events"), &json!([event("a", "2")])).await;
    assert_eq!(status, 202, "{answer}");
    // A request sent while it is down commits once it is back within the deadline.
    let url = sluice.url("/v1/events");
    let pending = tokio::spawn(async move { send(&url, &json!([event("a", "3")])).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cluster = Cluster::start(options).unwrap();
    let (status, _, answer) = pending.await.unwrap();
    assert_eq!((status, answer["inserted"].as_u64()), (200, Some(1)), "{answer}");
    let back = until_status(&sluice.url("/readyz"), 200, Duration::from_secs(10)).await;
    assert!(back < Duration::from_secs(5), "ready {back:?} after the server");
    drained(&data_dir).await;
    let (status, _, answer) = send(&sluice.url("/v1/events"), &json!([event("a", "2")])).await;
    assert_eq!((status, answer["duplicates"].as_u64()), (200, Some(1)), "written from the spool: {answer}");

    let client = db.client().await;
    let keys: Vec<String> =
        client.query("SELECT event_id::text FROM events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(keys.len(), 3, "each acknowledged event once: {keys:?}");
    drop(client);
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends batches of events with idempotency keys until `stop`, recording
/// each batch that was acknowledged and each that was not.
async fn client_loop(
    url: String,
    next: std::sync::Arc<std::sync::atomic::AtomicU32>,
    stop: Instant,
) -> (Vec<u32>, Vec<u32>) {
    let (mut acked, mut unsure) = (Vec::new(), Vec::new());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    while Instant::now() < stop {
        let batch = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match client.post(&url).json(&batch_body(batch)).send().await {
            Ok(r) if r.status() == 200 => acked.push(batch),
            Ok(_) | Err(_) => {
                unsure.push(batch);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (acked, unsure)
}

const BATCH: u32 = 20;

/// The events of batch `batch`, each carrying its key in the payload too
/// (so the check reads the stored rows, not just their count).
fn batch_body(batch: u32) -> Value {
    let events = (0..BATCH).map(|i| {
        let key = format!("b{batch}-{i}");
        json!({"eventType": "crash", "occurredAt": "2026-05-26T14:21:08Z", "idempotencyKey": key, "payload": {"k": key}})
    });
    json!(events.collect::<Vec<_>>())
}

/// An event acknowledged with success is committed: the host is killed
/// with SIGKILL at random moments under load, ten times; the client
/// retries everything it was not sure of with the same idempotency keys.
/// At the end every event is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    let db = TestDb::new().await;
    let data_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{}", std::process::id()));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (mut acked, mut unsure) = (Vec::new(), Vec::new());
    for round in 0..11u64 {
        let mut sluice = Sluice::start_in(Some(&db), "", Some(&data_dir));
        // Vary when the kill lands: 150 to 650 ms into the load.
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
        let run_for = Duration::from_millis(150 + (seed.wrapping_mul(round + 7) % 500));
        let stop = Instant::now() + run_for + Duration::from_millis(100);
        let clients: Vec<_> =
            (0..4).map(|_| tokio::spawn(client_loop(sluice.url("/v1/events"), next.clone(), stop))).collect();
        if round < 10 {
            tokio::time::sleep(run_for).await;
            sluice.child.kill().unwrap();
            sluice.child.wait().unwrap();
        }
        for client in clients {
            let (a, u) = client.await.unwrap();
            acked.extend(a);
            unsure.extend(u);
        }
        if round == 10 {
            // Retry everything not acknowledged, with the same keys.
            let client = http();
            for &batch in &unsure {
                let answer = client.post(sluice.url("/v1/events")).json(&batch_body(batch)).send().await.unwrap();
                assert_eq!(answer.status(), 200);
            }
        }
    }
    assert!(acked.len() > 10, "enough load was acknowledged: {}", acked.len());
    assert!(!unsure.is_empty(), "the kills landed mid-request");
    let client = db.client().await;
    // Every batch sent — acknowledged, or unsure and retried — is there in
    // full, and no event twice (a duplicate key would show as more rows).
    let keys: Vec<String> =
        client.query("SELECT payload->>'k' FROM events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "an event was stored twice");
    for batch in acked.iter().chain(&unsure) {
        for i in 0..BATCH {
            assert!(distinct.contains(&format!("b{batch}-{i}")), "event b{batch}-{i} is missing");
        }
    }
    assert_eq!(keys.len(), (acked.len() + unsure.len()) * BATCH as usize);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Runs the futures on the runtime at once and collects their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// Past a tenant's own in-flight cap its requests get 429 with
/// Retry-After; another tenant is not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_in_flight_cap_gets_429() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(
        Some(&db),
        r#"
[[tenants]]
id = "small"
keys = ["small-tenant-key-0123456789"]
limits = { max_in_flight_bytes = 2000 }
[[tenants]]
id = "big"
keys = ["big-tenant-key-0123456789ab"]
"#,
    );
    let body: Vec<Value> = (0..30).map(|i| event("big", &format!("b{i}"))).collect();
    let post = |key: &'static str| {
        let url = sluice.url("/v1/events");
        let body = json!(body);
        async move {
            let response = http().post(url).header("x-api-key", key).json(&body).send().await.unwrap();
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), retry_after, response.json::<Value>().await.unwrap())
        }
    };
    let (status, retry_after, answer) = post("small-tenant-key-0123456789").await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("1")), "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("tenant small has more than 2000 bytes"), "{answer}");
    let (status, _, answer) = post("big-tenant-key-0123456789ab").await;
    assert_eq!((status, answer["inserted"].as_u64()), (200, Some(30)), "{answer}");
}

/// Past `max_connections`, a newcomer takes the place of a connection that
/// is waiting for a request; while every connection is serving one, it
/// waits to be accepted (costing the service nothing) and is served as
/// soon as one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_their_turn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), "[limits]\nmax_connections = 1\n");
    let address = sluice.base.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::builder().timeout(Duration::from_millis(700)).build().unwrap();

    // The one slot serves a request whose body is still to come: a second
    // client is not answered.
    let mut holder = tokio::net::TcpStream::connect(&address).await.unwrap();
    holder
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = client.get(sluice.url("/healthz")).send().await;
    assert!(waiting.is_err_and(|e| e.is_timeout()), "a request past the limit was served");
    drop(holder);
    let served = http().get(sluice.url("/healthz")).send().await.unwrap();
    assert_eq!(served.status(), 200);

    // A connection waiting for a request gives its place to a newcomer at
    // once, and is closed.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = client.get(sluice.url("/healthz")).send().await.expect("the newcomer is served at once");
    assert_eq!(served.status(), 200);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the idle connection was not closed: {read:?}");
}
