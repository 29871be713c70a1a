use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice::cli;
use sluice::config_file::Config;
use sluice::metrics::{LogConfig, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Events, logs and database changes into PostgreSQL, through WebAssembly
/// normalizers.
#[derive(Parser)]
#[command(name = "sluice", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const AFTER_HELP: &str = "\
Examples:
  sluice serve --config sluice.toml
  sluice component check my_normalizer.wasm
  SLUICE_ADMIN_TOKEN=... sluice tenant list
  sluice bench --duration 30s --concurrency 8

Exit status: 0 done, 1 failed (the reason is on stderr as `error: ...`), 2 the command line is wrong.
Each command's --help lists its options and the environment variables it reads.
Documentation: docs/cli.md";

#[derive(Subcommand)]
enum Command {
    /// Run the service. With no database configured it starts an embedded
    /// PostgreSQL under the data folder.
    #[command(after_help = "\
Examples:
  sluice serve --keyless-loopback               # embedded PostgreSQL, data in .sluice/, no keys from loopback
  sluice serve --config sluice.toml --listen 0.0.0.0:8080
  SLUICE_DATABASE_URL=postgres://user:pass@host/db sluice serve

Environment: SLUICE_CONFIG, SLUICE_DATABASE_URL, SLUICE_LISTEN, SLUICE_ADMIN_TOKEN, SLUICE_LOG (e.g. debug),
SLUICE_LOG_FORMAT (json).
Stops cleanly on SIGINT or SIGTERM, answering the requests in flight first. See docs/configuration.md.")]
    Serve {
        /// The configuration file (TOML).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "SLUICE_LISTEN")]
        listen: Option<SocketAddr>,
        /// Take requests without a key from loopback while no tenant is
        /// configured (the config file's keyless_loopback = true).
        #[arg(long)]
        keyless_loopback: bool,
    },
    /// Work with normalizer components offline.
    #[command(after_help = "Example:\n  sluice component check my_normalizer.wasm --sql --schema acme")]
    Component {
        #[command(subcommand)]
        command: cli::ComponentCommand,
    },
    /// Manage the tenants of a running service through its admin API.
    #[command(after_help = "\
Examples:
  export SLUICE_ADMIN_TOKEN=...
  sluice tenant create acme --schema acme        # prints the new key, once
  sluice tenant upload acme my_normalizer.wasm
  sluice tenant list --admin-url http://10.0.0.5:8080")]
    Tenant(cli::TenantArgs),
    /// List the hosts serving from the same service database (a fleet):
    /// their registry version, traffic, spool and last heartbeat.
    #[command(after_help = "\
Examples:
  export SLUICE_ADMIN_TOKEN=...
  sluice fleet --admin-url http://10.0.0.5:8080")]
    Fleet(cli::FleetArgs),
    /// List, replay or purge the rows the database refused (dead letters).
    #[command(after_help = "\
Examples:
  export SLUICE_ADMIN_TOKEN=...
  sluice dlq list default
  sluice dlq replay default --table events")]
    Dlq(cli::DlqArgs),
    /// Create the schemas and tables serve needs, with an admin connection, and exit.
    Migrate(sluice::migrate_cmd::MigrateArgs),
    /// Show the change streams (CDC) of a configuration file, or bootstrap one.
    Cdc(sluice::cdc::cli::CdcArgs),
    /// Load a running service: post fresh events for a while and report the
    /// rates and latencies.
    ///
    /// Every event is new (its own idempotency key), so each one is a row
    /// written. A request counts when it is answered 200 with all its events
    /// inserted; the command fails when any did not.
    #[command(after_help = "\
Examples:
  sluice bench                                   # 10 s, 4 connections, 1,000 events a request
  sluice bench --url http://10.0.0.5:8080 --api-key \"$ACME_KEY\" --duration 1m --concurrency 16
  sluice bench --kind logflare --source-name app --rate 200 --json")]
    Bench(cli::BenchArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (as served at
    /// GET /openapi.json).
    #[command(after_help = "Example:\n  sluice openapi > docs/openapi.json")]
    Openapi,
}

fn main() -> Result<ExitCode> {
    sluice::memory::tune_allocator();
    sluice::faults::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, keyless_loopback } => Ok(cli::exit(serve(config, listen, keyless_loopback))),
        Command::Component { command } => {
            init_logging("warn");
            Ok(cli::exit(cli::component(command)))
        }
        Command::Tenant(args) => {
            init_logging("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(cli::exit(runtime.block_on(cli::tenant(args))))
        }
        Command::Migrate(args) => {
            init_logging("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(cli::exit(runtime.block_on(sluice::migrate_cmd::run(args))))
        }
        Command::Fleet(args) => {
            init_logging("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(cli::exit(runtime.block_on(cli::fleet(args))))
        }
        Command::Dlq(args) => {
            init_logging("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(cli::exit(runtime.block_on(cli::dlq(args))))
        }
        Command::Bench(args) => {
            init_logging("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(cli::exit(runtime.block_on(cli::bench(args))))
        }
        Command::Openapi => {
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(sluice::openapi::json().as_bytes());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cdc(args) => {
            init_logging("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(cli::exit(runtime.block_on(sluice::cdc::cli::run(args))))
        }
    }
}

/// `sluice serve`. A failure to start (a bad config file, an address in use,
/// an unreachable database) is reported as every command's is: `error: …`.
fn serve(config: Option<PathBuf>, listen: Option<SocketAddr>, keyless_loopback: bool) -> Result<()> {
    let mut config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    init_serve_logging(&config.log)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    config.keyless_loopback |= keyless_loopback;
    // A fleet's hosts take their secrets from the environment.
    if let Some(token) = std::env::var("SLUICE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()) {
        anyhow::ensure!(token.len() >= 16, "SLUICE_ADMIN_TOKEN must be at least 16 characters");
        config.admin_token = Some(sluice::config::Secret(token));
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(sluice::server::serve(config))
}

/// `serve`'s logs: `[log]` in the config file, under the environment's
/// `SLUICE_LOG_FORMAT` and `SLUICE_LOG` (or `RUST_LOG`).
fn init_serve_logging(log: &LogConfig) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let from_env = ["SLUICE_LOG", "RUST_LOG"].into_iter().find_map(|var| EnvFilter::try_from_env(var).ok());
    let filter = match from_env {
        Some(filter) => filter,
        None => {
            let level = log.level.as_deref().unwrap_or("info");
            EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("log.level {level:?} is not a valid filter: {e}"))?
        }
    };
    let json = match std::env::var("SLUICE_LOG_FORMAT").ok().as_deref() {
        Some("json") => true,
        Some("human") => false,
        Some(other) => anyhow::bail!("SLUICE_LOG_FORMAT must be human or json, not {other:?}"),
        None => log.format == LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Logs go to stderr: human-readable, or JSON with `SLUICE_LOG_FORMAT=json`;
/// the level from `SLUICE_LOG` (default `info` for `serve`, `warn` for the
/// other commands, whose output is their own).
fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
