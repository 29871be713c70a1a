//! The ingest routes (events, Logflare, structured logs) and the health
//! checks: from a request to its tenant, its component and its answer.
//! Every route is registered in `router.rs`.

use crate::db::writer::WriteError;
use crate::ingest::{IngestError, Tenant};
use crate::runtime::ComponentFailure;
use crate::schema::error;
use crate::state::App;
use crate::tenants::spec::Api;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use sluice_sdk::{Request, RequestError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "Alive.", content_type = "text/plain", body = String, example = "ok\n")))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the database answers, every component is loaded and every
/// change stream owns its slot or stands by; else 503. Either way the body
/// says how each check went.
#[utoipa::path(get, path = "/readyz", tag = "service", summary = "Readiness: whether the service can take requests now.",
    description = "200 when it can (the database answers), else 503 with the reason.",
    responses(
    (status = 200, description = "Ready.", content((Object = "application/json"), (String = "text/plain"))),
    (status = 503, description = "Not ready; the body says which check failed.", body = Object),
))]
pub(crate) async fn ready(State(app): State<Arc<App>>) -> Response {
    let check = async {
        let client = app.pool.get().await.map_err(|e| e.to_string())?;
        client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let database = match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(())) => json!({ "ok": true }),
        Ok(Err(e)) => json!({ "ok": false, "error": format!("the database is unreachable: {e}") }),
        Err(_) => json!({ "ok": false, "error": "the database did not answer within 2 s" }),
    };
    // Components are loaded before the service listens; a tenant without
    // one would not be in the registry. Counted to show what is served (the
    // default tenant's while no tenant is configured).
    let components = app.registry.snapshot().tenants.len().max(1);
    let sources = app.metrics.cdc_sources();
    let waiting: Vec<String> = sources
        .iter()
        .filter(|(_, s)| !matches!(s.state(), crate::cdc::stats::State::Owner | crate::cdc::stats::State::Standby))
        .map(|(name, s)| match s.reason() {
            Some(reason) => format!("{name} is {}: {reason}", s.state().as_str()),
            None => format!("{name} is {}", s.state().as_str()),
        })
        .collect();
    let cdc = json!({
        "ok": waiting.is_empty(),
        "sources": sources.iter().map(|(n, s)| (n.clone(), s.state().as_str().into())).collect::<serde_json::Map<_, _>>(),
        "error": (!waiting.is_empty()).then(|| format!("change streams not streaming or standing by: {}", waiting.join(", "))),
    });
    let registry = match app.registry.loaded() {
        Ok(snapshot) => json!({ "ok": true, "version": snapshot.version }),
        Err(reason) => json!({ "ok": false, "error": reason }),
    };
    let draining = app.draining.load(std::sync::atomic::Ordering::Relaxed);
    let serving = json!({
        "ok": !draining,
        "error": draining.then_some("the service is stopping: it finishes the requests it has and takes no new ones"),
    });
    let failed: Vec<&str> = [("serving", &serving), ("database", &database), ("registry", &registry), ("cdc", &cdc)]
        .into_iter()
        .filter(|(_, c)| c["ok"] != true)
        .map(|(name, _)| name)
        .collect();
    let status = if failed.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "ready": failed.is_empty(),
        "failed": failed,
        "checks": {
            "serving": serving,
            "database": database,
            "registry": registry,
            "components": { "ok": true, "loaded": components },
            "cdc": cdc,
        },
    });
    (status, axum::Json(body)).into_response()
}

/// An ingest route's handler arguments.
pub(crate) struct Incoming {
    path_tenant: Option<String>,
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
}

impl FromRequest<Arc<App>> for Incoming {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, state: &Arc<App>) -> Result<Incoming, Response> {
        let (mut parts, body) = request.into_parts();
        let path_tenant = match Option::<Path<String>>::from_request_parts(&mut parts, state).await {
            Ok(tenant) => tenant.map(|p| p.0),
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, e.body_text())),
        };
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied() else {
            return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the peer address is unknown"));
        };
        Ok(Incoming { path_tenant, peer, method: parts.method, uri: parts.uri, headers: parts.headers, body })
    }
}

// The ingest routes. Each answers after the request's rows are committed
// (or refused); see `IngestResponses` for every status.

/// Canonical events: one, an array, or NDJSON; gzip or zstd with `Content-Encoding`.
#[utoipa::path(post, path = "/v1/events", tag = "ingest",
    request_body(description = "One event, an array, or NDJSON (one event a line).", content(
        (crate::schema::Events = "application/json"), (String = "application/x-ndjson"))),
    responses(crate::schema::IngestResponses),
    security(("ingest_key" = []), ("ingest_bearer" = []), ()))]
