//! Snapshots of live sandboxes on disk: `<dir>/<id>/` holds the VMM's
//! snapshot files and `meta.json` (what the sandbox was, the machine it ran
//! on, every file's size and SHA-256). A snapshot is written into
//! `<dir>/.tmp-<id>/` and renamed into place only when complete and within
//! the storage limit, so a failed or refused one leaves nothing behind.
//! Paused sandboxes are snapshots too (with what their resume needs), so
//! they survive a restart of the service: the store is loaded from the
//! directory when the service starts.
//!
//! The store keeps an index in memory (sizes for the storage limit,
//! owners, retention); the files are checked again before every restore
//! ([`crate::vm::snapshot_files::check`]).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::error::{ErrorCode, ServiceError};
use super::sandbox::unix_secs;
use super::types::SnapshotInfo;
use crate::vm::snapshot_files::{self, SnapshotFileMeta};
use crate::vm::{Accel, BackendKind, LiveCopy, VmHandle};

/// Bumped when what `meta.json` holds changes incompatibly.
const FORMAT: u32 = 1;
const META_FILE: &str = "meta.json";
const TMP_PREFIX: &str = ".tmp-";
const MAX_NAME_LEN: usize = 64;

/// What a sandbox was when it was snapshotted: what a fork or a resume
/// starts with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSandbox {
    pub id: String,
    pub owner: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub idle_timeout_s: Option<u64>,
    /// Seconds since the epoch.
    pub created_unix: u64,
    /// Its lifetime left when it was paused (a resume gets it back).
    pub lifetime_left_s: u64,
    /// Its access token (the E2B API's `envdAccessToken`), kept across a
    /// pause; never given to a fork.
    pub access_token: String,
}

/// The machine a snapshot can be restored on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub backend: BackendKind,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: Option<PathBuf>,
    /// The prototype key of the machine (a hash of the kernel, initramfs,
    /// rootfs, shape, accelerator and VMM identities): a snapshot is
    /// restored only where it is the same.
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMeta {
    pub format: u32,
    pub id: String,
    pub name: Option<String>,
    /// A paused sandbox (resumed under its own id) rather than a snapshot
    /// to create sandboxes from.
    pub paused: bool,
    pub sandbox: SavedSandbox,
    pub machine: Machine,
    pub files: Vec<SnapshotFileMeta>,
    pub created_unix: u64,
    /// How long the sandbox was paused while its state was written.
    pub pause_ms: u64,
    /// Writing, checksumming and storing the snapshot.
    pub total_ms: u64,
}

impl SnapshotMeta {
    /// What its files take on disk.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.disk_bytes()).sum()
    }
}

/// Where snapshots live and how much they may take.
#[derive(Debug, Clone)]
pub struct SnapshotLimits {
    pub dir: PathBuf,
    /// All snapshots and paused sandboxes together, at most.
    pub max_bytes: u64,
    /// Snapshots older than this are removed.
    pub retention: Duration,
    /// Paused sandboxes not resumed within this are removed.
    pub paused_retention: Duration,
}

struct Entry {
    meta: SnapshotMeta,
    /// When it was loaded or made, for retention (monotonic from here on).
    since: Instant,
    age_at_load: Duration,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    /// Bytes reserved by snapshots being written.
    pending: u64,
}

impl Index {
    fn used(&self) -> u64 {
        self.entries.values().map(|e| e.meta.bytes()).sum()
    }
}

pub struct SnapshotStore {
    limits: SnapshotLimits,
    index: Mutex<Index>,
    /// One service per directory: its index is the truth about it.
    _lock: crate::cache::FileLock,
}

/// A snapshot being written: its temporary directory is removed unless
/// [`SnapshotStore::commit`] moved it into place.
pub struct Pending<'a> {
    store: &'a SnapshotStore,
    pub id: String,
    pub tmp: PathBuf,
    reserved: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.store.index.lock().expect("index").pending -= self.reserved;
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

