//! The `ironclaw` command line, end to end, as a user runs it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod cli_support;

use cli_support::{ironclaw, pid_alive, recorded_pids, records_dirs, run, s, vm_dirs};

fn root(name: &str) -> PathBuf {
    cli_support::root("cli", name)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Starts `ironclaw run -- sh -c 'echo ready; sleep 100'` and waits for "ready".
fn start_long_run(runtime_root: &Path) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = ironclaw(runtime_root)
        .args(["run", "--", "sh", "-c", "echo ready; sleep 100"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, out)
}

#[test]
fn run_prints_output_and_exits_with_the_command_code() {
    let r = root("run");
    let out = run(
        &r,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "echo hello from $(uname -r); echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", s(&out.stderr));
    assert!(
        s(&out.stdout).starts_with("hello from 6."),
        "{}",
        s(&out.stdout)
    );
    assert_eq!(s(&out.stderr), "oops\n");
    assert!(
        vm_dirs(&r).is_empty(),
        "runtime files left: {:?}",
        vm_dirs(&r)
    );
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn run_cold_boots_without_a_prototype() {
    let r = root("cold");
    let out = run(
        &r,
        &["run", "--cold", "--", "sh", "-c", "echo cold; exit 4"],
    );
    assert_eq!(out.status.code(), Some(4), "stderr: {}", s(&out.stderr));
    assert_eq!(s(&out.stdout), "cold\n");
    assert!(vm_dirs(&r).is_empty());
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn prototype_subcommands() {
    let r = root("proto");
    let out = run(&r, &["prototype", "build"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    let key = s(&out.stdout).split('\t').next().unwrap().to_string();
    let list = run(&r, &["prototype", "list"]);
    assert!(s(&list.stdout).contains(&key), "{}", s(&list.stdout));
    let rm = run(&r, &["prototype", "rm", "no-such-key"]);
    assert_eq!(rm.status.code(), Some(125));
    assert!(s(&rm.stderr).contains("no prototype"), "{}", s(&rm.stderr));
}

#[test]
fn run_forwards_stdin_env_workdir_and_timeout() {
    let r = root("flags");
    let mut child = ironclaw(&r)
        .args([
            "run",
            "--env",
            "A=1",
            "-e",
            "B=two words",
            "--workdir",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $A $B $(pwd); tr a-z A-Z",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        s(&out.stdout),
        "1 two words /tmp\nPIPED IN\n",
        "stderr: {}",
        s(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    let out = run(&r, &["run", "--timeout", "1", "--", "sleep", "1000"]);
    assert_eq!(out.status.code(), Some(124), "stderr: {}", s(&out.stderr));
    assert!(s(&out.stderr).contains("timed out"), "{}", s(&out.stderr));
    assert!(vm_dirs(&r).is_empty());
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn bad_arguments_are_refused_before_a_vm_starts() {
    let r = root("bad");
    let out = run(&r, &["run", "--vcpus", "0", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(s(&out.stderr).contains("vcpus"), "{}", s(&out.stderr));
    let out = run(&r, &["run", "--mem", "1", "--", "true"]);
    assert!(s(&out.stderr).contains("memory_mib"), "{}", s(&out.stderr));
    let out = run(&r, &["run", "--env", "NOEQUALS", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(s(&out.stderr).contains("K=V"), "{}", s(&out.stderr));
    assert!(vm_dirs(&r).is_empty());
}

#[test]
fn ctrl_c_destroys_the_vm() {
    let r = root("sigint");
    let (mut child, _out) = start_long_run(&r);
    let pids = recorded_pids(&r);
    assert!(!pids.is_empty());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        pids.iter().all(|p| !pid_alive(*p)),
        "VM processes outlived ironclaw"
    );
    assert!(
        vm_dirs(&r).is_empty(),
        "runtime files left: {:?}",
        vm_dirs(&r)
    );
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn a_killed_orchestrator_leaves_nothing_running_and_is_reaped() {
    let r = root("sigkill");
    let (mut child, _out) = start_long_run(&r);
    let pids = recorded_pids(&r);
    assert!(!pids.is_empty());
    child.kill().unwrap(); // SIGKILL: no chance to clean up itself
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || pids
            .iter()
            .all(|p| !pid_alive(*p))),
        "VM processes outlived the killed orchestrator"
    );
    assert_eq!(
        vm_dirs(&r).len(),
        1,
        "the dead orchestrator's directory is still there to be reaped"
    );
    // The next orchestrator removes the leftover.
    let out = run(&r, &["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    assert!(
        vm_dirs(&r).is_empty(),
        "leftover not reaped: {:?}",
        vm_dirs(&r)
    );
    assert!(
        records_dirs(&r).is_empty(),
        "leftover records not removed: {:?}",
        records_dirs(&r)
    );
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn doctor_reports_the_choice() {
    let out = run(&root("doctor"), &["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stdout));
    let text = s(&out.stdout);
    // What `auto` picks on this host, asked of the library: Firecracker where it
    // and usable KVM exist, QEMU's microvm elsewhere (these machines).
    let expected = match ironclaw_orchestrator::vm::select::select(
        ironclaw_orchestrator::vm::config::BackendChoice::Auto,
    )
    .map(|b| b.kind())
    {
        Ok(ironclaw_orchestrator::vm::BackendKind::Firecracker) => "firecracker",
        _ => "qemu microvm",
    };
    let chosen = text
        .lines()
        .find(|l| l.contains("chosen"))
        .unwrap_or_else(|| panic!("no `chosen` line: {text}"));
    assert!(chosen.contains(expected), "expected {expected}: {text}");
    assert!(text.contains("kvm") && text.contains("usable"), "{text}");
    // The confinement every VMM gets.
    for check in ["seccomp", "jail", "cgroups"] {
        assert!(
            text.lines()
                .any(|l| l.contains(check) && l.starts_with("[ok")),
            "{text}"
        );
    }
    let json = run(&root("doctor"), &["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["chosen"].is_string());
}

#[test]
fn the_pool_daemon_serves_runs_and_cleans_up_when_stopped() {
    let r = root("pool");
    let socket = r.join("pool.sock");
    let mut daemon = ironclaw(&r)
        .args(["pool", "serve", "--size", "1", "--socket"])
        .arg(&socket)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || socket.exists()),
        "the daemon never listened"
    );
    let sock = socket.to_str().unwrap();
    for i in 0..2 {
        let out = run(
            &r,
            &[
                "run",
                "--pool",
                "--pool-socket",
                sock,
                "--",
                "sh",
                "-c",
                &format!("echo pooled {i}; exit 6"),
            ],
        );
        assert_eq!(out.status.code(), Some(6), "stderr: {}", s(&out.stderr));
        assert_eq!(s(&out.stdout), format!("pooled {i}\n"));
    }
    let mut child = ironclaw(&r)
        .args([
            "run",
            "--pool",
            "--pool-socket",
            sock,
            "--",
            "tr",
            "a-z",
            "A-Z",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"via the pool\n")
        .unwrap();
    assert_eq!(
        s(&child.wait_with_output().unwrap().stdout),
        "VIA THE POOL\n"
    );
    // Several windows of stdin and of output through the daemon, which
    // relays both within the protocol's per-stream credit.
    let mut child = ironclaw(&r)
        .args(["run", "--pool", "--pool-socket", sock, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.clone();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == data, "{} bytes came back", out.stdout.len());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) };
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    assert!(vm_dirs(&r).is_empty(), "left behind: {:?}", vm_dirs(&r));
    let out = run(&r, &["run", "--pool", "--pool-socket", sock, "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        s(&out.stderr).contains("ironclaw pool serve"),
        "{}",
        s(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn doctor_fails_when_nothing_can_run() {
    let out = ironclaw(&root("doctor-fail"))
        .args(["doctor", "--quick"])
        .env("IRONCLAW_QEMU", "/nonexistent/qemu-system-x86_64")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", s(&out.stdout));
    let text = s(&out.stdout);
    assert!(
        text.contains("FAIL") && text.contains("IRONCLAW_QEMU"),
        "{text}"
    );
    assert!(text.contains("nothing can run here"), "{text}");
}

/// `sudo -E ironclaw …` reads the cache of the user whose environment it
/// kept; the guest agent and snapshots come from there, so a cache that is
/// not root's own is refused before anything starts.
#[test]
fn a_cache_of_another_user_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the integration tests run as root (they start confined VMMs)"
    );
    let r = root("foreign-cache");
    let cache = tempfile::tempdir().unwrap();
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(cache.path(), Some(65534), Some(65534)).unwrap();
    let out = ironclaw(&r)
        .env("IRONCLAW_CACHE_DIR", cache.path())
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", s(&out.stderr));
    let err = s(&out.stderr);
    assert!(
        err.contains("cannot be trusted") && err.contains("65534"),
        "{err}"
    );
    assert!(
        vm_dirs(&r).is_empty(),
        "a VM was started: {:?}",
        vm_dirs(&r)
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&r);
}

/// A runtime root others can write to (here under a umask-000 mkdir) is
/// refused with an error naming it, before any VM starts.
#[test]
fn a_world_writable_runtime_root_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let r = root("writable");
    std::fs::create_dir(&r).unwrap();
    std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&r, &["run", "--", "true"]);
    let err = s(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&*r.to_string_lossy()), "{err}");
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(vm_dirs(&r).is_empty() && records_dirs(&r).is_empty());
    let _ = std::fs::remove_dir_all(&r);
}

/// The disk holding the cache fills up while the initramfs (an image the
/// guest boots) or the prototype snapshot is written: a clear error, and
/// nothing partial left that a later run could take as valid.
#[test]
fn a_full_disk_fails_cache_writes_cleanly() {
    let kernel = ironclaw_orchestrator::boot::kernel::default_kernel().unwrap();
    for (size, what) in [("4m", "initramfs"), ("40m", "prototype snapshot")] {
        let disk = cli_support::Tmpfs::mount(&format!("cache-{size}"), size);
        let cache = disk.path.join("cache");
        let rt = root(&format!("disk-{size}"));
        let out = ironclaw(&rt)
            .env("IRONCLAW_CACHE_DIR", &cache)
            // The kernel is built into the real cache, not this one.
            .env("IRONCLAW_KERNEL", &kernel)
            .args(["run", "--no-image", "--", "true"])
            .output()
            .unwrap();
        let err = s(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{what}: {err}");
        assert!(err.contains("No space left on device"), "{what}: {err}");
        let mut kept: Vec<String> = walk(&cache)
            .into_iter()
            .map(|p| p.strip_prefix(&cache).unwrap().display().to_string())
            .collect();
        kept.sort();
        // Only complete files: the initramfs if it fitted, lock files, and
        // the records of what QEMU can do and of the initramfs' key (each
        // written whole or not at all).
        for k in &kept {
            let complete_initramfs =
                size != "4m" && k.starts_with("initramfs-") && k.ends_with(".cpio");
            let record = std::fs::read_to_string(cache.join(k)).unwrap_or_default();
            let probe_record = (k.starts_with("probes/qemu-memory-")
                && ["rom", "no-rom"].contains(&record.as_str()))
                || (k.starts_with("probes/initramfs-key-")
                    && record.len() == 24
                    && record.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(
                complete_initramfs || probe_record || k.ends_with(".lock"),
                "{what}: {k} left in the cache: {kept:?}"
            );
        }
        assert!(vm_dirs(&rt).is_empty(), "{what}: a VM directory left");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
