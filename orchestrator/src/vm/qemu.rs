//! QEMU `microvm` backend.
//!
//! Per VM: one `vhost-device-vsock` process (the vsock device, serving the
//! hybrid vsock socket) and one `qemu-system-x86_64 -M microvm` process with no
//! network device, its serial console in a log file and a QMP socket.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ironclaw_protocol::{AGENT_SERIAL_PORT_NAME, AGENT_VSOCK_PORT};

/// The host end of the virtio-serial agent port, in the VM's runtime directory.
pub const SERIAL_SOCKET: &str = "agent.sock";

use super::accel::{self, Accel};
use super::backend::{BackendKind, Capabilities, Hypervisor, LaunchPurpose, VmInstance};
use super::channel::{GuestChannel, SerialChannel};
use super::config::VmConfig;
use super::confine::cgroup::VmCgroup;
use super::confine::jail::{self, Confined, JailError, ProcessConfinement};
use super::confine::prepare::Confinement;
use super::confine::seccomp::{self, AuditLog, ProcessKind, SeccompFilter};
use super::host::{file_identity, find_tool, tail};
use super::process;
use super::qmp::Qmp;
use super::runtime::RuntimeDir;
use super::vsock::Vsock;
use super::VmError;

pub const QEMU_BINARY: &str = "qemu-system-x86_64";
pub const VHOST_VSOCK_BINARY: &str = "vhost-device-vsock";

/// How long the helper processes get to create their sockets.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// How long writing a snapshot (a migration to a file) may take.
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

/// What went wrong with a QEMU VM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("QMP: {source}; QEMU {status}: {log_tail}")]
    Qmp {
        #[source]
        source: super::qmp::QmpError,
        /// Whether QEMU is still running, or how it exited.
        status: String,
        log_tail: String,
    },
    #[error("restoring {}: {source}: {log_tail}", snapshot.display())]
    Incoming {
        snapshot: PathBuf,
        #[source]
        source: super::qmp::QmpError,
        log_tail: String,
    },
    #[error("QEMU is not running the VM after start: {status}")]
    NotRunning { status: String },
    #[error("snapshot: QMP: {0}")]
    SnapshotQmp(#[source] super::qmp::QmpError),
    #[error("snapshot failed: {0}")]
    MigrationFailed(String),
    #[error("snapshot did not finish within {0:?}")]
    MigrationTimeout(Duration),
    #[error("{process} exited ({status}) before creating {}: {log_tail}", socket.display())]
    ExitedEarly {
        process: &'static str,
        status: String,
        socket: PathBuf,
        log_tail: String,
    },
    #[error("{process} did not create {} within {waited:?}", socket.display())]
    SocketTimeout {
        process: &'static str,
        socket: PathBuf,
        waited: Duration,
    },
}

/// How the host reaches the guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Hybrid vsock through a per-VM vhost-device-vsock process.
    Vsock,
    /// A virtio-serial port on a unix-socket chardev. Used for VMs that are
    /// snapshotted or restored: QEMU refuses to migrate a vhost-user-vsock device.
    Serial,
}

/// What a launch starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    pub transport: Transport,
    /// Restore this snapshot (a QEMU migration stream) instead of booting.
    pub incoming: Option<PathBuf>,
}

impl LaunchOptions {
    pub fn cold() -> LaunchOptions {
        LaunchOptions {
            transport: Transport::Vsock,
            incoming: None,
        }
    }
}

/// The fd number a restored QEMU reads its migration stream from.
const INCOMING_FD: i32 = 3;

pub struct QemuBackend {
    qemu: PathBuf,
    vhost_vsock: PathBuf,
}

/// The QEMU that runs VMs: `$IRONCLAW_QEMU`, else `qemu-system-x86_64` on `PATH`.
pub fn qemu_binary() -> Result<PathBuf, VmError> {
    find_tool(
        "IRONCLAW_QEMU",
        QEMU_BINARY,
        "apt-get install qemu-system-x86 (or run scripts/setup.sh)",
    )
}

