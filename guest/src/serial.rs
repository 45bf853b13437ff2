//! The virtio-serial transport: one port (`/dev/vportNpM`) carries the same
//! protocol as vsock. Unlike vsock there are no connections, so the agent
//! learns about the host from the port itself: reads return EOF (and poll
//! reports POLLHUP) while no host is connected to the chardev socket; the
//! driver wakes the port's waiters when one connects ([`SerialPort::wait_for_host`]).
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

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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

    /// Waits until a host is connected to the other end. The port reports
    /// POLLHUP for as long as none is, so it cannot be waited on directly;
    /// but the driver wakes the port's waiters when the host side opens
    /// (`VIRTIO_CONSOLE_PORT_OPEN`), which an edge-triggered epoll instance
    /// of our own turns into an event. The reactor watches that instance
    /// (plainly readable, never hung up), so the agent sleeps until the host
    /// connects instead of polling (it polled every 10 ms: up to 10 ms of
    /// every clone's handshake). Registered before the first check, so a
    /// connection in between is not missed; a slow fallback check covers a
    /// wake-up the driver might not give.
    pub async fn wait_for_host(&self) {
        let watch = match HostWatch::new(&self.fd) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("ironclaw-guest: watching the serial port: {e}; polling it");
                None
            }
        };
        while self.hung_up() {
            match &watch {
                Some(w) => w.next_wake(FALLBACK_CHECK).await,
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn hung_up(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n < 0 || pfd.revents & libc::POLLHUP != 0
    }
}

/// How often [`SerialPort::wait_for_host`] checks the port without a wake-up.
const FALLBACK_CHECK: Duration = Duration::from_secs(1);

/// An epoll instance watching the port edge-triggered, itself watched by
/// the reactor.
struct HostWatch {
    epoll: AsyncFd<OwnedFd>,
}

impl HostWatch {
    fn new(port: &OwnedFd) -> io::Result<HostWatch> {
        // SAFETY: creates a descriptor, owned below.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; event is valid for the call.
        if unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                port.as_raw_fd(),
                &mut event,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open, as the
        // same descriptor, for the AsyncFd's whole life.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(HostWatch { epoll })
    }

    /// Returns after the port's next wake-up (or `fallback`), with the
    /// events seen so far consumed.
    async fn next_wake(&self, fallback: Duration) {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(fallback, self.epoll.readable()).await {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: a valid buffer of 4 events, zero timeout.
            while unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 4, 0) } > 0
            {
            }
            guard.clear_ready();
        }
    }
}