pub(crate) async fn events(State(app): State<Arc<App>>, incoming: Incoming) -> Response {
    ingest(&app, Api::Events, incoming).await
}

/// Canonical events for the path's tenant (the key must be one of its keys).
#[utoipa::path(post, path = "/t/{tenant}/v1/events", tag = "ingest",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body(description = "One event, an array, or NDJSON (one event a line).", content(
        (crate::schema::Events = "application/json"), (String = "application/x-ndjson"))),
    responses(crate::schema::IngestResponses),
    security(("ingest_key" = []), ("ingest_bearer" = [])))]
pub(crate) async fn tenant_events(State(app): State<Arc<App>>, incoming: Incoming) -> Response {
    ingest(&app, Api::Events, incoming).await
}

/// Structured log records (structlog event dicts) into stogger's table shape.
#[utoipa::path(post, path = "/v1/logs", tag = "ingest",
    request_body(description = "One record, an array, or NDJSON (one record a line).", content(
        (crate::schema::LogRecords = "application/json"), (String = "application/x-ndjson"))),
    responses(crate::schema::IngestResponses),
    security(("ingest_key" = []), ("ingest_bearer" = []), ()))]
pub(crate) async fn logs(State(app): State<Arc<App>>, incoming: Incoming) -> Response {
    ingest(&app, Api::Logs, incoming).await
}

/// Structured log records for the path's tenant.
#[utoipa::path(post, path = "/t/{tenant}/v1/logs", tag = "ingest",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body(description = "One record, an array, or NDJSON (one record a line).", content(
        (crate::schema::LogRecords = "application/json"), (String = "application/x-ndjson"))),
    responses(crate::schema::IngestResponses),
    security(("ingest_key" = []), ("ingest_bearer" = [])))]
pub(crate) async fn tenant_logs(State(app): State<Arc<App>>, incoming: Incoming) -> Response {
    ingest(&app, Api::Logs, incoming).await
}

/// Logflare's ingest API: a table per source. Answers carry Logflare's
/// `message` (`"Logged!"` on success) beside Sluice's counts.
#[utoipa::path(post, path = "/api/logs", tag = "ingest",
    params(
        ("source_name" = Option<String>, Query, description = "The source by name."),
        ("source" = Option<String>, Query, description = "The source by id (a UUID)."),
    ),
    request_body(description = "One event, an array, or {\"batch\": [...]}.",
        content((crate::schema::LogflareBody = "application/json"))),
    responses(crate::schema::IngestResponses),
    security(("ingest_key" = []), ("ingest_bearer" = []), ("ingest_query_key" = []), ()))]
pub(crate) async fn logflare(State(app): State<Arc<App>>, incoming: Incoming) -> Response {
    ingest(&app, Api::Logflare, incoming).await
}

/// Logflare's ingest API, at its short path.
#[utoipa::path(post, path = "/logs", tag = "ingest",
    params(
        ("source_name" = Option<String>, Query, description = "The source by name."),
        ("source" = Option<String>, Query, description = "The source by id (a UUID)."),
    ),
    request_body(description = "One event, an array, or {\"batch\": [...]}.",
        content((crate::schema::LogflareBody = "application/json"))),
    responses(crate::schema::IngestResponses),
    security(("ingest_key" = []), ("ingest_bearer" = []), ("ingest_query_key" = []), ()))]
pub(crate) async fn logflare_short(State(app): State<Arc<App>>, incoming: Incoming) -> Response {
    ingest(&app, Api::Logflare, incoming).await
}

/// Logflare's JSON ingest path (what @loglayer/transport-logflare posts to).
#[utoipa::path(post, path = "/logs/json", tag = "ingest",
    params(
        ("source_name" = Option<String>, Query, description = "The source by name."),
        ("source" = Option<String>, Query, description = "The source by id (a UUID)."),
    ),
    request_body(description = "One event, an array, or {\"batch\": [...]}.",
        content((crate::schema::LogflareBody = "application/json"))),
    responses(crate::schema::IngestResponses),
    security(("ingest_key" = []), ("ingest_bearer" = []), ("ingest_query_key" = []), ()))]
pub(crate) async fn logflare_json(State(app): State<Arc<App>>, incoming: Incoming) -> Response {
    ingest(&app, Api::Logflare, incoming).await
}

/// Logflare's ingest API for the path's tenant.
#[utoipa::path(post, path = "/t/{tenant}/api/logs", tag = "ingest",
    params(
        ("tenant" = String, Path, description = "The tenant id."),
        ("source_name" = Option<String>, Query, description = "The source by name."),
        ("source" = Option<String>, Query, description = "The source by id (a UUID)."),
    ),
    request_body(description = "One event, an array, or {\"batch\": [...]}.",
        content((crate::schema::LogflareBody = "application/json"))),
    responses(crate::schema::IngestResponses),
    security(("ingest_key" = []), ("ingest_bearer" = []), ("ingest_query_key" = [])))]
