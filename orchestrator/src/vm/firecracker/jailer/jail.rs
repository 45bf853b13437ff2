//! [`Jail`]: the chroot (with the files placed in it), cgroups and network
//! namespace of one jailed Firecracker, its command line and its removal.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::super::cgroup;
use super::super::super::config::VmConfig;
use super::super::super::confine::perm::readable_by;
use super::super::super::runtime::RuntimeDir;
use super::cgroups::{cgroup_args, cgroup_dirs, detect_version, CgroupVersion};
use super::config::{check_id, exec_name, JailerConfig};
use super::netns::Netns;
use super::{
    invalid, io, JailerError, JailerStep, API_SOCKET_IN_JAIL, INITRAMFS_IN_JAIL, KERNEL_IN_JAIL,
    LOG_IN_JAIL, PARENT_CGROUP, ROOTFS_IN_JAIL, SECCOMP_FILTER_IN_JAIL,
};

/// The chroot, cgroups and network namespace of one jailed Firecracker.
/// Dropping it removes the chroot directory and the cgroups; the process
/// must be dead by then.
#[derive(Debug)]
pub struct Jail {
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    pub version: CgroupVersion,
    /// `<base>/<exec name>/<id>`: removed on drop.
    jail_dir: PathBuf,
    /// `<jail_dir>/root`, the chroot.
    root: PathBuf,
    chroot_base: PathBuf,
    cgroup_args: Vec<String>,
    cgroup_dirs: Vec<PathBuf>,
    netns: Netns,
    jailer: PathBuf,
    firecracker: PathBuf,
    seccomp_filter: Option<&'static str>,
    /// The gid every jail shares when it is configured
    /// (`$IRONCLAW_JAILER_GID`): snapshots moved out are readable by it, so
    /// other jails can load them through a hard link instead of a copy.
    pub(super) shared_gid: Option<u32>,
}

pub(super) fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailerError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(
        JailerStep::PlaceFiles,
        format!("chown {uid}:{gid} {}", path.display()),
    ))
}

impl Jail {
    /// Everything before the jailer runs: checks, chroot directory, files in
    /// it, cgroup arguments, the empty network namespace. Records the chroot
    /// and cgroup paths in `dir` so a later orchestrator can reap them.
    ///
    /// The chroot holds what a boot needs: kernel, initramfs, the rootfs
    /// when the config has one, the seccomp filter file.
    pub fn prepare(
        cfg: &JailerConfig,
        firecracker: &Path,
        seccomp_filter: Option<&Path>,
        config: &VmConfig,
        dir: &RuntimeDir,
    ) -> Result<Jail, JailerError> {
        let jail = Jail::create(cfg, firecracker, seccomp_filter, config, dir)?;
        jail.place(
            &crate::boot::kernel::firecracker_kernel(&config.kernel),
            KERNEL_IN_JAIL,
        )?;
        jail.place(&config.initramfs, INITRAMFS_IN_JAIL)?;
        if let Some(rootfs) = &config.rootfs {
            jail.place(rootfs, ROOTFS_IN_JAIL)?;
        }
        Ok(jail)
    }

    pub(super) fn create(
        cfg: &JailerConfig,
        firecracker: &Path,
        seccomp_filter: Option<&Path>,
        config: &VmConfig,
        dir: &RuntimeDir,
    ) -> Result<Jail, JailerError> {
        cfg.check(firecracker)?;
        check_id(&config.id)?;
        // A uid of this VM's own, leased like the QEMU jail's (from the
        // configured range when there is one): never one for every VM, so
        // one Firecracker can never signal another's. A VM's own
        // `confinement.uid` is taken as given.
        let choosing = io(JailerStep::CheckJailer, "choosing the VM's jail uid");
        let uid = match (config.confinement.uid, cfg.uid) {
            (Some(fixed), _) => fixed,
            (None, Some(base)) => {
                super::super::super::jail::lease_from(dir, base).map_err(choosing)?
            }
            (None, None) => {
                super::super::super::jail::vm_ids(dir, None)
                    .map_err(choosing)?
                    .0
            }
        };
        let gid = cfg.gid.unwrap_or(uid);
        if uid == 0 || gid == 0 {
            return Err(invalid(
                JailerStep::CheckJailer,
                format!("the jailer would run Firecracker as uid {uid} gid {gid}; root defeats the jail"),
            ));
        }
        let version = match cfg.cgroup_version {
            Some(v) => v,
            None => detect_version()?,
        };
        let mounts = fs::read_to_string("/proc/mounts")
            .map_err(io(JailerStep::DetectCgroups, "reading /proc/mounts"))?;
        let cgroup_dirs = cgroup_dirs(&mounts, version, &config.id)?;
        // Before anything exists on disk: without root this is where it stops.
        let netns = Netns::new_empty()?;

        let jail_dir = cfg
            .chroot_base
            .join(exec_name(firecracker)?)
            .join(&config.id);
        let step = JailerStep::CreateChroot;
        fs::create_dir_all(jail_dir.parent().expect("has a parent"))
            .map_err(io(step, format!("creating {}", cfg.chroot_base.display())))?;
        // A leftover chroot of the same id could hold files of another VM:
        // refuse rather than reuse it.
        fs::create_dir(&jail_dir).map_err(io(step, format!("creating {}", jail_dir.display())))?;
        let mut jail = Jail {
            id: config.id.clone(),
            uid,
            gid,
            version,
            root: jail_dir.join("root"),
            jail_dir,
            chroot_base: cfg.chroot_base.clone(),
            cgroup_args: cgroup_args(version, config.limits()),
            cgroup_dirs,
            netns,
            jailer: cfg.binary.clone(),
            firecracker: firecracker.to_path_buf(),
            seccomp_filter: None,
            shared_gid: cfg.gid,
        };
        // From here on, dropping `jail` removes what was made.
        dir.record_chroot(&jail.jail_dir)
            .map_err(io(step, "recording the chroot in the runtime directory"))?;
        dir.record_cgroups(&jail.cgroup_dirs)
            .map_err(io(step, "recording the cgroups in the runtime directory"))?;
        fs::create_dir(&jail.root)
            .map_err(io(step, format!("creating {}", jail.root.display())))?;
        // Firecracker (as the jail uid) creates its API socket in /run.
        let run = jail.host_path(Path::new("/run"));
        fs::create_dir(&run).map_err(io(step, format!("creating {}", run.display())))?;
        chown(&run, uid, gid)?;
        let log = jail.host_path(Path::new(LOG_IN_JAIL));
        fs::File::create(&log).map_err(io(
            JailerStep::PlaceFiles,
            format!("creating {}", log.display()),
        ))?;
        chown(&log, uid, gid)?;
        if let Some(filter) = seccomp_filter {
            jail.place(filter, SECCOMP_FILTER_IN_JAIL)?;
            jail.seccomp_filter = Some(SECCOMP_FILTER_IN_JAIL);
        }
        Ok(jail)
    }

