//! The machine flags shared by every subcommand that starts VMs (`run`,
//! `pool serve`, `prototype build`, `bench`), and [`vm_config`]: the one
//! place where flags — or a whole `--config FILE` — become a validated
//! [`VmConfig`].
//!
//! `--config FILE` is the whole VM: the machine, image and confinement flags
//! are refused next to it (naming them) rather than merged, so that what runs
//! is exactly what the file says. Only flags about the command (`--timeout`,
//! `--env`, …) still apply.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::ValueEnum;
use ironclaw_orchestrator::vm::config::{AccelChoice, BackendChoice};
use ironclaw_orchestrator::vm::seccomp::SeccompLevel;
use ironclaw_orchestrator::vm::VmConfig;
use ironclaw_orchestrator::{boot, userland};

use super::field_flags::{self, Origin, Refusal};

/// `--backend`: the CLI's mirror of [`BackendChoice`] (the library has no clap types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Firecracker where it is installed and KVM is usable, else QEMU.
    Auto,
    /// QEMU's microvm machine.
    Qemu,
    /// Firecracker (needs the firecracker binary and usable KVM).
    Firecracker,
}

impl From<Backend> for BackendChoice {
    fn from(b: Backend) -> BackendChoice {
        match b {
            Backend::Auto => BackendChoice::Auto,
            Backend::Qemu => BackendChoice::Qemu,
            Backend::Firecracker => BackendChoice::Firecracker,
        }
    }
}

/// `--accel`: the CLI's mirror of [`AccelChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM only where it is really usable (not merely present), else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl From<Accel> for AccelChoice {
    fn from(a: Accel) -> AccelChoice {
        match a {
            Accel::Auto => AccelChoice::Auto,
            Accel::Kvm => AccelChoice::Kvm,
            Accel::Tcg => AccelChoice::Tcg,
        }
    }
}

/// `--seccomp`: the CLI's mirror of [`SeccompLevel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Seccomp {
    /// Default deny: unlisted syscalls fail, the never set and IP sockets kill.
    Strict,
    /// WEAKER: unlisted syscalls are logged and allowed (the never set is still refused).
    Audit,
}

impl From<Seccomp> for SeccompLevel {
    fn from(s: Seccomp) -> SeccompLevel {
        match s {
            Seccomp::Strict => SeccompLevel::Strict,
            Seccomp::Audit => SeccompLevel::Audit,
        }
    }
}

/// The shape of the VM and the VMM that runs it.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Machine")]
pub struct MachineArgs {
    /// A whole VmConfig as JSON (the library's format; unknown fields are
    /// refused). Replaces the machine, image and confinement flags, which are
    /// refused next to it; errors then name the file's fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// VMM: `auto` is Firecracker where it is installed and KVM is usable, else QEMU.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Virtual CPUs of the VM [default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Guest memory in MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub mem: Option<u32>,
    /// Accelerator: `auto` is KVM only where it is really usable, else TCG.
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// Kernel to boot [default: $IRONCLAW_KERNEL, else the microVM kernel built by the set-up;
    /// Debian's: --kernel /boot/vmlinuz-…].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs to boot [default: generated from the kernel's modules and ironclaw-guest].
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Give up if the VM has not booted after this many seconds [default: 60].
    #[arg(long, value_name = "S")]
    pub boot_timeout: Option<f64>,
    #[command(flatten)]
    pub confine: ConfineArgs,
}

