//! The MCP server against the official Python MCP SDK (the client most
//! agents are built on), in `target/pyenv` (made by `scripts/setup.sh`):
//! over stdio (`ironclaw mcp` spawned by the SDK) and over Streamable HTTP
//! (`/mcp` of a real `ironclaw serve` with a bearer token). The scripts in
//! `tests/mcp/` run the session (`flow.py`) and fail on the first wrong
//! answer; afterwards no server and no VM may be left.

mod cli_support;
mod service_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use service_support::Server;

/// How long one script may take (VMs under TCG on a shared machine).
const SCRIPT_LIMIT: Duration = Duration::from_secs(600);

/// The virtualenv's python, with the SDK importable; a missing one fails
/// the test (it is never skipped).
fn python() -> PathBuf {
    let python = cli_support::workspace().join("target/pyenv/bin/python");
    let importable = Command::new(&python)
        .args(["-c", "import mcp.client.stdio, mcp.client.streamable_http"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        importable,
        "{} cannot import the Python MCP SDK: run scripts/setup.sh (it makes the virtualenv target/pyenv)",
        python.display()
    );
    python
}

/// Runs `tests/mcp/<script>` with `args`; panics with its output unless it passes.
fn run_script(script: &str, args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    let mut cmd = Command::new(python());
    cmd.arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = cli_support::run_with_limit(cmd, &format!("mcp-{script}"), SCRIPT_LIMIT);
    eprintln!("--- {script}:\n{output}");
    match status {
        Some(s) if s.success() && output.contains("mcp-test: PASS") => {}
        Some(s) => panic!("{script} failed ({s}):\n{output}"),
        None => panic!("{script} did not finish in {SCRIPT_LIMIT:?}:\n{output}"),
    }
}

/// Nothing of `root` runs or stays: no process, no VM directory.
fn assert_all_gone(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let procs = cli_support::processes_of(root);
        let vms = service_support::vm_processes_under(root);
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
    let left = cli_support::leftovers(root);
    assert!(left.is_empty(), "left in {}: {left:?}", root.display());
}

#[test]
fn python_sdk_over_stdio() {
    let root = cli_support::root("mcp_python", "stdio");
    std::fs::create_dir_all(&root).unwrap();
    run_script(
        "stdio_client.py",
        &[env!("CARGO_BIN_EXE_ironclaw"), root.to_str().unwrap()],
    );
    // The SDK closed the server's stdin: it destroyed its sandboxes and exited.
    assert_all_gone(&root);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn python_sdk_over_streamable_http() {
    let mut server = Server::start("mcp-python-http", true, &[]);
    let url = format!("http://{}/mcp", server.tcp.as_ref().unwrap());
    run_script("http_client.py", &[&url, server.token.as_deref().unwrap()]);
    let status = server.stop_with(libc::SIGTERM);
    assert!(
        status.success(),
        "ironclaw serve: {status}\n{}",
        server.log_text()
    );
    assert_all_gone(&server.root);
    // The session removed its snapshots: nothing but the directory's lock stays.
    let snapshots = service_support::snapshot_dir(&server.root);
    let mut left: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.retain(|name| name != ".lock");
    assert!(left.is_empty(), "left in {}: {left:?}", snapshots.display());
    let _ = std::fs::remove_dir_all(&snapshots);
    let _ = std::fs::remove_dir_all(&server.root);
    let _ = std::fs::remove_file(&server.log);
    if let Some(token_file) = &server.token_file {
        let _ = std::fs::remove_file(token_file);
    }
}
