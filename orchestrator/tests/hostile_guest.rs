//! A hostile guest: its root stops the agent, offers a FIFO for copy-out,
//! floods the output, competes with the agent for memory. The host must end
//! every request within its deadline and bound what it holds.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{runtime, sh, shared_vm, text};
use ironclaw_orchestrator::agent::{AgentError, FileError, DEFAULT_OUTPUT_CAP};
use ironclaw_orchestrator::vm::{self, exec_request};

mod cli_support;

use cli_support::{ironclaw, leftovers as vm_dirs, recorded_pids};

fn root(name: &str) -> PathBuf {
    cli_support::root("hostile", name)
}

/// Waits for `child` to exit within `limit`; kills it and fails otherwise.
fn wait_or_kill(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

/// The command stops the agent (its parent) with SIGSTOP: the guest can no
/// longer enforce `--timeout`, the host must, and then destroy the VM.
#[test]
fn a_stopped_agent_ends_the_run_at_the_host_deadline() {
    let r = root("stop");
    let mut child = ironclaw(&r)
        .args([
            "run",
            "--timeout",
            "3",
            "--",
            "sh",
            "-c",
            "echo ready; sleep 1; kill -STOP $PPID; sleep 1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let started = Instant::now();
    let pids = recorded_pids(&r);
    assert!(!pids.is_empty(), "no VM processes recorded under {r:?}");
    let status = wait_or_kill(&mut child, Duration::from_secs(60), "ironclaw run");
    let took = started.elapsed();
    let stderr = stderr_of(&mut child);
    // --timeout 3 + the 5 s grace, and a margin for a loaded machine.
    assert!(took < Duration::from_secs(3 + 5 + 7), "took {took:?}");
    assert!(took >= Duration::from_secs(3), "took {took:?}");
    assert_eq!(status.code(), Some(124), "stderr: {stderr}");
    assert!(stderr.contains("stopped answering"), "stderr: {stderr}");
    assert!(
        pids.iter().all(|p| !common::pid_alive(*p)),
        "VM processes left: {pids:?}"
    );
    assert!(
        vm_dirs(&r).is_empty(),
        "runtime files left: {:?}",
        vm_dirs(&r)
    );
    let _ = std::fs::remove_dir_all(&r);
}

/// `--copy-out` of a FIFO: the agent must not block opening it.
#[test]
fn copy_out_of_a_fifo_fails_promptly_with_a_clear_error() {
    let r = root("fifo");
    let local = r.with_extension("out");
    let _ = std::fs::remove_file(&local);
    let spec = format!("/tmp/f:{}", local.display());
    let mut child = ironclaw(&r)
        .args(["run", "--copy-out", &spec, "--", "mkfifo", "/tmp/f"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Booting included; the request itself must not wait for a writer.
    let status = wait_or_kill(
        &mut child,
        Duration::from_secs(90),
        "ironclaw run --copy-out",
    );
    let stderr = stderr_of(&mut child);
    assert_ne!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("not a regular file"), "stderr: {stderr}");
    assert!(!local.exists());
    assert!(
        vm_dirs(&r).is_empty(),
        "runtime files left: {:?}",
        vm_dirs(&r)
    );
    let _ = std::fs::remove_dir_all(&r);
}

/// The same through the library, with devices and sockets too: a clear error
/// at once, and the agent still serves afterwards.
#[test]
fn get_of_a_fifo_device_or_socket_is_refused_at_once() {
    let vm = shared_vm();
    assert_eq!(sh(vm, "rm -f /tmp/g; mkfifo /tmp/g").status.code, Some(0));
    let mut sink = Vec::new();
    for path in ["/tmp/g", "/dev/null", "/dev/zero"] {
        let got = runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(20), vm.agent().get(path, &mut sink)).await
        });
        match got {
            Ok(Err(FileError::Remote(m))) => assert!(m.contains("not a regular file"), "{m}"),
            other => panic!("get {path}: {other:?}"),
        }
    }
    assert!(sink.is_empty());
    assert_eq!(text(&sh(vm, "echo alive").stdout), "alive\n");
}

/// `run()` keeps at most its cap of each stream and says it cut.
#[test]
fn run_caps_collected_output_and_says_it_truncated() {
    let vm = shared_vm();
    let out = runtime()
        .block_on(
            vm.agent()
                .run(exec_request(["head", "-c", "41943040", "/dev/zero"]), None),
        )
        .unwrap();
    // 40 MiB written, all of it read (the command ends normally), 16 MiB kept.
    assert_eq!(out.status.code, Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), DEFAULT_OUTPUT_CAP);
    assert!(out.stdout_truncated && !out.stderr_truncated);
    let out = runtime()
        .block_on(vm.agent().run_with_cap(
            exec_request(["sh", "-c", "head -c 5000 /dev/zero >&2; echo small"]),
            None,
            1000,
        ))
        .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stdout_truncated),
        (&b"small\n"[..], false)
    );
    assert_eq!((out.stderr.len(), out.stderr_truncated), (1000, true));
}

