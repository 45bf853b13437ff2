//! Compiling an allowlist into stacked BPF programs with rust-vmm's
//! `seccompiler`, and installing them in the forked child.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
    TargetArch,
};

use super::error::SeccompError;
use super::rules::{ArgRule, Group, ProcessKind, SeccompLevel, ENOSYS, NEVER};
use super::{qemu, vhost_vsock};

/// The longest program the kernel accepts (`BPF_MAXINSNS`).
const BPF_MAXINSNS: usize = 4096;
/// Marks the allowlist's mismatch return in audit level, patched to
/// `SECCOMP_RET_USER_NOTIF` after compiling (seccompiler has no such action).
const AUDIT_MARK: u32 = 0x1c1a;
/// Marks the exec program's match return, patched to `SECCOMP_RET_USER_NOTIF`.
const EXEC_MARK: u32 = 0x1c1b;
/// `BPF_RET | BPF_K`: return a constant.
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// A compiled filter set for one process kind and level, ready to install.
#[derive(Debug, Clone)]
pub struct SeccompFilter {
    pub kind: ProcessKind,
    pub level: SeccompLevel,
    /// Allowed syscalls (counting each once).
    pub allowed: usize,
    /// `execve` is allowed once, for the process's own start, and refused
    /// after it (a supervisor answers; see [`super::notify::serve_exec_once`]):
    /// for a process that has no filter of its own to stack after its exec.
    pub exec_once: bool,
    /// In installation order; the allowlist is last (once it is in force,
    /// installing another program is refused).
    programs: Vec<BpfProgram>,
    /// The program installed with a notification listener, if any.
    listener_at: Option<usize>,
}

/// Replaces the return `mark` in `prog` with `SECCOMP_RET_USER_NOTIF`
/// (seccompiler has no such action).
fn notify_on(prog: &mut BpfProgram, mark: u32) {
    for insn in prog {
        if insn.code == BPF_RET_K && insn.k == libc::SECCOMP_RET_TRACE | mark {
            insn.k = libc::SECCOMP_RET_USER_NOTIF;
        }
    }
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
        ArgRule::Masked { arg, mask, value } => {
            vec![
                SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(mask), value)])
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
        // One listener per process: at audit level it is the allowlist's
        // (which lets exec through anyway, logged or not); exec-once puts its
        // program before the allowlist, which would refuse installing it.
        let exec_once = level == SeccompLevel::Strict && kind == ProcessKind::VhostVsock;
        let mut listener_at = None;
        if exec_once {
            let exec = [libc::SYS_execve, libc::SYS_execveat]
                .into_iter()
                .map(|nr| (nr, Vec::new()))
                .collect();
            let mut prog = compile(
                name,
                exec,
                SeccompAction::Allow,
                SeccompAction::Trace(EXEC_MARK),
            )?;
            notify_on(&mut prog, EXEC_MARK);
            listener_at = Some(programs.len());
            programs.push(prog);
        }
        let mut prog = compile(name, allowed, mismatch, SeccompAction::Allow)?;
        if level == SeccompLevel::Audit {
            notify_on(&mut prog, AUDIT_MARK);
            listener_at = Some(programs.len());
        }
        programs.push(prog);
        Ok(SeccompFilter {
            kind,
            level,
            allowed: count,
            exec_once,
            listener_at,
            programs,
        })
    }

    /// Number of BPF programs stacked.
    pub fn programs(&self) -> usize {
        self.programs.len()
    }

    /// Whether installing returns a notification listener the orchestrator
    /// must serve (audit level, or `exec_once`).
    pub fn has_listener(&self) -> bool {
        self.listener_at.is_some()
    }

    /// Sets `no_new_privs` and installs the programs in the calling thread.
    /// Returns the notification listener when [`Self::has_listener`].
    ///
    /// Async-signal-safe (no allocation, only prctl and seccomp): it runs in
    /// the forked child right before `exec`.
    pub fn install(&self) -> Result<Option<libc::c_int>, (InstallStep, i32)> {
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err((InstallStep::NoNewPrivs, errno()));
        }
        let mut listener = None;
        for (i, prog) in self.programs.iter().enumerate() {
            let flags = if Some(i) == self.listener_at {
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
            } else {
                0
            };
            // seccompiler's `sock_filter` is `#[repr(C)]` with the fields of
            // libc's (and the kernel's): the same layout.
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut(),
            };
            // SAFETY: `fprog` points at `prog`, alive for the call; the kernel
            // only reads the program, copies it and keeps no pointer to it.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &fprog as *const libc::sock_fprog,
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

#[cfg(test)]
mod tests {
    use super::super::names;
    use super::super::rules::is_never;
    use super::*;

    #[test]
    fn every_kind_compiles_at_every_level() {
        for kind in [ProcessKind::Qemu, ProcessKind::VhostVsock] {
            for level in [SeccompLevel::Strict, SeccompLevel::Audit] {
                for kvm in [false, true] {
                    let f = SeccompFilter::new(kind, level, kvm).unwrap();
                    assert!(f.allowed > 30, "{kind:?} allows {}", f.allowed);
                    let exec_once =
                        level == SeccompLevel::Strict && kind == ProcessKind::VhostVsock;
                    assert_eq!(f.exec_once, exec_once);
                    assert_eq!(
                        f.programs(),
                        if level == SeccompLevel::Strict { 3 } else { 2 } + usize::from(exec_once)
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
        assert!(rets(&audit).contains(&libc::SECCOMP_RET_USER_NOTIF));
        assert!(!rets(&audit).contains(&(libc::SECCOMP_RET_TRACE | AUDIT_MARK)));
        let strict = SeccompFilter::new(ProcessKind::Qemu, SeccompLevel::Strict, false).unwrap();
        assert!(!rets(&strict).contains(&libc::SECCOMP_RET_USER_NOTIF));
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
}
