//! `ironclaw run`: one command in a fresh microVM (a prototype clone, a cold
//! boot, or a VM of the pool daemon), its output streamed, its exit status
//! passed on.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ironclaw_orchestrator::agent::{AgentClient, AgentError, ExecEvent, FileError};
use ironclaw_orchestrator::vm::{self, ExecRequest};

use super::field_flags::Refusal;
use super::machine::{self, ImageArgs, MachineArgs};
use super::{pool_daemon, Signals};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Boot the VM from scratch instead of cloning it from a prototype snapshot.
    #[arg(long, conflicts_with = "pool")]
    pub cold: bool,
    /// Run in a VM from the warm pool of `ironclaw pool serve` (its socket by
    /// default, or --pool-socket). The pool's machine shape applies: machine,
    /// image and confinement flags are refused with it.
    #[arg(long)]
    pub pool: bool,
    /// Socket of the pool daemon (default: <runtime dir>/pool.sock).
    #[arg(long, requires = "pool")]
    pub pool_socket: Option<PathBuf>,
    /// Kill the command after this many seconds (exit code 124). Should the
    /// guest not report the end within 5 s more, the VM is destroyed (exit
    /// code 124; 125 when a file copy stops making progress for 30 s).
    #[arg(long, value_name = "S")]
    pub timeout: Option<f64>,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory of the command in the guest.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Copy a local file into the guest before the command (repeatable).
    #[arg(long = "copy-in", value_name = "LOCAL:GUEST")]
    pub copy_in: Vec<String>,
    /// Copy a guest file out after the command, to exactly LOCAL (repeatable).
    /// Written with mode 0644 whatever its mode in the guest.
    #[arg(long = "copy-out", value_name = "GUEST:LOCAL")]
    pub copy_out: Vec<String>,
    /// Refuse a --copy-out file larger than this many MiB (the guest decides
    /// what it sends; nothing is kept of a refused file).
    #[arg(long = "copy-out-max", value_name = "MIB", default_value_t = 1024)]
    pub copy_out_max: u64,
    #[command(flatten)]
    pub machine: MachineArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// Runs the command; returns its exit status as the process exit code.
