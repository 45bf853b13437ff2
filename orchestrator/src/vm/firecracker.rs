//! Firecracker backend: one `firecracker` process per VM, driven over its API
//! socket (`firecracker.sock` in the VM's runtime directory).
//!
//! [`start_firecracker`] validates the config, starts the process, waits for
//! the socket and then calls [`configure_vm`] (machine, boot source, optional
//! read-only rootfs drive, [`configure_vsock`]) and [`start_instance`]. The
//! guest agent is reached over Firecracker's hybrid vsock socket with the same
//! [`Vsock`] type as under QEMU.
//!
//! What is never done: no `/network-interfaces` request exists in [`api`], so
//! no path of this code can give a VM a network device; `--no-seccomp` is never
//! passed, so Firecracker always runs under its built-in seccomp filters (or
//! the filter file given with `--seccomp-filter`).
//!
//! With [`FirecrackerOptions::jailer`] set, Firecracker is started through
//! its `jailer` ([`jailer`]): chroot, unprivileged uid/gid, cgroup limits, an
//! empty network namespace. Every failing step stops the launch; it never
//! falls back to an unjailed Firecracker.

pub mod api;
pub mod client;
pub mod jailer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ironclaw_protocol::AGENT_VSOCK_PORT;

use super::accel::Accel;
use super::backend::{BackendKind, Capabilities, Hypervisor, LaunchPurpose, VmInstance};
use super::channel::GuestChannel;
use super::config::{ConfigError, VmConfig, MAX_SOCKET_PATH};
use super::process::{self, spawn_child};
use super::runtime::{self, RuntimeDir};
use super::vsock::Vsock;
use super::VmError;

pub use client::{ApiClient, ClientError};
pub use jailer::{JailerConfig, JailerError};

pub const FIRECRACKER_BINARY: &str = "firecracker";
/// The API socket's file name in the runtime directory.
pub const API_SOCKET: &str = "firecracker.sock";
/// The hybrid vsock socket's file name in the runtime directory (when the
/// config names none).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The guest's serial console: Firecracker writes the guest's ttyS0 to its stdout.
pub const CONSOLE_LOG: &str = "console.log";
/// Firecracker's own log (`--log-path`).
pub const FIRECRACKER_LOG: &str = "firecracker.log";
/// Drive id of the optional root file system image.
pub const ROOTFS_DRIVE_ID: &str = "rootfs";

/// How long the process gets to create its API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// Bound of snapshot calls: writing or mapping guest memory takes longer than
/// an ordinary API call.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`FirecrackerProcess::stop`] waits after Ctrl-Alt-Del by default.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("firecracker not found: set $IRONCLAW_FIRECRACKER or put `firecracker` on PATH (it needs a host with usable KVM)")]
    MissingBinary,
    #[error("refusing to run Firecracker as root without a jail: set $IRONCLAW_FIRECRACKER_JAILER to Firecracker's jailer (see docs/firecracker.md), or $IRONCLAW_FIRECRACKER_ALLOW_UNJAILED=1 to accept it running as root in the host's namespaces (its built-in seccomp filters still apply)")]
    UnjailedAsRoot,
    #[error("the seccomp filter file {path} given for Firecracker is not usable: {reason}")]
    SeccompFilter { path: PathBuf, reason: String },
    #[error("seccomp level audit is not implemented for Firecracker: its filters are built into it (strict, the default, keeps them); pass a custom filter file with $IRONCLAW_FIRECRACKER_SECCOMP_FILTER instead")]
    SeccompAuditUnsupported,
    #[error(transparent)]
    Jailer(#[from] JailerError),
    #[error("FirecrackerOptions::command starts Firecracker unjailed, but a jailer ({jailer}) is configured; launch through start_firecracker / the backend instead")]
    JailerBypassed { jailer: PathBuf },
    #[error("a VM with id {0:?} is already running (its runtime directory exists)")]
    AlreadyRunning(String),
    #[error("socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter runtime directory ($IRONCLAW_RUNTIME_DIR) or VM id")]
    SocketPathTooLong { path: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("firecracker ({binary}) could not be started: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firecracker exited ({status}) before creating its API socket {socket}; its log: {log_tail}")]
    ExitedEarly {
        status: String,
        socket: PathBuf,
        log_tail: String,
    },
    #[error("firecracker did not create its API socket {socket} within {waited:?}")]
    SocketTimeout { socket: PathBuf, waited: Duration },
    #[error("{step}: {source}")]
    Api {
        step: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("{step}: {source}")]
    Drive {
        step: &'static str,
        #[source]
        source: api::BadDriveId,
    },
}

