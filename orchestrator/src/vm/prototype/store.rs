//! The prototype cache on disk: where it lives, loading a prototype only
//! when it is complete and intact (sizes, then SHA-256 once per rewrite),
//! the per-key lock, and pruning, listing and removing prototypes.

use std::fs;
use std::path::{Path, PathBuf};

use super::meta::{Prototype, PrototypeMeta, FORMAT_VERSION, META_FILE};
use crate::vm::backend::BackendKind;
use crate::vm::snapshot_files;
use crate::vm::VmError;

pub(super) const PROTOTYPES_SUBDIR: &str = "prototypes";

pub fn prototypes_dir() -> PathBuf {
    crate::cache::root().join(PROTOTYPES_SUBDIR)
}

pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |e| VmError::io(context, e)
}

/// Loads the prototype in `dir` if it is complete, intact and made by
/// `backend`.
pub(super) fn load_checked(dir: &Path, backend: BackendKind) -> Result<Option<Prototype>, VmError> {
    let Ok(text) = fs::read_to_string(dir.join(META_FILE)) else {
        return Ok(None);
    };
    let Ok(meta) = serde_json::from_str::<PrototypeMeta>(&text) else {
        return Ok(None);
    };
    if meta
        .files
        .iter()
        .any(|f| !crate::cache::is_plain_file_name(&f.name))
    {
        tracing::warn!(dir = %dir.display(), "prototype metadata names a file outside its directory");
        return Ok(None);
    }
    if meta.format != FORMAT_VERSION || meta.backend != backend || meta.files.is_empty() {
        tracing::warn!(dir = %dir.display(), format = meta.format, backend = %meta.backend, "prototype stale or of another backend");
        return Ok(None);
    }
    let proto = Prototype {
        dir: dir.to_path_buf(),
        meta,
    };
    if let Err(why) = snapshot_files::check(dir, &proto.meta.files) {
        tracing::warn!(dir = %dir.display(), "prototype unusable: {why}");
        return Ok(None);
    }
    Ok(Some(proto))
}

/// The lock file of a prototype key: held while the key is checked or
/// built, so two orchestrators never build the same prototype at once.
pub(super) fn key_lock_path(root: &Path, key: &str) -> PathBuf {
    root.join(format!(".{key}.lock"))
}

/// Build directories older than this belong to a build that died.
const STALE_BUILD_SECS: u64 = 3600;

/// Removes what a newly built prototype `current` makes useless, so the cache
/// does not grow with every upgrade: prototypes of the same machine (backend,
/// kernel path, rootfs path, vCPUs, memory, accelerator) under another key
/// (an input such as the initramfs changed), prototypes whose input files are
/// gone, prototypes of an older format, and build directories of dead builds.
/// Returns the directory names removed.
pub fn prune(current: &PrototypeMeta) -> Vec<String> {
    prune_in(&prototypes_dir(), current)
}

fn prune_in(root: &Path, current: &PrototypeMeta) -> Vec<String> {
    let root = root.to_path_buf();
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(&root) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_secs());
        let stale = if name.starts_with(".build-") {
            age > STALE_BUILD_SECS
        } else if name.starts_with('.') || name == current.key || !path.is_dir() {
            false
        } else {
            match fs::read_to_string(path.join(META_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<PrototypeMeta>(&t).ok())
            {
                // Unreadable metadata: an older format (or damage) no version will use.
                None => age > STALE_BUILD_SECS || older_format(&path),
                Some(m) => {
                    let inputs_gone = !m.kernel.exists()
                        || !m.initramfs.exists()
                        || m.rootfs.as_ref().is_some_and(|r| !r.exists());
                    // Only a generated initramfs replaced by a newer generated one
                    // supersedes: a user's own initramfs may be in use alongside.
                    let superseded = generated(&m.initramfs)
                        && generated(&current.initramfs)
                        && m.backend == current.backend
                        && m.kernel == current.kernel
                        && m.rootfs == current.rootfs
                        && m.vcpus == current.vcpus
                        && m.memory_mib == current.memory_mib
                        && m.accel == current.accel;
                    inputs_gone || superseded || m.format < FORMAT_VERSION
                }
            }
        };
        if !stale {
            continue;
        }
        // Never remove a prototype another orchestrator is checking or building.
        let lock = if name.starts_with('.') {
            None
        } else {
            match crate::cache::FileLock::try_acquire(&key_lock_path(&root, &name)) {
                Some(l) => Some(l),
                None => continue,
            }
        };
        if fs::remove_dir_all(&path).is_ok() {
            if lock.is_some() {
                let _ = fs::remove_file(key_lock_path(&root, &name));
            }
            removed.push(name);
        }
    }
    removed
}

