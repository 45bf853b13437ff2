//! Per-VM runtime directories, and reaping what a dead orchestrator left.
//!
//! Every file of a VM (sockets, logs) lives in `<root>/<vm id>/`, which a
//! jailed VMM can write to. The orchestrator's own records of the VM (its
//! owner: pid and start time of the orchestrator; the pids of the VM's
//! processes; its cgroups and jailer chroot) live in the sibling
//! `<root>/.<vm id>/` (ids cannot contain '.'), mode 0700, which no VMM can
//! see or write. A later orchestrator tells a live VM from a leftover by
//! them and cleans the leftover up, trusting only records it could have
//! written itself (owned by its user, not writable by anyone else) and
//! killing only processes still in the VM's recorded cgroups.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::process;

const OWNER_FILE: &str = "owner";
const PIDS_FILE: &str = "pids";
const CGROUPS_FILE: &str = "cgroups";
const CHROOT_FILE: &str = "chroot";
const STARTED_PIDS_FILE: &str = "pids-started";
/// The jail uid a VM holds (see [`RuntimeDir::lease_uid`]).
const UID_FILE: &str = "uid";

/// The root's mode when root runs the orchestrator: others may traverse it
/// (to reach a socket root chooses to share) but not list or write it.
const ROOT_MODE_ROOT: u32 = 0o711;
/// The root's mode for any other user: private.
const ROOT_MODE_USER: u32 = 0o700;
/// A VM's runtime directory (a jailed backend changes it, see `confine::prepare`).
const VM_DIR_MODE: u32 = 0o700;
/// The records directory of a VM.
const RECORDS_MODE: u32 = 0o700;
/// A record file.
const RECORD_FILE_MODE: u32 = 0o600;
/// A directory without an owner record younger than this is being created.
const CREATING_GRACE_SECS: u64 = 10;

