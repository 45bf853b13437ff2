//! A minimal QMP client (QEMU Machine Protocol: JSON lines over a unix socket).
//! Only what IronClaw uses: the greeting, capabilities negotiation, and
//! `execute` with asynchronous events skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::confine::fd_pass;

/// Longest QMP line read (events and answers are small; bounds memory).
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP sent something that is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("QMP command {0} got no answer in time")]
    Timeout(String),
}

pub struct Qmp {
    stream: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).await?;
        let mut qmp = Qmp {
            stream: BufReader::new(stream),
        };
        let greeting = qmp.read_value().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Command {
                command: "greeting".into(),
                class: "Protocol".into(),
                desc: format!("unexpected greeting {greeting}"),
            });
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_value(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let n = AsyncReadExt::take(&mut self.stream, MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        if !line.ends_with(b"\n") {
            return Err(QmpError::LineTooLong);
        }
        Ok(serde_json::from_slice(&line)?)
    }

    /// Runs `command`, passing `file` along as SCM_RIGHTS ancillary data (for
    /// `getfd`), and returns its `return` value.
    pub async fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        file: &std::fs::File,
    ) -> Result<Value, QmpError> {
        use std::os::fd::AsRawFd;
        let mut line = serde_json::to_vec(&json!({ "execute": command, "arguments": arguments }))?;
        line.push(b'\n');
        let fd = file.as_raw_fd();
        let sock = self.stream.get_ref();
        loop {
            sock.writable().await?;
            match sock.try_io(tokio::io::Interest::WRITABLE, || {
                fd_pass::send_fd(sock.as_raw_fd(), &line, fd, libc::MSG_NOSIGNAL)
            }) {
                Ok(n) if n == line.len() => break,
                Ok(n) => {
                    return Err(QmpError::Io(std::io::Error::other(format!(
                        "short write of {n} bytes"
                    ))))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.read_answer(command).await
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut req = json!({ "execute": command });
        if let Some(args) = arguments {
            req["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&req)?;
        line.push(b'\n');
        self.stream.get_mut().write_all(&line).await?;
        self.read_answer(command).await
    }

    async fn read_answer(&mut self, command: &str) -> Result<Value, QmpError> {
        let answer = async {
            loop {
                let v = self.read_value().await?;
                if let Some(ret) = v.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(err) = v.get("error") {
                    let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    return Err(QmpError::Command {
                        command: command.into(),
                        class: s("class"),
                        desc: s("desc"),
                    });
                }
                // Anything else is an asynchronous event: skip it.
            }
        };
        tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .map_err(|_| QmpError::Timeout(command.into()))?
    }
}
