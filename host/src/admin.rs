//! The admin API: tenants, their keys and components, behind the admin
//! token (`Authorization: Bearer <admin_token>`).

use crate::db::dead_letters;
use crate::ingest::Tenant;
use crate::schema::error;
use crate::state::App;
use crate::tenants::RegistryError;
use crate::tenants::spec::{TenantLimits, TenantSpec, constant_time_eq, hash_key, key_id, new_key};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, UNIX_EPOCH};
use utoipa::ToSchema;

/// Largest component upload.
const MAX_COMPONENT_BYTES: usize = 64 << 20;

pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/admin/tenants", get(list).post(create))
        .route("/admin/tenants/{id}", get(show).patch(update).delete(remove))
        .route("/admin/tenants/{id}/component", put(upload))
        .route("/admin/tenants/{id}/keys", axum::routing::post(add_key))
        .route("/admin/tenants/{id}/keys/{key_id}", delete(revoke_key))
        .route("/admin/tenants/{id}/dead-letters", get(dead_letters).delete(purge_dead_letters))
        .route("/admin/tenants/{id}/dead-letters/replay", axum::routing::post(replay_dead_letters))
        .route("/admin/fleet", get(fleet))
        .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES))
        .route_layer(middleware::from_fn_with_state(app.clone(), wait_applied))
        .route_layer(middleware::from_fn_with_state(app, authorize))
}

/// The most `?wait=applied` waits for the other hosts.
const WAIT_APPLIED_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Every change's answer says the registry version it made
/// (`Sluice-Registry-Version`). With `?wait=applied` it also waits, up to
/// [`WAIT_APPLIED_FOR`], until every live host serves that version, and
/// names the hosts that do (`Sluice-Applied-By`) and those that do not yet
/// (`Sluice-Pending`, empty when all do).
async fn wait_applied(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let wait = request
        .uri()
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "wait" && v == "applied"));
    let changes = request.method() != axum::http::Method::GET;
    let mut response = next.run(request).await;
    if !changes || !response.status().is_success() {
        return response;
    }
    let Some(version) = app.registry.snapshot().version else { return response };
    let headers = response.headers_mut();
    headers.insert("sluice-registry-version", version.into());
    if wait {
        let list = |ids: Vec<String>| header::HeaderValue::from_str(&ids.join(",")).ok();
        match app.fleet.wait_applied(version, WAIT_APPLIED_FOR).await {
            Ok(applied) => {
                if let Some(v) = list(applied.applied) {
                    headers.insert("sluice-applied-by", v);
                }
                if let Some(v) = list(applied.pending) {
                    headers.insert("sluice-pending", v);
                }
            }
            Err(e) => {
                tracing::warn!("wait for the fleet to apply registry version {version}: {e:#}");
                headers.insert("sluice-pending", header::HeaderValue::from_static("unknown"));
            }
        }
    }
    response
}

/// The live hosts of the fleet, as they last reported.
#[derive(Serialize, ToSchema)]
pub struct FleetList {
    /// The host that answered.
    pub this: String,
    /// The registry version it serves.
    pub registry_version: Option<i64>,
    pub hosts: Vec<crate::fleet::Host>,
}

/// The hosts serving from this service database (every `sluice serve` whose
/// heartbeat is recent), with the registry version each serves.
#[utoipa::path(get, path = "/admin/fleet", tag = "admin", security(("admin_token" = [])), responses(
    (status = 200, description = "The live hosts, oldest first.", body = FleetList),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 503, description = "The service database cannot be reached.", body = ErrorBody),
))]
pub(crate) async fn fleet(State(app): State<Arc<App>>) -> Response {
    match app.fleet.hosts().await {
        Ok(hosts) => {
            Json(FleetList { this: app.fleet.id.clone(), registry_version: app.registry.snapshot().version, hosts })
                .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

pub(crate) async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = &app.admin_token else {
        return error(StatusCode::UNAUTHORIZED, "the admin API is off: set admin_token in the config file");
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.0.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "the admin token is missing or wrong");
    }
    next.run(request).await
}

/// Whether `headers` carry the admin token (`Authorization: Bearer …`);
/// never when there is none.
pub(crate) fn has_admin_token(app: &App, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = &app.admin_token else { return false };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.0.as_bytes())
}

/// A JSON object as `T` (serde would also take a struct from an array).
fn from_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice::<serde_json::Map<String, Value>>(body)
        .and_then(|o| serde_json::from_value(Value::Object(o)))
}

