//! Acknowledged means committed, under faults the server injects: a
//! `statement_timeout` of a few milliseconds fires in the middle of writes
//! (after a `COPY`'s data, before and during `COMMIT`), and the service must
//! never answer 200 for rows that are not in the table, must write every
//! spooled (202) request once the database takes it, and must heal without
//! a restart once the setting is gone.

use crate::support::{Sluice, TestDb, http};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Events a request carries: few enough that a timeout of a millisecond or
/// two fires in some writes and not in others (at any moment of them).
const EVENTS: usize = 50;
const CLIENTS: usize = 6;
/// How long the clients send.
const SENDING: Duration = Duration::from_secs(4);
/// Tries a client makes of a request answered 503.
const TRIES: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// New keys only: the rows go by binary `COPY`.
    Copy,
    /// Every request also carries a key already there: the `COPY` meets it
    /// and the rows go by upsert (and keep to it while the table rests).
    Upsert,
}

fn event(key: &str) -> Value {
    json!({"eventType": "fault", "occurredAt": "2026-05-26T14:21:08Z", "idempotencyKey": key, "payload": {"k": key}})
}

/// What the clients were told.
#[derive(Default)]
struct Told {
    /// Keys of events answered 200.
    acknowledged: HashSet<String>,
    /// Keys of events answered 202 (spooled).
    spooled: HashSet<String>,
    /// Every key sent.
    sent: HashSet<String>,
    /// Answers by status.
    statuses: HashMap<u16, usize>,
}

async fn client(url: String, id: usize, path: Path) -> Told {
    let mut told = Told::default();
    let started = Instant::now();
    for r in 0.. {
        if started.elapsed() > SENDING {
            break;
        }
        let mut keys: Vec<String> = (0..EVENTS).map(|e| format!("c{id}-r{r}-e{e}")).collect();
        if path == Path::Upsert {
            keys.push("warmup".into());
        }
        told.sent.extend(keys.iter().cloned());
        let body = Value::Array(keys.iter().map(|k| event(k)).collect());
        for _ in 0..TRIES {
            let response = http().post(&url).json(&body).send().await.expect("an answer");
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let answer: Value = response.json().await.expect("a JSON answer");
            *told.statuses.entry(status).or_default() += 1;
            match status {
                200 => {
                    let (inserted, duplicates) = (answer["inserted"].as_u64(), answer["duplicates"].as_u64());
                    assert_eq!(
                        inserted.unwrap() + duplicates.unwrap(),
                        keys.len() as u64,
                        "every event of a 200 is written or a duplicate: {answer}"
                    );
                    told.acknowledged.extend(keys.iter().cloned());
                    break;
                }
                202 => {
                    assert_eq!(answer["spooled"], true, "{answer}");
                    told.spooled.extend(keys.iter().cloned());
                    break;
                }
                503 => assert!(retry_after, "a 503 without Retry-After: {answer}"),
                other => panic!("unexpected answer {other}: {answer}"),
            }
        }
    }
    told
}

/// Keys in the events table, with how many rows each has.
async fn stored(db: &TestDb) -> HashMap<String, i64> {
    let client = db.client().await;
    client.batch_execute("SET statement_timeout = 0").await.unwrap();
    let rows = client.query("SELECT payload->>'k', count(*) FROM events GROUP BY 1", &[]).await.unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

async fn acknowledged_events_are_committed(timeout_ms: u32, path: Path, spool: bool) {
    let db = TestDb::new().await;
    let config = format!("[limits]\nrequest_timeout_ms = 1000\n[spool]\nenabled = {spool}\nretry_interval_ms = 200\n");
    let sluice = Sluice::start(Some(&db), &config);
    let url = sluice.url("/v1/events");
    let warmup = http().post(&url).json(&json!([event("warmup")])).send().await.unwrap();
    assert_eq!(warmup.status(), 200);

    // Every new session of the database gets the timeout; the service's
    // sessions are ended so its next ones do.
    let admin = db.client().await;
    admin.batch_execute(&format!("ALTER DATABASE {} SET statement_timeout = '{timeout_ms}ms'", db.name)).await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .unwrap();

    let clients = (0..CLIENTS).map(|id| tokio::spawn(client(url.clone(), id, path)));
    let mut told = Told::default();
    for c in clients {
        let c = c.await.unwrap();
        told.acknowledged.extend(c.acknowledged);
        told.spooled.extend(c.spooled);
        told.sent.extend(c.sent);
        for (status, n) in c.statuses {
            *told.statuses.entry(status).or_default() += n;
        }
    }
    told.acknowledged.insert("warmup".into());
    told.sent.insert("warmup".into());

    // Nothing answered 200 is missing, right now.
    let now = stored(&db).await;
    let missing = told.acknowledged.iter().filter(|k| !now.contains_key(*k)).count();
    let doubled = now.values().filter(|&&n| n > 1).count();
    let unsent = now.keys().filter(|k| !told.sent.contains(*k)).count();
    eprintln!(
        "statement_timeout {timeout_ms} ms, {path:?}, spool {spool}: answers {:?}; acknowledged {}, spooled {}, \
         missing {missing}, doubled {doubled}, never sent {unsent}",
        told.statuses,
        told.acknowledged.len(),
        told.spooled.len()
    );
    assert_eq!((missing, doubled, unsent), (0, 0, 0), "the service's log:\n{}", sluice.log());

    // Without the setting the service heals on its own: its sessions that
    // failed were closed, the new ones have no timeout.
    admin.batch_execute(&format!("ALTER DATABASE {} RESET statement_timeout", db.name)).await.unwrap();
    let started = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "the service did not heal; its log:\n{}", sluice.log());
        let key = format!("after-{}", started.elapsed().as_nanos());
        let answer = http().post(&url).json(&json!([event(&key)])).send().await.unwrap();
        if answer.status() == 200 {
            in_a_row += 1;
            told.acknowledged.insert(key.clone());
        } else {
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        told.sent.insert(key);
    }

    // Every spooled request arrives, once.
    let started = Instant::now();
    loop {
        let now = stored(&db).await;
        let waiting = told.spooled.iter().filter(|k| !now.contains_key(*k)).count();
        if waiting == 0 {
            let missing = told.acknowledged.iter().filter(|k| !now.contains_key(*k)).count();
            let doubled = now.values().filter(|&&n| n > 1).count();
            let unsent = now.keys().filter(|k| !told.sent.contains(*k)).count();
            assert_eq!((missing, doubled, unsent), (0, 0, 0));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{waiting} spooled events never arrived; the service's log:\n{}",
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_1ms_copy() {
    acknowledged_events_are_committed(1, Path::Copy, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_2ms_copy() {
    acknowledged_events_are_committed(2, Path::Copy, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_5ms_copy() {
    acknowledged_events_are_committed(5, Path::Copy, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_1ms_upsert() {
    acknowledged_events_are_committed(1, Path::Upsert, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_2ms_upsert() {
    acknowledged_events_are_committed(2, Path::Upsert, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_5ms_upsert() {
    acknowledged_events_are_committed(5, Path::Upsert, false).await;
}
