//! The empty network namespace the jailer puts Firecracker in.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use super::{invalid, io, JailerError, JailerStep};

/// An empty network namespace (only a down `lo`), held by a descriptor.
/// A short-lived thread unshares its own network namespace and opens it;
/// the jailer joins it through `/proc/<our pid>/fd/<fd>`.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    pub fn new_empty() -> Result<Netns, JailerError> {
        let made = std::thread::spawn(|| -> std::io::Result<OwnedFd> {
            // SAFETY: unshare(CLONE_NEWNET) changes only the calling thread's
            // network namespace; this thread does nothing else and exits.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(fs::File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .map_err(|_| invalid(JailerStep::CreateNetns, "the namespace thread panicked"))?;
        let fd = made.map_err(io(
            JailerStep::CreateNetns,
            "unshare(CLONE_NEWNET) (needs root)",
        ))?;
        Ok(Netns { fd })
    }

    /// The path the jailer opens (`--netns`).
    pub fn path(&self) -> PathBuf {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()).into()
    }
}
