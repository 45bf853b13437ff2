//! A warm pool of clones restored from one prototype.
//!
//! The pool keeps up to `size` clones running and connected, refilling in the
//! background. `acquire` hands one out (reseeded: fresh entropy and clock) and
//! never hands the same VM out twice; `release` destroys it — a VM is never
//! reused for another task. Size is bounded by a count and by memory.
//!
//! Ready clones run at a low CPU weight ([`CpuWeight::Background`]) and the
//! refill waits [`HANDOUT_GRACE`] after an `acquire`: filling the pool yields
//! to the VMs in use.
//!
//! VMs in use (handed out, or being restored for a caller on a miss) are
//! capped too: by default as many as `max_memory_mib` holds, or what
//! [`Pool::limit_in_use`] sets. `acquire` beyond the cap fails with
//! [`PoolError::Limit`] at once, without restoring anything.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use super::cgroup::CpuWeight;
use super::prototype::{self, Prototype};
use super::{VmConfig, VmError, VmHandle};

/// Upper bound on the pool size, whatever is asked.
pub const MAX_POOL_SIZE: usize = 64;

/// How long the refill waits after an `acquire` before restoring the next
/// clone. A restore keeps a host core busy for a while (QEMU starting, the
/// incoming migration, the guest's first round trips); started at once, it
/// competes with the first command in the VM just handed out, which on a
/// small host added several milliseconds to it. A typical first command (an
/// exec round trip, a file written) is done within this; a longer one
/// shares the CPU with a refill whose clone then runs at the background weight.
pub const HANDOUT_GRACE: Duration = Duration::from_millis(40);