pub async fn run(args: RunArgs, verbose: bool) -> anyhow::Result<i32> {
    let t_start = std::time::Instant::now();
    let mut env = BTreeMap::new();
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
        .map(|s| parse_copy_in(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let copy_out_options = ironclaw_orchestrator::agent::GetFileOptions {
        max_bytes: args.copy_out_max.saturating_mul(1 << 20),
        ..Default::default()
    };
    let copy_out = args
        .copy_out
        .iter()
        .map(|s| parse_copy_out(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let forward_stdin = !std::io::stdin().is_terminal();
    if args.pool {
        return run_in_pool(
            args,
            env,
            !copy_in.is_empty() || !copy_out.is_empty(),
            forward_stdin,
        )
        .await;
    }
    let mut id_bytes = [0u8; 6];
    getrandom::getrandom(&mut id_bytes).context("random VM id")?;
    let id = format!("run-{}", hex::encode(id_bytes));
    let config = machine::vm_config(&id, &args.machine, Some(&args.image), args.timeout).await?;
    let t_config = t_start.elapsed();

    let mut signals = Signals::new()?;
    let progress = |msg: &str| eprintln!("ironclaw: {msg}");
    let spawn = async {
        if args.cold {
            vm::spawn_vm_with_config(&id, &config).await
        } else {
            vm::prototype::spawn_from_prototype(&id, &config, &progress).await
        }
    };
    let t_spawn = std::time::Instant::now();
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
        keep_background: false,
    };
    let spawned = t_spawn.elapsed();
    let mut exec_time = std::time::Duration::ZERO;
    let work = async {
        for (local, guest) in &copy_in {
            copy_file_in(vm.agent(), local, guest)
                .await
                .with_context(|| format!("--copy-in {}:{guest}", local.display()))?;
        }
        let t_exec = std::time::Instant::now();
        let code = stream_exec(vm.agent(), req).await?;
        exec_time = t_exec.elapsed();
        for (guest, local) in &copy_out {
            vm.agent()
                .get_file_with(guest, local, copy_out_options)
                .await
                .with_context(|| format!("--copy-out {guest}:{}", local.display()))?;
        }
        Ok(code)
    };
    let outcome = tokio::select! {
        r = work => r,
        sig = signals.recv() => Ok(128 + sig),
    };
    let timings = vm.timings;
    let t_destroy = std::time::Instant::now();
    vm::destroy_vm(vm).await?;
    if verbose {
        // One line `ironclaw bench --only run` reads (all in ms).
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        eprintln!(
            "ironclaw: timings: config {:.1} ms, prototype {:.1} ms, launch {:.1} ms, \
             connect {:.1} ms, exec {:.1} ms, destroy {:.1} ms, total {:.1} ms",
            ms(t_config),
            ms(spawned.saturating_sub(timings.total)),
            ms(timings.launch),
            ms(timings.boot),
            ms(exec_time),
            ms(t_destroy.elapsed()),
            ms(t_start.elapsed()),
        );
    }
    gave_up(outcome, "the VM was destroyed")
}

/// A request whose host-side deadline passed (the guest stopped answering):
/// said as such, and exit code 124 for a command, 125 for a file copy.
fn gave_up(outcome: anyhow::Result<i32>, what_then: &str) -> anyhow::Result<i32> {
    let Err(e) = outcome else { return outcome };
    let Some(exec) = deadline_of(&e) else {
        return Err(e);
    };
    eprintln!("ironclaw: {e:#}; {what_then}");
    Ok(if exec { 124 } else { 125 })
}

/// Whether `e` is a host-side deadline, and if so whether of a command.
fn deadline_of(e: &anyhow::Error) -> Option<bool> {
    e.chain().find_map(|cause| {
        let agent = cause.downcast_ref::<AgentError>().or_else(|| {
            match cause.downcast_ref::<FileError>() {
                Some(FileError::Agent(a)) => Some(a),
                _ => None,
            }
        })?;
        match agent {
            AgentError::Deadline { what, .. } => Some(what.is_exec()),
            _ => None,
        }
    })
}

/// `run --pool`: the daemon's VMs are booted by the daemon, which serves exec
/// only; every flag it would ignore is refused by name.
async fn run_in_pool(
    args: RunArgs,
    env: BTreeMap<String, String>,
    copies: bool,
    forward_stdin: bool,
) -> anyhow::Result<i32> {
    let mut ignored = Vec::new();
    if args.machine.config.is_some() {
        ignored.push("--config");
    }
    ignored.extend(args.machine.given());
    ignored.extend(args.image.given());
    if !ignored.is_empty() {
        return Err(Refusal(format!(
            "{} cannot be used with --pool: the pool's VMs have the machine shape \
             `ironclaw pool serve` was started with (give these flags to it instead)",
            ignored.join(", ")
        ))
        .into());
    }
    if copies {
        return Err(Refusal(
            "--copy-in and --copy-out are not supported with --pool yet \
             (the pool daemon serves exec requests only)"
                .into(),
        )
        .into());
    }
    let timeout_ms = args
        .timeout
        .map(|t| machine::secs_to_ms("--timeout", t))
        .transpose()?;
    let socket = args.pool_socket.unwrap_or_else(pool_daemon::default_socket);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let who = "it serves its own user, root and the members of its --group";
    let stream = match tokio::net::UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(anyhow::Error::new(e).context(format!(
                "this user (uid {uid}) is not allowed to use the pool daemon at {} ({who})",
                socket.display()
            )))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "no pool daemon at {} (start one with `ironclaw pool serve`)",
                socket.display()
            )))
        }
    };
    // A daemon closes a peer it does not allow before answering hello.
    let client = match AgentClient::handshake(Box::new(stream)).await {
        Ok(c) => c,
        Err(e @ (AgentError::Closed | AgentError::Protocol(_))) => {
            return Err(anyhow::Error::new(e).context(format!(
                "the pool daemon at {} closed the connection: this user (uid {uid}) is \
                 probably not allowed ({who})",
                socket.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let req = ExecRequest {
        argv: args.command,
        env,
        cwd: args.workdir,
        stdin: forward_stdin,
        timeout_ms,
        keep_background: false,
    };
    let mut signals = Signals::new()?;
    let outcome = tokio::select! {
        // The daemon's refusals ("limit reached: …") are its own, not the guest's.
        r = stream_exec(&client, req) => r.map_err(|e| match e.downcast::<AgentError>() {
            Ok(AgentError::Remote(message)) => anyhow::anyhow!("the pool daemon: {message}"),
            Ok(other) => other.into(),
            Err(e) => e,
        }),
        // Closing the connection makes the daemon kill the command and destroy its VM.
        sig = signals.recv() => Ok(128 + sig),
    };
    gave_up(outcome, "the connection to the pool daemon is closed")
}

/// Runs `req`, streaming stdin in and stdout/stderr out; returns the shell
/// exit code (the command's, 128+N on signal N, 124 on timeout).
async fn stream_exec(agent: &AgentClient, req: ExecRequest) -> anyhow::Result<i32> {
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

/// `--copy-in LOCAL:GUEST`: split at the last colon (the guest path has none).
fn parse_copy_in(spec: &str) -> anyhow::Result<(PathBuf, String)> {
    let (l, g) = spec
        .rsplit_once(':')
        .filter(|(l, g)| !l.is_empty() && !g.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--copy-in {spec:?} is not of the form LOCAL:GUEST"))?;
    Ok((PathBuf::from(l), g.to_string()))
}

/// `--copy-out GUEST:LOCAL`: split at the first colon (the guest path has none).
fn parse_copy_out(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let (g, l) = spec
        .split_once(':')
        .filter(|(g, l)| !l.is_empty() && !g.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--copy-out {spec:?} is not of the form GUEST:LOCAL"))?;
    Ok((g.to_string(), PathBuf::from(l)))
}

/// Copies `local` into the guest at `guest`, creating the guest's parent directories.
async fn copy_file_in(agent: &AgentClient, local: &Path, guest: &str) -> Result<u64, FileError> {
    if let Some(parent) = Path::new(guest).parent().and_then(Path::to_str) {
        if !parent.is_empty() && parent != "/" {
            agent.mkdir(parent, 0o755, true).await?;
        }
    }
    agent.put_file(local, guest).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_told_apart_from_other_errors() {
        use ironclaw_orchestrator::agent::DeadlineOf;
        use std::time::Duration;
        let exec = AgentError::Deadline {
            what: DeadlineOf::Exec,
            after: Duration::from_secs(8),
        };
        let file = FileError::Agent(AgentError::Deadline {
            what: DeadlineOf::File {
                op: "get",
                path: "/tmp/f".into(),
            },
            after: Duration::from_secs(30),
        });
        assert_eq!(deadline_of(&anyhow::Error::from(exec)), Some(true));
        let file = anyhow::Error::from(file).context("--copy-out /tmp/f:x");
        assert_eq!(deadline_of(&file), Some(false));
        assert_eq!(gave_up(Err(file), "gone").unwrap(), 125);
        let other = anyhow::Error::from(AgentError::Closed);
        assert_eq!(deadline_of(&other), None);
        assert!(gave_up(Err(other), "gone").is_err());
        assert_eq!(gave_up(Ok(3), "gone").unwrap(), 3);
    }

    #[test]
    fn copy_specs() {
        assert_eq!(
            parse_copy_in("a:b/c.txt:/root/c.txt").unwrap(),
            (PathBuf::from("a:b/c.txt"), "/root/c.txt".to_string())
        );
        assert_eq!(
            parse_copy_out("/root/out.txt:./x:y").unwrap(),
            ("/root/out.txt".to_string(), PathBuf::from("./x:y"))
        );
        for bad in ["nocolon", ":x", "x:"] {
            assert!(parse_copy_in(bad).is_err(), "{bad}");
            assert!(parse_copy_out(bad).is_err(), "{bad}");
        }
    }
}
