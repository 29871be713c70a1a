//! A fleet: several `sluice serve` processes on one service database share
//! one tenant registry, and an admin change made through any of them is
//! served by all.

use crate::support::{EXAMPLE, Sluice, TestDb, http, send};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-token-0123456789";

/// The bound within which every host serves an admin change (the
/// documented propagation bound; typically a few milliseconds).
const PROPAGATION: Duration = Duration::from_secs(1);

fn config() -> String {
    format!("admin_token = \"{ADMIN}\"\nkeyless_loopback = false\n")
}

async fn admin(method: reqwest::Method, url: &str, body: Option<reqwest::Body>) -> (u16, Value) {
    let mut request = http().request(method, url).bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn json_body(value: Value) -> Option<reqwest::Body> {
    Some(value.to_string().into())
}

/// The status an event sent with `key` gets from `host`.
async fn status_of(host: &Sluice, key: &str, id: &str) -> u16 {
    let body = json!([{"eventType": "fleet", "occurredAt": "2026-01-01T00:00:00Z", "idempotencyKey": id}]);
    send(&host.url("/v1/events"), Some(key), &body.to_string()).await.0
}

/// Waits until every host answers `expected` to an event sent with `key`;
/// returns how long the slowest took from `since`.
async fn until_every_host(hosts: &[Sluice], key: &str, expected: u16, since: Instant, what: &str) -> Duration {
    let mut n = 0;
    for (i, host) in hosts.iter().enumerate() {
        loop {
            n += 1;
            let status = status_of(host, key, &format!("{what}-{i}-{n}")).await;
            if status == expected {
                break;
            }
            assert!(since.elapsed() < PROPAGATION, "{what}: host {i} still answers {status} after {PROPAGATION:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_through_any_host_reach_every_host() {
    let db = TestDb::new().await;
    let hosts: Vec<Sluice> = (0..3).map(|_| Sluice::start(Some(&db), &config())).collect();

    // Created through host 0, used at once through all three.
    let (status, created) = admin(
        reqwest::Method::POST,
        &hosts[0].url("/admin/tenants"),
        json_body(json!({"id": "acme", "database": {"schema": "acme"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let first_key = created["keys"][0].as_str().unwrap().to_owned();
    until_every_host(&hosts, &first_key, 200, Instant::now(), "created").await;

    // A component uploaded through host 2 is the one every host runs: the
    // misbehaving test component answers 500 when asked to trap.
    let (status, uploaded) = admin(
        reqwest::Method::PUT,
        &hosts[2].url("/admin/tenants/acme/component"),
        Some(sluice_artifacts::MISBEHAVE.to_vec().into()),
    )
    .await;
    assert_eq!(status, 200, "{uploaded}");
    let since = Instant::now();
    for (i, host) in hosts.iter().enumerate() {
        loop {
            let (_, shown) = admin(reqwest::Method::GET, &host.url("/admin/tenants/acme"), None).await;
            if shown["component_digest"] == uploaded["digest"] {
                break;
            }
            assert!(since.elapsed() < PROPAGATION, "host {i} still runs {shown}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let trapped = http()
            .post(host.url("/v1/events"))
            .header("x-api-key", &first_key)
            .header("x-misbehave", "trap")
            .body(EXAMPLE)
            .send()
            .await
            .unwrap();
        assert_eq!(trapped.status().as_u16(), 500, "host {i} runs the uploaded component");
    }

    // Two keys added at once through two hosts: neither change undoes the
    // other (each is made on the tenant as the database has it).
    let add = |host: &Sluice| {
        let url = host.url("/admin/tenants/acme/keys");
        async move { admin(reqwest::Method::POST, &url, None).await }
    };
    let ((s1, k1), (s2, k2)) = tokio::join!(add(&hosts[0]), add(&hosts[1]));
    assert_eq!((s1, s2), (201, 201), "{k1} {k2}");
    for (key, added) in [(&k1, "first"), (&k2, "second")] {
        until_every_host(&hosts, key["key"].as_str().unwrap(), 200, Instant::now(), added).await;
    }

    // Revoked through host 1: refused by all three within the bound.
    let key_id = created["tenant"]["keys"][0].as_str().unwrap();
    let (status, answer) =
        admin(reqwest::Method::DELETE, &hosts[1].url(&format!("/admin/tenants/acme/keys/{key_id}")), None).await;
    assert_eq!(status, 204, "{answer}");
    until_every_host(&hosts, &first_key, 401, Instant::now(), "revoked").await;

    // A setting PostgreSQL cannot store is refused by name; the tenant is
    // as it was.
    let (status, answer) = admin(
        reqwest::Method::PATCH,
        &hosts[0].url("/admin/tenants/acme"),
        json_body(json!({"settings": {"note": "a\u{0}b"}})),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("NUL"), "{answer}");

    // Deleted through host 2: no host takes its keys.
    let (status, answer) = admin(reqwest::Method::DELETE, &hosts[2].url("/admin/tenants/acme"), None).await;
    assert_eq!(status, 204, "{answer}");
    until_every_host(&hosts, k1["key"].as_str().unwrap(), 401, Instant::now(), "deleted").await;
    for host in &hosts {
        let (status, _) = admin(reqwest::Method::GET, &host.url("/admin/tenants/acme"), None).await;
        assert_eq!(status, 404);
    }
}

/// The time from an admin call's answer to every host serving the change,
/// over many changes: the bound `docs/tenants.md` states. Each host is
/// asked at once and again every millisecond whether it has the new key,
/// so the time is the propagation's, not the probes'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_stays_within_its_bound() {
    let _exclusive = crate::support::timing_exclusive();
    let db = TestDb::new().await;
    let hosts: Vec<Sluice> = (0..3).map(|_| Sluice::start(Some(&db), &config())).collect();
    let (status, created) =
        admin(reqwest::Method::POST, &hosts[0].url("/admin/tenants"), json_body(json!({"id": "acme"}))).await;
    assert_eq!(status, 201, "{created}");
    let mut took = Vec::new();
    for round in 0..50 {
        let via = &hosts[round % hosts.len()];
        let (status, added) = admin(reqwest::Method::POST, &via.url("/admin/tenants/acme/keys"), None).await;
        assert_eq!(status, 201, "{added}");
        let answered = Instant::now();
        let key_id = added["key_id"].clone();
        let has_key = |host: &Sluice| {
            let (url, key_id) = (host.url("/admin/tenants/acme"), key_id.clone());
            async move {
                loop {
                    let (_, shown) = admin(reqwest::Method::GET, &url, None).await;
                    if shown["keys"].as_array().is_some_and(|keys| keys.contains(&key_id)) {
                        return answered.elapsed();
                    }
                    assert!(answered.elapsed() < PROPAGATION, "{url} lacks the key after {PROPAGATION:?}");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let (a, b, c) = tokio::join!(has_key(&hosts[0]), has_key(&hosts[1]), has_key(&hosts[2]));
        took.push(a.max(b).max(c));
    }
    took.sort();
    let p50 = took[took.len() / 2];
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    println!("registry propagation to 3 hosts over {} changes: p50 {p50:?}, p99 {p99:?}", took.len());
    assert!(p99 < PROPAGATION, "p99 {p99:?}");
}

/// A host with nothing but the database's URL serves a tenant another host
/// made, with the component uploaded there: no file is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_host_needs_only_the_database() {
    let db = TestDb::new().await;
    let first = Sluice::start(Some(&db), &config());
    let (status, created) = admin(
        reqwest::Method::POST,
        &first.url("/admin/tenants"),
        json_body(json!({"id": "acme", "database": {"schema": "acme"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["keys"][0].as_str().unwrap().to_owned();
    let (status, uploaded) = admin(
        reqwest::Method::PUT,
        &first.url("/admin/tenants/acme/component"),
        Some(sluice_artifacts::MISBEHAVE.to_vec().into()),
    )
    .await;
    assert_eq!(status, 200, "{uploaded}");
    drop(first);

    // Its own empty data folder and compile cache: the component's bytes
    // come from the database.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fleet-new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let second = Sluice::start_in(
        Some(&db),
        &format!("{}[components]\ncache_dir = {:?}\n", config(), dir.join("cache")),
        Some(&dir.join("data")),
    );
    assert_eq!(status_of(&second, &key, "new-host").await, 200);
    let (_, shown) = admin(reqwest::Method::GET, &second.url("/admin/tenants/acme"), None).await;
    assert_eq!(shown["component_digest"], uploaded["digest"], "{shown}");
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A host refuses a registry whose schema is newer than it knows, naming
/// both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_host_refuses_a_newer_registry() {
    let db = TestDb::new().await;
    drop(Sluice::start(Some(&db), &config()));
    db.client().await.batch_execute("UPDATE _sluice.registry SET schema_version = 99").await.unwrap();
    let config_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fleet-old-{}.toml", std::process::id()));
    std::fs::write(&config_file, format!("listen = \"127.0.0.1:0\"\n{}", config())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config_file)
        .env("SLUICE_DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("schema version 99") && stderr.contains("up to 1"), "{stderr}");
    let _ = std::fs::remove_file(&config_file);
}

/// A single host's registry on disk (`tenants.json` and `components/`, as
/// earlier versions kept it) is imported into the database on the first
/// start, once; the files are then left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_on_disk_is_imported_once() {
    use sha2::Digest;
    let db = TestDb::new().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fleet-import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("components")).unwrap();
    let wasm = sluice_artifacts::MISBEHAVE;
    let digest: String = sha2::Sha256::digest(wasm).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.join("components").join(format!("{digest}.wasm")), wasm).unwrap();
    let key = "old-host-key-0123456789abcdef";
    let hashed: String = sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let registry = json!([{"id": "acme", "keys": [format!("sha256:{hashed}")], "component": format!("sha256:{digest}"),
        "database": {"schema": "acme"}}]);
    std::fs::write(dir.join("tenants.json"), registry.to_string()).unwrap();

    let sluice = Sluice::start_in(Some(&db), &config(), Some(&dir));
    assert_eq!(status_of(&sluice, key, "imported").await, 200);
    let (_, shown) = admin(reqwest::Method::GET, &sluice.url("/admin/tenants/acme"), None).await;
    assert_eq!(shown["component_digest"], json!(digest), "{shown}");
    assert!(sluice.log().contains("imported the tenant registry"), "{}", sluice.log());
    let (status, _) = admin(reqwest::Method::DELETE, &sluice.url("/admin/tenants/acme"), None).await;
    assert_eq!(status, 204);
    drop(sluice);

    // Started again with the same folder: the file is not read again, so
    // the deleted tenant stays deleted.
    let sluice = Sluice::start_in(Some(&db), &config(), Some(&dir));
    assert_eq!(status_of(&sluice, key, "not-again").await, 401);
    assert!(!sluice.log().contains("imported the tenant registry"), "{}", sluice.log());
    assert!(dir.join("tenants.json").exists(), "the file is left alone");
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A free port on loopback, for a host that must come back at the same
/// address (the balancer's configuration names it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// HAProxy in front of `ports`, checking each host's `/readyz` every 250 ms
/// (two failures in a row take a host out, so one check slowed by a busy
/// machine does not) and sending again a request a host dropped.
struct Balancer {
    child: std::process::Child,
    url: String,
    _config: std::path::PathBuf,
}

impl Balancer {
    fn start(ports: &[u16]) -> Balancer {
        let port = free_port();
        let servers: String =
            ports.iter().enumerate().map(|(i, p)| format!("  server host{} 127.0.0.1:{p} check\n", i + 1)).collect();
        let config = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             \x20 option redispatch\n  retries 3\n  retry-on conn-failure empty-response response-timeout\n\
             frontend sluice\n  bind 127.0.0.1:{port}\n  default_backend hosts\n\
             backend hosts\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n\
             \x20 timeout check 1s\n  default-server inter 250ms fall 2 rise 1\n{servers}"
        );
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("haproxy-{}-{port}.cfg", std::process::id()));
        std::fs::write(&path, config).unwrap();
        // Debian installs it in /usr/sbin, which a user's PATH may lack.
        let haproxy = if Path::new("/usr/sbin/haproxy").exists() { "/usr/sbin/haproxy" } else { "haproxy" };
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy (Debian package haproxy; .ci/run installs it)");
        Balancer { child, url: format!("http://127.0.0.1:{port}"), _config: path }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self._config);
    }
}

/// What the load clients saw.
#[derive(Default)]
struct Seen {
    /// Every event answered 200, by its key.
    acknowledged: Vec<String>,
    /// Answers other than 200 (or no answer), with when they came.
    failures: Vec<(Instant, String)>,
}

/// Three hosts on one database behind HAProxy, under load, while the
/// registry changes through each of them, one host is killed and started
/// again and another is stopped: every acknowledged event is stored once,
/// and no request fails but those the killed host dropped (which the
/// client sends again, with the same keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_loses_nothing() {
    let _exclusive = crate::support::timing_exclusive();
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let db = TestDb::new().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fleet-lb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |i: usize| {
        let toml = format!("listen = \"127.0.0.1:{}\"\n{}[http]\ndrain_ms = 1000\n", ports[i], config());
        Sluice::start_in(Some(&db), &toml, Some(&dir.join(format!("host{i}"))))
    };
    let mut hosts: Vec<Sluice> = (0..3).map(start).collect();
    let balancer = Balancer::start(&ports);

    // A tenant created through host 1 and used at once through the
    // balancer: the answer waits until every host serves it.
    let response = http()
        .post(hosts[0].url("/admin/tenants?wait=applied"))
        .bearer_auth(ADMIN)
        .body(json!({"id": "acme"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["sluice-pending"], "", "every host applied it");
    let applied_by = response.headers()["sluice-applied-by"].to_str().unwrap().split(',').count();
    assert_eq!(applied_by, 3, "{:?}", response.headers());
    let created: Value = response.json().await.unwrap();
    let key = created["keys"][0].as_str().unwrap().to_owned();
    // The balancer has found every host ready.
    let since = Instant::now();
    while status_of_url(&balancer.url, &key, "warm-up").await != 200 {
        assert!(since.elapsed() < Duration::from_secs(10), "the balancer does not serve");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (url, key, stop, seen) = (balancer.url.clone(), key.clone(), stop.clone(), seen.clone());
        clients.push(tokio::spawn(async move {
            let http = http();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let keys: Vec<String> = (0..5).map(|i| format!("c{client}-{n}-{i}")).collect();
                let body: Vec<Value> = keys
                    .iter()
                    .map(|k| {
                        json!({"eventType": "fleet", "occurredAt": "2026-01-01T00:00:00Z", "idempotencyKey": k,
                        "payload": {"k": k}})
                    })
                    .collect();
                let body = serde_json::to_string(&body).unwrap();
                // Sent until answered 200: the keys make a repeat harmless.
                for attempt in 0.. {
                    assert!(attempt < 100, "request c{client}-{n} never succeeded");
                    let answer = http
                        .post(format!("{url}/v1/events"))
                        .header("x-api-key", &key)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let failure = match answer {
                        Ok(r) if r.status() == 200 => None,
                        Ok(r) => Some(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                        Err(e) => Some(format!("no answer: {e}")),
                    };
                    match failure {
                        None => {
                            seen.lock().unwrap().acknowledged.extend(keys.iter().cloned());
                            break;
                        }
                        Some(why) => {
                            seen.lock().unwrap().failures.push((Instant::now(), why));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                n += 1;
            }
        }));
    }

    // A key added and revoked through host 2: refused by all three hosts
    // within the bound.
    let (status, added) = admin(reqwest::Method::POST, &hosts[1].url("/admin/tenants/acme/keys"), None).await;
    assert_eq!(status, 201, "{added}");
    let second = added["key"].as_str().unwrap().to_owned();
    until_every_host(&hosts, &second, 200, Instant::now(), "added").await;
    let key_id = added["key_id"].as_str().unwrap();
    let (status, _) =
        admin(reqwest::Method::DELETE, &hosts[1].url(&format!("/admin/tenants/acme/keys/{key_id}")), None).await;
    assert_eq!(status, 204);
    until_every_host(&hosts, &second, 401, Instant::now(), "revoked").await;

    // Ten swaps through host 3.
    let components = [sluice_artifacts::MISBEHAVE.to_vec(), sluice_artifacts::EVENTS.to_vec()];
    for swap in 0..10 {
        let (status, answer) = admin(
            reqwest::Method::PUT,
            &hosts[2].url("/admin/tenants/acme/component"),
            Some(components[swap % 2].clone().into()),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Host 2 killed outright, and started again at the same address.
    let killed_at = Instant::now();
    hosts[1].child.kill().unwrap();
    hosts[1].child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    hosts[1] = start(1);
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Host 1 stopped with SIGTERM: it drains, then stops.
    let terminated = hosts[0].terminate();
    assert!(terminated.success(), "{terminated:?}\n{}", hosts[0].log());
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.acknowledged.len() > 200, "the load ran: {} events", seen.acknowledged.len());
    // Only the killed host's dropped requests may have failed (HAProxy
    // resends most of them itself).
    let window = killed_at..restarted_at + Duration::from_secs(1);
    let outside: Vec<String> = seen
        .failures
        .iter()
        .filter(|(at, _)| !window.contains(at))
        .map(|(at, why)| {
            let ms = |t: Instant| t.duration_since(killed_at).as_millis() as i64;
            let since_kill =
                if *at >= killed_at { ms(*at) } else { -(killed_at.duration_since(*at).as_millis() as i64) };
            format!("{since_kill} ms after the kill: {}", why.chars().take(120).collect::<String>())
        })
        .collect();
    assert!(outside.is_empty(), "requests failed outside the kill: {outside:?}");

    let client = db.client().await;
    let rows =
        client.query("SELECT payload->>'k', count(*) FROM events WHERE payload ? 'k' GROUP BY 1", &[]).await.unwrap();
    let stored: std::collections::HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let missing: Vec<&String> = seen.acknowledged.iter().filter(|k| !stored.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    println!(
        "fleet behind HAProxy: {} events acknowledged, {} failed answers (all while host 2 was killed)",
        seen.acknowledged.len(),
        seen.failures.len()
    );
    drop(balancer);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn status_of_url(base: &str, key: &str, id: &str) -> u16 {
    let body = json!([{"eventType": "fleet", "occurredAt": "2026-01-01T00:00:00Z", "idempotencyKey": id}]);
    send(&format!("{base}/v1/events"), Some(key), &body.to_string()).await.0
}

/// The sources a host streams now, by its `/status.json`.
async fn owned_sources(host: &Sluice) -> Vec<String> {
    let status: Value =
        http().get(host.url("/status.json")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    status["cdc"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "owner")
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the hosts stream `expected` sources each (in any order).
async fn until_spread(hosts: &[&Sluice], expected: &[usize], within: Duration) -> Vec<Vec<String>> {
    let started = Instant::now();
    loop {
        let mut owned = Vec::new();
        for host in hosts {
            owned.push(owned_sources(host).await);
        }
        let mut counts: Vec<usize> = owned.iter().map(Vec::len).collect();
        counts.sort();
        if counts == expected {
            return owned;
        }
        assert!(started.elapsed() < within, "the sources are not spread as {expected:?} after {within:?}: {owned:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every source's audit holds each of `rows` changes once.
async fn until_audited(client: &tokio_postgres::Client, rows: i64, hosts: &[&Sluice]) {
    let started = Instant::now();
    for schema in ["one", "two", "three"] {
        loop {
            let row = client
                .query_one(
                    &format!("SELECT count(*), count(DISTINCT (commit_lsn, change_index)) FROM {schema}.cdc_audit"),
                    &[],
                )
                .await;
            let (all, distinct): (i64, i64) = row.map(|r| (r.get(0), r.get(1))).unwrap_or((0, 0));
            assert_eq!(all, distinct, "{schema}: a change applied twice");
            assert!(all <= rows, "{schema}: {all} audit rows for {rows} changes");
            if all == rows {
                break;
            }
            // Decoding reads the whole server's WAL: other tests' load slows it.
            if started.elapsed() > Duration::from_secs(180) {
                let logs: Vec<String> = hosts.iter().map(|h| h.log()).collect();
                panic!("{schema}: {all} of {rows} changes audited; the hosts' logs:\n{}", logs.join("\n-----\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Three change streams and three hosts started one after another: the
/// first host takes all three, and as the others join it hands them over
/// until each streams one. The source of a host killed outright moves to
/// another within seconds. Every change is applied once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_streams_spread_over_the_fleet() {
    let _exclusive = crate::support::timing_exclusive();
    use crate::support::source_toml;
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)").await.unwrap();
    let sources: String = ["one", "two", "three"]
        .iter()
        .map(|name| source_toml(&db, name, name, &["items"], &format!("schema = \"{name}\"")))
        .collect();
    let toml = format!("{}\n{sources}", config());
    let mut rows = 0;
    let insert = async |n: i64, rows: &mut i64| {
        for _ in 0..n {
            *rows += 1;
            client.execute("INSERT INTO items VALUES ($1, 0)", &[&(*rows as i32)]).await.unwrap();
        }
    };

    let first = Sluice::start(Some(&db), &toml);
    until_spread(&[&first], &[3], Duration::from_secs(30)).await;
    // Changes are streamed from the slots' creation on: the three exist
    // before the first change.
    let started = Instant::now();
    loop {
        let slots: i64 = client
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()", &[])
            .await
            .unwrap()
            .get(0);
        if slots == 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{slots} of 3 slots made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    insert(20, &mut rows).await;
    let second = Sluice::start(Some(&db), &toml);
    insert(20, &mut rows).await;
    let mut third = Sluice::start(Some(&db), &toml);
    insert(20, &mut rows).await;
    let spread = until_spread(&[&first, &second, &third], &[1, 1, 1], Duration::from_secs(45)).await;
    println!("spread over three hosts: {spread:?}");
    until_audited(&client, rows, &[&first, &second, &third]).await;

    // One host killed: its source moves to one of the two left.
    third.child.kill().unwrap();
    third.child.wait().unwrap();
    let killed = Instant::now();
    insert(20, &mut rows).await;
    until_spread(&[&first, &second], &[1, 2], Duration::from_secs(20)).await;
    println!("a killed host's source moved in {:?}", killed.elapsed());
    until_audited(&client, rows, &[&first, &second]).await;
}
