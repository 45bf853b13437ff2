//! One cgroup per VM, with memory, CPU and pids limits, on cgroup v1 or v2.
//!
//! v1 (as on the development machines: one hierarchy per controller under
//! `/sys/fs/cgroup/<controller>`): the VM's cgroup is created below the
//! orchestrator's own cgroup in each of the memory, cpu and pids hierarchies,
//! `<own>/ironclaw/<vm>`, so the VMs stay inside whatever limits the
//! orchestrator itself runs under.
//!
//! v2 (unified, `/sys/fs/cgroup/cgroup.controllers` lists `memory`): a cgroup
//! with processes cannot hand controllers to children, so VMs go below a
//! parent of their own: `$IRONCLAW_CGROUP_PARENT`, else `/sys/fs/cgroup/ironclaw`,
//! with `+memory +cpu +pids` enabled on the way down.
//!
//! The processes join in the child before `exec` (writing `0` to a
//! descriptor of [`VmCgroup::join_files`] opened here), so the VMM never runs
//! outside its limits. The cgroup is removed when the VM is destroyed; a later
//! orchestrator removes those of a dead one (their paths are recorded in the
//! runtime directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the VM's processes may use together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub memory_mib: u32,
    /// CPU time per wall-clock second, in thousandths of a CPU.
    pub cpu_millis: u32,
    pub pids: u32,
}

/// The CFS period CPU limits are expressed in.
pub const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    /// The limit files of a VM cgroup and their values, as
    /// `(controller, file, value)`; the controller of v2 files is `unified`.
    /// The jailer is given the same files as `--cgroup file=value`.
    pub fn files(&self, version: Version) -> Vec<(&'static str, &'static str, String)> {
        let mem = (u64::from(self.memory_mib) * 1024 * 1024).to_string();
        let quota = u64::from(self.cpu_millis) * CPU_PERIOD_US / 1000;
        let pids = self.pids.to_string();
        match version {
            Version::V1 => vec![
                ("memory", "memory.limit_in_bytes", mem),
                ("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                ("cpu", "cpu.cfs_quota_us", quota.to_string()),
                ("pids", "pids.max", pids),
            ],
            Version::V2 => vec![
                ("unified", "memory.max", mem),
                ("unified", "cpu.max", format!("{quota} {CPU_PERIOD_US}")),
                ("unified", "pids.max", pids),
            ],
        }
    }
}

/// A VM's share of the host's CPUs while they are all busy: a weight
/// against the other VMs' cgroups, not a limit (the limit is
/// [`Limits::cpu_millis`]). An idle host gives any VM what it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CpuWeight {
    /// The kernel's default weight: a VM someone uses.
    Normal,
    /// A sixteenth of that: clones a pool keeps ready, so restoring and
    /// settling them does not slow the VMs already handed out.
    Background,
}

impl CpuWeight {
    /// The file that holds the weight and its value, for `version`.
    fn file(self, version: Version) -> (&'static str, &'static str) {
        match (version, self) {
            (Version::V1, CpuWeight::Normal) => ("cpu.shares", "1024"),
            (Version::V1, CpuWeight::Background) => ("cpu.shares", "64"),
            (Version::V2, CpuWeight::Normal) => ("cpu.weight", "100"),
            (Version::V2, CpuWeight::Background) => ("cpu.weight", "6"),
        }
    }
}

