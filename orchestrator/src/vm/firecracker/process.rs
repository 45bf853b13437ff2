//! A running Firecracker process ([`FirecrackerProcess`]): started by
//! [`spawn_in`] (directly or through the jailer), stopped, killed, and seen by
//! the rest of the orchestrator as a [`VmInstance`].

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::super::accel::Accel;
use super::super::backend::{LiveCopy, LiveSnapshot, VmInstance};
use super::super::channel::GuestChannel;
use super::super::host::{self, SocketReady, SocketWaitError};
use super::super::process::{self, spawn_child};
use super::super::runtime::RuntimeDir;
use super::super::vsock::Vsock;
use super::super::VmError;
use super::actions::{create_snapshot, pause_vm, resume_vm, send_ctrl_alt_del};
use super::api;
use super::client::ApiClient;
use super::error::FirecrackerError;
use super::files::{SnapshotFiles, CONSOLE_LOG, MEMORY_FILE, VMSTATE_FILE};
use super::jailer::{self, JailerError};
use super::options::FirecrackerOptions;
use super::placement::Placement;

/// How long the process gets to create its API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// How long [`FirecrackerProcess::stop`] waits after Ctrl-Alt-Del by default.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// How [`FirecrackerProcess::stop`] ended the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// It had already exited, or exited after Ctrl-Alt-Del within the bound.
    Exited(String),
    /// It was killed: Ctrl-Alt-Del failed or the bound passed.
    Killed { reason: String },
}

/// A running Firecracker process and its API client. Dropping it kills the
/// process and, when it owns its runtime directory ([`super::start_firecracker`]),
/// removes that directory.
pub struct FirecrackerProcess {
    pub(super) child: Child,
    pub(super) api: ApiClient,
    pub(super) vsock: Arc<Vsock>,
    pub(super) console: PathBuf,
    pub(super) dir_path: PathBuf,
    /// Where the agent announces it listens (guest-initiated vsock lands on
    /// `<uds_path>_<port>`, as with vhost-device-vsock).
    pub(super) ready: Option<tokio::net::UnixListener>,
    /// The jailer's chroot, cgroups and network namespace; dropped (removed)
    /// after `Drop::drop` has killed the process.
    pub(super) jail: Option<jailer::Jail>,
    // Declared last so it is removed after `Drop::drop` has killed the process.
    pub(super) dir: Option<RuntimeDir>,
}

impl std::fmt::Debug for FirecrackerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirecrackerProcess")
            .field("pid", &self.child.id())
            .field("api", &self.api.socket())
            .field("vsock", &self.vsock.uds_path)
            .finish()
    }
}

