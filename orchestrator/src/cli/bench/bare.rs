//! The bare-QEMU references: the same QEMU, machine, kernel and snapshot
//! as IronClaw, none of IronClaw's host side (no jail, cgroup, agent
//! client beyond what the measurement needs), so a ratio shows what
//! IronClaw adds.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ironclaw_orchestrator::vm::prototype::Prototype;
use ironclaw_orchestrator::vm::qemu::{LaunchOptions, QemuBackend, Transport};
use ironclaw_orchestrator::vm::qmp::Qmp;
use ironclaw_orchestrator::vm::runtime::{self, RuntimeDir};
use ironclaw_orchestrator::vm::{self, accel, qemu, VmConfig};

/// The line the guest prints first thing in `/init`.
pub const INIT_MARKER: &str = "ironclaw-guest: /init started";

/// Bare QEMU, same machine, kernel and initramfs, no IronClaw: time from
/// starting QEMU until `/init` prints its first line on the serial console.
pub fn bare_qemu_boot(config: &VmConfig, accel: accel::Accel) -> anyhow::Result<Duration> {
    // The same QEMU (`$IRONCLAW_QEMU` honoured) and machine as IronClaw's
    // serial-transport VMs, minus everything IronClaw adds.
    let mut cmd = qemu::QemuBackend::from_env()?.machine_command(
        config,
        accel,
        &qemu::GuestMemory::Anonymous,
    );
    cmd.args(["-serial", "stdio"]);
    cmd.arg("-kernel")
        .arg(&config.kernel)
        .arg("-initrd")
        .arg(&config.initramfs);
    cmd.arg("-append").arg(vm::cmdline::qemu_base());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = vm::process::spawn_child(cmd).context("starting bare qemu")?;
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
    found.ok_or_else(|| anyhow!("bare QEMU never reached /init"))
}

/// A bare-QEMU restore, timed from starting QEMU.
pub struct BareRestore {
    /// Until QMP reports the resumed VM `running`.
    pub running: Duration,
    /// Until the answer of the first round trip ([`FirstRoundTrip`]).
    pub first_result: Duration,
    /// With [`FirstRoundTrip::Exec`] under TCG: the guest code translated.
    pub blocks: Option<TranslatedBlocks>,
}

/// Blocks of guest code QEMU's TCG translated during each step of a
/// restored VM's first work, as `info jit` counts them: a measure of how much
/// of the guest's code each step ran for the first time since the restore.
#[derive(Debug, Clone, Copy)]
pub struct TranslatedBlocks {
    /// The agent's handshake (from the restore on).
    pub handshake: u64,
    /// The first `true`.
    pub first_exec: u64,
    /// The second `true` (the same path again).
    pub second_exec: u64,
}

/// The translation blocks QEMU holds (`info jit`'s "TB count"); `None` when
/// it does not say (KVM, or a QEMU without the command).
async fn translated_blocks(qmp: &mut Qmp) -> Option<u64> {
    let out = qmp
        .execute(
            "human-monitor-command",
            Some(serde_json::json!({ "command-line": "info jit" })),
        )
        .await
        .ok()?;
    out.as_str()?
        .lines()
        .find_map(|l| l.trim().strip_prefix("TB count"))
        .and_then(|v| v.trim().parse().ok())
}

/// What the bare-QEMU restore reference does once the VM runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FirstRoundTrip {
    /// A hello frame written as raw bytes to the serial socket, the header
    /// of the guest's answer read back: the least the guest can do.
    Hello,
    /// The agent's handshake and the same first `true` IronClaw runs: the
    /// guest's work of IronClaw's path, without IronClaw's host side (no
    /// jail, cgroup or reseed).
    Exec,
}

