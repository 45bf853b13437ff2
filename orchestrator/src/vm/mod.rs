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
pub mod cmdline;
pub mod config;
pub mod confine;
pub mod console;
mod error;
pub mod firecracker;
pub mod host;
pub mod pool;
pub mod process;
pub mod prototype;
pub mod qemu;
pub mod qmp;
pub mod runtime;
pub mod select;
pub mod snapshot_files;
mod spawn;
mod tsc;
pub mod vsock;

pub use crate::agent::{AgentClient, AgentError, ExecOutput};
pub use accel::Accel;
pub use backend::{BackendKind, Hypervisor, LiveCopy, LiveSnapshot, VmInstance};
pub use config::{ConfigError, VmConfig};
// The architecture names `vm::seccomp`; `vm::jail` and `vm::cgroup` are kept
// beside it so that callers need not know the folder.
pub use confine::{cgroup, jail, seccomp};
pub use error::VmError;
pub use ironclaw_protocol::{ExecRequest, ExitStatus};
pub use spawn::{destroy_vm, restore_vm, spawn_vm, spawn_vm_with_config, SpawnTimings, VmHandle};

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
    let kernel = crate::boot::kernel::default_kernel()?;
    let initramfs = crate::boot::initramfs::default_initramfs(&kernel)?;
    Ok(VmConfig::new(task_id, kernel, initramfs))
}
