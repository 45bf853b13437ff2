//! How the VMM processes of a VM are confined: the settings and the cgroup
//! limits they come to, defaults filled in.

use serde::{Deserialize, Serialize};

use super::VmConfig;

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

/// How the VMM processes are confined ([`crate::vm::seccomp`], [`crate::vm::jail`],
/// [`super::cgroup`]). The defaults confine fully.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confinement {
    /// Seccomp level of the VMM processes.
    #[serde(default)]
    pub seccomp: crate::vm::seccomp::SeccompLevel,
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
    pub fn limits(&self) -> crate::vm::cgroup::Limits {
        let c = &self.confinement;
        crate::vm::cgroup::Limits {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement_defaults_and_limits() {
        let c = VmConfig::from_json(r#"{"id":"a","kernel":"/k","initramfs":"/i"}"#).unwrap();
        assert_eq!(c.confinement, Confinement::default());
        assert!(c.confinement.jail);
        let l = VmConfig::new("task-1", "/k", "/i").limits();
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
    }
}
