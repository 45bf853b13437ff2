//! Snapshots of live sandboxes, through the library [`Service`]: a snapshot
//! of a running sandbox, a fork (a sandbox made from it) until its first
//! result, pause and resume; beside a pool-less restore of the prototype of
//! the same shape, which is what a fork has to keep up with.

use std::time::{Duration, Instant};

use anyhow::bail;
use ironclaw_orchestrator::service::types::{CreateSandbox, CreateSnapshot, ExecBody};
use ironclaw_orchestrator::service::{Owner, Service, ServiceConfig};
use ironclaw_orchestrator::vm::{self, prototype, VmConfig};

use super::service::{service_ready, LocalService};
use super::stats::{median, ms, p90};

/// The samples of one measurement, in the order they were taken.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// `| what | median | p90 | runs |`.
    fn row(&self, what: &str) -> String {
        let runs: Vec<String> = self.0.iter().map(|d| ms(*d)).collect();
        format!(
            "| {what} | {} | {} | {} |\n",
            ms(self.median()),
            ms(p90(self.0.clone())),
            runs.join(", ")
        )
    }

    fn median(&self) -> Duration {
        median(self.0.clone())
    }
}

/// Everything measured, per run.
#[derive(Default)]
struct Measured {
    snapshot: Samples,
    pause_ms: Samples,
    total_ms: Samples,
    fork_created: Samples,
    fork_first: Samples,
    proto_restored: Samples,
    proto_first: Samples,
    pause: Samples,
    resume: Samples,
    resume_first: Samples,
    snapshot_bytes: Vec<u64>,
    paused_bytes: Vec<u64>,
}

async fn exec_true(service: &Service, owner: &Owner, id: &str) -> anyhow::Result<()> {
    let body = ExecBody {
        argv: Some(vec!["true".into()]),
        ..ExecBody::default()
    };
    let out = service.exec(owner, id, body).await?;
    if out.exit_code != Some(0) {
        bail!("`true` failed in sandbox {id}: {out:?}");
    }
    Ok(())
}

/// A sandbox made from the snapshot `snap` until its first result, then destroyed.
async fn fork_once(
    service: &Service,
    owner: &Owner,
    snap: &str,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let req = CreateSandbox {
        from_snapshot: Some(snap.to_string()),
        ..CreateSandbox::default()
    };
    let fork = service.create(owner, req).await?;
    m.fork_created.push(t0.elapsed());
    exec_true(service, owner, &fork.id).await?;
    m.fork_first.push(t0.elapsed());
    service.destroy(owner, &fork.id).await?;
    Ok(())
}

/// A clone of the prototype, no pool, until its first result, then destroyed.
async fn proto_once(
    proto: &prototype::Prototype,
    shape: &VmConfig,
    name: &str,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let clone = prototype::restore(proto, name, shape).await?;
    m.proto_restored.push(t0.elapsed());
    let out = clone.agent().run(vm::exec_request(["true"]), None).await;
    m.proto_first.push(t0.elapsed());
    vm::destroy_vm(clone).await?;
    if out?.status.code != Some(0) {
        bail!("`true` failed in a prototype clone");
    }
    Ok(())
}

/// Measures and returns the markdown section (a note when no image is built).
pub async fn section(base: &VmConfig, runs: usize) -> anyhow::Result<String> {
    let runs = runs.max(14);
    let Some(image) = ironclaw_orchestrator::userland::default_image() else {
        return Ok("\n## Snapshots of live sandboxes\n\n\
                   Not measured: no default image in the cache (`ironclaw image build`).\n"
            .into());
    };
    // A pool of one: the source sandbox comes from it, nothing else does.
    let mut config = ServiceConfig::new(base.clone());
    config.pool_size = 1;
    let local = LocalService::start(config, "bench-snap", false).await?;
    let shape = VmConfig {
        rootfs: Some(image),
        ..base.clone()
    };
    let result = measure(&local.service, &shape, runs).await;
    local.stop().await;
    result
}

