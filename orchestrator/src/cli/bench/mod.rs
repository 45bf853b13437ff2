//! `ironclaw bench`: whole-path latencies measured side by side with the bare
//! tool in the same run, reported as medians and ratios (absolute times on
//! these machines are noisy; ratios taken in one run are not).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ironclaw_orchestrator::vm::pool::{Pool, PoolConfig};
use ironclaw_orchestrator::vm::prototype;
use ironclaw_orchestrator::vm::{self, accel, VmConfig};

use super::machine::{self, MachineArgs};
use bare::{bare_qemu_boot, bare_qemu_restore, FirstRoundTrip};
use stats::{median, ms};

mod bare;
mod density;
mod kernel;
mod load;
mod service;
mod snapshot;
mod soak;
mod speed;
mod stats;
mod userland;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Runs of each measurement (alternating, so drift hits both sides alike).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Exec round trips measured on one VM.
    #[arg(long, default_value_t = 20)]
    pub execs: usize,
    /// Parallel clone spawns measured together.
    #[arg(long, default_value_t = 10)]
    pub parallel: usize,
    /// Write the markdown report here as well as to stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Instead of the latencies: N sandboxes created, used and destroyed in
    /// a row through the library and the service, sampling what a leak
    /// would grow (`make soak` writes docs/reliability.md).
    #[arg(long, value_name = "N")]
    pub soak: Option<usize>,
    /// Only this section of the report (its heading and table).
    #[arg(long, value_enum)]
    pub only: Option<Section>,
    /// The density section adds idle clones until their memory (PSS) passes this.
    #[arg(long, default_value_t = 8192, value_name = "MIB")]
    pub density_budget_mib: u64,
}

/// The sections of the report that can run on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Userland image: cold spawn from it, Python start-up.
    Userland,
    /// Sandbox service (REST API, E2B SDK, MCP).
    Service,
    /// Snapshots of live sandboxes: snapshot, fork, pause, resume.
    Snapshots,
    /// Exec round trip of `true` on running VMs (vsock, virtio-serial, image), with its parts.
    Exec,
    /// Warm-pool acquire → first exec result, with its parts.
    Pool,
    /// `ironclaw run -- true`, wall clock, with its phases.
    Run,
    /// 64 MiB file transfers both ways (vsock and virtio-serial).
    Transfer,
    /// Idle clones held at once and the host memory each costs.
    Density,
    /// The microVM kernel against Debian's: cold boot, prototype size and restore.
    Kernel,
}

/// IronClaw cold spawn until the first `true` has returned its exit status.
async fn ironclaw_cold(
    config: &VmConfig,
    i: usize,
) -> anyhow::Result<(Duration, vm::SpawnTimings)> {
    let t0 = Instant::now();
    let handle =
        vm::spawn_vm_with_config(&format!("bench-{}-{i}", std::process::id()), config).await?;
    let out = handle.agent().run(vm::exec_request(["true"]), None).await?;
    let elapsed = t0.elapsed();
    if out.status.code != Some(0) {
        bail!("`true` failed in the guest: {:?}", out.status);
    }
    let timings = handle.timings;
    vm::destroy_vm(handle).await?;
    Ok((elapsed, timings))
}

/// The default image and `base` booting it, when the image is built.
fn image_config(base: &VmConfig) -> Option<(PathBuf, VmConfig)> {
    let image = ironclaw_orchestrator::userland::default_image()?;
    let config = VmConfig {
        rootfs: Some(image.clone()),
        ..base.clone()
    };
    Some((image, config))
}

