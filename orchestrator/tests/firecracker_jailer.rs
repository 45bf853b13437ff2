//! Firecracker launched through its `jailer`, against a fake jailer.
//!
//! Neither Firecracker nor its jailer can run on the development machines.
//! The fake jailer here is a shell script that does, for the parts the
//! orchestrator relies on, what the jailer documents (docs/jailer.md of
//! Firecracker): it parses and records its argv, refuses `--no-seccomp`,
//! expects the chroot `<base>/<exec name>/<id>/root` prepared by the caller,
//! copies the exec file into it, creates the cgroups `<controller
//! mount>/<parent cgroup>/<id>` with the `--cgroup` values and joins them,
//! checks the `--netns` path, and execs the "firecracker" (a sleeping
//! script), keeping its pid. A hyper server bound at the chroot's
//! `/run/firecracker.socket` plays Firecracker's API: it checks every request
//! against `tests/data/firecracker-api.json` (the repository's description of
//! the Firecracker API it uses) and that the
//! files named in requests exist *inside the chroot*.
//!
//! The namespace and cgroup steps are real and need root, as the rest of
//! the suite does; without it the tests that launch fail, saying so.

mod fc_support;
use fc_support::*;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ironclaw_orchestrator::vm::backend::{Hypervisor, LaunchPurpose, LiveCopy, VmInstance};
use ironclaw_orchestrator::vm::firecracker::{
    self, jailer, FirecrackerBackend, FirecrackerError, FirecrackerOptions, JailerConfig,
    SnapshotFiles, Stopped, MEMORY_FILE, VMSTATE_FILE,
};
use ironclaw_orchestrator::vm::runtime::{self, RuntimeDir};
use ironclaw_orchestrator::vm::VmConfig;
use serde_json::json;

// ---- the fake jailer --------------------------------------------------------

// The fake jailer is `fc_support::FAKE_JAILER`.

// ---- the fake Firecracker API -------------------------------------------------

// The fake API is `fc_support::FakeFirecracker`, serving each VM at its
// chroot's API socket (`Fixture::fake_api`).

/// The host file a misbehaving fake points its memory "file" at.
const VICTIM: &str = "/etc/hostname";

// ---- fixtures -------------------------------------------------------------------

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Fixture {
    tmp: tempfile::TempDir,
    /// Runtime root.
    root: PathBuf,
    /// Chroot base.
    base: PathBuf,
    /// Where the fake jailer records.
    out: PathBuf,
    opts: FirecrackerOptions,
    spec: Arc<Spec>,
}

impl Fixture {
    fn new(jailer_script: Option<&str>) -> Fixture {
        let tmp = short_tempdir("icjl-");
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let fc = tmp.path().join("firecracker");
        // The "firecracker" the jailer execs: a process that lives until killed.
        write_exec(&fc, "#!/bin/sh\nexec sleep 600\n");
        let jailer = tmp.path().join("jailer");
        let script = jailer_script
            .unwrap_or(FAKE_JAILER)
            .replace("@OUT@", &out.to_string_lossy());
        write_exec(&jailer, &script);
        for f in ["vmlinuz", "initrd.cpio", "rootfs.ext4"] {
            std::fs::write(tmp.path().join(f), f).unwrap();
        }
        let base = tmp.path().join("jail");
        Fixture {
            opts: FirecrackerOptions {
                binary: fc,
                seccomp_filter: None,
                jailer: Some(JailerConfig {
                    binary: jailer,
                    chroot_base: base.clone(),
                    uid: Some(4242),
                    gid: Some(4343),
                    cgroup_version: None,
                }),
            },
            root: tmp.path().join("run"),
            base,
            out,
            spec: spec(),
            tmp,
        }
    }

    fn config(&self, id: &str, rootfs: bool) -> VmConfig {
        let mut c = VmConfig::new(
            id,
            self.tmp.path().join("vmlinuz"),
            self.tmp.path().join("initrd.cpio"),
        );
        c.vcpus = 2;
        c.memory_mib = 512;
        c.vsock.guest_cid = 7;
        if rootfs {
            c.rootfs = Some(self.tmp.path().join("rootfs.ext4"));
        }
        c
    }

    fn jail_dir(&self, id: &str) -> PathBuf {
        self.base.join("firecracker").join(id)
    }

    fn chroot(&self, id: &str) -> PathBuf {
        self.jail_dir(id).join("root")
    }

