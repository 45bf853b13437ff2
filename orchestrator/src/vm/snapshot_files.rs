//! The files of a snapshot on disk (a prototype's, a sandbox's): described
//! by size and SHA-256 when written, and checked against that description
//! before anything restores them, so a truncated or altered file is refused,
//! never loaded into a VMM.
//!
//! Hashing a few hundred MiB on every restore would cost more than the
//! restore itself: a check that passed is recorded with the files' stamps
//! (size, mtime, inode) in [`VERIFIED_FILE`], and any rewrite of a file
//! changes its stamp and so forces a new check.

use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::host::stat_stamp;
use super::VmError;

/// Where the stamps of the last passed check are kept, beside the files.
pub const VERIFIED_FILE: &str = "verified";

/// One file of a snapshot, as it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFileMeta {
    /// File name inside the snapshot's directory.
    pub name: String,
    /// Its length (a file cut short or grown is refused by it).
    pub bytes: u64,
    pub sha256: String,
    /// What it takes on disk, holes left out (a live snapshot whose RAM is
    /// mapped is sparse: zero pages are holes). Absent in metadata written
    /// before it was recorded: then `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

impl SnapshotFileMeta {
    /// Bytes on disk, as far as known.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.unwrap_or(self.bytes)
    }
}

pub fn sha256_file(path: &Path) -> Result<[u8; 32], VmError> {
    let mut f =
        fs::File::open(path).map_err(|e| VmError::io(format!("opening {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| VmError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Describes the files `names` in `dir` (plain names only) and records them
/// as verified: they were just written by us. Blocking (hashes them).
pub fn describe(dir: &Path, names: &[String]) -> Result<Vec<SnapshotFileMeta>, VmError> {
    if names.is_empty() || names.iter().any(|n| !crate::cache::is_plain_file_name(n)) {
        return Err(VmError::SnapshotIncompatible(format!(
            "the backend wrote an unusable list of snapshot files: {names:?}"
        )));
    }
    let mut files = Vec::new();
    for name in names {
        let path = dir.join(name);
        let m = fs::metadata(&path)
            .map_err(|e| VmError::io(format!("sizing {}", path.display()), e))?;
        files.push(SnapshotFileMeta {
            name: name.clone(),
            bytes: m.len(),
            sha256: hex::encode(sha256_file(&path)?),
            disk_bytes: Some(std::os::unix::fs::MetadataExt::blocks(&m) * 512),
        });
    }
    if let Ok(stamp) = stamps(dir, &files) {
        crate::cache::write_file(&dir.join(VERIFIED_FILE), stamp.as_bytes())?;
    }
    Ok(files)
}

/// Checks the files of a snapshot in `dir` against their description:
/// names inside `dir`, sizes, then (unless unchanged since the last passed
/// check) SHA-256. `Err` says what is wrong, for the caller's message.
/// Blocking.
pub fn check(dir: &Path, files: &[SnapshotFileMeta]) -> Result<(), String> {
    if files.is_empty() {
        return Err("its metadata lists no snapshot files".into());
    }
    if let Some(f) = files
        .iter()
        .find(|f| !crate::cache::is_plain_file_name(&f.name))
    {
        return Err(format!(
            "its metadata names a file outside its directory ({:?})",
            f.name
        ));
    }
    // Sizes first: a truncated file is caught without reading anything.
    let stamp = stamps(dir, files)?;
    let verified = dir.join(VERIFIED_FILE);
    if fs::read_to_string(&verified).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(());
    }
    for f in files {
        let path = dir.join(&f.name);
        let sha = sha256_file(&path).map_err(|e| e.to_string())?;
        if hex::encode(sha) != f.sha256 {
            return Err(format!(
                "{} does not match its checksum (damaged or altered)",
                path.display()
            ));
        }
    }
    crate::cache::write_file(&verified, stamp.as_bytes()).map_err(|e| e.to_string())?;
    Ok(())
}

/// The stamps of `files` as they are now, or why one is missing or has the
/// wrong size.
fn stamps(dir: &Path, files: &[SnapshotFileMeta]) -> Result<String, String> {
    let mut stamps = Vec::new();
    for f in files {
        let path = dir.join(&f.name);
        let m = fs::metadata(&path).map_err(|e| format!("{} is missing: {e}", path.display()))?;
        if m.len() != f.bytes {
            return Err(format!(
                "{} is {} bytes, {} were written (truncated or grown)",
                path.display(),
                m.len(),
                f.bytes
            ));
        }
        stamps.push(format!("{}={}", f.name, stat_stamp(&m)));
    }
    Ok(stamps.join("\n"))
}
