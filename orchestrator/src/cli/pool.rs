//! `ironclaw pool serve`: starts the library's warm pool ([`Pool`]) with the
//! machine flags and serves it on a unix socket ([`super::pool_daemon`])
//! until SIGINT, SIGTERM or SIGHUP; then every VM is destroyed.
//!
//! Only its own user, root and the members of `--group` may connect (the
//! socket's modes and `SO_PEERCRED`), and VMs in use are capped per client
//! uid (`--max-per-client`) and in total (`--max-in-use`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ironclaw_orchestrator::listen::{self, Access};
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
    /// Socket to serve on (default: <runtime dir>/pool.sock). Its directory
    /// is created 0700 (0750 with --group), or must already be this user's
    /// and not group- or world-writable.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also serve the members of this group (name or gid): the socket is
    /// then 0660 and its directory 0750, both of this group.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// VMs one client uid may have in use at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_client: u32,
    /// VMs in use at once, all clients together [default: as many as
    /// --max-memory holds].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_use: Option<u32>,
    #[command(flatten)]
    pub machine: MachineArgs,
    #[command(flatten)]
    pub image: ImageArgs,
}

pub async fn pool_command(cmd: PoolCmd) -> anyhow::Result<i32> {
    let PoolCmd::Serve(args) = cmd;
    let config = machine::vm_config("pool", &args.machine, Some(&args.image), None).await?;
    let socket = args.socket.unwrap_or_else(pool_daemon::default_socket);
    let group = args
        .group
        .as_deref()
        .map(listen::resolve_group)
        .transpose()
        .context("invalid --group")?;
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
    if let Some(max) = args.max_in_use {
        pool.limit_in_use(max as usize);
    }
    eprintln!(
        "ironclaw: pool of {} serving on {} (at most {} VMs in use, {} per client; Ctrl-C to stop)",
        pool.stats().target,
        socket.display(),
        pool.max_in_use(),
        args.max_per_client
    );
    let serve = pool_daemon::ServeConfig {
        socket,
        access: Access { group },
        max_per_client: args.max_per_client as usize,
    };
    let mut signals = Signals::new()?;
    pool_daemon::serve(&pool, &serve, async move {
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
