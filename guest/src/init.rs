//! PID 1 duties: mounts, kernel modules, loopback, then fork the agent and reap.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::agent;

/// Written by the host's image builder: one module path per line, in load order.
const MODULE_LIST: &str = "/etc/ironclaw/modules";

pub fn run_as_pid1() -> ! {
    let started = Instant::now();
    // The benchmark's bare-QEMU reference waits for this line on the console.
    log("/init started");
    mount_basics();
    load_modules();
    // With an image on the command line, everything from here on (the agent
    // included) runs in it.
    crate::rootfs::switch_if_requested(log);
    set_hostname("ironclaw");
    loopback_up();
    log(&format!(
        "init done in {} ms, starting agent",
        started.elapsed().as_millis()
    ));
    supervise()
}

fn log(msg: &str) {
    // The serial console is the VM's log on the host.
    eprintln!("ironclaw-guest: {msg}");
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let _ = fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("mount arguments have no NUL");
    let (src, tgt, fst, dat) = (c(source), c(target), c(fstype), c(data));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            flags,
            dat.as_ptr().cast(),
        )
    };
    if rc != 0 {
        log(&format!(
            "mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
}

fn mount_basics() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid_nodev_noexec, "");
    mount("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    );
    mount(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    );
    let _ = fs::create_dir_all("/root");
}

fn load_modules() {
    let Ok(list) = fs::read_to_string(MODULE_LIST) else {
        log(&format!("no {MODULE_LIST}: loading no modules"));
        return;
    };
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                log(&format!("module {path}: {e}"));
                continue;
            }
        };
        let params = c"";
        // SAFETY: finit_module reads the module from a valid open fd; params is a
        // valid empty C string; flags 0.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                log(&format!("module {path}: {err}"));
            }
        }
    }
}

fn set_hostname(name: &str) {
    // SAFETY: the pointer and length describe a valid byte string.
    unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
}

/// Brings `lo` up so programs in the guest can talk to themselves. The VM has
/// no other network interface.
fn loopback_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed, correctly sized ifreq; the fd is closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
    }
}

/// The agent's `oom_score_adj`: the guest's OOM killer never picks it (the
/// commands it starts raise theirs, see `exec`). Root in the guest can still
/// stop or kill the agent: the host's deadlines are the guarantee.
const AGENT_OOM_SCORE_ADJ: &str = "-1000";

fn protect_from_oom_killer() {
    if let Err(e) = fs::write("/proc/self/oom_score_adj", AGENT_OOM_SCORE_ADJ) {
        log(&format!("setting the agent's oom_score_adj: {e}"));
    }
}

/// Forks the agent and reaps every child that ends up with PID 1 (orphans of
/// user commands and the agent itself, which is restarted).
fn supervise() -> ! {
    loop {
        // SAFETY: fork in a single-threaded process (no runtime has started yet
        // in PID 1); the child only runs the agent and exits.
        let agent_pid = unsafe { libc::fork() };
        if agent_pid == 0 {
            protect_from_oom_killer();
            let code = match agent::serve(agent::Listen::Vsock(ironclaw_protocol::AGENT_VSOCK_PORT))
            {
                Ok(()) => 0,
                Err(e) => {
                    log(&format!("agent: {e}"));
                    1
                }
            };
            std::process::exit(code);
        }
        if agent_pid < 0 {
            log(&format!("fork: {}", std::io::Error::last_os_error()));
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid == agent_pid || (pid < 0 && agent_pid < 0) {
                log(&format!("agent exited (status {status}), restarting"));
                std::thread::sleep(std::time::Duration::from_millis(100));
                break;
            }
            if pid < 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
