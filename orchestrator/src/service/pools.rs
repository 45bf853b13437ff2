//! One warm [`Pool`] per sandbox shape (image, vCPUs, memory), started on
//! first use from the service's base VM config, so `create` is a pool
//! acquire once a shape is warm.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::error::ServiceError;
use crate::vm::pool::{Pool, PoolConfig, PoolStats};
use crate::vm::VmConfig;

/// Working directory of commands when the sandbox sets none: every clone
/// gets it before it is offered.
pub const DEFAULT_CWD: &str = "/work";

/// What each clone runs before it is offered: it makes the default working
/// directory, so `create` need not, and where the image has bash, starts a
/// login shell — what the E2B SDK runs every command in (`bash -l -c`) — so
/// that the first command does not pay for QEMU translating bash's code
/// (under TCG; measured: the E2B SDK's first `commands.run("true")` after
/// `Sandbox.create()` took 140–178 ms, its second 30–34).
fn warm_up() -> Vec<String> {
    // A profile that fails leaves a clone as good as any: only `mkdir` counts.
    let script = format!(
        "mkdir -p {DEFAULT_CWD} && {{ [ ! -x /bin/bash ] || /bin/bash -l -c true || true; }}"
    );
    ["/bin/sh", "-c", &script].map(String::from).to_vec()
}

/// The image name meaning "no image: the busybox initramfs only".
pub const NO_IMAGE: &str = "none";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
}

pub struct Pools {
    base: VmConfig,
    /// Clones kept ready per shape.
    size: usize,
    /// VMs in use per shape, at most (the service's sandbox limit).
    max_in_use: usize,
    pools: Mutex<HashMap<Shape, Arc<OnceCell<Arc<Pool>>>>>,
}

impl Pools {
    pub fn new(base: VmConfig, size: usize, max_in_use: usize) -> Pools {
        Pools {
            base,
            size,
            max_in_use,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The shape a request gets: its own values, or the base config's.
    pub fn shape(&self, image: Option<&str>, vcpus: Option<u32>, memory_mib: Option<u32>) -> Shape {
        Shape {
            image: image.unwrap_or(crate::userland::DEFAULT_IMAGE).to_string(),
            vcpus: vcpus.unwrap_or(self.base.vcpus),
            memory_mib: memory_mib.unwrap_or(self.base.memory_mib),
        }
    }

    /// The VM config of a shape, checked; errors name the request's field.
    pub fn config_for(&self, shape: &Shape) -> Result<VmConfig, ServiceError> {
        let mut config = self.base.clone();
        config.id = "sandbox".into();
        config.vcpus = shape.vcpus;
        config.memory_mib = shape.memory_mib;
        config.rootfs = rootfs(&shape.image)?;
        config.validate().map_err(|e| {
            ServiceError::bad_request(format!(
                "this sandbox cannot be made (check vcpus, memory_mib, image): {e}"
            ))
        })?;
        Ok(config)
    }

    /// The pool of `shape`, started (its prototype built) on first use.
    pub async fn get(&self, shape: &Shape) -> Result<Arc<Pool>, ServiceError> {
        let cell = self
            .pools
            .lock()
            .expect("pools")
            .entry(shape.clone())
            .or_default()
            .clone();
        let pool = cell
            .get_or_try_init(|| async {
                // Resolved and checked once, when the shape's pool starts.
                let config = self.config_for(shape)?;
                let pool = Pool::start_prepared(
                    &config,
                    PoolConfig {
                        size: self.size,
                        max_memory_mib: u64::from(config.memory_mib) * self.size.max(1) as u64,
                    },
                    warm_up(),
                )
                .await
                .map_err(|e| {
                    ServiceError::unavailable(format!("cannot start a pool for {shape:?}: {e}"))
                })?;
                pool.limit_in_use(self.max_in_use);
                Ok::<_, ServiceError>(Arc::new(pool))
            })
            .await?;
        Ok(pool.clone())
    }

    pub fn stats(&self) -> Vec<(Shape, PoolStats)> {
        self.pools
            .lock()
            .expect("pools")
            .iter()
            .filter_map(|(s, cell)| cell.get().map(|p| (s.clone(), p.stats())))
            .collect()
    }

    /// Destroys every ready clone (sandboxes must be gone first).
    pub async fn shutdown(&self) {
        let cells: Vec<_> = self.pools.lock().expect("pools").drain().collect();
        for (shape, cell) in cells {
            let Some(pool) = Arc::try_unwrap(cell).ok().and_then(|c| c.into_inner()) else {
                continue;
            };
            match Arc::try_unwrap(pool) {
                Ok(pool) => {
                    if let Err(e) = pool.shutdown().await {
                        tracing::warn!(?shape, "pool shutdown: {e}");
                    }
                }
                // Still held by a sandbox being destroyed: dropping the last
                // reference kills its ready clones.
                Err(_) => tracing::debug!(?shape, "pool still referenced at shutdown"),
            }
        }
    }
}

fn rootfs(image: &str) -> Result<Option<PathBuf>, ServiceError> {
    if image == NO_IMAGE {
        return Ok(None);
    }
    // Names only: a client never makes the service open a host path.
    crate::userland::validate_name(image)
        .map_err(|e| ServiceError::bad_request(format!("image: {e}")))?;
    crate::userland::find(image).map(Some).map_err(|e| {
        ServiceError::bad_request(format!(
            "image: {e} (use `image: \"{NO_IMAGE}\"` for the initramfs only)"
        ))
    })
}