async fn measure(service: &Service, shape: &VmConfig, runs: usize) -> anyhow::Result<String> {
    let owner = Owner::uid(nix::unistd::geteuid().as_raw());
    let source = service.create(&owner, CreateSandbox::default()).await?;
    exec_true(service, &owner, &source.id).await?;
    // The prototype the service's pool of this shape restores its clones from.
    let proto = prototype::ensure(shape, &|m| eprintln!("bench: {m}")).await?;
    let pid = std::process::id();
    let mut m = Measured::default();
    for i in 0..runs {
        // The pool full: no refill runs during a measurement.
        service_ready(service, 1).await?;

        let t0 = Instant::now();
        let snap = service
            .snapshot(&owner, &source.id, CreateSnapshot::default())
            .await?;
        m.snapshot.push(t0.elapsed());
        m.pause_ms.push(Duration::from_millis(snap.pause_ms));
        m.total_ms.push(Duration::from_millis(snap.total_ms));
        m.snapshot_bytes.push(snap.bytes);

        // Alternating which goes first, so drift hits both sides alike.
        let name = format!("bench-{pid}-snap-proto-{i}");
        if i % 2 == 0 {
            fork_once(service, &owner, &snap.id, &mut m).await?;
            proto_once(&proto, shape, &name, &mut m).await?;
        } else {
            proto_once(&proto, shape, &name, &mut m).await?;
            fork_once(service, &owner, &snap.id, &mut m).await?;
        }
        service.remove_snapshot(&owner, &snap.id)?;

        let t0 = Instant::now();
        let paused = service.pause(&owner, &source.id).await?;
        m.pause.push(t0.elapsed());
        m.paused_bytes.push(paused.paused_bytes.unwrap_or(0));
        let t0 = Instant::now();
        service.resume(&owner, &source.id).await?;
        m.resume.push(t0.elapsed());
        exec_true(service, &owner, &source.id).await?;
        m.resume_first.push(t0.elapsed());
        eprintln!(
            "bench: snapshot run {}/{runs}: snapshot {} ms (paused {} ms), fork to first result {} ms, \
             prototype clone {} ms, pause {} ms, resume {} ms",
            i + 1,
            ms(*m.snapshot.0.last().unwrap()),
            snap.pause_ms,
            ms(*m.fork_first.0.last().unwrap()),
            ms(*m.proto_first.0.last().unwrap()),
            ms(*m.pause.0.last().unwrap()),
            ms(*m.resume.0.last().unwrap()),
        );
    }
    service.destroy(&owner, &source.id).await?;
    Ok(report(&m, &proto, shape.memory_mib, runs))
}

fn mib(bytes: &[u64]) -> f64 {
    let mut v = bytes.to_vec();
    v.sort();
    v[v.len() / 2] as f64 / f64::from(1 << 20)
}

fn report(m: &Measured, proto: &prototype::Prototype, memory_mib: u32, runs: usize) -> String {
    let ratio = m.fork_first.median().as_secs_f64() / m.proto_first.median().as_secs_f64();
    let second = Duration::from_secs(1);
    let verdict = |d: Duration| if d < second { "met" } else { "missed" };
    format!(
        "\n## Snapshots of live sandboxes\n\n\
         Through the library `Service`, on one running sandbox of the default image ({memory_mib} MiB, \
         from a pool of one), {runs} runs; each run snapshots it, makes a sandbox from the snapshot \
         (a fork) and restores a clone of the same shape's prototype without a pool (the two in \
         alternating order), then pauses and resumes it. A snapshot copies the guest's memory while \
         it runs (pre-copy) and pauses it only for what changed meanwhile and its device state; \
         `pause` stops it first (its VM is destroyed afterwards: the fewest bytes written).\n\n\
         | measurement | median ms | p90 ms | runs (ms) |\n|---|---:|---:|---|\n\
         {}{}{}{}{}{}{}{}{}{}\n\
         **Fork → first result / prototype clone → first result: {ratio:.2}** (goal: at most 1.30). \
         **Pause {} ms, resume {} ms** (medians; goal: under 1 s each for {memory_mib} MiB: {}, {}).\n\n\
         Snapshot of the live sandbox: {:.1} MiB (median), paused sandbox {:.1} MiB; the prototype of \
         the same shape: {} MiB on disk (built with a boot of {} ms and a snapshot of {} ms, pausing and \
         writing, as its metadata records).\n",
        m.snapshot.row("`snapshot` of the running sandbox (the call)"),
        m.total_ms.row("of which writing, checksumming and storing it (`total_ms`)"),
        m.pause_ms.row("during which the guest was paused (`pause_ms`)"),
        m.fork_created.row("fork: `create` from the snapshot → sandbox ready"),
        m.fork_first.row("fork: `create` from the snapshot → first exec result of `true`"),
        m.proto_restored.row("prototype clone (same shape, no pool): restore → VM ready"),
        m.proto_first.row("prototype clone: restore → first exec result of `true`"),
        m.pause.row("`pause` (snapshot to disk, VM destroyed)"),
        m.resume.row("`resume` (restored under the same id)"),
        m.resume_first.row("`resume` → first exec result of `true`"),
        ms(m.pause.median()),
        ms(m.resume.median()),
        verdict(m.pause.median()),
        verdict(m.resume.median()),
        mib(&m.snapshot_bytes),
        mib(&m.paused_bytes),
        proto.disk_bytes() >> 20,
        proto.meta.boot_ms,
        proto.meta.snapshot_ms,
    )
}
