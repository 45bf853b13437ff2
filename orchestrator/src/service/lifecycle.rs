//! [`Service`]: the table of live sandboxes, their creation within the
//! service's limits, lookup by owner, destruction, and the reaper that
//! destroys sandboxes past their lifetime or idle timeout.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{ErrorCode, ServiceError};
use super::metrics::Metrics;
use super::pools::{Pools, DEFAULT_CWD, NO_IMAGE};
use super::sandbox::{Owner, Sandbox, SandboxSpec};
use super::snapshots::SnapshotStore;
use super::types::{CreateSandbox, SandboxInfo};
use super::ServiceConfig;
use crate::vm::pool::PoolError;

/// Ended sandboxes remembered, so a late call learns why it is gone.
const REMEMBERED_ENDED: usize = 4096;
/// How often the reaper looks for expired sandboxes.
const REAP_EVERY: Duration = Duration::from_millis(500);
const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: usize = 256;

/// Why a sandbox is gone.
#[derive(Debug, Clone)]
struct Ended {
    owner: Owner,
    expired: bool,
    why: String,
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) live: HashMap<String, Arc<Sandbox>>,
    /// Sandboxes being paused or resumed (with their owners): neither live
    /// nor paused yet.
    pub(super) moving: HashMap<String, Owner>,
    ended: HashMap<String, Ended>,
    ended_order: VecDeque<String>,
    /// Creations between the limit check and the table entry.
    pending: usize,
    pending_mib: u64,
}

impl Table {
    pub(super) fn remember_ended(&mut self, id: String, owner: Owner, expired: bool, why: String) {
        self.remember(
            id,
            Ended {
                owner,
                expired,
                why,
            },
        );
    }

    fn remember(&mut self, id: String, ended: Ended) {
        if self.ended.insert(id.clone(), ended).is_none() {
            self.ended_order.push_back(id);
        }
        while self.ended_order.len() > REMEMBERED_ENDED {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    fn memory_mib(&self) -> u64 {
        self.live
            .values()
            .map(|s| u64::from(s.spec.memory_mib))
            .sum::<u64>()
            + self.pending_mib
    }
}

pub(super) struct Inner {
    pub(super) config: ServiceConfig,
    pub(super) pools: Pools,
    pub(super) metrics: Metrics,
    pub(super) snapshots: SnapshotStore,
    default_image: String,
    pub(super) table: Mutex<Table>,
    stopping: AtomicBool,
}

/// The sandboxes of this host. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct Service {
    pub(super) inner: Arc<Inner>,
}

/// A place reserved under the limits while a sandbox is being made.
pub(super) struct Reservation<'a> {
    service: &'a Service,
    mib: u64,
    settled: bool,
}

impl Reservation<'_> {
    /// Gives the place back, under the table lock the caller holds.
    fn settle(mut self, t: &mut Table) {
        t.pending -= 1;
        t.pending_mib -= self.mib;
        self.settled = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let mut t = self.service.inner.table.lock().expect("table");
            t.pending -= 1;
            t.pending_mib -= self.mib;
        }
    }
}