/// Bare QEMU restoring the prototype's snapshot: from starting QEMU with
/// `-incoming` until the resumed VM reports `running` over QMP, and until the
/// first guest round trip (`first`): the reference for a prototype restore.
pub async fn bare_qemu_restore(
    proto: &Prototype,
    config: &VmConfig,
    i: usize,
    first: FirstRoundTrip,
) -> anyhow::Result<BareRestore> {
    let backend = QemuBackend::from_env()?;
    let id = format!("bench-bare-{}-{i}", std::process::id());
    let dir = RuntimeDir::create(&runtime::runtime_root(), &id).context("runtime dir")?;
    let (accel, _) = accel::choose(config.accel);
    let files = proto.files();
    let opts = LaunchOptions {
        transport: Transport::Serial,
        incoming: Some(proto.snapshot()),
        // The clone's memory, so the reference restores exactly what IronClaw does.
        memory: match &files[..] {
            [_, ram] => qemu::GuestMemory::PrivateFile(ram.clone()),
            _ => qemu::GuestMemory::Anonymous,
        },
    };
    let mut cmd = backend.qemu_command(config, accel, &dir, &opts);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let snapshot = std::fs::File::open(proto.snapshot()).context("opening the snapshot")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&snapshot);
    // SAFETY: dup2 is async-signal-safe; the copy lacks CLOEXEC so QEMU inherits it as fd 3.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = vm::process::spawn_child(cmd).context("starting bare qemu")?;
    let qmp_path = dir.file("qmp.sock");
    let result = async {
        let mut qmp = loop {
            match Qmp::connect(&qmp_path).await {
                Ok(q) => break q,
                Err(_) if t0.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(e) => bail!("bare QMP: {e}"),
            }
        };
        let q = |e| anyhow!("bare QMP: {e}");
        let incoming = qemu::Incoming::Stream {
            ignore_shared: backend.shares_memory(),
        };
        qemu::load_incoming(&mut qmp, incoming).await.map_err(q)?;
        qmp.execute("cont", None).await.map_err(q)?;
        let running = t0.elapsed();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(dir.file(qemu::SERIAL_SOCKET))
            .await
            .context("bare: serial socket")?;
        if first == FirstRoundTrip::Exec {
            let agent = tokio::time::timeout(
                Duration::from_secs(30),
                ironclaw_orchestrator::vm::AgentClient::handshake(Box::new(s)),
            )
            .await
            .map_err(|_| anyhow!("bare: no answer from the guest"))??;
            let after_handshake = translated_blocks(&mut qmp).await;
            let out = agent.run(vm::exec_request(["true"]), None).await?;
            if out.status.code != Some(0) {
                bail!("bare: `true` failed in the guest: {:?}", out.status);
            }
            let first_result = t0.elapsed();
            // Not timed: how much new guest code each step made QEMU translate.
            let after_first = translated_blocks(&mut qmp).await;
            agent.run(vm::exec_request(["true"]), None).await?;
            let after_second = translated_blocks(&mut qmp).await;
            let blocks = match (after_handshake, after_first, after_second) {
                (Some(h), Some(f), Some(s)) => Some(TranslatedBlocks {
                    handshake: h,
                    first_exec: f.saturating_sub(h),
                    second_exec: s.saturating_sub(f),
                }),
                _ => None,
            };
            return Ok(BareRestore {
                running,
                first_result,
                blocks,
            });
        }
        // First guest round trip: a hello frame and its answer's header.
        let hello = ironclaw_protocol::Frame::control(
            ironclaw_protocol::SESSION_STREAM,
            &ironclaw_protocol::Message::Hello {
                version: ironclaw_protocol::PROTOCOL_VERSION,
            },
        );
        let mut frame = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(
            &mut ironclaw_protocol::FrameCodec::new(),
            hello,
            &mut frame,
        )
        .map_err(|e| anyhow!("bare: encoding hello: {e}"))?;
        s.write_all(&frame).await.context("bare: hello")?;
        let mut header = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut header))
            .await
            .map_err(|_| anyhow!("bare: no answer from the guest"))?
            .context("bare: answer")?;
        Ok(BareRestore {
            running,
            first_result: t0.elapsed(),
            blocks: None,
        })
    }
    .await;
    vm::process::kill_and_reap(&mut child);
    drop(dir);
    result
}
