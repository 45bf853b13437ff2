//! The guest kernel: IronClaw's microVM kernel by default (everything built
//! in, no modules), Debian's when `--kernel` names it; what the guest needs
//! from the microVM kernel works in a VM booted from it.

use std::path::{Path, PathBuf};

mod cli_support;

use cli_support::{ironclaw, s};
use ironclaw_orchestrator::boot::kernel;

fn root(name: &str) -> PathBuf {
    cli_support::root("kernel", name)
}

/// `ironclaw run --cold [--kernel K] [ARGS] -- sh -c SCRIPT` (with
/// `$IRONCLAW_KERNEL` unset, so the default is the default): its exit
/// status, stdout and stderr.
fn run_cold(
    name: &str,
    kernel: Option<&Path>,
    args: &[&str],
    script: &str,
) -> (Option<i32>, String, String) {
    let r = root(name);
    let mut cmd = ironclaw(&r);
    cmd.env_remove("IRONCLAW_KERNEL").args(["run", "--cold"]);
    if let Some(k) = kernel {
        cmd.arg("--kernel").arg(k);
    }
    cmd.args(args);
    let out = cmd.args(["--", "sh", "-c", script]).output().unwrap();
    let _ = std::fs::remove_dir_all(&r);
    (out.status.code(), s(&out.stdout), s(&out.stderr))
}

#[test]
fn the_default_kernel_is_the_microvm_kernel() {
    // Asked of the library with the environment the CLI gets.
    let microvm = kernel::microvm_kernel().expect("the set-up builds the microVM kernel");
    let release = kernel::kernel_release(&microvm).unwrap();
    assert!(release.ends_with("-ironclaw"), "{release}");
    // With the default image when there is one (ext4 under an overlay).
    let (code, out, err) = run_cold(
        "default",
        None,
        &[],
        "uname -r; test -e /proc/modules && echo has-modules; true",
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], release, "{out}");
    // No module support at all: /init had nothing to load.
    assert!(!out.contains("has-modules"), "{out}");
    let doctor = ironclaw(&root("doctor"))
        .args(["doctor", "--quick"])
        .output()
        .unwrap();
    let text = s(&doctor.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("kernel") && l.contains("microVM"))
        .unwrap_or_else(|| panic!("doctor does not name the microVM kernel: {text}"));
    assert!(line.contains(&microvm.display().to_string()), "{line}");
    assert!(text.contains("none needed"), "{text}");
}

#[test]
fn the_kernel_flag_selects_debians() {
    let debian = kernel::debian_kernel().expect("linux-image-cloud-amd64 is installed");
    let release = kernel::kernel_release(&debian).unwrap();
    let (code, out, err) = run_cold(
        "debian",
        Some(&debian),
        &["--no-image"],
        "uname -r; grep -c . /proc/modules",
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], release, "{out}");
    assert!(release.contains("cloud-amd64"), "{release}");
    // /init loaded Debian's modules (virtio_mmio, vsock's transport, …).
    let loaded: usize = lines[1].trim().parse().unwrap_or(0);
    assert!(loaded >= 5, "{out}");
}

/// What programs in the guest use, on the microVM kernel: cgroup v2 with the
/// memory and pids controllers, seccomp filters, namespaces, loopback inet
/// sockets, SysV and POSIX IPC, the file systems (initramfs only: its
/// busybox has `nc` and `ip`).
#[test]
fn the_microvm_kernel_has_what_the_guest_uses() {
    let script = r#"
        mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && cat /sys/fs/cgroup/cgroup.controllers
        grep '^Seccomp_filters:' /proc/self/status
        ls /proc/self/ns | tr '\n' ' '; echo
        cat /proc/filesystems | tr -s '\t\n' '  '; echo
        test -d /proc/sysvipc && echo sysvipc
        mkdir -p /dev/mqueue && mount -t mqueue none /dev/mqueue && echo mqueue
        test -e /dev/hwrng && echo hwrng
        ip link show lo >/dev/null 2>&1 && echo lo-present
        (nc -l -p 7777 > /tmp/got &) ; sleep 1; echo over-loopback | timeout 5 nc 127.0.0.1 7777; sleep 1; cat /tmp/got
    "#;
    let (code, out, err) = run_cold("features", None, &["--no-image"], script);
    assert_eq!(code, Some(0), "{out}\n{err}");
    for want in [
        "memory",
        "pids",
        "Seccomp_filters:",
        "mnt",
        "pid",
        "net",
        "user",
        "uts",
        "ipc",
        "cgroup",
        "overlay",
        "ext4",
        "tmpfs",
        "devtmpfs",
        "sysvipc",
        "mqueue",
        "hwrng",
        "lo-present",
        "over-loopback",
    ] {
        assert!(out.contains(want), "no {want} in:\n{out}\n{err}");
    }
}