/// 400 unless `component` is `builtin:standard` or a stored component's
/// digest (`sha256:` and 64 lower-case hex digits): it names a file in the
/// components folder, so nothing else (a path) may reach the registry.
#[allow(clippy::result_large_err, reason = "the error is the response sent")]
fn check_component(component: &str) -> Result<(), Response> {
    if component == crate::tenants::spec::BUILTIN || crate::tenants::spec::component_digest(component).is_some() {
        return Ok(());
    }
    Err(error(
        StatusCode::BAD_REQUEST,
        format!(
            "component must be {} or sha256: and the 64 lower-case hex digits of an uploaded component, not {:?}",
            crate::tenants::spec::BUILTIN,
            component.chars().take(80).collect::<String>()
        ),
    ))
}

fn registry_error(e: RegistryError) -> Response {
    let status = match &e {
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Conflict(_) => StatusCode::CONFLICT,
        RegistryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// What the admin API shows of a tenant (never a key, only key ids).
#[derive(Serialize, ToSchema)]
pub struct TenantStatus {
    pub id: String,
    /// `builtin:standard` or `sha256:<digest>`.
    pub component: String,
    pub component_digest: String,
    /// When the running component was loaded (ms since 1970).
    pub loaded_at_ms: u64,
    pub tables: Vec<String>,
    /// Templates: their tables are made on first use.
    pub templates: Vec<String>,
    /// Ids of the ingest keys (12 hex digits).
    pub keys: Vec<String>,
    pub schema: String,
    /// `own` (the tenant's own database) or `service`.
    pub database: String,
    pub limits: TenantLimits,
    pub batch: Option<crate::config::BatchConfig>,
    pub apis: Vec<crate::tenants::spec::Api>,
    pub settings: serde_json::Map<String, Value>,
    pub write_modes: crate::write_modes::WriteModes,
    /// Ids of the query tokens.
    pub query_tokens: Vec<String>,
    /// Requests since the service started.
    pub requests: u64,
    /// Requests answered with a 5xx.
    pub errors: u64,
    pub events: EventCounts,
    pub in_flight_bytes: usize,
}

/// A tenant's events since the service started.
#[derive(Serialize, ToSchema)]
pub struct EventCounts {
    pub inserted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
}

/// What the admin API shows of a tenant, as JSON.
pub fn status(tenant: &Tenant) -> Value {
    serde_json::to_value(tenant_status(tenant)).expect("a tenant's status serializes")
}

fn tenant_status(tenant: &Tenant) -> TenantStatus {
    let loaded = tenant.loaded();
    let stats = &tenant.stats;
    let names = |template: bool| {
        loaded.normalizer.tables.iter().filter(|t| t.template == template).map(|t| t.name.clone()).collect()
    };
    TenantStatus {
        id: tenant.id().to_owned(),
        component: tenant.spec.component.clone(),
        component_digest: loaded.normalizer.digest.clone(),
        loaded_at_ms: loaded.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        tables: names(false),
        templates: names(true),
        keys: tenant.spec.keys.iter().map(|k| key_id(k).to_owned()).collect(),
        schema: tenant.schema.clone(),
        database: if tenant.spec.database.as_ref().is_some_and(|d| d.is_configured()) { "own" } else { "service" }
            .to_owned(),
        limits: tenant.spec.limits.clone(),
        batch: tenant.spec.batch.clone(),
        apis: tenant.spec.apis.clone(),
        settings: tenant.spec.settings.clone(),
        write_modes: tenant.spec.write_modes.clone(),
        query_tokens: tenant.spec.query_tokens.iter().map(|k| key_id(k).to_owned()).collect(),
        requests: stats.requests.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        events: EventCounts {
            inserted: stats.events_inserted.load(Ordering::Relaxed),
            duplicates: stats.events_duplicate.load(Ordering::Relaxed),
            rejected: stats.events_rejected.load(Ordering::Relaxed),
            dead_lettered: stats.events_dead_lettered.load(Ordering::Relaxed),
        },
        in_flight_bytes: stats.in_flight_bytes.load(Ordering::Relaxed),
    }
}

/// `GET /admin/tenants`.
#[derive(Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantStatus>,
}

/// A new tenant, and its keys in full (shown this once).
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub tenant: TenantStatus,
    pub keys: Vec<String>,
}

/// A new key in full (shown this once) and its id.
#[derive(Serialize, ToSchema)]
pub struct AddedKey {
    pub key: String,
    pub key_id: String,
}

/// What an upload switched the tenant to.
#[derive(Serialize, ToSchema)]
pub struct Uploaded {
    pub digest: String,
    pub tables: Vec<String>,
    pub templates: Vec<String>,
    /// How long validating, migrating and switching took.
    pub swap_ms: f64,
}

