//! The `sluice` commands besides `serve`: `component check` validates a
//! normalizer offline with the engine the service uses, and `tenant …`
//! manages tenants through the admin API of a running service.
//!
//! Every command prints human-readable text on stdout (`--json` prints the
//! API's answer instead) and reports a failure as `error: <reason>` on
//! stderr with exit status 1.

use crate::config::Limits;
use crate::hex::hex;
use crate::runtime::Runtime;
use crate::tenants::spec::{BUILTIN, hash_key, key_id};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use sluice_sdk::sql::{check_ident, create_table, index_name};
use sluice_sdk::{ColumnDefault, IndexMethod, Table};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where the admin API is unless told otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8080";

/// Prints `error: <reason>` for a failed command; the exit status.
pub fn exit(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut reason = format!("{e:#}");
            // Some compiler errors span lines; a reason is one.
            if reason.contains('\n') {
                reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            let _ = writeln!(std::io::stderr(), "error: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`sluice tenant list | head`).
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

// ---------------------------------------------------------------------------
// sluice component …

#[derive(Subcommand)]
pub enum ComponentCommand {
    /// Validate a normalizer component offline, with the service's engine.
    ///
    /// Checks that it compiles, implements sluice:ingest/normalizer and
    /// declares valid tables; prints its digest, size, compile time and
    /// tables. Exits 1 with the reason when it does not.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The component (a .wasm file built for wasm32-wasip2).
    pub file: PathBuf,
    /// The schema the tables' SQL is written for.
    #[arg(long, default_value = "public")]
    pub schema: String,
    /// Also print the SQL that creates the tables and their indexes.
    #[arg(long)]
    pub sql: bool,
    /// Keep the compiled component in this folder (e.g. the service's
    /// `<data_dir>/cache`) [default: a temporary folder, removed after].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

pub fn component(command: ComponentCommand) -> Result<()> {
    match command {
        ComponentCommand::Check(args) => check(&args),
    }
}

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

fn check(args: &CheckArgs) -> Result<()> {
    let wasm = std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let name =
        args.file.file_name().map_or_else(|| args.file.display().to_string(), |n| n.to_string_lossy().into_owned());
    preflight(&name, &wasm)?;
    check_ident(&args.schema).map_err(|e| anyhow!("--schema: {e}"))?;
    let temp;
    let cache_dir = match &args.cache_dir {
        Some(dir) => dir.as_path(),
        None => {
            temp = TempDir::new("sluice-check")?;
            temp.0.as_path()
        }
    };
    let cached_before = count_files(cache_dir);
    let runtime = Runtime::new(&Limits::default(), cache_dir)?;
    let started = Instant::now();
    let normalizer = runtime.load(&name, &wasm)?;
    let elapsed = started.elapsed();
    // The compiled form is written only when it was not in the cache.
    let from_cache = args.cache_dir.is_some() && count_files(cache_dir) == cached_before;
    let mut ddl = Vec::new();
    for table in normalizer.tables.iter().filter(|t| !t.template) {
        ddl.extend(create_table(&args.schema, table).map_err(|e| anyhow!("component {name}: {e}"))?);
    }
    let report = CheckReport {
        name: &name,
        digest: &normalizer.digest,
        size: wasm.len(),
        elapsed,
        from_cache,
        tables: &normalizer.tables,
        schema: &args.schema,
        ddl: args.sql.then_some(&ddl[..]),
    };
    out(&report.render());
    Ok(())
}

/// Plainer reasons than the compiler's for files that are not components.
fn preflight(name: &str, wasm: &[u8]) -> Result<()> {
    if !wasm.starts_with(b"\0asm") || wasm.len() < 8 {
        bail!("{name} is not a WebAssembly file (it does not start with \\0asm)");
    }
    if wasm[4..8] == [1, 0, 0, 0] {
        bail!(
            "{name} is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
             (see docs/authoring.md)"
        );
    }
    Ok(())
}

/// What `component check` found.
struct CheckReport<'a> {
    name: &'a str,
    digest: &'a str,
    size: usize,
    elapsed: Duration,
    from_cache: bool,
    tables: &'a [Table],
    schema: &'a str,
    ddl: Option<&'a [String]>,
}

impl CheckReport<'_> {
    fn render(&self) -> String {
        let mut s = format!("{}: a valid sluice:ingest/normalizer component\n", self.name);
        let timing = if self.from_cache {
            format!("{} (compiled form from the cache)", duration(self.elapsed))
        } else {
            duration(self.elapsed)
        };
        let names: Vec<&str> = self.tables.iter().map(|t| t.name.as_str()).collect();
        s += &fields(&[
            ("digest", format!("sha256:{}", self.digest)),
            ("size", format!("{} bytes ({})", thousands(self.size as u64), bytes(self.size as u64))),
            (if self.from_cache { "load" } else { "compile" }, timing),
            (
                "tables",
                if names.is_empty() { "none".into() } else { format!("{} ({})", names.len(), names.join(", ")) },
            ),
        ]);
        for table in self.tables {
            match table.template {
                true => s += &format!("\ntemplate {} (its tables are created on first use)\n", table.name),
                false => s += &format!("\ntable {}\n", table.name),
            }
            let rows = table
                .columns
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.data_type.sql_name().to_owned(),
                        if c.nullable { "no" } else { "yes" }.to_owned(),
                        c.default.as_ref().map_or_else(String::new, default_text),
                    ]
                })
                .collect();
            s += &indent(&render_table(&["COLUMN", "TYPE", "NOT NULL", "DEFAULT"], rows, &[]), "  ");
            let key = if table.primary_key.is_empty() { "none".into() } else { table.primary_key.join(", ") };
            let mut extra = vec![("primary key", key)];
            for index in &table.indexes {
                let columns: Vec<String> = index
                    .columns
                    .iter()
                    .map(|c| if c.descending { format!("{} DESC", c.name) } else { c.name.clone() })
                    .collect();
                let method = match index.method {
                    IndexMethod::Btree => "btree",
                    IndexMethod::Brin => "brin",
                    IndexMethod::Gin => "gin",
                };
                let unique = if index.unique { "unique " } else { "" };
                extra.push((
                    "index",
                    format!("{} {unique}{method} ({})", index_name(&table.name, &index.name), columns.join(", ")),
                ));
            }
            s += &indent(&fields(&extra), "  ");
        }
        if let Some(ddl) = self.ddl {
            s += &format!("\n-- the tables in schema {:?}\n", self.schema);
            for statement in ddl {
                s += statement;
                s += ";\n";
            }
        }
        s
    }
}

