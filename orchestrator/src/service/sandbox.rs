//! One live sandbox: a VM from a pool, what it was created with, its timers
//! and its commands.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq;

use super::command::Command;
use super::error::ServiceError;
use super::types::{SandboxInfo, SandboxState};
use crate::agent::AgentClient;
use crate::vm::pool::Pool;
use crate::vm::VmHandle;

/// Commands that may run at once in one sandbox.
pub const MAX_RUNNING_COMMANDS: usize = 32;
/// Ended background commands kept for reading (the oldest are forgotten).
pub const KEPT_ENDED_COMMANDS: usize = 16;

/// Who a sandbox belongs to: a unix uid, or a token of the service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(pub String);

impl Owner {
    pub fn uid(uid: u32) -> Owner {
        Owner(format!("uid:{uid}"))
    }
    pub fn token(index: usize) -> Owner {
        Owner(format!("token:{index}"))
    }
}

/// What a sandbox was created with.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub idle_timeout: Option<Duration>,
}

struct Timers {
    /// End of the lifetime.
    expires: Instant,
    last_active: Instant,
}

pub struct Sandbox {
    pub id: String,
    pub owner: Owner,
    pub spec: SandboxSpec,
    /// A secret of this sandbox alone (the E2B API's `envdAccessToken`):
    /// whoever holds it may run commands and move files in it.
    access_token: String,
    created: SystemTime,
    created_instant: Instant,
    agent: AgentClient,
    kernel_release: String,
    vm_id: String,
    /// Host pids of the VM's processes (fixed for its life).
    vm_pids: Vec<u32>,
    /// The VM, and the pool to give it back to (none for a VM restored from
    /// a snapshot: it is destroyed directly). Async: a snapshot holds it.
    vm: tokio::sync::Mutex<Option<(VmHandle, Option<Arc<Pool>>)>>,
    /// The snapshot it was created from.
    from_snapshot: Option<String>,
    timers: Mutex<Timers>,
    /// Requests in flight (an exec, a file transfer): the sandbox is not idle.
    busy: AtomicUsize,
    commands: Mutex<VecDeque<Arc<Command>>>,
    next_command: AtomicUsize,
}

