//! Starting and ending the VMM's helper processes.
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)` so they die with the orchestrator
//! even when it is killed with SIGKILL. The death signal fires when the
//! *thread* that forked them exits, so every child is forked by one thread
//! that lives as long as the process.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

type Job = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ironclaw-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` in its own process group, killed when the orchestrator dies.
pub fn spawn_child(cmd: Command) -> std::io::Result<Child> {
    spawn_child_then(cmd, || Ok(()))
}

/// [`spawn_child`], running `then` in the child after the death signal is
/// set (the jail's steps). `then` must be async-signal-safe.
pub fn spawn_child_then(
    mut cmd: Command,
    mut then: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid is async-signal-safe and called before fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure only calls async-signal-safe functions (prctl,
    // getppid, and `then`, which the caller guarantees is).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("orchestrator exited during spawn"));
            }
            then()
        });
    }
    cmd.process_group(0);
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .expect("spawner lock")
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

/// A pidfd of `pid`, which must be a child (or a grandchild whose parent,
/// our child, is alive), so the pid cannot be reused before it is opened.
pub fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, RawFd};
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a new descriptor owned by nobody else, when non-negative.
    (raw >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(raw as RawFd) })
}

/// Blocks until `fd` is readable (a pidfd: its process exited) or `timeout`
/// passes.
pub fn wait_readable(fd: &std::os::fd::OwnedFd, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// SIGKILLs `child` and reaps it.
pub fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Whether process `pid` is alive.
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The command line of `pid`, NULs turned into spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat):
/// tells a live process from a later one that reused its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Polls `check` every millisecond until it returns `Some` or `timeout`
/// passes. What it waits for (a VMM's socket) is on the path of every spawn,
/// and a check is a `stat`: a coarser step would only add latency.
pub async fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
