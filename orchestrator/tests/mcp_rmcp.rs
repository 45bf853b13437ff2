//! `ironclaw mcp` driven by rmcp's own client as a child process over
//! stdio: the tools, a sandbox created, a command run in it, the sandbox
//! destroyed; and afterwards neither the server nor any VM left.

mod cli_support;

use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

type Client = RunningService<RoleClient, ()>;

async fn call(client: &Client, name: &'static str, args: Value) -> CallToolResult {
    let args = args.as_object().expect("arguments are an object").clone();
    tokio::time::timeout(
        Duration::from_secs(120),
        client.call_tool(CallToolRequestParams::new(name).with_arguments(args)),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: no answer in 120 s"))
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The structured result of a call that must succeed.
async fn ok(client: &Client, name: &'static str, args: Value) -> Value {
    let result = call(client, name, args).await;
    assert_eq!(result.is_error, Some(false), "{name} failed: {result:?}");
    result.structured_content.expect("structured content")
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_over_stdio() {
    let root = cli_support::root("mcp_rmcp", "stdio");
    std::fs::create_dir_all(&root).unwrap();
    let transport = TokioChildProcess::new(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ironclaw")).configure(|c| {
            c.arg("mcp").env("IRONCLAW_RUNTIME_DIR", &root);
        }),
    )
    .unwrap();
    let pid = transport.id().expect("the server's pid");
    let client = ().serve(transport).await.expect("initialize");
    let server = client.peer_info().expect("server info");
    assert_eq!(
        server.server_info.as_ref().map(|i| i.name.as_str()),
        Some("ironclaw")
    );

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for want in [
        "sandbox_create",
        "sandbox_list",
        "sandbox_destroy",
        "sandbox_exec",
        "sandbox_exec_start",
        "sandbox_exec_poll",
        "sandbox_exec_write_stdin",
        "sandbox_exec_signal",
        "sandbox_fs_read",
        "sandbox_fs_write",
        "sandbox_fs_list",
        "sandbox_fs_remove",
        "run_code",
        "sandbox_snapshot",
        "sandbox_fork",
        "sandbox_pause",
        "sandbox_resume",
        "snapshot_list",
        "snapshot_remove",
    ] {
        assert!(names.contains(&want), "no tool {want} in {names:?}");
    }
    let exec = tools.iter().find(|t| t.name == "sandbox_exec").unwrap();
    let required = exec
        .input_schema
        .get("required")
        .cloned()
        .unwrap_or_default();
    assert_eq!(required, json!(["sandbox_id"]), "{:?}", exec.input_schema);

    let created = ok(
        &client,
        "sandbox_create",
        json!({"labels": {"test": "rmcp"}}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let ran = ok(
        &client,
        "sandbox_exec",
        json!({"sandbox_id": id, "cmd": "echo hi"}),
    )
    .await;
    assert_eq!(ran["stdout"], "hi\n", "{ran}");
    assert_eq!(ran["exit_code"], 0, "{ran}");
    let destroyed = ok(&client, "sandbox_destroy", json!({"sandbox_id": id})).await;
    assert_eq!(destroyed["destroyed"], id.as_str());
    let gone = call(
        &client,
        "sandbox_exec",
        json!({"sandbox_id": id, "cmd": "true"}),
    )
    .await;
    assert_eq!(gone.is_error, Some(true), "{gone:?}");
    assert!(text(&gone).starts_with("not_found: "), "{}", text(&gone));

    // Closing the client closes the server's stdin: it destroys what is
    // left (here the warm pool) and exits by itself.
    client.cancel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli_support::pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "ironclaw mcp (pid {pid}) still runs after its client closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cli_support::leftovers(&root).is_empty(),
        "VMs left in {}: {:?}",
        root.display(),
        cli_support::leftovers(&root)
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// SIGTERM while a client is connected and a sandbox runs: the server
/// destroys it and exits; no VM outlives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_destroys_the_sandboxes() {
    let root = cli_support::root("mcp_rmcp", "sigterm");
    std::fs::create_dir_all(&root).unwrap();
    let transport = TokioChildProcess::new(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ironclaw")).configure(|c| {
            c.arg("mcp").env("IRONCLAW_RUNTIME_DIR", &root);
        }),
    )
    .unwrap();
    let pid = transport.id().expect("the server's pid");
    let client = ().serve(transport).await.expect("initialize");
    let created = ok(&client, "sandbox_create", json!({})).await;
    let id = created["id"].as_str().unwrap();
    let ran = ok(
        &client,
        "sandbox_exec",
        json!({"sandbox_id": id, "cmd": "echo hi"}),
    )
    .await;
    assert_eq!(ran["stdout"], "hi\n", "{ran}");
    assert!(
        !cli_support::leftovers(&root).is_empty(),
        "no VM in {}",
        root.display()
    );

    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli_support::pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "ironclaw mcp (pid {pid}) still runs 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cli_support::leftovers(&root).is_empty(),
        "VMs left in {}: {:?}",
        root.display(),
        cli_support::leftovers(&root)
    );
    drop(client);
    let _ = std::fs::remove_dir_all(&root);
}
