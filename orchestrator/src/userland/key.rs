//! What a build depends on, hashed: an equal key means an equal build.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{io_err, Source, UserlandError, FORMAT_VERSION};

/// The hash of everything a build of `source` depends on.
pub(super) fn build_key(source: &Source) -> Result<String, UserlandError> {
    let mut h = Sha256::new();
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update(serde_json::to_vec(source).expect("a source serializes"));
    match source {
        Source::Debootstrap { .. } => {}
        Source::Tarball(path) => {
            hash_file(&mut h, path)?;
        }
        Source::Dir(dir) => {
            // Paths, kinds, sizes, modes, owners and mtimes: cheap, and any
            // change to the tree shows.
            for (rel, meta, link) in walk(dir)? {
                h.update(rel.as_os_str().as_encoded_bytes());
                h.update(
                    format!(
                        "\0{}:{}:{}:{}:{}:{}\0",
                        meta.mode(),
                        meta.uid(),
                        meta.gid(),
                        meta.size(),
                        meta.mtime(),
                        meta.mtime_nsec()
                    )
                    .as_bytes(),
                );
                if let Some(t) = link {
                    h.update(t.as_os_str().as_encoded_bytes());
                }
            }
        }
    }
    Ok(hex::encode(&h.finalize()[..12]))
}

/// SHA-256 (hex) and size of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64), UserlandError> {
    let mut h = Sha256::new();
    let size = hash_file(&mut h, path)?;
    Ok((hex::encode(h.finalize()), size))
}

/// Feeds the file at `path` into `h`, read in 1 MiB pieces; returns its size.
fn hash_file(h: &mut Sha256, path: &Path) -> Result<u64, UserlandError> {
    let mut f = fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            return Ok(size);
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
}

pub(super) type WalkEntry = (PathBuf, fs::Metadata, Option<PathBuf>);

/// Every entry under `root` (not following symlinks), sorted by path.
pub(super) fn walk(root: &Path) -> Result<Vec<WalkEntry>, UserlandError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))?;
        for entry in rd {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let rel = rel.join(entry.file_name());
            let meta = entry
                .metadata()
                .map_err(io_err(format!("stat {}", entry.path().display())))?;
            let link = if meta.file_type().is_symlink() {
                fs::read_link(entry.path()).ok()
            } else {
                None
            };
            if meta.is_dir() {
                stack.push(rel.clone());
            }
            out.push((rel, meta, link));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_key_changes_with_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(d.join("etc/a"), "1").unwrap();
        let k1 = build_key(&Source::Dir(d.clone())).unwrap();
        assert_eq!(k1, build_key(&Source::Dir(d.clone())).unwrap());
        fs::write(d.join("etc/b"), "2").unwrap();
        assert_ne!(k1, build_key(&Source::Dir(d)).unwrap());
    }
}
