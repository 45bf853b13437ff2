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
//! directory) and lets it continue, except the *never* set (and a `clone`
//! with namespace flags), which is refused with `EPERM` even when auditing. Chosen over `SECCOMP_RET_LOG` because that
//! writes to the kernel log, which we can neither bound nor attribute to a VM.

//!
//! Files: [`rules`] (levels, process kinds, the *never* set), one allowlist
//! per process kind ([`qemu`], [`vhost_vsock`]), [`filter`] (compilation and
//! installation), [`audit`] (the bounded log) and [`notify`] (the supervisor
//! that answers user notifications); [`names`] names syscalls for the log.

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
pub mod audit;
pub mod error;
pub mod filter;
pub mod names;
pub mod notify;
pub mod qemu;
pub mod rules;
pub mod vhost_vsock;

pub use audit::{AuditEntry, AuditLog, AUDIT_FILE, AUDIT_FILE_LINES, AUDIT_RING_ENTRIES};
pub use error::SeccompError;
pub use filter::{allowlist, InstallStep, SeccompFilter};
pub use notify::{serve_exec_once, supervise};
pub use rules::{
    is_never, syscall_name, ArgRule, Group, ProcessKind, SeccompLevel, Sys, ENOSYS,
    NAMESPACE_FLAGS, NEVER,
};
