//! The jail every VMM process starts in.
//!
//! In the forked child, before `exec`, in this order (each failure stops the
//! spawn with an error naming the step; nothing is skipped with a warning):
//! 1. join the VM's cgroup (memory, CPU, pids limits: [`super::cgroup`]);
//! 2. new mount, PID, IPC, UTS and network namespaces. The network namespace
//!    is empty: no interface but a `lo` that stays down, so even an IP socket
//!    the seccomp filter let through would reach nothing;
//! 3. fork, so the VMM is PID 1 of its PID namespace (`unshare` moves only
//!    later children); the first child stays as a small reaper that mirrors
//!    the VMM's exit status and dies with it, and is what the orchestrator holds;
//! 4. mounts made private, a fresh `/proc` for the new PID namespace, and the
//!    boot files bind-mounted read-only into the runtime directory (so an
//!    unprivileged uid can read an initramfs cached under a private home);
//! 5. hostname, then an unprivileged uid/gid with no supplementary groups;
//! 6. `no_new_privs` and the seccomp filter ([`super::seccomp`]), last, so it
//!    covers everything from `exec` on.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use serde::Serialize;

use super::cgroup::CgroupError;
use super::process;
use super::seccomp::{InstallStep, SeccompError, SeccompFilter};

/// The steps of the jail, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(u8)]
pub enum JailStep {
    JoinCgroup = 1,
    Unshare,
    ForkPidNamespace,
    ParentDeathSignal,
    MountPrivate,
    MountProc,
    BindBootFiles,
    Hostname,
    SetGroups,
    SetGid,
    SetUid,
    NoNewPrivs,
    Seccomp,
    SendAuditListener,
    MinimalRoot,
    PivotRoot,
}

impl JailStep {
    const ALL: [JailStep; 16] = [
        JailStep::JoinCgroup,
        JailStep::Unshare,
        JailStep::ForkPidNamespace,
        JailStep::ParentDeathSignal,
        JailStep::MountPrivate,
        JailStep::MountProc,
        JailStep::BindBootFiles,
        JailStep::Hostname,
        JailStep::SetGroups,
        JailStep::SetGid,
        JailStep::SetUid,
        JailStep::NoNewPrivs,
        JailStep::Seccomp,
        JailStep::SendAuditListener,
        JailStep::MinimalRoot,
        JailStep::PivotRoot,
    ];

    fn from_u8(v: u8) -> Option<JailStep> {
        JailStep::ALL.into_iter().find(|s| *s as u8 == v)
    }
}

impl std::fmt::Display for JailStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JailStep::JoinCgroup => "joining the VM's cgroup",
            JailStep::Unshare => "creating mount/PID/IPC/UTS/network namespaces",
            JailStep::ForkPidNamespace => "forking into the new PID namespace",
            JailStep::ParentDeathSignal => "setting the parent-death signal",
            JailStep::MountPrivate => "making mounts private",
            JailStep::MountProc => "mounting /proc for the PID namespace",
            JailStep::BindBootFiles => "bind-mounting the boot files read-only",
            JailStep::Hostname => "setting the hostname",
            JailStep::SetGroups => "dropping supplementary groups",
            JailStep::SetGid => "switching to the jail gid",
            JailStep::SetUid => "switching to the jail uid",
            JailStep::NoNewPrivs => "setting no_new_privs",
            JailStep::Seccomp => "installing the seccomp filter",
            JailStep::SendAuditListener => "handing the seccomp audit listener to the orchestrator",
            JailStep::MinimalRoot => "building the minimal root file system",
            JailStep::PivotRoot => "switching into the minimal root (pivot_root)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail of {process}: {step} failed: {source}")]
    Step {
        process: &'static str,
        step: JailStep,
        #[source]
        source: std::io::Error,
    },
    #[error("jail of {process}: starting it failed: {source}")]
    Spawn {
        process: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("jail of {process}: preparing {what} failed: {source}")]
    Prepare {
        process: &'static str,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: {what} {path} cannot be read by the jail uid {uid} (mode {mode:o}); make it readable by others (chmod o+r) or set confinement.uid to a uid that can read it")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        uid: u32,
        mode: u32,
    },
    #[error("jail: confining the VMM needs root (namespaces, cgroups, a uid change); run as root, or set confinement.jail = false to run with the seccomp filter only")]
    NotRoot,
    #[error("jail: VM cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("jail: {0}")]
    Seccomp(#[from] SeccompError),
}

