//! The query API's routes: who may query, and what they sent.

use crate::http::api_key;
use crate::ingest::Tenant;
use crate::query::run;
use crate::schema::error;
use crate::state::App;
use crate::tenants::spec::Api;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

pub fn routes(_app: Arc<App>) -> Router<Arc<App>> {
    Router::new().route("/api/query", get(get_query).post(post_query))
}

/// `GET /api/query?sql=…` (or `pg_sql=…`, as Logflare names it).
#[utoipa::path(get, path = "/api/query", tag = "query",
    params(
        ("sql" = Option<String>, Query, description = "One read-only query (SELECT, WITH, VALUES, TABLE)."),
        ("pg_sql" = Option<String>, Query, description = "The query, by Logflare's name for it."),
    ),
    security(("query_token" = []), ("query_token_key" = []), ()),
    responses(
    (status = 200, description = "The rows, as JSON.", body = QueryAnswer),
    (status = 400, description = "No query, one that is refused, or one PostgreSQL refused.", body = crate::schema::QueryError),
    (status = 401, description = "No query token, or not one of any tenant's (ingest keys do not authorize queries).", body = crate::schema::ErrorBody),
    (status = 403, description = "The tenant may not use the query API.", body = crate::schema::ErrorBody),
    (status = 408, description = "Cancelled at the statement timeout.", body = crate::schema::QueryError),
    (status = 500, description = "The query's transaction could not be set up.", body = crate::schema::ErrorBody),
    (status = 503, description = "No database connection (retry after `Retry-After` seconds), or queries are off for the tenant: its reader role could not be made, or its reader login may do more than read (the message says why and what the operator can do).", body = crate::schema::ErrorBody),
))]
pub(crate) async fn get_query(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let tenant = match authorize(&app, &headers, peer) {
        Ok(tenant) => tenant,
        Err(response) => return response,
    };
    let mut sql = None;
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if name == "sql" || name == "pg_sql" {
            sql.get_or_insert_with(|| value.into_owned());
        }
    }
    let Some(sql) = sql else {
        return error(StatusCode::BAD_REQUEST, "the query is missing: send ?sql=SELECT… (or pg_sql=)");
    };
    run(&app.queries, &app.registry, &tenant, sql, Vec::new()).await
}

/// The body of `POST /api/query`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    /// One read-only query; `$1`, `$2`, … are its parameters. Also read as `pg_sql`.
    #[serde(alias = "pg_sql")]
    sql: String,
    /// The parameters' values, in order.
    #[serde(default)]
    params: Vec<serde_json::Value>,
}

/// A query's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // written as text by PostgreSQL and `execute`; this is its shape
pub struct QueryAnswer {
    /// The rows, each an object by column name.
    result: Vec<serde_json::Map<String, serde_json::Value>>,
    columns: Vec<QueryColumn>,
    /// Rows in `result`.
    rows: u64,
    /// Whether rows past `[query] max_rows`, or past `[query] max_bytes` of
    /// rows, were left out.
    truncated: bool,
}

/// A column of a query's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct QueryColumn {
    name: String,
    /// PostgreSQL's type name, e.g. `int8`, `text`, `timestamptz`.
    #[serde(rename = "type")]
    type_name: String,
}

/// `POST /api/query` with `{"sql": "…", "params": […]}`.
#[utoipa::path(post, path = "/api/query", tag = "query", request_body = QueryBody,
    security(("query_token" = []), ("query_token_key" = []), ()),
    responses(
    (status = 200, description = "The rows, as JSON.", body = QueryAnswer),
    (status = 400, description = "The body is not a query, the query is refused, or PostgreSQL refused it.", body = crate::schema::QueryError),
    (status = 401, description = "No query token, or not one of any tenant's (ingest keys do not authorize queries).", body = crate::schema::ErrorBody),
    (status = 403, description = "The tenant may not use the query API.", body = crate::schema::ErrorBody),
    (status = 408, description = "Cancelled at the statement timeout.", body = crate::schema::QueryError),
    (status = 500, description = "The query's transaction could not be set up.", body = crate::schema::ErrorBody),
    (status = 503, description = "No database connection (retry after `Retry-After` seconds), or queries are off for the tenant: its reader role could not be made, or its reader login may do more than read (the message says why and what the operator can do).", body = crate::schema::ErrorBody),
))]
pub(crate) async fn post_query(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tenant = match authorize(&app, &headers, peer) {
        Ok(tenant) => tenant,
        Err(response) => return response,
    };
    // An object only: serde would also take the struct from an array.
    let object = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body);
    let request: QueryBody = match object.and_then(|o| serde_json::from_value(serde_json::Value::Object(o))) {
        Ok(request) => request,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("the body is not {{\"sql\": \"…\", \"params\": […]}}: {e}"));
        }
    };
    run(&app.queries, &app.registry, &tenant, request.sql, request.params).await
}

/// The tenant whose query token the request carries. While no tenant is
/// configured, the default tenant queries from loopback without one, as it
/// ingests.
#[allow(clippy::result_large_err)] // as http::resolve: the refusal is the answer
fn authorize(app: &App, headers: &HeaderMap, peer: SocketAddr) -> Result<Arc<Tenant>, Response> {
    let snapshot = app.registry.loaded().map_err(|reason| error(StatusCode::SERVICE_UNAVAILABLE, reason))?;
    let tenant = if snapshot.tenants.is_empty() {
        app.keyless(peer).map_err(|reason| error(StatusCode::UNAUTHORIZED, reason))?
    } else {
        let Some(token) = api_key(headers).filter(|t| !t.is_empty()) else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "a query token is required: send a tenant's private access token as Authorization: Bearer TOKEN \
                 or X-API-KEY (ingest keys do not authorize queries)",
            ));
        };
        match snapshot.by_query_token(token) {
            Some(tenant) => tenant.clone(),
            None => {
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    "this is not a query token of any tenant; queries need a tenant's private access token \
                     (query_tokens), and ingest keys do not authorize queries",
                ));
            }
        }
    };
    if !tenant.spec.apis.contains(&Api::Query) {
        return Err(error(StatusCode::FORBIDDEN, format!("tenant {} may not use the query API", tenant.id())));
    }
    Ok(tenant)
}
