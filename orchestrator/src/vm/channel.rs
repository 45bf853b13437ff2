//! "Give me a byte stream to the guest agent": the one abstraction the host
//! side needs from a transport. Vsock (hybrid, Firecracker's protocol) is one
//! implementation; a virtio-serial port is another (for QEMU snapshots).

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

pub type BoxedStream = Box<dyn ByteStream>;

#[async_trait]
pub trait GuestChannel: Send + Sync {
    /// Opens a new connection to the agent. Fails (quickly) while the agent is
    /// not listening yet; callers retry within their boot deadline.
    async fn open(&self) -> std::io::Result<BoxedStream>;

    /// For messages: what this channel is (`vsock <path> port <n>`).
    fn describe(&self) -> String;
}

/// The host end of a virtio-serial port: a unix socket QEMU serves. There is
/// one byte stream per VM; each new connection starts a new agent session.
pub struct SerialChannel {
    path: std::path::PathBuf,
}

impl SerialChannel {
    pub fn new(path: impl Into<std::path::PathBuf>) -> SerialChannel {
        SerialChannel { path: path.into() }
    }
}

#[async_trait]
impl GuestChannel for SerialChannel {
    async fn open(&self) -> std::io::Result<BoxedStream> {
        Ok(Box::new(tokio::net::UnixStream::connect(&self.path).await?))
    }

    fn describe(&self) -> String {
        format!("virtio-serial {}", self.path.display())
    }
}
