//! A byte stream over a raw, non-blocking descriptor (a virtio-serial port,
//! an accepted vsock socket), registered with the reactor by the session
//! that uses it. Unlike the transports' own stream types it writes vectored
//! (`writev`): a batch of frames whose large bodies stay where they are
//! leaves in one system call, without copying them into a buffer first
//! (see `ironclaw_protocol::write_frames`).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most slices handed to one `writev` (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;

pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    /// Registers `fd` (made non-blocking here) with the reactor.
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, as the
        // same descriptor, for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(FdStream { fd })
    }
}

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // SAFETY: read(2) only writes initialized bytes into the unfilled
            // part of buf, which it may treat as uninitialized; we then mark
            // exactly the bytes read as filled.
            let unfilled = unsafe { buf.unfilled_mut() };
            let res = guard.try_io(|fd| {
                // SAFETY: the pointer and length describe the unfilled part of buf.
                result(unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                })
            });
            match res {
                Ok(Ok(n)) => {
                    // SAFETY: the kernel wrote n bytes there.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let res = guard.try_io(|fd| {
                // SAFETY: writing from a valid slice.
                result(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
            });
            match res {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bufs = &bufs[..bufs.len().min(MAX_IOV)];
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let res = guard.try_io(|fd| {
                // SAFETY: IoSlice is ABI-compatible with iovec; the slices
                // outlive the call.
                result(unsafe {
                    libc::writev(
                        fd.as_raw_fd(),
                        bufs.as_ptr().cast(),
                        bufs.len() as libc::c_int,
                    )
                })
            });
            match res {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