impl Service {
    /// A service; its reaper runs until [`Service::shutdown`]. Fails when
    /// its snapshot directory cannot be used (another service holds it, or
    /// it is not the user's own).
    pub fn new(config: ServiceConfig) -> Result<Service, ServiceError> {
        let snapshots = SnapshotStore::open(config.snapshots.clone())?;
        let default_image = if crate::userland::default_image().is_some() {
            crate::userland::DEFAULT_IMAGE.to_string()
        } else {
            NO_IMAGE.to_string()
        };
        let pools = Pools::new(config.base.clone(), config.pool_size, config.max_sandboxes);
        let service = Service {
            inner: Arc::new(Inner {
                config,
                pools,
                metrics: Metrics::new(),
                snapshots,
                default_image,
                table: Mutex::new(Table::default()),
                stopping: AtomicBool::new(false),
            }),
        };
        let weak = Arc::downgrade(&service.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                Service { inner }.reap_expired().await;
            }
        });
        Ok(service)
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The image of a sandbox created without one.
    pub fn default_image(&self) -> &str {
        &self.inner.default_image
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Starts the pool of the default shape in the background, so the first
    /// `create` finds clones ready.
    pub fn warm_default(&self) {
        let service = self.clone();
        tokio::spawn(async move {
            let shape = service
                .inner
                .pools
                .shape(Some(&service.inner.default_image), None, None);
            if let Err(e) = service.inner.pools.get(&shape).await {
                tracing::warn!("warming the default pool: {e}");
            }
        });
    }

    /// Pools started so far, with their counters.
    pub fn pool_stats(&self) -> Vec<(super::pools::Shape, crate::vm::pool::PoolStats)> {
        self.inner.pools.stats()
    }

    pub(super) fn reserve(&self, mib: u64) -> Result<Reservation<'_>, ServiceError> {
        let c = &self.inner.config;
        let mut t = self.inner.table.lock().expect("table");
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err(ServiceError::unavailable("the service is shutting down"));
        }
        if t.live.len() + t.pending >= c.max_sandboxes {
            return Err(ServiceError::limit(format!(
                "limit reached: {} sandboxes exist (--max-sandboxes {}); destroy one or try again later",
                t.live.len() + t.pending,
                c.max_sandboxes
            )));
        }
        if t.memory_mib() + mib > c.max_memory_mib {
            return Err(ServiceError::limit(format!(
                "limit reached: {} MiB of guest memory in use, {mib} MiB more would pass --max-memory {} MiB; \
                 destroy a sandbox or ask for less memory_mib",
                t.memory_mib(),
                c.max_memory_mib
            )));
        }
        t.pending += 1;
        t.pending_mib += mib;
        Ok(Reservation {
            service: self,
            mib,
            settled: false,
        })
    }

    /// Creates a sandbox for `owner`: checks the request, reserves its place
    /// under the limits, takes a VM from the pool of its shape (or restores
    /// the snapshot the request names).
    pub async fn create(
        &self,
        owner: &Owner,
        req: CreateSandbox,
    ) -> Result<SandboxInfo, ServiceError> {
        let t0 = Instant::now();
        let lifetime = self.check_create(&req)?;
        if let Some(from) = req.from_snapshot.clone() {
            return self.create_from_snapshot(owner, req, &from, lifetime).await;
        }
        let image = req.image.as_deref().unwrap_or(&self.inner.default_image);
        let shape = self
            .inner
            .pools
            .shape(Some(image), req.vcpus, req.memory_mib);
        // Checked before anything is reserved or started.
        self.inner.pools.config_for(&shape)?;
        let reservation = self.reserve(u64::from(shape.memory_mib))?;
        let pool = self.inner.pools.get(&shape).await?;
        let vm = pool.acquire().await.map_err(|e| match e {
            PoolError::Limit { .. } => ServiceError::limit(e.to_string()),
            PoolError::Vm(e) => ServiceError::unavailable(format!("no VM for the sandbox: {e}")),
        })?;
        let cwd = req.cwd.clone().unwrap_or_else(|| DEFAULT_CWD.to_string());
        // The pool made the default one in every clone.
        let made = if cwd == DEFAULT_CWD {
            Ok(())
        } else {
            vm.agent().mkdir(&cwd, 0o755, true).await
        };
        if let Err(e) = made {
            let _ = pool.release(vm).await;
            return Err(ServiceError::bad_request(format!("cwd {cwd}: {e}")));
        }
        let spec = SandboxSpec {
            image: shape.image.clone(),
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            env: req.env,
            cwd: Some(cwd),
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
            Some(pool),
        );
        let info = self.admit(owner, sandbox, reservation).await?;
        self.inner.metrics.created(t0.elapsed());
        tracing::info!(sandbox = %info.id, owner = %owner.0, image = %shape.image, ms = t0.elapsed().as_millis() as u64, "sandbox created");
        Ok(info)
    }

    /// Checks what a create request asks for; returns the lifetime.
    pub(super) fn check_create(&self, req: &CreateSandbox) -> Result<Duration, ServiceError> {
        let lifetime = self.lifetime(req.timeout_s)?;
        if req.idle_timeout_s == Some(0) {
            return Err(ServiceError::bad_request(
                "idle_timeout_s must be at least 1",
            ));
        }
        check_env("env", &req.env)?;
        check_labels(&req.labels)?;
        if let Some(cwd) = &req.cwd {
            check_guest_path("cwd", cwd)?;
        }
        Ok(lifetime)
    }

    /// The lifetime a request's `timeout_s` asks for, within the service's.
    pub(super) fn lifetime(&self, timeout_s: Option<u64>) -> Result<Duration, ServiceError> {
        let c = &self.inner.config;
        match timeout_s {
            None => Ok(c.default_timeout),
            Some(0) => Err(ServiceError::bad_request("timeout_s must be at least 1")),
            Some(s) if Duration::from_secs(s) > c.max_timeout => {
                Err(ServiceError::bad_request(format!(
                    "timeout_s {s} is longer than the service allows ({}s)",
                    c.max_timeout.as_secs()
                )))
            }
            Some(s) => Ok(Duration::from_secs(s)),
        }
    }

    /// Makes a new sandbox live (its reservation settled); a service that
    /// began stopping meanwhile destroys it again.
    pub(super) async fn admit(
        &self,
        owner: &Owner,
        sandbox: Sandbox,
        reservation: Reservation<'_>,
    ) -> Result<SandboxInfo, ServiceError> {
        let sandbox = Arc::new(sandbox);
        let info = sandbox.info();
        let id = sandbox.id.clone();
        {
            let mut t = self.inner.table.lock().expect("table");
            t.moving.remove(&id);
            t.live.insert(id.clone(), sandbox);
            reservation.settle(&mut t);
        }
        if self.inner.stopping.load(Ordering::SeqCst) {
            let _ = self.destroy(owner, &id).await;
            return Err(ServiceError::unavailable("the service is shutting down"));
        }
        Ok(info)
    }

    /// The live sandbox `id` of `owner`; a clear error when it ended.
    pub fn get(&self, owner: &Owner, id: &str) -> Result<Arc<Sandbox>, ServiceError> {
        let t = self.inner.table.lock().expect("table");
        if let Some(s) = t.live.get(id).filter(|s| &s.owner == owner) {
            return Ok(s.clone());
        }
        let paused = self
            .inner
            .snapshots
            .paused(id)
            .filter(|m| m.sandbox.owner == owner.0);
        if paused.is_some() || t.moving.get(id) == Some(owner) {
            return Err(ServiceError::new(
                ErrorCode::SandboxPaused,
                format!(
                    "sandbox {id} is paused (or being paused or resumed): resume it first \
                     (`ironclaw sandbox resume {id}`, POST /v1/sandboxes/{id}/resume or the sandbox_resume tool)"
                ),
            ));
        }
        match t.ended.get(id).filter(|e| &e.owner == owner) {
            Some(e) if e.expired => Err(ServiceError::new(
                ErrorCode::SandboxExpired,
                format!("sandbox {id} expired: {}", e.why),
            )),
            Some(e) => Err(ServiceError::not_found(format!(
                "sandbox {id} is gone: {}",
                e.why
            ))),
            None => Err(ServiceError::not_found(format!(
                "no sandbox {id} (list yours: `ironclaw sandbox ls`, GET /v1/sandboxes or the sandbox_list tool)"
            ))),
        }
    }

    /// The live sandbox `id` for a caller that proves access with the
    /// sandbox's own access token (the E2B API's envd calls) instead of
    /// being its owner. Not found when it is not live; unauthorized when
    /// the token is missing or wrong (compared in constant time).
    pub fn get_with_access_token(
        &self,
        id: &str,
        token: Option<&[u8]>,
    ) -> Result<Arc<Sandbox>, ServiceError> {
        let sandbox = self
            .inner
            .table
            .lock()
            .expect("table")
            .live
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::not_found(format!("sandbox {id} was not found")))?;
        match token {
            Some(t) if sandbox.check_access_token(t) => Ok(sandbox),
            _ => Err(ServiceError::new(
                ErrorCode::Unauthorized,
                format!("missing or wrong access token for sandbox {id}"),
            )),
        }
    }

    pub fn list(&self, owner: &Owner) -> Vec<SandboxInfo> {
        let live: Vec<Arc<Sandbox>> = {
            let t = self.inner.table.lock().expect("table");
            t.live
                .values()
                .filter(|s| &s.owner == owner)
                .cloned()
                .collect()
        };
        let mut infos: Vec<SandboxInfo> = live.iter().map(|s| s.info()).collect();
        infos.extend(
            self.inner
                .snapshots
                .list(&owner.0, true)
                .iter()
                .map(|m| self.paused_info(m)),
        );
        infos.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        infos
    }

    /// Whether the sandbox `id` is live (any owner).
    pub fn is_live(&self, id: &str) -> bool {
        self.inner
            .table
            .lock()
            .expect("table")
            .live
            .contains_key(id)
    }

    /// Number of live sandboxes (all owners).
    pub fn live_count(&self) -> usize {
        self.inner.table.lock().expect("table").live.len()
    }

    /// Sets the remaining lifetime of a sandbox, from now.
    pub fn set_timeout(
        &self,
        owner: &Owner,
        id: &str,
        timeout_s: u64,
    ) -> Result<SandboxInfo, ServiceError> {
        let max = self.inner.config.max_timeout;
        if timeout_s == 0 || Duration::from_secs(timeout_s) > max {
            return Err(ServiceError::bad_request(format!(
                "timeout_s must be between 1 and {}",
                max.as_secs()
            )));
        }
        let sandbox = self.get(owner, id)?;
        sandbox.set_lifetime(Duration::from_secs(timeout_s));
        Ok(sandbox.info())
    }

    /// Destroys the sandbox `id` of `owner` (a paused one: its snapshot).
    pub async fn destroy(&self, owner: &Owner, id: &str) -> Result<(), ServiceError> {
        if let Some(paused) = self.inner.snapshots.paused(id) {
            if paused.sandbox.owner == owner.0 && !self.is_live(id) {
                self.inner.snapshots.remove(&paused.id)?;
                self.inner.table.lock().expect("table").remember_ended(
                    id.to_string(),
                    owner.clone(),
                    false,
                    "destroyed by request while paused".into(),
                );
                return Ok(());
            }
        }
        self.get(owner, id)?;
        self.end(id, false, "destroyed by request".into()).await;
        Ok(())
    }

    /// Ends a sandbox that broke (its guest stopped answering).
    pub async fn fail(&self, id: &str, why: &str) {
        self.end(id, false, format!("destroyed after a failure: {why}"))
            .await;
    }

    pub(super) async fn end(&self, id: &str, expired: bool, why: String) {
        let sandbox = {
            let mut t = self.inner.table.lock().expect("table");
            let Some(s) = t.live.remove(id) else { return };
            t.remember(
                id.to_string(),
                Ended {
                    owner: s.owner.clone(),
                    expired,
                    why: why.clone(),
                },
            );
            s
        };
        tracing::info!(sandbox = %id, "sandbox ends: {why}");
        self.inner
            .metrics
            .ended(if expired { "expired" } else { "destroyed" });
        if let Err(e) = sandbox.destroy_vm().await {
            tracing::warn!(sandbox = %id, "destroying its VM: {e}");
        }
    }

    async fn reap_expired(&self) {
        let now = Instant::now();
        let expired: Vec<(String, String)> = {
            let t = self.inner.table.lock().expect("table");
            t.live
                .values()
                .filter_map(|s| s.expiry(now).map(|why| (s.id.clone(), why)))
                .collect()
        };
        for (id, why) in expired {
            let service = self.clone();
            tokio::spawn(async move { service.end(&id, true, why).await });
        }
        for gone in self.inner.snapshots.remove_expired() {
            tracing::info!(snapshot = %gone.id, paused = gone.paused, "snapshot removed: retention passed");
            if gone.paused {
                self.inner.table.lock().expect("table").remember_ended(
                    gone.sandbox.id.clone(),
                    Owner(gone.sandbox.owner.clone()),
                    true,
                    "it stayed paused longer than the service keeps paused sandboxes (--paused-retention)".into(),
                );
            }
        }
    }

    /// Destroys every sandbox and every pool; later creates are refused.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let ids: Vec<String> = self
            .inner
            .table
            .lock()
            .expect("table")
            .live
            .keys()
            .cloned()
            .collect();
        let ends = ids
            .iter()
            .map(|id| self.end(id, false, "the service stopped".into()));
        futures::future::join_all(ends).await;
        self.inner.pools.shutdown().await;
    }
}

