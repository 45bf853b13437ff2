//! The microVM kernel against Debian's, in the same run: cold boot (bare QEMU
//! to `/init`, and IronClaw's spawn to a first exec result), and each
//! kernel's prototype (snapshot size, restore to a first result). Runs
//! alternate between the kernels so drift hits both alike.

use std::time::{Duration, Instant};

use anyhow::Context;
use ironclaw_orchestrator::boot::{initramfs, kernel};
use ironclaw_orchestrator::vm::{self, accel, prototype, VmConfig};

use super::stats::{median, ms};

/// One kernel's samples.
struct Side {
    name: &'static str,
    config: VmConfig,
    release: String,
    bare: Vec<Duration>,
    cold: Vec<Duration>,
    restore: Vec<Duration>,
    snapshot_mib: u64,
    proto_boot_ms: u64,
}

impl Side {
    fn new(
        name: &'static str,
        base: &VmConfig,
        kernel: std::path::PathBuf,
    ) -> anyhow::Result<Side> {
        let release = kernel::kernel_release(&kernel)?;
        let initramfs = initramfs::default_initramfs(&kernel)
            .with_context(|| format!("the initramfs for {}", kernel.display()))?;
        Ok(Side {
            name,
            config: VmConfig {
                kernel,
                initramfs,
                ..base.clone()
            },
            release,
            bare: Vec::new(),
            cold: Vec::new(),
            restore: Vec::new(),
            snapshot_mib: 0,
            proto_boot_ms: 0,
        })
    }
}

/// The "Guest kernel" section: `config` gives the machine (memory, vCPUs,
/// image); the kernels are the microVM kernel and Debian's.
pub async fn section(config: &VmConfig, runs: usize) -> anyhow::Result<String> {
    let (accel, reason) = accel::choose(config.accel);
    let mut sides = [
        Side::new("microVM kernel", config, kernel::microvm_kernel()?)?,
        Side::new("Debian's kernel", config, kernel::debian_kernel()?)?,
    ];
    eprintln!("bench: kernels, {runs} runs each, accel {accel} ({reason})");
    for i in 0..runs {
        for side in sides.iter_mut() {
            let b = {
                let config = side.config.clone();
                tokio::task::spawn_blocking(move || super::bare::bare_qemu_boot(&config, accel))
                    .await??
            };
            let (c, _) = super::ironclaw_cold(&side.config, i).await?;
            eprintln!(
                "bench: run {}/{runs}, {}: bare QEMU to /init {} ms, cold spawn to first result {} ms",
                i + 1,
                side.name,
                ms(b),
                ms(c)
            );
            side.bare.push(b);
            side.cold.push(c);
        }
    }
    // Each kernel's prototype (QEMU's: the backend that snapshots here).
    let mut protos = Vec::new();
    for side in sides.iter_mut() {
        let qemu_config = VmConfig {
            backend: vm::config::BackendChoice::Qemu,
            ..side.config.clone()
        };
        let proto = prototype::ensure(&qemu_config, &|m| eprintln!("bench: {m}")).await?;
        side.snapshot_mib = proto.disk_bytes() >> 20;
        side.proto_boot_ms = proto.meta.boot_ms;
        protos.push(proto);
    }
    for i in 0..runs {
        for (side, proto) in sides.iter_mut().zip(&protos) {
            let t0 = Instant::now();
            let clone = prototype::restore(
                proto,
                &format!("bench-{}-kclone-{i}", std::process::id()),
                &side.config,
            )
            .await?;
            clone.agent().run(vm::exec_request(["true"]), None).await?;
            side.restore.push(t0.elapsed());
            vm::destroy_vm(clone).await?;
        }
    }

    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    let mut out = format!(
        "## Guest kernel: microVM kernel against Debian's\n\n\
         Produced by `ironclaw bench --only kernel`; medians of {runs} runs alternating between \
         the kernels, accelerator {accel}, {} MiB, {} vCPU, {}. The microVM kernel is built from \
         Debian's `linux-source-6.1` with `kernel/microvm.config` (everything built in, no \
         modules; docs/kernel.md); Debian's is `linux-image-cloud-amd64`, whose virtio, vsock \
         and overlay modules `/init` loads.\n\n\
         | kernel | release | bare QEMU → `/init` (ms) | IronClaw cold spawn → first result (ms) | runs (ms) | prototype snapshot on disk (MiB) | restore → first result (ms) |\n\
         |---|---|---:|---:|---|---:|---:|\n",
        config.memory_mib,
        config.vcpus,
        if config.rootfs.is_some() {
            "with the default userland image"
        } else {
            "initramfs only"
        },
    );
    for side in &sides {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            side.name,
            side.release,
            ms(median(side.bare.clone())),
            ms(median(side.cold.clone())),
            list(&side.cold),
            side.snapshot_mib,
            ms(median(side.restore.clone())),
        );
    }
    let ratio =
        median(sides[0].cold.clone()).as_secs_f64() / median(sides[1].cold.clone()).as_secs_f64();
    out += &format!(
        "\n**Cold spawn with the microVM kernel / with Debian's: {ratio:.2}** (goal: at most 0.50). \
         Prototype boots (build, once): {} ms and {} ms.\n\n",
        sides[0].proto_boot_ms, sides[1].proto_boot_ms
    );
    Ok(out)
}
