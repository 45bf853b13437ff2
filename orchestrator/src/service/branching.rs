//! Branching live sandboxes: snapshot one (it runs on), create sandboxes
//! from a snapshot, fork (snapshot + N sandboxes), pause (snapshot to disk,
//! VM destroyed, host memory freed) and resume under the same id — also
//! after the service restarted, since paused sandboxes are files plus
//! metadata in the [`SnapshotStore`](super::snapshots::SnapshotStore).
//!
//! Every sandbox made from a snapshot is a new VM restored from its files
//! (checked against their checksums first, and only on the machine they
//! were taken on: same kernel, initramfs, image and VMM), with fresh
//! entropy and the current time, its own runtime directory, cgroup and
//! confinement; forks share nothing writable. Processes that outlived their
//! command keep running in each; the commands the service was running for
//! the source (`exec`, background commands) belong to the source's session
//! and are ended in the copies.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::error::{ErrorCode, ServiceError};
use super::lifecycle::{new_id, new_secret};
use super::pools::Shape;
use super::sandbox::{Owner, Sandbox, SandboxSpec};
use super::snapshots::{self, check_name, Machine, SavedSandbox, SnapshotMeta};
use super::types::{
    CreateSandbox, CreateSnapshot, ForkResult, ForkSandbox, SandboxInfo, SandboxState, SnapshotInfo,
};
use super::Service;
use crate::vm::config::AccelChoice;
use crate::vm::{Accel, VmError, VmHandle};

/// Sandboxes one fork may make.
pub const MAX_FORK_COUNT: u32 = 16;

impl Service {
    /// Snapshots the sandbox `id` of `owner`; it runs on, paused only while
    /// its state is written.
    pub async fn snapshot(
        &self,
        owner: &Owner,
        id: &str,
        req: CreateSnapshot,
    ) -> Result<SnapshotInfo, ServiceError> {
        if let Some(name) = &req.name {
            check_name("name", name)?;
        }
        let sandbox = self.get(owner, id)?;
        let _busy = sandbox.busy();
        let meta = self.write_snapshot(&sandbox, req.name, false).await?;
        tracing::info!(sandbox = %id, snapshot = %meta.id, pause_ms = meta.pause_ms, total_ms = meta.total_ms, bytes = meta.bytes(), "snapshot taken");
        Ok(self.inner.snapshots.info(&meta))
    }

    /// Writes a snapshot of `sandbox` into the store.
    async fn write_snapshot(
        &self,
        sandbox: &Sandbox,
        name: Option<String>,
        paused: bool,
    ) -> Result<SnapshotMeta, ServiceError> {
        let spec = &sandbox.spec;
        let store = &self.inner.snapshots;
        let saved = SavedSandbox {
            id: sandbox.id.clone(),
            owner: sandbox.owner.0.clone(),
            image: spec.image.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            labels: spec.labels.clone(),
            idle_timeout_s: spec.idle_timeout.map(|d| d.as_secs()),
            created_unix: sandbox
                .created()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            lifetime_left_s: sandbox.lifetime_left().as_secs().max(1),
            // Only a resume gets the sandbox's secret back.
            access_token: if paused {
                sandbox.access_token().to_string()
            } else {
                String::new()
            },
        };
        // The guest's memory bounds the snapshot's size.
        let pending = store.begin(u64::from(spec.memory_mib) << 20)?;
        let vm = sandbox.vm().await;
        let Some((vm, _)) = vm.as_ref() else {
            return Err(ServiceError::not_found(format!(
                "sandbox {} ended before it could be snapshotted",
                sandbox.id
            )));
        };
        let machine = self.machine(&shape_of(spec), vm)?;
        let meta = snapshots::new_meta(name, paused, saved, machine);
        store.write(pending, vm, meta).await
    }

    /// The machine `vm` of `shape` runs on, as a snapshot records it.
    fn machine(&self, shape: &Shape, vm: &VmHandle) -> Result<Machine, ServiceError> {
        let config = self.inner.pools.config_for(shape)?;
        let (key, _) = crate::vm::prototype::key_for(&config)
            .map_err(|e| ServiceError::internal(format!("identifying the machine: {e}")))?;
        Ok(Machine {
            backend: vm.backend,
            accel: vm.accel,
            kernel: config.kernel,
            initramfs: config.initramfs,
            rootfs: config.rootfs,
            key,
        })
    }

