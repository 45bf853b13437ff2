//! A unix socket only the right users can reach: the pool daemon's (and the
//! sandbox service's) front door.
//!
//! Three layers, none relying on the umask:
//! - the socket lives in a directory this user owns: created by us with an
//!   explicit mode (0700, or 0750 and the allowed group), or an existing one
//!   that is ours, a real directory (not a symlink) and not group- or
//!   world-writable;
//! - the socket gets an explicit mode (0600, or 0660 and the allowed group)
//!   before it listens, so nobody connects while it has the umask's mode;
//! - [`PrivateListener::accept`] reads each peer's `SO_PEERCRED` and closes
//!   (and logs) any peer that is not this process's own user, root, or a
//!   member of the allowed group (primary group, or listed in the group
//!   database for the peer's user).
//!
//! A leftover socket at the path is removed only if it is a socket of this
//! user that nothing answers on; anything else there is refused.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use tokio::net::{UnixListener, UnixStream};

/// Mode of the socket directory and of the socket without a group.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_SOCKET_MODE: u32 = 0o600;
/// Modes when a group may connect.
pub const GROUP_DIR_MODE: u32 = 0o750;
pub const GROUP_SOCKET_MODE: u32 = 0o660;
/// Mode of missing ancestors of the socket directory that we create.
const ANCESTOR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The path or its directory is not safe to serve on.
    #[error("refusing to serve on {}: {reason}", path.display())]
    Unsafe { path: PathBuf, reason: String },
    #[error("something already serves on {}", .0.display())]
    InUse(PathBuf),
    #[error("no group named {0:?}")]
    UnknownGroup(String),
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ListenError {
    let path = path.to_path_buf();
    move |source| ListenError::Io {
        context,
        path,
        source,
    }
}

fn unsafe_path(path: &Path, reason: impl Into<String>) -> ListenError {
    ListenError::Unsafe {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Who may connect besides this process's own user and root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    /// Members of this group (gid) may connect too.
    pub group: Option<u32>,
}

/// The credentials of a connected peer, from `SO_PEERCRED` (taken by the
/// kernel when the peer connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Whether a peer may use the socket: `own_uid`, root, or a member of the
/// allowed group; `member` says whether a uid's user belongs to a gid.
fn allowed(
    own_uid: u32,
    access: Access,
    peer: PeerCred,
    member: impl FnOnce(u32, u32) -> bool,
) -> bool {
    if peer.uid == own_uid || peer.uid == 0 {
        return true;
    }
    match access.group {
        Some(g) => peer.gid == g || member(peer.uid, g),
        None => false,
    }
}

/// A listening unix socket that hands out only allowed peers.
#[derive(Debug)]
pub struct PrivateListener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket we bound: removed on drop only if the
    /// path still names it.
    ident: (u64, u64),
    own_uid: u32,
    access: Access,
}

