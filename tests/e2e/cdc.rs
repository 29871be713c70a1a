//! Change streams: a source table in the test database, streamed by
//! logical replication into the built-in audit handler, whose rows land in
//! the same database.

use crate::support::{Sluice, TestDb, cdc_toml, source_toml};
use serde_json::json;
use std::time::{Duration, Instant};

async fn wait_for_slot(client: &tokio_postgres::Client, db: &TestDb, sluice: &Sluice) {
    let slot = format!("s_{}", db.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A slot being created is already active, but changes count only
        // from its consistent point, known once confirmed_flush_lsn is set.
        let active = client
            .query_opt(
                "SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
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
    // Small parts: a transaction of many changes is delivered in several
    // calls, four at once.
    let toml = cdc_toml(&db, &["ticks"], "batch_changes = 7\nmemory_changes = 5\nconcurrent_calls = 4");
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

// ---------------------------------------------------------------------------
// Bootstrap, the aggregate example and the CLI.

/// Orders of 50 customers, `REPLICA IDENTITY FULL` for the aggregate.
async fn orders_table(client: &tokio_postgres::Client, rows: i32) {
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(12, 2) NOT NULL);
             ALTER TABLE orders REPLICA IDENTITY FULL;
             INSERT INTO orders SELECT g, g % 50, (g % 997) + 0.25 FROM generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
}

/// Two sources of one database: the audit handler into schema `audited`,
/// the aggregate into schema `derived`, both bootstrapping in parts of `batch`.
fn bootstrap_sources(db: &TestDb, batch: usize) -> String {
    let extra = |component: &str, schema: &str| {
        format!(
            "component = \"{component}\"\nschema = \"{schema}\"\nbootstrapProvider = \"postgres\"\nbatch_changes = {batch}"
        )
    };
    format!(
        "{}{}",
        source_toml(db, "audit", "audit", &["orders"], &extra("builtin:audit", "audited")),
        source_toml(db, "totals", "totals", &["orders"], &extra("builtin:aggregate", "derived")),
    )
}

type Totals = Vec<(String, i64, String)>;

/// The per-customer count and total, by SQL on the source and as derived
/// (customers with no orders left keep a row with count 0 there).
async fn totals(client: &tokio_postgres::Client) -> (Totals, Totals) {
    let rows = |sql: &'static str| async move {
        client
            .query(sql, &[])
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let source = rows("SELECT customer_id::text, count(*), sum(amount)::text FROM orders GROUP BY 1 ORDER BY 1").await;
    let derived = rows(
        "SELECT customer_id, order_count, total::text FROM derived.customer_order_totals
         WHERE order_count <> 0 ORDER BY 1",
    )
    .await;
    (source, derived)
}

/// Waits until the derived aggregate equals SQL's, then checks it stays so.
async fn wait_for_totals(client: &tokio_postgres::Client, sluice: &Sluice) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (source, derived) = totals(client).await;
        if source == derived && !source.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the aggregate never matched: {} customers by SQL, {} derived, first differences {:?}; log:\n{}",
            source.len(),
            derived.len(),
            source.iter().zip(&derived).filter(|(a, b)| a != b).take(3).collect::<Vec<_>>(),
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (source, derived) = totals(client).await;
    assert_eq!(source, derived);
}

/// How many of the two sources completed their bootstrap.
async fn bootstraps_done(client: &tokio_postgres::Client) -> i64 {
    let sql = "SELECT (SELECT count(*) FROM audited.sluice_cdc_bootstraps)
                    + (SELECT count(*) FROM derived.sluice_cdc_bootstraps)";
    client.query_one(sql, &[]).await.map(|r| r.get(0)).unwrap_or(0)
}

/// Waits until both bootstraps have imported their slot's snapshot: a
/// slot is consistent (its snapshot fixed) only once the transactions
/// running when it was asked for have ended.
async fn wait_for_snapshots(sluice: &Sluice) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while sluice.log().matches("bootstrap started").count() < 2 {
        assert!(Instant::now() < deadline, "the bootstraps never started; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Inserts, updates (amounts and customers) and deletes, one transaction
/// each; returns (inserts, updates, deletes, how many committed while a
/// bootstrap was still running).
async fn write_orders(url: String, first_new_id: i32, ops: i32) -> (i64, i64, i64, i64) {
    let client = crate::support::connect(&url).await;
    let (mut inserts, mut updates, mut deletes, mut during) = (0, 0, 0, 0);
    for i in 0..ops {
        let id = 1 + (i * 7919) % first_new_id;
        let changed = match i % 4 {
            0 => client.execute("INSERT INTO orders VALUES ($1, $1 % 50, 9.99)", &[&(first_new_id + i)]).await,
            1 => client.execute("UPDATE orders SET amount = amount + 1 WHERE id = $1", &[&id]).await,
            // A change of customer moves the order from one total to another.
            2 => client.execute("UPDATE orders SET customer_id = 49 - customer_id WHERE id = $1", &[&id]).await,
            _ => client.execute("DELETE FROM orders WHERE id = $1", &[&(id + 3)]).await,
        }
        .unwrap() as i64;
        match i % 4 {
            0 => inserts += changed,
            1 | 2 => updates += changed,
            _ => deletes += changed,
        }
        if bootstraps_done(&client).await < 2 {
            during += 1;
        }
    }
    (inserts, updates, deletes, during)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_then_stream_with_writes_during_the_bootstrap() {
    let db = TestDb::new().await;
    let client = db.client().await;
    const ROWS: i32 = 6_000;
    orders_table(&client, ROWS).await;
    let sluice = Sluice::start(Some(&db), &bootstrap_sources(&db, 20));
    // Every write from here on is streamed, while the bootstraps still read.
    wait_for_snapshots(&sluice).await;
    let (inserts, updates, deletes, during) = write_orders(db.url.clone(), ROWS + 1, 400).await;
    assert!(during > 0, "no write landed while the bootstraps ran: make them longer; log:\n{}", sluice.log());
    wait_for_totals(&client, &sluice).await;

    // The audit saw each row once: every row of the snapshot as a
    // bootstrap insert, then every later change once, none twice.
    let expected = inserts + updates + deletes;
    let deadline = Instant::now() + Duration::from_secs(60);
    let live = "SELECT count(*) FROM audited.cdc_audit WHERE commit_lsn > 0";
    while client.query_one(live, &[]).await.unwrap().get::<_, i64>(0) < expected {
        assert!(Instant::now() < deadline, "the audit misses changes; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE commit_lsn < 0),
                    count(DISTINCT element_id) FILTER (WHERE commit_lsn < 0),
                    count(DISTINCT commit_lsn) FILTER (WHERE commit_lsn < 0),
                    count(*) FILTER (WHERE commit_lsn < 0 AND (op <> 'insert' OR xid <> 0)),
                    (sum((after->>'amount')::numeric) FILTER (WHERE commit_lsn < 0))::text,
                    count(*) FILTER (WHERE commit_lsn > 0 AND op = 'insert'),
                    count(*) FILTER (WHERE commit_lsn > 0 AND op = 'update'),
                    count(*) FILTER (WHERE commit_lsn > 0 AND op = 'delete'),
                    count(*) FILTER (WHERE commit_lsn > 0 AND op = 'insert' AND (after->>'id')::int <= $1)
             FROM audited.cdc_audit",
            &[&ROWS],
        )
        .await
        .unwrap();
    let initial_sum: String = client
        .query_one(&format!("SELECT sum((g % 997) + 0.25)::text FROM generate_series(1, {ROWS}) g"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.get::<_, i64>(0), ROWS as i64, "every row of the snapshot once");
    assert_eq!(row.get::<_, i64>(1), ROWS as i64);
    assert_eq!(row.get::<_, i64>(2), 1, "one snapshot");
    assert_eq!(row.get::<_, i64>(3), 0, "snapshot rows are inserts of xid 0");
    assert_eq!(row.get::<_, String>(4), initial_sum, "the snapshot holds the rows as they were before the writes");
    assert_eq!(
        (row.get::<_, i64>(5), row.get::<_, i64>(6), row.get::<_, i64>(7)),
        (inserts, updates, deletes),
        "each later change streamed once"
    );
    assert_eq!(row.get::<_, i64>(8), 0, "no snapshot row streamed again");
    // The checkpoint starts at the snapshot's consistent point.
    let row = client
        .query_one(
            "SELECT b.rows, c.lsn >= b.consistent_point
             FROM derived.sluice_cdc_bootstraps b JOIN derived.sluice_cdc_checkpoints c USING (source)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), ROWS as i64);
    assert!(row.get::<_, bool>(1));
    assert!(sluice.log().contains("bootstrap complete"), "{}", sluice.log());
    stops(sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_bootstrap_redoes_it_with_no_duplicate() {
    let db = TestDb::new().await;
    let client = db.client().await;
    const ROWS: i32 = 20_000;
    orders_table(&client, ROWS).await;
    let toml = bootstrap_sources(&db, 10);
    let mut sluice = Sluice::start(Some(&db), &toml);
    // SIGKILL once rows have been handed over, before either bootstrap commits.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sluice.log().contains("bootstrap started") {
        assert!(Instant::now() < deadline, "no bootstrap started; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sluice.child.kill().unwrap();
    sluice.child.wait().unwrap();
    assert_eq!(bootstraps_done(&client).await, 0, "killed too late: a bootstrap completed; log:\n{}", sluice.log());
    let derived: i64 =
        client.query_one("SELECT count(*) FROM derived.customer_order_totals", &[]).await.unwrap().get(0);
    assert_eq!(derived, 0, "nothing of a bootstrap is committed before it completes");

    // Changes while no host runs: in the next snapshot.
    write_orders(db.url.clone(), ROWS + 1, 40).await;
    let rows_then: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    let sluice = Sluice::start(Some(&db), &toml);
    let deadline = Instant::now() + Duration::from_secs(120);
    while bootstraps_done(&client).await < 2 {
        assert!(Instant::now() < deadline, "the bootstraps never completed; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sluice.log().contains("its bootstrap never completed"), "{}", sluice.log());
    // And changes after it, streamed.
    write_orders(db.url.clone(), ROWS + 1000, 40).await;
    wait_for_totals(&client, &sluice).await;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT element_id), count(DISTINCT commit_lsn) FROM audited.cdc_audit
             WHERE commit_lsn < 0",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)),
        (rows_then, rows_then, 1),
        "one snapshot, each of its rows once"
    );
    stops(sluice);
}

/// Runs `sluice cdc ARGS` with `db` as the destination.
fn cdc_cli(args: &[&str], db: &TestDb) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("cdc")
        .args(args)
        .env("SLUICE_DATABASE_URL", &db.url)
        .env_remove("SLUICE_CONFIG")
        .env_remove("SLUICE_LOG")
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (output.status.code().unwrap(), text(output.stdout), text(output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_bootstraps_then_shows_the_status() {
    let db = TestDb::new().await;
    let client = db.client().await;
    orders_table(&client, 3_000).await;
    let source = source_toml(
        &db,
        "totals",
        "totals",
        &["orders"],
        "component = \"builtin:aggregate\"\nschema = \"derived\"\nbootstrapProvider = \"postgres\"\nbatch_changes = 500",
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cdc-cli-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sluice.toml");
    let toml = format!(
        "data_dir = {:?}\n[components]\ncache_dir = {:?}\n\n{source}",
        dir.join("data"),
        crate::support::cache_dir()
    );
    std::fs::write(&config, toml).unwrap();
    let config = config.to_str().unwrap();

    let (code, out, err) = cdc_cli(&["status", "--config", config], &db);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(missing: made at the next start)") && out.contains("pending"), "{out}");

    let (code, out, err) = cdc_cli(&["bootstrap", "totals", "--config", config], &db);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("bootstrapped source totals: 1 tables, 3000 rows"), "{out}");
    let (by_sql, derived) = totals(&client).await;
    assert_eq!(by_sql, derived);
    let (code, out, _) = cdc_cli(&["bootstrap", "totals", "--config", config], &db);
    assert_eq!(code, 0);
    assert!(out.contains("was bootstrapped at") && out.contains("--redo"), "{out}");
    let (code, _, err) = cdc_cli(&["bootstrap", "nope", "--config", config], &db);
    assert_eq!(code, 1);
    assert!(err.contains("no [[cdc]] source is named \"nope\"") && err.contains("totals"), "{err}");

    let status = |db: &TestDb| {
        let (code, out, err) = cdc_cli(&["status", "--config", config, "--json"], db);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["sources"][0].clone()
    };
    let s = status(&db);
    assert_eq!(s["slot_exists"], json!(true), "{s}");
    assert_eq!(s["owner"], json!(null), "{s}");
    assert_eq!(s["bootstrap"]["state"], "complete", "{s}");
    assert_eq!(s["bootstrap"]["rows"], 3000, "{s}");
    assert_eq!(s["checkpoint"]["lsn"], s["bootstrap"]["consistent_point"], "{s}");
    assert_eq!(s["confirmed_flush_lsn"], s["bootstrap"]["consistent_point"], "{s}");

    // The service streams on from the consistent point; the CLI sees its owner.
    let sluice = Sluice::start(Some(&db), &source);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&db);
        if !s["owner"].is_null() && s["active"] == json!(true) {
            break;
        }
        assert!(Instant::now() < deadline, "no owner seen: {s}; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .batch_execute("UPDATE orders SET customer_id = 7 WHERE id <= 10; DELETE FROM orders WHERE id > 2990")
        .await
        .unwrap();
    wait_for_totals(&client, &sluice).await;
    let s = status(&db);
    assert!(s["lag_bytes"].as_i64().is_some_and(|b| b >= 0), "{s}");
    assert!(s["owner"]["pid"].as_i64().is_some(), "{s}");
    assert!(sluice.log().contains("reusing the replication slot"), "{}", sluice.log());
    let (code, out, _) = cdc_cli(&["status", "--config", config], &db);
    assert_eq!(code, 0);
    assert!(out.contains("bootstrap        complete at") && out.contains("owner            pid"), "{out}");
    let (code, _, err) = cdc_cli(&["bootstrap", "totals", "--config", config, "--redo"], &db);
    assert_eq!(code, 1);
    assert!(err.contains("another host streams source \"totals\""), "{err}");
    stops(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The writer's pipeline (statements sent without waiting, consecutive
/// plans merged) stores what one statement per plan, one after the other,
/// would: each step below fails if a statement ran out of order or a merge
/// changed what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_merged_plans_store_what_one_statement_each_would() {
    use sluice::cdc::plans::Pipeline;
    use sluice_replication::{SslMode, TlsSettings};
    use sluice_sdk::{Column, ColumnType, Conflict, Row, Table, UpsertPlan, Value};

    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE latest (id text PRIMARY KEY, a bigint, b text); \
             CREATE TABLE totals (k text PRIMARY KEY, n bigint NOT NULL)",
        )
        .await
        .unwrap();
    let latest = Table {
        name: "latest".into(),
        columns: vec![
            Column::new("id", ColumnType::Text).not_null(),
            Column::new("a", ColumnType::Int8),
            Column::new("b", ColumnType::Text),
        ],
        primary_key: vec!["id".into()],
        indexes: vec![],
        template: false,
    };
    let totals = Table {
        name: "totals".into(),
        columns: vec![Column::new("k", ColumnType::Text).not_null(), Column::new("n", ColumnType::Int8).not_null()],
        primary_key: vec!["k".into()],
        indexes: vec![],
        template: false,
    };
    let names = |columns: &[&str]| columns.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let row = |id: &str, a: i64, b: &str| Row {
        event: 0,
        values: vec![Value::Text(id.into()), Value::Int8(a), Value::Text(b.into())],
    };
    let latest_plan = |set: &[&str], rows: Vec<Row>| UpsertPlan {
        table: "latest".into(),
        template: None,
        columns: names(&["id", "a", "b"]),
        conflict: if set.is_empty() { Conflict::DoNothing } else { Conflict::Update(names(set)) },
        rows,
    };
    let add = |n: i64| UpsertPlan {
        table: "totals".into(),
        template: None,
        columns: names(&["k", "n"]),
        conflict: Conflict::Update(names(&["+n"])),
        rows: vec![Row { event: 0, values: vec![Value::Text("k".into()), Value::Int8(n)] }],
    };
    let empty_totals = UpsertPlan {
        table: "totals".into(),
        template: None,
        columns: vec![],
        conflict: Conflict::DoNothing,
        rows: vec![],
    };

    let pg: tokio_postgres::Config = db.url.parse().unwrap();
    let settings = sluice::db::PgSettings::new(pg, TlsSettings::new(SslMode::Disable, None), None);
    let pool = sluice::db::pool(settings, 1, Duration::from_secs(10)).unwrap();
    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    let mut pipeline = Pipeline::new(&tx, "public");
    // In commit order:
    for (table, plan) in [
        (&latest, latest_plan(&["a", "b"], vec![row("x", 1, "first")])),
        // Merged with the one before: the last row wins either way.
        (&latest, latest_plan(&["a", "b"], vec![row("x", 2, "second")])),
        // Sets `b` only: alone, after the two before and before the last.
        (&latest, latest_plan(&["b"], vec![row("x", 3, "third")])),
        (&latest, latest_plan(&[], vec![row("y", 10, "kept")])),
        // Merged: the first row of a key wins either way.
        (&latest, latest_plan(&[], vec![row("y", 11, "dropped")])),
        (&totals, add(1)),
        (&totals, add(2)),
        // Emptying the table goes alone, after the sums before it.
        (&totals, empty_totals),
        (&totals, add(5)),
        (&latest, latest_plan(&["a"], vec![row("x", 4, "not stored either")])),
    ] {
        pipeline.push(table, plan, ()).await.unwrap();
    }
    pipeline.finish().await.unwrap();
    drop(pipeline);
    tx.commit().await.unwrap();

    let stored = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| format!("{:?}", (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, Option<String>>(2))))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        stored("SELECT id, a, b FROM latest ORDER BY id").await,
        [r#"("x", 4, Some("third"))"#, r#"("y", 10, Some("kept"))"#]
    );
    assert_eq!(stored("SELECT k, n, NULL::text FROM totals").await, [r#"("k", 5, None)"#]);
}

// ---------------------------------------------------------------------------
// A failure retrying soon cannot mend.

/// A source whose role loses the right to replicate stops (no reconnecting
/// every second), says why in `/status.json`, `/readyz` and the metrics, and
/// resumes by itself once the right is back, with no change lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_privilege_stops_the_source_until_it_is_granted_again() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let role = format!("cdc_{}", db.name);
    // The role streams the slot; the publication is made for it, since
    // only the table's owner may.
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, note text);
             CREATE PUBLICATION p_{db} FOR TABLE orders;
             CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'cdc-secret';",
            db = db.name
        ))
        .await
        .unwrap();
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else { panic!("a TCP test server") };
    let toml = format!(
        "[[cdc]]\nname = \"shop\"\nhost = {host:?}\nport = {}\ndatabase = {:?}\nuser = {role:?}\n\
         password = \"cdc-secret\"\nslotName = \"s_{}\"\npublicationName = \"p_{}\"\nsslMode = \"disable\"\n\
         tables = [\"orders\"]\nfailed_retry_ms = 500\n",
        config.get_ports()[0],
        db.name,
        db.name,
        db.name,
    );
    let sluice = Sluice::start(Some(&db), &toml);
    wait_for_slot(&client, &db, &sluice).await;
    client.batch_execute("INSERT INTO orders VALUES (1, 'before')").await.unwrap();
    wait_for_audit(&client, 1, &sluice).await;

    // The right to replicate is revoked, and the stream ended: it cannot
    // start again.
    client.batch_execute(&format!("ALTER ROLE {role} NOREPLICATION")).await.unwrap();
    client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("s_{}", db.name)],
        )
        .await
        .unwrap();
    let source = || async {
        let status: serde_json::Value =
            crate::support::http().get(sluice.url("/status.json")).send().await.unwrap().json().await.unwrap();
        status["cdc"][0].clone()
    };
    let started = Instant::now();
    let failed = loop {
        let source = source().await;
        if source["state"] == "failed" {
            break source;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never failed: {source}; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("42501"), "the reason names the refusal: {failed}");
    assert!(!reason.contains("cdc-secret"), "{failed}");
    let ready = crate::support::http().get(sluice.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["cdc"]["sources"]["shop"], "failed", "{ready}");
    let metrics = crate::support::http().get(sluice.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sluice_cdc_failed{source=\"shop\"} 1"), "{metrics}");
    // Said once, at error level, not at every try.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = sluice.log();
    assert_eq!(log.matches("change stream stopped until the cause is mended").count(), 1, "{log}");
    assert_eq!(source().await["state"], "failed");

    // Changes made meanwhile wait in the slot.
    client.batch_execute("INSERT INTO orders VALUES (2, 'while stopped')").await.unwrap();
    client.batch_execute(&format!("ALTER ROLE {role} REPLICATION")).await.unwrap();
    let started = Instant::now();
    loop {
        let source = source().await;
        if source["state"] == "owner" {
            assert!(source["reason"].is_null(), "{source}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never resumed: {source}; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.batch_execute("INSERT INTO orders VALUES (3, 'after')").await.unwrap();
    wait_for_audit(&client, 3, &sluice).await;
    stops(sluice);
}
