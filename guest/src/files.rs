//! File requests of the host: put, get, stat, list, mkdir, remove.
//!
//! Transfers are streamed chunk by chunk (see `ironclaw_protocol::files`); a
//! put writes a hidden temporary file next to its target and renames it into
//! place only when the host said the data is complete, so an interrupted or
//! failed upload (a full overlay, say) never leaves a truncated file behind.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use ironclaw_protocol::{
    DirEntry, FileKind, FileStat, Frame, FrameKind, Message, DIR_BATCH, FILE_CHUNK,
};
use std::io::Write;

use crate::stream::{Input, InputRx, StreamOut};

/// Relative guest paths are taken from the agent's default working directory.
const BASE_DIR: &str = "/root";

/// Whether `msg` is a file request this module serves.
pub fn is_file_request(msg: &Message) -> bool {
    matches!(
        msg,
        Message::PutFile { .. }
            | Message::GetFile { .. }
            | Message::StatPath { .. }
            | Message::ListDir { .. }
            | Message::MakeDir { .. }
            | Message::Remove { .. }
    )
}

/// Batches of directory entries are cut at about this many bytes of JSON,
/// well below what one stream's window can hold.
const DIR_BATCH_BYTES: usize = 64 * 1024;

/// Starts the file request `msg` on the stream of `out`; its reply
/// (`FileDone` or `Error`, after any data) ends the stream. A put reads the
/// file's data from `input`.
pub fn start(out: StreamOut, msg: Message, input: Option<InputRx>) {
    let out2 = out.clone();
    let work: std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send>> =
        match (msg, input) {
            (Message::PutFile { path, mode }, Some(input)) => {
                Box::pin(async move { put(out2.id(), &path, mode, input).await })
            }
            (Message::GetFile { path }, _) => Box::pin(async move { get(&path, &out2).await }),
            (Message::StatPath { path }, _) => Box::pin(async move {
                let p = resolve(&path)?;
                let st = lstat(&p).await.map_err(|e| format!("stat {path}: {e}"))?;
                send(&out2, Frame::control(out2.id(), &Message::Stat(st))).await?;
                Ok(0)
            }),
            (Message::ListDir { path }, _) => Box::pin(async move { list(&path, &out2).await }),
            (
                Message::MakeDir {
                    path,
                    mode,
                    parents,
                },
                _,
            ) => Box::pin(async move { mkdir(&path, mode, parents).await }),
            (Message::Remove { path, recursive }, _) => {
                Box::pin(async move { remove(&path, recursive).await })
            }
            (other, _) => {
                let message = format!("not a file request: {other:?}");
                Box::pin(async move { Err(message) })
            }
        };
    tokio::spawn(async move {
        let reply = match work.await {
            Ok(count) => Message::FileDone { count },
            Err(message) => Message::Error { message },
        };
        out.finish(&reply).await;
    });
}

fn resolve(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("empty guest path".into());
    }
    if path.contains('\0') {
        return Err(format!("guest path {path:?} contains a NUL byte"));
    }
    Ok(Path::new(BASE_DIR).join(path))
}

/// Sends a charged frame, waiting for the host's credit.
async fn send(out: &StreamOut, frame: Frame) -> Result<(), String> {
    out.send(frame)
        .await
        .map_err(|_| "the session ended".to_string())
}

fn stat_of(meta: &std::fs::Metadata, link_target: Option<String>) -> FileStat {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    FileStat {
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        link_target,
    }
}