    /// The fake Firecracker API: binds the chroot's API socket once the
    /// (fake) jailer has run.
    fn fake_api(&self, id: &str) -> Arc<FakeFirecracker> {
        let fake = FakeFirecracker::new(self.spec.clone(), Behaviour::default());
        let argv = self.out.join(format!("argv-{id}"));
        let place = Place::jailed(&self.root, id, self.chroot(id));
        fake.serve_once_there(argv, place, "the jailer never ran");
        fake
    }

    fn argv(&self) -> Vec<String> {
        std::fs::read_to_string(self.out.join("argv"))
            .expect("the jailer's argv")
            .lines()
            .map(String::from)
            .collect()
    }

    /// The cgroup directories the fake jailer made, in order, each once
    /// (it records one per `--cgroup`; cpu has two files).
    fn cgroups_made(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for l in std::fs::read_to_string(self.out.join("cgroups"))
            .unwrap_or_default()
            .lines()
        {
            if !dirs.iter().any(|d| d == Path::new(l)) {
                dirs.push(l.into());
            }
        }
        dirs
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The jail steps (network namespace, cgroups, chown) need root, as the
/// rest of the suite does (tests/confinement.rs): without it these tests
/// fail, saying why, instead of passing without having checked anything.
fn require_root(test: &str) {
    assert!(
        is_root(),
        "{test}: needs root (a network namespace, cgroups, chown), like the rest of `make test`; \
         run it as root: sudo -E cargo test -p ironclaw-orchestrator --test firecracker_jailer"
    );
}

fn alive(pid: i32) -> bool {
    ironclaw_orchestrator::vm::process::alive(pid)
}

/// The cgroup version the launch is expected to pick on this host.
fn host_cgroup_version() -> &'static str {
    match ironclaw_orchestrator::vm::cgroup::Layout::detect().map(|l| l.version) {
        Ok(ironclaw_orchestrator::vm::cgroup::Version::V2) => "2",
        _ => "1",
    }
}

/// The jailer's argv expected for `config` (the `--netns` value is checked apart).
fn expected_argv(fx: &Fixture, config: &VmConfig, uid: u32, gid: u32, netns: &str) -> Vec<String> {
    let l = config.limits();
    let mem = u64::from(l.memory_mib) << 20;
    let quota = u64::from(l.cpu_millis) * 100;
    let mut a: Vec<String> = vec![
        "--id".into(),
        config.id.clone(),
        "--exec-file".into(),
        fx.opts.binary.to_string_lossy().into(),
        "--uid".into(),
        uid.to_string(),
        "--gid".into(),
        gid.to_string(),
        "--chroot-base-dir".into(),
        fx.base.to_string_lossy().into(),
        "--cgroup-version".into(),
        host_cgroup_version().into(),
        "--parent-cgroup".into(),
        "ironclaw".into(),
    ];
    let cg: Vec<String> = if host_cgroup_version() == "1" {
        vec![
            format!("memory.limit_in_bytes={mem}"),
            "cpu.cfs_period_us=100000".into(),
            format!("cpu.cfs_quota_us={quota}"),
            format!("pids.max={}", l.pids),
        ]
    } else {
        vec![
            format!("memory.max={mem}"),
            format!("cpu.max={quota} 100000"),
            format!("pids.max={}", l.pids),
        ]
    };
    for c in cg {
        a.push("--cgroup".into());
        a.push(c);
    }
    a.extend(
        [
            "--netns",
            netns,
            "--",
            "--api-sock",
            "/run/firecracker.socket",
            "--log-path",
            "/firecracker.log",
        ]
        .map(String::from),
    );
    a
}

fn own_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn assert_nothing_left(fx: &Fixture, id: &str, cgroups: &[PathBuf]) {
    assert!(
        !fx.jail_dir(id).exists(),
        "chroot {} left",
        fx.jail_dir(id).display()
    );
    assert!(!fx.root.join(id).exists(), "runtime dir left");
    for cg in cgroups {
        assert!(!cg.exists(), "cgroup {} left", cg.display());
    }
}

/// The snapshot of VM `id` is at `files`: moved out of its chroot (nothing
/// left there), owned by the orchestrator's uid and `group`, with `mode`.
fn assert_moved_out(fx: &Fixture, id: &str, files: &SnapshotFiles, group: u32, mode: u32) {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    for (f, what) in [(&files.state, "vmstate"), (&files.memory, "memory")] {
        let m = std::fs::symlink_metadata(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(m.is_file(), "{}", f.display());
        assert_eq!(
            (m.uid(), m.gid()),
            (euid, group),
            "owner of the {what} file"
        );
        assert_eq!(m.mode() & 0o7777, mode, "mode of the {what} file");
        assert_eq!(
            m.nlink(),
            1,
            "the {what} file is not linked into the chroot any more"
        );
    }
    assert!(std::fs::read_to_string(&files.state)
        .unwrap()
        .contains(&format!("\"fake vmstate of\":\"{id}\"")));
    assert_eq!(
        std::fs::read_to_string(&files.memory).unwrap(),
        format!("fake memory of {id}")
    );
    assert!(
        !fx.chroot(id).join("snapshot").exists(),
        "the snapshot directory was left in the chroot"
    );
}

// ---- tests ------------------------------------------------------------------------

/// `start_firecracker` with the jailer configured through the environment:
/// argv, chroot-relative paths, files in the chroot, lifecycle, cleanup.
/// The only test here that sets environment variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_firecracker_through_the_jailer_from_the_environment() {
    require_root("start_firecracker_through_the_jailer_from_the_environment");
    let fx = Fixture::new(None);
    let jailer_config = fx.opts.jailer.clone().unwrap();
    std::env::set_var("IRONCLAW_FIRECRACKER", &fx.opts.binary);
    std::env::set_var("IRONCLAW_FIRECRACKER_JAILER", &jailer_config.binary);
    std::env::set_var("IRONCLAW_JAILER_CHROOT_BASE", &fx.base);
    std::env::set_var("IRONCLAW_JAILER_UID", "4242");
    std::env::set_var("IRONCLAW_JAILER_GID", "4343");
    std::env::set_var("IRONCLAW_RUNTIME_DIR", &fx.root);
    assert_eq!(FirecrackerOptions::from_env().unwrap(), fx.opts);

    let id = "jailed-1";
    let config = fx.config(id, true);
    let fake = fx.fake_api(id);
    let mut vm = firecracker::start_firecracker(&config)
        .await
        .expect("start_firecracker through the jailer");
    let chroot = fx.chroot(id);

    // The jailer's command line, exactly.
    let argv = fx.argv();
    let netns = &argv[argv.iter().position(|a| a == "--netns").unwrap() + 1];
    assert!(
        netns.starts_with(&format!("/proc/{}/fd/", std::process::id())),
        "{netns}"
    );
    assert_eq!(argv, expected_argv(&fx, &config, 4242, 4343, netns));
    assert!(!argv.iter().any(|a| a.contains("no-seccomp")), "{argv:?}");
    // An empty network namespace of its own.
    let ns = std::fs::read_to_string(fx.out.join("netns")).unwrap();
    assert!(ns.starts_with("net:["), "{ns}");
    assert_ne!(ns.trim(), own_netns());
    // Holding only a `lo` that is down (where nsenter and ip exist to look).
    if let Ok(links) = std::fs::read_to_string(fx.out.join("links")) {
        let links: Vec<&str> = links.lines().collect();
        assert_eq!(links.len(), 1, "{links:?}");
        assert!(
            links[0].contains(" lo:") && links[0].contains("state DOWN"),
            "{links:?}"
        );
    } else {
        visible("note: nsenter/ip missing, the namespace's interfaces were not listed");
    }
    // The process the orchestrator holds is the "firecracker" the jailer
    // exec'd (same pid), in the cgroups the jailer made.
    let cgroups = fx.cgroups_made();
    assert_eq!(cgroups.len(), 3, "{cgroups:?}");
    for cg in &cgroups {
        assert!(cg.ends_with(format!("ironclaw/{id}")), "{}", cg.display());
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|p| p == vm.pid().to_string()), "{procs}");
    }
    assert_eq!(
        vm.jail().unwrap().cgroup_dirs(),
        &cgroups[..],
        "the orchestrator knows the jailer's cgroups"
    );

    // Files in the chroot, readable by the jail uid, named by their path in it.
    for (f, src) in [
        ("vmlinux", "vmlinuz"),
        ("initrd", "initrd.cpio"),
        ("rootfs", "rootfs.ext4"),
    ] {
        assert_eq!(
            std::fs::read_to_string(chroot.join(f)).unwrap(),
            src,
            "{f} in the chroot"
        );
    }
    for (f, owner) in [("run", 4242), ("firecracker.log", 4242)] {
        assert_eq!(
            std::fs::metadata(chroot.join(f)).unwrap().uid(),
            owner,
            "{f}"
        );
    }
    let boot = fake.body("PUT", "/boot-source");
    assert_eq!(boot["kernel_image_path"], json!("/vmlinux"));
    assert_eq!(boot["initrd_path"], json!("/initrd"));
    assert_eq!(
        fake.body("PUT", "/drives/rootfs"),
        json!({"drive_id": "rootfs", "path_on_host": "/rootfs",
               "is_root_device": false, "is_read_only": true})
    );
    assert_eq!(
        fake.body("PUT", "/vsock"),
        json!({"guest_cid": 7, "uds_path": "/vsock.sock"})
    );
    // The host side of the vsock is the socket in the chroot; the agent's
    // ready socket there belongs to the jail uid, who must connect to it.
    let vsock = vm.vsock();
    assert_eq!(vsock.uds_path, chroot.join("vsock.sock"));
    vsock
        .connect()
        .await
        .expect("vsock handshake through the chroot");
    let ready = vsock.guest_initiated_path(ironclaw_protocol::AGENT_READY_PORT);
    assert_eq!(std::fs::metadata(&ready).unwrap().uid(), 4242);

    assert_eq!(vm.describe().await.unwrap().state, "Running");
    vm.pause().await.unwrap();
    // A snapshot is written inside the chroot and moved out to the host paths.
    let files = SnapshotFiles {
        state: fx.tmp.path().join("s"),
        memory: fx.tmp.path().join("m"),
    };
    vm.create_snapshot(&files)
        .await
        .expect("snapshot of a jailed VM");
    assert_moved_out(&fx, id, &files, 4343, 0o640);
    vm.resume().await.unwrap();

    let pid = vm.pid() as i32;
    let stopped = vm.stop(Duration::from_secs(5)).await;
    assert!(matches!(stopped, Stopped::Exited(_)), "{stopped:?}");
    assert!(!alive(pid));
    drop(vm);
    assert_nothing_left(&fx, id, &cgroups);

    fake.assert_clean();
    assert_eq!(
        fake.keys(),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /vsock",
            "PUT /actions InstanceStart",
            "GET /",
            "PATCH /vm Paused",
            "PUT /snapshot/create",
            "PATCH /vm Resumed",
            "PUT /actions SendCtrlAltDel",
        ]
    );
    // Fail closed: as root, without a jailer, Firecracker is refused unless
    // the operator opts out explicitly.
    std::env::remove_var("IRONCLAW_FIRECRACKER_JAILER");
    let err = FirecrackerOptions::from_env().unwrap_err();
    assert!(
        matches!(err, firecracker::FirecrackerError::UnjailedAsRoot),
        "{err}"
    );
    assert!(
        err.to_string().contains("IRONCLAW_FIRECRACKER_JAILER"),
        "{err}"
    );
    std::env::set_var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED", "1");
    assert!(FirecrackerOptions::from_env().unwrap().jailer.is_none());
    std::env::remove_var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED");
    for var in [
        "IRONCLAW_FIRECRACKER",
        "IRONCLAW_FIRECRACKER_JAILER",
        "IRONCLAW_JAILER_CHROOT_BASE",
        "IRONCLAW_JAILER_UID",
        "IRONCLAW_JAILER_GID",
        "IRONCLAW_RUNTIME_DIR",
    ] {
        std::env::remove_var(var);
    }
}