/// A column default as SQL would show it.
fn default_text(default: &ColumnDefault) -> String {
    use sluice_sdk::Value;
    use sluice_sdk::sql::quote_literal;
    match default {
        ColumnDefault::Now => "now()".into(),
        ColumnDefault::Serial => "a sequence (bigserial)".into(),
        ColumnDefault::Constant(value) => match value {
            Value::Null => "NULL".into(),
            Value::Boolean(b) => b.to_string(),
            Value::Int8(i) => i.to_string(),
            Value::Float8(f) => f.to_string(),
            Value::Numeric(n) => n.clone(),
            Value::Text(t) | Value::Jsonb(t) => quote_literal(t),
            Value::Uuid((hi, lo)) => {
                let h = format!("{hi:016x}{lo:016x}");
                format!("'{}-{}-{}-{}-{}'", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
            }
            Value::Timestamptz(micros) => {
                let seconds = micros.div_euclid(1_000_000);
                format!("'{}.{:06}+00'", datetime(seconds), micros.rem_euclid(1_000_000))
            }
            Value::Bytea(b) => format!("'\\x{}'", hex(b)),
        },
    }
}

// ---------------------------------------------------------------------------
// sluice dlq …

#[derive(Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub admin: AdminOptions,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List a tenant's dead letters: rows the database refused, with why.
    List {
        /// The tenant id (`default` for the default tenant).
        tenant: String,
        /// Only rows for this table.
        #[arg(long)]
        table: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Move dead letters into their tables, once the cause is fixed.
    ///
    /// Each row is written with the conflict handling it first had, so a
    /// replay run twice writes nothing twice; rows that fail again stay,
    /// with the new reason.
    Replay {
        /// The tenant id (`default` for the default tenant).
        tenant: String,
        /// Only rows for this table.
        #[arg(long)]
        table: Option<String>,
    },
    /// Delete dead letters for good.
    Purge {
        /// The tenant id (`default` for the default tenant).
        tenant: String,
        /// Only rows for this table.
        #[arg(long)]
        table: Option<String>,
    },
}

pub async fn dlq(args: DlqArgs) -> Result<()> {
    let admin = Admin::new(&args.admin)?;
    match args.command {
        DlqCommand::List { tenant, table, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(table.map(|t| ("table", t)));
            let answer = admin.call_query(Method::GET, &[&tenant, "dead-letters"], &query, Body::None).await?;
            if args.admin.json {
                out(&format!("{}\n", answer.text.trim_end()));
                return Ok(());
            }
            out(&render_dead_letters(&answer.json));
        }
        DlqCommand::Replay { tenant, table } => {
            let mut selection = json!({ "limit": 500 });
            if let Some(table) = &table {
                selection["table"] = json!(table);
            }
            let listed =
                admin.call_query(Method::GET, &[&tenant, "dead-letters"], &[("limit", "1".into())], Body::None).await?;
            let total = listed.json["total"].as_u64().unwrap_or(0);
            let bar = progress_bar(total, "replaying");
            let (mut replayed, mut failed) = (0, 0);
            loop {
                let answer = admin
                    .call(Method::POST, &[&tenant, "dead-letters", "replay"], Body::Json(selection.clone()))
                    .await?;
                let done = answer.json["replayed"].as_u64().unwrap_or(0) + answer.json["failed"].as_u64().unwrap_or(0);
                replayed += answer.json["replayed"].as_u64().unwrap_or(0);
                failed += answer.json["failed"].as_u64().unwrap_or(0);
                bar.inc(done);
                match answer.json["last_id"].as_i64() {
                    Some(last) if answer.json["remaining"].as_i64().unwrap_or(0) > 0 => {
                        selection["after_id"] = json!(last)
                    }
                    _ => break,
                }
            }
            bar.finish_and_clear();
            out(&format!(
                "replayed {} dead letters of tenant {tenant}{}\n",
                thousands(replayed),
                if failed > 0 {
                    format!("; {} failed again and stay (see `sluice dlq list {tenant}`)", thousands(failed))
                } else {
                    String::new()
                }
            ));
        }
        DlqCommand::Purge { tenant, table } => {
            let query: Vec<(&str, String)> = table.map(|t| ("table", t)).into_iter().collect();
            let answer = admin.call_query(Method::DELETE, &[&tenant, "dead-letters"], &query, Body::None).await?;
            out(&format!(
                "purged {} dead letters of tenant {tenant}\n",
                thousands(answer.json["purged"].as_u64().unwrap_or(0))
            ));
        }
    }
    Ok(())
}

/// A progress bar on stderr, drawn only when it is a terminal.
fn progress_bar(total: u64, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({per_sec}, {eta} left)")
            .expect("a valid template"),
    );
    bar.set_message(what);
    bar
}

