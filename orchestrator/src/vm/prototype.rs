//! Prototypes: a VM booted once until its agent answers, paused and saved;
//! clones are restored from the snapshot in a fraction of a cold boot.
//!
//! A prototype is keyed by a hash of everything that shapes the snapshot
//! (kernel, initramfs and rootfs identity, vCPUs, memory, accelerator, QEMU
//! binary, snapshot format). It lives in `<cache>/prototypes/<key>/` with a
//! `meta.json`; a build writes into a temporary directory that is renamed
//! into place only when complete, so a failed build is never used. A snapshot
//! whose size or SHA-256 does not match its metadata is removed and rebuilt.
//!
//! QEMU prototypes use the virtio-serial transport: QEMU refuses to migrate a
//! VM with a vhost-user-vsock device. Every clone gets fresh entropy and the
//! current wall clock before it is handed out.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::accel::{self, Accel};
use super::backend::BackendKind;
use super::config::{BackendChoice, VmConfig};
use super::qemu::{LaunchOptions, QemuBackend, Transport};
use super::runtime::{self, RuntimeDir};
use super::{AgentClient, SpawnTimings, VmError, VmHandle, VmInstance};

/// Bumped whenever what a snapshot holds changes incompatibly.
const FORMAT_VERSION: u32 = 1;
const SNAPSHOT_FILE: &str = "snapshot.bin";
const META_FILE: &str = "meta.json";
const ENTROPY_BYTES: usize = 64;

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
    pub snapshot_bytes: u64,
    pub snapshot_sha256: String,
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

impl Prototype {
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }
}

pub fn prototypes_dir() -> PathBuf {
    crate::image::cache_dir().join("prototypes")
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |e| VmError::io(context, e)
}

/// Identity of an input file for the key: path, size, modification time and
/// inode. Cheap (no hashing on the spawn path) and changes whenever the file
/// is replaced or rewritten: the generated initramfs and images are named by
/// their content hash, and a kernel package upgrade writes a new file.
fn file_identity(path: &Path) -> Result<String, VmError> {
    let m = fs::metadata(path).map_err(io(format!("reading {}", path.display())))?;
    Ok(format!("{}:{}", path.display(), stat_stamp(&m)))
}

/// Size, mtime (ns) and inode: what changes when a file is rewritten or replaced.
fn stat_stamp(m: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}",
        m.len(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ino()
    )
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