async fn lstat(p: &Path) -> std::io::Result<FileStat> {
    let meta = tokio::fs::symlink_metadata(p).await?;
    let target = if meta.file_type().is_symlink() {
        tokio::fs::read_link(p)
            .await
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(stat_of(&meta, target))
}

async fn put(id: u32, path: &str, mode: u32, mut input: InputRx) -> Result<u64, String> {
    let target = resolve(path)?;
    let name = target
        .file_name()
        .ok_or_else(|| format!("put {path}: the path names no file"))?
        .to_string_lossy()
        .into_owned();
    let dir = target.parent().unwrap_or(Path::new("/"));
    // Unique per put, not just per stream: after a session reset an
    // abandoned put of the same stream id may still be removing its own.
    static PUTS: AtomicU64 = AtomicU64::new(0);
    let seq = PUTS.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{name}.ironclaw-part-{}-{id}-{seq}",
        std::process::id()
    ));
    // A new file, never one the command planted there (a FIFO would block
    // the open, a link would redirect the write).
    // A new file, never one the command planted there (a FIFO would block
    // the open, a link would redirect the write).
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| format!("put {path}: creating {}: {e}", tmp.display()))?;
    let written = async {
        let mut total = 0u64;
        loop {
            match input.recv().await {
                Some(Input::Data(chunk)) => {
                    // Straight from the frame into the file: one copy, no
                    // hop to a blocking thread (a tmpfs or page-cache write
                    // is a memory copy; a chunk is at most FILE_CHUNK).
                    (&file)
                        .write_all(&chunk)
                        .map_err(|e| format!("put {path}: writing after {total} bytes: {e}"))?;
                    total += chunk.len() as u64;
                    input.consumed(chunk.len()).await;
                }
                Some(Input::End) => break,
                None => {
                    return Err(format!(
                        "put {path}: the upload was abandoned after {total} bytes"
                    ))
                }
            }
        }
        // Exact bits, whatever the agent's umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| format!("put {path}: setting mode {mode:o}: {e}"))?;
        std::fs::rename(&tmp, &target)
            .map_err(|e| format!("put {path}: moving into place: {e}"))?;
        Ok(total)
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    written
}

async fn get(path: &str, out: &StreamOut) -> Result<u64, String> {
    let id = out.id();
    let p = resolve(path)?;
    let (file, meta) = tokio::task::spawn_blocking(move || open_regular(&p))
        .await
        .map_err(|e| format!("get {path}: {e}"))?
        .map_err(|e| format!("get {path}: {e}; only regular files are sent"))?;
    send(
        out,
        Frame::control(id, &Message::Stat(stat_of(&meta, None))),
    )
    .await?;
    let mut total = 0u64;
    loop {
        // Read straight into the frame's body: no zeroing, no copy from a
        // blocking thread's buffer; the writer hands it to the kernel as is.
        let mut buf = BytesMut::with_capacity(FILE_CHUNK);
        // Full chunks: fewer, larger frames.
        while buf.len() < FILE_CHUNK {
            let n = read_into(&file, &mut buf)
                .map_err(|e| format!("get {path}: reading after {total} bytes: {e}"))?;
            if n == 0 {
                break;
            }
        }
        let filled = buf.len();
        if filled == 0 {
            return Ok(total);
        }
        total += filled as u64;
        send(out, Frame::data(id, FrameKind::FileData, buf.freeze())).await?;
        if filled < FILE_CHUNK {
            return Ok(total);
        }
    }
}

