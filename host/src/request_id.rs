//! Request ids: every HTTP request gets one — the client's `x-request-id`
//! when it is sensible, else a new one — returned in the response's
//! `x-request-id` header and carried by the request's log span, so every
//! log line written while serving it names it. The writer, which commits
//! many requests' rows in one flush, names the ids of the requests in a
//! flush when it logs about it.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// The id of the request this task is serving, if any.
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(Arc::clone).ok()
}

pub async fn layer(request: Request, next: Next) -> Response {
    let id: Arc<str> = match request.headers().get(HEADER).and_then(|v| v.to_str().ok()) {
        Some(given) if acceptable(given) => given.into(),
        _ => generate().into(),
    };
    // The path only: a query may carry a key (`?api_key=`).
    let span =
        tracing::info_span!("request", request_id = %id, method = %request.method(), path = request.uri().path());
    let started = std::time::Instant::now();
    let mut response = CURRENT.scope(id.clone(), next.run(request).instrument(span.clone())).await;
    span.in_scope(|| {
        tracing::debug!(status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "answered")
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// A client's id is kept when it is short printable ASCII, so a log line
/// never carries anything else a client sends.
fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// 128 random bits as 32 hex digits.
fn generate() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap_or_default();
    crate::hex::hex(&bytes)
}