impl SnapshotStore {
    /// Opens (creating it 0700) the store in `limits.dir` and loads what is
    /// there; directories of unfinished writes are removed.
    pub fn open(limits: SnapshotLimits) -> Result<SnapshotStore, ServiceError> {
        crate::cache::trusted_dir_in(&limits.dir, "").map_err(|e| {
            ServiceError::internal(format!("snapshot directory {}: {e}", limits.dir.display()))
        })?;
        let lock = crate::cache::FileLock::try_acquire(&limits.dir.join(".lock")).ok_or_else(|| {
            ServiceError::unavailable(format!(
                "the snapshot directory {} is in use by another ironclaw service; give this one its own (--snapshot-dir)",
                limits.dir.display()
            ))
        })?;
        let mut index = Index::default();
        let now = SystemTime::now();
        for entry in fs::read_dir(&limits.dir)
            .map_err(|e| ServiceError::internal(format!("reading {}: {e}", limits.dir.display())))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(TMP_PREFIX) {
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            if name.starts_with('.') {
                continue;
            }
            match read_meta(&path) {
                Ok(meta) if meta.id == name => {
                    let age = now
                        .duration_since(
                            SystemTime::UNIX_EPOCH + Duration::from_secs(meta.created_unix),
                        )
                        .unwrap_or_default();
                    index.entries.insert(
                        name,
                        Entry {
                            meta,
                            since: Instant::now(),
                            age_at_load: age,
                        },
                    );
                }
                Ok(_) => {
                    tracing::warn!(dir = %path.display(), "snapshot metadata names another id; ignored")
                }
                Err(e) => tracing::warn!(dir = %path.display(), "unreadable snapshot ignored: {e}"),
            }
        }
        Ok(SnapshotStore {
            limits,
            index: Mutex::new(index),
            _lock: lock,
        })
    }

    pub fn limits(&self) -> &SnapshotLimits {
        &self.limits
    }

