//! Default-deny seccomp filters for the VMM processes.
//!
//! Each process kind has its own allowlist, in a readable file with a reason
//! per group of syscalls: [`qemu`] and [`vhost_vsock`]. A [`SeccompFilter`]
//! compiles it to BPF with rust-vmm's `seccompiler` and is installed in the
//! child right before `exec` (after `no_new_privs`), so it covers the whole
//! life of the VMM, its dynamic loader included.
//!
//! Three BPF programs are stacked (the kernel runs all and takes the most
//! severe verdict):
//! 1. *never* (strict level only): syscalls no VMM of ours needs and that are
//!    the usual escape routes (`ptrace`, `mount`, `kexec_*`, `bpf`, module
//!    loading, `keyctl`, `userfaultfd`, namespace changes, …) and `socket` for
//!    any family but `AF_UNIX` kill the process.
//! 2. *ENOSYS*: `clone3` (its flags sit behind a pointer, so they cannot be
//!    checked; glibc falls back to `clone`, whose flags are checked) and
//!    `io_uring_setup` (io_uring operations bypass seccomp; QEMU falls back
//!    to ppoll).
//! 3. *allowlist*: anything else not listed fails with `EPERM` (strict), or is
//!    reported to the orchestrator and then allowed (audit).
//!
//! Audit level uses `SECCOMP_RET_USER_NOTIF`: the filter hands a listener fd
//! to the orchestrator, whose supervisor thread records each unlisted call in
//! an [`AuditLog`] (a bounded ring plus a capped file in the VM's runtime
//! directory) and lets it continue, except the *never* set, which is refused
//! with `EPERM` even when auditing. Chosen over `SECCOMP_RET_LOG` because that
//! writes to the kernel log, which we can neither bound nor attribute to a VM.

pub mod names;
// The macro is used by the allowlist files below.
macro_rules! sys {
    ($nr:ident) => {
        Sys {
            nr: libc::$nr,
            name: stringify!($nr),
            rule: ArgRule::Any,
        }
    };
    ($nr:ident, $rule:expr) => {
        Sys {
            nr: libc::$nr,
            name: stringify!($nr),
            rule: $rule,
        }
    };
}
pub mod qemu;
pub mod vhost_vsock;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
    TargetArch,
};
use serde::{Deserialize, Serialize};

/// How a VMM process is filtered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompLevel {
    /// Default deny: unlisted syscalls fail with EPERM, the *never* set and IP
    /// sockets kill the process.
    #[default]
    Strict,
    /// Learning mode: unlisted syscalls are logged (bounded, per VM) and
    /// allowed; the *never* set is still refused.
    Audit,
}

impl std::fmt::Display for SeccompLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeccompLevel::Strict => "strict",
            SeccompLevel::Audit => "audit",
        })
    }
}

/// Which process a filter is for: each has its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessKind {
    Qemu,
    VhostVsock,
}

impl ProcessKind {
    pub fn name(self) -> &'static str {
        match self {
            ProcessKind::Qemu => "qemu-system-x86_64",
            ProcessKind::VhostVsock => "vhost-device-vsock",
        }
    }
}

/// A condition on a syscall's arguments.
#[derive(Debug, Clone, Copy)]
pub enum ArgRule {
    Any,
    /// Argument `arg` (its low 32 bits) equals one of `values`.
    OneOf {
        arg: u8,
        values: &'static [u64],
    },
    /// Argument `arg` has none of the bits of `mask` set.
    NoneOf {
        arg: u8,
        mask: u64,
    },
}

/// One allowed syscall.
#[derive(Debug, Clone, Copy)]
pub struct Sys {
    pub nr: i64,
    /// `SYS_<name>`, as libc spells it.
    pub name: &'static str,
    pub rule: ArgRule,
}

impl Sys {
    pub fn short_name(&self) -> &'static str {
        self.name.strip_prefix("SYS_").unwrap_or(self.name)
    }
}

