//! `sluice serve`: wires the database, the components, the writer and the
//! HTTP API together, and takes them down in order.

use crate::config::Config;
use crate::db;
use crate::embedded::{Cluster, ClusterOptions};
use crate::http::{self, App};
use crate::ingest::Tenant;
use crate::runtime::Runtime;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The environment variable that names the database, over the config file.
pub const DATABASE_URL_VAR: &str = "SLUICE_DATABASE_URL";

pub async fn serve(config: Config) -> Result<()> {
    let (pg_config, mut embedded) = database(&config).await?;

    let runtime = Runtime::new(&config.limits, &config.cache_dir())?;
    let events_wasm = match &config.components.events {
        Some(path) => std::fs::read(path).with_context(|| format!("read component {}", path.display()))?,
        None => sluice_artifacts::EVENTS.to_vec(),
    };
    let normalizer = {
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || runtime.load("events", &events_wasm)).await??
    };

    let wait = Duration::from_millis(config.database.connect_timeout_ms);
    let pool = db::pool(pg_config, config.database.pool_size, wait)?;
    {
        let mut client = pool.get().await.context("connect to the database")?;
        db::migrate::migrate(&mut client, &config.database.schema, &normalizer.tables).await?;
    }
    let (writer, writer_done) = db::writer::Writer::start(pool.clone(), config.batch.clone());
    let tenant = Arc::new(Tenant::new("default", normalizer, &config.database.schema, writer));
    tracing::info!("no tenants are configured: the default tenant takes requests without a key, from loopback only");

    let app = Arc::new(App {
        runtime,
        default_tenant: tenant,
        pool,
        max_body_bytes: config.limits.max_body_bytes,
        request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening");
    // Scripts and tests read this line to find the port.
    println!("sluice listening on http://{address}");

    axum::serve(listener, http::router(app).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Every connection is closed, so every request has its answer; the
    // writer drains what is left and stops.
    tracing::info!("stopping: writing what is queued");
    let _ = writer_done.await;
    if let Some(cluster) = embedded.as_mut() {
        tokio::task::block_in_place(|| cluster.stop())?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The database to use: `SLUICE_DATABASE_URL`, else the config file, else
/// an embedded cluster under the data folder.
async fn database(config: &Config) -> Result<(tokio_postgres::Config, Option<Cluster>)> {
    if let Ok(url) = std::env::var(DATABASE_URL_VAR) {
        let db = crate::config::DatabaseConfig { url: Some(url), ..config.database.clone() };
        let pg = db.pg_config().with_context(|| format!("{DATABASE_URL_VAR}"))?;
        return Ok((pg, None));
    }
    if config.database.is_configured() {
        return Ok((config.database.pg_config()?, None));
    }
    let options = ClusterOptions::new(config.data_dir.join("postgres"));
    tracing::info!(data_dir = %options.data_dir.display(), "no database is configured: starting an embedded PostgreSQL");
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(options)).await??;
    let pg = cluster.url().parse::<tokio_postgres::Config>().context("the embedded cluster's URL")?;
    println!(
        "sluice embedded PostgreSQL at postgres://{}@{}:{}/{} (password in {})",
        crate::embedded::USER,
        crate::embedded::HOST,
        cluster.port(),
        crate::embedded::DATABASE,
        cluster.password_file().display()
    );
    Ok((pg, Some(cluster)))
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
