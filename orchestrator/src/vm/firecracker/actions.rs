//! The API calls IronClaw makes, one function per step: [`configure_vm`]
//! (with [`configure_vsock`]), [`start_instance`], Ctrl-Alt-Del, pause and
//! resume, snapshot create and load.

use std::path::Path;
use std::time::Duration;

use super::super::config::VmConfig;
use super::api;
use super::client::ApiClient;
use super::error::FirecrackerError;
use super::files::SnapshotFiles;

/// Drive id of the optional root file system image.
pub const ROOTFS_DRIVE_ID: &str = "rootfs";

/// Bound of snapshot calls: writing or mapping guest memory takes longer than
/// an ordinary API call.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// `configure_vm`: `PUT /machine-config`, `PUT /boot-source`, `PUT /drives/rootfs`
/// (read-only, when the config has a rootfs), then [`configure_vsock`] with
/// the host socket `vsock_uds`. Nothing else: in particular no network device.
pub async fn configure_vm(
    api: &ApiClient,
    config: &VmConfig,
    vsock_uds: &Path,
) -> Result<(), FirecrackerError> {
    let step = |step| move |source| FirecrackerError::Api { step, source };
    api.send(&api::MachineConfiguration {
        vcpu_count: config.vcpus,
        mem_size_mib: config.memory_mib,
        smt: false,
        track_dirty_pages: false,
    })
    .await
    .map_err(step("setting the machine configuration"))?;
    api.send(&api::BootSource {
        // Firecracker boots an ELF vmlinux: the microVM kernel's, built
        // beside its bzImage; any other kernel as given.
        kernel_image_path: crate::boot::kernel::firecracker_kernel(&config.kernel),
        initrd_path: Some(config.initramfs.clone()),
        boot_args: Some(super::super::cmdline::firecracker(config)),
    })
    .await
    .map_err(step("setting the boot source"))?;
    if let Some(rootfs) = &config.rootfs {
        // The guest boots from the initramfs; the image is an extra disk the
        // agent mounts, so it is not the root device. VmConfig has no
        // writable-rootfs setting, so the drive is always read-only.
        let drive = api::Drive::new(ROOTFS_DRIVE_ID, rootfs, false, true).map_err(|source| {
            FirecrackerError::Drive {
                step: "adding the rootfs drive",
                source,
            }
        })?;
        api.send(&drive)
            .await
            .map_err(step("adding the rootfs drive"))?;
    }
    configure_vsock(api, config.vsock.guest_cid, vsock_uds).await
}

/// `PUT /vsock`: the guest's vsock device; Firecracker listens on `uds_path`.
pub async fn configure_vsock(
    api: &ApiClient,
    guest_cid: u32,
    uds_path: &Path,
) -> Result<(), FirecrackerError> {
    api.send(&api::Vsock {
        guest_cid,
        uds_path: uds_path.to_path_buf(),
    })
    .await
    .map_err(|source| FirecrackerError::Api {
        step: "adding the vsock device",
        source,
    })
}

/// `PUT /actions` `InstanceStart`: boots the configured VM.
pub async fn start_instance(api: &ApiClient) -> Result<(), FirecrackerError> {
    action(api, api::ActionType::InstanceStart, "starting the VM").await
}

/// `PUT /actions` `SendCtrlAltDel`: asks the guest to reboot, which ends Firecracker.
pub async fn send_ctrl_alt_del(api: &ApiClient) -> Result<(), FirecrackerError> {
    action(api, api::ActionType::SendCtrlAltDel, "sending Ctrl-Alt-Del").await
}

async fn action(
    api: &ApiClient,
    action_type: api::ActionType,
    step: &'static str,
) -> Result<(), FirecrackerError> {
    api.send(&api::InstanceActionInfo { action_type })
        .await
        .map_err(|source| FirecrackerError::Api { step, source })
}

/// `PATCH /vm` `Paused`.
pub async fn pause_vm(api: &ApiClient) -> Result<(), FirecrackerError> {
    set_state(api, api::VmState::Paused, "pausing the VM").await
}

/// `PATCH /vm` `Resumed`.
pub async fn resume_vm(api: &ApiClient) -> Result<(), FirecrackerError> {
    set_state(api, api::VmState::Resumed, "resuming the VM").await
}

async fn set_state(
    api: &ApiClient,
    state: api::VmState,
    step: &'static str,
) -> Result<(), FirecrackerError> {
    api.send(&api::Vm { state })
        .await
        .map_err(|source| FirecrackerError::Api { step, source })
}

/// `PUT /snapshot/create`: a full snapshot of the (paused) VM into `files`.
pub async fn create_snapshot(
    api: &ApiClient,
    files: &SnapshotFiles,
) -> Result<(), FirecrackerError> {
    api.with_timeout(SNAPSHOT_TIMEOUT)
        .send(&api::SnapshotCreateParams {
            snapshot_type: api::SnapshotType::Full,
            snapshot_path: files.state.clone(),
            mem_file_path: files.memory.clone(),
        })
        .await
        .map_err(|source| FirecrackerError::Api {
            step: "creating a snapshot",
            source,
        })
}

/// `PUT /snapshot/load` on a fresh Firecracker process: restores `files`, with
/// the vsock device's host socket moved to `vsock_uds` (each clone of one
/// snapshot needs its own; `vsock_override` in the API), resuming the VM when
/// `resume` is set.
pub async fn load_snapshot(
    api: &ApiClient,
    files: &SnapshotFiles,
    vsock_uds: &Path,
    resume: bool,
) -> Result<(), FirecrackerError> {
    api.with_timeout(SNAPSHOT_TIMEOUT)
        .send(&api::SnapshotLoadParams {
            snapshot_path: files.state.clone(),
            mem_backend: api::MemoryBackend {
                backend_type: api::MemoryBackendType::File,
                backend_path: files.memory.clone(),
            },
            track_dirty_pages: None,
            resume_vm: resume,
            vsock_override: Some(api::VsockOverride {
                uds_path: vsock_uds.to_path_buf(),
            }),
        })
        .await
        .map_err(|source| FirecrackerError::Api {
            step: "loading a snapshot",
            source,
        })
}
