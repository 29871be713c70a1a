//! `sluice cdc status` and `sluice cdc bootstrap`: the change streams of a
//! configuration file, seen from the source and the destination databases
//! (no running service needed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sluice_sdk::sql::qualified;

use super::bootstrap::{Outcome, source_pg_config};
use super::config::CdcConfig;
use super::runner::CHECKPOINTS;
use crate::config::DatabaseConfig;
use crate::config_file::Config;
use crate::server::DATABASE_URL_VAR;

#[derive(Args)]
pub struct CdcArgs {
    #[command(subcommand)]
    pub command: CdcCommand,
}

#[derive(Subcommand)]
pub enum CdcCommand {
    /// Show each [[cdc]] source: its slot, the slot's confirmed_flush_lsn and
    /// lag in bytes, the applied checkpoint, the host that owns it, and the
    /// bootstrap.
    ///
    /// Reads the source databases and the destination (SLUICE_DATABASE_URL or
    /// [database] of the file); exits 1 if a source cannot be read.
    Status(StatusArgs),
    /// Read the rows already in a source's tables from a new slot's snapshot
    /// into its change handler, with a progress bar, then exit: `sluice
    /// serve` streams from the snapshot's consistent point on.
    ///
    /// Runs when the source has no completed bootstrap (a crashed one is
    /// redone: its slot is dropped and made again); `--redo` drops the slot
    /// and bootstraps again even after a completed one. The source needs
    /// bootstrapProvider = "postgres", and no running host may own it.
    Bootstrap(BootstrapArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    /// The configuration file (TOML) listing the [[cdc]] sources.
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BootstrapArgs {
    /// The source's `name` (or slot name) in the configuration file.
    pub source: String,
    /// The configuration file (TOML) listing the [[cdc]] sources.
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    /// Bootstrap again even when it completed before: drops the slot, makes
    /// it anew and hands every row to the handler again.
    #[arg(long)]
    pub redo: bool,
}

pub async fn run(args: CdcArgs) -> Result<()> {
    match args.command {
        CdcCommand::Status(args) => status(args).await,
        CdcCommand::Bootstrap(args) => bootstrap(args).await,
    }
}

/// The destination: `SLUICE_DATABASE_URL`, else `[database]`. The embedded
/// database is reachable only through a running `sluice serve`.
fn destination(config: &Config) -> Result<DatabaseConfig> {
    if let Ok(url) = std::env::var(DATABASE_URL_VAR) {
        return Ok(DatabaseConfig { url: Some(url), ..config.database.clone() });
    }
    if config.database.is_configured() {
        return Ok(config.database.clone());
    }
    bail!(
        "the destination database is not configured: set {DATABASE_URL_VAR} or [database] (the embedded database \
         of `sluice serve` is not reachable from here)"
    )
}

fn load_config(path: &Path) -> Result<Config> {
    let config = Config::load(path)?;
    if config.cdc.is_empty() {
        bail!("{} lists no [[cdc]] sources", path.display());
    }
    Ok(config)
}

/// Writes to stdout, ignoring a closed pipe.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

async fn connect_source(source: &CdcConfig) -> Result<tokio_postgres::Client> {
    let (client, _connection) =
        crate::db::tls::connect_spawned(source_pg_config(&source.source, "sluice-cdc-status"), &source.source.tls())
            .await
            .with_context(|| format!("connect to source {:?}", source.name()))?;
    Ok(client)
}

async fn status(args: StatusArgs) -> Result<()> {
    let config = load_config(&args.config)?;
    let database = destination(&config)?;
    let destination = crate::db::connect(&database.pg_config()?).await.context("connect to the destination")?;
    let mut reports = Vec::new();
    let mut failed = false;
    for source in &config.cdc {
        let schema = source.schema.clone().unwrap_or_else(|| database.schema.clone());
        let report = match source_status(source, &destination, &schema).await {
            Ok(report) => report,
            Err(e) => {
                failed = true;
                json!({"source": source.name(), "slot": source.source.slot_name, "error": format!("{e:#}")})
            }
        };
        reports.push(report);
    }
    if args.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&json!({"sources": reports}))?));
    } else {
        out(&reports.iter().map(render).collect::<Vec<_>>().join("\n"));
    }
    if failed {
        bail!("some sources could not be read");
    }
    Ok(())
}

