//! Launching Firecracker through its `jailer`.
//!
//! The jailer (Firecracker's own, run as root) builds the chroot
//! `<chroot base>/<exec-file name>/<id>/root`, copies the `firecracker`
//! binary into it, creates the VM's cgroups
//! (`<controller mount>/<parent cgroup>/<id>`) and writes the `--cgroup`
//! limits, joins the network namespace given with `--netns`, `pivot_root`s
//! into the chroot, makes `/dev/kvm`, drops to `--uid`/`--gid` and execs
//! Firecracker in the same process (no `--daemonize`, no `--new-pid-ns`: the
//! pid the orchestrator spawned stays the Firecracker process it kills).
//!
//! What the jailer leaves to its caller, and [`Jail`] does:
//! - place every file Firecracker opens inside the chroot (hard link when on
//!   the same file system and readable by the jail uid, else a copy owned by
//!   it) and name it in API requests by its path *inside* the chroot;
//! - create what Firecracker writes (its log, the `/run` directory of the API
//!   socket) owned by the jail uid;
//! - snapshots: written by Firecracker into a directory of the chroot it may
//!   write, then checked and moved out ([`Jail::take_snapshot_out`]); placed
//!   into a new jail's chroot for loading ([`Jail::prepare_restore`]);
//! - an empty network namespace, so Firecracker has no interface but a down `lo`;
//! - clean up: the chroot directory `<base>/<exec name>/<id>` and the cgroups
//!   on destroy, and (recorded in the runtime directory) after a crash.
//!
//! Every step fails closed: an error names the step and nothing is started
//! unjailed.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::cgroup::{self, Limits};
use super::super::config::VmConfig;
use super::super::confine::perm::readable_by;
use super::super::runtime::RuntimeDir;

pub const JAILER_BINARY: &str = "jailer";
/// The jailer's own default chroot base.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// `--parent-cgroup`: the same parent name as the QEMU backend's VM cgroups,
/// so [`cgroup::is_ours`] (used when reaping) accepts the jailer's cgroups too.
pub const PARENT_CGROUP: &str = "ironclaw";
/// Paths as the jailed Firecracker sees them (relative to the chroot).
pub const API_SOCKET_IN_JAIL: &str = "/run/firecracker.socket";
pub const KERNEL_IN_JAIL: &str = "/vmlinux";
pub const INITRAMFS_IN_JAIL: &str = "/initrd";
pub const ROOTFS_IN_JAIL: &str = "/rootfs";
pub const VSOCK_IN_JAIL: &str = "/vsock.sock";
pub const LOG_IN_JAIL: &str = "/firecracker.log";
pub const SECCOMP_FILTER_IN_JAIL: &str = "/seccomp-filter.bpf";
/// Where a snapshot is written (a directory owned by the jail uid while
/// Firecracker writes it) and where a snapshot is placed for loading.
pub const SNAPSHOT_DIR_IN_JAIL: &str = "/snapshot";
pub const VMSTATE_IN_JAIL: &str = "/snapshot/vmstate";
pub const MEMORY_IN_JAIL: &str = "/snapshot/memory";
/// The snapshot files as the jailed Firecracker names them
/// ([`VMSTATE_IN_JAIL`], [`MEMORY_IN_JAIL`]): where it writes one and where
/// one is placed for loading.
pub fn snapshot_files_in_jail() -> super::SnapshotFiles {
    super::SnapshotFiles {
        state: VMSTATE_IN_JAIL.into(),
        memory: MEMORY_IN_JAIL.into(),
    }
}
/// The jailer refuses longer ids.
pub const MAX_JAIL_ID: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    fn arg(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }
}

/// The steps of a jailed launch, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailerStep {
    CheckJailer,
    CheckId,
    DetectCgroups,
    CreateChroot,
    PlaceFiles,
    CreateNetns,
    RunJailer,
    SnapshotOut,
}

