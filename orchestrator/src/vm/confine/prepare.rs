//! The step every jailed backend runs before starting a process: the audit
//! log, the jail uid, the runtime directory's owner and mode, the boot files
//! to bind-mount (checked readable by the jail uid), and the VM's cgroup.
//! Nothing is started here; [`Confinement::spec`] then gives each process
//! its [`JailSpec`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cgroup::{Layout, VmCgroup};
use super::jail::{self, Bind, JailError, JailSpec};
use super::seccomp::{self, AuditLog, SeccompFilter, SeccompLevel};
use crate::vm::config::VmConfig;
use crate::vm::runtime::RuntimeDir;

const KVM_DEVICE: &str = "/dev/kvm";

/// Everything the VM's processes are confined with, prepared before any starts.
pub struct Confinement {
    jailed: bool,
    pub ids: Option<(u32, u32)>,
    /// Owned by the instance once it exists; the files each process writes
    /// to join it stay known here.
    pub cgroup: Option<VmCgroup>,
    cgroup_join: Vec<PathBuf>,
    binds: Vec<Bind>,
    /// The config with its boot files as the jailed VMM sees them (bind
    /// mounts in the runtime directory).
    pub config: VmConfig,
    pub level: SeccompLevel,
    pub audit: Option<Arc<AuditLog>>,
    /// The runtime directory, the only host directory the jailed VMM sees
    /// besides `/usr` (see `JailSpec::minimal_root`).
    minimal_root: Option<PathBuf>,
    /// The group QEMU keeps to open `/dev/kvm` (see [`Confinement::open_kvm`]).
    kvm_group: Option<u32>,
}

