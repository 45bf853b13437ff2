//! The E2B-compatible API (`ironclaw serve --e2b`) against the official
//! E2B SDKs, unchanged: the Python SDK (PyPI `e2b`, sync and async) from
//! `target/pyenv` and the JavaScript SDK (npm `e2b`) from
//! `target/node-e2b`, both pinned and installed by `scripts/setup.sh`. The
//! scripts in `tests/e2b/` run the sessions and fail on the first wrong
//! answer; afterwards no server, no VM and nothing in the runtime root may
//! be left.

mod cli_support;
mod service_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use service_support::Server;

/// How long one script may take (VMs under TCG on a shared machine).
const SCRIPT_LIMIT: Duration = Duration::from_secs(600);

/// The virtualenv's python, with the E2B SDK importable; a missing one
/// fails the test (it is never skipped).
fn python() -> PathBuf {
    let python = cli_support::workspace().join("target/pyenv/bin/python");
    let importable = Command::new(&python)
        .args(["-c", "import e2b, httpx"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        importable,
        "{} cannot import the E2B Python SDK: run scripts/setup.sh (it installs tests/e2b/requirements.txt in target/pyenv)",
        python.display()
    );
    python
}

/// The JavaScript SDK's ESM entry in `target/node-e2b`; missing fails the test.
fn js_sdk() -> PathBuf {
    let entry = cli_support::workspace().join("target/node-e2b/node_modules/e2b/dist/index.mjs");
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        node && entry.is_file(),
        "no Node.js or no {}: run scripts/setup.sh (it installs the pinned npm e2b in target/node-e2b)",
        entry.display()
    );
    entry
}

/// Runs `program tests/e2b/<script>` with the E2B variables pointing at
/// `server`; panics with its output unless it passes. Returns its output.
fn run_script(program: &Path, script: &str, server: &Server, extra_env: &[(&str, &str)]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b");
    let url = format!("http://{}", server.tcp.as_ref().expect("a TCP server"));
    let mut cmd = Command::new(program);
    cmd.arg(dir.join(script))
        .current_dir(&dir)
        .env("PYTHONUNBUFFERED", "1")
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", server.token.as_deref().unwrap())
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .env_remove("E2B_ACCESS_TOKEN");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let (status, output) = cli_support::run_with_limit(cmd, &format!("e2b-{script}"), SCRIPT_LIMIT);
    eprintln!("--- {script}:\n{output}");
    match status {
        Some(s) if s.success() && output.contains("e2b-test: PASS") => output,
        Some(s) => panic!(
            "{script} failed ({s}):\n{output}\n--- server log:\n{}",
            server.log_text()
        ),
        None => panic!("{script} did not finish in {SCRIPT_LIMIT:?}:\n{output}"),
    }
}

/// Stops the server; nothing of it runs or stays: no process, no VM, no
/// file in its runtime root, no snapshot (a paused sandbox) in its
/// snapshot directory.
fn stop_and_check(mut server: Server) {
    // The SDK sessions destroyed their sandboxes: none is left before the stop.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = server.token.clone();
    let (_, tenant) = rt.block_on(server.call_tcp(token.as_deref(), "GET", "/v1/sandboxes", None));
    assert_eq!(
        tenant["sandboxes"],
        serde_json::json!([]),
        "the SDK session left sandboxes"
    );
    let status = server.stop_with(libc::SIGTERM);
    assert!(
        status.success(),
        "ironclaw serve: {status}\n{}",
        server.log_text()
    );
    let root = server.root.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let procs = cli_support::processes_of(&root);
        let vms = service_support::vm_processes_under(&root);
        if procs.is_empty() && vms.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running for {}: {procs:?} {vms:?}",
            root.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = cli_support::leftovers(&root);
    assert!(left.is_empty(), "left in {}: {left:?}", root.display());
    let snapshots = service_support::snapshot_dir(&root);
    let kept: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        kept.iter().all(|p| p.ends_with(".lock")),
        "snapshots left in {}: {kept:?}",
        snapshots.display()
    );
    let _ = std::fs::remove_dir_all(&snapshots);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&server.log);
    if let Some(token_file) = &server.token_file {
        let _ = std::fs::remove_file(token_file);
    }
}

#[test]
fn python_sdk_sync_and_async_session() {
    let python = python();
    let server = Server::start("e2b-python", true, &["--e2b"]);
    run_script(&python, "session.py", &server, &[]);
    stop_and_check(server);
}

#[test]
fn python_sdk_auth_and_limits() {
    let python = python();
    let server = Server::start("e2b-limits", true, &["--e2b", "--max-sandboxes", "1"]);
    run_script(&python, "limits.py", &server, &[]);
    stop_and_check(server);
}

/// Pause, `Sandbox.connect` (which resumes), state in `get_info` and
/// `Sandbox.list`, kill of a paused sandbox: a file and a process that
/// outlived its command are there after the resume, the process still
/// counting.
#[test]
fn python_sdk_pause_and_connect() {
    let python = python();
    let server = Server::start("e2b-pause", true, &["--e2b"]);
    run_script(&python, "pause.py", &server, &[]);
    stop_and_check(server);
}

/// `create_snapshot`, `list_snapshots`, `Sandbox.create(<snapshot id>)`,
/// `fork` and `delete_snapshot`: the sandboxes made from a snapshot have
/// its file and its counting process, still counting; a deleted snapshot
/// is not listed, and the sandboxes made from it run on.
#[test]
fn python_sdk_snapshots_and_fork() {
    let python = python();
    let server = Server::start("e2b-snapshots", true, &["--e2b"]);
    run_script(&python, "snapshots.py", &server, &[]);
    stop_and_check(server);
}

/// A paused sandbox outlives a restart of the service: after it, the same
/// API key lists it paused and `Sandbox.connect` resumes it, its file and
/// its counting process there.
#[test]
fn python_sdk_connect_after_restart() {
    let python = python();
    let mut server = Server::start("e2b-restart", true, &["--e2b"]);
    let out = run_script(
        &python,
        "restart.py",
        &server,
        &[("E2B_RESTART_STEP", "pause")],
    );
    let paused = out
        .lines()
        .find_map(|l| l.strip_prefix("paused: "))
        .unwrap_or_else(|| panic!("restart.py named no paused sandbox:\n{out}"))
        .trim()
        .to_string();
    let (root, token) = (server.root.clone(), server.token.clone().unwrap());
    let status = server.stop_with(libc::SIGTERM);
    assert!(
        status.success(),
        "ironclaw serve: {status}\n{}",
        server.log_text()
    );
    let vms = service_support::vm_processes_under(&root);
    assert!(vms.is_empty(), "VMs left after the stop: {vms:?}");
    drop(server);
    // The same root, snapshot directory and token (the same tenant).
    let server = Server::start_with_tokens(root, vec![token], &["--e2b"]);
    run_script(
        &python,
        "restart.py",
        &server,
        &[("E2B_RESTART_STEP", "connect"), ("E2B_PAUSED", &paused)],
    );
    stop_and_check(server);
}

#[test]
fn javascript_sdk_session() {
    let sdk = js_sdk();
    let server = Server::start("e2b-js", true, &["--e2b"]);
    run_script(
        Path::new("node"),
        "session.mjs",
        &server,
        &[("E2B_JS_SDK", sdk.to_str().unwrap())],
    );
    stop_and_check(server);
}