    /// A new VM from the snapshot `meta`: refused (nothing started) when it
    /// was taken on another machine or its files are damaged.
    async fn restore(&self, meta: &SnapshotMeta) -> Result<VmHandle, ServiceError> {
        let invalid = |why: String| {
            ServiceError::new(
                ErrorCode::SnapshotInvalid,
                format!(
                    "snapshot {} cannot be restored: {why}; nothing was started",
                    meta.id
                ),
            )
        };
        let shape = Shape {
            image: meta.sandbox.image.clone(),
            vcpus: meta.sandbox.vcpus,
            memory_mib: meta.sandbox.memory_mib,
        };
        let mut config = self
            .inner
            .pools
            .config_for(&shape)
            .map_err(|e| invalid(format!("its machine cannot be made here: {e}")))?;
        let (key, _) = crate::vm::prototype::key_for(&config)
            .map_err(|e| invalid(format!("its machine cannot be made here: {e}")))?;
        // The key hashes the kernel's, initramfs', image's and VMM's identities.
        if key != meta.machine.key {
            return Err(invalid(format!(
                "it was taken with another kernel, initramfs, image or VMM than this service \
                 runs now (kernel {}, image {}; machine {} then, {key} now)",
                meta.machine.kernel.display(),
                meta.sandbox.image,
                meta.machine.key
            )));
        }
        let files = self.inner.snapshots.checked_files(meta).await?;
        config.id = format!("rs-{}", &new_id()?[3..]);
        config.backend = meta.machine.backend.into();
        config.accel = match meta.machine.accel {
            Accel::Kvm => AccelChoice::Kvm,
            Accel::Tcg => AccelChoice::Tcg,
        };
        crate::vm::restore_vm(&config, &files)
            .await
            .map_err(|e| match e {
                e @ VmError::RestoreFailed { .. } => invalid(e.to_string()),
                e => ServiceError::unavailable(format!("restoring snapshot {}: {e}", meta.id)),
            })
    }

    /// `create` with `from_snapshot`: a new sandbox restored from a snapshot of `owner`.
    pub(super) async fn create_from_snapshot(
        &self,
        owner: &Owner,
        req: CreateSandbox,
        from: &str,
        lifetime: Duration,
    ) -> Result<SandboxInfo, ServiceError> {
        let t0 = Instant::now();
        for (field, set) in [
            ("image", req.image.is_some()),
            ("vcpus", req.vcpus.is_some()),
            ("memory_mib", req.memory_mib.is_some()),
        ] {
            if set {
                return Err(ServiceError::bad_request(format!(
                    "{field}: a sandbox made from a snapshot has the snapshot's; leave {field} out"
                )));
            }
        }
        let meta = self.inner.snapshots.find(&owner.0, from)?;
        let reservation = self.reserve(u64::from(meta.sandbox.memory_mib))?;
        let vm = self.restore(&meta).await?;
        let saved = &meta.sandbox;
        let mut env = saved.env.clone();
        env.extend(req.env);
        let cwd = req.cwd.or_else(|| saved.cwd.clone());
        if let Some(cwd) = cwd.as_deref().filter(|c| Some(*c) != saved.cwd.as_deref()) {
            if let Err(e) = vm.agent().mkdir(cwd, 0o755, true).await {
                let _ = crate::vm::destroy_vm(vm).await;
                return Err(ServiceError::bad_request(format!("cwd {cwd}: {e}")));
            }
        }
        let spec = SandboxSpec {
            image: saved.image.clone(),
            vcpus: saved.vcpus,
            memory_mib: saved.memory_mib,
            env,
            cwd,
            labels: req.labels,
            idle_timeout: req.idle_timeout_s.map(Duration::from_secs),
        };
        let sandbox = Sandbox::new(
            new_id()?,
            owner.clone(),
            spec,
            new_secret()?,
            lifetime,
            vm,
            None,
        )
        .with_origin(SystemTime::now(), Some(meta.id.clone()));
        let info = self.admit(owner, sandbox, reservation).await?;
        self.inner.metrics.created(t0.elapsed());
        tracing::info!(sandbox = %info.id, snapshot = %meta.id, ms = t0.elapsed().as_millis() as u64, "sandbox created from a snapshot");
        Ok(info)
    }

