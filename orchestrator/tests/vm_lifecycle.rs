//! Spawning and destroying real VMs: refusal before start, cleanup, isolation
//! between VMs, boot failures.

mod common;

use std::time::Duration;

use common::{pid_alive, runtime, sh, test_root, text};
use ironclaw_orchestrator::vm::{self, VmConfig, VmError};

fn default_config() -> VmConfig {
    runtime(); // sets the private runtime root
    vm::default_config("cfg").expect("default config (run scripts/setup.sh first)")
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn invalid_config_is_refused_before_anything_starts() {
    let base = default_config();
    let cases: Vec<(&str, VmConfig)> = vec![
        (
            "enable_networking",
            VmConfig {
                enable_networking: true,
                ..base.clone()
            },
        ),
        (
            "vcpus",
            VmConfig {
                vcpus: 0,
                ..base.clone()
            },
        ),
        (
            "memory_mib",
            VmConfig {
                memory_mib: 1 << 30,
                ..base.clone()
            },
        ),
        (
            "kernel",
            VmConfig {
                kernel: "/nonexistent/vmlinuz".into(),
                ..base.clone()
            },
        ),
        (
            "initramfs",
            VmConfig {
                initramfs: "/nonexistent/initrd".into(),
                ..base.clone()
            },
        ),
    ];
    for (field, cfg) in cases {
        let err = runtime()
            .block_on(vm::spawn_vm_with_config("refused", &cfg))
            .err()
            .expect("must be refused");
        match err {
            VmError::Config(e) => assert_eq!(e.field, field),
            other => panic!("{field}: expected a config error, got {other}"),
        }
        assert!(
            !test_root().join("refused").exists(),
            "{field}: a runtime directory was created"
        );
    }
    for bad_id in ["../escape", "", "a/b", &"x".repeat(65)] {
        let err = runtime()
            .block_on(vm::spawn_vm_with_config(bad_id, &base))
            .err()
            .expect("bad id refused");
        assert!(
            matches!(err, VmError::Config(ref e) if e.field == "id"),
            "{bad_id:?}: {err}"
        );
        let err = runtime()
            .block_on(vm::spawn_vm(bad_id))
            .err()
            .expect("bad id refused");
        assert!(
            matches!(err, VmError::Config(ref e) if e.field == "id"),
            "{bad_id:?}: {err}"
        );
    }
}

#[test]
fn destroy_leaves_nothing_behind() {
    let vm = runtime().block_on(vm::spawn_vm("destroy-me")).unwrap();
    let pids = vm.pids();
    let dir = vm.runtime_dir();
    // qemu and vhost-device-vsock, each with the reaper holding its PID namespace.
    assert_eq!(
        pids.len(),
        4,
        "qemu and vhost-device-vsock and their reapers"
    );
    assert!(pids.iter().all(|p| pid_alive(*p)));
    assert!(dir.join("vsock.sock").exists());
    assert!(vm.timings.total > Duration::ZERO && vm.timings.total >= vm.timings.boot);
    assert_eq!(text(&sh(&vm, "echo up").stdout), "up\n");
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
    for p in pids {
        assert!(!pid_alive(p), "process {p} outlived its VM");
    }
    assert!(!dir.exists(), "{} outlived its VM", dir.display());
}

/// A booted VM's kernel has its CRNG seeded by the host before the first
/// command: its input pool is full (256 bits). Without the seed it holds a
/// bit or two here, and a blocking `getrandom` (Python's start-up, OpenSSL)
/// spins in the kernel's jitter fallback, under TCG for minutes.
#[test]
fn a_booted_vm_has_its_randomness_seeded() {
    let vm = runtime().block_on(vm::spawn_vm("seeded")).unwrap();
    let pool = sh(&vm, "cat /proc/sys/kernel/random/entropy_avail");
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
    assert_eq!(text(&pool.stdout).trim(), "256");
}

#[test]
fn two_vms_at_once_stay_separate() {
    let (a, b) =
        runtime().block_on(async { tokio::join!(vm::spawn_vm("sep-a"), vm::spawn_vm("sep-b")) });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.runtime_dir(), b.runtime_dir());
    assert!(a.pids().iter().all(|p| !b.pids().contains(p)));
    assert_eq!(sh(&a, "echo secret-a > /tmp/marker").status.code, Some(0));
    let seen = sh(&b, "cat /tmp/marker");
    assert_ne!(
        seen.status.code,
        Some(0),
        "VM b sees VM a's file: {}",
        text(&seen.stdout)
    );
    assert_eq!(text(&sh(&a, "cat /tmp/marker").stdout), "secret-a\n");
    // The same id cannot run twice.
    let dup = runtime()
        .block_on(vm::spawn_vm("sep-a"))
        .err()
        .expect("duplicate id refused");
    assert!(matches!(dup, VmError::AlreadyRunning(_)), "{dup}");
    assert!(
        a.runtime_dir().exists(),
        "the refused duplicate removed the running VM's directory"
    );
    runtime().block_on(async {
        vm::destroy_vm(a).await.unwrap();
        vm::destroy_vm(b).await.unwrap();
    });
}

