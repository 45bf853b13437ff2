//! QEMU prototypes: virtio-serial transport (QEMU refuses to migrate a VM
//! with a vhost-user-vsock device), QMP `stop` + `migrate` to a file to build,
//! `-incoming fd:3` + `cont` to restore.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Built, Prototype, SNAPSHOT_FILE};
use crate::vm::backend::BackendKind;
use crate::vm::config::VmConfig;
use crate::vm::qemu::{LaunchOptions, QemuBackend, Transport};
use crate::vm::runtime::{self, RuntimeDir};
use crate::vm::{SpawnTimings, VmError, VmHandle, VmInstance};

/// Boots `config` (already named for the build), runs `true`, and migrates
/// the paused VM into `out/snapshot.bin`.
pub(super) async fn build(config: &VmConfig, out: &Path) -> Result<Built, VmError> {
    let backend = QemuBackend::from_env()?;
    let dir = RuntimeDir::create(&runtime::runtime_root(), &config.id)
        .map_err(super::io("creating the prototype's runtime directory"))?;
    let t0 = Instant::now();
    let opts = LaunchOptions {
        transport: Transport::Serial,
        incoming: None,
    };
    let mut inst = backend.launch_with(config, &dir, &opts).await?;
    let agent = crate::vm::connect_agent(&mut inst, config.boot_timeout_ms).await?;
    super::prove_agent_runs(&agent).await?;
    let boot_ms = t0.elapsed().as_millis() as u64;
    // Closing the session lets the agent wait for the next host; a clone's
    // first hello also resets a session that was still open.
    drop(agent);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t1 = Instant::now();
    let snap = out.join(SNAPSHOT_FILE);
    inst.snapshot_to(&snap).await?;
    let snapshot_ms = t1.elapsed().as_millis() as u64;
    inst.kill();
    drop(inst);
    drop(dir);
    Ok(Built {
        files: vec![SNAPSHOT_FILE],
        boot_ms,
        snapshot_ms,
    })
}

/// Starts QEMU with the prototype's snapshot as `-incoming`, each clone with
/// its own runtime directory, QMP socket and serial socket.
pub(super) async fn restore(proto: &Prototype, config: &VmConfig) -> Result<VmHandle, VmError> {
    let t0 = Instant::now();
    let backend = QemuBackend::from_env()?;
    let dir = crate::vm::create_runtime_dir(&config.id)?;
    let opts = LaunchOptions {
        transport: Transport::Serial,
        incoming: Some(proto.snapshot()),
    };
    let mut inst = backend.launch_with(config, &dir, &opts).await?;
    let launched = t0.elapsed();
    let agent = crate::vm::connect_agent(&mut inst, config.boot_timeout_ms).await?;
    super::reseed(&agent).await?;
    let total = t0.elapsed();
    let timings = SpawnTimings {
        launch: launched,
        boot: total - launched,
        total,
    };
    tracing::info!(vm = %config.id, ?timings, prototype = %proto.meta.key, "clone ready");
    Ok(VmHandle {
        id: config.id.clone(),
        backend: BackendKind::Qemu,
        accel: inst.accel(),
        timings,
        agent,
        instance: Box::new(inst),
        dir,
    })
}
