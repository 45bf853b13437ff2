//! The userland section of `ironclaw bench`: spawning from the default image,
//! file throughput over the agent protocol, and Python start-up in a warm VM.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use ironclaw_orchestrator::vm::{self, VmConfig};

use super::stats::{median, ms};

/// Bytes moved each way in the throughput measurement.
const TRANSFER_BYTES: usize = 64 << 20;

fn mib_per_s(d: Duration) -> f64 {
    (TRANSFER_BYTES as f64 / (1 << 20) as f64) / d.as_secs_f64()
}

/// Measures and returns the markdown section (a note when no image is built).
pub async fn section(base: &VmConfig, runs: usize, execs: usize) -> anyhow::Result<String> {
    let Some(image) = ironclaw_orchestrator::userland::default_image() else {
        return Ok("\n## Userland image and file transfer\n\n\
                   Not measured: no default image in the cache (`ironclaw image build`).\n"
            .into());
    };
    let config = VmConfig {
        rootfs: Some(image.clone()),
        ..base.clone()
    };
    let pid = std::process::id();

    let mut cold = Vec::new();
    for i in 0..runs {
        let t0 = Instant::now();
        let vm = vm::spawn_vm_with_config(&format!("bench-{pid}-img-{i}"), &config).await?;
        vm.agent().run(vm::exec_request(["true"]), None).await?;
        cold.push(t0.elapsed());
        vm::destroy_vm(vm).await?;
    }
    eprintln!(
        "bench: image spawn to first result {} ms (median)",
        ms(median(cold.clone()))
    );

    let vm = vm::spawn_vm_with_config(&format!("bench-{pid}-img-warm"), &config).await?;
    let result = async {
        // Incompressible bytes from host memory, so only the protocol path is measured.
        let mut data = vec![0u8; TRANSFER_BYTES];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..runs.clamp(1, 3) {
            let t0 = Instant::now();
            vm.agent()
                .put(&mut &data[..], "/root/bench.bin", 0o644)
                .await
                .map_err(|e| anyhow!("upload: {e}"))?;
            up.push(t0.elapsed());
            let t0 = Instant::now();
            vm.agent()
                .get("/root/bench.bin", &mut tokio::io::sink())
                .await
                .map_err(|e| anyhow!("download: {e}"))?;
            down.push(t0.elapsed());
        }
        eprintln!(
            "bench: 64 MiB upload {:.1} MiB/s, download {:.1} MiB/s",
            mib_per_s(median(up.clone())),
            mib_per_s(median(down.clone()))
        );
        let mut python = Vec::new();
        let mut truth = Vec::new();
        for _ in 0..execs.max(1) {
            let t0 = Instant::now();
            let out = vm
                .agent()
                .run(vm::exec_request(["python3", "-c", "pass"]), None)
                .await?;
            python.push(t0.elapsed());
            if out.status.code != Some(0) {
                return Err(anyhow!(
                    "python3 -c pass failed in the guest: {:?}",
                    out.status
                ));
            }
            let t0 = Instant::now();
            vm.agent().run(vm::exec_request(["true"]), None).await?;
            truth.push(t0.elapsed());
        }
        Ok::<_, anyhow::Error>((up, down, python, truth))
    }
    .await;
    vm::destroy_vm(vm).await?;
    let (up, down, python, truth) = result?;
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    let rate = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.1}", mib_per_s(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(format!(
        "\n## Userland image and file transfer\n\n\
         The default image ({}) mounted read-only under a {} MiB tmpfs overlay.\n\n\
         | measurement | median | runs |\n|---|---:|---|\n\
         | cold spawn from the image → first exec result of `true` | {} ms | {} |\n\
         | upload 64 MiB (host memory → guest overlay file, `put`) | {:.1} MiB/s | {} |\n\
         | download 64 MiB (guest overlay file → host, `get`) | {:.1} MiB/s | {} |\n\
         | `python3 -c pass` on a warm VM (exec request → exit status) | {} ms | {} samples |\n\
         | `true` on the same VM, for reference | {} ms | {} samples |\n\n\
         `true` in the image is Debian's dynamically linked coreutils (the loader runs \
         emulated), against the initramfs's static busybox in the exec round trip above.\n",
        image.file_name().unwrap_or_default().to_string_lossy(),
        config.overlay_mib,
        ms(median(cold.clone())),
        list(&cold),
        mib_per_s(median(up.clone())),
        rate(&up),
        mib_per_s(median(down.clone())),
        rate(&down),
        ms(median(python.clone())),
        python.len(),
        ms(median(truth.clone())),
        truth.len(),
    ))
}