/// Whether `initramfs` is one IronClaw generated (named `initramfs-*.cpio`).
fn generated(initramfs: &Path) -> bool {
    initramfs
        .file_name()
        .map(|n| n.to_string_lossy())
        .is_some_and(|n| n.starts_with("initramfs-") && n.ends_with(".cpio"))
}

/// Whether the metadata in `dir` declares a format older than this build's.
fn older_format(dir: &Path) -> bool {
    fs::read_to_string(dir.join(META_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("format").and_then(|f| f.as_u64()))
        .is_some_and(|f| f < u64::from(FORMAT_VERSION))
}

/// Every prototype in the cache.
pub fn list() -> Vec<Prototype> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(prototypes_dir()) else {
        return out;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if let Ok(text) = fs::read_to_string(e.path().join(META_FILE)) {
            if let Ok(meta) = serde_json::from_str::<PrototypeMeta>(&text) {
                out.push(Prototype {
                    dir: e.path(),
                    meta,
                });
            }
        }
    }
    out.sort_by_key(|p| p.meta.created_unix);
    out
}

/// Removes the prototype with `key` (or a unique prefix of it); returns the keys removed.
pub fn remove(key_prefix: &str) -> Result<Vec<String>, VmError> {
    crate::vm::config::validate_id(key_prefix)?;
    let matches: Vec<Prototype> = list()
        .into_iter()
        .filter(|p| p.meta.key.starts_with(key_prefix))
        .collect();
    let mut removed = Vec::new();
    for p in matches {
        fs::remove_dir_all(&p.dir).map_err(io(format!("removing {}", p.dir.display())))?;
        removed.push(p.meta.key);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::accel::Accel;
    use crate::vm::prototype::SnapshotFileMeta;
    use sha2::{Digest, Sha256};

    /// A prototype directory with two snapshot files and matching metadata.
    fn fake_prototype(backend: BackendKind) -> PathBuf {
        let mut b = [0u8; 6];
        getrandom::getrandom(&mut b).unwrap();
        let dir = std::env::temp_dir().join(format!("ironclaw-proto-unit-{}", hex::encode(b)));
        fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for (name, content) in [("a.state", &b"state"[..]), ("b.mem", &[7u8; 4096][..])] {
            fs::write(dir.join(name), content).unwrap();
            files.push(SnapshotFileMeta {
                name: name.into(),
                bytes: content.len() as u64,
                sha256: hex::encode(Sha256::digest(content)),
                digest: Default::default(),
                disk_bytes: None,
            });
        }
        let meta = PrototypeMeta {
            key: "k".into(),
            format: FORMAT_VERSION,
            ironclaw_version: "test".into(),
            kernel: "/k".into(),
            initramfs: "/i".into(),
            rootfs: None,
            vcpus: 1,
            memory_mib: 128,
            accel: Accel::Kvm,
            backend,
            files,
            created_unix: 0,
            boot_ms: 0,
            snapshot_ms: 0,
        };
        fs::write(dir.join(META_FILE), serde_json::to_string(&meta).unwrap()).unwrap();
        dir
    }

    #[test]
    fn prune_removes_superseded_and_orphaned_prototypes_only() {
        let mut b = [0u8; 6];
        getrandom::getrandom(&mut b).unwrap();
        let root = std::env::temp_dir().join(format!("ironclaw-prune-unit-{}", hex::encode(b)));
        fs::create_dir_all(&root).unwrap();
        let inputs = root.join("inputs");
        fs::create_dir_all(&inputs).unwrap();
        let file = |n: &str| {
            let p = inputs.join(n);
            fs::write(&p, n).unwrap();
            p
        };
        let (kernel, old_i, new_i, own_i) = (
            file("vmlinuz"),
            file("initramfs-old.cpio"),
            file("initramfs-new.cpio"),
            file("custom.img"),
        );
        let meta = |key: &str, initramfs: &Path, memory_mib: u32| PrototypeMeta {
            key: key.into(),
            format: FORMAT_VERSION,
            ironclaw_version: "test".into(),
            kernel: kernel.clone(),
            initramfs: initramfs.to_path_buf(),
            rootfs: None,
            vcpus: 1,
            memory_mib,
            accel: Accel::Tcg,
            backend: BackendKind::Qemu,
            files: Vec::new(),
            created_unix: 0,
            boot_ms: 0,
            snapshot_ms: 0,
        };
        let put = |m: &PrototypeMeta| {
            fs::create_dir_all(root.join(&m.key)).unwrap();
            fs::write(
                root.join(&m.key).join(META_FILE),
                serde_json::to_string(m).unwrap(),
            )
            .unwrap();
        };
        let current = meta("current", &new_i, 256);
        put(&current);
        put(&meta("superseded", &old_i, 256));
        put(&meta("other-shape", &old_i, 512));
        put(&meta("users-own", &own_i, 256));
        let mut gone = meta("orphaned", &old_i, 512);
        gone.kernel = inputs.join("no-such-kernel");
        put(&gone);
        fs::create_dir_all(root.join("old-format")).unwrap();
        fs::write(
            root.join("old-format").join(META_FILE),
            r#"{"format":1,"key":"old-format"}"#,
        )
        .unwrap();
        let mut removed = prune_in(&root, &current);
        removed.sort();
        assert_eq!(removed, ["old-format", "orphaned", "superseded"]);
        for kept in ["current", "other-shape", "users-own"] {
            assert!(
                root.join(kept).join(META_FILE).exists(),
                "{kept} was removed"
            );
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn every_snapshot_file_is_checked() {
        let dir = fake_prototype(BackendKind::Firecracker);
        let p = load_checked(&dir, BackendKind::Firecracker)
            .unwrap()
            .expect("intact");
        assert_eq!(p.meta.snapshot_bytes(), 5 + 4096);
        assert_eq!(p.snapshot(), dir.join("a.state"));
        // Made by another backend: not used.
        assert!(load_checked(&dir, BackendKind::Qemu).unwrap().is_none());
        // The second file truncated.
        fs::write(dir.join("b.mem"), [7u8; 100]).unwrap();
        assert!(load_checked(&dir, BackendKind::Firecracker)
            .unwrap()
            .is_none());
        // Same size, other bytes: the checksum catches it. (After a pause:
        // file times are coarse, and a rewrite must change the stamp.)
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(dir.join("b.mem"), [8u8; 4096]).unwrap();
        assert!(load_checked(&dir, BackendKind::Firecracker)
            .unwrap()
            .is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metadata_naming_a_file_elsewhere_is_refused() {
        let dir = fake_prototype(BackendKind::Qemu);
        let outside = dir.with_extension("outside");
        fs::write(&outside, b"state").unwrap();
        let text = fs::read_to_string(dir.join(META_FILE)).unwrap();
        let mut meta: PrototypeMeta = serde_json::from_str(&text).unwrap();
        // The same bytes and checksum, but named by an absolute path.
        meta.files[0].name = outside.display().to_string();
        fs::write(dir.join(META_FILE), serde_json::to_string(&meta).unwrap()).unwrap();
        assert!(load_checked(&dir, BackendKind::Qemu).unwrap().is_none());
        meta.files[0].name = "../a.state".into();
        fs::write(dir.join(META_FILE), serde_json::to_string(&meta).unwrap()).unwrap();
        assert!(load_checked(&dir, BackendKind::Qemu).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&outside).unwrap();
    }
}