/// The `Hypervisor` trait path, uid/gid derived per VM as the QEMU jail does;
/// `kill` (what destroy does) leaves no process, chroot or cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_trait_launches_jailed_and_destroy_leaves_nothing() {
    require_root("backend_trait_launches_jailed_and_destroy_leaves_nothing");
    let mut fx = Fixture::new(None);
    if let Some(j) = fx.opts.jailer.as_mut() {
        j.uid = None;
        j.gid = None;
    }
    let id = "via-trait";
    let config = fx.config(id, false);
    let fake = fx.fake_api(id);
    let backend = FirecrackerBackend {
        options: fx.opts.clone(),
    };
    let dir = RuntimeDir::create(&fx.root, id).unwrap();
    let mut inst = backend
        .launch(&config, &dir, LaunchPurpose::Run)
        .await
        .expect("launch");
    // The uid the launch leased for this VM (its records), as the QEMU jail does.
    let leased: u32 = std::fs::read_to_string(dir.records_dir().join("uid"))
        .expect("the VM's jail uid is recorded")
        .trim()
        .parse()
        .unwrap();
    let (uid, gid) = (leased, leased);
    let argv = fx.argv();
    let netns = argv[argv.iter().position(|a| a == "--netns").unwrap() + 1].clone();
    assert_eq!(argv, expected_argv(&fx, &config, uid, gid, &netns));
    inst.channel().open().await.expect("agent channel");
    let pids = inst.pids();
    let cgroups = fx.cgroups_made();
    assert!(!cgroups.is_empty());
    inst.kill();
    assert!(inst.exited().is_some());
    assert!(!alive(pids[0] as i32));
    // kill removes the jail at once; the runtime dir goes with its owner.
    assert!(!fx.jail_dir(id).exists(), "chroot left after kill");
    drop(inst);
    drop(dir);
    assert_nothing_left(&fx, id, &cgroups);
    fake.assert_clean();
    assert_eq!(
        fake.keys(),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /vsock",
            "PUT /actions InstanceStart",
        ]
    );
}

