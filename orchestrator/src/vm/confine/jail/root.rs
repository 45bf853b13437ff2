//! The minimal root the VMM sees: a small read-only tmpfs holding `/usr`,
//! `/sys`, the loader's cache and the time zone read-only, a few devices, a
//! fresh `/proc`, the merged-usr symlinks and the VM's runtime directory
//! read-write at its own host path; then `pivot_root` into it. Every path
//! is prepared before the fork ([`RootPlan::prepare`]); [`RootPlan::enter`]
//! runs in the child.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::JailStep;
use super::report::fail;
use super::sys;

pub(super) const PROC: &CStr = c"proc";
pub(super) const SLASH: &CStr = c"/";
const TMPFS: &CStr = c"tmpfs";
const ROOT_TMPFS_OPTS: &CStr = c"mode=0755,size=1m";
const OLD_ROOT: &CStr = c"/.old-root";
/// Mount flags of every read-only bind.
pub(super) const RO: libc::c_ulong = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

/// A path as a C string, for use after the fork.
pub(super) fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{} contains a NUL byte", p.display())))
}

/// The minimal root, every path prepared before the fork.
pub(super) struct RootPlan {
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
    pub(super) fn prepare(runtime_dir: &Path) -> std::io::Result<RootPlan> {
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
    pub(super) fn enter(&self, rep: RawFd) -> std::io::Result<()> {
        let root = |e| fail(rep, JailStep::MinimalRoot, e);
        let noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        sys::mount(
            Some(TMPFS),
            &self.new_root,
            Some(TMPFS),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(ROOT_TMPFS_OPTS),
        )
        .map_err(root)?;
        for d in &self.dirs {
            sys::mkdir(d, 0o755).map_err(root)?;
        }
        for f in &self.files {
            sys::touch(f).map_err(root)?;
        }
        for (target, link) in &self.links {
            sys::symlink(target, link).map_err(root)?;
        }
        for (src, dst, ro, rec) in &self.binds {
            sys::bind(src, dst, *rec, if *ro { RO } else { 0 }).map_err(root)?;
        }
        // The recursive bind of the runtime dir copied the new root's own
        // mount into itself; that copy is not needed.
        let _ = sys::umount_detach(&self.nested);
        sys::mount(Some(PROC), &self.proc_dir, Some(PROC), noexec, None).map_err(root)?;

        let pivot = |e| fail(rep, JailStep::PivotRoot, e);
        sys::pivot_root(&self.new_root, &self.old_root).map_err(pivot)?;
        sys::chdir(SLASH).map_err(pivot)?;
        sys::umount_detach(OLD_ROOT).map_err(pivot)?;
        sys::rmdir(OLD_ROOT).map_err(pivot)?;
        // Nothing is created in the root itself once the VMM runs.
        let flags = libc::MS_REMOUNT | libc::MS_BIND | RO;
        sys::mount(None, SLASH, None, flags, None).map_err(pivot)?;
        Ok(())
    }
}