pub(crate) async fn tenant_logflare(State(app): State<Arc<App>>, incoming: Incoming) -> Response {
    ingest(&app, Api::Logflare, incoming).await
}

async fn ingest(app: &App, api: Api, incoming: Incoming) -> Response {
    let Incoming { path_tenant, peer, method, mut uri, headers, body } = incoming;
    // Logflare clients may send the key as `?api_key=`; it is taken out of
    // the query the component sees.
    let (query_key, query) = match api {
        Api::Logflare => take_query_key(uri.query().unwrap_or("")),
        _ => (None, uri.query().unwrap_or("").to_owned()),
    };
    if query_key.is_some() {
        let path_and_query = if query.is_empty() { uri.path().to_owned() } else { format!("{}?{query}", uri.path()) };
        uri = path_and_query.parse().unwrap_or(uri);
    }
    let key = api_key(&headers).or(query_key.as_deref());
    let response = match resolve(app, key, path_tenant.as_deref(), peer) {
        Ok(tenant) if !tenant.spec.apis.contains(&api) => {
            error(StatusCode::FORBIDDEN, format!("tenant {} may not use the {} API", tenant.id(), api.name()))
        }
        Ok(tenant) => serve(app, tenant, method, uri, headers, body).await,
        Err(response) => response,
    };
    match api {
        Api::Logflare => logflare_answer(response).await,
        _ => response,
    }
}

/// Splits `api_key=…` out of a query string.
fn take_query_key(query: &str) -> (Option<String>, String) {
    let mut key = None;
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "api_key" {
            key.get_or_insert_with(|| value.into_owned());
        } else {
            rest.append_pair(&name, &value);
        }
    }
    (key, rest.finish())
}

/// Logflare's clients read `message`: `"Logged!"` on success, else the
/// error. Sluice's counts and `error` stay alongside.
async fn logflare_answer(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the response could not be read");
    };
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let message = match object.get("error") {
        Some(serde_json::Value::String(e)) => e.clone(),
        _ if parts.status.is_success() => "Logged!".to_owned(),
        _ => "No event was logged: every event was rejected".to_owned(),
    };
    object.insert("message".into(), message.into());
    let body = serde_json::to_vec(&object).expect("JSON values serialize");
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The API key of a request: `Authorization: Bearer …` or `X-API-KEY`.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim)
}

/// The tenant a request is for: by its key, checked against the path's
/// tenant when there is one.
#[allow(clippy::result_large_err, reason = "the error is the response sent, once per refused request")]
fn resolve(app: &App, key: Option<&str>, path_tenant: Option<&str>, peer: SocketAddr) -> Result<Arc<Tenant>, Response> {
    let snapshot = match app.registry.loaded() {
        Ok(snapshot) => snapshot,
        // Before the registry could be read, a keyless request may still go
        // to the default tenant where the config allows keyless requests
        // (its rows are spooled until the database answers); a request with
        // a key waits for the registry.
        Err(_) if key.is_none() && path_tenant.is_none() && app.keyless(peer).is_ok() => {
            return app.keyless(peer).map_err(|reason| error(StatusCode::UNAUTHORIZED, reason));
        }
        Err(reason) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, reason)),
    };
    if snapshot.tenants.is_empty() {
        return match path_tenant {
            Some(id) => Err(error(StatusCode::NOT_FOUND, format!("no tenant {id}"))),
            None => app.keyless(peer).map_err(|reason| error(StatusCode::UNAUTHORIZED, reason)),
        };
    }
    let Some(key) = key else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "an API key is required: send Authorization: Bearer KEY or X-API-KEY",
        ));
    };
    let Some(tenant) = snapshot.by_key(key) else {
        return Err(error(StatusCode::UNAUTHORIZED, "the API key is not valid"));
    };
    match path_tenant {
        Some(id) if id != tenant.id() => {
            Err(error(StatusCode::FORBIDDEN, format!("this API key is not a key of tenant {id}")))
        }
        _ => Ok(tenant.clone()),
    }
}