/// A read-only bind mount into the runtime directory.
#[derive(Debug, Clone)]
pub struct Bind {
    pub what: &'static str,
    pub source: PathBuf,
    pub target: PathBuf,
    /// A program: keep it executable (boot files are mounted `noexec`).
    pub exec: bool,
}

/// How to confine one process.
#[derive(Debug, Default)]
pub struct JailSpec {
    /// New namespaces (+ the fork for the PID namespace), private mounts, /proc.
    pub namespaces: bool,
    /// `(uid, gid)` to switch to; `None` keeps the orchestrator's.
    pub ids: Option<(u32, u32)>,
    pub binds: Vec<Bind>,
    /// `cgroup.procs` of the VM's cgroup(s).
    pub cgroup_procs: Vec<OwnedFd>,
    pub seccomp: Option<SeccompFilter>,
    /// With namespaces: switch into a minimal root holding only what a VMM
    /// needs (`/usr` and the loader's cache read-only, a few devices, `/proc`,
    /// `/sys` read-only) and this runtime directory, read-write at its own
    /// path. Nothing else of the host's file system is visible to the VMM.
    pub minimal_root: Option<PathBuf>,
}

/// A started, confined process.
#[derive(Debug)]
pub struct Confined {
    /// The child the orchestrator forked: the VMM itself, or (with namespaces)
    /// the reaper whose child is the VMM. Killing it kills the VMM.
    pub child: Child,
    /// Host pid of the VMM process itself.
    pub pid: u32,
    /// A pidfd of the VMM, to signal it without racing pid reuse.
    pub pidfd: Option<OwnedFd>,
    /// The seccomp user-notification listener (audit level).
    pub audit_listener: Option<OwnedFd>,
}

impl Confined {
    /// SIGKILLs the VMM and its reaper and waits for the reaper (which waits
    /// for the VMM, PID 1 of its namespace, whose death ends the namespace).
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(fd) = &self.pidfd {
                // SAFETY: pidfd_send_signal on a pidfd we own.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                // Let the reaper collect the VMM and exit by itself: killed
                // first, it would leave the VMM a zombie for init to reap.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while matches!(self.child.try_wait(), Ok(None))
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
        process::kill_and_reap(&mut self.child);
    }
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{} contains a NUL byte", p.display())))
}

/// Whether `uid`/`gid` may look up `path`: every directory on the way must
/// be searchable (a program under `/root`, say, is not).
pub fn reachable(path: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    path.ancestors().skip(1).all(|dir| {
        std::fs::metadata(dir).is_ok_and(|m| {
            let mode = m.mode();
            mode & 0o001 != 0
                || (m.uid() == uid && mode & 0o100 != 0)
                || (m.gid() == gid && mode & 0o010 != 0)
        })
    })
}

/// Checks that `uid`/`gid` can read `path` by its mode bits (the jail reads
/// it through a bind mount, so only the file's own permissions count).
pub fn check_readable(
    what: &'static str,
    path: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), JailError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|source| JailError::Prepare {
        process: "vmm",
        what,
        source,
    })?;
    let mode = m.mode();
    let ok = mode & 0o004 != 0
        || (m.uid() == uid && mode & 0o400 != 0)
        || (m.gid() == gid && mode & 0o040 != 0);
    if ok {
        Ok(())
    } else {
        Err(JailError::Unreadable {
            what,
            path: path.to_path_buf(),
            uid,
            mode: mode & 0o7777,
        })
    }
}