/// Sets the CPU weight of a VM whose cgroup directories are `dirs` (those of
/// a [`VmCgroup`], or the ones Firecracker's jailer made): written in the
/// directory that has the weight file, v1's `cpu.shares` or v2's `cpu.weight`.
pub fn set_cpu_weight(dirs: &[PathBuf], weight: CpuWeight) -> Result<(), CgroupError> {
    for version in [Version::V1, Version::V2] {
        let (file, value) = weight.file(version);
        if let Some(path) = dirs.iter().map(|d| d.join(file)).find(|f| f.exists()) {
            return write(&path, value);
        }
    }
    Err(CgroupError::NoController {
        controller: "cpu",
        detail: format!("no cpu.shares or cpu.weight in {dirs:?}"),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the {controller} controller was found ({detail})")]
    NoController {
        controller: &'static str,
        detail: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where cgroups live on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub version: Version,
    /// v1: `(controller, directory under which VM cgroups are made)`;
    /// v2: one entry, `("unified", parent)`.
    pub parents: Vec<(&'static str, PathBuf)>,
}

pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

impl Layout {
    /// Finds the hierarchy of this host (`root` is normally `/sys/fs/cgroup`;
    /// `self_cgroup` the text of `/proc/self/cgroup`).
    pub fn detect_in(root: &Path, self_cgroup: &str) -> Result<Layout, CgroupError> {
        let unified = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if unified.split_whitespace().any(|c| c == "memory") {
            let parent = std::env::var_os("IRONCLAW_CGROUP_PARENT")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("ironclaw"));
            return Ok(Layout {
                version: Version::V2,
                parents: vec![("unified", parent)],
            });
        }
        let mut parents = Vec::new();
        for controller in CONTROLLERS {
            let mount = root.join(controller);
            if !mount.join("cgroup.procs").exists() {
                return Err(CgroupError::NoController {
                    controller,
                    detail: format!("{} is not a cgroup v1 hierarchy", mount.display()),
                });
            }
            // "N:memory:/path" (or "N:cpu,cpuacct:/path").
            let own = self_cgroup
                .lines()
                .filter_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                    ctrls
                        .split(',')
                        .any(|c| c == controller)
                        .then(|| path.to_string())
                })
                .next()
                .unwrap_or_else(|| "/".into());
            let own = mount.join(own.trim_start_matches('/'));
            parents.push((controller, own.join("ironclaw")));
        }
        Ok(Layout {
            version: Version::V1,
            parents,
        })
    }

    pub fn detect() -> Result<Layout, CgroupError> {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Layout::detect_in(Path::new("/sys/fs/cgroup"), &own)
    }
}

/// A VM's cgroup (one directory per v1 controller, or one v2 directory).
#[derive(Debug)]
pub struct VmCgroup {
    pub version: Version,
    pub limits: Limits,
    dirs: Vec<(&'static str, PathBuf)>,
    removed: bool,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    // O_CREAT is a no-op on the kernel's files (they exist or cannot be
    // made); it lets the unit tests use a plain directory tree as cgroupfs.
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io_err("writing", path))
}

/// Enables `+memory +cpu +pids` for the children of `dir` (v2), where not yet.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).map_err(io_err("reading", &control))?;
    for c in CONTROLLERS {
        if !enabled.split_whitespace().any(|e| e == c) {
            write(&control, &format!("+{c}"))?;
        }
    }
    Ok(())
}

impl VmCgroup {
    /// Creates the cgroup `name` in `layout` and sets `limits`. On error,
    /// what was created is removed again.
    pub fn create(layout: &Layout, name: &str, limits: Limits) -> Result<VmCgroup, CgroupError> {
        let mut cg = VmCgroup {
            version: layout.version,
            limits,
            dirs: Vec::new(),
            removed: false,
        };
        for (controller, parent) in &layout.parents {
            if layout.version == Version::V2 {
                if let Some(root) = parent.parent() {
                    enable_controllers(root)?;
                }
                fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
                enable_controllers(parent)?;
            } else {
                fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
            }
            let dir = parent.join(name);
            fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
            cg.dirs.push((controller, dir));
        }
        cg.apply_limits()?;
        Ok(cg)
    }

