//! The virtio-serial transport: one port (`/dev/vportNpM`) carries the same
//! protocol as vsock. Unlike vsock there are no connections, so the agent
//! learns about the host from the port itself: reads return EOF (and poll
//! reports POLLHUP) while no host is connected to the chardev socket.
//!
//! Each session gets its own registration with the reactor ([`SerialPort::session`]).
//! tokio treats a hang-up as final: once epoll has reported POLLHUP on a
//! registration, that registration stays "ready" forever, even after a host
//! connects again and reads return EAGAIN. Reusing the registration the port
//! was opened with (before any host had connected) made every read spin on
//! EAGAIN for the whole life of the VM: a busy agent, a busy vCPU and a host
//! core burnt per idle clone.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::fdstream::FdStream;

/// Finds the port named `name` under /sys/class/virtio-ports, waiting for the
/// driver to probe it.
pub async fn find_port(name: &str) -> io::Result<PathBuf> {
    for _ in 0..200 {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let port_name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    return Ok(PathBuf::from("/dev").join(e.file_name()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio-serial port named {name}"),
    ))
}

/// A virtio-serial port, open but not registered with the reactor.
pub struct SerialPort {
    fd: OwnedFd,
}

/// One session's view of the port: a fresh reactor registration of a
/// duplicate of the port's descriptor, so a hang-up seen by an earlier
/// session cannot leave this one permanently "ready".
pub type SerialSession = FdStream;

impl SerialPort {
    pub fn open(path: &std::path::Path) -> io::Result<SerialPort> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: c is a valid C string; the returned fd is checked and owned below.
        let raw = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a freshly opened fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(SerialPort { fd })
    }

    /// A new session on the port, registered afresh with the reactor. Call it
    /// after [`SerialPort::wait_for_host`]; the session ends at EOF, i.e.
    /// when the host goes away.
    pub fn session(&self) -> io::Result<SerialSession> {
        FdStream::new(self.fd.try_clone()?)
    }

    /// Waits until a host is connected to the other end. The port gives no
    /// event for "hang-up cleared" (poll keeps reporting POLLHUP until then),
    /// so this polls every 10 ms; it runs only while no host is connected.
    pub async fn wait_for_host(&self) {
        loop {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            let n = unsafe { libc::poll(&mut pfd, 1, 0) };
            if n >= 0 && pfd.revents & libc::POLLHUP == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
