//! The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`, `sluice
//! openapi`), derived from the handlers' `#[utoipa::path]` annotations and
//! the types they read and answer, so it changes with the code.
//! `docs/openapi.json` keeps a copy; a test fails when the two differ.

use crate::ingest::{Rejected, Tally};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Events, logs and database changes into PostgreSQL through WebAssembly normalizers. \
                       Ingest answers come after the rows are committed. See docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::http::events,
        crate::http::tenant_events,
        crate::http::logs,
        crate::http::tenant_logs,
        crate::http::logflare,
        crate::http::logflare_short,
        crate::http::logflare_json,
        crate::http::tenant_logflare,
        crate::http::healthz,
        crate::http::ready,
        serve,
        crate::status::page,
        crate::status::metrics,
        crate::status::status,
        crate::query::get_query,
        crate::query::post_query,
        crate::admin::list,
        crate::admin::create,
        crate::admin::show,
        crate::admin::update,
        crate::admin::remove,
        crate::admin::upload,
        crate::admin::add_key,
        crate::admin::revoke_key,
        crate::admin::dead_letters,
        crate::admin::purge_dead_letters,
        crate::admin::replay_dead_letters,
    ),
    components(schemas(ErrorBody, QueryError, Spooled, BadRequest, Tally, Rejected, Events, LogflareBody, LogRecords)),
    modifiers(&Security),
    tags(
        (name = "ingest", description = "Events and logs in; rows committed before the answer."),
        (name = "query", description = "Read-only SQL over a tenant's tables (docs/query.md)."),
        (name = "admin", description = "Tenants, keys, components and dead letters, behind the admin token."),
        (name = "service", description = "Health, readiness, metrics, the status page and this document."),
    ),
)]
struct Doc;

/// The security schemes the annotations name.
struct Security;

/// The header every ingest key and query token may come in.
const KEY_HEADER: &str = "x-api-key";

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        let header = |description: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(KEY_HEADER, description)))
        };
        components.add_security_scheme("ingest_key", header("A tenant's ingest API key."));
        components.add_security_scheme("ingest_bearer", bearer("A tenant's ingest API key as a Bearer token."));
        components.add_security_scheme(
            "ingest_query_key",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "api_key",
                "A tenant's ingest API key in the query, as Logflare's clients send it (Logflare routes only).",
            ))),
        );
        components.add_security_scheme(
            "query_token",
            bearer("A tenant's private query token (query_tokens); ingest keys do not authorize queries."),
        );
        components.add_security_scheme("query_token_key", header("A tenant's private query token."));
        components.add_security_scheme("admin_token", bearer("The service's admin_token."));
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The document as pretty JSON, ending in a newline (as `docs/openapi.json`).
pub fn json() -> String {
    let mut text = document().to_pretty_json().expect("the document serializes");
    text.push('\n');
    text
}

/// The service's OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> Response {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = JSON.get_or_init(json).clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

// ---------------------------------------------------------------------------
// Shapes the handlers write as JSON without a type of their own.

/// A refusal: what is wrong, in words.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    pub error: String,
}

/// A query PostgreSQL refused, with what it said.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct QueryError {
    pub error: String,
    /// PostgreSQL's SQLSTATE.
    pub sqlstate: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Where in the SQL text (from 1), when PostgreSQL says.
    pub position: Option<u32>,
}

/// 202: the database could not take the rows now; the request is kept on
/// disk (`[spool]`) and written when it can.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Spooled {
    pub spooled: bool,
    pub message: String,
}

/// The canonical event envelope (`POST /v1/events`): one event, an array of
/// them, or NDJSON (`application/x-ndjson`), optionally gzip or zstd
/// encoded (`Content-Encoding`).
#[derive(serde::Serialize, ToSchema)]
#[schema(example = json!({"eventType": "order.completed", "occurredAt": "2026-05-26T14:21:08.493Z",
    "source": "billing-service", "idempotencyKey": "order_38a91f-completed", "payload": {"amount": 12900}}))]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Event {
    /// What happened, e.g. `order.completed`.
    pub event_type: String,
    /// When it happened (RFC 3339).
    pub occurred_at: String,
    pub source: Option<String>,
    pub customer_external_id: Option<String>,
    /// The same key maps to the same `event_id`: a repeat is a duplicate.
    pub idempotency_key: Option<String>,
    pub correlation_id: Option<String>,
    pub payload: Option<BTreeMap<String, Value>>,
    pub metadata: Option<BTreeMap<String, Value>>,
}