fn render_dead_letters(answer: &Value) -> String {
    let letters = answer["dead_letters"].as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let rows = letters
        .iter()
        .map(|l| {
            vec![
                l["id"].to_string(),
                l["table"].as_str().unwrap_or("").to_owned(),
                l["sqlstate"].as_str().unwrap_or("").to_owned(),
                l["attempts"].to_string(),
                l["last_seen"].as_str().unwrap_or("").chars().take(19).collect(),
                l["message"].as_str().unwrap_or("").chars().take(80).collect(),
            ]
        })
        .collect();
    let mut text = render_table(&["ID", "TABLE", "SQLSTATE", "ATTEMPTS", "LAST SEEN", "REASON"], rows, &[0, 3]);
    let total = answer["total"].as_u64().unwrap_or(0);
    if total > letters.len() as u64 {
        text.push_str(&format!("({} of {} shown; --limit shows more)\n", letters.len(), thousands(total)));
    }
    text
}

// ---------------------------------------------------------------------------
// sluice fleet

#[derive(Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub admin: AdminOptions,
}

/// `sluice fleet`: the live hosts on the service database of the host asked.
pub async fn fleet(args: FleetArgs) -> Result<()> {
    let admin = Admin::new(&args.admin)?;
    let answer = admin.send(Method::GET, &["fleet"], &[], Body::None).await?;
    if args.admin.json {
        out(&format!("{}\n", answer.text.trim_end()));
        return Ok(());
    }
    out(&render_fleet(&answer.json));
    Ok(())
}