/// Confinement of the VMM processes. Every flag here weakens or re-tunes the
/// default, which confines fully.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(
    next_help_heading = "Confinement (the defaults confine fully; these weaken or re-tune it)"
)]
pub struct ConfineArgs {
    /// WEAKER: no jail. The VMM processes then run in the host's namespaces
    /// (mount, PID, network, IPC, UTS), as the calling user instead of an
    /// unprivileged per-VM uid, without the per-VM cgroup limits; only the
    /// seccomp filter and no_new_privs remain. For hosts where IronClaw
    /// cannot run as root.
    #[arg(long)]
    pub no_jail: bool,
    /// Seccomp filter of the VMM processes [default: strict]. `audit` is
    /// WEAKER: syscalls outside the allowlist are logged and allowed.
    #[arg(long, value_enum)]
    pub seccomp: Option<Seccomp>,
    /// Uid (and gid) the jailed VMM runs as [default: one derived per VM].
    /// A uid shared between VMs, or one that owns files, WEAKENS the
    /// separation between them; 0 is refused.
    #[arg(long, value_name = "UID")]
    pub vmm_uid: Option<u32>,
    /// Memory limit of all the VM's host processes together, in MiB (cgroup)
    /// [default: --mem + 320]. Higher WEAKENS the host's protection.
    #[arg(long, value_name = "MIB")]
    pub vmm_memory_limit: Option<u32>,
    /// CPU limit of the VM's host processes in thousandths of a CPU (cgroup)
    /// [default: 1000 × (vcpus + 1)]. Higher WEAKENS the host's protection.
    #[arg(long, value_name = "MILLIS")]
    pub vmm_cpu_limit: Option<u32>,
    /// Processes and threads of the VM's host processes together (cgroup)
    /// [default: 128]. Higher WEAKENS the host's protection.
    #[arg(long, value_name = "N")]
    pub vmm_pids_limit: Option<u32>,
}

/// The guest's userland image (subcommands whose VMs boot one).
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Image")]
pub struct ImageArgs {
    /// Root file system image: a name from `ironclaw image list` or a path
    /// [default: the `default` image when it has been built].
    #[arg(long, value_name = "NAME|PATH", conflicts_with = "no_image")]
    pub image: Option<String>,
    /// Boot the initramfs only (busybox, no image).
    #[arg(long)]
    pub no_image: bool,
    /// Size limit of the VM's writable layer over the image, in MiB [default: 128].
    #[arg(long, value_name = "MIB")]
    pub overlay_mib: Option<u32>,
}

