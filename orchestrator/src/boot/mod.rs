//! What a VM boots: the kernel ([`kernel`]: IronClaw's microVM kernel by
//! default, or Debian's; its release, the modules the guest needs from it) and the initramfs generated for it
//! ([`initramfs`]: `/init` is `ironclaw-guest`, beside a static busybox and
//! those modules). The guest's userland, a root file system image it can
//! switch into, is another matter: [`crate::userland`].

pub mod initramfs;
pub mod kernel;

use std::path::PathBuf;

/// Why the kernel, a module, the guest agent or busybox cannot be used, or
/// the initramfs cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no kernel found: {0}")]
    NoKernel(String),
    #[error(
        "the microVM kernel of this configuration (kernel/microvm.config, hash {hash}) is not \
         built: no {dir}/*-{hash}/bzImage; build it with `scripts/setup.sh` (or \
         `scripts/build-kernel.sh`), or boot Debian's kernel with `--kernel /boot/vmlinuz-…` \
         or IRONCLAW_KERNEL"
    )]
    NoMicroVmKernel { dir: PathBuf, hash: String },
    #[error("{path}: not a bzImage kernel ({reason})")]
    BadKernel { path: PathBuf, reason: String },
    #[error("kernel module {module} not found for kernel {release} (looked in {dir})")]
    MissingModule {
        module: String,
        release: String,
        dir: PathBuf,
    },
    #[error("kernel module {0} is compressed; only plain .ko modules are supported")]
    CompressedModule(PathBuf),
    #[error("guest agent binary not found: {0}")]
    NoGuestBinary(String),
    #[error("static busybox not found: {0}")]
    NoBusybox(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let context = context.into();
    move |source| BootError::Io { context, source }
}