/// Takes `bytes` from the tenant's in-flight budget until dropped.
async fn serve(app: &App, tenant: Arc<Tenant>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    tenant.stats.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = app.metrics.request_started(tenant.id());
    let response = handle(app, &tenant, method, uri, headers, body).await;
    if response.status().is_server_error() {
        tenant.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn handle(app: &App, tenant: &Arc<Tenant>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let limits = &tenant.limits;
    let received_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    // The body is charged to the budgets before it is read: its declared
    // length, or the most it may be when it has none (chunked). So bodies
    // being read count too, and a refused one is never read.
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let charge = declared.unwrap_or(limits.max_body_bytes).min(limits.max_body_bytes);
    let mut budget = crate::body::Budget::new(
        (&app.in_flight_bytes, limits.max_in_flight_bytes_total),
        (&tenant.stats.in_flight_bytes, limits.max_in_flight_bytes),
        tenant.id(),
        &app.memory,
    );
    if let Err(refusal) = budget.charge(charge) {
        return refuse(refusal, body, limits.max_body_bytes).await;
    }
    // What decompression produces is charged as it grows.
    let body = match crate::body::read(&headers, body, limits.max_body_bytes, &mut budget).await {
        Ok(body) => body,
        Err(refusal) => return error(refusal.status, refusal.reason),
    };
    let request = Request {
        tenant: tenant.id().to_owned(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers: component_headers(&headers),
        body,
        received_at,
        settings: tenant.settings.clone(),
    };
    // Kept to spool it if the destination cannot take its rows.
    let request = Arc::new(request);
    let spare = app.spool.enabled().then(|| request.clone());
    let timeout = Duration::from_millis(limits.request_timeout_ms);
    // Past its deadline a request is answered as a write that failed: kept
    // in the spool, or 503 with Retry-After.
    let ingested = tokio::time::timeout(timeout, tenant.ingest(&app.runtime, request)).await.unwrap_or_else(|_| {
        Err(IngestError::Write(WriteError::Unavailable(format!(
            "the request ran past limits.request_timeout_ms ({} ms) before its rows were committed",
            limits.request_timeout_ms
        ))))
    });
    match ingested {
        Ok(tally) => {
            let status = if tally.events > 0 && tally.rejected.len() as u32 == tally.events {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            (status, axum::Json(tally)).into_response()
        }
        Err(IngestError::Request(RequestError::Malformed(m))) => error(StatusCode::BAD_REQUEST, m),
        Err(IngestError::Request(RequestError::UnsupportedMediaType(m))) => {
            error(StatusCode::UNSUPPORTED_MEDIA_TYPE, m)
        }
        Err(IngestError::Request(RequestError::NotFound(m))) => error(StatusCode::NOT_FOUND, m),
        Err(IngestError::Component(failure)) => {
            tracing::warn!(tenant = %tenant.id(), "{failure}");
            let status = match failure {
                ComponentFailure::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, failure.to_string())
        }
        Err(IngestError::Resting(rest)) => {
            let seconds = rest.as_secs().max(1);
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("tenant {}'s component failed repeatedly and is resting; retry in {seconds} s", tenant.id()),
            );
            response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
            response
        }
        Err(IngestError::Write(e)) if spare.is_some() => {
            let request = spare.expect("checked");
            match app.spool.keep(&request) {
                Ok(true) => {
                    tracing::warn!(tenant = %tenant.id(), "write failed, request spooled: {e}");
                    let message = format!("{e}; the request is kept on disk and is written when the database takes it");
                    (StatusCode::ACCEPTED, axum::Json(json!({ "spooled": true, "message": message }))).into_response()
                }
                kept => {
                    if let Err(k) = kept {
                        tracing::error!(tenant = %tenant.id(), "the spool cannot take the request: {k:#}");
                    }
                    write_failed(tenant, e)
                }
            }
        }
        Err(IngestError::Write(e)) => write_failed(tenant, e),
    }
}

/// 503 with Retry-After: nothing was committed, the client should retry.
fn write_failed(tenant: &Tenant, e: WriteError) -> Response {
    tracing::warn!(tenant = %tenant.id(), "write failed: {e}");
    // Either way nothing was committed: the client should retry later (an
    // operator must fix an unusable destination first).
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    if let WriteError::Unusable(_) = e {
        response.headers_mut().insert(header::RETRY_AFTER, 30.into());
    }
    response
}

/// Headers a component sees: lower-case names, UTF-8 values, and never
/// credentials.
fn component_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "authorization" | "x-api-key" | "cookie" | "proxy-authorization"))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect()
}

/// Turns a request away before its body is read, once the body is
/// drained (`retry_after` adds when to try again).
async fn refuse(refusal: crate::body::Refusal, body: Body, limit: usize) -> Response {
    drain(body, limit).await;
    error(refusal.status, refusal.reason)
}

/// Reads a refused request's body and throws it away, a frame at a time,
/// so the client, still sending, gets the answer instead of a reset
/// connection. Bounded by `limit` bytes and a few seconds.
async fn drain(body: Body, limit: usize) {
    let discard = async {
        let mut body = body;
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), discard).await;
}
