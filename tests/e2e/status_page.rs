//! The status page in a real browser: headless Chromium loads `/`, runs its
//! script against `/status.json`, and the DOM it builds shows the tenants
//! and live numbers that move under load. A screenshot is kept in
//! `target/test-artifacts/status-page.png`.

use crate::support::{Sluice, TestDb, http};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const ACME_KEY: &str = "acme-status-key-0123456789";
const GLOBEX_KEY: &str = "globex-status-key-0123456789";

/// Chromium's binary; the test fails, saying how to install it, without one.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(path) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
        {
            return path;
        }
    }
    panic!(
        "the status page test needs Chromium, and none is on PATH: install it with \
         `apt-get install -y chromium` (Debian/Ubuntu; .ci/run does this on CI)"
    );
}

/// Runs headless Chromium on `url` with `args`; returns its stdout.
fn browse(url: &str, profile: &Path, args: &[&str]) -> String {
    let output = Command::new(chromium())
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Long enough for the page's script to fetch /status.json and draw.
        .arg("--virtual-time-budget=4000")
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The text of the cell of `class` in the row of `tenant`, in a DOM dump.
fn cell(dom: &str, tenant: &str, class: &str) -> String {
    let row_start =
        dom.find(&format!("<tr data-tenant=\"{tenant}\">")).unwrap_or_else(|| panic!("no row of {tenant}:\n{dom}"));
    let row = &dom[row_start..row_start + dom[row_start..].find("</tr>").unwrap()];
    let cell_start = row.find(&format!("class=\"{class}")).unwrap_or_else(|| panic!("no {class} cell: {row}"));
    let text = &row[cell_start..];
    let text = &text[text.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_owned()
}

fn number(text: &str) -> f64 {
    text.replace(',', "").parse().unwrap_or_else(|_| panic!("a number: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_tenants_and_live_numbers() {
    // Fail early, saying how to install it, when there is no browser.
    chromium();
    let db = TestDb::new().await;
    let toml = format!(
        "[[tenants]]\nid = \"acme\"\nkeys = [\"{ACME_KEY}\"]\ndatabase = {{ schema = \"acme\" }}\n\
         [[tenants]]\nid = \"globex\"\nkeys = [\"{GLOBEX_KEY}\"]\ndatabase = {{ schema = \"globex\" }}\n"
    );
    let sluice = Sluice::start(Some(&db), &toml);
    let page = http().get(sluice.url("/")).send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(!html.contains(" src=") && !html.contains(" href="), "the page loads nothing from elsewhere");

    // Load: acme steadily, globex a little, one request refused per 20.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (worker, key) in [(0, ACME_KEY), (1, ACME_KEY), (2, GLOBEX_KEY)] {
        let (stop, sent, url) = (stop.clone(), sent.clone(), sluice.url("/v1/events"));
        senders.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let events: Vec<_> = (0..10)
                    .map(|i| {
                        let occurred = if n.is_multiple_of(20) && i == 0 { json!(null) } else { json!("2026-05-26T14:21:08Z") };
                        json!({"eventType": "tick", "occurredAt": occurred, "idempotencyKey": format!("{worker}-{n}-{i}")})
                    })
                    .collect();
                let response = http().post(&url).header("x-api-key", key).json(&events).send().await.unwrap();
                assert_eq!(response.status().as_u16(), 200);
                sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
                if key == GLOBEX_KEY {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    // A few seconds of history for the chart.
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The page fetches each second of history once: `since` leaves out the older ones.
    let status = |query: String| {
        let url = sluice.url(&format!("/status.json{query}"));
        async move { http().get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let full = status(String::new()).await;
    let points = full["history"].as_array().unwrap();
    assert!(points.len() >= 3, "a point a second: {full}");
    let since = points[points.len() - 2]["t"].as_f64().unwrap();
    let newer = status(format!("?since={since}")).await;
    let newer = newer["history"].as_array().unwrap();
    assert!(!newer.is_empty() && newer.len() < points.len(), "{} of {} points", newer.len(), points.len());
    assert!(newer.iter().all(|p| p["t"].as_f64().unwrap() > since), "since {since}: {newer:?}");

    let profile = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{}", std::process::id()));
    let url = sluice.url("/");
    let dump =
        |profile: PathBuf, url: String| tokio::task::spawn_blocking(move || browse(&url, &profile, &["--dump-dom"]));
    let first = dump(profile.clone(), url.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = dump(profile.clone(), url.clone()).await.unwrap();

    for dom in [&first, &second] {
        assert!(dom.contains("<tr data-tenant=\"acme\">") && dom.contains("<tr data-tenant=\"globex\">"), "{dom}");
        assert!(number(&cell(dom, "acme", "eps")) > 0.0, "acme's events/s under load:\n{dom}");
        assert!(number(&cell(dom, "globex", "eps")) > 0.0, "globex's events/s under load:\n{dom}");
        assert!(number(&cell(dom, "acme", "rejected")) > 0.0, "acme's rejections:\n{dom}");
        assert!(dom.contains("<polyline"), "the chart is drawn:\n{dom}");
        assert!(dom.contains("no change streams are configured"), "{dom}");
    }
    let accepted = |dom: &str| number(&cell(dom, "acme", "accepted"));
    assert!(accepted(&second) > accepted(&first), "the numbers move: {} then {}", accepted(&first), accepted(&second));
    let eps = |dom: &str| cell(dom, "acme", "eps");
    let moved = eps(&first) != eps(&second) || accepted(&second) > accepted(&first);
    assert!(moved, "events/s {} then {}", eps(&first), eps(&second));

    // The screenshot, kept for people to look at.
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let shot = format!("--screenshot={}", png.display());
    tokio::task::spawn_blocking(move || browse(&url, &profile, &[&shot, "--window-size=1280,1000"])).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000,
        "a real screenshot: {} bytes",
        bytes.len()
    );
    assert!(sent.load(Ordering::Relaxed) > 20, "the load ran");
}