/// The text of section `heading` when no default image is built.
fn no_image(heading: &str) -> String {
    format!(
        "\n## {heading}\n\nNot measured: no default image in the cache (`ironclaw image build`).\n"
    )
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The fields after the command name (which may hold spaces) start at `state`.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// The share of one host core the processes of each idle VM use over `window`.
async fn idle_cpu_shares(vms: &[Vec<u32>], window: Duration) -> Vec<f64> {
    let used = |pids: &[u32]| pids.iter().map(|p| cpu_time(*p)).sum::<Duration>();
    let before: Vec<Duration> = vms.iter().map(|p| used(p)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    vms.iter()
        .zip(before)
        .map(|(p, b)| (used(p) - b).as_secs_f64() / elapsed)
        .collect()
}

/// Runs every measurement and prints (and with `--output` writes) the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runs = args.runs.max(1);
    let config = machine::vm_config("bench", &args.machine, None, None).await?;
    if let Some(n) = args.soak {
        let report = soak::report(&config, n.max(1)).await? + &load::section(&config).await?;
        return write_report(&report, args.output.as_deref());
    }
    if let Some(section) = args.only {
        let report = match section {
            Section::Userland => userland::section(&config, runs, args.execs.clamp(1, 10)).await?,
            Section::Service => service::section(&config, args.execs.max(20)).await?,
            Section::Snapshots => snapshot::section(&config, runs).await?,
            Section::Exec => {
                let reference = reference_config(&args.machine).await?;
                speed::exec_section(&config, args.execs, reference.as_ref()).await?
            }
            Section::Pool => speed::pool_section(&config, runs).await?,
            Section::Run => speed::run_section(runs).await?,
            Section::Transfer => {
                let reference = reference_config(&args.machine).await?;
                speed::transfer_section(&config, runs, reference.as_ref()).await?
            }
            Section::Density => density::section(&config, args.density_budget_mib).await?,
            Section::Kernel => kernel::section(&config, runs).await?,
        };
        return write_report(&report, args.output.as_deref());
    }
    let (accel, reason) = accel::choose(config.accel);
    eprintln!("bench: {runs} runs each, accel {accel} ({reason})");
    let mut bare = Vec::new();
    let mut cold = Vec::new();
    let mut boot_parts = Vec::new();
    for i in 0..runs {
        let b = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || bare_qemu_boot(&config, accel)).await??
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

    // Prototype restore vs bare QEMU -incoming of the same snapshot.
    // The reference is bare QEMU loading the same snapshot, so this
    // prototype is QEMU's whatever backend `auto` would pick.
    let qemu_config = vm::VmConfig {
        backend: vm::config::BackendChoice::Qemu,
        ..config.clone()
    };
    let proto = prototype::ensure(&qemu_config, &|m| eprintln!("bench: {m}")).await?;
    let mut bare_running = Vec::new();
    let mut bare_restore = Vec::new();
    let mut bare_exec = Vec::new();
    let mut blocks = Vec::new();
    let mut restore = Vec::new();
    let mut first_exec = Vec::new();
    let mut second_exec = Vec::new();
    for i in 0..runs {
        let hello = bare_qemu_restore(&proto, &config, i, FirstRoundTrip::Hello).await?;
        let (running, b) = (hello.running, hello.first_result);
        bare_running.push(running);
        let exec = bare_qemu_restore(&proto, &config, i, FirstRoundTrip::Exec).await?;
        bare_exec.push(exec.first_result);
        blocks.extend(exec.blocks);
        let t0 = Instant::now();
        let clone = prototype::restore(
            &proto,
            &format!("bench-{}-clone-{i}", std::process::id()),
            &config,
        )
        .await?;
        let restored = t0.elapsed();
        clone.agent().run(vm::exec_request(["true"]), None).await?;
        let r = t0.elapsed();
        first_exec.push(r - restored);
        // The same request again: what it costs once QEMU has translated the path.
        let t1 = Instant::now();
        clone.agent().run(vm::exec_request(["true"]), None).await?;
        second_exec.push(t1.elapsed());
        vm::destroy_vm(clone).await?;
        eprintln!("bench: run {}/{runs}: bare QEMU -incoming {} ms, IronClaw restore to first result {} ms", i + 1, ms(b), ms(r));
        bare_restore.push(b);
        restore.push(r);
    }

    // Warm pool: acquire to first result, with the pool refilled between runs.
    let pool = Pool::start(
        &config,
        PoolConfig {
            size: 2,
            max_memory_mib: 8192,
        },
    )
    .await?;
    let mut acquire = Vec::new();
    let mut idle_pss = Vec::new();
    let mut idle_cpu = Vec::new();
    for i in 0..runs {
        if !pool.wait_ready(2, Duration::from_secs(120)).await {
            bail!("the pool did not fill: {:?}", pool.stats());
        }
        if i == 0 {
            // Memory of idle pooled VMs, measured while they sit ready.
            tokio::time::sleep(Duration::from_millis(500)).await;
            idle_pss.extend(
                pool.ready_pids()
                    .iter()
                    .map(|p| p.iter().map(|pid| pss_kib(*pid)).sum::<u64>()),
            );
            // And the host CPU they burn while nothing runs in them.
            idle_cpu = idle_cpu_shares(&pool.ready_pids(), Duration::from_secs(3)).await;
        }
        let t0 = Instant::now();
        let vm = pool.acquire().await?;
        vm.agent().run(vm::exec_request(["true"]), None).await?;
        acquire.push(t0.elapsed());
        pool.release(vm).await?;
    }
    let pool_stats = pool.stats();
    pool.shutdown().await?;

    // Parallel clone spawns: all started at once, until the last first result.
    let n = args.parallel.max(1);
    let t0 = Instant::now();
    let spawns = (0..n).map(|i| {
        let proto = &proto;
        let config = &config;
        async move {
            let vm = prototype::restore(
                proto,
                &format!("bench-{}-par-{i}", std::process::id()),
                config,
            )
            .await?;
            vm.agent().run(vm::exec_request(["true"]), None).await?;
            let done = t0.elapsed();
            vm::destroy_vm(vm).await?;
            Ok::<_, anyhow::Error>(done)
        }
    });
    let par: Vec<Duration> = futures::future::join_all(spawns)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let par_all = par.iter().max().copied().unwrap_or_default();

    let (bare_m, cold_m) = (median(bare.clone()), median(cold.clone()));
    let launch_m = median(boot_parts.iter().map(|t| t.launch).collect());
    let ratio = cold_m.as_secs_f64() / bare_m.as_secs_f64();
    let restore_ratio =
        median(restore.clone()).as_secs_f64() / median(bare_restore.clone()).as_secs_f64();
    let own_ratio = median(restore.clone()).as_secs_f64() / median(bare_exec.clone()).as_secs_f64();
    let kernel =
        ironclaw_orchestrator::boot::kernel::kernel_release(&config.kernel).unwrap_or_default();
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
    let idle_pss_mib = idle_pss.iter().sum::<u64>() as f64 / idle_pss.len().max(1) as f64 / 1024.0;
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
         Both boot the same kernel (the default: the microVM kernel unless `--kernel` says otherwise). \
         The bare reference stops at the first line of `/init`; IronClaw's path goes on through loading \
         the kernel's modules (none for the microVM kernel), the agent's vsock handshake and one exec \
         round trip, all under the same emulation.\n\n\
         ## Prototype restore and warm pool\n\n\
         | measurement | median ms | runs (ms) |\n|---|---:|---|\n\
         | bare QEMU: start with `-incoming` (same snapshot) → resumed, `running` | {} | {} |\n\
         | bare QEMU: same → first guest round trip (raw hello frame on the serial socket) | {} | {} |\n\
         | bare QEMU: same → agent handshake and the first exec result of `true` (the guest's work of IronClaw's path) | {} | {} |\n\
         | IronClaw: restore a clone → first exec result of `true` (incl. reseed) | {} | {} |\n\
         | IronClaw: warm-pool `acquire` → first exec result of `true` | {} | {} |\n\n\
         **Ratio restore / bare QEMU restore to first round trip: {restore_ratio:.2}** (goal: at most 1.20). \
         Against bare QEMU doing the same guest work (handshake and first `true`), what IronClaw's host side \
         adds (jail, cgroup, QMP, reseed): **{own_ratio:.2}**. \
         **Warm-pool acquire median: {} ms** (goal: under 50 ms). Pool stats after the runs: {:?}.\n\n\
         Where the restore time goes: the first `true` in a fresh clone takes {} ms (median), the \
         second {} ms. Under TCG a restored QEMU starts with an empty translation cache, so the \
         first exec pays for translating the guest's fork/exec path{}; the warm pool runs its command, \
         a reseed and `true` in each clone before offering it, which is why `acquire` meets its goal while a bare restore \
         does not. With KVM the guest runs natively and this step should vanish (not measured: \
         no usable KVM here).\n\n\
         Prototype snapshot: {} MiB on disk for {} MiB of guest memory (prototype boot {} ms, snapshot {} ms).\n\n\
         | measurement | value |\n|---|---:|\n\
         | {n} clones restored in parallel: all first results after (ms) | {} |\n\
         | same, median per clone (ms) | {} |\n\
         | host memory (PSS) per idle pooled VM, MiB | {:.1} |\n\
         | host CPU per idle pooled VM over 3 s, % of one core (each VM) | {} |\n",
        config.memory_mib,
        config.vcpus,
        ms(bare_m),
        list(&bare),
        ms(cold_m),
        list(&cold),
        ms(launch_m),
        ms(median(bare_running.clone())),
        list(&bare_running),
        ms(median(bare_restore.clone())),
        list(&bare_restore),
        ms(median(bare_exec.clone())),
        list(&bare_exec),
        ms(median(restore.clone())),
        list(&restore),
        ms(median(acquire.clone())),
        list(&acquire),
        ms(median(acquire.clone())),
        pool_stats,
        ms(median(first_exec.clone())),
        ms(median(second_exec.clone())),
        translation_note(&blocks),
        proto.disk_bytes() >> 20,
        proto.meta.memory_mib,
        proto.meta.boot_ms,
        proto.meta.snapshot_ms,
        ms(par_all),
        ms(median(par.clone())),
        idle_pss_mib,
        idle_cpu
            .iter()
            .map(|c| format!("{:.1}", c * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let report = report + &speed::exec_section(&config, args.execs, None).await?;
    let report = report + &speed::pool_section(&config, runs).await?;
    let report = report + &speed::run_section(runs).await?;
    let report = report + &speed::transfer_section(&config, runs, None).await?;
    let report = report + &userland::section(&config, runs, args.execs.clamp(1, 10)).await?;
    let report = report + &service::section(&config, args.execs.max(20)).await?;
    let report = report + &snapshot::section(&config, runs).await?;
    let report = report + &density::section(&config, args.density_budget_mib).await?;
    let report = report + &kernel::section(&config, runs).await?;
    write_report(&report, args.output.as_deref())
}

/// What the bare reference's `info jit` counts say about the first exec.
fn translation_note(blocks: &[bare::TranslatedBlocks]) -> String {
    if blocks.is_empty() {
        return String::new();
    }
    let med = |f: fn(&bare::TranslatedBlocks) -> u64| {
        let mut v: Vec<u64> = blocks.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    format!(
        " (QEMU's own count, `info jit` in the bare reference, medians: the agent's handshake made it \
         translate {} blocks of guest code, the first `true` {} more — the kernel's clone, exec, \
         fault and exit paths, the program, the agent's exec handling —, the second `true` {}: a raw \
         hello is a fraction of the guest code the first command runs, so no host side can bring \
         restore → first exec near the raw hello's time under TCG)",
        med(|b| b.handshake),
        med(|b| b.first_exec),
        med(|b| b.second_exec)
    )
}

/// With `$IRONCLAW_BENCH_REFERENCE_GUEST` (another build of the guest agent):
/// the same machine booting that agent, measured alternately with this one
/// (before/after figures from one run, on a machine whose load drifts).
async fn reference_config(machine: &MachineArgs) -> anyhow::Result<Option<VmConfig>> {
    let Some(reference) = std::env::var_os("IRONCLAW_BENCH_REFERENCE_GUEST") else {
        return Ok(None);
    };
    let own = std::env::var_os("IRONCLAW_GUEST_BIN");
    // The initramfs is generated from $IRONCLAW_GUEST_BIN; nothing else runs yet.
    std::env::set_var("IRONCLAW_GUEST_BIN", &reference);
    let config = machine::vm_config("bench-ref", machine, None, None).await;
    match own {
        Some(own) => std::env::set_var("IRONCLAW_GUEST_BIN", own),
        None => std::env::remove_var("IRONCLAW_GUEST_BIN"),
    }
    let config = config?;
    eprintln!(
        "bench: reference guest {} (initramfs {})",
        std::path::Path::new(&reference).display(),
        config.initramfs.display()
    );
    Ok(Some(config))
}

fn write_report(report: &str, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    print!("{report}");
    if let Some(path) = output {
        std::fs::write(path, report).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}
