//! Host side of file transfer: put, get, stat, list, mkdir, remove in the guest.
//!
//! Files move chunk by chunk (at most [`FILE_CHUNK`] bytes a frame, within
//! the stream's credit window of [`ironclaw_protocol::STREAM_WINDOW`] bytes),
//! so neither side ever holds more than a window of a file.
//!
//! What the guest says is never trusted with the host's file system: a
//! download goes to exactly the local path the caller gave, through a fresh
//! temporary file in that path's directory (created with `O_EXCL|O_NOFOLLOW`)
//! renamed over it when complete. Names, links and modes from the guest do not
//! choose where anything is written or with which bits: a download is written
//! 0644 unless the caller asks otherwise, and is refused beyond a size limit
//! (1 GiB unless the caller asks otherwise), leaving nothing behind.
//!
//! Every operation fails with [`AgentError::Deadline`] (as
//! [`FileError::Agent`]) when the guest makes no progress on it (no reply,
//! no chunk, no credit) for the client's file idle limit (30 s by default,
//! [`AgentClient::with_file_idle_limit`]).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use ironclaw_protocol::{DirEntry, FileStat, Frame, FrameKind, Message, FILE_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{AgentClient, AgentError, DeadlineOf, Incoming, StreamHandle};

/// Most entries a listing may return, so a guest cannot make the host
/// allocate without bound.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Most bytes a listing may take on the host (names and link targets, plus
/// the fixed size of each entry): the entry bound alone lets a guest send
/// 100 000 entries of a window-sized name each.
pub const MAX_LIST_BYTES: usize = 32 << 20;

/// Local permission bits kept from a guest file's mode (tests only: a
/// download is written with [`GetFileOptions::mode`], not the guest's bits).
#[cfg(test)]
const LOCAL_MODE_MASK: u32 = 0o755;

/// Most bytes [`AgentClient::get_file`] takes from the guest by default: the
/// guest chooses how much it sends, and the host's disk is not its to fill.
pub const DEFAULT_MAX_GET_BYTES: u64 = 1 << 30;

/// How a download is written on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetFileOptions {
    /// The download fails ([`FileError::TooLarge`]) beyond this many bytes,
    /// and nothing is left at the local path.
    pub max_bytes: u64,
    /// Permission bits of the local file; the guest's mode is not used.
    pub mode: u32,
}

