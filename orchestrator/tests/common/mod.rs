//! Shared by the integration tests: one runtime, one booted VM reused by the
//! tests that only run commands, and a private runtime root per test binary so
//! cleanup can be checked without seeing other processes' VMs.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ironclaw_orchestrator::vm::{self, VmHandle};
use tokio::runtime::Runtime;

pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        init_env();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A runtime root private to this test process, removed at exit.
pub fn test_root() -> PathBuf {
    PathBuf::from(format!("/tmp/ironclaw-test-{}", std::process::id()))
}

fn init_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set before any other thread of this test binary reads the
        // environment (the runtime and the VMs are started after this).
        std::env::set_var("IRONCLAW_RUNTIME_DIR", test_root());
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(cleanup_at_exit) };
    });
}

static SHARED: Mutex<Option<&'static VmHandle>> = Mutex::new(None);

extern "C" fn cleanup_at_exit() {
    // The shared VM is leaked on purpose (tests borrow it for 'static); kill its
    // processes and remove the runtime root so nothing outlives the tests.
    if let Some(vm) = SHARED.lock().ok().and_then(|g| *g) {
        let cgroups: Vec<_> = vm
            .confinement()
            .into_iter()
            .flat_map(|c| c.cgroup)
            .collect();
        let pids = vm.pids();
        // VMMs before their reapers (vm::jail), so the reapers collect them.
        for pid in pids.iter().rev() {
            // SAFETY: kill(2) on a pid this process started.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        // Zombies have an empty command line; wait for the rest to go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline
            && pids
                .iter()
                .any(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| !c.is_empty()))
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The VM's cgroups go once its processes are dead.
        for dir in cgroups {
            let _ = ironclaw_orchestrator::vm::cgroup::remove_dir(&dir);
        }
    }
    let _ = std::fs::remove_dir_all(test_root());
}

/// One VM shared by all tests of a binary that only run commands in it.
pub fn shared_vm() -> &'static VmHandle {
    static VM: OnceLock<&'static VmHandle> = OnceLock::new();
    VM.get_or_init(|| {
        let vm = runtime()
            .block_on(vm::spawn_vm("shared"))
            .expect("booting the shared test VM");
        let vm: &'static VmHandle = Box::leak(Box::new(vm));
        *SHARED.lock().unwrap() = Some(vm);
        vm
    })
}

/// Runs a shell snippet in `vm` and returns (stdout, stderr, status).
pub fn sh(vm: &VmHandle, script: &str) -> vm::ExecOutput {
    runtime()
        .block_on(vm.agent().run(vm::exec_request(["sh", "-c", script]), None))
        .expect("exec")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The whitespace-separated field `field` (from 0) of what `script` prints
/// in the guest, as a number; panics naming `what` if there is none.
pub fn guest_number(vm: &VmHandle, script: &str, field: usize, what: &str) -> u64 {
    let out = sh(vm, script);
    let printed = text(&out.stdout);
    printed
        .split_whitespace()
        .nth(field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {what}: {printed:?} {}", text(&out.stderr)))
}

/// Whether a process with this pid exists (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}
