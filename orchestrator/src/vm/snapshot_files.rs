//! The files of a snapshot on disk (a prototype's, a sandbox's): described
//! by size and SHA-256 when written, and checked against that description
//! before anything restores them, so a truncated or altered file is refused,
//! never loaded into a VMM.
//!
//! Hashing a few hundred MiB on every restore would cost more than the
//! restore itself: a check that passed is recorded with the files' stamps
//! (size, mtime, inode) in [`VERIFIED_FILE`], and any rewrite of a file
//! changes its stamp and so forces a new check.
//!
//! A snapshot of a 256 MiB guest is mostly zero pages, which the VMM leaves
//! as holes: the digest ([`DigestKind::NonzeroPages`]) covers the length and
//! every page that is not all zeros with its offset, and skips the holes
//! without reading them. It depends on the content alone (a zero page
//! written out hashes as a hole does), so a copy with another layout of
//! holes still verifies.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
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
    /// What `sha256` is the digest of.
    #[serde(default)]
    pub digest: DigestKind,
    /// What it takes on disk, holes left out (a live snapshot whose RAM is
    /// mapped is sparse: zero pages are holes). Absent in metadata written
    /// before it was recorded: then `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

/// How a snapshot file's `sha256` is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestKind {
    /// SHA-256 of every byte: metadata written before `digest` was recorded.
    #[default]
    WholeFile,
    /// SHA-256 of a tag, the length and, for every 4 KiB page that is not
    /// all zeros, its offset and its bytes (holes are not read).
    NonzeroPages,
}

impl SnapshotFileMeta {
    /// Bytes on disk, as far as known.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.unwrap_or(self.bytes)
    }
}

/// The digest of `kind` of the file at `path`.
pub fn digest_file(path: &Path, kind: DigestKind) -> Result<[u8; 32], VmError> {
    match kind {
        DigestKind::WholeFile => sha256_file(path),
        DigestKind::NonzeroPages => sha256_nonzero_pages(path),
    }
}

/// The page [`DigestKind::NonzeroPages`] works in.
const PAGE: u64 = 4096;

/// Separates this digest's input from any other SHA-256 input.
const NONZERO_PAGES_TAG: &[u8] = b"ironclaw snapshot file: length, then nonzero 4 KiB pages\0";

fn sha256_nonzero_pages(path: &Path) -> Result<[u8; 32], VmError> {
    let err = |e| VmError::io(format!("reading {}", path.display()), e);
    let f = fs::File::open(path).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    let mut h = Sha256::new();
    h.update(NONZERO_PAGES_TAG);
    h.update(len.to_le_bytes());
    const ZERO: [u8; PAGE as usize] = [0; PAGE as usize];
    let mut buf = vec![0u8; 1 << 20];
    // Everything before `pos` (page-aligned, or the end) has been hashed.
    let mut pos = 0u64;
    while pos < len {
        let Some(data) = seek(&f, pos, libc::SEEK_DATA).map_err(err)? else {
            break; // only holes after pos
        };
        let hole = seek(&f, data, libc::SEEK_HOLE).map_err(err)?.unwrap_or(len);
        let end = hole.div_ceil(PAGE).saturating_mul(PAGE).min(len);
        let mut off = (data / PAGE * PAGE).max(pos);
        while off < end {
            let n = (end - off).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], off).map_err(err)?;
            for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                if page != &ZERO[..page.len()] {
                    h.update((off + i as u64 * PAGE).to_le_bytes());
                    h.update(page);
                }
            }
            off += n as u64;
        }
        // end > pos: the hole after `data` (>= pos) lies beyond it.
        pos = end;
    }
    Ok(h.finalize().into())
}

/// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE`; `None` when there is no
/// data (or hole) at or after `from` (`ENXIO`). A file system without
/// support reports the whole file as data, which only costs the reading.
fn seek(f: &fs::File, from: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a descriptor the File keeps open.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
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
            sha256: hex::encode(digest_file(&path, DigestKind::NonzeroPages)?),
            digest: DigestKind::NonzeroPages,
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
        let sha = digest_file(&path, f.digest).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    const MIB: u64 = 1 << 20;

    /// A file of `len` bytes with `pages` (offset, byte) written and the rest
    /// left as holes, or written out as zeros when `dense`.
    fn file(
        dir: &Path,
        name: &str,
        len: u64,
        pages: &[(u64, u8)],
        dense: bool,
    ) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut f = fs::File::create(&path).unwrap();
        if dense {
            f.write_all(&vec![0u8; len as usize]).unwrap();
        } else {
            f.set_len(len).unwrap();
        }
        for &(off, byte) in pages {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&[byte; 100]).unwrap();
        }
        path
    }

    fn digest(path: &Path) -> [u8; 32] {
        digest_file(path, DigestKind::NonzeroPages).unwrap()
    }

    #[test]
    fn the_page_digest_depends_on_the_content_not_on_the_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let pages = [(0, 1), (3 * MIB + 4096 * 7 + 5, 2), (8 * MIB - 100, 3)];
        let sparse = file(tmp.path(), "sparse", 8 * MIB, &pages, false);
        let dense = file(tmp.path(), "dense", 8 * MIB, &pages, true);
        assert!(fs::metadata(&sparse).unwrap().len() == fs::metadata(&dense).unwrap().len());
        assert_eq!(digest(&sparse), digest(&dense));

        // Any byte that differs, in a page with data or in a hole, and the
        // length, change it.
        let changed = [
            file(
                tmp.path(),
                "a",
                8 * MIB,
                &[(0, 9), pages[1], pages[2]],
                false,
            ),
            file(
                tmp.path(),
                "b",
                8 * MIB,
                &[pages[0], pages[1], pages[2], (5 * MIB, 1)],
                false,
            ),
            file(tmp.path(), "c", 8 * MIB + 1, &pages, false),
            file(
                tmp.path(),
                "d",
                8 * MIB,
                &[pages[0], (3 * MIB + 4096 * 8 + 5, 2), pages[2]],
                false,
            ),
        ];
        for c in &changed {
            assert_ne!(digest(c), digest(&sparse), "{}", c.display());
        }
        // Not the plain SHA-256 of the bytes: the kinds are told apart.
        assert_ne!(digest(&sparse), sha256_file(&sparse).unwrap());
    }

    #[test]
    fn described_files_check_and_altered_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        file(tmp.path(), "mem", 4 * MIB, &[(MIB, 7)], false);
        let files = describe(tmp.path(), &["mem".to_string()]).unwrap();
        assert_eq!(files[0].digest, DigestKind::NonzeroPages);
        check(tmp.path(), &files).unwrap();

        // Rewritten with one byte changed in a hole (a new stamp, so the
        // digest is computed again).
        fs::remove_file(tmp.path().join(VERIFIED_FILE)).unwrap();
        file(tmp.path(), "mem", 4 * MIB, &[(MIB, 7), (3 * MIB, 1)], false);
        let err = check(tmp.path(), &files).unwrap_err();
        assert!(err.contains("does not match its checksum"), "{err}");

        // Metadata from before the kind was recorded is a whole-file digest.
        let old: SnapshotFileMeta = serde_json::from_str(&format!(
            r#"{{"name":"mem","bytes":{},"sha256":"{}"}}"#,
            4 * MIB,
            hex::encode(sha256_file(&tmp.path().join("mem")).unwrap())
        ))
        .unwrap();
        assert_eq!(old.digest, DigestKind::WholeFile);
        check(tmp.path(), &[old]).unwrap();
    }
}
