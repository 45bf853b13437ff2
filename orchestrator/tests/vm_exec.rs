//! Running commands in a real VM (QEMU microvm, the real guest agent, real
//! vhost-device-vsock). The tests share one booted VM.

mod common;

use std::time::{Duration, Instant};

use common::{runtime, sh, shared_vm, text};
use ironclaw_orchestrator::agent::ExecEvent;
use ironclaw_orchestrator::vm::{exec_request, ExecRequest};

#[test]
fn stdout_stderr_and_exit_codes() {
    let vm = shared_vm();
    let out = sh(vm, "echo to-out; echo to-err >&2; exit 42");
    assert_eq!(text(&out.stdout), "to-out\n");
    assert_eq!(text(&out.stderr), "to-err\n");
    assert_eq!((out.status.code, out.status.signal, out.status.timed_out), (Some(42), None, false));
    assert_eq!(sh(vm, "true").status.code, Some(0));
    assert_eq!(sh(vm, "false").status.code, Some(1));
    let killed = sh(vm, "kill -9 $$");
    assert_eq!((killed.status.code, killed.status.signal), (None, Some(9)));
    assert_eq!(killed.status.shell_code(), 137);
}

#[test]
fn kernel_is_the_guest_kernel() {
    let vm = shared_vm();
    let out = sh(vm, "uname -r");
    assert_eq!(text(&out.stdout).trim(), vm.agent().kernel_release());
    assert!(text(&out.stdout).contains("cloud-amd64") || !text(&out.stdout).is_empty());
}

#[test]
fn stdin_is_piped_in() {
    let vm = shared_vm();
    let req = exec_request(["cat"]);
    let out = runtime().block_on(vm.agent().run(req, Some(b"hello stdin\n".to_vec()))).unwrap();
    assert_eq!(text(&out.stdout), "hello stdin\n");
    // More than one frame's worth, through a pipe that fills up.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = runtime().block_on(vm.agent().run(exec_request(["wc", "-c"]), Some(big))).unwrap();
    assert_eq!(text(&out.stdout).trim(), "3000000");
    // Without stdin the process reads EOF at once.
    assert_eq!(text(&sh(vm, "cat; echo done").stdout), "done\n");
}

#[test]
fn env_and_cwd() {
    let vm = shared_vm();
    let mut req = exec_request(["sh", "-c", "echo $GREETING; pwd"]);
    req.env.insert("GREETING".into(), "hi there".into());
    req.cwd = Some("/tmp".into());
    let out = runtime().block_on(vm.agent().run(req, None)).unwrap();
    assert_eq!(text(&out.stdout), "hi there\n/tmp\n");
    let mut bad = exec_request(["true"]);
    bad.cwd = Some("/does/not/exist".into());
    let err = runtime().block_on(vm.agent().run(bad, None)).unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
    let err = runtime().block_on(vm.agent().run(exec_request(["no-such-program"]), None)).unwrap_err();
    assert!(err.to_string().contains("no-such-program"), "{err}");
}

#[test]
fn timeout_kills_the_process_group() {
    let vm = shared_vm();
    let req = ExecRequest { timeout_ms: Some(1500), ..exec_request(["sh", "-c", "sleep 1000 & sleep 1000"]) };
    let t0 = Instant::now();
    let out = runtime().block_on(vm.agent().run(req, None)).unwrap();
    assert!(out.status.timed_out, "{:?}", out.status);
    assert_eq!(out.status.shell_code(), 124);
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
    // Neither sleep survives its request.
    let ps = sh(vm, "ps -o comm | grep -c '^sleep' || true");
    assert_eq!(text(&ps.stdout).trim(), "0", "leftover sleeps");
}

#[test]
fn output_is_streamed_not_buffered() {
    let vm = shared_vm();
    runtime().block_on(async {
        let mut s = vm.agent().exec(exec_request(["sh", "-c", "echo first; sleep 2; echo second"])).await.unwrap();
        let mut first_at = None;
        loop {
            match s.next_event().await.unwrap() {
                ExecEvent::Stdout(b) if first_at.is_none() => {
                    assert_eq!(&b[..], b"first\n");
                    first_at = Some(Instant::now());
                }
                ExecEvent::Exit(st) => {
                    assert_eq!(st.code, Some(0));
                    let gap = first_at.expect("first line before exit").elapsed();
                    assert!(gap >= Duration::from_millis(1500), "first line came only {gap:?} before exit");
                    break;
                }
                _ => {}
            }
        }
    });
}

#[test]
fn concurrent_requests_share_one_session() {
    let vm = shared_vm();
    let outs = runtime().block_on(async {
        let runs = (0..6).map(|i| vm.agent().run(exec_request(["sh", "-c", &format!("sleep 0.$((RANDOM%5)); echo {i}")]), None));
        futures::future::join_all(runs).await
    });
    for (i, out) in outs.into_iter().enumerate() {
        assert_eq!(text(&out.unwrap().stdout), format!("{i}\n"));
    }
}

#[test]
fn no_network_inside_the_guest() {
    let vm = shared_vm();
    let ifaces = sh(vm, "ls /sys/class/net");
    assert_eq!(text(&ifaces.stdout).split_whitespace().collect::<Vec<_>>(), ["lo"]);
    for addr in ["1.1.1.1", "10.0.2.2", "192.168.1.1"] {
        let out = sh(vm, &format!("nc -w 2 {addr} 80 </dev/null"));
        assert_ne!(out.status.code, Some(0), "TCP connect to {addr} succeeded");
        assert!(text(&out.stderr).contains("unreachable"), "{addr}: {}", text(&out.stderr));
    }
}