    /// Starts a snapshot of about `estimate` bytes: refused when the store
    /// is already full.
    pub fn begin(&self, estimate: u64) -> Result<Pending<'_>, ServiceError> {
        let id = format!("snap-{}", random_hex(8)?);
        {
            let mut index = self.index.lock().expect("index");
            let used = index.used() + index.pending;
            if used >= self.limits.max_bytes {
                return Err(storage_full(used, self.limits.max_bytes));
            }
            index.pending += estimate;
        }
        let tmp = self.limits.dir.join(format!("{TMP_PREFIX}{id}"));
        let pending = Pending {
            store: self,
            id,
            tmp,
            reserved: estimate,
        };
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&pending.tmp)
            .map_err(|e| {
                ServiceError::internal(format!("creating {}: {e}", pending.tmp.display()))
            })?;
        Ok(pending)
    }

    /// Writes `vm`'s snapshot into `pending`, describes its files, checks
    /// the storage limit with the real size, writes the metadata and moves
    /// it into place. `meta` supplies everything but the files and figures.
    pub async fn write(
        &self,
        pending: Pending<'_>,
        vm: &VmHandle,
        mut meta: SnapshotMeta,
    ) -> Result<SnapshotMeta, ServiceError> {
        let t0 = Instant::now();
        // A sandbox that runs on is paused as briefly as the backend can; one
        // being paused (destroyed afterwards) is written in the fewest steps.
        let copy = if meta.paused {
            LiveCopy::Paused
        } else {
            LiveCopy::Precopy
        };
        let live = vm
            .snapshot_live(&pending.tmp, copy)
            .await
            .map_err(|e| self.write_failed(format!("writing the snapshot failed: {e}")))?;
        let files = {
            let dir = pending.tmp.clone();
            tokio::task::spawn_blocking(move || snapshot_files::describe(&dir, &live.files))
                .await
                .map_err(|e| ServiceError::internal(format!("hashing the snapshot: {e}")))?
                .map_err(|e| self.write_failed(format!("hashing the snapshot: {e}")))?
        };
        meta.id = pending.id.clone();
        meta.files = files;
        meta.pause_ms = live.paused.as_millis() as u64;
        {
            let index = self.index.lock().expect("index");
            let others = index.used() + index.pending - pending.reserved;
            if others + meta.bytes() > self.limits.max_bytes {
                // `pending` is dropped: its directory goes.
                return Err(storage_full(others + meta.bytes(), self.limits.max_bytes));
            }
        }
        meta.total_ms = t0.elapsed().as_millis() as u64;
        let text = serde_json::to_string_pretty(&meta).expect("metadata serializes");
        crate::cache::write_file(&pending.tmp.join(META_FILE), text.as_bytes())
            .map_err(|e| self.write_failed(format!("writing the snapshot metadata: {e}")))?;
        let dest = self.limits.dir.join(&pending.id);
        fs::rename(&pending.tmp, &dest)
            .map_err(|e| ServiceError::internal(format!("storing the snapshot: {e}")))?;
        self.index.lock().expect("index").entries.insert(
            meta.id.clone(),
            Entry {
                meta: meta.clone(),
                since: Instant::now(),
                age_at_load: Duration::ZERO,
            },
        );
        Ok(meta)
    }

    /// A failed write as the caller hears of it: `storage_full` when the
    /// disk holding the store is (nearly) full, which is the likely cause.
    fn write_failed(&self, what: String) -> ServiceError {
        match free_bytes(&self.limits.dir) {
            Some(free) if free < LOW_DISK => ServiceError::new(
                ErrorCode::StorageFull,
                format!(
                    "the disk holding {} is full ({} MiB free): {what}; nothing was kept",
                    self.limits.dir.display(),
                    free >> 20
                ),
            ),
            _ => ServiceError::unavailable(what),
        }
    }

    /// The snapshot `id_or_name` of `owner` (paused sandboxes excluded).
    pub fn find(&self, owner: &str, id_or_name: &str) -> Result<SnapshotMeta, ServiceError> {
        let index = self.index.lock().expect("index");
        let mine = index
            .entries
            .values()
            .filter(|e| !e.meta.paused && e.meta.sandbox.owner == owner);
        let found: Vec<&Entry> = mine
            .filter(|e| e.meta.id == id_or_name || e.meta.name.as_deref() == Some(id_or_name))
            .collect();
        match found.as_slice() {
            [one] => Ok(one.meta.clone()),
            [] => Err(ServiceError::not_found(format!(
                "no snapshot {id_or_name} (list yours: `ironclaw snapshot ls` or GET /v1/snapshots)"
            ))),
            _ => Err(ServiceError::bad_request(format!(
                "several snapshots are named {id_or_name}: use a snapshot id"
            ))),
        }
    }

    /// The paused sandbox `sandbox_id`, whoever owns it.
    pub fn paused(&self, sandbox_id: &str) -> Option<SnapshotMeta> {
        self.index
            .lock()
            .expect("index")
            .entries
            .values()
            .find(|e| e.meta.paused && e.meta.sandbox.id == sandbox_id)
            .map(|e| e.meta.clone())
    }

    /// Every snapshot (`paused`: or every paused sandbox) of `owner`, oldest first.
    pub fn list(&self, owner: &str, paused: bool) -> Vec<SnapshotMeta> {
        let mut out: Vec<SnapshotMeta> = self
            .index
            .lock()
            .expect("index")
            .entries
            .values()
            .filter(|e| e.meta.paused == paused && e.meta.sandbox.owner == owner)
            .map(|e| e.meta.clone())
            .collect();
        out.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
        out
    }

    /// The directory of snapshot `meta`, its files checked against their
    /// sizes and checksums; a clear error when they do not match.
    pub async fn checked_files(&self, meta: &SnapshotMeta) -> Result<Vec<PathBuf>, ServiceError> {
        let dir = self.limits.dir.join(&meta.id);
        let files = meta.files.clone();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || snapshot_files::check(&d, &files))
            .await
            .map_err(|e| ServiceError::internal(format!("checking the snapshot: {e}")))?
            .map_err(|why| {
                ServiceError::new(
                    ErrorCode::SnapshotInvalid,
                    format!(
                        "snapshot {} cannot be restored: {why}; nothing was started (remove it: `ironclaw snapshot rm {}`)",
                        meta.id, meta.id
                    ),
                )
            })?;
        Ok(meta.files.iter().map(|f| dir.join(&f.name)).collect())
    }

    /// Removes snapshot `id` (files and metadata).
    pub fn remove(&self, id: &str) -> Result<(), ServiceError> {
        let removed = self.index.lock().expect("index").entries.remove(id);
        if removed.is_none() {
            return Err(ServiceError::not_found(format!("no snapshot {id}")));
        }
        let dir = self.limits.dir.join(id);
        fs::remove_dir_all(&dir)
            .map_err(|e| ServiceError::internal(format!("removing {}: {e}", dir.display())))
    }

    /// Snapshots and paused sandboxes past their retention, removed now.
    pub fn remove_expired(&self) -> Vec<SnapshotMeta> {
        let expired: Vec<SnapshotMeta> = {
            let index = self.index.lock().expect("index");
            index
                .entries
                .values()
                .filter(|e| {
                    let keep = if e.meta.paused {
                        self.limits.paused_retention
                    } else {
                        self.limits.retention
                    };
                    e.age_at_load + e.since.elapsed() > keep
                })
                .map(|e| e.meta.clone())
                .collect()
        };
        for meta in &expired {
            if let Err(e) = self.remove(&meta.id) {
                tracing::warn!(snapshot = %meta.id, "removing an expired snapshot: {e}");
            }
        }
        expired
    }

    /// Bytes taken by snapshots and paused sandboxes.
    pub fn used_bytes(&self) -> u64 {
        self.index.lock().expect("index").used()
    }

    /// When `meta` will be removed by retention (seconds since the epoch).
    pub fn expires_at(&self, meta: &SnapshotMeta) -> u64 {
        let keep = if meta.paused {
            self.limits.paused_retention
        } else {
            self.limits.retention
        };
        meta.created_unix + keep.as_secs()
    }

    pub fn info(&self, meta: &SnapshotMeta) -> SnapshotInfo {
        SnapshotInfo {
            id: meta.id.clone(),
            name: meta.name.clone(),
            source_sandbox: meta.sandbox.id.clone(),
            image: meta.sandbox.image.clone(),
            vcpus: meta.sandbox.vcpus,
            memory_mib: meta.sandbox.memory_mib,
            backend: meta.machine.backend.to_string(),
            kernel: meta.machine.kernel.display().to_string(),
            bytes: meta.bytes(),
            created_at: meta.created_unix,
            expires_at: self.expires_at(meta),
            pause_ms: meta.pause_ms,
            total_ms: meta.total_ms,
        }
    }
}