    /// Snapshots the sandbox `id` and makes `count` sandboxes from it.
    pub async fn fork(
        &self,
        owner: &Owner,
        id: &str,
        req: ForkSandbox,
    ) -> Result<ForkResult, ServiceError> {
        let count = req.count.unwrap_or(1);
        if count == 0 || count > MAX_FORK_COUNT {
            return Err(ServiceError::bad_request(format!(
                "count must be between 1 and {MAX_FORK_COUNT}"
            )));
        }
        let template = CreateSandbox {
            labels: req.labels,
            timeout_s: req.timeout_s,
            idle_timeout_s: req.idle_timeout_s,
            ..CreateSandbox::default()
        };
        let lifetime = self.check_create(&template)?;
        let snapshot = self.snapshot(owner, id, CreateSnapshot::default()).await?;
        let creates = (0..count).map(|_| {
            let req = CreateSandbox {
                from_snapshot: Some(snapshot.id.clone()),
                ..template.clone()
            };
            self.create_from_snapshot(owner, req, &snapshot.id, lifetime)
        });
        let results = futures::future::join_all(creates).await;
        let mut sandboxes = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(info) => sandboxes.push(info),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            // All or nothing: the snapshot stays, the forks made go.
            for made in &sandboxes {
                let _ = self.destroy(owner, &made.id).await;
            }
            return Err(e);
        }
        Ok(ForkResult {
            snapshot,
            sandboxes,
        })
    }

    /// Pauses the sandbox `id`: its memory and files to disk, its VM
    /// destroyed. Its lifetime stops until it is resumed.
    pub async fn pause(&self, owner: &Owner, id: &str) -> Result<SandboxInfo, ServiceError> {
        let t0 = Instant::now();
        let sandbox = {
            let live = self.get(owner, id)?;
            // From here on callers are told it is paused; nothing new starts in it.
            let mut t = self.inner.table.lock().expect("table");
            t.live.remove(id);
            t.moving.insert(id.to_string(), owner.clone());
            live
        };
        let written = self.write_snapshot(&sandbox, None, true).await;
        let meta = match written {
            Ok(meta) => meta,
            Err(e) => {
                // Still running: it stays live.
                let mut t = self.inner.table.lock().expect("table");
                t.moving.remove(id);
                t.live.insert(id.to_string(), sandbox);
                return Err(e);
            }
        };
        self.inner.table.lock().expect("table").moving.remove(id);
        if let Err(e) = sandbox.destroy_vm().await {
            tracing::warn!(sandbox = %id, "destroying the paused sandbox's VM: {e}");
        }
        self.inner.metrics.ended("paused");
        tracing::info!(sandbox = %id, snapshot = %meta.id, pause_ms = meta.pause_ms, ms = t0.elapsed().as_millis() as u64, bytes = meta.bytes(), "sandbox paused");
        Ok(self.paused_info(&meta))
    }

    /// Resumes the paused sandbox `id` under its own id, with the lifetime
    /// it had left.
    pub async fn resume(&self, owner: &Owner, id: &str) -> Result<SandboxInfo, ServiceError> {
        let t0 = Instant::now();
        let meta = match self.inner.snapshots.paused(id) {
            Some(m) if m.sandbox.owner == owner.0 => m,
            _ => {
                self.get(owner, id)?;
                return Err(ServiceError::conflict(format!(
                    "sandbox {id} is running, not paused"
                )));
            }
        };
        {
            let mut t = self.inner.table.lock().expect("table");
            if t.moving.contains_key(id) || t.live.contains_key(id) {
                return Err(ServiceError::conflict(format!(
                    "sandbox {id} is already being paused or resumed"
                )));
            }
            t.moving.insert(id.to_string(), owner.clone());
        }
        let restored = self.restore_paused(owner, &meta).await;
        match restored {
            Ok(info) => {
                if let Err(e) = self.inner.snapshots.remove(&meta.id) {
                    tracing::warn!(sandbox = %id, "removing the resumed sandbox's snapshot: {e}");
                }
                tracing::info!(sandbox = %id, ms = t0.elapsed().as_millis() as u64, "sandbox resumed");
                Ok(info)
            }
            Err(e) => {
                self.inner.table.lock().expect("table").moving.remove(id);
                Err(e)
            }
        }
    }

    async fn restore_paused(
        &self,
        owner: &Owner,
        meta: &SnapshotMeta,
    ) -> Result<SandboxInfo, ServiceError> {
        let saved = &meta.sandbox;
        let reservation = self.reserve(u64::from(saved.memory_mib))?;
        let vm = self.restore(meta).await?;
        let spec = SandboxSpec {
            image: saved.image.clone(),
            vcpus: saved.vcpus,
            memory_mib: saved.memory_mib,
            env: saved.env.clone(),
            cwd: saved.cwd.clone(),
            labels: saved.labels.clone(),
            idle_timeout: saved.idle_timeout_s.map(Duration::from_secs),
        };
        let sandbox = Sandbox::new(
            saved.id.clone(),
            owner.clone(),
            spec,
            saved.access_token.clone(),
            Duration::from_secs(saved.lifetime_left_s.max(1)),
            vm,
            None,
        )
        .with_origin(UNIX_EPOCH + Duration::from_secs(saved.created_unix), None);
        self.admit(owner, sandbox, reservation).await
    }

    /// The sandbox `id` of `owner` as inspect shows it, running or paused.
    pub fn inspect(&self, owner: &Owner, id: &str) -> Result<SandboxInfo, ServiceError> {
        match self.inner.snapshots.paused(id) {
            Some(m) if m.sandbox.owner == owner.0 && !self.is_live(id) => Ok(self.paused_info(&m)),
            _ => Ok(self.get(owner, id)?.info()),
        }
    }

    /// The snapshots of `owner` (paused sandboxes are listed as sandboxes).
    pub fn list_snapshots(&self, owner: &Owner) -> Vec<SnapshotInfo> {
        let store = &self.inner.snapshots;
        store
            .list(&owner.0, false)
            .iter()
            .map(|m| store.info(m))
            .collect()
    }

    pub fn get_snapshot(&self, owner: &Owner, id: &str) -> Result<SnapshotInfo, ServiceError> {
        let store = &self.inner.snapshots;
        Ok(store.info(&store.find(&owner.0, id)?))
    }

    /// Removes the snapshot `id` (or name) of `owner`. Sandboxes made from it
    /// are not affected.
    pub fn remove_snapshot(&self, owner: &Owner, id: &str) -> Result<(), ServiceError> {
        let meta = self.inner.snapshots.find(&owner.0, id)?;
        self.inner.snapshots.remove(&meta.id)
    }

    /// Bytes taken by snapshots and paused sandboxes.
    pub fn snapshot_bytes(&self) -> u64 {
        self.inner.snapshots.used_bytes()
    }

    /// A paused sandbox as list and inspect show it.
    pub(super) fn paused_info(&self, meta: &SnapshotMeta) -> SandboxInfo {
        let saved = &meta.sandbox;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        SandboxInfo {
            id: saved.id.clone(),
            state: SandboxState::Paused,
            image: saved.image.clone(),
            vcpus: saved.vcpus,
            memory_mib: saved.memory_mib,
            labels: saved.labels.clone(),
            env: saved.env.clone(),
            cwd: saved.cwd.clone(),
            created_at: saved.created_unix,
            // While paused: when the service removes it (--paused-retention).
            expires_at: self.inner.snapshots.expires_at(meta),
            age_s: now.saturating_sub(saved.created_unix),
            idle_s: now.saturating_sub(meta.created_unix),
            idle_timeout_s: saved.idle_timeout_s,
            host_rss_mib: 0,
            running_commands: 0,
            kernel_release: String::new(),
            vm_id: String::new(),
            from_snapshot: None,
            paused_bytes: Some(meta.bytes()),
        }
    }
}

fn shape_of(spec: &SandboxSpec) -> Shape {
    Shape {
        image: spec.image.clone(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
    }
}