/// Allowed syscalls that belong together, and why the process needs them.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub why: &'static str,
    pub calls: &'static [Sys],
}

/// Flags that make `clone` create namespaces; VMM threads never need them.
pub const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Syscalls no VMM of ours needs and that are the usual ways out of a
/// sandbox: debugging other processes, file system and namespace changes,
/// kernel code and key rings, BPF, page-fault handling from user space.
pub const NEVER: &[(i64, &str)] = &[
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
];

/// Syscalls answered ENOSYS so that callers take their fallback path.
pub const ENOSYS: &[(i64, &str)] = &[
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the {kind} seccomp filter: {source}")]
    Compile {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("the {kind} seccomp filter has {len} instructions, more than BPF allows ({max})")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("seccomp audit supervisor: {0}")]
    Supervisor(#[source] std::io::Error),
}

/// The longest program the kernel accepts (`BPF_MAXINSNS`).
const BPF_MAXINSNS: usize = 4096;
/// Marks the allowlist's mismatch return in audit level, patched to
/// `SECCOMP_RET_USER_NOTIF` after compiling (seccompiler has no such action).
const AUDIT_MARK: u32 = 0x1c1a;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const BPF_RET_K: u16 = 0x06;

/// A compiled filter set for one process kind and level, ready to install.
#[derive(Debug, Clone)]
pub struct SeccompFilter {
    pub kind: ProcessKind,
    pub level: SeccompLevel,
    /// Allowed syscalls (counting each once).
    pub allowed: usize,
    /// In installation order; the allowlist is last.
    programs: Vec<BpfProgram>,
}

/// The allowlist of `kind`; `kvm` adds what QEMU needs for `-accel kvm`.
pub fn allowlist(kind: ProcessKind, kvm: bool) -> Vec<Group> {
    match kind {
        ProcessKind::Qemu => {
            let mut g = qemu::GROUPS.to_vec();
            if kvm {
                g.extend_from_slice(qemu::KVM_GROUPS);
            }
            g
        }
        ProcessKind::VhostVsock => vhost_vsock::GROUPS.to_vec(),
    }
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("argument index below 6")
}

fn rules_of(rule: ArgRule) -> Vec<SeccompRule> {
    match rule {
        ArgRule::Any => Vec::new(),
        ArgRule::OneOf { arg, values } => values
            .iter()
            .map(|v| {
                SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)]).expect("one condition")
            })
            .collect(),
        ArgRule::NoneOf { arg, mask } => {
            vec![
                SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(mask), 0)])
                    .expect("one condition"),
            ]
        }
    }
}

fn compile(
    kind: &'static str,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let filter = seccompiler::SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|source| SeccompError::Compile { kind, source })?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|source| SeccompError::Compile { kind, source })?;
    if prog.len() > BPF_MAXINSNS {
        return Err(SeccompError::TooLong {
            kind,
            len: prog.len(),
            max: BPF_MAXINSNS,
        });
    }
    Ok(prog)
}