/// Messages from the child on the report pipe: 8 bytes each.
const TAG_ERROR: u8 = b'E';
const TAG_PID: u8 = b'P';

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Writes one report message (async-signal-safe).
fn report(fd: RawFd, tag: u8, step: u8, value: i32) {
    let v = value.to_ne_bytes();
    let msg = [tag, step, 0, 0, v[0], v[1], v[2], v[3]];
    // SAFETY: writing 8 bytes from a stack buffer; a short write only loses
    // the detail of an error that std reports anyway.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// Fails the step: reports it on the pipe and returns the errno for std.
fn fail(fd: RawFd, step: JailStep, err: i32) -> std::io::Error {
    report(fd, TAG_ERROR, step as u8, err);
    std::io::Error::from_raw_os_error(err)
}

/// Passes `fd` over the unix socket `sock` (async-signal-safe).
fn send_fd(sock: RawFd, fd: RawFd) -> i32 {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one descriptor: CMSG_SPACE(sizeof(int)) is 24 on x86_64.
    let mut control = [0u64; 3];
    // SAFETY: a zeroed msghdr is valid; the pointers set below point at
    // buffers alive for the call, and CMSG_FIRSTHDR of a control buffer of
    // CMSG_SPACE(sizeof(int)) bytes is non-null and large enough.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return errno();
        }
    }
    0
}

/// Receives one descriptor from `sock`.
fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 3];
    // SAFETY: as in send_fd; the kernel fills the buffers.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        if libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(std::io::Error::other("no descriptor in the message"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Everything the child needs, prepared before the fork (no allocation after it).
struct ChildPlan {
    namespaces: bool,
    ids: Option<(u32, u32)>,
    binds: Vec<(CString, CString, bool)>,
    cgroup_procs: Vec<OwnedFd>,
    seccomp: Option<SeccompFilter>,
    report_w: OwnedFd,
    alive_r: OwnedFd,
    alive_w: OwnedFd,
    audit_sock: Option<OwnedFd>,
    root: Option<RootPlan>,
}

/// The minimal root, every path prepared before the fork.
struct RootPlan {
    /// The tmpfs that becomes `/` (an empty directory in the runtime dir).
    new_root: CString,
    /// Directories to create inside it, parents first.
    dirs: Vec<CString>,
    /// Empty files to create as bind targets (devices, single files).
    files: Vec<CString>,
    /// (source, target, read-only, recursive) bind mounts.
    binds: Vec<(CString, CString, bool, bool)>,
    /// (link target, link path) symlinks (`/lib -> usr/lib` on merged-usr hosts).
    links: Vec<(CString, CString)>,
    /// The nested copy of the new root that a recursive bind of the runtime
    /// directory brings along; unmounted again.
    nested: CString,
    proc_dir: CString,
    old_root: CString,
}

/// Host paths a VMM needs in its minimal root, read-only.
const ROOT_DIRS_RO: &[&str] = &["/usr", "/sys"];
const ROOT_FILES_RO: &[&str] = &["/etc/ld.so.cache", "/etc/localtime"];
/// Devices a VMM may open; bound only where they exist on the host.
const ROOT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/kvm",
];
/// Top-level names that merged-usr hosts make symlinks into /usr.
const ROOT_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

