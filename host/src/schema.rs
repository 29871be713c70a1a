//! Shapes of the HTTP API that the handlers write or read as JSON without
//! a type of their own, and the error body every route answers with: the
//! OpenAPI document (`openapi.rs`) describes them.

use crate::ingest::Tally;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use serde_json::json;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A JSON error body: `{"error": "..."}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

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
