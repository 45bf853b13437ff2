//! The guest's serial console log, kept bounded. The guest writes it (its
//! root can write as fast as the emulated UART goes: ~0.5 MiB/s under TCG),
//! and it lives in the runtime directory, which is RAM on most hosts. The
//! VMM opens it for appending; a watcher moves the last [`KEEP_BYTES`] to
//! `console.log.1` and empties it whenever it passes [`MAX_BYTES`], so a VM
//! holds at most about `MAX_BYTES + KEEP_BYTES` of console output (plus what
//! the guest writes within one [`CHECK_EVERY`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The console log is rotated beyond this size.
pub const MAX_BYTES: u64 = 1 << 20;
/// The end of the log kept in `console.log.1` at a rotation.
pub const KEEP_BYTES: u64 = 256 << 10;
/// How often the size is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Where the rotated end of `log` goes.
pub fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotates `log` if it passed `max`: its last `keep` bytes replace the
/// rotated file (created by us, 0600, never through a link), then it is
/// emptied (the VMM appends, so it goes on at the new end). Returns whether
/// it rotated.
pub fn rotate_if_large(log: &Path, max: u64, keep: u64) -> std::io::Result<bool> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(log)?;
    let len = f.metadata()?.len();
    if len <= max {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len.saturating_sub(keep)))?;
    let mut end = Vec::with_capacity(keep as usize);
    (&mut f).take(keep).read_to_end(&mut end)?;
    let old = rotated(log);
    let tmp = old.with_extension("1.tmp");
    let _ = fs::remove_file(&tmp);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    out.write_all(&end)?;
    drop(out);
    fs::rename(&tmp, &old)?;
    f.set_len(0)?;
    Ok(true)
}

/// Keeps `log` bounded until it disappears (its VM's directory removed).
pub fn watch(log: PathBuf) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let path = log.clone();
            let step =
                tokio::task::spawn_blocking(move || rotate_if_large(&path, MAX_BYTES, KEEP_BYTES))
                    .await;
            match step {
                Ok(Ok(_)) => {}
                // Gone with its VM (or never made, for a VMM that failed early).
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
                Ok(Err(e)) => {
                    tracing::warn!(
                        "console log {}: rotation failed, no longer bounded: {e}",
                        log.display()
                    );
                    return;
                }
                Err(_) => return,
            }
        }
    });
}

/// Opens (creating) a console log for a VMM that writes it through an fd we
/// give it: append mode, so an emptied log goes on at its new end.
pub fn create_for_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_the_limit_keeping_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut f = create_for_append(&log).unwrap();
        f.write_all(b"0123456789").unwrap();
        assert!(!rotate_if_large(&log, 10, 4).unwrap());
        f.write_all(b"abcdef").unwrap();
        assert!(rotate_if_large(&log, 10, 4).unwrap());
        assert_eq!(fs::read(rotated(&log)).unwrap(), b"cdef");
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        // The writer appends at the new end, not at its old offset.
        f.write_all(b"xy").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"xy");
    }
}