impl std::fmt::Display for JailerStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JailerStep::CheckJailer => "checking the jailer and firecracker binaries",
            JailerStep::CheckId => "checking the VM id for the jailer",
            JailerStep::DetectCgroups => "finding the cgroup hierarchies for the jailer",
            JailerStep::CreateChroot => "creating the jailer's chroot",
            JailerStep::PlaceFiles => "placing the VM's files in the chroot",
            JailerStep::CreateNetns => "creating an empty network namespace",
            JailerStep::RunJailer => "running the jailer",
            JailerStep::SnapshotOut => "moving the snapshot out of the chroot",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error("jailer: {step} failed: {detail}")]
    Invalid { step: JailerStep, detail: String },
    #[error("jailer: {step} failed: {detail}: {source}")]
    Io {
        step: JailerStep,
        detail: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jailer: {step} failed: the jailer {jailer} exited ({status}) before Firecracker created its API socket {socket}; jailer/firecracker output: {output}")]
    Exited {
        step: JailerStep,
        jailer: PathBuf,
        status: String,
        socket: PathBuf,
        output: String,
    },
    #[error("${var}={value:?} is not valid: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(step: JailerStep, detail: impl Into<String>) -> JailerError {
    JailerError::Invalid {
        step,
        detail: detail.into(),
    }
}

fn io(step: JailerStep, detail: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailerError {
    let detail = detail.into();
    move |source| JailerError::Io {
        step,
        detail,
        source,
    }
}

/// How to run Firecracker under the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// The `jailer` executable.
    pub binary: PathBuf,
    /// `--chroot-base-dir`.
    pub chroot_base: PathBuf,
    /// `--uid`/`--gid`; `None`: `confinement.uid` of the VM, else one derived
    /// per VM as the QEMU jail does ([`super::super::jail::vm_ids`]).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `--cgroup-version`; `None`: what the host has (v2 when the unified
    /// hierarchy has the memory controller, else v1).
    pub cgroup_version: Option<CgroupVersion>,
}

fn env_u32(var: &'static str) -> Result<Option<u32>, JailerError> {
    let Some(v) = std::env::var_os(var) else {
        return Ok(None);
    };
    let v = v.to_string_lossy().into_owned();
    v.parse().map(Some).map_err(|e| JailerError::Env {
        var,
        value: v,
        reason: format!("{e}"),
    })
}

impl JailerConfig {
    /// From the environment: `$IRONCLAW_FIRECRACKER_JAILER` (a path, or a name
    /// looked up on PATH) turns the jailer on; `$IRONCLAW_JAILER_CHROOT_BASE`
    /// (default [`DEFAULT_CHROOT_BASE`]), `$IRONCLAW_JAILER_UID`,
    /// `$IRONCLAW_JAILER_GID`, `$IRONCLAW_JAILER_CGROUP_VERSION` (1 or 2).
    pub fn from_env() -> Result<Option<JailerConfig>, JailerError> {
        let Some(bin) = std::env::var_os("IRONCLAW_FIRECRACKER_JAILER") else {
            return Ok(None);
        };
        let bin = PathBuf::from(bin);
        let binary = if bin.components().count() == 1 && !bin.is_absolute() {
            super::super::host::which(&bin.to_string_lossy()).unwrap_or(bin)
        } else {
            bin
        };
        let cgroup_version = match std::env::var("IRONCLAW_JAILER_CGROUP_VERSION").ok() {
            None => None,
            Some(v) if v == "1" => Some(CgroupVersion::V1),
            Some(v) if v == "2" => Some(CgroupVersion::V2),
            Some(v) => {
                return Err(JailerError::Env {
                    var: "IRONCLAW_JAILER_CGROUP_VERSION",
                    value: v,
                    reason: "expected 1 or 2".into(),
                })
            }
        };
        Ok(Some(JailerConfig {
            binary,
            chroot_base: std::env::var_os("IRONCLAW_JAILER_CHROOT_BASE")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_CHROOT_BASE.into()),
            uid: env_u32("IRONCLAW_JAILER_UID")?,
            gid: env_u32("IRONCLAW_JAILER_GID")?,
            cgroup_version,
        }))
    }

    /// The jailer is an executable file and the Firecracker binary has a name
    /// the jailer accepts (it insists on `firecracker` in it). Checked before
    /// anything is created.
    pub fn check(&self, firecracker: &Path) -> Result<(), JailerError> {
        let step = JailerStep::CheckJailer;
        let m = fs::metadata(&self.binary)
            .map_err(io(step, format!("the jailer {}", self.binary.display())))?;
        if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
            return Err(invalid(
                step,
                format!(
                    "the jailer {} is not an executable file",
                    self.binary.display()
                ),
            ));
        }
        let name = exec_name(firecracker)?;
        if !name.contains("firecracker") {
            return Err(invalid(
                step,
                format!(
                    "the jailer only execs a file whose name contains `firecracker`; {} does not",
                    firecracker.display()
                ),
            ));
        }
        if !self.chroot_base.is_absolute() {
            return Err(invalid(
                step,
                format!(
                    "the chroot base {} must be an absolute path",
                    self.chroot_base.display()
                ),
            ));
        }
        Ok(())
    }
}