/// A jailer that fails (as the real one does without /dev/kvm, say) fails
/// the launch with an error naming the step, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_jailer_fails_the_launch_and_leaves_nothing() {
    require_root("failing_jailer_fails_the_launch_and_leaves_nothing");
    let fx = Fixture::new(Some(
        "#!/bin/sh\necho 'Failed to create /dev/kvm via mknod inside the jail' >&2\nexit 1\n",
    ));
    let id = "jail-fails";
    let err = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, true), &fx.root)
        .await
        .expect_err("the jailer exits");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            FirecrackerError::Jailer(jailer::JailerError::Exited { .. })
        ),
        "{text}"
    );
    assert!(text.contains("running the jailer"), "{text}");
    assert!(text.contains("mknod"), "{text}");
    assert_nothing_left(&fx, id, &[]);
}

/// A configured jailer that does not exist stops the launch before anything
/// is created; it never falls back to an unjailed Firecracker.
#[tokio::test]
async fn missing_jailer_fails_before_anything_starts() {
    let mut fx = Fixture::new(None);
    let missing = fx.tmp.path().join("no-such-jailer");
    fx.opts.jailer.as_mut().unwrap().binary = missing.clone();
    let id = "no-jailer";
    let err = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, false), &fx.root)
        .await
        .expect_err("no jailer");
    let text = err.to_string();
    assert!(text.contains(&*missing.to_string_lossy()), "{text}");
    assert!(text.contains("checking the jailer"), "{text}");
    assert!(!fx.root.join(id).exists());
    assert!(!fx.base.exists(), "nothing under the chroot base");
    assert!(!fx.out.join("argv.tmp").exists(), "nothing was run");

    // The trait path too (its runtime directory is the caller's).
    let dir = RuntimeDir::create(&fx.root, id).unwrap();
    let backend = FirecrackerBackend {
        options: fx.opts.clone(),
    };
    let err = backend
        .launch(&fx.config(id, false), &dir, LaunchPurpose::Run)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("no-such-jailer"), "{err}");
    assert!(!fx.base.exists());
    assert!(
        !dir.records_dir().join("pids").exists(),
        "no process was started"
    );
}

