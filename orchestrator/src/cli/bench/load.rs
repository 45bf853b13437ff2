//! The load part of `ironclaw bench --soak`: as many sandboxes at once as
//! the service's memory limit allows (at most [`MAX_HELD`]), all created
//! together, then each running a CPU- and output-heavy command at the same
//! time; every result is checked, and create and exec latencies reported.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;
use serde_json::json;

use ironclaw_orchestrator::service::ServiceConfig;
use ironclaw_orchestrator::vm::VmConfig;

use super::service::LocalService;
use super::stats::ms;

/// Sandboxes held at once, at most (2 CPUs under TCG: more only queues).
pub const MAX_HELD: usize = 48;
/// Bytes each command writes (in 1 MiB of `od` lines: output-heavy).
const OUTPUT_BYTES: usize = 1 << 20;
/// The busy loop's iterations in the guest's shell (CPU-heavy under TCG).
const LOOP: u32 = 2000;

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

pub async fn section(config: &VmConfig) -> anyhow::Result<String> {
    let sc = ServiceConfig::new(config.clone());
    let held = ((sc.max_memory_mib / u64::from(config.memory_mib).max(1)) as usize).min(MAX_HELD);
    let mut sc = sc;
    sc.max_sandboxes = held;
    sc.pool_size = 2;
    let local = LocalService::start(sc, "load-serve", false).await?;
    let result = measure(&local, held).await;
    local.stop().await;
    result
}

async fn measure(local: &LocalService, held: usize) -> anyhow::Result<String> {
    let c = &local.client;
    let t0 = Instant::now();
    let creates = (0..held).map(|_| async {
        let t = Instant::now();
        let sb = c
            .json(Method::POST, "/v1/sandboxes", Some(&json!({})))
            .await?;
        let id = sb["id"].as_str().context("no id")?.to_string();
        Ok::<_, anyhow::Error>((id, t.elapsed()))
    });
    let created: Vec<(String, Duration)> = futures::future::try_join_all(creates).await?;
    let all_created = t0.elapsed();
    let cmd = format!(
        "i=0; while [ $i -lt {LOOP} ]; do i=$((i+1)); done; head -c {} /dev/zero | od -v | head -c {OUTPUT_BYTES}",
        OUTPUT_BYTES
    );
    let t0 = Instant::now();
    let execs = created.iter().map(|(id, _)| {
        let cmd = cmd.clone();
        async move {
            let t = Instant::now();
            let out = c
                .json(
                    Method::POST,
                    &format!("/v1/sandboxes/{id}/exec"),
                    Some(&json!({"cmd": cmd, "max_output_bytes": OUTPUT_BYTES, "timeout_s": 600})),
                )
                .await?;
            let took = t.elapsed();
            let len = out["stdout"].as_str().map_or(0, str::len);
            if out["exit_code"] != json!(0) || len != OUTPUT_BYTES {
                bail!("{id}: exit {} with {len} bytes of output", out["exit_code"]);
            }
            Ok::<_, anyhow::Error>(took)
        }
    });
    let ran: Vec<Duration> = futures::future::try_join_all(execs).await?;
    let all_ran = t0.elapsed();
    for (id, _) in &created {
        c.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
            .await?;
    }
    let creates: Vec<Duration> = created.iter().map(|(_, d)| *d).collect();
    Ok(format!(
        "\n## Load\n\n\
         {held} sandboxes held at once (as many as `--max-memory`, half the host's memory, allows, \
         at most {MAX_HELD}), created together through REST, then each running at the same time a \
         busy loop of {LOOP} shell iterations followed by {} KiB of `od` output; every exit code and \
         output length checked (all correct).\n\n\
         | measurement | p50 ms | p99 ms | all done after ms |\n|---|---:|---:|---:|\n\
         | create (most miss the pool of 2 and restore a clone) | {} | {} | {} |\n\
         | exec of the busy command, all at once | {} | {} | {} |\n",
        OUTPUT_BYTES >> 10,
        ms(percentile(creates.clone(), 0.5)),
        ms(percentile(creates, 0.99)),
        ms(all_created),
        ms(percentile(ran.clone(), 0.5)),
        ms(percentile(ran, 0.99)),
        ms(all_ran),
    ))
}