/// The prototype key for `config` on this host.
pub fn key_for(config: &VmConfig) -> Result<(String, Accel), VmError> {
    let (accel, _) = accel::choose(config.accel);
    let qemu =
        super::qemu::which(super::qemu::QEMU_BINARY).ok_or_else(|| VmError::MissingTool {
            tool: super::qemu::QEMU_BINARY.into(),
            hint: "apt-get install qemu-system-x86".into(),
        })?;
    let mut h = Sha256::new();
    for part in [
        format!("format={FORMAT_VERSION}"),
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
        format!("qemu={}", file_identity(&qemu)?),
    ] {
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

/// Loads the prototype in `dir` if it is complete and intact.
fn load_checked(dir: &Path) -> Result<Option<Prototype>, VmError> {
    let Ok(text) = fs::read_to_string(dir.join(META_FILE)) else {
        return Ok(None);
    };
    let Ok(meta) = serde_json::from_str::<PrototypeMeta>(&text) else {
        return Ok(None);
    };
    let proto = Prototype {
        dir: dir.to_path_buf(),
        meta,
    };
    let snap = proto.snapshot();
    let Ok(m) = fs::metadata(&snap) else {
        return Ok(None);
    };
    if m.len() != proto.meta.snapshot_bytes || proto.meta.format != FORMAT_VERSION {
        tracing::warn!(snapshot = %snap.display(), size = m.len(), expected = proto.meta.snapshot_bytes, "prototype snapshot truncated or stale");
        return Ok(None);
    }
    let stamp = stat_stamp(&m);
    let verified = dir.join(VERIFIED_FILE);
    if fs::read_to_string(&verified).ok().as_deref() != Some(stamp.as_str()) {
        if hex::encode(sha256_file(&snap)?) != proto.meta.snapshot_sha256 {
            tracing::warn!(snapshot = %snap.display(), "prototype snapshot checksum mismatch");
            return Ok(None);
        }
        fs::write(&verified, &stamp).map_err(io(format!("writing {}", verified.display())))?;
    }
    Ok(Some(proto))
}

/// Holds an exclusive lock on a prototype key while it is checked or built,
/// so two orchestrators never build the same prototype at once.
struct KeyLock {
    _file: fs::File,
}

impl KeyLock {
    fn acquire(root: &Path, key: &str) -> Result<KeyLock, VmError> {
        use std::os::fd::AsRawFd;
        fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
        let path = root.join(format!(".{key}.lock"));
        let f = fs::File::create(&path).map_err(io(format!("creating {}", path.display())))?;
        // SAFETY: flock on a valid open fd; blocks until the lock is ours.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(VmError::io(
                "locking the prototype",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(KeyLock { _file: f })
    }
}

/// The prototype for `config`, built on first use. `progress` hears about a build.
pub async fn ensure(
    config: &VmConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Prototype, VmError> {
    config.validate()?;
    if resolved_backend(config.backend) != BackendKind::Qemu {
        return Err(VmError::Unsupported(
            "prototypes are implemented for the QEMU backend only; the Firecracker snapshot API is wired in \
             vm::firecracker but not yet used for prototypes (use --cold)"
                .into(),
        ));
    }
    let (key, accel) = key_for(config)?;
    let root = prototypes_dir();
    let dir = root.join(&key);
    let _lock = {
        let root = root.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || KeyLock::acquire(&root, &key))
            .await
            .map_err(|e| VmError::Backend(e.to_string()))??
    };
    let checked = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || load_checked(&dir))
            .await
            .map_err(|e| VmError::Backend(e.to_string()))??
    };
    if let Some(p) = checked {
        return Ok(p);
    }
    if dir.exists() {
        progress("the prototype on disk is incomplete or damaged: rebuilding it");
        fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    progress(&format!(
        "building a prototype VM (once per kernel/image/size; key {key})"
    ));
    let proto = build(config, &key, accel, &root).await?;
    progress(&format!(
        "prototype ready: boot {} ms, snapshot {} ms, {} MiB",
        proto.meta.boot_ms,
        proto.meta.snapshot_ms,
        proto.meta.snapshot_bytes >> 20
    ));
    Ok(proto)
}

fn resolved_backend(choice: BackendChoice) -> BackendKind {
    match choice {
        BackendChoice::Qemu => BackendKind::Qemu,
        BackendChoice::Firecracker => BackendKind::Firecracker,
        BackendChoice::Auto => match super::backend::select(BackendChoice::Auto) {
            Ok(b) => b.kind(),
            Err(_) => BackendKind::Qemu,
        },
    }
}

async fn build(
    config: &VmConfig,
    key: &str,
    accel: Accel,
    root: &Path,
) -> Result<Prototype, VmError> {
    let mut rnd = [0u8; 4];
    getrandom::getrandom(&mut rnd).map_err(|e| VmError::Backend(format!("random: {e}")))?;
    let tmp = root.join(format!(".build-{key}-{}", hex::encode(rnd)));
    let result = build_into(config, key, accel, &tmp).await;
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

async fn build_into(
    config: &VmConfig,
    key: &str,
    accel: Accel,
    out: &Path,
) -> Result<Prototype, VmError> {
    fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let backend = QemuBackend::from_env()?;
    let id = format!("proto-{}", &key[..12.min(key.len())]);
    let config = VmConfig {
        id: id.clone(),
        ..config.clone()
    };
    let dir = RuntimeDir::create(&runtime::runtime_root(), &id)
        .map_err(io("creating the prototype's runtime directory"))?;
    let t0 = Instant::now();
    let opts = LaunchOptions {
        transport: Transport::Serial,
        incoming: None,
    };
    let mut inst = backend.launch_with(&config, &dir, &opts).await?;
    let agent = super::connect_agent(&mut inst, config.boot_timeout_ms).await?;
    // Prove the agent can run things before freezing it.
    let out_true = agent.run(super::exec_request(["true"]), None).await?;
    if out_true.status.code != Some(0) {
        return Err(VmError::Backend(format!(
            "`true` failed in the prototype VM: {:?}",
            out_true.status
        )));
    }
    let boot_ms = t0.elapsed().as_millis() as u64;
    // Closing the session lets the agent wait for the next host; a clone's
    // first hello also resets a session that was still open.
    drop(agent);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t1 = Instant::now();
    let snap = out.join(SNAPSHOT_FILE);
    inst.snapshot_to(&snap).await?;
    let snapshot_ms = t1.elapsed().as_millis() as u64;
    inst.kill();
    drop(inst);
    drop(dir);
    let sha = {
        let snap = snap.clone();
        tokio::task::spawn_blocking(move || sha256_file(&snap))
            .await
            .map_err(|e| VmError::Backend(e.to_string()))??
    };
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
        backend: BackendKind::Qemu,
        snapshot_bytes: fs::metadata(&snap)
            .map_err(io("sizing the snapshot"))?
            .len(),
        snapshot_sha256: hex::encode(sha),
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

/// Restores a clone of `proto` named `task_id`, with fresh entropy and clock.
/// `config` supplies the id-independent settings (timeouts); the machine
/// shape comes from the prototype.
pub async fn restore(
    proto: &Prototype,
    task_id: &str,
    config: &VmConfig,
) -> Result<VmHandle, VmError> {
    let t0 = Instant::now();
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
        ..config.clone()
    };
    config.validate()?;
    runtime::reap_stale_once();
    let backend = QemuBackend::from_env()?;
    let dir = super::create_runtime_dir(&config.id)?;
    let opts = LaunchOptions {
        transport: Transport::Serial,
        incoming: Some(proto.snapshot()),
    };
    let mut inst = backend.launch_with(&config, &dir, &opts).await?;
    let launched = t0.elapsed();
    let agent = super::connect_agent(&mut inst, config.boot_timeout_ms).await?;
    reseed(&agent).await?;
    let total = t0.elapsed();
    let timings = SpawnTimings {
        launch: launched,
        boot: total - launched,
        total,
    };
    tracing::info!(vm = %config.id, ?timings, prototype = %proto.meta.key, "clone ready");
    Ok(VmHandle {
        id: config.id,
        backend: BackendKind::Qemu,
        accel: inst.accel(),
        timings,
        agent,
        instance: Box::new(inst),
        dir,
    })
}

/// Gives the guest fresh entropy and the current time.
pub async fn reseed(agent: &AgentClient) -> Result<(), VmError> {
    let mut entropy = vec![0u8; ENTROPY_BYTES];
    getrandom::getrandom(&mut entropy)
        .map_err(|e| VmError::Backend(format!("host randomness: {e}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    agent.reseed(entropy, now).await?;
    Ok(())
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
        Err(e @ VmError::Backend(_)) => {
            // A snapshot QEMU cannot load is damaged in a way the checksum did
            // not catch (or QEMU changed): rebuild once, never retry blindly.
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
