//! The read-only SQL query API, Logflare's management-API querying:
//! `GET /api/query?sql=…` (or `pg_sql=…`) and `POST /api/query` with
//! `{"sql": "…", "params": […]}`, authorized by a tenant's private access
//! token (never an ingest key).
//!
//! The boundary is PostgreSQL's privileges: a tenant's queries run on a
//! small pool of its own, whose connections log in as a role that can only
//! read that tenant's schema (see `roles`), never as the login Sluice
//! writes with. A query runs in a `READ ONLY` transaction with
//! `statement_timeout`, caps on the answer's rows and bytes, and
//! `search_path` set to the tenant's schema alone, and its connection ends
//! with `DISCARD ALL` (or is closed), so no session state outlives it.
//! Before it reaches PostgreSQL it is read by PostgreSQL's lexical rules,
//! parsed and checked, on a thread with a large stack and within bounds of
//! length and tokens: one query only (SELECT, WITH, VALUES, TABLE), no
//! data-modifying WITH, no relation outside the tenant's schema, no
//! function that reads files, other databases or settings, or takes
//! advisory locks. PostgreSQL renders every row as JSON (`to_json`), and
//! that text goes to the client as it is. See docs/query.md.

pub mod config;
pub mod handlers;
mod lexer;
pub mod roles;

use crate::config::DatabaseConfig;
use crate::db::{self, PgSettings};
use crate::ingest::Tenant;
use crate::query::config::QueryConfig;
use crate::schema::error;
use crate::tenants::Registry;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use deadpool_postgres::{Object, Pool};
use futures_util::StreamExt;
use roles::Unavailable;
use serde_json::json;
use sluice_postgres::Kind;
use sluice_sdk::sql::{quote_ident, quote_literal};
use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement, TableFactor, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

/// The stack of the thread that parses, checks and drops a query's syntax
/// tree: deep enough for a left-deep tree of `MAX_SQL_TOKENS / 2` levels
/// (`1+1+…`, `… UNION ALL …`), which recurses in the checks' walk and in
/// the tree's drop. Only the pages touched are ever committed.
const CHECK_STACK_BYTES: usize = 1 << 30;
/// Checks running at once (each on its own thread).
const CHECKS_AT_ONCE: usize = 4;
/// How long a tenant whose queries are off stays off before Sluice tries
/// to make its role again.
const OFF_FOR: Duration = Duration::from_secs(10);

/// The query API's state: its settings, and per tenant (made on first use)
/// its login, its pool and what it learnt of statements.
pub struct Queries {
    config: QueryConfig,
    tenants: Mutex<HashMap<String, Access>>,
    /// Taken while a tenant's login is made, so a burst of first queries
    /// makes it once.
    making: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Checks running at once.
    checks: Arc<tokio::sync::Semaphore>,
}

/// A tenant's queries, by the `database` setting they were made for.
enum Access {
    Ready { setting: Option<DatabaseConfig>, database: Arc<Database> },
    Off { setting: Option<DatabaseConfig>, why: Unavailable, at: Instant },
}

/// A tenant's query connections.
struct Database {
    pool: Pool,
    /// What they log in with (for cancelling a query).
    login: PgSettings,
    /// Statements that passed the checks, with what `PREPARE` said of
    /// them, by SQL text: a repeated query is neither parsed by Sluice nor
    /// prepared again, and runs in one round trip.
    prepared: Mutex<HashMap<String, Arc<Prepared>>>,
}

/// A checked statement and its shape.
struct Prepared {
    /// The text to wrap (without trailing semicolons).
    inner: String,
    /// `columns` of the answer, as JSON text.
    columns: String,
    /// Its parameters' types.
    types: Vec<Type>,
    at: Instant,
}

/// How long what `PREPARE` said of a statement is trusted: a table changed
/// since (a column added, say) shows in answers within this long.
const PREPARED_FOR: Duration = Duration::from_secs(10);
/// Statements remembered per tenant.
const PREPARED_MAX: usize = 1024;

impl Queries {
    pub fn new(config: QueryConfig) -> Queries {
        Queries {
            config,
            tenants: Mutex::default(),
            making: Mutex::default(),
            checks: Arc::new(tokio::sync::Semaphore::new(CHECKS_AT_ONCE)),
        }
    }

    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// What is known of `tenant`'s queries, if it still holds.
    fn known(&self, tenant: &Tenant) -> Option<Result<Arc<Database>, Unavailable>> {
        match self.tenants.lock().unwrap().get(tenant.id())? {
            Access::Ready { setting, database } if *setting == tenant.spec.database => Some(Ok(database.clone())),
            Access::Off { setting, why, at } if *setting == tenant.spec.database && at.elapsed() < OFF_FOR => {
                Some(Err(why.clone()))
            }
            _ => None,
        }
    }

    /// Forgets `tenant`'s login (it failed to connect: its role may have
    /// been dropped or its password changed), to make it again.
    fn forget(&self, tenant: &Tenant) {
        self.tenants.lock().unwrap().remove(tenant.id());
    }

