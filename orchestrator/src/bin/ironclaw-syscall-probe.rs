//! `ironclaw-syscall-probe CALL [N]`: makes one syscall and prints what
//! happened, to check a confinement from outside (the confinement tests run
//! it under a VMM's seccomp filter). Prints `ok <ret>` or `err <errno>`; a
//! filter that kills the process leaves no output and a SIGSYS status.
//!
//! CALLs: `getpid` (allowed everywhere), `socket-unix`, `socket-inet`,
//! `socket-inet6`, `ptrace`, `mount`, `getppid` (not in any allowlist, not
//! in the never set), `flood N` (N × `getppid`), `clone-newuser` (a child
//! in a new user namespace, which exits at once), `fork` (a fork-style
//! `clone`: a child process, which exits at once), `thread` (a thread, as
//! `std::thread` makes it), `exec` (`execve` of `/bin/true` after start),
//! `ioctl-kvm` (`KVM_GET_API_VERSION` on a closed descriptor: EBADF when the
//! filter lets it through), `ioctl-tty` (`FIONREAD` on stdin).

fn result(rc: libc::c_long) -> String {
    if rc < 0 {
        format!(
            "err {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    } else {
        format!("ok {rc}")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(call) = args.get(1) else {
        eprintln!("usage: ironclaw-syscall-probe CALL [N]");
        std::process::exit(2);
    };
    // SAFETY (all below): raw syscalls with constant or null arguments; none
    // touches memory of this process except through the given pointers.
    let rc: libc::c_long = unsafe {
        match call.as_str() {
            "getpid" => libc::syscall(libc::SYS_getpid),
            "getppid" => libc::syscall(libc::SYS_getppid),
            "socket-unix" => libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0),
            "socket-inet" => libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0),
            "socket-inet6" => libc::syscall(libc::SYS_socket, libc::AF_INET6, libc::SOCK_DGRAM, 0),
            "ptrace" => libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0),
            "mount" => libc::syscall(
                libc::SYS_mount,
                c"none".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null::<libc::c_void>(),
            ),
            "clone-newuser" => {
                let rc = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                );
                if rc == 0 {
                    libc::_exit(0);
                }
                if rc > 0 {
                    libc::waitpid(rc as libc::pid_t, std::ptr::null_mut(), 0);
                }
                rc
            }
            "fork" => {
                let rc = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
                if rc == 0 {
                    libc::_exit(0);
                }
                if rc > 0 {
                    libc::waitpid(rc as libc::pid_t, std::ptr::null_mut(), 0);
                }
                rc
            }
            "thread" => match std::thread::Builder::new().spawn(|| 7).map(|t| t.join()) {
                Ok(Ok(v)) => v,
                _ => -1,
            },
            "ioctl-kvm" => libc::syscall(libc::SYS_ioctl, -1, 0xAE00 as libc::c_ulong, 0),
            "ioctl-tty" => {
                let mut n: libc::c_int = 0;
                libc::syscall(
                    libc::SYS_ioctl,
                    0,
                    libc::FIONREAD,
                    &mut n as *mut libc::c_int,
                )
            }
            "exec" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null::<libc::c_char>()];
                libc::syscall(
                    libc::SYS_execve,
                    c"/bin/true".as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                )
            }
            "flood" => {
                let n: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
                let mut last = 0;
                for _ in 0..n {
                    last = libc::syscall(libc::SYS_getppid);
                }
                last
            }
            other => {
                eprintln!("unknown call {other}");
                std::process::exit(2);
            }
        }
    };
    println!("{}", result(rc));
}
