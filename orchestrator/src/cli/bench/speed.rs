//! The speed sections of `ironclaw bench` (issue 14): the exec round trip on
//! a running VM and where it goes, warm-pool acquire → first result, the
//! wall clock of a whole `ironclaw run -- true` with its phases, and 64 MiB
//! file transfers both ways. Each figure is shown next to its reference from
//! the same run.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ironclaw_orchestrator::agent::{AgentClient, ExecEvent};
use ironclaw_orchestrator::vm::pool::{Pool, PoolConfig};
use ironclaw_orchestrator::vm::{self, prototype, VmConfig};

use super::stats::{median, ms};

/// One exec of `argv`, split at the guest's `Started`: (request → started,
/// started → exit status, whole round trip).
async fn timed_exec(
    agent: &AgentClient,
    argv: &[&str],
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let t0 = Instant::now();
    let mut session = agent.exec(vm::exec_request(argv.iter().copied())).await?;
    let mut started = None;
    loop {
        match session.next_event().await? {
            ExecEvent::Started { .. } => started = Some(t0.elapsed()),
            ExecEvent::Stdout(_) | ExecEvent::Stderr(_) => {}
            ExecEvent::Exit(status) => {
                let total = t0.elapsed();
                if status.code != Some(0) {
                    bail!("{argv:?} failed in the guest: {status:?}");
                }
                let started = started.unwrap_or(total);
                return Ok((started, total - started, total));
            }
        }
    }
}

/// A `stat /` round trip: the transport and the agent's dispatch, no process.
async fn timed_stat(agent: &AgentClient) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    agent.stat("/").await.map_err(|e| anyhow!("stat /: {e}"))?;
    Ok(t0.elapsed())
}

/// Medians of exec round trips and their parts on one VM.
struct ExecFigures {
    stat: Duration,
    to_started: Duration,
    started_to_exit: Duration,
    total: Duration,
    samples: usize,
}

async fn exec_figures(agent: &AgentClient, samples: usize) -> anyhow::Result<ExecFigures> {
    let mut figures = exec_figures_alternating(&[agent], samples).await?;
    Ok(figures.remove(0))
}

/// [`exec_figures`] for several VMs, sample by sample in turn, so that a
/// drifting machine load hits them alike.
async fn exec_figures_alternating(
    agents: &[&AgentClient],
    samples: usize,
) -> anyhow::Result<Vec<ExecFigures>> {
    // Warm-up: the first execs pay for translating the path (TCG).
    for agent in agents {
        for _ in 0..3 {
            timed_exec(agent, &["true"]).await?;
        }
    }
    let mut all = vec![(Vec::new(), Vec::new(), Vec::new(), Vec::new()); agents.len()];
    for _ in 0..samples {
        for (agent, (stat, a, b, t)) in agents.iter().zip(all.iter_mut()) {
            stat.push(timed_stat(agent).await?);
            let (x, y, z) = timed_exec(agent, &["true"]).await?;
            a.push(x);
            b.push(y);
            t.push(z);
        }
    }
    Ok(all
        .into_iter()
        .map(|(stat, a, b, t)| ExecFigures {
            stat: median(stat),
            to_started: median(a),
            started_to_exit: median(b),
            total: median(t),
            samples,
        })
        .collect())
}

fn exec_row(what: &str, f: &ExecFigures) -> String {
    format!(
        "| {what} | {} | {} | {} | {} | {} |\n",
        ms(f.total),
        ms(f.stat),
        ms(f.to_started),
        ms(f.started_to_exit),
        f.samples
    )
}