impl Confinement {
    /// Everything but the processes: without `confinement.jail` only the
    /// audit log (the filter is still installed); with it, root is needed.
    pub fn prepare(config: &VmConfig, dir: &RuntimeDir) -> Result<Confinement, JailError> {
        let c = &config.confinement;
        let audit = match c.seccomp {
            SeccompLevel::Audit => Some(Arc::new(
                AuditLog::new(
                    &config.id,
                    Some(&dir.file(seccomp::AUDIT_FILE)),
                    seccomp::AUDIT_RING_ENTRIES,
                    seccomp::AUDIT_FILE_LINES,
                )
                .map_err(|e| JailError::io("creating the seccomp audit log", e))?,
            )),
            SeccompLevel::Strict => None,
        };
        if !c.jail {
            return Ok(Confinement {
                jailed: false,
                ids: None,
                cgroup: None,
                cgroup_join: Vec::new(),
                binds: Vec::new(),
                config: config.clone(),
                level: c.seccomp,
                audit,
                minimal_root: None,
                kvm_group: None,
            });
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(JailError::NotRoot);
        }
        let prep = |what: &'static str| {
            move |source| JailError::Prepare {
                process: "vmm",
                what,
                source,
            }
        };
        let (uid, gid) = jail::vm_ids(dir, c.uid).map_err(prep("choosing the VM's jail uid"))?;
        // The VMM creates its sockets and console log here; the sticky bit
        // keeps it from removing the orchestrator's files (owner, pids).
        std::os::unix::fs::chown(dir.path(), Some(0), Some(gid))
            .map_err(prep("the runtime directory's group"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1770))
            .map_err(prep("the runtime directory's mode"))?;
        let mut binds = Vec::new();
        let mut bind =
            |what: &'static str, source: &Path, name: &str| -> Result<PathBuf, JailError> {
                jail::check_readable(what, source, uid, gid)?;
                let target = dir.file(name);
                File::create(&target).map_err(prep("a bind-mount target"))?;
                binds.push(Bind {
                    what,
                    source: source.to_path_buf(),
                    target: target.clone(),
                    exec: false,
                });
                Ok(target)
            };
        let jailed_config = VmConfig {
            kernel: bind("kernel", &config.kernel, "boot-kernel")?,
            initramfs: bind("initramfs", &config.initramfs, "boot-initramfs")?,
            rootfs: match &config.rootfs {
                Some(r) => Some(bind("rootfs", r, "boot-rootfs")?),
                None => None,
            },
            ..config.clone()
        };
        let layout = Layout::detect()?;
        let name = format!("{}-{:08x}", config.id, jail::dir_hash(dir.path()) as u32);
        let cgroup = VmCgroup::create(&layout, &name, config.limits())?;
        dir.record_cgroups(&cgroup.dirs())
            .map_err(|e| JailError::io("recording the VM's cgroups", e))?;
        Ok(Confinement {
            jailed: true,
            ids: Some((uid, gid)),
            cgroup_join: cgroup.join_files(),
            cgroup: Some(cgroup),
            binds,
            config: jailed_config,
            level: c.seccomp,
            audit,
            minimal_root: Some(dir.path().to_path_buf()),
            kvm_group: None,
        })
    }

    /// Lets the jailed QEMU open `/dev/kvm` when its mode grants that to its
    /// group only (Debian's `root:kvm 0660`): QEMU keeps that one group as a
    /// supplementary group, and no other. Nothing changes when the device is
    /// open to all, or when the VM is not jailed (the caller's groups stay).
    pub fn open_kvm(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if !self.jailed {
            return;
        }
        if let Ok(m) = std::fs::metadata(KVM_DEVICE) {
            let group_rw = m.mode() & 0o060 == 0o060;
            let other_rw = m.mode() & 0o006 == 0o006;
            if group_rw && !other_rw && m.gid() != 0 {
                self.kvm_group = Some(m.gid());
            }
        }
    }

    /// The path at which the VMM reads `source`, a file it needs besides the
    /// boot files (a prototype's memory): itself when the VM is not jailed,
    /// else a read-only bind mount of it named `name` in the runtime
    /// directory, checked readable by the jail uid.
    pub fn readable_file(
        &mut self,
        what: &'static str,
        source: &Path,
        dir: &RuntimeDir,
        name: &str,
    ) -> Result<PathBuf, JailError> {
        let Some((uid, gid)) = self.ids else {
            return Ok(source.to_path_buf());
        };
        jail::check_readable(what, source, uid, gid)?;
        self.bind(what, source, dir.file(name), false)
    }

    /// The path to exec `program` by: itself when the jail uid can reach it,
    /// else a bind mount of it in the runtime directory (e.g. a
    /// `cargo install`ed vhost-device-vsock under `/root`).
    pub fn program(&mut self, program: &Path, dir: &RuntimeDir) -> Result<PathBuf, JailError> {
        let Some((uid, gid)) = self.ids else {
            return Ok(program.to_path_buf());
        };
        // Inside the minimal root only /usr (and the runtime dir) exist.
        if jail::reachable(program, uid, gid) && program.starts_with("/usr") {
            return Ok(program.to_path_buf());
        }
        jail::check_readable("program", program, uid, gid)?;
        let name = program
            .file_name()
            .map(|n| format!("bin-{}", n.to_string_lossy()))
            .unwrap_or_else(|| "bin-vmm".into());
        self.bind("program", program, dir.file(&name), true)
    }

    /// Creates the mount point `target` and records a bind mount of `source` on it.
    fn bind(
        &mut self,
        what: &'static str,
        source: &Path,
        target: PathBuf,
        exec: bool,
    ) -> Result<PathBuf, JailError> {
        File::create(&target).map_err(|source| JailError::Prepare {
            process: "vmm",
            what: "a bind-mount target",
            source,
        })?;
        self.binds.push(Bind {
            what,
            source: source.to_path_buf(),
            target: target.clone(),
            exec,
        });
        Ok(target)
    }

    pub fn spec(&self, filter: SeccompFilter) -> Result<JailSpec, JailError> {
        let groups = match (filter.kind, self.kvm_group) {
            (seccomp::ProcessKind::Qemu, Some(gid)) => vec![gid],
            _ => Vec::new(),
        };
        Ok(JailSpec {
            namespaces: self.jailed,
            ids: self.ids,
            groups,
            binds: self.binds.clone(),
            cgroup_join: self
                .cgroup_join
                .iter()
                .map(|p| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .map(std::os::fd::OwnedFd::from)
                        .map_err(|source| JailError::Prepare {
                            process: "vmm",
                            what: "joining the VM's cgroup",
                            source,
                        })
                })
                .collect::<Result<_, _>>()?,
            seccomp: Some(filter),
            minimal_root: self.minimal_root.clone(),
        })
    }
}
