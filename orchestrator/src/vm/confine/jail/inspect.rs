//! Reading back what confines a running process: its seccomp state, uid,
//! namespaces and cgroup, as the kernel reports them in `/proc`.

use std::path::PathBuf;

use serde::Serialize;

use super::super::seccomp::{SeccompFilter, SeccompLevel};

/// What confines one running process, read back from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessConfinement {
    pub process: &'static str,
    pub pid: u32,
    pub seccomp: ProcStatus,
    pub level: Option<SeccompLevel>,
    pub allowed_syscalls: Option<usize>,
    /// Whether its network namespace differs from the orchestrator's.
    pub own_netns: bool,
    pub own_pidns: bool,
    pub cgroup: Vec<PathBuf>,
}

impl ProcessConfinement {
    pub fn read(
        process: &'static str,
        pid: u32,
        filter: Option<&SeccompFilter>,
        cgroup: Vec<PathBuf>,
    ) -> Self {
        let ns = |kind: &str| {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
            let ours = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok();
            theirs.is_some() && theirs != ours
        };
        ProcessConfinement {
            process,
            pid,
            seccomp: proc_status(pid).unwrap_or_default(),
            level: filter.map(|f| f.level),
            allowed_syscalls: filter.map(|f| f.allowed),
            own_netns: ns("net"),
            own_pidns: ns("pid_for_children") || ns("pid"),
            cgroup,
        }
    }
}

impl std::fmt::Display for ProcessConfinement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.seccomp;
        write!(
            f,
            "{} (pid {}): seccomp {} ({} syscalls allowed, Seccomp: {}, {} filters), NoNewPrivs: {}, uid {}, {} network namespace, {} PID namespace, cgroup {}",
            self.process,
            self.pid,
            self.level.map_or("none".into(), |l| l.to_string()),
            self.allowed_syscalls.map_or("-".into(), |n| n.to_string()),
            s.seccomp.map_or("?".into(), |v| v.to_string()),
            s.seccomp_filters.map_or("?".into(), |v| v.to_string()),
            s.no_new_privs.map_or("?".into(), |v| v.to_string()),
            s.uid.map_or("?".into(), |v| v.to_string()),
            if self.own_netns { "own (empty)" } else { "host" },
            if self.own_pidns { "own" } else { "host" },
            if self.cgroup.is_empty() {
                "none".to_string()
            } else {
                self.cgroup
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }
}

/// `Seccomp`, `Seccomp_filters` and `NoNewPrivs` of `/proc/<pid>/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcStatus {
    /// 0 none, 1 strict mode, 2 filter.
    pub seccomp: Option<u32>,
    pub seccomp_filters: Option<u32>,
    pub no_new_privs: Option<u32>,
    pub uid: Option<u32>,
}

pub fn proc_status(pid: u32) -> std::io::Result<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Ok(ProcStatus {
        seccomp: field("Seccomp:"),
        seccomp_filters: field("Seccomp_filters:"),
        no_new_privs: field("NoNewPrivs:"),
        uid: field("Uid:"),
    })
}
