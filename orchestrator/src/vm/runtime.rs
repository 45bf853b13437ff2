//! Per-VM runtime directories, and reaping what a dead orchestrator left.
//!
//! Every file of a VM (sockets, logs, pid list) lives in `<root>/<vm id>/`.
//! The directory records its owner (pid and start time of the orchestrator)
//! and the pids of the VM's processes, so that a later orchestrator can tell
//! a live VM from a leftover and clean the leftover up.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::process;

const OWNER_FILE: &str = "owner";
const PIDS_FILE: &str = "pids";
const CGROUPS_FILE: &str = "cgroups";
const CHROOT_FILE: &str = "chroot";
const STARTED_PIDS_FILE: &str = "pids-started";

/// The root of all runtime directories: `$IRONCLAW_RUNTIME_DIR`, else
/// `/run/ironclaw` for root, else `$XDG_RUNTIME_DIR/ironclaw` or `/tmp/ironclaw-<uid>`.
pub fn runtime_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("IRONCLAW_RUNTIME_DIR") {
        return dir.into();
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return "/run/ironclaw".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("ironclaw"),
        None => format!("/tmp/ironclaw-{uid}").into(),
    }
}

/// A VM's runtime directory; removed (with everything in it) on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates `<root>/<id>`; fails if a VM with this id already has one.
    pub fn create(root: &Path, id: &str) -> std::io::Result<RuntimeDir> {
        fs::create_dir_all(root)?;
        let path = root.join(id);
        fs::create_dir(&path)?;
        let dir = RuntimeDir { path };
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        let started = process::start_time(me).unwrap_or(0);
        fs::write(dir.path.join(OWNER_FILE), format!("{me} {started}\n"))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Records a process of this VM, for reaping should the orchestrator die.
    pub fn record_pid(&self, pid: u32) -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(PIDS_FILE))?;
        writeln!(f, "{pid}")
    }

    /// Records a process whose command line does not name this directory (a
    /// jailed Firecracker sees only its chroot), with its start time, so that
    /// reaping kills it only while the pid is still that process.
    pub fn record_pid_started(&self, pid: u32) -> std::io::Result<()> {
        let started = process::start_time(pid as i32).ok_or_else(|| {
            std::io::Error::other(format!("process {pid} has no start time (gone already)"))
        })?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(STARTED_PIDS_FILE))?;
        writeln!(f, "{pid} {started}")
    }

    /// Records the jailer's chroot directory of this VM, for removal should
    /// the orchestrator die.
    pub fn record_chroot(&self, dir: &Path) -> std::io::Result<()> {
        fs::write(
            self.file(CHROOT_FILE),
            format!("{}\n", dir.to_string_lossy()),
        )
    }

    /// Records the VM's cgroup directories, for removal should the orchestrator die.
    pub fn record_cgroups(&self, dirs: &[PathBuf]) -> std::io::Result<()> {
        let mut text = String::new();
        for d in dirs {
            text.push_str(&d.to_string_lossy());
            text.push('\n');
        }
        fs::write(self.file(CGROUPS_FILE), text)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Kills the processes and removes the directories of VMs whose orchestrator
/// is gone. Returns the ids reaped.
pub fn reap_stale(root: &Path) -> Vec<String> {
    let mut reaped = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return reaped;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        // Names starting with '.' are not VM ids (ids cannot contain '.').
        if !dir.is_dir()
            || entry.file_name().to_string_lossy().starts_with('.')
            || owner_alive(&dir)
        {
            continue;
        }
        let dir_str = dir.to_string_lossy().into_owned();
        for pid in fs::read_to_string(dir.join(PIDS_FILE))
            .unwrap_or_default()
            .lines()
        {
            let Ok(pid) = pid.trim().parse::<i32>() else {
                continue;
            };
            // Only kill a process that is still this VM's (its command line names the
            // directory); the pid may have been reused by something else.
            if process::cmdline(pid).is_some_and(|c| c.contains(&dir_str)) {
                // SAFETY: kill(2) with a positive pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for line in fs::read_to_string(dir.join(STARTED_PIDS_FILE))
            .unwrap_or_default()
            .lines()
        {
            let mut parts = line.split_whitespace();
            let pid = parts.next().and_then(|p| p.parse::<i32>().ok());
            let started = parts.next().and_then(|p| p.parse::<u64>().ok());
            if let (Some(pid), Some(started)) = (pid, started) {
                if pid > 0 && process::start_time(pid) == Some(started) {
                    // SAFETY: kill(2) with a positive pid that is still the recorded process.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    wait_gone(pid);
                }
            }
        }
        // The VM's processes are dead (killed above or by their death
        // signal), so its cgroups can go; only paths shaped like ours.
        for cg in fs::read_to_string(dir.join(CGROUPS_FILE))
            .unwrap_or_default()
            .lines()
            .map(Path::new)
            .filter(|p| super::cgroup::is_ours(p))
        {
            if let Err(e) = super::cgroup::remove_dir(cg) {
                tracing::warn!("leftover VM cgroup not removed: {e}");
            }
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        for chroot in fs::read_to_string(dir.join(CHROOT_FILE))
            .unwrap_or_default()
            .lines()
            .map(Path::new)
            .filter(|p| is_jail_dir(p, &id))
        {
            if let Err(e) = fs::remove_dir_all(chroot) {
                tracing::warn!(
                    "leftover jailer chroot {} not removed: {e}",
                    chroot.display()
                );
            }
        }
        if fs::remove_dir_all(&dir).is_ok() {
            reaped.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    reaped
}

/// Waits (briefly) until a SIGKILLed process that is not our child is gone,
/// so its cgroups can be removed next.
fn wait_gone(pid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while process::alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn owner_alive(dir: &Path) -> bool {
    let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
        // A directory being created right now has no owner file for a moment.
        return fs::metadata(dir)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() < 10);
    };
    let mut parts = owner.split_whitespace();
    let pid: i32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let started: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    process::alive(pid) && process::start_time(pid) == Some(started)
}

/// Runs [`reap_stale`] on the default root once per orchestrator process.
pub fn reap_stale_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let reaped = reap_stale(&runtime_root());
        if !reaped.is_empty() {
            tracing::info!(?reaped, "removed leftovers of a dead orchestrator");
        }
        // Cgroups whose runtime directory is already gone (another runtime
        // root, or a directory removed by hand).
        if let Ok(layout) = super::cgroup::Layout::detect() {
            let reaped =
                super::cgroup::reap_empty(&layout, std::time::Duration::from_secs(60), |_| true);
            if !reaped.is_empty() {
                tracing::info!(?reaped, "removed empty leftover VM cgroups");
            }
        }
    });
}

/// Whether `path` (read back from a runtime directory when reaping) looks
/// like the chroot directory of VM `id`: absolute, no `..`, `<...>/<name
/// with firecracker>/<id>`.
pub fn is_jail_dir(path: &Path, id: &str) -> bool {
    path.is_absolute()
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        && path.file_name() == Some(id.as_ref())
        && path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().contains("firecracker"))
        && path.components().count() > 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaping_only_removes_chroot_shaped_paths() {
        assert!(is_jail_dir(
            Path::new("/srv/jailer/firecracker/vm-1"),
            "vm-1"
        ));
        assert!(!is_jail_dir(
            Path::new("/srv/jailer/firecracker/vm-2"),
            "vm-1"
        ));
        assert!(!is_jail_dir(Path::new("/etc/vm-1"), "vm-1"));
        assert!(!is_jail_dir(Path::new("/a/firecracker/../vm-1"), "vm-1"));
        assert!(!is_jail_dir(Path::new("firecracker/vm-1"), "vm-1"));
    }
}