/// Ids the jailer would refuse are refused before it runs.
#[tokio::test]
async fn id_the_jailer_refuses_is_refused_up_front() {
    let fx = Fixture::new(None);
    let err =
        firecracker::start_firecracker_in(&fx.opts, &fx.config("under_score", false), &fx.root)
            .await
            .expect_err("`_` is not a jailer id");
    assert!(err.to_string().contains("checking the VM id"), "{err}");
    assert!(!fx.base.join("firecracker/under_score").exists());
    assert!(!fx.root.join("under_score").exists());
}

/// After an orchestrator crash (runtime dir owned by a dead process), reaping
/// kills the jailed Firecracker and removes its chroot and cgroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaping_removes_a_dead_orchestrators_jail() {
    require_root("reaping_removes_a_dead_orchestrators_jail");
    let fx = Fixture::new(None);
    let id = "orphan";
    let _fake = fx.fake_api(id);
    let vm = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, false), &fx.root)
        .await
        .expect("launch");
    let pid = vm.pid() as i32;
    let cgroups = fx.cgroups_made();
    // Pretend the orchestrator died: forget the VM (nothing is cleaned up)
    // and mark its runtime dir as owned by a process that is gone.
    std::mem::forget(vm);
    std::fs::write(
        runtime::records_dir(&fx.root, id).join("owner"),
        "999999999 1\n",
    )
    .unwrap();
    let reaped = runtime::reap_stale(&fx.root);
    assert_eq!(reaped, [id.to_string()]);
    // The killed process is our (forgotten) child: collect it.
    let mut status = 0;
    // SAFETY: waitpid on a child of this process.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(!alive(pid));
    assert_eq!(cgroups.len(), 3, "{cgroups:?}");
    assert_nothing_left(&fx, id, &cgroups);
}

