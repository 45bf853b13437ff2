//! `VmConfig`: the single, validated description of a VM.
//!
//! `validate()` runs before any process starts; every refusal names the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest VM id: ids become file and socket names.
pub const MAX_ID_LEN: usize = 64;
pub const MAX_VCPUS: u32 = 32;
pub const MIN_MEMORY_MIB: u32 = 128;
pub const MAX_MEMORY_MIB: u32 = 64 * 1024;
pub const MIN_BOOT_TIMEOUT_MS: u64 = 1_000;
pub const MAX_BOOT_TIMEOUT_MS: u64 = 600_000;
pub const MAX_EXEC_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;
/// CIDs 0–2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
pub const MIN_GUEST_CID: u32 = 3;

/// Which VMM runs the VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Firecracker when it is installed and KVM is usable, QEMU otherwise.
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when it is really usable (not merely present), TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The VM's vsock device: its guest CID and the host-side hybrid vsock socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    #[serde(default = "default_cid")]
    pub guest_cid: u32,
    /// Host socket of the hybrid vsock; `vsock.sock` in the VM's runtime directory when absent.
    #[serde(default)]
    pub uds_path: Option<PathBuf>,
}

impl Default for VsockConfig {
    fn default() -> Self {
        VsockConfig {
            guest_cid: default_cid(),
            uds_path: None,
        }
    }
}

/// Size limit of the writable overlay over a rootfs image, in MiB.
pub const DEFAULT_OVERLAY_MIB: u32 = 128;
pub const MIN_OVERLAY_MIB: u32 = 8;

fn default_overlay_mib() -> u32 {
    DEFAULT_OVERLAY_MIB
}
fn default_cid() -> u32 {
    MIN_GUEST_CID
}
fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> u32 {
    256
}
fn default_boot_timeout() -> u64 {
    60_000
}
fn default_exec_timeout() -> u64 {
    3_600_000
}

/// What QEMU itself needs beyond guest memory (TCG code buffer, device
/// emulation, libraries), counted in the VM's cgroup memory limit.
pub const VMM_OVERHEAD_MIB: u32 = 320;
pub const MIN_MEMORY_LIMIT_MIB: u32 = 16;
pub const DEFAULT_PIDS_LIMIT: u32 = 128;
pub const MIN_PIDS_LIMIT: u32 = 8;
pub const MAX_PIDS_LIMIT: u32 = 65_536;

fn yes() -> bool {
    true
}

/// How the VMM processes are confined ([`super::seccomp`], [`super::jail`],
/// [`super::cgroup`]). The defaults confine fully.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confinement {
    /// Seccomp level of the VMM processes.
    #[serde(default)]
    pub seccomp: super::seccomp::SeccompLevel,
    /// Namespaces, an unprivileged uid and a cgroup per VM (needs root).
    /// `false` keeps only the seccomp filter and no_new_privs.
    #[serde(default = "yes")]
    pub jail: bool,
    /// The uid (and gid) the VMM runs as; default: one derived per VM.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Memory of all the VM's host processes together; default: the guest's
    /// memory plus [`VMM_OVERHEAD_MIB`].
    #[serde(default)]
    pub memory_limit_mib: Option<u32>,
    /// CPU time in thousandths of a CPU; default: one CPU per vCPU plus one
    /// for QEMU's main loop and the vsock device.
    #[serde(default)]
    pub cpu_limit_millis: Option<u32>,
    /// Processes and threads of the VM's host processes together.
    #[serde(default)]
    pub pids_limit: Option<u32>,
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement {
            seccomp: Default::default(),
            jail: true,
            uid: None,
            memory_limit_mib: None,
            cpu_limit_millis: None,
            pids_limit: None,
        }
    }
}