impl RootPlan {
    fn prepare(runtime_dir: &Path) -> std::io::Result<RootPlan> {
        let new_root = runtime_dir.join(".root");
        std::fs::create_dir_all(&new_root)?;
        let inside = |p: &Path| new_root.join(p.strip_prefix("/").unwrap_or(p));
        let mut dirs: Vec<PathBuf> = Vec::new();
        let add_dir = |d: PathBuf, dirs: &mut Vec<PathBuf>| {
            let mut chain = Vec::new();
            let mut cur = Some(d.as_path());
            while let Some(c) = cur {
                if c == new_root.as_path() || !c.starts_with(&new_root) {
                    break;
                }
                chain.push(c.to_path_buf());
                cur = c.parent();
            }
            for c in chain.into_iter().rev() {
                if !dirs.contains(&c) {
                    dirs.push(c);
                }
            }
        };
        let mut files = Vec::new();
        let mut binds = Vec::new();
        for d in ROOT_DIRS_RO {
            let d = Path::new(d);
            if d.is_dir() {
                add_dir(inside(d), &mut dirs);
                binds.push((d.to_path_buf(), inside(d), true, false));
            }
        }
        for f in ROOT_FILES_RO.iter().chain(ROOT_DEVICES) {
            let f = Path::new(f);
            if f.exists() {
                add_dir(inside(f.parent().unwrap_or(Path::new("/"))), &mut dirs);
                files.push(inside(f));
                // Devices stay writable (a read-only mount would refuse
                // writes to /dev/null); plain files are read-only.
                binds.push((f.to_path_buf(), inside(f), f.starts_with("/etc"), false));
            }
        }
        let mut links = Vec::new();
        for l in ROOT_LINKS {
            let l = Path::new(l);
            match std::fs::read_link(l) {
                Ok(target) => links.push((target, inside(l))),
                Err(_) if l.is_dir() => {
                    add_dir(inside(l), &mut dirs);
                    binds.push((l.to_path_buf(), inside(l), true, false));
                }
                Err(_) => {}
            }
        }
        add_dir(inside(runtime_dir), &mut dirs);
        // Recursive: the boot files are bind mounts inside the runtime dir.
        binds.push((runtime_dir.to_path_buf(), inside(runtime_dir), false, true));
        add_dir(new_root.join("proc"), &mut dirs);
        add_dir(new_root.join(".old-root"), &mut dirs);
        let c = |p: &Path| cstr(p);
        Ok(RootPlan {
            new_root: c(&new_root)?,
            dirs: dirs.iter().map(|d| c(d)).collect::<Result<_, _>>()?,
            files: files.iter().map(|f| c(f)).collect::<Result<_, _>>()?,
            binds: binds
                .iter()
                .map(|(s, t, ro, rec)| Ok((c(s)?, c(t)?, *ro, *rec)))
                .collect::<std::io::Result<_>>()?,
            links: links
                .iter()
                .map(|(t, l)| Ok((c(t)?, c(l)?)))
                .collect::<std::io::Result<_>>()?,
            nested: c(&inside(runtime_dir).join(".root"))?,
            proc_dir: c(&new_root.join("proc"))?,
            old_root: c(&new_root.join(".old-root"))?,
        })
    }

    /// Runs in the child, in its own mount namespace, after the other mounts.
    /// Only async-signal-safe calls.
    fn enter(&self, rep: RawFd) -> std::io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        let step = |s| fail(rep, s, errno());
        // SAFETY: mount/mkdir/open/symlink/pivot_root/umount2/chdir with
        // NUL-terminated strings prepared before the fork.
        unsafe {
            if libc::mount(
                TMPFS.as_ptr().cast(),
                self.new_root.as_ptr(),
                TMPFS.as_ptr().cast(),
                libc::MS_NOSUID | libc::MS_NODEV,
                ROOT_TMPFS_OPTS.as_ptr().cast(),
            ) != 0
            {
                return Err(step(JailStep::MinimalRoot));
            }
            for d in &self.dirs {
                if libc::mkdir(d.as_ptr(), 0o755) != 0 && errno() != libc::EEXIST {
                    return Err(step(JailStep::MinimalRoot));
                }
            }
            for f in &self.files {
                let fd = libc::open(
                    f.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    return Err(step(JailStep::MinimalRoot));
                }
                libc::close(fd);
            }
            for (target, link) in &self.links {
                if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 {
                    return Err(step(JailStep::MinimalRoot));
                }
            }
            for (src, dst, ro, rec) in &self.binds {
                let rec_flag = if *rec { libc::MS_REC } else { 0 };
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND | rec_flag,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(step(JailStep::MinimalRoot));
                }
                if *ro {
                    let flags = libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV;
                    if libc::mount(null, dst.as_ptr(), null, flags, std::ptr::null()) != 0 {
                        return Err(step(JailStep::MinimalRoot));
                    }
                }
            }
            // The recursive bind of the runtime dir copied the new root's own
            // mount into itself; that copy is not needed.
            libc::umount2(self.nested.as_ptr(), libc::MNT_DETACH);
            if libc::mount(
                PROC.as_ptr().cast(),
                self.proc_dir.as_ptr(),
                PROC.as_ptr().cast(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                return Err(step(JailStep::MinimalRoot));
            }
            if libc::syscall(
                libc::SYS_pivot_root,
                self.new_root.as_ptr(),
                self.old_root.as_ptr(),
            ) != 0
            {
                return Err(step(JailStep::PivotRoot));
            }
            if libc::chdir(SLASH.as_ptr().cast()) != 0
                || libc::umount2(OLD_ROOT.as_ptr().cast(), libc::MNT_DETACH) != 0
                || libc::rmdir(OLD_ROOT.as_ptr().cast()) != 0
            {
                return Err(step(JailStep::PivotRoot));
            }
            // Nothing is created in the root itself once the VMM runs.
            let flags = libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV;
            if libc::mount(null, SLASH.as_ptr().cast(), null, flags, std::ptr::null()) != 0 {
                return Err(step(JailStep::PivotRoot));
            }
        }
        Ok(())
    }
}

