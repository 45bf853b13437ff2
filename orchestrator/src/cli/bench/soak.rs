//! `ironclaw bench --soak N`: N sandboxes created, used (an exec and a file
//! round trip) and destroyed in a row, through the library and through the
//! service, sampling what would grow if something leaked: this process's
//! fds, threads and memory, its child processes, the runtime root's
//! entries, the VM cgroups and the cache. Written to `docs/reliability.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::json;

use ironclaw_orchestrator::service::ServiceConfig;
use ironclaw_orchestrator::vm::pool::{Pool, PoolConfig};
use ironclaw_orchestrator::vm::{self, cgroup, VmConfig};

use super::super::sandbox::client::{bytes_body, empty};
use super::service::LocalService;
use super::stats::ms;

/// Bytes of the file sent in and read back in each round.
const FILE_BYTES: usize = 64 << 10;

#[derive(Debug, Clone)]
struct Sample {
    done: usize,
    fds: usize,
    threads: usize,
    rss_mib: f64,
    children: usize,
    runtime_entries: usize,
    cgroups: usize,
    cache_mib: f64,
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn count_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .count()
        })
        .unwrap_or(0)
}

fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn children() -> usize {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(me.as_str()))
        })
        .count()
}

fn sample(done: usize) -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cgroups = cgroup::Layout::detect()
        .map(|l| l.parents.iter().map(|(_, p)| count_dirs(p)).sum())
        .unwrap_or(0);
    Sample {
        done,
        fds: count(Path::new("/proc/self/fd")),
        threads: count(Path::new("/proc/self/task")),
        rss_mib: rss_kib as f64 / 1024.0,
        children: children(),
        runtime_entries: count(&vm::runtime::runtime_root()),
        cgroups,
        cache_mib: du(&ironclaw_orchestrator::cache::root()) as f64 / (1 << 20) as f64,
    }
}

