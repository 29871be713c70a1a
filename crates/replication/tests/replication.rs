//! The replication connection and the pgoutput decoder against a real
//! PostgreSQL with `wal_level=logical` (see `common`).

mod common;

use std::time::Duration;

use common::{CLEAR_PASSWORD, CLEAR_USER, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, TRUST_USER, cluster};
use sluice_replication::pgoutput::{Commit, Message as PgMessage, OldTuple, Value, oid};
use sluice_replication::{
    EnsuredSlot, Error, Event, Lsn, ReplicationClient, ReplicationConfig, ReplicationStream, SnapshotAction,
    StartOptions,
};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(30);

/// The next pgoutput message, skipping keepalives.
async fn next_message(stream: &mut ReplicationStream) -> PgMessage {
    loop {
        match timeout(STEP, stream.recv()).await.expect("no message within 30 s").unwrap() {
            Some(Event::Data { message, .. }) => return message,
            Some(Event::Keepalive { .. }) => {}
            None => panic!("the stream ended"),
        }
    }
}

/// The messages of the next transaction, from Begin to Commit, without Relation and Type messages.
async fn next_transaction(stream: &mut ReplicationStream) -> (Vec<PgMessage>, Commit) {
    let first = next_message(stream).await;
    assert!(matches!(first, PgMessage::Begin(_)), "expected Begin, got {first:?}");
    let mut changes = Vec::new();
    loop {
        match next_message(stream).await {
            PgMessage::Commit(c) => return (changes, c),
            PgMessage::Relation { .. } | PgMessage::Type(_) => {}
            other => changes.push(other),
        }
    }
}

/// A database with `ddl` run in it, a publication `FOR TABLE tables`, a slot
/// (named after the database) and a started stream.
async fn stream_for(prefix: &str, ddl: &str, tables: &[&str]) -> (String, ReplicationStream) {
    let c = cluster();
    let db = c.new_database(prefix);
    c.psql(&db, ddl);
    let mut client = ReplicationClient::connect(&c.config(&db)).await.unwrap();
    let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    assert!(client.ensure_publication("pub", &tables).await.unwrap());
    client.create_replication_slot(&db, SnapshotAction::NoExport).await.unwrap();
    let mut options = StartOptions::new(&db, "pub");
    options.status_interval = Duration::from_millis(200);
    let stream = client.start_replication(options).await.unwrap();
    (db, stream)
}

