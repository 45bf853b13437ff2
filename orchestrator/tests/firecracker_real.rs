//! The Firecracker backend against a real `firecracker` on a host with usable
//! KVM. Neither exists on the development machines (Firecracker cannot be
//! installed there and KVM is provided by PVM), so every test here is
//! `#[ignore]`d: the suite reports them as ignored, never as passed. Run them
//! where Firecracker can run (see docs/firecracker.md) with
//!
//! ```text
//! IRONCLAW_FIRECRACKER=/path/to/firecracker cargo test -p ironclaw-orchestrator --test firecracker_real -- --ignored
//! ```
//!
//! (as root, also `IRONCLAW_FIRECRACKER_JAILER=/path/to/jailer`, or the tests
//! opt out of the jail for this process). Run so, a missing Firecracker or
//! unusable KVM fails the test with the reason.

use std::time::{Duration, Instant};

use ironclaw_orchestrator::vm::{self, accel, config::BackendChoice, firecracker, AgentClient};

/// Fails the test unless Firecracker can run here (the test was asked for
/// explicitly with `--ignored`: a missing prerequisite is an error).
fn require_firecracker(test: &str) {
    if firecracker::find_binary().is_none() {
        panic!("{test}: firecracker is not on PATH and $IRONCLAW_FIRECRACKER is unset");
    }
    let kvm = accel::probe_kvm();
    assert!(kvm.usable, "{test}: KVM is not usable here: {}", kvm.reason);
    // These tests exercise Firecracker itself; the jail policy (a root
    // orchestrator needs the jailer or an explicit opt-out) is tested with
    // the fakes. Without a jailer configured, opt out once for this process.
    static OPT_OUT: std::sync::Once = std::sync::Once::new();
    OPT_OUT.call_once(|| {
        if std::env::var_os("IRONCLAW_FIRECRACKER_JAILER").is_none() {
            // SAFETY (of the environment): set once, before the backend reads it.
            std::env::set_var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED", "1");
        }
    });
}

