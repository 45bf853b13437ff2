//! `VmConfig`: the single, validated description of a VM.
//!
//! [`VmConfig::validate`] (in `validate`) runs before any process starts;
//! every refusal names the field. How the VMM processes are confined is in
//! `confinement`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod confinement;
mod validate;

pub use confinement::{
    Confinement, DEFAULT_PIDS_LIMIT, MAX_PIDS_LIMIT, MIN_MEMORY_LIMIT_MIB, MIN_PIDS_LIMIT,
    VMM_OVERHEAD_MIB,
};
pub use validate::{check_backend_accel, validate_id, ConfigError};

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

    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// Parses a JSON config; unknown fields are refused. Does not validate.
    pub fn from_json(text: &str) -> Result<VmConfig, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