impl VmConfig {
    /// The cgroup limits of this VM, defaults filled in.
    pub fn limits(&self) -> super::cgroup::Limits {
        let c = &self.confinement;
        super::cgroup::Limits {
            memory_mib: c
                .memory_limit_mib
                .unwrap_or(self.memory_mib.saturating_add(VMM_OVERHEAD_MIB)),
            cpu_millis: c
                .cpu_limit_millis
                .unwrap_or(self.vcpus.saturating_add(1).saturating_mul(1000)),
            pids: c.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Short name of the VM, `[A-Za-z0-9_-]{1,64}`; names its runtime directory.
    pub id: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Uncompressed-header Linux kernel (bzImage).
    pub kernel: PathBuf,
    /// Initramfs whose `/init` is `ironclaw-guest`.
    pub initramfs: PathBuf,
    /// Optional root file system image, attached read-only as a virtio block device.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// With a rootfs: size limit (MiB) of the tmpfs overlay that takes the
    /// VM's writes; a write beyond it fails with ENOSPC in the guest. It is
    /// guest memory, so it may not exceed `memory_mib`.
    #[serde(default = "default_overlay_mib")]
    pub overlay_mib: u32,
    #[serde(default)]
    pub vsock: VsockConfig,
    /// Must stay false: IronClaw VMs have no network device. Present so that a
    /// request for networking is refused loudly instead of ignored.
    #[serde(default)]
    pub enable_networking: bool,
    /// How long a boot may take until the guest agent answers.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_ms: u64,
    /// Default limit for one command in the VM.
    #[serde(default = "default_exec_timeout")]
    pub exec_timeout_ms: u64,
    #[serde(default)]
    pub backend: BackendChoice,
    #[serde(default)]
    pub accel: AccelChoice,
    #[serde(default)]
    pub confinement: Confinement,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VmConfig: `{field}` {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        field,
        reason: reason.into(),
    })
}

impl VmConfig {
    /// A config with defaults for everything but the id and the boot files.
    pub fn new(
        id: impl Into<String>,
        kernel: impl Into<PathBuf>,
        initramfs: impl Into<PathBuf>,
    ) -> VmConfig {
        VmConfig {
            id: id.into(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            kernel: kernel.into(),
            initramfs: initramfs.into(),
            rootfs: None,
            overlay_mib: default_overlay_mib(),
            vsock: VsockConfig::default(),
            enable_networking: false,
            boot_timeout_ms: default_boot_timeout(),
            exec_timeout_ms: default_exec_timeout(),
            backend: BackendChoice::Auto,
            accel: AccelChoice::Auto,
            confinement: Confinement::default(),
        }
    }

    /// Parses a JSON config; unknown fields are refused. Does not validate.
    pub fn from_json(text: &str) -> Result<VmConfig, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enable_networking {
            refuse(
                "enable_networking",
                "must be false: IronClaw VMs never get a network device",
            )?;
        }
        validate_id(&self.id)?;
        check_backend_accel(self.backend, self.accel)?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            refuse(
                "vcpus",
                format!("is {}, must be between 1 and {MAX_VCPUS}", self.vcpus),
            )?;
        }
        if self.memory_mib < MIN_MEMORY_MIB || self.memory_mib > MAX_MEMORY_MIB {
            refuse(
                "memory_mib",
                format!(
                    "is {}, must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}",
                    self.memory_mib
                ),
            )?;
        }
        if !(MIN_BOOT_TIMEOUT_MS..=MAX_BOOT_TIMEOUT_MS).contains(&self.boot_timeout_ms) {
            refuse(
                "boot_timeout_ms",
                format!(
                    "is {}, must be between {MIN_BOOT_TIMEOUT_MS} and {MAX_BOOT_TIMEOUT_MS}",
                    self.boot_timeout_ms
                ),
            )?;
        }
        if self.exec_timeout_ms == 0 || self.exec_timeout_ms > MAX_EXEC_TIMEOUT_MS {
            refuse(
                "exec_timeout_ms",
                format!(
                    "is {}, must be between 1 and {MAX_EXEC_TIMEOUT_MS}",
                    self.exec_timeout_ms
                ),
            )?;
        }
        require_file("kernel", &self.kernel)?;
        require_file("initramfs", &self.initramfs)?;
        if let Some(rootfs) = &self.rootfs {
            require_file("rootfs", rootfs)?;
        }
        if self.overlay_mib < MIN_OVERLAY_MIB || self.overlay_mib > self.memory_mib {
            refuse(
                "overlay_mib",
                format!(
                    "is {}, must be between {MIN_OVERLAY_MIB} and memory_mib ({})",
                    self.overlay_mib, self.memory_mib
                ),
            )?;
        }
        if self.vsock.guest_cid < MIN_GUEST_CID || self.vsock.guest_cid == u32::MAX {
            refuse(
                "vsock.guest_cid",
                format!(
                    "is {}, must be at least {MIN_GUEST_CID} and below {}",
                    self.vsock.guest_cid,
                    u32::MAX
                ),
            )?;
        }
        let c = &self.confinement;
        if let Some(m) = c.memory_limit_mib {
            if !(MIN_MEMORY_LIMIT_MIB..=2 * MAX_MEMORY_MIB).contains(&m) {
                refuse(
                    "confinement.memory_limit_mib",
                    format!(
                        "is {m}, must be between {MIN_MEMORY_LIMIT_MIB} and {}",
                        2 * MAX_MEMORY_MIB
                    ),
                )?;
            }
        }
        if let Some(cpu) = c.cpu_limit_millis {
            if !(10..=(MAX_VCPUS + 1) * 1000).contains(&cpu) {
                refuse(
                    "confinement.cpu_limit_millis",
                    format!(
                        "is {cpu}, must be between 10 and {}",
                        (MAX_VCPUS + 1) * 1000
                    ),
                )?;
            }
        }
        if let Some(p) = c.pids_limit {
            if !(MIN_PIDS_LIMIT..=MAX_PIDS_LIMIT).contains(&p) {
                refuse(
                    "confinement.pids_limit",
                    format!("is {p}, must be between {MIN_PIDS_LIMIT} and {MAX_PIDS_LIMIT}"),
                )?;
            }
        }
        if c.uid == Some(0) {
            refuse(
                "confinement.uid",
                "is 0: the VMM must not run as root (leave it unset for a per-VM uid)",
            )?;
        }
        if let Some(path) = &self.vsock.uds_path {
            if !path.is_absolute() {
                refuse(
                    "vsock.uds_path",
                    format!("{} is not an absolute path", path.display()),
                )?;
            }
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                refuse(
                    "vsock.uds_path",
                    format!("is longer than {MAX_SOCKET_PATH} bytes (a unix socket path limit)"),
                )?;
            }
            if self.confinement.jail {
                // The jailed vsock device sees only the VM's runtime directory
                // (its minimal root), so it could not create a socket elsewhere.
                refuse(
                    "vsock.uds_path",
                    format!(
                        "{} cannot be used with the jail: the confined VMM sees only the VM's \
                         runtime directory, where the socket is put when vsock.uds_path is unset; \
                         leave it unset, or turn the jail off (confinement.jail = false)",
                        path.display()
                    ),
                )?;
            }
        }
        Ok(())
    }
}

