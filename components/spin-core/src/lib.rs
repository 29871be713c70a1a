//! The Spin app's one code path, native and wasm alike: a request runs
//! through the very normalizers the host's built-in component runs, its
//! plans become one batched upsert per table (the sdk's [`Upsert`]), those
//! run through an [`Executor`], and the answer is the host's JSON.
//!
//! The Spin component (`components/spin`) implements [`Executor`] with
//! spin-sdk's outbound PostgreSQL; the end-to-end tests implement it with
//! tokio-postgres against a real server. Both bind every column as one
//! `text[]` parameter, cast in SQL to the column's type: Spin binds arrays
//! of text, int4, int8 and numeric only, and has no timestamptz at all.
//!
//! What the host does that this does not: batching across requests (each
//! request is its own statements), write modes, dead letters, the spool.
//! Every statement is atomic on its own; no transaction spans statements,
//! as a Spin connection can go back to the pool with one left open. A
//! request that fails half-way can be sent again: every write is an
//! idempotent upsert.

use serde::Serialize;
use sluice_sdk::sql::{Upsert, create_table, quote_ident};
use sluice_sdk::{ColumnType, Outcome, Request, RequestError, Table, UpsertPlan, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// PostgreSQL's limit on the parameters of one statement. Rows travel as
/// one array per column, so a statement's values (rows × columns) are kept
/// under it: a bound on each statement's size.
pub const MAX_PARAMETERS: usize = 65_535;

/// Who the requests are for and where their rows go.
#[derive(Debug, Clone)]
pub struct Config {
    /// The tenant the component serves (request ids are derived from it).
    pub tenant: String,
    /// The schema tables are created in.
    pub schema: String,
    /// The tenant's settings for the normalizers: a JSON object.
    pub settings: String,
}

impl Default for Config {
    fn default() -> Config {
        Config { tenant: "default".into(), schema: "public".into(), settings: "{}".into() }
    }
}

/// An HTTP request as the component got it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Microseconds since the Unix epoch.
    pub received_at: i64,
}

/// A database error: its SQLSTATE when the server sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    pub sqlstate: Option<String>,
    pub message: String,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} (SQLSTATE {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// How a failure is handled, by SQLSTATE class (as the host's writer does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The table or schema is not there yet: create it and try again.
    Missing,
    /// The rows: bisect to find the events the database refuses.
    Data,
    /// Anything else: the request cannot be written now.
    Unavailable,
}

impl DbError {
    pub fn failure(&self) -> Failure {
        let Some(code) = self.sqlstate.as_deref() else { return Failure::Unavailable };
        match code {
            "42P01" | "3F000" => return Failure::Missing,
            _ => {}
        }
        match code.get(..2).unwrap_or("") {
            "08" | "53" | "57" | "58" | "XX" | "40" | "55" | "42" | "3D" | "3F" | "0A" | "25" | "28" | "2B" => {
                Failure::Unavailable
            }
            _ => Failure::Data,
        }
    }
}

/// Runs statements. Every call is one statement, atomic on its own.
#[allow(async_fn_in_trait)]
pub trait Executor {
    /// Runs a statement without parameters (DDL).
    async fn execute_ddl(&mut self, sql: &str) -> Result<(), DbError>;

    /// Runs an upsert with one `text[]` parameter per column (`None`: SQL
    /// null) and returns the `bigint` of each row it returns: the 1-based
    /// positions of the rows written.
    async fn upsert(&mut self, sql: &str, columns: &[Vec<Option<String>>]) -> Result<Vec<i64>, DbError>;
}

/// Which API a path serves, as the built-in component routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Events,
    Logflare,
    Logs,
}

impl Api {
    /// The API of a path: by how it ends, so `/t/acme/v1/events` is
    /// canonical events too.
    pub fn of(path: &str) -> Option<Api> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/v1/events") {
            Some(Api::Events)
        } else if path.ends_with("/v1/logs") {
            Some(Api::Logs)
        } else if path.ends_with("/api/logs") || path.ends_with("/logs") || path.ends_with("/logs/json") {
            Some(Api::Logflare)
        } else {
            None
        }
    }
}

