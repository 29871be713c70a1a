//! Sending spooled requests again, through their tenant's component and
//! writer, once the destination takes rows.

use crate::ingest::IngestError;
use crate::spool::Spool;
use crate::state::App;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

impl Spool {
    /// Sends spooled requests again, oldest first and [`REPLAYS`] at a
    /// time, until one cannot be written yet. Returns how many were
    /// written.
    ///
    /// Several at once, so the spool drains while new requests keep
    /// coming: each replay waits for a flush of the writer like any
    /// request, and one at a time could never keep up with many clients.
    pub async fn replay(&self, app: &App) -> usize {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let files = match self.files() {
            Ok(files) => files,
            Err(e) => {
                tracing::error!("cannot read the spool folder {}: {e}", self.dir.display());
                return 0;
            }
        };
        let (mut written, mut blocked) = (0, false);
        let mut files = files.into_iter();
        let mut replaying = FuturesUnordered::new();
        loop {
            while !blocked && replaying.len() < REPLAYS {
                let Some(path) = files.next() else { break };
                replaying.push(self.replay_one(app, path));
            }
            match replaying.next().await {
                Some(Replayed::Written) => written += 1,
                // Still cannot write: try again later (the ones under way finish).
                Some(Replayed::Blocked) => blocked = true,
                Some(Replayed::SetAside) => {}
                None => return written,
            }
        }
    }

    async fn replay_one(&self, app: &App, path: PathBuf) -> Replayed {
        let mut request = match Spool::read(&path) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(file = %path.display(), "a spooled request cannot be read; set aside: {e:#}");
                let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                return Replayed::SetAside;
            }
        };
        let tenant = match app.registry.get(&request.tenant) {
            Ok(tenant) => tenant,
            Err(_) if request.tenant == app.default_tenant.id() => app.default_tenant.clone(),
            Err(_) => {
                tracing::error!(file = %path.display(), tenant = %request.tenant, "the spooled request's tenant is gone; set aside");
                let _ = std::fs::rename(&path, path.with_extension("orphan"));
                return Replayed::SetAside;
            }
        };
        request.settings = tenant.settings.clone();
        match tenant.ingest(&app.runtime, Arc::new(request)).await {
            Ok(tally) => {
                if !tally.rejected.is_empty() {
                    tracing::warn!(tenant = %tenant.id(), rejected = tally.rejected.len(), "a spooled request had events refused");
                }
                // As a crash between the commit and the delete: written again later.
                if crate::faults::fires("spool-before-delete") {
                    return Replayed::Written;
                }
                self.remove(&path);
                Replayed::Written
            }
            Err(IngestError::Write(_) | IngestError::Resting(_)) => Replayed::Blocked,
            Err(IngestError::Component(crate::runtime::ComponentFailure::Busy(_))) => Replayed::Blocked,
            Err(e) => {
                tracing::error!(file = %path.display(), "a spooled request failed for good; set aside: {e:?}");
                let _ = std::fs::rename(&path, path.with_extension("failed"));
                Replayed::SetAside
            }
        }
    }

    /// Replays the spool every `retry_interval_ms` while the service runs.
    /// It holds the service only while replaying, so stopping the service
    /// (which drops it, and with it the writers) is never held up.
    pub fn start(app: &Arc<App>) {
        let interval = Duration::from_millis(app.spool.config.retry_interval_ms.max(50));
        let app = Arc::downgrade(app);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(app) = app.upgrade() else { return };
                if !app.spool.is_empty() {
                    let written = app.spool.replay(&app).await;
                    if written > 0 {
                        tracing::info!(written, left = app.spool.len(), "spooled requests written");
                    }
                }
            }
        });
    }
}

/// Spooled requests replayed at once.
const REPLAYS: usize = 16;

/// What became of one spooled request.
enum Replayed {
    Written,
    /// The destination cannot take it yet: it stays, and replaying stops.
    Blocked,
    /// Unreadable, its tenant gone, or refused for good: renamed aside.
    SetAside,
}
