//! Starting a VM (cold, or from a snapshot), connecting its agent, and
//! destroying it: the one place a [`VmHandle`] is put together.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::backend::{Hypervisor, LaunchPurpose, LiveCopy, LiveSnapshot};
use super::config::{self, VmConfig};
use super::runtime::{self, RuntimeDir};
use super::{cgroup, channel, default_config, host, jail, seccomp};
use super::{Accel, AgentClient, BackendKind, VmError, VmInstance};

/// How long the steps of a spawn took.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SpawnTimings {
    /// Starting the VMM processes.
    pub launch: Duration,
    /// From launch until the guest agent answered the hello.
    pub boot: Duration,
    /// The whole spawn.
    pub total: Duration,
}

/// A running VM with a connected guest agent. Dropping it kills the VM and
/// removes its files; [`destroy_vm`] does the same explicitly.
pub struct VmHandle {
    pub id: String,
    pub backend: BackendKind,
    pub accel: Accel,
    pub timings: SpawnTimings,
    agent: AgentClient,
    // Field order matters: the instance (processes) goes before the directory.
    instance: Box<dyn VmInstance>,
    dir: RuntimeDir,
}

impl VmHandle {
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    /// Host pids of the VM's processes (VMM and device helpers).
    pub fn pids(&self) -> Vec<u32> {
        self.instance.pids()
    }
    pub fn console_log(&self) -> PathBuf {
        self.instance.console_log()
    }
    /// What confines each of the VM's host processes, read from `/proc` now.
    pub fn confinement(&self) -> Vec<jail::ProcessConfinement> {
        self.instance.confinement()
    }
    /// Sets the VM's CPU weight against other VMs (see
    /// [`cgroup::CpuWeight`]); a VM without a jail has no cgroup to weigh.
    pub fn set_cpu_weight(&self, weight: cgroup::CpuWeight) -> Result<(), VmError> {
        let dirs = self.instance.cgroup_dirs();
        if dirs.is_empty() {
            return Ok(());
        }
        cgroup::set_cpu_weight(&dirs, weight).map_err(|e| VmError::Jail(e.into()))
    }
    /// The seccomp audit log (audit level only).
    pub fn audit_log(&self) -> Option<std::sync::Arc<seccomp::AuditLog>> {
        self.instance.audit_log()
    }
    /// Opens a new agent session on the VM's channel (tests use this to speak
    /// raw frames to the agent).
    pub async fn open_channel(&self) -> std::io::Result<channel::BoxedStream> {
        self.instance.channel().open().await
    }

    /// Writes a snapshot of the running VM into the empty directory `out`;
    /// the VM runs on, paused only while its state is written (memory copied
    /// as `copy` says). The agent session stays open: a VM restored from the
    /// snapshot starts a new one (the guest agent ends the requests of the
    /// old session then, and keeps the processes that outlived their
    /// requests).
    pub async fn snapshot_live(&self, out: &Path, copy: LiveCopy) -> Result<LiveSnapshot, VmError> {
        self.instance.snapshot_live(out, copy).await
    }

    /// Closes the agent session, pauses the VM, writes its snapshot into the
    /// empty directory `out` and destroys the VM. Returns the snapshot's file
    /// names, main file first.
    pub(crate) async fn into_snapshot(self, out: &Path) -> Result<Vec<String>, VmError> {
        let VmHandle {
            agent,
            mut instance,
            dir,
            ..
        } = self;
        // No host connection may be open in the snapshot: every VM restored
        // from it starts with a fresh session on its own channel.
        drop(agent);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let files = instance.snapshot(out).await;
        tokio::task::spawn_blocking(move || {
            instance.kill();
            drop(instance);
            drop(dir);
        })
        .await
        .map_err(|e| VmError::TaskFailed(format!("destroying the VM: {e}")))?;
        files
    }
}