impl FirecrackerError {
    fn io(context: impl Into<String>, source: std::io::Error) -> FirecrackerError {
        FirecrackerError::Io {
            context: context.into(),
            source,
        }
    }

    /// Firecracker's own explanation, when an API request was refused.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            FirecrackerError::Api { source, .. } => source.fault_message(),
            _ => None,
        }
    }
}

impl From<FirecrackerError> for VmError {
    fn from(e: FirecrackerError) -> VmError {
        match e {
            FirecrackerError::Config(c) => VmError::Config(c),
            FirecrackerError::UnjailedAsRoot => VmError::Unsupported(e.to_string()),
            FirecrackerError::MissingBinary => VmError::MissingTool {
                tool: FIRECRACKER_BINARY.into(),
                hint: "set $IRONCLAW_FIRECRACKER or put it on PATH; it needs a host with usable KVM (or use --backend qemu)".into(),
            },
            FirecrackerError::AlreadyRunning(id) => VmError::AlreadyRunning(id),
            other => VmError::Firecracker(Box::new(other)),
        }
    }
}

/// How Firecracker processes are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerOptions {
    /// The `firecracker` executable.
    pub binary: PathBuf,
    /// A custom seccomp filter (Firecracker's compiled BPF format), passed as
    /// `--seccomp-filter`. Without it Firecracker uses its built-in filters.
    pub seccomp_filter: Option<PathBuf>,
    /// Start Firecracker through its jailer (`$IRONCLAW_FIRECRACKER_JAILER`).
    pub jailer: Option<JailerConfig>,
}

/// How Firecracker is launched here, from the environment: `jailed` (with
/// `$IRONCLAW_FIRECRACKER_JAILER`) or `direct`. Part of a prototype's key: a
/// snapshot records the paths its VMM saw (a jailed one's are chroot paths),
/// so one taken one way cannot be loaded the other.
fn launch_kind(opts: &FirecrackerOptions) -> &'static str {
    if opts.jailer.is_some() {
        "jailed"
    } else {
        "direct"
    }
}

/// `$IRONCLAW_FIRECRACKER`, else `firecracker` on PATH.
pub fn find_binary() -> Option<PathBuf> {
    std::env::var_os("IRONCLAW_FIRECRACKER")
        .map(PathBuf::from)
        .or_else(|| super::host::which(FIRECRACKER_BINARY))
}

impl FirecrackerOptions {
    /// Options from the environment: the binary from `$IRONCLAW_FIRECRACKER`
    /// or PATH, a seccomp filter from `$IRONCLAW_FIRECRACKER_SECCOMP_FILTER`,
    /// the jailer from `$IRONCLAW_FIRECRACKER_JAILER` and friends
    /// ([`JailerConfig::from_env`]).
    ///
    /// Fails closed: started by root, Firecracker must run under its jailer
    /// unless `$IRONCLAW_FIRECRACKER_ALLOW_UNJAILED=1` says otherwise.
    pub fn from_env() -> Result<FirecrackerOptions, FirecrackerError> {
        let opts = FirecrackerOptions {
            binary: find_binary().ok_or(FirecrackerError::MissingBinary)?,
            seccomp_filter: std::env::var_os("IRONCLAW_FIRECRACKER_SECCOMP_FILTER")
                .map(PathBuf::from),
            jailer: JailerConfig::from_env()?,
        };
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let allowed = std::env::var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED").is_ok_and(|v| v == "1");
        if root && opts.jailer.is_none() && !allowed {
            return Err(FirecrackerError::UnjailedAsRoot);
        }
        Ok(opts)
    }

    /// Checks what can be checked before anything is created: the filter
    /// file, and the jailer (exists, executable; a Firecracker name it takes).
    pub fn check(&self) -> Result<(), FirecrackerError> {
        self.check_filter()?;
        if let Some(jailer) = &self.jailer {
            jailer.check(&self.binary)?;
        }
        Ok(())
    }

