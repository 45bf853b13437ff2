//! `ironclaw`: the command line. A thin layer over the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ironclaw_orchestrator::agent::ExecEvent;
use ironclaw_orchestrator::vm::config::{AccelChoice, BackendChoice};
use ironclaw_orchestrator::vm::{self, ExecRequest};
use ironclaw_orchestrator::{doctor, image, image_cli};

/// Exit code for IronClaw's own failures (not the command's), as docker run uses.
const EXIT_IRONCLAW_ERROR: u8 = 125;

#[derive(Parser)]
#[command(
    name = "ironclaw",
    version,
    about = "Run commands in just-in-time microVMs: no network, vsock only, destroyed afterwards."
)]
struct Cli {
    /// Show what happens (backend, accelerator, timings, confinement).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a fresh microVM and print its output; exits with its exit code.
    ///
    /// Example: ironclaw run -- sh -c 'echo hello from $(uname -r); exit 3'
    Run(RunArgs),
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
    Pool(PoolCmd),
    /// Build, list or remove prototypes (snapshots that VMs are cloned from).
    #[command(subcommand)]
    Prototype(PrototypeCmd),
    /// Measure spawn and exec latency side by side with bare QEMU (writes docs/benchmarks.md with --output).
    Bench(ironclaw_orchestrator::bench::BenchArgs),
    /// Build and list root file system images (the guest's userland, e.g. python3).
    #[command(subcommand)]
    Image(image_cli::ImageCommand),
}

#[derive(Subcommand)]
enum PrototypeCmd {
    /// Build (or check) the prototype for the given machine shape.
    Build(MachineArgs),
    /// List the prototypes in the cache.
    List,
    /// Remove prototypes whose key starts with KEY.
    Rm { key: String },
}

#[derive(Subcommand)]
enum PoolCmd {
    /// Serve a warm pool on a unix socket until interrupted.
    Serve {
        /// Clones kept ready.
        #[arg(long, default_value_t = 2)]
        size: usize,
        /// Memory the ready clones may take in total (MiB); lowers the size to fit.
        #[arg(long, default_value_t = 4096)]
        max_memory: u64,
        /// Socket to serve on (default: <runtime dir>/pool.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(flatten)]
        machine: MachineArgs,
    },
}

#[derive(clap::Args, Clone)]
struct MachineArgs {
    /// Virtual CPUs of the VM.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u32,
    /// Accelerator: KVM only where it is really usable, else TCG.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Kernel to boot (default: newest /boot/vmlinuz-*).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs to boot (default: generated from the kernel's modules and ironclaw-guest).
    #[arg(long)]
    initramfs: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Boot the VM from scratch instead of cloning it from a prototype snapshot.
    #[arg(long, conflicts_with = "pool")]
    cold: bool,
    /// Run in a VM from the warm pool of `ironclaw pool serve` (its socket by default,
    /// or --pool-socket); the pool's machine shape applies.
    #[arg(long)]
    pool: bool,
    /// Socket of the pool daemon (default: <runtime dir>/pool.sock).
    #[arg(long, requires = "pool")]
    pool_socket: Option<PathBuf>,
    #[command(flatten)]
    machine: MachineArgs,
    /// Kill the command after this many seconds (exit code 124).
    #[arg(long)]
    timeout: Option<f64>,
    /// Give up if the VM has not booted after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    boot_timeout: f64,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory of the command in the guest.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// VMM: Firecracker where it is installed and KVM is usable, else QEMU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Root file system image: a name from `ironclaw image list` or a path
    /// (default: the `default` image when it has been built).
    #[arg(long, value_name = "NAME|PATH", conflicts_with = "no_image")]
    image: Option<String>,
    /// Boot the initramfs only (busybox, no image).
    #[arg(long)]
    no_image: bool,
    /// Size limit of the VM's writable layer over the image, in MiB.
    #[arg(long, value_name = "MIB")]
    overlay_mib: Option<u32>,
    /// Copy a local file into the guest before the command (repeatable).
    #[arg(long = "copy-in", value_name = "LOCAL:GUEST")]
    copy_in: Vec<String>,
    /// Copy a guest file out after the command, to exactly LOCAL (repeatable).
    #[arg(long = "copy-out", value_name = "GUEST:LOCAL")]
    copy_out: Vec<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.verbose {
        "ironclaw_orchestrator=debug,ironclaw=debug"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IRONCLAW_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironclaw: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_IRONCLAW_ERROR);
        }
    };
    let code = rt.block_on(async {
        let result = match cli.command {
            Command::Run(args) => run(args, cli.verbose).await,
            Command::Doctor { json, quick } => Ok(doctor_cmd(json, quick).await),
            Command::Prototype(cmd) => prototype_cmd(cmd).await,
            Command::Pool(PoolCmd::Serve {
                size,
                max_memory,
                socket,
                machine,
            }) => pool_serve(size, max_memory, socket, machine).await,
            Command::Bench(args) => ironclaw_orchestrator::bench::run(args)
                .await
                .map(|()| 0)
                .map_err(Into::into),
            Command::Image(cmd) => image_cli::image_command(cmd, cli.verbose).await,
        };
        result.unwrap_or_else(|e| {
            eprintln!("ironclaw: {e:#}");
            EXIT_IRONCLAW_ERROR as i32
        })
    });
    // Exit without waiting for the blocking stdin reader thread.
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