/// The root of all runtime directories: `$IRONCLAW_RUNTIME_DIR`, else
/// `/run/ironclaw` for root, else `$XDG_RUNTIME_DIR/ironclaw` or
/// `/tmp/ironclaw-<uid>`. Whichever it is, [`RuntimeDir::create`] makes it
/// with an explicit mode and refuses it when it is not private to this user
/// (see [`check_root`]), so the `/tmp` fallback cannot be someone else's.
pub fn runtime_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("IRONCLAW_RUNTIME_DIR") {
        return dir.into();
    }
    let uid = euid();
    if uid == 0 {
        return "/run/ironclaw".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("ironclaw"),
        None => format!("/tmp/ironclaw-{uid}").into(),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Why a runtime root is not used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeRootError {
    #[error("runtime root {}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime root {} is a symbolic link; remove it, or set IRONCLAW_RUNTIME_DIR to a directory of your own", path.display())]
    Symlink { path: PathBuf },
    #[error("runtime root {} is not a directory; remove it, or set IRONCLAW_RUNTIME_DIR to a directory of your own", path.display())]
    NotADirectory { path: PathBuf },
    #[error("runtime root {} belongs to uid {owner}, not to uid {euid} running ironclaw: whoever owns it could plant records in it; remove it, or set IRONCLAW_RUNTIME_DIR to a directory of your own", path.display())]
    Foreign {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("runtime root {} has mode {mode:o}, writable by group or others, who could plant records in it; `chmod go-w` it or remove it", path.display())]
    Writable { path: PathBuf, mode: u32 },
}

/// The mode [`RuntimeDir::create`] makes a runtime root with.
pub fn root_mode() -> u32 {
    if euid() == 0 {
        ROOT_MODE_ROOT
    } else {
        ROOT_MODE_USER
    }
}

/// Checks that `root` is a directory (not a symbolic link) of this user
/// that nobody else can write to.
pub fn check_root(root: &Path) -> Result<(), RuntimeRootError> {
    let meta = fs::symlink_metadata(root).map_err(|source| RuntimeRootError::Io {
        path: root.to_path_buf(),
        action: "checking it",
        source,
    })?;
    let path = root.to_path_buf();
    if meta.file_type().is_symlink() {
        return Err(RuntimeRootError::Symlink { path });
    }
    if !meta.is_dir() {
        return Err(RuntimeRootError::NotADirectory { path });
    }
    if meta.uid() != euid() {
        return Err(RuntimeRootError::Foreign {
            path,
            owner: meta.uid(),
            euid: euid(),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(RuntimeRootError::Writable {
            path,
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Creates `root` (and its missing parents) with [`root_mode`] whatever the
/// umask, or checks the one that is there ([`check_root`]).
pub fn ensure_root(root: &Path) -> Result<(), RuntimeRootError> {
    let io = |action| {
        move |source| RuntimeRootError::Io {
            path: root.to_path_buf(),
            action,
            source,
        }
    };
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io("creating its parent"))?;
    }
    let mode = root_mode();
    match fs::DirBuilder::new().mode(mode).create(root) {
        // Ours: the umask may have taken bits away, set them all.
        Ok(()) => fs::set_permissions(root, fs::Permissions::from_mode(mode))
            .map_err(io("setting its mode"))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating it")(e)),
    }
    check_root(root)
}

/// The directory of VM `id`'s records under `root`: `<root>/.<id>`.
pub fn records_dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!(".{id}"))
}

/// Makes `path` (exclusively) with `mode`, whatever the umask.
fn make_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    fs::DirBuilder::new().mode(mode).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// A VM's runtime directory and its records; both removed (with everything
/// in them) on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    records: PathBuf,
}

impl RuntimeDir {
    /// Creates `<root>/<id>` and its records `<root>/.<id>`; fails
    /// (`AlreadyExists`) if a VM with this id already has either, and
    /// refuses a root that is not private to this user ([`ensure_root`]).
    pub fn create(root: &Path, id: &str) -> std::io::Result<RuntimeDir> {
        ensure_root(root).map_err(std::io::Error::other)?;
        let path = root.join(id);
        make_dir(&path, VM_DIR_MODE)?;
        let records = records_dir(root, id);
        if let Err(e) = make_dir(&records, RECORDS_MODE) {
            // Not ours to remove if it was there already.
            let _ = fs::remove_dir_all(&path);
            return Err(e);
        }
        let dir = RuntimeDir { path, records };
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        let started = process::start_time(me).unwrap_or(0);
        dir.write_record(OWNER_FILE, &format!("{me} {started}\n"), false)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this VM's records are (never visible to its VMM).
    pub fn records_dir(&self) -> &Path {
        &self.records
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes (or appends to) record `name`, mode 0600, not following a link.
    fn write_record(&self, name: &str, text: &str, append: bool) -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .append(append)
            .truncate(!append)
            .mode(RECORD_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.records.join(name))?;
        f.write_all(text.as_bytes())
    }

    /// Chooses this VM's jail uid: the first of `candidates` that no other VM
    /// under the same root holds (by their records) and that `usable` accepts,
    /// recorded in this VM's records, so it is held until they are removed
    /// with the VM (or reaped). Two live VMs never share a jail uid.
    pub fn lease_uid(
        &self,
        candidates: impl IntoIterator<Item = u32>,
        usable: impl Fn(u32) -> bool,
    ) -> std::io::Result<u32> {
        let root = self
            .path
            .parent()
            .ok_or_else(|| std::io::Error::other("a runtime directory without a root"))?;
        // The root directory itself is the lock: no file is left behind.
        let root_dir = fs::File::open(root)?;
        root_dir.lock()?;
        let held = held_uids(root, &self.records);
        let uid = candidates
            .into_iter()
            .find(|uid| !held.contains(uid) && usable(*uid))
            .ok_or_else(|| std::io::Error::other("no free jail uid left in the range"))?;
        self.write_record(UID_FILE, &format!("{uid}\n"), false)?;
        Ok(uid)
    }

    /// Records a process of this VM, for reaping should the orchestrator die.
    pub fn record_pid(&self, pid: u32) -> std::io::Result<()> {
        self.write_record(PIDS_FILE, &format!("{pid}\n"), true)
    }

    /// Records a process whose command line does not name this directory (a
    /// jailed Firecracker sees only its chroot), with its start time, so that
    /// reaping kills it only while the pid is still that process.
    pub fn record_pid_started(&self, pid: u32) -> std::io::Result<()> {
        let started = process::start_time(pid as i32).ok_or_else(|| {
            std::io::Error::other(format!("process {pid} has no start time (gone already)"))
        })?;
        self.write_record(STARTED_PIDS_FILE, &format!("{pid} {started}\n"), true)
    }

    /// Records the jailer's chroot directory of this VM, for removal should
    /// the orchestrator die.
    pub fn record_chroot(&self, dir: &Path) -> std::io::Result<()> {
        self.write_record(CHROOT_FILE, &format!("{}\n", dir.to_string_lossy()), false)
    }

    /// Records the VM's cgroup directories, for removal should the
    /// orchestrator die; reaping kills only processes still in them.
    pub fn record_cgroups(&self, dirs: &[PathBuf]) -> std::io::Result<()> {
        let mut text = String::new();
        for d in dirs {
            text.push_str(&d.to_string_lossy());
            text.push('\n');
        }
        self.write_record(CGROUPS_FILE, &text, false)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        // Records first: a directory without them is only removed, never
        // acted upon.
        let _ = fs::remove_dir_all(&self.records);
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The records of a VM, read only from a directory this user owns that no
/// one else can write to, each file opened without following links and
/// checked the same way.
struct Records {
    dir: PathBuf,
}

impl Records {
    /// `None` when `dir` is missing; an error when it is not trustworthy.
    fn open(dir: &Path) -> Result<Option<Records>, String> {
        let meta = match fs::symlink_metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        trustworthy(&meta, true)?;
        Ok(Some(Records {
            dir: dir.to_path_buf(),
        }))
    }

    /// The text of record `name`; empty when it is missing or not trustworthy.
    fn read(&self, name: &str) -> Option<String> {
        let path = self.dir.join(name);
        let mut f = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("leftover VM record {} ignored: {e}", path.display());
                return None;
            }
        };
        let checked = f
            .metadata()
            .map_err(|e| e.to_string())
            .and_then(|m| trustworthy(&m, false));
        let mut text = String::new();
        match checked.and_then(|()| f.read_to_string(&mut text).map_err(|e| e.to_string())) {
            Ok(_) => Some(text),
            Err(e) => {
                tracing::warn!("leftover VM record {} ignored: {e}", path.display());
                None
            }
        }
    }

    fn lines(&self, name: &str) -> Vec<String> {
        self.read(name)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

/// Owned by this user, not group/world-writable, of the expected kind.
fn trustworthy(meta: &fs::Metadata, dir: bool) -> Result<(), String> {
    let ft = meta.file_type();
    if ft.is_symlink() || (dir && !ft.is_dir()) || (!dir && !ft.is_file()) {
        return Err("not a plain directory or file".into());
    }
    if meta.uid() != euid() {
        return Err(format!("owned by uid {}, not {}", meta.uid(), euid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} is writable by others",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The jail uids the VMs under `root` hold, by their records (other than
/// `except`'s). A record that is not a plain file is ignored.
fn held_uids(root: &Path, except: &Path) -> std::collections::HashSet<u32> {
    let Ok(entries) = fs::read_dir(root) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p != except)
        .filter_map(|p| {
            let mut text = String::new();
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p.join(UID_FILE))
                .ok()?
                .read_to_string(&mut text)
                .ok()?;
            text.trim().parse().ok()
        })
        .collect()
}

/// Kills the processes and removes the directories of VMs whose orchestrator
/// is gone. Returns the ids reaped. Only the records under `<root>/.<id>`
/// are read (never anything in the VM's own directory); a VM directory
/// without them is only removed.
pub fn reap_stale(root: &Path) -> Vec<String> {
    let mut reaped = Vec::new();
    if let Err(e) = check_root(root) {
        if fs::symlink_metadata(root).is_ok() {
            tracing::warn!("not reaping leftovers: {e}");
        }
        return reaped;
    }
    let Ok(entries) = fs::read_dir(root) else {
        return reaped;
    };
    // A VM is known by its directory, its records, or both.
    let mut ids = BTreeSet::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match name.strip_prefix('.') {
            Some(id) if !id.is_empty() && !id.contains('.') => ids.insert(id.to_string()),
            Some(_) => false,
            None => ids.insert(name),
        };
    }
    for id in ids {
        if reap_one(root, &id) {
            reaped.push(id);
        }
    }
    reaped
}

/// Reaps VM `id` under `root` if its orchestrator is gone; whether it did.
fn reap_one(root: &Path, id: &str) -> bool {
    let dir = root.join(id);
    let records_path = records_dir(root, id);
    let records = match Records::open(&records_path) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                "records {} of a VM not trusted, nothing they name is touched: {e}",
                records_path.display()
            );
            None
        }
    };
    let alive = match &records {
        Some(r) => owner_alive(r),
        None => being_created(&dir),
    };
    if alive {
        return false;
    }
    if let Some(r) = &records {
        reap_recorded(r, &dir, id);
        if let Err(e) = fs::remove_dir_all(&records_path) {
            tracing::warn!(
                "leftover records {} not removed: {e}",
                records_path.display()
            );
            return false;
        }
    }
    match fs::remove_dir_all(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => records.is_some(),
        Err(e) => {
            tracing::warn!(
                "leftover runtime directory {} not removed: {e}",
                dir.display()
            );
            false
        }
    }
}

/// Kills what the records name that is still the VM's, then removes its
/// cgroups and chroot.
fn reap_recorded(records: &Records, dir: &Path, id: &str) {
    let cgroups: Vec<PathBuf> = records
        .lines(CGROUPS_FILE)
        .iter()
        .map(PathBuf::from)
        .filter(|p| super::cgroup::is_ours(p))
        .collect();
    let dir_str = dir.to_string_lossy().into_owned();
    for pid in records.lines(PIDS_FILE) {
        let Ok(pid) = pid.trim().parse::<i32>() else {
            continue;
        };
        // Only a process that is still this VM's: its command line names the
        // directory (the pid may have been reused), and when the VM had
        // cgroups, it is in one of them.
        if pid > 0
            && process::cmdline(pid).is_some_and(|c| c.contains(&dir_str))
            && (cgroups.is_empty() || in_cgroups(pid, &cgroups))
        {
            // SAFETY: kill(2) with a positive pid that is still the VM's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for line in records.lines(STARTED_PIDS_FILE) {
        let mut parts = line.split_whitespace();
        let pid = parts.next().and_then(|p| p.parse::<i32>().ok());
        let started = parts.next().and_then(|p| p.parse::<u64>().ok());
        if let (Some(pid), Some(started)) = (pid, started) {
            // The recorded process (same start time) and still in the VM's
            // cgroups: never a process that merely got its pid.
            if pid > 0 && process::start_time(pid) == Some(started) && in_cgroups(pid, &cgroups) {
                // SAFETY: kill(2) with a positive pid that is still the recorded process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                wait_gone(pid);
            }
        }
    }
    // The VM's processes are dead (killed above or by their death
    // signal), so its cgroups can go; only paths shaped like ours.
    for cg in &cgroups {
        if let Err(e) = super::cgroup::remove_dir(cg) {
            tracing::warn!("leftover VM cgroup not removed: {e}");
        }
    }
    for chroot in records
        .lines(CHROOT_FILE)
        .iter()
        .map(PathBuf::from)
        .filter(|p| is_jail_dir(p, id))
    {
        if let Err(e) = fs::remove_dir_all(&chroot) {
            tracing::warn!(
                "leftover jailer chroot {} not removed: {e}",
                chroot.display()
            );
        }
    }
}

/// Whether process `pid` is in one of `cgroups` (VM cgroup directories).
fn in_cgroups(pid: i32, cgroups: &[PathBuf]) -> bool {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|text| cgroup_listed(&text, cgroups))
}

/// Whether a `/proc/<pid>/cgroup` text puts the process in one of
/// `cgroups`: a line's path (relative to its hierarchy's mount) is the tail
/// of one of them, at least `ironclaw/<vm>` long.
pub fn cgroup_listed(proc_cgroup: &str, cgroups: &[PathBuf]) -> bool {
    proc_cgroup.lines().any(|line| {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            return false;
        };
        let rel = Path::new(path.trim_start_matches('/'));
        rel.components().count() >= 2
            && !rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            && cgroups
                .iter()
                .any(|cg| super::cgroup::is_ours(cg) && cg.ends_with(rel))
    })
}

/// Waits (briefly) until a SIGKILLed process that is not our child is gone,
/// so its cgroups can be removed next.
fn wait_gone(pid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while process::alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A directory modified in the last few seconds: being created right now.
fn being_created(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() < CREATING_GRACE_SECS)
}

fn owner_alive(records: &Records) -> bool {
    let Some(owner) = records.read(OWNER_FILE) else {
        // Records being created right now have no owner file for a moment.
        return being_created(&records.dir);
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

/// Whether `path` (read back from a VM's records when reaping) looks
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

    #[test]
    fn cgroup_membership_needs_the_vms_own_cgroup() {
        let v1 = [
            PathBuf::from("/sys/fs/cgroup/memory/user/ironclaw/vm-1-0a"),
            PathBuf::from("/sys/fs/cgroup/pids/user/ironclaw/vm-1-0a"),
        ];
        let v2 = [PathBuf::from("/sys/fs/cgroup/ironclaw/vm-1-0a")];
        let member_v1 = "12:pids:/user/ironclaw/vm-1-0a\n4:memory:/user/ironclaw/vm-1-0a\n0::/\n";
        assert!(cgroup_listed(member_v1, &v1));
        assert!(cgroup_listed("0::/ironclaw/vm-1-0a\n", &v2));
        // Another VM's, the parent, the root, a child of it, nothing.
        for other in [
            "4:memory:/user/ironclaw/vm-2-0b\n",
            "4:memory:/user/ironclaw\n",
            "4:memory:/\n0::/\n",
            "4:memory:/user/ironclaw/vm-1-0a/sub\n",
            "",
        ] {
            assert!(!cgroup_listed(other, &v1), "{other:?}");
        }
        // Recorded paths that are not shaped like ours never match.
        let forged = [PathBuf::from("/sys/fs/cgroup/memory/user.slice")];
        assert!(!cgroup_listed("4:memory:/user.slice\n", &forged));
        assert!(!cgroup_listed("0::/x/../ironclaw/vm-1-0a\n", &v2));
    }

    /// Records are written into the records directory (never the VM's),
    /// without following a link planted there.
    #[test]
    fn records_live_apart_from_the_vm_directory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("run");
        let vm = RuntimeDir::create(&root, "vm").unwrap();
        assert_eq!(vm.records_dir(), records_dir(&root, "vm"));
        vm.record_pid(1234).unwrap();
        let names = |d: &Path| {
            let mut v: Vec<String> = fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(vm.path()), Vec::<String>::new());
        assert_eq!(names(vm.records_dir()), ["owner", "pids"]);
        let target = t.path().join("target");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, vm.records_dir().join("chroot")).unwrap();
        assert!(vm.record_chroot(Path::new("/x")).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        // A VM id whose records are there already is taken.
        drop(vm);
        fs::create_dir(records_dir(&root, "vm")).unwrap();
        let err = RuntimeDir::create(&root, "vm").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!root.join("vm").exists());
    }

    /// Records that another user could have written are not acted upon.
    #[test]
    fn untrusted_records_are_not_read() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(".vm");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("pids"), "1\n").unwrap();
        let r = Records::open(&dir).unwrap().unwrap();
        assert_eq!(r.lines("pids"), ["1"]);
        fs::set_permissions(dir.join("pids"), fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(r.read("pids"), None, "a world-writable record");
        fs::remove_file(dir.join("pids")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("pids")).unwrap();
        assert_eq!(r.read("pids"), None, "a symlinked record");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Records::open(&dir).is_err(), "a world-writable directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        assert!(Records::open(&dir).is_err(), "another user's directory");
        let link = t.path().join(".link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(Records::open(&link).is_err(), "a symlinked directory");
        assert!(Records::open(&t.path().join(".none")).unwrap().is_none());
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// The refusal names the directory and says what to do.
    fn refused(root: &Path, what: &str) {
        let err = RuntimeDir::create(root, "vm").expect_err(what);
        let text = err.to_string();
        assert!(text.contains(&*root.to_string_lossy()), "{what}: {text}");
        assert!(text.contains(what), "{what}: {text}");
        assert!(!root.join("vm").exists(), "{what}: a VM directory was made");
    }

    #[test]
    fn a_symlinked_root_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = t.path().join("run");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        refused(&link, "symbolic link");
        assert!(!real.join("vm").exists());
    }

    #[test]
    fn a_group_or_world_writable_root_is_refused() {
        for m in [0o777, 0o770, 0o1777, 0o722] {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("run");
            fs::create_dir(&root).unwrap();
            fs::set_permissions(&root, fs::Permissions::from_mode(m)).unwrap();
            refused(&root, "writable by group or others");
        }
    }

    #[test]
    fn a_root_of_another_user_is_refused() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "chown needs root");
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("run");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
        refused(&root, "belongs to uid 65534");
    }

    /// Under umask 000 the root, the VM directory and the records get
    /// their explicit modes. The umask is per process: the check runs in a
    /// child test process of its own.
    #[test]
    fn modes_are_explicit_whatever_the_umask() {
        const CHILD: &str = "IRONCLAW_TEST_UMASK_CHILD";
        let Some(dir) = std::env::var_os(CHILD) else {
            let t = tempfile::tempdir().unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "vm::runtime::tests::modes_are_explicit_whatever_the_umask",
                ])
                .args(["--test-threads", "1", "--nocapture"])
                .env(CHILD, t.path())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("1 passed"), "the child ran no test: {text}");
            return;
        };
        // SAFETY: umask cannot fail; this process runs this test alone.
        unsafe { libc::umask(0) };
        let root = Path::new(&dir).join("a/run");
        let vm = RuntimeDir::create(&root, "vm").unwrap();
        // SAFETY: geteuid cannot fail.
        let expected = if unsafe { libc::geteuid() } == 0 {
            0o711
        } else {
            0o700
        };
        assert_eq!(mode(&root), expected, "the root");
        assert_eq!(mode(vm.path()), 0o700, "the VM directory");
        let records = root.join(".vm");
        assert_eq!(mode(&records), 0o700, "the records");
        assert_eq!(mode(&records.join("owner")), 0o600, "the owner record");
    }
}
