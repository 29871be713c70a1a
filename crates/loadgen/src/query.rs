//! Mode `query`: small read-only SQL queries against a running
//! `sluice serve`'s `POST /api/query`.

use crate::run::{Attempt, Failure, Worker};
use std::sync::Arc;
use std::time::Instant;

/// The default query: a tenant's ten latest events of one type (served by
/// the events table's `(event_type, occurred_at DESC)` index).
pub const DEFAULT_SQL: &str =
    "SELECT event_id, occurred_at, payload FROM events WHERE event_type = $1 ORDER BY occurred_at DESC LIMIT 10";

/// The request bodies to cycle through: one per parameter list.
pub fn bodies(sql: &str, params: &[String]) -> anyhow::Result<Vec<String>> {
    let lists: Vec<serde_json::Value> = if params.is_empty() {
        if sql == DEFAULT_SQL {
            crate::generate::EVENT_TYPES.iter().map(|t| serde_json::json!([t])).collect()
        } else {
            vec![serde_json::json!([])]
        }
    } else {
        params
            .iter()
            .map(|p| match serde_json::from_str::<serde_json::Value>(p) {
                Ok(list @ serde_json::Value::Array(_)) => Ok(list),
                _ => Err(anyhow::anyhow!("--params {p:?} is not a JSON array such as '[\"order.completed\", 10]'")),
            })
            .collect::<anyhow::Result<_>>()?
    };
    Ok(lists.into_iter().map(|params| serde_json::json!({ "sql": sql, "params": params }).to_string()).collect())
}

pub struct QueryWorker {
    client: reqwest::Client,
    url: String,
    bodies: Arc<Vec<String>>,
    next: usize,
}

impl QueryWorker {
    /// Worker `index` starts at its own place in the parameter lists.
    pub fn new(client: reqwest::Client, url: &str, bodies: Arc<Vec<String>>, index: usize) -> QueryWorker {
        QueryWorker { client, url: url.to_owned(), bodies, next: index }
    }
}

impl Worker for QueryWorker {
    async fn send(&mut self) -> Attempt {
        let body = self.bodies[self.next % self.bodies.len()].clone();
        self.next += 1;
        let bytes = body.len() as u64;
        let started = Instant::now();
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let result = match response {
            Err(e) if e.is_connect() => {
                let failure = crate::http::transport_failure(e);
                let latency = started.elapsed();
                // Nothing listens: don't spin.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                return Attempt { result: Err(failure), latency, bytes };
            }
            Err(e) => Err(crate::http::transport_failure(e)),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Err(e) => Err(crate::http::transport_failure(e)),
                    Ok(text) => judge(status, &text),
                }
            }
        };
        Attempt { result, latency: started.elapsed(), bytes }
    }
}

/// A query counts when it is a 200 with a `result` array; its rows are
/// what it returned.
fn judge(status: u16, body: &[u8]) -> Result<u64, Failure> {
    let text = || String::from_utf8_lossy(body).into_owned();
    if status != 200 {
        return Err(Failure::new(format!("HTTP {status}"), text()));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(answer) => match answer.get("result").and_then(serde_json::Value::as_array) {
            Some(rows) => Ok(rows.len() as u64),
            None => Err(Failure::new("bad response", text())),
        },
        Err(_) => Err(Failure::new("bad response", text())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_cycle_parameters() {
        let default = bodies(DEFAULT_SQL, &[]).unwrap();
        assert_eq!(default.len(), 4);
        assert!(default[0].contains(r#""params":["order.completed"]"#), "{}", default[0]);
        assert_eq!(bodies("SELECT 1", &[]).unwrap(), [r#"{"params":[],"sql":"SELECT 1"}"#]);
        let two = bodies("SELECT $1", &["[1]".into(), "[\"a\"]".into()]).unwrap();
        assert_eq!(two.len(), 2);
        assert!(bodies("SELECT $1", &["1".into()]).is_err());
    }

    #[test]
    fn only_answers_with_rows_count() {
        assert_eq!(judge(200, br#"{"result":[{"a":1},{"a":2}],"rows":2}"#).ok(), Some(2));
        assert_eq!(judge(400, br#"{"error":"no"}"#).err().unwrap().kind, "HTTP 400");
        assert_eq!(judge(200, br#"{"error":"no"}"#).err().unwrap().kind, "bad response");
    }
}
