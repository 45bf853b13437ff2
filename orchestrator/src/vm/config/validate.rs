//! Checking a `VmConfig` before any process starts: [`ConfigError`] names
//! the field a refusal is about.

use std::path::Path;

use super::{
    AccelChoice, BackendChoice, VmConfig, MAX_BOOT_TIMEOUT_MS, MAX_EXEC_TIMEOUT_MS, MAX_ID_LEN,
    MAX_MEMORY_MIB, MAX_PIDS_LIMIT, MAX_SOCKET_PATH, MAX_VCPUS, MIN_BOOT_TIMEOUT_MS, MIN_GUEST_CID,
    MIN_MEMORY_LIMIT_MIB, MIN_MEMORY_MIB, MIN_OVERLAY_MIB, MIN_PIDS_LIMIT,
};

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
/// (`auto` with TCG picks QEMU: [`crate::vm::select::select_for`].)
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
    use crate::vm::config::{Confinement, VsockConfig};

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
    fn confinement_refusals() {
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
}
