//! Launch sequences: a cold boot and a restore, directly or through the jailer.

use std::path::Path;

use ironclaw_protocol::AGENT_VSOCK_PORT;

use super::super::config::VmConfig;
use super::super::runtime::RuntimeDir;
use super::super::vsock::Vsock;
use super::actions::{configure_vm, load_snapshot, start_instance};
use super::error::FirecrackerError;
use super::files::{socket_path, SnapshotFiles, VSOCK_SOCKET};
use super::jailer::{self, JailerConfig, JailerError};
use super::options::FirecrackerOptions;
use super::process::{spawn_in, FirecrackerProcess};

/// Starts, configures and boots the VM of (validated) `config` in `dir`.
/// On error the process is killed; `dir` is the caller's to remove.
pub async fn launch_in(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    dir: &RuntimeDir,
) -> Result<FirecrackerProcess, FirecrackerError> {
    config.validate()?;
    // Strict keeps Firecracker's built-in per-thread filters (or the custom
    // file of the options, passed as --seccomp-filter); there is no audit mode.
    if config.confinement.seccomp == super::super::seccomp::SeccompLevel::Audit {
        return Err(FirecrackerError::SeccompAuditUnsupported);
    }
    // Before anything is created: a missing jailer starts nothing.
    opts.check()?;
    if let Some(jailer_config) = &opts.jailer {
        return launch_jailed(opts, jailer_config, config, dir).await;
    }
    let uds = socket_path(
        config
            .vsock
            .uds_path
            .clone()
            .unwrap_or_else(|| dir.file(VSOCK_SOCKET)),
    )?;
    let vsock = Vsock::new(config.vsock.guest_cid, &uds, AGENT_VSOCK_PORT);
    let ready = vsock
        .bind_ready_listener()
        .map_err(|e| FirecrackerError::io("binding the agent's ready socket", e))?;
    let mut fc = spawn_in(opts, dir, vsock, None).await?;
    fc.ready = Some(ready);
    configure_vm(&fc.api, config, &uds).await?;
    start_instance(&fc.api).await?;
    Ok(fc)
}

/// [`launch_in`] through the jailer: the chroot is prepared (boot files
/// placed in it), the jailer started, and Firecracker configured with the
/// files' paths inside the chroot.
async fn launch_jailed(
    opts: &FirecrackerOptions,
    jailer_config: &JailerConfig,
    config: &VmConfig,
    dir: &RuntimeDir,
) -> Result<FirecrackerProcess, FirecrackerError> {
    if let Some(uds) = &config.vsock.uds_path {
        return Err(JailerError::Invalid {
            step: jailer::JailerStep::PlaceFiles,
            detail: format!(
                "vsock.uds_path {} cannot be used with the jailer: Firecracker only sees its chroot, where the socket is put",
                uds.display()
            ),
        }
        .into());
    }
    let jail = jailer::Jail::prepare(
        jailer_config,
        &opts.binary,
        opts.seccomp_filter.as_deref(),
        config,
        dir,
    )?;
    // The host side of the vsock socket Firecracker creates at VSOCK_IN_JAIL.
    let uds = socket_path(jail.host_path(Path::new(jailer::VSOCK_IN_JAIL)))?;
    let vsock = Vsock::new(config.vsock.guest_cid, &uds, AGENT_VSOCK_PORT);
    let ready = vsock
        .bind_ready_listener()
        .map_err(|e| FirecrackerError::io("binding the agent's ready socket", e))?;
    // Firecracker, as the jail uid, connects to it for guest-initiated vsock.
    jail.give(&vsock.guest_initiated_path(ironclaw_protocol::AGENT_READY_PORT))?;
    let mut fc = spawn_in(opts, dir, vsock, Some(&jail)).await?;
    let api_config = jail.api_config(config);
    fc.jail = Some(jail);
    fc.ready = Some(ready);
    configure_vm(&fc.api, &api_config, Path::new(jailer::VSOCK_IN_JAIL)).await?;
    start_instance(&fc.api).await?;
    Ok(fc)
}

/// [`restore_firecracker_in`] into the caller's runtime directory `dir`.
/// On error the process is killed; `dir` is the caller's to remove.
pub async fn restore_in(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    dir: &RuntimeDir,
    files: &SnapshotFiles,
    resume: bool,
) -> Result<FirecrackerProcess, FirecrackerError> {
    config.validate()?;
    opts.check()?;
    let Some(jailer_config) = &opts.jailer else {
        let uds = socket_path(dir.file(VSOCK_SOCKET))?;
        let vsock = Vsock::new(config.vsock.guest_cid, &uds, AGENT_VSOCK_PORT);
        let fc = spawn_in(opts, dir, vsock, None).await?;
        load_snapshot(&fc.api, files, &uds, resume).await?;
        return Ok(fc);
    };
    // Through the jailer: the snapshot (and the rootfs its drive names) is
    // placed in the new chroot and loaded by its paths there; the vsock
    // socket moves to this chroot's /vsock.sock.
    let jail = jailer::Jail::prepare_restore(
        jailer_config,
        &opts.binary,
        opts.seccomp_filter.as_deref(),
        config,
        dir,
        files,
    )?;
    let uds = socket_path(jail.host_path(Path::new(jailer::VSOCK_IN_JAIL)))?;
    let vsock = Vsock::new(config.vsock.guest_cid, &uds, AGENT_VSOCK_PORT);
    let mut fc = spawn_in(opts, dir, vsock, Some(&jail)).await?;
    fc.jail = Some(jail);
    let inside = SnapshotFiles {
        state: jailer::VMSTATE_IN_JAIL.into(),
        memory: jailer::MEMORY_IN_JAIL.into(),
    };
    load_snapshot(&fc.api, &inside, Path::new(jailer::VSOCK_IN_JAIL), resume).await?;
    Ok(fc)
}
