//! The CLI: `sluice component check` offline, `sluice tenant …` against
//! the admin API of a running service, `sluice bench` against its ingest
//! API, `sluice openapi`, and the help and usage errors of every command.

use crate::support::{EXAMPLE, Sluice, TestDb, count, http};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice::tenants::spec::{hash_key, key_id};
use std::path::{Path, PathBuf};
use std::process::Command;

const ADMIN: &str = "cli-admin-token-0123456789";
const ACME_KEY: &str = "cli-acme-key-0123456789abcdef";

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `sluice ARGS` with only the given admin settings in its environment.
fn sluice(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args).env_remove("SLUICE_ADMIN_URL").env_remove("SLUICE_ADMIN_TOKEN").env_remove("SLUICE_LOG");
    command.env_remove("SLUICE_URL").env_remove("SLUICE_API_KEY").env_remove("SLUICE_CONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run sluice");
    Run {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A file under the tests' temporary folder, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn component_check_describes_a_valid_component() {
    let wasm = TempFile::new("events.wasm", sluice_artifacts::EVENTS);
    let run = sluice(&["component", "check", wasm.path(), "--sql", "--schema", "ingest"], &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(out.contains("a valid sluice:ingest/normalizer component"), "{out}");
    assert!(out.contains(&format!("sha256:{}", sha256(sluice_artifacts::EVENTS))), "{out}");
    assert!(out.lines().any(|l| l == "table events"), "{out}");
    let event_id = out.lines().find(|l| l.trim_start().starts_with("event_id ")).expect("a line for event_id");
    assert_eq!(event_id.split_whitespace().collect::<Vec<_>>(), ["event_id", "uuid", "yes"], "{out}");
    let received_at = out.lines().find(|l| l.trim_start().starts_with("received_at ")).unwrap();
    assert!(received_at.ends_with("now()"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "primary key  event_id"), "{out}");
    assert!(out.contains("events_occurred_at_idx btree (occurred_at DESC)"), "{out}");
    assert!(out.contains(r#"CREATE TABLE IF NOT EXISTS "ingest"."events" ("event_id" uuid NOT NULL"#), "{out}");
    assert!(out.contains(r#"PRIMARY KEY ("event_id"));"#), "{out}");
    assert!(run.stderr.is_empty(), "nothing logged: {}", run.stderr);
}

#[test]
fn component_check_refuses_what_is_not_a_normalizer() {
    // (file, what the error says)
    let cases: [(&[u8], &str); 3] = [
        (b"this is not wasm", "is not a WebAssembly file"),
        // A component header and then garbage: the compiler's reason.
        (b"\0asm\x0d\x00\x01\x00garbage", "compile component"),
        // A valid component of another world.
        (b"\0asm\x0d\x00\x01\x00", "does not implement sluice:ingest/normalizer: it has no `tables` export"),
    ];
    for (i, (bytes, expect)) in cases.into_iter().enumerate() {
        let wasm = TempFile::new(&format!("bad-{i}.wasm"), bytes);
        let run = sluice(&["component", "check", wasm.path()], &[]);
        assert_eq!(run.code, 1, "{expect}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
        assert!(run.stderr.contains(expect), "{expect}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    let run = sluice(&["component", "check", "/nonexistent/x.wasm"], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("read /nonexistent/x.wasm"), "{}", run.stderr);
}

async fn send(url: &str, key: &str) -> u16 {
    let response = http()
        .post(url)
        .header("content-type", "application/json")
        .bearer_auth(key)
        .body(EXAMPLE)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// The row of `id` in `sluice tenant list`, split into its cells.
fn list_row(list: &str, id: &str) -> Vec<String> {
    let row = list.lines().find(|l| l.split_whitespace().next() == Some(id));
    row.unwrap_or_else(|| panic!("no row for {id}:\n{list}")).split_whitespace().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_commands_drive_the_admin_api() {
    let db = TestDb::new().await;
    let config = format!(
        "admin_token = \"{ADMIN}\"\n[[tenants]]\nid = \"acme\"\nkeys = [\"{ACME_KEY}\"]\ndatabase = {{ schema = \"acme\" }}\n"
    );
    let service = Sluice::start(Some(&db), &config);
    let env = [("SLUICE_ADMIN_URL", service.base.as_str()), ("SLUICE_ADMIN_TOKEN", ADMIN)];
    let events = service.url("/v1/events");
    let mut outputs = String::new();
    let mut tenant = |args: &[&str]| {
        let run = sluice(&[&["tenant"], args].concat(), &env);
        outputs += &run.stdout;
        outputs += &run.stderr;
        run
    };

    let list = tenant(&["list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let header: Vec<&str> = list.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "COMPONENT", "KEYS", "REQUESTS", "ERRORS", "INSERTED", "DUPLICATES", "REJECTED"]);
    assert_eq!(list_row(&list.stdout, "acme"), ["acme", "builtin:standard", "1", "0", "0", "0", "0", "0"]);

    // Create: the generated key is printed once, and works.
    let created = tenant(&["create", "initech", "--schema", "initech"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(created.stdout.starts_with("created tenant initech: component builtin:standard, schema initech"));
    assert!(created.stdout.contains("shown this once"), "{}", created.stdout);
    let key_line = created.stdout.lines().find(|l| l.starts_with("key ")).expect("a key line");
    let [_, id, key] = key_line.split_whitespace().collect::<Vec<_>>()[..] else { panic!("{key_line}") };
    assert_eq!(id, key_id(&hash_key(key)));
    assert_eq!(send(&events, key).await, 200);
    assert_eq!(count(&db, "initech.events").await, 1);
    let list = tenant(&["list"]);
    assert_eq!(list_row(&list.stdout, "initech"), ["initech", "builtin:standard", "1", "1", "0", "1", "0", "0"]);

    // A second key for acme (as JSON), then the first one revoked.
    let added = tenant(&["add-key", "acme", "--json"]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    let added: Value = serde_json::from_str(&added.stdout).unwrap();
    let new_key = added["key"].as_str().unwrap().to_owned();
    assert_eq!(send(&events, &new_key).await, 200);
    let added = tenant(&["add-key", "acme"]);
    assert!(added.stdout.starts_with("added key ") && added.stdout.contains("shown this once"), "{}", added.stdout);
    let shown = tenant(&["show", "acme"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let old_id = key_id(&hash_key(ACME_KEY)).to_owned();
    assert!(shown.stdout.lines().any(|l| l.starts_with("keys ") && l.contains("3 (") && l.contains(&old_id)));
    assert!(shown.stdout.contains("schema acme (the service's database)"), "{}", shown.stdout);
    let revoked = tenant(&["revoke-key", "acme", &old_id]);
    assert_eq!((revoked.code, revoked.stdout.as_str()), (0, format!("revoked key {old_id} of tenant acme\n").as_str()));
    assert_eq!(send(&events, ACME_KEY).await, 401);
    assert_eq!(send(&events, &new_key).await, 200);

    // Upload: a component is swapped in; a bad one is refused with the reason.
    let component = TempFile::new("misbehave.wasm", sluice_artifacts::MISBEHAVE);
    let uploaded = tenant(&["upload", "acme", component.path()]);
    assert_eq!(uploaded.code, 0, "{}", uploaded.stderr);
    let digest = sha256(sluice_artifacts::MISBEHAVE);
    assert!(uploaded.stdout.starts_with(&format!("tenant acme now runs component sha256:{digest}\n")));
    let list = tenant(&["list"]);
    assert_eq!(list_row(&list.stdout, "acme")[1], format!("sha256:{}", &digest[..12]));
    let list = tenant(&["list", "--json"]);
    let list: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list["tenants"][0]["component_digest"], digest.as_str());
    let garbage = TempFile::new("garbage.wasm", b"not wasm at all");
    let refused = tenant(&["upload", "acme", garbage.path()]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.starts_with("error: compile component acme"), "{}", refused.stderr);
    assert!(refused.stderr.trim_end().ends_with("(HTTP 422 Unprocessable Entity)"), "{}", refused.stderr);
    assert_eq!(send(&events, &new_key).await, 200, "the uploaded component still serves");

    // The API's errors, with their status.
    let again = tenant(&["create", "initech"]);
    assert_eq!((again.code, again.stderr.as_str()), (1, "error: tenant initech exists (HTTP 409 Conflict)\n"));
    let missing = tenant(&["show", "nope"]);
    assert_eq!((missing.code, missing.stderr.as_str()), (1, "error: no tenant nope (HTTP 404 Not Found)\n"));

    let deleted = tenant(&["delete", "initech"]);
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert_eq!(send(&events, key).await, 401);
    assert_eq!(count(&db, "initech.events").await, 1, "its rows stay");

    // A wrong token, and a service that is not there.
    let wrong = sluice(
        &["tenant", "list"],
        &[("SLUICE_ADMIN_URL", &service.base), ("SLUICE_ADMIN_TOKEN", "wrong-token-0123456789")],
    );
    assert_eq!(wrong.code, 1);
    assert!(wrong.stderr.contains("the admin token is missing or wrong (HTTP 401 Unauthorized)"), "{}", wrong.stderr);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let refused = sluice(&["tenant", "list", "--admin-url", &closed], &[("SLUICE_ADMIN_TOKEN", ADMIN)]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains(&format!("cannot connect to the Sluice admin API at {closed}: connection refused"))
    );
    let untokened = sluice(&["tenant", "list"], &[("SLUICE_ADMIN_URL", &service.base)]);
    assert_eq!(untokened.code, 1);
    assert!(untokened.stderr.contains("the admin token is required"), "{}", untokened.stderr);

    // The token never shows, not even in the help's environment hints.
    let help = sluice(&["tenant", "list", "--help"], &env);
    outputs += &help.stdout;
    assert!(help.stdout.contains("SLUICE_ADMIN_TOKEN"), "{}", help.stdout);
    assert!(!outputs.contains(ADMIN), "the admin token was printed:\n{outputs}");
}

/// Rows the database refuses are kept as dead letters; `sluice dlq` lists
/// them, replays them once the cause is fixed (twice is harmless) and purges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_listed_replayed_and_purged() {
    let db = TestDb::new().await;
    let sluice_server = Sluice::start(Some(&db), &format!("admin_token = \"{ADMIN}\"\n"));
    let env = [("SLUICE_ADMIN_URL", sluice_server.base.as_str()), ("SLUICE_ADMIN_TOKEN", ADMIN)];
    let client = db.client().await;
    let post = |body: String| {
        let url = sluice_server.url("/v1/events");
        async move {
            let response = http().post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        }
    };
    let event = |t: &str, k: &str| {
        format!(r#"{{"eventType":"{t}","occurredAt":"2026-05-26T14:21:08Z","idempotencyKey":"{k}"}}"#)
    };
    post(format!("[{}]", event("warmup", "w"))).await;
    client.batch_execute("ALTER TABLE events ADD CONSTRAINT no_bad CHECK (event_type <> 'bad')").await.unwrap();
    let answer = post(format!("[{},{},{}]", event("ok", "1"), event("bad", "2"), event("bad", "3"))).await;
    assert_eq!(answer["inserted"], 1, "{answer}");
    let reason = answer["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("23514") && reason.contains("sluice_dead_letters"), "{reason}");

    let list = sluice(&["dlq", "list", "default"], &env);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert_eq!(
        list.stdout.lines().filter(|l| l.contains("events") && l.contains("23514")).count(),
        2,
        "{}",
        list.stdout
    );

    // The cause is still there: the rows fail again and stay.
    let replay = sluice(&["dlq", "replay", "default"], &env);
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert!(
        replay.stdout.contains("replayed 0 dead letters") && replay.stdout.contains("2 failed again"),
        "{}",
        replay.stdout
    );
    let attempts: i32 = client.query_one("SELECT max(attempts) FROM sluice_dead_letters", &[]).await.unwrap().get(0);
    assert_eq!(attempts, 2);

    client.batch_execute("ALTER TABLE events DROP CONSTRAINT no_bad").await.unwrap();
    let replay = sluice(&["dlq", "replay", "default"], &env);
    assert!(replay.stdout.starts_with("replayed 2 dead letters of tenant default\n"), "{}", replay.stdout);
    let bad: i64 = client.query_one("SELECT count(*) FROM events WHERE event_type = 'bad'", &[]).await.unwrap().get(0);
    assert_eq!(bad, 2);
    assert_eq!(sluice(&["dlq", "list", "default"], &env).stdout, "no dead letters\n");
    // Replayed rows are the events' own: sending them again is a duplicate.
    let again = post(format!("[{}]", event("bad", "2"))).await;
    assert_eq!(again["duplicates"], 1, "{again}");

    client.batch_execute("ALTER TABLE events ADD CONSTRAINT no_worse CHECK (event_type <> 'worse')").await.unwrap();
    post(format!("[{}]", event("worse", "4"))).await;
    let purge = sluice(&["dlq", "purge", "default", "--table", "events"], &env);
    assert_eq!(purge.stdout, "purged 1 dead letters of tenant default\n", "{}", purge.stderr);
    let unknown = sluice(&["dlq", "list", "nobody"], &env);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("no tenant nobody"), "{}", unknown.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_loads_a_running_service_and_reports_what_it_wrote() {
    let db = TestDb::new().await;
    let service = Sluice::start(Some(&db), "");
    let args =
        ["bench", "--url", &service.base, "--duration", "2s", "--concurrency", "2", "--events-per-request", "50"];
    let run = sluice(&[&args[..], &["--json"]].concat(), &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    let acknowledged = report["events_acknowledged"].as_u64().unwrap();
    assert!(acknowledged >= 50, "{report}");
    assert_eq!(acknowledged % 50, 0, "whole requests: {report}");
    assert!(report["events_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["target"], format!("{}/v1/events", service.base), "{report}");
    // Every acknowledged event is a row, and each was new.
    assert_eq!(count(&db, "events").await, acknowledged as i64);

    // The text report, for people; Logflare's API this time.
    let run =
        sluice(&["bench", "--url", &service.base, "--duration", "1s", "--kind", "logflare", "--source-name", "b"], &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let first = run.stdout.lines().next().unwrap_or("");
    assert_eq!(first, format!("sluice bench http → {}/api/logs?source_name=b", service.base), "{}", run.stdout);
    let events = run.stdout.lines().find(|l| l.trim_start().starts_with("events ")).expect("an events line");
    assert!(events.ends_with("events/s"), "{}", run.stdout);
    assert!(run.stdout.contains("errors      0"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_says_why_it_failed() {
    let db = TestDb::new().await;
    let service = Sluice::start(Some(&db), &format!("[[tenants]]\nid = \"acme\"\nkeys = [\"{ACME_KEY}\"]\n"));
    // A service with tenants wants a key: the report, then the reason, exit 1.
    let run = sluice(&["bench", "--url", &service.base, "--duration", "1s", "--events-per-request", "5"], &[]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("401"), "the report counts the answers: {}", run.stdout);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(run.stderr.contains("requests did not commit all their events"), "{}", run.stderr);
    assert!(run.stderr.contains("an API key is required"), "{}", run.stderr);
    assert_eq!(count(&db, "events").await, 0);
    // With the tenant's key (from the environment) it writes.
    let run = sluice(
        &["bench", "--url", &service.base, "--duration", "1s", "--events-per-request", "5", "--json"],
        &[("SLUICE_API_KEY", ACME_KEY)],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(count(&db, "events").await, report["events_acknowledged"].as_i64().unwrap());
    assert!(!run.stderr.contains(ACME_KEY) && !run.stdout.contains(ACME_KEY), "the key is never printed");

    // Nothing listening: one clear line, before any load.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = sluice(&["bench", "--url", &format!("http://127.0.0.1:{port}"), "--duration", "1s"], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!("cannot reach the Sluice service at http://127.0.0.1:{port}"))
            && run.stderr.contains("is `sluice serve` running there? set --url or SLUICE_URL"),
        "{}",
        run.stderr
    );
}

#[test]
fn every_command_has_help_and_bad_usage_exits_2_with_a_hint() {
    let top = sluice(&["--help"], &[]);
    assert_eq!(top.code, 0, "{}", top.stderr);
    assert!(top.stdout.contains("Exit status: 0 done, 1 failed"), "{}", top.stdout);
    // Every command listed, and each one's help.
    let commands: Vec<String> = top
        .stdout
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    for expected in ["serve", "component", "tenant", "dlq", "bench", "openapi"] {
        assert!(commands.iter().any(|c| c == expected), "{expected} in {commands:?}");
    }
    for command in &commands {
        let run = sluice(&[command, "--help"], &[]);
        assert_eq!(run.code, 0, "sluice {command} --help: {}", run.stderr);
        assert!(run.stdout.contains(&format!("Usage: sluice {command}")), "{}", run.stdout);
    }
    // Each command's key options and the environment variables they read.
    let mentions: &[(&[&str], &[&str])] = &[
        (&["serve"], &["--config", "--listen", "SLUICE_CONFIG", "SLUICE_DATABASE_URL", "Examples:"]),
        (&["component", "check"], &["--schema", "--sql", "--cache-dir"]),
        (&["tenant"], &["--admin-url", "--admin-token", "SLUICE_ADMIN_TOKEN", "upload", "add-key"]),
        (&["tenant", "create"], &["--component", "--key", "--schema"]),
        (&["dlq"], &["list", "replay", "purge", "SLUICE_ADMIN_URL"]),
        (&["dlq", "list"], &["--table", "--limit"]),
        (&["bench"], &["--url", "--api-key", "SLUICE_API_KEY", "--duration", "--concurrency", "--rate", "--kind"]),
        (&["openapi"], &["sluice openapi > docs/openapi.json"]),
    ];
    for (command, words) in mentions {
        let run = sluice(&[&command[..], &["--help"]].concat(), &[]);
        assert_eq!(run.code, 0, "{command:?}: {}", run.stderr);
        for word in *words {
            assert!(run.stdout.contains(word), "sluice {} --help mentions {word}:\n{}", command.join(" "), run.stdout);
        }
    }
    // The admin token's value is never shown, even when it is set.
    let run = sluice(&["tenant", "--help"], &[("SLUICE_ADMIN_TOKEN", ADMIN)]);
    assert!(!run.stdout.contains(ADMIN), "{}", run.stdout);

    // Usage errors: status 2, what is wrong, and where to look.
    let run = sluice(&["serve", "--bogus"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("unexpected argument '--bogus'"), "{}", run.stderr);
    assert!(run.stderr.contains("For more information, try '--help'"), "{}", run.stderr);
    let run = sluice(&["bench", "--duration", "0s"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("\"0s\" must be more than zero"), "{}", run.stderr);
    let run = sluice(&["bench", "--kind", "metrics"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("[possible values: events, logflare]"), "{}", run.stderr);
    let run = sluice(&["tenat", "list"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("tip: a similar subcommand exists: 'tenant'"), "{}", run.stderr);
    // A failure that is not about usage: status 1, `error: …`, what to do.
    let run = sluice(&["tenant", "list"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("error: the admin token is required: set SLUICE_ADMIN_TOKEN"), "{}", run.stderr);
    let run = sluice(&["serve", "--config", "/nonexistent/sluice.toml"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: read config file /nonexistent/sluice.toml: No such file"),
        "one line, as every command's: {}",
        run.stderr
    );
}

#[test]
fn openapi_prints_the_committed_document() {
    let run = sluice(&["openapi"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let document: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/v1/events"]["post"].is_object());
    assert!(document["components"]["securitySchemes"]["admin_token"].is_object());
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json")).unwrap();
    assert!(run.stdout == committed, "docs/openapi.json is stale: cargo run -p sluice -- openapi > docs/openapi.json");
}