fn exec_name(firecracker: &Path) -> Result<String, JailerError> {
    firecracker
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            invalid(
                JailerStep::CheckJailer,
                format!("{} names no file", firecracker.display()),
            )
        })
}

/// The jailer accepts ids of ASCII letters, digits and `-`, up to 64 bytes
/// (VmConfig also allows `_`, which the jailer refuses).
pub fn check_id(id: &str) -> Result<(), JailerError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_JAIL_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            JailerStep::CheckId,
            format!("the jailer accepts VM ids of letters, digits and `-`, at most {MAX_JAIL_ID} long; {id:?} is not one"),
        ))
    }
}

/// `--cgroup` values for `limits` (v1 and v2 name the files differently).
pub fn cgroup_args(version: CgroupVersion, limits: Limits) -> Vec<String> {
    let version = match version {
        CgroupVersion::V1 => cgroup::Version::V1,
        CgroupVersion::V2 => cgroup::Version::V2,
    };
    limits
        .files(version)
        .into_iter()
        .map(|(_, file, value)| format!("{file}={value}"))
        .collect()
}

/// The cgroup directories the jailer makes for `id`: like the jailer, the
/// mount of each controller (v1) or the cgroup2 mount (v2) is read from
/// `/proc/mounts` (`mounts`), then `<mount>/<PARENT_CGROUP>/<id>`.
pub fn cgroup_dirs(
    mounts: &str,
    version: CgroupVersion,
    id: &str,
) -> Result<Vec<PathBuf>, JailerError> {
    let entries: Vec<(&str, &str, &str)> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((point, fstype, opts))
        })
        .collect();
    let below = |point: &str| Path::new(point).join(PARENT_CGROUP).join(id);
    match version {
        CgroupVersion::V2 => entries
            .iter()
            .find(|(_, fstype, _)| *fstype == "cgroup2")
            .map(|(point, _, _)| vec![below(point)])
            .ok_or_else(|| {
                invalid(
                    JailerStep::DetectCgroups,
                    "no cgroup2 mount in /proc/mounts",
                )
            }),
        CgroupVersion::V1 => cgroup::CONTROLLERS
            .iter()
            .map(|c| {
                entries
                    .iter()
                    .find(|(_, fstype, opts)| {
                        *fstype == "cgroup" && opts.split(',').any(|o| o == *c)
                    })
                    .map(|(point, _, _)| below(point))
                    .ok_or_else(|| {
                        invalid(
                            JailerStep::DetectCgroups,
                            format!("no cgroup v1 mount with the {c} controller in /proc/mounts"),
                        )
                    })
            })
            .collect(),
    }
}

fn detect_version() -> Result<CgroupVersion, JailerError> {
    let layout = cgroup::Layout::detect().map_err(|e| {
        invalid(
            JailerStep::DetectCgroups,
            format!("{e}; set $IRONCLAW_JAILER_CGROUP_VERSION"),
        )
    })?;
    Ok(match layout.version {
        cgroup::Version::V1 => CgroupVersion::V1,
        cgroup::Version::V2 => CgroupVersion::V2,
    })
}

