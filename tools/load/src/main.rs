//! `sluice-load`: load for `POST /v1/events` and Logflare's `POST /api/logs`,
//! the direct-to-PostgreSQL baseline to hold it against, and small queries
//! for `/api/query`.

mod baseline;

use sluice_loadgen::{generate, http, query, report, run};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use generate::{Format, Generator, Kind};
use report::Setup;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Load generator for Sluice, with a direct-to-PostgreSQL baseline.
#[derive(Parser)]
#[command(name = "sluice-load", version)]
struct Cli {
    /// Threads the load generator runs on [default: one per core]. Fewer
    /// leave more of a shared machine to the server and the database.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Post events to a running `sluice serve`.
    Http {
        /// The ingest endpoint [default: http://127.0.0.1:8080/v1/events,
        /// or for --kind logflare
        /// http://127.0.0.1:8080/api/logs?source_name=<--source-name>].
        #[arg(long)]
        url: Option<String>,
        /// Send NDJSON (application/x-ndjson) instead of a JSON array.
        #[arg(long)]
        ndjson: bool,
        /// Give up on a request after this long.
        #[arg(long, default_value = "60s", value_parser = run::parse_duration)]
        timeout: Duration,
        /// The database the service writes to; needed only for --truncate.
        #[arg(long)]
        database_url: Option<String>,
        /// A header for every request, `NAME: VALUE` (repeatable), e.g.
        /// `--header "x-api-key: KEY"`.
        #[arg(long = "header")]
        headers: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Normalize the same events natively and write them straight to
    /// PostgreSQL with the host's statement: one transaction per request, one
    /// connection per worker.
    Baseline {
        /// The database to write to.
        #[arg(long)]
        database_url: String,
        /// How to write each request's rows.
        #[arg(long, value_enum, default_value = "host")]
        method: baseline::Method,
        #[command(flatten)]
        common: Common,
    },
    /// Send small read-only SQL queries to a running `sluice serve`'s
    /// `POST /api/query` (with a tenant's query token in a --header).
    Query {
        /// The query endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8080/api/query")]
        url: String,
        /// The SQL of every query. The default reads the ten latest events
        /// of a type, cycling through the generator's four event types.
        #[arg(long, default_value = query::DEFAULT_SQL)]
        sql: String,
        /// A JSON array of parameters for one query (repeatable; the runs
        /// cycle through them), e.g. `--params '["order.completed"]'`.
        #[arg(long = "params")]
        params: Vec<String>,
        /// Give up on a query after this long.
        #[arg(long, default_value = "30s", value_parser = run::parse_duration)]
        timeout: Duration,
        /// A header for every request, `NAME: VALUE` (repeatable), e.g.
        /// `--header "authorization: Bearer TOKEN"`.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Workers, each keeping one query in flight.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        concurrency: u32,
        /// How long to send for: 10s, 500ms, 2m (a bare number is seconds).
        #[arg(long, default_value = "10s", value_parser = run::parse_duration)]
        duration: Duration,
        /// Pace the whole run to this many queries a second (open loop;
        /// latency counts from each query's due time). Default: back to back.
        #[arg(long)]
        rate: Option<f64>,
        /// Print one JSON line of results instead of the text report.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct Common {
    /// What to send: canonical events, or Logflare log events (`{"batch":
    /// [events]}` to `/api/logs`, into the source's table).
    #[arg(long, value_enum, default_value = "events")]
    kind: Kind,
    /// --kind logflare: the source, by name, of the default tenant.
    #[arg(long, default_value = "bench")]
    source_name: String,
    /// Events in each request (each transaction, for the baseline).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    events_per_request: u32,
    /// Workers, each with its own connection.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// How long to send for: 10s, 500ms, 2m (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = run::parse_duration)]
    duration: Duration,
    /// Pace the whole run to this many requests a second (open loop;
    /// latency counts from each request's due time). Default: back to back.
    #[arg(long)]
    rate: Option<f64>,
    /// Schema of the table (`events`, or the Logflare source's): where
    /// --truncate empties it, and the baseline creates it.
    #[arg(long, default_value = "public")]
    schema: String,
    /// Empty table `events` before the run.
    #[arg(long)]
    truncate: bool,
    /// Print one JSON line of results instead of the text report.
    #[arg(long)]
    json: bool,
    /// Also tally the answers per interval of this long, by when they
    /// arrived (e.g. 1s): a timeline of the run.
    #[arg(long, value_parser = run::parse_duration)]
    interval: Option<Duration>,
    /// Write every request's answer to this file, a line per request:
    /// `worker request answer` (request counts from 0 in each worker; the
    /// answer is the HTTP status, or timeout, connect, …).
    #[arg(long)]
    outcomes: Option<std::path::PathBuf>,
}

impl Common {
    fn plan(&self) -> Result<run::Plan> {
        let mut plan = plan(self.duration, self.rate)?;
        if self.interval.is_some_and(|i| i.is_zero()) {
            bail!("--interval must be more than zero");
        }
        plan.interval = self.interval;
        plan.outcomes = self.outcomes.is_some();
        Ok(plan)
    }

    fn target(&self) -> Result<baseline::Target> {
        baseline::Target::new(self.kind, &self.source_name, &self.schema)
    }

    /// Writes the outcomes file, when asked for.
    fn write_outcomes(&self, stats: &run::Stats) -> Result<()> {
        use std::io::Write;
        let Some(path) = &self.outcomes else { return Ok(()) };
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (worker, answers) in &stats.outcomes {
            for (i, answer) in answers.iter().enumerate() {
                writeln!(out, "{worker} {i} {answer}")?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

fn plan(duration: Duration, rate: Option<f64>) -> Result<run::Plan> {
    if let Some(rate) = rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of requests a second");
    }
    if duration.is_zero() {
        bail!("--duration must be more than zero");
    }
    Ok(run::Plan { duration, rate, interval: None, outcomes: false })
}

/// Exit status of a run in which some requests failed (the results are
/// printed all the same).
const EXIT_ERRORS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads as usize);
    }
    let result = runtime.enable_all().build().map_err(Into::into).and_then(|rt| {
        rt.block_on(async {
            match cli.mode {
                Mode::Http { url, ndjson, timeout, database_url, headers, common } => {
                    http_mode(url, ndjson, timeout, database_url, headers, common).await
                }
                Mode::Baseline { database_url, method, common } => baseline_mode(database_url, method, common).await,
                Mode::Query { url, sql, params, timeout, headers, concurrency, duration, rate, json } => {
                    let plan = plan(duration, rate)?;
                    query_mode(url, sql, params, timeout, headers, concurrency, plan, json).await
                }
            }
        })
    });
    match result {
        Ok(stats) if stats.error_count() > 0 => ExitCode::from(EXIT_ERRORS),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn http_mode(
    url: Option<String>,
    ndjson: bool,
    timeout: Duration,
    database_url: Option<String>,
    headers: Vec<String>,
    common: Common,
) -> Result<run::Stats> {
    let plan = common.plan()?;
    let target = common.target()?;
    let url = url.unwrap_or_else(|| match common.kind {
        Kind::Events => "http://127.0.0.1:8080/v1/events".into(),
        Kind::Logflare => format!("http://127.0.0.1:8080/api/logs?source_name={}", common.source_name),
    });
    let database = match (&database_url, common.truncate) {
        (Some(db), true) => {
            let client = baseline::connect(db).await?;
            // Logflare: the host makes the source's table on first use;
            // making it here does the same.
            target.prepare_table(&client).await?;
            target.truncate(&client).await?;
            Some(db)
        }
        (None, true) => bail!("--truncate needs --database-url"),
        _ => None,
    };
    let format = if ndjson { Format::Ndjson } else { Format::JsonArray };
    let events = common.events_per_request as usize;
    let concurrency = common.concurrency as usize;
    let workers = sluice_loadgen::http_workers(&url, common.kind, format, events, concurrency, timeout, &headers)?;
    let stats = run::run(workers, plan).await;
    common.write_outcomes(&stats)?;
    let rows = match database {
        // A new connection: the server may have restarted meanwhile.
        Some(db) => Some((target.table.name.clone(), target.count_rows(&baseline::connect(db).await?).await?)),
        None => None,
    };
    let setup = Setup {
        program: "sluice-load",
        mode: "http",
        target: url,
        body: format.content_type(),
        events_per_request: common.events_per_request,
        concurrency: common.concurrency,
        plan,
        rows_in_table: rows,
        sql: None,
    };
    report::print(&setup, &stats, common.json);
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
async fn query_mode(
    url: String,
    sql: String,
    params: Vec<String>,
    timeout: Duration,
    headers: Vec<String>,
    concurrency: u32,
    plan: run::Plan,
    json: bool,
) -> Result<run::Stats> {
    let bodies = Arc::new(query::bodies(&sql, &params)?);
    let client = http::client(concurrency as usize, timeout, &headers)?;
    let workers =
        (0..concurrency as usize).map(|w| query::QueryWorker::new(client.clone(), &url, bodies.clone(), w)).collect();
    let stats = run::run(workers, plan).await;
    let setup = Setup {
        program: "sluice-load",
        mode: "query",
        target: url,
        body: "application/json",
        events_per_request: 0,
        concurrency,
        plan,
        rows_in_table: None,
        sql: Some(sql),
    };
    report::print(&setup, &stats, json);
    Ok(stats)
}

async fn baseline_mode(database_url: String, method: baseline::Method, common: Common) -> Result<run::Stats> {
    let plan = common.plan()?;
    let target = Arc::new(common.target()?);
    let admin = baseline::connect(&database_url).await?;
    target.prepare_table(&admin).await?;
    if common.truncate {
        target.truncate(&admin).await?;
    }
    let upsert = target.upsert()?;
    let run_tag = generate::run_tag();
    let mut workers = Vec::with_capacity(common.concurrency as usize);
    for w in 0..common.concurrency as usize {
        let generator = Generator::new(&run_tag, w);
        workers.push(
            baseline::BaselineWorker::connect(
                &database_url,
                target.clone(),
                upsert.clone(),
                generator,
                common.events_per_request as usize,
                method,
            )
            .await?,
        );
    }
    let stats = run::run(workers, plan).await;
    common.write_outcomes(&stats)?;
    let rows = match common.truncate {
        true => Some((target.table.name.clone(), target.count_rows(&admin).await?)),
        false => None,
    };
    let setup = Setup {
        program: "sluice-load",
        mode: match method {
            baseline::Method::Host => "baseline",
            baseline::Method::Unnest => "baseline unnest",
            baseline::Method::CopyUpsert => "baseline copy-upsert",
            baseline::Method::Copy => "baseline copy",
        },
        target: format!("{} schema {}", baseline::redact(&database_url), common.schema),
        body: Format::JsonArray.content_type(),
        events_per_request: common.events_per_request,
        concurrency: common.concurrency,
        plan,
        rows_in_table: rows,
        sql: None,
    };
    report::print(&setup, &stats, common.json);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
