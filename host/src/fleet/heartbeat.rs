//! This host's heartbeat: its row in `_sluice.hosts`, written every
//! [`HEARTBEAT_EVERY`] and at once when it serves a new registry version
//! (so `?wait=applied` sees it within milliseconds) or starts draining.

use crate::fleet::{Beat, HEARTBEAT_EVERY};
use crate::state::App;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub fn start(app: &Arc<App>) {
    let mut applied = app.registry.applied();
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut beats: u64 = 0;
        loop {
            {
                let Some(app) = app.upgrade() else { return };
                if let Err(e) = app.fleet.beat(&beat(&app)).await {
                    tracing::debug!("heartbeat: {e:#}");
                }
                if let Err(e) = app.fleet.count().await {
                    tracing::debug!("count the fleet's hosts: {e:#}");
                }
                // Now and then, forget the hosts gone for good.
                if beats.is_multiple_of(3600) {
                    let _ = app.fleet.forget_gone().await;
                }
                beats += 1;
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                changed = applied.changed() => if changed.is_err() { return },
            }
        }
    });
}

/// Writes a heartbeat now (the host is draining, say).
pub async fn now(app: &App) {
    if let Err(e) = app.fleet.beat(&beat(app)).await {
        tracing::debug!("heartbeat: {e:#}");
    }
}

fn beat(app: &App) -> Beat {
    let snapshot = app.registry.snapshot();
    let (mut requests, mut events_inserted) = (0, 0);
    let default = [app.default_tenant.clone()];
    let tenants = snapshot.tenants.values().chain(if snapshot.tenants.is_empty() { &default[..] } else { &[] });
    for tenant in tenants {
        requests += tenant.stats.requests.load(Ordering::Relaxed) as i64;
        events_inserted += tenant.stats.events_inserted.load(Ordering::Relaxed) as i64;
    }
    Beat {
        registry_version: snapshot.version,
        draining: app.draining.load(Ordering::Relaxed),
        requests,
        events_inserted,
        spooled: app.spool.len() as i64,
        spooled_bytes: app.spool.bytes() as i64,
    }
}