/// The exec round trip section; with `reference`, the same machine booting
/// another build of the agent, measured alternately on the same rows.
pub async fn exec_section(
    config: &VmConfig,
    samples: usize,
    reference: Option<&VmConfig>,
) -> anyhow::Result<String> {
    let pid = std::process::id();
    let samples = samples.max(5);
    // A cold-booted VM: the vsock transport.
    let vm = vm::spawn_vm_with_config(&format!("bench-{pid}-exec"), config).await?;
    let ref_vm = match reference {
        Some(r) => Some(vm::spawn_vm_with_config(&format!("bench-{pid}-exec-ref"), r).await?),
        None => None,
    };
    let mut agents = vec![vm.agent()];
    agents.extend(ref_vm.as_ref().map(|v| v.agent()));
    let cold = exec_figures_alternating(&agents, samples).await;
    vm::destroy_vm(vm).await?;
    if let Some(v) = ref_vm {
        vm::destroy_vm(v).await?;
    }
    let mut cold = cold?;
    let cold_ref = (cold.len() > 1).then(|| cold.remove(1));
    let cold = cold.remove(0);
    // A prototype clone (what `run`, the pool and the service use):
    // virtio-serial. Each clone is restored before the other prototype is
    // ensured (a prototype of the same machine with another initramfs
    // supersedes it on disk; a running clone does not need its files).
    let proto = prototype::ensure(config, &|m| eprintln!("bench: {m}")).await?;
    let clone = prototype::restore(&proto, &format!("bench-{pid}-exec-clone"), config).await?;
    let ref_clone = match reference {
        Some(r) => {
            let proto = prototype::ensure(r, &|m| eprintln!("bench: {m}")).await?;
            Some(prototype::restore(&proto, &format!("bench-{pid}-exec-clone-ref"), r).await?)
        }
        None => None,
    };
    let mut agents = vec![clone.agent()];
    agents.extend(ref_clone.as_ref().map(|v| v.agent()));
    let serial = exec_figures_alternating(&agents, samples).await;
    vm::destroy_vm(clone).await?;
    if let Some(v) = ref_clone {
        vm::destroy_vm(v).await?;
    }
    let mut serial = serial?;
    let serial_ref = (serial.len() > 1).then(|| serial.remove(1));
    let serial = serial.remove(0);
    // The same on a clone of the default image (Debian's dynamic `true`).
    let image = match ironclaw_orchestrator::userland::default_image() {
        Some(image) => {
            let config = VmConfig {
                rootfs: Some(image),
                ..config.clone()
            };
            let proto = prototype::ensure(&config, &|m| eprintln!("bench: {m}")).await?;
            let clone =
                prototype::restore(&proto, &format!("bench-{pid}-exec-img"), &config).await?;
            let f = exec_figures(clone.agent(), samples).await;
            vm::destroy_vm(clone).await?;
            Some(f?)
        }
        None => None,
    };
    eprintln!(
        "bench: exec round trip of `true`: {} ms (vsock), {} ms (serial clone)",
        ms(cold.total),
        ms(serial.total)
    );
    let mut text = format!(
        "\n## Exec round trip\n\n\
         Medians of {samples} samples on one running VM each, after 3 warm-up execs. The reference \
         for the round trip is a `stat /` request on the same VM: the same transport and agent \
         dispatch, no process. \"to `Started`\" is the request until the guest reports the process \
         started (transport there, the agent's spawn); \"`Started` → exit\" the rest (the process \
         runs and is reaped, its pipes closed, the exit status reported).\n\n\
         | measurement | round trip ms | `stat /` ms | to `Started` ms | `Started` → exit ms | samples |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    text += &exec_row(
        "`true` on a running VM, vsock (cold boot, initramfs busybox)",
        &cold,
    );
    if let Some(f) = &cold_ref {
        text += &exec_row("same, the reference agent build (alternating samples)", f);
    }
    text += &exec_row(
        "`true` on a prototype clone, virtio-serial (initramfs busybox)",
        &serial,
    );
    if let Some(f) = &serial_ref {
        text += &exec_row("same, the reference agent build (alternating samples)", f);
    }
    if let Some(f) = &image {
        text += &exec_row(
            "`true` on a prototype clone of the default image (Debian coreutils, dynamic)",
            f,
        );
    }
    let part = |f: &ExecFigures| {
        format!(
            "transport and dispatch {} ms (the `stat /` round trip), the agent starting the \
             process {} ms (to `Started` minus that), the process's life until its status \
             is reported {} ms",
            ms(f.stat),
            ms(f.to_started.saturating_sub(f.stat)),
            ms(f.started_to_exit)
        )
    };
    text += &format!(
        "\nWhere the time goes, vsock: {}; virtio-serial: {}. The transport part is the \
         host's write, vhost-device-vsock (or QEMU's chardev) filling the guest's queue and \
         interrupting it, the guest kernel waking the agent, and the same back. The agent \
         starts a command with `clone(CLONE_VM|CLONE_VFORK)` (it used `fork`, whose page-table \
         copy and copy-on-write faults are emulated one by one under TCG), and writes the \
         frames queued at a time in one `writev`. The rest is the guest kernel's `execve`, the \
         program's run and its exit (a static busybox here; Debian's dynamic `true` spends most \
         of its time in the loader).\n",
        part(&cold),
        part(&serial)
    );
    // The same program (busybox `true`) on both transports; Debian's dynamic
    // `true` (the default image) beside them when the image is built.
    let image_note = match &image {
        Some(f) => format!(
            "; Debian's dynamically linked `true` in a clone of the default image {} ms",
            ms(f.total)
        ),
        None => String::new(),
    };
    text += &format!(
        "\n**Exec round trip of `true` (busybox): {} ms in a prototype clone (virtio-serial: where \
         `ironclaw run`, the pool and the service run commands), {} ms in a cold-booted VM over \
         vsock{image_note}** (goal: under 5 ms). Over vsock every frame also passes \
         vhost-device-vsock, a process of its own on the host, and the guest's virtio-vsock \
         driver sends and receives in kernel workers.\n",
        ms(serial.total),
        ms(cold.total)
    );
    Ok(text)
}

