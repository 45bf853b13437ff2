//! Prototypes: a VM booted once until its agent answers, paused and saved;
//! clones are restored from the snapshot in a fraction of a cold boot.
//!
//! A prototype is keyed by a hash of everything that shapes the snapshot
//! (backend, kernel, initramfs and rootfs identity, vCPUs, memory,
//! accelerator, VMM binary, snapshot format). It lives in
//! `<cache>/prototypes/<key>/` with a `meta.json`; a build writes into a
//! temporary directory that is renamed into place only when complete, so a
//! failed build is never used. A snapshot file whose size or SHA-256 does
//! not match its metadata is removed and rebuilt.
//!
//! This module never asks which backend it drives: the [`Hypervisor`] a
//! config selects boots the VM for snapshotting, its [`VmInstance`] writes
//! the snapshot, and the same backend restores it
//! (QEMU: virtio-serial transport and migration to a file; Firecracker: its
//! snapshot API). Every clone gets fresh entropy and the current wall clock
//! before it is handed out.
//!
//! [`VmInstance`]: super::VmInstance

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::accel::Accel;
use super::backend::{BackendKind, Capabilities, Hypervisor, LaunchPurpose};
use super::config::VmConfig;
use super::host::{file_identity, stat_stamp};
use super::spawn::{start_vm, Start};
use super::{VmError, VmHandle};

/// Bumped whenever what a snapshot or its metadata holds changes
/// incompatibly (2: a list of snapshot files, for Firecracker's two).
const FORMAT_VERSION: u32 = 2;
const META_FILE: &str = "meta.json";

/// One file of a snapshot, as it was when the prototype was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFileMeta {
    /// File name inside the prototype directory.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a prototype was built from, and facts about the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrototypeMeta {
    pub key: String,
    pub format: u32,
    pub ironclaw_version: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    pub backend: BackendKind,
    /// Every file of the snapshot, each checked before use (QEMU: the
    /// migration stream; Firecracker: the microVM state, then guest memory).
    pub files: Vec<SnapshotFileMeta>,
    pub created_unix: u64,
    /// Cold boot of the prototype VM until its agent answered.
    pub boot_ms: u64,
    /// Pausing and writing the snapshot.
    pub snapshot_ms: u64,
}

/// A built prototype on disk.
#[derive(Debug, Clone)]
pub struct Prototype {
    pub dir: PathBuf,
    pub meta: PrototypeMeta,
}

impl PrototypeMeta {
    /// The size of all snapshot files together.
    pub fn snapshot_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

impl Prototype {
    /// The main snapshot file: QEMU's migration stream, Firecracker's
    /// microVM state.
    pub fn snapshot(&self) -> PathBuf {
        // Never empty: refused on load and on build.
        self.dir.join(&self.meta.files[0].name)
    }

