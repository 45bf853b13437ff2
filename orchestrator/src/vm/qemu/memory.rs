//! Clones that share their prototype's memory: whether this QEMU can, the
//! file a prototype's RAM lives in while it runs, and keeping that RAM when
//! the prototype is snapshotted.
//!
//! A prototype runs with its RAM in a file mapped shared; its snapshot is the
//! device state (the migration stream, RAM left out by `x-ignore-shared`) and
//! a sparse copy of that file, read-only. Each clone maps the copy private
//! and read-only-opened (`readonly=on,rom=off`, QEMU ≥ 8.2): the host keeps
//! one copy of every page in its page cache until a clone writes to it.
//! With an older QEMU (Debian 12's 7.2, where `readonly` also makes the
//! mapping read-only) clones load a copy of the RAM from the stream, as
//! before; `IRONCLAW_CLONE_MEMORY=copy` chooses that anywhere.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::vm::host::file_identity;
use crate::vm::VmError;

/// `copy` (clones load a copy of the RAM), `share` (required), or unset (share where QEMU can).
pub const CLONE_MEMORY_ENV: &str = "IRONCLAW_CLONE_MEMORY";

/// Whether clones of prototypes made with `qemu` share their memory.
pub fn clones_share_memory(qemu: &Path) -> Result<bool, VmError> {
    let wanted = std::env::var(CLONE_MEMORY_ENV).unwrap_or_default();
    let bad = |reason: String| {
        VmError::Config(crate::vm::config::ConfigError {
            field: CLONE_MEMORY_ENV,
            reason,
        })
    };
    match wanted.as_str() {
        "copy" => Ok(false),
        "share" if can_share(qemu)? => Ok(true),
        "share" => Err(bad(format!(
            "{} cannot map a prototype's memory copy-on-write (needs QEMU 8.2 or later); \
             unset it or set it to `copy`",
            qemu.display()
        ))),
        "" => can_share(qemu),
        other => Err(bad(format!("`{other}` is neither `share` nor `copy`"))),
    }
}

/// Whether `qemu`'s file memory backend has `rom`, which lets a read-only
/// opened file be mapped private and writable. Asked once per binary: the
/// answer is kept in the process and in the cache (`probes/`), keyed by the
/// binary's identity, so `ironclaw run` does not start QEMU an extra time
/// (tens of milliseconds) on every call.
fn can_share(qemu: &Path) -> Result<bool, VmError> {
    static SEEN: Mutex<Option<HashMap<String, bool>>> = Mutex::new(None);
    let identity = file_identity(qemu)?;
    if let Some(&known) = SEEN.lock().unwrap().get_or_insert_default().get(&identity) {
        return Ok(known);
    }
    let record = crate::cache::memo_record("qemu-memory", &identity);
    let known = match record.as_deref().map(std::fs::read_to_string) {
        Some(Ok(text)) if text == ROM || text == NO_ROM => text == ROM,
        _ => {
            let out = Command::new(qemu)
                .args(["-object", "memory-backend-file,help"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map_err(|e| {
                    VmError::io(
                        format!("asking {} for its memory options", qemu.display()),
                        e,
                    )
                })?;
            let known = has_rom_option(&String::from_utf8_lossy(&out.stdout));
            if let Some(path) = &record {
                // Only a saving: without the record QEMU is asked again.
                let text = if known { ROM } else { NO_ROM };
                let _ = crate::cache::write_file(path, text.as_bytes());
            }
            known
        }
    };
    SEEN.lock()
        .unwrap()
        .get_or_insert_default()
        .insert(identity, known);
    Ok(known)
}

/// What a probe record says.
const ROM: &str = "rom";
const NO_ROM: &str = "no-rom";

/// Whether QEMU's `memory-backend-file,help` lists the `rom` option.
fn has_rom_option(help: &str) -> bool {
    help.lines().any(|l| l.trim_start().starts_with("rom="))
}

/// Creates the file a prototype's RAM lives in (empty; QEMU sizes it), ours,
/// new, 0600, handed to the VMM's uid when it is jailed.
pub fn create_shared(path: &Path, owner: Option<(u32, u32)>) -> Result<(), VmError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| VmError::io(format!("creating {}", path.display()), e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| VmError::io(format!("handing {} to the jail uid", path.display()), e))?;
    }
    Ok(())
}

/// Copies a stopped prototype's RAM file to `dest` (new, 0444), holes kept:
/// pages the guest never touched take no space and read as zeroes.
pub fn keep_ram(src: &Path, dest: &Path) -> Result<(), VmError> {
    let io = |what: &str, path: &Path| {
        let what = format!("{what} {}", path.display());
        move |e| VmError::io(what, e)
    };
    let from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .map_err(io("opening", src))?;
    let m = from.metadata().map_err(io("reading", src))?;
    if !m.is_file() || m.nlink() != 1 {
        return Err(VmError::SnapshotIncompatible(format!(
            "{} is not the VM's own memory file (a link or not a regular file)",
            src.display()
        )));
    }
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(io("creating", dest))?;
    to.set_len(m.len()).map_err(io("sizing", dest))?;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_ranges(&from, m.len()).map_err(io("reading", src))? {
        let mut at = start;
        while at < end {
            let want = buf.len().min((end - at) as usize);
            let n = from
                .read_at(&mut buf[..want], at)
                .map_err(io("reading", src))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                to.write_all_at(&buf[..n], at)
                    .map_err(io("writing", dest))?;
            }
            at += n as u64;
        }
    }
    to.sync_all().map_err(io("writing", dest))?;
    Ok(())
}

/// The `[start, end)` byte ranges of `file` that hold data (`SEEK_DATA`/`SEEK_HOLE`).
fn data_ranges(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let seek = |at: u64, whence| {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, whence) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        let end = seek(start, libc::SEEK_HOLE)?.min(len);
        ranges.push((start, end));
        at = end;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rom_option_is_read_from_qemus_help() {
        let qemu10 = "memory-backend-file options:\n  readonly=<bool>\n  rom=<OnOffAuto>        - Whether to create Read Only Memory (ROM)\n  share=<bool>\n";
        let qemu72 =
            "memory-backend-file options:\n  readonly=<bool>\n  reserve=<bool>\n  share=<bool>\n";
        assert!(has_rom_option(qemu10));
        assert!(!has_rom_option(qemu72));
    }

    #[test]
    fn kept_ram_keeps_data_and_holes_and_is_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("ram");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"page one", 4096).unwrap();
        f.write_all_at(b"far away", 40 << 20).unwrap();
        drop(f);
        let dest = dir.path().join("kept");
        keep_ram(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dest).unwrap());
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!(m.mode() & 0o777, 0o444);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "holes were filled: {} blocks",
            m.blocks()
        );
        // Never over an existing file, never through a link.
        assert!(keep_ram(&src, &dest).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&src, &link).unwrap();
        assert!(keep_ram(&link, &dir.path().join("other")).is_err());
    }
}