/// 256 random bits in hex: a sandbox's access token.
pub(super) fn new_secret() -> Result<String, ServiceError> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b)
        .map_err(|e| ServiceError::internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

pub(super) fn new_id() -> Result<String, ServiceError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b)
        .map_err(|e| ServiceError::internal(format!("no randomness: {e}")))?;
    Ok(format!("sb-{}", hex::encode(b)))
}

/// Environment names and values the guest can take: names without `=` or
/// NUL, values without NUL.
pub fn check_env(
    field: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), ServiceError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ServiceError::bad_request(format!(
                "{field}: {k:?} is not a valid environment variable (a name without '=' or NUL, a value without NUL)"
            )));
        }
    }
    Ok(())
}

fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), ServiceError> {
    if labels.len() > MAX_LABELS {
        return Err(ServiceError::bad_request(format!(
            "labels: at most {MAX_LABELS}"
        )));
    }
    if let Some((k, _)) = labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN)
    {
        return Err(ServiceError::bad_request(format!(
            "labels: {k:?}: keys must be 1 to {MAX_LABEL_LEN} bytes, values at most {MAX_LABEL_LEN}"
        )));
    }
    Ok(())
}

/// A guest path given by a client: absolute, no NUL.
pub fn check_guest_path(field: &str, path: &str) -> Result<(), ServiceError> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return Err(ServiceError::bad_request(format!(
            "{field}: {path:?} must be an absolute path in the sandbox (starting with /)"
        )));
    }
    Ok(())
}
