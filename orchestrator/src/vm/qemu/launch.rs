//! Starting a QEMU VM: the vsock device process (for the vsock transport),
//! then QEMU itself, each confined; QMP connected; a snapshot loaded and the
//! VM resumed when restoring.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ironclaw_protocol::AGENT_VSOCK_PORT;

use super::command::{GuestMemory, INCOMING_FD};
use super::instance::{QemuInstance, SOCKET_WAIT};
use super::memory;
use super::migration::{load_incoming, Incoming};
use super::{
    LaunchOptions, QemuBackend, QemuError, Transport, QEMU_BINARY, SERIAL_SOCKET,
    VHOST_VSOCK_BINARY,
};
use crate::vm::accel::{self, Accel};
use crate::vm::channel::{GuestChannel, SerialChannel};
use crate::vm::config::VmConfig;
use crate::vm::confine::jail::JailError;
use crate::vm::confine::prepare::Confinement;
use crate::vm::confine::seccomp::{ProcessKind, SeccompFilter};
use crate::vm::host::tail;
use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::runtime::RuntimeDir;
use crate::vm::vsock::Vsock;
use crate::vm::{VmError, VmInstance};

/// vhost-device-vsock's buffer for data from the guest, per connection, and
/// so the credit it gives the guest: with its 64 KiB default a download
/// waits for a credit update every 48 KiB. Host memory per connection is
/// bounded by it. (2 MiB hung downloads of an earlier agent build: see
/// docs/decisions.md.)
const VHOST_TX_BUFFER: u32 = 256 * 1024;

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

impl QemuBackend {
    /// Starts a VM with the given transport, booting or restoring a snapshot.
    pub async fn launch_with(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        opts: &LaunchOptions,
    ) -> Result<QemuInstance, VmError> {
        // Before anything is started: the vsock transport needs its device process.
        let vhost_vsock = match opts.transport {
            Transport::Vsock => Some(self.vhost_vsock()?.to_path_buf()),
            Transport::Serial => None,
        };
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
        if accel == Accel::Kvm {
            confinement.open_kvm();
        }
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
            shared_memory: None,
            ignore_shared: self.share_memory && opts.transport == Transport::Serial,
            map_live_ram: self.share_memory
                && opts.transport == Transport::Serial
                && !matches!(opts.memory, GuestMemory::SharedFile(_)),
            memory_bytes: config.memory_bytes(),
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
            let mut vhost = Command::new(
                confinement.program(
                    vhost_vsock
                        .as_deref()
                        .expect("resolved for the vsock transport"),
                    dir,
                )?,
            );
            vhost
                .arg("--guest-cid")
                .arg(config.vsock.guest_cid.to_string())
                .arg("--socket")
                .arg(&vhost_sock)
                .arg("--uds-path")
                .arg(&vsock.uds_path)
                .arg("--tx-buffer-size")
                .arg(VHOST_TX_BUFFER.to_string())
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

        // Guest RAM: a prototype's file, made here; a clone's, reachable in the jail.
        let mut opts = opts.clone();
        match &mut opts.memory {
            GuestMemory::SharedFile(path) => {
                memory::create_shared(path, confinement.ids)?;
                inst.shared_memory = Some(path.clone());
            }
            GuestMemory::PrivateFile(path) => {
                *path = confinement.readable_file("prototype memory", path, dir, "boot-memory")?;
            }
            GuestMemory::SnapshotRam { path, .. } => {
                *path = confinement.readable_file("snapshot memory", path, dir, "boot-memory")?;
            }
            GuestMemory::Memfd | GuestMemory::Anonymous => {}
        }
        // A snapshot with mapped RAM is handed over QMP (it is read at
        // offsets); a stream as fd 3.
        let mapped_incoming = match (&opts.incoming, &opts.memory) {
            (Some(path), GuestMemory::SnapshotRam { .. }) => Some(
                File::open(path)
                    .map_err(|e| VmError::io(format!("opening snapshot {}", path.display()), e))?,
            ),
            _ => None,
        };
        let opts = &opts;
        let built = self.qemu_command(&confinement.config, accel, dir, opts);
        // The same command, run by the path the jail uid can reach.
        let mut qemu = Command::new(confinement.program(&self.qemu, dir)?);
        qemu.args(built.get_args());
        qemu.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "qemu.log")?);
        // Keeps the snapshot open until QEMU has been started with it as fd 3.
        let _incoming = match &opts.incoming {
            Some(path) if mapped_incoming.is_none() => Some(pass_fd(&mut qemu, path)?),
            _ => None,
        };
        tracing::debug!(vm = %config.id, cmd = ?qemu, "starting qemu");
        let filter = SeccompFilter::new(ProcessKind::Qemu, confinement.level, accel == Accel::Kvm)
            .map_err(JailError::from)?;
        inst.start(QEMU_BINARY, qemu, dir, &confinement, filter)?;
        let qmp_sock = dir.file("qmp.sock");
        inst.wait_for_socket(QEMU_BINARY, &qmp_sock, dir, "qemu.log")
            .await?;
        let qmp_failed = |inst: &mut QemuInstance, e: QmpError| {
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
                Err(QmpError::Io(e))
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
            let incoming = match &mapped_incoming {
                Some(file) => Incoming::MappedRam(file),
                None => Incoming::Stream {
                    ignore_shared: inst.ignore_shared,
                },
            };
            if let Err(e) = load_incoming(&mut qmp, incoming).await {
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
