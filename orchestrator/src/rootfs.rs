//! The guest's userland: root file system images (ext4) that every VM mounts
//! read-only under a writable overlay.
//!
//! `build` makes a named image in the cache (`<cache>/images/`): a Debian
//! minimal root made by `debootstrap --variant=minbase` (with `python3` and a
//! few everyday tools), or the tree of a local directory or tarball, written
//! into an ext4 file with `mkfs.ext4 -d`. Everything happens in a work
//! directory beside the final files; the image file is renamed into place and
//! then its metadata (`<name>.json`, the commit point) is renamed over the old
//! one, so a failed or interrupted build never leaves a half image that would
//! later be used. A build whose inputs did not change is skipped.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
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

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RootfsError {
    let context = context.into();
    move |source| RootfsError::Io { context, source }
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

/// Outcome of [`build`].
#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    pub meta: ImageMeta,
    /// The image was already there with the same inputs; nothing was built.
    pub up_to_date: bool,
}

const IMAGES_SUBDIR: &str = "images";

/// `<cache>/images`.
pub fn images_dir() -> PathBuf {
    crate::cache::root().join(IMAGES_SUBDIR)
}

/// Image names become file names: short, and no path tricks.
pub fn validate_name(name: &str) -> Result<(), RootfsError> {
    let bad = |reason: String| {
        Err(RootfsError::BadName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return bad(format!(
            "contains {c:?}; only A-Z, a-z, 0-9, '-' and '_' are allowed"
        ));
    }
    Ok(())
}

fn validate_package(p: &str) -> Result<(), RootfsError> {
    let mut chars = p.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok
        || !p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'))
    {
        return Err(RootfsError::BadPackage(p.into()));
    }
    Ok(())
}

fn meta_path(name: &str) -> PathBuf {
    images_dir().join(format!("{name}.json"))
}

/// The metadata of the image `name`, if it was built.
pub fn load_meta(name: &str) -> Result<Option<ImageMeta>, RootfsError> {
    validate_name(name)?;
    let path = meta_path(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| RootfsError::BadMetadata { path, source })
}

/// The image file of the built image `name`.
pub fn find(name: &str) -> Result<PathBuf, RootfsError> {
    let not_built = || RootfsError::NotBuilt {
        name: name.into(),
        dir: images_dir(),
    };
    // The image becomes the guest's root: only a cache of our own will do.
    // A lookup creates nothing.
    if crate::cache::existing_trusted_dir(IMAGES_SUBDIR)?.is_none() {
        return Err(not_built());
    }
    let meta = load_meta(name)?.ok_or_else(not_built)?;
    // The metadata names a file in its own directory, never elsewhere.
    validate_file_name(&meta.file).map_err(|_| not_built())?;
    let path = images_dir().join(&meta.file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(not_built())
    }
}

fn validate_file_name(file: &str) -> Result<(), ()> {
    let ok = file.ends_with(".ext4")
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some(()).ok_or(())
}

/// The default image, when it has been built.
pub fn default_image() -> Option<PathBuf> {
    match find(DEFAULT_IMAGE) {
        Ok(p) => Some(p),
        Err(e @ RootfsError::Cache(_)) => {
            tracing::warn!("not using the default image: {e}");
            None
        }
        Err(_) => None,
    }
}

/// The hash of everything a build of `source` depends on.
fn build_key(source: &Source) -> Result<String, RootfsError> {
    let mut h = Sha256::new();
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update(serde_json::to_vec(source).expect("a source serializes"));
    match source {
        Source::Debootstrap { .. } => {}
        Source::Tarball(path) => {
            let mut f =
                fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(io_err(format!("reading {}", path.display())))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
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

type WalkEntry = (PathBuf, fs::Metadata, Option<PathBuf>);

/// Every entry under `root` (not following symlinks), sorted by path.
fn walk(root: &Path) -> Result<Vec<WalkEntry>, RootfsError> {
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

/// Builds the image `spec` describes, unless an image with the same inputs
/// exists (and `spec.force` is off). Blocking; takes about a minute for the
/// default image.
pub fn build(spec: &BuildSpec, progress: &mut dyn FnMut(Progress)) -> Result<Built, RootfsError> {
    validate_name(&spec.name)?;
    match &spec.source {
        Source::Debootstrap { packages, .. } => {
            for p in packages {
                validate_package(p)?;
            }
        }
        Source::Dir(d) if !d.is_dir() => return Err(RootfsError::NotADirectory(d.clone())),
        Source::Tarball(t) if !t.is_file() => return Err(RootfsError::NotAFile(t.clone())),
        _ => {}
    }
    let dir = crate::cache::trusted_dir(IMAGES_SUBDIR)?;
    // One build at a time per cache: a second builder waits, then finds the
    // image up to date.
    let _lock = crate::cache::FileLock::acquire(&dir.join(".lock"))?;
    remove_stale_work_dirs(&dir);

    let key = build_key(&spec.source)?;
    if !spec.force {
        if let (Some(meta), Ok(path)) = (load_meta(&spec.name)?, find(&spec.name)) {
            if meta.key == key && meta.format_version == FORMAT_VERSION {
                return Ok(Built {
                    path,
                    meta,
                    up_to_date: true,
                });
            }
        }
    }

    let started = Instant::now();
    let work = WorkDir::create(&dir)?;
    let total = match spec.source {
        Source::Debootstrap { .. } => 4,
        Source::Tarball(_) => 3,
        Source::Dir(_) => 2,
    };

    let (root, mut n) = match &spec.source {
        Source::Debootstrap {
            suite,
            mirror,
            packages,
        } => {
            progress(Progress::Step {
                n: 1,
                total,
                what: format!(
                    "debootstrap {suite} (minbase + {}) from {mirror}",
                    packages.join(", ")
                ),
            });
            let root = work.path.join("root");
            let tool = crate::vm::host::which("debootstrap").ok_or(RootfsError::MissingTool {
                tool: "debootstrap",
                hint: "apt-get install debootstrap (or run scripts/setup.sh)",
            })?;
            let mut cmd = Command::new(tool);
            cmd.arg("--variant=minbase");
            if !packages.is_empty() {
                cmd.arg(format!("--include={}", packages.join(",")));
            }
            cmd.arg(suite).arg(&root).arg(mirror);
            run_logged("debootstrap", cmd, &work.path.join("build.log"), progress)?;
            progress(Progress::Step {
                n: 2,
                total,
                what: "tidying the tree (package caches, hostname)".into(),
            });
            tidy_debian_root(&root)?;
            (root, 3)
        }
        Source::Tarball(tar) => {
            progress(Progress::Step {
                n: 1,
                total,
                what: format!("unpacking {}", tar.display()),
            });
            let root = work.path.join("root");
            fs::create_dir(&root).map_err(io_err(format!("creating {}", root.display())))?;
            let mut cmd = Command::new("tar");
            cmd.args(["--numeric-owner", "-xpf"])
                .arg(tar)
                .arg("-C")
                .arg(&root);
            run_logged("tar", cmd, &work.path.join("build.log"), progress)?;
            (root, 2)
        }
        Source::Dir(d) => (d.clone(), 1),
    };

    let file = format!("{}-{key}.ext4", spec.name);
    let tmp_image = work.path.join("image.ext4");
    progress(Progress::Step {
        n,
        total,
        what: format!("writing the ext4 image of {}", root.display()),
    });
    make_ext4(&root, &tmp_image, &work.path.join("build.log"), progress)?;
    n += 1;
    progress(Progress::Step {
        n,
        total,
        what: "checksumming and storing the image".into(),
    });
    let (sha256, size_bytes) = sha256_file(&tmp_image)?;
    let meta = ImageMeta {
        format_version: FORMAT_VERSION,
        name: spec.name.clone(),
        file: file.clone(),
        key,
        source: spec.source.clone(),
        size_bytes,
        sha256,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_secs: started.elapsed().as_secs_f64(),
    };
    let path = dir.join(&file);
    fs::rename(&tmp_image, &path)
        .map_err(io_err(format!("moving the image to {}", path.display())))?;
    let tmp_meta = work.path.join("meta.json");
    fs::write(
        &tmp_meta,
        serde_json::to_vec_pretty(&meta).expect("metadata serializes"),
    )
    .map_err(io_err(format!("writing {}", tmp_meta.display())))?;
    let final_meta = meta_path(&spec.name);
    fs::rename(&tmp_meta, &final_meta)
        .map_err(io_err(format!("writing {}", final_meta.display())))?;
    remove_old_images(&dir, &spec.name, &file);
    Ok(Built {
        path,
        meta,
        up_to_date: false,
    })
}

/// Builds the default image unless it is up to date; returns its path.
pub fn ensure_default_image(progress: &mut dyn FnMut(Progress)) -> Result<PathBuf, RootfsError> {
    let spec = BuildSpec {
        name: DEFAULT_IMAGE.into(),
        source: Source::debian(&[]),
        force: false,
    };
    build(&spec, progress).map(|b| b.path)
}

/// Runs `cmd` with its output into `log` (and, line by line, to `progress`).
fn run_logged(
    step: &'static str,
    mut cmd: Command,
    log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), RootfsError> {
    let mut log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("creating {}", log.display())))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err(format!("starting {step}")))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|r| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    for line in rx {
        let _ = writeln!(log_file, "{line}");
        progress(Progress::Detail(line));
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .map_err(io_err(format!("waiting for {step}")))?;
    if status.success() {
        return Ok(());
    }
    Err(RootfsError::StepFailed {
        step,
        status: status.to_string(),
        log: log.to_path_buf(),
        tail: crate::vm::host::tail(log, 2000),
    })
}

/// What a debootstrapped tree needs for a VM and does not need at all.
fn tidy_debian_root(root: &Path) -> Result<(), RootfsError> {
    // Downloaded packages and package lists: dead weight in every VM (which
    // has no network to use apt anyway).
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let d = root.join(dir);
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() && !p.is_symlink() {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    }
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = fs::remove_file(root.join(f));
    }
    let write = |rel: &str, data: &str| {
        let p = root.join(rel);
        fs::write(&p, data).map_err(io_err(format!("writing {}", p.display())))
    };
    write("etc/hostname", "ironclaw\n")?;
    write(
        "etc/hosts",
        "127.0.0.1\tlocalhost ironclaw\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    // No network: an empty resolver configuration, not the host's.
    write("etc/resolv.conf", "")?;
    Ok(())
}

/// Blocks, files and inodes a tree needs, not following symlinks.
fn tree_usage(root: &Path) -> Result<(u64, u64), RootfsError> {
    let mut bytes = 0u64;
    let mut inodes = 1u64;
    for (_, meta, _) in walk(root)? {
        inodes += 1;
        bytes += meta.len().div_ceil(4096) * 4096;
    }
    Ok((bytes, inodes))
}

/// `mkfs.ext4 -d root` into `image`, sized from the tree; retried larger if
/// the estimate was short. No journal: the image is only ever mounted read-only.
fn make_ext4(
    root: &Path,
    image: &Path,
    log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), RootfsError> {
    let tool = crate::vm::host::which("mkfs.ext4")
        .or_else(|| Some(PathBuf::from("/usr/sbin/mkfs.ext4")).filter(|p| p.is_file()))
        .or_else(|| Some(PathBuf::from("/sbin/mkfs.ext4")).filter(|p| p.is_file()))
        .ok_or(RootfsError::MissingTool {
            tool: "mkfs.ext4",
            hint: "apt-get install e2fsprogs (or run scripts/setup.sh)",
        })?;
    let (bytes, inodes) = tree_usage(root)?;
    let inodes = inodes + inodes / 5 + 1024;
    // Data, inode tables (256 bytes each), then slack for directories' and
    // the file system's own blocks.
    let mut size_mib = (bytes + inodes * 256).div_ceil(1 << 20) * 6 / 5 + 32;
    const TRIES: u32 = 3;
    for attempt in 1..=TRIES {
        let _ = fs::remove_file(image);
        let f = fs::File::create(image).map_err(io_err(format!("creating {}", image.display())))?;
        f.set_len(size_mib << 20)
            .map_err(io_err(format!("sizing {}", image.display())))?;
        drop(f);
        let mut cmd = Command::new(&tool);
        cmd.args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-L",
            "ironclaw",
        ])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(root)
        .arg(image);
        match run_logged("mkfs.ext4", cmd, log, progress) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < TRIES => {
                progress(Progress::Detail(format!(
                    "{size_mib} MiB was not enough ({e}); retrying larger"
                )));
                size_mib = size_mib * 3 / 2;
            }
            Err(RootfsError::StepFailed { .. }) => {
                return Err(RootfsError::TooBig {
                    root: root.to_path_buf(),
                    size_mib,
                    tries: TRIES,
                })
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// SHA-256 (hex) and size of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<(String, u64), RootfsError> {
    let mut f = fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

/// Older image files of `name`, replaced by `keep`. A VM still running from
/// one keeps its open file; the name just goes away.
fn remove_old_images(dir: &Path, name: &str, keep: &str) {
    let prefix = format!("{name}-");
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if f != keep
            && f.ends_with(".ext4")
            && f.strip_prefix(&prefix).is_some_and(|rest| {
                // `<name>-<24 hex>.ext4`, so `a` never removes the images of `a-b`.
                rest.len() == 24 + 5 && rest[..24].chars().all(|c| c.is_ascii_hexdigit())
            })
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A build's work directory, `.build-<pid>-<random>`: removed when dropped,
/// and by a later build if this process died first.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(images: &Path) -> Result<WorkDir, RootfsError> {
        let mut rnd = [0u8; 4];
        getrandom::getrandom(&mut rnd).map_err(|e| RootfsError::Io {
            context: "choosing a work directory name".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = images.join(format!(
            ".build-{}-{}",
            std::process::id(),
            hex::encode(rnd)
        ));
        fs::create_dir(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_work_dir(&self.path);
    }
}

fn remove_work_dir(path: &Path) {
    // debootstrap mounts /proc (and more) inside its target while it runs; a
    // killed build can leave them mounted. Detach them first so removing the
    // tree can never reach into a live /proc or /sys.
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(path))
            .collect();
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in points {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    let _ = fs::remove_dir_all(path);
}

/// Work directories of builds whose process is gone.
fn remove_stale_work_dirs(images: &Path) {
    let Ok(rd) = fs::read_dir(images) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".build-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_work_dir(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_packages_are_checked() {
        for ok in ["default", "py-3_11", &"a".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", "a.b", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["python3", "g++", "libc6.1-dev"] {
            validate_package(ok).unwrap();
        }
        for bad in ["", "-x", "Python", "a b", "x;rm"] {
            assert!(validate_package(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_file_names_stay_in_the_images_directory() {
        assert!(validate_file_name("default-0123456789abcdef01234567.ext4").is_ok());
        for bad in [
            "../x.ext4",
            "/etc/passwd",
            ".hidden.ext4",
            "x.img",
            "a/b.ext4",
        ] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn directory_key_changes_with_the_tree() {
        let d = std::env::temp_dir().join(format!("ironclaw-rootfs-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(d.join("etc/a"), "1").unwrap();
        let k1 = build_key(&Source::Dir(d.clone())).unwrap();
        assert_eq!(k1, build_key(&Source::Dir(d.clone())).unwrap());
        fs::write(d.join("etc/b"), "2").unwrap();
        assert_ne!(k1, build_key(&Source::Dir(d.clone())).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }

    /// mkfs.ext4 (e2fsprogs) is installed by scripts/setup.sh, which every
    /// test run goes through; without it this fails rather than pass unseen.
    #[test]
    fn build_from_a_directory_makes_an_ext4_image() {
        let d = std::env::temp_dir().join(format!("ironclaw-rootfs-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("tree/bin")).unwrap();
        fs::write(d.join("tree/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
        let image = d.join("out.ext4");
        make_ext4(&d.join("tree"), &image, &d.join("log"), &mut |_| {}).unwrap();
        let mut head = vec![0u8; 2048];
        fs::File::open(&image)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        // The ext4 superblock's magic 0xEF53 at offset 1024 + 56.
        assert_eq!(&head[1080..1082], &[0x53, 0xEF]);
        fs::remove_dir_all(&d).unwrap();
    }
}
