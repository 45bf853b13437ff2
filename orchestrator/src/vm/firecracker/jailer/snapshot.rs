//! Snapshots and the chroot: one written by the jailed Firecracker is checked
//! and moved out ([`Jail::take_snapshot_out`]); one to load is placed into a
//! new jail's chroot ([`Jail::prepare_restore`]).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::super::super::config::VmConfig;
use super::super::super::runtime::RuntimeDir;
use super::super::files::SnapshotFiles;
use super::jail::chown;
use super::{
    invalid, io, snapshot_files_in_jail, Jail, JailerConfig, JailerError, JailerStep,
    MEMORY_IN_JAIL, ROOTFS_IN_JAIL, SNAPSHOT_DIR_IN_JAIL, VMSTATE_IN_JAIL,
};

fn open_nofollow(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Across file systems: `dest` is written from the open `src` (not from a
/// path the jail could change), with `mode` and `group`.
fn copy_out(mut src: &fs::File, dest: &Path, mode: u32, group: u32) -> std::io::Result<()> {
    use std::io::Seek;
    use std::os::unix::fs::OpenOptionsExt;
    src.seek(std::io::SeekFrom::Start(0))?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(dest)?;
    std::io::copy(&mut src, &mut out)?;
    std::os::unix::fs::fchown(&out, None, Some(group))?;
    out.set_permissions(fs::Permissions::from_mode(mode))?;
    out.sync_all()
}

impl Jail {
    /// [`Jail::prepare`] for loading the snapshot `files`: the chroot holds
    /// the snapshot (at [`VMSTATE_IN_JAIL`], [`MEMORY_IN_JAIL`]) and the
    /// rootfs the snapshot's drive names (`/rootfs`, as in the jail the
    /// snapshot was taken in), no kernel or initramfs.
    pub fn prepare_restore(
        cfg: &JailerConfig,
        firecracker: &Path,
        seccomp_filter: Option<&Path>,
        config: &VmConfig,
        dir: &RuntimeDir,
        files: &SnapshotFiles,
    ) -> Result<Jail, JailerError> {
        let jail = Jail::create(cfg, firecracker, seccomp_filter, config, dir)?;
        if let Some(rootfs) = &config.rootfs {
            jail.place(rootfs, ROOTFS_IN_JAIL)?;
        }
        // Root's, read-only for the jail: Firecracker only reads the snapshot.
        let snap = jail.host_path(Path::new(SNAPSHOT_DIR_IN_JAIL));
        fs::create_dir(&snap).map_err(io(
            JailerStep::PlaceFiles,
            format!("creating {}", snap.display()),
        ))?;
        jail.place(&files.state, VMSTATE_IN_JAIL)?;
        jail.place(&files.memory, MEMORY_IN_JAIL)?;
        Ok(jail)
    }

    /// A fresh [`SNAPSHOT_DIR_IN_JAIL`] owned by the jail uid (mode 0700),
    /// where Firecracker can write a snapshot; the files to name in
    /// `PUT /snapshot/create`, as Firecracker sees them.
    pub fn snapshot_dir(&self) -> Result<SnapshotFiles, JailerError> {
        let step = JailerStep::PlaceFiles;
        let snap = self.host_path(Path::new(SNAPSHOT_DIR_IN_JAIL));
        self.discard_snapshot();
        fs::create_dir(&snap).map_err(io(step, format!("creating {}", snap.display())))?;
        fs::set_permissions(&snap, fs::Permissions::from_mode(0o700))
            .map_err(io(step, format!("chmod 0700 {}", snap.display())))?;
        chown(&snap, self.uid, self.gid)?;
        Ok(snapshot_files_in_jail())
    }

    /// Removes [`SNAPSHOT_DIR_IN_JAIL`] and whatever is in it (a failed or
    /// moved-out snapshot).
    pub fn discard_snapshot(&self) {
        let snap = self.host_path(Path::new(SNAPSHOT_DIR_IN_JAIL));
        if let Err(e) = fs::remove_dir_all(&snap) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{} left behind: {e}", snap.display());
            }
        }
    }

    /// Moves the snapshot Firecracker wrote into [`Jail::snapshot_dir`] out
    /// of the chroot to `to`, then removes the directory.
    ///
    /// The jailed process is not trusted with what ends up outside: the
    /// directory is taken back (owned by root) first, so its entries cannot
    /// change any more; each file must be a regular file of the jail uid
    /// with one link (not a symlink, not a link to a file of the chroot),
    /// opened without following links. The files moved out belong to the
    /// orchestrator's uid, mode 0600 — or 0640 with the group of every jail
    /// when that gid is configured, so the jails of clones can read them
    /// through a hard link.
    pub fn take_snapshot_out(&self, to: &SnapshotFiles) -> Result<(), JailerError> {
        let result = self.move_snapshot_out(to);
        self.discard_snapshot();
        result
    }

    fn move_snapshot_out(&self, to: &SnapshotFiles) -> Result<(), JailerError> {
        let mut moved = Vec::new();
        let result = self.move_files_out(to, &mut moved);
        if result.is_err() {
            // All or nothing: a half snapshot outside is worse than none.
            for f in moved {
                let _ = fs::remove_file(f);
            }
        }
        result
    }

    fn move_files_out<'a>(
        &self,
        to: &'a SnapshotFiles,
        moved: &mut Vec<&'a Path>,
    ) -> Result<(), JailerError> {
        let step = JailerStep::SnapshotOut;
        let snap = self.host_path(Path::new(SNAPSHOT_DIR_IN_JAIL));
        // SAFETY: geteuid/getegid cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        // The chroot's root is root's, so `snap` is still the directory made
        // by `snapshot_dir`; once it is root's too, nothing in it can be
        // renamed or replaced by the jail uid.
        std::os::unix::fs::lchown(&snap, Some(euid), Some(egid))
            .map_err(io(step, format!("chown {}", snap.display())))?;
        let (group, mode) = match self.shared_gid {
            Some(g) => (g, 0o640),
            None => (egid, 0o600),
        };
        for (in_jail, dest) in [(VMSTATE_IN_JAIL, &to.state), (MEMORY_IN_JAIL, &to.memory)] {
            let src = self.host_path(Path::new(in_jail));
            let file =
                open_nofollow(&src).map_err(io(step, format!("opening {}", src.display())))?;
            let m = file
                .metadata()
                .map_err(io(step, format!("fstat {}", src.display())))?;
            if !m.is_file() || m.uid() != self.uid || m.nlink() != 1 {
                return Err(invalid(
                    step,
                    format!(
                        "{} is not a file Firecracker wrote (regular: {}, owner {}, links {}; expected a regular file of uid {} with one link)",
                        src.display(),
                        m.is_file(),
                        m.uid(),
                        m.nlink(),
                        self.uid
                    ),
                ));
            }
            std::os::unix::fs::fchown(&file, Some(euid), Some(group))
                .map_err(io(step, format!("chown {euid}:{group} {}", src.display())))?;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io(step, format!("chmod {mode:o} {}", src.display())))?;
            match fs::rename(&src, dest) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    if let Err(e) = copy_out(&file, dest, mode, group) {
                        let _ = fs::remove_file(dest);
                        return Err(io(
                            step,
                            format!("copying {} to {}", src.display(), dest.display()),
                        )(e));
                    }
                }
                Err(e) => {
                    return Err(io(
                        step,
                        format!("moving {} to {}", src.display(), dest.display()),
                    )(e))
                }
            }
            moved.push(dest.as_path());
        }
        Ok(())
    }
}
