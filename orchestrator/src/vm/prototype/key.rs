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
    for part in parts
        .into_iter()
        .chain(backend.snapshot_identity(config, accel)?)
    {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    Ok((hex::encode(&h.finalize()[..10]), accel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::qemu::QemuBackend;
    use std::fs;

    /// A kernel built from another configuration is another file (another
    /// `<cache>/kernels/<version>-<config hash>/bzImage`), so its prototypes
    /// have another key; so has a rebuild in place (a new inode and mtime),
    /// even of the same size.
    #[test]
    fn the_key_changes_with_the_kernel_build() {
        let tmp = tempfile::tempdir().unwrap();
        let kernels = tmp.path().join("kernels");
        let kernel = |name: &str| {
            let dir = kernels.join(name);
            fs::create_dir_all(&dir).unwrap();
            let k = dir.join("bzImage");
            fs::write(&k, "the same bytes").unwrap();
            k
        };
        let initramfs = tmp.path().join("initramfs.cpio");
        fs::write(&initramfs, "cpio").unwrap();
        let backend = QemuBackend::with_qemu(std::env::current_exe().unwrap());
        let key = |k: &std::path::Path| {
            let config = VmConfig::new("k", k, &initramfs);
            key_with(&config, &backend).unwrap().0
        };
        let a = kernel("6.1.192-3-aaaaaaaaaaaaaaaa");
        let b = kernel("6.1.192-3-bbbbbbbbbbbbbbbb");
        let key_a = key(&a);
        assert_eq!(key(&a), key_a, "the key is stable");
        assert_ne!(key(&b), key_a, "another config's kernel, another key");
        // Rebuilt: a new file renamed over the old one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let staged = tmp.path().join("staged");
        fs::write(&staged, "the same bytes").unwrap();
        fs::rename(&staged, &a).unwrap();
        assert_ne!(key(&a), key_a, "a rebuilt kernel, another key");
    }

    /// The guest CPU model and the kernel's command line are part of what a
    /// snapshot is (the kernel keeps what it booted with and on), so they
    /// are part of the key.
    #[test]
    fn the_key_covers_the_cpu_and_the_kernel_command_line() {
        let exe = std::env::current_exe().unwrap();
        let backend = QemuBackend::with_qemu(exe.clone());
        let config = VmConfig::new("k", &exe, &exe);
        let identity = backend.snapshot_identity(&config, Accel::Tcg).unwrap();
        let cmdline = format!(
            "cmdline={}",
            crate::vm::cmdline::qemu_unmeasured(&config, true)
        );
        assert!(identity.contains(&cmdline), "{identity:?}");
        assert!(
            identity
                .iter()
                .any(|l| l.starts_with("machine=") && l.contains("-cpu")),
            "{identity:?}"
        );
    }
}
