//! What a prototype is on disk: its metadata (`meta.json`) and the snapshot
//! files it names.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::vm::accel::Accel;
use crate::vm::backend::BackendKind;
pub use crate::vm::snapshot_files::SnapshotFileMeta;

/// Bumped whenever what a snapshot or its metadata holds changes
/// incompatibly (2: a list of snapshot files, for Firecracker's two; 3: QEMU
/// guest RAM as the memory backend `mem`, kept in a file beside the stream
/// when clones share it; 4: an image's prototype has run the page-cache
/// warm-up before its snapshot; 5: the guest kernel booted with the host's
/// measured TSC rate instead of a fixed 2 GHz, so older snapshots keep a
/// clock that runs at the wrong rate).
pub(super) const FORMAT_VERSION: u32 = 5;
pub(super) const META_FILE: &str = "meta.json";

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

    /// The disk space its snapshot files take (a sparse memory file takes
    /// less than its size).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.files()
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.blocks() * 512)
            .sum()
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
