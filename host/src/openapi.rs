//! The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`, `sluice
//! openapi`), derived from the handlers' `#[utoipa::path]` annotations and
//! the types they read and answer, so it changes with the code.
//! `docs/openapi.json` keeps a copy; a test fails when the two differ.

use crate::ingest::{Rejected, Tally};
use crate::schema::{BadRequest, ErrorBody, Events, LogRecords, LogflareBody, QueryError, Spooled};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
        crate::query::handlers::get_query,
        crate::query::handlers::post_query,
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
        crate::admin::fleet,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
