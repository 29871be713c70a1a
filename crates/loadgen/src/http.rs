//! Mode `http`: requests of fresh events to a running `sluice serve`.

use crate::generate::{Format, Generator, Kind};
use crate::run::{Attempt, Failure, Worker};
use std::time::{Duration, Instant};

/// Pause after a refused connection.
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);

pub struct HttpWorker {
    client: reqwest::Client,
    url: String,
    generator: Generator,
    kind: Kind,
    events: usize,
    format: Format,
}

/// One client for every worker; each worker keeps a connection busy.
/// `headers` (`name: value`) go with every request, e.g. an API key.
pub fn client(concurrency: usize, timeout: Duration, headers: &[String]) -> anyhow::Result<reqwest::Client> {
    let mut map = reqwest::header::HeaderMap::new();
    for header in headers {
        let (name, value) =
            header.split_once(':').ok_or_else(|| anyhow::anyhow!("--header {header:?} is not NAME: VALUE"))?;
        map.insert(reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?, value.trim().parse()?);
    }
    Ok(reqwest::Client::builder()
        .default_headers(map)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency)
        .timeout(timeout)
        .build()?)
}

impl HttpWorker {
    pub fn new(
        client: reqwest::Client,
        url: &str,
        generator: Generator,
        kind: Kind,
        events: usize,
        format: Format,
    ) -> HttpWorker {
        HttpWorker { client, url: url.to_owned(), generator, kind, events, format }
    }
}

impl Worker for HttpWorker {
    async fn send(&mut self) -> Attempt {
        let body = self.generator.request_body(self.kind, self.events, self.format);
        let bytes = body.len() as u64;
        let started = Instant::now();
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, self.format.content_type())
            .body(body)
            .send()
            .await;
        let result = match response {
            Err(e) if e.is_connect() => {
                let failure = transport_failure(e);
                let latency = started.elapsed();
                // Nothing listens: don't spin.
                tokio::time::sleep(CONNECT_BACKOFF).await;
                return Attempt { result: Err(failure), latency, bytes };
            }
            Err(e) => Err(transport_failure(e)),
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Err(e) => Err(transport_failure(e)),
                    Ok(text) => judge(status.as_u16(), &text, self.events as u64),
                }
            }
        };
        Attempt { result, latency: started.elapsed(), bytes }
    }
}

pub fn transport_failure(e: reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    // The chain of sources says what actually went wrong.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    Failure::new(kind, detail)
}

/// A request counts when it is a 200 whose events were all inserted.
fn judge(status: u16, body: &[u8], sent: u64) -> Result<u64, Failure> {
    let text = || String::from_utf8_lossy(body).into_owned();
    if status != 200 {
        return Err(Failure::new(format!("HTTP {status}"), text()));
    }
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(Failure::new("bad response", text()));
    };
    let field = |name: &str| answer.get(name).and_then(serde_json::Value::as_u64);
    match (field("events"), field("inserted")) {
        (Some(events), Some(inserted)) if events == sent && inserted == sent => Ok(inserted),
        (Some(_), Some(_)) => Err(Failure::new("not all inserted", text())),
        _ => Err(Failure::new("bad response", text())),
    }
}

#[cfg(test)]
mod tests {
    use super::judge;

    #[test]
    fn only_complete_inserts_count() {
        assert_eq!(judge(200, br#"{"events":3,"inserted":3,"duplicates":0,"rejected":[]}"#, 3).ok(), Some(3));
        let partial = judge(200, br#"{"events":3,"inserted":2,"duplicates":1,"rejected":[]}"#, 3).err().unwrap();
        assert_eq!(partial.kind, "not all inserted");
        assert_eq!(judge(503, b"busy", 3).err().unwrap().kind, "HTTP 503");
        assert_eq!(judge(200, b"<html>", 3).err().unwrap().kind, "bad response");
    }
}
