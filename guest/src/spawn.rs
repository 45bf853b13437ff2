//! Starting a command without copying the agent: `clone(CLONE_VM |
//! CLONE_VFORK)`, as `posix_spawn` does, plus the two things `posix_spawn`
//! cannot do before `execve` (a session of its own, the command's OOM score).
//!
//! Why not `fork`: under TCG every page the agent or the child touches
//! after a `fork` takes a copy-on-write fault the emulated kernel handles,
//! and the page tables are copied first: several milliseconds for a command
//! that runs for less. With `CLONE_VM | CLONE_VFORK` the child borrows the
//! agent's memory (the agent is suspended) until `execve` replaces it, so
//! nothing is copied and no fault is taken. What the child may do before
//! `execve` is therefore restricted like a `vfork` child: plain system calls
//! on data prepared by the parent, no allocation, no unwinding.
//!
//! The child waits are on a pidfd (no `SIGCHLD` handler, no reaper thread).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// What to start.
pub struct SpawnSpec {
    /// Program path (already looked up in `PATH`).
    pub program: CString,
    pub argv: Vec<CString>,
    /// `KEY=VALUE` entries.
    pub env: Vec<CString>,
    pub cwd: CString,
    /// A pipe for stdin (else `/dev/null`).
    pub stdin_piped: bool,
    /// Written to `/proc/self/oom_score_adj` in the child before `execve`.
    pub oom_score_adj: &'static [u8],
}

/// A started child: its pid (also its session and process group) and the
/// parent's ends of its pipes.
pub struct Spawned {
    pub pid: i32,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The steps of the child before `execve`, named in the error.
const STEPS: [&str; 7] = [
    "resetting signals",
    "setsid",
    "setting oom_score_adj",
    "redirecting stdio",
    "changing directory",
    "unblocking signals",
    "execve",
];

/// Everything the child reads, prepared by the parent (the child allocates nothing).
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    oom: &'static [u8],
    /// A pipe's end or the agent's `/dev/null` ([`dev_null`]).
    stdin: libc::c_int,
    stdout: libc::c_int,
    stderr: libc::c_int,
    /// Set by the child on failure: step index << 16 | errno.
    failure: AtomicI32,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, owned below.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: fresh descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The child, on the parent's memory until `execve`. Only system calls.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive and unchanged while the
    // parent is suspended (CLONE_VFORK); every call below is a plain system
    // call wrapper on pointers it prepared.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let fail = |step: i32| -> libc::c_int {
            let errno = *libc::__errno_location();
            a.failure
                .store((step << 16) | (errno & 0xffff), Ordering::SeqCst);
            libc::_exit(127)
        };
        // No handler of the agent's may run here (it would run on the
        // agent's memory): every caught signal back to its default, and
        // SIGPIPE too (the agent ignores it; commands expect the default).
        for sig in 1..32 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                if libc::sigaction(sig, &dfl, std::ptr::null_mut()) != 0 {
                    return fail(0);
                }
            }
        }
        if libc::setsid() < 0 {
            return fail(1);
        }
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd < 0 || libc::write(fd, a.oom.as_ptr().cast(), a.oom.len()) < 0 {
            return fail(2);
        }
        libc::close(fd);
        // The pipes' ends and /dev/null are all above 2 (the agent's 0-2 are
        // open), so dup2 always makes a new descriptor without close-on-exec.
        for (from, to) in [(a.stdin, 0), (a.stdout, 1), (a.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                return fail(3);
            }
        }
        if libc::chdir(a.cwd) < 0 {
            return fail(4);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return fail(5);
        }
        libc::execve(a.program, a.argv, a.envp);
        fail(6)
    }
}

/// `/dev/null`, opened once (close-on-exec) for every command without a
/// stdin pipe: [`open_dev_null`] opens it when the agent starts, so neither
/// a snapshot's clones nor any command walks the path again.
static DEV_NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// Opens [`DEV_NULL`] ahead of the first command.
pub fn open_dev_null() {
    if let Err(e) = dev_null() {
        eprintln!("ironclaw-guest: opening /dev/null: {e}");
    }
}

fn dev_null() -> io::Result<libc::c_int> {
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    // SAFETY: a constant path; the descriptor is checked and owned below.
    let raw = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(DEV_NULL.get_or_init(|| fd).as_raw_fd())
}

/// Stack for the child until `execve` (it only makes system calls).
const CHILD_STACK: usize = 32 * 1024;