#[test]
fn boot_timeout_is_an_error_with_the_console_and_cleans_up() {
    // Debian's kernel: the microVM kernel can reach its agent within the
    // shortest boot timeout allowed (1 s); Debian's takes about 2 s under TCG.
    let kernel = ironclaw_orchestrator::boot::kernel::debian_kernel().unwrap();
    let initramfs = ironclaw_orchestrator::boot::initramfs::default_initramfs(&kernel).unwrap();
    let cfg = VmConfig {
        boot_timeout_ms: 1000,
        kernel,
        initramfs,
        ..default_config()
    };
    let err = runtime()
        .block_on(vm::spawn_vm_with_config("too-slow", &cfg))
        .err()
        .expect("1 s cannot boot Debian's kernel under TCG");
    match &err {
        VmError::BootTimeout { timeout_ms, .. } => assert_eq!(*timeout_ms, 1000),
        other => panic!("expected a boot timeout, got {other}"),
    }
    assert!(err.to_string().contains("serial console"), "{err}");
    assert!(!test_root().join("too-slow").exists());
}

#[test]
fn a_kernel_that_cannot_boot_fails_fast() {
    // Any file is accepted by validation; QEMU refuses a non-kernel at once.
    let not_a_kernel = std::env::current_exe().unwrap();
    let cfg = VmConfig {
        kernel: not_a_kernel,
        ..default_config()
    };
    let err = runtime()
        .block_on(vm::spawn_vm_with_config("bad-kernel", &cfg))
        .err()
        .expect("must fail");
    assert!(
        matches!(err, VmError::Qemu(_) | VmError::BootFailed { .. }),
        "expected a backend failure, got {err}"
    );
    assert!(!test_root().join("bad-kernel").exists());
    assert!(entries(&test_root()).iter().all(|e| e != "bad-kernel"));
}

#[test]
fn a_custom_vsock_path_is_refused_in_the_jail_and_cleaned_up_without_it() {
    let outside = tempfile::tempdir().unwrap();
    let uds = outside.path().join("agent.sock");
    let mut cfg = default_config();
    cfg.vsock.uds_path = Some(uds.clone());
    // The jailed vsock device sees only the runtime directory: refused up front.
    let err = runtime()
        .block_on(vm::spawn_vm_with_config("custom-uds-jailed", &cfg))
        .err()
        .expect("refused under the jail");
    assert!(
        matches!(err, VmError::Config(ref e) if e.field == "vsock.uds_path"),
        "{err}"
    );
    assert!(!test_root().join("custom-uds-jailed").exists());

    cfg.confinement.jail = false;
    let vm = runtime()
        .block_on(vm::spawn_vm_with_config("custom-uds", &cfg))
        .unwrap();
    assert_eq!(text(&sh(&vm, "echo up").stdout), "up\n");
    assert!(uds.exists());
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
    assert_eq!(
        entries(outside.path()),
        Vec::<String>::new(),
        "sockets outside the runtime directory outlived the VM"
    );
}