    /// The command that starts Firecracker directly (unjailed) with its API
    /// socket at `api_socket`. Refused when a jailer is configured: a jailed
    /// launch needs its chroot prepared first ([`jailer::Jail`]).
    pub fn command(&self, api_socket: &Path, log: &Path) -> Result<Command, FirecrackerError> {
        if let Some(jailer) = &self.jailer {
            return Err(FirecrackerError::JailerBypassed {
                jailer: jailer.binary.clone(),
            });
        }
        self.check_filter()?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--api-sock").arg(api_socket);
        cmd.arg("--log-path").arg(log);
        // Never `--no-seccomp`: either Firecracker's built-in filters or this file.
        if let Some(filter) = &self.seccomp_filter {
            cmd.arg("--seccomp-filter").arg(filter);
        }
        Ok(cmd)
    }

    fn check_filter(&self) -> Result<(), FirecrackerError> {
        if let Some(filter) = &self.seccomp_filter {
            match std::fs::metadata(filter) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    return Err(FirecrackerError::SeccompFilter {
                        path: filter.clone(),
                        reason: "not a regular file".into(),
                    })
                }
                Err(e) => {
                    return Err(FirecrackerError::SeccompFilter {
                        path: filter.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// The files of a Firecracker snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The microVM state (`snapshot_path`).
    pub state: PathBuf,
    /// The guest memory (`mem_file_path` / memory backend file).
    pub memory: PathBuf,
}

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
        kernel_image_path: config.kernel.clone(),
        initrd_path: Some(config.initramfs.clone()),
        boot_args: Some(super::cmdline::firecracker(config)),
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

/// How [`FirecrackerProcess::stop`] ended the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// It had already exited, or exited after Ctrl-Alt-Del within the bound.
    Exited(String),
    /// It was killed: Ctrl-Alt-Del failed or the bound passed.
    Killed { reason: String },
}

/// A running Firecracker process and its API client. Dropping it kills the
/// process and, when it owns its runtime directory ([`start_firecracker`]),
/// removes that directory.
pub struct FirecrackerProcess {
    child: Child,
    api: ApiClient,
    vsock: Arc<Vsock>,
    console: PathBuf,
    dir_path: PathBuf,
    /// Where the agent announces it listens (guest-initiated vsock lands on
    /// `<uds_path>_<port>`, as with vhost-device-vsock).
    ready: Option<tokio::net::UnixListener>,
    /// The jailer's chroot, cgroups and network namespace; dropped (removed)
    /// after `Drop::drop` has killed the process.
    jail: Option<jailer::Jail>,
    // Declared last so it is removed after `Drop::drop` has killed the process.
    dir: Option<RuntimeDir>,
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
    /// The hybrid vsock of the guest (agent port [`AGENT_VSOCK_PORT`]).
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
    /// [`start_firecracker_in`] or [`restore_firecracker_in`]), so that a
    /// caller such as [`super::VmHandle`] can remove it after the process is
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

/// The microVM state (`snapshot_path`), small.
pub const VMSTATE_FILE: &str = "snapshot.vmstate";
/// The guest memory (`mem_file_path`), as large as the VM's memory.
pub const MEMORY_FILE: &str = "snapshot.mem";

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
    fn kill(&mut self) {
        // Destroying a VM kills without Ctrl-Alt-Del: the guest has nothing to
        // flush (its rootfs is read-only) and destroy must be quick and total.
        // `stop` is the graceful path.
        FirecrackerProcess::kill(self);
    }
}

fn socket_path(path: PathBuf) -> Result<PathBuf, FirecrackerError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(FirecrackerError::SocketPathTooLong { path });
    }
    Ok(path)
}

/// Starts a Firecracker process in `dir` (through the jailer when `jail` is
/// given) and waits for its API socket. The VM is not configured yet.
async fn spawn_in(
    opts: &FirecrackerOptions,
    dir: &RuntimeDir,
    vsock: Vsock,
    jail: Option<&jailer::Jail>,
) -> Result<FirecrackerProcess, FirecrackerError> {
    let (api_socket, log, mut cmd) = match jail {
        None => {
            let api_socket = socket_path(dir.file(API_SOCKET))?;
            let log = dir.file(FIRECRACKER_LOG);
            // --log-path expects an existing file.
            File::create(&log)
                .map_err(|e| FirecrackerError::io(format!("creating {}", log.display()), e))?;
            let cmd = opts.command(&api_socket, &log)?;
            (api_socket, log, cmd)
        }
        // The jail made the log (owned by the jail uid) in the chroot.
        Some(jail) => (
            socket_path(jail.host_path(Path::new(jailer::API_SOCKET_IN_JAIL)))?,
            jail.host_path(Path::new(jailer::LOG_IN_JAIL)),
            jail.command(),
        ),
    };
    let console = dir.file(CONSOLE_LOG);
    let console_file = File::create(&console)
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
    let found = process::poll_until(SOCKET_WAIT, || {
        // The socket file appears at bind(), before listen(): until a
        // connection is accepted, the first request could be refused.
        if api_socket.exists() && std::os::unix::net::UnixStream::connect(&api_socket).is_ok() {
            return Some(Ok(()));
        }
        fc.exit_status().map(Err)
    })
    .await;
    match found {
        Some(Ok(())) => Ok(fc),
        Some(Err(status)) if jail.is_some() => Err(JailerError::Exited {
            step: jailer::JailerStep::RunJailer,
            jailer: jail.map(|j| j.jailer().to_path_buf()).unwrap_or_default(),
            status,
            socket: api_socket,
            output: format!(
                "{} / firecracker log: {}",
                super::host::tail(&fc.console, 1500),
                super::host::tail(&log, 1500)
            ),
        }
        .into()),
        Some(Err(status)) => Err(FirecrackerError::ExitedEarly {
            status,
            socket: api_socket,
            log_tail: format!(
                "{} / console: {}",
                super::host::tail(&log, 1500),
                super::host::tail(&fc.console, 1500)
            ),
        }),
        None => Err(FirecrackerError::SocketTimeout {
            socket: api_socket,
            waited: SOCKET_WAIT,
        }),
    }
}

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
    if config.confinement.seccomp == super::seccomp::SeccompLevel::Audit {
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

/// Validates `config`, starts Firecracker (options from the environment) with
/// its API socket in the VM's runtime directory, configures and boots the VM.
/// On any failure the process is killed and the runtime directory removed.
pub async fn start_firecracker(config: &VmConfig) -> Result<FirecrackerProcess, FirecrackerError> {
    config.validate()?;
    let opts = FirecrackerOptions::from_env()?;
    start_firecracker_in(&opts, config, &runtime::runtime_root()).await
}

/// [`start_firecracker`] with explicit options and runtime root.
pub async fn start_firecracker_in(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    root: &Path,
) -> Result<FirecrackerProcess, FirecrackerError> {
    // Before anything exists on disk: a refused config or a missing jailer
    // leaves no trace.
    config.validate()?;
    opts.check()?;
    let dir = create_dir(root, &config.id)?;
    // On error `dir` is dropped here, after the process was killed.
    let mut fc = launch_in(opts, config, &dir).await?;
    fc.dir = Some(dir);
    Ok(fc)
}

/// Starts a fresh Firecracker process as VM `config.id` under `root` and loads
/// the snapshot `files` into it, its vsock socket moved into the new runtime
/// directory. `config` is the prototype's (for the guest CID); its boot
/// settings are in the snapshot and are not sent again. With a jailer the
/// clone gets a jail of its own, the snapshot (and the rootfs its drive
/// names) placed in its chroot ([`jailer::Jail::prepare_restore`]).
pub async fn restore_firecracker_in(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    root: &Path,
    files: &SnapshotFiles,
    resume: bool,
) -> Result<FirecrackerProcess, FirecrackerError> {
    config.validate()?;
    opts.check()?;
    let dir = create_dir(root, &config.id)?;
    // On error `dir` is dropped here, after the process was killed.
    let mut fc = restore_in(opts, config, &dir, files, resume).await?;
    fc.dir = Some(dir);
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

/// The Firecracker backend behind [`Hypervisor`].
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    pub options: FirecrackerOptions,
}

impl FirecrackerBackend {
    pub fn from_env() -> Result<FirecrackerBackend, VmError> {
        Ok(FirecrackerBackend {
            options: FirecrackerOptions::from_env()?,
        })
    }
}

#[async_trait]
impl Hypervisor for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn capabilities(&self) -> Capabilities {
        // Directly and through the jailer (files moved out of and placed
        // into the chroot).
        Capabilities { snapshots: true }
    }

    fn accel(&self, _config: &VmConfig) -> Accel {
        // Firecracker has no emulator: it always runs on KVM.
        Accel::Kvm
    }

    fn snapshot_identity(&self) -> Result<Vec<String>, VmError> {
        Ok(vec![
            format!("vmm={}", super::host::file_identity(&self.options.binary)?),
            // A snapshot holds the paths its VMM saw: a jailed one's are chroot paths.
            format!("launch={}", launch_kind(&self.options)),
        ])
    }

    async fn launch(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        purpose: LaunchPurpose,
    ) -> Result<Box<dyn VmInstance>, VmError> {
        let fc = match purpose {
            LaunchPurpose::Run => launch_in(&self.options, config, dir).await?,
            // The socket goes into the VM's own runtime directory: a path from
            // the config would be recorded in the snapshot as the socket of
            // every clone (each clone gets its own through `vsock_override`).
            LaunchPurpose::Snapshot => {
                let config = VmConfig {
                    vsock: super::config::VsockConfig {
                        uds_path: None,
                        ..config.vsock.clone()
                    },
                    ..config.clone()
                };
                launch_in(&self.options, &config, dir).await?
            }
        };
        Ok(Box::new(fc))
    }

    async fn restore(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        snapshot: &[PathBuf],
    ) -> Result<Box<dyn VmInstance>, VmError> {
        let [state, memory] = snapshot else {
            return Err(VmError::SnapshotIncompatible(format!(
                "a Firecracker snapshot is a microVM state and a memory file, not {} files",
                snapshot.len()
            )));
        };
        let files = SnapshotFiles {
            state: state.clone(),
            memory: memory.clone(),
        };
        // Loaded paused and resumed explicitly, so a refused resume is
        // reported as such rather than as a failed load.
        let fc = restore_in(&self.options, config, dir, &files, false).await?;
        fc.resume().await?;
        Ok(Box::new(fc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> FirecrackerOptions {
        FirecrackerOptions {
            binary: "/usr/bin/firecracker".into(),
            seccomp_filter: None,
            jailer: None,
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_keeps_seccomp_on() {
        let cmd = opts()
            .command(
                Path::new("/run/x/firecracker.sock"),
                Path::new("/run/x/fc.log"),
            )
            .unwrap();
        let a = args(&cmd);
        assert_eq!(&a[..2], ["--api-sock", "/run/x/firecracker.sock"]);
        assert!(!a.iter().any(|x| x.contains("no-seccomp")), "{a:?}");
        assert!(!a.iter().any(|x| x.contains("seccomp-filter")), "{a:?}");

        let filter = std::env::current_exe().unwrap();
        let with_filter = FirecrackerOptions {
            seccomp_filter: Some(filter.clone()),
            ..opts()
        };
        let a = args(
            &with_filter
                .command(Path::new("/s"), Path::new("/l"))
                .unwrap(),
        );
        let i = a.iter().position(|x| x == "--seccomp-filter").unwrap();
        assert_eq!(a[i + 1], filter.to_string_lossy());
        assert!(!a.iter().any(|x| x.contains("no-seccomp")), "{a:?}");
    }

    #[test]
    fn missing_filter_file_is_refused() {
        let o = FirecrackerOptions {
            seccomp_filter: Some("/nonexistent/filter.bpf".into()),
            ..opts()
        };
        let err = o.command(Path::new("/s"), Path::new("/l")).unwrap_err();
        assert!(matches!(err, FirecrackerError::SeccompFilter { .. }));
        assert!(err.to_string().contains("/nonexistent/filter.bpf"), "{err}");
    }

    #[test]
    fn audit_level_is_refused_before_firecracker_starts() {
        let exe = std::env::current_exe().unwrap();
        let mut config = VmConfig::new("fc-audit", &exe, &exe);
        config.confinement.seccomp = crate::vm::seccomp::SeccompLevel::Audit;
        let root = std::env::temp_dir().join(format!("ironclaw-fc-audit-{}", std::process::id()));
        let err = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(start_firecracker_in(&opts(), &config, &root))
            .err()
            .unwrap();
        assert!(
            matches!(err, FirecrackerError::SeccompAuditUnsupported),
            "{err}"
        );
        assert!(!root.join("fc-audit").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_configured_jailer_is_never_bypassed() {
        let o = FirecrackerOptions {
            jailer: Some(JailerConfig {
                binary: "/usr/bin/jailer".into(),
                chroot_base: "/srv/jailer".into(),
                uid: Some(1000),
                gid: Some(1000),
                cgroup_version: None,
            }),
            ..opts()
        };
        let err = o.command(Path::new("/s"), Path::new("/l")).unwrap_err();
        assert!(
            matches!(err, FirecrackerError::JailerBypassed { .. }),
            "{err}"
        );
        // The jailer does not exist: refused by the check that runs before
        // anything is created.
        let err = o.check().unwrap_err();
        assert!(err.to_string().contains("/usr/bin/jailer"), "{err}");
    }
}
