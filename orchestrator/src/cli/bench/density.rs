//! Density: idle clones of one prototype held at once, and the host memory
//! (PSS) each costs, with clones sharing the prototype's memory
//! copy-on-write beside today's copying restore (a snapshot with the RAM in
//! its stream, which each clone loads into memory of its own).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ironclaw_orchestrator::vm::prototype::{self, Prototype};
use ironclaw_orchestrator::vm::runtime::{self, RuntimeDir};
use ironclaw_orchestrator::vm::{self, VmConfig, VmHandle};

use super::stats::{median, ms};
use super::{idle_cpu_shares, pss_kib};

/// Clone counts at which memory is sampled.
const CHECKPOINTS: [usize; 3] = [1, 10, 20];
/// The name under which a jailed clone's VMM maps the prototype's memory file.
const RAM_MAPPING: &str = "boot-memory";
/// The budget run stops here: the number of idle sandboxes a 24 GiB host
/// should hold with room to spare.
const MAX_CLONES: usize = 100;

/// How clones get their memory.
#[derive(Clone, Copy, PartialEq)]
enum Memory {
    Shared,
    Copied,
}

/// What one way of cloning measured.
struct Held {
    /// (clones held, mean PSS per clone in MiB).
    pss: Vec<(usize, f64)>,
    /// Restore → first result of `true`, per clone.
    ready: Vec<Duration>,
    /// Clones held before their PSS passed the budget (the shared run only).
    fit: Option<usize>,
    idle_cpu: f64,
    /// Where each clone's PSS goes, averaged at the last checkpoint.
    breakdown: Breakdown,
    /// At the end of the budget run: the clones' PSS together, and how
    /// much the host's `MemAvailable` fell since the first clone.
    total_mib: f64,
    available_drop_mib: f64,
}

/// One clone's PSS split by what the pages hold, in KiB.
#[derive(Default, Clone, Copy)]
struct Breakdown {
    /// Guest RAM the clone wrote since the restore (its copy-on-write pages).
    guest_private: u64,
    /// Its share of guest RAM pages it maps from the prototype's file.
    guest_shared: u64,
    /// TCG's translated code (the executable anonymous mapping).
    tcg_code: u64,
    /// Everything else: QEMU's heap (TCG's TLBs among it), libraries, stacks.
    rest: u64,
}

impl Breakdown {
    /// Reads `/proc/<pid>/smaps`: `ram_file` names the guest memory mapping.
    fn of(pid: u32, ram_file: &str) -> Breakdown {
        let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
            return Breakdown::default();
        };
        let mut b = Breakdown::default();
        let (mut ram, mut code) = (false, false);
        let field = |line: &str| -> u64 {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let mut pss = 0;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let head = words.next().unwrap_or("");
            if !head.ends_with(':') {
                let perms = words.next().unwrap_or("");
                ram = line.ends_with(ram_file);
                code = perms == "rwxp" && line.split_whitespace().count() == 5;
                continue;
            }
            match head {
                "Pss:" => {
                    pss = field(line);
                    if code {
                        b.tcg_code += pss;
                    } else if !ram {
                        b.rest += pss;
                    }
                }
                "Private_Dirty:" if ram => {
                    let private = field(line);
                    b.guest_private += private;
                    b.guest_shared += pss.saturating_sub(private);
                }
                _ => {}
            }
        }
        b
    }

    fn add(&mut self, o: Breakdown) {
        self.guest_private += o.guest_private;
        self.guest_shared += o.guest_shared;
        self.tcg_code += o.tcg_code;
        self.rest += o.rest;
    }
}

