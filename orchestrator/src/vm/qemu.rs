//! QEMU `microvm` backend.
//!
//! Per VM: one `vhost-device-vsock` process (the vsock device, serving the
//! hybrid vsock socket) and one `qemu-system-x86_64 -M microvm` process with no
//! network device, its serial console in a log file and a QMP socket.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ironclaw_protocol::{AGENT_SERIAL_PORT_NAME, AGENT_VSOCK_PORT, SERIAL_TRANSPORT_ARG};

/// The host end of the virtio-serial agent port, in the VM's runtime directory.
pub const SERIAL_SOCKET: &str = "agent.sock";

use super::accel::{self, Accel};
use super::backend::{BackendKind, Hypervisor, VmInstance};
use super::channel::{GuestChannel, SerialChannel};
use super::config::VmConfig;
use super::process::{self, spawn_child};
use super::qmp::Qmp;
use super::runtime::RuntimeDir;
use super::vsock::Vsock;
use super::VmError;

pub const QEMU_BINARY: &str = "qemu-system-x86_64";
pub const VHOST_VSOCK_BINARY: &str = "vhost-device-vsock";

/// How long the helper processes get to create their sockets.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// Kernel command line. `pit=on` on the machine and `tsc_early_khz` here keep
/// TSC calibration from stalling under TCG; `panic=-1` with `-no-reboot`
/// turns a guest panic into a QEMU exit.
pub const KERNEL_ARGS: &str =
    "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz=2000000 rdinit=/init";

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