/// The guest's OOM killer takes the command, not the agent; the command runs
/// in a session of its own.
#[test]
fn the_agent_is_shielded_from_the_oom_killer_and_the_command_in_its_own_session() {
    let vm = shared_vm();
    let out = sh(
        vm,
        "cat /proc/$PPID/comm /proc/$PPID/oom_score_adj /proc/$$/oom_score_adj; \
         cut -d' ' -f6 /proc/$$/stat; echo $$; echo $PPID",
    );
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    // The agent: the copy of /init that PID 1 forked.
    assert_eq!(lines[0], "init");
    assert_ne!(lines[5], "1");
    assert_eq!(lines[1], "-1000", "the agent's oom_score_adj");
    let command: i32 = lines[2].parse().unwrap();
    assert!(command > 0, "the command's oom_score_adj is {command}");
    assert_eq!(lines[3], lines[4], "the command leads its own session");
}

/// Through the library: a stopped agent fails an exec at its timeout plus
/// the grace, and a file operation after the idle limit, with `Deadline`.
#[test]
fn a_stopped_agent_fails_library_requests_with_deadline() {
    runtime().block_on(async {
        let vm = vm::spawn_vm("stopped").await.expect("booting a VM");
        let client = vm
            .agent()
            .clone()
            .with_exec_grace(Duration::from_secs(1))
            .with_file_idle_limit(Duration::from_secs(2));
        let mut req = exec_request(["sh", "-c", "kill -STOP $PPID; sleep 1000"]);
        req.timeout_ms = Some(2000);
        let t0 = Instant::now();
        let ran = tokio::time::timeout(Duration::from_secs(40), client.run(req, None))
            .await
            .expect("run() never returned");
        let took = t0.elapsed();
        assert!(matches!(ran, Err(AgentError::Deadline { .. })), "{ran:?}");
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(12),
            "{took:?}"
        );
        let t0 = Instant::now();
        let stat = tokio::time::timeout(Duration::from_secs(40), client.stat("/root"))
            .await
            .expect("stat() never returned");
        assert!(
            matches!(stat, Err(FileError::Agent(AgentError::Deadline { .. }))),
            "{stat:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let pids = vm.pids();
        vm::destroy_vm(vm).await.unwrap();
        assert!(pids.iter().all(|p| !common::pid_alive(*p)));
    });
}

/// `--copy-out` takes neither the guest's size nor its mode bits: beyond
/// `--copy-out-max` nothing is kept, and what is kept is 0644.
#[test]
fn copy_out_is_capped_in_size_and_written_0644() {
    use std::os::unix::fs::PermissionsExt;
    let r = root("copy-out-cap");
    let out = tempfile::tempdir().unwrap();
    let big = out.path().join("big");
    let spec = format!("/tmp/big:{}", big.display());
    let refused = ironclaw(&r)
        .args(["run", "--copy-out", &spec, "--copy-out-max", "1", "--"])
        .args(["sh", "-c", "head -c 2097152 /dev/zero > /tmp/big"])
        .output()
        .unwrap();
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(125), "stderr: {stderr}");
    assert!(
        stderr.contains("limit of 1048576 bytes"),
        "stderr: {stderr}"
    );
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "a refused copy-out left a file"
    );

    let small = out.path().join("setuid");
    let spec = format!("/tmp/s:{}", small.display());
    let kept = ironclaw(&r)
        .args(["run", "--copy-out", &spec, "--"])
        .args(["sh", "-c", "echo hi > /tmp/s && chmod 4777 /tmp/s"])
        .output()
        .unwrap();
    assert_eq!(kept.status.code(), Some(0), "{}", text(&kept.stderr));
    assert_eq!(std::fs::read_to_string(&small).unwrap(), "hi\n");
    let mode = std::fs::metadata(&small).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644, "mode {mode:o}");
    assert!(
        vm_dirs(&r).is_empty(),
        "runtime files left: {:?}",
        vm_dirs(&r)
    );
    let _ = std::fs::remove_dir_all(&r);
}

