//! QEMU `microvm` backend.
//!
//! Per VM: one `vhost-device-vsock` process (the vsock device, serving the
//! hybrid vsock socket) and one `qemu-system-x86_64 -M microvm` process with no
//! network device, its serial console in a log file and a QMP socket.
//!
//! The backend ([`QemuBackend`], its [`Hypervisor`] impl and the transport a
//! launch uses) is here; the command line is built in `command`, a VM is
//! started (booted or restored) in `launch`, and a running VM is a
//! [`QemuInstance`] (`instance`). [`QemuError`] says what went wrong.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::accel::{self, Accel};
use super::backend::{BackendKind, Capabilities, Hypervisor, LaunchPurpose, VmInstance};
use super::config::VmConfig;
use super::host::{file_identity, find_tool};
use super::runtime::RuntimeDir;
use super::VmError;

mod command;
mod error;
mod instance;
mod launch;
mod mapped_ram;
mod memory;
mod migration;

pub use command::GuestMemory;
pub use error::QemuError;
pub use instance::{QemuInstance, MAPPED_SNAPSHOT_FILE};
pub use memory::{clones_share_memory, CLONE_MEMORY_ENV};
pub use migration::{load_incoming, Incoming};

/// The host end of the virtio-serial agent port, in the VM's runtime directory.
pub const SERIAL_SOCKET: &str = "agent.sock";

pub const QEMU_BINARY: &str = "qemu-system-x86_64";
pub const VHOST_VSOCK_BINARY: &str = "vhost-device-vsock";

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
    /// What backs guest RAM.
    pub memory: GuestMemory,
}

impl LaunchOptions {
    pub fn cold() -> LaunchOptions {
        LaunchOptions {
            transport: Transport::Vsock,
            incoming: None,
            memory: GuestMemory::Memfd,
        }
    }
}

/// A prototype's guest RAM, beside its migration stream, when clones share it.
pub const MEMORY_FILE: &str = "memory.bin";

pub struct QemuBackend {
    qemu: PathBuf,
    /// Needed only for the vsock transport (cold VMs): a clone of a
    /// prototype (virtio-serial) runs without it.
    vhost_vsock: Result<PathBuf, String>,
    /// Clones map their prototype's memory copy-on-write (see
    /// [`GuestMemory::PrivateFile`]) instead of loading a copy of it.
    share_memory: bool,
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
        let qemu = qemu_binary()?;
        let share_memory = memory::clones_share_memory(&qemu)?;
        Ok(QemuBackend {
            qemu,
            vhost_vsock: find_tool("IRONCLAW_VHOST_VSOCK", VHOST_VSOCK_BINARY, VHOST_VSOCK_HINT)
                .map_err(|e| e.to_string()),
            share_memory,
        })
    }

    /// Whether clones of this backend's prototypes share their memory.
    pub fn shares_memory(&self) -> bool {
        self.share_memory
    }

    /// A backend with this QEMU (its file identity is part of prototype keys).
    #[cfg(test)]
    pub(crate) fn with_qemu(qemu: PathBuf) -> QemuBackend {
        QemuBackend {
            qemu,
            vhost_vsock: Err("not needed".into()),
            share_memory: false,
        }
    }

    /// vhost-device-vsock, or why it cannot be used.
    pub(crate) fn vhost_vsock(&self) -> Result<&Path, VmError> {
        self.vhost_vsock
            .as_deref()
            .map_err(|_| VmError::MissingTool {
                tool: VHOST_VSOCK_BINARY.into(),
                hint: VHOST_VSOCK_HINT.into(),
            })
    }
}

const VHOST_VSOCK_HINT: &str =
    "cargo install --locked vhost-device-vsock (or run scripts/setup.sh); set $IRONCLAW_VHOST_VSOCK to use another";

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

    fn snapshot_identity(&self, config: &VmConfig, accel: Accel) -> Result<Vec<String>, VmError> {
        // A migration stream is loadable by the QEMU that wrote it, with
        // its RAM in the stream or in a file beside it.
        let memory = if self.share_memory {
            "shared"
        } else {
            "copied"
        };
        Ok(vec![
            format!("vmm={}", file_identity(&self.qemu)?),
            format!("clone-memory={memory}"),
            format!("machine={}", command::accel_args(accel).join(" ")),
            format!("cmdline={}", super::cmdline::qemu_unmeasured(config, true)),
        ])
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
        let memory = match purpose {
            LaunchPurpose::Run => GuestMemory::Memfd,
            LaunchPurpose::Snapshot if self.share_memory => {
                GuestMemory::SharedFile(dir.file(MEMORY_FILE))
            }
            LaunchPurpose::Snapshot => GuestMemory::Anonymous,
        };
        let opts = LaunchOptions {
            transport,
            incoming: None,
            memory,
        };
        Ok(Box::new(self.launch_with(config, dir, &opts).await?))
    }

    async fn restore(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        snapshot: &[PathBuf],
    ) -> Result<Box<dyn VmInstance>, VmError> {
        let (stream, memory) =
            match snapshot {
                [stream] if stream.file_name() == Some(MAPPED_SNAPSHOT_FILE.as_ref()) => {
                    let region = mapped_ram::ram_region(stream, config.memory_bytes())
                        .map_err(VmError::SnapshotIncompatible)?;
                    let memory = GuestMemory::SnapshotRam {
                        path: stream.clone(),
                        offset: region.pages_offset,
                    };
                    (stream, memory)
                }
                [stream] => (stream, GuestMemory::Anonymous),
                [stream, memory] if self.share_memory => {
                    (stream, GuestMemory::PrivateFile(memory.clone()))
                }
                [_, _] => return Err(VmError::SnapshotIncompatible(
                    "the snapshot keeps its memory in a file beside the stream, which this QEMU \
                     cannot map copy-on-write (needs QEMU 8.2 or later)"
                        .into(),
                )),
                _ => {
                    return Err(VmError::SnapshotIncompatible(format!(
                    "a QEMU snapshot is a migration stream and at most a memory file, not {} files",
                    snapshot.len()
                )))
                }
            };
        let opts = LaunchOptions {
            transport: Transport::Serial,
            incoming: Some(stream.clone()),
            memory,
        };
        Ok(Box::new(self.launch_with(config, dir, &opts).await?))
    }
}