    /// `tenant` was deleted: its query connections go, and so does the
    /// reader role Sluice made for it (an operator's `reader_user` is the
    /// operator's to drop).
    pub async fn deleted(&self, registry: &Registry, tenant: &Tenant) {
        self.forget(tenant);
        if self.config.reader_user.is_some() {
            return;
        }
        let settings = registry.database_of(&tenant.spec);
        let wait = Duration::from_millis(settings.connect_timeout_ms) * 4;
        let dropped = async {
            let service = settings.pg_config()?;
            tokio::time::timeout(wait, roles::drop_role(&service, tenant.id()))
                .await
                .map_err(|_| anyhow::anyhow!("the database did not answer in time"))?
        };
        match dropped.await {
            Ok(true) => tracing::info!(tenant = %tenant.id(), "dropped the deleted tenant's query role"),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                tenant = %tenant.id(),
                "the deleted tenant's query role is left in the database (drop it by hand, or run `sluice migrate` \
                 as an admin): {e:#}"
            ),
        }
    }

    /// The connections `tenant`'s queries run on, made on first use.
    async fn database(&self, registry: &Registry, tenant: &Tenant) -> Result<Arc<Database>, Unavailable> {
        if let Some(known) = self.known(tenant) {
            return known;
        }
        let making = self.making.lock().unwrap().entry(tenant.id().to_owned()).or_default().clone();
        let _making = making.lock().await;
        if let Some(known) = self.known(tenant) {
            return known;
        }
        let settings = registry.database_of(&tenant.spec);
        let wait = Duration::from_millis(settings.connect_timeout_ms);
        let made = async {
            let service = settings
                .pg_config()
                .map_err(|e| Unavailable(format!("the tenant's database settings are unusable: {e:#}")))?;
            // Bounded: an unreachable database must not hold the tenant's
            // queries (or this lock) for long.
            let login =
                tokio::time::timeout(wait * 4, roles::login(&service, tenant.id(), &tenant.schema, &self.config))
                    .await
                    .map_err(|_| Unavailable("the tenant's database did not answer in time".into()))??;
            let pool = db::pool(login.clone(), self.config.pool_size, wait)
                .map_err(|e| Unavailable(format!("the tenant's query pool could not be made: {e:#}")))?;
            Ok::<_, Unavailable>(Arc::new(Database { pool, login, prepared: Mutex::default() }))
        }
        .await;
        let setting = tenant.spec.database.clone();
        let access = match &made {
            Ok(database) => Access::Ready { setting, database: database.clone() },
            Err(why) => {
                tracing::warn!(tenant = %tenant.id(), "query API off: {}", why.0);
                Access::Off { setting, why: why.clone(), at: Instant::now() }
            }
        };
        let snapshot = registry.snapshot();
        let mut tenants = self.tenants.lock().unwrap();
        // Deleted tenants' pools (and their idle connections) go.
        tenants.retain(|id, _| snapshot.tenants.contains_key(id));
        tenants.insert(tenant.id().to_owned(), access);
        drop(tenants);
        self.making.lock().unwrap().retain(|id, _| id == tenant.id() || snapshot.tenants.contains_key(id));
        made
    }

    /// [`check`] on a thread of its own with a large stack, so no SQL can
    /// overflow a runtime thread's stack; its syntax tree is dropped there too.
    async fn check(&self, sql: &str, schema: &str) -> Result<String, String> {
        let _permit = self.checks.clone().acquire_owned().await.map_err(|_| "the service is stopping".to_owned())?;
        let (sql, schema) = (sql.to_owned(), schema.to_owned());
        let limits = Limits { max_bytes: self.config.max_sql_bytes, max_tokens: self.config.max_sql_tokens };
        let (answer, answered) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sluice-query-check".into())
            .stack_size(CHECK_STACK_BYTES)
            .spawn(move || {
                let _ = answer.send(check_within(&sql, &schema, limits).map(str::to_owned));
            })
            .map_err(|e| format!("the query could not be checked: {e}"))?;
        answered.await.unwrap_or_else(|_| Err("the query could not be checked".into()))
    }
}

impl Database {
    fn prepared(&self, sql: &str) -> Option<Arc<Prepared>> {
        let prepared = self.prepared.lock().unwrap();
        let found = prepared.get(sql)?;
        (found.at.elapsed() < PREPARED_FOR).then(|| found.clone())
    }

    fn remember(&self, sql: &str, prepared: Arc<Prepared>) {
        let mut all = self.prepared.lock().unwrap();
        if all.len() >= PREPARED_MAX {
            all.retain(|_, p| p.at.elapsed() < PREPARED_FOR);
            if all.len() >= PREPARED_MAX {
                all.clear();
            }
        }
        all.insert(sql.to_owned(), prepared);
    }

    fn forget(&self, sql: &str) {
        self.prepared.lock().unwrap().remove(sql);
    }
}

/// Checks and runs one query for `tenant`.
pub(crate) async fn run(
    queries: &Queries,
    registry: &Registry,
    tenant: &Tenant,
    sql: String,
    params: Vec<serde_json::Value>,
) -> Response {
    let database = match queries.database(registry, tenant).await {
        Ok(database) => database,
        Err(why) => return error(StatusCode::SERVICE_UNAVAILABLE, why.0),
    };
    let prepared = database.prepared(&sql);
    let inner = match &prepared {
        Some(prepared) => {
            if let Err(failure) = count_params(&prepared.types, &params) {
                return failure.response(&queries.config, tenant);
            }
            prepared.inner.clone()
        }
        None => match queries.check(&sql, &tenant.schema).await {
            Ok(inner) => inner,
            Err(refused) => return error(StatusCode::BAD_REQUEST, refused),
        },
    };
    let config = &queries.config;
    let job = Job {
        sql,
        inner,
        params: params.iter().map(TextParam::from_json).collect(),
        schema: tenant.schema.clone(),
        config: config.clone(),
        prepared,
        database: database.clone(),
    };
    // The query runs to its end (bounded by statement_timeout) in a task of
    // its own, so a client that goes away never returns a connection to
    // the pool in the middle of a transaction.
    let (answer, answered) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let client = match database.pool.get().await {
            Ok(client) => client,
            Err(e) => {
                // A login refused (its role dropped, its password changed)
                // is made again on the next query.
                let refused = sluice_postgres::failure::classify_pool(&e) == Kind::Authorization;
                let _ = answer.send(Err(Failure::Unavailable { message: e.to_string(), refused }));
                return;
            }
        };
        if answer.is_closed() {
            return; // the client left while the query waited for a connection
        }
        let (result, clean) = job.execute(&client).await;
        let _ = answer.send(result);
        // Only a connection whose query succeeded and whose session was
        // reset (ROLLBACK, DISCARD ALL) goes back to the pool; any other is
        // closed, so nothing a query left (a lock, a setting, a statement
        // still running) reaches the next one.
        if !clean {
            drop(Object::take(client));
        }
    });
    match answered.await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], Body::from(body)).into_response(),
        Ok(Err(failure)) => {
            if let Failure::Unavailable { refused: true, .. } = &failure {
                queries.forget(tenant);
            }
            failure.response(&queries.config, tenant)
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the query task failed"),
    }
}

fn count_params(types: &[Type], params: &[impl Sized]) -> Result<(), Failure> {
    if types.len() == params.len() {
        return Ok(());
    }
    Err(Failure::Params(format!(
        "the query has {} parameter{} but {} {} given",
        types.len(),
        if types.len() == 1 { "" } else { "s" },
        params.len(),
        if params.len() == 1 { "was" } else { "were" },
    )))
}

