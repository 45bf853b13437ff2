//! The syscalls `qemu-system-x86_64 -M microvm` may make.
//!
//! Derived by tracing QEMU 7.2 (Debian) with `strace -f` (and, for the
//! prototype paths, with this filter at audit level) through every
//! configuration the integration tests use: cold boot under TCG, exec with
//! streamed output, vsock traffic through the vhost-user device, QMP, boot
//! timeouts, a guest panic (QEMU exits), destroy (SIGKILL), and for
//! prototypes a virtio-serial agent port, a snapshot by QMP `migrate` to an
//! fd and restores with `-incoming fd:3`. QEMU's own
//! `-sandbox on,…` filter is stacked on top of this one and refuses more.
//! The KVM group is not traced here (KVM is not usable on these machines); it
//! comes from QEMU's sources.

use super::rules::{ArgRule, Group, Sys};

/// Families QEMU may open sockets in: unix only (QMP, chardevs, vhost-user).
const UNIX_ONLY: ArgRule = ArgRule::OneOf {
    arg: 0,
    values: &[libc::AF_UNIX as u64],
};

/// Options QEMU and the libraries it loads pass to `prctl`.
const PRCTL_OPTIONS: ArgRule = ArgRule::OneOf {
    arg: 0,
    values: &[
        libc::PR_SET_NO_NEW_PRIVS as u64, // libseccomp, for -sandbox
        libc::PR_SET_TIMERSLACK as u64,   // QEMU's main loop
        libc::PR_MCE_KILL as u64,         // QEMU at start
        libc::PR_SET_NAME as u64,         // thread names
        libc::PR_GET_NAME as u64,
    ],
};

pub const GROUPS: &[Group] = &[
    Group {
        why: "program start: exec, the dynamic loader, glibc and library constructors (libselinux probes, module dir scan)",
        calls: &[
            sys!(SYS_execve),
            sys!(SYS_brk),
            sys!(SYS_arch_prctl),
            sys!(SYS_access),
            sys!(SYS_set_tid_address),
            sys!(SYS_prlimit64),
            sys!(SYS_getrandom),
            sys!(SYS_readlink),
            sys!(SYS_statfs),
            sys!(SYS_fstatfs),
            sys!(SYS_getdents64),
            sys!(SYS_fchdir),
            sys!(SYS_sysinfo),
            sys!(SYS_sched_getaffinity),
        ],
    },
    Group {
        why: "files: firmware, kernel, initramfs, console log, pid/lock files",
        calls: &[
            sys!(SYS_openat),
            sys!(SYS_close),
            sys!(SYS_read),
            sys!(SYS_write),
            sys!(SYS_writev),
            // A prototype clone reads its snapshot (-incoming fd:3) with readv.
            sys!(SYS_readv),
            sys!(SYS_pread64),
            sys!(SYS_lseek),
            sys!(SYS_newfstatat),
            sys!(SYS_fcntl),
            sys!(SYS_unlink),
        ],
    },
    Group {
        why: "guest memory and the heap: the memfd memory backend shared with vhost-device-vsock, TCG's code buffer",
        calls: &[
            sys!(SYS_mmap),
            sys!(SYS_munmap),
            sys!(SYS_mprotect),
            sys!(SYS_madvise),
            sys!(SYS_mremap),
            sys!(SYS_memfd_create),
            sys!(SYS_ftruncate),
            sys!(SYS_set_mempolicy),
            sys!(SYS_get_mempolicy),
        ],
    },
    Group {
        why: "threads (vCPU, RCU, worker pool): clone only without namespace flags; clone3 is answered ENOSYS by a separate filter so glibc falls back to clone",
        calls: &[
            sys!(SYS_clone, ArgRule::NoneOf { arg: 0, mask: super::rules::NAMESPACE_FLAGS }),
            sys!(SYS_clone3),
            sys!(SYS_futex),
            sys!(SYS_set_robust_list),
            sys!(SYS_rseq),
            sys!(SYS_gettid),
            sys!(SYS_getpid),
            sys!(SYS_sched_yield),
            sys!(SYS_exit),
            sys!(SYS_exit_group),
        ],
    },
    Group {
        why: "signals: QEMU's signalfd for SIGBUS/SIGALRM/SIGIO, glibc's raise()/abort()",
        calls: &[
            sys!(SYS_rt_sigaction),
            sys!(SYS_rt_sigprocmask),
            sys!(SYS_rt_sigreturn),
            sys!(SYS_signalfd4),
            sys!(SYS_sigaltstack),
            sys!(SYS_tgkill),
            sys!(SYS_restart_syscall),
        ],
    },
    Group {
        why: "event loop and timers (QEMU switches between ppoll and epoll by fd count)",
        calls: &[
            sys!(SYS_ppoll),
            sys!(SYS_poll),
            sys!(SYS_eventfd2),
            sys!(SYS_epoll_create1),
            sys!(SYS_epoll_ctl),
            sys!(SYS_epoll_wait),
            sys!(SYS_epoll_pwait),
            sys!(SYS_clock_nanosleep),
            sys!(SYS_clock_gettime),
        ],
    },
    Group {
        why: "unix sockets only: QMP server, the vhost-user chardev, fd passing (no IP sockets: see socket's argument rule)",
        calls: &[
            sys!(SYS_socket, UNIX_ONLY),
            sys!(SYS_bind),
            sys!(SYS_listen),
            sys!(SYS_accept4),
            sys!(SYS_connect),
            sys!(SYS_getsockname),
            sys!(SYS_getpeername),
            sys!(SYS_setsockopt),
            sys!(SYS_getsockopt),
            sys!(SYS_recvmsg),
            sys!(SYS_sendmsg),
            sys!(SYS_shutdown),
        ],
    },
    Group {
        why: "QEMU's -sandbox: libseccomp probes and installs its own (stricter) filter",
        calls: &[sys!(SYS_seccomp), sys!(SYS_prctl, PRCTL_OPTIONS)],
    },
    Group {
        why: "read-only rootfs drive (QEMU's file-posix driver; tests/image.rs boots a debootstrap rootfs and logs nothing unlisted at audit level)",
        calls: &[
            sys!(SYS_preadv),
            sys!(SYS_pwritev),
            sys!(SYS_pwrite64),
            sys!(SYS_fdatasync),
            sys!(SYS_fadvise64),
        ],
    },
];

/// The `ioctl` type of every KVM request (`KVMIO`, `linux/kvm.h`).
pub const KVMIO: u64 = 0xAE;

/// `ioctl` requests of KVM's family only: the type byte (bits 8–15 of the
/// request, argument 1) is [`KVMIO`]. QEMU under TCG needs no `ioctl` at
/// all; with KVM it talks to `/dev/kvm`, its VM and vCPU descriptors, and
/// nothing else gets an `ioctl` through (a terminal, a device, a socket).
pub const KVM_IOCTLS: ArgRule = ArgRule::Masked {
    arg: 1,
    mask: 0xff00,
    value: KVMIO << 8,
};

/// Added with `-accel kvm` only (not traced here: KVM is not usable on the
/// development machines; from QEMU's KVM accelerator: VM/vCPU ioctls and the
/// SIG_IPI kick between vCPU threads).
pub const KVM_GROUPS: &[Group] = &[Group {
    why: "KVM: /dev/kvm, VM and vCPU ioctls (KVM's request family only), vCPU kicks",
    calls: &[sys!(SYS_ioctl, KVM_IOCTLS), sys!(SYS_rt_sigtimedwait)],
}];