impl FirecrackerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn api(&self) -> &ApiClient {
        &self.api
    }
    /// The hybrid vsock of the guest (agent port [`ironclaw_protocol::AGENT_VSOCK_PORT`]).
    pub fn vsock(&self) -> Arc<Vsock> {
        self.vsock.clone()
    }
    pub fn runtime_dir(&self) -> &Path {
        &self.dir_path
    }
    pub fn console_log(&self) -> &Path {
        &self.console
    }
    /// Hands over the runtime directory this process owns (after
    /// [`super::start_firecracker_in`] or [`super::restore_firecracker_in`]), so that a
    /// caller such as [`crate::vm::VmHandle`] can remove it after the process is
    /// gone. The process no longer removes it when dropped.
    pub fn take_runtime_dir(&mut self) -> Option<RuntimeDir> {
        self.dir.take()
    }
    pub async fn pause(&self) -> Result<(), FirecrackerError> {
        pause_vm(&self.api).await
    }
    pub async fn resume(&self) -> Result<(), FirecrackerError> {
        resume_vm(&self.api).await
    }
    /// Writes a full snapshot to `files` (host paths); the VM must be paused.
    /// A jailed Firecracker writes it inside its chroot, from where it is
    /// moved out ([`jailer::Jail::take_snapshot_out`]).
    pub async fn create_snapshot(&self, files: &SnapshotFiles) -> Result<(), FirecrackerError> {
        let Some(jail) = &self.jail else {
            return create_snapshot(&self.api, files).await;
        };
        let inside = jail.snapshot_dir()?;
        if let Err(e) = create_snapshot(&self.api, &inside).await {
            jail.discard_snapshot();
            return Err(e);
        }
        jail.take_snapshot_out(files)?;
        Ok(())
    }
    pub async fn describe(&self) -> Result<api::InstanceInfo, FirecrackerError> {
        self.api
            .describe_instance()
            .await
            .map_err(|source| FirecrackerError::Api {
                step: "describing the instance",
                source,
            })
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// Stops the VM: Ctrl-Alt-Del (the guest reboots, which ends Firecracker),
    /// then SIGKILL if the process has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Stopped {
        if let Some(status) = self.exit_status() {
            return Stopped::Exited(status);
        }
        let reason = match send_ctrl_alt_del(&self.api).await {
            Ok(()) => {
                let child = &mut self.child;
                let exited = process::poll_until(grace, || match child.try_wait() {
                    Ok(Some(status)) => Some(status.to_string()),
                    _ => None,
                })
                .await;
                if let Some(status) = exited {
                    return Stopped::Exited(status);
                }
                format!("still running {grace:?} after Ctrl-Alt-Del")
            }
            Err(e) => e.to_string(),
        };
        process::kill_and_reap(&mut self.child);
        Stopped::Killed { reason }
    }

    /// The jail, when Firecracker runs under the jailer.
    pub fn jail(&self) -> Option<&jailer::Jail> {
        self.jail.as_ref()
    }

    /// SIGKILLs the process and reaps it, then removes its jail (chroot,
    /// cgroups). Idempotent.
    pub fn kill(&mut self) {
        process::kill_and_reap(&mut self.child);
        self.jail = None;
    }
}

impl Drop for FirecrackerProcess {
    fn drop(&mut self) {
        self.kill();
        // A vsock socket placed outside the runtime directory (config
        // `vsock.uds_path`) is not removed with it; Firecracker leaves it behind.
        if !self.vsock.uds_path.starts_with(&self.dir_path) {
            let _ = std::fs::remove_file(&self.vsock.uds_path);
        }
    }
}

#[async_trait]
impl VmInstance for FirecrackerProcess {
    async fn snapshot(&mut self, out: &Path) -> Result<Vec<String>, VmError> {
        self.pause().await?;
        let files = SnapshotFiles {
            state: out.join(VMSTATE_FILE),
            memory: out.join(MEMORY_FILE),
        };
        self.create_snapshot(&files).await?;
        Ok(vec![VMSTATE_FILE.into(), MEMORY_FILE.into()])
    }
    /// Firecracker has no pre-copy: the guest is paused for the whole
    /// write, whatever `copy` asks.
    async fn snapshot_live(&self, out: &Path, _copy: LiveCopy) -> Result<LiveSnapshot, VmError> {
        self.pause().await?;
        let paused = Instant::now();
        let files = SnapshotFiles {
            state: out.join(VMSTATE_FILE),
            memory: out.join(MEMORY_FILE),
        };
        let written = self.create_snapshot(&files).await;
        // Runs on whether or not the snapshot was written.
        self.resume().await?;
        let paused = paused.elapsed();
        written?;
        Ok(LiveSnapshot {
            files: vec![VMSTATE_FILE.into(), MEMORY_FILE.into()],
            paused,
        })
    }
    fn accel(&self) -> Accel {
        // Firecracker has no emulator: it always runs on KVM.
        Accel::Kvm
    }
    fn channel(&self) -> Arc<dyn GuestChannel> {
        self.vsock.clone()
    }
    fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }
    fn console_log(&self) -> PathBuf {
        self.console.clone()
    }
    fn exited(&mut self) -> Option<String> {
        self.exit_status()
            .map(|s| format!("firecracker exited: {s}"))
    }
    fn take_ready_listener(&mut self) -> Option<tokio::net::UnixListener> {
        self.ready.take()
    }
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.jail
            .as_ref()
            .map(|j| j.cgroup_dirs().to_vec())
            .unwrap_or_default()
    }
    fn kill(&mut self) {
        // Destroying a VM kills without Ctrl-Alt-Del: the guest has nothing to
        // flush (its rootfs is read-only) and destroy must be quick and total.
        // `stop` is the graceful path.
        FirecrackerProcess::kill(self);
    }
}