fn render_fleet(answer: &Value) -> String {
    let this = answer["this"].as_str().unwrap_or("");
    let hosts = answer["hosts"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let rows = hosts
        .iter()
        .map(|h| {
            let id = h["id"].as_str().unwrap_or("").to_owned();
            let beat = (now_ms - h["heartbeat_at_ms"].as_i64().unwrap_or(now_ms)).max(0) as f64 / 1000.0;
            vec![
                if id == this { format!("{id} *") } else { id },
                h["address"].as_str().unwrap_or("").to_owned(),
                h["version"].as_str().unwrap_or("").to_owned(),
                h["registry_version"].as_i64().map_or("-".to_owned(), |v| v.to_string()),
                if h["draining"].as_bool() == Some(true) { "draining".to_owned() } else { "serving".to_owned() },
                thousands(h["requests"].as_u64().unwrap_or(0)),
                thousands(h["events_inserted"].as_u64().unwrap_or(0)),
                thousands(h["spooled"].as_u64().unwrap_or(0)),
                format!("{beat:.1}s ago"),
            ]
        })
        .collect();
    let mut text = render_table(
        &["HOST", "ADDRESS", "VERSION", "REGISTRY", "STATE", "REQUESTS", "EVENTS", "SPOOLED", "HEARTBEAT"],
        rows,
        &[3, 5, 6, 7],
    );
    text.push_str(&format!("{} live host(s); * answered this request\n", hosts.len()));
    text
}

// ---------------------------------------------------------------------------
// sluice tenant …

#[derive(Args)]
pub struct TenantArgs {
    #[command(flatten)]
    pub admin: AdminOptions,
    #[command(subcommand)]
    pub command: TenantCommand,
}

#[derive(Args)]
pub struct AdminOptions {
    /// The address of the service's admin API.
    #[arg(long, global = true, display_order = 100, value_name = "URL", env = "SLUICE_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
    pub admin_url: String,
    /// The service's admin_token (required; prefer the environment variable:
    /// arguments are visible to other users in `ps`).
    #[arg(
        long,
        global = true,
        display_order = 101,
        value_name = "TOKEN",
        env = "SLUICE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Print the API's JSON answer as it came instead of text.
    #[arg(long, global = true, display_order = 102)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// List the tenants: component, keys and counters since the service started.
    List,
    /// Show one tenant: component, tables, schema, key ids, limits, counters.
    Show {
        /// The tenant id.
        id: String,
    },
    /// Create a tenant. With no --key, Sluice makes one and prints it, once.
    Create {
        /// The tenant id: 1 to 63 letters, digits, '-' or '_'.
        id: String,
        /// `builtin:standard`, or `sha256:<digest>` of a component the service
        /// already stores [default: builtin:standard].
        #[arg(long, value_name = "COMPONENT")]
        component: Option<String>,
        /// Write to this schema of the service's database [default: the
        /// service's schema].
        #[arg(long, value_name = "SCHEMA")]
        schema: Option<String>,
        /// An API key to accept (at least 16 characters); repeatable.
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Delete a tenant: its keys stop working at once.
    ///
    /// Its tables and rows stay in the database.
    Delete {
        /// The tenant id.
        id: String,
    },
    /// Upload a component and switch the tenant to it.
    ///
    /// The service validates it first (it compiles, implements the contract,
    /// its tables migrate in the tenant's database) and switches atomically;
    /// if it refuses it (HTTP 422, with the reason), the old component keeps
    /// serving.
    Upload {
        /// The tenant id.
        id: String,
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Add an API key to a tenant. With no --key, Sluice makes one and prints it, once.
    AddKey {
        /// The tenant id.
        id: String,
        /// The key to add (at least 16 characters).
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Revoke an API key by its id (`sluice tenant show ID` lists them).
    RevokeKey {
        /// The tenant id.
        id: String,
        /// The key's id: 12 hex digits.
        key_id: String,
    },
}

pub async fn tenant(args: TenantArgs) -> Result<()> {
    let admin = Admin::new(&args.admin)?;
    let json = args.admin.json;
    let answer = match &args.command {
        TenantCommand::List => admin.call(Method::GET, &[], Body::None).await?,
        TenantCommand::Show { id } => admin.call(Method::GET, &[id], Body::None).await?,
        TenantCommand::Create { id, component, schema, keys } => {
            let mut spec = json!({ "id": id });
            if let Some(component) = component {
                check_component_name(component)?;
                spec["component"] = json!(component);
            }
            if let Some(schema) = schema {
                spec["database"] = json!({ "schema": schema });
            }
            if !keys.is_empty() {
                spec["keys"] = json!(keys);
            }
            admin.call(Method::POST, &[], Body::Json(spec)).await?
        }
        TenantCommand::Delete { id } => admin.call(Method::DELETE, &[id], Body::None).await?,
        TenantCommand::Upload { id, file } => {
            let wasm = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
            admin.call(Method::PUT, &[id, "component"], Body::Wasm(wasm)).await?
        }
        TenantCommand::AddKey { id, key } => {
            let body = match key {
                Some(key) => Body::Json(json!({ "key": key })),
                None => Body::None,
            };
            admin.call(Method::POST, &[id, "keys"], body).await?
        }
        TenantCommand::RevokeKey { id, key_id } => {
            admin.call(Method::DELETE, &[id, "keys", key_id], Body::None).await?
        }
    };
    if json {
        if !answer.text.is_empty() {
            out(&format!("{}\n", answer.text.trim_end()));
        }
        return Ok(());
    }
    let value = &answer.json;
    let text = match &args.command {
        TenantCommand::List => render_list(value),
        TenantCommand::Show { .. } => render_show(value),
        TenantCommand::Create { keys, .. } => render_created(value, keys),
        TenantCommand::Delete { id } => format!("deleted tenant {id} (its tables and rows stay in the database)\n"),
        TenantCommand::Upload { id, .. } => render_uploaded(id, value),
        TenantCommand::AddKey { id, key } => render_added_key(id, value, key.is_some()),
        TenantCommand::RevokeKey { id, key_id } => format!("revoked key {key_id} of tenant {id}\n"),
    };
    out(&text);
    Ok(())
}

/// What `create --component` may name: the service reads any other value as
/// a path on its own machine, which the CLI does not mean to send.
fn check_component_name(component: &str) -> Result<()> {
    let digest = component.strip_prefix("sha256:");
    if component == BUILTIN || digest.is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Ok(());
    }
    bail!(
        "--component must be {BUILTIN} or sha256:<64 hex digits> of a stored component; \
         to use a .wasm file, create the tenant and then run `sluice tenant upload ID FILE.wasm`"
    )
}

enum Body {
    None,
    Json(Value),
    Wasm(Vec<u8>),
}

/// A successful answer of the admin API.
struct Answer {
    text: String,
    /// `null` when the answer has no body (204).
    json: Value,
}

/// A client of one service's admin API.
struct Admin {
    base: Url,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(options: &AdminOptions) -> Result<Admin> {
        let Some(token) = options.admin_token.clone().filter(|t| !t.is_empty()) else {
            bail!("the admin token is required: set SLUICE_ADMIN_TOKEN (or pass --admin-token)");
        };
        let base = parse_admin_url(&options.admin_url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // An upload compiles and migrates before it answers.
            .timeout(Duration::from_secs(600))
            .build()
            .context("set up the HTTP client")?;
        Ok(Admin { base, token, http })
    }

    /// `METHOD <base>/admin/tenants/<segments…>`: the answer of a 2xx, else
    /// the API's error message and the status.
    async fn call(&self, method: Method, segments: &[&str], body: Body) -> Result<Answer> {
        self.call_query(method, segments, &[], body).await
    }

    /// As [`Admin::call`], with query parameters.
    async fn call_query(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Body,
    ) -> Result<Answer> {
        self.send(method, &[&["tenants"], segments].concat(), query, body).await
    }

    /// `METHOD <base>/admin/<segments…>`.
    async fn send(&self, method: Method, segments: &[&str], query: &[(&str, String)], body: Body) -> Result<Answer> {
        let mut url = admin_endpoint(&self.base, segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Wasm(bytes) => request.header("content-type", "application/wasm").body(bytes),
        };
        let response = request.send().await.map_err(|e| self.connect_error(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.connect_error(&e))?;
        if !status.is_success() {
            return Err(api_error(status, &text, &self.base));
        }
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| {
                format!("{} answered HTTP {status} with something other than JSON; is it a Sluice service?", self.base)
            })?
        };
        Ok(Answer { text, json })
    }

    fn connect_error(&self, e: &reqwest::Error) -> anyhow::Error {
        let url = self.base.as_str().trim_end_matches('/');
        let cause = io_cause(e);
        if e.is_connect() {
            let why = match cause.map(|io| io.kind()) {
                Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
                _ => root_cause(e),
            };
            anyhow!(
                "cannot connect to the Sluice admin API at {url}: {why} (is `sluice serve` running there? \
                 set --admin-url or SLUICE_ADMIN_URL)"
            )
        } else if e.is_timeout() {
            anyhow!("the Sluice admin API at {url} did not answer in time")
        } else {
            anyhow!("the request to the Sluice admin API at {url} failed: {}", root_cause(e))
        }
    }
}

/// The admin base URL: `http://host:port[/prefix]`.
fn parse_admin_url(text: &str) -> Result<Url> {
    let url =
        Url::parse(text).map_err(|e| anyhow!("--admin-url {text:?} is not a URL ({e}); e.g. {DEFAULT_ADMIN_URL}"))?;
    match url.scheme() {
        "http" if url.host().is_some() => Ok(url),
        "https" => bail!(
            "--admin-url {text}: this sluice speaks plain HTTP to the admin API (as `sluice serve` does); \
             reach a TLS endpoint through a tunnel or proxy"
        ),
        _ => bail!("--admin-url {text:?} must be an http:// URL, e.g. {DEFAULT_ADMIN_URL}"),
    }
}

/// `<base>/admin/tenants/<segments…>`, each segment percent-encoded.
fn admin_endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().push("admin").extend(segments);
    }
    url
}

/// The API's `{"error": …}` message (or whatever the body says) and the status.
fn api_error(status: StatusCode, body: &str, base: &Url) -> anyhow::Error {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.trim().chars().take(500).collect());
    let status = match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    };
    if message.is_empty() {
        let base = base.as_str().trim_end_matches('/');
        anyhow!("the server answered {status} with no message (is {base} a Sluice service with the admin API?)")
    } else {
        anyhow!("{message} ({status})")
    }
}

fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = e.source();
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = error.source();
    }
    None
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

// ---------------------------------------------------------------------------
// Rendering the admin API's answers.

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn u64_of(value: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(value, |v, k| v.get(k)).and_then(Value::as_u64).unwrap_or(0)
}

fn strings_of(value: &Value, key: &str) -> Vec<String> {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or_else(Vec::new, |items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
}

/// The component column: `builtin:standard`, or `sha256:` and 12 hex digits.
fn short_component(tenant: &Value) -> String {
    let component = str_of(tenant, "component");
    if component == BUILTIN {
        return component.to_owned();
    }
    let digest = str_of(tenant, "component_digest");
    let digest = if digest.is_empty() { component.trim_start_matches("sha256:") } else { digest };
    format!("sha256:{}", &digest[..digest.len().min(12)])
}

fn render_list(answer: &Value) -> String {
    let tenants = answer.get("tenants").and_then(Value::as_array).cloned().unwrap_or_default();
    if tenants.is_empty() {
        return "no tenants (requests without a key are taken, from loopback only, only with keyless_loopback)\n"
            .into();
    }
    let rows = tenants
        .iter()
        .map(|t| {
            vec![
                str_of(t, "id").to_owned(),
                short_component(t),
                strings_of(t, "keys").len().to_string(),
                thousands(u64_of(t, &["requests"])),
                thousands(u64_of(t, &["errors"])),
                thousands(u64_of(t, &["events", "inserted"])),
                thousands(u64_of(t, &["events", "duplicates"])),
                thousands(u64_of(t, &["events", "rejected"])),
            ]
        })
        .collect();
    render_table(
        &["ID", "COMPONENT", "KEYS", "REQUESTS", "ERRORS", "INSERTED", "DUPLICATES", "REJECTED"],
        rows,
        &[2, 3, 4, 5, 6, 7],
    )
}

fn render_show(tenant: &Value) -> String {
    let component = str_of(tenant, "component");
    let digest = str_of(tenant, "component_digest");
    let component =
        if component == BUILTIN { format!("{BUILTIN} (sha256:{digest})") } else { format!("sha256:{digest}") };
    let loaded = u64_of(tenant, &["loaded_at_ms"]);
    let tables = strings_of(tenant, "tables");
    let keys = strings_of(tenant, "keys");
    let own = str_of(tenant, "database") == "own";
    let limits = match tenant.get("limits").and_then(Value::as_object) {
        Some(limits) if !limits.is_empty() => {
            limits.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
        }
        _ => "the service's".into(),
    };
    fields(&[
        ("tenant", str_of(tenant, "id").to_owned()),
        ("component", component),
        ("loaded at", datetime((loaded / 1000) as i64) + " UTC"),
        ("tables", if tables.is_empty() { "none".into() } else { tables.join(", ") }),
        (
            "database",
            format!(
                "schema {} ({})",
                str_of(tenant, "schema"),
                if own { "the tenant's own database" } else { "the service's database" }
            ),
        ),
        ("keys", if keys.is_empty() { "none".into() } else { format!("{} ({})", keys.len(), keys.join(", ")) }),
        ("limits", limits),
        ("requests", thousands(u64_of(tenant, &["requests"]))),
        ("errors", thousands(u64_of(tenant, &["errors"]))),
        (
            "events",
            format!(
                "{} inserted, {} duplicates, {} rejected",
                thousands(u64_of(tenant, &["events", "inserted"])),
                thousands(u64_of(tenant, &["events", "duplicates"])),
                thousands(u64_of(tenant, &["events", "rejected"])),
            ),
        ),
        ("in flight", format!("{} bytes", thousands(u64_of(tenant, &["in_flight_bytes"])))),
    ])
}

const SHOWN_ONCE: &str = "  (shown this once: Sluice keeps only its SHA-256, so store it now)\n";

/// The line of a new key.
fn key_line(key: &str) -> String {
    format!("key {}  {key}\n{SHOWN_ONCE}", key_id(&hash_key(key)))
}

fn render_created(answer: &Value, given: &[String]) -> String {
    let tenant = answer.get("tenant").unwrap_or(&Value::Null);
    let tables = strings_of(tenant, "tables");
    let mut s = format!(
        "created tenant {}: component {}, schema {}, tables {}\n",
        str_of(tenant, "id"),
        short_component(tenant),
        str_of(tenant, "schema"),
        if tables.is_empty() { "none".into() } else { tables.join(", ") }
    );
    for key in strings_of(answer, "keys") {
        if given.contains(&key) {
            // The caller has it already; print only its id.
            s += &format!("key {}  (as given)\n", key_id(&hash_key(&key)));
        } else {
            s += &key_line(&key);
        }
    }
    s
}

fn render_added_key(id: &str, answer: &Value, given: bool) -> String {
    let key = str_of(answer, "key");
    let mut s = format!("added key {} to tenant {id}\n", str_of(answer, "key_id"));
    if !given {
        s += &key_line(key);
    }
    s
}

fn render_uploaded(id: &str, answer: &Value) -> String {
    let tables = strings_of(answer, "tables");
    let swap_ms = answer.get("swap_ms").and_then(Value::as_f64).unwrap_or(0.0);
    format!(
        "tenant {id} now runs component sha256:{}\n  tables {}\n  validated and swapped in {}\n",
        str_of(answer, "digest"),
        if tables.is_empty() { "none".into() } else { tables.join(", ") },
        duration(Duration::from_secs_f64(swap_ms.max(0.0) / 1000.0))
    )
}

// ---------------------------------------------------------------------------
// sluice bench

#[derive(Args)]
pub struct BenchArgs {
    /// The service: its base URL (the API's path is added), or a full
    /// ingest URL.
    #[arg(long, value_name = "URL", env = "SLUICE_URL", default_value = DEFAULT_ADMIN_URL)]
    pub url: String,
    /// A tenant's ingest API key, sent as X-API-KEY (not needed while the
    /// service has no tenants and is on this machine).
    #[arg(long, value_name = "KEY", env = "SLUICE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// What to send: canonical events to /v1/events, or Logflare log events
    /// to /api/logs (`{"batch": [events]}`).
    #[arg(long, value_enum, default_value = "events")]
    pub kind: sluice_loadgen::generate::Kind,
    /// --kind logflare: the source, by name (its table is made on first use).
    #[arg(long, value_name = "NAME", default_value = "bench")]
    pub source_name: String,
    /// Events in each request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub events_per_request: u32,
    /// Connections, each keeping one request in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// How long to send for: 10s, 500ms, 2m (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub duration: Duration,
    /// Pace the run to this many requests a second (latency then counts
    /// from each request's due time) [default: back to back].
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Send NDJSON (application/x-ndjson) instead of a JSON array.
    #[arg(long)]
    pub ndjson: bool,
    /// Give up on a request after this long.
    #[arg(long, default_value = "60s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Print one JSON line of results instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// A duration more than zero (see `sluice_loadgen::run::parse_duration`).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match sluice_loadgen::run::parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be more than zero")),
        d => Ok(d),
    }
}