/// A snapshot's metadata as the store writes it (id and figures filled in
/// by [`SnapshotStore::write`]).
pub fn new_meta(
    name: Option<String>,
    paused: bool,
    sandbox: SavedSandbox,
    machine: Machine,
) -> SnapshotMeta {
    SnapshotMeta {
        format: FORMAT,
        id: String::new(),
        name,
        paused,
        sandbox,
        machine,
        files: Vec::new(),
        created_unix: unix_secs(SystemTime::now()),
        pause_ms: 0,
        total_ms: 0,
    }
}

/// A snapshot name a client gave: 1 to 64 of `A-Z a-z 0-9 . _ -`, not an id.
pub fn check_name(field: &str, name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with("snap-")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "{field}: {name:?} must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', \
             not starting with '.' or 'snap-'"
        )))
    }
}

fn read_meta(dir: &Path) -> Result<SnapshotMeta, String> {
    let text = fs::read_to_string(dir.join(META_FILE)).map_err(|e| e.to_string())?;
    let meta: SnapshotMeta = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if meta.format != FORMAT {
        return Err(format!(
            "format {} (this version reads {FORMAT})",
            meta.format
        ));
    }
    Ok(meta)
}

/// Free space below which a failed write is blamed on a full disk.
const LOW_DISK: u64 = 64 << 20;

/// Bytes an unprivileged writer may still use on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn storage_full(used: u64, max: u64) -> ServiceError {
    ServiceError::new(
        ErrorCode::StorageFull,
        format!(
            "snapshot storage full: {} MiB would be used, --max-snapshot-storage allows {} MiB; \
             remove snapshots (`ironclaw snapshot rm`) or paused sandboxes, or raise the limit",
            used >> 20,
            max >> 20
        ),
    )
}