    /// Puts `src` at `in_jail` inside the chroot, readable by the jail uid:
    /// a hard link when possible (no copy of a large image), else a copy
    /// owned by the jail uid, mode 0400. A hard link is never chowned (that
    /// would change the original's owner), so a file the jail uid cannot
    /// read is copied.
    pub(super) fn place(&self, src: &Path, in_jail: &str) -> Result<(), JailerError> {
        let dst = self.host_path(Path::new(in_jail));
        let step = JailerStep::PlaceFiles;
        let m = fs::metadata(src).map_err(io(step, format!("reading {}", src.display())))?;
        if readable_by(&m, self.uid, self.gid) && fs::hard_link(src, &dst).is_ok() {
            return Ok(());
        }
        fs::copy(src, &dst).map_err(io(
            step,
            format!("copying {} to {}", src.display(), dst.display()),
        ))?;
        chown(&dst, self.uid, self.gid)?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o400))
            .map_err(io(step, format!("chmod 0400 {}", dst.display())))?;
        Ok(())
    }

    /// The host path of `in_jail`, a path as the jailed Firecracker sees it.
    pub fn host_path(&self, in_jail: &Path) -> PathBuf {
        self.root.join(in_jail.strip_prefix("/").unwrap_or(in_jail))
    }

    /// The chroot (`<base>/<exec name>/<id>/root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory removed on destroy (`<base>/<exec name>/<id>`).
    pub fn dir(&self) -> &Path {
        &self.jail_dir
    }

    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroup_dirs
    }

    pub fn netns_path(&self) -> PathBuf {
        self.netns.path()
    }

    pub fn jailer(&self) -> &Path {
        &self.jailer
    }

    /// Gives `path` (a socket the orchestrator made in the chroot) to the
    /// jail uid, so Firecracker can connect to it.
    pub fn give(&self, path: &Path) -> Result<(), JailerError> {
        chown(path, self.uid, self.gid)
    }

    /// The config Firecracker is told about: boot files by their paths in
    /// the chroot.
    pub fn api_config(&self, config: &VmConfig) -> VmConfig {
        let mut c = config.clone();
        c.kernel = KERNEL_IN_JAIL.into();
        c.initramfs = INITRAMFS_IN_JAIL.into();
        if c.rootfs.is_some() {
            c.rootfs = Some(ROOTFS_IN_JAIL.into());
        }
        c
    }

    /// `jailer --id … --exec-file … --uid … --gid … --chroot-base-dir …
    /// --cgroup-version … --parent-cgroup ironclaw --cgroup …… --netns … --
    /// --api-sock /run/firecracker.socket --log-path /firecracker.log
    /// [--seccomp-filter …]`. Never `--no-seccomp`, `--daemonize` (it would
    /// detach stdio and the process group) or `--new-pid-ns` (the jailer
    /// would fork and exit, leaving us no child to hold).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.jailer);
        cmd.arg("--id").arg(&self.id);
        cmd.arg("--exec-file").arg(&self.firecracker);
        cmd.arg("--uid").arg(self.uid.to_string());
        cmd.arg("--gid").arg(self.gid.to_string());
        cmd.arg("--chroot-base-dir").arg(&self.chroot_base);
        cmd.arg("--cgroup-version").arg(self.version.arg());
        cmd.arg("--parent-cgroup").arg(PARENT_CGROUP);
        for c in &self.cgroup_args {
            cmd.arg("--cgroup").arg(c);
        }
        cmd.arg("--netns").arg(self.netns.path());
        cmd.arg("--");
        cmd.arg("--api-sock").arg(API_SOCKET_IN_JAIL);
        cmd.arg("--log-path").arg(LOG_IN_JAIL);
        if let Some(filter) = self.seccomp_filter {
            cmd.arg("--seccomp-filter").arg(filter);
        }
        cmd
    }

    /// Removes the chroot directory and the cgroups. The process must be dead.
    pub fn remove(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.jail_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("jailer chroot {} left behind: {e}", self.jail_dir.display());
            }
        }
        for d in &self.cgroup_dirs {
            if let Err(e) = cgroup::remove_dir(d) {
                tracing::warn!("jailer cgroup left behind: {e}");
            }
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        self.remove();
    }
}