impl SeccompFilter {
    /// Compiles the filters of `kind` at `level`.
    pub fn new(kind: ProcessKind, level: SeccompLevel, kvm: bool) -> Result<Self, SeccompError> {
        let name = kind.name();
        let mut programs = Vec::new();
        if level == SeccompLevel::Strict {
            let mut never: BTreeMap<i64, Vec<SeccompRule>> =
                NEVER.iter().map(|(nr, _)| (*nr, Vec::new())).collect();
            // Any family but AF_UNIX: no IP (or netlink, packet, …) socket ever.
            never.insert(
                libc::SYS_socket,
                vec![
                    SeccompRule::new(vec![cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)])
                        .expect("one condition"),
                ],
            );
            programs.push(compile(
                name,
                never,
                SeccompAction::Allow,
                SeccompAction::KillProcess,
            )?);
        }
        let enosys = ENOSYS.iter().map(|(nr, _)| (*nr, Vec::new())).collect();
        programs.push(compile(
            name,
            enosys,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?);

        let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for group in allowlist(kind, kvm) {
            for sys in group.calls {
                let rules = rules_of(sys.rule);
                // A syscall listed without a rule anywhere is allowed whatever
                // its arguments; keep that over narrower rules.
                match allowed.get_mut(&sys.nr) {
                    Some(existing) if existing.is_empty() => {}
                    Some(existing) if rules.is_empty() => existing.clear(),
                    Some(existing) => existing.extend(rules),
                    None => {
                        allowed.insert(sys.nr, rules);
                    }
                }
            }
        }
        let count = allowed.len();
        let mismatch = match level {
            SeccompLevel::Strict => SeccompAction::Errno(libc::EPERM as u32),
            SeccompLevel::Audit => SeccompAction::Trace(AUDIT_MARK),
        };
        let mut prog = compile(name, allowed, mismatch, SeccompAction::Allow)?;
        if level == SeccompLevel::Audit {
            for insn in &mut prog {
                if insn.code == BPF_RET_K && insn.k == SECCOMP_RET_TRACE | AUDIT_MARK {
                    insn.k = SECCOMP_RET_USER_NOTIF;
                }
            }
        }
        programs.push(prog);
        Ok(SeccompFilter {
            kind,
            level,
            allowed: count,
            programs,
        })
    }

    /// Number of BPF programs stacked.
    pub fn programs(&self) -> usize {
        self.programs.len()
    }

    /// Sets `no_new_privs` and installs the programs in the calling thread.
    /// In audit level returns the notification listener.
    ///
    /// Async-signal-safe (no allocation, only prctl and seccomp): it runs in
    /// the forked child right before `exec`.
    pub fn install(&self) -> Result<Option<libc::c_int>, (InstallStep, i32)> {
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err((InstallStep::NoNewPrivs, errno()));
        }
        let last = self.programs.len() - 1;
        let mut listener = None;
        for (i, prog) in self.programs.iter().enumerate() {
            let flags = if i == last && self.level == SeccompLevel::Audit {
                SECCOMP_FILTER_FLAG_NEW_LISTENER
            } else {
                0
            };
            let fprog = SockFprog {
                len: prog.len() as u16,
                filter: prog.as_ptr(),
            };
            // SAFETY: `fprog` points at `prog`, alive for the call; the kernel
            // copies the program and keeps no pointer to it.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &fprog as *const SockFprog,
                )
            };
            if rc < 0 {
                return Err((InstallStep::Seccomp, errno()));
            }
            if flags != 0 {
                listener = Some(rc as libc::c_int);
            }
        }
        Ok(listener)
    }
}

/// Which part of [`SeccompFilter::install`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallStep {
    NoNewPrivs,
    Seccomp,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const seccompiler::sock_filter,
}

/// Whether a call is in the *never* set (a `socket` for a non-unix family included).
pub fn is_never(nr: i64, arg0: u64) -> bool {
    NEVER.iter().any(|(n, _)| *n == nr)
        || (nr == libc::SYS_socket && (arg0 as u32) != libc::AF_UNIX as u32)
}