/// Two jailed VMs alive at once never share a uid: each is leased one of
/// its own from the configured range (the first uid, then the next), so
/// one Firecracker cannot signal the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_jailed_vms_get_uids_of_their_own() {
    require_root("two_live_jailed_vms_get_uids_of_their_own");
    let fx = Fixture::new(None);
    let uid_of = |id: &str| -> u32 {
        let argv = std::fs::read_to_string(fx.out.join(format!("argv-{id}"))).unwrap();
        let argv: Vec<&str> = argv.lines().collect();
        argv[argv.iter().position(|a| *a == "--uid").unwrap() + 1]
            .parse()
            .unwrap()
    };
    let (_fa, _fb) = (fx.fake_api("uid-a"), fx.fake_api("uid-b"));
    let a = firecracker::start_firecracker_in(&fx.opts, &fx.config("uid-a", false), &fx.root)
        .await
        .expect("launch a");
    let b = firecracker::start_firecracker_in(&fx.opts, &fx.config("uid-b", false), &fx.root)
        .await
        .expect("launch b");
    assert_eq!(uid_of("uid-a"), 4242, "the range's first uid");
    assert_eq!(uid_of("uid-b"), 4243, "the next one, while a lives");
    drop((a, b));
}

/// A jailed VM's snapshot (as `ironclaw run` and the pool take one for a
/// prototype) is written in its chroot, moved out, and loaded by clones
/// each in a new jail: a hard link when the jails share their gid, a copy
/// owned by the clone's jail uid otherwise; the rootfs the snapshot's drive
/// names is in each clone's chroot, the kernel is not needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jailed_snapshot_is_moved_out_and_restored_into_new_jails() {
    require_root("jailed_snapshot_is_moved_out_and_restored_into_new_jails");
    let fx = Fixture::new(None);
    let proto_id = "jproto";
    let config = fx.config(proto_id, true);
    let fake = fx.fake_api(proto_id);
    let mut proto = firecracker::start_firecracker_in(&fx.opts, &config, &fx.root)
        .await
        .expect("jailed launch");
    proto.pause().await.unwrap();
    let snap = fx.tmp.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    let files = SnapshotFiles {
        state: snap.join("vm.state"),
        memory: snap.join("vm.mem"),
    };
    proto.create_snapshot(&files).await.expect("snapshot");
    assert_eq!(
        fake.body("PUT", "/snapshot/create"),
        json!({"snapshot_type": "Full", "snapshot_path": "/snapshot/vmstate",
               "mem_file_path": "/snapshot/memory"})
    );
    // The jails share gid 4343 ($IRONCLAW_JAILER_GID): group-readable.
    assert_moved_out(&fx, proto_id, &files, 4343, 0o640);
    let proto_cgroups: Vec<PathBuf> = fx
        .cgroups_made()
        .into_iter()
        .filter(|c| c.ends_with(proto_id))
        .collect();
    proto.kill();
    drop(proto);
    assert_nothing_left(&fx, proto_id, &proto_cgroups);
    fake.assert_clean();

    // Clone a: same gid, so the snapshot is hard-linked into its chroot.
    // Clone b: uid and gid derived per VM, so it gets copies of its own.
    let mut derived = fx.opts.clone();
    if let Some(j) = derived.jailer.as_mut() {
        j.uid = None;
        j.gid = None;
    }
    let original_inode = std::fs::metadata(&files.memory).unwrap().ino();
    for (clone_id, opts, linked) in [("jclone-a", &fx.opts, true), ("jclone-b", &derived, false)] {
        let clone_config = VmConfig {
            id: clone_id.into(),
            ..config.clone()
        };
        let fake = fx.fake_api(clone_id);
        let mut clone =
            firecracker::restore_firecracker_in(opts, &clone_config, &fx.root, &files, false)
                .await
                .unwrap_or_else(|e| panic!("restoring {clone_id} in a new jail: {e}"));
        let chroot = fx.chroot(clone_id);
        let argv = std::fs::read_to_string(fx.out.join(format!("argv-{clone_id}"))).unwrap();
        assert!(argv.lines().any(|l| l == clone_id), "{argv}");
        assert_eq!(
            fake.body("PUT", "/snapshot/load"),
            json!({
                "snapshot_path": "/snapshot/vmstate",
                "mem_backend": {"backend_type": "File", "backend_path": "/snapshot/memory"},
                "resume_vm": false,
                "vsock_override": {"uds_path": "/vsock.sock"},
            })
        );
        let (uid, _) = match (linked, clone.jail()) {
            (true, _) => (4242, 4343),
            (false, Some(j)) => (j.uid, j.gid),
            (false, None) => panic!("{clone_id} is not jailed"),
        };
        for (in_jail, original) in [
            ("snapshot/vmstate", &files.state),
            ("snapshot/memory", &files.memory),
        ] {
            let placed = std::fs::metadata(chroot.join(in_jail)).unwrap();
            let orig = std::fs::metadata(original).unwrap();
            if linked {
                assert_eq!(
                    placed.ino(),
                    orig.ino(),
                    "{clone_id}: {in_jail} is a hard link"
                );
            } else {
                assert_ne!(placed.ino(), orig.ino(), "{clone_id}: {in_jail} is a copy");
                assert_eq!(placed.uid(), uid, "{clone_id}: {in_jail} owner");
                assert_eq!(placed.mode() & 0o777, 0o400, "{clone_id}: {in_jail} mode");
            }
        }
        assert_eq!(
            std::fs::read_to_string(chroot.join("rootfs")).unwrap(),
            "rootfs.ext4"
        );
        assert!(
            !chroot.join("vmlinux").exists(),
            "a restore needs no kernel"
        );
        assert_eq!(clone.describe().await.unwrap().state, "Paused");
        clone.resume().await.unwrap();
        let vsock = clone.vsock();
        assert_eq!(vsock.uds_path, chroot.join("vsock.sock"));
        vsock
            .connect()
            .await
            .expect("vsock handshake with the clone");
        let cgroups: Vec<PathBuf> = fx
            .cgroups_made()
            .into_iter()
            .filter(|c| c.ends_with(clone_id))
            .collect();
        assert_eq!(cgroups.len(), 3, "{cgroups:?}");
        let pid = clone.pid() as i32;
        clone.kill();
        drop(clone);
        assert!(!alive(pid));
        assert_nothing_left(&fx, clone_id, &cgroups);
        fake.assert_clean();
        assert_eq!(
            fake.keys(),
            ["PUT /snapshot/load", "GET /", "PATCH /vm Resumed"]
        );
    }
    // Removing the clones' jails left the snapshot itself alone.
    let m = std::fs::metadata(&files.memory).unwrap();
    assert_eq!((m.ino(), m.nlink()), (original_inode, 1));
}