/// Starts a VM named `config.id` from the snapshot `files` (main file first,
/// checked by the caller) on the backend `config` names, with fresh entropy
/// and the current time. `config` must describe the snapshotted machine
/// (kernel, initramfs, rootfs, vCPUs, memory, accelerator).
pub async fn restore_vm(config: &VmConfig, files: &[PathBuf]) -> Result<VmHandle, VmError> {
    config.validate()?;
    runtime::reap_stale_once();
    let backend = super::select::select_for(config.backend, config.accel)?;
    start_vm(backend.as_ref(), config, Start::Restore(files)).await
}

/// Spawns a VM with the default config.
pub async fn spawn_vm(task_id: &str) -> Result<VmHandle, VmError> {
    config::validate_id(task_id)?;
    let config = default_config(task_id)?;
    spawn_vm_with_config(task_id, &config).await
}

/// Spawns a VM named `task_id` (which replaces `config.id`) as `config` says.
/// The config is validated before any process starts.
pub async fn spawn_vm_with_config(task_id: &str, config: &VmConfig) -> Result<VmHandle, VmError> {
    let config = VmConfig {
        id: task_id.to_string(),
        ..config.clone()
    };
    config.validate()?;
    runtime::reap_stale_once();
    let backend = super::select::select_for(config.backend, config.accel)?;
    start_vm(backend.as_ref(), &config, Start::Boot(LaunchPurpose::Run)).await
}

/// How a VM comes to life.
pub(crate) enum Start<'a> {
    /// A cold boot, for what the VM will be used for.
    Boot(LaunchPurpose),
    /// From the files a snapshot of this backend wrote (main file first).
    /// Either way the guest gets fresh entropy and the current time before
    /// it is used.
    Restore(&'a [PathBuf]),
}

/// Starts the VM of (validated) `config` on `backend` in a runtime directory
/// of its own and connects its agent. On error nothing is left behind.
pub(crate) async fn start_vm(
    backend: &dyn Hypervisor,
    config: &VmConfig,
    start: Start<'_>,
) -> Result<VmHandle, VmError> {
    let t0 = Instant::now();
    let dir = create_runtime_dir(&config.id)?;
    let (mut instance, restored_from) = match start {
        Start::Boot(purpose) => (backend.launch(config, &dir, purpose).await?, None),
        Start::Restore(files) => {
            let main = files.first().cloned().unwrap_or_default();
            let instance = backend
                .restore(config, &dir, files)
                .await
                .map_err(|e| restore_failed(&main, e))?;
            (instance, Some(main))
        }
    };
    let launched = t0.elapsed();
    super::console::watch(instance.console_log());
    let agent = match connect_agent(instance.as_mut(), config.boot_timeout_ms).await {
        Ok(agent) => agent,
        Err(e) => {
            return Err(match &restored_from {
                Some(snapshot) => restore_failed(snapshot, e),
                None => e,
            })
        }
    };
    // Every VM gets entropy from the host before its first command: a
    // restored one so that clones of one snapshot diverge, a booted one
    // because its kernel has no source of its own that initialises the CRNG
    // (no virtio-rng, no RDRAND under TCG, no seed through PVH boot), and a
    // blocking `getrandom` (Python's `random`, OpenSSL) would otherwise spin
    // in the kernel's jitter fallback, under TCG for minutes.
    reseed(&agent).await?;
    let total = t0.elapsed();
    let timings = SpawnTimings {
        launch: launched,
        boot: total - launched,
        total,
    };
    tracing::info!(vm = %config.id, ?timings, restored = restored_from.is_some(), kernel = %agent.kernel_release(), "VM ready");
    Ok(VmHandle {
        id: config.id.clone(),
        backend: backend.kind(),
        accel: instance.accel(),
        timings,
        agent,
        instance,
        dir,
    })
}