fn random_hex(n: usize) -> Result<String, ServiceError> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b)
        .map_err(|e| ServiceError::internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

/// A snapshot directory for a service that lives only as long as this
/// process (`ironclaw mcp`, benchmarks): `<cache>/snapshots-<label>-<pid>`,
/// for the caller to remove when it stops. Those left by processes that
/// died are removed first.
pub fn process_dir(label: &str) -> PathBuf {
    let root = crate::cache::root();
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("snapshots-")
                .and_then(|rest| rest.rsplit_once('-'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
    root.join(format!("snapshots-{label}-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(dir: &Path) -> SnapshotLimits {
        SnapshotLimits {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 30,
            retention: Duration::from_secs(3600),
            paused_retention: Duration::from_secs(60),
        }
    }

    fn meta(id: &str, paused: bool, created_unix: u64) -> SnapshotMeta {
        let sandbox = SavedSandbox {
            id: "sb-1".into(),
            owner: "uid:0".into(),
            image: "default".into(),
            vcpus: 1,
            memory_mib: 256,
            env: BTreeMap::new(),
            cwd: None,
            labels: BTreeMap::new(),
            idle_timeout_s: None,
            created_unix,
            lifetime_left_s: 10,
            access_token: String::new(),
        };
        let machine = Machine {
            backend: BackendKind::Qemu,
            accel: Accel::Tcg,
            kernel: "/k".into(),
            initramfs: "/i".into(),
            rootfs: None,
            key: "k".into(),
        };
        let mut m = new_meta(Some("n".into()), paused, sandbox, machine);
        m.id = id.into();
        m.created_unix = created_unix;
        m.files = vec![SnapshotFileMeta {
            name: "snapshot.bin".into(),
            bytes: 5,
            sha256: String::new(),
            digest: Default::default(),
            disk_bytes: None,
        }];
        m
    }

    fn put(dir: &Path, m: &SnapshotMeta) {
        fs::create_dir_all(dir.join(&m.id)).unwrap();
        fs::write(
            dir.join(&m.id).join(META_FILE),
            serde_json::to_string(m).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn a_store_reloads_what_is_complete_and_drops_unfinished_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snaps");
        let now = unix_secs(SystemTime::now());
        put(&dir, &meta("snap-a", false, now));
        put(&dir, &meta("snap-b", true, now));
        fs::create_dir_all(dir.join(".tmp-snap-c")).unwrap();
        fs::create_dir_all(dir.join("snap-d")).unwrap(); // no metadata
        let store = SnapshotStore::open(limits(&dir)).unwrap();
        assert!(!dir.join(".tmp-snap-c").exists());
        assert_eq!(store.list("uid:0", false).len(), 1);
        assert_eq!(store.paused("sb-1").unwrap().id, "snap-b");
        assert_eq!(store.find("uid:0", "n").unwrap().id, "snap-a");
        // Another owner sees nothing.
        assert!(store.find("uid:1", "snap-a").is_err());
        assert_eq!(store.used_bytes(), 10);
        // One service per directory.
        let second = SnapshotStore::open(limits(&dir));
        assert!(second.is_err());
        assert!(second.err().unwrap().message.contains("--snapshot-dir"));
    }

    #[test]
    fn retention_removes_old_snapshots_and_paused_sandboxes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snaps");
        let now = unix_secs(SystemTime::now());
        put(&dir, &meta("snap-old", false, now - 7200));
        put(&dir, &meta("snap-new", false, now));
        // Older than the paused retention (60 s), younger than the other.
        put(&dir, &meta("snap-paused", true, now - 120));
        let store = SnapshotStore::open(limits(&dir)).unwrap();
        let mut gone: Vec<String> = store.remove_expired().into_iter().map(|m| m.id).collect();
        gone.sort();
        assert_eq!(gone, ["snap-old", "snap-paused"]);
        assert!(!dir.join("snap-old").exists() && dir.join("snap-new").exists());
    }

    #[test]
    fn a_full_store_refuses_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snaps");
        put(&dir, &meta("snap-a", false, unix_secs(SystemTime::now())));
        let mut l = limits(&dir);
        l.max_bytes = 10;
        let store = SnapshotStore::open(l).unwrap();
        assert!(store.begin(100).is_ok());
        put(&dir, &meta("snap-b", false, 0));
        let store = {
            drop(store);
            let mut l = limits(&dir);
            l.max_bytes = 10;
            SnapshotStore::open(l).unwrap()
        };
        let err = store.begin(100).err().unwrap();
        assert_eq!(err.code, ErrorCode::StorageFull);
        assert_eq!(stored(&dir), ["snap-a", "snap-b"]);
    }

    fn stored(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn names_are_plain_and_never_ids() {
        for ok in ["after-setup", "v1.2_b"] {
            assert!(check_name("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "snap-1", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            let err = check_name("name", bad).unwrap_err();
            assert!(err.message.starts_with("name:"), "{bad}: {}", err.message);
        }
    }
}