/// What a compromised jailed Firecracker leaves in its snapshot directory
/// is not trusted: a symlink to a host file instead of the memory file is
/// refused, the host file is untouched, nothing is moved out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_left_in_the_jails_snapshot_is_refused() {
    require_root("a_symlink_left_in_the_jails_snapshot_is_refused");
    let fx = Fixture::new(None);
    let id = "jtamper";
    let fake = fx.fake_api(id);
    let mut vm = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, false), &fx.root)
        .await
        .expect("jailed launch");
    vm.pause().await.unwrap();
    let victim_before = std::fs::metadata(VICTIM).unwrap();
    fake.tamper_memory_with_symlink_to(Path::new(VICTIM));
    let files = SnapshotFiles {
        state: fx.tmp.path().join("t.state"),
        memory: fx.tmp.path().join("t.mem"),
    };
    let err = vm
        .create_snapshot(&files)
        .await
        .expect_err("a symlink is refused");
    let text = err.to_string();
    assert!(
        text.contains("moving the snapshot out of the chroot"),
        "{text}"
    );
    assert!(text.contains("snapshot/memory"), "{text}");
    let victim = std::fs::metadata(VICTIM).unwrap();
    assert_eq!(
        (victim.uid(), victim.gid(), victim.mode()),
        (
            victim_before.uid(),
            victim_before.gid(),
            victim_before.mode()
        ),
        "{VICTIM} was changed"
    );
    // All or nothing: the state file moved out before the refusal is gone too.
    for f in [&files.state, &files.memory] {
        assert!(
            std::fs::symlink_metadata(f).is_err(),
            "{} left",
            f.display()
        );
    }
    assert!(!fx.chroot(id).join("snapshot").exists());
    vm.kill();
}