/// Finds `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl QemuBackend {
    /// Finds QEMU and vhost-device-vsock (`$IRONCLAW_QEMU`, `$IRONCLAW_VHOST_VSOCK`, else `PATH`).
    pub fn from_env() -> Result<QemuBackend, VmError> {
        let find = |env: &str, name: &str, hint: &str| {
            std::env::var_os(env)
                .map(PathBuf::from)
                .or_else(|| which(name))
                .ok_or_else(|| VmError::MissingTool {
                    tool: name.into(),
                    hint: hint.into(),
                })
        };
        Ok(QemuBackend {
            qemu: find(
                "IRONCLAW_QEMU",
                QEMU_BINARY,
                "apt-get install qemu-system-x86 (or run scripts/setup.sh)",
            )?,
            vhost_vsock: find(
                "IRONCLAW_VHOST_VSOCK",
                VHOST_VSOCK_BINARY,
                "cargo install --locked vhost-device-vsock (or run scripts/setup.sh)",
            )?,
        })
    }

    pub(crate) fn qemu_command(
        &self,
        config: &VmConfig,
        accel: Accel,
        dir: &RuntimeDir,
        opts: &LaunchOptions,
    ) -> Command {
        let mem = config.memory_mib;
        let mut cmd = Command::new(&self.qemu);
        cmd.arg("-name").arg(format!("ironclaw-{}", config.id));
        match opts.transport {
            Transport::Vsock => cmd.args(["-M", "microvm,pit=on,acpi=on,memory-backend=mem"]),
            Transport::Serial => cmd.args(["-M", "microvm,pit=on,acpi=on"]),
        };
        match accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => cmd.args(["-accel", "tcg"]),
        };
        cmd.args(["-m", &format!("{mem}M"), "-smp", &config.vcpus.to_string()]);
        if opts.transport == Transport::Vsock {
            // vhost-user devices need guest memory shared with the device process.
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
                cmd.arg("-append").arg(format!(
                    "{KERNEL_ARGS}{}",
                    super::rootfs_args::kernel_args(config)
                ));
                cmd.arg("-chardev").arg(format!(
                    "socket,id=vsock0,path={}",
                    dir.file("vhost-vsock.sock").display()
                ));
                // The guest CID is the device process's setting (--guest-cid), not QEMU's.
                cmd.args(["-device", "vhost-user-vsock-device,chardev=vsock0"]);
            }
            Transport::Serial => {
                cmd.arg("-append").arg(format!(
                    "{KERNEL_ARGS} {SERIAL_TRANSPORT_ARG}{}",
                    super::rootfs_args::kernel_args(config)
                ));
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

    async fn launch(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
    ) -> Result<Box<dyn VmInstance>, VmError> {
        Ok(Box::new(
            self.launch_with(config, dir, &LaunchOptions::cold())
                .await?,
        ))
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
        let mut inst = QemuInstance {
            accel,
            children: Vec::new(),
            console: dir.file("console.log"),
            qmp: dir.file("qmp.sock"),
            channel,
            ready: None,
        };
        // On any error below, dropping `inst` kills what was started.

        if opts.transport == Transport::Vsock {
            let vsock = Vsock::new(
                config.vsock.guest_cid,
                uds_path(config, dir),
                AGENT_VSOCK_PORT,
            );
            inst.ready = Some(
                vsock
                    .bind_ready_listener()
                    .map_err(|e| VmError::io("binding the agent's ready socket", e))?,
            );
            let vhost_sock = dir.file("vhost-vsock.sock");
            let mut vhost = Command::new(&self.vhost_vsock);
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
            inst.start(VHOST_VSOCK_BINARY, vhost, dir)?;
            inst.wait_for_socket(
                VHOST_VSOCK_BINARY,
                &vhost_sock,
                dir,
                "vhost-device-vsock.log",
            )
            .await?;
        }

        let mut qemu = self.qemu_command(config, accel, dir, opts);
        qemu.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "qemu.log")?);
        // Keeps the snapshot open until QEMU has been started with it as fd 3.
        let _incoming = match &opts.incoming {
            Some(path) => Some(pass_fd(&mut qemu, path)?),
            None => None,
        };
        tracing::debug!(vm = %config.id, cmd = ?qemu, "starting qemu");
        inst.start(QEMU_BINARY, qemu, dir)?;
        let qmp_sock = dir.file("qmp.sock");
        inst.wait_for_socket(QEMU_BINARY, &qmp_sock, dir, "qemu.log")
            .await?;
        let qmp_failed = |inst: &mut QemuInstance, e: super::qmp::QmpError| {
            let exited = inst.exited().unwrap_or_else(|| "still running".into());
            VmError::Backend(format!(
                "QMP: {e}; {exited}: {}",
                tail(&dir.file("qemu.log"), 2000)
            ))
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
        if opts.incoming.is_some() {
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
                return Err(VmError::Backend(format!(
                    "restoring {}: {e}: {}",
                    opts.incoming.as_ref().expect("incoming").display(),
                    tail(&dir.file("qemu.log"), 2000)
                )));
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
            return Err(VmError::Backend(format!(
                "QEMU is not running the VM: {status}"
            )));
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
    /// (name, process), in start order.
    children: Vec<(&'static str, Child)>,
    console: PathBuf,
    qmp: PathBuf,
    channel: Arc<dyn GuestChannel>,
    ready: Option<tokio::net::UnixListener>,
}

impl QemuInstance {
    /// Pauses the VM and writes its state (a QEMU migration stream) to `dest`.
    /// The VM stays paused; the caller destroys it.
    pub async fn snapshot_to(&mut self, dest: &Path) -> Result<(), VmError> {
        let qmp_err = |e: super::qmp::QmpError| VmError::Backend(format!("snapshot: QMP: {e}"));
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
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let info = qmp.execute("query-migrate", None).await.map_err(qmp_err)?;
            match info.get("status").and_then(|s| s.as_str()) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(VmError::Backend(format!(
                        "snapshot failed: {}",
                        info.get("error-desc")
                            .and_then(|d| d.as_str())
                            .unwrap_or("no reason given")
                    )))
                }
                _ if std::time::Instant::now() > deadline => {
                    return Err(VmError::Backend(
                        "snapshot did not finish within 120 s".into(),
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn start(&mut self, name: &'static str, cmd: Command, dir: &RuntimeDir) -> Result<(), VmError> {
        let child = spawn_child(cmd).map_err(|e| VmError::io(format!("starting {name}"), e))?;
        dir.record_pid(child.id())
            .map_err(|e| VmError::io("recording pid".to_string(), e))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Waits until `name` has created `socket`, failing early if it exits.
    async fn wait_for_socket(
        &mut self,
        name: &str,
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
            Some(Err(status)) => Err(VmError::Backend(format!(
                "{name} exited ({status}) before creating {}: {}",
                socket.display(),
                tail(&dir.file(log), 2000)
            ))),
            None => Err(VmError::Backend(format!(
                "{name} did not create {} within {SOCKET_WAIT:?}",
                socket.display()
            ))),
        }
    }
}

impl VmInstance for QemuInstance {
    fn accel(&self) -> Accel {
        self.accel
    }
    fn channel(&self) -> Arc<dyn GuestChannel> {
        self.channel.clone()
    }
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }
    fn console_log(&self) -> PathBuf {
        self.console.clone()
    }
    fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} exited: {status}")),
                _ => None,
            })
    }
    fn take_ready_listener(&mut self) -> Option<tokio::net::UnixListener> {
        self.ready.take()
    }
    fn kill(&mut self) {
        // QEMU first, so the device process never sees a half-dead frontend.
        for (_, child) in self.children.iter_mut().rev() {
            process::kill_and_reap(child);
        }
    }
}

impl Drop for QemuInstance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `max` bytes of a log file, for error messages.
pub fn tail(path: &Path, max: usize) -> String {
    let Ok(data) = std::fs::read(path) else {
        return format!("({} unreadable)", path.display());
    };
    let start = data.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&data[start..]).trim().to_string();
    if text.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        text
    }
}
