//! `ironclaw mcp`: the sandbox tools over MCP on stdin/stdout, for desktop
//! agents that start their MCP servers as child processes. An embedded
//! [`Service`] (the machine flags of `serve`) owns the sandboxes; every call
//! acts as the user who started it. When the client closes stdin, or on
//! SIGTERM, SIGINT or SIGHUP, every sandbox is destroyed before it exits.
//! Stdout carries only the protocol: logs and messages go to stderr.

use anyhow::Context;
use rmcp::ServiceExt;

use ironclaw_orchestrator::service::mcp::SandboxMcp;
use ironclaw_orchestrator::service::{Owner, Service};

use super::machine::MachineArgs;
use super::serve::{self, ServeArgs};
use super::Signals;

#[derive(clap::Args, Debug)]
pub struct McpArgs {
    /// Clones kept ready per sandbox shape.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub pool_size: u32,
    /// Sandboxes alive at once, at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sandboxes: u32,
    /// Guest memory of all sandboxes together, in MiB [default: half the host's memory].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(128..))]
    pub max_memory: Option<u64>,
    /// Lifetime of a sandbox created without a timeout, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub default_timeout: u64,
    /// The longest lifetime a client may ask for, in seconds.
    #[arg(long, default_value_t = 86400, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_timeout: u64,
    #[command(flatten)]
    pub machine: MachineArgs,
}

pub async fn mcp(args: McpArgs) -> anyhow::Result<i32> {
    // The same service as `serve`, without its listeners.
    let serve_args = ServeArgs {
        socket: None,
        group: None,
        listen: None,
        token_file: None,
        e2b: false,
        pool_size: args.pool_size,
        max_sandboxes: args.max_sandboxes,
        max_memory: args.max_memory,
        default_timeout: args.default_timeout,
        max_timeout: args.max_timeout,
        snapshot_dir: None,
        max_snapshot_storage: 16384,
        snapshot_retention: 86400,
        paused_retention: 86400,
        machine: args.machine,
    };
    let mut config = serve::service_config(&serve_args).await?;
    // Snapshots last as long as this MCP session (its sandboxes do too):
    // `ironclaw serve` keeps them across restarts.
    config.snapshots.dir = ironclaw_orchestrator::service::snapshots::process_dir("mcp");
    let snapshot_dir = config.snapshots.dir.clone();
    // What a killed service left behind goes before anything new starts.
    ironclaw_orchestrator::vm::runtime::reap_stale_once();
    let mut signals = Signals::new()?;
    let service = Service::new(config)?;
    service.warm_default();
    let owner = Owner::uid(nix::unistd::geteuid().as_raw());
    let tools = SandboxMcp::for_owner(service.clone(), owner);

    let outcome = tokio::select! {
        running = tools.serve(rmcp::transport::stdio()) => match running {
            Ok(running) => {
                let stop = running.cancellation_token();
                tokio::select! {
                    end = running.waiting() => end.map(|r| format!("{r:?}")).context("the MCP session"),
                    signal = signals.recv() => {
                        stop.cancel();
                        Ok(format!("signal {signal}"))
                    }
                }
            }
            Err(e) => Err(anyhow::Error::new(e).context("starting the MCP session on stdin/stdout")),
        },
        signal = signals.recv() => Ok(format!("signal {signal}")),
    };
    let live = service.live_count();
    if live > 0 {
        eprintln!("ironclaw mcp: destroying {live} sandboxes");
    }
    service.shutdown().await;
    drop(service);
    let _ = std::fs::remove_dir_all(&snapshot_dir);
    match outcome {
        Ok(why) => {
            tracing::info!("ironclaw mcp: stopped ({why})");
            Ok(0)
        }
        Err(e) => Err(e),
    }
}
