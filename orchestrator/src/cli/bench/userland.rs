//! The userland section of `ironclaw bench`: spawning from the default image
//! and Python start-up in a warm VM (file throughput: the transfer section).

use std::time::{Duration, Instant};

use anyhow::anyhow;
use ironclaw_orchestrator::vm::{self, VmConfig};

use super::stats::{median, ms};

/// Measures and returns the markdown section (a note when no image is built).
pub async fn section(base: &VmConfig, runs: usize, execs: usize) -> anyhow::Result<String> {
    let Some((image, config)) = super::image_config(base) else {
        return Ok(super::no_image("Userland image"));
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
        Ok::<_, anyhow::Error>((python, truth))
    }
    .await;
    vm::destroy_vm(vm).await?;
    let (python, truth) = result?;
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "\n## Userland image\n\n\
         The default image ({}) mounted read-only under a {} MiB tmpfs overlay (file transfer \
         into it: the file transfer section).\n\n\
         | measurement | median | runs |\n|---|---:|---|\n\
         | cold spawn from the image → first exec result of `true` | {} ms | {} |\n\
         | `python3 -c pass` on a warm VM (exec request → exit status) | {} ms | {} samples |\n\
         | `true` on the same VM, for reference | {} ms | {} samples |\n\n\
         `true` in the image is Debian's dynamically linked coreutils (the loader runs \
         emulated), against the initramfs's static busybox in the exec round trip above.\n",
        image.file_name().unwrap_or_default().to_string_lossy(),
        config.overlay_mib,
        ms(median(cold.clone())),
        list(&cold),
        ms(median(python.clone())),
        python.len(),
        ms(median(truth.clone())),
        truth.len(),
    ))
}