impl PrivateListener {
    /// Binds `path` (its parent is the socket directory) for this process's
    /// user and `access`. Must be called within a tokio runtime.
    pub fn bind(path: &Path, access: Access) -> Result<PrivateListener, ListenError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let own_uid = unsafe { libc::geteuid() };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => return Err(unsafe_path(path, "a socket path needs a directory")),
        };
        prepare_dir(dir, own_uid, access)?;
        remove_stale(path, own_uid)?;

        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| io_err("creating a socket for", path)(e.into()))?;
        let addr = UnixAddr::new(path).map_err(|e| io_err("binding", path)(e.into()))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|e| io_err("binding", path)(e.into()))?;
        // Not listening yet: connections are refused until the mode is set.
        let (mode, group) = match access.group {
            Some(g) => (GROUP_SOCKET_MODE, Some(g)),
            None => (PRIVATE_SOCKET_MODE, None),
        };
        if let Some(g) = group {
            std::os::unix::fs::lchown(path, None, Some(g))
                .map_err(io_err("setting the group of", path))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", path))?;
        let meta = std::fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
        socket::listen(&fd, Backlog::new(128).expect("128 is a valid backlog"))
            .map_err(|e| io_err("listening on", path)(e.into()))?;
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        let listener = UnixListener::from_std(std_listener).map_err(io_err("registering", path))?;
        Ok(PrivateListener {
            listener,
            path: path.to_path_buf(),
            ident: (meta.dev(), meta.ino()),
            own_uid,
            access,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next allowed peer. A peer that is not allowed is closed at once
    /// and logged (a warning naming its uid, gid and pid); `accept` then
    /// waits for the next one. Cancel-safe.
    pub async fn accept(&self) -> Result<(UnixStream, PeerCred), ListenError> {
        loop {
            let (stream, _) = self
                .listener
                .accept()
                .await
                .map_err(io_err("accepting a connection on", &self.path))?;
            let cred = match socket::getsockopt(&stream, sockopt::PeerCredentials) {
                Ok(c) => PeerCred {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                },
                Err(e) => {
                    tracing::warn!(
                        "{}: refused a connection whose credentials cannot be read: {e}",
                        self.path.display()
                    );
                    continue;
                }
            };
            // The group database may be slow (NSS): only asked when needed.
            let needs_lookup = !allowed(self.own_uid, self.access, cred, |_, _| false)
                && self.access.group.is_some();
            let ok = if needs_lookup {
                let access = self.access;
                let own = self.own_uid;
                tokio::task::spawn_blocking(move || allowed(own, access, cred, user_in_group))
                    .await
                    .unwrap_or(false)
            } else {
                allowed(self.own_uid, self.access, cred, |_, _| false)
            };
            if ok {
                return Ok((stream, cred));
            }
            tracing::warn!(
                "{}: refused a connection from uid {} (gid {}, pid {}): not allowed \
                 (only uid {}, root{})",
                self.path.display(),
                cred.uid,
                cred.gid,
                cred.pid,
                self.own_uid,
                match self.access.group {
                    Some(g) => format!(" and members of group {g}"),
                    None => String::new(),
                }
            );
        }
    }
}

impl Drop for PrivateListener {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Makes sure `dir` is a directory only this user (and the group) can use.
fn prepare_dir(dir: &Path, own_uid: u32, access: Access) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => check_existing_dir(dir, &meta, own_uid, access),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(dir, access),
        Err(e) => Err(io_err("inspecting", dir)(e)),
    }
}

fn check_existing_dir(
    dir: &Path,
    meta: &std::fs::Metadata,
    own_uid: u32,
    access: Access,
) -> Result<(), ListenError> {
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(dir, "the socket directory is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(unsafe_path(dir, "the socket directory is not a directory"));
    }
    if meta.uid() != own_uid {
        return Err(unsafe_path(
            dir,
            format!(
                "the socket directory belongs to uid {}, not to this user (uid {own_uid})",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_path(
            dir,
            format!(
                "the socket directory is group- or world-writable (mode {:o})",
                meta.mode() & 0o7777
            ),
        ));
    }
    if let Some(g) = access.group {
        let group_can_enter =
            meta.mode() & 0o001 != 0 || (meta.gid() == g && meta.mode() & 0o010 != 0);
        if !group_can_enter {
            tracing::warn!(
                "{}: members of group {g} cannot enter this existing directory (mode {:o}, \
                 group {}); use a new directory for the socket",
                dir.display(),
                meta.mode() & 0o7777,
                meta.gid()
            );
        }
    }
    Ok(())
}

/// Creates `dir` (and missing ancestors, 0755) with explicit modes.
fn create_dir(dir: &Path, access: Access) -> Result<(), ListenError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(parent).is_err() {
            create_ancestors(parent)?;
        }
    }
    // Created with no access at all, then given its mode: nobody gets in
    // between, whatever the umask.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating", dir))?;
    let mode = match access.group {
        Some(g) => {
            std::os::unix::fs::lchown(dir, None, Some(g))
                .map_err(io_err("setting the group of", dir))?;
            GROUP_DIR_MODE
        }
        None => PRIVATE_DIR_MODE,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", dir))
}

fn create_ancestors(dir: &Path) -> Result<(), ListenError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(parent).is_err() {
            create_ancestors(parent)?;
        }
    }
    match std::fs::DirBuilder::new().mode(ANCESTOR_MODE).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(ANCESTOR_MODE))
            .map_err(io_err("setting the mode of", dir)),
        // Created meanwhile by someone else: its checks are the socket
        // directory's business.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("creating", dir)(e)),
    }
}