/// One query, ready to run.
struct Job {
    /// As the client sent it: prepared to learn its columns and parameters.
    sql: String,
    /// The same without trailing semicolons, to wrap.
    inner: String,
    params: Vec<TextParam>,
    schema: String,
    config: QueryConfig,
    /// What `PREPARE` said of this statement before, if it was asked lately.
    prepared: Option<Arc<Prepared>>,
    database: Arc<Database>,
}

enum Failure {
    /// No connection (pool timeout, database down); `refused` when the
    /// database refused the login.
    Unavailable { message: String, refused: bool },
    /// Wrong number of parameters.
    Params(String),
    /// The transaction's settings failed: the operator's to fix.
    Setup(tokio_postgres::Error),
    /// PostgreSQL refused or failed the statement; `prepared` when it was
    /// the client's own text that failed (so `position` points into it).
    Database { error: tokio_postgres::Error, prepared: bool },
}

/// Ends every query's session: the transaction, then whatever session
/// state the query could have left (advisory locks, prepared statements,
/// temporary tables, settings, LISTEN). Its own message, since DISCARD ALL
/// may not run inside a transaction block.
const RESET: &str = "DISCARD ALL";

impl Job {
    /// Runs the query in a read-only transaction and ends it. Returns the
    /// answer's JSON text, and whether the connection is clean (the query
    /// succeeded, ran to its end, and the session was reset).
    ///
    /// The transaction's settings, the query, the ROLLBACK and the reset go
    /// out together, pipelined on the connection: tokio-postgres sends a
    /// request when its future is first polled, `join!` polls in order, and
    /// PostgreSQL runs what it receives in order. A statement seen lately
    /// (its shape remembered) thus takes one round trip; a new one takes
    /// two, the first preparing it inside the transaction, after the search
    /// path is set.
    async fn execute(self, client: &Object) -> (Result<String, Failure>, bool) {
        let config = &self.config;
        // SET LOCAL for each, in one statement (set_config(…, true)): a
        // third of the cost of six SET LOCALs.
        let setup = format!(
            "BEGIN READ ONLY; SELECT set_config('statement_timeout', '{}', true), \
             set_config('search_path', {}, true), set_config('TimeZone', 'UTC', true), \
             set_config('bytea_output', 'hex', true), set_config('standard_conforming_strings', 'on', true), \
             set_config('IntervalStyle', 'iso_8601', true)",
            config.statement_timeout_ms,
            quote_literal(&quote_ident(&self.schema))
        );
        // PostgreSQL renders each row as JSON, with the parameters typed as
        // the statement's own (sent as text, parsed by their input
        // functions). A row longer than the byte cap is sent as NULL, so no
        // single row makes Sluice hold more than the cap.
        let wrapped = format!(
            "SELECT CASE WHEN octet_length(j) <= {} THEN j END FROM (SELECT to_json(q)::text AS j FROM (\n{}\n) q \
             LIMIT {}) r",
            config.max_bytes,
            self.inner,
            config.max_rows as u64 + 1
        );
        let database = |error, prepared| Failure::Database { error, prepared };

        let prepared = match &self.prepared {
            Some(prepared) => {
                let params = self.params(&prepared.types);
                let (setup, answer, rollback, reset) = tokio::join!(
                    client.batch_execute(&setup),
                    self.rows(client, &wrapped, &params, prepared),
                    client.batch_execute("ROLLBACK"),
                    client.batch_execute(RESET),
                );
                let result = match (setup, answer) {
                    (Err(e), _) => Err(Failure::Setup(e)),
                    (Ok(()), Err(e)) => {
                        // The table may have changed: look again next time.
                        self.database.forget(&self.sql);
                        Err(e)
                    }
                    (Ok(()), Ok((body, cut))) => Ok((body, cut)),
                };
                return finish(client, result, rollback, reset);
            }
            None => {
                // The client's statement itself: its columns and parameter
                // types (PostgreSQL also refuses more than one statement).
                let (setup, statement) = tokio::join!(client.batch_execute(&setup), client.prepare(&self.sql));
                let failed = match (setup, statement) {
                    (Err(e), _) => Err(Failure::Setup(e)),
                    (Ok(()), Err(e)) => Err(database(e, true)),
                    (Ok(()), Ok(statement)) => {
                        let columns: Vec<serde_json::Value> = statement
                            .columns()
                            .iter()
                            .map(|c| json!({ "name": c.name(), "type": c.type_().name() }))
                            .collect();
                        let prepared = Arc::new(Prepared {
                            inner: self.inner.clone(),
                            columns: serde_json::Value::Array(columns).to_string(),
                            types: statement.params().to_vec(),
                            at: Instant::now(),
                        });
                        self.database.remember(&self.sql, prepared.clone());
                        count_params(&prepared.types, &self.params).map(|()| prepared)
                    }
                };
                match failed {
                    Ok(prepared) => prepared,
                    // The connection is closed: its transaction ends with it.
                    Err(failure) => return (Err(failure), false),
                }
            }
        };
        let params = self.params(&prepared.types);
        let (answer, rollback, reset) = tokio::join!(
            self.rows(client, &wrapped, &params, &prepared),
            client.batch_execute("ROLLBACK"),
            client.batch_execute(RESET),
        );
        finish(client, answer, rollback, reset)
    }