/// Why [`Pool::acquire`] gave no VM.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("limit reached: {max} VMs in use in total, try again later")]
    Limit { max: usize },
    #[error(transparent)]
    Vm(#[from] VmError),
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Clones kept ready.
    pub size: usize,
    /// Total guest memory the ready clones may take; the size is lowered to fit.
    pub max_memory_mib: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PoolStats {
    pub target: usize,
    pub ready: usize,
    pub in_use: u64,
    pub hits: u64,
    pub misses: u64,
    pub created: u64,
    pub refill_failures: u64,
    /// Duration of the last background restore, in milliseconds.
    pub last_refill_ms: u64,
}

struct Inner {
    proto: Prototype,
    /// Run in each clone before it is offered (see [`warm_up`]).
    warm_up: Vec<String>,
    config: VmConfig,
    target: usize,
    prefix: String,
    ready: Mutex<VecDeque<VmHandle>>,
    next: AtomicU64,
    in_use: AtomicU64,
    max_in_use: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    created: AtomicU64,
    refill_failures: AtomicU64,
    last_refill_ms: AtomicU64,
    wake: Notify,
    stopped: AtomicBool,
}

pub struct Pool {
    inner: Arc<Inner>,
    refill: Option<tokio::task::JoinHandle<()>>,
}

impl Pool {
    /// Starts a pool of clones of the prototype for `config` (built if needed).
    pub async fn start(config: &VmConfig, pool: PoolConfig) -> Result<Pool, VmError> {
        Pool::start_prepared(config, pool, vec!["true".into()]).await
    }

    /// [`Pool::start`], running `warm_up` (an argv that must exit 0) in each
    /// clone before it is offered: it pays for the first exec of a restored
    /// clone, and can prepare what every user of the pool needs (a directory).
    pub async fn start_prepared(
        config: &VmConfig,
        pool: PoolConfig,
        warm_up: Vec<String>,
    ) -> Result<Pool, VmError> {
        let proto = prototype::ensure(config, &|m| tracing::info!("{m}")).await?;
        let by_memory = (pool.max_memory_mib / u64::from(proto.meta.memory_mib).max(1)) as usize;
        let target = pool.size.min(by_memory).min(MAX_POOL_SIZE);
        let mut rnd = [0u8; 3];
        getrandom::getrandom(&mut rnd).map_err(|e| VmError::Randomness(e.to_string()))?;
        let inner = Arc::new(Inner {
            proto,
            warm_up,
            config: config.clone(),
            target,
            prefix: format!("pool-{}", hex::encode(rnd)),
            ready: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
            in_use: AtomicU64::new(0),
            max_in_use: AtomicUsize::new(by_memory.max(1)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            created: AtomicU64::new(0),
            refill_failures: AtomicU64::new(0),
            last_refill_ms: AtomicU64::new(0),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let refill = tokio::spawn(refill_loop(inner.clone()));
        Ok(Pool {
            inner,
            refill: Some(refill),
        })
    }

    /// Caps the VMs in use at once (at least 1; the default is what the
    /// pool's `max_memory_mib` holds).
    pub fn limit_in_use(&self, max: usize) {
        self.inner.max_in_use.store(max.max(1), Ordering::SeqCst);
    }

    /// The cap on VMs in use at once.
    pub fn max_in_use(&self) -> usize {
        self.inner.max_in_use.load(Ordering::SeqCst)
    }

    /// A ready VM (a hit), or a freshly restored one when none is ready (a
    /// miss); [`PoolError::Limit`] when the VMs in use are at the cap.
    pub async fn acquire(&self) -> Result<VmHandle, PoolError> {
        let slot = InUseSlot::take(&self.inner)?;
        let ready = self.inner.ready.lock().expect("pool lock").pop_front();
        self.inner.wake.notify_one();
        let vm = match ready {
            Some(vm) => {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                // Ready clones wait at the background weight; the one handed
                // out competes for the CPU like any VM in use.
                vm.set_cpu_weight(CpuWeight::Normal)?;
                // Time has passed since the restore: fresh entropy and clock again.
                super::spawn::reseed(vm.agent()).await?;
                vm
            }
            None => {
                self.inner.misses.fetch_add(1, Ordering::Relaxed);
                // Every VM handed out ran the warm-up command (users rely on
                // what it prepares); the rest of [`warm_up`] would only
                // delay this one.
                let vm = restore_one(&self.inner).await?;
                prepare(&vm, &self.inner.warm_up).await?;
                vm
            }
        };
        slot.keep();
        Ok(vm)
    }

    /// Destroys a VM handed out by [`Pool::acquire`].
    pub async fn release(&self, vm: VmHandle) -> Result<(), VmError> {
        self.inner.in_use.fetch_sub(1, Ordering::SeqCst);
        super::destroy_vm(vm).await
    }

    pub fn stats(&self) -> PoolStats {
        let i = &self.inner;
        PoolStats {
            target: i.target,
            ready: i.ready.lock().expect("pool lock").len(),
            in_use: i.in_use.load(Ordering::SeqCst),
            hits: i.hits.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            created: i.created.load(Ordering::Relaxed),
            refill_failures: i.refill_failures.load(Ordering::Relaxed),
            last_refill_ms: i.last_refill_ms.load(Ordering::Relaxed),
        }
    }

    /// The guest kernel release of the pool's prototype.
    pub fn kernel_release(&self) -> String {
        crate::boot::kernel::kernel_release(&self.inner.proto.meta.kernel)
            .unwrap_or_else(|_| "unknown".into())
    }

    /// Host pids of each ready (idle) clone.
    pub fn ready_pids(&self) -> Vec<Vec<u32>> {
        self.inner
            .ready
            .lock()
            .expect("pool lock")
            .iter()
            .map(|vm| vm.pids())
            .collect()
    }

    /// Waits until `n` clones are ready (or `timeout` passes).
    pub async fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stats().ready >= n.min(self.inner.target) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Stops refilling and destroys every ready clone.
    pub async fn shutdown(mut self) -> Result<(), VmError> {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        if let Some(refill) = self.refill.take() {
            refill.abort();
            // Wait until the task is really dropped: a restore it had in flight
            // is cleaned up by that drop (processes killed, directory removed).
            let _ = refill.await;
        }
        let ready: Vec<VmHandle> = self
            .inner
            .ready
            .lock()
            .expect("pool lock")
            .drain(..)
            .collect();
        for vm in ready {
            super::destroy_vm(vm).await?;
        }
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Dropping the handles kills their processes and removes their files.
        self.inner.stopped.store(true, Ordering::SeqCst);
        if let Some(refill) = &self.refill {
            refill.abort();
        }
        if let Ok(mut ready) = self.inner.ready.lock() {
            ready.clear();
        }
    }
}

/// A place among the VMs in use, taken before a VM is handed out or
/// restored; given back on drop unless kept (then [`Pool::release`] gives
/// it back).
struct InUseSlot<'a> {
    inner: &'a Inner,
    kept: bool,
}

impl<'a> InUseSlot<'a> {
    fn take(inner: &'a Inner) -> Result<InUseSlot<'a>, PoolError> {
        let max = inner.max_in_use.load(Ordering::SeqCst) as u64;
        inner
            .in_use
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| PoolError::Limit { max: max as usize })?;
        Ok(InUseSlot { inner, kept: false })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for InUseSlot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.inner.in_use.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

async fn restore_one(inner: &Inner) -> Result<VmHandle, VmError> {
    let n = inner.next.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{n}", inner.prefix);
    let vm = prototype::restore(&inner.proto, &id, &inner.config).await?;
    inner.created.fetch_add(1, Ordering::Relaxed);
    Ok(vm)
}

/// Runs `argv` in a fresh clone before it is offered, then what `acquire`
/// and a first command do: a reseed and `true`. A restored QEMU starts with
/// an empty translation cache (TCG) and cold host page mappings, which
/// makes the first exec in a clone several times slower than the next, and
/// the second still pays for code the first did not take (a reseed after a
/// command, a process slot used before); the pool pays that in the
/// background instead of at `acquire` (`acquire` → first result of `true`
/// 7.5–7.7 ms instead of 8.1–9.0 with the command alone: medians of three
/// alternating `ironclaw bench --only pool --runs 7`).
async fn warm_up(vm: &VmHandle, argv: &[String]) -> Result<(), VmError> {
    prepare(vm, argv).await?;
    super::spawn::reseed(vm.agent()).await?;
    prepare(vm, &["true".to_string()]).await
}

/// Runs the warm-up command `argv`, which must exit 0.
async fn prepare(vm: &VmHandle, argv: &[String]) -> Result<(), VmError> {
    let out = vm
        .agent()
        .run(super::exec_request(argv.iter().cloned()), None)
        .await?;
    if out.status.code != Some(0) {
        return Err(VmError::GuestCheckFailed {
            vm: vm.id.clone(),
            command: format!("{} (warm-up)", argv.join(" ")),
            status: format!("{:?}", out.status),
        });
    }
    Ok(())
}

async fn refill_loop(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let have = inner.ready.lock().expect("pool lock").len();
        if have >= inner.target {
            inner.wake.notified().await;
            if !inner.stopped.load(Ordering::SeqCst) {
                // Woken by an `acquire`: its VM's first command goes first.
                tokio::time::sleep(HANDOUT_GRACE).await;
            }
            continue;
        }
        let t0 = Instant::now();
        let restored = async {
            let vm = restore_one(&inner).await?;
            vm.set_cpu_weight(CpuWeight::Background)?;
            warm_up(&vm, &inner.warm_up).await?;
            Ok::<_, VmError>(vm)
        };
        match restored.await {
            Ok(vm) => {
                inner
                    .last_refill_ms
                    .store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                if inner.stopped.load(Ordering::SeqCst) {
                    let _ = super::destroy_vm(vm).await;
                    return;
                }
                inner.ready.lock().expect("pool lock").push_back(vm);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                inner.refill_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("pool refill failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