impl QemuBackend {
    /// Finds QEMU and vhost-device-vsock (`$IRONCLAW_QEMU`, `$IRONCLAW_VHOST_VSOCK`, else `PATH`).
    pub fn from_env() -> Result<QemuBackend, VmError> {
        Ok(QemuBackend {
            qemu: qemu_binary()?,
            vhost_vsock: find_tool(
                "IRONCLAW_VHOST_VSOCK",
                VHOST_VSOCK_BINARY,
                "cargo install --locked vhost-device-vsock (or run scripts/setup.sh)",
            )?,
        })
    }

    /// QEMU with the machine IronClaw runs — microvm, accelerator, vCPUs,
    /// memory, no default devices and no network device — and nothing else:
    /// no console, channel, kernel or confinement. `memfd` backs guest memory
    /// with a shared memfd (what vhost-user devices need). The benchmark's
    /// bare-QEMU reference starts from this too, so it runs the same machine.
    pub fn machine_command(&self, config: &VmConfig, accel: Accel, memfd: bool) -> Command {
        let mem = config.memory_mib;
        let mut cmd = Command::new(&self.qemu);
        if memfd {
            cmd.args(["-M", "microvm,pit=on,acpi=on,memory-backend=mem"]);
        } else {
            cmd.args(["-M", "microvm,pit=on,acpi=on"]);
        }
        match accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => cmd.args(["-accel", "tcg"]),
        };
        cmd.args(["-m", &format!("{mem}M"), "-smp", &config.vcpus.to_string()]);
        if memfd {
            cmd.args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            ]);
        }
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        // No network device, by construction: no -netdev is ever passed and the
        // default NIC is switched off explicitly.
        cmd.args(["-nic", "none"]);
        cmd
    }

    /// The whole QEMU command line of a VM: [`Self::machine_command`] plus
    /// its sandbox, console, QMP socket, guest channel and boot files
    /// (public for the benchmark's bare-QEMU reference).
    pub fn qemu_command(
        &self,
        config: &VmConfig,
        accel: Accel,
        dir: &RuntimeDir,
        opts: &LaunchOptions,
    ) -> Command {
        let mut cmd = self.machine_command(config, accel, opts.transport == Transport::Vsock);
        cmd.arg("-name").arg(format!("ironclaw-{}", config.id));
        // QEMU's own seccomp sandbox, stacked on the allowlist installed before
        // exec (vm::seccomp): it also refuses obsolete calls, privilege changes,
        // spawning processes and resource-control calls from inside QEMU.
        cmd.args([
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
        cmd.arg("-serial")
            .arg(format!("file:{}", dir.file("console.log").display()));
        cmd.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            dir.file("qmp.sock").display()
        ));
        cmd.arg("-kernel").arg(&config.kernel);
        cmd.arg("-initrd").arg(&config.initramfs);
        match opts.transport {
            Transport::Vsock => {
                cmd.arg("-append").arg(super::cmdline::qemu(config, false));
                cmd.arg("-chardev").arg(format!(
                    "socket,id=vsock0,path={}",
                    dir.file("vhost-vsock.sock").display()
                ));
                // The guest CID is the device process's setting (--guest-cid), not QEMU's.
                cmd.args(["-device", "vhost-user-vsock-device,chardev=vsock0"]);
            }
            Transport::Serial => {
                cmd.arg("-append").arg(super::cmdline::qemu(config, true));
                cmd.args(["-device", "virtio-serial-device"]);
                cmd.arg("-chardev").arg(format!(
                    "socket,id=agent0,path={},server=on,wait=off",
                    dir.file(SERIAL_SOCKET).display()
                ));
                cmd.arg("-device").arg(format!(
                    "virtserialport,chardev=agent0,name={AGENT_SERIAL_PORT_NAME}"
                ));
            }
        }
        if opts.incoming.is_some() {
            cmd.arg("-incoming").arg(format!("fd:{INCOMING_FD}"));
        }
        if let Some(rootfs) = &config.rootfs {
            cmd.arg("-drive").arg(format!(
                "id=rootfs,file={},format=raw,if=none,readonly=on",
                rootfs.display()
            ));
            cmd.args(["-device", "virtio-blk-device,drive=rootfs"]);
        }
        cmd
    }
}