/// The ingest URL of a bench: `url` itself when it has a path, else the
/// kind's route under it.
fn bench_url(args: &BenchArgs) -> Result<Url> {
    use sluice_loadgen::generate::Kind;
    let mut url = Url::parse(&args.url)
        .map_err(|e| anyhow!("--url {:?} is not a URL ({e}); e.g. {DEFAULT_ADMIN_URL}", args.url))?;
    if !matches!(url.scheme(), "http") || url.host().is_none() {
        bail!("--url {:?} must be an http:// URL, e.g. {DEFAULT_ADMIN_URL}", args.url);
    }
    if url.path() == "/" {
        match args.kind {
            Kind::Events => url.set_path("/v1/events"),
            Kind::Logflare => {
                url.set_path("/api/logs");
                url.query_pairs_mut().append_pair("source_name", &args.source_name);
            }
        }
    }
    Ok(url)
}

/// Posts fresh events to a running service for a while, with a progress
/// bar, and reports rates and latencies. Fails (after the report) when any
/// request did not commit all its events.
pub async fn bench(args: BenchArgs) -> Result<()> {
    use sluice_loadgen::generate::Format;
    use sluice_loadgen::{report, run};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of requests a second");
    }
    let url = bench_url(&args)?;
    let mut headers = Vec::new();
    if let Some(key) = args.api_key.as_deref().filter(|k| !k.is_empty()) {
        headers.push(format!("x-api-key: {key}"));
    }
    // A clear refusal before the run rather than a run of refused requests.
    let mut health = url.clone();
    health.set_path("/healthz");
    health.set_query(None);
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().context("set up the HTTP client")?;
    if let Err(e) = probe.get(health).send().await {
        let base = format!("{}://{}", url.scheme(), url.authority());
        bail!(
            "cannot reach the Sluice service at {base}: {} (is `sluice serve` running there? set --url or SLUICE_URL)",
            root_cause(&e)
        );
    }
    let format = if args.ndjson { Format::Ndjson } else { Format::JsonArray };
    let workers = sluice_loadgen::http_workers(
        url.as_str(),
        args.kind,
        format,
        args.events_per_request as usize,
        args.concurrency as usize,
        args.timeout,
        &headers,
    )?;
    let plan = run::Plan { duration: args.duration, rate: args.rate, interval: None, outcomes: false };
    let progress = Arc::new(run::Progress::default());
    let tenths = (args.duration.as_millis() / 100).max(1) as u64;
    let bar = indicatif::ProgressBar::new(tenths);
    bar.set_style(indicatif::ProgressStyle::with_template("bench {bar:24} {msg}").expect("a valid template"));
    bar.set_message(format!("0 s/{}", duration(args.duration)));
    let started = Instant::now();
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        let total = duration(args.duration);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let elapsed = started.elapsed();
                let events = progress.events_acknowledged.load(Ordering::Relaxed);
                let requests = progress.requests.load(Ordering::Relaxed);
                let failed = requests - progress.requests_ok.load(Ordering::Relaxed);
                let rate = events as f64 / elapsed.as_secs_f64().max(1e-3);
                bar.set_position((elapsed.as_millis() / 100) as u64);
                bar.set_message(format!(
                    "{} s/{total}  {} events ({}/s), {} failed",
                    elapsed.as_secs(),
                    thousands(events),
                    thousands(rate as u64),
                    thousands(failed)
                ));
            }
        })
    };
    let stats = run::run_counted(workers, plan, Some(progress)).await;
    ticker.abort();
    bar.finish_and_clear();
    let setup = report::Setup {
        program: "sluice bench",
        mode: "http",
        target: url.to_string(),
        body: format.content_type(),
        events_per_request: args.events_per_request,
        concurrency: args.concurrency,
        plan,
        rows_in_table: None,
        sql: None,
    };
    report::print(&setup, &stats, args.json);
    let errors = stats.error_count();
    if stats.requests == 0 {
        bail!("no request was answered in {}", duration(args.duration));
    }
    if errors > 0 {
        let sample = stats.error_samples.first().map_or_else(String::new, |(_, text)| format!(": {text}"));
        let sample: String = sample.chars().take(300).collect();
        bail!("{errors} of {} requests did not commit all their events{sample}", stats.requests);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Text helpers.

/// Columns separated by two spaces, padded to the widest cell; the columns
/// in `right` aligned right. No trailing spaces.
fn render_table(header: &[&str], rows: Vec<Vec<String>>, right: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if right.contains(&i) {
                s.push_str(&pad);
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&pad);
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut s = line(&mut header.iter().copied());
    for row in &rows {
        s += &line(&mut row.iter().map(String::as_str));
    }
    s
}

/// `name  value` lines, the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_owned() + "\n").collect()
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| if l.is_empty() { "\n".into() } else { format!("{prefix}{l}\n") }).collect()
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut s = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(c);
    }
    s
}

