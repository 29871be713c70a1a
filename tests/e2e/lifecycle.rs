//! Starting, stopping and restarting the service.

use crate::support::{EXAMPLE, Sluice, TestDb, post};
use serde_json::json;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_starts_keeps_its_data_and_stops() {
    let data_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let pid_file = data_dir.join("postgres/postmaster.pid");

    let mut sluice = Sluice::start_in(None, "", Some(&data_dir));
    assert!(sluice.log().contains("embedded PostgreSQL"), "it says so: {}", sluice.log());
    assert!(pid_file.exists(), "the cluster runs under the data folder");
    let (status, answer) = post(&sluice.url("/v1/events"), "application/json", EXAMPLE).await;
    assert_eq!((status, &answer["inserted"]), (200, &json!(1)), "{answer}");
    assert!(sluice.terminate().success(), "{}", sluice.log());
    assert!(!pid_file.exists(), "the cluster was stopped: {}", sluice.log());

    // Started again, the event is already there.
    let mut sluice = Sluice::start_in(None, "", Some(&data_dir));
    let (status, answer) = post(&sluice.url("/v1/events"), "application/json", EXAMPLE).await;
    assert_eq!((status, &answer["duplicates"]), (200, &json!(1)), "{answer}");
    assert!(sluice.terminate().success());
    assert!(!pid_file.exists());
    let password = std::fs::read_to_string(data_dir.join("postgres.password")).unwrap();
    assert!(password.trim().len() >= 16);
    assert!(!sluice.log().contains(password.trim()), "the password is not in the log");
    std::fs::remove_dir_all(&data_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_event() {
    let db = TestDb::new().await;
    let mut sluice = Sluice::start(Some(&db), "");
    let url = sluice.url("/v1/events");
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut senders = Vec::new();
    for task in 0..16 {
        let url = url.clone();
        let acknowledged = acknowledged.clone();
        senders.push(tokio::spawn(async move {
            let client = crate::support::http();
            for n in 0.. {
                let keys: Vec<String> = (0..10).map(|i| format!("{task}-{n}-{i}")).collect();
                let body: String = keys
                    .iter()
                    .map(|k| {
                        format!(
                            r#"{{"eventType":"t","occurredAt":"2026-01-01T00:00:00Z","idempotencyKey":"{k}","payload":{{"k":"{k}"}}}}"#
                        ) + "\n"
                    })
                    .collect();
                let sent = client.post(&url).header("content-type", "application/x-ndjson").body(body).send().await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        let answer: serde_json::Value = response.json().await.unwrap();
                        assert_eq!(answer["inserted"], 10);
                        acknowledged.lock().unwrap().extend(keys);
                    }
                    // Refused or cut off once shutdown starts: not acknowledged.
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = acknowledged.lock().unwrap().len();
    let status = tokio::task::spawn_blocking(move || {
        let status = sluice.terminate();
        (status, sluice.log())
    })
    .await
    .unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(status.0.success(), "exits cleanly: {}", status.1);
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(before > 100, "the load ran: {before} events acknowledged before SIGTERM");
    let stored: HashSet<String> = db
        .client()
        .await
        .query("SELECT payload->>'k' FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(missing.is_empty(), "{} acknowledged events are missing, e.g. {:?}", missing.len(), missing.first());
}