fn uds_path(config: &VmConfig, dir: &RuntimeDir) -> PathBuf {
    config
        .vsock
        .uds_path
        .clone()
        .unwrap_or_else(|| dir.file("vsock.sock"))
}

fn log_file(dir: &RuntimeDir, name: &str) -> Result<File, VmError> {
    let path = dir.file(name);
    File::create(&path).map_err(|e| VmError::io(format!("creating {}", path.display()), e))
}

#[async_trait]
impl Hypervisor for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { snapshots: true }
    }

    fn accel(&self, config: &VmConfig) -> Accel {
        accel::choose(config.accel).0
    }

    fn snapshot_identity(&self) -> Result<Vec<String>, VmError> {
        // A migration stream is loadable by the QEMU that wrote it.
        Ok(vec![format!("vmm={}", file_identity(&self.qemu)?)])
    }

    async fn launch(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        purpose: LaunchPurpose,
    ) -> Result<Box<dyn VmInstance>, VmError> {
        // QEMU cannot migrate its vhost-user vsock device: a VM that will be
        // snapshotted talks to its agent over a virtio-serial port instead.
        let transport = match purpose {
            LaunchPurpose::Run => Transport::Vsock,
            LaunchPurpose::Snapshot => Transport::Serial,
        };
        let opts = LaunchOptions {
            transport,
            incoming: None,
        };
        Ok(Box::new(self.launch_with(config, dir, &opts).await?))
    }

    async fn restore(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        snapshot: &[PathBuf],
    ) -> Result<Box<dyn VmInstance>, VmError> {
        let [stream] = snapshot else {
            return Err(VmError::SnapshotIncompatible(format!(
                "a QEMU snapshot is one migration stream, not {} files",
                snapshot.len()
            )));
        };
        let opts = LaunchOptions {
            transport: Transport::Serial,
            incoming: Some(stream.clone()),
        };
        Ok(Box::new(self.launch_with(config, dir, &opts).await?))
    }
}

impl QemuBackend {
    /// Starts a VM with the given transport, booting or restoring a snapshot.
    pub async fn launch_with(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        opts: &LaunchOptions,
    ) -> Result<QemuInstance, VmError> {
        let (accel, reason) = accel::choose(config.accel);
        tracing::info!(vm = %config.id, %accel, %reason, "accelerator chosen");
        let channel: Arc<dyn GuestChannel> = match opts.transport {
            Transport::Vsock => Arc::new(Vsock::new(
                config.vsock.guest_cid,
                uds_path(config, dir),
                AGENT_VSOCK_PORT,
            )),
            Transport::Serial => Arc::new(SerialChannel::new(dir.file(SERIAL_SOCKET))),
        };
        let mut confinement = Confinement::prepare(config, dir)?;
        let mut inst = QemuInstance {
            accel,
            children: Vec::new(),
            console: dir.file("console.log"),
            qmp: dir.file("qmp.sock"),
            channel,
            ready: None,
            outside_sockets: Vec::new(),
            cgroup: confinement.cgroup.take(),
            audit: confinement.audit.clone(),
            memory_limit_mib: config.limits().memory_mib,
        };
        // On any error below, dropping `inst` kills what was started.

        if opts.transport == Transport::Vsock {
            let vsock = Vsock::new(
                config.vsock.guest_cid,
                uds_path(config, dir),
                AGENT_VSOCK_PORT,
            );
            if !vsock.uds_path.starts_with(dir.path()) {
                inst.outside_sockets = vec![
                    vsock.uds_path.clone(),
                    vsock.guest_initiated_path(ironclaw_protocol::AGENT_READY_PORT),
                ];
            }
            inst.ready = Some(
                vsock
                    .bind_ready_listener()
                    .map_err(|e| VmError::io("binding the agent's ready socket", e))?,
            );
            if let Some((uid, gid)) = confinement.ids {
                // vhost-device-vsock connects to it as the jail uid.
                let path = vsock.guest_initiated_path(ironclaw_protocol::AGENT_READY_PORT);
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| {
                    VmError::io(format!("handing {} to the jail uid", path.display()), e)
                })?;
            }
            let vhost_sock = dir.file("vhost-vsock.sock");
            let mut vhost = Command::new(confinement.program(&self.vhost_vsock, dir)?);
            vhost
                .arg("--guest-cid")
                .arg(config.vsock.guest_cid.to_string())
                .arg("--socket")
                .arg(&vhost_sock)
                .arg("--uds-path")
                .arg(&vsock.uds_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(dir, "vhost-device-vsock.log")?);
            let filter = SeccompFilter::new(ProcessKind::VhostVsock, confinement.level, false)
                .map_err(JailError::from)?;
            inst.start(VHOST_VSOCK_BINARY, vhost, dir, &confinement, filter)?;
            inst.wait_for_socket(
                VHOST_VSOCK_BINARY,
                &vhost_sock,
                dir,
                "vhost-device-vsock.log",
            )
            .await?;
        }