const TMPFS: &[u8] = b"tmpfs\0";
const ROOT_TMPFS_OPTS: &[u8] = b"mode=0755,size=1m\0";
const OLD_ROOT: &[u8] = b"/.old-root\0";
const PROC: &[u8] = b"proc\0";
const SLASH_PROC: &[u8] = b"/proc\0";
const SLASH: &[u8] = b"/\0";
const HOSTNAME: &[u8] = b"ironclaw-vm";

impl ChildPlan {
    /// Runs in the forked child. Only async-signal-safe calls.
    fn run(&mut self) -> std::io::Result<()> {
        let rep = self.report_w.as_raw_fd();
        for fd in &self.cgroup_procs {
            // SAFETY: writing 1 byte to an open descriptor.
            if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                return Err(fail(rep, JailStep::JoinCgroup, errno()));
            }
        }
        if self.namespaces {
            let flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET;
            // SAFETY: unshare with constant flags in a single-threaded child.
            if unsafe { libc::unshare(flags) } != 0 {
                return Err(fail(rep, JailStep::Unshare, errno()));
            }
            self.fork_into_pid_namespace()?;
            self.mounts()?;
            if let Some(root) = &self.root {
                root.enter(rep)?;
            }
            // SAFETY: a static buffer and its length.
            if unsafe { libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) } != 0 {
                return Err(fail(rep, JailStep::Hostname, errno()));
            }
        }
        if let Some((uid, gid)) = self.ids {
            // SAFETY: plain id syscalls.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0 {
                    return Err(fail(rep, JailStep::SetGroups, errno()));
                }
                if libc::setresgid(gid, gid, gid) != 0 {
                    return Err(fail(rep, JailStep::SetGid, errno()));
                }
                if libc::setresuid(uid, uid, uid) != 0 {
                    return Err(fail(rep, JailStep::SetUid, errno()));
                }
            }
            if self.namespaces {
                // The credential change cleared the death signal.
                self.die_with_reaper()?;
            }
        }
        match &self.seccomp {
            Some(filter) => match filter.install() {
                Ok(Some(listener)) => {
                    let sock = self.audit_sock.as_ref().map_or(-1, |s| s.as_raw_fd());
                    let err = send_fd(sock, listener);
                    // SAFETY: closing the listener we just created; QEMU must
                    // not keep it (it could answer its own notifications).
                    unsafe { libc::close(listener) };
                    if err != 0 {
                        return Err(fail(rep, JailStep::SendAuditListener, err));
                    }
                }
                Ok(None) => {}
                Err((InstallStep::NoNewPrivs, e)) => {
                    return Err(fail(rep, JailStep::NoNewPrivs, e))
                }
                Err((InstallStep::Seccomp, e)) => return Err(fail(rep, JailStep::Seccomp, e)),
            },
            None => {
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                    return Err(fail(rep, JailStep::NoNewPrivs, errno()));
                }
            }
        }
        Ok(())
    }

    /// Forks; the parent becomes the reaper and never returns.
    fn fork_into_pid_namespace(&mut self) -> std::io::Result<()> {
        let rep = self.report_w.as_raw_fd();
        let alive_w = self.alive_w.as_raw_fd();
        // SAFETY: fork in a single-threaded child; both sides only make
        // async-signal-safe calls afterwards.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(fail(rep, JailStep::ForkPidNamespace, errno()));
        }
        if pid > 0 {
            // The reaper: tell the orchestrator the VMM's pid, drop every
            // descriptor but the "alive" pipe (std's exec-status pipe
            // included, or the spawn would wait for this process), wait.
            report(rep, TAG_PID, 0, pid);
            // SAFETY: closing descriptors of this process only; close_range
            // is Linux ≥ 5.9, else fall back to closing one by one.
            unsafe {
                let max = libc::c_uint::MAX;
                let a = libc::syscall(libc::SYS_close_range, 0u32, (alive_w - 1) as u32, 0u32);
                let b = libc::syscall(libc::SYS_close_range, (alive_w + 1) as u32, max, 0u32);
                if a != 0 || b != 0 {
                    for fd in 0..4096 {
                        if fd != alive_w {
                            libc::close(fd);
                        }
                    }
                }
            }
            let mut status = 0;
            loop {
                // SAFETY: waiting for our own child.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                if r == pid || (r < 0 && errno() != libc::EINTR) {
                    break;
                }
            }
            // SAFETY: mirroring the VMM's end: re-raise its signal, else exit
            // with its code. _exit skips atexit handlers of the orchestrator.
            unsafe {
                if libc::WIFSIGNALED(status) {
                    let sig = libc::WTERMSIG(status);
                    libc::signal(sig, libc::SIG_DFL);
                    libc::kill(libc::getpid(), sig);
                    libc::_exit(128 + sig);
                }
                libc::_exit(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    1
                });
            }
        }
        // The VMM side: die with the reaper.
        // SAFETY: closing our copy of the reaper's end of the pipe.
        unsafe { libc::close(alive_w) };
        self.die_with_reaper()
    }

    /// Sets SIGKILL as parent-death signal and checks that the reaper did not
    /// die before (its end of the "alive" pipe would be closed). Needed again
    /// after the uid change, which clears the death signal.
    fn die_with_reaper(&self) -> std::io::Result<()> {
        let rep = self.report_w.as_raw_fd();
        // SAFETY: prctl with integers, poll on our own descriptor.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(fail(rep, JailStep::ParentDeathSignal, errno()));
            }
            let mut pfd = libc::pollfd {
                fd: self.alive_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 0) != 0 {
                return Err(fail(rep, JailStep::ParentDeathSignal, libc::ESRCH));
            }
        }
        Ok(())
    }

    fn mounts(&mut self) -> std::io::Result<()> {
        let rep = self.report_w.as_raw_fd();
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: mount(2) with NUL-terminated static or prepared strings.
        unsafe {
            if libc::mount(
                null,
                SLASH.as_ptr().cast(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail(rep, JailStep::MountPrivate, errno()));
            }
            if libc::mount(
                PROC.as_ptr().cast(),
                SLASH_PROC.as_ptr().cast(),
                PROC.as_ptr().cast(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail(rep, JailStep::MountProc, errno()));
            }
            for (src, dst, exec) in &self.binds {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(fail(rep, JailStep::BindBootFiles, errno()));
                }
                let mut ro = libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV;
                if !exec {
                    ro |= libc::MS_NOEXEC;
                }
                if libc::mount(null, dst.as_ptr(), null, ro, std::ptr::null()) != 0 {
                    return Err(fail(rep, JailStep::BindBootFiles, errno()));
                }
            }
        }
        Ok(())
    }
}

