//! Files the service keeps: the registry, uploaded and compiled components.

use anyhow::{Context, Result};
use std::path::Path;

/// Writes a file readable by its owner only, all at once: readers see the
/// old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("the path has no folder")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}", std::process::id(), path.file_name().unwrap().to_string_lossy()));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
