//! Change streams: a source table in the test database, streamed by
//! logical replication into the built-in audit handler, whose rows land in
//! the same database.

use crate::support::{Sluice, TestDb};
use serde_json::json;
use std::time::{Duration, Instant};

/// The `[[cdc]]` section streaming `tables` of `db` into the audit handler.
fn cdc_toml(db: &TestDb, tables: &[&str], extra: &str) -> String {
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    format!(
        "[[cdc]]\nname = \"shop\"\nhost = {host:?}\nport = {}\ndatabase = {:?}\nuser = {:?}\npassword = {password:?}\n\
         slotName = \"s_{}\"\npublicationName = \"p_{}\"\nsslMode = \"disable\"\ntables = {tables:?}\n{extra}\n",
        config.get_ports()[0],
        db.name,
        config.get_user().unwrap(),
        db.name,
        db.name,
    )
}

async fn wait_for_slot(client: &tokio_postgres::Client, db: &TestDb, sluice: &Sluice) {
    let slot = format!("s_{}", db.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active = client
            .query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap()
            .is_some_and(|row| row.get::<_, bool>(0));
        if active {
            return;
        }
        assert!(Instant::now() < deadline, "the slot was never streamed; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn audit_count(client: &tokio_postgres::Client) -> i64 {
    match client.query_one("SELECT count(*) FROM cdc_audit", &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}

/// Waits until the audit table has `n` rows, then a little longer to see no more come.
async fn wait_for_audit(client: &tokio_postgres::Client, n: i64, sluice: &Sluice) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while audit_count(client).await < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} audit rows; log:\n{}",
            audit_count(client).await,
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(audit_count(client).await, n, "no more rows than changes; log:\n{}", sluice.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_once_with_its_element_id_and_images() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text, amount numeric, doc jsonb, day date);
             CREATE TABLE lines (order_id int, line int, sku text, PRIMARY KEY (order_id, line));
             CREATE SCHEMA inv;
             CREATE TABLE inv.items (sku text NOT NULL, site text NOT NULL, qty int);
             ALTER TABLE inv.items REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let toml = cdc_toml(
        &db,
        &["orders", "lines", "inv.items"],
        "tableKeys = [{ table = \"inv.items\", keyColumns = [\"sku\", \"site\"] }]",
    );
    let sluice = Sluice::start(Some(&db), &toml);
    wait_for_slot(&client, &db, &sluice).await;

    for transaction in [
        "INSERT INTO orders VALUES (1, 'first', 12.50, '{\"a\": [1, 2]}', '2026-05-26'), (2, 'second', 1, null, null)",
        "BEGIN; UPDATE orders SET note = 'changed' WHERE id = 1; INSERT INTO lines VALUES (1, 1, 'A'), (1, 2, 'B');
         INSERT INTO inv.items VALUES ('A-1', 'eu', 5); COMMIT",
        "UPDATE orders SET id = 3 WHERE id = 2",
        "DELETE FROM lines WHERE order_id = 1 AND line = 2",
        "UPDATE inv.items SET qty = 4",
        "DELETE FROM inv.items",
        "TRUNCATE lines",
    ] {
        client.batch_execute(transaction).await.unwrap();
    }
    wait_for_audit(&client, 11, &sluice).await;

    let rows = client
        .query(
            "SELECT op, schema_name, table_name, element_id, key::text, before::text, after::text, change_index, commit_lsn, xid
             FROM cdc_audit ORDER BY commit_lsn, change_index",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String, Option<String>)> =
        rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(2), r.get::<_, Option<String>>(3))).collect();
    let expected = [
        ("insert", "orders", Some("orders:1")),
        ("insert", "orders", Some("orders:2")),
        ("update", "orders", Some("orders:1")),
        ("insert", "lines", Some("lines:1_1")),
        ("insert", "lines", Some("lines:1_2")),
        ("insert", "items", Some("inv.items:A-1_eu")),
        ("update", "orders", Some("orders:3")),
        ("delete", "lines", Some("lines:1_2")),
        ("update", "items", Some("inv.items:A-1_eu")),
        ("delete", "items", Some("inv.items:A-1_eu")),
        ("truncate", "lines", None),
    ];
    let expected: Vec<(String, String, Option<String>)> =
        expected.iter().map(|(o, t, e)| (o.to_string(), t.to_string(), e.map(str::to_owned))).collect();
    assert_eq!(seen, expected);

    let json = |i: usize, col: usize| {
        rows[i].get::<_, Option<String>>(col).map(|text| serde_json::from_str::<serde_json::Value>(&text).unwrap())
    };
    // Typed values in the images.
    assert_eq!(
        json(0, 6),
        Some(json!({"id": 1, "note": "first", "amount": "12.50", "doc": {"a": [1, 2]}, "day": "2026-05-26"}))
    );
    assert_eq!(json(0, 5), None, "an insert has no before");
    assert_eq!(json(0, 4), Some(json!({"id": 1})));
    // Default replica identity: no before for an update that keeps the key,
    // the old key when it changes, the old key on delete.
    assert_eq!(json(2, 5), None);
    assert_eq!(json(2, 6).unwrap()["note"], "changed");
    assert_eq!(json(6, 5), Some(json!({"id": 2})));
    assert_eq!(json(7, 5), Some(json!({"order_id": 1, "line": 2})));
    assert_eq!(json(7, 6), None);
    // REPLICA IDENTITY FULL: the whole old row.
    assert_eq!(json(8, 5), Some(json!({"sku": "A-1", "site": "eu", "qty": 5})));
    assert_eq!(json(8, 6), Some(json!({"sku": "A-1", "site": "eu", "qty": 4})));
    assert_eq!(json(9, 5), Some(json!({"sku": "A-1", "site": "eu", "qty": 4})));
    // One transaction: one commit LSN, positions 0..n, one xid.
    let (lsn, xid): (i64, i64) = (rows[2].get(8), rows[2].get(9));
    for (i, row) in rows[2..6].iter().enumerate() {
        assert_eq!((row.get::<_, i64>(8), row.get::<_, i64>(9), row.get::<_, i64>(7)), (lsn, xid, i as i64));
    }
    // The checkpoint is the last transaction's end.
    let checkpoint: i64 = client
        .query_one("SELECT (lsn - '0/0')::bigint FROM sluice_cdc_checkpoints WHERE source = 'shop'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(checkpoint > rows[10].get::<_, i64>(8), "checkpoint {checkpoint} after the last commit");
    stops(sluice);
}

/// SIGTERM stops the change stream promptly (then the host is killed: the
/// rest of its shutdown is not what these tests are about).
fn stops(mut sluice: Sluice) {
    let pid = nix::unistd::Pid::from_raw(sluice.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sluice.log().contains("change stream stopped") && sluice.child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            sluice.child.kill().unwrap();
            panic!("the change stream did not stop on SIGTERM; log:\n{}", sluice.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = sluice.child.kill();
    let _ = sluice.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_resumes_from_its_checkpoint_with_no_gap_and_no_duplicate() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute("CREATE TABLE ticks (id int PRIMARY KEY, payload text)").await.unwrap();
    // Small parts: a transaction of many changes is delivered in several calls.
    let toml = cdc_toml(&db, &["ticks"], "batch_changes = 7\nmemory_changes = 5");
    let mut sluice = Sluice::start(Some(&db), &toml);
    wait_for_slot(&client, &db, &sluice).await;

    let writer = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let client = crate::support::connect(&url).await;
            for i in 0..400 {
                client.execute("INSERT INTO ticks VALUES ($1, 'x')", &[&i]).await.unwrap();
                if i % 50 == 0 {
                    // A large transaction too: spilled to disk and delivered in parts.
                    client
                        .execute("UPDATE ticks SET payload = payload || 'y' WHERE id <= $1 AND id > $1 - 30", &[&i])
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // Kill the host twice mid-stream (no goodbye), start it again.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        sluice.child.kill().unwrap();
        sluice.child.wait().unwrap();
        sluice = Sluice::start(Some(&db), &toml);
    }
    writer.await.unwrap();
    let updates: i64 = (0..400).step_by(50).map(|i: i64| i.min(29) + 1).sum();
    wait_for_audit(&client, 400 + updates, &sluice).await;
    // A killed owner's session can hold the slot's lock a moment longer;
    // until then the new host waits as a standby.
    let started = Instant::now();
    while !sluice.log().contains("reusing the replication slot") {
        assert!(started.elapsed() < Duration::from_secs(60), "{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = client
        .query_one(
            "SELECT count(DISTINCT element_id) FILTER (WHERE op = 'insert'), count(*) FILTER (WHERE op = 'update'),
                    count(DISTINCT (commit_lsn, change_index))
             FROM cdc_audit",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (400, updates, 400 + updates));
    // Every element id once per insert: no gap.
    let missing: i64 = client
        .query_one(
            "SELECT count(*) FROM generate_series(0, 399) g
             WHERE NOT EXISTS (SELECT 1 FROM cdc_audit WHERE element_id = 'ticks:' || g AND op = 'insert')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missing, 0);
    stops(sluice);
}