impl MachineArgs {
    /// The machine and confinement flags given on the command line (not
    /// `--config`), by name.
    pub fn given(&self) -> Vec<&'static str> {
        let c = &self.confine;
        [
            ("--backend", self.backend.is_some()),
            ("--vcpus", self.vcpus.is_some()),
            ("--mem", self.mem.is_some()),
            ("--accel", self.accel.is_some()),
            ("--kernel", self.kernel.is_some()),
            ("--initramfs", self.initramfs.is_some()),
            ("--boot-timeout", self.boot_timeout.is_some()),
            ("--no-jail", c.no_jail),
            ("--seccomp", c.seccomp.is_some()),
            ("--vmm-uid", c.vmm_uid.is_some()),
            ("--vmm-memory-limit", c.vmm_memory_limit.is_some()),
            ("--vmm-cpu-limit", c.vmm_cpu_limit.is_some()),
            ("--vmm-pids-limit", c.vmm_pids_limit.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

impl ImageArgs {
    /// The image flags given on the command line, by name.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--image", self.image.is_some()),
            ("--no-image", self.no_image),
            ("--overlay-mib", self.overlay_mib.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

/// Seconds given on the command line, as whole milliseconds.
pub fn secs_to_ms(flag: &str, s: f64) -> Result<u64, Refusal> {
    if s.is_finite() && s > 0.0 {
        Ok((s * 1000.0).round().max(1.0) as u64)
    } else {
        Err(Refusal(format!(
            "{flag} must be a positive number of seconds, got {s}"
        )))
    }
}

/// Turns the flags (or `--config FILE`) into the validated config of a VM
/// named `id`. `image` is `None` for subcommands whose VMs boot no image;
/// `exec_timeout_s` is `run --timeout`, which applies with `--config` too.
pub async fn vm_config(
    id: &str,
    machine: &MachineArgs,
    image: Option<&ImageArgs>,
    exec_timeout_s: Option<f64>,
) -> anyhow::Result<VmConfig> {
    let exec_timeout_ms = exec_timeout_s
        .map(|t| secs_to_ms("--timeout", t))
        .transpose()?;
    let image_given = image.map(ImageArgs::given).unwrap_or_default();
    let (mut config, mut origin) = match &machine.config {
        Some(file) => {
            let mut given = machine.given();
            given.extend(image_given);
            if !given.is_empty() {
                return Err(Refusal(format!(
                    "{} cannot be combined with --config {}: the file describes the whole VM \
                     (set the corresponding fields in it instead)",
                    given.join(", "),
                    file.display()
                ))
                .into());
            }
            (read_config(file)?, Origin::file(file))
        }
        None => (
            from_flags(id, machine, image, exec_timeout_ms).await?,
            Origin::flags(),
        ),
    };
    if let Some(ms) = exec_timeout_ms {
        config.exec_timeout_ms = ms;
        origin.set_by_flag("exec_timeout_ms");
    }
    // Refuse bad input before anything starts, in the terms the user typed.
    config
        .validate()
        .map_err(|e| Refusal(field_flags::describe(&e, &origin)))?;
    // Each VM gets the id its subcommand gives it (the file's is only checked),
    // so two runs of one file do not collide.
    config.id = id.to_string();
    Ok(config)
}

fn read_config(file: &Path) -> anyhow::Result<VmConfig> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--config {}: cannot read it", file.display()))?;
    VmConfig::from_json(&text)
        .map_err(|e| Refusal(format!("--config {}: {e}", file.display())).into())
}

async fn from_flags(
    id: &str,
    m: &MachineArgs,
    image: Option<&ImageArgs>,
    exec_timeout_ms: Option<u64>,
) -> anyhow::Result<VmConfig> {
    let kernel = match &m.kernel {
        Some(k) => k.clone(),
        None => boot::kernel::default_kernel()?,
    };
    // The initramfs is generated last (it can take seconds), after the flags
    // were checked: for that first check the initramfs field names the kernel
    // (an existing file); the generated initramfs replaces it below.
    let mut config = VmConfig::new(id, &kernel, m.initramfs.as_ref().unwrap_or(&kernel));
    if let Some(b) = m.backend {
        config.backend = b.into();
    }
    if let Some(v) = m.vcpus {
        config.vcpus = v;
    }
    if let Some(mem) = m.mem {
        config.memory_mib = mem;
    }
    if let Some(a) = m.accel {
        config.accel = a.into();
    }
    if let Some(ms) = exec_timeout_ms {
        config.exec_timeout_ms = ms;
    }
    if let Some(t) = m.boot_timeout {
        config.boot_timeout_ms = secs_to_ms("--boot-timeout", t)?;
    }
    let c = &mut config.confinement;
    c.jail = !m.confine.no_jail;
    if let Some(s) = m.confine.seccomp {
        c.seccomp = s.into();
    }
    c.uid = m.confine.vmm_uid;
    c.memory_limit_mib = m.confine.vmm_memory_limit;
    c.cpu_limit_millis = m.confine.vmm_cpu_limit;
    c.pids_limit = m.confine.vmm_pids_limit;
    if let Some(img) = image {
        config.rootfs = choose_rootfs(img.image.as_deref(), img.no_image)?;
        if let Some(o) = img.overlay_mib {
            config.overlay_mib = o;
        }
    }
    if m.initramfs.is_none() {
        config
            .validate()
            .map_err(|e| Refusal(field_flags::describe(&e, &Origin::flags())))?;
        tracing::info!("preparing the initramfs…");
        config.initramfs =
            tokio::task::spawn_blocking(move || boot::initramfs::default_initramfs(&kernel))
                .await??;
    }
    Ok(config)
}

/// Which root file system a VM boots: `--no-image` → none; `--image
/// NAME|PATH` → that one; else the default image when it was built.
fn choose_rootfs(
    image: Option<&str>,
    no_image: bool,
) -> Result<Option<PathBuf>, userland::UserlandError> {
    if no_image {
        return Ok(None);
    }
    match image {
        // A path (has a slash or an extension) is used as is; a bare word names a cached image.
        Some(i) if i.contains('/') || i.contains('.') => Ok(Some(PathBuf::from(i))),
        Some(name) => userland::find(name).map(Some),
        None => Ok(userland::default_image()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        machine: MachineArgs,
        #[command(flatten)]
        image: ImageArgs,
    }

    fn parse(args: &[&str]) -> Probe {
        Probe::try_parse_from(std::iter::once("probe").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn no_image_wins() {
        assert_eq!(choose_rootfs(Some("/x/y.ext4"), true).unwrap(), None);
        assert_eq!(
            choose_rootfs(Some("/x/y.ext4"), false).unwrap(),
            Some(PathBuf::from("/x/y.ext4"))
        );
    }

    #[test]
    fn given_names_exactly_the_flags_typed() {
        let p = parse(&[]);
        assert!(p.machine.given().is_empty() && p.image.given().is_empty());
        let p = parse(&[
            "--mem",
            "512",
            "--no-jail",
            "--backend",
            "qemu",
            "--no-image",
        ]);
        assert_eq!(p.machine.given(), ["--backend", "--mem", "--no-jail"]);
        assert_eq!(p.image.given(), ["--no-image"]);
    }

    #[tokio::test]
    async fn flags_reach_the_config() {
        // Any existing regular files do for validation.
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let p = parse(&[
            "--kernel",
            exe,
            "--initramfs",
            exe,
            "--vcpus",
            "2",
            "--mem",
            "512",
            "--backend",
            "qemu",
            "--accel",
            "tcg",
            "--boot-timeout",
            "2.5",
            "--no-jail",
            "--seccomp",
            "audit",
            "--vmm-pids-limit",
            "64",
            "--no-image",
        ]);
        let c = vm_config("t-1", &p.machine, Some(&p.image), Some(7.0))
            .await
            .unwrap();
        assert_eq!((c.id.as_str(), c.vcpus, c.memory_mib), ("t-1", 2, 512));
        assert_eq!(
            (c.backend, c.accel),
            (BackendChoice::Qemu, AccelChoice::Tcg)
        );
        assert_eq!((c.boot_timeout_ms, c.exec_timeout_ms), (2500, 7000));
        assert!(!c.confinement.jail);
        assert_eq!(c.confinement.seccomp, SeccompLevel::Audit);
        assert_eq!(c.confinement.pids_limit, Some(64));
        assert_eq!(c.rootfs, None);
    }

    #[tokio::test]
    async fn config_file_is_whole_and_refuses_machine_flags() {
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vm.json");
        let json = serde_json::json!({
            "id": "from-file", "kernel": exe, "initramfs": exe, "memory_mib": 384,
        });
        std::fs::write(&file, json.to_string()).unwrap();
        let f = file.to_str().unwrap();
        let p = parse(&["--config", f]);
        let c = vm_config("run-x", &p.machine, Some(&p.image), None)
            .await
            .unwrap();
        assert_eq!((c.id.as_str(), c.memory_mib), ("run-x", 384));
        let p = parse(&["--config", f, "--mem", "512", "--image", "x"]);
        let err = vm_config("run-x", &p.machine, Some(&p.image), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--mem, --image cannot be combined"), "{err}");
        // A bad value is named by its field in the file.
        std::fs::write(&file, json.to_string().replace("384", "64")).unwrap();
        let p = parse(&["--config", f]);
        let err = vm_config("run-x", &p.machine, Some(&p.image), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`memory_mib`") && !err.contains("--mem"),
            "{err}"
        );
    }
}
