//! Firecracker prototypes, through Firecracker's snapshot API.
//!
//! Build: cold boot, agent over the hybrid vsock, `true`, session closed,
//! `PATCH /vm` Paused, `PUT /snapshot/create` (full snapshot: microVM state
//! plus guest memory) into the prototype's build directory, kill. Restore: a
//! fresh process in the clone's own runtime directory, `PUT /snapshot/load`
//! with the vsock host socket moved into that directory (`vsock_override`, so
//! clones of one snapshot never share a socket), `PATCH /vm` Resumed, agent,
//! reseed. Firecracker snapshots keep the vsock device, so no second
//! transport is needed as under QEMU.
//!
//! Checked only against a fake Firecracker that follows its API description
//! (tests/firecracker_prototype.rs): Firecracker cannot run on the
//! development machines.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Built, Prototype};
use crate::vm::backend::BackendKind;
use crate::vm::config::{VmConfig, VsockConfig};
use crate::vm::firecracker::{self, FirecrackerOptions, SnapshotFiles};
use crate::vm::runtime::{self, RuntimeDir};
use crate::vm::{SpawnTimings, VmError, VmHandle, VmInstance};

/// The microVM state (`snapshot_path`), small.
pub const VMSTATE_FILE: &str = "snapshot.vmstate";
/// The guest memory (`mem_file_path`), as large as the VM's memory.
pub const MEMORY_FILE: &str = "snapshot.mem";

/// The snapshot files of a Firecracker prototype.
pub fn snapshot_files(proto: &Prototype) -> SnapshotFiles {
    SnapshotFiles {
        state: proto.dir.join(VMSTATE_FILE),
        memory: proto.dir.join(MEMORY_FILE),
    }
}

/// Boots `config` (already named for the build) under Firecracker, runs
/// `true`, pauses and writes a full snapshot into `out`.
pub(super) async fn build(config: &VmConfig, out: &Path) -> Result<Built, VmError> {
    let opts = FirecrackerOptions::from_env()?;
    // The build VM's socket goes into its own runtime directory: a path from
    // the config would be recorded in the snapshot as the socket of every
    // clone (each clone gets its own through `vsock_override` anyway).
    let config = VmConfig {
        vsock: VsockConfig {
            uds_path: None,
            ..config.vsock.clone()
        },
        ..config.clone()
    };
    let dir = RuntimeDir::create(&runtime::runtime_root(), &config.id).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            VmError::AlreadyRunning(config.id.clone())
        } else {
            super::io("creating the prototype's runtime directory")(e)
        }
    })?;
    let t0 = Instant::now();
    let mut fc = firecracker::launch_in(&opts, &config, &dir).await?;
    let agent = crate::vm::connect_agent(&mut fc, config.boot_timeout_ms).await?;
    super::prove_agent_runs(&agent).await?;
    let boot_ms = t0.elapsed().as_millis() as u64;
    // No host connection may be open in the snapshot: each clone starts with
    // a fresh session on its own socket.
    drop(agent);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t1 = Instant::now();
    fc.pause().await?;
    let files = SnapshotFiles {
        state: out.join(VMSTATE_FILE),
        memory: out.join(MEMORY_FILE),
    };
    fc.create_snapshot(&files).await?;
    let snapshot_ms = t1.elapsed().as_millis() as u64;
    fc.kill();
    drop(fc);
    drop(dir);
    Ok(Built {
        files: vec![VMSTATE_FILE, MEMORY_FILE],
        boot_ms,
        snapshot_ms,
    })
}

/// Loads the prototype's snapshot into a fresh Firecracker process in the
/// clone's own runtime directory (`config.id`), resumes it, connects the
/// agent and reseeds the guest.
pub(super) async fn restore(proto: &Prototype, config: &VmConfig) -> Result<VmHandle, VmError> {
    let t0 = Instant::now();
    let opts = FirecrackerOptions::from_env()?;
    let files = snapshot_files(proto);
    // Loaded paused and resumed explicitly, so a refused resume is reported
    // as such rather than as a failed load.
    let mut fc =
        firecracker::restore_firecracker_in(&opts, config, &runtime::runtime_root(), &files, false)
            .await?;
    fc.resume().await?;
    let launched = t0.elapsed();
    let agent = crate::vm::connect_agent(&mut fc, config.boot_timeout_ms).await?;
    super::reseed(&agent).await?;
    let total = t0.elapsed();
    let timings = SpawnTimings {
        launch: launched,
        boot: total - launched,
        total,
    };
    // Taken only now: until here dropping `fc` on an error killed the process
    // before removing its directory.
    let Some(dir) = fc.take_runtime_dir() else {
        return Err(VmError::Backend(format!(
            "the restored Firecracker process of {} does not own its runtime directory",
            config.id
        )));
    };
    tracing::info!(vm = %config.id, ?timings, prototype = %proto.meta.key, "clone ready");
    Ok(VmHandle {
        id: config.id.clone(),
        backend: BackendKind::Firecracker,
        accel: fc.accel(),
        timings,
        agent,
        instance: Box::new(fc),
        dir,
    })
}
