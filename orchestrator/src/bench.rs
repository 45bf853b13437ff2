//! `ironclaw bench`: whole-path latencies measured side by side with the bare
//! tool in the same run, reported as medians and ratios (absolute times on
//! these machines are noisy; ratios taken in one run are not).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::vm::{self, accel, qemu, VmConfig, VmError};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Runs of each measurement (alternating, so drift hits both sides alike).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Exec round trips measured on one VM.
    #[arg(long, default_value_t = 20)]
    pub execs: usize,
    /// Write the markdown report here as well as to stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// The line the guest prints first thing in `/init`.
const INIT_MARKER: &str = "ironclaw-guest: /init started";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// Bare QEMU, same machine, kernel and initramfs, no IronClaw: time from
/// starting QEMU until `/init` prints its first line on the serial console.
fn bare_qemu_boot(config: &VmConfig, accel: accel::Accel) -> Result<Duration, VmError> {
    let qemu = qemu::which(qemu::QEMU_BINARY).ok_or_else(|| VmError::MissingTool {
        tool: qemu::QEMU_BINARY.into(),
        hint: "scripts/setup.sh".into(),
    })?;
    let mem = config.memory_mib;
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,pit=on,acpi=on",
        "-accel",
        if accel == accel::Accel::Kvm {
            "kvm"
        } else {
            "tcg"
        },
    ]);
    cmd.args(["-m", &format!("{mem}M"), "-smp", &config.vcpus.to_string()]);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-nic",
        "none",
    ]);
    cmd.args(["-serial", "stdio"]);
    cmd.arg("-kernel")
        .arg(&config.kernel)
        .arg("-initrd")
        .arg(&config.initramfs);
    cmd.args(["-append", qemu::KERNEL_ARGS]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child =
        vm::process::spawn_child(cmd).map_err(|e| VmError::io("starting bare qemu", e))?;
    let stdout = child.stdout.take().expect("piped");
    let mut found = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains(INIT_MARKER) {
            found = Some(t0.elapsed());
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    vm::process::kill_and_reap(&mut child);
    found.ok_or_else(|| VmError::Backend("bare QEMU never reached /init".into()))
}

/// IronClaw cold spawn until the first `true` has returned its exit status.
async fn ironclaw_cold(
    config: &VmConfig,
    i: usize,
) -> Result<(Duration, vm::SpawnTimings), VmError> {
    let t0 = Instant::now();
    let handle =
        vm::spawn_vm_with_config(&format!("bench-{}-{i}", std::process::id()), config).await?;
    let out = handle.agent().run(vm::exec_request(["true"]), None).await?;
    let elapsed = t0.elapsed();
    if out.status.code != Some(0) {
        return Err(VmError::Backend(format!(
            "`true` failed in the guest: {:?}",
            out.status
        )));
    }
    let timings = handle.timings;
    vm::destroy_vm(handle).await?;
    Ok((elapsed, timings))
}

pub async fn run(args: BenchArgs) -> Result<(), VmError> {
    let runs = args.runs.max(1);
    let config = vm::default_config("bench")?;
    let (accel, reason) = accel::choose(config.accel);
    eprintln!("bench: {runs} runs each, accel {accel} ({reason})");
    let mut bare = Vec::new();
    let mut cold = Vec::new();
    let mut boot_parts = Vec::new();
    for i in 0..runs {
        let b = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || bare_qemu_boot(&config, accel))
                .await
                .map_err(|e| VmError::Backend(e.to_string()))??
        };
        let (c, t) = ironclaw_cold(&config, i).await?;
        eprintln!(
            "bench: run {}/{runs}: bare QEMU to /init {} ms, IronClaw spawn to first result {} ms",
            i + 1,
            ms(b),
            ms(c)
        );
        bare.push(b);
        cold.push(c);
        boot_parts.push(t);
    }

    // Exec round trip on one running VM.
    let handle =
        vm::spawn_vm_with_config(&format!("bench-{}-exec", std::process::id()), &config).await?;
    let mut execs = Vec::new();
    for _ in 0..args.execs.max(1) {
        let t0 = Instant::now();
        handle.agent().run(vm::exec_request(["true"]), None).await?;
        execs.push(t0.elapsed());
    }
    vm::destroy_vm(handle).await?;

    let (bare_m, cold_m) = (median(bare.clone()), median(cold.clone()));
    let launch_m = median(boot_parts.iter().map(|t| t.launch).collect());
    let ratio = cold_m.as_secs_f64() / bare_m.as_secs_f64();
    let kernel = crate::image::kernel_release(&config.kernel).unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    let report = format!(
        "# Benchmarks\n\n\
         Produced by `ironclaw bench` (`make bench`); medians of {runs} alternating runs in one process, \
         so both sides see the same machine load. Run: {date}, {cpus} CPUs, accelerator {accel} ({reason}), \
         guest kernel {kernel}, {} MiB, {} vCPU.\n\n\
         ## Cold spawn\n\n\
         | measurement | median ms | runs (ms) |\n|---|---:|---|\n\
         | bare QEMU: start → `/init` prints its first line (same kernel, initramfs, machine) | {} | {} |\n\
         | IronClaw: `spawn_vm` → first exec result of `true` | {} | {} |\n\
         | of which: starting vhost-device-vsock + QEMU until QMP answers | {} | |\n\n\
         **Ratio IronClaw / bare QEMU: {ratio:.2}** (goal: at most 1.10).\n\n\
         The bare reference stops at the first line of `/init`; IronClaw's path goes on through loading \
         the virtio/vsock modules, the agent's vsock handshake and one exec round trip, all under the \
         same emulation.\n\n\
         ## Exec round trip\n\n\
         | measurement | median ms | samples |\n|---|---:|---:|\n\
         | `true` on a running VM (exec request → exit status) | {} | {} |\n",
        config.memory_mib,
        config.vcpus,
        ms(bare_m),
        list(&bare),
        ms(cold_m),
        list(&cold),
        ms(launch_m),
        ms(median(execs.clone())),
        execs.len(),
    );
    print!("{report}");
    if let Some(path) = args.output {
        std::fs::write(&path, &report)
            .map_err(|e| VmError::io(format!("writing {}", path.display()), e))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}