/// Starts `cmd` confined as `spec` says, killed when the orchestrator dies.
/// `process` names it in errors.
pub fn spawn(cmd: Command, spec: JailSpec, process: &'static str) -> Result<Confined, JailError> {
    let prep = |what| {
        move |source| JailError::Prepare {
            process,
            what,
            source,
        }
    };
    let (report_r, report_w) = pipe().map_err(prep("the report pipe"))?;
    let (alive_r, alive_w) = pipe().map_err(prep("the reaper pipe"))?;
    let audit = spec
        .seccomp
        .as_ref()
        .is_some_and(|f| f.level == super::seccomp::SeccompLevel::Audit);
    let (audit_parent, audit_child) = if audit {
        let (a, b) = std::os::unix::net::UnixStream::pair().map_err(prep("the audit socket"))?;
        (Some(a), Some(OwnedFd::from(b)))
    } else {
        (None, None)
    };
    let binds = spec
        .binds
        .iter()
        .map(|b| Ok((cstr(&b.source)?, cstr(&b.target)?, b.exec)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(prep("bind mount paths"))?;
    let namespaces = spec.namespaces;
    let root = match (&spec.minimal_root, namespaces) {
        (Some(dir), true) => Some(RootPlan::prepare(dir).map_err(prep("the minimal root"))?),
        _ => None,
    };
    let mut plan = ChildPlan {
        namespaces,
        ids: spec.ids,
        binds,
        cgroup_procs: spec.cgroup_procs,
        seccomp: spec.seccomp,
        report_w,
        alive_r,
        alive_w,
        audit_sock: audit_child,
        root,
    };
    // ChildPlan::run makes only async-signal-safe calls and allocates
    // nothing (all strings and programs were prepared above).
    let spawned = process::spawn_child_then(cmd, move || plan.run());
    // The Command (and with it the child's ends of the pipes) is gone now.
    let mut msgs = Vec::new();
    read_reports(&report_r, &mut msgs);
    let failed = msgs.iter().find(|m| m.0 == TAG_ERROR);
    let mut child = match (spawned, failed) {
        (Err(_), Some(&(_, step, err))) | (Ok(_), Some(&(_, step, err))) => {
            let step = JailStep::from_u8(step).unwrap_or(JailStep::Unshare);
            return Err(JailError::Step {
                process,
                step,
                source: std::io::Error::from_raw_os_error(err),
            });
        }
        (Err(source), None) => return Err(JailError::Spawn { process, source }),
        (Ok(child), None) => child,
    };
    let pid = if namespaces {
        match msgs.iter().find(|m| m.0 == TAG_PID) {
            Some(&(_, _, p)) => p as u32,
            None => {
                process::kill_and_reap(&mut child);
                return Err(JailError::Step {
                    process,
                    step: JailStep::ForkPidNamespace,
                    source: std::io::Error::other("the reaper did not report the VMM's pid"),
                });
            }
        }
    } else {
        child.id()
    };
    // SAFETY: pidfd_open on a pid that is our child or grandchild (it cannot
    // be reaped and reused before its reaper, which is alive, waits for it).
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a new descriptor owned by nobody else, when non-negative.
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as RawFd) });
    let audit_listener = match audit_parent {
        Some(sock) => match recv_fd(sock.as_raw_fd()) {
            Ok(fd) => Some(fd),
            Err(source) => {
                let mut c = Confined {
                    child,
                    pid,
                    pidfd,
                    audit_listener: None,
                };
                c.kill();
                return Err(JailError::Step {
                    process,
                    step: JailStep::SendAuditListener,
                    source,
                });
            }
        },
        None => None,
    };
    Ok(Confined {
        child,
        pid,
        pidfd,
        audit_listener,
    })
}

