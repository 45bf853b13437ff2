//! The `ironclaw` command line: the argument grammar ([`Cli`]), one module
//! per subcommand, and the pieces they share — the machine flags and the one
//! function that turns them into a `VmConfig` ([`machine`]), the table from
//! config fields to flags ([`field_flags`]), and signal handling. clap and
//! `anyhow` are used here and nowhere in the library.

pub mod bench;
pub mod doctor;
pub mod field_flags;
pub mod image;
pub mod machine;
pub mod mcp;
pub mod pool;
pub mod pool_daemon;
pub mod prototype;
pub mod run;
pub mod sandbox;
pub mod serve;

use clap::{Parser, Subcommand};

/// Exit code for IronClaw's own failures (not the command's), as docker run uses.
pub const EXIT_IRONCLAW_ERROR: u8 = 125;

#[derive(Parser)]
#[command(
    name = "ironclaw",
    version,
    about = "Run commands in just-in-time microVMs: no network, vsock only, destroyed afterwards.",
    after_help = "Exit status of `run` and `sandbox exec`: the command's own, 128+N when it was killed by signal N, \
                  124 when --timeout killed it, 125 when IronClaw itself failed."
)]
pub struct Cli {
    /// Show what happens (backend, accelerator, timings, confinement).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a command in a fresh microVM and print its output; exits with its exit code.
    ///
    /// Example: ironclaw run -- sh -c 'echo hello from $(uname -r); exit 3'
    Run(Box<run::RunArgs>),
    /// Check what this host can run (KVM, QEMU, kernel, vsock daemon) and what will be used.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Skip the prototype check (building, restoring and timing a snapshot clone).
        #[arg(long)]
        quick: bool,
    },
    /// Keep a warm pool of VMs for `ironclaw run --pool` (a long-lived daemon).
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Build, list or remove prototypes (snapshots that VMs are cloned from).
    #[command(subcommand)]
    Prototype(prototype::PrototypeCmd),
    /// Measure spawn and exec latency side by side with bare QEMU (writes docs/benchmarks.md with --output).
    Bench(bench::BenchArgs),
    /// Build and list root file system images (the guest's userland, e.g. python3).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Serve sandboxes an agent can hold: REST API and MCP on a unix socket (and TCP with --listen).
    ///
    /// Example: ironclaw serve & id=$(ironclaw sandbox create); ironclaw sandbox exec $id -- uname -a
    Serve(Box<serve::ServeArgs>),
    /// Create and use sandboxes of a running `ironclaw serve`: create, exec, cp, ls, inspect, rm, logs, timeout,
    /// snapshot, fork, pause, resume.
    ///
    /// Example: id=$(ironclaw sandbox create --timeout 10m); ironclaw sandbox exec $id -- uname -a
    Sandbox(sandbox::SandboxArgs),
    /// List, inspect and remove snapshots of sandboxes (taken by `ironclaw sandbox snapshot` or `fork`).
    ///
    /// Example: ironclaw snapshot ls; ironclaw snapshot rm after-setup
    Snapshot(sandbox::snapshot::SnapshotArgs),
    /// Serve the sandbox tools over MCP on stdin/stdout (for desktop agents); its sandboxes end with it.
    ///
    /// Example (an agent's MCP config): {"command": "ironclaw", "args": ["mcp"]}
    Mcp(Box<mcp::McpArgs>),
}

impl Command {
    /// Whether the VM comes from `--config FILE` (errors then name its fields).
    pub fn uses_config_file(&self) -> bool {
        let machine = match self {
            Command::Run(args) => &args.machine,
            Command::Pool(pool::PoolCmd::Serve(args)) => &args.machine,
            Command::Prototype(prototype::PrototypeCmd::Build { machine, .. }) => machine,
            Command::Bench(args) => &args.machine,
            Command::Serve(args) => &args.machine,
            Command::Mcp(args) => &args.machine,
            _ => return false,
        };
        machine.config.is_some()
    }

    /// Runs the subcommand; returns the process exit code.
    pub async fn execute(self, verbose: bool) -> anyhow::Result<i32> {
        match self {
            Command::Run(args) => run::run(*args, verbose).await,
            Command::Doctor { json, quick } => doctor::doctor_command(json, quick).await,
            Command::Prototype(cmd) => prototype::prototype_command(cmd).await,
            Command::Pool(cmd) => pool::pool_command(cmd).await,
            Command::Bench(args) => bench::run(args).await.map(|()| 0),
            Command::Image(cmd) => image::image_command(cmd, verbose).await,
            Command::Serve(args) => serve::serve(*args).await,
            Command::Sandbox(args) => sandbox::sandbox_command(args).await,
            Command::Snapshot(args) => sandbox::snapshot_command(args).await,
            Command::Mcp(args) => mcp::mcp(*args).await,
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP: each ends a run or the pool daemon cleanly
/// (VMs destroyed).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next of the three; returns its number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}