    fn params<'a>(&'a self, types: &[Type]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
        self.params.iter().zip(types).map(|(p, ty)| (p as &(dyn ToSql + Sync), ty.clone())).collect()
    }

    /// Runs the wrapped query and reads its rows as they come, up to the
    /// row and byte caps: the answer's JSON text, and whether the query
    /// was cut short (the byte cap reached with rows still coming; it is
    /// then cancelled, and the connection must be closed).
    ///
    /// Reading inside the pipeline matters: the connection hands rows over
    /// one message at a time, so the ROLLBACK behind the query is answered
    /// only once they are read, and no more than the cap is ever held.
    async fn rows(
        &self,
        client: &Object,
        wrapped: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
        prepared: &Prepared,
    ) -> Result<(String, bool), Failure> {
        let database = |error| Failure::Database { error, prepared: false };
        let stream =
            client.query_typed_raw(wrapped, params.iter().map(|(p, t)| (*p, t.clone()))).await.map_err(database)?;
        let mut stream = std::pin::pin!(stream);
        let (max_rows, max_bytes) = (self.config.max_rows, self.config.max_bytes);
        let mut body = String::with_capacity(64 + prepared.columns.len());
        body.push_str("{\"result\":[");
        let (mut shown, mut truncated, mut cut) = (0usize, false, false);
        while let Some(row) = stream.next().await {
            let row = row.map_err(database)?;
            if shown == max_rows {
                // The one row past the cap (LIMIT max_rows + 1): the last.
                truncated = true;
                continue;
            }
            let json = row.try_get::<_, Option<&str>>(0).map_err(database)?;
            match json {
                Some(json) if body.len() + json.len() < max_bytes => {
                    if shown > 0 {
                        body.push(',');
                    }
                    body.push_str(json);
                    shown += 1;
                }
                // This row would pass the byte cap (or alone it did, and
                // PostgreSQL sent NULL for it).
                _ => {
                    truncated = true;
                    cut = true;
                    break;
                }
            }
        }
        if cut {
            // Stop the rest being computed and sent; the rows still coming
            // are dropped as they arrive.
            if let Err(e) = db::cancel(&self.database.login, client.cancel_token()).await {
                tracing::info!("query: cancelling a query cut at the byte cap: {e:#}");
            }
        }
        body.push_str("],\"columns\":");
        body.push_str(&prepared.columns);
        body.push_str(&format!(",\"rows\":{shown},\"truncated\":{truncated}}}"));
        Ok((body, cut))
    }
}

/// The answer, and whether the connection may be used again.
fn finish(
    client: &Object,
    answer: Result<(String, bool), Failure>,
    rollback: Result<(), tokio_postgres::Error>,
    reset: Result<(), tokio_postgres::Error>,
) -> (Result<String, Failure>, bool) {
    // DISCARD ALL dropped the statements tokio-postgres keeps for looking
    // up types; forget them too.
    client.clear_type_cache();
    match answer {
        Ok((body, cut)) => (Ok(body), !cut && rollback.is_ok() && reset.is_ok()),
        Err(failure) => (Err(failure), false),
    }
}

impl Failure {
    fn response(self, config: &QueryConfig, tenant: &Tenant) -> Response {
        match self {
            Failure::Unavailable { message: e, .. } => {
                tracing::warn!(tenant = %tenant.id(), "query: no connection: {e}");
                // (Retry-After: the router's, as for every 503.)
                error(StatusCode::SERVICE_UNAVAILABLE, format!("no database connection for the query: {e}"))
            }
            Failure::Params(message) => error(StatusCode::BAD_REQUEST, message),
            Failure::Setup(e) => {
                tracing::warn!(tenant = %tenant.id(), "query: setting up the transaction failed: {e}");
                let message = match e.as_db_error() {
                    Some(db) => {
                        format!("the query could not be set up: {} (SQLSTATE {})", db.message(), db.code().code())
                    }
                    None => format!("the query could not be set up: {e}"),
                };
                error(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
            Failure::Database { error: e, prepared } => {
                let kind = sluice_postgres::classify(&e);
                let Some(db) = e.as_db_error() else {
                    tracing::warn!(tenant = %tenant.id(), "query: {e}");
                    return error(StatusCode::SERVICE_UNAVAILABLE, format!("the database connection failed: {e}"));
                };
                let code = db.code().code();
                let (status, message) = match kind {
                    // The statement timeout (nothing else cancels a query's
                    // statement).
                    Kind::Cancelled => (
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the query was cancelled after {} ms: it ran past the statement timeout \
                             ([query] statement_timeout_ms)",
                            config.statement_timeout_ms
                        ),
                    ),
                    // Something tried to write.
                    Kind::ReadOnly => (
                        StatusCode::BAD_REQUEST,
                        format!("queries are read-only, and this one tried to write: {}", db.message()),
                    ),
                    _ => (StatusCode::BAD_REQUEST, db.message().to_owned()),
                };
                let mut body = json!({ "error": message, "sqlstate": code });
                if let Some(detail) = db.detail() {
                    body["detail"] = detail.into();
                }
                if let Some(hint) = db.hint() {
                    body["hint"] = hint.into();
                }
                if prepared && let Some(tokio_postgres::error::ErrorPosition::Original(position)) = db.position() {
                    body["position"] = (*position).into();
                }
                (status, axum::Json(body)).into_response()
            }
        }
    }
}

/// A parameter sent in text format, so PostgreSQL parses it with the input
/// function of the type the statement gives it: `"42"` becomes an int8, a
/// uuid, a numeric or text as the statement needs.
#[derive(Debug)]
struct TextParam(Option<String>);

impl TextParam {
    /// JSON null is SQL NULL; a string is its text; numbers and booleans
    /// their JSON text; arrays and objects their JSON text (for json/jsonb).
    fn from_json(value: &serde_json::Value) -> TextParam {
        TextParam(match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
    }
}

impl ToSql for TextParam {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

// ---------------------------------------------------------------------------
// The checks.

/// How much SQL the checks read.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: usize,
    max_tokens: usize,
}

/// How deep sqlparser may recurse (nested parentheses, subqueries): its
/// own default, said here because the checks rely on it.
const RECURSION_LIMIT: usize = 50;

/// [`check_within`] with the default limits.
#[cfg(test)]
pub fn check<'a>(sql: &'a str, schema: &str) -> Result<&'a str, String> {
    let config = QueryConfig::default();
    check_within(sql, schema, Limits { max_bytes: config.max_sql_bytes, max_tokens: config.max_sql_tokens })
}

