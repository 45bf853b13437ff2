//! `ironclaw doctor`: what this host offers and what IronClaw will use.

use std::path::PathBuf;

use serde::Serialize;

use crate::boot::{initramfs, kernel};
use crate::vm::{accel, cgroup, config::AccelChoice, qemu, seccomp};

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
        .or_else(|| crate::vm::host::which(name));
    match found {
        Some(p) if !p.is_file() => (
            Check {
                name,
                level: Level::Fail,
                detail: format!("${env} is {}, which is not a file; {hint}", p.display()),
            },
            None,
        ),
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

/// Whether clones of QEMU prototypes share the prototype's memory.
fn clone_memory_check(qemu: &std::path::Path) -> Check {
    let name = "clone memory";
    match qemu::clones_share_memory(qemu) {
        Ok(true) => Check {
            name,
            level: Level::Ok,
            detail: "shared: clones map their prototype's memory copy-on-write".into(),
        },
        Ok(false) => Check {
            name,
            level: Level::Info,
            detail: format!(
                "copied: each clone loads its own copy of the prototype's memory (QEMU older than 8.2, \
                 or ${}=copy); scripts/setup.sh installs QEMU 10 on Debian 12",
                qemu::CLONE_MEMORY_ENV
            ),
        },
        Err(e) => Check {
            name,
            level: Level::Fail,
            detail: e.to_string(),
        },
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
    if let Some(q) = &qemu {
        checks.push(clone_memory_check(q));
    }
    let (vhost_check, vhost) = tool(
        qemu::VHOST_VSOCK_BINARY,
        "IRONCLAW_VHOST_VSOCK",
        "cargo install --locked vhost-device-vsock",
    );
    checks.push(vhost_check);

    let kernel = kernel::default_kernel_with_origin();
    let mut boot_ok = true;
    match &kernel {
        Ok((k, origin)) => {
            let release = kernel::kernel_release(k);
            let what = match origin {
                kernel::KernelOrigin::Environment if kernel::is_microvm_kernel(k) => {
                    "a microVM kernel, from $IRONCLAW_KERNEL"
                }
                kernel::KernelOrigin::Environment => "$IRONCLAW_KERNEL",
                kernel::KernelOrigin::MicroVm => {
                    "the microVM kernel (kernel/microvm.config, no modules)"
                }
            };
            let detail = match &release {
                Ok(r) => format!("{what}: {} (release {r})", k.display()),
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
                if kernel::built_without_modules(k, &r) {
                    checks.push(Check {
                        name: "kernel modules",
                        level: Level::Ok,
                        detail: "none needed: the kernel has everything built in".into(),
                    });
                } else {
                    match kernel::resolve_modules(&dir, &r, kernel::GUEST_MODULES) {
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
    // Debian's kernel stays selectable (`--kernel`); say which one that is.
    checks.push(Check {
        name: "debian kernel",
        level: Level::Info,
        detail: match kernel::debian_kernel() {
            Ok(k) => format!(
                "{} (select it with --kernel or IRONCLAW_KERNEL)",
                k.display()
            ),
            Err(e) => e.to_string(),
        },
    });
    for (name, found) in [
        ("guest agent", initramfs::guest_binary()),
        ("busybox", initramfs::busybox_binary()),
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
    boot_ok &= confinement_checks(&mut checks);
    checks.extend(firecracker_checks(&kvm));
    checks.push(Check {
        name: "image",
        level: Level::Info,
        detail: match crate::userland::default_image() {
            Some(p) => format!(
                "default userland image {}: `ironclaw run` boots it",
                p.display()
            ),
            None => "no default userland image: `ironclaw run` uses the initramfs (busybox); \
                     `ironclaw image build` makes one with python3"
                .into(),
        },
    });
    let (accel, reason) = accel::choose(AccelChoice::Auto);
    let auto = crate::vm::select::select(crate::vm::config::BackendChoice::Auto).map(|b| b.kind());
    let chosen = match auto {
        Ok(crate::vm::BackendKind::Firecracker) if boot_ok => Some("firecracker (KVM)".to_string()),
        _ => (qemu.is_some() && vhost.is_some() && boot_ok)
            .then(|| format!("qemu microvm, accel {accel}")),
    };
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

/// The `firecracker` and `fc jailer` lines: the binaries found as
/// the backend finds them (`$IRONCLAW_FIRECRACKER`, else PATH;
/// `$IRONCLAW_FIRECRACKER_JAILER`, a path or a name on PATH), and whether
/// `auto` would use Firecracker here and why not.
pub fn firecracker_checks(kvm: &accel::KvmProbe) -> Vec<Check> {
    use crate::vm::firecracker::{self, JailerConfig};
    let from_env = std::env::var_os("IRONCLAW_FIRECRACKER").is_some();
    let found = firecracker::find_binary();
    let where_ = if from_env {
        "$IRONCLAW_FIRECRACKER"
    } else {
        "PATH"
    };
    let mut checks = Vec::new();
    let binary = match &found {
        Some(p) if !p.is_file() => {
            checks.push(Check {
                name: "firecracker",
                level: Level::Fail,
                detail: format!(
                    "$IRONCLAW_FIRECRACKER is {}, which is not a file: point it at the firecracker binary or unset it",
                    p.display()
                ),
            });
            None
        }
        Some(p) => Some(p.clone()),
        None => {
            checks.push(Check {
                name: "firecracker",
                level: Level::Info,
                detail: if kvm.usable {
                    "not on PATH and $IRONCLAW_FIRECRACKER is unset: install it (or set $IRONCLAW_FIRECRACKER) to use it; KVM is usable here".into()
                } else {
                    format!(
                        "not on PATH and $IRONCLAW_FIRECRACKER is unset, and it could not run here anyway: it needs usable KVM ({}); auto uses QEMU",
                        kvm.reason
                    )
                },
            });
            None
        }
    };
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let allow_unjailed =
        std::env::var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED").is_ok_and(|v| v == "1");
    let jailer = JailerConfig::from_env();
    let jail_ok = match &jailer {
        Ok(None) => {
            checks.push(Check {
                name: "fc jailer",
                level: Level::Info,
                detail: match (root, allow_unjailed) {
                    (true, false) => "$IRONCLAW_FIRECRACKER_JAILER is unset: as root, Firecracker is only used through its jailer (or with $IRONCLAW_FIRECRACKER_ALLOW_UNJAILED=1); auto uses QEMU".into(),
                    (true, true) => "$IRONCLAW_FIRECRACKER_JAILER is unset and $IRONCLAW_FIRECRACKER_ALLOW_UNJAILED=1: Firecracker would run unjailed, as root".into(),
                    (false, _) => "$IRONCLAW_FIRECRACKER_JAILER is unset: Firecracker would run unjailed, as this user".into(),
                },
            });
            !root || allow_unjailed
        }
        Ok(Some(j)) => {
            let checked = match &binary {
                Some(fc) => j.check(fc).map_err(|e| e.to_string()),
                None => std::fs::metadata(&j.binary)
                    .map(|_| ())
                    .map_err(|e| format!("the jailer {}: {e}", j.binary.display())),
            };
            let ok = checked.is_ok();
            checks.push(Check {
                name: "fc jailer",
                level: if ok { Level::Ok } else { Level::Fail },
                detail: match checked {
                    Ok(()) => format!(
                        "{} (from $IRONCLAW_FIRECRACKER_JAILER), chroot base {}",
                        j.binary.display(),
                        j.chroot_base.display()
                    ),
                    Err(e) => format!("$IRONCLAW_FIRECRACKER_JAILER: {e}"),
                },
            });
            ok
        }
        Err(e) => {
            checks.push(Check {
                name: "fc jailer",
                level: Level::Fail,
                detail: e.to_string(),
            });
            false
        }
    };
    if let Some(p) = binary {
        let detail = match (kvm.usable, jail_ok) {
            (true, true) => format!(
                "{} (from {where_}), KVM is usable: the firecracker backend can be used, and auto prefers it",
                p.display()
            ),
            (true, false) => format!(
                "{} (from {where_}), KVM is usable, but see the jailer line: auto uses QEMU",
                p.display()
            ),
            (false, _) => format!(
                "{} (from {where_}), but unusable here: Firecracker needs usable KVM ({}); auto uses QEMU",
                p.display(),
                kvm.reason
            ),
        };
        checks.insert(
            0,
            Check {
                name: "firecracker",
                level: Level::Info,
                detail,
            },
        );
    }
    checks
}

/// The prototype feasibility check: build (or reuse) the default prototype
/// with the backend `auto` picks here (QEMU or Firecracker), restore a
/// clone, run `true` in it, and time each step.
pub async fn prototype_check() -> Check {
    use std::time::Instant;
    let name = "prototype";
    let fail = |detail: String| Check {
        name,
        level: Level::Fail,
        detail,
    };
    let config = match crate::vm::default_config("doctor") {
        Ok(c) => c,
        Err(e) => return fail(format!("no default config: {e}")),
    };
    let t0 = Instant::now();
    let built = std::sync::atomic::AtomicBool::new(false);
    let proto = match crate::vm::prototype::ensure(&config, &|_| {
        built.store(true, std::sync::atomic::Ordering::Relaxed)
    })
    .await
    {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot build a prototype here: {e}")),
    };
    let ensure_ms = t0.elapsed().as_millis();
    let t1 = Instant::now();
    let id = format!("doctor-{}", std::process::id());
    let vm = match crate::vm::prototype::restore(&proto, &id, &config).await {
        Ok(vm) => vm,
        Err(e) => {
            return fail(format!(
                "prototype {} built but cannot be restored: {e}",
                proto.meta.key
            ))
        }
    };
    let restore_ms = t1.elapsed().as_millis();
    let t2 = Instant::now();
    let ran = vm
        .agent()
        .run(crate::vm::exec_request(["true"]), None)
        .await;
    let exec_ms = t2.elapsed().as_millis();
    let _ = crate::vm::destroy_vm(vm).await;
    match ran {
        Ok(out) if out.status.code == Some(0) => Check {
            name,
            level: Level::Ok,
            detail: format!(
                "works with {}: {} (boot {} ms, snapshot {} ms, {} MiB); restore {restore_ms} ms, first exec {exec_ms} ms",
                proto.meta.backend,
                if built.into_inner() { format!("built in {ensure_ms} ms") } else { format!("cached, checked in {ensure_ms} ms") },
                proto.meta.boot_ms,
                proto.meta.snapshot_ms,
                proto.meta.snapshot_bytes() >> 20
            ),
        },
        Ok(out) => fail(format!("a restored clone ran `true` with {:?}", out.status)),
        Err(e) => fail(format!("a restored clone does not answer: {e}")),
    }
}

/// Seccomp filters, jail and cgroups as the QEMU backend applies them by
/// default; false when a default VM could not be confined here.
fn confinement_checks(checks: &mut Vec<Check>) -> bool {
    let mut ok = true;
    let mut filters = Vec::new();
    for kind in [seccomp::ProcessKind::Qemu, seccomp::ProcessKind::VhostVsock] {
        match seccomp::SeccompFilter::new(kind, seccomp::SeccompLevel::Strict, false) {
            Ok(f) => filters.push(format!(
                "{}: {} syscalls allowed, {} stacked filters",
                kind.name(),
                f.allowed,
                f.programs()
            )),
            Err(e) => {
                ok = false;
                filters.push(e.to_string());
            }
        }
    }
    checks.push(Check {
        name: "seccomp",
        level: if ok { Level::Ok } else { Level::Fail },
        detail: format!(
            "strict default-deny allowlists, IP sockets and ptrace/mount/bpf/kexec/modules/keyctl/userfaultfd kill; {}; plus QEMU's -sandbox",
            filters.join("; ")
        ),
    });
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    checks.push(Check {
        name: "jail",
        level: if root { Level::Ok } else { Level::Fail },
        detail: if root {
            "each VMM process: new mount/PID/IPC/UTS/network namespaces (no interface but a down lo), a minimal root (/usr, a few devices, its runtime dir), a per-VM unprivileged uid, no_new_privs".into()
        } else {
            "needs root (namespaces, cgroups, uid change): VMs fail to start unless confinement.jail is false".into()
        },
    });
    ok &= root;
    match cgroup::Layout::detect() {
        Ok(layout) => checks.push(Check {
            name: "cgroups",
            level: Level::Ok,
            detail: format!(
                "{:?}: a cgroup per VM with memory, cpu and pids limits under {}",
                layout.version,
                layout
                    .parents
                    .iter()
                    .map(|(c, p)| format!("{c}={}", p.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
        Err(e) => {
            ok = false;
            checks.push(Check {
                name: "cgroups",
                level: Level::Fail,
                detail: e.to_string(),
            });
        }
    }
    ok
}