        let built = self.qemu_command(&confinement.config, accel, dir, opts);
        // The same command, run by the path the jail uid can reach.
        let mut qemu = Command::new(confinement.program(&self.qemu, dir)?);
        qemu.args(built.get_args());
        qemu.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "qemu.log")?);
        // Keeps the snapshot open until QEMU has been started with it as fd 3.
        let _incoming = match &opts.incoming {
            Some(path) => Some(pass_fd(&mut qemu, path)?),
            None => None,
        };
        tracing::debug!(vm = %config.id, cmd = ?qemu, "starting qemu");
        let filter = SeccompFilter::new(ProcessKind::Qemu, confinement.level, accel == Accel::Kvm)
            .map_err(JailError::from)?;
        inst.start(QEMU_BINARY, qemu, dir, &confinement, filter)?;
        let qmp_sock = dir.file("qmp.sock");
        inst.wait_for_socket(QEMU_BINARY, &qmp_sock, dir, "qemu.log")
            .await?;
        let qmp_failed = |inst: &mut QemuInstance, e: super::qmp::QmpError| {
            let exited = inst.exited_soon().unwrap_or_else(|| "still running".into());
            VmError::from(QemuError::Qmp {
                source: e,
                status: exited,
                log_tail: tail(&dir.file("qemu.log"), 2000),
            })
        };
        // The socket file appears at bind(), a moment before QEMU listens on it.
        let connect_deadline = std::time::Instant::now() + SOCKET_WAIT;
        let mut qmp = loop {
            match Qmp::connect(&qmp_sock).await {
                Ok(q) => break q,
                Err(super::qmp::QmpError::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < connect_deadline
                        && inst.exited().is_none() =>
                {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(e) => return Err(qmp_failed(&mut inst, e)),
            }
        };
        if let Some(snapshot) = &opts.incoming {
            // Loading the snapshot; the source was stopped when it was taken,
            // so the VM arrives paused and is resumed here.
            let loaded = async {
                loop {
                    let status = qmp.execute("query-status", None).await?;
                    match status.get("status").and_then(|s| s.as_str()) {
                        Some("inmigrate") => tokio::time::sleep(Duration::from_millis(2)).await,
                        _ => return Ok::<_, super::qmp::QmpError>(()),
                    }
                }
            };
            if let Err(e) = loaded.await {
                return Err(QemuError::Incoming {
                    snapshot: snapshot.clone(),
                    source: e,
                    log_tail: tail(&dir.file("qemu.log"), 2000),
                }
                .into());
            }
            if let Err(e) = qmp.execute("cont", None).await {
                return Err(qmp_failed(&mut inst, e));
            }
        }
        // The VM must be running (not stopped waiting for something).
        let status = match qmp.execute("query-status", None).await {
            Ok(s) => s,
            Err(e) => return Err(qmp_failed(&mut inst, e)),
        };
        if status.get("running").and_then(|r| r.as_bool()) != Some(true) {
            return Err(QemuError::NotRunning {
                status: status.to_string(),
            }
            .into());
        }
        Ok(inst)
    }
}