fn payload(i: usize) -> Bytes {
    Bytes::from(
        (0..FILE_BYTES)
            .map(|j| (i * 31 + j) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Whether round `i` is sampled: every `every` rounds, and before the first.
fn sampled(i: usize, every: usize) -> bool {
    i.is_multiple_of(every)
}

/// Waits until the pools are full again (the refill after the last round
/// done), so every sample sees the same number of ready VMs.
async fn settle(ready: impl Fn() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn through_library(config: &VmConfig, n: usize) -> anyhow::Result<(Vec<Sample>, Duration)> {
    let pool = Pool::start(
        config,
        PoolConfig {
            size: 2,
            max_memory_mib: 8192,
        },
    )
    .await?;
    pool.wait_ready(2, Duration::from_secs(120)).await;
    let every = (n / 3).max(1);
    let mut samples = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        if sampled(i, every) {
            settle(|| pool.stats().ready).await;
            samples.push(sample(i));
        }
        let vm = pool.acquire().await?;
        let out = vm.agent().run(vm::exec_request(["true"]), None).await?;
        if out.status.code != Some(0) {
            bail!("round {i}: `true` failed: {:?}", out.status);
        }
        let data = payload(i);
        vm.agent()
            .put(&mut &data[..], "/tmp/soak.bin", 0o644)
            .await?;
        let mut back = Vec::new();
        vm.agent().get("/tmp/soak.bin", &mut back).await?;
        if back != data {
            bail!("round {i}: the file came back different");
        }
        pool.release(vm).await?;
    }
    let took = t0.elapsed();
    settle(|| pool.stats().ready).await;
    samples.push(sample(n));
    pool.shutdown().await?;
    Ok((samples, took))
}

async fn through_service(config: &VmConfig, n: usize) -> anyhow::Result<(Vec<Sample>, Duration)> {
    let mut sc = ServiceConfig::new(config.clone());
    sc.pool_size = 2;
    let local = LocalService::start(sc, "soak-serve", false).await?;
    local.service.warm_default();
    let c = &local.client;
    let ready = || {
        local
            .service
            .pool_stats()
            .iter()
            .map(|(_, s)| s.ready)
            .sum::<usize>()
    };
    let every = (n / 3).max(1);
    let mut samples = Vec::new();
    let t0 = Instant::now();
    let result = async {
        for i in 0..n {
            if sampled(i, every) {
                settle(&ready).await;
                samples.push(sample(i));
            }
            let sb = c
                .json(Method::POST, "/v1/sandboxes", Some(&json!({})))
                .await?;
            let id = sb["id"].as_str().context("no id")?.to_string();
            let out = c
                .json(
                    Method::POST,
                    &format!("/v1/sandboxes/{id}/exec"),
                    Some(&json!({"argv": ["true"]})),
                )
                .await?;
            if out["exit_code"] != json!(0) {
                bail!("round {i}: `true` failed: {out}");
            }
            let data = payload(i);
            let path = format!("/v1/sandboxes/{id}/files?path=/work/soak.bin");
            c.send(
                Method::PUT,
                &path,
                Some("application/octet-stream"),
                bytes_body(data.clone()),
            )
            .await?;
            let back = c.send(Method::GET, &path, None, empty()).await?;
            let back = back.into_body().collect().await?.to_bytes();
            if back != data {
                bail!("round {i}: the file came back different");
            }
            c.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
                .await?;
        }
        Ok(())
    }
    .await;
    let took = t0.elapsed();
    settle(&ready).await;
    samples.push(sample(n));
    local.stop().await;
    result.map(|()| (samples, took))
}

fn table(samples: &[Sample]) -> String {
    let mut t = String::from(
        "| after | fds | threads | RSS MiB | child processes | runtime root entries | VM cgroups | cache MiB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in samples {
        t += &format!(
            "| {} | {} | {} | {:.1} | {} | {} | {} | {:.1} |\n",
            s.done,
            s.fds,
            s.threads,
            s.rss_mib,
            s.children,
            s.runtime_entries,
            s.cgroups,
            s.cache_mib
        );
    }
    t
}

pub async fn report(config: &VmConfig, n: usize) -> anyhow::Result<String> {
    let mut lib_config = config.clone();
    lib_config.rootfs = ironclaw_orchestrator::userland::default_image();
    let (lib, lib_took) = through_library(&lib_config, n).await?;
    let (svc, svc_took) = through_service(config, n).await?;
    Ok(format!(
        "# Reliability\n\n\
         Produced by `ironclaw bench --soak {n}` (`make soak`) on this machine (2 CPUs, TCG).\n\n\
         ## Soak\n\n\
         {n} sandboxes in a row, each: taken from a warm pool, `true` run, a {} KiB file written and \
         read back (compared), destroyed. What is sampled would grow if a VM, a process, a file, \
         a cgroup or a task leaked. Each sample is taken with the pool full again (2 ready VMs, \
         which the runtime root and the child processes hold, beside the service's socket). \
         The VM cgroups are counted host-wide under IronClaw's cgroup parent.\n\n\
         ### Through the library (`Pool`, `AgentClient`) — {n} rounds in {} ms\n\n{}\n\
         ### Through the service (REST over its unix socket) — {n} rounds in {} ms\n\n{}\n\
         Threads are the runtime's workers and its blocking pool (which grows on demand and \
         lets idle threads go); the rest stays flat.\n\n\
         ## Faults (checked by the test suite, every `make test`)\n\n\
         | fault | what the caller sees | test |\n|---|---|---|\n\
         | QEMU killed (SIGKILL), or the guest agent killed from inside (a command kills its parent), mid-exec and mid-upload | a 5xx error with a message at once (a restarted agent announces itself, so the host does not wait for its deadline); the sandbox is destroyed (404 saying why), its directory and processes gone; other sandboxes served | `service_api::a_killed_vmm_or_agent_fails_its_sandbox_only` |\n\
         | vhost-device-vsock killed (SIGKILL) mid-exec and mid-download | both requests fail at once with an error; destroying the VM leaves no process or directory | `vm_lifecycle::a_killed_vsock_device_fails_requests_promptly_and_cleans_up` |\n\
         | the guest agent stopped (SIGSTOP from inside) | `AgentError::Deadline` / exit 125 at the host deadline (timeout + 5 s); the VM destroyed | `hostile_guest::a_stopped_agent_*` |\n\
         | a FIFO, device or socket where a file is read | refused at once, nothing copied | `hostile_guest::copy_out_of_a_fifo_*`, `get_of_a_fifo_*` |\n\
         | output and console floods | output capped with `*_truncated`; the console log rotated past 1 MiB | `hostile_guest::run_caps_*`, `a_flooded_console_log_stays_bounded` |\n\
         | the service killed (SIGKILL) and restarted | the next start removes the dead service's VMs, directories and socket; paused sandboxes are intact and resume | `service_api::sigterm_destroys_everything_and_a_killed_service_is_cleaned_by_the_next`, `sandbox_snapshots::a_paused_sandbox_survives_a_service_restart_and_a_kill` |\n\
         | the disk full while a snapshot is written | 507 `storage_full` naming the disk; nothing kept; the sandbox runs on | `sandbox_snapshots::a_full_disk_while_writing_a_snapshot_leaves_nothing` |\n\
         | the disk full while the initramfs or a prototype snapshot is written | exit 125, \"No space left on device\"; nothing partial left in the cache | `cli::a_full_disk_fails_cache_writes_cleanly` |\n\
         | a snapshot truncated, altered, or of a replaced kernel | 422 `snapshot_invalid` saying which; nothing started | `sandbox_snapshots::damaged_or_foreign_snapshots_are_refused_and_nothing_starts` |\n\
         | a memory hog and a fork bomb in the guest | the hog is killed by the guest's OOM killer (signal 9) while the agent, shielded, answers; the bomb ends at its timeout; another VM is served meanwhile | `hostile_guest::a_fork_bomb_and_a_memory_hog_stay_in_their_vm` |\n",
        FILE_BYTES >> 10,
        ms(lib_took),
        table(&lib),
        ms(svc_took),
        table(&svc),
    ))
}