/// One kept row the database refused.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterEntry {
    pub id: i64,
    pub table: String,
    /// The row, column by column.
    pub row: Value,
    pub sqlstate: String,
    pub message: String,
    pub first_seen: String,
    pub last_seen: String,
    pub attempts: i32,
}

/// A page of dead letters, oldest first, and how many match in all.
#[derive(Serialize, ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetterEntry>,
    pub total: i64,
}

/// How many dead letters a purge deleted.
#[derive(Serialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

type ErrorBody = crate::schema::ErrorBody;

/// List the tenants, with counters since the service started.
#[utoipa::path(get, path = "/admin/tenants", tag = "admin", security(("admin_token" = [])), responses(
    (status = 200, description = "The tenants, by id.", body = TenantList),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
))]
pub(crate) async fn list(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.registry.snapshot();
    let mut tenants: Vec<&Arc<Tenant>> = snapshot.tenants.values().collect();
    tenants.sort_by(|a, b| a.id().cmp(b.id()));
    Json(TenantList { tenants: tenants.iter().map(|t| tenant_status(t)).collect() }).into_response()
}

/// One tenant.
#[utoipa::path(get, path = "/admin/tenants/{id}", tag = "admin", security(("admin_token" = [])), params(("id" = String, Path, description = "The tenant id.")), responses(
    (status = 200, description = "The tenant.", body = TenantStatus),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant.", body = ErrorBody),
))]
pub(crate) async fn show(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.registry.get(&id) {
        Ok(tenant) => Json(tenant_status(&tenant)).into_response(),
        Err(e) => registry_error(e),
    }
}

