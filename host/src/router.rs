//! The HTTP API's routes, and the layers every answer passes through.

use crate::http::{
    events, healthz, logflare, logflare_json, logflare_short, logs, ready, tenant_events, tenant_logflare, tenant_logs,
};
use crate::schema::error;
use crate::state::App;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/events", post(events))
        .route("/t/{tenant}/v1/events", post(tenant_events))
        .route("/v1/logs", post(logs))
        .route("/t/{tenant}/v1/logs", post(tenant_logs))
        .route("/api/logs", post(logflare))
        .route("/logs", post(logflare_short))
        .route("/logs/json", post(logflare_json))
        .route("/t/{tenant}/api/logs", post(tenant_logflare))
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/openapi.json", get(crate::openapi::serve))
        .merge(crate::admin::routes(app.clone()))
        .merge(crate::query::handlers::routes(app.clone()))
        .merge(crate::status::routes(app.clone()))
        .layer(axum::middleware::from_fn(crate::request_id::layer))
        .layer(axum::middleware::map_response(json_refusals))
        .layer(axum::middleware::map_response(retry_after))
        .with_state(app)
}

/// Every 503 and 429 tells the client when to try again: the answers that
/// know better set their own `Retry-After`; the rest get one second.
async fn retry_after(mut response: Response) -> Response {
    let status = response.status();
    if (status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS)
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// axum's own refusals (an unparsable query string or path, a body past
/// its limit) are plain text; every error of the API is `{"error": …}`.
async fn json_refusals(response: Response) -> Response {
    let plain = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match Limited::new(body, 64 << 10).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() { parts.status.canonical_reason().unwrap_or("refused").to_owned() } else { text };
    let mut refusal = error(parts.status, message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            refusal.headers_mut().insert(name, value.clone());
        }
    }
    refusal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 503 and 429 leaves with `Retry-After`; an answer that set its
    /// own keeps it; others get none.
    #[tokio::test]
    async fn every_503_and_429_says_when_to_retry() {
        for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::TOO_MANY_REQUESTS] {
            let answered = retry_after(error(status, "busy")).await;
            assert_eq!(answered.headers().get(header::RETRY_AFTER).unwrap(), "1");
            let mut own = error(status, "resting");
            own.headers_mut().insert(header::RETRY_AFTER, 30.into());
            assert_eq!(retry_after(own).await.headers().get(header::RETRY_AFTER).unwrap(), "30");
        }
        for status in [StatusCode::OK, StatusCode::BAD_REQUEST, StatusCode::INTERNAL_SERVER_ERROR] {
            assert!(!retry_after(error(status, "x")).await.headers().contains_key(header::RETRY_AFTER));
        }
    }
}
