//! The cache: generated initramfs files (`initramfs-<release>-<key>.cpio`
//! at the root, [`crate::boot::initramfs`]), userland images (`images/`,
//! [`crate::userland`]) and prototypes (`prototypes/`, [`crate::vm::prototype`]).
//!
//! What is loaded from here runs as the guest's `/init` or is restored as a
//! whole VM, so the cache must be the current user's alone. A cache that
//! belongs to someone else or that others can write (e.g. `sudo -E ironclaw`
//! with a user's `$HOME`) is refused rather than used; directories are created
//! 0700 and files are written without following symlinks, so a link planted
//! in the cache cannot make IronClaw write through it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "the cache directory {path} cannot be trusted: {reason}; \
         use a directory of your own (set IRONCLAW_CACHE_DIR), or fix its owner and mode"
    )]
    Untrusted { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CacheError {
    let context = context.into();
    move |source| CacheError::Io { context, source }
}

/// Where the cache lives: `$IRONCLAW_CACHE_DIR`, else `$XDG_CACHE_HOME/ironclaw`,
/// else `~/.cache/ironclaw`. Not checked: see [`trusted_dir`].
pub fn root() -> PathBuf {
    if let Some(d) = std::env::var_os("IRONCLAW_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("ironclaw");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/ironclaw")
}

/// `sub` under the cache root (`""` for the root itself), created 0700 where
/// missing, after checking that the root and `sub` are directories (not
/// symlinks) owned by the current user and writable by nobody else.
pub fn trusted_dir(sub: &str) -> Result<PathBuf, CacheError> {
    trusted_dir_in(&root(), sub)
}

/// [`trusted_dir`] for reading: `None` when the root or `sub` does not
/// exist yet, and nothing is created (a lookup leaves no trace).
pub fn existing_trusted_dir(sub: &str) -> Result<Option<PathBuf>, CacheError> {
    existing_trusted_dir_in(&root(), sub)
}

pub(crate) fn existing_trusted_dir_in(
    root: &Path,
    sub: &str,
) -> Result<Option<PathBuf>, CacheError> {
    let dir = root.join(sub);
    for path in [root, dir.as_path()] {
        if fs::symlink_metadata(path).is_err() {
            return Ok(None);
        }
        check_owned(path)?;
    }
    Ok(Some(dir))
}

pub fn trusted_dir_in(root: &Path, sub: &str) -> Result<PathBuf, CacheError> {
    // The root is checked before anything is created in it.
    create_private(root)?;
    check_owned(root)?;
    if sub.is_empty() {
        return Ok(root.to_path_buf());
    }
    let dir = root.join(sub);
    create_private(&dir)?;
    check_owned(&dir)?;
    Ok(dir)
}

/// Creates `dir` (and missing parents) 0700 unless it exists.
fn create_private(dir: &Path) -> Result<(), CacheError> {
    if fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))
}