/// Create a tenant. Keys given in full are kept hashed; with none, one is made.
#[utoipa::path(post, path = "/admin/tenants", tag = "admin", security(("admin_token" = [])),
    request_body = crate::tenants::spec::TenantSpec, responses(
    (status = 201, description = "Created; `keys` in full, shown this once.", body = Created),
    (status = 400, description = "The body is not a tenant, or its component is not builtin:standard or sha256:<64 hex digits>.", body = ErrorBody),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 409, description = "A tenant with this id exists.", body = ErrorBody),
    (status = 422, description = "The tenant is invalid (its id, keys, component or database).", body = ErrorBody),
))]
pub(crate) async fn create(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let spec: TenantSpec = match from_object(&body) {
        Ok(spec) => spec,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a tenant: {e}")),
    };
    if let Err(refusal) = check_component(&spec.component) {
        return refusal;
    }
    match app.registry.create(spec).await {
        Ok((tenant, keys)) => {
            (StatusCode::CREATED, Json(Created { tenant: tenant_status(&tenant), keys })).into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// Fields a PATCH may change; absent ones stay.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    component: Option<String>,
    apis: Option<Vec<crate::tenants::spec::Api>>,
    #[serde(default, with = "serde_with_null")]
    batch: Option<Option<crate::config::BatchConfig>>,
    #[serde(default, with = "serde_with_null")]
    database: Option<Option<crate::config::DatabaseConfig>>,
    limits: Option<TenantLimits>,
    settings: Option<serde_json::Map<String, Value>>,
    write_modes: Option<crate::write_modes::WriteModes>,
    /// Replaces the query tokens (plain, at least 16 characters; stored hashed).
    query_tokens: Option<Vec<String>>,
}

/// `"database": null` clears the tenant's own database; absent keeps it.
mod serde_with_null {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Change a tenant; what the body leaves out stays.
#[utoipa::path(patch, path = "/admin/tenants/{id}", tag = "admin", security(("admin_token" = [])), params(("id" = String, Path, description = "The tenant id.")),
    request_body = Change, responses(
    (status = 200, description = "The changed tenant.", body = TenantStatus),
    (status = 400, description = "The body is not a tenant change, or its component is not builtin:standard or sha256:<64 hex digits>.", body = ErrorBody),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant.", body = ErrorBody),
    (status = 422, description = "The change is invalid; the tenant is as it was.", body = ErrorBody),
))]
pub(crate) async fn update(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Response {
    let change: Change = match from_object(&body) {
        Ok(change) => change,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a tenant change: {e}")),
    };
    if let Some(Err(refusal)) = change.component.as_deref().map(check_component) {
        return refusal;
    }
    let result = app
        .registry
        .update(&id, |spec| {
            if let Some(component) = &change.component {
                spec.component = component.clone();
            }
            if let Some(database) = &change.database {
                spec.database = database.clone();
            }
            if let Some(limits) = &change.limits {
                spec.limits = limits.clone();
            }
            if let Some(apis) = &change.apis {
                spec.apis = apis.clone();
            }
            if let Some(batch) = &change.batch {
                spec.batch = batch.clone();
            }
            if let Some(settings) = &change.settings {
                spec.settings = settings.clone();
            }
            if let Some(write_modes) = &change.write_modes {
                spec.write_modes = write_modes.clone();
            }
            if let Some(query_tokens) = &change.query_tokens {
                spec.query_tokens = query_tokens.clone();
            }
            Ok(())
        })
        .await;
    match result {
        Ok(tenant) => Json(tenant_status(&tenant)).into_response(),
        Err(e) => registry_error(e),
    }
}

/// Delete a tenant: its keys stop working at once; its tables and rows stay.
#[utoipa::path(delete, path = "/admin/tenants/{id}", tag = "admin", security(("admin_token" = [])), params(("id" = String, Path, description = "The tenant id.")),
    responses(
    (status = 204, description = "Deleted."),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant.", body = ErrorBody),
))]
pub(crate) async fn remove(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let tenant = app.registry.get(&id).ok();
    match app.registry.delete(&id).await {
        Ok(()) => {
            if let Some(tenant) = tenant {
                app.queries.deleted(&app.registry, &tenant).await;
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// Upload a component (`application/wasm`) and switch the tenant to it once it
/// compiles, implements the contract and its tables migrate.
#[utoipa::path(put, path = "/admin/tenants/{id}/component", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The tenant id.")),
    request_body(description = "The component (.wasm); the content type is not checked.", content(
        (crate::schema::Wasm = "application/wasm"), (crate::schema::Wasm = "application/octet-stream"))),
    responses(
    (status = 200, description = "Validated and switched.", body = Uploaded),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant.", body = ErrorBody),
    (status = 413, description = "Larger than 64 MiB.", body = ErrorBody),
    (status = 422, description = "Refused, with the reason; the old component keeps serving.", body = ErrorBody),
))]
pub(crate) async fn upload(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Response {
    let started = Instant::now();
    match app.registry.swap_component(&id, body.to_vec()).await {
        Ok(tenant) => {
            let loaded = tenant.loaded();
            tracing::info!(tenant = %id, digest = %loaded.normalizer.digest, "component swapped");
            let names = |template: bool| {
                loaded.normalizer.tables.iter().filter(|t| t.template == template).map(|t| t.name.clone()).collect()
            };
            Json(Uploaded {
                digest: loaded.normalizer.digest.clone(),
                tables: names(false),
                templates: names(true),
                swap_ms: started.elapsed().as_secs_f64() * 1000.0,
            })
            .into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// The key to add (at least 16 characters); none, or no body, makes one.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    key: Option<String>,
}

/// Add an ingest key to a tenant.
#[utoipa::path(post, path = "/admin/tenants/{id}/keys", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The tenant id.")), request_body(content = Option<NewKey>, description = "Optional: the key to add."), responses(
    (status = 201, description = "Added; the key in full, shown this once.", body = AddedKey),
    (status = 400, description = "The body is not {\"key\": ...}.", body = ErrorBody),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant.", body = ErrorBody),
    (status = 422, description = "The key is refused (too short, or another tenant's).", body = ErrorBody),
))]
pub(crate) async fn add_key(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Response {
    let request: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        match from_object(&body) {
            Ok(request) => request,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not {{\"key\": …}}: {e}")),
        }
    };
    let key = request.key.unwrap_or_else(new_key);
    if key.starts_with("sha256:") {
        return error(StatusCode::BAD_REQUEST, "send the key itself; Sluice hashes it");
    }
    let hashed = hash_key(&key);
    let result = app
        .registry
        .update(&id, |spec| {
            spec.keys.push(key.clone());
            Ok(())
        })
        .await;
    match result {
        Ok(_) => (StatusCode::CREATED, Json(AddedKey { key_id: key_id(&hashed).to_owned(), key })).into_response(),
        Err(e) => registry_error(e),
    }
}

/// Revoke an ingest key by its id.
#[utoipa::path(delete, path = "/admin/tenants/{id}/keys/{key_id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The tenant id."), ("key_id" = String, Path, description = "The key's id: 12 hex digits.")), responses(
    (status = 204, description = "Revoked."),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant, or it has no such key.", body = ErrorBody),
))]
pub(crate) async fn revoke_key(State(app): State<Arc<App>>, Path((id, key)): Path<(String, String)>) -> Response {
    let result = app
        .registry
        .update(&id, |spec| {
            let before = spec.keys.len();
            spec.keys.retain(|k| key_id(k) != key);
            if spec.keys.len() == before {
                return Err(RegistryError::NotFound(format!("tenant {id} has no key {key}")));
            }
            Ok(())
        })
        .await;
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => registry_error(e),
    }
}