impl Default for GetFileOptions {
    fn default() -> GetFileOptions {
        GetFileOptions {
            max_bytes: DEFAULT_MAX_GET_BYTES,
            mode: 0o644,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The guest refused or failed the request; its message names the path.
    #[error("in the guest: {0}")]
    Remote(String),
    #[error("{context} {}: {source}", path.display())]
    Local {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is a directory; give the path of the file to write", .0.display())]
    TargetIsDirectory(PathBuf),
    #[error("{} is not a regular file; only regular files are copied", .0.display())]
    NotAFile(PathBuf),
    #[error("the directory {} for {} does not exist", dir.display(), path.display())]
    NoLocalDirectory { dir: PathBuf, path: PathBuf },
    #[error("{op} {path}: the guest reported {reported} bytes but {transferred} were transferred")]
    SizeMismatch {
        op: &'static str,
        path: String,
        reported: u64,
        transferred: u64,
    },
    #[error("listing {path}: more than {MAX_LIST_ENTRIES} entries")]
    TooManyEntries { path: String },
    #[error("listing {path}: more than {MAX_LIST_BYTES} bytes of entries")]
    ListingTooLarge { path: String },
    #[error("get {path}: the guest sent more than the limit of {limit} bytes; nothing was kept")]
    TooLarge { path: String, limit: u64 },
    #[error("{op} {path}: unexpected reply from the guest: {reply}")]
    Unexpected {
        op: &'static str,
        path: String,
        reply: String,
    },
}

fn local<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError::Local {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// One request stream of a file operation; unregistered when dropped.
/// Every wait on the guest is bounded by the client's file idle limit.
struct FileStream {
    stream: StreamHandle,
    client: AgentClient,
    op: &'static str,
    path: String,
}

impl FileStream {
    async fn open(
        client: &AgentClient,
        op: &'static str,
        path: &str,
        request: &Message,
    ) -> Result<FileStream, AgentError> {
        let stream = FileStream {
            stream: client.open_stream()?,
            client: client.clone(),
            op,
            path: path.into(),
        };
        stream
            .send(Frame::control(stream.stream.id, request))
            .await?;
        Ok(stream)
    }

    /// `work`, or [`AgentError::Deadline`] if the guest makes it wait longer
    /// than the idle limit.
    async fn within_limit<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, AgentError>>,
    ) -> Result<T, AgentError> {
        let limit = self.client.limits.file_idle;
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| AgentError::Deadline {
                what: DeadlineOf::File {
                    op: self.op,
                    path: self.path.clone(),
                },
                after: limit,
            })?
    }

    async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        self.within_limit(self.client.send(frame)).await
    }

    async fn recv(&mut self) -> Result<Incoming, AgentError> {
        self.within_limit(self.client.next_incoming(&self.stream))
            .await
    }

    /// Waits for the guest's credit for `n` bytes; `false` if the stream ended.
    async fn credit(&self, n: usize) -> Result<bool, AgentError> {
        self.within_limit(async { Ok(self.stream.credit.take(n).await.is_ok()) })
            .await
    }

    /// The next control message; data frames here are a protocol violation.
    async fn reply(&mut self, op: &'static str, path: &str) -> Result<Message, FileError> {
        match self.recv().await? {
            Incoming::Data(kind, _) => Err(FileError::Unexpected {
                op,
                path: path.into(),
                reply: format!("{kind:?} frame"),
            }),
            Incoming::Msg(Message::Error { message }, _) => Err(FileError::Remote(message)),
            Incoming::Msg(other, _) => Ok(other),
        }
    }
}

impl Drop for FileStream {
    fn drop(&mut self) {
        self.client.close_stream(&self.stream);
    }
}

fn unexpected(op: &'static str, path: &str, msg: Message) -> FileError {
    FileError::Unexpected {
        op,
        path: path.into(),
        reply: format!("{msg:?}"),
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
async fn fill(reader: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

impl AgentClient {
    /// Writes everything `reader` yields to the guest file `guest` (absolute,
    /// or relative to `/root`) with permission bits `mode`. The guest file
    /// appears only once complete. Returns the number of bytes written.
    pub async fn put(
        &self,
        reader: &mut (impl AsyncRead + Unpin),
        guest: &str,
        mode: u32,
    ) -> Result<u64, FileError> {
        let request = Message::PutFile {
            path: guest.into(),
            mode,
        };
        let mut stream = FileStream::open(self, "put", guest, &request).await?;
        let id = stream.stream.id;
        let mut sent = 0u64;
        loop {
            let mut buf = BytesMut::zeroed(FILE_CHUNK);
            let n = fill(reader, &mut buf)
                .await
                .map_err(|source| FileError::Local {
                    context: "reading the data for",
                    path: guest.into(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            // The guest answers early only when it failed (a full disk, say):
            // stop sending at once and report its error. It also ends the
            // stream, which wakes a wait for credit.
            let ended = !stream.credit(n).await?;
            if ended || stream.stream.inbox.has_items() {
                let other = stream.reply("put", guest).await?;
                return Err(unexpected("put", guest, other));
            }
            buf.truncate(n);
            stream
                .send(Frame::data(id, FrameKind::FileData, buf.freeze()))
                .await?;
            sent += n as u64;
        }
        stream.send(Frame::control(id, &Message::DataEnd)).await?;
        match stream.reply("put", guest).await? {
            Message::FileDone { count } if count == sent => Ok(sent),
            Message::FileDone { count } => Err(FileError::SizeMismatch {
                op: "put",
                path: guest.into(),
                reported: count,
                transferred: sent,
            }),
            other => Err(unexpected("put", guest, other)),
        }
    }

    /// Copies the local regular file `local` to `guest`, keeping its permission bits.
    pub async fn put_file(&self, local_path: &Path, guest: &str) -> Result<u64, FileError> {
        let file = tokio::fs::File::open(local_path)
            .await
            .map_err(local("opening", local_path))?;
        let meta = file
            .metadata()
            .await
            .map_err(local("reading the metadata of", local_path))?;
        if !meta.is_file() {
            return Err(FileError::NotAFile(local_path.to_path_buf()));
        }
        let mode = meta.permissions().mode() & 0o777;
        let mut reader = tokio::io::BufReader::with_capacity(FILE_CHUNK, file);
        self.put(&mut reader, guest, mode).await
    }

    /// Streams the guest's regular file `guest` into `writer`. Returns the
    /// file's stat (as the guest saw it when it opened it) and the byte count.
    pub async fn get(
        &self,
        guest: &str,
        writer: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(FileStat, u64), FileError> {
        self.get_limited(guest, writer, u64::MAX).await
    }

    /// [`AgentClient::get`], failing with [`FileError::TooLarge`] as soon as
    /// the guest sends more than `max_bytes` (before writing the excess).
    pub async fn get_limited(
        &self,
        guest: &str,
        writer: &mut (impl AsyncWrite + Unpin),
        max_bytes: u64,
    ) -> Result<(FileStat, u64), FileError> {
        let request = Message::GetFile { path: guest.into() };
        let mut stream = FileStream::open(self, "get", guest, &request).await?;
        let stat = match stream.reply("get", guest).await? {
            Message::Stat(st) => st,
            other => return Err(unexpected("get", guest, other)),
        };
        let mut received = 0u64;
        loop {
            match stream.recv().await? {
                Incoming::Data(FrameKind::FileData, data) => {
                    if received + data.len() as u64 > max_bytes {
                        return Err(FileError::TooLarge {
                            path: guest.into(),
                            limit: max_bytes,
                        });
                    }
                    writer
                        .write_all(&data)
                        .await
                        .map_err(|source| FileError::Local {
                            context: "writing the data of",
                            path: guest.into(),
                            source,
                        })?;
                    received += data.len() as u64;
                }
                Incoming::Msg(msg, _) => match msg {
                    Message::FileDone { count } if count == received => break,
                    Message::FileDone { count } => {
                        return Err(FileError::SizeMismatch {
                            op: "get",
                            path: guest.into(),
                            reported: count,
                            transferred: received,
                        })
                    }
                    Message::Error { message } => return Err(FileError::Remote(message)),
                    other => return Err(unexpected("get", guest, other)),
                },
                Incoming::Data(kind, _) => {
                    return Err(FileError::Unexpected {
                        op: "get",
                        path: guest.into(),
                        reply: format!("{kind:?} frame"),
                    })
                }
            }
        }
        writer.flush().await.map_err(|source| FileError::Local {
            context: "writing the data of",
            path: guest.into(),
            source,
        })?;
        Ok((stat, received))
    }

    /// Copies the guest's regular file `guest` to exactly `local_path` (see
    /// the module docs for how the host is protected). An existing file there
    /// is replaced only once the whole download succeeded.
    pub async fn get_file(&self, guest: &str, local_path: &Path) -> Result<u64, FileError> {
        self.get_file_with(guest, local_path, GetFileOptions::default())
            .await
    }

    /// [`AgentClient::get_file`] with a size limit and local mode of the caller's.
    pub async fn get_file_with(
        &self,
        guest: &str,
        local_path: &Path,
        options: GetFileOptions,
    ) -> Result<u64, FileError> {
        let partial = PartialFile::create(local_path)?;
        let file = tokio::fs::File::from_std(
            partial
                .file
                .try_clone()
                .map_err(local("creating", &partial.path))?,
        );
        let mut writer = tokio::io::BufWriter::with_capacity(FILE_CHUNK, file);
        let (_, n) = self
            .get_limited(guest, &mut writer, options.max_bytes)
            .await?;
        drop(writer);
        partial.commit(options.mode & 0o777)?;
        Ok(n)
    }

    /// `lstat` of a guest path (symlinks are reported, not followed).
    pub async fn stat(&self, guest: &str) -> Result<FileStat, FileError> {
        let request = Message::StatPath { path: guest.into() };
        let mut stream = FileStream::open(self, "stat", guest, &request).await?;
        let stat = match stream.reply("stat", guest).await? {
            Message::Stat(st) => st,
            other => return Err(unexpected("stat", guest, other)),
        };
        match stream.reply("stat", guest).await? {
            Message::FileDone { .. } => Ok(stat),
            other => Err(unexpected("stat", guest, other)),
        }
    }

    /// The entries of the guest directory `guest`, sorted by name. At most
    /// [`MAX_LIST_ENTRIES`] entries and [`MAX_LIST_BYTES`] bytes.
    pub async fn list_dir(&self, guest: &str) -> Result<Vec<DirEntry>, FileError> {
        let request = Message::ListDir { path: guest.into() };
        let mut stream = FileStream::open(self, "list", guest, &request).await?;
        let mut all = Vec::new();
        let mut bytes = 0usize;
        loop {
            match stream.reply("list", guest).await? {
                Message::DirEntries { entries } => {
                    if all.len() + entries.len() > MAX_LIST_ENTRIES {
                        return Err(FileError::TooManyEntries { path: guest.into() });
                    }
                    bytes += entries.iter().map(entry_bytes).sum::<usize>();
                    if bytes > MAX_LIST_BYTES {
                        return Err(FileError::ListingTooLarge { path: guest.into() });
                    }
                    all.extend(entries);
                }
                Message::FileDone { .. } => break,
                other => return Err(unexpected("list", guest, other)),
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Creates the guest directory `guest` (and its missing parents if `parents`).
    pub async fn mkdir(&self, guest: &str, mode: u32, parents: bool) -> Result<(), FileError> {
        let request = Message::MakeDir {
            path: guest.into(),
            mode,
            parents,
        };
        self.simple("mkdir", guest, &request).await
    }

    /// Removes the guest path `guest` (a directory with its contents if `recursive`).
    pub async fn remove(&self, guest: &str, recursive: bool) -> Result<(), FileError> {
        let request = Message::Remove {
            path: guest.into(),
            recursive,
        };
        self.simple("remove", guest, &request).await
    }

    async fn simple(
        &self,
        op: &'static str,
        guest: &str,
        request: &Message,
    ) -> Result<(), FileError> {
        let mut stream = FileStream::open(self, op, guest, request).await?;
        match stream.reply(op, guest).await? {
            Message::FileDone { .. } => Ok(()),
            other => Err(unexpected(op, guest, other)),
        }
    }
}

/// What an entry holds on the host, as counted against [`MAX_LIST_BYTES`].
fn entry_bytes(entry: &DirEntry) -> usize {
    std::mem::size_of::<DirEntry>()
        + entry.name.len()
        + entry.stat.link_target.as_ref().map_or(0, String::len)
}

/// A download in progress: a new hidden file next to the target, removed
/// unless [`PartialFile::commit`] renames it over the target.
struct PartialFile {
    file: std::fs::File,
    path: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PartialFile {
    fn create(target: &Path) -> Result<PartialFile, FileError> {
        let name = target
            .file_name()
            .ok_or_else(|| FileError::TargetIsDirectory(target.to_path_buf()))?;
        // A target that is (or, through a link, points at) a directory is
        // refused rather than written into under a name the guest chose.
        if std::fs::metadata(target).is_ok_and(|m| m.is_dir()) {
            return Err(FileError::TargetIsDirectory(target.to_path_buf()));
        }
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(FileError::NoLocalDirectory {
                dir,
                path: target.to_path_buf(),
            });
        }
        let mut rnd = [0u8; 6];
        getrandom::getrandom(&mut rnd).map_err(|e| FileError::Local {
            context: "choosing a temporary name next to",
            path: target.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = dir.join(format!(
            ".{}.ironclaw-{}.part",
            name.to_string_lossy(),
            hex::encode(rnd)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(local("creating", &path))?;
        Ok(PartialFile {
            file,
            path,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    fn commit(mut self, mode: u32) -> Result<(), FileError> {
        self.file
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(local("setting the mode of", &self.path))?;
        // rename(2) replaces a symlink at the target itself; it never follows it.
        std::fs::rename(&self.path, &self.target).map_err(local("writing", &self.target))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ironclaw-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn partial_file_is_removed_unless_committed() {
        let d = tmpdir("partial");
        let target = d.join("out.bin");
        let p = PartialFile::create(&target).unwrap();
        let tmp = p.path.clone();
        assert!(tmp.exists());
        drop(p);
        assert!(!tmp.exists() && !target.exists());
        let p = PartialFile::create(&target).unwrap();
        std::io::Write::write_all(&mut &p.file, b"data").unwrap();
        p.commit(0o4777 & LOCAL_MODE_MASK).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"data");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn target_symlink_is_replaced_not_followed() {
        let d = tmpdir("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let p = PartialFile::create(&link).unwrap();
        std::io::Write::write_all(&mut &p.file, b"new").unwrap();
        p.commit(0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn directory_and_missing_parent_are_refused() {
        let d = tmpdir("refuse");
        assert!(matches!(
            PartialFile::create(&d),
            Err(FileError::TargetIsDirectory(_))
        ));
        assert!(matches!(
            PartialFile::create(&d.join("no/such/dir/f")),
            Err(FileError::NoLocalDirectory { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