/// A syscall's name for log lines.
pub fn syscall_name(nr: i64) -> String {
    names::name(nr)
        .map(str::to_string)
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

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

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct SeccompNotif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
#[derive(Default)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

// _IOWR('!', 0, struct seccomp_notif) and _IOWR('!', 1, struct seccomp_notif_resp).
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;

/// Serves the audit listener of one process on its own thread until every
/// task using the filter has exited.
pub fn supervise(
    listener: OwnedFd,
    process: &'static str,
    log: Arc<AuditLog>,
) -> Result<std::thread::JoinHandle<()>, SeccompError> {
    std::thread::Builder::new()
        .name("ironclaw-seccomp-audit".into())
        .spawn(move || serve(listener, process, &log))
        .map_err(SeccompError::Supervisor)
}

fn serve(listener: OwnedFd, process: &'static str, log: &AuditLog) {
    let fd = listener.as_raw_fd();
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
            && pfd.revents & libc::POLLIN == 0
        {
            // No task uses the filter any more.
            return;
        }
        let mut notif = SeccompNotif::default();
        // SAFETY: the kernel fills `notif`, sized as the RECV ioctl expects.
        if unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &mut notif) } != 0 {
            // ENOENT: the caller died before we read it; go on.
            continue;
        }
        let nr = notif.data.nr as i64;
        let arg0 = notif.data.args[0];
        let refused = is_never(nr, arg0);
        log.record(process, notif.pid, nr, arg0, refused);
        let mut resp = SeccompNotifResp {
            id: notif.id,
            ..Default::default()
        };
        if refused {
            resp.error = -libc::EPERM;
        } else {
            resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        }
        // SAFETY: `resp` is sized as the SEND ioctl expects. An error means
        // the caller is gone, which needs no answer.
        unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}

/// Takes ownership of a listener fd received from a child.
///
/// # Safety
/// `fd` must be an open descriptor owned by nobody else.
pub unsafe fn own_fd(fd: libc::c_int) -> OwnedFd {
    // SAFETY: the caller guarantees `fd` is open and unowned.
    unsafe { OwnedFd::from_raw_fd(fd) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_at_every_level() {
        for kind in [ProcessKind::Qemu, ProcessKind::VhostVsock] {
            for level in [SeccompLevel::Strict, SeccompLevel::Audit] {
                for kvm in [false, true] {
                    let f = SeccompFilter::new(kind, level, kvm).unwrap();
                    assert!(f.allowed > 30, "{kind:?} allows {}", f.allowed);
                    assert_eq!(
                        f.programs(),
                        if level == SeccompLevel::Strict { 3 } else { 2 }
                    );
                }
            }
        }
    }

    #[test]
    fn audit_level_returns_user_notif_and_strict_never_does() {
        let rets = |f: &SeccompFilter| -> Vec<u32> {
            f.programs
                .iter()
                .flatten()
                .filter(|i| i.code == BPF_RET_K)
                .map(|i| i.k)
                .collect()
        };
        let audit = SeccompFilter::new(ProcessKind::Qemu, SeccompLevel::Audit, false).unwrap();
        assert!(rets(&audit).contains(&SECCOMP_RET_USER_NOTIF));
        assert!(!rets(&audit).contains(&(SECCOMP_RET_TRACE | AUDIT_MARK)));
        let strict = SeccompFilter::new(ProcessKind::Qemu, SeccompLevel::Strict, false).unwrap();
        assert!(!rets(&strict).contains(&SECCOMP_RET_USER_NOTIF));
        assert!(rets(&strict).contains(&libc::SECCOMP_RET_KILL_PROCESS));
    }

    #[test]
    fn allowlists_never_contain_a_never_call() {
        for kind in [ProcessKind::Qemu, ProcessKind::VhostVsock] {
            for g in allowlist(kind, true) {
                assert!(!g.why.is_empty());
                for s in g.calls {
                    assert!(
                        !NEVER.iter().any(|(n, _)| *n == s.nr),
                        "{kind:?} allows {}",
                        s.name
                    );
                    assert_eq!(
                        names::name(s.nr),
                        Some(s.short_name()),
                        "libc and the name table disagree on {}",
                        s.name
                    );
                }
            }
        }
        assert!(is_never(libc::SYS_socket, libc::AF_INET as u64));
        assert!(is_never(libc::SYS_socket, libc::AF_INET6 as u64));
        assert!(!is_never(libc::SYS_socket, libc::AF_UNIX as u64));
        assert!(is_never(libc::SYS_ptrace, 0));
    }

    #[test]
    fn audit_log_is_bounded() {
        let dir = std::env::temp_dir().join(format!("ironclaw-audit-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(AUDIT_FILE);
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