/// A `sleep` child of this test: a live host process that is no VM's.
struct Bystander(std::process::Child);

impl Bystander {
    fn start() -> Bystander {
        Bystander(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    /// Its start time, as a record of the orchestrator would give it.
    fn started(&self) -> u64 {
        vm::process::start_time(self.pid()).expect("the bystander is running")
    }
    /// Alive (not even a zombie: it was not killed).
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes `path`'s modification time 5 minutes old: a leftover, not a
/// directory being created right now.
fn age(path: &std::path::Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(300);
    std::fs::File::open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// Hostile guest (issue 15, hole 1): an escaped VMM can write in its own
/// runtime directory (mode 1770, group = its jail gid). Records planted
/// there (pids with their start times, a chroot, cgroups) after its
/// orchestrator died must not make the next orchestrator kill a host
/// process or remove directories that are not the VM's.
#[test]
fn records_planted_in_a_vm_directory_are_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("run");
    let id = "planted";
    // The directory as a real VM would leave it, then what the VMM writes.
    let dir = vm::runtime::RuntimeDir::create(&root, id).unwrap();
    let vm_dir = dir.path().to_path_buf();
    std::mem::forget(dir);
    let mut bystander = Bystander::start();
    std::fs::write(vm_dir.join("owner"), "999999999 1\n").unwrap();
    std::fs::write(vm_dir.join("pids"), format!("{}\n", bystander.pid())).unwrap();
    std::fs::write(
        vm_dir.join("pids-started"),
        format!("{} {}\n", bystander.pid(), bystander.started()),
    )
    .unwrap();
    // A chroot-shaped directory that is not this VM's chroot.
    let victim = tmp.path().join("srv/jailer/firecracker").join(id);
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious"), "data").unwrap();
    std::fs::write(vm_dir.join("chroot"), format!("{}\n", victim.display())).unwrap();
    // A cgroup shaped like a VM's that belongs to another VM.
    let layout = vm::cgroup::Layout::detect().expect("cgroups (run as root)");
    let limits = vm::cgroup::Limits {
        memory_mib: 64,
        cpu_millis: 100,
        pids: 4,
    };
    let name = format!("planted-victim-{}", std::process::id());
    let mut other = vm::cgroup::VmCgroup::create(&layout, &name, limits).unwrap();
    let text: String = other
        .dirs()
        .iter()
        .map(|d| format!("{}\n", d.display()))
        .collect();
    std::fs::write(vm_dir.join("cgroups"), text).unwrap();
    // Its orchestrator's own records (where they are kept) say it is dead.
    let records = vm::runtime::records_dir(&root, id);
    std::fs::write(records.join("owner"), "999999999 1\n").unwrap();
    age(&records);
    age(&vm_dir);

    let reaped = vm::runtime::reap_stale(&root);
    assert!(bystander.alive(), "a planted pid was killed");
    assert!(
        victim.join("precious").exists(),
        "a planted chroot was removed"
    );
    for d in other.dirs() {
        assert!(d.is_dir(), "a planted cgroup {} was removed", d.display());
    }
    // The leftover itself is still cleaned up.
    assert_eq!(reaped, [id.to_string()]);
    assert!(!vm_dir.exists());
    assert!(!records.exists());
    other.remove().unwrap();
}

/// Even the orchestrator's own records are not enough to kill a process:
/// it must still be in the VM's recorded cgroup (a pid and start time could
/// name a process that has left it, or the records could be forged), while
/// one that is in it is killed and the cgroup removed.
#[test]
fn reaping_kills_only_processes_in_the_vms_cgroup() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("run");
    let id = "cgroup-check";
    let dir = vm::runtime::RuntimeDir::create(&root, id).unwrap();
    let layout = vm::cgroup::Layout::detect().expect("cgroups (run as root)");
    let limits = vm::cgroup::Limits {
        memory_mib: 64,
        cpu_millis: 100,
        pids: 4,
    };
    let name = format!("reap-check-{}", std::process::id());
    let mut cgroup = vm::cgroup::VmCgroup::create(&layout, &name, limits).unwrap();
    dir.record_cgroups(&cgroup.dirs()).unwrap();
    let mut outside = Bystander::start();
    let mut member = Bystander::start();
    for d in cgroup.dirs() {
        std::fs::write(d.join("cgroup.procs"), member.pid().to_string()).unwrap();
    }
    dir.record_pid_started(outside.pid() as u32).unwrap();
    dir.record_pid_started(member.pid() as u32).unwrap();
    let records = dir.records_dir().to_path_buf();
    let vm_dir = dir.path().to_path_buf();
    // The orchestrator dies without cleaning up.
    std::mem::forget(dir);
    std::fs::write(records.join("owner"), "999999999 1\n").unwrap();

    let reaped = vm::runtime::reap_stale(&root);
    assert_eq!(reaped, [id.to_string()]);
    assert!(
        outside.alive(),
        "a process outside the VM's cgroup was killed"
    );
    assert!(!member.alive(), "the VM's process survived reaping");
    assert!(cgroup.dirs().iter().all(|d| !d.exists()), "cgroup left");
    assert!(!vm_dir.exists() && !records.exists());
    let _ = cgroup.remove();
}

/// The vsock device process (vhost-device-vsock) killed mid-exec and
/// mid-download: both requests fail promptly with an error, and destroying
/// the VM leaves nothing behind.
#[test]
fn a_killed_vsock_device_fails_requests_promptly_and_cleans_up() {
    use std::time::Instant;
    let vm = runtime().block_on(vm::spawn_vm("vsock-killed")).unwrap();
    let (pids, dir) = (vm.pids(), vm.runtime_dir());
    sh(&vm, "head -c 67108864 /dev/zero > /root/big");
    let device: Vec<i32> = pids
        .iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("vhost-device-vsock"))
                .unwrap_or(false)
        })
        .map(|p| *p as i32)
        .collect();
    assert!(!device.is_empty(), "no vhost-device-vsock among {pids:?}");
    let (exec, download, t0) = runtime().block_on(async {
        let agent = vm.agent().clone();
        let exec = tokio::spawn(async move {
            agent
                .run(vm::exec_request(["sleep", "60"]), None)
                .await
                .map(|o| format!("{:?}", o.status))
        });
        let agent = vm.agent().clone();
        let download = tokio::spawn(async move {
            // A reader that takes its time, so the transfer is under way.
            let (mut rx, tx) = tokio::io::simplex(64 << 10);
            let reading = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(1..) = tokio::io::AsyncReadExt::read(&mut rx, &mut buf).await {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let mut tx = tx;
            let got = agent.get("/root/big", &mut tx).await;
            reading.abort();
            got.map(|(_, n)| format!("{n} bytes"))
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for pid in &device {
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }

        (exec, download, Instant::now())
    });
    let (exec, download) = runtime().block_on(async {
        let limit = Duration::from_secs(30);
        (
            tokio::time::timeout(limit, exec).await,
            tokio::time::timeout(limit, download).await,
        )
    });
    let exec = exec.expect("the exec hung after its device died").unwrap();
    let download = download
        .expect("the download hung after its device died")
        .unwrap();
    assert!(exec.is_err(), "the exec ended well: {exec:?}");
    assert!(download.is_err(), "the download ended well: {download:?}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
    for p in pids {
        assert!(!pid_alive(p), "process {p} outlived its VM");
    }
    assert!(!dir.exists(), "{} outlived its VM", dir.display());
}