/// Removes a leftover socket of this user that nothing serves on; refuses
/// anything else at `path`.
fn remove_stale(path: &Path, own_uid: u32) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspecting", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(unsafe_path(path, "it exists and is not a socket"));
    }
    if meta.uid() != own_uid {
        return Err(unsafe_path(
            path,
            format!("a socket of uid {} is there", meta.uid()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ListenError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(io_err("removing the stale socket", path))
}

/// A group given by name or number.
pub fn resolve_group(name: &str) -> Result<u32, ListenError> {
    let unknown = || ListenError::UnknownGroup(name.to_string());
    let c = CString::new(name).map_err(|_| unknown())?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid value to be filled in.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok(grp.gr_gid);
    }
    name.parse::<u32>().map_err(|_| unknown())
}

/// Whether the user with `uid` belongs to group `gid` by the group database
/// (its primary group or a supplementary one). A uid without an account
/// belongs to nothing.
fn user_in_group(uid: u32, gid: u32) -> bool {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `passwd` is a valid value to be filled in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return false;
    }
    if pw.pw_gid == gid {
        return true;
    }
    // SAFETY: pw_name points into `buf`, a NUL-terminated string.
    let name: &CStr = unsafe { CStr::from_ptr(pw.pw_name) };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at
        // most that many and sets `n` to the number it needs.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            return groups[..n.max(0) as usize].contains(&gid);
        }
        if n as usize <= groups.len() || groups.len() >= 65_536 {
            return false;
        }
        groups.resize(n as usize, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerCred {
        PeerCred { pid: 1, uid, gid }
    }

    #[test]
    fn only_the_own_user_root_and_group_members_are_allowed() {
        let none = Access::default();
        let group = Access { group: Some(50) };
        let never = |_, _| false;
        assert!(allowed(1000, none, peer(1000, 1000), never));
        assert!(allowed(1000, none, peer(0, 0), never));
        assert!(!allowed(1000, none, peer(1001, 50), |_, _| true));
        assert!(allowed(1000, group, peer(1001, 50), never));
        assert!(!allowed(1000, group, peer(1001, 51), never));
        assert!(allowed(1000, group, peer(1001, 51), |u, g| (u, g) == (1001, 50)));
    }

    #[test]
    fn membership_comes_from_the_account_database() {
        // root's primary group is 0; no account has uid 65533.
        assert!(user_in_group(0, 0));
        assert!(!user_in_group(65533, 0));
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert_eq!(resolve_group("4242").unwrap(), 4242);
        assert!(matches!(
            resolve_group("no-such-group-here"),
            Err(ListenError::UnknownGroup(_))
        ));
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_directory_and_socket_get_explicit_modes_and_a_stale_socket_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("a/b/s.sock");
        rt().block_on(async {
            let l = PrivateListener::bind(&sock, Access::default()).unwrap();
            let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
            assert_eq!(mode(sock.parent().unwrap()), PRIVATE_DIR_MODE);
            assert_eq!(mode(tmp.path().join("a").as_path()), ANCESTOR_MODE);
            assert_eq!(mode(&sock), PRIVATE_SOCKET_MODE);
            // A second listener on a live socket is refused.
            assert!(matches!(
                PrivateListener::bind(&sock, Access::default()),
                Err(ListenError::InUse(_))
            ));
            let client = tokio::spawn(UnixStream::connect(sock.clone()));
            let (_s, cred) = l.accept().await.unwrap();
            // SAFETY: geteuid has no preconditions.
            assert_eq!(cred.uid, unsafe { libc::geteuid() });
            drop(client.await.unwrap().unwrap());
            drop(l);
            assert!(!sock.exists(), "the socket outlived its listener");
            // A stale socket (its listener gone without removing it) is
            // replaced.
            drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
            assert!(sock.exists());
            let l = PrivateListener::bind(&sock, Access::default()).unwrap();
            assert_eq!(mode(&sock), PRIVATE_SOCKET_MODE);
            drop(l);
        });
        assert!(!sock.exists(), "the socket outlived its listener");
    }

    #[test]
    fn unsafe_directories_and_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        rt().block_on(async {
            for (path, why) in [
                (open.join("s"), "writable"),
                (link.join("s"), "symbolic link"),
                (file.join("s"), "not a directory"),
                (foreign.join("s"), "belongs to uid 65534"),
            ] {
                let e = PrivateListener::bind(&path, Access::default()).unwrap_err();
                assert!(e.to_string().contains(why), "{path:?}: {e}");
            }
            // Not a socket at the path: left alone.
            let e = PrivateListener::bind(&file, Access::default()).unwrap_err();
            assert!(e.to_string().contains("not a socket"), "{e}");
        });
        assert!(file.exists());
    }
}
