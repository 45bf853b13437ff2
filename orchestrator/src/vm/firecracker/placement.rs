//! Where a Firecracker process's files and sockets are, and how Firecracker
//! names them: directly (host paths, files in the runtime directory) or
//! through the jailer (its chroot; Firecracker sees only paths inside it).
//! The launch sequence ([`super::launch`]) is written once against this.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::config::{VmConfig, MAX_SOCKET_PATH};
use super::super::runtime::RuntimeDir;
use super::error::FirecrackerError;
use super::files::{SnapshotFiles, API_SOCKET, FIRECRACKER_LOG, VSOCK_SOCKET};
use super::jailer::{self, Jail, JailerError};
use super::options::FirecrackerOptions;

/// What a fresh Firecracker process is started for: the files it needs at
/// hand differ (boot files, or a snapshot).
#[derive(Debug, Clone, Copy)]
pub(super) enum Purpose<'a> {
    /// A cold boot of the config's kernel and initramfs (and rootfs).
    Boot,
    /// Loading the snapshot `files` (and the rootfs its drive names),
    /// resuming the VM when `resume` is set.
    Restore {
        files: &'a SnapshotFiles,
        resume: bool,
    },
}

/// Direct or jailed, with the jail's chroot, cgroups and network namespace.
#[derive(Debug)]
pub(super) enum Placement {
    /// In the host's namespaces, files in the runtime directory.
    Direct,
    /// Through the jailer; the jail is removed when dropped.
    Jailed(Box<Jail>),
}

impl Placement {
    /// Direct without a jailer in `opts`; else a jail prepared for `purpose`
    /// (chroot with the files placed in it). A config vsock socket path is
    /// refused with the jailer before anything is created.
    pub(super) fn prepare(
        opts: &FirecrackerOptions,
        config: &VmConfig,
        dir: &RuntimeDir,
        purpose: Purpose<'_>,
    ) -> Result<Placement, FirecrackerError> {
        let Some(jailer_config) = &opts.jailer else {
            return Ok(Placement::Direct);
        };
        let filter = opts.seccomp_filter.as_deref();
        let jail = match purpose {
            Purpose::Boot => {
                if let Some(uds) = &config.vsock.uds_path {
                    return Err(JailerError::Invalid {
                        step: jailer::JailerStep::PlaceFiles,
                        detail: format!(
                            "vsock.uds_path {} cannot be used with the jailer: Firecracker only sees its chroot, where the socket is put",
                            uds.display()
                        ),
                    }
                    .into());
                }
                Jail::prepare(jailer_config, &opts.binary, filter, config, dir)?
            }
            // The snapshot (and the rootfs its drive names) is placed in the
            // new chroot and loaded by its paths there.
            Purpose::Restore { files, .. } => {
                Jail::prepare_restore(jailer_config, &opts.binary, filter, config, dir, files)?
            }
        };
        Ok(Placement::Jailed(Box::new(jail)))
    }

    pub(super) fn jail(&self) -> Option<&Jail> {
        match self {
            Placement::Direct => None,
            Placement::Jailed(jail) => Some(jail),
        }
    }

    pub(super) fn into_jail(self) -> Option<Jail> {
        match self {
            Placement::Direct => None,
            Placement::Jailed(jail) => Some(*jail),
        }
    }

    /// The host side of the hybrid vsock socket Firecracker creates:
    /// `requested` (the config's, honoured on a direct cold boot only), else
    /// the runtime directory's; in a jail the chroot's [`jailer::VSOCK_IN_JAIL`].
    pub(super) fn vsock_socket(
        &self,
        dir: &RuntimeDir,
        requested: Option<&Path>,
    ) -> Result<PathBuf, FirecrackerError> {
        socket_path(match self {
            Placement::Direct => requested
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.file(VSOCK_SOCKET)),
            Placement::Jailed(jail) => jail.host_path(Path::new(jailer::VSOCK_IN_JAIL)),
        })
    }

    /// The host path `host` as Firecracker names it.
    pub(super) fn vsock_in_vmm<'a>(&self, host: &'a Path) -> &'a Path {
        match self {
            Placement::Direct => host,
            Placement::Jailed(_) => Path::new(jailer::VSOCK_IN_JAIL),
        }
    }

    /// The config as Firecracker is told about it: boot files by the paths
    /// it sees.
    pub(super) fn api_config<'a>(&self, config: &'a VmConfig) -> Cow<'a, VmConfig> {
        match self {
            Placement::Direct => Cow::Borrowed(config),
            Placement::Jailed(jail) => Cow::Owned(jail.api_config(config)),
        }
    }

    /// The snapshot `files` (host paths) as Firecracker names them once
    /// placed for loading.
    pub(super) fn snapshot_in_vmm(&self, files: &SnapshotFiles) -> SnapshotFiles {
        match self {
            Placement::Direct => files.clone(),
            Placement::Jailed(_) => jailer::snapshot_files_in_jail(),
        }
    }

    /// Lets Firecracker connect to `path`, a socket the orchestrator made
    /// (jailed: gives it to the jail uid).
    pub(super) fn give(&self, path: &Path) -> Result<(), FirecrackerError> {
        match self {
            Placement::Direct => Ok(()),
            Placement::Jailed(jail) => Ok(jail.give(path)?),
        }
    }

    /// The host paths of the API socket and of Firecracker's log, and the
    /// command that starts Firecracker.
    pub(super) fn command(
        &self,
        opts: &FirecrackerOptions,
        dir: &RuntimeDir,
    ) -> Result<(PathBuf, PathBuf, Command), FirecrackerError> {
        match self {
            Placement::Direct => {
                let api_socket = socket_path(dir.file(API_SOCKET))?;
                let log = dir.file(FIRECRACKER_LOG);
                // --log-path expects an existing file.
                File::create(&log)
                    .map_err(|e| FirecrackerError::io(format!("creating {}", log.display()), e))?;
                let cmd = opts.command(&api_socket, &log)?;
                Ok((api_socket, log, cmd))
            }
            // The jail made the log (owned by the jail uid) in the chroot.
            Placement::Jailed(jail) => Ok((
                socket_path(jail.host_path(Path::new(jailer::API_SOCKET_IN_JAIL)))?,
                jail.host_path(Path::new(jailer::LOG_IN_JAIL)),
                jail.command(),
            )),
        }
    }
}

/// `path`, refused when too long for a Unix socket address.
fn socket_path(path: PathBuf) -> Result<PathBuf, FirecrackerError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(FirecrackerError::SocketPathTooLong { path });
    }
    Ok(path)
}