/// One Logflare log event: a `message` and any other fields (`metadata`,
/// `timestamp`, …). The body is one event, an array, or `{"batch": […]}`.
#[derive(serde::Serialize, ToSchema)]
#[schema(example = json!({"message": "user signed in", "metadata": {"user_id": 42}}))]
#[allow(dead_code)]
pub struct LogflareEvent {
    /// The log line (also read as `event_message` or `log_entry`).
    pub message: Option<String>,
    pub metadata: Option<BTreeMap<String, Value>>,
    /// RFC 3339 text, or a number since 1970 (seconds, or micro- or milliseconds).
    pub timestamp: Option<Timestamp>,
    /// The event's id (a UUID); a repeat is a duplicate.
    pub id: Option<String>,
}

/// A time: RFC 3339 text, or a number since 1970.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Timestamp {
    Text(String),
    Number(f64),
}

/// A structured log record (a structlog event dict): `event`, `level`,
/// `timestamp` and any other fields, which are kept in `data`. The body is
/// one record, an array, or NDJSON.
#[derive(serde::Serialize, ToSchema)]
#[schema(example = json!({"timestamp": "2026-05-26T14:21:08Z", "level": "error", "event": "payment_failed",
    "user_id": "123"}))]
#[allow(dead_code)]
pub struct LogRecord {
    /// What happened.
    pub event: String,
    /// `info` when absent.
    pub level: Option<String>,
    /// When (the time of receipt when absent).
    pub timestamp: Option<Timestamp>,
    pub func: Option<String>,
    pub scope: Option<String>,
}

/// A component's bytes (`.wasm`).
#[derive(serde::Serialize, ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Wasm(Vec<u8>);

/// `POST /v1/events`: one event or an array of them.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Events {
    One(Event),
    Many(Vec<Event>),
}

/// `{"batch": [...]}`, as Logflare's clients send batches.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct LogflareBatch {
    pub batch: Vec<LogflareEvent>,
    /// The source by id (a UUID), when the query names none.
    pub source: Option<String>,
    /// The source by name, when the query names none.
    pub source_name: Option<String>,
}

/// Logflare's ingest body: one event, an array, or `{"batch": [...]}`.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum LogflareBody {
    Batch(LogflareBatch),
    Many(Vec<LogflareEvent>),
    One(LogflareEvent),
}

/// `POST /v1/logs`: one record or an array of them.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum LogRecords {
    One(LogRecord),
    Many(Vec<LogRecord>),
}

/// 400: every event was rejected (the tally says why, per event), or the
/// request itself is malformed.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BadRequest {
    Rejected(Tally),
    Refused(ErrorBody),
}

/// What every ingest route may answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum IngestResponses {
    /// The rows are committed; the tally counts new, duplicate and rejected events.
    #[response(status = 200)]
    Committed(Tally),
    /// The database could not take the rows; the request is kept on disk and
    /// written when it can (only with `[spool]`).
    #[response(status = 202)]
    Spooled(Spooled),
    /// Every event was rejected, or the body is malformed.
    #[response(status = 400)]
    BadRequest(BadRequest),
    /// No API key, or not a valid one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The key is not a key of the path's tenant, or the tenant may not use this API.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such tenant, or the component serves no such route.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The body did not arrive within `[http] body_read_timeout_ms`, or
    /// arrived slower than `min_body_bytes_per_second`.
    #[response(status = 408)]
    TooSlow(ErrorBody),
    /// The body, or what it decompresses to, is larger than `max_body_bytes`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// An unsupported content type or content encoding.
    #[response(status = 415)]
    Unsupported(ErrorBody),
    /// The tenant has too many bytes in flight (decompressed bytes count as
    /// they are produced); retry after `Retry-After` seconds.
    #[response(status = 429)]
    Busy(ErrorBody),
    /// The component failed (a trap, a broken answer).
    #[response(status = 500)]
    Failed(ErrorBody),
    /// Nothing was committed (the database is unavailable, the request timed
    /// out, the service is overloaded: too many bytes in flight or too near
    /// its memory limit, decompressed bytes counted as they are produced):
    /// retry after `Retry-After` seconds.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_names_its_responses_and_the_schemes_exist() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(!op["responses"].as_object().unwrap().is_empty(), "{method} {path} has no responses");
                for requirement in op.get("security").and_then(Value::as_array).into_iter().flatten() {
                    for name in requirement.as_object().unwrap().keys() {
                        assert!(schemes.contains_key(name), "{method} {path} names unknown scheme {name}");
                    }
                }
            }
        }
        assert!(doc["paths"]["/admin/tenants/{id}/dead-letters"]["get"].is_object());
    }

    #[test]
    fn the_committed_copy_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let current = json();
        let first = committed.lines().zip(current.lines()).position(|(a, b)| a != b);
        assert!(
            committed == current,
            "docs/openapi.json is not the document the code makes (first difference at line {}); \
             regenerate it: cargo run -p sluice -- openapi > docs/openapi.json",
            first.map_or_else(|| "the end".to_owned(), |i| (i + 1).to_string())
        );
    }
}