/// Firecracker has no emulator: it runs on KVM only, so an explicit TCG
/// request cannot be honoured by it and is refused rather than ignored.
/// (`auto` with TCG picks QEMU: [`super::select::select_for`].)
pub fn check_backend_accel(backend: BackendChoice, accel: AccelChoice) -> Result<(), ConfigError> {
    if backend == BackendChoice::Firecracker && accel == AccelChoice::Tcg {
        refuse(
            "accel",
            "is tcg, but Firecracker runs on KVM only: `--accel tcg` cannot be used with \
             `--backend firecracker`; use `--backend qemu --accel tcg`, or drop `--accel tcg`",
        )?;
    }
    Ok(())
}

/// Ids become directory and socket names: short, and no path tricks.
pub fn validate_id(id: &str) -> Result<(), ConfigError> {
    if id.is_empty() {
        refuse("id", "is empty")?;
    }
    if id.len() > MAX_ID_LEN {
        refuse(
            "id",
            format!(
                "is {} characters long, at most {MAX_ID_LEN} are allowed",
                id.len()
            ),
        )?;
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        refuse(
            "id",
            format!("contains {bad:?}; only A-Z, a-z, 0-9, '-' and '_' are allowed"),
        )?;
    }
    Ok(())
}

fn require_file(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => refuse(field, format!("{} is not a regular file", path.display())),
        Err(e) => refuse(field, format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> VmConfig {
        // Any existing regular files do for validation.
        let exe = std::env::current_exe().unwrap();
        VmConfig::new("task-1", &exe, &exe)
    }

    fn field_of(c: &VmConfig) -> &'static str {
        c.validate().expect_err("config should be refused").field
    }

    #[test]
    fn defaults_are_valid() {
        valid().validate().unwrap();
    }

    #[test]
    fn tcg_with_firecracker_is_refused_naming_both_flags() {
        let c = VmConfig {
            backend: BackendChoice::Firecracker,
            accel: AccelChoice::Tcg,
            ..valid()
        };
        assert_eq!(field_of(&c), "accel");
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("`--accel tcg`"), "{msg}");
        assert!(msg.contains("`--backend firecracker`"), "{msg}");
        // What Firecracker can do, and what TCG can run on, stay valid.
        for (backend, accel) in [
            (BackendChoice::Firecracker, AccelChoice::Kvm),
            (BackendChoice::Firecracker, AccelChoice::Auto),
            (BackendChoice::Qemu, AccelChoice::Tcg),
            (BackendChoice::Auto, AccelChoice::Tcg),
        ] {
            VmConfig {
                backend,
                accel,
                ..valid()
            }
            .validate()
            .unwrap_or_else(|e| panic!("{backend:?} + {accel:?}: {e}"));
        }
    }

    #[test]
    fn networking_is_refused() {
        let c = VmConfig {
            enable_networking: true,
            ..valid()
        };
        assert_eq!(field_of(&c), "enable_networking");
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("enable_networking"));
    }

    #[test]
    fn bad_ids_are_refused() {
        for id in [
            "",
            "../etc",
            "a/b",
            "a b",
            "x.y",
            "ü",
            &"a".repeat(65),
            "a\0b",
        ] {
            let c = VmConfig {
                id: id.into(),
                ..valid()
            };
            assert_eq!(field_of(&c), "id", "id {id:?}");
        }
        for id in ["a", "Task_01-x", &"a".repeat(64)] {
            VmConfig {
                id: id.into(),
                ..valid()
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        assert_eq!(
            field_of(&VmConfig {
                vcpus: 0,
                ..valid()
            }),
            "vcpus"
        );
        assert_eq!(
            field_of(&VmConfig {
                vcpus: 10_000,
                ..valid()
            }),
            "vcpus"
        );
        assert_eq!(
            field_of(&VmConfig {
                memory_mib: 0,
                ..valid()
            }),
            "memory_mib"
        );
        assert_eq!(
            field_of(&VmConfig {
                memory_mib: 1 << 30,
                ..valid()
            }),
            "memory_mib"
        );
        assert_eq!(
            field_of(&VmConfig {
                boot_timeout_ms: 0,
                ..valid()
            }),
            "boot_timeout_ms"
        );
        assert_eq!(
            field_of(&VmConfig {
                exec_timeout_ms: 0,
                ..valid()
            }),
            "exec_timeout_ms"
        );
        let cid = |guest_cid| VmConfig {
            vsock: VsockConfig {
                guest_cid,
                uds_path: None,
            },
            ..valid()
        };
        assert_eq!(
            field_of(&VmConfig {
                overlay_mib: 1,
                ..valid()
            }),
            "overlay_mib"
        );
        assert_eq!(
            field_of(&VmConfig {
                overlay_mib: 512,
                memory_mib: 256,
                ..valid()
            }),
            "overlay_mib"
        );
        assert_eq!(field_of(&cid(2)), "vsock.guest_cid");
        assert_eq!(field_of(&cid(u32::MAX)), "vsock.guest_cid");
    }

    #[test]
    fn missing_files_are_refused() {
        let c = VmConfig {
            kernel: "/nonexistent/vmlinuz".into(),
            ..valid()
        };
        assert_eq!(field_of(&c), "kernel");
        let c = VmConfig {
            initramfs: "/nonexistent/initrd".into(),
            ..valid()
        };
        assert_eq!(field_of(&c), "initramfs");
        let c = VmConfig {
            initramfs: "/".into(),
            ..valid()
        };
        assert_eq!(field_of(&c), "initramfs");
        let c = VmConfig {
            rootfs: Some("/nonexistent/rootfs.ext4".into()),
            ..valid()
        };
        assert_eq!(field_of(&c), "rootfs");
    }

    #[test]
    fn bad_socket_paths_are_refused() {
        let c = |p: &str| VmConfig {
            vsock: VsockConfig {
                guest_cid: 3,
                uds_path: Some(p.into()),
            },
            ..valid()
        };
        assert_eq!(field_of(&c("relative.sock")), "vsock.uds_path");
        assert_eq!(
            field_of(&c(&format!("/{}", "x".repeat(200)))),
            "vsock.uds_path"
        );
        // An absolute, short path is refused under the jail (the confined
        // vsock device could not reach it) and taken without it.
        let jailed = c("/tmp/custom.sock");
        assert!(jailed.confinement.jail);
        assert_eq!(field_of(&jailed), "vsock.uds_path");
        assert!(jailed.validate().unwrap_err().reason.contains("jail"));
        let mut free = c("/tmp/custom.sock");
        free.confinement.jail = false;
        free.validate().unwrap();
    }

    #[test]
    fn confinement_defaults_and_refusals() {
        let c = VmConfig::from_json(r#"{"id":"a","kernel":"/k","initramfs":"/i"}"#).unwrap();
        assert_eq!(c.confinement, Confinement::default());
        assert!(c.confinement.jail);
        let l = valid().limits();
        assert_eq!(
            (l.memory_mib, l.cpu_millis, l.pids),
            (256 + VMM_OVERHEAD_MIB, 2000, DEFAULT_PIDS_LIMIT)
        );
        let c = VmConfig::from_json(
            r#"{"id":"a","kernel":"/k","initramfs":"/i","confinement":{"seccomp":"audit","pids_limit":64}}"#,
        )
        .unwrap();
        assert_eq!(
            c.confinement.seccomp,
            crate::vm::seccomp::SeccompLevel::Audit
        );
        assert_eq!(c.limits().pids, 64);
        assert!(VmConfig::from_json(
            r#"{"id":"a","kernel":"/k","initramfs":"/i","confinement":{"seccomp":"off"}}"#
        )
        .is_err());
        let with = |f: fn(&mut Confinement)| {
            let mut c = valid();
            f(&mut c.confinement);
            c
        };
        assert_eq!(
            field_of(&with(|c| c.memory_limit_mib = Some(1))),
            "confinement.memory_limit_mib"
        );
        assert_eq!(
            field_of(&with(|c| c.pids_limit = Some(1))),
            "confinement.pids_limit"
        );
        assert_eq!(
            field_of(&with(|c| c.cpu_limit_millis = Some(0))),
            "confinement.cpu_limit_millis"
        );
        assert_eq!(field_of(&with(|c| c.uid = Some(0))), "confinement.uid");
    }

    #[test]
    fn json_refuses_unknown_fields() {
        let err = VmConfig::from_json(
            r#"{"id":"a","kernel":"/k","initramfs":"/i","enable_network":true}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("enable_network"), "{err}");
        let c = VmConfig::from_json(r#"{"id":"a","kernel":"/k","initramfs":"/i"}"#).unwrap();
        assert_eq!(
            (c.vcpus, c.memory_mib, c.enable_networking),
            (1, 256, false)
        );
    }
}
