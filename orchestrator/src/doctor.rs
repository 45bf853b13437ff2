//! `ironclaw doctor`: what this host offers and what IronClaw will use.

use std::path::PathBuf;

use serde::Serialize;

use crate::image;
use crate::vm::{accel, config::AccelChoice, qemu};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Info,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// Backend and accelerator that `auto` chooses, if any can run.
    pub chosen: Option<String>,
}

impl Report {
    pub fn can_run(&self) -> bool {
        self.chosen.is_some()
    }
}

fn tool(name: &'static str, env: &str, hint: &str) -> (Check, Option<PathBuf>) {
    let found = std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| qemu::which(name));
    match found {
        Some(p) => (
            Check {
                name,
                level: Level::Ok,
                detail: p.display().to_string(),
            },
            Some(p),
        ),
        None => (
            Check {
                name,
                level: Level::Fail,
                detail: format!("not found; {hint}"),
            },
            None,
        ),
    }
}

pub fn run() -> Report {
    let mut checks = Vec::new();
    let kvm = accel::probe_kvm();
    checks.push(Check {
        name: "kvm",
        level: if kvm.usable { Level::Ok } else { Level::Info },
        detail: format!(
            "present: {}, usable: {} ({})",
            if kvm.present { "yes" } else { "no" },
            if kvm.usable { "yes" } else { "no" },
            kvm.reason
        ),
    });
    let (qemu_check, qemu) = tool(
        qemu::QEMU_BINARY,
        "IRONCLAW_QEMU",
        "apt-get install qemu-system-x86",
    );
    checks.push(qemu_check);
    let (vhost_check, vhost) = tool(
        qemu::VHOST_VSOCK_BINARY,
        "IRONCLAW_VHOST_VSOCK",
        "cargo install --locked vhost-device-vsock",
    );
    checks.push(vhost_check);

    let kernel = image::default_kernel();
    let mut boot_ok = true;
    match &kernel {
        Ok(k) => {
            let release = image::kernel_release(k);
            let detail = match &release {
                Ok(r) => format!("{} (release {r})", k.display()),
                Err(e) => e.to_string(),
            };
            boot_ok &= release.is_ok();
            checks.push(Check {
                name: "kernel",
                level: if release.is_ok() {
                    Level::Ok
                } else {
                    Level::Fail
                },
                detail,
            });
            if let Ok(r) = release {
                let dir = PathBuf::from("/lib/modules").join(&r);
                match image::resolve_modules(&dir, &r, image::GUEST_MODULES) {
                    Ok(m) => checks.push(Check {
                        name: "kernel modules",
                        level: Level::Ok,
                        detail: format!("{} modules from {}", m.len(), dir.display()),
                    }),
                    Err(e) => {
                        boot_ok = false;
                        checks.push(Check {
                            name: "kernel modules",
                            level: Level::Fail,
                            detail: e.to_string(),
                        });
                    }
                }
            }
        }
        Err(e) => {
            boot_ok = false;
            checks.push(Check {
                name: "kernel",
                level: Level::Fail,
                detail: e.to_string(),
            });
        }
    }
    for (name, found) in [
        ("guest agent", image::guest_binary()),
        ("busybox", image::busybox_binary()),
    ] {
        match found {
            Ok(p) => checks.push(Check {
                name,
                level: Level::Ok,
                detail: p.display().to_string(),
            }),
            Err(e) => {
                boot_ok = false;
                checks.push(Check {
                    name,
                    level: Level::Fail,
                    detail: e.to_string(),
                });
            }
        }
    }
    let firecracker = qemu::which("firecracker");
    checks.push(Check {
        name: "firecracker",
        level: Level::Info,
        detail: match (&firecracker, kvm.usable) {
            (Some(p), true) => format!(
                "{} found and KVM is usable: the firecracker backend can be used, and auto prefers it",
                p.display()
            ),
            (Some(p), false) => format!(
                "{} found, but unusable here: Firecracker needs usable KVM ({}); auto uses QEMU",
                p.display(),
                kvm.reason
            ),
            (None, true) => "not on PATH: install it (or set $IRONCLAW_FIRECRACKER) to use it; KVM is usable here".into(),
            (None, false) => format!(
                "not on PATH, and it could not run here anyway: it needs usable KVM ({}); auto uses QEMU",
                kvm.reason
            ),
        },
    });
    let (accel, reason) = accel::choose(AccelChoice::Auto);
    let chosen = (qemu.is_some() && vhost.is_some() && boot_ok)
        .then(|| format!("qemu microvm, accel {accel}"));
    checks.push(Check {
        name: "chosen",
        level: if chosen.is_some() { Level::Ok } else { Level::Fail },
        detail: match &chosen {
            Some(c) => format!("{c} ({reason})"),
            None => "nothing can run here: fix the failures above (scripts/setup.sh installs everything)".into(),
        },
    });
    Report { checks, chosen }
}
