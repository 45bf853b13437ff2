//! The guest's userland: root file system images (ext4) that a VM mounts
//! read-only under a writable overlay (`ironclaw image build|list`). What a
//! VM boots into first, the kernel and the initramfs, is [`crate::boot`].
//!
//! [`build`] makes a named image in the cache (`<cache>/images/`): a Debian
//! minimal root made by `debootstrap --variant=minbase` (with `python3` and a
//! few everyday tools), or the tree of a local directory or tarball, written
//! into an ext4 file with `mkfs.ext4 -d`. Everything happens in a work
//! directory beside the final files; the image file is renamed into place and
//! then its metadata (`<name>.json`, the commit point) is renamed over the old
//! one, so a failed or interrupted build never leaves a half image that would
//! later be used. A build whose inputs did not change is skipped.
//!
//! The parts: `catalog.rs` names and finds built images and their metadata;
//! `build.rs` makes the root tree (debootstrap, a directory, a tarball) and
//! stores the image; `key.rs` hashes a build's inputs (and image files); `ext4.rs` writes the
//! tree into an ext4 file; `step.rs` runs the tools with their output
//! logged; `workdir.rs` holds a build's scratch files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod build;
mod catalog;
mod ext4;
mod key;
mod step;
mod workdir;

pub use build::{build, ensure_default_image};
pub use catalog::{default_image, find, images_dir, load_meta, validate_name};
pub use key::sha256_file;

/// Bumped whenever what a build puts into an image changes.
const FORMAT_VERSION: u32 = 1;

/// The image `ironclaw run` uses when it exists.
pub const DEFAULT_IMAGE: &str = "default";
pub const DEFAULT_SUITE: &str = "bookworm";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Packages of the default image on top of `minbase`.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "python3", "procps", "less", "file", "xz-utils", "bzip2", "unzip",
];

/// Longest image name (it names files in the cache).
pub const MAX_NAME_LEN: usize = 64;

/// Why a userland image cannot be built or used.
#[derive(Debug, thiserror::Error)]
pub enum UserlandError {
    #[error("image name {name:?} is invalid: {reason}")]
    BadName { name: String, reason: String },
    #[error("package name {0:?} is invalid (Debian package names are [a-z0-9][a-z0-9+.-]*)")]
    BadPackage(String),
    #[error("{tool} not found; {hint}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} is not a file", .0.display())]
    NotAFile(PathBuf),
    #[error("{step} failed ({status}); the last lines of {}:\n{tail}", log.display())]
    StepFailed {
        step: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("mkfs.ext4 could not fit {} into {size_mib} MiB even after {tries} tries", root.display())]
    TooBig {
        root: PathBuf,
        size_mib: u64,
        tries: u32,
    },
    #[error("no image named {name:?} in {}; build it with `ironclaw image build{}`", dir.display(), if name == DEFAULT_IMAGE { String::new() } else { format!(" --name {name}") })]
    NotBuilt { name: String, dir: PathBuf },
    #[error("metadata {}: {source}", path.display())]
    BadMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> UserlandError {
    let context = context.into();
    move |source| UserlandError::Io { context, source }
}

/// Where the root file system of an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// `debootstrap --variant=minbase --include=<packages> <suite> <root> <mirror>`.
    Debootstrap {
        suite: String,
        mirror: String,
        packages: Vec<String>,
    },
    /// The tree of a local directory, as it is.
    Dir(PathBuf),
    /// The tree in a tar archive (compression detected by tar).
    Tarball(PathBuf),
}

impl Source {
    /// The default image's source, with `extra` packages added.
    pub fn debian(extra: &[String]) -> Source {
        let mut packages: Vec<String> = DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect();
        packages.extend(extra.iter().cloned());
        Source::Debootstrap {
            suite: DEFAULT_SUITE.into(),
            mirror: DEFAULT_MIRROR.into(),
            packages,
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub name: String,
    pub source: Source,
    /// Rebuild even when an image with the same inputs exists.
    pub force: bool,
}

/// What is stored next to an image (`<name>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMeta {
    pub format_version: u32,
    pub name: String,
    /// The image file's name, in the same directory as the metadata.
    pub file: String,
    /// Hash of the build inputs; an equal key means an equal build.
    pub key: String,
    pub source: Source,
    pub size_bytes: u64,
    pub sha256: String,
    pub created_unix: u64,
    pub build_secs: f64,
}

/// A build's progress, for the caller to show.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A new step: `n` of `total`.
    Step { n: u32, total: u32, what: String },
    /// A line of a tool's output within the current step.
    Detail(String),
}

/// Outcome of `build`.
#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    pub meta: ImageMeta,
    /// The image was already there with the same inputs; nothing was built.
    pub up_to_date: bool,
}
