//! `sluice-load`: load for `POST /v1/events`, the direct-to-PostgreSQL
//! baseline to hold it against, and small queries for `/api/query`.

mod baseline;
mod generate;
mod http;
mod query;
mod report;
mod run;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use generate::{Format, Generator};
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
        /// The ingest endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8080/v1/events")]
        url: String,
        /// Send NDJSON (application/x-ndjson) instead of a JSON array.
        #[arg(long)]
        ndjson: bool,
        /// Give up on a request after this long.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
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
        #[arg(long, value_enum, default_value = "unnest")]
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
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// A header for every request, `NAME: VALUE` (repeatable), e.g.
        /// `--header "authorization: Bearer TOKEN"`.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Workers, each keeping one query in flight.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        concurrency: u32,
        /// How long to send for: 10s, 500ms, 2m (a bare number is seconds).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
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
    /// Events in each request (each transaction, for the baseline).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    events_per_request: u32,
    /// Workers, each with its own connection.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// How long to send for: 10s, 500ms, 2m (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Pace the whole run to this many requests a second (open loop;
    /// latency counts from each request's due time). Default: back to back.
    #[arg(long)]
    rate: Option<f64>,
    /// Schema of table `events` (where --truncate empties it; the baseline
    /// also creates it there).
    #[arg(long, default_value = "public")]
    schema: String,
    /// Empty table `events` before the run.
    #[arg(long)]
    truncate: bool,
    /// Print one JSON line of results instead of the text report.
    #[arg(long)]
    json: bool,
}

impl Common {
    fn plan(&self) -> Result<run::Plan> {
        plan(self.duration, self.rate)
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
    Ok(run::Plan { duration, rate })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 10s or 500ms"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| e.to_string())
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
    url: String,
    ndjson: bool,
    timeout: Duration,
    database_url: Option<String>,
    headers: Vec<String>,
    common: Common,
) -> Result<run::Stats> {
    let plan = common.plan()?;
    let database = match (&database_url, common.truncate) {
        (Some(db), true) => {
            let client = baseline::connect(db).await?;
            baseline::truncate(&client, &common.schema).await?;
            Some(client)
        }
        (None, true) => bail!("--truncate needs --database-url"),
        _ => None,
    };
    let format = if ndjson { Format::Ndjson } else { Format::JsonArray };
    let client = http::client(common.concurrency as usize, timeout, &headers)?;
    let run_tag = generate::run_tag();
    let workers = (0..common.concurrency as usize)
        .map(|w| {
            let generator = Generator::new(&run_tag, w);
            http::HttpWorker::new(client.clone(), &url, generator, common.events_per_request as usize, format)
        })
        .collect();
    let stats = run::run(workers, plan).await;
    let rows = match &database {
        Some(client) => Some(baseline::count_rows(client, &common.schema).await?),
        None => None,
    };
    let setup = Setup {
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
    let admin = baseline::connect(&database_url).await?;
    baseline::prepare_table(&admin, &common.schema).await?;
    if common.truncate {
        baseline::truncate(&admin, &common.schema).await?;
    }
    let upsert = baseline::upsert(&common.schema)?;
    let run_tag = generate::run_tag();
    let mut workers = Vec::with_capacity(common.concurrency as usize);
    for w in 0..common.concurrency as usize {
        let generator = Generator::new(&run_tag, w);
        workers.push(
            baseline::BaselineWorker::connect(
                &database_url,
                upsert.clone(),
                generator,
                common.events_per_request as usize,
                method,
                &common.schema,
            )
            .await?,
        );
    }
    let stats = run::run(workers, plan).await;
    let rows = if common.truncate { Some(baseline::count_rows(&admin, &common.schema).await?) } else { None };
    let setup = Setup {
        mode: match method {
            baseline::Method::Unnest => "baseline",
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
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