/// Opens `path` and arranges for the child to get it as fd [`INCOMING_FD`].
fn pass_fd(cmd: &mut Command, path: &Path) -> Result<File, VmError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let file = File::open(path)
        .map_err(|e| VmError::io(format!("opening snapshot {}", path.display()), e))?;
    let fd = file.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; the duplicate has no CLOEXEC flag, so
    // QEMU inherits it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, INCOMING_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(file)
}

pub struct QemuInstance {
    accel: Accel,
    /// (name, process, its filter), in start order.
    children: Vec<(&'static str, Confined, SeccompFilter)>,
    console: PathBuf,
    qmp: PathBuf,
    channel: Arc<dyn GuestChannel>,
    ready: Option<tokio::net::UnixListener>,
    /// Sockets this VM creates outside its runtime directory (a custom
    /// `vsock.uds_path` and its `_<port>` sockets), removed on kill.
    outside_sockets: Vec<PathBuf>,
    /// Removed after the processes are dead.
    cgroup: Option<VmCgroup>,
    audit: Option<Arc<AuditLog>>,
    memory_limit_mib: u32,
}

impl QemuInstance {
    /// Pauses the VM and writes its state (a QEMU migration stream) to `dest`.
    /// The VM stays paused; the caller destroys it.
    pub async fn snapshot_to(&mut self, dest: &Path) -> Result<(), VmError> {
        let qmp_err = |e: super::qmp::QmpError| VmError::from(QemuError::SnapshotQmp(e));
        let mut qmp = Qmp::connect(&self.qmp).await.map_err(qmp_err)?;
        qmp.execute("stop", None).await.map_err(qmp_err)?;
        let file = File::create(dest)
            .map_err(|e| VmError::io(format!("creating {}", dest.display()), e))?;
        qmp.execute_with_fd("getfd", serde_json::json!({ "fdname": "snapshot" }), &file)
            .await
            .map_err(qmp_err)?;
        drop(file);
        qmp.execute("migrate", Some(serde_json::json!({ "uri": "fd:snapshot" })))
            .await
            .map_err(qmp_err)?;
        let deadline = std::time::Instant::now() + MIGRATION_WAIT;
        loop {
            let info = qmp.execute("query-migrate", None).await.map_err(qmp_err)?;
            match info.get("status").and_then(|s| s.as_str()) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(QemuError::MigrationFailed(
                        info.get("error-desc")
                            .and_then(|d| d.as_str())
                            .unwrap_or("no reason given")
                            .to_string(),
                    )
                    .into())
                }
                _ if std::time::Instant::now() > deadline => {
                    return Err(QemuError::MigrationTimeout(MIGRATION_WAIT).into())
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn start(
        &mut self,
        name: &'static str,
        cmd: Command,
        dir: &RuntimeDir,
        confinement: &Confinement,
        filter: SeccompFilter,
    ) -> Result<(), VmError> {
        let spec = confinement.spec(filter.clone())?;
        let mut child = jail::spawn(cmd, spec, name)?;
        for pid in [child.child.id(), child.pid] {
            dir.record_pid(pid)
                .map_err(|e| VmError::io("recording pid".to_string(), e))?;
        }
        if let (Some(listener), Some(log)) = (child.audit_listener.take(), &self.audit) {
            seccomp::supervise(listener, name, log.clone()).map_err(JailError::from)?;
        }
        tracing::debug!(
            vm = %dir.path().display(),
            "{}",
            ProcessConfinement::read(name, child.pid, Some(&filter), self.cgroup_dirs())
        );
        self.children.push((name, child, filter));
        Ok(())
    }

    /// [`VmInstance::exited`], waiting briefly: a VMM that just died (a QMP
    /// connection reset, say) is reported by its reaper a moment later.
    fn exited_soon(&mut self) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        loop {
            let exited = self.exited();
            if exited.is_some() || std::time::Instant::now() >= deadline {
                return exited;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map(VmCgroup::dirs).unwrap_or_default()
    }

    /// Waits until `name` has created `socket`, failing early if it exits.
    async fn wait_for_socket(
        &mut self,
        name: &'static str,
        socket: &Path,
        dir: &RuntimeDir,
        log: &str,
    ) -> Result<(), VmError> {
        let found = process::poll_until(SOCKET_WAIT, || {
            if socket.exists() {
                return Some(Ok(()));
            }
            self.exited().map(Err)
        })
        .await;
        match found {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => Err(QemuError::ExitedEarly {
                process: name,
                status,
                socket: socket.to_path_buf(),
                log_tail: tail(&dir.file(log), 2000),
            }
            .into()),
            None => Err(QemuError::SocketTimeout {
                process: name,
                socket: socket.to_path_buf(),
                waited: SOCKET_WAIT,
            }
            .into()),
        }
    }
}

/// The migration stream a QEMU snapshot consists of.
const SNAPSHOT_FILE: &str = "snapshot.bin";

#[async_trait]
impl VmInstance for QemuInstance {
    async fn snapshot(&mut self, out: &Path) -> Result<Vec<String>, VmError> {
        self.snapshot_to(&out.join(SNAPSHOT_FILE)).await?;
        Ok(vec![SNAPSHOT_FILE.to_string()])
    }
    fn accel(&self) -> Accel {
        self.accel
    }
    fn channel(&self) -> Arc<dyn GuestChannel> {
        self.channel.clone()
    }
    fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .flat_map(|(_, c, _)| [c.child.id(), c.pid])
            .collect()
    }
    fn console_log(&self) -> PathBuf {
        self.console.clone()
    }
    fn exited(&mut self) -> Option<String> {
        let exited =
            self.children
                .iter_mut()
                .find_map(|(name, c, _)| match c.child.try_wait() {
                    Ok(Some(status)) => Some(format!("{name} exited: {status}")),
                    _ => None,
                })?;
        let ooms = self.cgroup.as_ref().map_or(0, VmCgroup::oom_kills);
        Some(if ooms > 0 {
            format!(
                "{exited}: the VM's cgroup memory limit of {} MiB was reached and the kernel's OOM killer ended it; raise confinement.memory_limit_mib",
                self.memory_limit_mib
            )
        } else {
            exited
        })
    }
    fn confinement(&self) -> Vec<ProcessConfinement> {
        self.children
            .iter()
            .map(|(name, c, f)| ProcessConfinement::read(name, c.pid, Some(f), self.cgroup_dirs()))
            .collect()
    }
    fn audit_log(&self) -> Option<Arc<AuditLog>> {
        self.audit.clone()
    }
    fn take_ready_listener(&mut self) -> Option<tokio::net::UnixListener> {
        self.ready.take()
    }
    fn kill(&mut self) {
        // QEMU first, so the device process never sees a half-dead frontend.
        for (_, child, _) in self.children.iter_mut().rev() {
            child.kill();
        }
        if let Some(cg) = self.cgroup.as_mut() {
            if let Err(e) = cg.remove() {
                tracing::warn!("VM cgroup left behind: {e}");
            }
        }
        for path in self.outside_sockets.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for QemuInstance {
    fn drop(&mut self) {
        self.kill();
    }
}