/// A snapshot moved out to another file system (here /dev/shm, a tmpfs) is
/// copied from the files Firecracker wrote, with the same owner and mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_moved_to_another_file_system_is_copied() {
    require_root("a_snapshot_moved_to_another_file_system_is_copied");
    let fx = Fixture::new(None);
    let shm = Path::new("/dev/shm");
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(
        dev(shm),
        dev(fx.tmp.path()),
        "/dev/shm and /tmp are one file system here"
    );
    let out = tempdir_in(shm, "icjl-");
    let id = "jcopy";
    let fake = fx.fake_api(id);
    let mut vm = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, false), &fx.root)
        .await
        .expect("jailed launch");
    vm.pause().await.unwrap();
    let files = SnapshotFiles {
        state: out.path().join("vm.state"),
        memory: out.path().join("vm.mem"),
    };
    vm.create_snapshot(&files)
        .await
        .expect("snapshot across file systems");
    assert_moved_out(&fx, id, &files, 4343, 0o640);
    vm.kill();
    fake.assert_clean();
}

/// A live snapshot of a jailed VM (`VmInstance::snapshot_live`, as the
/// service takes of a running sandbox): written in the chroot, moved out to
/// the two files the trait names, the VM resumed. When moving out is
/// refused (a symlink left by a compromised Firecracker), the VM is resumed
/// all the same and nothing is moved out or left in the chroot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_snapshot_of_a_jailed_vm_is_moved_out_and_the_vm_resumed() {
    require_root("live_snapshot_of_a_jailed_vm_is_moved_out_and_the_vm_resumed");
    let fx = Fixture::new(None);
    let id = "jlive";
    let fake = fx.fake_api(id);
    let mut vm = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, false), &fx.root)
        .await
        .expect("jailed launch");
    let launched = fake.keys().len();

    let out = fx.tmp.path().join("live");
    std::fs::create_dir(&out).unwrap();
    let names = VmInstance::snapshot_live(&vm, &out, LiveCopy::Precopy)
        .await
        .expect("live snapshot of a jailed VM")
        .files;
    assert_eq!(names, [VMSTATE_FILE, MEMORY_FILE]);
    assert_eq!(
        fake.body("PUT", "/snapshot/create"),
        json!({"snapshot_type": "Full", "snapshot_path": "/snapshot/vmstate",
               "mem_file_path": "/snapshot/memory"})
    );
    let files = SnapshotFiles {
        state: out.join(VMSTATE_FILE),
        memory: out.join(MEMORY_FILE),
    };
    assert_moved_out(&fx, id, &files, 4343, 0o640);
    assert_eq!(vm.describe().await.unwrap().state, "Running");

    let victim_before = std::fs::metadata(VICTIM).unwrap();
    fake.tamper_memory_with_symlink_to(Path::new(VICTIM));
    let refused = fx.tmp.path().join("live-refused");
    std::fs::create_dir(&refused).unwrap();
    let err = VmInstance::snapshot_live(&vm, &refused, LiveCopy::Precopy)
        .await
        .expect_err("a symlink is refused");
    let text = err.to_string();
    assert!(
        text.contains("moving the snapshot out of the chroot"),
        "{text}"
    );
    assert_eq!(vm.describe().await.unwrap().state, "Running");
    assert_eq!(std::fs::read_dir(&refused).unwrap().count(), 0);
    assert!(!fx.chroot(id).join("snapshot").exists());
    let victim = std::fs::metadata(VICTIM).unwrap();
    assert_eq!(
        (victim.uid(), victim.gid(), victim.mode()),
        (
            victim_before.uid(),
            victim_before.gid(),
            victim_before.mode()
        ),
        "{VICTIM} was changed"
    );

    let live = [
        "PATCH /vm Paused",
        "PUT /snapshot/create",
        "PATCH /vm Resumed",
        "GET /",
    ];
    assert_eq!(fake.keys()[launched..], [live, live].concat());
    vm.kill();
    fake.assert_clean();
}
