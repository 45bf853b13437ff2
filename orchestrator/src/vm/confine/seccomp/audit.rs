//! The audit log of one VM: unlisted syscalls seen at audit level, in a
//! bounded ring in memory and a capped file in the VM's runtime directory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::rules::syscall_name;

/// Entries the in-memory ring keeps (the newest).
pub const AUDIT_RING_ENTRIES: usize = 256;
/// Lines the audit file holds at most; later entries are only counted.
pub const AUDIT_FILE_LINES: usize = 1000;
/// The audit file's name in the VM's runtime directory.
pub const AUDIT_FILE: &str = "seccomp-audit.log";

/// One unlisted syscall seen in audit level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub vm: String,
    pub process: &'static str,
    /// Host pid of the calling thread's process, as the kernel reports it.
    pub pid: u32,
    pub syscall: String,
    pub nr: i64,
    pub arg0: u64,
    /// Whether the call was refused (the *never* set) rather than allowed.
    pub refused: bool,
}

#[derive(Debug, Default)]
struct AuditInner {
    ring: VecDeque<AuditEntry>,
    total: u64,
    file_lines: usize,
    file: Option<File>,
}

/// The bounded record of unlisted syscalls of one VM.
#[derive(Debug)]
pub struct AuditLog {
    vm: String,
    ring_cap: usize,
    file_cap: usize,
    path: Option<PathBuf>,
    inner: Mutex<AuditInner>,
}

impl AuditLog {
    /// A log for VM `vm` writing at most `file_cap` lines to `path` (if any)
    /// and keeping the newest `ring_cap` entries in memory.
    pub fn new(
        vm: &str,
        path: Option<&Path>,
        ring_cap: usize,
        file_cap: usize,
    ) -> std::io::Result<AuditLog> {
        let file = match path {
            Some(p) => Some(File::create(p)?),
            None => None,
        };
        Ok(AuditLog {
            vm: vm.to_string(),
            ring_cap: ring_cap.max(1),
            file_cap,
            path: path.map(Path::to_path_buf),
            inner: Mutex::new(AuditInner {
                file,
                ..Default::default()
            }),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn record(&self, process: &'static str, pid: u32, nr: i64, arg0: u64, refused: bool) {
        let entry = AuditEntry {
            vm: self.vm.clone(),
            process,
            pid,
            syscall: syscall_name(nr),
            nr,
            arg0,
            refused,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.total += 1;
        if inner.file_lines < self.file_cap {
            let line = format!(
                "vm={} process={} pid={} syscall={}({}) arg0={:#x} action={}\n",
                entry.vm,
                entry.process,
                entry.pid,
                entry.syscall,
                entry.nr,
                entry.arg0,
                if refused { "refused" } else { "allowed" }
            );
            inner.file_lines += 1;
            let full = inner.file_lines == self.file_cap;
            if let Some(f) = inner.file.as_mut() {
                let _ = f.write_all(line.as_bytes());
                if full {
                    let _ = f.write_all(
                        b"audit log full: further calls are counted in memory, not written\n",
                    );
                }
            }
        }
        if inner.ring.len() == self.ring_cap {
            inner.ring.pop_front();
        }
        inner.ring.push_back(entry);
    }

    /// The newest entries (at most the ring's capacity).
    pub fn entries(&self) -> Vec<AuditEntry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.ring.iter().cloned().collect()
    }

    /// All calls seen, including those no longer in the ring or the file.
    pub fn total(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    pub fn ring_capacity(&self) -> usize {
        self.ring_cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        let log = AuditLog::new("vm-1", Some(&path), 8, 20).unwrap();
        for i in 0..10_000 {
            log.record("qemu", 7, libc::SYS_getppid, i, false);
        }
        assert_eq!(log.total(), 10_000);
        let entries = log.entries();
        assert_eq!(entries.len(), 8);
        assert_eq!(entries.last().unwrap().arg0, 9_999);
        assert_eq!(entries[0].syscall, "getppid");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 21, "{text}");
        assert!(text.starts_with("vm=vm-1 process=qemu pid=7 syscall=getppid(110)"));
    }
}
