//! The syscalls `vhost-device-vsock` (rust-vmm, 0.3.0) may make.
//!
//! Derived by tracing it with `strace -f` through every configuration the
//! integration tests use: start, the vhost-user handshake with QEMU (guest
//! memory arrives as a memfd), hybrid vsock `CONNECT`/`OK` traffic in both
//! directions, guest-initiated connections to the host's ready socket,
//! destroy (SIGKILL). It needs no vsock socket: the host side is unix sockets.

use super::rules::{ArgRule, Group, Sys};

const UNIX_ONLY: ArgRule = ArgRule::OneOf {
    arg: 0,
    values: &[libc::AF_UNIX as u64],
};

/// `ioctl` requests seen: non-blocking sockets, the logger's isatty check.
const IOCTLS: ArgRule = ArgRule::OneOf {
    arg: 1,
    values: &[libc::FIONBIO, libc::TCGETS, libc::FIOCLEX],
};

const PRCTL_OPTIONS: ArgRule = ArgRule::OneOf {
    arg: 0,
    values: &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64],
};

pub const GROUPS: &[Group] = &[
    Group {
        why: "program start: exec, the dynamic loader, Rust's runtime set-up (stdio check, stack guard)",
        calls: &[
            sys!(SYS_execve),
            sys!(SYS_brk),
            sys!(SYS_arch_prctl),
            sys!(SYS_access),
            sys!(SYS_set_tid_address),
            sys!(SYS_prlimit64),
            sys!(SYS_getrandom),
            sys!(SYS_poll),
            sys!(SYS_sched_getaffinity),
        ],
    },
    Group {
        why: "files and descriptors: libraries, the log on stderr",
        calls: &[
            sys!(SYS_openat),
            sys!(SYS_close),
            sys!(SYS_read),
            sys!(SYS_write),
            sys!(SYS_pread64),
            sys!(SYS_lseek),
            sys!(SYS_newfstatat),
            sys!(SYS_fcntl),
            sys!(SYS_dup),
            sys!(SYS_unlink),
            sys!(SYS_ioctl, IOCTLS),
        ],
    },
    Group {
        why: "memory: the heap and the guest memory QEMU shares over vhost-user",
        calls: &[
            sys!(SYS_mmap),
            sys!(SYS_munmap),
            sys!(SYS_mprotect),
            sys!(SYS_madvise),
            sys!(SYS_mremap),
        ],
    },
    Group {
        why: "threads (vring worker, listener): clone only for a thread (never a new process, never namespaces); clone3 gets ENOSYS",
        calls: &[
            sys!(SYS_clone, super::rules::THREAD_CLONE_ONLY),
            sys!(SYS_clone3),
            sys!(SYS_futex),
            sys!(SYS_set_robust_list),
            sys!(SYS_rseq),
            sys!(SYS_gettid),
            sys!(SYS_getpid),
            sys!(SYS_sched_yield),
            sys!(SYS_prctl, PRCTL_OPTIONS),
            sys!(SYS_exit),
            sys!(SYS_exit_group),
        ],
    },
    Group {
        why: "signals: Rust's stack-overflow handler, glibc's raise()/abort()",
        calls: &[
            sys!(SYS_rt_sigaction),
            sys!(SYS_rt_sigprocmask),
            sys!(SYS_rt_sigreturn),
            sys!(SYS_sigaltstack),
            sys!(SYS_tgkill),
            sys!(SYS_restart_syscall),
        ],
    },
    Group {
        why: "event loop: epoll over the vhost-user socket, vring kick/call eventfds and the vsock listeners",
        calls: &[
            sys!(SYS_epoll_create1),
            sys!(SYS_epoll_ctl),
            sys!(SYS_epoll_wait),
            sys!(SYS_epoll_pwait),
            sys!(SYS_eventfd2),
            sys!(SYS_clock_nanosleep),
            sys!(SYS_clock_gettime),
        ],
    },
    Group {
        why: "unix sockets only: vhost-user server, hybrid vsock listener, connections to host listeners",
        calls: &[
            sys!(SYS_socket, UNIX_ONLY),
            sys!(SYS_bind),
            sys!(SYS_listen),
            sys!(SYS_accept4),
            sys!(SYS_connect),
            sys!(SYS_getsockname),
            sys!(SYS_getpeername),
            sys!(SYS_getsockopt),
            sys!(SYS_setsockopt),
            sys!(SYS_recvmsg),
            sys!(SYS_sendmsg),
            sys!(SYS_recvfrom),
            sys!(SYS_sendto),
            sys!(SYS_shutdown),
        ],
    },
];
