//! The admin API: tenants, their keys and components, behind the admin
//! token (`Authorization: Bearer <admin_token>`).

use crate::db::dead_letters;
use crate::http::{App, error};
use crate::ingest::Tenant;
use crate::tenants::{RegistryError, TenantLimits, TenantSpec, constant_time_eq, hash_key, key_id, new_key};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, UNIX_EPOCH};

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
        .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES))
        .route_layer(middleware::from_fn_with_state(app, authorize))
}

async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
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

fn registry_error(e: RegistryError) -> Response {
    let status = match &e {
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Conflict(_) => StatusCode::CONFLICT,
        RegistryError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// What the admin API shows of a tenant (never a key, only key ids).
pub fn status(tenant: &Tenant) -> Value {
    let loaded = tenant.loaded();
    let stats = &tenant.stats;
    json!({
        "id": tenant.id(),
        "component": tenant.spec.component,
        "component_digest": loaded.normalizer.digest,
        "loaded_at_ms": loaded.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "tables": loaded.normalizer.tables.iter().filter(|t| !t.template).map(|t| &t.name).collect::<Vec<_>>(),
        "templates": loaded.normalizer.tables.iter().filter(|t| t.template).map(|t| &t.name).collect::<Vec<_>>(),
        "keys": tenant.spec.keys.iter().map(|k| key_id(k)).collect::<Vec<_>>(),
        "schema": tenant.schema,
        "database": if tenant.spec.database.as_ref().is_some_and(|d| d.is_configured()) { "own" } else { "service" },
        "limits": tenant.spec.limits,
        "batch": tenant.spec.batch,
        "apis": tenant.spec.apis,
        "settings": tenant.spec.settings,
        "write_modes": tenant.spec.write_modes,
        "query_tokens": tenant.spec.query_tokens.iter().map(|k| key_id(k)).collect::<Vec<_>>(),
        "requests": stats.requests.load(Ordering::Relaxed),
        "errors": stats.errors.load(Ordering::Relaxed),
        "events": {
            "inserted": stats.events_inserted.load(Ordering::Relaxed),
            "duplicates": stats.events_duplicate.load(Ordering::Relaxed),
            "rejected": stats.events_rejected.load(Ordering::Relaxed),
            "dead_lettered": stats.events_dead_lettered.load(Ordering::Relaxed),
        },
        "in_flight_bytes": stats.in_flight_bytes.load(Ordering::Relaxed),
    })
}

async fn list(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.registry.snapshot();
    let mut tenants: Vec<&Arc<Tenant>> = snapshot.tenants.values().collect();
    tenants.sort_by(|a, b| a.id().cmp(b.id()));
    Json(json!({ "tenants": tenants.iter().map(|t| status(t)).collect::<Vec<_>>() })).into_response()
}

async fn show(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.registry.get(&id) {
        Ok(tenant) => Json(status(&tenant)).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn create(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let spec: TenantSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a tenant: {e}")),
    };
    match app.registry.create(spec).await {
        Ok((tenant, keys)) => {
            (StatusCode::CREATED, Json(json!({ "tenant": status(&tenant), "keys": keys }))).into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// Fields a PATCH may change; absent ones stay.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    component: Option<String>,
    apis: Option<Vec<crate::tenants::Api>>,
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

async fn update(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Response {
    let change: Change = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a tenant change: {e}")),
    };
    let result = app
        .registry
        .update(&id, |spec| {
            if let Some(component) = change.component {
                spec.component = component;
            }
            if let Some(database) = change.database {
                spec.database = database;
            }
            if let Some(limits) = change.limits {
                spec.limits = limits;
            }
            if let Some(apis) = change.apis {
                spec.apis = apis;
            }
            if let Some(batch) = change.batch {
                spec.batch = batch;
            }
            if let Some(settings) = change.settings {
                spec.settings = settings;
            }
            if let Some(write_modes) = change.write_modes {
                spec.write_modes = write_modes;
            }
            if let Some(query_tokens) = change.query_tokens {
                spec.query_tokens = query_tokens;
            }
            Ok(())
        })
        .await;
    match result {
        Ok(tenant) => Json(status(&tenant)).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn remove(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.registry.delete(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => registry_error(e),
    }
}

async fn upload(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Response {
    let started = Instant::now();
    match app.registry.swap_component(&id, body.to_vec()).await {
        Ok(tenant) => {
            let loaded = tenant.loaded();
            tracing::info!(tenant = %id, digest = %loaded.normalizer.digest, "component swapped");
            Json(json!({
                "digest": loaded.normalizer.digest,
                "tables": loaded.normalizer.tables.iter().filter(|t| !t.template).map(|t| &t.name).collect::<Vec<_>>(),
        "templates": loaded.normalizer.tables.iter().filter(|t| t.template).map(|t| &t.name).collect::<Vec<_>>(),
                "swap_ms": started.elapsed().as_secs_f64() * 1000.0,
            }))
            .into_response()
        }
        Err(e) => registry_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    key: Option<String>,
}

async fn add_key(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Response {
    let request: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        match serde_json::from_slice(&body) {
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
        Ok(_) => (StatusCode::CREATED, Json(json!({ "key": key, "key_id": key_id(&hashed) }))).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn revoke_key(State(app): State<Arc<App>>, Path((id, key)): Path<(String, String)>) -> Response {
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

/// `GET /admin/tenants/{id}/dead-letters?table=&after_id=&limit=`
async fn dead_letters(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    axum::extract::Query(selection): axum::extract::Query<dead_letters::Selection>,
) -> Response {
    let (tenant, client) = match tenant_client(&app, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match dead_letters::list(&**client, &tenant.schema, tenant.id(), &selection).await {
        Ok((letters, total)) => Json(json!({ "dead_letters": letters, "total": total })).into_response(),
        Err(e) => database_error(crate::db::writer::describe(&e)),
    }
}

/// `POST /admin/tenants/{id}/dead-letters/replay` with an optional JSON
/// body `{"table": …, "after_id": …, "limit": …}`.
async fn replay_dead_letters(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Response {
    let selection: dead_letters::Selection = if body.is_empty() {
        Default::default()
    } else {
        match serde_json::from_slice(&body) {
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

/// `DELETE /admin/tenants/{id}/dead-letters?table=`
async fn purge_dead_letters(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    axum::extract::Query(selection): axum::extract::Query<dead_letters::Selection>,
) -> Response {
    let (tenant, client) = match tenant_client(&app, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match dead_letters::purge(&**client, &tenant.schema, tenant.id(), selection.table.as_deref()).await {
        Ok(purged) => Json(json!({ "purged": purged })).into_response(),
        Err(e) => database_error(crate::db::writer::describe(&e)),
    }
}