/// Every table and template the normalizers declare (those of the built-in
/// component).
pub fn tables() -> Vec<Table> {
    let mut tables = sluice_events::tables();
    tables.extend(sluice_logflare::tables());
    tables.extend(sluice_structlog::tables());
    tables
}

/// Hands the request to the normalizer of its path: the built-in
/// component's dispatch, over the same libraries.
pub fn normalize(request: &Request) -> Result<Outcome, RequestError> {
    match Api::of(&request.path) {
        Some(Api::Events) => sluice_events::handle(request),
        Some(Api::Logs) => sluice_structlog::handle(request),
        Some(Api::Logflare) => sluice_logflare::handle(request),
        None => Err(RequestError::NotFound(format!(
            "this component serves /v1/events, /api/logs, /logs, /logs/json and /v1/logs, not {:?}",
            request.path
        ))),
    }
}

/// The HTTP answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u32>,
}

impl Answer {
    pub fn error(status: u16, message: impl Into<String>) -> Answer {
        Answer { status, body: serde_json::json!({ "error": message.into() }), retry_after: None }
    }

    /// The body's bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).expect("JSON values serialize")
    }
}

/// What the answer says about a request's events (the host's shape).
#[derive(Debug, Serialize, PartialEq)]
pub struct Tally {
    pub events: u32,
    pub inserted: u32,
    pub duplicates: u32,
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Rejected {
    pub index: u32,
    pub reason: String,
}

/// One table's rows, as statements ready to run.
#[derive(Debug)]
pub struct Statement {
    /// The table as it is created when missing.
    pub table: Table,
    /// The upsert, every parameter `text[]`.
    pub sql: String,
    pub chunks: Vec<Chunk>,
}

/// Rows of one statement: one text array per column, and each row's event.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub columns: Vec<Vec<Option<String>>>,
    pub events: Vec<u32>,
}

/// A request normalized and rendered: everything but the database.
#[derive(Debug)]
pub struct Prepared {
    pub api: Api,
    pub events: u32,
    /// Events refused so far, by index.
    pub rejected: BTreeMap<u32, String>,
    pub statements: Vec<Statement>,
}

/// Normalizes and renders a request. `Err`: the answer, at once (the
/// request itself is wrong).
pub fn prepare(config: &Config, incoming: Incoming) -> Result<Prepared, Answer> {
    let api = Api::of(&incoming.path);
    let request = Request {
        tenant: config.tenant.clone(),
        method: incoming.method,
        path: incoming.path,
        query: incoming.query,
        headers: incoming
            .headers
            .into_iter()
            .filter(|(name, _)| {
                !matches!(name.as_str(), "authorization" | "x-api-key" | "cookie" | "proxy-authorization")
            })
            .collect(),
        body: incoming.body,
        received_at: incoming.received_at,
        settings: config.settings.clone(),
    };
    let outcome = normalize(&request).map_err(|e| match e {
        RequestError::Malformed(m) => Answer::error(400, m),
        RequestError::UnsupportedMediaType(m) => Answer::error(415, m),
        RequestError::NotFound(m) => Answer::error(404, m),
    })?;
    let api = api.expect("a path without an API is not found");
    // The declarations are constant: made once per instance.
    static TABLES: std::sync::OnceLock<Vec<Table>> = std::sync::OnceLock::new();
    Ok(render(api, &config.schema, TABLES.get_or_init(tables), outcome))
}

