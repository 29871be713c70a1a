//! Change streams: a logical-replication stream from a PostgreSQL source
//! into a change-handler component, with the handler's effects committed
//! exactly once (see docs/cdc.md).
//!
//! Each `[[cdc]]` source runs one [`runner`] task: it takes the slot's
//! advisory lock (a standby waits for it), ensures the publication and the
//! slot, streams, gathers each transaction (spilling large ones to disk),
//! hands it to a fresh instance of the component, then writes the plans
//! and the checkpoint (source, commit end LSN) in one destination
//! transaction, and only then confirms the LSN to the source.

pub mod bootstrap;
pub mod bootstraps;
pub mod changes;
pub mod cli;
pub mod config;
pub mod plans;
pub mod runner;
pub mod spill;
pub mod stats;

use crate::config::DatabaseConfig;
use crate::config_file::Config;
use crate::runtime::Runtime;
use anyhow::{Context, Result, bail};
pub use config::CdcConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running sources.
pub struct Cdc {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    stats: Vec<(String, Arc<stats::Stats>)>,
}

/// Loads each source's component and starts its runner.
///
/// `hosts` follows how many hosts of the fleet are live: the sources spread
/// over them, each host streaming about its share (every host is to have
/// the same `[[cdc]]` sources).
pub async fn start(
    config: &Config,
    runtime: Arc<Runtime>,
    database: &DatabaseConfig,
    hosts: watch::Receiver<usize>,
) -> Result<Cdc> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut stats = Vec::new();
    let mut names = std::collections::HashSet::new();
    let fleet = runner::FleetShare { owned: Arc::default(), hosts, sources: config.cdc.len() };
    for source in &config.cdc {
        if !names.insert(source.name().to_owned()) {
            bail!("two [[cdc]] sources are named {:?}", source.name());
        }
        let mut runner = load(config, &runtime, database, source).await?;
        runner.join_fleet(fleet.clone());
        stats.push((source.name().to_owned(), runner.stats.clone()));
        tasks.push(tokio::spawn(runner.run(stopped.clone())));
    }
    if !tasks.is_empty() {
        tracing::info!(sources = tasks.len(), "change streams started");
    }
    Ok(Cdc { stop, tasks, stats })
}

/// Loads a source's component and makes its runner (not started).
pub async fn load(
    config: &Config,
    runtime: &Arc<Runtime>,
    database: &DatabaseConfig,
    source: &CdcConfig,
) -> Result<runner::Runner> {
    let wasm = match source.component.as_str() {
        config::BUILTIN_AUDIT => sluice_artifacts::AUDIT.to_vec(),
        config::BUILTIN_AGGREGATE => sluice_artifacts::AGGREGATE.to_vec(),
        path => std::fs::read(path).with_context(|| format!("read component {path}"))?,
    };
    let handler = {
        let (runtime, name) = (runtime.clone(), format!("cdc:{}", source.name()));
        tokio::task::spawn_blocking(move || runtime.load_change_handler(&name, &wasm)).await??
    };
    let mut pg = database.pg_config()?;
    // Named so that a standby taking over from a frozen owner can end the
    // owner's transactions on the destination (see runner::FROZEN_AFTER).
    if pg.get_application_name() == Some("sluice") {
        pg.application_name(runner::apply_session_name(&source.source.slot_name));
    }
    let pool = crate::db::pool(pg, 2, Duration::from_millis(database.connect_timeout_ms))?;
    let schema = source.schema.clone().unwrap_or_else(|| database.schema.clone());
    Ok(runner::Runner::new(
        source.clone(),
        runtime.clone(),
        handler,
        pool,
        schema,
        config.data_dir.join("cdc-spill").join(source.name()),
    ))
}

impl Cdc {
    /// Each source's name and live counters (shared with its runner).
    pub fn stats(&self) -> &[(String, Arc<stats::Stats>)] {
        &self.stats
    }

    /// Stops every source after the transaction it is applying.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
                tracing::warn!("a change stream did not stop in time");
            }
        }
    }
}
