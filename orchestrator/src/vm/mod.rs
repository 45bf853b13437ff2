//! The VM lifecycle: validated config → backend → guest channel → agent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ironclaw_orchestrator::vm::VmError> {
//! use ironclaw_orchestrator::vm;
//! let vm = vm::spawn_vm("task-42").await?;
//! let out = vm.agent().run(vm::exec_request(["uname", "-r"]), None).await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! vm::destroy_vm(vm).await?;
//! # Ok(()) }
//! ```

pub mod accel;
pub mod backend;
pub mod channel;
pub mod config;
pub mod confine;
pub mod firecracker;
pub mod pool;
pub mod process;
pub mod prototype;
pub mod qemu;
pub mod qmp;
pub mod rootfs_args;
pub mod runtime;
pub mod vsock;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::agent::{AgentClient, AgentError, ExecOutput};
pub use accel::Accel;
pub use backend::{BackendKind, Hypervisor, VmInstance};
pub use config::{ConfigError, VmConfig};
// The architecture names `vm::seccomp`; `vm::jail` and `vm::cgroup` are kept
// beside it so that callers need not know the folder.
pub use confine::{cgroup, jail, seccomp};
pub use ironclaw_protocol::{ExecRequest, ExitStatus};

use runtime::RuntimeDir;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("a VM with id {0:?} is already running (its runtime directory exists)")]
    AlreadyRunning(String),
    #[error("{tool} not found; {hint}")]
    MissingTool { tool: String, hint: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("VMM failed: {0}")]
    Backend(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("the guest agent did not answer within {timeout_ms} ms ({last_error}); serial console tail:\n{console_tail}")]
    BootTimeout {
        timeout_ms: u64,
        last_error: String,
        console_tail: String,
    },
    #[error("the VM stopped during boot ({status}); serial console tail:\n{console_tail}")]
    BootFailed {
        status: String,
        console_tail: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("image: {0}")]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl VmError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> VmError {
        VmError::Io {
            context: context.into(),
            source,
        }
    }
}

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
    /// The seccomp audit log (audit level only).
    pub fn audit_log(&self) -> Option<std::sync::Arc<seccomp::AuditLog>> {
        self.instance.audit_log()
    }
    /// Opens a new agent session on the VM's channel (tests use this to speak
    /// raw frames to the agent).
    pub async fn open_channel(&self) -> std::io::Result<channel::BoxedStream> {
        self.instance.channel().open().await
    }
}

/// An [`ExecRequest`] for `argv` with defaults for everything else.
pub fn exec_request<I, S>(argv: I) -> ExecRequest
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    ExecRequest {
        argv: argv.into_iter().map(Into::into).collect(),
        ..Default::default()
    }
}

/// The default config for a VM named `task_id`: the host's kernel and the
/// generated default initramfs (built on first use).
pub fn default_config(task_id: &str) -> Result<VmConfig, VmError> {
    let kernel = crate::image::default_kernel()?;
    let initramfs = crate::image::default_initramfs(&kernel)?;
    Ok(VmConfig::new(task_id, kernel, initramfs))
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
    let t0 = Instant::now();
    let config = VmConfig {
        id: task_id.to_string(),
        ..config.clone()
    };
    config.validate()?;
    runtime::reap_stale_once();
    let backend = backend::select_for(config.backend, config.accel)?;
    let dir = create_runtime_dir(&config.id)?;
    let mut instance = backend.launch(&config, &dir).await?;
    let launched = t0.elapsed();
    let agent = connect_agent(instance.as_mut(), config.boot_timeout_ms).await?;
    let total = t0.elapsed();
    let timings = SpawnTimings {
        launch: launched,
        boot: total - launched,
        total,
    };
    tracing::info!(vm = %config.id, ?timings, kernel = %agent.kernel_release(), "VM ready");
    Ok(VmHandle {
        id: config.id,
        backend: backend.kind(),
        accel: instance.accel(),
        timings,
        agent,
        instance,
        dir,
    })
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
            console_tail: qemu::tail(&console, 3000),
        })
    };
    let timed_out = |last_error: String| VmError::BootTimeout {
        timeout_ms: boot_timeout_ms,
        last_error,
        console_tail: qemu::tail(&console, 3000),
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
    .map_err(|e| VmError::Backend(format!("destroy task failed: {e}")))?
}