/// A registered tenant, or the default one while it serves.
#[allow(clippy::result_large_err, reason = "the error is the response sent, once per refused request")]
fn tenant_or_default(app: &App, id: &str) -> Result<Arc<Tenant>, Response> {
    match app.registry.get(id) {
        Ok(tenant) => Ok(tenant),
        Err(_) if id == app.default_tenant.id() && app.registry.snapshot().tenants.is_empty() => {
            Ok(app.default_tenant.clone())
        }
        Err(e) => Err(registry_error(e)),
    }
}

/// A tenant (as `tenant_or_default`) and a connection to its database.
async fn tenant_client(app: &App, id: &str) -> Result<(Arc<Tenant>, deadpool_postgres::Object), Response> {
    let tenant = tenant_or_default(app, id)?;
    let client = tenant.destination.pool.get().await.map_err(database_error)?;
    Ok((tenant, client))
}

fn database_error(e: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("the tenant's database: {e}"))
}

/// A tenant's dead letters: rows the database refused, with why, oldest first.
#[utoipa::path(get, path = "/admin/tenants/{id}/dead-letters", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The tenant id."), dead_letters::Selection), responses(
    (status = 200, description = "A page of them, and how many match in all.", body = DeadLetters),
    (status = 400, description = "A query parameter is not valid.", body = ErrorBody),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant.", body = ErrorBody),
    (status = 503, description = "The tenant's database is unavailable.", body = ErrorBody),
))]
pub(crate) async fn dead_letters(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    axum::extract::Query(selection): axum::extract::Query<dead_letters::Selection>,
) -> Response {
    let (tenant, client) = match tenant_client(&app, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match dead_letters::list(&**client, &tenant.schema, tenant.id(), &selection).await {
        // The rows come as PostgreSQL wrote them; `DeadLetters` is their shape.
        Ok((letters, total)) => Json(json!({ "dead_letters": letters, "total": total })).into_response(),
        Err(e) => database_error(crate::db::writer::describe(&e)),
    }
}

/// Move dead letters into their tables, once the cause is fixed; rows that
/// fail again stay, with the new reason.
#[utoipa::path(post, path = "/admin/tenants/{id}/dead-letters/replay", tag = "admin",
    security(("admin_token" = [])), params(("id" = String, Path, description = "The tenant id.")),
    request_body(content = Option<dead_letters::Selection>, description = "Optional: which rows."), responses(
    (status = 200, description = "What the replay did.", body = dead_letters::Replayed),
    (status = 400, description = "The body is not a replay selection.", body = ErrorBody),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant.", body = ErrorBody),
    (status = 503, description = "The tenant's database is unavailable.", body = ErrorBody),
))]
pub(crate) async fn replay_dead_letters(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Response {
    let selection: dead_letters::Selection = if body.is_empty() {
        Default::default()
    } else {
        match from_object(&body) {
            Ok(selection) => selection,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a replay selection: {e}")),
        }
    };
    let (tenant, mut client) = match tenant_client(&app, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match dead_letters::replay(&mut client, &tenant.schema, tenant.id(), &selection).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => database_error(crate::db::writer::describe(&e)),
    }
}

/// Delete dead letters for good.
#[utoipa::path(delete, path = "/admin/tenants/{id}/dead-letters", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The tenant id."), ("table" = Option<String>, Query, description = "Only rows for this table.")), responses(
    (status = 200, description = "How many were deleted.", body = Purged),
    (status = 400, description = "A query parameter is not valid.", body = ErrorBody),
    (status = 401, description = "The admin token is missing or wrong, or the admin API is off.", body = ErrorBody),
    (status = 404, description = "No such tenant.", body = ErrorBody),
    (status = 503, description = "The tenant's database is unavailable.", body = ErrorBody),
))]
pub(crate) async fn purge_dead_letters(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    axum::extract::Query(selection): axum::extract::Query<dead_letters::Selection>,
) -> Response {
    let (tenant, client) = match tenant_client(&app, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match dead_letters::purge(&**client, &tenant.schema, tenant.id(), selection.table.as_deref()).await {
        Ok(purged) => Json(Purged { purged }).into_response(),
        Err(e) => database_error(crate::db::writer::describe(&e)),
    }
}