/// Checks an outcome's plans against the declared tables and renders one
/// statement per table (as the host checks them: an event with any bad
/// row is rejected whole).
pub fn render(api: Api, schema: &str, declared: &[Table], outcome: Outcome) -> Prepared {
    let events = outcome.events;
    let mut rejected: BTreeMap<u32, String> = BTreeMap::new();
    for rejection in outcome.rejections {
        if rejection.index < events {
            rejected.entry(rejection.index).or_insert(rejection.reason);
        }
    }
    let last = events.saturating_sub(1);
    let mut checked: Vec<(Table, Upsert, UpsertPlan)> = Vec::new();
    for plan in outcome.plans {
        let upsert = table_of(declared, &plan).and_then(|table| {
            let upsert = Upsert::new(schema, &table, &plan.columns, &plan.conflict)
                .map_err(|e| format!("the component's plan is invalid: {e}"))?;
            Ok((table, upsert))
        });
        for row in &plan.rows {
            let problem = if row.event >= events {
                Some(format!("the component tied a row to event {} of {events}", row.event))
            } else {
                match &upsert {
                    Err(e) => Some(e.clone()),
                    Ok((table, _)) => table.check_row(&plan.columns, &row.values).err(),
                }
            };
            if let Some(reason) = problem {
                rejected.entry(row.event.min(last)).or_insert(reason);
            }
        }
        if let Ok((table, upsert)) = upsert {
            checked.push((table, upsert, plan));
        }
    }

    // Plans of the same shape share one statement.
    let mut statements: Vec<Statement> = Vec::new();
    let mut by_sql: HashMap<String, usize> = HashMap::new();
    for (table, upsert, plan) in checked {
        let sql = text_parameters(&upsert);
        let width = plan.columns.len();
        let per_chunk = (MAX_PARAMETERS / width).max(1);
        let capacity = plan.rows.len().min(per_chunk);
        let index = *by_sql.entry(sql.clone()).or_insert_with(|| {
            statements.push(Statement { table, sql, chunks: Vec::new() });
            statements.len() - 1
        });
        let chunks = &mut statements[index].chunks;
        for row in plan.rows {
            if rejected.contains_key(&row.event) {
                continue;
            }
            if chunks.last().is_none_or(|c| c.events.len() >= per_chunk) {
                chunks.push(Chunk {
                    columns: (0..width).map(|_| Vec::with_capacity(capacity)).collect(),
                    events: Vec::with_capacity(capacity),
                });
            }
            let chunk = chunks.last_mut().expect("pushed above");
            for (column, value) in chunk.columns.iter_mut().zip(row.values) {
                column.push(text(value));
            }
            chunk.events.push(row.event);
        }
    }
    statements.retain(|s| !s.chunks.is_empty());
    Prepared { api, events, rejected, statements }
}

/// The table a plan writes: declared, or an instance of a declared
/// template (the host's rules).
fn table_of(declared: &[Table], plan: &UpsertPlan) -> Result<Table, String> {
    match &plan.template {
        None => declared.iter().find(|t| t.name == plan.table && !t.template).cloned().ok_or_else(|| {
            format!("the component's plan is invalid: it writes table {:?}, which it does not declare", plan.table)
        }),
        Some(template) => sluice_sdk::sql::template_instance(declared, template, &plan.table),
    }
}

/// The upsert with every parameter taken as `text[]` and cast to its
/// column's array type in SQL: `$1::uuid[]` becomes `$1::text[]::uuid[]`.
pub fn text_parameters(upsert: &Upsert) -> String {
    let mut sql = upsert.sql.clone();
    for (i, ty) in upsert.param_types.iter().enumerate() {
        if *ty == ColumnType::Text {
            continue;
        }
        let typed = format!("${}::{}[]", i + 1, ty.sql_name());
        let cast = format!("${}::text[]::{}[]", i + 1, ty.sql_name());
        debug_assert_eq!(sql.matches(&typed).count(), 1, "{sql}");
        sql = sql.replacen(&typed, &cast, 1);
    }
    sql
}

