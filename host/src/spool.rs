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

pub mod replay;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sluice_sdk::Request;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// The sequence number in a spool file's name.
fn sequence(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.rsplit('-').next()?.parse().ok()
}