/// One `read(2)` of `file` into the spare capacity of `buf`; the bytes read.
fn read_into(file: &std::fs::File, buf: &mut BytesMut) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let spare = buf.spare_capacity_mut();
    loop {
        // SAFETY: read(2) writes at most spare.len() bytes into the spare
        // capacity, which may be uninitialized.
        let n = unsafe { libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        if n >= 0 {
            // SAFETY: the kernel initialized n bytes past the current length.
            unsafe { buf.set_len(buf.len() + n as usize) };
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Opens `p` for reading only if it is a regular file, without blocking and
/// without side effects on anything else: the path is first opened with
/// `O_PATH|O_NOFOLLOW` (which opens nothing: a FIFO, device or socket is
/// only looked at) and checked, then opened for reading with
/// `O_NONBLOCK|O_NOFOLLOW` and checked to be the same file.
fn open_regular(p: &Path) -> Result<(std::fs::File, std::fs::Metadata), String> {
    let not_regular = |meta: &std::fs::Metadata| {
        let ft = meta.file_type();
        if ft.is_dir() {
            Some("a directory".to_string())
        } else if !ft.is_file() {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_char_device() || ft.is_block_device() {
                "a device"
            } else {
                "of another kind"
            };
            Some(format!("not a regular file ({kind})"))
        } else {
            None
        }
    };
    let link = |e: std::io::Error| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            "not a regular file (a symbolic link)".to_string()
        } else {
            e.to_string()
        }
    };
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(link)?;
    let first = handle.metadata().map_err(|e| e.to_string())?;
    if let Some(what) = not_regular(&first) {
        return Err(what);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(link)?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if let Some(what) = not_regular(&meta) {
        return Err(what);
    }
    if (meta.dev(), meta.ino()) != (first.dev(), first.ino()) {
        return Err("the file was replaced while being opened".into());
    }
    Ok((file, meta))
}

async fn list(path: &str, out: &StreamOut) -> Result<u64, String> {
    let id = out.id();
    let p = resolve(path)?;
    let mut dir = tokio::fs::read_dir(&p)
        .await
        .map_err(|e| format!("list {path}: {e}"))?;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut count = 0u64;
    while let Some(entry) = dir
        .next_entry()
        .await
        .map_err(|e| format!("list {path}: {e}"))?
    {
        // An entry removed meanwhile is simply not listed.
        let Ok(stat) = lstat(&entry.path()).await else {
            continue;
        };
        let entry = DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            stat,
        };
        // An upper bound of the entry's JSON: every byte of a name or link
        // escaped (6 bytes), plus the fixed fields.
        batch_bytes +=
            256 + 6 * (entry.name.len() + entry.stat.link_target.as_ref().map_or(0, String::len));
        batch.push(entry);
        count += 1;
        if batch.len() == DIR_BATCH || batch_bytes >= DIR_BATCH_BYTES {
            batch_bytes = 0;
            let entries = std::mem::take(&mut batch);
            send(out, Frame::control(id, &Message::DirEntries { entries })).await?;
        }
    }
    if !batch.is_empty() {
        send(
            out,
            Frame::control(id, &Message::DirEntries { entries: batch }),
        )
        .await?;
    }
    Ok(count)
}

async fn mkdir(path: &str, mode: u32, parents: bool) -> Result<u64, String> {
    let p = resolve(path)?;
    let made = if parents {
        tokio::fs::create_dir_all(&p).await
    } else {
        tokio::fs::create_dir(&p).await
    };
    made.map_err(|e| format!("mkdir {path}: {e}"))?;
    tokio::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
        .await
        .map_err(|e| format!("mkdir {path}: setting mode {mode:o}: {e}"))?;
    Ok(0)
}

async fn remove(path: &str, recursive: bool) -> Result<u64, String> {
    let p = resolve(path)?;
    if p == Path::new("/") {
        return Err("remove /: refused".into());
    }
    let meta = tokio::fs::symlink_metadata(&p)
        .await
        .map_err(|e| format!("remove {path}: {e}"))?;
    let removed = if meta.is_dir() {
        if recursive {
            tokio::fs::remove_dir_all(&p).await
        } else {
            tokio::fs::remove_dir(&p).await
        }
    } else {
        tokio::fs::remove_file(&p).await
    };
    removed.map_err(|e| format!("remove {path}: {e}"))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_under_root_home() {
        assert_eq!(resolve("a/b").unwrap(), Path::new("/root/a/b"));
        assert_eq!(resolve("/etc/x").unwrap(), Path::new("/etc/x"));
        assert!(resolve("").is_err());
        assert!(resolve("a\0b").is_err());
    }

    #[test]
    fn only_regular_files_are_opened_and_a_fifo_does_not_block() {
        let d = std::env::temp_dir().join(format!("ironclaw-guest-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("file"), b"data").unwrap();
        let fifo = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink(d.join("file"), d.join("link")).unwrap();
        let (file, meta) = open_regular(&d.join("file")).unwrap();
        assert_eq!((meta.len(), file.metadata().unwrap().len()), (4, 4));
        // No writer ever opens the FIFO: a blocking open would hang here.
        let t0 = std::time::Instant::now();
        for (name, what) in [
            ("fifo", "not a regular file (a FIFO)"),
            ("link", "not a regular file (a symbolic link)"),
            ("", "a directory"),
        ] {
            let err = open_regular(&d.join(name)).unwrap_err();
            assert!(err.contains(what), "{name}: {err}");
        }
        let err = open_regular(Path::new("/dev/null")).unwrap_err();
        assert!(err.contains("not a regular file (a device)"), "{err}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
