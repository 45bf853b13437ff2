//! `ironclaw serve`: the sandbox service. One long-lived process owns the
//! sandboxes of this host and serves the REST API (and MCP at `/mcp`) on a
//! unix socket (`<runtime root>/ironclaw.sock`, 0600 or 0660 with
//! `--group`), and on TCP with `--listen` (a bearer token required).
//! SIGTERM, SIGINT or SIGHUP destroy every sandbox and remove the socket; a
//! service killed outright is cleaned up by the next start (the runtime
//! root's records name what it left).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio_util::sync::CancellationToken;

use ironclaw_orchestrator::listen::{self, Access, PrivateListener};
use ironclaw_orchestrator::service::api::{self, Caller, TcpCallers, Tokens, UnixCallers};
use ironclaw_orchestrator::service::{Service, ServiceConfig};

use super::field_flags::Refusal;
use super::machine::{self, MachineArgs};
use super::Signals;

/// How long open requests (streams) may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Unix socket to serve on [default: <runtime root>/ironclaw.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Members of this group may use the socket too (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Also serve on TCP at this address (needs --token-file).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Tokens that TCP clients must send (one per line; each is a tenant
    /// that sees only its own sandboxes). The file must be mode 0600.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Also serve the E2B-compatible API (the official E2B SDKs, unchanged,
    /// with E2B_API_URL and E2B_SANDBOX_URL set to this service; they need
    /// TCP, see docs/e2b.md). Control-plane calls send a token of
    /// --token-file as X-API-KEY.
    #[arg(long)]
    pub e2b: bool,
    /// Clones kept ready per sandbox shape.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub pool_size: u32,
    /// Sandboxes alive at once, at most.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
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
    /// Where snapshots and paused sandboxes are kept (one service per
    /// directory) [default: <cache>/snapshots].
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Snapshots and paused sandboxes together, at most, in MiB.
    #[arg(long, default_value_t = 16384, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_snapshot_storage: u64,
    /// Snapshots are removed this many seconds after they were taken.
    #[arg(long, default_value_t = 7 * 86400, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_retention: u64,
    /// Paused sandboxes not resumed within this many seconds are removed.
    #[arg(long, default_value_t = 7 * 86400, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub paused_retention: u64,
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// The service config from the flags, refused before anything starts.
pub async fn service_config(args: &ServeArgs) -> anyhow::Result<ServiceConfig> {
    if args.default_timeout > args.max_timeout {
        return Err(Refusal(format!(
            "--default-timeout {} is longer than --max-timeout {}",
            args.default_timeout, args.max_timeout
        ))
        .into());
    }
    let base = machine::vm_config("sandbox", &args.machine, None, None).await?;
    let mut config = ServiceConfig::new(base);
    config.pool_size = args.pool_size as usize;
    config.max_sandboxes = args.max_sandboxes as usize;
    if let Some(m) = args.max_memory {
        config.max_memory_mib = m;
    }
    config.default_timeout = Duration::from_secs(args.default_timeout);
    config.max_timeout = Duration::from_secs(args.max_timeout);
    if let Some(dir) = &args.snapshot_dir {
        if !dir.is_absolute() {
            return Err(Refusal(format!(
                "--snapshot-dir {}: give an absolute path",
                dir.display()
            ))
            .into());
        }
        config.snapshots.dir = dir.clone();
    }
    config.snapshots.max_bytes = args.max_snapshot_storage << 20;
    config.snapshots.retention = Duration::from_secs(args.snapshot_retention);
    config.snapshots.paused_retention = Duration::from_secs(args.paused_retention);
    Ok(config)
}

/// The router of everything the service serves: the native API, and with
/// `e2b` the E2B-compatible one beside it (its own caller checks).
pub fn app(service: &Service, tokens: Tokens, e2b: bool) -> Router {
    let native = api::router(service.clone(), tokens.clone());
    if e2b {
        native.merge(ironclaw_orchestrator::service::e2b::router(
            service.clone(),
            tokens,
        ))
    } else {
        native
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let tokens = match (&args.listen, &args.token_file) {
        (Some(addr), None) => {
            return Err(Refusal(format!(
                "--listen {addr} needs --token-file: TCP clients must authenticate (a file with one \
                 token per line, mode 0600; e.g. `openssl rand -hex 32 > token && chmod 600 token`)"
            ))
            .into())
        }
        (_, Some(file)) => Tokens::from_file(file).map_err(Refusal)?,
        (None, None) => Tokens::default(),
    };
    let group = args
        .group
        .as_deref()
        .map(listen::resolve_group)
        .transpose()
        .context("invalid --group")?;
    let config = service_config(&args).await?;
    // What a killed service left behind goes before anything new starts.
    ironclaw_orchestrator::vm::runtime::reap_stale_once();
    let socket = args.socket.clone().unwrap_or_else(|| {
        ironclaw_orchestrator::vm::runtime::runtime_root().join("ironclaw.sock")
    });
    let unix = PrivateListener::bind(&socket, Access { group })?;
    let tcp = match args.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--listen {addr}"))?,
        ),
        None => None,
    };

    let service = Service::new(config).map_err(|e| Refusal(e.message))?;
    service.warm_default();
    let app = app(&service, tokens, args.e2b);
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    let unix_app = app.clone().into_make_service_with_connect_info::<Caller>();
    let s = stop.clone();
    servers.push(tokio::spawn(async move {
        axum::serve(UnixCallers(unix), unix_app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await
    }));
    let mut where_ = format!("unix:{}", socket.display());
    if let Some(tcp) = tcp {
        where_ += &format!(" and http://{}", tcp.local_addr()?);
        let tcp_app = app.into_make_service_with_connect_info::<Caller>();
        let s = stop.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(TcpCallers(tcp), tcp_app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
        }));
    }
    if args.e2b && args.listen.is_none() {
        eprintln!(
            "ironclaw: --e2b on the unix socket only: the E2B SDKs need TCP (--listen ADDR --token-file F)"
        );
    }
    let e2b = if args.e2b {
        " with the E2B-compatible API"
    } else {
        ""
    };
    eprintln!("ironclaw: serving sandboxes on {where_}{e2b} (Ctrl-C to stop)");

    let mut signals = Signals::new()?;
    let signal = signals.recv().await;
    eprintln!(
        "ironclaw: signal {signal}: destroying {} sandboxes",
        service.live_count()
    );
    stop.cancel();
    service.shutdown().await;
    for mut server in servers {
        // Open streams end with their sandboxes; do not wait forever for
        // clients. Ending the task drops the listener, which removes the socket.
        if tokio::time::timeout(DRAIN, &mut server).await.is_err() {
            server.abort();
            let _ = server.await;
        }
    }
    eprintln!("ironclaw: stopped");
    Ok(0)
}