/// The warm-pool section: acquire → first result, and its parts.
pub async fn pool_section(config: &VmConfig, runs: usize) -> anyhow::Result<String> {
    let pool = Pool::start(
        config,
        PoolConfig {
            size: 2,
            max_memory_mib: 8192,
        },
    )
    .await?;
    let runs = runs.max(5);
    let result = async {
        let (mut acquire, mut first, mut total, mut second) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            if !pool.wait_ready(2, Duration::from_secs(120)).await {
                bail!("the pool did not fill: {:?}", pool.stats());
            }
            let t0 = Instant::now();
            let vm = pool.acquire().await?;
            let t1 = Instant::now();
            let out = vm.agent().run(vm::exec_request(["true"]), None).await;
            let t2 = Instant::now();
            let again = timed_exec(vm.agent(), &["true"]).await;
            pool.release(vm).await?;
            out?;
            acquire.push(t1 - t0);
            first.push(t2 - t1);
            total.push(t2 - t0);
            second.push(again?.2);
        }
        Ok((acquire, first, total, second))
    }
    .await;
    let stats = pool.stats();
    pool.shutdown().await?;
    let (acquire, first, total, second) = result?;
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    eprintln!(
        "bench: pool acquire → first result {} ms",
        ms(median(total.clone()))
    );
    Ok(format!(
        "\n## Warm pool: acquire → first result\n\n\
         A pool of 2 prototype clones (initramfs, virtio-serial), refilled between the {runs} runs.\n\n\
         | measurement | median ms | runs (ms) |\n|---|---:|---|\n\
         | warm-pool `acquire` → first exec result of `true` | {} | {} |\n\
         | of which `acquire` (reseed: entropy and clock, one round trip) | {} | {} |\n\
         | of which the first exec of `true` | {} | {} |\n\
         | reference: a second exec of `true` in the same VM | {} | {} |\n\n\
         Where the time goes: `acquire` is one round trip (the reseed: fresh entropy and the \
         clock, which every VM handed out gets first); the first exec is an exec round trip in a \
         clone the pool has already warmed up (its command, a reseed and `true`: what `acquire` and a first command run; see the exec section for the parts of a round trip).\n\n\
         **Warm-pool acquire → first result: {} ms** (goal: under 10 ms). Pool stats: {:?}.\n",
        ms(median(total.clone())),
        list(&total),
        ms(median(acquire.clone())),
        list(&acquire),
        ms(median(first.clone())),
        list(&first),
        ms(median(second.clone())),
        list(&second),
        ms(median(total.clone())),
        stats,
    ))
}