/// Retries the hello on `vsock` until the guest agent answers or `timeout` passes.
async fn connect_agent(vsock: &vm::vsock::Vsock, timeout: Duration) -> AgentClient {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match vsock.connect().await {
            Ok(stream) => match AgentClient::handshake(Box::new(stream)).await {
                Ok(agent) => return agent,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "the guest agent did not answer on {} within {timeout:?}: {last}",
            vsock.uds_path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn test_id(name: &str) -> String {
    format!("fc-{name}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KVM and firecracker: IRONCLAW_FIRECRACKER=/path/to/firecracker cargo test -p ironclaw-orchestrator --test firecracker_real -- --ignored"]
async fn boots_and_runs_a_command_through_spawn_vm() {
    require_firecracker("boots_and_runs_a_command_through_spawn_vm");
    let id = test_id("exec");
    let mut config = vm::default_config(&id).expect("default kernel and initramfs");
    config.backend = BackendChoice::Firecracker;
    let handle = vm::spawn_vm_with_config(&id, &config)
        .await
        .expect("spawning a Firecracker VM");
    assert_eq!(handle.backend, vm::BackendKind::Firecracker);
    println!("firecracker spawn took {:?}", handle.timings);
    let out = handle
        .agent()
        .run(vm::exec_request(["echo", "hello from firecracker"]), None)
        .await
        .expect("exec");
    assert_eq!(out.status.code, Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from firecracker"
    );
    let dir = handle.runtime_dir();
    let pids = handle.pids();
    vm::destroy_vm(handle).await.expect("destroy");
    assert!(!dir.exists(), "{} left behind", dir.display());
    for pid in pids {
        assert!(!vm::process::alive(pid as i32), "pid {pid} left running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KVM and firecracker: IRONCLAW_FIRECRACKER=/path/to/firecracker cargo test -p ironclaw-orchestrator --test firecracker_real -- --ignored"]
async fn snapshot_clone_answers_and_stop_is_graceful() {
    require_firecracker("snapshot_clone_answers_and_stop_is_graceful");
    let id = test_id("proto");
    let config = vm::default_config(&id).expect("default kernel and initramfs");
    let boot = Duration::from_millis(config.boot_timeout_ms);
    let mut proto = firecracker::start_firecracker(&config)
        .await
        .expect("start_firecracker");
    let agent = connect_agent(&proto.vsock(), boot).await;
    drop(agent);

    proto.pause().await.expect("pause");
    let snap_dir = proto.runtime_dir().join("snapshot");
    std::fs::create_dir(&snap_dir).unwrap();
    let files = firecracker::SnapshotFiles {
        state: snap_dir.join("vm.state"),
        memory: snap_dir.join("vm.mem"),
    };
    proto
        .create_snapshot(&files)
        .await
        .expect("snapshot create");
    proto.resume().await.expect("resume");

    let opts = firecracker::FirecrackerOptions::from_env().unwrap();
    let root = vm::runtime::runtime_root();
    let mut clones = Vec::new();
    for n in 0..2 {
        let clone_config = vm::VmConfig {
            id: format!("{id}-c{n}"),
            ..config.clone()
        };
        let t0 = Instant::now();
        let clone = firecracker::restore_firecracker_in(&opts, &clone_config, &root, &files, true)
            .await
            .expect("snapshot load");
        let agent = connect_agent(&clone.vsock(), boot).await;
        let out = agent
            .run(vm::exec_request(["echo", "clone"]), None)
            .await
            .expect("exec in the clone");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "clone");
        println!(
            "clone {n}: restore to first exec result in {:?}",
            t0.elapsed()
        );
        clones.push(clone);
    }

    let stopped = proto.stop(firecracker::STOP_GRACE).await;
    println!("prototype stop: {stopped:?}");
    assert!(
        matches!(stopped, firecracker::Stopped::Exited(_)),
        "{stopped:?}"
    );
    let dir = proto.runtime_dir().to_path_buf();
    drop(proto);
    assert!(!dir.exists());
    for mut clone in clones {
        clone.stop(firecracker::STOP_GRACE).await;
        let dir = clone.runtime_dir().to_path_buf();
        drop(clone);
        assert!(!dir.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KVM and firecracker: IRONCLAW_FIRECRACKER=/path/to/firecracker cargo test -p ironclaw-orchestrator --test firecracker_real -- --ignored"]
async fn refused_request_reports_fault_message() {
    require_firecracker("refused_request_reports_fault_message");
    let id = test_id("fault");
    let config = vm::default_config(&id).expect("default kernel and initramfs");
    let vm = firecracker::start_firecracker(&config)
        .await
        .expect("start_firecracker");
    // A second InstanceStart is refused by Firecracker with a fault message.
    let before = vm.describe().await.expect("GET /");
    assert_eq!(before.state, "Running");
    let err = firecracker::start_instance(vm.api())
        .await
        .expect_err("a second InstanceStart is refused");
    let msg = err
        .fault_message()
        .expect("Firecracker explains the refusal");
    assert!(!msg.is_empty());
    assert!(err.to_string().contains(msg), "{err}");
}

/// A prototype built and cloned through `vm::prototype` (snapshot API):
/// clones answer, read different random bytes, see the current time, and
/// leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KVM and firecracker: IRONCLAW_FIRECRACKER=/path/to/firecracker cargo test -p ironclaw-orchestrator --test firecracker_real -- --ignored"]
async fn prototype_clones_through_the_snapshot_api() {
    require_firecracker("prototype_clones_through_the_snapshot_api");
    let id = test_id("vmproto");
    let mut config = vm::default_config(&id).expect("default kernel and initramfs");
    config.backend = BackendChoice::Firecracker;
    let t0 = Instant::now();
    let proto = vm::prototype::ensure(&config, &|m| println!("{m}"))
        .await
        .expect("building a Firecracker prototype");
    println!("prototype ready in {:?}", t0.elapsed());
    assert_eq!(proto.meta.backend, vm::BackendKind::Firecracker);
    assert_eq!(proto.meta.files.len(), 2);

    let mut randoms = Vec::new();
    for n in 0..2 {
        let t0 = Instant::now();
        let clone = vm::prototype::restore(&proto, &format!("{id}-{n}"), &config)
            .await
            .expect("restoring a clone");
        println!(
            "clone {n} ready in {:?} ({:?})",
            t0.elapsed(),
            clone.timings
        );
        let out = clone
            .agent()
            .run(
                vm::exec_request([
                    "sh",
                    "-c",
                    "head -c 16 /dev/urandom | od -An -tx1; date +%s",
                ]),
                None,
            )
            .await
            .expect("exec in the clone");
        assert_eq!(out.status.code, Some(0), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        randoms.push(lines.next().unwrap_or_default().to_string());
        let guest_now: u64 = lines.next().unwrap_or_default().trim().parse().unwrap_or(0);
        let host_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            guest_now.abs_diff(host_now) < 60,
            "guest clock {guest_now}, host {host_now}"
        );
        let dir = clone.runtime_dir();
        let pids = clone.pids();
        vm::destroy_vm(clone).await.expect("destroy");
        assert!(!dir.exists(), "{} left behind", dir.display());
        for pid in pids {
            assert!(!vm::process::alive(pid as i32), "pid {pid} left running");
        }
    }
    assert_ne!(
        randoms[0], randoms[1],
        "two clones read the same random bytes"
    );
}