/// A value in PostgreSQL's text input form (`None`: null).
pub fn text(value: Value) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        Value::Boolean(b) => if b { "true" } else { "false" }.to_owned(),
        Value::Int8(i) => i.to_string(),
        Value::Float8(f) if f.is_nan() => "NaN".to_owned(),
        Value::Float8(f) if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned(),
        // The shortest text that reads back as the same double.
        Value::Float8(f) => format!("{f:?}"),
        Value::Numeric(s) | Value::Text(s) | Value::Jsonb(s) => s,
        Value::Uuid((hi, lo)) => uuid_text(((hi as u128) << 64) | lo as u128),
        Value::Timestamptz(micros) => timestamp_text(micros),
        Value::Bytea(bytes) => {
            let mut out = String::with_capacity(2 + bytes.len() * 2);
            out.push_str("\\x");
            for b in bytes {
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
            out
        }
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn uuid_text(id: u128) -> String {
    let mut out = Vec::with_capacity(36);
    for i in 0..16 {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        let byte = (id >> (120 - 8 * i)) as u8;
        out.push(HEX[(byte >> 4) as usize]);
        out.push(HEX[(byte & 15) as usize]);
    }
    String::from_utf8(out).expect("ASCII")
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00` (with ` BC` before year 1): ISO input
/// that PostgreSQL reads the same under any DateStyle and TimeZone.
fn timestamp_text(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let of_day = micros.rem_euclid(86_400_000_000);
    let (year, month, day) = civil_from_days(days);
    let (seconds, fraction) = (of_day / 1_000_000, of_day % 1_000_000);
    let (year, era) = if year <= 0 { (1 - year, " BC") } else { (year, "") };
    if year > 9999 {
        let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
        return format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{fraction:06}+00{era}");
    }
    let mut out = Vec::with_capacity(33);
    let digits = |value: u64, width: u32, out: &mut Vec<u8>| {
        for i in (0..width).rev() {
            out.push(b'0' + (value / 10u64.pow(i) % 10) as u8);
        }
    };
    digits(year as u64, 4, &mut out);
    out.push(b'-');
    digits(month.into(), 2, &mut out);
    out.push(b'-');
    digits(day.into(), 2, &mut out);
    out.push(b' ');
    digits((seconds / 3600) as u64, 2, &mut out);
    out.push(b':');
    digits((seconds / 60 % 60) as u64, 2, &mut out);
    out.push(b':');
    digits((seconds % 60) as u64, 2, &mut out);
    out.push(b'.');
    digits(fraction as u64, 6, &mut out);
    out.extend_from_slice(b"+00");
    out.extend_from_slice(era.as_bytes());
    String::from_utf8(out).expect("ASCII")
}

/// (year, month, day) of a day counted from 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Normalizes, writes and answers one request: the whole Spin handler but
/// for HTTP and the connection.
pub async fn handle(executor: &mut impl Executor, config: &Config, incoming: Incoming) -> Answer {
    let logflare = Api::of(&incoming.path) == Some(Api::Logflare);
    let answer = match prepare(config, incoming) {
        Ok(prepared) => write(executor, &config.schema, prepared).await,
        Err(answer) => answer,
    };
    if logflare { logflare_answer(answer) } else { answer }
}

/// Writes a prepared request and tallies it.
pub async fn write(executor: &mut impl Executor, schema: &str, prepared: Prepared) -> Answer {
    let Prepared { events, mut rejected, statements, .. } = prepared;
    // An event counts as inserted when any of its rows was written.
    let mut stored: BTreeMap<u32, bool> = BTreeMap::new();
    for statement in &statements {
        let mut created = false;
        for chunk in &statement.chunks {
            match write_chunk(executor, schema, statement, chunk, &mut created).await {
                Ok(Written { rows, refused }) => {
                    for (event, reason) in refused {
                        rejected.entry(event).or_insert_with(|| format!("the database refused it: {reason}"));
                    }
                    for (event, written) in chunk.events.iter().zip(rows) {
                        *stored.entry(*event).or_default() |= written;
                    }
                }
                Err(e) => {
                    let mut answer = Answer::error(503, format!("the database is unavailable: {e}"));
                    answer.retry_after = Some(1);
                    return answer;
                }
            }
        }
    }
    stored.retain(|event, _| !rejected.contains_key(event));
    let tally = Tally {
        events,
        inserted: stored.values().filter(|w| **w).count() as u32,
        duplicates: stored.values().filter(|w| !**w).count() as u32,
        rejected: rejected.into_iter().map(|(index, reason)| Rejected { index, reason }).collect(),
    };
    let status = if tally.events > 0 && tally.rejected.len() as u32 == tally.events { 400 } else { 200 };
    Answer { status, body: serde_json::to_value(&tally).expect("a tally serializes"), retry_after: None }
}

struct Written {
    /// For each row of the chunk: written (true) or a duplicate.
    rows: Vec<bool>,
    /// Events the database refused alone, with why.
    refused: Vec<(u32, DbError)>,
}

/// Writes a chunk, creating its table when it is missing, and bisecting by
/// event while the database refuses the data.
async fn write_chunk(
    executor: &mut impl Executor,
    schema: &str,
    statement: &Statement,
    chunk: &Chunk,
    created: &mut bool,
) -> Result<Written, DbError> {
    let mut written = Written { rows: vec![false; chunk.events.len()], refused: Vec::new() };
    let all: Vec<u32> = chunk.events.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    let total = all.len();
    let mut pending = vec![all];
    while let Some(units) = pending.pop() {
        // The rows of these events: their positions in the chunk.
        let rows: Vec<usize> = if units.len() == total {
            (0..chunk.events.len()).collect()
        } else {
            let set: BTreeSet<u32> = units.iter().copied().collect();
            (0..chunk.events.len()).filter(|&r| set.contains(&chunk.events[r])).collect()
        };
        let part;
        let columns = if rows.len() == chunk.events.len() {
            &chunk.columns
        } else {
            part = chunk.columns.iter().map(|c| rows.iter().map(|&r| c[r].clone()).collect()).collect::<Vec<_>>();
            &part
        };
        let result = loop {
            match executor.upsert(&statement.sql, columns).await {
                Err(e) if e.failure() == Failure::Missing && !*created => {
                    create(executor, schema, &statement.table).await?;
                    *created = true;
                }
                result => break result,
            }
        };
        match result {
            Ok(positions) => {
                for position in positions {
                    if let Some(&row) = usize::try_from(position - 1).ok().and_then(|p| rows.get(p)) {
                        written.rows[row] = true;
                    }
                }
            }
            Err(e) if e.failure() == Failure::Data && units.len() == 1 => written.refused.push((units[0], e)),
            Err(e) if e.failure() == Failure::Data => {
                let mut first = units;
                let second = first.split_off(first.len() / 2);
                pending.push(second);
                pending.push(first);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Creates the schema and `table` with its indexes: the sdk's DDL, as the
/// host runs it. Each statement is idempotent; one that loses a race with
/// another request creating the same thing is run once more.
pub async fn create(executor: &mut impl Executor, schema: &str, table: &Table) -> Result<(), DbError> {
    let invalid = |message: String| DbError { sqlstate: None, message };
    let mut statements = vec![format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))];
    statements.extend(create_table(schema, table).map_err(invalid)?);
    for sql in statements {
        if let Err(e) = executor.execute_ddl(&sql).await {
            let raced = matches!(e.sqlstate.as_deref(), Some("23505" | "42P07" | "42P06" | "42710"));
            if !raced {
                return Err(e);
            }
            executor.execute_ddl(&sql).await?;
        }
    }
    Ok(())
}

/// Logflare's clients read `message`: `"Logged!"` on success, else the
/// error (the host's answer on its Logflare routes).
fn logflare_answer(mut answer: Answer) -> Answer {
    if let serde_json::Value::Object(object) = &mut answer.body {
        let message = match object.get("error") {
            Some(serde_json::Value::String(e)) => e.clone(),
            _ if (200..300).contains(&answer.status) => "Logged!".to_owned(),
            _ => "No event was logged: every event was rejected".to_owned(),
        };
        object.insert("message".into(), message.into());
    }
    answer
}

#[cfg(test)]
mod tests;
