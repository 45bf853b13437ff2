//! The launch sequence, written once: prepare the [`Placement`] (direct, or a
//! jail holding the files), bind the agent's ready socket, spawn Firecracker,
//! then either configure and start the VM (cold boot) or load a snapshot
//! (restore). Direct and jailed launches differ only in what [`Placement`]
//! answers.

use std::path::Path;

use ironclaw_protocol::{AGENT_READY_PORT, AGENT_VSOCK_PORT};

use super::super::config::VmConfig;
use super::super::runtime::RuntimeDir;
use super::super::seccomp::SeccompLevel;
use super::super::vsock::Vsock;
use super::actions::{configure_vm, load_snapshot, start_instance};
use super::error::FirecrackerError;
use super::files::SnapshotFiles;
use super::options::FirecrackerOptions;
use super::placement::{Placement, Purpose};
use super::process::{spawn_in, FirecrackerProcess};

/// Starts, configures and boots the VM of (validated) `config` in `dir`.
/// On error the process is killed; `dir` is the caller's to remove.
pub async fn launch_in(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    dir: &RuntimeDir,
) -> Result<FirecrackerProcess, FirecrackerError> {
    start(opts, config, dir, Purpose::Boot).await
}

/// [`super::restore_firecracker_in`] into the caller's runtime directory
/// `dir`. On error the process is killed; `dir` is the caller's to remove.
pub async fn restore_in(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    dir: &RuntimeDir,
    files: &SnapshotFiles,
    resume: bool,
) -> Result<FirecrackerProcess, FirecrackerError> {
    start(opts, config, dir, Purpose::Restore { files, resume }).await
}

/// [`start`] in a runtime directory of its own, created under `root` and
/// owned by the process (removed with it).
pub(super) async fn start_in_new_dir(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    root: &Path,
    purpose: Purpose<'_>,
) -> Result<FirecrackerProcess, FirecrackerError> {
    // Before anything exists on disk: a refused config or a missing jailer
    // leaves no trace.
    config.validate()?;
    opts.check()?;
    let dir = create_dir(root, &config.id)?;
    // On error `dir` is dropped here, after the process was killed.
    let mut fc = start(opts, config, &dir, purpose).await?;
    fc.dir = Some(dir);
    Ok(fc)
}

fn create_dir(root: &Path, id: &str) -> Result<RuntimeDir, FirecrackerError> {
    RuntimeDir::create(root, id).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            FirecrackerError::AlreadyRunning(id.into())
        } else {
            FirecrackerError::io(
                format!("creating the runtime directory under {}", root.display()),
                e,
            )
        }
    })
}

/// The checks, then the sequence: placement, vsock socket (and, for a boot,
/// the ready socket the agent announces itself on), spawn, API calls.
async fn start(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    dir: &RuntimeDir,
    purpose: Purpose<'_>,
) -> Result<FirecrackerProcess, FirecrackerError> {
    config.validate()?;
    // Strict keeps Firecracker's built-in per-thread filters (or the custom
    // file of the options, passed as --seccomp-filter); there is no audit mode.
    if matches!(purpose, Purpose::Boot) && config.confinement.seccomp == SeccompLevel::Audit {
        return Err(FirecrackerError::SeccompAuditUnsupported);
    }
    // Before anything is created: a missing jailer starts nothing.
    opts.check()?;
    let placement = Placement::prepare(opts, config, dir, purpose)?;
    // A booted VM's socket may come from the config; a restored one's is
    // always new (each clone of one snapshot needs its own).
    let requested = match purpose {
        Purpose::Boot => config.vsock.uds_path.as_deref(),
        Purpose::Restore { .. } => None,
    };
    let uds = placement.vsock_socket(dir, requested)?;
    let vsock = Vsock::new(config.vsock.guest_cid, &uds, AGENT_VSOCK_PORT);
    let ready = match purpose {
        Purpose::Boot => {
            let ready = vsock
                .bind_ready_listener()
                .map_err(|e| FirecrackerError::io("binding the agent's ready socket", e))?;
            // Firecracker (as the jail uid, when jailed) connects to it for
            // guest-initiated vsock.
            placement.give(&vsock.guest_initiated_path(AGENT_READY_PORT))?;
            Some(ready)
        }
        // The restored agent is already running: nothing to announce.
        Purpose::Restore { .. } => None,
    };
    // On an error below, `fc` is dropped (the process killed) before
    // `placement` (the jail removed).
    let mut fc = spawn_in(opts, dir, vsock, &placement).await?;
    fc.ready = ready;
    let vsock_in_vmm = placement.vsock_in_vmm(&uds);
    match purpose {
        Purpose::Boot => {
            configure_vm(&fc.api, &placement.api_config(config), vsock_in_vmm).await?;
            start_instance(&fc.api).await?;
        }
        Purpose::Restore { files, resume } => {
            let files = placement.snapshot_in_vmm(files);
            load_snapshot(&fc.api, &files, vsock_in_vmm, resume).await?;
        }
    }
    fc.jail = placement.into_jail();
    Ok(fc)
}