/// Starts a Firecracker process in `dir` (directly or through the jailer, as
/// `placement` says) and waits for its API socket. The VM is not configured yet.
pub(super) async fn spawn_in(
    opts: &FirecrackerOptions,
    dir: &RuntimeDir,
    vsock: Vsock,
    placement: &Placement,
) -> Result<FirecrackerProcess, FirecrackerError> {
    let (api_socket, log, mut cmd) = placement.command(opts, dir)?;
    let jail = placement.jail();
    let console = dir.file(CONSOLE_LOG);
    // Appended to, so the orchestrator can empty it (vm::console keeps it bounded).
    let console_file = crate::vm::console::create_for_append(&console)
        .map_err(|e| FirecrackerError::io(format!("creating {}", console.display()), e))?;
    let stderr = console_file
        .try_clone()
        .map_err(|e| FirecrackerError::io("duplicating the console file", e))?;
    // The guest's serial console goes to stdout; stdin stays closed so the
    // guest reads nothing from the orchestrator's terminal.
    cmd.stdin(Stdio::null()).stdout(console_file).stderr(stderr);
    tracing::debug!(cmd = ?cmd, "starting firecracker");
    let child = spawn_child(cmd).map_err(|source| FirecrackerError::Spawn {
        binary: jail.map_or(opts.binary.clone(), |j| j.jailer().to_path_buf()),
        source,
    })?;
    let mut fc = FirecrackerProcess {
        child,
        api: ApiClient::new(&api_socket),
        vsock: Arc::new(vsock),
        console,
        dir_path: dir.path().to_path_buf(),
        ready: None,
        jail: None,
        dir: None,
    };
    // From here on, dropping `fc` on an error kills the process.
    dir.record_pid(fc.pid())
        .map_err(|e| FirecrackerError::io("recording the firecracker pid", e))?;
    if jail.is_some() {
        // The jailed Firecracker's command line names only its chroot, and the
        // uid change clears its death signal: reaping finds it by pid and
        // start time instead.
        dir.record_pid_started(fc.pid())
            .map_err(|e| FirecrackerError::io("recording the jailed firecracker pid", e))?;
    }
    // The socket file appears at bind(), before listen(): until a connection
    // is accepted, the first request could be refused.
    let jailed = jail.is_some();
    let waited = host::wait_for_socket(
        &mut fc,
        &api_socket,
        SocketReady::Accepting,
        SOCKET_WAIT,
        |fc| fc.exit_status(),
        |fc| {
            if jailed {
                format!(
                    "{} / firecracker log: {}",
                    host::tail(&fc.console, 1500),
                    host::tail(&log, 1500)
                )
            } else {
                format!(
                    "{} / console: {}",
                    host::tail(&log, 1500),
                    host::tail(&fc.console, 1500)
                )
            }
        },
    )
    .await;
    match waited {
        Ok(()) => Ok(fc),
        Err(SocketWaitError::Exited { status, log_tail }) if jailed => Err(JailerError::Exited {
            step: jailer::JailerStep::RunJailer,
            jailer: jail.map(|j| j.jailer().to_path_buf()).unwrap_or_default(),
            status,
            socket: api_socket,
            output: log_tail,
        }
        .into()),
        Err(SocketWaitError::Exited { status, log_tail }) => Err(FirecrackerError::ExitedEarly {
            status,
            socket: api_socket,
            log_tail,
        }),
        Err(SocketWaitError::TimedOut { waited }) => Err(FirecrackerError::SocketTimeout {
            socket: api_socket,
            waited,
        }),
    }
}
