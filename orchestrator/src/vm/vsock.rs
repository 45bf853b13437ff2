//! Host side of hybrid vsock (Firecracker's protocol, also spoken by
//! `vhost-device-vsock`): connect to a unix socket, send `CONNECT <port>\n`,
//! read `OK <host port>\n`, then the stream is connected to the guest port.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::channel::{BoxedStream, GuestChannel};

/// Longest acknowledgement line accepted ("OK 4294967295\n" is 14 bytes).
const MAX_ACK_LEN: usize = 32;
/// A handshake that has not finished after this long is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot connect to vsock socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock handshake for port {port} failed: {reason}")]
    Handshake { port: u32, reason: String },
}

impl From<VsockError> for std::io::Error {
    fn from(e: VsockError) -> Self {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e)
    }
}

/// A VM's vsock device as seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vsock {
    pub guest_cid: u32,
    /// The hybrid vsock unix socket (Firecracker's `uds_path`).
    pub uds_path: PathBuf,
    /// The guest port connections go to.
    pub port: u32,
}

impl Vsock {
    pub fn new(guest_cid: u32, uds_path: impl Into<PathBuf>, port: u32) -> Vsock {
        Vsock {
            guest_cid,
            uds_path: uds_path.into(),
            port,
        }
    }

    /// The unix socket where guest-initiated connections to host `port` arrive
    /// (`<uds_path>_<port>`, the hybrid vsock convention).
    pub fn guest_initiated_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds_path.clone().into_os_string();
        p.push(format!("_{port}"));
        p.into()
    }

    /// Listens for the agent's "I am listening" connection. Must be bound before
    /// the VM starts.
    pub fn bind_ready_listener(&self) -> std::io::Result<tokio::net::UnixListener> {
        tokio::net::UnixListener::bind(
            self.guest_initiated_path(ironclaw_protocol::AGENT_READY_PORT),
        )
    }

    /// One connection attempt with the `CONNECT` handshake.
    pub async fn connect(&self) -> Result<UnixStream, VsockError> {
        let mut stream = UnixStream::connect(&self.uds_path)
            .await
            .map_err(|source| VsockError::Connect {
                path: self.uds_path.clone(),
                source,
            })?;
        let port = self.port;
        let hs = |reason: String| VsockError::Handshake { port, reason };
        let handshake = async {
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .await
                .map_err(|e| hs(e.to_string()))?;
            // Byte by byte: nothing after the newline belongs to the handshake.
            let mut line = Vec::with_capacity(MAX_ACK_LEN);
            loop {
                let b = stream.read_u8().await.map_err(|e| {
                    hs(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        "connection closed (is the guest listening yet?)".into()
                    } else {
                        e.to_string()
                    })
                })?;
                if b == b'\n' {
                    break;
                }
                if line.len() == MAX_ACK_LEN {
                    return Err(hs("acknowledgement line too long".into()));
                }
                line.push(b);
            }
            let line = String::from_utf8_lossy(&line);
            match line.strip_prefix("OK ").map(|p| p.trim().parse::<u32>()) {
                Some(Ok(_)) => Ok(()),
                _ => Err(hs(format!("unexpected answer {line:?}"))),
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| hs("no answer".into()))??;
        Ok(stream)
    }
}

#[async_trait]
impl GuestChannel for Vsock {
    async fn open(&self) -> std::io::Result<BoxedStream> {
        Ok(Box::new(self.connect().await?))
    }

    fn describe(&self) -> String {
        format!("vsock {} port {}", self.uds_path.display(), self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A stand-in for the hybrid vsock multiplexer: answers the handshake with `answer`.
    async fn fake_mux(answer: &'static [u8]) -> (tempfile::TempDir, Vsock) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = tokio::io::BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            s.get_mut().write_all(answer).await.unwrap();
            s.get_mut().write_all(b"payload").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        (dir, Vsock::new(3, path, 1024))
    }

    #[tokio::test]
    async fn handshake_ok_leaves_payload_unread() {
        let (_d, v) = fake_mux(b"OK 1073741824\n").await;
        let mut s = v.connect().await.unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"payload");
    }

    #[tokio::test]
    async fn handshake_refusal_is_an_error() {
        let (_d, v) = fake_mux(b"NOPE\n").await;
        assert!(matches!(
            v.connect().await,
            Err(VsockError::Handshake { port: 1024, .. })
        ));
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let v = Vsock::new(3, "/nonexistent/ironclaw.sock", 1024);
        assert!(matches!(v.connect().await, Err(VsockError::Connect { .. })));
    }
}
