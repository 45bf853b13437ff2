//! A running QEMU VM: its confined processes, snapshotting it (a migration
//! to a file), and its [`VmInstance`] side (channel, exit, kill).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::migration::{
    create_snapshot_file, fdset_add, fdset_remove, has_mapped_ram, migrate_to, set_mapped_ram,
    set_parameters, wait_migrated, wait_precopy,
};
use super::{memory, QemuError, MEMORY_FILE};
use crate::vm::accel::Accel;
use crate::vm::backend::{LiveCopy, LiveSnapshot, VmInstance};
use crate::vm::channel::GuestChannel;
use crate::vm::confine::cgroup::VmCgroup;
use crate::vm::confine::jail::{self, Confined, JailError, ProcessConfinement};
use crate::vm::confine::prepare::Confinement;
use crate::vm::confine::seccomp::{self, AuditLog, SeccompFilter};
use crate::vm::host::{tail, wait_for_socket, SocketReady, SocketWaitError};
use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::runtime::RuntimeDir;
use crate::vm::VmError;

/// How long the helper processes get to create their sockets.
pub(super) const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// A running QEMU VM: its confined processes (start order), sockets and cgroup.
pub struct QemuInstance {
    pub(super) accel: Accel,
    /// (name, process, its filter), in start order.
    pub(super) children: Vec<(&'static str, Confined, SeccompFilter)>,
    pub(super) console: PathBuf,
    pub(super) qmp: PathBuf,
    pub(super) channel: Arc<dyn GuestChannel>,
    pub(super) ready: Option<tokio::net::UnixListener>,
    /// Sockets this VM creates outside its runtime directory (a custom
    /// `vsock.uds_path` and its `_<port>` sockets), removed on kill.
    pub(super) outside_sockets: Vec<PathBuf>,
    /// Removed after the processes are dead.
    pub(super) cgroup: Option<VmCgroup>,
    pub(super) audit: Option<Arc<AuditLog>>,
    pub(super) memory_limit_mib: u32,
    /// The file guest RAM is mapped shared from (a prototype's), kept
    /// beside the stream when the VM is snapshotted.
    pub(super) shared_memory: Option<PathBuf>,
    /// Streams leave shared RAM out (see [`load_incoming`]).
    pub(super) ignore_shared: bool,
    /// Live snapshots keep guest RAM mappable ([`super::mapped_ram`]) when
    /// this QEMU can write them so: clones share memory and this VM's RAM
    /// is private (not a prototype's shared file).
    pub(super) map_live_ram: bool,
    pub(super) memory_bytes: u64,
}

impl QemuInstance {
    /// The files [`Self::snapshot_to`] writes: the stream, then the RAM file if any.
    fn snapshot_files(&self) -> Vec<String> {
        let mut files = vec![SNAPSHOT_FILE.to_string()];
        if self.shared_memory.is_some() {
            files.push(MEMORY_FILE.to_string());
        }
        files
    }

    /// Pauses the VM and writes its state (a QEMU migration stream) to `dest`.
    /// The VM stays paused unless `then_resume`, in which case it runs on
    /// (also when writing failed).
    /// With its RAM in a shared file, the stream leaves the RAM out and a
    /// copy of the file is written to `ram_dest`.
    pub async fn snapshot_to(
        &self,
        dest: &Path,
        ram_dest: &Path,
        then_resume: bool,
    ) -> Result<(), VmError> {
        let qmp_err = |e: QmpError| VmError::from(QemuError::SnapshotQmp(e));
        let mut qmp = Qmp::connect(&self.qmp).await.map_err(qmp_err)?;
        qmp.execute("stop", None).await.map_err(qmp_err)?;
        let mut written = migrate_to(&mut qmp, dest, self.ignore_shared).await;
        if let (Ok(()), Some(ram)) = (&written, &self.shared_memory) {
            // The guest is stopped: the file holds its RAM as the stream's
            // device state expects it.
            let (ram, ram_dest) = (ram.clone(), ram_dest.to_path_buf());
            written = tokio::task::spawn_blocking(move || memory::keep_ram(&ram, &ram_dest))
                .await
                .unwrap_or_else(|e| Err(VmError::TaskFailed(format!("copying guest RAM: {e}"))));
        }
        if then_resume {
            // After a completed migration the source is in `postmigrate`;
            // `cont` reactivates its block devices and runs it again.
            qmp.execute("cont", None).await.map_err(qmp_err)?;
        }
        written
    }

