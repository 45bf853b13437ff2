//! Choosing QEMU's accelerator: KVM only when it is really usable.
//!
//! `/dev/kvm` being present is not enough. Hosts that offer KVM through PVM
//! (module `kvm_pvm`, no `vmx`/`svm` CPU flag) run an ordinary guest kernel
//! emulated, far slower than TCG, and QEMU with `-accel kvm` hangs in early boot
//! there. So KVM is used only when the device opens, speaks API version 12, the
//! CPU advertises hardware virtualization and no PVM module is loaded.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use serde::Serialize;

use super::config::AccelChoice;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the host offers and why KVM can or cannot be used.
#[derive(Debug, Clone, Serialize)]
pub struct KvmProbe {
    pub present: bool,
    pub usable: bool,
    pub reason: String,
}

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

pub fn probe_kvm() -> KvmProbe {
    let not = |present, reason: String| KvmProbe {
        present,
        usable: false,
        reason,
    };
    let file = match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return not(false, "no /dev/kvm".into())
        }
        Err(e) => return not(true, format!("/dev/kvm cannot be opened: {e}")),
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let api = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if api != 12 {
        return not(
            true,
            format!("/dev/kvm answers API version {api}, expected 12"),
        );
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return not(
            true,
            "KVM is provided by PVM (module kvm_pvm): guest kernels run emulated there and QEMU -accel kvm hangs in early boot".into(),
        );
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !has_flag {
        return not(
            true,
            "the CPU shows no vmx/svm flag: KVM here is not hardware virtualization".into(),
        );
    }
    KvmProbe {
        present: true,
        usable: true,
        reason: "/dev/kvm works and the CPU has hardware virtualization".into(),
    }
}

/// The accelerator to use for `choice`, with the reason.
pub fn choose(choice: AccelChoice) -> (Accel, String) {
    match choice {
        AccelChoice::Tcg => (Accel::Tcg, "TCG requested".into()),
        AccelChoice::Kvm => (Accel::Kvm, "KVM requested".into()),
        AccelChoice::Auto => {
            let probe = probe_kvm();
            if probe.usable {
                (Accel::Kvm, probe.reason)
            } else {
                (
                    Accel::Tcg,
                    format!("KVM not usable ({}), using TCG", probe.reason),
                )
            }
        }
    }
}
