//! The hosts of a fleet: every `sluice serve` on one service database
//! registers itself in `_sluice.hosts` and heartbeats there, so any host can
//! list the live ones (`GET /admin/fleet`, `/status.json`, `sluice fleet`)
//! and wait until all of them serve an admin change (`?wait=applied`).
//!
//! Times are the database's (`now()`), so hosts' clocks need not agree.

pub mod heartbeat;

use crate::db::INTERNAL_SCHEMA;
use anyhow::{Context, Result};
use deadpool_postgres::Pool;
use serde::Serialize;
use std::time::{Duration, Instant};

/// How often a host writes its row (and at once when it applies a new
/// registry version).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A host whose last heartbeat is older than this is not listed (it
/// stopped, or cannot reach the database).
pub const LIVE_WITHIN: Duration = Duration::from_secs(10);

/// Rows of hosts gone for longer than this are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A live host, as `GET /admin/fleet` lists it.
#[derive(Serialize, utoipa::ToSchema, Clone, Debug)]
pub struct Host {
    /// The host name and a random suffix, new at each start.
    pub id: String,
    /// Where it listens.
    pub address: String,
    /// Its Sluice version.
    pub version: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    /// What its last heartbeat said.
    #[serde(flatten)]
    pub state: Beat,
}

/// What a heartbeat says about a host.
#[derive(Serialize, utoipa::ToSchema, Clone, Debug)]
pub struct Beat {
    /// The registry version it serves (none while it has not loaded it).
    pub registry_version: Option<i64>,
    /// Whether it is stopping (draining for its balancer).
    pub draining: bool,
    /// Requests and events it has taken since it started.
    pub requests: i64,
    pub events_inserted: i64,
    /// Requests it keeps in its spool, and their bytes.
    pub spooled: i64,
    pub spooled_bytes: i64,
}

/// This host's place in the fleet.
pub struct Fleet {
    pub id: String,
    pub address: String,
    pool: Pool,
    /// How many hosts are live, as the last heartbeat found.
    live: tokio::sync::watch::Sender<usize>,
}

fn hosts_table() -> String {
    format!("{}.hosts", sluice_sdk::sql::quote_ident(INTERNAL_SCHEMA))
}

impl Fleet {
    /// This host, listening on `address`, in the fleet of the service
    /// database that `pool` reaches.
    pub fn new(pool: Pool, address: std::net::SocketAddr) -> Fleet {
        let hostname = hostname();
        let mut suffix = [0u8; 3];
        let _ = getrandom::fill(&mut suffix);
        let id = format!("{hostname}-{}", crate::hex::hex(&suffix));
        // An unspecified address is reached by the host's name.
        let address =
            if address.ip().is_unspecified() { format!("{hostname}:{}", address.port()) } else { address.to_string() };
        Fleet { id, address, pool, live: tokio::sync::watch::Sender::new(1) }
    }

    /// Writes this host's row.
    pub async fn beat(&self, beat: &Beat) -> Result<()> {
        let client = self.pool.get().await.context("connect to the service database")?;
        let hosts = hosts_table();
        client
            .execute(
                &format!(
                    "INSERT INTO {hosts} (id, address, version, started_at, heartbeat_at, registry_version, draining, \
                       requests, events_inserted, spooled, spooled_bytes) \
                     VALUES ($1, $2, $3, now(), now(), $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), registry_version = excluded.registry_version, \
                       draining = excluded.draining, requests = excluded.requests, \
                       events_inserted = excluded.events_inserted, spooled = excluded.spooled, \
                       spooled_bytes = excluded.spooled_bytes"
                ),
                &[
                    &self.id,
                    &self.address,
                    &env!("CARGO_PKG_VERSION"),
                    &beat.registry_version,
                    &beat.draining,
                    &beat.requests,
                    &beat.events_inserted,
                    &beat.spooled,
                    &beat.spooled_bytes,
                ],
            )
            .await
            .context("write this host's heartbeat")?;
        Ok(())
    }

    /// How many hosts are live (this one at least), as it changes.
    pub fn live_hosts(&self) -> tokio::sync::watch::Receiver<usize> {
        self.live.subscribe()
    }

    /// Counts the live hosts again.
    pub async fn count(&self) -> Result<()> {
        let live = self.hosts().await?.len().max(1);
        self.live.send_if_modified(|n| std::mem::replace(n, live) != live);
        Ok(())
    }

    /// Deletes the rows of hosts gone for a day.
    pub async fn forget_gone(&self) -> Result<()> {
        let client = self.pool.get().await.context("connect to the service database")?;
        let seconds = FORGET_AFTER.as_secs_f64();
        client
            .execute(
                &format!("DELETE FROM {} WHERE heartbeat_at < now() - make_interval(secs => $1)", hosts_table()),
                &[&seconds],
            )
            .await?;
        Ok(())
    }

    /// Takes this host off the list (it is stopping for good).
    pub async fn leave(&self) -> Result<()> {
        let client = self.pool.get().await.context("connect to the service database")?;
        client.execute(&format!("DELETE FROM {} WHERE id = $1", hosts_table()), &[&self.id]).await?;
        Ok(())
    }

    /// The live hosts, oldest first.
    pub async fn hosts(&self) -> Result<Vec<Host>> {
        let client = self.pool.get().await.context("connect to the service database")?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, address, version, (extract(epoch FROM started_at) * 1000)::bigint, \
                       (extract(epoch FROM heartbeat_at) * 1000)::bigint, registry_version, draining, requests, \
                       events_inserted, spooled, spooled_bytes \
                     FROM {} WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY started_at, id",
                    hosts_table()
                ),
                &[&LIVE_WITHIN.as_secs_f64()],
            )
            .await
            .context("list the fleet's hosts")?;
        Ok(rows
            .iter()
            .map(|r| Host {
                id: r.get(0),
                address: r.get(1),
                version: r.get(2),
                started_at_ms: r.get(3),
                heartbeat_at_ms: r.get(4),
                state: Beat {
                    registry_version: r.get(5),
                    draining: r.get(6),
                    requests: r.get(7),
                    events_inserted: r.get(8),
                    spooled: r.get(9),
                    spooled_bytes: r.get(10),
                },
            })
            .collect())
    }

    /// Waits until every live host serves registry `version` or later, at
    /// most `within`; then which hosts do and which do not.
    pub async fn wait_applied(&self, version: i64, within: Duration) -> Result<Applied> {
        let started = Instant::now();
        loop {
            let hosts = self.hosts().await?;
            let (applied, pending): (Vec<Host>, Vec<Host>) =
                hosts.into_iter().partition(|h| h.state.registry_version.is_some_and(|v| v >= version));
            if pending.is_empty() || started.elapsed() >= within {
                return Ok(Applied {
                    version,
                    applied: applied.into_iter().map(|h| h.id).collect(),
                    pending: pending.into_iter().map(|h| h.id).collect(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Which live hosts serve a registry version.
pub struct Applied {
    pub version: i64,
    pub applied: Vec<String>,
    pub pending: Vec<String>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".to_owned())
}
