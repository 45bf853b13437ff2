//! The prototype key: a hash of everything that shapes a snapshot, so a
//! prototype is reused only by a VM it fits.

use sha2::{Digest, Sha256};

use super::meta::FORMAT_VERSION;
use crate::vm::accel::Accel;
use crate::vm::backend::{Capabilities, Hypervisor};
use crate::vm::config::VmConfig;
use crate::vm::host::file_identity;
use crate::vm::VmError;

/// The prototype key for `config` on this host, with the accelerator the
/// prototype runs on.
pub fn key_for(config: &VmConfig) -> Result<(String, Accel), VmError> {
    key_with(config, snapshot_backend(config)?.as_ref())
}

/// The backend that builds and restores prototypes of `config`.
pub(super) fn snapshot_backend(config: &VmConfig) -> Result<Box<dyn Hypervisor>, VmError> {
    crate::vm::select::select_capable(
        config.backend,
        config.accel,
        Capabilities { snapshots: true },
    )
}

pub(super) fn key_with(
    config: &VmConfig,
    backend: &dyn Hypervisor,
) -> Result<(String, Accel), VmError> {
    let accel = backend.accel(config);
    let mut h = Sha256::new();
    let parts = [
        format!("format={FORMAT_VERSION}"),
        format!("backend={}", backend.kind()),
        format!("kernel={}", file_identity(&config.kernel)?),
        format!("initramfs={}", file_identity(&config.initramfs)?),
        format!(
            "rootfs={}",
            config
                .rootfs
                .as_deref()
                // The overlay size is on the guest's command line, so in the snapshot.
                .map(|r| {
                    file_identity(r).map(|id| format!("{id} overlay_mib={}", config.overlay_mib))
                })
                .transpose()?
                .unwrap_or_default()
        ),
        format!(
            "vcpus={} memory={} accel={accel}",
            config.vcpus, config.memory_mib
        ),
    ];
    // The VMM that wrote a snapshot, and how it ran, decide who can load it.
    for part in parts.into_iter().chain(backend.snapshot_identity()?) {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    Ok((hex::encode(&h.finalize()[..10]), accel))
}
