//! Files in a sandbox: streamed upload and download (no whole-file
//! buffering on the host), stat, list, mkdir, remove, and whole directories
//! in and out as a tar stream (the guest's own `tar`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream};

use super::error::ServiceError;
use super::lifecycle::check_guest_path;
use super::sandbox::{Owner, Sandbox};
use super::types::{DirListing, FileInfo, FileKind, Written};
use super::Service;
use crate::agent::{ExecEvent, FileError};
use crate::vm::ExecRequest;

/// In-flight bytes between the guest and an HTTP body.
const PIPE_BYTES: usize = 256 << 10;
/// Bytes of `tar`'s stderr kept for the error.
const TAR_STDERR_BYTES: usize = 16 << 10;
/// How long a directory copy may take.
const TAR_TIMEOUT: Duration = Duration::from_secs(3600);

fn name_of(path: &str) -> String {
    path.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("/")
        .to_string()
}

impl Service {
    /// `r`, and if the sandbox failed (its guest stopped answering), the
    /// sandbox destroyed.
    async fn guard<T, E: Into<ServiceError>>(
        &self,
        sandbox: &Sandbox,
        r: Result<T, E>,
    ) -> Result<T, ServiceError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(sandbox, e.into()).await),
        }
    }

    /// Writes everything `reader` yields to `path` in the sandbox (mode 0644
    /// unless given); the file appears only when complete.
    pub async fn upload(
        &self,
        owner: &Owner,
        id: &str,
        path: &str,
        mode: Option<u32>,
        reader: &mut (impl AsyncRead + Unpin),
    ) -> Result<Written, ServiceError> {
        check_guest_path("path", path)?;
        let sandbox = self.get(owner, id)?;
        let busy = sandbox.busy();
        let put = busy
            .agent()
            .put(reader, path, mode.unwrap_or(0o644) & 0o7777)
            .await
            .map_err(|e| match e {
                FileError::Local { source, .. } => {
                    ServiceError::bad_request(format!("reading the upload body: {source}"))
                }
                other => other.into(),
            });
        let bytes = match put {
            Ok(b) => b,
            Err(e) => return Err(self.failed(&sandbox, e).await),
        };
        Ok(Written {
            path: path.into(),
            bytes,
        })
    }

    /// The regular file `path` as a stream, with its stat. Checked before the
    /// stream starts (missing or not a file is an error, not an empty body).
    pub async fn download(
        &self,
        owner: &Owner,
        id: &str,
        path: &str,
    ) -> Result<(FileInfo, DuplexStream), ServiceError> {
        check_guest_path("path", path)?;
        let sandbox = self.get(owner, id)?;
        let stat = self.stat(owner, id, path).await?;
        if stat.kind != FileKind::File {
            return Err(ServiceError::bad_request(format!(
                "path: {path} is not a regular file (download a directory with the tar endpoint)"
            )));
        }
        let (mut tx, rx) = tokio::io::duplex(PIPE_BYTES);
        let busy = sandbox.busy();
        let path = path.to_string();
        let service = self.clone();
        tokio::spawn(async move {
            match busy.agent().get(&path, &mut tx).await {
                Ok(_) => {}
                // The reader stopped early (a client gone, a capped read): not a failure.
                Err(FileError::Local { source, .. })
                    if source.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    tracing::debug!(sandbox = %busy.id, %path, "download ended by its reader");
                }
                // The body ends early; the client sees a short read.
                // The sandbox was destroyed while the last reply was on its way.
                Err(e) if !service.is_live(&busy.id) => {
                    tracing::debug!(sandbox = %busy.id, %path, "download ended with its sandbox: {e}");
                }
                Err(e) => {
                    tracing::warn!(sandbox = %busy.id, %path, "download failed: {e}");
                    let e = ServiceError::from(e);
                    if e.code == super::ErrorCode::SandboxFailed {
                        service.fail(&busy.id, &e.message).await;
                    }
                }
            }
            let _ = tx.shutdown().await;
        });
        Ok((stat, rx))
    }

    pub async fn stat(
        &self,
        owner: &Owner,
        id: &str,
        path: &str,
    ) -> Result<FileInfo, ServiceError> {
        check_guest_path("path", path)?;
        let sandbox = self.get(owner, id)?;
        let busy = sandbox.busy();
        let stat = self.guard(&sandbox, busy.agent().stat(path).await).await?;
        Ok(FileInfo::of(name_of(path), stat))
    }

    pub async fn list_dir(
        &self,
        owner: &Owner,
        id: &str,
        path: &str,
    ) -> Result<DirListing, ServiceError> {
        check_guest_path("path", path)?;
        let sandbox = self.get(owner, id)?;
        let busy = sandbox.busy();
        let entries = self
            .guard(&sandbox, busy.agent().list_dir(path).await)
            .await?;
        Ok(DirListing {
            path: path.into(),
            entries: entries
                .into_iter()
                .map(|e| FileInfo::of(e.name, e.stat))
                .collect(),
        })
    }

    pub async fn mkdir(
        &self,
        owner: &Owner,
        id: &str,
        path: &str,
        mode: Option<u32>,
        parents: bool,
    ) -> Result<(), ServiceError> {
        check_guest_path("path", path)?;
        let sandbox = self.get(owner, id)?;
        let busy = sandbox.busy();
        let made = busy
            .agent()
            .mkdir(path, mode.unwrap_or(0o755) & 0o7777, parents)
            .await;
        self.guard(&sandbox, made).await
    }

    pub async fn remove(
        &self,
        owner: &Owner,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ServiceError> {
        check_guest_path("path", path)?;
        if path.trim_end_matches('/').is_empty() {
            return Err(ServiceError::bad_request("path: refusing to remove /"));
        }
        let sandbox = self.get(owner, id)?;
        let busy = sandbox.busy();
        self.guard(&sandbox, busy.agent().remove(path, recursive).await)
            .await
    }

    /// The directory `path` as a tar stream (`tar -C path -cf - .` in the guest).
    pub async fn tar_out(
        &self,
        owner: &Owner,
        id: &str,
        path: &str,
    ) -> Result<DuplexStream, ServiceError> {
        let dir = self.stat(owner, id, path).await?;
        if dir.kind != FileKind::Dir {
            return Err(ServiceError::bad_request(format!(
                "path: {path} is not a directory"
            )));
        }
        let sandbox = self.get(owner, id)?;
        let busy = sandbox.busy();
        let mut session = busy
            .agent()
            .exec(tar_request(["-C", path, "-cf", "-", "."]))
            .await
            .map_err(ServiceError::from)?;
        let (mut tx, rx) = tokio::io::duplex(PIPE_BYTES);
        let path = path.to_string();
        tokio::spawn(async move {
            let _busy = busy;
            let mut stderr = Vec::new();
            loop {
                match session.next_event().await {
                    Ok(ExecEvent::Stdout(b)) => {
                        if tx.write_all(&b).await.is_err() {
                            return; // the client went away; dropping the session kills tar
                        }
                    }
                    Ok(ExecEvent::Stderr(b)) => keep_tail(&mut stderr, &b),
                    Ok(ExecEvent::Started { .. }) => {}
                    Ok(ExecEvent::Exit(status)) => {
                        if status.code != Some(0) {
                            tracing::warn!(%path, ?status, "tar out failed: {}", String::from_utf8_lossy(&stderr));
                            return; // no clean end: the client sees a truncated body
                        }
                        let _ = tx.shutdown().await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%path, "tar out failed: {e}");
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Unpacks the tar stream `reader` into the directory `path` (created if missing).
    pub async fn tar_in(
        &self,
        owner: &Owner,
        id: &str,
        path: &str,
        reader: &mut (impl AsyncRead + Unpin),
    ) -> Result<(), ServiceError> {
        self.mkdir(owner, id, path, None, true).await?;
        let sandbox = self.get(owner, id)?;
        let busy = sandbox.busy();
        let mut req = tar_request(["-C", path, "-xf", "-"]);
        req.stdin = true;
        let mut session = self.guard(&sandbox, busy.agent().exec(req).await).await?;
        let writer = session.stdin_writer();
        let feed = async {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = tokio::io::AsyncReadExt::read(reader, &mut buf)
                    .await
                    .map_err(|e| ServiceError::bad_request(format!("reading the tar body: {e}")))?;
                if n == 0 {
                    break;
                }
                if writer.write(&buf[..n]).await.is_err() {
                    break; // tar ended early: its exit says why
                }
            }
            let _ = writer.close().await;
            Ok::<_, ServiceError>(())
        };
        let mut stderr = Vec::new();
        let collect = async {
            loop {
                match session.next_event().await? {
                    ExecEvent::Stderr(b) => keep_tail(&mut stderr, &b),
                    ExecEvent::Exit(status) => return Ok::<_, crate::agent::AgentError>(status),
                    _ => {}
                }
            }
        };
        let (fed, status) = tokio::join!(feed, collect);
        let status = self.guard(&sandbox, status).await?;
        fed?;
        if status.code != Some(0) {
            return Err(ServiceError::bad_request(format!(
                "unpacking into {path} failed ({status:?}): {}",
                String::from_utf8_lossy(&stderr).trim()
            )));
        }
        Ok(())
    }
}

fn tar_request<const N: usize>(args: [&str; N]) -> ExecRequest {
    let mut req = crate::vm::exec_request(std::iter::once("tar").chain(args));
    req.timeout_ms = Some(TAR_TIMEOUT.as_millis() as u64);
    req
}

fn keep_tail(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(data);
    if buf.len() > TAR_STDERR_BYTES {
        buf.drain(..buf.len() - TAR_STDERR_BYTES);
    }
}