/// Checks that `sql` is one read-only query that stays in `schema`, and
/// returns its text without trailing semicolons (to be wrapped). The error
/// says what is wrong.
///
/// Parsing is bounded (the length, the tokens, sqlparser's recursion
/// limit), but a flat chain (`1+1+…`, `… UNION ALL …`) still makes a
/// syntax tree as deep as it is long, which walking and dropping recurse
/// through: call this on a thread with a large stack (`Queries::check`).
fn check_within<'a>(sql: &'a str, schema: &str, limits: Limits) -> Result<&'a str, String> {
    let dialect = PostgreSqlDialect {};
    if sql.trim().is_empty() {
        return Err("the SQL is empty".into());
    }
    if sql.len() > limits.max_bytes {
        return Err(format!(
            "the SQL is too long: {} bytes, and queries may have at most {} ([query] max_sql_bytes)",
            sql.len(),
            limits.max_bytes
        ));
    }
    // PostgreSQL's reading first: what it cannot be sure of is refused
    // before sqlparser's reading is trusted.
    let spans = lexer::scan(sql)?;
    let tokens =
        Tokenizer::new(&dialect, sql).tokenize_with_location().map_err(|e| format!("the SQL does not parse: {e}"))?;
    let count = tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF)).count();
    if count > limits.max_tokens {
        return Err(format!(
            "the SQL is too long: {count} tokens, and queries may have at most {} ([query] max_sql_tokens)",
            limits.max_tokens
        ));
    }
    lexer::agree(sql, &spans, &tokens)?;
    // The parser knows `TABLE name` only inside set operations; PostgreSQL
    // takes it for `SELECT * FROM name`, and so do the checks.
    let rewritten;
    let parsed = match tokens.iter().find(|t| !matches!(t.token, Token::Whitespace(_))) {
        Some(first) if matches!(&first.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("table")) =>
        {
            let at = byte_offset(sql, first.span.start).unwrap_or(0);
            rewritten = format!("{}SELECT * FROM{}", &sql[..at], &sql[at + "table".len()..]);
            rewritten.as_str()
        }
        _ => sql,
    };
    let statements = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(parsed)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| {
            let e = e.to_string();
            format!("the SQL does not parse: {}", e.strip_prefix("sql parser error: ").unwrap_or(&e))
        })?;
    let statement = match statements.as_slice() {
        [] => return Err("the SQL has no statement".into()),
        [one] => one,
        many => {
            return Err(format!(
                "send one statement at a time: this SQL has {} ({})",
                many.len(),
                many.iter().map(kind).collect::<Vec<_>>().join(", ")
            ));
        }
    };
    if !matches!(statement, Statement::Query(_)) {
        return Err(format!(
            "only a query (SELECT, WITH, VALUES or TABLE) may run, and this is {}: queries are read-only",
            kind(statement)
        ));
    }
    let mut checker = Checker { schema, top: true };
    if let ControlFlow::Break(refused) = statement.visit(&mut checker) {
        return Err(refused);
    }
    Ok(without_trailing_semicolons(sql, &tokens))
}

/// What kind of statement this is, as its leading keywords: `INSERT`,
/// `DROP TABLE`, …
fn kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("?").to_ascii_uppercase();
    if matches!(first.as_str(), "CREATE" | "DROP" | "ALTER") {
        let mut second = words.next().unwrap_or("").to_ascii_uppercase();
        if second == "OR" {
            second = words.nth(1).unwrap_or("").to_ascii_uppercase();
        }
        return format!("{first} {second}").trim().to_owned();
    }
    first
}

struct Checker<'a> {
    schema: &'a str,
    /// The next statement visited is the top one (a query).
    top: bool,
}

impl Visitor for Checker<'_> {
    type Break = String;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<String> {
        if std::mem::take(&mut self.top) {
            return ControlFlow::Continue(());
        }
        // A statement inside the query: a data-modifying WITH (or a
        // subquery form of one).
        ControlFlow::Break(format!(
            "{} is not allowed inside a query (a data-modifying WITH): queries are read-only",
            kind(statement)
        ))
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        if !query.locks.is_empty() {
            return ControlFlow::Break("FOR UPDATE / FOR SHARE locks rows, which a read-only query may not do".into());
        }
        self.set_expr(&query.body)
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<String> {
        if select.into.is_some() {
            return ControlFlow::Break("SELECT … INTO creates a table, which a read-only query may not do".into());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
        match factor {
            // `FROM f(…)`: a set-returning function.
            TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => self.function(name),
            TableFactor::Table { name, args: None, .. } => self.relation(name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<String> {
        match expr {
            Expr::Function(function) => self.function(&function.name),
            _ => ControlFlow::Continue(()),
        }
    }
}

impl Checker<'_> {
    /// `TABLE name` is not an ObjectName in the syntax tree; find it here.
    fn set_expr(&self, body: &SetExpr) -> ControlFlow<String> {
        match body {
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left)?;
                self.set_expr(right)
            }
            SetExpr::Table(table) => {
                let Some(name) = &table.table_name else { return ControlFlow::Continue(()) };
                let shown = match &table.schema_name {
                    Some(schema) => format!("{schema}.{name}"),
                    None => name.clone(),
                };
                let schema = table.schema_name.as_deref().map(fold);
                self.relation_parts(&shown, schema.as_deref(), &fold(name))
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn relation(&self, name: &ObjectName) -> ControlFlow<String> {
        let parts = match parts(name) {
            Ok(parts) => parts,
            Err(refused) => return ControlFlow::Break(refused),
        };
        match parts.as_slice() {
            [table] => self.relation_parts(&name.to_string(), None, table),
            [schema, table] => self.relation_parts(&name.to_string(), Some(schema), table),
            _ => ControlFlow::Break(format!(
                "relation {name} names another database: queries may read only their own schema's tables"
            )),
        }
    }

    fn relation_parts(&self, shown: &str, schema: Option<&str>, table: &str) -> ControlFlow<String> {
        match schema {
            None if table.to_ascii_lowercase().starts_with("pg_") => ControlFlow::Break(format!(
                "relation {shown} is not allowed: an unqualified pg_ name resolves to the system catalog \
                 (pg_catalog), which queries may not read"
            )),
            Some(schema) if schema != self.schema => ControlFlow::Break(format!(
                "relation {shown} is in schema {schema}, outside this tenant's schema {}: queries may read \
                 only their own schema's tables",
                self.schema
            )),
            _ => ControlFlow::Continue(()),
        }
    }

    fn function(&self, name: &ObjectName) -> ControlFlow<String> {
        let parts = match parts(name) {
            Ok(parts) => parts,
            Err(refused) => return ControlFlow::Break(refused),
        };
        let (function, schema) = match parts.as_slice() {
            [function] => (function, None),
            [schema, function] => (function, Some(schema)),
            _ => return ControlFlow::Break(format!("function {name} names another database")),
        };
        if let Some(schema) = schema
            && schema != "pg_catalog"
            && schema != self.schema
        {
            return ControlFlow::Break(format!(
                "function {name} is in schema {schema}, outside this tenant's schema {}",
                self.schema
            ));
        }
        match forbidden_function(&function.to_ascii_lowercase()) {
            Some(why) => ControlFlow::Break(format!("function {function} is not allowed in queries: {why}")),
            None => ControlFlow::Continue(()),
        }
    }
}

/// An identifier as PostgreSQL resolves it: unquoted ones fold to lower case.
fn fold(ident: &str) -> String {
    ident.to_ascii_lowercase()
}

fn parts(name: &ObjectName) -> Result<Vec<String>, String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() => Ok(ident.value.clone()),
            ObjectNamePart::Identifier(ident) => Ok(fold(&ident.value)),
            ObjectNamePart::Function(_) => Err(format!("the name {name} is not a plain name")),
        })
        .collect()
}

/// Functions of the `pg_` family a query may call; every other `pg_`
/// function (server administration, files, the catalog, other sessions) is
/// refused.
const ALLOWED_PG_FUNCTIONS: &[&str] = &[
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_typeof",
    "pg_column_size",
    "pg_column_compression",
    "pg_size_pretty",
    "pg_size_bytes",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_input_is_valid",
    "pg_input_error_info",
    "pg_backend_pid",
    "pg_client_encoding",
    "pg_is_in_recovery",
    "pg_postmaster_start_time",
    "pg_current_xact_id",
    "pg_current_snapshot",
    "pg_jit_available",
];

/// Why a function (by its lower-case name) may not be called, if it may not.
fn forbidden_function(name: &str) -> Option<&'static str> {
    const FILES: &str = "it reads the database server's files";
    Some(match name {
        "pg_stat_file" => FILES,
        _ if name.starts_with("pg_read_") || name.starts_with("pg_ls_") || name.starts_with("pg_file") => FILES,
        _ if name.starts_with("lo_") || name == "loread" || name == "lowrite" => {
            "large objects live outside any schema, and lo_import / lo_export reach the server's files"
        }
        _ if name.starts_with("dblink") => "it connects to other databases",
        "set_config" => "it changes settings (current_setting is allowed)",
        _ if name.contains("_to_xml") || name == "ts_stat" || name == "ts_rewrite" => {
            "it runs SQL given as text, which these checks cannot see"
        }
        _ if name.starts_with("pg_advisory_") || name.starts_with("pg_try_advisory_") => {
            "it takes an advisory lock, which could outlive the query and hold up others"
        }
        "pg_terminate_backend" | "pg_cancel_backend" => "it stops other sessions",
        "pg_reload_conf" | "pg_rotate_logfile" => "it administers the server",
        _ if name.starts_with("pg_") && !ALLOWED_PG_FUNCTIONS.contains(&name) => {
            "pg_ functions administer the server or read the system catalog and other sessions \
             (a few harmless ones are allowed: pg_sleep, pg_typeof, pg_column_size, pg_size_pretty, \
             pg_relation_size, …)"
        }
        _ => return None,
    })
}

