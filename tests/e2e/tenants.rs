//! Tenants: keys, routing, the admin API and component swaps.

use crate::support::{EXAMPLE, Sluice, TestDb, count, http, send};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const ADMIN: &str = "admin-token-0123456789";
const ACME_KEY: &str = "acme-key-0123456789abcdef";
const GLOBEX_KEY: &str = "globex-key-0123456789abcdef";

/// Two tenants, each in its own schema of the test database.
fn config() -> String {
    format!(
        r#"admin_token = "{ADMIN}"
[[tenants]]
id = "acme"
keys = ["{ACME_KEY}"]
database = {{ schema = "acme" }}
[[tenants]]
id = "globex"
keys = ["{GLOBEX_KEY}"]
database = {{ schema = "globex" }}
"#
    )
}

async fn admin(method: reqwest::Method, url: &str, body: Option<Vec<u8>>) -> (u16, Value) {
    let mut request = http().request(method, url).bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_route_to_their_tenant_only() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config());
    let events = sluice.url("/v1/events");

    let (status, answer) = send(&events, Some(ACME_KEY), EXAMPLE).await;
    assert_eq!((status, &answer["inserted"]), (200, &json!(1)), "{answer}");
    assert_eq!(count(&db, "acme.events").await, 1);
    assert_eq!(count(&db, "globex.events").await, 0);

    // Bearer works too, and by path the key must match the tenant.
    let response = http()
        .post(sluice.url("/t/globex/v1/events"))
        .bearer_auth(GLOBEX_KEY)
        .header("content-type", "application/json")
        .body(EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(count(&db, "globex.events").await, 1);

    let (status, answer) = send(&sluice.url("/t/globex/v1/events"), Some(ACME_KEY), EXAMPLE).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("globex"));
    let (status, _) = send(&events, Some("not-a-key-at-all-000000"), EXAMPLE).await;
    assert_eq!(status, 401);
    let (status, answer) = send(&events, None, EXAMPLE).await;
    assert_eq!(status, 401);
    assert!(answer["error"].as_str().unwrap().contains("API key"), "{answer}");
    assert_eq!(count(&db, "globex.events").await, 1, "nothing written by refused requests");
    assert_eq!(count(&db, "acme.events").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_rotates_keys() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config());
    for token in [None, Some("wrong-token-0123456789")] {
        let mut request = http().get(sluice.url("/admin/tenants"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401);
    }
    let (status, list) = admin(reqwest::Method::GET, &sluice.url("/admin/tenants"), None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["acme", "globex"]);
    assert!(!list.to_string().contains(ACME_KEY), "keys are never shown");

    // A second key works alongside the first ...
    let (status, added) = admin(reqwest::Method::POST, &sluice.url("/admin/tenants/acme/keys"), None).await;
    assert_eq!(status, 201, "{added}");
    let new_key = added["key"].as_str().unwrap().to_owned();
    let events = sluice.url("/v1/events");
    assert_eq!(send(&events, Some(ACME_KEY), EXAMPLE).await.0, 200);
    assert_eq!(send(&events, Some(&new_key), EXAMPLE).await.0, 200);
    // ... until the old one is revoked.
    let (_, acme) = admin(reqwest::Method::GET, &sluice.url("/admin/tenants/acme"), None).await;
    let old_id =
        acme["keys"].as_array().unwrap().iter().find(|k| **k != added["key_id"]).unwrap().as_str().unwrap().to_owned();
    let (status, _) =
        admin(reqwest::Method::DELETE, &sluice.url(&format!("/admin/tenants/acme/keys/{old_id}")), None).await;
    assert_eq!(status, 204);
    assert_eq!(send(&events, Some(ACME_KEY), EXAMPLE).await.0, 401);
    assert_eq!(send(&events, Some(&new_key), EXAMPLE).await.0, 200);

    // Create and delete a tenant at run time.
    let body = serde_json::to_vec(&json!({"id": "initech", "database": {"schema": "initech"}})).unwrap();
    let (status, created) = admin(reqwest::Method::POST, &sluice.url("/admin/tenants"), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let key = created["keys"][0].as_str().unwrap().to_owned();
    assert_eq!(send(&events, Some(&key), EXAMPLE).await.0, 200);
    assert_eq!(count(&db, "initech.events").await, 1);
    let (status, _) = admin(reqwest::Method::DELETE, &sluice.url("/admin/tenants/initech"), None).await;
    assert_eq!(status, 204);
    assert_eq!(send(&events, Some(&key), EXAMPLE).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_component_is_refused_and_the_old_one_keeps_serving() {
    let db = TestDb::new().await;
    let sluice = Sluice::start(Some(&db), &config());
    let upload = sluice.url("/admin/tenants/acme/component");
    let (status, answer) = admin(reqwest::Method::PUT, &upload, Some(b"not wasm at all".to_vec())).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("compile"), "{answer}");
    // A valid component of another world.
    let (status, answer) = admin(reqwest::Method::PUT, &upload, Some(empty_component())).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("does not implement sluice:ingest/normalizer"), "{answer}");
    let (status, _) = send(&sluice.url("/v1/events"), Some(ACME_KEY), EXAMPLE).await;
    assert_eq!(status, 200, "the built-in component still serves");
}

/// The smallest component: it exports nothing Sluice needs.
fn empty_component() -> Vec<u8> {
    // (component) in binary: magic, version 0x0d layer 1.
    vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_nothing_and_survive_a_restart() {
    let db = TestDb::new().await;
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut sluice = Sluice::start_in(Some(&db), &config(), Some(&data_dir));
    let events = sluice.url("/v1/events");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for worker in 0..4 {
        let (events, stop, sent) = (events.clone(), stop.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = format!(
                    r#"{{"eventType":"swap","occurredAt":"2026-01-01T00:00:00Z","idempotencyKey":"{worker}-{n}"}}"#
                );
                let (status, answer) = send(&events, Some(ACME_KEY), &body).await;
                assert_eq!(status, 200, "request {worker}-{n} failed during swaps: {answer}");
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Alternate between two different components (the misbehaving one acts
    // as the events normalizer unless asked to misbehave).
    let components = [sluice_artifacts::MISBEHAVE.to_vec(), sluice_artifacts::EVENTS.to_vec()];
    for swap in 0..10 {
        let (status, answer) = admin(
            reqwest::Method::PUT,
            &sluice.url("/admin/tenants/acme/component"),
            Some(components[swap % 2].clone()),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let sent = sent.load(Ordering::Relaxed) as i64;
    assert!(sent > 20, "the load ran: {sent}");
    assert_eq!(count(&db, "acme.events").await, sent, "every acknowledged event is stored once");

    // Swap to the misbehaving component, restart: it is still the one
    // serving, and it was not compiled again.
    let (status, swapped) =
        admin(reqwest::Method::PUT, &sluice.url("/admin/tenants/acme/component"), Some(components[0].clone())).await;
    assert_eq!(status, 200);
    assert!(sluice.terminate().success());
    let sluice = Sluice::start_in(Some(&db), &config(), Some(&data_dir));
    let (_, acme) = admin(reqwest::Method::GET, &sluice.url("/admin/tenants/acme"), None).await;
    assert_eq!(acme["component_digest"], swapped["digest"]);
    assert!(!sluice.log().contains("compiled component"), "loaded from the cache: {}", sluice.log());
    let response = http()
        .post(sluice.url("/v1/events"))
        .header("x-api-key", ACME_KEY)
        .header("x-misbehave", "trap")
        .body(EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 500, "the uploaded component is the one serving");
    drop(sluice);
    std::fs::remove_dir_all(&data_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_fails_only_its_own_requests() {
    let db = TestDb::new().await;
    let wasm = crate::support::cache_dir().with_file_name(format!("hostile-{}.wasm", std::process::id()));
    std::fs::write(&wasm, sluice_artifacts::MISBEHAVE).unwrap();
    let config = format!(
        "{}\ncomponent = {wasm:?}\nlimits = {{ component_deadline_ms = 300, component_memory_bytes = 33554432 }}\n",
        config()
    );
    // The second tenant (globex) is the hostile one: its block ends the file.
    let sluice = Sluice::start(Some(&db), &config);
    for (fault, expect) in [
        ("trap", "failed"),
        ("loop", "deadline of 300 ms"),
        ("alloc", "memory limit of 32 MiB"),
        // A 100 MB answer cannot be built within 32 MiB: the cap bounds what a
        // component can hand the host.
        ("huge", "memory limit of 32 MiB"),
    ] {
        let started = std::time::Instant::now();
        let response = http()
            .post(sluice.url("/v1/events"))
            .header("x-api-key", GLOBEX_KEY)
            .header("x-misbehave", fault)
            .body(EXAMPLE)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 500, "{fault}");
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"].as_str().unwrap().contains(expect), "{fault}: {answer}");
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "{fault} was stopped within its limit");
        let (status, _) = send(&sluice.url("/v1/events"), Some(ACME_KEY), EXAMPLE).await;
        assert_eq!(status, 200, "acme is served after globex's {fault}");
        // Globex's own well-formed requests still work (and clear its record).
        let (status, answer) = send(&sluice.url("/v1/events"), Some(GLOBEX_KEY), EXAMPLE).await;
        assert_eq!(status, 200, "globex is served after its {fault}: {answer}");
    }
    let _ = std::fs::remove_file(&wasm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_keeps_failing_is_rested() {
    let db = TestDb::new().await;
    let wasm = crate::support::cache_dir().with_file_name(format!("resting-{}.wasm", std::process::id()));
    std::fs::write(&wasm, sluice_artifacts::MISBEHAVE).unwrap();
    let sluice = Sluice::start(Some(&db), &format!("{}\ncomponent = {wasm:?}\n", config()));
    let trap = || {
        http()
            .post(sluice.url("/v1/events"))
            .header("x-api-key", GLOBEX_KEY)
            .header("x-misbehave", "trap")
            .body(EXAMPLE)
            .send()
    };
    // Two failures in a row are just failures ...
    for _ in 0..2 {
        assert_eq!(trap().await.unwrap().status().as_u16(), 500);
    }
    let (status, _) = send(&sluice.url("/v1/events"), Some(GLOBEX_KEY), EXAMPLE).await;
    assert_eq!(status, 200, "a success clears the record");
    // ... three in a row rest the component: the next request is held back
    // and refused with a Retry-After, without running it.
    for _ in 0..3 {
        assert_eq!(trap().await.unwrap().status().as_u16(), 500);
    }
    let response = trap().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("resting"), "{answer}");
    // Other tenants never notice; and after the rest the tenant is served.
    assert_eq!(send(&sluice.url("/v1/events"), Some(ACME_KEY), EXAMPLE).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(send(&sluice.url("/v1/events"), Some(GLOBEX_KEY), EXAMPLE).await.0, 200);
    let _ = std::fs::remove_file(&wasm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apis_and_batching_are_per_tenant() {
    let db = TestDb::new().await;
    let config = format!("{}\napis = []\nbatch = {{ batch_size = 1, writers = 1 }}\n", config());
    let sluice = Sluice::start(Some(&db), &config);
    let events = sluice.url("/v1/events");
    let (status, answer) = send(&events, Some(GLOBEX_KEY), EXAMPLE).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("events API"), "{answer}");
    assert_eq!(count(&db, "globex.events").await, 0);

    let body = serde_json::to_vec(&json!({"apis": ["events"]})).unwrap();
    let (status, globex) = admin(reqwest::Method::PATCH, &sluice.url("/admin/tenants/globex"), Some(body)).await;
    assert_eq!(status, 200, "{globex}");
    assert_eq!(globex["batch"]["batch_size"], 1);
    // Its own writer flushes one row at a time; the answer is the same.
    let two = format!("[{EXAMPLE}, {}]", EXAMPLE.replace("order_38a91f-completed", "another-key"));
    let (status, answer) = send(&events, Some(GLOBEX_KEY), &two).await;
    assert_eq!((status, &answer["inserted"]), (200, &json!(2)), "{answer}");
    assert_eq!(count(&db, "globex.events").await, 2);
}