fn read_reports(fd: &OwnedFd, out: &mut Vec<(u8, u8, i32)>) {
    // Non-blocking: every message was written before spawn returned.
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut buf = [0u8; 8];
    loop {
        // SAFETY: reading into a stack buffer of the given size.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n != 8 {
            return;
        }
        out.push((
            buf[0],
            buf[1],
            i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ));
    }
}

/// The uid/gid a VM's processes run as: `base + hash(runtime dir) % span`,
/// distinct per VM so one VMM cannot touch another's files.
pub fn vm_ids(runtime_dir: &Path, fixed: Option<u32>) -> (u32, u32) {
    if let Some(id) = fixed {
        return (id, id);
    }
    const BASE: u32 = 2_000_000_000;
    const SPAN: u64 = 1_000_000;
    let id = BASE + (dir_hash(runtime_dir) % SPAN) as u32;
    (id, id)
}

/// FNV-1a of a path: stable across runs and builds (DefaultHasher is not).
pub fn dir_hash(path: &Path) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// What confines one running process, read back from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessConfinement {
    pub process: &'static str,
    pub pid: u32,
    pub seccomp: super::seccomp::ProcStatus,
    pub level: Option<super::seccomp::SeccompLevel>,
    pub allowed_syscalls: Option<usize>,
    /// Whether its network namespace differs from the orchestrator's.
    pub own_netns: bool,
    pub own_pidns: bool,
    pub cgroup: Vec<PathBuf>,
}