/// Keeps a sandbox busy (not idle) while held; touches it when dropped.
pub struct Busy(Arc<Sandbox>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::ops::Deref for Busy {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.0
    }
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Sandbox {
    pub fn new(
        id: String,
        owner: Owner,
        spec: SandboxSpec,
        access_token: String,
        lifetime: Duration,
        vm: VmHandle,
        pool: Option<Arc<Pool>>,
    ) -> Sandbox {
        let now = Instant::now();
        Sandbox {
            id,
            owner,
            spec,
            access_token,
            created: SystemTime::now(),
            created_instant: now,
            agent: vm.agent().clone(),
            kernel_release: vm.agent().kernel_release().to_string(),
            vm_id: vm.id.clone(),
            vm_pids: vm.pids(),
            vm: tokio::sync::Mutex::new(Some((vm, pool))),
            from_snapshot: None,
            timers: Mutex::new(Timers {
                expires: now + lifetime,
                last_active: now,
            }),
            busy: AtomicUsize::new(0),
            commands: Mutex::new(VecDeque::new()),
            next_command: AtomicUsize::new(1),
        }
    }

    /// Marks it as made from `snapshot`; `created` is when the sandbox was
    /// first created (a resumed one keeps its creation time).
    pub fn with_origin(mut self, created: SystemTime, snapshot: Option<String>) -> Sandbox {
        self.created = created;
        self.from_snapshot = snapshot;
        self
    }

    /// The lifetime left now.
    pub fn lifetime_left(&self) -> Duration {
        self.timers
            .lock()
            .expect("timers")
            .expires
            .saturating_duration_since(Instant::now())
    }

    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// The VM, held (for a snapshot) until the guard is dropped; `None` once
    /// the sandbox ended.
    pub async fn vm(&self) -> tokio::sync::MutexGuard<'_, Option<(VmHandle, Option<Arc<Pool>>)>> {
        self.vm.lock().await
    }

    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// Whether `given` is this sandbox's access token (constant time).
    pub fn check_access_token(&self, given: &[u8]) -> bool {
        bool::from(self.access_token.as_bytes().ct_eq(given))
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// Marks the sandbox in use until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy(self.clone())
    }

    pub fn touch(&self) {
        self.timers.lock().expect("timers").last_active = Instant::now();
    }

    /// Sets the remaining lifetime to `lifetime` from now.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.timers.lock().expect("timers").expires = Instant::now() + lifetime;
    }

    /// Why the sandbox must go now, if it must.
    pub fn expiry(&self, now: Instant) -> Option<String> {
        let t = self.timers.lock().expect("timers");
        if now >= t.expires {
            let lived = t.expires.saturating_duration_since(self.created_instant);
            return Some(format!("its lifetime of {}s ended", lived.as_secs()));
        }
        let running = self.running_commands() > 0 || self.busy.load(Ordering::SeqCst) > 0;
        match self.spec.idle_timeout {
            Some(idle) if !running && now.duration_since(t.last_active) >= idle => Some(format!(
                "it was idle for {}s (idle_timeout_s)",
                idle.as_secs()
            )),
            _ => None,
        }
    }

    pub fn running_commands(&self) -> usize {
        self.commands
            .lock()
            .expect("commands")
            .iter()
            .filter(|c| c.end().is_none())
            .count()
    }

    /// A new command id, and a check that another command may start.
    pub fn command_slot(&self) -> Result<String, ServiceError> {
        if self.running_commands() >= MAX_RUNNING_COMMANDS {
            return Err(ServiceError::limit(format!(
                "sandbox {} already runs {MAX_RUNNING_COMMANDS} commands; wait for one to end",
                self.id
            )));
        }
        let n = self.next_command.fetch_add(1, Ordering::Relaxed);
        Ok(format!("cmd-{n}"))
    }

    /// Keeps a started command; forgets the oldest ended ones beyond the limit.
    pub fn add_command(&self, command: Arc<Command>) {
        let mut commands = self.commands.lock().expect("commands");
        commands.push_back(command);
        let mut ended = commands.iter().filter(|c| c.end().is_some()).count();
        commands.retain(|c| {
            if ended > KEPT_ENDED_COMMANDS && c.end().is_some() {
                ended -= 1;
                false
            } else {
                true
            }
        });
    }

    pub fn command(&self, id: &str) -> Result<Arc<Command>, ServiceError> {
        self.commands
            .lock()
            .expect("commands")
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .ok_or_else(|| {
                ServiceError::not_found(format!(
                    "sandbox {} has no command {id} (ended commands are kept only for the last {KEPT_ENDED_COMMANDS})",
                    self.id
                ))
            })
    }

    /// The kept command whose process in the guest has `pid` (the newest
    /// one, should the guest have reused the pid).
    pub fn command_by_pid(&self, pid: u32) -> Option<Arc<Command>> {
        self.commands
            .lock()
            .expect("commands")
            .iter()
            .rev()
            .find(|c| c.pid() == Some(pid))
            .cloned()
    }

    pub fn commands(&self) -> Vec<Arc<Command>> {
        self.commands
            .lock()
            .expect("commands")
            .iter()
            .cloned()
            .collect()
    }

    /// Takes the VM out (once; after a snapshot in progress); the caller
    /// destroys it.
    pub async fn take_vm(&self) -> Option<(VmHandle, Option<Arc<Pool>>)> {
        self.vm.lock().await.take()
    }

    /// Destroys the VM (its pool, if it came from one, does it); once.
    pub async fn destroy_vm(&self) -> Result<(), crate::vm::VmError> {
        match self.take_vm().await {
            Some((vm, Some(pool))) => pool.release(vm).await,
            Some((vm, None)) => crate::vm::destroy_vm(vm).await,
            None => Ok(()),
        }
    }

    pub fn info(&self) -> SandboxInfo {
        let now = Instant::now();
        let t = self.timers.lock().expect("timers");
        let expires_in = t.expires.saturating_duration_since(now);
        SandboxInfo {
            id: self.id.clone(),
            state: SandboxState::Running,
            image: self.spec.image.clone(),
            vcpus: self.spec.vcpus,
            memory_mib: self.spec.memory_mib,
            labels: self.spec.labels.clone(),
            env: self.spec.env.clone(),
            cwd: self.spec.cwd.clone(),
            created_at: unix_secs(self.created),
            expires_at: unix_secs(SystemTime::now() + expires_in),
            // From the first creation: a resumed sandbox keeps its age.
            age_s: SystemTime::now()
                .duration_since(self.created)
                .map_or(0, |d| d.as_secs()),
            idle_s: now.duration_since(t.last_active).as_secs(),
            idle_timeout_s: self.spec.idle_timeout.map(|d| d.as_secs()),
            host_rss_mib: self.vm_pids.iter().map(|&p| rss_kib(p)).sum::<u64>() / 1024,
            running_commands: self.running_commands(),
            kernel_release: self.kernel_release.clone(),
            vm_id: self.vm_id.clone(),
            from_snapshot: self.from_snapshot.clone(),
            paused_bytes: None,
        }
    }
}

/// Resident memory of a process in KiB (0 when it cannot be read).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