    fn apply_limits(&self) -> Result<(), CgroupError> {
        for (controller, dir) in &self.dirs {
            for (c, file, value) in self.limits.files(self.version) {
                if c != *controller {
                    continue;
                }
                write(&dir.join(file), &value)?;
                // Swap would let the VM exceed its memory limit; where swap
                // accounting exists, cap memory+swap at the same value (v1)
                // or swap at 0 (v2).
                let swap = match file {
                    "memory.limit_in_bytes" => Some(("memory.memsw.limit_in_bytes", value)),
                    "memory.max" => Some(("memory.swap.max", "0".to_string())),
                    _ => None,
                };
                if let Some((swap, value)) = swap {
                    let swap = dir.join(swap);
                    if swap.exists() {
                        write(&swap, &value)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The cgroup directories (one per v1 controller).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The files a single-threaded process writes `0` to, to join this
    /// cgroup itself: on v1 each hierarchy's `tasks`, which moves the calling
    /// thread — the whole process when it has only one, as the jail's forked
    /// child does — without taking the kernel's global threadgroup lock that
    /// `cgroup.procs` takes (an RCU grace period per write: 5–15 ms on the
    /// development machines, 0.4 ms through `tasks`); on v2 `cgroup.procs`.
    pub fn join_files(&self) -> Vec<PathBuf> {
        let file = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        self.dirs.iter().map(|(_, d)| d.join(file)).collect()
    }

    /// How often the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        self.dirs
            .iter()
            .filter(|(c, _)| *c == "memory" || *c == "unified")
            .filter_map(|(_, d)| fs::read_to_string(d.join(file)).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("oom_kill "))
                    .filter_map(|v| v.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Pids in the cgroup right now (of its first directory).
    pub fn pids(&self) -> Vec<u32> {
        self.dirs
            .first()
            .and_then(|(_, d)| fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Removes the directories; the processes must be gone (a cgroup that
    /// still has some is retried for a moment: exiting tasks leave late).
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        for (_, dir) in &self.dirs {
            remove_dir(dir)?;
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("VM cgroup left behind: {e}");
        }
    }
}

/// `rmdir` of a cgroup directory, retried while it is busy; gone already is fine.
pub fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::trace!(dir = %dir.display(), "cgroup busy: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "removing",
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Removes VM cgroups that hold no process and are older than `min_age`:
/// leftovers of VMs whose runtime directory is already gone (a VM being set
/// up right now is younger; a running VM has processes). Only names for
/// which `pick` holds are considered. Returns the names removed.
pub fn reap_empty(layout: &Layout, min_age: Duration, pick: impl Fn(&str) -> bool) -> Vec<String> {
    let mut reaped = Vec::new();
    for (_, parent) in &layout.parents {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let dir = e.path();
            if !pick(&e.file_name().to_string_lossy()) {
                continue;
            }
            let empty =
                fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() >= min_age);
            if dir.is_dir() && empty && old && fs::remove_dir(&dir).is_ok() {
                reaped.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    reaped
}

/// Whether `path` looks like a VM cgroup of ours (used before removing paths
/// read back from a runtime directory, which a VMM could have written to).
pub fn is_ours(path: &Path) -> bool {
    let s = path.to_string_lossy();
    path.is_absolute()
        && s.starts_with("/sys/fs/cgroup/")
        && path.parent().and_then(|p| p.file_name()) == Some("ironclaw".as_ref())
        && !s.contains("/../")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        memory_mib: 300,
        cpu_millis: 1500,
        pids: 64,
    };

    #[test]
    fn v1_nests_below_the_own_cgroup_of_each_controller() {
        let t = tempfile::tempdir().unwrap();
        for c in CONTROLLERS {
            fs::create_dir_all(t.path().join(c).join("session/x")).unwrap();
            fs::write(t.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let own = "4:memory:/session/x\n1:cpu:/\n8:pids:/\n0::/\n";
        let layout = Layout::detect_in(t.path(), own).unwrap();
        assert_eq!(layout.version, Version::V1);
        assert_eq!(
            layout.parents[0].1,
            t.path().join("memory/session/x/ironclaw")
        );
        assert_eq!(layout.parents[1].1, t.path().join("cpu/ironclaw"));
        // A fake hierarchy: plain files stand in for the kernel's.
        let mut cg = VmCgroup::create(&layout, "vm-1", LIMITS).unwrap();
        let read = |p: &str| fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(
            read("memory/session/x/ironclaw/vm-1/memory.limit_in_bytes"),
            (300u64 << 20).to_string()
        );
        assert_eq!(read("cpu/ironclaw/vm-1/cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu/ironclaw/vm-1/cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids/ironclaw/vm-1/pids.max"), "64");
        // A process joins through `tasks` (one thread: no global lock).
        assert_eq!(
            cg.join_files()[2],
            t.path().join("pids/ironclaw/vm-1/tasks")
        );
        // rmdir fails on a directory with files; a real cgroup has none to remove.
        for d in cg.dirs() {
            for f in fs::read_dir(&d).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        cg.remove().unwrap();
        assert!(!t.path().join("pids/ironclaw/vm-1").exists());
    }

    #[test]
    fn v2_uses_its_own_parent_and_enables_controllers() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        fs::write(t.path().join("cgroup.subtree_control"), "").unwrap();
        let layout = Layout::detect_in(t.path(), "0::/user.slice/x\n").unwrap();
        assert_eq!(layout.version, Version::V2);
        let parent = layout.parents[0].1.clone();
        if std::env::var_os("IRONCLAW_CGROUP_PARENT").is_none() {
            assert_eq!(parent, t.path().join("ironclaw"));
        }
        fs::create_dir_all(&parent).unwrap();
        fs::write(parent.join("cgroup.subtree_control"), "memory").unwrap();
        let cg = VmCgroup::create(&layout, "vm-2", LIMITS).unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        let dir = &cg.dirs()[0];
        assert_eq!(read(&dir.join("memory.max")), (300u64 << 20).to_string());
        assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
        assert_eq!(read(&dir.join("pids.max")), "64");
        assert_eq!(cg.join_files(), vec![dir.join("cgroup.procs")]);
        // Each missing controller was enabled (the fake file keeps the last write).
        assert_eq!(read(&parent.join("cgroup.subtree_control")), "+pids");
        std::mem::forget(cg);
    }

    #[test]
    fn cpu_weight_goes_where_the_weight_file_is() {
        let t = tempfile::tempdir().unwrap();
        let (memory, cpu) = (t.path().join("memory/vm"), t.path().join("cpu/vm"));
        for d in [&memory, &cpu] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(cpu.join("cpu.shares"), "1024").unwrap();
        let dirs = [memory.clone(), cpu.clone()];
        set_cpu_weight(&dirs, CpuWeight::Background).unwrap();
        assert_eq!(fs::read_to_string(cpu.join("cpu.shares")).unwrap(), "64");
        assert!(!memory.join("cpu.shares").exists());
        set_cpu_weight(&dirs, CpuWeight::Normal).unwrap();
        assert_eq!(fs::read_to_string(cpu.join("cpu.shares")).unwrap(), "1024");
        // v2: one directory, `cpu.weight`.
        let unified = t.path().join("unified/vm");
        fs::create_dir_all(&unified).unwrap();
        fs::write(unified.join("cpu.weight"), "100").unwrap();
        set_cpu_weight(std::slice::from_ref(&unified), CpuWeight::Background).unwrap();
        assert_eq!(fs::read_to_string(unified.join("cpu.weight")).unwrap(), "6");
        // No weight file: an error naming the controller, nothing created.
        let err = set_cpu_weight(std::slice::from_ref(&memory), CpuWeight::Normal).unwrap_err();
        assert!(err.to_string().contains("cpu"), "{err}");
        assert!(!memory.join("cpu.weight").exists());
    }

    #[test]
    fn missing_controller_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let err = Layout::detect_in(t.path(), "").unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn only_our_cgroup_paths_are_removed_on_reap() {
        assert!(is_ours(Path::new("/sys/fs/cgroup/memory/a/ironclaw/vm-1")));
        assert!(!is_ours(Path::new("/sys/fs/cgroup/memory/a/vm-1")));
        assert!(!is_ours(Path::new("/etc/ironclaw/x")));
        assert!(!is_ours(Path::new("/sys/fs/cgroup/../../etc/ironclaw/x")));
    }
}
