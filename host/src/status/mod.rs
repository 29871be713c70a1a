//! The operator's view: `GET /metrics` (Prometheus), `GET /status.json`
//! (now, and the last minutes second by second) and the status page at
//! `GET /` that draws it. The page is static, compiled into the binary;
//! the data comes from `/status.json`.
//!
//! With `[metrics] require_admin_token = true`, `/metrics` and
//! `/status.json` need the admin token; the page itself holds no data, so
//! it is always served, and asks for the token when `/status.json` does.
//!
//! Tenant ids are shown only to a request with the admin token, or to all
//! with `[metrics] show_tenants = true`; others get the service-wide
//! series only.

use crate::state::App;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("index.html");

pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let data = Router::new().route("/metrics", get(metrics)).route("/status.json", get(status));
    let data = match app.metrics_config.require_admin_token {
        true => data.route_layer(middleware::from_fn_with_state(app, crate::admin::authorize)),
        false => data,
    };
    Router::new().route("/", get(page)).merge(data)
}

/// The status page: HTML that draws `/status.json`; it holds no data itself.
#[utoipa::path(get, path = "/", tag = "service", summary = "The operator's status page.",
    responses((status = 200, description = "The page (HTML, built in).", content_type = "text/html", body = String)))]
pub(crate) async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE).into_response()
}

/// Prometheus metrics in the OpenMetrics text format (docs/observability.md).
#[utoipa::path(get, path = "/metrics", tag = "service", summary = "Prometheus metrics.",
    description = "Open unless `[metrics] require_admin_token` is set; then the admin token is needed. \
        Tenant ids (and the series labelled with them) only with the admin token, or with `[metrics] show_tenants`.",
    security((), ("admin_token" = [])),
    responses(
    (status = 200, description = "Every series.", content_type = "application/openmetrics-text", body = String),
    (status = 401, description = "With `require_admin_token`: no admin token, or a wrong one.", body = crate::schema::ErrorBody),
))]
pub(crate) async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let text = app.metrics.render(&app, show_tenants(&app, &headers));
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct Since {
    /// Only the history after this time (seconds since the Unix epoch).
    since: Option<f64>,
}

/// Tenants, totals, change streams and the last minutes second by second.
#[utoipa::path(get, path = "/status.json", tag = "service", summary = "What the status page shows, as JSON.",
    description = "Open unless `[metrics] require_admin_token` is set; then the admin token is needed. \
        Tenant ids (and the series labelled with them) only with the admin token, or with `[metrics] show_tenants`.",
    params(("since" = Option<f64>, Query, description = "Only the seconds after this time (seconds since the Unix epoch).")),
    security((), ("admin_token" = [])),
    responses(
    (status = 200, description = "Now, and the history.", body = Object),
    (status = 400, description = "A query string that is not as documented.", body = crate::schema::ErrorBody),
    (status = 401, description = "With `require_admin_token`: no admin token, or a wrong one.", body = crate::schema::ErrorBody),
))]
pub(crate) async fn status(State(app): State<Arc<App>>, headers: HeaderMap, Query(query): Query<Since>) -> Response {
    let mut body = app.metrics.status(&app, query.since, show_tenants(&app, &headers));
    // The fleet as the service database has it; this host alone when that
    // cannot be read at once.
    let hosts = match tokio::time::timeout(Duration::from_secs(1), app.fleet.hosts()).await {
        Ok(Ok(hosts)) => serde_json::to_value(hosts).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    body["fleet"] = serde_json::json!({ "this": app.fleet.id, "hosts": hosts });
    (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// Whether this request may see tenant ids: it sent the admin token, or
/// the configuration opens them to all, or there are none to hide (only the
/// keyless default tenant serves).
fn show_tenants(app: &App, headers: &HeaderMap) -> bool {
    app.metrics_config.show_tenants
        || app.registry.snapshot().tenants.is_empty()
        || crate::admin::has_admin_token(app, headers)
}
