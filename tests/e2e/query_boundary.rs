//! The query API's boundary, tried as a hostile tenant would (issue 22):
//! queries log in as a role that can read only their tenant's schema, so
//! what slips past the checks still reads nothing else; what the checks
//! refuse, they refuse by PostgreSQL's reading of the SQL; no SQL stops
//! the service; one tenant's queries do not hold up another's; answers are
//! capped in bytes; no session state outlives a query.

use crate::query::{ACME_KEY, ACME_TOKEN, GLOBEX_KEY, GLOBEX_TOKEN, answer, ingest, query};
use crate::support::{EXAMPLE, Sluice, TestDb, http};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// acme and globex in their own schemas, with `[query]` settings.
fn config(query: &str) -> String {
    format!(
        r#"[query]
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
"#
    )
}

/// A 400 whose error says `says`.
#[track_caller]
fn refused(result: &(u16, Value, String), says: &str) {
    let (status, body, _) = result;
    assert_eq!(*status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(says), "{error:?} does not say {says:?}");
}

/// A 400 from PostgreSQL: permission denied (42501).
#[track_caller]
fn denied(result: &(u16, Value, String)) {
    let (status, body, _) = result;
    assert_eq!((*status, &body["sqlstate"]), (400, &json!("42501")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("permission denied"), "{body}");
}

/// Advisory locks held in the test's database (other tests' databases
/// share the server).
const ADVISORY_LOCKS: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

async fn healthz(sluice: &Sluice) -> u16 {
    http().get(sluice.url("/healthz")).send().await.unwrap().status().as_u16()
}

/// `url` logging in as `user` with `password`.
fn url_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_log_in_as_a_role_that_can_only_read_their_schema() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config("statement_timeout_ms = 2000"));
    ingest(&sluice, ACME_KEY, EXAMPLE).await;
    ingest(&sluice, GLOBEX_KEY, EXAMPLE).await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE globex.secrets (card text); INSERT INTO globex.secrets VALUES ('4111-GLOBEX')")
        .await
        .unwrap();

    let (status, body, _) =
        query(&sluice, Some(ACME_TOKEN), "SELECT current_user AS who, count(*) AS n FROM events", json!([])).await;
    assert_eq!(status, 200, "{body}");
    let role = body["result"][0]["who"].as_str().unwrap().to_owned();
    assert!(role.starts_with("sluice_q_acme_"), "{role}");
    assert_eq!(body["result"][0]["n"], 1);

    // The role: a login with no power, member of nothing, read-only by default.
    let row = client
        .query_one(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit, \
             (SELECT count(*) FROM pg_auth_members WHERE member = r.oid), rolconfig::text[] \
             FROM pg_roles r WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    let flags: Vec<bool> = (0..7).map(|i| row.get(i)).collect();
    assert_eq!(flags, [true, false, false, false, false, false, false], "LOGIN NOSUPERUSER … NOINHERIT");
    assert_eq!(row.get::<_, i64>(7), 0, "member of nothing");
    let settings: Vec<String> = row.get(8);
    for setting in
        ["default_transaction_read_only=on", "statement_timeout=2000ms", "work_mem=4096kB", "temp_file_limit=1048576kB"]
    {
        assert!(settings.contains(&setting.to_owned()), "{settings:?} lacks {setting}");
    }
    // Its password is kept where only Sluice's login reads it.
    let kept: i64 =
        client.query_one("SELECT count(*) FROM _sluice.query_roles WHERE role = $1", &[&role]).await.unwrap().get(0);
    assert_eq!(kept, 1);
    let (status, body, _) = query(&sluice, Some(GLOBEX_TOKEN), "SELECT current_user AS who", json!([])).await;
    assert_eq!(status, 200, "{body}");
    let globex_role = body["result"][0]["who"].as_str().unwrap().to_owned();
    assert!(globex_role.starts_with("sluice_q_globex_") && globex_role != role, "{globex_role}");

    // Tables Sluice's login makes later in the tenant's schema are readable.
    client.batch_execute("CREATE TABLE acme.later (v int); INSERT INTO acme.later VALUES (7)").await.unwrap();
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT v FROM later", json!([])).await;
    assert_eq!((status, &body["result"]), (200, &json!([{"v": 7}])), "{body}");

    // What slips past the checks — here, functions of acme's own schema,
    // which the checks let run — meets PostgreSQL's privileges.
    client
        .batch_execute(
            "CREATE FUNCTION acme.peek() RETURNS text LANGUAGE sql AS $$ SELECT card FROM globex.secrets $$; \
             CREATE FUNCTION acme.peek_events() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM globex.events $$; \
             CREATE FUNCTION acme.passwd() RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file('/etc/passwd') $$; \
             CREATE FUNCTION acme.ls() RETURNS SETOF text LANGUAGE sql AS $$ SELECT pg_ls_dir('.') $$; \
             CREATE FUNCTION acme.lo() RETURNS oid LANGUAGE sql AS $$ SELECT lo_import('/etc/passwd') $$; \
             CREATE FUNCTION acme.authid() RETURNS xml LANGUAGE sql AS \
               $$ SELECT query_to_xml('SELECT rolname, rolpassword FROM pg_authid', true, true, '') $$; \
             CREATE FUNCTION acme.other() RETURNS xml LANGUAGE sql AS \
               $$ SELECT query_to_xml('SELECT * FROM globex.secrets', true, true, '') $$; \
             CREATE FUNCTION acme.slot() RETURNS text LANGUAGE sql AS \
               $$ SELECT slot_name::text FROM pg_create_logical_replication_slot('acme_stolen', 'pgoutput') $$; \
             CREATE FUNCTION acme.activity() RETURNS text LANGUAGE sql AS \
               $$ SELECT string_agg(query, ' | ') FROM pg_stat_activity WHERE usename <> current_user $$; \
             CREATE FUNCTION acme.big_object() RETURNS text LANGUAGE sql AS \
               $$ SELECT convert_from(lo_get(4242), 'UTF8') $$; \
             CREATE FUNCTION acme.unrole() RETURNS text LANGUAGE sql AS $$ SELECT set_config('role', 'none', true) $$; \
             CREATE FUNCTION acme.grab() RETURNS bigint LANGUAGE sql AS \
               $$ SELECT count(*) FROM (SELECT pg_advisory_lock(hashtext('sluice:migrate'))) x $$",
        )
        .await
        .unwrap();
    // A large object of someone else's, and (where the extension is
    // installed) dblink.
    client.batch_execute("SELECT lo_from_bytea(4242, 'secret-large-object')").await.unwrap();
    let dblink = client.batch_execute("CREATE EXTENSION IF NOT EXISTS dblink").await.is_ok();
    if dblink {
        client
            .batch_execute(&format!(
                "CREATE FUNCTION acme.dbl() RETURNS text LANGUAGE sql AS \
                 $$ SELECT string_agg(p, ',') FROM dblink('dbname={} host=127.0.0.1', \
                    'SELECT rolpassword FROM pg_authid') AS t(p text) $$",
                db.name
            ))
            .await
            .unwrap();
        let (status, body, text) = query(&sluice, Some(ACME_TOKEN), "SELECT dbl()", json!([])).await;
        assert_eq!(status, 400, "{body}");
        assert!(!text.contains("SCRAM-SHA-256$"), "{text}");
    }
    for sql in [
        "SELECT big_object()",
        "SELECT peek()",
        "SELECT peek_events()",
        "SELECT passwd()",
        "SELECT * FROM ls()",
        "SELECT lo()",
        "SELECT authid()",
        "SELECT other()",
        "SELECT unrole() AS r, peek()",
    ] {
        let result = query(&sluice, Some(ACME_TOKEN), sql, json!([])).await;
        denied(&result);
        let text = &result.2;
        assert!(
            !text.contains("4111-GLOBEX") && !text.contains("root:") && !text.contains("secret-large"),
            "{sql}: {text}"
        );
    }
    // No replication slot for the tenant's role.
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT slot()", json!([])).await;
    assert_eq!(status, 400, "{body}");
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'acme_stolen'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    // Other sessions' SQL stays hidden: this test's own superuser session
    // last ran a marker.
    client.batch_execute("SELECT 'marker-7731'").await.unwrap();
    let (status, body, text) = query(&sluice, Some(ACME_TOKEN), "SELECT activity() AS a", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert!(!text.contains("marker-7731") && text.contains("insufficient privilege"), "{text}");
    // set_config('role', 'none') gives back only the login itself.
    let (status, body, _) =
        query(&sluice, Some(ACME_TOKEN), "SELECT unrole() AS r, current_user AS who", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"][0]["who"], role.as_str());
    // An advisory lock taken anyway is gone once the query is answered
    // (the connection ends with DISCARD ALL).
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT grab()", json!([])).await;
    assert_eq!(status, 200, "{body}");
    let held: i64 = client.query_one(ADVISORY_LOCKS, &[]).await.unwrap().get(0);
    assert_eq!(held, 0, "no advisory lock outlives the query");
    // Nothing was written, and acme's own rows still read.
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT count(*) AS n FROM events", json!([])).await;
    assert_eq!((status, &body["result"]), (200, &json!([{"n": 1}])), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_is_refused_as_postgresql_would_read_it() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config(""));
    ingest(&sluice, ACME_KEY, EXAMPLE).await;
    ingest(&sluice, GLOBEX_KEY, EXAMPLE).await;
    let client = db.client().await;
    client.batch_execute("CREATE SCHEMA other_schema; CREATE TABLE other_schema.events (ssn text)").await.unwrap();
    client.batch_execute("INSERT INTO other_schema.events VALUES ('123-45-6789')").await.unwrap();

    for (sql, says) in [
        (r#"SELECT U&"pg\005fread\005ffile"('/etc/passwd') AS v"#, "Unicode escapes"),
        (
            r#"SELECT U&"query\005fto\005fxml"('select rolname, rolsuper, rolpassword from pg_authid', true, true, '') AS v"#,
            "Unicode escapes",
        ),
        (r#"SELECT U&"set\005fconfig"('role','none',true) AS r, 1"#, "Unicode escapes"),
        (r#"SELECT * FROM U&"other\005fschema".events"#, "Unicode escapes"),
        (r#"SELECT U&'\0070' UESCAPE '!'"#, "Unicode escapes"),
        ("SELECT query_to_xml('select rolname, rolpassword from pg_authid', true, true, '')", "SQL given as text"),
        ("SELECT query_to_xml('select * from globex.events', true, true, '')", "SQL given as text"),
        ("SELECT set_config('role', 'none', true), 1", "changes settings"),
        ("SELECT * FROM other_schema.events", "outside this tenant's schema acme"),
        ("SELECT * FROM globex.events", "outside this tenant's schema acme"),
        ("SELECT pg_advisory_lock(hashtext('sluice:migrate'))", "advisory lock"),
        ("SELECT pg_try_advisory_lock(1)", "advisory lock"),
        ("SELECT E'\\'' , pg_read_file('/etc/passwd') --'", "server's files"),
        ("SELECT x$$, (SELECT count(*) FROM pg_authid), $$ FROM events $$", "system catalog"),
        ("SELECT 1 -- \r, (SELECT rolpassword FROM pg_authid)\n", "system catalog"),
        // A no-break space starts a name, for PostgreSQL as for the
        // checks: no E'' string here, and the rest does not parse.
        ("SELECT \u{a0}E'\'' , pg_read_file('x') --'", "does not parse"),
    ] {
        let result = query(&sluice, Some(ACME_TOKEN), sql, json!([])).await;
        refused(&result, says);
        assert!(
            !result.2.contains("root:") && !result.2.contains("SCRAM") && !result.2.contains("123-45"),
            "{}",
            result.2
        );
    }
    // No lock was taken, on any connection.
    let held: i64 = client.query_one(ADVISORY_LOCKS, &[]).await.unwrap().get(0);
    assert_eq!(held, 0);
    // By name, another schema's table is refused; and PostgreSQL would
    // deny it too (a function of acme's schema is let through the checks).
    client
        .batch_execute(
            "CREATE FUNCTION acme.other() RETURNS SETOF text LANGUAGE sql AS $$ SELECT ssn FROM other_schema.events $$",
        )
        .await
        .unwrap();
    denied(&query(&sluice, Some(ACME_TOKEN), "SELECT * FROM other()", json!([])).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_query_stops_the_service() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config(""));

    // 45,000 terms (90 KB): past the token cap.
    let sum = format!("SELECT 1{}", "+1".repeat(44_999));
    refused(&query(&sluice, Some(ACME_TOKEN), &sum, json!([])).await, "max_sql_tokens");
    assert_eq!(healthz(&sluice).await, 200);
    // 20,000 UNION ALLs (380 KB): past the length cap.
    let unions = format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(20_000));
    refused(&query(&sluice, Some(ACME_TOKEN), &unions, json!([])).await, "max_sql_bytes");
    assert_eq!(healthz(&sluice).await, 200);
    // Deep nesting: past sqlparser's recursion limit.
    let nested = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    refused(&query(&sluice, Some(ACME_TOKEN), &nested, json!([])).await, "recursion limit");
    // Just under the caps: a syntax tree 9,000 deep is checked on a thread
    // with the stack for it; PostgreSQL answers (or refuses it itself).
    for sql in [format!("SELECT 1{}", "+1".repeat(8_999)), format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(3_000))] {
        let (status, body, _) = query(&sluice, Some(ACME_TOKEN), &sql, json!([])).await;
        assert!(matches!(status, 200 | 400 | 408), "{status}: {body}");
        if status != 200 {
            assert!(body["sqlstate"].is_string(), "PostgreSQL's own refusal: {body}");
        }
        assert_eq!(healthz(&sluice).await, 200);
    }
    // GET too.
    let response =
        http().get(sluice.url("/api/query")).query(&[("sql", &nested)]).bearer_auth(ACME_TOKEN).send().await.unwrap();
    let (status, _, _) = answer(response).await;
    assert_eq!(status, 400);
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT 1 AS one", json!([])).await;
    assert_eq!((status, &body["result"]), (200, &json!([{"one": 1}])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_slow_queries_do_not_hold_up_anothers() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config("statement_timeout_ms = 6000"));
    // Both tenants' logins made before the attack.
    for token in [ACME_TOKEN, GLOBEX_TOKEN] {
        assert_eq!(query(&sluice, Some(token), "SELECT 1", json!([])).await.0, 200);
    }
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let url = sluice.url("/api/query");
            tokio::spawn(async move {
                http().post(url).bearer_auth(ACME_TOKEN).json(&json!({"sql": "SELECT pg_sleep(4.9)"})).send().await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..6 {
        let started = Instant::now();
        let (status, body, _) = query(&sluice, Some(GLOBEX_TOKEN), "SELECT 1 AS one", json!([])).await;
        let took = started.elapsed();
        assert_eq!((status, &body["result"]), (200, &json!([{"one": 1}])), "{body}");
        assert!(took < Duration::from_secs(1), "globex waited {took:?} behind acme's queries");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(healthz(&sluice).await, 200);
    for request in slow {
        let status = request.await.unwrap().unwrap().status().as_u16();
        // acme's own pool holds four; the rest wait for it, or give up.
        assert!(status == 200 || status == 503, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_is_truncated_at_the_byte_cap() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config("max_rows = 1000000\nmax_bytes = 65536"));

    let sql = "SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 1000000) g";
    let (status, body, text) = query(&sluice, Some(ACME_TOKEN), sql, json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], true);
    let rows = body["rows"].as_u64().unwrap();
    assert!(rows > 50 && rows < 66, "{rows} rows of ~1 KB under a 64 KiB cap");
    assert_eq!(body["result"].as_array().unwrap().len() as u64, rows);
    assert!(text.len() < 65_536 + 200, "{} bytes", text.len());
    // One row past the cap alone: none are sent.
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT repeat('x', 100000) AS big", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["rows"], &body["truncated"], &body["result"]), (&json!(0), &json!(true), &json!([])));
    // Under the cap: all of it.
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT g FROM generate_series(1, 3) g", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["rows"], &body["truncated"]), (&json!(3), &json!(false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_createrole_queries_are_off_unless_a_reader_login_is_configured() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let (service, reader, powerful) =
        (format!("{}_svc", db.name), format!("{}_reader", db.name), format!("{}_powerful", db.name));
    client
        .batch_execute(&format!(
            "CREATE ROLE {service} LOGIN PASSWORD 'service-password'; \
             GRANT CREATE ON DATABASE {} TO {service}; GRANT CREATE ON SCHEMA public TO {service}; \
             CREATE ROLE {reader} LOGIN PASSWORD 'reader-password'; \
             CREATE ROLE {powerful} LOGIN CREATEDB PASSWORD 'powerful-password'",
            db.name
        ))
        .await
        .unwrap();
    let url = url_as(&db.url, &service, "service-password");
    let start = |query: &str| Sluice::start_with_env(&config(query), &[("SLUICE_DATABASE_URL", url.as_str())]);

    let sluice = start("");
    ingest(&sluice, ACME_KEY, EXAMPLE).await;
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT 1", json!([])).await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    for says in ["queries are off for tenant acme", "may not create roles", "CREATEROLE", "reader_user"] {
        assert!(error.contains(says), "{error:?} does not say {says:?}");
    }
    assert!(!error.contains("service-password"), "{error}");
    drop(sluice);

    // The operator's reader login, granted acme's schema.
    client
        .batch_execute(&format!(
            "SET ROLE {service}; GRANT USAGE ON SCHEMA acme TO {reader}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA acme TO {reader}; RESET ROLE"
        ))
        .await
        .unwrap();
    let sluice = start(&format!("reader_user = \"{reader}\"\nreader_password = \"reader-password\""));
    let (status, body, _) =
        query(&sluice, Some(ACME_TOKEN), "SELECT current_user AS who, count(*) AS n FROM events", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!([{"who": reader, "n": 1}]));
    // globex's schema is not the reader's: PostgreSQL says so.
    let (status, body, _) = query(&sluice, Some(GLOBEX_TOKEN), "SELECT count(*) FROM events", json!([])).await;
    assert_eq!(status, 400, "{body}");
    drop(sluice);

    // A reader login that can do more than read is refused.
    let sluice = start(&format!("reader_user = \"{powerful}\"\nreader_password = \"powerful-password\""));
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT 1", json!([])).await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("may do more than read (CREATEDB)"), "{error}");
    assert!(!error.contains("powerful-password"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_state_outlives_a_query() {
    let db = TestDb::new().await;
    // One connection, so each query meets the one before's session.
    let sluice = Sluice::start(Some(&db), &config("pool_size = 1\nmax_bytes = 4096\nstatement_timeout_ms = 1000"));
    let client = db.client().await;
    let pid = || async {
        let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT pg_backend_pid() AS pid", json!([])).await;
        assert_eq!(status, 200, "{body}");
        body["result"][0]["pid"].as_i64().unwrap()
    };
    let alive = |pid: i64| {
        let client = &client;
        async move {
            client
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&(pid as i32)])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }
    };
    let first = pid().await;
    assert_eq!(pid().await, first, "a clean connection is used again");

    // A session lock taken (through a function the checks let run) is
    // released by DISCARD ALL before the answer; the connection stays.
    client
        .batch_execute(
            "CREATE FUNCTION acme.grab() RETURNS bigint LANGUAGE sql AS \
             $$ SELECT count(*) FROM (SELECT pg_advisory_lock(77)) x $$",
        )
        .await
        .unwrap();
    let (status, body, _) = query(&sluice, Some(ACME_TOKEN), "SELECT grab()", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client.query_one(ADVISORY_LOCKS, &[]).await.unwrap().get::<_, i64>(0), 0);
    assert_eq!(pid().await, first);

    // A query that fails, one that times out, and one cut at the byte cap:
    // each closes its connection.
    let mut last = first;
    for (sql, expected) in [
        ("SELECT 1/0", 400),
        ("SELECT pg_sleep(5)", 408),
        ("SELECT repeat('x', 1000) FROM generate_series(1, 100000)", 200),
    ] {
        let (status, body, _) = query(&sluice, Some(ACME_TOKEN), sql, json!([])).await;
        assert_eq!(status, expected, "{sql}: {body}");
        let next = pid().await;
        assert_ne!(next, last, "{sql}: the connection was used again");
        for _ in 0..50 {
            if !alive(last).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!alive(last).await, "{sql}: its session still runs");
        last = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_as_admin_makes_the_roles_a_writer_without_createrole_uses() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let writer = format!("{}_qwriter", db.name);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("query-migrate-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\n[components]\ncache_dir = {:?}\n{}",
            dir.join("data"),
            crate::support::cache_dir(),
            config("")
        ),
    )
    .unwrap();
    // migrate, as the admin (superuser): the tables, and the reader roles.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["migrate", "--config"])
        .arg(&file)
        .args(["--database-url", &db.url])
        .env_remove("SLUICE_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("query role sluice_q_acme_") && stdout.contains("of tenant globex"), "{stdout}");

    // The writer of docs/operations.md, with SELECT on the roles' passwords.
    client
        .batch_execute(&format!(
            "CREATE ROLE {writer} LOGIN PASSWORD 'writer-pw'; \
             GRANT USAGE ON SCHEMA acme, globex, public TO {writer}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA acme, globex, public TO {writer}; \
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA acme, globex, public TO {writer}; \
             GRANT USAGE ON SCHEMA _sluice TO {writer}; GRANT SELECT ON _sluice.query_roles TO {writer}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON _sluice.registry, _sluice.tenants, _sluice.components, \
               _sluice.hosts TO {writer}"
        ))
        .await
        .unwrap();
    let url = url_as(&db.url, &writer, "writer-pw");
    let sluice = Sluice::start_with_env(&config(""), &[("SLUICE_DATABASE_URL", url.as_str())]);
    ingest(&sluice, ACME_KEY, EXAMPLE).await;
    let (status, body, _) =
        query(&sluice, Some(ACME_TOKEN), "SELECT current_user AS who, count(*) AS n FROM events", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["result"][0]["who"].as_str().unwrap().starts_with("sluice_q_acme_"), "{body}");
    assert_eq!(body["result"][0]["n"], 1);
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A deleted tenant's reader role goes with it: its login, its grants and
/// its kept password; another tenant's role stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_role_is_dropped() {
    const ADMIN: &str = "admin-token-0123456789";
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &format!("admin_token = \"{ADMIN}\"\n{}", config("")));
    ingest(&sluice, ACME_KEY, EXAMPLE).await;
    ingest(&sluice, GLOBEX_KEY, EXAMPLE).await;
    let mut roles = Vec::new();
    for token in [ACME_TOKEN, GLOBEX_TOKEN] {
        let (status, body, _) = query(&sluice, Some(token), "SELECT current_user AS who", json!([])).await;
        assert_eq!(status, 200, "{body}");
        roles.push(body["result"][0]["who"].as_str().unwrap().to_owned());
    }
    let client = db.client().await;
    let exists = async |role: &str| -> (i64, i64) {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1), \
                        (SELECT count(*) FROM _sluice.query_roles WHERE role = $1)",
                &[&role],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(exists(&roles[0]).await, (1, 1));

    let response = http().delete(sluice.url("/admin/tenants/acme")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status(), 204, "{}", response.text().await.unwrap());
    assert_eq!(exists(&roles[0]).await, (0, 0), "acme's role and password are gone");
    assert_eq!(exists(&roles[1]).await, (1, 1), "globex's stay");
    let (status, body, _) = query(&sluice, Some(GLOBEX_TOKEN), "SELECT count(*) AS n FROM events", json!([])).await;
    assert_eq!((status, &body["result"]), (200, &json!([{"n": 1}])), "{body}");
    assert!(sluice.log().contains("dropped the deleted tenant's query role"), "{}", sluice.log());
}
