//! The sandbox service: sandboxes an agent creates, holds for many commands
//! and file transfers, and throws away — what `ironclaw serve` serves over
//! REST ([`api`]), MCP ([`mcp`]) and an E2B-compatible API ([`e2b`]).
//!
//! [`Service`] owns the sandboxes of this host: each is a clone acquired
//! from a warm pool of its shape ([`pools`]), with a lifetime and an
//! optional idle timeout enforced by a reaper task, service-wide limits
//! (count and guest memory) checked before anything starts, and an owner
//! (a unix uid or a token) that every call must match. Commands run to
//! completion or in the background ([`command`], output in a bounded
//! [`ring`]); files go through the guest agent, streamed.
//!
//! Module map: [`lifecycle`] create/list/destroy/expiry, `branching`
//! snapshot/fork/pause/resume (stored by [`snapshots`]), [`exec`] commands,
//! [`files`] file operations, [`metrics`] Prometheus metrics, [`types`] the
//! bodies both front ends share, [`error`] stable error codes.

pub mod api;
pub mod command;
pub mod e2b;
pub mod error;
pub mod exec;
pub mod files;
pub mod lifecycle;
pub mod mcp;
pub mod metrics;
pub mod pools;
pub mod ring;
pub mod sandbox;
pub mod snapshots;
pub mod types;

mod branching;

use std::time::Duration;

pub use error::{ErrorCode, ServiceError};
pub use lifecycle::Service;
pub use sandbox::Owner;

use crate::vm::VmConfig;
use snapshots::SnapshotLimits;

/// What a [`Service`] is allowed to do.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The VM every sandbox starts from (backend, kernel, confinement);
    /// requests may change its image, vCPUs and memory only.
    pub base: VmConfig,
    /// Clones kept ready per sandbox shape.
    pub pool_size: usize,
    /// Sandboxes alive at once, at most.
    pub max_sandboxes: usize,
    /// Guest memory of all live sandboxes together, at most (MiB).
    pub max_memory_mib: u64,
    /// Lifetime of a sandbox created without `timeout_s`.
    pub default_timeout: Duration,
    /// The longest lifetime a request may ask for (also by extending).
    pub max_timeout: Duration,
    /// Timeout of a command started without `timeout_s`.
    pub default_exec_timeout: Duration,
    /// The longest command timeout a request may ask for.
    pub max_exec_timeout: Duration,
    /// Where snapshots and paused sandboxes are kept, and how much.
    pub snapshots: SnapshotLimits,
}

impl ServiceConfig {
    pub fn new(base: VmConfig) -> ServiceConfig {
        ServiceConfig {
            base,
            pool_size: 2,
            max_sandboxes: 32,
            max_memory_mib: default_max_memory_mib(),
            default_timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(24 * 3600),
            default_exec_timeout: Duration::from_secs(300),
            max_exec_timeout: Duration::from_secs(3600),
            snapshots: SnapshotLimits {
                dir: crate::cache::root().join("snapshots"),
                max_bytes: 16 << 30,
                retention: Duration::from_secs(7 * 24 * 3600),
                paused_retention: Duration::from_secs(7 * 24 * 3600),
            },
        }
    }
}

/// Half the host's memory: guest memory beyond it would risk the host.
pub fn default_max_memory_mib() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(4 << 20);
    total_kib / 1024 / 2
}
