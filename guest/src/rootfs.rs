//! Booting into a root file system image: the image (ext4 on a virtio disk)
//! is mounted read-only, a size-limited tmpfs takes every write through an
//! overlay on top, and PID 1 switches root into the overlay before the agent
//! starts. The image itself is never written: the disk is read-only in the VMM
//! too, and each VM's changes live and die in its own memory.
//!
//! The host asks for this on the kernel command line
//! (`ironclaw.rootfs=/dev/vda ironclaw.overlay_mib=N`). Without it the guest
//! keeps serving from the initramfs. When it is asked for and fails, the VM
//! powers off instead of quietly serving a different userland: the host then
//! reports a failed boot with this module's message from the console.

use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the pieces are mounted before the switch (inside the initramfs,
/// which becomes unreachable afterwards).
const LOWER: &str = "/mnt/image";
const RW: &str = "/mnt/rw";
const NEW_ROOT: &str = "/mnt/root";
/// How long the disk may take to appear after `virtio_blk` was loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// `/run` in the new root: small, it holds only runtime state.
const RUN_SIZE: &str = "size=16m,mode=0755";

/// What the kernel command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub device: String,
    pub overlay_mib: u32,
}

/// Parses `ironclaw.rootfs=` and `ironclaw.overlay_mib=` from a command line.
pub fn parse(cmdline: &str) -> Result<Option<Request>, String> {
    let mut device = None;
    let mut overlay = None;
    for word in cmdline.split_whitespace() {
        let value = |key: &str| {
            word.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        };
        if let Some(d) = value(ironclaw_protocol::ROOTFS_ARG) {
            device = Some(d.to_string());
        } else if let Some(m) = value(ironclaw_protocol::OVERLAY_MIB_ARG) {
            overlay = Some(
                m.parse::<u32>()
                    .ok()
                    .filter(|m| *m > 0)
                    .ok_or_else(|| format!("ironclaw.overlay_mib={m} is not a positive number"))?,
            );
        }
    }
    let Some(device) = device else {
        return Ok(None);
    };
    if !device.starts_with("/dev/") || device.contains("..") {
        return Err(format!("ironclaw.rootfs={device} is not a /dev path"));
    }
    let overlay_mib = overlay.ok_or("ironclaw.rootfs is set but ironclaw.overlay_mib is not")?;
    Ok(Some(Request {
        device,
        overlay_mib,
    }))
}

/// Switches root into the image if the command line asks for it. Powers the
/// VM off if that fails.
pub fn switch_if_requested(log: fn(&str)) {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let result = parse(&cmdline).and_then(|req| match req {
        Some(req) => switch(&req).map(|ms| Some((req, ms))),
        None => Ok(None),
    });
    match result {
        Ok(None) => {}
        Ok(Some((req, ms))) => log(&format!(
            "rootfs: {} read-only under a {} MiB overlay, switched root in {ms} ms",
            req.device, req.overlay_mib
        )),
        Err(e) => {
            log(&format!("rootfs: {e}; powering off"));
            // SAFETY: sync and reboot(2) take no pointers; PID 1 may call them.
            unsafe {
                libc::sync();
                libc::reboot(libc::RB_POWER_OFF);
            }
            // Should power-off not be available, PID 1 exiting panics the
            // kernel, which (panic=…) ends the VM as well.
            std::process::exit(1);
        }
    }
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let (src, tgt) = (cstr(source)?, cstr(target)?);
    let fst = fstype.map(cstr).transpose()?;
    let dat = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the
    // call, or null where mount(2) allows it (fstype and data for MS_MOVE).
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            dat.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount {source} on {target} ({}): {}",
            fstype.unwrap_or("move"),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn mkdir(path: &str) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("mkdir {path}: {e}"))
}

fn switch(req: &Request) -> Result<u128, String> {
    let started = Instant::now();
    while !Path::new(&req.device).exists() {
        if started.elapsed() > DEVICE_WAIT {
            return Err(format!(
                "{} did not appear within {DEVICE_WAIT:?} (is the disk attached and virtio_blk loaded?)",
                req.device
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for d in [LOWER, RW, NEW_ROOT] {
        mkdir(d)?;
    }
    mount(
        &req.device,
        LOWER,
        Some("ext4"),
        libc::MS_RDONLY | libc::MS_NODEV,
        None,
    )?;
    let size = format!("size={}m,mode=0755", req.overlay_mib);
    mount(
        "tmpfs",
        RW,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&size),
    )?;
    mkdir(&format!("{RW}/upper"))?;
    mkdir(&format!("{RW}/work"))?;
    let opts = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    mount("overlay", NEW_ROOT, Some("overlay"), 0, Some(&opts))?;

    // The kernel's file systems go along; the initramfs's /tmp and /run stay
    // behind: in the new root /tmp is part of the (size-limited) overlay.
    for m in ["/proc", "/sys", "/dev"] {
        let target = format!("{NEW_ROOT}{m}");
        mkdir(&target)?;
        mount(m, &target, None, libc::MS_MOVE, None)?;
    }
    let run = format!("{NEW_ROOT}/run");
    mkdir(&run)?;
    mount(
        "tmpfs",
        &run,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(RUN_SIZE),
    )?;
    mkdir(&format!("{NEW_ROOT}/root"))?;

    // switch_root: the initramfs cannot be pivoted away from, so the new root
    // is moved over `/` and chrooted into (what busybox switch_root does).
    std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(".", "/", None, libc::MS_MOVE, None)?;
    let dot = cstr(".")?;
    // SAFETY: chroot with a valid NUL-terminated path.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(format!("chroot: {}", std::io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(started.elapsed().as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        assert_eq!(parse("console=ttyS0 quiet").unwrap(), None);
        assert_eq!(
            parse("quiet ironclaw.rootfs=/dev/vda ironclaw.overlay_mib=64").unwrap(),
            Some(Request {
                device: "/dev/vda".into(),
                overlay_mib: 64
            })
        );
        assert!(parse("ironclaw.rootfs=/dev/vda").is_err());
        assert!(parse("ironclaw.rootfs=/etc/x ironclaw.overlay_mib=64").is_err());
        assert!(parse("ironclaw.rootfs=/dev/vda ironclaw.overlay_mib=0").is_err());
        assert!(parse("ironclaw.rootfs=/dev/vda ironclaw.overlay_mib=lots").is_err());
    }
}