/// `path` is a real directory of the current user that only it can write.
fn check_owned(path: &Path) -> Result<(), CacheError> {
    let untrusted = |reason: String| CacheError::Untrusted {
        path: path.to_path_buf(),
        reason,
    };
    let m = fs::symlink_metadata(path).map_err(io(format!("inspecting {}", path.display())))?;
    if m.file_type().is_symlink() {
        return Err(untrusted("it is a symbolic link".into()));
    }
    if !m.is_dir() {
        return Err(untrusted("it is not a directory".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(untrusted(format!(
            "it belongs to uid {}, not to you (uid {me})",
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "its mode {:o} lets other users write to it",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Where a remembered answer about an input is recorded: `probes/<kind>-<hash
/// of identity>`, in a directory of the cache that only we can write (`None`
/// if the cache cannot be used: the answer is then worked out again). The
/// identity must change whenever the answer could (see
/// [`crate::vm::host::file_identity`]); the record is written whole
/// ([`write_file`]) or not at all.
pub fn memo_record(kind: &str, identity: &str) -> Option<PathBuf> {
    use sha2::Digest;
    let dir = trusted_dir("probes").ok()?;
    let name = hex::encode(&sha2::Sha256::digest(identity.as_bytes())[..12]);
    Some(dir.join(format!("{kind}-{name}")))
}

/// Replaces `path` with `data`: written to a new file (`O_EXCL|O_NOFOLLOW`,
/// mode 0600) beside it, then renamed over it. A symlink planted at `path`
/// is replaced, never written through.
pub fn write_file(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let mut rnd = [0u8; 6];
    getrandom::getrandom(&mut rnd)
        .map_err(|e| io("choosing a temporary name")(std::io::Error::other(e.to_string())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", hex::encode(rnd)));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io(format!("creating {}", tmp.display())))?;
        f.write_all(data)
            .map_err(io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, path).map_err(io(format!("replacing {}", path.display())))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An exclusive `flock` on a lock file in the cache, held until dropped.
/// The file is opened without following symlinks and created 0600.
pub struct FileLock {
    _file: fs::File,
}

impl FileLock {
    /// Waits for the lock.
    pub fn acquire(path: &Path) -> Result<FileLock, CacheError> {
        let file = open_lock_file(path)?;
        flock(&file, libc::LOCK_EX).map_err(io(format!("locking {}", path.display())))?;
        Ok(FileLock { _file: file })
    }

    /// The lock if nobody holds it, without waiting.
    pub fn try_acquire(path: &Path) -> Option<FileLock> {
        let file = open_lock_file(path).ok()?;
        flock(&file, libc::LOCK_EX | libc::LOCK_NB).ok()?;
        Some(FileLock { _file: file })
    }
}

fn open_lock_file(path: &Path) -> Result<fs::File, CacheError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))
}

fn flock(file: &fs::File, op: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `name` (read from metadata in the cache) names a plain file in
/// the same directory: no separators, not empty, not `.`/`..`.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_directory_is_trusted_and_created_0700() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cache");
        let dir = trusted_dir_in(&root, "prototypes").unwrap();
        assert_eq!(dir, root.join("prototypes"));
        for d in [&root, &dir] {
            assert_eq!(fs::metadata(d).unwrap().mode() & 0o777, 0o700);
        }
    }

    #[test]
    fn writable_by_others_a_symlink_or_foreign_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = trusted_dir_in(&open, "").unwrap_err();
        assert!(e.to_string().contains("other users write"), "{e}");
        // A group-writable subdirectory under a good root.
        let root = t.path().join("root");
        trusted_dir_in(&root, "").unwrap();
        fs::create_dir(root.join("images")).unwrap();
        fs::set_permissions(root.join("images"), fs::Permissions::from_mode(0o770)).unwrap();
        assert!(trusted_dir_in(&root, "images").is_err());

        let link = t.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let e = trusted_dir_in(&link, "").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Root (the test hosts) can hand a cache to another user: what
            // `sudo -E` with a user's $HOME amounts to.
            let theirs = t.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = trusted_dir_in(&theirs, "").unwrap_err();
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        }
    }

    #[test]
    fn a_lookup_creates_nothing_and_checks_what_exists() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cache");
        assert!(existing_trusted_dir_in(&root, "images").unwrap().is_none());
        assert!(!root.exists(), "a lookup created the cache");
        trusted_dir_in(&root, "images").unwrap();
        assert_eq!(
            existing_trusted_dir_in(&root, "images").unwrap(),
            Some(root.join("images"))
        );
        fs::set_permissions(root.join("images"), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(existing_trusted_dir_in(&root, "images").is_err());
    }

    #[test]
    fn writes_replace_a_planted_symlink_instead_of_following_it() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let planted = t.path().join("verified");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_file(&planted, b"stamp").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&planted).unwrap(), "stamp");
        assert_eq!(fs::metadata(&planted).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn lock_files_are_not_opened_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let planted = t.path().join(".key.lock");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(FileLock::acquire(&planted).is_err());
        assert!(FileLock::try_acquire(&planted).is_none());
        let good = t.path().join(".other.lock");
        let held = FileLock::acquire(&good).unwrap();
        assert!(
            FileLock::try_acquire(&good).is_none(),
            "the lock is exclusive"
        );
        drop(held);
        assert!(FileLock::try_acquire(&good).is_some());
    }

    #[test]
    fn only_plain_names_are_file_names() {
        for good in ["snapshot.bin", "snapshot.mem", "a-b_c.ext4"] {
            assert!(is_plain_file_name(good), "{good}");
        }
        for bad in ["", ".", "..", "/etc/passwd", "../x", "a/b"] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }
}