/// One source's state: the slot and its owner from the source, the
/// checkpoint and the bootstrap from the destination.
async fn source_status(source: &CdcConfig, destination: &tokio_postgres::Client, schema: &str) -> Result<Value> {
    let slot_name = &source.source.slot_name;
    let checkpoint = match destination
        .query_opt(
            &format!("SELECT lsn::text, updated_at::text FROM {} WHERE source = $1", qualified(schema, CHECKPOINTS)),
            &[&source.name()],
        )
        .await
    {
        Ok(row) => row.map(|r| json!({"lsn": r.get::<_, String>(0), "updated_at": r.get::<_, String>(1)})),
        // No checkpoint table: the source never ran.
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME) =>
        {
            None
        }
        Err(e) => return Err(e).context("read the checkpoint"),
    };
    let bootstrap = match (source.bootstraps(), super::bootstraps::completed(destination, schema, source.name()).await?)
    {
        (false, _) => json!({"state": "none", "provider": "none"}),
        (true, Some(done)) if done.slot == *slot_name => json!({
            "state": "complete",
            "consistent_point": done.consistent_point.to_string(),
            "tables": done.tables,
            "rows": done.rows,
            "completed_at": done.completed_at,
        }),
        (true, _) => json!({"state": "pending"}),
    };

    let client = connect_source(source).await?;
    let slot = client
        .query_opt(
            "SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, wal_status \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[slot_name],
        )
        .await
        .context("read the replication slot")?;
    let owner = client
        .query_opt(
            "SELECT l.pid, a.client_addr::text, a.backend_start::text \
             FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
               AND ((l.classid::int8 << 32) | l.objid::int8) = hashtextextended($1, 0)",
            &[&format!("sluice:cdc:{slot_name}")],
        )
        .await
        .context("read the slot's owner")?;
    Ok(json!({
        "source": source.name(),
        "slot": slot_name,
        "slot_exists": slot.is_some(),
        "active": slot.as_ref().map(|s| s.get::<_, bool>(0)),
        "walsender_pid": slot.as_ref().and_then(|s| s.get::<_, Option<i32>>(1)),
        "confirmed_flush_lsn": slot.as_ref().and_then(|s| s.get::<_, Option<String>>(2)),
        "restart_lsn": slot.as_ref().and_then(|s| s.get::<_, Option<String>>(3)),
        "lag_bytes": slot.as_ref().and_then(|s| s.get::<_, Option<i64>>(4)),
        "wal_status": slot.as_ref().and_then(|s| s.get::<_, Option<String>>(5)),
        "checkpoint": checkpoint,
        "owner": owner.map(|o| json!({
            "pid": o.get::<_, i32>(0),
            "client_addr": o.get::<_, Option<String>>(1),
            "since": o.get::<_, Option<String>>(2),
        })),
        "bootstrap": bootstrap,
    }))
}

fn render(report: &Value) -> String {
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let mut out = format!("{}\n", text(&report["source"]));
    if let Some(error) = report["error"].as_str() {
        out.push_str(&format!("  error            {error}\n"));
        return out;
    }
    let slot = if report["slot_exists"] == json!(true) {
        let active = if report["active"] == json!(true) { "active" } else { "inactive" };
        format!("{} ({active}, wal {})", text(&report["slot"]), text(&report["wal_status"]))
    } else {
        format!("{} (missing: made at the next start)", text(&report["slot"]))
    };
    out.push_str(&format!("  slot             {slot}\n"));
    out.push_str(&format!("  confirmed flush  {}\n", text(&report["confirmed_flush_lsn"])));
    let lag = report["lag_bytes"].as_i64().map_or_else(|| "-".into(), |b| format!("{b} bytes"));
    out.push_str(&format!("  lag              {lag}\n"));
    out.push_str(&format!("  checkpoint       {}\n", text(&report["checkpoint"]["lsn"])));
    let owner = match &report["owner"] {
        Value::Null => "none (no host streams it)".into(),
        owner => format!(
            "pid {} from {} since {}",
            owner["pid"],
            owner["client_addr"].as_str().unwrap_or("local socket"),
            text(&owner["since"])
        ),
    };
    out.push_str(&format!("  owner            {owner}\n"));
    let b = &report["bootstrap"];
    let bootstrap = match b["state"].as_str() {
        Some("complete") => format!(
            "complete at {} ({} tables, {} rows, {})",
            text(&b["consistent_point"]),
            b["tables"],
            b["rows"],
            text(&b["completed_at"])
        ),
        Some("pending") => "pending (runs at the next start, or `sluice cdc bootstrap`)".into(),
        _ => "none (bootstrapProvider = \"none\")".into(),
    };
    out.push_str(&format!("  bootstrap        {bootstrap}\n"));
    out
}

async fn bootstrap(args: BootstrapArgs) -> Result<()> {
    let config = load_config(&args.config)?;
    let source =
        config.cdc.iter().find(|s| s.name() == args.source || s.source.slot_name == args.source).ok_or_else(|| {
            anyhow!(
                "no [[cdc]] source is named {:?} in {} (sources: {})",
                args.source,
                args.config.display(),
                config.cdc.iter().map(|s| s.name().to_owned()).collect::<Vec<_>>().join(", ")
            )
        })?;
    let database = destination(&config)?;
    let runtime = crate::runtime::Runtime::new(&config.limits, &config.cache_dir())?;
    let runner = Arc::new(super::load(&config, &runtime, &database, source).await?);
    let stats = runner.stats.clone();
    let progress = &stats.bootstrap;
    let started = Instant::now();
    let task = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.bootstrap_now(args.redo).await })
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} rows ({per_sec}, {eta} left)")
            .expect("a valid template"),
    );
    let mut task = std::pin::pin!(task);
    let outcome = loop {
        tokio::select! {
            outcome = &mut task => break outcome.context("the bootstrap task")?,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if progress.running.load(Ordering::Relaxed) {
            let done = progress.rows_done.load(Ordering::Relaxed);
            bar.set_length(progress.rows_estimate.load(Ordering::Relaxed).max(done));
            bar.set_position(done);
            bar.set_message(format!(
                "{}: table {}/{}",
                source.name(),
                (progress.tables_done.load(Ordering::Relaxed) + 1).min(progress.tables_total.load(Ordering::Relaxed)),
                progress.tables_total.load(Ordering::Relaxed)
            ));
        }
    };
    bar.finish_and_clear();
    match outcome? {
        Outcome::Done(done) => out(&format!(
            "bootstrapped source {}: {} tables, {} rows in {:.1} s; streaming resumes from {}\n",
            source.name(),
            done.tables,
            done.rows,
            started.elapsed().as_secs_f64(),
            done.consistent_point
        )),
        Outcome::AlreadyDone(done) => out(&format!(
            "source {} was bootstrapped at {} ({} tables, {} rows, {}); --redo bootstraps it again\n",
            source.name(),
            done.consistent_point,
            done.tables,
            done.rows,
            done.completed_at
        )),
    }
    Ok(())
}