fn slot_confirmed_lsn(slot: &str) -> Lsn {
    let text = cluster()
        .psql("postgres", &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"));
    text.parse().unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// Drives the stream (keepalives, status updates) until `cond` holds, up to 30 s.
async fn drive_until(stream: &mut ReplicationStream, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        if let Ok(event) = timeout(Duration::from_millis(100), stream.recv()).await {
            match event.unwrap() {
                Some(Event::Data { message, .. }) => panic!("unexpected data while waiting for {what}: {message:?}"),
                Some(Event::Keepalive { .. }) => {}
                None => panic!("the stream ended"),
            }
        }
    }
}

#[tokio::test]
async fn authentication_methods_and_a_wrong_password() {
    let c = cluster();
    let db = c.new_database("auth");

    let mut scram = ReplicationClient::connect(&c.config(&db)).await.unwrap();
    assert!(scram.server_version_num() >= 100_000);
    assert_eq!(scram.parameter("DateStyle"), Some("ISO, MDY"));
    assert_eq!(scram.parameter("TimeZone"), Some("UTC"));
    assert!(scram.backend_pid().is_some());
    let rows = scram.simple_query("SELECT current_user, current_database()").await.unwrap();
    assert_eq!(rows[0].get(0), Some(common::SCRAM_USER));
    assert_eq!(rows[0].get_by_name("current_database"), Some(db.as_str()));
    scram.close().await.unwrap();

    for (user, password) in [(MD5_USER, Some(MD5_PASSWORD)), (CLEAR_USER, Some(CLEAR_PASSWORD)), (TRUST_USER, None)] {
        let mut config = c.config(&db);
        config.user = user.into();
        config.password = password.map(str::to_string);
        let mut client = ReplicationClient::connect(&config).await.unwrap_or_else(|e| panic!("{user}: {e}"));
        client.identify_system().await.unwrap();
    }

    // Over the unix socket, trusted.
    let mut config = ReplicationConfig::new(&db, "postgres");
    config.host = c.socket_dir().to_str().unwrap().to_string();
    config.port = c.port;
    let mut local = ReplicationClient::connect(&config).await.unwrap();
    assert_eq!(local.identify_system().await.unwrap().dbname.as_deref(), Some(db.as_str()));

    // A wrong password: the server's clear error, with no password in it.
    let mut config = c.config(&db);
    config.password = Some("Wrong-Pa55word-zz".into());
    let err = ReplicationClient::connect(&config).await.unwrap_err();
    assert_eq!(err.code(), Some("28P01"), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(!shown.contains("Wrong-Pa55word") && !shown.contains(SCRAM_PASSWORD), "{shown}");
    // Same with MD5 and cleartext.
    for user in [MD5_USER, CLEAR_USER] {
        config.user = user.into();
        let err = ReplicationClient::connect(&config).await.unwrap_err();
        assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
        assert!(!format!("{err} {err:?}").contains("Wrong-Pa55word"));
    }

    // No password configured where one is needed.
    config.user = common::SCRAM_USER.into();
    config.password = None;
    let err = ReplicationClient::connect(&config).await.unwrap_err();
    assert!(matches!(err, Error::Auth(_)) && err.to_string().contains("none is configured"), "{err}");

    // Nobody listening.
    let mut config = c.config(&db);
    config.port = 1;
    let err = ReplicationClient::connect(&config).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn identify_system_slots_and_the_exported_snapshot() {
    let c = cluster();
    let db = c.new_database("slots");
    c.psql(&db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    let mut client = ReplicationClient::connect(&c.config(&db)).await.unwrap();

    let system = client.identify_system().await.unwrap();
    assert_eq!(system.dbname.as_deref(), Some(db.as_str()));
    assert_eq!(system.timeline, 1);
    assert!(!system.xlogpos.is_invalid());
    assert!(system.system_id.parse::<u64>().is_ok(), "{}", system.system_id);

    assert_eq!(client.replication_slot(&db).await.unwrap(), None);
    let created = client.create_replication_slot(&db, SnapshotAction::Export).await.unwrap();
    assert_eq!(created.slot_name, db);
    assert_eq!(created.output_plugin.as_deref(), Some("pgoutput"));
    assert!(created.consistent_point >= system.xlogpos);
    let snapshot = created.snapshot_name.clone().expect("an exported snapshot");

    // Written after the slot's consistent point: streamed, not in the snapshot.
    c.psql(&db, "INSERT INTO t VALUES (2)");
    let in_snapshot = c.psql(
        &db,
        &format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'; \
             SELECT string_agg(id::text, ',') FROM t; COMMIT;"
        ),
    );
    assert_eq!(in_snapshot, "1");

    // The slot is listed and reused.
    let info = client.replication_slot(&db).await.unwrap().expect("the slot");
    assert_eq!(info.plugin.as_deref(), Some("pgoutput"));
    assert_eq!(info.slot_type, "logical");
    assert_eq!(info.database.as_deref(), Some(db.as_str()));
    assert_eq!(info.confirmed_flush_lsn, Some(created.consistent_point));
    let EnsuredSlot::Existing(again) = client.ensure_slot(&db).await.unwrap() else { panic!("not reused") };
    assert_eq!(again.slot_name, db);

    // A slot of another database is not taken for ours.
    let other = c.new_database("slots_other");
    let mut other_client = ReplicationClient::connect(&c.config(&other)).await.unwrap();
    let err = other_client.ensure_slot(&db).await.unwrap_err();
    assert!(err.to_string().contains("not a pgoutput slot of database"), "{err}");
    let EnsuredSlot::Created(fresh) = other_client.ensure_slot(&other).await.unwrap() else { panic!("not created") };
    assert!(fresh.snapshot_name.is_some());

    // Errors of replication commands are server errors, and the connection goes on.
    let err = client.create_replication_slot(&db, SnapshotAction::NoExport).await.unwrap_err();
    assert_eq!(err.code(), Some("42710"), "{err}");
    client.drop_replication_slot(&db, false).await.unwrap();
    assert_eq!(client.replication_slot(&db).await.unwrap(), None);
    other_client.drop_replication_slot(&other, true).await.unwrap();
}

#[tokio::test]
async fn a_missing_publication_is_created_for_the_tables() {
    let c = cluster();
    let db = c.new_database("pubs");
    c.psql(&db, r#"CREATE SCHEMA inv; CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE inv."Items" (id int)"#);
    let mut client = ReplicationClient::connect(&c.config(&db)).await.unwrap();
    assert!(!client.publication_exists("p").await.unwrap());
    let tables = vec!["orders".to_string(), "inv.Items".to_string()];
    assert!(client.ensure_publication("p", &tables).await.unwrap());
    assert!(client.publication_exists("p").await.unwrap());
    assert!(!client.ensure_publication("p", &tables).await.unwrap(), "an existing publication is kept");
    let listed = c.psql(
        &db,
        "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'p'",
    );
    assert_eq!(listed, "inv.Items,public.orders");
    let err = client.ensure_publication("q", &[]).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = client.ensure_publication("q", &["missing_table".into()]).await.unwrap_err();
    assert_eq!(err.code(), Some("42P01"), "{err}");
}

const ALL_TYPES: &str = "CREATE TABLE all_types (
    id int4 PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8, num numeric, b bool, t text,
    vc varchar(20), bp char(5), nm name, js json, jb jsonb, u uuid, ts timestamp, tstz timestamptz,
    d date, by bytea, inet_v inet, arr int4[])";

#[tokio::test]
async fn every_type_round_trips_through_insert_update_delete_and_truncate() {
    let (db, mut stream) = stream_for("types", ALL_TYPES, &["all_types"]).await;
    assert_eq!(stream.protocol_version(), 2);
    let c = cluster();
    c.psql(
        &db,
        r#"INSERT INTO all_types VALUES
            (1, -32768, 9223372036854775807, 1.5, 0.1, '12345678901234567890.123456789', true, 'héllo ✓',
             'v', 'ab', 'nm', '{"a": 1,  "z": null}', '{"b": [1, 2]}', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
             '2024-02-29 23:59:59.000001', '2024-02-29 23:59:59.5+02', '2024-03-01', '\x00ff10', '10.0.0.1/8', '{1,2}'),
            (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
             NULL, NULL, NULL)"#,
    );
    let (changes, commit) = next_transaction(&mut stream).await;
    assert!(commit.end_lsn > commit.commit_lsn);
    let [PgMessage::Insert(first), PgMessage::Insert(second)] = &changes[..] else { panic!("{changes:?}") };
    let relation = &first.relation;
    assert_eq!((relation.schema(), relation.name.as_str()), ("public", "all_types"));
    assert_eq!(relation.key_columns().collect::<Vec<_>>(), [0]);
    let expected = vec![
        Value::Int4(1),
        Value::Int2(-32768),
        Value::Int8(i64::MAX),
        Value::Float4(1.5),
        Value::Float8(0.1),
        Value::Numeric("12345678901234567890.123456789".into()),
        Value::Bool(true),
        Value::Text("héllo ✓".into()),
        Value::Text("v".into()),
        Value::Text("ab   ".into()),
        Value::Text("nm".into()),
        Value::Json(r#"{"a": 1,  "z": null}"#.into()),
        Value::Json(r#"{"b": [1, 2]}"#.into()),
        Value::Uuid([0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11]),
        Value::Timestamp(1_709_251_199_000_001),
        Value::TimestampTz(1_709_243_999_500_000),
        Value::Date(19_783),
        Value::Bytea(vec![0, 0xff, 0x10]),
        Value::Other { type_oid: 869, text: "10.0.0.1/8".into() },
        Value::Other { type_oid: 1007, text: "{1,2}".into() },
    ];
    for (i, (column, value)) in relation.zip(&first.new).enumerate() {
        assert_eq!(value, &expected[i], "column {}", column.name);
    }
    assert_eq!(first.new.0.len(), expected.len());
    assert_eq!(relation.columns[14].type_oid, oid::TIMESTAMP);
    assert_eq!(second.new.0[0], Value::Int4(2));
    assert!(second.new.0[1..].iter().all(Value::is_null), "{:?}", second.new);

    c.psql(&db, "UPDATE all_types SET t = 'changed', num = 'NaN', f8 = '-Infinity' WHERE id = 1");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Update(update)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(update.old, None, "default replica identity, key unchanged: no old row");
    assert_eq!(update.new.0[7], Value::Text("changed".into()));
    assert_eq!(update.new.0[5], Value::Numeric("NaN".into()));
    assert_eq!(update.new.0[4], Value::Float8(f64::NEG_INFINITY));
    assert_eq!(update.new.0[16], Value::Date(19_783));

    c.psql(&db, "DELETE FROM all_types WHERE id = 2");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Delete(delete)] = &changes[..] else { panic!("{changes:?}") };
    let OldTuple::Key(key) = &delete.old else { panic!("{delete:?}") };
    assert_eq!(key.0[0], Value::Int4(2));

    c.psql(&db, "TRUNCATE all_types");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Truncate(truncate)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(truncate.relations.len(), 1);
    assert_eq!(truncate.relations[0].name, "all_types");
    assert!(!truncate.cascade && !truncate.restart_identity);
}

#[tokio::test]
async fn truncate_of_several_tables_with_options() {
    let (db, mut stream) = stream_for(
        "trunc",
        "CREATE TABLE a (id serial PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY REFERENCES a)",
        &["a", "b"],
    )
    .await;
    let c = cluster();
    c.psql(&db, "INSERT INTO a DEFAULT VALUES");
    next_transaction(&mut stream).await;
    c.psql(&db, "TRUNCATE a RESTART IDENTITY CASCADE");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Truncate(truncate)] = &changes[..] else { panic!("{changes:?}") };
    assert!(truncate.cascade && truncate.restart_identity);
    let mut names: Vec<_> = truncate.relations.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

#[tokio::test]
async fn replica_identity_default_and_full() {
    let (db, mut stream) = stream_for(
        "ident",
        "CREATE TABLE dflt (id int PRIMARY KEY, v text);
         CREATE TABLE full_t (id int PRIMARY KEY, v text); ALTER TABLE full_t REPLICA IDENTITY FULL;
         INSERT INTO dflt VALUES (1, 'a'); INSERT INTO full_t VALUES (1, 'a');",
        &["dflt", "full_t"],
    )
    .await;
    let c = cluster();
    c.psql(&db, "UPDATE dflt SET v = 'b' WHERE id = 1");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Update(u)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(u.old, None);
    assert_eq!(u.new.0, [Value::Int4(1), Value::Text("b".into())]);

    c.psql(&db, "UPDATE full_t SET v = 'b' WHERE id = 1");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Update(u)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(
        u.old,
        Some(OldTuple::Full(sluice_replication::pgoutput::Tuple(vec![Value::Int4(1), Value::Text("a".into())])))
    );
    assert_eq!(u.new.0[1], Value::Text("b".into()));

    // A key change: the old key, and only the key, with the default identity.
    c.psql(&db, "UPDATE dflt SET id = 10 WHERE id = 1");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Update(u)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(u.old, Some(OldTuple::Key(sluice_replication::pgoutput::Tuple(vec![Value::Int4(1), Value::Null]))));
    assert_eq!(u.new.0, [Value::Int4(10), Value::Text("b".into())]);

    c.psql(&db, "DELETE FROM dflt; DELETE FROM full_t;");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Delete(d1), PgMessage::Delete(d2)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(d1.old, OldTuple::Key(sluice_replication::pgoutput::Tuple(vec![Value::Int4(10), Value::Null])));
    assert_eq!(
        d2.old,
        OldTuple::Full(sluice_replication::pgoutput::Tuple(vec![Value::Int4(1), Value::Text("b".into())]))
    );
}

#[tokio::test]
async fn an_unchanged_toasted_value_is_unchanged_not_null() {
    let (db, mut stream) = stream_for(
        "toast",
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int); ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;",
        &["docs"],
    )
    .await;
    let c = cluster();
    c.psql(&db, "INSERT INTO docs VALUES (1, repeat('x', 20000), 0)");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Insert(ins)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(ins.new.0[1], Value::Text("x".repeat(20_000)));

    c.psql(&db, "UPDATE docs SET n = 1 WHERE id = 1");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Update(u)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(u.new.0, [Value::Int4(1), Value::Unchanged, Value::Int4(1)]);

    // Changing it sends it again.
    c.psql(&db, "UPDATE docs SET body = repeat('y', 10000) WHERE id = 1");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Update(u)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(u.new.0[1], Value::Text("y".repeat(10_000)));
}

#[tokio::test]
async fn a_large_transaction_is_streamed_in_chunks() {
    let (db, mut stream) = stream_for("big", "CREATE TABLE big (id int PRIMARY KEY, pad text)", &["big"]).await;
    assert!(stream.streaming());
    const ROWS: i32 = 5_000;
    cluster().psql(&db, &format!("INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, {ROWS}) g"));

    let (mut starts, mut stops, mut inserts) = (0, 0, 0);
    let mut xid = None;
    let commit = loop {
        match next_message(&mut stream).await {
            PgMessage::StreamStart { xid: x, first_segment } => {
                assert_eq!(first_segment, starts == 0);
                assert!(xid.is_none() || xid == Some(x));
                xid = Some(x);
                starts += 1;
            }
            PgMessage::StreamStop => stops += 1,
            PgMessage::Insert(ins) => {
                assert_eq!(ins.xid, xid, "changes in a stream carry its xid");
                inserts += 1;
                assert_eq!(ins.new.0[0], Value::Int4(inserts));
            }
            PgMessage::Relation { .. } => {}
            PgMessage::StreamCommit(c) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(Some(commit.xid), xid);
    assert!(starts > 1, "a {ROWS}-row transaction over 64kB came in one chunk");
    assert_eq!(starts, stops);
    assert_eq!(inserts, ROWS);
    assert!(commit.end_lsn > commit.commit_lsn);

    // The streamed transaction is confirmed like any other.
    stream.confirm(commit.end_lsn);
    stream.send_status_now().await.unwrap();
    drive_until(&mut stream, "the streamed commit to be confirmed", || slot_confirmed_lsn(&db) >= commit.end_lsn).await;
}

#[tokio::test]
async fn confirmed_lsn_advances_only_when_confirmed_and_on_an_idle_slot() {
    let (db, mut stream) = stream_for(
        "confirm",
        "CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE unwatched (id int PRIMARY KEY);",
        &["watched"],
    )
    .await;
    let c = cluster();
    let other_db = c.new_database("confirm_other");
    c.psql(&other_db, "CREATE TABLE noise (id serial PRIMARY KEY, v text)");

    c.psql(&db, "INSERT INTO watched VALUES (1)");
    let (_, commit) = next_transaction(&mut stream).await;
    let before = slot_confirmed_lsn(&db);
    assert!(before < commit.end_lsn);

    // Unconfirmed: WAL elsewhere and status updates do not move the slot past the commit.
    c.psql(&other_db, "INSERT INTO noise (v) SELECT 'n' FROM generate_series(1, 100)");
    for _ in 0..15 {
        if let Ok(event) = timeout(Duration::from_millis(100), stream.recv()).await {
            assert!(matches!(event.unwrap(), Some(Event::Keepalive { .. })));
        }
    }
    assert!(slot_confirmed_lsn(&db) < commit.end_lsn, "the slot moved past an unconfirmed commit");
    assert!(stream.confirmed_lsn() < commit.end_lsn);

    // Confirmed: the slot follows.
    stream.confirm(commit.end_lsn);
    stream.send_status_now().await.unwrap();
    drive_until(&mut stream, "the confirmed commit", || slot_confirmed_lsn(&db) >= commit.end_lsn).await;

    // Idle: changes only in another database and in a table outside the
    // publication; the slot's position still advances past them.
    c.psql(&other_db, "INSERT INTO noise (v) SELECT 'm' FROM generate_series(1, 100)");
    c.psql(&db, "INSERT INTO unwatched VALUES (1), (2)");
    let target: Lsn = c.psql(&other_db, "SELECT pg_current_wal_lsn()").parse().unwrap();
    assert!(target > commit.end_lsn);
    drive_until(&mut stream, "the idle slot to advance", || slot_confirmed_lsn(&db) >= target).await;
    assert!(stream.server_wal_end() >= target);
    assert!(stream.confirmed_lsn() >= target);

    // Stopping hands the connection back.
    let mut client = stream.stop().await.unwrap();
    assert_eq!(client.identify_system().await.unwrap().dbname.as_deref(), Some(db.as_str()));
    client.drop_replication_slot(&db, true).await.unwrap();
}

#[tokio::test]
async fn restarting_from_a_confirmed_lsn_skips_what_was_confirmed() {
    let (db, mut stream) = stream_for("restart", "CREATE TABLE r (id int PRIMARY KEY)", &["r"]).await;
    let c = cluster();
    c.psql(&db, "INSERT INTO r VALUES (1)");
    c.psql(&db, "INSERT INTO r VALUES (2)");
    let (_, first) = next_transaction(&mut stream).await;
    let (_, _second) = next_transaction(&mut stream).await;
    // Only the first is confirmed: after a restart, the second comes again.
    stream.confirm(first.end_lsn);
    let client = stream.stop().await.unwrap();

    // PostgreSQL does not stream twice on one connection: the second stream just ends.
    let mut again = client.start_replication(StartOptions::new(&db, "pub")).await.unwrap();
    assert_eq!(timeout(STEP, again.recv()).await.unwrap().unwrap(), None);
    let mut client = again.stop().await.unwrap();
    client.identify_system().await.unwrap();
    client.close().await.unwrap();

    let client = ReplicationClient::connect(&c.config(&db)).await.unwrap();
    let mut options = StartOptions::new(&db, "pub");
    options.status_interval = Duration::from_millis(200);
    let mut stream = client.start_replication(options).await.unwrap();
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Insert(ins)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(ins.new.0[0], Value::Int4(2));

    // Starting at an LSN past the first commit gives the same.
    stream.stop().await.unwrap().close().await.unwrap();
    let client = ReplicationClient::connect(&c.config(&db)).await.unwrap();
    let mut options = StartOptions::new(&db, "pub");
    options.start_lsn = first.end_lsn;
    let mut from_lsn = client.start_replication(options).await.unwrap();
    let (changes, _) = next_transaction(&mut from_lsn).await;
    let [PgMessage::Insert(ins)] = &changes[..] else { panic!("{changes:?}") };
    assert_eq!(ins.new.0[0], Value::Int4(2));
}

#[tokio::test]
async fn logical_decoding_messages_arrive_when_asked_for() {
    let (db, mut stream) = stream_for("msgs", "CREATE TABLE m (id int PRIMARY KEY)", &["m"]).await;
    cluster()
        .psql(&db, "BEGIN; INSERT INTO m VALUES (1); SELECT pg_logical_emit_message(true, 'sluice', 'hello'); COMMIT;");
    let (changes, _) = next_transaction(&mut stream).await;
    let [PgMessage::Insert(_), PgMessage::Message(msg)] = &changes[..] else { panic!("{changes:?}") };
    assert!(msg.transactional);
    assert_eq!(msg.prefix, "sluice");
    assert_eq!(&msg.content[..], b"hello");
}

#[tokio::test]
async fn keepalives_that_ask_for_a_reply_are_answered() {
    let c = cluster();
    let db = c.new_database("keepalive");
    c.psql(&db, "CREATE TABLE k (id int PRIMARY KEY)");
    // The server wants a reply every half second and drops the connection after a second without one.
    c.psql("postgres", &format!("ALTER DATABASE {db} SET wal_sender_timeout = '1s'"));
    let mut client = ReplicationClient::connect(&c.config(&db)).await.unwrap();
    let timeout_setting = client.simple_query("SHOW wal_sender_timeout").await.unwrap();
    assert_eq!(timeout_setting[0].get(0), Some("1s"));
    client.ensure_publication("pub", &["k".into()]).await.unwrap();
    client.create_replication_slot(&db, SnapshotAction::NoExport).await.unwrap();
    let mut options = StartOptions::new(&db, "pub");
    // No timer-driven updates: only the answers to the server's requests keep the connection up.
    options.status_interval = Duration::from_secs(3600);
    let mut stream = client.start_replication(options).await.unwrap();

    let mut asked = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        if let Ok(event) = tokio::time::timeout_at(until, stream.recv()).await {
            match event.unwrap() {
                Some(Event::Keepalive { reply_requested: true, .. }) => asked += 1,
                Some(Event::Keepalive { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(asked >= 2, "the server asked for {asked} replies in 4 s");
    c.psql(&db, "INSERT INTO k VALUES (1)");
    let (changes, _) = next_transaction(&mut stream).await;
    assert!(matches!(&changes[..], [PgMessage::Insert(_)]), "{changes:?}");
}
