//! Load for a running Sluice: request bodies of fresh events ([`generate`]),
//! HTTP workers for the ingest and query APIs ([`http`], [`query`]), the run
//! loop, closed or paced ([`run`]), and its report ([`report`]). Used by the
//! `sluice-load` tool and by `sluice bench`.

pub mod generate;
pub mod http;
pub mod query;
pub mod report;
pub mod run;

use generate::{Format, Generator, Kind};
use std::time::Duration;

/// The workers of an HTTP ingest run: `concurrency` of them, each posting
/// `events_per_request` fresh events a request to `url`, with `headers`
/// (`NAME: VALUE`) on every request.
pub fn http_workers(
    url: &str,
    kind: Kind,
    format: Format,
    events_per_request: usize,
    concurrency: usize,
    timeout: Duration,
    headers: &[String],
) -> anyhow::Result<Vec<http::HttpWorker>> {
    if format == Format::Ndjson && kind == Kind::Logflare {
        anyhow::bail!("--ndjson is for --kind events; Logflare bodies are {{\"batch\": [events]}}");
    }
    let client = http::client(concurrency, timeout, headers)?;
    let run_tag = generate::run_tag();
    Ok((0..concurrency)
        .map(|w| {
            let generator = Generator::new(&run_tag, w);
            http::HttpWorker::new(client.clone(), url, generator, kind, events_per_request, format)
        })
        .collect())
}
