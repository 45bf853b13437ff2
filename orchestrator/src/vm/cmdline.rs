//! The guest kernel's command line: the arguments every backend passes, each
//! backend's own, and the `ironclaw.*` words the guest's `/init` reads from
//! `/proc/cmdline` (it has no other channel before its agent runs; their
//! names are shared with the guest through `ironclaw_protocol`).

use ironclaw_protocol::{OVERLAY_MIB_ARG, ROOTFS_ARG, SERIAL_TRANSPORT_ARG};

use super::config::VmConfig;
use super::tsc;

/// Every backend: the serial console, quiet, and `/init` of the initramfs.
const BASE_ARGS: &[&str] = &["console=ttyS0", "quiet", "rdinit=/init"];

/// QEMU: `panic=-1` with `-no-reboot` turns a guest panic into a QEMU exit.
/// `tsc=reliable`: the TSC is the guest's clock source (the microvm machine
/// has no HPET or ACPI PM timer), and without it the kernel watches the TSC
/// against jiffies twice a second, waking idle guests and, with ticks late on
/// a loaded host, liable to declare the TSC unstable and fall back to
/// jiffies. [`qemu_base`] adds the host's TSC rate ([`super::tsc`]).
const QEMU_ARGS: &[&str] = &["panic=-1", "reboot=t", "tsc=reliable"];

/// Firecracker's recommended arguments: a guest reboot (`reboot=k`, also what
/// a panic leads to after 1 s) ends the Firecracker process; there is no PCI
/// bus. No TSC work-around: Firecracker always runs on KVM.
const FIRECRACKER_ARGS: &[&str] = &["reboot=k", "panic=1", "pci=off"];

/// The block device of the image: the only (hence first) virtio disk.
pub const ROOTFS_DEVICE: &str = "/dev/vda";

/// QEMU's base command line without anything VM-specific (the benchmark's
/// bare-QEMU reference boots with exactly this): the fixed words and
/// `tsc_early_khz=` with the host's TSC rate, which the guest's TSC runs at
/// under TCG and which the guest cannot calibrate there (without it the
/// guest calibrates against the PIT).
pub fn qemu_base() -> String {
    let args = join(BASE_ARGS.iter().chain(QEMU_ARGS));
    match tsc::host_tsc_khz() {
        Some(khz) => format!("{args} tsc_early_khz={khz}"),
        None => args,
    }
}

/// The command line of a QEMU VM of `config`; `serial` selects the
/// virtio-serial transport for the agent.
pub fn qemu(config: &VmConfig, serial: bool) -> String {
    qemu_base() + &transport_and_guest_args(config, serial)
}

/// [`qemu`] without the measured TSC rate. It identifies a prototype's
/// command line (the snapshot's kernel keeps what it booted with; the rate
/// is the host's, as the prototype cache is, and varies in its last digits
/// between measurements), and it is what a restored VM's QEMU is given: its
/// kernel booted long ago and reads none of it, and the restore path
/// measures nothing.
pub fn qemu_unmeasured(config: &VmConfig, serial: bool) -> String {
    join(BASE_ARGS.iter().chain(QEMU_ARGS)) + &transport_and_guest_args(config, serial)
}

fn transport_and_guest_args(config: &VmConfig, serial: bool) -> String {
    let transport = if serial {
        format!(" {SERIAL_TRANSPORT_ARG}")
    } else {
        String::new()
    };
    transport + &guest_args(config)
}

/// The command line of a Firecracker VM of `config`.
pub fn firecracker(config: &VmConfig) -> String {
    join(BASE_ARGS.iter().chain(FIRECRACKER_ARGS)) + &guest_args(config)
}

fn join<'a>(args: impl Iterator<Item = &'a &'a str>) -> String {
    args.copied().collect::<Vec<_>>().join(" ")
}

/// What the guest reads for `config`: its root file system image (empty
/// without one), each word with a leading space.
fn guest_args(config: &VmConfig) -> String {
    match &config.rootfs {
        Some(_) => format!(
            " {ROOTFS_ARG}={ROOTFS_DEVICE} {OVERLAY_MIB_ARG}={}",
            config.overlay_mib
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    #[test]
    fn the_rootfs_words_only_with_a_rootfs() {
        let exe = std::env::current_exe().unwrap();
        let mut c = VmConfig::new("a", &exe, &exe);
        assert!(!qemu(&c, false).contains("ironclaw."));
        c.rootfs = Some(exe.clone());
        c.overlay_mib = 64;
        let q = qemu(&c, true);
        for want in [
            "ironclaw.rootfs=/dev/vda",
            "ironclaw.overlay_mib=64",
            SERIAL_TRANSPORT_ARG,
        ] {
            assert!(words(&q).contains(&want), "{want} missing in {q}");
        }
    }

    #[test]
    fn each_backend_gets_its_own_extras() {
        let exe = std::env::current_exe().unwrap();
        let c = VmConfig::new("a", &exe, &exe);
        let q = qemu(&c, false);
        let f = firecracker(&c);
        for both in ["console=ttyS0", "rdinit=/init"] {
            assert!(words(&q).contains(&both) && words(&f).contains(&both));
        }
        let tsc = format!("tsc_early_khz={}", tsc::host_tsc_khz().unwrap());
        for qemu_only in [tsc.as_str(), "panic=-1", "reboot=t"] {
            assert!(words(&q).contains(&qemu_only), "{q}");
            assert!(!words(&f).contains(&qemu_only), "{f}");
        }
        for fc_only in ["reboot=k", "panic=1", "pci=off"] {
            assert!(words(&f).contains(&fc_only), "{f}");
            assert!(!words(&q).contains(&fc_only), "{q}");
        }
    }

    /// The unmeasured command line is the full one less the TSC word.
    #[test]
    fn the_unmeasured_command_line_is_the_full_one_without_the_tsc_rate() {
        let exe = std::env::current_exe().unwrap();
        let mut c = VmConfig::new("a", &exe, &exe);
        c.rootfs = Some(exe.clone());
        let id = qemu_unmeasured(&c, true);
        let full = qemu(&c, true);
        let full: Vec<_> = words(&full)
            .into_iter()
            .filter(|w| !w.starts_with("tsc_early_khz="))
            .collect();
        assert_eq!(words(&id), full);
    }
}
