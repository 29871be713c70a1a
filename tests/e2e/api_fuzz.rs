//! The HTTP API against its own OpenAPI document: the served document is
//! the committed `docs/openapi.json`, and Schemathesis, fuzzing every
//! operation with the admin token, an ingest key and a query token, finds
//! no 5xx and no answer the document does not describe (status, content
//! type, headers, body schema), and no request the document calls invalid
//! accepted.
//!
//! Needs `schemathesis` on PATH (`.ci/run` installs the pinned version).
//! `SLUICE_FUZZ_EXAMPLES` (default 100) sets the examples per operation,
//! `SLUICE_FUZZ_SEED` (default 1) the seed.

use crate::support::{Sluice, TestDb, http};
use std::path::Path;
use std::process::Command;

/// The version `.ci/run` installs.
pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";

const ADMIN: &str = "fuzz-admin-token-0123456789";
const KEY: &str = "fuzz-ingest-key-0123456789";
const QUERY: &str = "fuzz-query-token-0123456789";

/// Schemathesis's settings: a credential per security scheme of the
/// document, the tenant for `/t/{tenant}/…`, and the read-only admin
/// operations pointed at that tenant. Ids are not taken from answers, so
/// the fuzzer never deletes or rewrites the tenant under test.
fn config() -> String {
    format!(
        r#"[auth.openapi.ingest_key]
api_key = "{KEY}"
[auth.openapi.ingest_bearer]
bearer = "{KEY}"
[auth.openapi.ingest_query_key]
api_key = "{KEY}"
[auth.openapi.query_token]
bearer = "{QUERY}"
[auth.openapi.query_token_key]
api_key = "{QUERY}"
[auth.openapi.admin_token]
bearer = "{ADMIN}"

# Every check but accepting all valid data: a valid-looking event can
# still be refused (an unknown Logflare source, say).
[checks]
enabled = true
positive_data_acceptance.enabled = false

[phases.coverage.extra-data-sources]
responses = false
[phases.fuzzing.extra-data-sources]
responses = false

[parameters]
tenant = "fuzz"

[[operations]]
include-path-regex = "^/admin/tenants/\\{{id\\}}/dead-letters"
parameters = {{ id = "fuzz" }}

# A batch with invalid events is answered 200 with each refused one in
# `rejected` while the valid ones are written: by design, not a failure to
# reject invalid data.
[[operations]]
include-tag = "ingest"
checks.negative_data_rejection.enabled = false
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_matches_its_openapi_document_under_fuzzing() {
    let db = TestDb::new().await;
    let toml = format!(
        r#"admin_token = "{ADMIN}"

[[tenants]]
id = "fuzz"
keys = ["{KEY}"]
query_tokens = ["{QUERY}"]
"#
    );
    let service = Sluice::start(Some(&db), &toml);

    let served = http().get(service.url("/openapi.json")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    let served = served.text().await.unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json")).unwrap();
    assert!(
        served == committed,
        "the served document is not docs/openapi.json; regenerate it: cargo run -p sluice -- openapi > docs/openapi.json"
    );

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("api-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("schemathesis.toml"), config()).unwrap();
    let examples = std::env::var("SLUICE_FUZZ_EXAMPLES").unwrap_or_else(|_| "100".into());
    let seed = std::env::var("SLUICE_FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let started = std::time::Instant::now();
    let output = Command::new("schemathesis")
        .current_dir(&dir)
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(service.url("/openapi.json"))
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", &examples, "--seed", &seed])
        .args(["--workers", "2", "--generation-database", "none", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(dir.join("report"))
        .env("NO_COLOR", "1")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("schemathesis is not installed: pip install '{SCHEMATHESIS}' (.ci/run does)")
        }
        Err(e) => panic!("run schemathesis: {e}"),
    };
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{report}\n{}\nthe service's log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        service.log()
    );
    let summary = report.lines().rev().find(|l| l.contains("generated")).unwrap_or("").trim().to_owned();
    eprintln!("schemathesis: {summary} in {:.0?}", started.elapsed());
    // Every operation was tested (but the document's own, which the fuzzer
    // leaves out).
    let junit: String = std::fs::read_dir(dir.join("report"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    let document: serde_json::Value = serde_json::from_str(&served).unwrap();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let case = format!("testcase name=\"{} {path}\"", method.to_uppercase());
            assert!(path == "/openapi.json" || junit.contains(&case), "{method} {path} was not tested:\n{report}");
        }
    }

    // The authorized paths were exercised: the fuzzer's valid events were
    // committed, and the tenant it used is still there.
    let client = db.client().await;
    let rows: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert!(rows > 0, "no event was committed: the ingest key was not used\n{report}");
    let tenant = http().get(service.url("/admin/tenants/fuzz")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(tenant.status(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}
