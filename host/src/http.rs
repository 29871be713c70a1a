//! The HTTP API.

use crate::db::writer::WriteError;
use crate::ingest::{IngestError, Tenant};
use crate::runtime::{ComponentFailure, Runtime};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use sluice_sdk::{Request, RequestError};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct App {
    pub runtime: Arc<Runtime>,
    /// The tenant requests without a key go to, from loopback only.
    pub default_tenant: Arc<Tenant>,
    pub pool: Pool,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(app)
}

/// A JSON error body: `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let check = async {
        let client = app.pool.get().await.map_err(|e| e.to_string())?;
        client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("the database is unreachable: {e}")),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the database did not answer within 2 s"),
    }
}

async fn ingest(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !peer.ip().is_loopback() {
        return error(
            StatusCode::UNAUTHORIZED,
            "no tenants are configured, so requests are accepted from loopback only",
        );
    }
    let tenant = app.default_tenant.clone();
    let received_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let body = match read_body(&headers, body, app.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = Request {
        tenant: tenant.id.clone(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers: component_headers(&headers),
        body,
        received_at,
    };
    match tokio::time::timeout(app.request_timeout, tenant.ingest(&app.runtime, request)).await {
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the request timed out before its rows were committed"),
        Ok(Ok(tally)) => {
            let status = if tally.events > 0 && tally.rejected.len() as u32 == tally.events {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            (status, axum::Json(tally)).into_response()
        }
        Ok(Err(IngestError::Request(RequestError::Malformed(m)))) => error(StatusCode::BAD_REQUEST, m),
        Ok(Err(IngestError::Request(RequestError::UnsupportedMediaType(m)))) => {
            error(StatusCode::UNSUPPORTED_MEDIA_TYPE, m)
        }
        Ok(Err(IngestError::Component(failure))) => {
            tracing::warn!(tenant = %tenant.id, "{failure}");
            let status = match failure {
                ComponentFailure::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, failure.to_string())
        }
        Ok(Err(IngestError::Write(e))) => {
            tracing::warn!(tenant = %tenant.id, "write failed: {e}");
            let status = match e {
                WriteError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
                WriteError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, e.to_string())
        }
    }
}

/// Headers a component sees: lower-case names, UTF-8 values, and never
/// credentials.
fn component_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            !matches!(name.as_str(), "authorization" | "x-api-key" | "cookie" | "proxy-authorization")
        })
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect()
}

/// Reads the body, decompressing gzip or zstd, never holding more than
/// `limit` bytes of it either way.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, Response> {
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than the limit of {limit} bytes"));
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(encoding.as_str(), "" | "identity" | "gzip" | "x-gzip" | "zstd") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-encoding {encoding:?} is not supported; send gzip, zstd or no encoding"),
        ));
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let raw = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}"))),
    };
    let decoded = match encoding.as_str() {
        "gzip" | "x-gzip" => decompress(flate2::read::MultiGzDecoder::new(&raw[..]), limit),
        "zstd" => zstd::stream::read::Decoder::new(&raw[..]).and_then(|d| decompress(d, limit)),
        _ => return Ok(raw.to_vec()),
    };
    match decoded {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Err(too_large()),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("the {encoding} body does not decompress: {e}"))),
    }
}

/// Decompresses at most `limit` bytes; `None` when there are more.
fn decompress(reader: impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut out)?;
    Ok((out.len() <= limit).then_some(out))
}
