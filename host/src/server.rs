//! `sluice serve`: wires the database, the components, the writer and the
//! HTTP API together, and takes them down in order.

use crate::config::DatabaseConfig;
use crate::config_file::Config;
use crate::db;
use crate::embedded::{Cluster, ClusterOptions};
use crate::ingest::Tenant;
use crate::runtime::{Normalizer, Runtime};
use crate::state::App;
use crate::tenants::Registry;
use crate::tenants::spec::TenantSpec;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;

/// The environment variable that names the database, over the config file.
pub const DATABASE_URL_VAR: &str = "SLUICE_DATABASE_URL";

pub async fn serve(config: Config) -> Result<()> {
    if config.metrics.require_admin_token && config.admin_token.is_none() {
        anyhow::bail!("metrics.require_admin_token is set but admin_token is not: set admin_token too");
    }
    let (database, mut embedded) = database(&config).await?;

    let (registry, normalizer) = registry(&config, &database).await?;
    registry.start(config.tenants.clone()).await?;
    registry.watch();
    let destination = registry.service_destination()?;
    let migrated = match registry.migrate(&destination, &database.schema, &normalizer, &Default::default()).await {
        Ok(()) => true,
        // Serve anyway: /readyz says not ready, requests wait for the
        // database up to their deadline, and the first after it answers
        // creates the tables.
        Err(e) if db::is_unreachable(&e) => {
            tracing::warn!("the database is unreachable; serving anyway, not ready until it answers: {e:#}");
            false
        }
        Err(e) => return Err(e),
    };
    let default_spec = TenantSpec {
        id: "default".into(),
        keys: Vec::new(),
        component: crate::tenants::spec::BUILTIN.into(),
        database: None,
        limits: Default::default(),
        batch: None,
        apis: crate::tenants::spec::all_apis(),
        settings: config.settings.clone(),
        query_tokens: Vec::new(),
        write_modes: Default::default(),
    };
    let default_tenant = Arc::new(Tenant::new(
        default_spec,
        database.schema.clone(),
        destination.clone(),
        config.limits.clone(),
        normalizer,
        migrated,
        None,
    ));
    let tenants = registry.snapshot().tenants.len();
    if tenants == 0 && config.keyless_loopback {
        tracing::info!(
            "no tenants are configured: the default tenant takes requests without a key, from loopback only"
        );
    } else if tenants == 0 {
        tracing::warn!(
            "no tenants are configured and keyless_loopback is off: every ingest request is refused until a tenant \
             is added"
        );
    } else {
        tracing::info!(tenants, "tenants loaded");
    }

    // Listening from here on: connections wait in the kernel's queue until
    // they are served below.
    let listener = listen(config.listen).with_context(|| format!("listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let fleet = crate::fleet::Fleet::new(destination.pool.clone(), address);
    let app = Arc::new(App {
        runtime: registry.runtime.clone(),
        registry: registry.clone(),
        default_tenant,
        keyless_loopback: config.keyless_loopback,
        pool: destination.pool.clone(),
        admin_token: config.admin_token.clone(),
        in_flight_bytes: Default::default(),
        queries: crate::query::Queries::new(config.query.clone()),
        spool: crate::spool::Spool::open(config.data_dir.join("spool"), config.spool.clone())?,
        metrics: crate::metrics::metrics(),
        metrics_config: config.metrics.clone(),
        memory: crate::memory::MemoryLimiter::start(config.limits.max_memory_bytes, config.memory_spike_bytes()),
        fleet,
        draining: Default::default(),
    });
    crate::fleet::heartbeat::start(&app);
    crate::spool::Spool::start(&app);
    crate::metrics::render::start_sampling(&app);
    drop(destination);
    let cdc = crate::cdc::start(&config, app.runtime.clone(), &database, app.fleet.live_hosts()).await?;
    for (name, stats) in cdc.stats() {
        app.metrics.add_cdc_source(name, stats.clone());
    }
    tracing::info!(%address, host = %app.fleet.id, "listening");
    // Scripts and tests read this line to find the port.
    println!("sluice listening on http://{address}");

    crate::listener::serve(
        listener,
        crate::router::router(app.clone()),
        config.http.clone(),
        config.limits.max_connections,
        |reason| crate::metrics::metrics().connection_cut(reason),
        drain(app.clone(), Duration::from_millis(config.http.drain_ms)),
    )
    .await?;
    // Every connection is closed, so every request has its answer; the
    // writer drains what is left and stops.
    tracing::info!("stopping: writing what is queued");
    if let Err(e) = app.fleet.leave().await {
        tracing::warn!("could not take this host off the fleet's list (it drops off after its heartbeat ages): {e:#}");
    }
    // One more pass over the spool while the writers run, for a few
    // seconds: what it cannot write stays on disk for the next start with
    // this data_dir.
    if !app.spool.is_empty() {
        let written = tokio::time::timeout(Duration::from_secs(5), app.spool.replay(&app)).await.unwrap_or(0);
        let left = app.spool.len();
        if left > 0 {
            tracing::warn!(
                written,
                left,
                "stopping with requests in the spool: a Sluice started again with this data_dir writes them (keep \
                 its volume)"
            );
        }
    }
    // The last holder of the default tenant's writer: dropped, so the
    // writers can drain and stop.
    drop(app);
    cdc.stop().await;
    registry.close().await;
    if let Some(cluster) = embedded.as_mut() {
        tokio::task::block_in_place(|| cluster.stop())?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The engine, the built-in normalizer (or `[components] builtin` in its
/// place) and the tenant registry over `database`: what `serve` and
/// `migrate` both start from.
pub async fn registry(config: &Config, database: &DatabaseConfig) -> Result<(Arc<Registry>, Arc<Normalizer>)> {
    let runtime = Runtime::new(&config.limits, &config.cache_dir())?;
    let builtin_wasm = match &config.components.builtin {
        Some(path) => std::fs::read(path).with_context(|| format!("read component {}", path.display()))?,
        None => sluice_artifacts::STANDARD.to_vec(),
    };
    let normalizer = {
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || runtime.load("builtin", &builtin_wasm)).await??
    };
    let registry = Registry::new(
        runtime,
        normalizer.clone(),
        database.clone(),
        config.limits.clone(),
        config.batch.clone(),
        &config.data_dir,
    );
    Ok((Arc::new(registry), normalizer))
}

/// The database to use: `SLUICE_DATABASE_URL`, else the config file, else
/// an embedded cluster under the data folder. Pool and schema settings come
/// from the config file in every case.
async fn database(config: &Config) -> Result<(DatabaseConfig, Option<Cluster>)> {
    let with_url = |url: String| DatabaseConfig { url: Some(url), ..config.database.clone() };
    if let Ok(url) = std::env::var(DATABASE_URL_VAR) {
        let database = with_url(url);
        database.pg_config().with_context(|| DATABASE_URL_VAR.to_string())?;
        return Ok((database, None));
    }
    // PGHOST names a database too, as it does for libpq.
    if config.database.is_configured() || std::env::var_os("PGHOST").is_some() {
        config.database.pg_config()?;
        return Ok((config.database.clone(), None));
    }
    let options = ClusterOptions::new(config.data_dir.join("postgres"));
    tracing::info!(data_dir = %options.data_dir.display(), "no database is configured: starting an embedded PostgreSQL");
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(options)).await??;
    let url = cluster.url();
    println!(
        "sluice embedded PostgreSQL at postgres://{}@{}:{}/{} (password in {})",
        crate::embedded::USER,
        crate::embedded::HOST,
        cluster.port(),
        crate::embedded::DATABASE,
        cluster.password_file().display()
    );
    Ok((with_url(url), Some(cluster)))
}

/// Completes when the listener is to close: on SIGTERM (or SIGINT),
/// after `/readyz` has answered 503 for `drain` while requests were still
/// served, so balancers stop sending to this host first.
async fn drain(app: Arc<App>, drain: Duration) {
    shutdown_signal().await;
    app.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    crate::fleet::heartbeat::now(&app).await;
    if !drain.is_zero() {
        tracing::info!(drain_ms = drain.as_millis() as u64, "draining: /readyz answers 503 while requests are served");
        tokio::time::sleep(drain).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested: no new connections; finishing requests in flight");
}

/// The kernel's queue of connections not yet accepted: as long as Linux
/// allows by default (`net.core.somaxconn`), so a burst of connections (a
/// flood's among them) waits there instead of being dropped, which costs a
/// client a 1 s SYN retransmit.
const ACCEPT_QUEUE: u32 = 4096;

fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted service may listen again at once, past its old
    // connections' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(ACCEPT_QUEUE)
}