/// A guest that floods its serial console fills no host RAM: the log is
/// rotated past 1 MiB, keeping its end in `console.log.1`.
#[test]
fn a_flooded_console_log_stays_bounded() {
    let vm = shared_vm();
    let log = vm.console_log();
    let out = sh(vm, "dd if=/dev/zero bs=65536 count=48 of=/dev/ttyS0 2>&1");
    assert_eq!(out.status.code, Some(0), "{}", text(&out.stdout));
    std::thread::sleep(vm::console::CHECK_EVERY * 3);
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(
        len <= vm::console::MAX_BYTES,
        "console.log is {len} bytes after 3 MiB of output"
    );
    let kept = std::fs::metadata(vm::console::rotated(&log)).unwrap().len();
    assert_eq!(kept, vm::console::KEEP_BYTES);
}

/// A fork bomb and a memory hog in one guest are that guest's problem: the
/// command ends (timed out, or killed by the guest's OOM killer while the
/// agent, shielded, keeps answering), and another VM is served meanwhile.
#[test]
fn a_fork_bomb_and_a_memory_hog_stay_in_their_vm() {
    let bystander = shared_vm();
    runtime().block_on(async {
        let vm = vm::spawn_vm("bomb").await.expect("booting a VM");
        // Memory: a string doubling until the guest's memory is gone.
        let mut hog = exec_request(["sh", "-c", "awk 'BEGIN { s = \"x\"; while (1) s = s s }'"]);
        hog.timeout_ms = Some(60_000);
        let out = tokio::time::timeout(Duration::from_secs(90), vm.agent().run(hog, None))
            .await
            .expect("the memory hog's exec never returned")
            .expect("the agent survives the guest's OOM killer");
        assert_eq!(
            out.status.signal,
            Some(9),
            "{:?} {}",
            out.status,
            text(&out.stderr)
        );
        let out = vm
            .agent()
            .run(exec_request(["echo", "alive"]), None)
            .await
            .unwrap();
        assert_eq!(text(&out.stdout), "alive\n");

        // Processes: a fork bomb, ended by its timeout (or the host deadline).
        let mut bomb = exec_request(["sh", "-c", "b() { b | b & }; b; sleep 100"]);
        bomb.timeout_ms = Some(5_000);
        let t0 = Instant::now();
        let bombed = tokio::spawn({
            let agent = vm.agent().clone();
            async move { agent.run(bomb, None).await }
        });
        // Meanwhile the other VM answers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t1 = Instant::now();
        let out = bystander
            .agent()
            .run(exec_request(["echo", "fine"]), None)
            .await
            .unwrap();
        assert_eq!(text(&out.stdout), "fine\n");
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "the bystander took {:?}",
            t1.elapsed()
        );
        let ran = tokio::time::timeout(Duration::from_secs(60), bombed)
            .await
            .expect("the fork bomb's exec never returned")
            .unwrap();
        match ran {
            Ok(out) => assert!(
                out.status.timed_out || out.status.signal.is_some(),
                "{:?}",
                out.status
            ),
            Err(e) => assert!(matches!(e, AgentError::Deadline { .. }), "{e}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
        let pids = vm.pids();
        vm::destroy_vm(vm).await.unwrap();
        assert!(pids.iter().all(|p| !common::pid_alive(*p)));
    });
}
