//! The built-in component: one WebAssembly component serving every API
//! Sluice has a normalizer for, chosen by the request's path.
//!
//! | path ends with | normalizer |
//! |---|---|
//! | `/v1/events` | canonical events (`sluice-events`) |
//! | `/api/logs`, `/logs` | Logflare's ingest API (`sluice-logflare`) |
//! | `/v1/logs` | structured logs (`sluice-structlog`) |
//!
//! Paths match by their end, so a tenant's route such as
//! `/t/acme/v1/events` reaches the same normalizer.

use sluice_sdk::{Outcome, Request, RequestError, Table};

#[cfg(target_family = "wasm")]
sluice_sdk::export_normalizer!();

/// Every table and template of the three normalizers.
pub fn tables() -> Vec<Table> {
    let mut tables = sluice_events::tables();
    tables.extend(sluice_logflare::tables());
    tables.extend(sluice_structlog::tables());
    tables
}

/// Hands the request to the normalizer of its path.
pub fn handle(request: &Request) -> Result<Outcome, RequestError> {
    let path = request.path.trim_end_matches('/');
    if path.ends_with("/v1/events") {
        sluice_events::handle(request)
    } else if path.ends_with("/v1/logs") {
        sluice_structlog::handle(request)
    } else if path.ends_with("/api/logs") || path.ends_with("/logs") || path.ends_with("/logs/json") {
        sluice_logflare::handle(request)
    } else {
        Err(RequestError::NotFound(format!(
            "this component serves /v1/events, /api/logs, /logs, /logs/json and /v1/logs, not {:?}",
            request.path
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn request(path: &str, body: &str) -> Request {
        Request {
            tenant: "acme".into(),
            method: "POST".into(),
            path: path.into(),
            query: "source_name=app".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            received_at: 1_780_000_000_000_000,
            settings: "{}".into(),
        }
    }

    /// The table of the first plan of a request to `path` whose body is an
    /// event every normalizer takes.
    fn routed(path: &str) -> Result<String, RequestError> {
        let body = r#"{"eventType":"a","occurredAt":"2026-01-01T00:00:00Z","message":"m","event":"e"}"#;
        let outcome = handle(&request(path, body))?;
        assert!(outcome.rejections.is_empty(), "{path}: {:?}", outcome.rejections);
        Ok(outcome.plans[0].table.clone())
    }

    #[test]
    fn routes_by_path() {
        let logflare = sluice_logflare::table(Uuid::new_v5(&sluice_logflare::NAMESPACE, b"acme/app"));
        for (path, table) in [
            ("/v1/events", "events"),
            ("/t/acme/v1/events", "events"),
            ("/v1/events/", "events"),
            ("/api/logs", logflare.as_str()),
            ("/logs", logflare.as_str()),
            ("/logs/json", logflare.as_str()),
            ("/t/acme/api/logs", logflare.as_str()),
            ("/v1/logs", "stogger_logs"),
            ("/t/acme/v1/logs", "stogger_logs"),
        ] {
            assert_eq!(routed(path).unwrap(), table, "{path}");
        }
        for path in ["/", "/v1/event", "/v2/events", "/api/logsx", "/xlogs", "/v1/events/x", "/logs/jsonx"] {
            let e = routed(path).unwrap_err();
            assert!(matches!(&e, RequestError::NotFound(m) if m.contains("/v1/events, /api/logs")), "{path}: {e:?}");
        }
    }

    #[test]
    fn tables_are_valid_and_distinct() {
        let tables = tables();
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["events", "events_by_type", "log_events", "structured_logs"]);
        for table in &tables {
            table.validate().unwrap();
        }
        // The longest names each template's instances can have are valid.
        let instances = [
            ("events_by_type", sluice_events::type_table(&"x".repeat(200))),
            ("log_events", sluice_logflare::table(Uuid::max())),
            ("structured_logs", "s".repeat(49)),
        ];
        for (template, name) in instances {
            let template = tables.iter().find(|t| t.name == template && t.template).unwrap();
            template.instance(&name).validate().unwrap();
        }
    }
}
