//! Small facts about the host every backend needs: finding tools (honouring
//! the `IRONCLAW_*` overrides), the tail of a log for an error message, the
//! identity of an input file, and waiting for a helper process's socket.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::VmError;

/// Finds `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `$env` when set, else `name` on `PATH`; `hint` says how to install it.
pub fn find_tool(env: &str, name: &str, hint: &str) -> Result<PathBuf, VmError> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| which(name))
        .ok_or_else(|| VmError::MissingTool {
            tool: name.into(),
            hint: hint.into(),
        })
}

/// The last `max` bytes of a log file, for error messages. Reads only those
/// bytes: a guest can make its console log large.
pub fn tail(path: &Path, max: usize) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max as u64)))?;
        let mut data = Vec::with_capacity(max.min(len as usize));
        f.take(max as u64).read_to_end(&mut data)?;
        Ok(data)
    };
    let Ok(data) = read() else {
        return format!("({} unreadable)", path.display());
    };
    let text = String::from_utf8_lossy(&data).trim().to_string();
    if text.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        text
    }
}

/// Identity of an input file: path, size, modification time and inode.
/// Cheap (no hashing) and changes whenever the file is replaced or rewritten.
pub fn file_identity(path: &Path) -> Result<String, VmError> {
    let m =
        fs::metadata(path).map_err(|e| VmError::io(format!("reading {}", path.display()), e))?;
    Ok(format!("{}:{}", path.display(), stat_stamp(&m)))
}

/// Size, mtime (ns) and inode: what changes when a file is rewritten or replaced.
pub fn stat_stamp(m: &fs::Metadata) -> String {
    format!(
        "{}:{}:{}",
        m.len(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ino()
    )
}

/// When a process's socket counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketReady {
    /// The socket file exists (it appears at `bind()`).
    Exists,
    /// The socket file exists and accepts a connection: a moment after
    /// `bind()` a first request could still be refused.
    Accepting,
}

/// Why a process's socket never became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketWaitError {
    /// The process exited first: its exit status and the tail of its log.
    Exited { status: String, log_tail: String },
    /// Neither happened within `waited`.
    TimedOut { waited: Duration },
}

/// Waits up to `timeout` until the process creates `socket` (`ready` says
/// when it counts), failing as soon as `exited(process)` reports an exit
/// status; that error carries `log_tail(process)`. `process` is handed to
/// both closures in turn, so each may borrow it.
pub async fn wait_for_socket<P>(
    process: &mut P,
    socket: &Path,
    ready: SocketReady,
    timeout: Duration,
    mut exited: impl FnMut(&mut P) -> Option<String>,
    log_tail: impl FnOnce(&P) -> String,
) -> Result<(), SocketWaitError> {
    let found = super::process::poll_until(timeout, || {
        let there = socket.exists()
            && match ready {
                SocketReady::Exists => true,
                SocketReady::Accepting => std::os::unix::net::UnixStream::connect(socket).is_ok(),
            };
        if there {
            return Some(Ok(()));
        }
        exited(process).map(Err)
    })
    .await;
    match found {
        Some(Ok(())) => Ok(()),
        Some(Err(status)) => Err(SocketWaitError::Exited {
            status,
            log_tail: log_tail(process),
        }),
        None => Err(SocketWaitError::TimedOut { waited: timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process, polled for its exit like a VMM is.
    fn exited(child: &mut std::process::Child) -> Option<String> {
        child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    #[tokio::test]
    async fn a_socket_that_appears_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for ready in [SocketReady::Exists, SocketReady::Accepting] {
            let waited = Duration::from_secs(1);
            wait_for_socket(&mut child, &sock, ready, waited, exited, |_| String::new())
                .await
                .unwrap();
        }
        // A plain file exists, but accepts no connection.
        let file = dir.path().join("plain");
        fs::write(&file, "").unwrap();
        let waited = Duration::from_millis(50);
        let accepting = SocketReady::Accepting;
        let r = wait_for_socket(&mut child, &file, accepting, waited, exited, |_| "".into());
        assert_eq!(r.await, Err(SocketWaitError::TimedOut { waited }));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_process_that_exits_first_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vmm.log");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo no such device >&2; exit 3"])
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let sock = dir.path().join("never.sock");
        let waited = Duration::from_secs(10);
        let err = wait_for_socket(
            &mut child,
            &sock,
            SocketReady::Exists,
            waited,
            exited,
            |_| tail(&log, 100),
        )
        .await
        .unwrap_err();
        let SocketWaitError::Exited { status, log_tail } = err else {
            panic!("{err:?}");
        };
        assert!(status.contains('3'), "{status}");
        assert_eq!(log_tail, "no such device");
    }

    #[test]
    fn tail_reads_only_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nlast words\n");
        fs::write(&log, &text).unwrap();
        assert_eq!(tail(&log, 11), "last words");
        assert!(tail(&dir.path().join("none"), 10).contains("unreadable"));
        fs::write(&log, "").unwrap();
        assert!(tail(&log, 10).contains("is empty"));
    }

    #[test]
    fn identity_changes_when_a_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kernel");
        fs::write(&f, "a").unwrap();
        let before = file_identity(&f).unwrap();
        fs::remove_file(&f).unwrap();
        fs::write(&f, "bb").unwrap();
        assert_ne!(before, file_identity(&f).unwrap());
    }
}