    /// Every snapshot file.
    pub fn files(&self) -> Vec<PathBuf> {
        self.meta
            .files
            .iter()
            .map(|f| self.dir.join(&f.name))
            .collect()
    }
}

const PROTOTYPES_SUBDIR: &str = "prototypes";

pub fn prototypes_dir() -> PathBuf {
    crate::cache::root().join(PROTOTYPES_SUBDIR)
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |e| VmError::io(context, e)
}

fn sha256_file(path: &Path) -> Result<[u8; 32], VmError> {
    let mut f = fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// The prototype key for `config` on this host, with the accelerator the
/// prototype runs on.
pub fn key_for(config: &VmConfig) -> Result<(String, Accel), VmError> {
    key_with(config, snapshot_backend(config)?.as_ref())
}

/// The backend that builds and restores prototypes of `config`.
fn snapshot_backend(config: &VmConfig) -> Result<Box<dyn Hypervisor>, VmError> {
    super::select::select_capable(
        config.backend,
        config.accel,
        Capabilities { snapshots: true },
    )
}

fn key_with(config: &VmConfig, backend: &dyn Hypervisor) -> Result<(String, Accel), VmError> {
    let accel = backend.accel(config);
    let mut h = Sha256::new();
    let parts = [
        format!("format={FORMAT_VERSION}"),
        format!("backend={}", backend.kind()),
        format!("kernel={}", file_identity(&config.kernel)?),
        format!("initramfs={}", file_identity(&config.initramfs)?),
        format!(
            "rootfs={}",
            config
                .rootfs
                .as_deref()
                // The overlay size is on the guest's command line, so in the snapshot.
                .map(|r| {
                    file_identity(r).map(|id| format!("{id} overlay_mib={}", config.overlay_mib))
                })
                .transpose()?
                .unwrap_or_default()
        ),
        format!(
            "vcpus={} memory={} accel={accel}",
            config.vcpus, config.memory_mib
        ),
    ];
    // The VMM that wrote a snapshot, and how it ran, decide who can load it.
    for part in parts.into_iter().chain(backend.snapshot_identity()?) {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    Ok((hex::encode(&h.finalize()[..10]), accel))
}

/// Records that the snapshot, as it is on disk now (size, mtime, inode), has
/// been checked against its SHA-256. Hashing ~100 MB on every spawn would cost
/// more than the restore itself; any rewrite of the file changes the stamp and
/// so forces a new check.
const VERIFIED_FILE: &str = "verified";

/// Loads the prototype in `dir` if it is complete, intact and made by
/// `backend`.
fn load_checked(dir: &Path, backend: BackendKind) -> Result<Option<Prototype>, VmError> {
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
    // Sizes first: a truncated file is caught without reading anything.
    let mut stamps = Vec::new();
    for f in &proto.meta.files {
        let path = dir.join(&f.name);
        let Ok(m) = fs::metadata(&path) else {
            tracing::warn!(snapshot = %path.display(), "prototype snapshot file missing");
            return Ok(None);
        };
        if m.len() != f.bytes {
            tracing::warn!(snapshot = %path.display(), size = m.len(), expected = f.bytes, "prototype snapshot file truncated or grown");
            return Ok(None);
        }
        stamps.push(format!("{}={}", f.name, stat_stamp(&m)));
    }
    let stamp = stamps.join("\n");
    let verified = dir.join(VERIFIED_FILE);
    if fs::read_to_string(&verified).ok().as_deref() != Some(stamp.as_str()) {
        for f in &proto.meta.files {
            let path = dir.join(&f.name);
            if hex::encode(sha256_file(&path)?) != f.sha256 {
                tracing::warn!(snapshot = %path.display(), "prototype snapshot checksum mismatch");
                return Ok(None);
            }
        }
        crate::cache::write_file(&verified, stamp.as_bytes())?;
    }
    Ok(Some(proto))
}

/// The lock file of a prototype key: held while the key is checked or
/// built, so two orchestrators never build the same prototype at once.
fn key_lock_path(root: &Path, key: &str) -> PathBuf {
    root.join(format!(".{key}.lock"))
}

/// The prototype for `config`, built on first use. `progress` hears about a build.
pub async fn ensure(
    config: &VmConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Prototype, VmError> {
    config.validate()?;
    let backend = snapshot_backend(config)?;
    let kind = backend.kind();
    let (key, accel) = key_with(config, backend.as_ref())?;
    // Snapshots are restored as whole VMs: only a cache of our own will do.
    let root = crate::cache::trusted_dir(PROTOTYPES_SUBDIR)?;
    let dir = root.join(&key);
    let _lock = {
        let path = key_lock_path(&root, &key);
        tokio::task::spawn_blocking(move || crate::cache::FileLock::acquire(&path))
            .await
            .map_err(|e| VmError::TaskFailed(format!("locking the prototype: {e}")))??
    };
    let checked = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || load_checked(&dir, kind))
            .await
            .map_err(|e| VmError::TaskFailed(format!("checking the prototype: {e}")))??
    };
    if let Some(p) = checked {
        return Ok(p);
    }
    if dir.exists() {
        progress("the prototype on disk is incomplete or damaged: rebuilding it");
        fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    progress(&format!(
        "building a {kind} prototype VM (once per kernel/image/size; key {key})"
    ));
    let proto = build(config, &key, accel, backend.as_ref(), &root).await?;
    let pruned = prune(&proto.meta);
    if !pruned.is_empty() {
        progress(&format!(
            "removed {} superseded or stale prototype(s)",
            pruned.len()
        ));
    }
    progress(&format!(
        "prototype ready: boot {} ms, snapshot {} ms, {} MiB",
        proto.meta.boot_ms,
        proto.meta.snapshot_ms,
        proto.meta.snapshot_bytes() >> 20
    ));
    Ok(proto)
}

async fn build(
    config: &VmConfig,
    key: &str,
    accel: Accel,
    backend: &dyn Hypervisor,
    root: &Path,
) -> Result<Prototype, VmError> {
    let mut rnd = [0u8; 4];
    getrandom::getrandom(&mut rnd).map_err(|e| VmError::Randomness(e.to_string()))?;
    let tmp = root.join(format!(".build-{key}-{}", hex::encode(rnd)));
    let result = build_into(config, key, accel, backend, &tmp).await;
    match result {
        Ok(mut proto) => {
            let dest = root.join(key);
            fs::rename(&tmp, &dest)
                .map_err(io(format!("moving the prototype to {}", dest.display())))?;
            proto.dir = dest;
            Ok(proto)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Boots the prototype VM, proves its agent runs commands, snapshots it into
/// `out` and writes the metadata.
async fn build_into(
    config: &VmConfig,
    key: &str,
    accel: Accel,
    backend: &dyn Hypervisor,
    out: &Path,
) -> Result<Prototype, VmError> {
    fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let config = VmConfig {
        id: format!("proto-{}", &key[..12.min(key.len())]),
        ..config.clone()
    };
    let vm = start_vm(backend, &config, Start::Boot(LaunchPurpose::Snapshot)).await?;
    prove_agent_runs(&vm).await?;
    let boot_ms = vm.timings.total.as_millis() as u64;
    let t1 = std::time::Instant::now();
    let names = vm.into_snapshot(out).await?;
    let snapshot_ms = t1.elapsed().as_millis() as u64;
    if names.is_empty() || names.iter().any(|n| !crate::cache::is_plain_file_name(n)) {
        return Err(VmError::SnapshotIncompatible(format!(
            "the {} backend wrote an unusable list of snapshot files: {names:?}",
            backend.kind()
        )));
    }
    let mut files = Vec::new();
    for name in &names {
        let path = out.join(name);
        let sha = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || sha256_file(&path))
                .await
                .map_err(|e| VmError::TaskFailed(format!("hashing the snapshot: {e}")))??
        };
        files.push(SnapshotFileMeta {
            name: name.clone(),
            bytes: fs::metadata(&path)
                .map_err(io(format!("sizing {}", path.display())))?
                .len(),
            sha256: hex::encode(sha),
        });
    }
    let meta = PrototypeMeta {
        key: key.to_string(),
        format: FORMAT_VERSION,
        ironclaw_version: env!("CARGO_PKG_VERSION").into(),
        kernel: config.kernel.clone(),
        initramfs: config.initramfs.clone(),
        rootfs: config.rootfs.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        accel,
        backend: backend.kind(),
        files,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        boot_ms,
        snapshot_ms,
    };
    let text = serde_json::to_string_pretty(&meta).expect("meta serializes");
    fs::write(out.join(META_FILE), text).map_err(io("writing meta.json"))?;
    Ok(Prototype {
        dir: out.to_path_buf(),
        meta,
    })
}

/// Runs `true` in a freshly booted prototype VM: proves the agent can run
/// things before it is frozen.
async fn prove_agent_runs(vm: &VmHandle) -> Result<(), VmError> {
    let out = vm.agent().run(super::exec_request(["true"]), None).await?;
    if out.status.code != Some(0) {
        return Err(VmError::GuestCheckFailed {
            vm: vm.id.clone(),
            command: "true".into(),
            status: format!("{:?}", out.status),
        });
    }
    Ok(())
}

/// Restores a clone of `proto` named `task_id`, with fresh entropy and clock.
/// `config` supplies the id-independent settings (timeouts); the machine
/// shape and the backend come from the prototype.
pub async fn restore(
    proto: &Prototype,
    task_id: &str,
    config: &VmConfig,
) -> Result<VmHandle, VmError> {
    let config = VmConfig {
        id: task_id.to_string(),
        kernel: proto.meta.kernel.clone(),
        initramfs: proto.meta.initramfs.clone(),
        rootfs: proto.meta.rootfs.clone(),
        vcpus: proto.meta.vcpus,
        memory_mib: proto.meta.memory_mib,
        accel: match proto.meta.accel {
            Accel::Kvm => super::config::AccelChoice::Kvm,
            Accel::Tcg => super::config::AccelChoice::Tcg,
        },
        backend: proto.meta.backend.into(),
        ..config.clone()
    };
    config.validate()?;
    super::runtime::reap_stale_once();
    let backend = super::select::select_for(config.backend, config.accel)?;
    let vm = start_vm(backend.as_ref(), &config, Start::Restore(&proto.files())).await?;
    tracing::info!(vm = %vm.id, prototype = %proto.meta.key, "clone ready");
    Ok(vm)
}

/// Spawns `task_id` from the prototype for `config` (built on first use).
pub async fn spawn_from_prototype(
    task_id: &str,
    config: &VmConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<VmHandle, VmError> {
    let config = VmConfig {
        id: task_id.to_string(),
        ..config.clone()
    };
    let proto = ensure(&config, progress).await?;
    match restore(&proto, task_id, &config).await {
        Ok(vm) => Ok(vm),
        Err(e @ VmError::RestoreFailed { .. }) => {
            // A snapshot the VMM cannot load (or whose guest never answers) is
            // damaged in a way the checksum did not catch, or the VMM changed:
            // rebuild once, never retry blindly. Other failures (a missing
            // tool, the host's files) would not be cured by a rebuild.
            progress(&format!(
                "restoring the prototype failed ({e}); rebuilding it"
            ));
            let _ = fs::remove_dir_all(&proto.dir);
            let proto = ensure(&config, progress).await?;
            restore(&proto, task_id, &config).await
        }
        Err(e) => Err(e),
    }
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
    super::config::validate_id(key_prefix)?;
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