/// A failure to restore that points at the snapshot (the VMM refused it, or
/// the guest in it never answered) becomes [`VmError::RestoreFailed`]; one
/// with another cause (a missing tool, a refused config, the host's files)
/// stays what it is, so a caller rebuilds a snapshot only when that helps.
fn restore_failed(snapshot: &Path, e: VmError) -> VmError {
    match e {
        VmError::Qemu(_)
        | VmError::Firecracker(_)
        | VmError::BootTimeout { .. }
        | VmError::BootFailed { .. }
        | VmError::Agent(_) => VmError::RestoreFailed {
            snapshot: snapshot.to_path_buf(),
            source: Box::new(e),
        },
        other => other,
    }
}

fn create_runtime_dir(id: &str) -> Result<RuntimeDir, VmError> {
    RuntimeDir::create(&runtime::runtime_root(), id).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            VmError::AlreadyRunning(id.to_string())
        } else {
            VmError::io(
                format!(
                    "creating runtime directory under {}",
                    runtime::runtime_root().display()
                ),
                e,
            )
        }
    })
}

/// Waits for the agent's ready notice (where the backend provides one), then
/// connects; retries until the agent answers its hello, the VM dies, or the
/// boot timeout passes.
async fn connect_agent(
    instance: &mut dyn VmInstance,
    boot_timeout_ms: u64,
) -> Result<AgentClient, VmError> {
    let channel = instance.channel();
    let deadline = Instant::now() + Duration::from_millis(boot_timeout_ms);
    let console = instance.console_log();
    let failed = |instance: &mut dyn VmInstance| {
        instance.exited().map(|status| VmError::BootFailed {
            status,
            console_tail: host::tail(&console, 3000),
        })
    };
    let timed_out = |last_error: String| VmError::BootTimeout {
        timeout_ms: boot_timeout_ms,
        last_error,
        console_tail: host::tail(&console, 3000),
    };
    if let Some(ready) = instance.take_ready_listener() {
        loop {
            if let Some(e) = failed(instance) {
                return Err(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(
                    "the agent never announced that it is listening".into(),
                ));
            }
            // Short waits so a VM that died is noticed promptly.
            if let Ok(accepted) =
                tokio::time::timeout(left.min(Duration::from_millis(100)), ready.accept()).await
            {
                accepted.map_err(|e| VmError::io("accepting the agent's ready notice", e))?;
                break;
            }
        }
    }
    let mut last_error = String::from("no attempt");
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(e) = failed(instance) {
            return Err(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(last_error));
        }
        match tokio::time::timeout(left, channel.open()).await {
            Ok(Ok(stream)) => match AgentClient::handshake(stream).await {
                Ok(agent) => return Ok(agent),
                Err(e) => last_error = e.to_string(),
            },
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = format!("{} did not connect", channel.describe()),
        }
        tracing::trace!(%last_error, "agent not reachable yet");
        // Back off: a flood of connection requests to a guest that is still
        // booting is what wedges a hybrid vsock device.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Destroys the VM: kills its processes, waits for them, removes its files.
pub async fn destroy_vm(handle: VmHandle) -> Result<(), VmError> {
    let VmHandle {
        agent,
        mut instance,
        dir,
        ..
    } = handle;
    drop(agent);
    // Killing and reaping blocks briefly; keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        instance.kill();
        drop(instance);
        let path = dir.path().to_path_buf();
        drop(dir);
        if path.exists() {
            return Err(VmError::io(
                format!("removing {}", path.display()),
                std::io::Error::other("directory still present"),
            ));
        }
        Ok(())
    })
    .await
    .map_err(|e| VmError::TaskFailed(format!("destroying the VM: {e}")))?
}

/// Entropy handed to a restored guest, so clones of one snapshot diverge.
const ENTROPY_BYTES: usize = 64;

/// Gives the guest fresh entropy and the current time.
pub async fn reseed(agent: &AgentClient) -> Result<(), VmError> {
    let mut entropy = vec![0u8; ENTROPY_BYTES];
    getrandom::getrandom(&mut entropy).map_err(|e| VmError::Randomness(e.to_string()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    agent.reseed(entropy, now).await?;
    Ok(())
}
