use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

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
}

fn main() -> Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(listen) = listen {
                config.listen = listen;
            }
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(sluice::server::serve(config))
        }
    }
}

/// Logs go to stderr: human-readable, or JSON with `SLUICE_LOG_FORMAT=json`;
/// the level from `SLUICE_LOG` (default `info`).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