/// A byte count in KiB or MiB.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1 << 10) as f64),
        n => format!("{n} B"),
    }
}

fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 { format!("{:.2} s", ms / 1000.0) } else { format!("{ms:.1} ms") }
}

/// Seconds since 1970 as `YYYY-MM-DD HH:MM:SS` (UTC).
fn datetime(seconds: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{seconds} s after 1970"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::{Column, ColumnType, Index, Value as SqlValue};

    #[test]
    fn tables_align_and_right_align_numbers() {
        let table =
            render_table(&["ID", "N"], vec![vec!["acme".into(), "1,234".into()], vec!["a".into(), "5".into()]], &[1]);
        assert_eq!(table, "ID        N\nacme  1,234\na         5\n");
    }

    #[test]
    fn lists_tenants() {
        let answer = json!({"tenants": [
            {"id": "acme", "component": "builtin:standard", "component_digest": "ab".repeat(32), "keys": ["111111111111"],
             "requests": 1234567, "errors": 2, "events": {"inserted": 10, "duplicates": 3, "rejected": 1}},
            {"id": "globex-eu", "component": format!("sha256:{}", "cd".repeat(32)), "component_digest": "cd".repeat(32),
             "keys": ["222222222222", "333333333333"], "requests": 0, "errors": 0,
             "events": {"inserted": 0, "duplicates": 0, "rejected": 0}},
        ]});
        let text = render_list(&answer);
        let expected = "\
ID         COMPONENT            KEYS   REQUESTS  ERRORS  INSERTED  DUPLICATES  REJECTED
acme       builtin:standard        1  1,234,567       2        10           3         1
globex-eu  sha256:cdcdcdcdcdcd     2          0       0         0           0         0
";
        assert_eq!(text, expected);
        assert!(render_list(&json!({"tenants": []})).starts_with("no tenants"));
    }

    #[test]
    fn new_keys_are_shown_once_and_given_ones_not_at_all() {
        let answer = json!({"tenant": {"id": "acme", "component": "builtin:standard", "schema": "acme", "tables": ["events"]},
                            "keys": ["sk_generated0123456789", "given-key-0123456789"]});
        let text = render_created(&answer, &["given-key-0123456789".into()]);
        assert!(
            text.starts_with("created tenant acme: component builtin:standard, schema acme, tables events\n"),
            "{text}"
        );
        let generated_id = key_id(&hash_key("sk_generated0123456789")).to_owned();
        assert!(text.contains(&format!("key {generated_id}  sk_generated0123456789\n")), "{text}");
        assert!(text.contains("shown this once"));
        assert!(!text.contains("given-key-0123456789"), "{text}");
    }

    #[test]
    fn formats_numbers_and_times() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        assert_eq!(bytes(300), "300 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(1_779_805_268), "2026-05-26 14:21:08");
        assert_eq!(datetime(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(duration(Duration::from_millis(1_840)), "1.84 s");
    }

    #[test]
    fn builds_admin_urls_and_refuses_others() {
        let base = parse_admin_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(admin_endpoint(&base, &["tenants"]).as_str(), "http://127.0.0.1:8080/admin/tenants");
        assert_eq!(
            admin_endpoint(&base, &["tenants", "a/b", "keys"]).as_str(),
            "http://127.0.0.1:8080/admin/tenants/a%2Fb/keys"
        );
        assert_eq!(admin_endpoint(&base, &["fleet"]).as_str(), "http://127.0.0.1:8080/admin/fleet");
        let prefixed = parse_admin_url("http://h/sluice/").unwrap();
        assert_eq!(admin_endpoint(&prefixed, &["tenants", "acme"]).as_str(), "http://h/sluice/admin/tenants/acme");
        assert!(parse_admin_url("https://h").unwrap_err().to_string().contains("plain HTTP"));
        assert!(parse_admin_url("127.0.0.1:8080").is_err());
        assert!(check_component_name("builtin:standard").is_ok());
        assert!(check_component_name(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert!(check_component_name("./x.wasm").unwrap_err().to_string().contains("sluice tenant upload"));
    }

    #[test]
    fn api_errors_carry_the_message_and_status() {
        let base = parse_admin_url(DEFAULT_ADMIN_URL).unwrap();
        let e = api_error(StatusCode::CONFLICT, r#"{"error":"tenant acme exists"}"#, &base);
        assert_eq!(e.to_string(), "tenant acme exists (HTTP 409 Conflict)");
        let e = api_error(StatusCode::NOT_FOUND, "", &base);
        assert!(e.to_string().contains("HTTP 404 Not Found with no message"), "{e}");
    }

    #[test]
    fn reports_a_component() {
        let table = Table {
            name: "events".into(),
            columns: vec![
                Column::new("event_id", ColumnType::Uuid).not_null(),
                Column::new("kind", ColumnType::Text).default(ColumnDefault::Constant(SqlValue::Text("x'y".into()))),
                Column::new("received_at", ColumnType::Timestamptz).not_null().default(ColumnDefault::Now),
            ],
            primary_key: vec!["event_id".into()],
            indexes: vec![Index::btree("recent", &["-received_at"])],
            template: false,
        };
        let tables = [table];
        let report = CheckReport {
            name: "x.wasm",
            digest: "ab",
            size: 2048,
            elapsed: Duration::from_millis(1500),
            from_cache: false,
            tables: &tables,
            schema: "public",
            ddl: None,
        };
        let expected = "\
x.wasm: a valid sluice:ingest/normalizer component
digest   sha256:ab
size     2,048 bytes (2.0 KiB)
compile  1.50 s
tables   1 (events)

table events
  COLUMN       TYPE                      NOT NULL  DEFAULT
  event_id     uuid                      yes
  kind         text                      no        'x''y'
  received_at  timestamp with time zone  yes       now()
  primary key  event_id
  index        events_recent_idx btree (received_at DESC)
";
        assert_eq!(report.render(), expected);
    }
}
