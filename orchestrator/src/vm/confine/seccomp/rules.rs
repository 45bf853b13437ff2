//! What an allowlist is made of, and the sets every filter shares: the
//! *never* set and the calls answered `ENOSYS`.

use serde::{Deserialize, Serialize};

use super::names;

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
    /// Argument `arg`, masked with `mask`, equals `value`: some bits required,
    /// others forbidden, in one comparison.
    Masked {
        arg: u8,
        mask: u64,
        value: u64,
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

/// What a `clone` for a thread (glibc's `pthread_create`) always sets.
pub const THREAD_FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_THREAD) as u64;

/// A `clone` that makes a thread and nothing else: the thread flags set, no
/// namespace flags. A fork-style `clone` (a new process) does not match.
pub const THREAD_CLONE_ONLY: ArgRule = ArgRule::Masked {
    arg: 0,
    mask: NAMESPACE_FLAGS | THREAD_FLAGS,
    value: THREAD_FLAGS,
};

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

/// Whether a call is in the *never* set (a `socket` for a non-unix family
/// and a `clone` that makes namespaces included): refused at every level,
/// also when auditing.
pub fn is_never(nr: i64, arg0: u64) -> bool {
    NEVER.iter().any(|(n, _)| *n == nr)
        || (nr == libc::SYS_socket && (arg0 as u32) != libc::AF_UNIX as u32)
        || (nr == libc::SYS_clone && arg0 & NAMESPACE_FLAGS != 0)
}

/// A syscall's name for log lines.
pub fn syscall_name(nr: i64) -> String {
    names::name(nr)
        .map(str::to_string)
        .unwrap_or_else(|| format!("syscall_{nr}"))
}
