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
use ironclaw_protocol::AGENT_VSOCK_PORT;

use super::accel::{self, Accel};
use super::backend::{BackendKind, Hypervisor, VmInstance};
use super::channel::GuestChannel;
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

    fn qemu_command(&self, config: &VmConfig, accel: Accel, dir: &RuntimeDir) -> Command {
        let mem = config.memory_mib;
        let mut cmd = Command::new(&self.qemu);
        cmd.arg("-name").arg(format!("ironclaw-{}", config.id));
        cmd.args(["-M", "microvm,pit=on,acpi=on,memory-backend=mem"]);
        match accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => cmd.args(["-accel", "tcg"]),
        };
        cmd.args(["-m", &format!("{mem}M"), "-smp", &config.vcpus.to_string()]);
        // vhost-user devices need guest memory shared with the device process.
        cmd.args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        ]);
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
        cmd.args(["-append", KERNEL_ARGS]);
        cmd.arg("-chardev").arg(format!(
            "socket,id=vsock0,path={}",
            dir.file("vhost-vsock.sock").display()
        ));
        // The guest CID is the device process's setting (--guest-cid), not QEMU's.
        cmd.args(["-device", "vhost-user-vsock-device,chardev=vsock0"]);
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
        let (accel, reason) = accel::choose(config.accel);
        tracing::info!(vm = %config.id, %accel, %reason, "accelerator chosen");
        let uds = uds_path(config, dir);
        let vsock = Vsock::new(config.vsock.guest_cid, &uds, AGENT_VSOCK_PORT);
        let ready = vsock
            .bind_ready_listener()
            .map_err(|e| VmError::io("binding the agent's ready socket", e))?;
        let mut inst = QemuInstance {
            accel,
            children: Vec::new(),
            console: dir.file("console.log"),
            vsock: Arc::new(vsock),
            ready: Some(ready),
        };
        // On any error below, dropping `inst` kills what was started.

        let vhost_sock = dir.file("vhost-vsock.sock");
        let mut vhost = Command::new(&self.vhost_vsock);
        vhost
            .arg("--guest-cid")
            .arg(config.vsock.guest_cid.to_string())
            .arg("--socket")
            .arg(&vhost_sock)
            .arg("--uds-path")
            .arg(&uds)
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

        let mut qemu = self.qemu_command(config, accel, dir);
        qemu.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "qemu.log")?);
        tracing::debug!(vm = %config.id, cmd = ?qemu, "starting qemu");
        inst.start(QEMU_BINARY, qemu, dir)?;
        let qmp_sock = dir.file("qmp.sock");
        inst.wait_for_socket(QEMU_BINARY, &qmp_sock, dir, "qemu.log")
            .await?;
        // The VM must be running (not stopped waiting for something).
        let qmp_failed = |inst: &mut QemuInstance, e: super::qmp::QmpError| {
            let exited = inst.exited().unwrap_or_else(|| "still running".into());
            VmError::Backend(format!(
                "QMP: {e}; {exited}: {}",
                tail(&dir.file("qemu.log"), 2000)
            ))
        };
        let mut qmp = match Qmp::connect(&qmp_sock).await {
            Ok(q) => q,
            Err(e) => return Err(qmp_failed(&mut inst, e)),
        };
        let status = match qmp.execute("query-status", None).await {
            Ok(s) => s,
            Err(e) => return Err(qmp_failed(&mut inst, e)),
        };
        if status.get("running").and_then(|r| r.as_bool()) != Some(true) {
            return Err(VmError::Backend(format!(
                "QEMU is not running the VM: {status}"
            )));
        }
        Ok(Box::new(inst))
    }
}

struct QemuInstance {
    accel: Accel,
    /// (name, process), in start order.
    children: Vec<(&'static str, Child)>,
    console: PathBuf,
    vsock: Arc<Vsock>,
    ready: Option<tokio::net::UnixListener>,
}

impl QemuInstance {
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
        self.vsock.clone()
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