/// `sql` without the semicolons (and the comments after them) that end it.
fn without_trailing_semicolons<'a>(sql: &'a str, tokens: &[TokenWithSpan]) -> &'a str {
    let mut end = sql.len();
    for token in tokens.iter().rev() {
        match &token.token {
            Token::Whitespace(_) | Token::EOF => {}
            Token::SemiColon => end = byte_offset(sql, token.span.start).unwrap_or(end),
            _ => break,
        }
    }
    &sql[..end]
}

/// The byte offset of a tokenizer location (line and column from 1,
/// counted in characters).
fn byte_offset(text: &str, at: Location) -> Option<usize> {
    let (mut line, mut column) = (1, 1);
    for (offset, c) in text.char_indices() {
        if line == at.line && column == at.column {
            return Some(offset);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::config::MAX_SQL_TOKENS;

    fn ok(sql: &str) -> String {
        check(sql, "acme").unwrap_or_else(|e| panic!("{sql:?} was refused: {e}")).to_owned()
    }

    fn refused(sql: &str, says: &str) {
        match check(sql, "acme") {
            Ok(_) => panic!("{sql:?} was accepted"),
            Err(e) => assert!(e.contains(says), "{sql:?}: {e:?} does not say {says:?}"),
        }
    }

    #[test]
    fn queries_pass() {
        for sql in [
            "SELECT 1",
            "select event_type, count(*) from events group by 1 order by 2 desc limit 10",
            "SELECT * FROM acme.events e JOIN \"acme\".events f USING (event_id)",
            "SELECT * FROM ACME.events",
            "WITH recent AS (SELECT * FROM events WHERE occurred_at > now() - interval '1 hour') SELECT count(*) FROM recent",
            "VALUES (1, 'a'), (2, 'b')",
            "TABLE events",
            "  table acme.events ORDER BY 1 LIMIT 3;",
            "SELECT 1 UNION TABLE events",
            "SELECT g FROM generate_series(1, 10) g",
            "SELECT pg_sleep(0.1), pg_typeof(1), current_setting('TimeZone')",
            "SELECT payload->>'amount' FROM events WHERE event_type = $1 AND occurred_at > $2",
            "SELECT (SELECT count(*) FROM events) AS n UNION ALL SELECT 2",
            "SELECT * FROM events WHERE event_id IN (SELECT event_id FROM events LIMIT 1)",
            "SELECT 'pg_catalog.pg_authid', $$pg_read_file$$",
        ] {
            ok(sql);
        }
    }

    #[test]
    fn only_one_query_runs() {
        refused("INSERT INTO events (event_id) VALUES (gen_random_uuid())", "this is INSERT");
        refused("UPDATE events SET source = 'x'", "this is UPDATE");
        refused("DELETE FROM events", "this is DELETE");
        refused("DROP TABLE events", "this is DROP TABLE");
        refused("CREATE TABLE x (a int)", "this is CREATE TABLE");
        refused("CREATE OR REPLACE VIEW v AS SELECT 1", "this is CREATE VIEW");
        refused("TRUNCATE events", "this is TRUNCATE");
        refused("COPY events TO STDOUT", "this is COPY");
        refused("SET search_path = public", "this is SET");
        refused("SET ROLE postgres", "this is SET");
        refused("EXPLAIN ANALYZE DELETE FROM events", "this is EXPLAIN");
        refused("SELECT 1; SELECT 2", "one statement at a time");
        refused("SELECT 1; DELETE FROM events", "one statement at a time");
        refused("", "empty");
        refused("   ", "empty");
        refused("SELEC 1", "does not parse");
    }

    #[test]
    fn data_modifying_ctes_and_locks_are_refused() {
        refused("WITH gone AS (DELETE FROM events RETURNING *) SELECT count(*) FROM gone", "DELETE is not allowed");
        refused(
            "WITH x AS (INSERT INTO events (event_id) VALUES (gen_random_uuid()) RETURNING 1) SELECT * FROM x",
            "INSERT is not allowed",
        );
        refused("WITH x AS (UPDATE events SET source = 'y' RETURNING 1) SELECT 1", "UPDATE is not allowed");
        refused("SELECT * FROM events FOR UPDATE", "FOR UPDATE");
        refused("SELECT * FROM (SELECT * FROM events FOR SHARE) q", "FOR UPDATE");
        refused("SELECT * INTO copy_of_events FROM events", "INTO creates a table");
    }

    #[test]
    fn other_schemas_and_the_catalog_are_refused() {
        refused("SELECT * FROM pg_catalog.pg_authid", "schema pg_catalog");
        refused("SELECT * FROM PG_CATALOG.PG_AUTHID", "schema pg_catalog");
        refused("SELECT * FROM pg_authid", "resolves to the system catalog");
        refused("SELECT * FROM pg_stat_activity", "resolves to the system catalog");
        refused("SELECT * FROM information_schema.tables", "schema information_schema");
        refused("SELECT * FROM other_schema.t", "schema other_schema");
        refused("SELECT * FROM \"Acme\".events", "schema Acme");
        refused("SELECT * FROM db.acme.events", "another database");
        refused("SELECT * FROM events JOIN globex.events g USING (event_id)", "schema globex");
        refused("SELECT (SELECT count(*) FROM globex.events)", "schema globex");
        refused("SELECT * FROM events WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_user)", "pg_catalog");
        refused("WITH a AS (SELECT * FROM globex.events) SELECT * FROM a", "schema globex");
        refused("SELECT 1 UNION SELECT usename::int FROM pg_user", "system catalog");
        refused("TABLE globex.events", "schema globex");
        refused("SELECT 1 UNION TABLE pg_authid", "system catalog");
        refused("SELECT * FROM (VALUES (1)) v, LATERAL (SELECT * FROM globex.events) g", "schema globex");
    }

    #[test]
    fn dangerous_functions_are_refused() {
        for (sql, says) in [
            ("SELECT pg_read_file('/etc/passwd')", "server's files"),
            ("SELECT pg_catalog.pg_read_binary_file('/etc/passwd')", "server's files"),
            ("SELECT * FROM pg_ls_dir('.')", "server's files"),
            ("SELECT pg_stat_file('postgresql.conf')", "server's files"),
            ("SELECT lo_import('/etc/passwd')", "large objects"),
            ("SELECT lo_export(1, '/tmp/x')", "large objects"),
            ("SELECT lo_get(1)", "large objects"),
            ("SELECT loread(0, 1)", "large objects"),
            ("SELECT * FROM dblink('dbname=x', 'select 1') AS t(a int)", "other databases"),
            ("SELECT dblink_exec('dbname=x', 'drop table t')", "other databases"),
            ("SELECT set_config('search_path', 'globex', true)", "changes settings"),
            ("SELECT pg_terminate_backend(1)", "stops other sessions"),
            ("SELECT pg_cancel_backend(1)", "stops other sessions"),
            ("SELECT pg_reload_conf()", "administers"),
            ("SELECT pg_rotate_logfile()", "administers"),
            ("SELECT query_to_xml('select * from pg_authid', true, true, '')", "runs SQL given as text"),
            ("SELECT table_to_xml('globex.events', true, true, '')", "runs SQL given as text"),
            ("SELECT * FROM ts_stat('select 1')", "runs SQL given as text"),
            ("SELECT pg_advisory_lock(1)", "advisory lock"),
            ("SELECT * FROM pg_stat_get_activity(NULL)", "pg_ functions"),
            ("SELECT upper(PG_READ_FILE('x'))", "server's files"),
            ("SELECT other_schema.f()", "outside this tenant's schema"),
            ("SELECT * FROM events WHERE event_type = (SELECT pg_read_file('x'))", "server's files"),
        ] {
            refused(sql, says);
        }
        ok("SELECT acme.my_function(), pg_catalog.upper('a'), current_setting('search_path')");
    }

    #[test]
    fn strings_and_comments_hide_nothing() {
        // With standard_conforming_strings (set for every query) a backslash
        // does not escape a quote: the catalog read is code, not string.
        refused("SELECT '\\' , (SELECT rolpassword FROM pg_authid) --'", "system catalog");
        refused("SELECT $x$ a $x$, (SELECT 1 FROM pg_authid)", "system catalog");
        refused("SELECT /* a /* nested */ comment */ 1 FROM pg_authid", "system catalog");
        ok("SELECT E'\\' FROM pg_authid'");
        ok("SELECT 'it''s' -- FROM pg_authid");
    }

    /// SQL read by PostgreSQL's lexical rules: what sqlparser would read
    /// otherwise, or what needs decoding, is refused, never let through.
    #[test]
    fn unicode_escapes_are_refused() {
        for sql in [
            r#"SELECT U&"pg\005fread\005ffile"('/etc/passwd') AS v"#,
            r#"SELECT u&"query\005fto\005fxml"('select 1', true, true, '')"#,
            r#"SELECT * FROM U&"pg\005fauthid""#,
            r#"SELECT U&'\0070g_authid'"#,
            r#"SELECT U&"d!0061t!+000061" UESCAPE '!' FROM events"#,
            r#"SELECT 1 FROM events WHERE u&'x' = 'x'"#,
            "SELECT 'a' uescape '!'",
        ] {
            refused(sql, "Unicode escapes");
        }
        // Not an escape: `u` and `&` apart, or a column named u.
        ok("SELECT u & 1 FROM (SELECT 3 AS u) t");
        ok("SELECT \"U&\" FROM (SELECT 1 AS \"U&\") t");
        ok("SELECT 'U&\"pg_read_file\"'");
    }

    #[test]
    fn strings_are_read_as_postgresql_reads_them() {
        // E'' strings: a backslash escapes the quote, so the catalog read
        // is inside the string, or outside it, as PostgreSQL sees it.
        ok("SELECT E'\\' FROM pg_authid'");
        refused("SELECT E'\\\\', (SELECT 1 FROM pg_authid) --'", "system catalog");
        ok("SELECT e'it\\'s', E'\\x41', E'a''b'");
        refused("SELECT E'\\'' , pg_read_file('/etc/passwd') --'", "server's files");
        // Dollar quoting, with and without tags; `$` inside names.
        ok("SELECT $$pg_read_file('x')$$, $body$ FROM pg_authid $body$");
        ok("SELECT $a$ $b$ pg_authid $b$ $a$");
        refused("SELECT $a$ x $a$, (SELECT 1 FROM pg_authid)", "system catalog");
        refused("SELECT x$$, (SELECT 1 FROM pg_authid), $$ FROM events $$", "system catalog");
        refused("SELECT a$b$ , pg_read_file('x') , $b$ FROM events $b$", "server's files");
        // Standard strings: no backslash escapes; doubled quotes.
        refused("SELECT '\\', pg_read_file('x') --'", "server's files");
        ok("SELECT 'a''b', 'pg_read_file(''x'')'");
        // Bit, hex and national strings.
        ok("SELECT B'101', X'ff', N'pg_authid'");
        // Comments: nested block comments; a line comment ends at \r too.
        refused("SELECT 1 /* a /* b */ FROM pg_authid */ , (SELECT 1 FROM pg_authid)", "system catalog");
        ok("SELECT 1 /* a /* b */ FROM pg_authid */");
        refused("SELECT 1 -- hidden?\r, (SELECT 1 FROM pg_authid)\n", "");
        refused("SELECT 1 +-- x\n(SELECT 1 FROM pg_authid)", "system catalog");
        // Left open.
        refused("SELECT 'abc", "not closed");
        refused("SELECT $x$ abc", "");
        refused("SELECT /* abc", "");
    }

    #[test]
    fn the_lexer_agrees_with_sqlparser_on_plain_sql() {
        for sql in [
            "SELECT 1.5e3, .5, 1e-2, $1, $2::int, a.b, \"x\"\"y\" FROM t -- end",
            "SELECT 'a'\n'b', E'\\n', x'1f', 1::text || 'é', 'ü' AS \"ñ\"",
            "SELECT * FROM events WHERE payload->>'a' = $1 AND payload @> '{}'::jsonb /* c */",
            "SELECT 'a\nb', /* x\n y */ 1 -- z\n, $$c\nd$$, \"e\nf\" FROM events\n\n WHERE 'é\nü' <> E'\\n'",
            "SELECT 1\r\n, 'a'\t-- tab\r\n FROM events",
        ] {
            ok(sql);
        }
    }

    #[test]
    fn advisory_locks_are_refused() {
        for sql in [
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_catalog.pg_advisory_xact_lock(hashtext('sluice:migrate'))",
            "SELECT pg_try_advisory_lock_shared(1, 2)",
            "SELECT PG_ADVISORY_LOCK(1)",
        ] {
            refused(sql, "advisory lock");
        }
    }

    #[test]
    fn the_parser_is_bounded() {
        let limits = Limits { max_bytes: 1000, max_tokens: 50 };
        let long = format!("SELECT '{}'", "x".repeat(1000));
        assert!(check_within(&long, "acme", limits).unwrap_err().contains("max_sql_bytes"));
        let many = format!("SELECT 1{}", "+1".repeat(30));
        assert!(check_within(&many, "acme", limits).unwrap_err().contains("max_sql_tokens"));
        // Nesting is bounded by sqlparser's recursion limit.
        let nested = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
        refused(&nested, "recursion limit");
    }

    /// The deepest syntax tree the largest token cap allows is walked and
    /// dropped on the checks' thread without overflowing its stack.
    #[tokio::test]
    async fn the_deepest_tree_fits_the_checks_stack() {
        let queries =
            Queries::new(QueryConfig { max_sql_bytes: 2 << 20, max_sql_tokens: MAX_SQL_TOKENS, ..Default::default() });
        let terms = MAX_SQL_TOKENS / 2 - 1;
        let sum = format!("SELECT 1{}", "+1".repeat(terms - 1));
        assert!(queries.check(&sum, "acme").await.is_ok());
        let unions = format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(MAX_SQL_TOKENS / 5 - 1));
        assert!(queries.check(&unions, "acme").await.is_ok());
        let nots = format!("SELECT {}true", "NOT ".repeat(MAX_SQL_TOKENS - 2));
        let _ = queries.check(&nots, "acme").await;
    }

    #[test]
    fn trailing_semicolons_and_comments_are_cut() {
        assert_eq!(ok("SELECT 1;"), "SELECT 1");
        assert_eq!(ok("SELECT 1 ; ;  -- done\n"), "SELECT 1 ");
        assert_eq!(ok("SELECT 'é;'\n;"), "SELECT 'é;'\n");
        assert_eq!(ok("SELECT 1 -- no semicolon"), "SELECT 1 -- no semicolon");
    }

    #[test]
    fn text_parameters_keep_their_json_text() {
        let text = |v: serde_json::Value| TextParam::from_json(&v).0;
        assert_eq!(text(json!("order.completed")), Some("order.completed".into()));
        assert_eq!(text(json!(9007199254740993u64)), Some("9007199254740993".into()));
        assert_eq!(text(json!(1.5)), Some("1.5".into()));
        assert_eq!(text(json!(true)), Some("true".into()));
        assert_eq!(text(json!(null)), None);
        assert_eq!(text(json!({"a": [1]})), Some(r#"{"a":[1]}"#.into()));
    }

    #[test]
    fn config_is_checked() {
        assert!(QueryConfig::default().validate().is_ok());
        assert!(QueryConfig { pool_size: 0, ..Default::default() }.validate().is_err());
        assert!(QueryConfig { statement_timeout_ms: 0, ..Default::default() }.validate().is_err());
        assert!(QueryConfig { max_rows: 0, ..Default::default() }.validate().is_err());
        assert!(QueryConfig { max_bytes: 10, ..Default::default() }.validate().is_err());
        assert!(QueryConfig { max_sql_tokens: MAX_SQL_TOKENS + 1, ..Default::default() }.validate().is_err());
        assert!(QueryConfig { reader_user: Some(" ".into()), ..Default::default() }.validate().is_err());
        assert!(QueryConfig { reader_password: Some("pw".into()), ..Default::default() }.validate().is_err());
    }
}