async fn doctor_cmd(json: bool, quick: bool) -> i32 {
    let mut report = doctor::run();
    if report.can_run() && !quick {
        report.checks.push(doctor::prototype_check().await);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        for c in &report.checks {
            let mark = match c.level {
                doctor::Level::Ok => "ok  ",
                doctor::Level::Info => "info",
                doctor::Level::Fail => "FAIL",
            };
            println!("[{mark}] {:<15} {}", c.name, c.detail);
        }
    }
    if report.can_run() {
        0
    } else {
        1
    }
}

fn machine_config(id: &str, m: MachineArgs) -> anyhow::Result<vm::VmConfig> {
    let kernel = match m.kernel {
        Some(k) => k,
        None => image::default_kernel()?,
    };
    let initramfs = match m.initramfs {
        Some(i) => i,
        None => image::default_initramfs(&kernel)?,
    };
    let mut config = vm::VmConfig::new(id, kernel, initramfs);
    config.vcpus = m.vcpus;
    config.memory_mib = m.mem;
    config.accel = m.accel;
    config.validate()?;
    Ok(config)
}

async fn pool_serve(
    size: usize,
    max_memory: u64,
    socket: Option<PathBuf>,
    m: MachineArgs,
) -> anyhow::Result<i32> {
    use ironclaw_orchestrator::pool_server;
    use ironclaw_orchestrator::vm::pool::{Pool, PoolConfig};
    let config = machine_config("pool", m)?;
    let socket = socket.unwrap_or_else(pool_server::default_socket);
    let pool = std::sync::Arc::new(
        Pool::start(
            &config,
            PoolConfig {
                size,
                max_memory_mib: max_memory,
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
    pool_server::serve(&pool, &socket, async move {
        signals.recv().await;
    })
    .await?;
    eprintln!("ironclaw: stopping the pool: {:?}", pool.stats());
    match std::sync::Arc::try_unwrap(pool) {
        Ok(pool) => pool.shutdown().await?,
        // Requests still running hold the pool; dropping it kills every VM.
        Err(shared) => drop(shared),
    }
    Ok(0)
}

async fn prototype_cmd(cmd: PrototypeCmd) -> anyhow::Result<i32> {
    match cmd {
        PrototypeCmd::Build(m) => {
            let config = machine_config("prototype", m)?;
            let progress = |msg: &str| eprintln!("ironclaw: {msg}");
            let p = vm::prototype::ensure(&config, &progress).await?;
            println!("{}\t{}", p.meta.key, p.dir.display());
        }
        PrototypeCmd::List => {
            println!(
                "{:<22} {:<11} {:>5} {:>7} {:>5} {:>9} {:>8}  kernel",
                "key", "backend", "vcpus", "mem_mib", "accel", "snap_mib", "boot_ms"
            );
            for p in vm::prototype::list() {
                let m = &p.meta;
                println!(
                    "{:<22} {:<11} {:>5} {:>7} {:>5} {:>9} {:>8}  {}",
                    m.key,
                    m.backend.to_string(),
                    m.vcpus,
                    m.memory_mib,
                    m.accel,
                    m.snapshot_bytes() >> 20,
                    m.boot_ms,
                    m.kernel.display()
                );
            }
        }
        PrototypeCmd::Rm { key } => {
            let removed = vm::prototype::remove(&key)?;
            anyhow::ensure!(
                !removed.is_empty(),
                "no prototype key starts with {key:?} (see `ironclaw prototype list`)"
            );
            for k in removed {
                println!("removed {k}");
            }
        }
    }
    Ok(0)
}

fn secs_to_ms(field: &str, s: f64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        s.is_finite() && s > 0.0,
        "--{field} must be a positive number of seconds, got {s}"
    );
    Ok((s * 1000.0).round().max(1.0) as u64)
}

async fn run(args: RunArgs, verbose: bool) -> anyhow::Result<i32> {
    // Before the guest image is prepared: a combination no backend can honour.
    vm::config::check_backend_accel(args.backend, args.machine.accel)?;
    let mut env = std::collections::BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?} is not of the form K=V"))?;
        anyhow::ensure!(!k.is_empty(), "--env {kv:?} has an empty name");
        env.insert(k.to_string(), v.to_string());
    }
    let copy_in = args
        .copy_in
        .iter()
        .map(|s| image_cli::parse_copy_in(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let copy_out = args
        .copy_out
        .iter()
        .map(|s| image_cli::parse_copy_out(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.pool {
        // The daemon's VMs are booted by the daemon; it serves exec only.
        anyhow::ensure!(
            copy_in.is_empty() && copy_out.is_empty() && args.image.is_none() && !args.no_image,
            "--copy-in, --copy-out, --image and --no-image are not supported with --pool yet \
             (the pool daemon serves exec requests only)"
        );
    }
    let forward_stdin = !std::io::stdin().is_terminal();
    if args.pool {
        let timeout_ms = args.timeout.map(|t| secs_to_ms("timeout", t)).transpose()?;
        let socket = args
            .pool_socket
            .unwrap_or_else(ironclaw_orchestrator::pool_server::default_socket);
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .with_context(|| {
                format!(
                    "no pool daemon at {} (start one with `ironclaw pool serve`)",
                    socket.display()
                )
            })?;
        let client = ironclaw_orchestrator::agent::AgentClient::handshake(Box::new(stream)).await?;
        let req = ExecRequest {
            argv: args.command,
            env,
            cwd: args.workdir,
            stdin: forward_stdin,
            timeout_ms,
        };
        let mut signals = Signals::new()?;
        return tokio::select! {
            r = stream_exec(&client, req) => r,
            // Closing the connection makes the daemon kill the command and destroy its VM.
            sig = signals.recv() => Ok(128 + sig),
        };
    }
    let rootfs = image_cli::choose_rootfs(args.image.as_deref(), args.no_image)?;
    let kernel = match args.machine.kernel {
        Some(k) => k,
        None => image::default_kernel()?,
    };
    let initramfs = match args.machine.initramfs {
        Some(i) => i,
        None => {
            if verbose {
                eprintln!("ironclaw: preparing the guest image…");
            }
            tokio::task::spawn_blocking({
                let kernel = kernel.clone();
                move || image::default_initramfs(&kernel)
            })
            .await??
        }
    };
    let mut id_bytes = [0u8; 6];
    getrandom::getrandom(&mut id_bytes).context("random VM id")?;
    let id = format!("run-{}", hex::encode(id_bytes));
    let mut config = vm::VmConfig::new(&id, kernel, initramfs);
    config.vcpus = args.machine.vcpus;
    config.memory_mib = args.machine.mem;
    config.backend = args.backend;
    config.accel = args.machine.accel;
    config.boot_timeout_ms = secs_to_ms("boot-timeout", args.boot_timeout)?;
    config.rootfs = rootfs;
    if let Some(m) = args.overlay_mib {
        config.overlay_mib = m;
    }
    if let Some(t) = args.timeout {
        config.exec_timeout_ms = secs_to_ms("timeout", t)?;
    }
    // Refuse bad input before anything starts.
    config.validate()?;

    let mut signals = Signals::new()?;
    let progress = |msg: &str| eprintln!("ironclaw: {msg}");
    let spawn = async {
        if args.cold {
            vm::spawn_vm_with_config(&id, &config).await
        } else {
            vm::prototype::spawn_from_prototype(&id, &config, &progress).await
        }
    };
    let vm = tokio::select! {
        vm = spawn => vm?,
        sig = signals.recv() => {
            // Dropping the spawn future drops what it started.
            return Ok(128 + sig);
        }
    };
    if verbose {
        eprintln!(
            "ironclaw: VM {} up: backend {}, accel {}, kernel {}, spawn {:.0} ms (launch {:.0} ms, boot {:.0} ms)",
            vm.id,
            vm.backend,
            vm.accel,
            vm.agent().kernel_release(),
            vm.timings.total.as_secs_f64() * 1e3,
            vm.timings.launch.as_secs_f64() * 1e3,
            vm.timings.boot.as_secs_f64() * 1e3
        );
        for process in vm.confinement() {
            eprintln!("ironclaw: confinement: {process}");
        }
    }
    let req = ExecRequest {
        argv: args.command,
        env,
        cwd: args.workdir,
        stdin: forward_stdin,
        timeout_ms: Some(config.exec_timeout_ms),
    };
    let work = async {
        for (local, guest) in &copy_in {
            image_cli::copy_in(vm.agent(), local, guest)
                .await
                .with_context(|| format!("--copy-in {}:{guest}", local.display()))?;
        }
        let code = stream_exec(vm.agent(), req).await?;
        for (guest, local) in &copy_out {
            vm.agent()
                .get_file(guest, local)
                .await
                .with_context(|| format!("--copy-out {guest}:{}", local.display()))?;
        }
        Ok(code)
    };
    let outcome = tokio::select! {
        r = work => r,
        sig = signals.recv() => Ok(128 + sig),
    };
    vm::destroy_vm(vm).await?;
    outcome
}

async fn stream_exec(
    agent: &ironclaw_orchestrator::agent::AgentClient,
    req: ExecRequest,
) -> anyhow::Result<i32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let forward_stdin = req.stdin;
    let mut session = agent.exec(req).await?;
    if forward_stdin {
        let writer = session.stdin_writer();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if writer.write(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = writer.close().await;
        });
    }
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        match session.next_event().await? {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout(b) => {
                stdout.write_all(&b).await?;
                stdout.flush().await?;
            }
            ExecEvent::Stderr(b) => {
                stderr.write_all(&b).await?;
                stderr.flush().await?;
            }
            ExecEvent::Exit(status) => {
                if status.timed_out {
                    eprintln!("ironclaw: the command timed out and was killed");
                } else if let Some(sig) = status.signal {
                    eprintln!("ironclaw: the command was killed by signal {sig}");
                }
                return Ok(status.shell_code());
            }
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP: each ends the run cleanly (VM destroyed).
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}
