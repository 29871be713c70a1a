//! The local spool. When a tenant's destination cannot take rows — down
//! past the request's deadline, a table missing, a privilege revoked — the
//! request itself is written to `<data_dir>/spool/` and synced to disk,
//! and answered 202 Accepted. A background task sends spooled requests
//! through the tenant's component and writer again, oldest first, once
//! the destination takes rows, several at a time; then their files are
//! deleted. Requests replayed together may be written in any order among
//! themselves, as requests sent at once by clients are.
//!
//! A file holds one request: a JSON header line, then the body's bytes.
//! Replaying the request (not its rows) keeps the file small and lets a
//! fixed component or table take effect. Rows with keys are idempotent, so
//! a replay after a crash between commit and delete writes nothing twice.

use crate::http::App;
use crate::ingest::IngestError;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sluice_sdk::Request;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool requests the destination cannot take (else they get 503).
    pub enabled: bool,
    /// Most bytes the spool may hold; past it, requests get 503 again.
    pub max_bytes: u64,
    /// How often the spool is tried again, in milliseconds.
    pub retry_interval_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> SpoolConfig {
        SpoolConfig { enabled: true, max_bytes: 1 << 30, retry_interval_ms: 1000 }
    }
}

/// A spooled request's header line.
#[derive(Serialize, Deserialize)]
struct Header {
    tenant: String,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    received_at: i64,
}

pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    /// Bytes in the spool now.
    used: AtomicU64,
    /// Names files so they sort oldest first.
    next: AtomicU64,
}

impl Spool {
    /// The spool in `dir`, counting what an earlier run left there.
    pub fn open(dir: PathBuf, config: SpoolConfig) -> Result<Spool> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // Spooled requests are tenants' bodies: the folder and its files are
        // the service user's alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create the spool folder {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("make the spool folder {} private", dir.display()))?;
        let mut used = 0;
        let mut last = 0;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            used += entry.metadata()?.len();
            // Files an older version left readable to others are made private.
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
            if let Some(n) = sequence(&entry.path()) {
                last = last.max(n);
            }
        }
        Ok(Spool { dir, config, used: used.into(), next: AtomicU64::new(last + 1) })
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Requests waiting in the spool.
    pub fn len(&self) -> usize {
        self.files().map(|f| f.len()).unwrap_or(0)
    }

    /// Bytes in the spool now.
    pub fn bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `request` to disk and syncs it. `Ok(false)`: the spool is full.
    pub fn keep(&self, request: &Request) -> Result<bool> {
        let header = Header {
            tenant: request.tenant.clone(),
            method: request.method.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            headers: request.headers.clone(),
            received_at: request.received_at,
        };
        let mut bytes = serde_json::to_vec(&header)?;
        bytes.push(b'\n');
        bytes.extend_from_slice(&request.body);
        let size = bytes.len() as u64;
        if self.used.fetch_add(size, Ordering::SeqCst) + size > self.config.max_bytes {
            self.used.fetch_sub(size, Ordering::SeqCst);
            return Ok(false);
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("{:020}-{}.req", request.received_at.max(0), n));
        let kept = (|| -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            if crate::faults::fires("spool-keep") {
                return Err(std::io::Error::other("failpoint spool-keep"));
            }
            let temporary = path.with_extension("tmp");
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = kept {
            self.used.fetch_sub(size, Ordering::SeqCst);
            return Err(e).with_context(|| format!("write {}", path.display()));
        }
        Ok(true)
    }

    /// Spooled requests, oldest first.
    fn files(&self) -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "req"))
            .collect();
        files.sort();
        Ok(files)
    }

    fn read(path: &Path) -> Result<Request> {
        let bytes = std::fs::read(path)?;
        let split = bytes.iter().position(|b| *b == b'\n').context("no header line")?;
        let header: Header = serde_json::from_slice(&bytes[..split]).context("a bad header line")?;
        Ok(Request {
            tenant: header.tenant,
            method: header.method,
            path: header.path,
            query: header.query,
            headers: header.headers,
            body: bytes[split + 1..].to_vec(),
            received_at: header.received_at,
            settings: String::new(),
        })
    }

    fn remove(&self, path: &Path) {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(path).is_ok() {
            self.used.fetch_sub(size, Ordering::SeqCst);
        }
    }

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

/// The sequence number in a spool file's name.
fn sequence(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.rsplit('-').next()?.parse().ok()
}
