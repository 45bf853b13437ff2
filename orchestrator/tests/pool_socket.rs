//! Who may use the pool daemon, and how much: its socket and directory get
//! explicit modes whatever the umask, peers are checked by `SO_PEERCRED`
//! (the daemon's own user, root, or members of `--group`), and VMs in use
//! are capped per client uid and in total.
//!
//! These tests run as root (they start confined VMMs) and run their clients
//! as uid 65534 (`nobody`, group `nogroup`) or 65533 (no account).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// A uid and gid with no account and no group entry.
const STRANGER: u32 = 65533;

mod cli_support;

use cli_support::s;

fn root(name: &str) -> PathBuf {
    cli_support::root("pool-socket", name)
}

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests run as root (they start confined VMMs and switch users)"
    );
}

/// A daemon started under `umask 000`, so nothing but explicit modes
/// protects its socket.
struct Daemon {
    child: Child,
    root: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(root: &Path, extra: &[&str]) -> Daemon {
        assert_root();
        let socket = root.join("sock").join("pool.sock");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("umask 000; exec \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_ironclaw"))
            .args(["pool", "serve", "--size", "1", "--socket"])
            .arg(&socket)
            .args(extra)
            .env("IRONCLAW_RUNTIME_DIR", root)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            child,
            root: root.to_path_buf(),
            socket,
        };
        let t0 = Instant::now();
        while !d.socket.exists() {
            if let Some(status) = d.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(d.child.stderr.as_mut().unwrap(), &mut err);
                panic!("the daemon exited ({status}) before listening: {err}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "the daemon never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// `ironclaw run --pool … -- argv` as `who`.
    fn client(&self, who: Who, argv: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ironclaw"));
        c.args(["run", "--pool", "--pool-socket"])
            .arg(&self.socket)
            .arg("--")
            .args(argv)
            .env("IRONCLAW_RUNTIME_DIR", &self.root)
            .stdin(Stdio::null());
        who.apply(&mut c);
        c
    }

    fn run(&self, who: Who, argv: &[&str]) -> Output {
        self.client(who, argv).output().unwrap()
    }

    /// Starts `sh -c 'echo ready; sleep 100'` as `who` and waits for "ready":
    /// a VM held in use until the child is killed.
    fn hold(&self, who: Who) -> Child {
        let mut child = self
            .client(who, &["sh", "-c", "echo ready; sleep 100"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "a holding client did not start");
        child
    }

    /// Stops the daemon; returns what it wrote on stderr.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut err = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{err}");
        assert!(!self.socket.exists(), "the socket was left behind");
        err
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[derive(Clone, Copy)]
enum Who {
    Root,
    /// uid, gid, supplementary groups
    User(u32, u32, &'static [u32]),
}

impl Who {
    fn apply(self, c: &mut Command) {
        let Who::User(uid, gid, groups) = self else {
            return;
        };
        // The client writes nothing of its own, but must not read root's cache.
        c.env("HOME", "/nonexistent")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("IRONCLAW_CACHE_DIR");
        // SAFETY: the closure makes only async-signal-safe calls (setgroups,
        // setgid, setuid) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let list: Vec<libc::gid_t> = groups.to_vec();
                if libc::setgroups(list.len(), list.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn assert_refused(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(125), "{what}: {}", s(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "{what} got output: {}",
        s(&out.stdout)
    );
    let err = s(&out.stderr);
    assert!(
        err.contains("not allowed") || err.contains("ermission denied"),
        "{what}: {err}"
    );
}

#[test]
fn under_umask_000_the_socket_is_private_and_other_users_get_no_vm() {
    let d = Daemon::start(&root("private"), &[]);
    let dir = d.socket.parent().unwrap();
    assert_eq!(mode(dir), 0o700, "socket directory");
    assert_eq!(mode(&d.socket), 0o600, "socket");
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    let out = d.run(Who::User(NOBODY, NOGROUP, &[]), &["uname", "-r"]);
    assert_refused(&out, "uid 65534");
    // The daemon's own user is served.
    let out = d.run(Who::Root, &["uname", "-r"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    assert!(s(&out.stdout).starts_with("6."), "{}", s(&out.stdout));
    d.stop();
}

#[test]
fn with_a_group_its_members_are_served_and_everyone_else_refused() {
    let d = Daemon::start(&root("group"), &["--group", "nogroup"]);
    let dir = d.socket.parent().unwrap();
    assert_eq!(mode(dir), 0o750, "socket directory");
    assert_eq!(mode(&d.socket), 0o660, "socket");
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, NOGROUP));
    assert_eq!(std::fs::symlink_metadata(dir).unwrap().gid(), NOGROUP);

    // nobody's group is nogroup: a member.
    let out = d.run(
        Who::User(NOBODY, NOGROUP, &[]),
        &["sh", "-c", "echo member; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", s(&out.stderr));
    assert_eq!(s(&out.stdout), "member\n");

    // Outside the group: the file modes already stop it.
    let out = d.run(Who::User(STRANGER, STRANGER, &[]), &["true"]);
    assert_refused(&out, "uid 65533");

    // A process that holds the group only as a supplementary group passes
    // the file modes, but its user is no member: SO_PEERCRED refuses it.
    let out = d.run(Who::User(STRANGER, STRANGER, &[NOGROUP]), &["true"]);
    assert_refused(&out, "uid 65533 with nogroup as a supplementary group");

    let log = d.stop();
    assert!(
        log.contains("refused") && log.contains("uid 65533"),
        "the refusal is not logged: {log}"
    );
}

#[test]
fn vms_in_use_are_capped_per_client_and_in_total() {
    let d = Daemon::start(
        &root("caps"),
        &[
            "--group",
            "nogroup",
            "--max-per-client",
            "2",
            "--max-in-use",
            "3",
        ],
    );
    // Two VMs for root: its cap.
    let mut held = vec![d.hold(Who::Root), d.hold(Who::Root)];
    let out = d.run(Who::Root, &["echo", "third"]);
    assert_eq!(out.status.code(), Some(125), "{}", s(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", s(&out.stdout));
    let err = s(&out.stderr);
    assert!(
        err.contains("limit reached") && err.contains("uid 0") && err.contains("try again later"),
        "{err}"
    );

    // Another client still gets one, up to the total.
    let nobody = Who::User(NOBODY, NOGROUP, &[]);
    held.push(d.hold(nobody));
    let out = d.run(nobody, &["echo", "fourth"]);
    assert_eq!(out.status.code(), Some(125), "{}", s(&out.stderr));
    let err = s(&out.stderr);
    assert!(
        err.contains("limit reached") && err.contains("in total"),
        "{err}"
    );

    // A VM given back makes room again.
    let mut first = held.remove(0);
    first.kill().unwrap();
    first.wait().unwrap();
    let t0 = Instant::now();
    loop {
        let out = d.run(Who::Root, &["echo", "again"]);
        if out.status.code() == Some(0) {
            assert_eq!(s(&out.stdout), "again\n");
            break;
        }
        assert!(
            s(&out.stderr).contains("limit reached") && t0.elapsed() < Duration::from_secs(30),
            "{}",
            s(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for mut c in held {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    d.stop();
}