    /// A live snapshot into `dest` with `mapped-ram`, its RAM then detached
    /// ([`super::mapped_ram::detach_ram`]); the VM runs on afterwards (also
    /// when writing failed). With [`LiveCopy::Precopy`] the guest runs while
    /// its memory is written (pages it changes meanwhile are written again
    /// at their offsets) and QEMU pauses it to finish. Returns how long the
    /// guest was paused; `Ok(None)`: this QEMU cannot, nothing written.
    async fn snapshot_mapped(
        &self,
        dest: &Path,
        copy: LiveCopy,
    ) -> Result<Option<Duration>, VmError> {
        let qmp_err = |e: QmpError| VmError::from(QemuError::SnapshotQmp(e));
        let mut qmp = Qmp::connect(&self.qmp).await.map_err(qmp_err)?;
        if !has_mapped_ram(&mut qmp).await.map_err(qmp_err)? {
            return Ok(None);
        }
        let paused_here = match copy {
            LiveCopy::Paused => {
                qmp.execute("stop", None).await.map_err(qmp_err)?;
                Some(Instant::now())
            }
            LiveCopy::Precopy => None,
        };
        let written = async {
            set_mapped_ram(&mut qmp).await.map_err(qmp_err)?;
            set_parameters(&mut qmp).await.map_err(qmp_err)?;
            let file = create_snapshot_file(dest)?;
            let uri = fdset_add(&mut qmp, &file).await.map_err(qmp_err)?;
            drop(file);
            let started = Instant::now();
            qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
                .await
                .map_err(qmp_err)?;
            match paused_here {
                Some(since) => wait_migrated(&mut qmp).await.map(|()| since),
                None => wait_precopy(&mut qmp, started).await,
            }
            .map_err(VmError::from)
        }
        .await;
        // After a completed migration the source is in `postmigrate`;
        // `cont` reactivates its block devices and runs it again. The file
        // is finished below with the guest running.
        let resumed = qmp.execute("cont", None).await.map(|_| Instant::now());
        let removed = fdset_remove(&mut qmp).await.map_err(qmp_err);
        // A guest left paused is the first thing to report.
        let resumed = resumed.map_err(qmp_err)?;
        let paused_since = written?;
        removed?;
        let (path, bytes) = (dest.to_path_buf(), self.memory_bytes);
        tokio::task::spawn_blocking(move || super::mapped_ram::detach_ram(&path, bytes))
            .await
            .map_err(|e| VmError::TaskFailed(format!("detaching the snapshot's RAM: {e}")))?
            .map_err(VmError::SnapshotIncompatible)?;
        Ok(Some(resumed.saturating_duration_since(paused_since)))
    }

    pub(super) fn start(
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
    pub(super) fn exited_soon(&mut self) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        loop {
            let exited = self.exited();
            if exited.is_some() || std::time::Instant::now() >= deadline {
                return exited;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `name` has created `socket`, failing early if it exits.
    pub(super) async fn wait_for_socket(
        &mut self,
        name: &'static str,
        socket: &Path,
        dir: &RuntimeDir,
        log: &str,
    ) -> Result<(), VmError> {
        let log = dir.file(log);
        let exited = |inst: &mut QemuInstance| inst.exited();
        let ready = SocketReady::Exists;
        wait_for_socket(self, socket, ready, SOCKET_WAIT, exited, |_| {
            tail(&log, 2000)
        })
        .await
        .map_err(|e| match e {
            SocketWaitError::Exited { status, log_tail } => QemuError::ExitedEarly {
                process: name,
                status,
                socket: socket.to_path_buf(),
                log_tail,
            },
            SocketWaitError::TimedOut { waited } => QemuError::SocketTimeout {
                process: name,
                socket: socket.to_path_buf(),
                waited,
            },
        })
        .map_err(VmError::from)
    }
}

/// The migration stream a QEMU snapshot consists of.
const SNAPSHOT_FILE: &str = "snapshot.bin";
/// A live snapshot whose RAM is mapped by the VMs restored from it
/// ([`super::mapped_ram`]): device state and RAM in one file.
pub const MAPPED_SNAPSHOT_FILE: &str = "snapshot.mapped-ram";

#[async_trait]
impl VmInstance for QemuInstance {
    async fn snapshot(&mut self, out: &Path) -> Result<Vec<String>, VmError> {
        self.snapshot_to(&out.join(SNAPSHOT_FILE), &out.join(MEMORY_FILE), false)
            .await?;
        Ok(self.snapshot_files())
    }
    async fn snapshot_live(&self, out: &Path, copy: LiveCopy) -> Result<LiveSnapshot, VmError> {
        if self.map_live_ram {
            if let Some(paused) = self
                .snapshot_mapped(&out.join(MAPPED_SNAPSHOT_FILE), copy)
                .await?
            {
                return Ok(LiveSnapshot {
                    files: vec![MAPPED_SNAPSHOT_FILE.to_string()],
                    paused,
                });
            }
        }
        // A stream (QEMU < 9, or RAM in a prototype's shared file): written
        // with the guest paused, whatever `copy` asks.
        let t0 = Instant::now();
        self.snapshot_to(&out.join(SNAPSHOT_FILE), &out.join(MEMORY_FILE), true)
            .await?;
        Ok(LiveSnapshot {
            files: self.snapshot_files(),
            paused: t0.elapsed(),
        })
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
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map(VmCgroup::dirs).unwrap_or_default()
    }
}

impl Drop for QemuInstance {
    fn drop(&mut self) {
        self.kill();
    }
}
