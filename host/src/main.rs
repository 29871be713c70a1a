use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice::cli;
use sluice::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Events, logs and database changes into PostgreSQL, through WebAssembly
/// normalizers.
#[derive(Parser)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service. With no database configured it starts an embedded
    /// PostgreSQL under the data folder.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Work with normalizer components offline.
    Component {
        #[command(subcommand)]
        command: cli::ComponentCommand,
    },
    /// Manage the tenants of a running service through its admin API.
    Tenant(cli::TenantArgs),
    /// List, replay or purge the rows the database refused (dead letters).
    Dlq(cli::DlqArgs),
    /// Create the schemas and tables serve needs, with an admin connection, and exit.
    Migrate(sluice::migrate_cmd::MigrateArgs),
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen } => {
            init_logging("info");
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(listen) = listen {
                config.listen = listen;
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(sluice::server::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
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
        Command::Dlq(args) => {
            init_logging("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(cli::exit(runtime.block_on(cli::dlq(args))))
        }
    }
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
