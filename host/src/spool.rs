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
        // Both parts zero-padded, so names sort as (time received, arrival):
        // unpadded, arrival 10 would sort before arrival 9.
        let path = self.dir.join(format!("{:020}-{n:020}.req", request.received_at.max(0)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A folder of its own under the system's temporary folder, removed
    /// when dropped.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Folder {
            let dir = std::env::temp_dir().join(format!("sluice-spool-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Folder(dir)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn request(tenant: &str, received_at: i64, body: &[u8]) -> Request {
        Request {
            tenant: tenant.into(),
            method: "POST".into(),
            path: "/v1/events".into(),
            query: "a=1".into(),
            headers: vec![("content-type".into(), "application/x-ndjson".into())],
            body: body.to_vec(),
            received_at,
            settings: "{\"not\":\"kept\"}".into(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_request_is_kept_privately_and_read_back_whole() {
        let folder = Folder::new("roundtrip");
        let spool = Spool::open(folder.0.clone(), SpoolConfig::default()).unwrap();
        assert_eq!(mode(&folder.0), 0o700);
        let body = b"{\"a\":1}\n{\"b\":\"line\\nbreak\"}\n\0binary";
        assert!(spool.keep(&request("acme", 1_700_000_000_000_000, body)).unwrap());
        let files = spool.files().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(mode(&files[0]), 0o600, "a tenant's body is the service user's alone");
        assert_eq!(spool.bytes(), std::fs::metadata(&files[0]).unwrap().len());
        let read = Spool::read(&files[0]).unwrap();
        let kept = request("acme", 1_700_000_000_000_000, body);
        assert_eq!(
            (read.tenant, read.method, read.path, read.query, read.headers, read.body, read.received_at),
            (kept.tenant, kept.method, kept.path, kept.query, kept.headers, kept.body, kept.received_at)
        );
        assert_eq!(read.settings, "", "settings are the tenant's at replay, not at spooling");
        spool.remove(&files[0]);
        assert_eq!((spool.len(), spool.bytes()), (0, 0));
    }

    #[test]
    fn files_replay_oldest_first_and_a_reopened_spool_carries_on() {
        let folder = Folder::new("order");
        let spool = Spool::open(folder.0.clone(), SpoolConfig::default()).unwrap();
        for (tenant, at) in [("b", 20), ("a", 10), ("c", 20)] {
            assert!(spool.keep(&request(tenant, at, b"x")).unwrap());
        }
        // A write that never finished, and a file set aside, are not requests.
        std::fs::write(folder.0.join("00000000000000000001-99.tmp"), b"partial").unwrap();
        std::fs::write(folder.0.join("00000000000000000001-98.failed"), b"set aside").unwrap();
        let tenants = |spool: &Spool| -> Vec<String> {
            spool.files().unwrap().iter().map(|f| Spool::read(f).unwrap().tenant).collect()
        };
        assert_eq!(tenants(&spool), ["a", "b", "c"], "by time received, then by arrival");
        let used = spool.bytes();
        drop(spool);

        let reopened = Spool::open(folder.0.clone(), SpoolConfig::default()).unwrap();
        assert_eq!(reopened.len(), 3);
        assert!(reopened.bytes() >= used, "what an earlier run left is counted");
        assert!(reopened.keep(&request("d", 20, b"x")).unwrap());
        assert_eq!(tenants(&reopened), ["a", "b", "c", "d"], "numbering carries on past the files found");
    }

    #[test]
    fn a_full_spool_refuses_and_counts_nothing() {
        let folder = Folder::new("full");
        let config = SpoolConfig { max_bytes: 400, ..SpoolConfig::default() };
        let spool = Spool::open(folder.0.clone(), config).unwrap();
        assert!(spool.keep(&request("acme", 1, &[b'x'; 100])).unwrap());
        let used = spool.bytes();
        assert!(!spool.keep(&request("acme", 2, &[b'x'; 300])).unwrap(), "past max_bytes");
        assert_eq!((spool.len(), spool.bytes()), (1, used));
    }

    #[test]
    fn an_unreadable_file_says_why() {
        let folder = Folder::new("unreadable");
        std::fs::create_dir_all(&folder.0).unwrap();
        let path = folder.0.join("1-1.req");
        std::fs::write(&path, b"no header line").unwrap();
        assert!(format!("{:#}", Spool::read(&path).unwrap_err()).contains("no header line"));
        std::fs::write(&path, b"{\"tenant\":1}\nbody").unwrap();
        assert!(format!("{:#}", Spool::read(&path).unwrap_err()).contains("a bad header line"));
    }
}