impl ProcessConfinement {
    pub fn read(
        process: &'static str,
        pid: u32,
        filter: Option<&SeccompFilter>,
        cgroup: Vec<PathBuf>,
    ) -> Self {
        let ns = |kind: &str| {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
            let ours = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok();
            theirs.is_some() && theirs != ours
        };
        ProcessConfinement {
            process,
            pid,
            seccomp: super::seccomp::proc_status(pid).unwrap_or_default(),
            level: filter.map(|f| f.level),
            allowed_syscalls: filter.map(|f| f.allowed),
            own_netns: ns("net"),
            own_pidns: ns("pid_for_children") || ns("pid"),
            cgroup,
        }
    }
}

impl std::fmt::Display for ProcessConfinement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.seccomp;
        write!(
            f,
            "{} (pid {}): seccomp {} ({} syscalls allowed, Seccomp: {}, {} filters), NoNewPrivs: {}, uid {}, {} network namespace, {} PID namespace, cgroup {}",
            self.process,
            self.pid,
            self.level.map_or("none".into(), |l| l.to_string()),
            self.allowed_syscalls.map_or("-".into(), |n| n.to_string()),
            s.seccomp.map_or("?".into(), |v| v.to_string()),
            s.seccomp_filters.map_or("?".into(), |v| v.to_string()),
            s.no_new_privs.map_or("?".into(), |v| v.to_string()),
            s.uid.map_or("?".into(), |v| v.to_string()),
            if self.own_netns { "own (empty)" } else { "host" },
            if self.own_pidns { "own" } else { "host" },
            if self.cgroup.is_empty() {
                "none".to_string()
            } else {
                self.cgroup
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ids_are_stable_unprivileged_and_differ_per_dir() {
        let a = vm_ids(Path::new("/run/ironclaw/a"), None);
        assert_eq!(a, vm_ids(Path::new("/run/ironclaw/a"), None));
        assert_ne!(a, vm_ids(Path::new("/run/ironclaw/b"), None));
        assert!(a.0 >= 2_000_000_000);
        assert_eq!(vm_ids(Path::new("/x"), Some(1234)), (1234, 1234));
    }

    #[test]
    fn steps_round_trip_through_the_report_byte() {
        for s in JailStep::ALL {
            assert_eq!(JailStep::from_u8(s as u8), Some(s));
            assert!(!s.to_string().is_empty());
        }
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = std::env::temp_dir().join(format!("ironclaw-jail-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("kernel");
        std::fs::write(&f, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = check_readable("kernel", &f, 2_000_000_001, 2_000_000_001).unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
        assert!(err.to_string().contains("600"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        check_readable("kernel", &f, 2_000_000_001, 2_000_000_001).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
