//! Confinement of the VMM processes (vm::seccomp, vm::jail, vm::cgroup),
//! checked from the host on real processes: what the kernel reports in
//! /proc, what a process under the same filter may and may not do, and how
//! limits behave.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{pid_alive, runtime, sh, text};
use ironclaw_orchestrator::vm::jail::{self, Bind, JailSpec};
use ironclaw_orchestrator::vm::seccomp::{
    self, AuditLog, ProcessKind, SeccompFilter, SeccompLevel,
};
use ironclaw_orchestrator::vm::{self, VmConfig, VmError};

const PROBE: &str = env!("CARGO_BIN_EXE_ironclaw-syscall-probe");

fn config(id: &str) -> VmConfig {
    runtime(); // sets the private runtime root
    vm::default_config(id).expect("default config (run scripts/setup.sh first)")
}

fn field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

fn netns(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
}

#[test]
fn vmm_processes_run_filtered_in_their_own_namespaces_and_cgroup() {
    let vm = runtime().block_on(vm::spawn_vm("confined")).unwrap();
    let procs = vm.confinement();
    let names: Vec<_> = procs.iter().map(|p| p.process).collect();
    assert_eq!(names, ["vhost-device-vsock", "qemu-system-x86_64"]);
    let mut cgroups = Vec::new();
    for p in &procs {
        let pid = p.pid;
        // The kernel's own account, not ours.
        assert_eq!(field(pid, "Seccomp:"), "2", "{}", p.process);
        assert_eq!(field(pid, "NoNewPrivs:"), "1", "{}", p.process);
        // Ours (3) plus, for QEMU, the one its -sandbox adds after start;
        // for vhost-device-vsock, which has none, our exec-once program.
        assert_eq!(field(pid, "Seccomp_filters:"), "4", "{}", p.process);
        // The VMM's file system is the minimal root: /usr, a few devices and
        // files, /proc, /sys and its own runtime directory; no /root, /home,
        // /tmp, /boot or the orchestrator's cache.
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let mut top: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        for entry in &top {
            assert!(
                [
                    "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin",
                    "sys", "tmp", "usr"
                ]
                .contains(&entry.as_str()),
                "{}: unexpected /{entry} in its root: {top:?}",
                p.process
            );
        }
        for hidden in ["root", "home", "boot", "var", "tmp/ironclaw-test"] {
            assert!(
                !root.join(hidden).exists(),
                "{}: /{hidden} is visible",
                p.process
            );
        }
        assert!(root
            .join(vm.runtime_dir().strip_prefix("/").unwrap())
            .join("console.log")
            .exists());
        let etc: Vec<_> = std::fs::read_dir(root.join("etc"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(etc.len() <= 2, "{}: /etc holds {etc:?}", p.process);
        let uid = field(pid, "Uid:");
        assert!(!uid.starts_with("0\t"), "{} runs as root: {uid}", p.process);
        assert_eq!(field(pid, "CapEff:"), "0000000000000000", "{}", p.process);
        // Own network namespace, holding nothing but a loopback that is down.
        assert_ne!(netns(&pid.to_string()), netns("self"), "{}", p.process);
        let links = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["ip", "-o", "link"])
            .output()
            .unwrap();
        let links = text(&links.stdout);
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains(": lo:") && !links.contains("UP"), "{links}");
        // Own PID namespace: it is PID 1 there.
        assert_eq!(field(pid, "NSpid:").split_whitespace().last(), Some("1"));
        // In the VM's cgroup, with the limits from the config.
        assert_eq!(p.cgroup.len(), 3, "memory, cpu and pids (cgroup v1 here)");
        for dir in &p.cgroup {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == pid.to_string()),
                "{pid} not in {}",
                dir.display()
            );
        }
        cgroups.extend(p.cgroup.clone());
    }
    let limits = config("x").limits();
    let mem_dir = cgroups
        .iter()
        .find(|d| d.to_string_lossy().contains("/memory/"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(mem_dir.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (u64::from(limits.memory_mib) << 20).to_string()
    );
    let pids_dir = cgroups
        .iter()
        .find(|d| d.to_string_lossy().contains("/pids/"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(pids_dir.join("pids.max"))
            .unwrap()
            .trim(),
        limits.pids.to_string()
    );
    // Confined, it still does its job: vsock traffic both ways.
    let out = sh(&vm, "echo through-vsock; echo err >&2");
    assert_eq!(text(&out.stdout), "through-vsock\n");
    let pids = vm.pids();
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
    for p in pids {
        assert!(!pid_alive(p), "{p} outlived its VM");
    }
    for d in cgroups {
        assert!(!d.exists(), "cgroup {} outlived its VM", d.display());
    }
}

/// Runs the probe under `spec`; returns (stdout, signal that killed it).
fn probe(spec: JailSpec, args: &[&str]) -> (String, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = Command::new(PROBE);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    let c = jail::spawn(cmd, spec, "probe").unwrap();
    let out = c.child.wait_with_output().unwrap();
    (text(&out.stdout).trim().to_string(), out.status.signal())
}

fn filtered(kind: ProcessKind, level: SeccompLevel) -> JailSpec {
    JailSpec {
        seccomp: Some(SeccompFilter::new(kind, level, false).unwrap()),
        ..Default::default()
    }
}

#[test]
fn a_process_under_the_filter_is_killed_on_denied_calls_and_allowed_the_rest() {
    for kind in [ProcessKind::Qemu, ProcessKind::VhostVsock] {
        let run = |call: &str| probe(filtered(kind, SeccompLevel::Strict), &[call]);
        // Allowed calls work.
        assert_eq!(run("getpid").1, None, "{kind:?}");
        assert!(run("getpid").0.starts_with("ok "), "{kind:?}");
        assert!(run("socket-unix").0.starts_with("ok "), "{kind:?}");
        // The never set and IP sockets kill the process (SIGSYS).
        for call in ["socket-inet", "socket-inet6", "ptrace", "mount"] {
            let (out, sig) = run(call);
            assert_eq!(sig, Some(libc::SIGSYS), "{kind:?} {call}: {out}");
            assert_eq!(out, "", "{kind:?} {call} returned");
        }
        // Anything else unlisted is refused with EPERM, namespaces included.
        assert_eq!(run("getppid"), ("err 1".to_string(), None), "{kind:?}");
        assert_eq!(
            run("clone-newuser"),
            ("err 1".to_string(), None),
            "{kind:?}"
        );
        // Threads, always.
        assert_eq!(run("thread"), ("ok 7".to_string(), None), "{kind:?}");
    }
    // vhost-device-vsock has no filter of its own to stack (QEMU's
    // `-sandbox spawn=deny` refuses new processes inside QEMU): ours allows
    // it threads only, never a new process.
    let vhost = |call: &str| {
        probe(
            filtered(ProcessKind::VhostVsock, SeccompLevel::Strict),
            &[call],
        )
    };
    assert_eq!(vhost("fork"), ("err 1".to_string(), None));
    // QEMU with KVM: ioctls of KVM's family only (EBADF: the filter let it
    // through to the kernel), no other ioctl; under TCG none at all.
    let qemu_kvm = |call: &str| {
        let spec = JailSpec {
            seccomp: Some(
                SeccompFilter::new(ProcessKind::Qemu, SeccompLevel::Strict, true).unwrap(),
            ),
            ..Default::default()
        };
        probe(spec, &[call])
    };
    assert_eq!(qemu_kvm("ioctl-kvm"), ("err 9".to_string(), None));
    assert_eq!(qemu_kvm("ioctl-tty"), ("err 1".to_string(), None));
    let qemu_tcg = |call: &str| probe(filtered(ProcessKind::Qemu, SeccompLevel::Strict), &[call]);
    assert_eq!(qemu_tcg("ioctl-kvm"), ("err 1".to_string(), None));
    // And it may exec once, to start (the probe ran), never again.
    assert_eq!(vhost("exec"), ("err 1".to_string(), None));
    // Under our filter alone, QEMU's exec would go through (QEMU's own
    // `-sandbox spawn=deny` refuses it once QEMU runs): `true` exits 0, silent.
    assert_eq!(
        probe(filtered(ProcessKind::Qemu, SeccompLevel::Strict), &["exec"]),
        (String::new(), None)
    );
    // The same under the whole jail (namespaces, uid change, no_new_privs),
    // as a jail uid leased for a VM directory of a scratch runtime root.
    let scratch = tempfile::tempdir().unwrap();
    let probe_dir =
        ironclaw_orchestrator::vm::runtime::RuntimeDir::create(scratch.path(), "probe").unwrap();
    let ids = jail::vm_ids(&probe_dir, None).unwrap();
    let jailed = |call: &str| {
        probe(
            JailSpec {
                namespaces: true,
                ids: Some(ids),
                ..filtered(ProcessKind::Qemu, SeccompLevel::Strict)
            },
            &[call],
        )
    };
    assert!(jailed("socket-unix").0.starts_with("ok "));
    assert_eq!(jailed("socket-inet").1, Some(libc::SIGSYS));
    // PID 1 of its own namespace.
    assert_eq!(jailed("getpid").0, "ok 1");
}

#[test]
fn audit_level_logs_instead_of_killing_but_still_refuses_the_never_set() {
    let dir = std::env::temp_dir().join(format!("ironclaw-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log =
        Arc::new(AuditLog::new("audit-vm", Some(&dir.join(seccomp::AUDIT_FILE)), 64, 100).unwrap());
    let run = |call: &str| {
        let mut cmd = Command::new(PROBE);
        cmd.arg(call).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut c = jail::spawn(
            cmd,
            filtered(ProcessKind::Qemu, SeccompLevel::Audit),
            "probe",
        )
        .unwrap();
        let listener = c
            .audit_listener
            .take()
            .expect("audit level hands over a listener");
        let supervisor = seccomp::supervise(listener, "probe", log.clone()).unwrap();
        let out = c.child.wait_with_output().unwrap();
        // The supervisor ends when no task uses the filter any more.
        supervisor.join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        (text(&out.stdout).trim().to_string(), out.status.signal())
    };
    // Unlisted: logged and allowed.
    assert!(run("getppid").0.starts_with("ok "));
    let e = log.entries();
    let last = e.last().unwrap();
    assert_eq!(
        (last.vm.as_str(), last.syscall.as_str(), last.refused),
        ("audit-vm", "getppid", false)
    );
    // Never set: logged and refused, not killed.
    assert_eq!(run("socket-inet"), ("err 1".to_string(), None));
    let last = log.entries().last().unwrap().clone();
    assert_eq!((last.syscall.as_str(), last.refused), ("socket", true));
    assert_eq!(run("ptrace"), ("err 1".to_string(), None));
    // So is a clone that makes namespaces (a new user namespace here).
    assert_eq!(run("clone-newuser"), ("err 1".to_string(), None));
    let last = log.entries().last().unwrap().clone();
    assert_eq!((last.syscall.as_str(), last.refused), ("clone", true));

    // A flood stays within the bounds: 64 entries in memory, 100 lines on disk.
    let before = log.total();
    assert!(run("flood").0.starts_with("ok ")); // 1000 calls
    let (out, _) = {
        let mut cmd = Command::new(PROBE);
        cmd.args(["flood", "20000"]).stdout(Stdio::piped());
        let mut c = jail::spawn(
            cmd,
            filtered(ProcessKind::Qemu, SeccompLevel::Audit),
            "probe",
        )
        .unwrap();
        let s = seccomp::supervise(c.audit_listener.take().unwrap(), "probe", log.clone()).unwrap();
        let out = c.child.wait_with_output().unwrap();
        s.join().unwrap();
        (text(&out.stdout), out.status)
    };
    assert!(out.starts_with("ok "), "{out}");
    assert!(log.total() >= before + 21_000, "total {}", log.total());
    assert_eq!(log.entries().len(), 64);
    let file = std::fs::read_to_string(dir.join(seccomp::AUDIT_FILE)).unwrap();
    assert_eq!(file.lines().count(), 101, "100 entries and the 'full' note");
    assert!(file.len() < 100 * 200, "{} bytes", file.len());
    assert!(file
        .lines()
        .next()
        .unwrap()
        .starts_with("vm=audit-vm process=probe "));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_vm_in_audit_level_boots_and_works() {
    let mut c = config("audit");
    c.confinement.seccomp = SeccompLevel::Audit;
    let vm = runtime()
        .block_on(vm::spawn_vm_with_config("audit", &c))
        .unwrap();
    assert_eq!(text(&sh(&vm, "echo audited").stdout), "audited\n");
    let log = vm.audit_log().expect("an audit log");
    assert!(log.path().unwrap().starts_with(vm.runtime_dir()));
    // The allowlists were traced from these very processes: nothing unlisted.
    assert!(
        log.entries().iter().all(|e| e.vm == "audit"),
        "{:?}",
        log.entries()
    );
    assert_eq!(log.total(), 0, "unlisted calls: {:?}", log.entries());
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
}

#[test]
fn a_failing_jail_step_stops_the_spawn_and_names_the_step() {
    let err = jail::spawn(
        Command::new(PROBE),
        JailSpec {
            namespaces: true,
            binds: vec![Bind {
                what: "kernel",
                source: "/nonexistent/kernel".into(),
                target: "/nonexistent/target".into(),
                exec: false,
            }],
            ..filtered(ProcessKind::Qemu, SeccompLevel::Strict)
        },
        "probe",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bind-mounting the boot files"), "{msg}");
    assert!(matches!(
        err,
        jail::JailError::Step {
            step: jail::JailStep::BindBootFiles,
            ..
        }
    ));
}

#[test]
fn a_memory_limit_below_what_the_vm_needs_fails_cleanly() {
    let mut c = config("too-little");
    c.confinement.memory_limit_mib = Some(40);
    let err = runtime()
        .block_on(vm::spawn_vm_with_config("too-little", &c))
        .err()
        .expect("a VM cannot run in 40 MiB");
    let msg = err.to_string();
    assert!(msg.contains("memory limit of 40 MiB"), "{msg}");
    assert!(
        matches!(err, VmError::Qemu(_) | VmError::BootFailed { .. }),
        "{err:?}"
    );
    assert!(!common::test_root().join("too-little").exists());
    let leftover = std::fs::read_dir("/sys/fs/cgroup/pids/ironclaw")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("too-little-"))
        })
        .unwrap_or(false);
    assert!(!leftover, "the VM's cgroup outlived it");
}

/// A fork bomb inside the guest makes guest processes, which are not host
/// processes: what this shows is that the host side stays bounded (the VM's
/// cgroup keeps its handful of threads under pids.max) and the host can still
/// start processes, and that the VM can be destroyed afterwards.
#[test]
fn a_guest_fork_bomb_leaves_the_host_alone() {
    let mut c = config("bomb");
    c.confinement.pids_limit = Some(64);
    let vm = runtime()
        .block_on(vm::spawn_vm_with_config("bomb", &c))
        .unwrap();
    let pids_dir = vm.confinement()[0]
        .cgroup
        .iter()
        .find(|d| d.to_string_lossy().contains("/pids/"))
        .unwrap()
        .clone();
    let current = || -> u32 {
        std::fs::read_to_string(pids_dir.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = current();
    let mut req = vm::exec_request(["sh", "-c", "b() { b | b & }; b; sleep 100"]);
    req.timeout_ms = Some(4000);
    let _ = runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(20), vm.agent().run(req, None)).await
    });
    let after = current();
    assert!(after <= 64, "pids.current {after} above pids.max");
    assert!(
        after <= before + 8,
        "host threads grew from {before} to {after}"
    );
    assert!(
        Command::new("true").status().unwrap().success(),
        "host cannot fork"
    );
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
    assert!(!pids_dir.exists());
}

#[test]
fn empty_leftover_cgroups_are_reaped_once_old_enough() {
    use ironclaw_orchestrator::vm::cgroup::{self, Limits, VmCgroup};
    let layout = cgroup::Layout::detect().unwrap();
    let name = format!("leftover-{}", std::process::id());
    let limits = Limits {
        memory_mib: 64,
        cpu_millis: 1000,
        pids: 16,
    };
    let cg = VmCgroup::create(&layout, &name, limits).unwrap();
    let dirs = cg.dirs();
    // As if its orchestrator died and its runtime directory was removed.
    std::mem::forget(cg);
    let ours = |n: &str| n == name;
    assert!(cgroup::reap_empty(&layout, Duration::from_secs(3600), ours).is_empty());
    assert!(
        dirs.iter().all(|d| d.exists()),
        "a young cgroup was removed"
    );
    let reaped = cgroup::reap_empty(&layout, Duration::ZERO, ours);
    assert_eq!(reaped.len(), dirs.len());
    assert!(dirs.iter().all(|d| !d.exists()));
}

/// A jailed QEMU with `-accel kvm` can open `/dev/kvm` when the device is
/// its group's only (Debian: `root:kvm 0660`): it keeps that one group.
/// Before, every group was dropped and QEMU failed with "Could not access
/// KVM kernel module: Permission denied". (This host's KVM then stops the
/// guest early, in its own way; a host with VT-x/AMD-V boots it.)
#[test]
fn a_jailed_qemu_can_open_dev_kvm() {
    use std::os::unix::fs::MetadataExt;
    let Ok(kvm) = std::fs::metadata("/dev/kvm") else {
        println!("skipped: a_jailed_qemu_can_open_dev_kvm: no /dev/kvm on this host");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ironclaw"))
        .env("IRONCLAW_RUNTIME_DIR", root.path())
        .args([
            "run",
            "--cold",
            "--accel",
            "kvm",
            "--boot-timeout",
            "20",
            "--no-image",
        ])
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        !err.contains("Could not access KVM kernel module"),
        "/dev/kvm mode {:o} gid {}: {err}",
        kvm.mode() & 0o777,
        kvm.gid()
    );
}