/// The phases `ironclaw run --verbose` reports on its `timings:` line.
const RUN_PHASES: &[&str] = &[
    "config",
    "prototype",
    "launch",
    "connect",
    "exec",
    "destroy",
    "total",
];

/// Parses `ironclaw: timings: config 1.0 ms, prototype …` into the values of [`RUN_PHASES`].
fn parse_run_timings(stderr: &str) -> Option<Vec<f64>> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("ironclaw: timings: "))?;
    let mut values = Vec::new();
    for phase in RUN_PHASES {
        let part = line
            .split(", ")
            .find_map(|p| p.strip_prefix(&format!("{phase} ")))?;
        values.push(part.trim_end_matches(" ms").parse().ok()?);
    }
    Some(values)
}

/// `ironclaw run -- true` as a user runs it (a new process, the default
/// image when built, a prototype clone), wall clock, with its phases.
pub async fn run_section(runs: usize) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding the ironclaw binary")?;
    let runs = runs.max(5);
    let wall = |args: &[&str]| {
        let t0 = Instant::now();
        let out = std::process::Command::new(&exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running ironclaw {args:?}"))?;
        let d = t0.elapsed();
        if !out.status.success() {
            bail!(
                "ironclaw {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok::<_, anyhow::Error>((d, String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    // Builds the prototype if needed (not measured).
    tokio::task::block_in_place(|| wall(&["run", "--", "true"]))?;
    let (mut plain, mut start, mut phases) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (d, _) = tokio::task::block_in_place(|| wall(&["run", "--", "true"]))?;
        plain.push(d);
        let (d, _) = tokio::task::block_in_place(|| wall(&["--version"]))?;
        start.push(d);
        let (d, err) = tokio::task::block_in_place(|| wall(&["run", "--verbose", "--", "true"]))?;
        let mut p = parse_run_timings(&err)
            .ok_or_else(|| anyhow!("no timings line from `run --verbose`:\n{err}"))?;
        p.push(d.as_secs_f64() * 1e3);
        phases.push(p);
    }
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    let col = |i: usize| {
        let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let wall_m = median(plain.clone());
    eprintln!("bench: `ironclaw run -- true` {} ms (median)", ms(wall_m));
    let n = RUN_PHASES.len();
    let total_in = col(n - 1);
    let outside = col(n);
    let names = [
        "set-up: flags → `VmConfig` (tool and image look-ups, initramfs cache key)",
        "prototype: cache look-up, lock, integrity check (stamps)",
        "launch: runtime dir, confinement, QEMU start, incoming migration, `cont`",
        "connect: agent hello + reseed (entropy, clock)",
        "first exec of `true` in the clone (cold TCG translation cache)",
        "destroy: kill and reap QEMU, remove cgroup and runtime dir",
    ];
    let mut rows = String::new();
    for (i, name) in names.iter().enumerate() {
        rows += &format!("| {name} | {:.1} |\n", col(i));
    }
    Ok(format!(
        "\n## `ironclaw run -- true`\n\n\
         The whole CLI process as a user runs it (`ironclaw run -- true`: a clone of the \
         prototype of the default machine and image), wall clock, {runs} runs, against a process \
         that does nothing (`ironclaw --version`) in the same run.\n\n\
         | measurement | median ms | runs (ms) |\n|---|---:|---|\n\
         | `ironclaw run -- true`, wall clock | {} | {} |\n\
         | reference: `ironclaw --version` (process start and exit) | {} | {} |\n\n\
         Where the time goes (`ironclaw run --verbose` prints its phases; medians of {runs}):\n\n\
         | phase | median ms |\n|---|---:|\n{rows}\
         | sum of the phases inside `run` | {total_in:.1} |\n\
         | the process around them (start, runtime, exit), wall clock minus the sum | {:.1} |\n\n\
         The launch (QEMU, the confinement and the incoming migration of the prototype's \
         memory) and the clone's first exec (QEMU translating the guest's code again: the \
         agent's, the kernel's and the program's; a second exec in the same VM is an exec round \
         trip) are most of it; setting up, the prototype look-up and the process itself are a \
         few milliseconds.\n\n\
         **`ironclaw run -- true`: {} ms** (goal: under 200 ms).\n",
        ms(wall_m),
        list(&plain),
        ms(median(start.clone())),
        list(&start),
        outside - total_in,
        ms(wall_m),
    ))
}

/// Bytes moved each way in the throughput measurement.
const TRANSFER_BYTES: usize = 64 << 20;

fn mib_per_s(d: Duration) -> f64 {
    (TRANSFER_BYTES as f64 / (1 << 20) as f64) / d.as_secs_f64()
}

/// Incompressible bytes from host memory, so only the protocol path is measured.
fn transfer_data() -> Vec<u8> {
    let mut data = vec![0u8; TRANSFER_BYTES];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

/// 64 MiB up and down on each of `agents`, in turn, `runs` times: (upload,
/// download) durations per agent.
pub async fn transfers(
    agents: &[&AgentClient],
    data: &[u8],
    runs: usize,
) -> anyhow::Result<Vec<(Vec<Duration>, Vec<Duration>)>> {
    let mut all = vec![(Vec::new(), Vec::new()); agents.len()];
    for _ in 0..runs {
        for (agent, (up, down)) in agents.iter().zip(all.iter_mut()) {
            let t0 = Instant::now();
            agent
                .put(&mut &data[..], "/root/bench.bin", 0o644)
                .await
                .map_err(|e| anyhow!("upload: {e}"))?;
            up.push(t0.elapsed());
            let t0 = Instant::now();
            let mut sink = CheckSink::default();
            agent
                .get("/root/bench.bin", &mut sink)
                .await
                .map_err(|e| anyhow!("download: {e}"))?;
            down.push(t0.elapsed());
            if sink.len != data.len() as u64 {
                bail!("download: {} bytes, {} uploaded", sink.len, data.len());
            }
        }
    }
    for agent in agents {
        agent
            .remove("/root/bench.bin", false)
            .await
            .map_err(|e| anyhow!("removing the file: {e}"))?;
    }
    Ok(all)
}

/// Counts what it is given.
#[derive(Default)]
struct CheckSink {
    len: u64,
}

impl tokio::io::AsyncWrite for CheckSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.len += buf.len() as u64;
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The file transfer section: 64 MiB each way into the image's overlay, over
/// vsock (a cold-booted VM) and virtio-serial (a prototype clone); with
/// `reference`, also on a VM booting another build of the agent, in turn.
pub async fn transfer_section(
    base: &VmConfig,
    runs: usize,
    reference: Option<&VmConfig>,
) -> anyhow::Result<String> {
    let Some((image, config)) = super::image_config(base) else {
        return Ok(super::no_image("File transfer"));
    };
    let pid = std::process::id();
    let runs = runs.clamp(3, 5);
    let data = transfer_data();
    let vm = vm::spawn_vm_with_config(&format!("bench-{pid}-xfer"), &config).await?;
    let ref_vm = match reference {
        Some(r) => {
            let r = VmConfig {
                rootfs: Some(image),
                ..r.clone()
            };
            Some(vm::spawn_vm_with_config(&format!("bench-{pid}-xfer-ref"), &r).await?)
        }
        None => None,
    };
    let mut agents = vec![vm.agent()];
    agents.extend(ref_vm.as_ref().map(|v| v.agent()));
    let vsock = transfers(&agents, &data, runs).await;
    vm::destroy_vm(vm).await?;
    if let Some(v) = ref_vm {
        vm::destroy_vm(v).await?;
    }
    let mut vsock = vsock?;
    let vsock_ref = (vsock.len() > 1).then(|| vsock.remove(1));
    let (vup, vdown) = vsock.remove(0);
    let proto = prototype::ensure(&config, &|m| eprintln!("bench: {m}")).await?;
    let clone = prototype::restore(&proto, &format!("bench-{pid}-xfer-clone"), &config).await?;
    let serial = transfers(&[clone.agent()], &data, runs).await;
    vm::destroy_vm(clone).await?;
    let (sup, sdown) = serial?.remove(0);
    let rate = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.1}", mib_per_s(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let m = |v: &[Duration]| mib_per_s(median(v.to_vec()));
    eprintln!(
        "bench: 64 MiB vsock up {:.1} down {:.1}, serial up {:.1} down {:.1} MiB/s",
        m(&vup),
        m(&vdown),
        m(&sup),
        m(&sdown)
    );
    Ok(format!(
        "\n## File transfer\n\n\
         64 MiB of incompressible bytes from host memory into a file of the default image's \
         tmpfs overlay (`put`, `/root/bench.bin`) and back into host memory (`get`), {runs} runs \
         each way.\n\n\
         Where the time goes, per 256 KiB chunk in the guest: a download reads the file into \
         the frame's buffer and hands it to the kernel with the frame's header in one `writev` \
         (two passes over each byte; it was five: zeroing, a read on a blocking thread, a copy \
         out of tokio's buffer, a copy into the codec's buffer, the write; and every chunk's \
         buffer was faulted in anew). An upload reads the socket into \
         the frame's buffer and writes it to the file (two passes); what bounds it is the guest \
         kernel's receive path, which takes host data in the buffers it gives the device, each \
         handled and refilled by emulated code: page-sized for virtio-console (16 384 per 64 MiB), \
         16 KiB for virtio-vsock in the microVM kernel (4 096; the patch in docs/kernel.md took \
         vsock uploads from 165–200 to 240–290 MiB/s here; Debian's kernel has page-sized ones).\n\n\
         | measurement | median MiB/s | runs (MiB/s) |\n|---|---:|---|\n\
         | upload 64 MiB, vsock (cold-booted VM) | {:.1} | {} |\n\
         | download 64 MiB, vsock | {:.1} | {} |\n\
         | upload 64 MiB, virtio-serial (prototype clone) | {:.1} | {} |\n\
         | download 64 MiB, virtio-serial | {:.1} | {} |\n\n\
         {}\
         **Upload {:.1} MiB/s, download {:.1} MiB/s into a clone (virtio-serial: where `ironclaw run`, \
         the pool and the service move files); upload {:.1} MiB/s, download {:.1} MiB/s into a \
         cold-booted VM over vsock** (goal: at least 200 MiB/s each way).\n",
        m(&vup),
        rate(&vup),
        m(&vdown),
        rate(&vdown),
        m(&sup),
        rate(&sup),
        m(&sdown),
        rate(&sdown),
        match &vsock_ref {
            Some((up, down)) => format!(
                "The reference agent build, on a VM of its own, in turn with the one above \
                 (vsock): upload {:.1} MiB/s ({}), download {:.1} MiB/s ({}).\n\n",
                m(up),
                rate(up),
                m(down),
                rate(down)
            ),
            None => String::new(),
        },
        m(&sup),
        m(&sdown),
        m(&vup),
        m(&vdown),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_timings_line_is_parsed() {
        let err = "x\nironclaw: timings: config 1.5 ms, prototype 2.0 ms, launch 100.0 ms, \
                   connect 40.0 ms, exec 80.0 ms, destroy 10.0 ms, total 233.5 ms\n";
        assert_eq!(
            super::parse_run_timings(err).unwrap(),
            vec![1.5, 2.0, 100.0, 40.0, 80.0, 10.0, 233.5]
        );
        assert!(super::parse_run_timings("nothing").is_none());
    }
}