pub async fn section(config: &VmConfig, budget_mib: u64) -> anyhow::Result<String> {
    let config = VmConfig {
        backend: vm::config::BackendChoice::Qemu,
        ..config.clone()
    };
    let proto = prototype::ensure(&config, &|m| eprintln!("bench: {m}")).await?;
    let shared_files = proto.files();
    let sharing = shared_files.len() == 2;

    // The copying reference: one clone's full snapshot (RAM in the stream).
    let stash = RuntimeDir::create(
        &runtime::runtime_root(),
        &format!("bench-density-{}", std::process::id()),
    )
    .context("a directory for the copying snapshot")?;
    let copied_files = {
        let vm = prototype::restore(&proto, &name("source", 0), &config).await?;
        vm.agent().run(vm::exec_request(["true"]), None).await?;
        let written = vm.snapshot_live(stash.path(), vm::LiveCopy::Paused).await;
        vm::destroy_vm(vm).await?;
        let written = written?;
        written
            .files
            .iter()
            .map(|f| stash.file(f))
            .collect::<Vec<PathBuf>>()
    };
    let copied_bytes: u64 = copied_files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();

    let copied = hold(&proto, &config, &copied_files, Memory::Copied, budget_mib).await?;
    let shared = hold(&proto, &config, &shared_files, Memory::Shared, budget_mib).await?;
    drop(stash);

    let on_disk = |f: &PathBuf| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(f).map(|m| m.blocks() * 512).unwrap_or(0)
    };
    let proto_disk: u64 = shared_files.iter().map(on_disk).sum();
    let mut out = String::from("## Density: idle clones of one prototype\n\n");
    out += &format!(
        "Clones of one {} MiB prototype restored one after another and held idle (each ran one `true`, \
         as the warm pool does); host memory is the proportional set size (PSS) of each clone's \
         processes, so pages several clones share count once in all. **Shared**: clones map the \
         prototype's memory file copy-on-write{}. **Copied**: today's restore, each clone loading the RAM \
         from a {} MiB migration stream into memory of its own.\n\n",
        proto.meta.memory_mib,
        if sharing {
            ""
        } else {
            " (not available: this QEMU cannot, so both rows copy)"
        },
        copied_bytes >> 20,
    );
    out += "| clones held | PSS per clone, shared (MiB) | PSS per clone, copied (MiB) | ratio |\n|---:|---:|---:|---:|\n";
    for (i, &n) in CHECKPOINTS.iter().enumerate() {
        let (s, c) = (shared.pss[i].1, copied.pss[i].1);
        out += &format!("| {n} | {s:.1} | {c:.1} | {:.2} |\n", s / c);
    }
    let at20 = shared.pss[CHECKPOINTS.len() - 1].1;
    out += &format!(
        "\n**PSS per idle clone at 20 clones: {at20:.1} MiB** (goal: at most 40 MiB). \
         Restore → first result of `true`: shared {} ms, copied {} ms (medians over the first 20 clones of each). \
         Idle host CPU per clone at 20 clones: shared {:.1} %, copied {:.1} % of one core.\n\n",
        ms(median(shared.ready.clone())),
        ms(median(copied.ready.clone())),
        shared.idle_cpu * 100.0,
        copied.idle_cpu * 100.0,
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let b = shared.breakdown;
    out += &format!(
        "Where a shared clone's PSS goes at 20 clones (MiB): guest RAM it wrote since the restore \
         (its own copies) {:.1}; its share of the prototype's pages {:.1}; TCG's translated code {:.1}; \
         the rest of QEMU (heap — TCG's TLBs among it —, libraries, stacks) {:.1}. The guest itself \
         costs little; most of a clone is the emulator's own state, which a KVM host does not have \
         (no translated code, no software TLB; not measured here: no usable KVM).\n\n",
        mib(b.guest_private),
        mib(b.guest_shared),
        mib(b.tcg_code),
        mib(b.rest),
    );
    let fit = shared.fit.unwrap_or(0);
    let idle_cores = fit as f64 * shared.idle_cpu;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    out += &format!(
        "Budget run: shared clones added one by one until {MAX_CLONES} were held or their PSS \
         together passed {budget_mib} MiB: **{fit} idle clones held at once**, {:.0} MiB of PSS in \
         all; the host's `MemAvailable` fell by {:.0} MiB meanwhile (24 GiB host). At the idle \
         CPU measured per clone at 20 clones, {fit} idle clones take {:.0} % of one host core \
         ({} of this host's {cores}). Prototype on disk: {} MiB (the memory file is sparse: pages \
         the guest never touched take no space).\n\n",
        shared.total_mib,
        shared.available_drop_mib,
        idle_cores * 100.0,
        if idle_cores < cores as f64 / 2.0 {
            "under half"
        } else {
            "a large share"
        },
        proto_disk >> 20,
    );
    Ok(out)
}

