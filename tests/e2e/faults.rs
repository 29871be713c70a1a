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

async fn client(url: String, id: usize, path: Path, sending: Duration) -> Told {
    let mut told = Told::default();
    let started = Instant::now();
    for r in 0.. {
        if started.elapsed() > sending {
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
    // The settings the tests give the database are not this session's.
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.options("-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connect to the test server");
    tokio::spawn(connection);
    let exists: bool = client.query_one("SELECT to_regclass('events') IS NOT NULL", &[]).await.unwrap().get(0);
    if !exists {
        return HashMap::new();
    }
    let rows = client.query("SELECT payload->>'k', count(*) FROM events GROUP BY 1", &[]).await.unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

/// Runs the clients against `url` and checks at once that nothing answered
/// 200 is missing, doubled or unsent. Returns what they were told.
async fn send(sluice: &Sluice, db: &TestDb, path: Path, what: &str) -> Told {
    let warmed = stored(db).await.contains_key("warmup");
    let mut told = run_clients(sluice.url("/v1/events"), path, SENDING).await;
    if warmed {
        told.acknowledged.insert("warmup".into());
    }
    let (missing, doubled, unsent) = told.against(&stored(db).await);
    eprintln!(
        "{what}, {path:?}: answers {:?}; acknowledged {}, spooled {}, missing {missing}, doubled {doubled}, \
         never sent {unsent}",
        told.statuses,
        told.acknowledged.len(),
        told.spooled.len()
    );
    assert_eq!((missing, doubled, unsent), (0, 0, 0), "the service's log:\n{}", sluice.log());
    told
}

/// `CLIENTS` clients sending to `url` for `sending`, at once; what they
/// were told, together (the warm-up event counted as sent).
async fn run_clients(url: String, path: Path, sending: Duration) -> Told {
    let clients: Vec<_> = (0..CLIENTS).map(|id| tokio::spawn(client(url.clone(), id, path, sending))).collect();
    let mut told = Told::default();
    told.sent.insert("warmup".into());
    for c in clients {
        let c = c.await.unwrap();
        told.acknowledged.extend(c.acknowledged);
        told.spooled.extend(c.spooled);
        told.sent.extend(c.sent);
        for (status, n) in c.statuses {
            *told.statuses.entry(status).or_default() += n;
        }
    }
    told
}

impl Told {
    /// Against the table's keys and their rows: events answered 200 that
    /// are missing, keys in more than one row, and keys never sent.
    fn against(&self, stored: &HashMap<String, i64>) -> (usize, usize, usize) {
        let missing = self.acknowledged.iter().filter(|k| !stored.contains_key(*k)).count();
        let doubled = stored.values().filter(|&&n| n > 1).count();
        let unsent = stored.keys().filter(|k| !self.sent.contains(*k)).count();
        (missing, doubled, unsent)
    }
}

/// Waits until every spooled event is in the table, and checks again that
/// nothing is missing, doubled or unsent.
async fn spool_arrives(sluice: &Sluice, db: &TestDb, told: &Told) {
    let started = Instant::now();
    loop {
        let now = stored(db).await;
        let waiting = told.spooled.iter().filter(|k| !now.contains_key(*k)).count();
        if waiting == 0 {
            assert_eq!(told.against(&now), (0, 0, 0));
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{waiting} spooled events never arrived; the service's log:\n{}",
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts the warm-up event (creating the table) until it is answered 200.
async fn warm_up(sluice: &Sluice) {
    let started = Instant::now();
    loop {
        let answer = http().post(sluice.url("/v1/events")).json(&json!([event("warmup")])).send().await.unwrap();
        if answer.status() == 200 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no warm-up: {answer:?}; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const CONFIG: &str = "[limits]\nrequest_timeout_ms = 1000\n[spool]\nretry_interval_ms = 200\n";

async fn acknowledged_events_are_committed(timeout_ms: u32, path: Path, spool: bool) {
    let db = TestDb::new().await;
    let config = CONFIG.replace("[spool]\n", &format!("[spool]\nenabled = {spool}\n"));
    let sluice = Sluice::start(Some(&db), &config);
    warm_up(&sluice).await;

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
    let what = format!("statement_timeout {timeout_ms} ms, spool {spool}");
    let mut told = send(&sluice, &db, path, &what).await;

    // Without the setting the service heals on its own: its sessions that
    // failed were closed, the new ones have no timeout.
    admin.batch_execute(&format!("ALTER DATABASE {} RESET statement_timeout", db.name)).await.unwrap();
    let started = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "the service did not heal; its log:\n{}", sluice.log());
        let key = format!("after-{}", started.elapsed().as_nanos());
        let answer = http().post(sluice.url("/v1/events")).json(&json!([event(&key)])).send().await.unwrap();
        if answer.status() == 200 {
            in_a_row += 1;
            told.acknowledged.insert(key.clone());
        } else {
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        told.sent.insert(key);
    }
    spool_arrives(&sluice, &db, &told).await;
}

/// The service with `failpoints` set (docs/operations.md lists them), under
/// the clients; then every spooled event must arrive.
async fn acknowledged_events_survive(failpoints: &str, path: Path) {
    let db = TestDb::new().await;
    let env = [("SLUICE_DATABASE_URL", db.url.as_str()), ("FAILPOINTS", failpoints)];
    let sluice = Sluice::start_with_env(CONFIG, &env);
    // (Where the first writes fail, the clients meet that, not a warm-up.)
    if !failpoints.contains('*') {
        warm_up(&sluice).await;
    }
    let told = send(&sluice, &db, path, failpoints).await;
    spool_arrives(&sluice, &db, &told).await;
    for failpoint in failpoints.split(';').map(|f| f.split('=').next().unwrap()) {
        let fired = sluice.log().matches(&format!("failpoint {failpoint} fired")).count();
        assert!(fired > 0, "{failpoint} never fired; log:\n{}", sluice.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_before_a_statement() {
    acknowledged_events_survive("write-before-statement=10%return", Path::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_after_a_statement() {
    acknowledged_events_survive("write-after-statement=10%return", Path::Upsert).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_abandoned_after_its_data() {
    acknowledged_events_survive("write-copy-before-end=10%return", Path::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_before_commit() {
    acknowledged_events_survive("write-before-commit=10%return", Path::Copy).await;
}

/// Committed, but the answer lost: the client is told 503 (or 202), sends
/// again, and the keys keep the rows single.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_after_commit() {
    acknowledged_events_survive("write-after-commit=10%return", Path::Copy).await;
}

/// Writes fail for a while (the first 150 commits), so requests go to the
/// spool, whose writes fail half the time (those are answered 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_write_that_fails() {
    acknowledged_events_survive("write-before-commit=150*return;spool-keep=50%return", Path::Copy).await;
}

/// A replayed request whose file is not deleted (as a crash between commit
/// and delete) is replayed again and written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_file_kept_after_its_commit() {
    acknowledged_events_survive("write-before-commit=150*return;spool-before-delete=50%return", Path::Copy).await;
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

/// What the server does to the service's sessions while the clients send.
#[derive(Clone, Copy, Debug)]
enum ServerFault {
    /// `pg_cancel_backend` on its sessions, at random moments.
    Cancel,
    /// `pg_terminate_backend` on its sessions, at random moments.
    Terminate,
    /// `lock_timeout` of 1 ms while another session holds the table's lock
    /// now and then.
    LockTimeout,
    /// `idle_in_transaction_session_timeout` of 1 ms: a session that waits
    /// between statements of a transaction is ended by the server.
    IdleInTransaction,
}

async fn server_fault(fault: ServerFault, path: Path) {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), CONFIG);
    warm_up(&sluice).await;
    let admin = db.client().await;
    let setting = match fault {
        ServerFault::LockTimeout => Some("lock_timeout = '1ms'"),
        ServerFault::IdleInTransaction => Some("idle_in_transaction_session_timeout = '1ms'"),
        _ => None,
    };
    if let Some(setting) = setting {
        admin.batch_execute(&format!("ALTER DATABASE {} SET {setting}", db.name)).await.unwrap();
    }
    let service_sessions = "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'sluice'";
    admin.execute(&format!("SELECT pg_terminate_backend(pid) FROM ({service_sessions}) s"), &[&db.name]).await.unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saboteur = {
        let (stop, url, name) = (stop.clone(), db.url.clone(), db.name.clone());
        tokio::spawn(async move {
            let admin = crate::support::connect(&url).await;
            admin.batch_execute("SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0").await.unwrap();
            let mut struck = 0u64;
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                tokio::time::sleep(Duration::from_micros(2_000 + state % 20_000)).await;
                let sql = match fault {
                    ServerFault::Cancel => format!("SELECT count(pg_cancel_backend(pid)) FROM ({service_sessions}) s"),
                    ServerFault::Terminate => {
                        format!("SELECT count(pg_terminate_backend(pid)) FROM ({service_sessions} LIMIT 1) s")
                    }
                    ServerFault::LockTimeout => {
                        admin.batch_execute("BEGIN; LOCK TABLE events IN SHARE MODE").await.unwrap();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        admin.batch_execute("COMMIT").await.unwrap();
                        struck += 1;
                        continue;
                    }
                    ServerFault::IdleInTransaction => break,
                };
                struck += admin.query_one(&sql, &[&name]).await.unwrap().get::<_, i64>(0) as u64;
            }
            struck
        })
    };
    let told = send(&sluice, &db, path, &format!("{fault:?}")).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let struck = saboteur.await.unwrap();
    eprintln!("{fault:?}: {struck} strikes");
    if let Some(setting) = setting {
        let name = setting.split(' ').next().unwrap();
        admin.batch_execute(&format!("ALTER DATABASE {} RESET {name}", db.name)).await.unwrap();
    }
    if !matches!(fault, ServerFault::IdleInTransaction) {
        assert!(struck > 0, "the fault was never injected");
    }
    spool_arrives(&sluice, &db, &told).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cancelled_under_load_copy() {
    server_fault(ServerFault::Cancel, Path::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cancelled_under_load_upsert() {
    server_fault(ServerFault::Cancel, Path::Upsert).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_terminated_under_load_copy() {
    server_fault(ServerFault::Terminate, Path::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_terminated_under_load_upsert() {
    server_fault(ServerFault::Terminate, Path::Upsert).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeouts_under_load() {
    server_fault(ServerFault::LockTimeout, Path::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_timeouts_under_load() {
    server_fault(ServerFault::IdleInTransaction, Path::Upsert).await;
}

/// How long the clients send while the spool drains: 300 requests replayed
/// one at a time, as before, took about 15 s under such traffic.
const DRAIN_WITHIN: Duration = Duration::from_secs(8);

/// Requests in the spool when the destination comes back are written while
/// new requests keep arriving: the spool empties before the clients stop,
/// although every replay waits for a flush like any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_drains_while_traffic_continues() {
    let db = TestDb::new().await;
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("drain-{}", std::process::id()));
    let sluice = Sluice::start_in(Some(&db), CONFIG, Some(&data_dir));
    warm_up(&sluice).await;
    let admin = db.client().await;
    admin.batch_execute("ALTER TABLE events RENAME TO events_away").await.unwrap();
    // The destination is gone: 300 requests go to the spool.
    let url = sluice.url("/v1/events");
    let senders: Vec<_> = (0..10)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut spooled = Vec::new();
                for r in 0..30 {
                    let keys: Vec<String> = (0..10).map(|e| format!("spooled-c{c}-r{r}-e{e}")).collect();
                    let body = Value::Array(keys.iter().map(|k| event(k)).collect());
                    let answer = http().post(&url).json(&body).send().await.unwrap();
                    assert_eq!(answer.status(), 202);
                    spooled.extend(keys);
                }
                spooled
            })
        })
        .collect();
    let mut spooled = HashSet::new();
    for sender in senders {
        spooled.extend(sender.await.unwrap());
    }
    let files = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("spool"))
            .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "req"))).count())
            .unwrap_or(0)
    };
    assert_eq!(files(&data_dir), 300);

    // Back, under the clients' traffic.
    admin.batch_execute("ALTER TABLE events_away RENAME TO events").await.unwrap();
    let started = Instant::now();
    let traffic = tokio::spawn(run_clients(url.clone(), Path::Copy, DRAIN_WITHIN));
    let mut drained = None;
    while drained.is_none() && started.elapsed() < DRAIN_WITHIN {
        if files(&data_dir) == 0 {
            drained = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acknowledged = traffic.await.unwrap().acknowledged;
    let drained = drained.unwrap_or_else(|| {
        panic!(
            "{} of 300 spooled requests left after {DRAIN_WITHIN:?} of traffic; log:\n{}",
            files(&data_dir),
            sluice.log()
        )
    });
    eprintln!("the spool of 300 requests drained in {drained:?} under {} acknowledged events", acknowledged.len());
    let now = stored(&db).await;
    let missing = spooled.iter().chain(&acknowledged).filter(|k| !now.contains_key(*k)).count();
    assert_eq!(missing, 0);
    assert!(now.values().all(|&n| n == 1));
}

/// The database server is stopped and started again twice while the
/// clients send, at random moments: the service rides it out, nothing
/// answered 200 is lost or doubled, and the spool empties once it is back.
async fn server_restarts_under_load(path: Path) {
    let (options, dir) = crate::support::own_cluster(&format!("restart-{path:?}"));
    let mut cluster = sluice::embedded::Cluster::start(options.clone()).unwrap();
    let db = TestDb { url: cluster.url(), name: "sluice".into() };
    let sluice = Sluice::start_in(Some(&db), CONFIG, Some(&dir.join("sluice")));
    warm_up(&sluice).await;
    let restarts = tokio::task::spawn_blocking(move || {
        let mut seed = std::process::id() as u64 | 1;
        for _ in 0..2 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 1000));
            cluster.stop().unwrap();
            // Down past a request's deadline, so that the clients feel it.
            std::thread::sleep(Duration::from_millis(1200));
            cluster = sluice::embedded::Cluster::start(options.clone()).unwrap();
        }
        cluster
    });
    let told = send_with_restarts(&sluice, path).await;
    let mut cluster = restarts.await.unwrap();
    spool_arrives(&sluice, &db, &told).await;
    drop(sluice);
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// As `send`, but the check waits for the server to be back.
async fn send_with_restarts(sluice: &Sluice, path: Path) -> Told {
    let mut told = run_clients(sluice.url("/v1/events"), path, SENDING).await;
    told.acknowledged.insert("warmup".into());
    eprintln!("restarts, {path:?}: answers {:?}", told.statuses);
    assert!(told.statuses.keys().any(|&s| s != 200), "the restarts were never felt: {:?}", told.statuses);
    told
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarts_under_load_copy() {
    server_restarts_under_load(Path::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarts_under_load_upsert() {
    server_restarts_under_load(Path::Upsert).await;
}