/// Starts `spec`; returns when the child has called `execve` (or failed).
pub fn spawn(spec: &SpawnSpec) -> io::Result<Spawned> {
    let (stdin_r, stdin_w) = if spec.stdin_piped {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let argv: Vec<*const libc::c_char> = spec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = spec
        .env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let args = ChildArgs {
        program: spec.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: spec.cwd.as_ptr(),
        oom: spec.oom_score_adj,
        stdin: match &stdin_r {
            Some(f) => f.as_raw_fd(),
            None => dev_null()?,
        },
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        failure: AtomicI32::new(0),
    };
    // Not zeroed: the child only pushes onto it.
    let mut stack: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(CHILD_STACK);
    // SAFETY: the stack grows down from its (16-byte aligned) end; it and
    // `args` outlive the child's use of them: with CLONE_VFORK, clone returns
    // only once the child has exec'd or exited. All signals are blocked
    // around the clone, so none is handled in the child before it reset them.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK).cast::<u8>();
        let top = top.sub(top as usize % 16);
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(&args) as *mut libc::c_void,
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    drop(stack);
    let failure = args.failure.load(Ordering::SeqCst);
    if failure != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let step = STEPS.get((failure >> 16) as usize).copied().unwrap_or("?");
        let e = io::Error::from_raw_os_error(failure & 0xffff);
        return Err(if step == "execve" {
            e
        } else {
            io::Error::new(e.kind(), format!("{e} ({step})"))
        });
    }
    Ok(Spawned {
        pid,
        stdin: stdin_w,
        stdout: stdout_r,
        stderr: stderr_r,
    })
}

/// Looks `program` up as `execvp` would in `path` (a `PATH` value), relative
/// entries from `cwd`; a name with a slash is used as it is.
pub fn find_program(program: &str, path: &str, cwd: &Path) -> io::Result<PathBuf> {
    if program.is_empty() {
        return Err(io::ErrorKind::NotFound.into());
    }
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let mut denied = false;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        let full = if candidate.is_relative() {
            cwd.join(&candidate)
        } else {
            candidate.clone()
        };
        let Ok(meta) = std::fs::metadata(&full) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let Ok(c) = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(full.as_os_str())) else {
            continue;
        };
        // SAFETY: a valid C string.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(full);
        }
        denied = true;
    }
    Err(if denied {
        io::ErrorKind::PermissionDenied.into()
    } else {
        io::Error::from_raw_os_error(libc::ENOENT)
    })
}

/// A started process, reaped through its pidfd. Dropping it unreaped kills it.
pub struct Child {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    reaped: bool,
}

impl Child {
    pub fn new(pid: i32) -> Child {
        // SAFETY: pidfd_open on our own child; the result is checked and owned.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
        let pidfd = (raw >= 0)
            // SAFETY: a fresh descriptor nothing else owns.
            .then(|| unsafe { OwnedFd::from_raw_fd(raw) })
            // SAFETY: the AsyncFd owns the descriptor for its whole life.
            .and_then(|fd| unsafe { AsyncFd::register(fd) }.ok());
        Child {
            pid,
            pidfd,
            reaped: false,
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        self.reaped = true;
        Ok(Some(std::os::unix::process::ExitStatusExt::from_raw(
            status,
        )))
    }

    /// Waits for the process to end and reaps it.
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            match &self.pidfd {
                // Readable once the process has ended.
                Some(fd) => {
                    let mut guard = fd.readable().await?;
                    guard.clear_ready();
                }
                // No pidfd (a kernel before 5.3): poll.
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
    }
}

/// `KEY=VALUE` for the environment block.
pub fn env_entry(k: &str, v: &str) -> io::Result<CString> {
    CString::new(format!("{k}={v}")).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("environment variable {k:?} contains a NUL byte"),
        )
    })
}

/// A C string of `s`, refused with a NUL byte inside.
pub fn c_string(what: &str, s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn spec(argv: &[&str], cwd: &str) -> SpawnSpec {
        let program = find_program(argv[0], "/usr/bin:/bin", Path::new(cwd)).unwrap();
        SpawnSpec {
            program: c_string("program", program.as_os_str().as_encoded_bytes()).unwrap(),
            argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
            env: vec![env_entry("GREETING", "hi").unwrap()],
            cwd: CString::new(cwd).unwrap(),
            stdin_piped: false,
            // Raising is always allowed.
            oom_score_adj: b"500",
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_spawned_command_runs_in_its_session_with_env_cwd_and_oom_score() {
        let s = spec(
            &[
                "sh",
                "-c",
                "echo $GREETING; pwd; cat /proc/self/oom_score_adj >&2; \
                 test $(cut -d' ' -f6 /proc/$$/stat) = $$ && exit 3",
            ],
            "/tmp",
        );
        let spawned = spawn(&s).unwrap();
        let mut child = Child::new(spawned.pid);
        let status = child.wait().await.unwrap();
        let mut out = String::new();
        std::fs::File::from(spawned.stdout)
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        std::fs::File::from(spawned.stderr)
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(out, "hi\n/tmp\n");
        assert_eq!(err.trim(), "500");
        // Exit 3 only if it leads its own session.
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn failures_before_exec_are_reported() {
        let mut s = spec(&["true"], "/");
        s.cwd = CString::new("/does/not/exist").unwrap();
        let e = spawn(&s).err().unwrap();
        assert!(e.to_string().contains("changing directory"), "{e}");
        let e = find_program("no-such-program", "/usr/bin:/bin", Path::new("/")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        s = spec(&["true"], "/");
        s.program = CString::new("/nonexistent/x").unwrap();
        assert_eq!(spawn(&s).err().unwrap().raw_os_error(), Some(libc::ENOENT));
    }
}