fn name(what: &str, i: usize) -> String {
    format!("bench-{}-density-{what}-{i}", std::process::id())
}

/// Restores clones from `files` one after another, sampling PSS at each
/// checkpoint (and, sharing, on until `budget_mib`), then destroys them all.
async fn hold(
    proto: &Prototype,
    config: &VmConfig,
    files: &[PathBuf],
    memory: Memory,
    budget_mib: u64,
) -> anyhow::Result<Held> {
    let tag = match memory {
        Memory::Shared => "shared",
        Memory::Copied => "copied",
    };
    let mut vms: Vec<VmHandle> = Vec::new();
    let mut held = Held {
        pss: Vec::new(),
        ready: Vec::new(),
        fit: None,
        idle_cpu: 0.0,
        breakdown: Breakdown::default(),
        total_mib: 0.0,
        available_drop_mib: 0.0,
    };
    let available_mib_before = mem_available_mib();
    let result = async {
        let last = *CHECKPOINTS.last().expect("checkpoints");
        loop {
            let n = vms.len();
            let total_mib = total_pss_mib(&vms);
            if n >= last {
                let over =
                    memory == Memory::Copied || total_mib > budget_mib as f64 || n >= MAX_CLONES;
                if over {
                    if memory == Memory::Shared {
                        held.fit = Some(if total_mib > budget_mib as f64 {
                            n - 1
                        } else {
                            n
                        });
                        held.total_mib = total_mib;
                        held.available_drop_mib = available_mib_before - mem_available_mib();
                    }
                    break;
                }
            }
            let t0 = Instant::now();
            let cfg = prototype::clone_config(proto, &name(tag, n), config);
            let vm = vm::restore_vm(&cfg, files).await?;
            vms.push(vm);
            let vm = vms.last().expect("just pushed");
            vm.agent().run(vm::exec_request(["true"]), None).await?;
            if vms.len() <= last {
                // Later clones of the budget run restore beside many idle
                // ones: only the first `last` are compared.
                held.ready.push(t0.elapsed());
            }
            if CHECKPOINTS.contains(&vms.len()) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let per = total_pss_mib(&vms) / vms.len() as f64;
                eprintln!(
                    "bench: density {tag}: {} clones, {per:.1} MiB PSS each",
                    vms.len()
                );
                held.pss.push((vms.len(), per));
                if vms.len() == last {
                    let pids: Vec<Vec<u32>> = vms.iter().map(|v| v.pids()).collect();
                    let mut sum = Breakdown::default();
                    for pid in pids.iter().flatten() {
                        sum.add(Breakdown::of(*pid, RAM_MAPPING));
                    }
                    let n = vms.len() as u64;
                    held.breakdown = Breakdown {
                        guest_private: sum.guest_private / n,
                        guest_shared: sum.guest_shared / n,
                        tcg_code: sum.tcg_code / n,
                        rest: sum.rest / n,
                    };
                    let cpu = idle_cpu_shares(&pids, Duration::from_secs(3)).await;
                    held.idle_cpu = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    for vm in vms {
        vm::destroy_vm(vm).await?;
    }
    result?;
    Ok(held)
}

fn total_pss_mib(vms: &[VmHandle]) -> f64 {
    let kib: u64 = vms.iter().flat_map(|v| v.pids()).map(pss_kib).sum();
    kib as f64 / 1024.0
}

/// The host's `MemAvailable`, in MiB.
fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}