/// An empty network namespace (only a down `lo`), held by a descriptor.
/// A short-lived thread unshares its own network namespace and opens it;
/// the jailer joins it through `/proc/<our pid>/fd/<fd>`.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    pub fn new_empty() -> Result<Netns, JailerError> {
        let made = std::thread::spawn(|| -> std::io::Result<OwnedFd> {
            // SAFETY: unshare(CLONE_NEWNET) changes only the calling thread's
            // network namespace; this thread does nothing else and exits.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(fs::File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .map_err(|_| invalid(JailerStep::CreateNetns, "the namespace thread panicked"))?;
        let fd = made.map_err(io(
            JailerStep::CreateNetns,
            "unshare(CLONE_NEWNET) (needs root)",
        ))?;
        Ok(Netns { fd })
    }

    /// The path the jailer opens (`--netns`).
    pub fn path(&self) -> PathBuf {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()).into()
    }
}

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
    shared_gid: Option<u32>,
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailerError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(
        JailerStep::PlaceFiles,
        format!("chown {uid}:{gid} {}", path.display()),
    ))
}

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
        jail.place(&config.kernel, KERNEL_IN_JAIL)?;
        jail.place(&config.initramfs, INITRAMFS_IN_JAIL)?;
        if let Some(rootfs) = &config.rootfs {
            jail.place(rootfs, ROOTFS_IN_JAIL)?;
        }
        Ok(jail)
    }

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
        files: &super::SnapshotFiles,
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

    fn create(
        cfg: &JailerConfig,
        firecracker: &Path,
        seccomp_filter: Option<&Path>,
        config: &VmConfig,
        dir: &RuntimeDir,
    ) -> Result<Jail, JailerError> {
        cfg.check(firecracker)?;
        check_id(&config.id)?;
        let (derived_uid, derived_gid) =
            super::super::jail::vm_ids(dir.path(), config.confinement.uid);
        let uid = cfg.uid.unwrap_or(derived_uid);
        let gid = cfg.gid.unwrap_or(derived_gid);
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
    fn place(&self, src: &Path, in_jail: &str) -> Result<(), JailerError> {
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

    /// A fresh [`SNAPSHOT_DIR_IN_JAIL`] owned by the jail uid (mode 0700),
    /// where Firecracker can write a snapshot; the files to name in
    /// `PUT /snapshot/create`, as Firecracker sees them.
    pub fn snapshot_dir(&self) -> Result<super::SnapshotFiles, JailerError> {
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
    pub fn take_snapshot_out(&self, to: &super::SnapshotFiles) -> Result<(), JailerError> {
        let result = self.move_snapshot_out(to);
        self.discard_snapshot();
        result
    }

    fn move_snapshot_out(&self, to: &super::SnapshotFiles) -> Result<(), JailerError> {
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
        to: &'a super::SnapshotFiles,
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        memory_mib: 300,
        cpu_millis: 1500,
        pids: 64,
    };

    #[test]
    fn cgroup_arguments_per_version() {
        assert_eq!(
            cgroup_args(CgroupVersion::V1, LIMITS),
            [
                "memory.limit_in_bytes=314572800",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=150000",
                "pids.max=64"
            ]
        );
        assert_eq!(
            cgroup_args(CgroupVersion::V2, LIMITS),
            [
                "memory.max=314572800",
                "cpu.max=150000 100000",
                "pids.max=64"
            ]
        );
    }

    #[test]
    fn cgroup_dirs_follow_the_mounts_like_the_jailer() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
            cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
            cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
            cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup_dirs(mounts, CgroupVersion::V1, "vm-1").unwrap(),
            [
                PathBuf::from("/sys/fs/cgroup/memory/ironclaw/vm-1"),
                "/sys/fs/cgroup/cpu,cpuacct/ironclaw/vm-1".into(),
                "/sys/fs/cgroup/pids/ironclaw/vm-1".into(),
            ]
        );
        assert_eq!(
            cgroup_dirs(mounts, CgroupVersion::V2, "vm-1").unwrap(),
            [PathBuf::from("/sys/fs/cgroup/unified/ironclaw/vm-1")]
        );
        for d in cgroup_dirs(mounts, CgroupVersion::V1, "vm-1").unwrap() {
            assert!(cgroup::is_ours(&d), "{}", d.display());
        }
        let err = cgroup_dirs("", CgroupVersion::V1, "x").unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn ids_the_jailer_refuses_are_refused() {
        check_id("vm-1").unwrap();
        for bad in ["vm_1", "", &"a".repeat(65)] {
            let err = check_id(bad).unwrap_err();
            assert!(err.to_string().contains("checking the VM id"), "{err}");
        }
    }

    #[test]
    fn a_missing_jailer_or_oddly_named_firecracker_is_refused() {
        let cfg = JailerConfig {
            binary: "/nonexistent/jailer".into(),
            chroot_base: "/srv/jailer".into(),
            uid: None,
            gid: None,
            cgroup_version: None,
        };
        let err = cfg.check(Path::new("/usr/bin/firecracker")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/jailer"), "{err}");
        let cfg = JailerConfig {
            binary: std::env::current_exe().unwrap(),
            ..cfg
        };
        cfg.check(Path::new("/usr/bin/firecracker-v1.10")).unwrap();
        let err = cfg.check(Path::new("/usr/bin/fc")).unwrap_err();
        assert!(err.to_string().contains("firecracker"), "{err}");
    }
}
