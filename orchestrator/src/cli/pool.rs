//! `ironclaw pool serve`: starts the library's warm pool ([`Pool`]) with the
//! machine flags and serves it on a unix socket ([`super::pool_daemon`])
//! until SIGINT, SIGTERM or SIGHUP; then every VM is destroyed.

use std::path::PathBuf;
use std::sync::Arc;

use ironclaw_orchestrator::vm::pool::{Pool, PoolConfig};

use super::machine::{self, ImageArgs, MachineArgs};
use super::{pool_daemon, Signals};

#[derive(clap::Subcommand)]
pub enum PoolCmd {
    /// Serve a warm pool on a unix socket until interrupted.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Clones kept ready.
    #[arg(long, default_value_t = 2)]
    pub size: usize,
    /// Memory the ready clones may take in total (MiB); lowers the size to fit.
    #[arg(long, default_value_t = 4096)]
    pub max_memory: u64,
    /// Socket to serve on (default: <runtime dir>/pool.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub machine: MachineArgs,
    #[command(flatten)]
    pub image: ImageArgs,
}

pub async fn pool_command(cmd: PoolCmd) -> anyhow::Result<i32> {
    let PoolCmd::Serve(args) = cmd;
    let config = machine::vm_config("pool", &args.machine, Some(&args.image), None).await?;
    let socket = args.socket.unwrap_or_else(pool_daemon::default_socket);
    let pool = Arc::new(
        Pool::start(
            &config,
            PoolConfig {
                size: args.size,
                max_memory_mib: args.max_memory,
            },
        )
        .await?,
    );
    eprintln!(
        "ironclaw: pool of {} serving on {} (Ctrl-C to stop)",
        pool.stats().target,
        socket.display()
    );
    let mut signals = Signals::new()?;
    pool_daemon::serve(&pool, &socket, async move {
        signals.recv().await;
    })
    .await?;
    eprintln!("ironclaw: stopping the pool: {:?}", pool.stats());
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.shutdown().await?,
        // Requests still running hold the pool; dropping it kills every VM.
        Err(shared) => drop(shared),
    }
    Ok(0)
}
