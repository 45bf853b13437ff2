//! How the guest learns to boot into a root file system image: words on the
//! kernel command line, which the guest's `/init` reads from `/proc/cmdline`
//! (it has no other channel before its agent runs).

use super::config::VmConfig;

/// The block device of the image: the only (hence first) virtio disk.
pub const ROOTFS_DEVICE: &str = "/dev/vda";

/// Extra kernel arguments for `config`: empty without a rootfs.
pub fn kernel_args(config: &VmConfig) -> String {
    match &config.rootfs {
        Some(_) => format!(
            " ironclaw.rootfs={ROOTFS_DEVICE} ironclaw.overlay_mib={}",
            config.overlay_mib
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_with_a_rootfs() {
        let exe = std::env::current_exe().unwrap();
        let mut c = VmConfig::new("a", &exe, &exe);
        assert_eq!(kernel_args(&c), "");
        c.rootfs = Some(exe.clone());
        c.overlay_mib = 64;
        assert_eq!(
            kernel_args(&c),
            " ironclaw.rootfs=/dev/vda ironclaw.overlay_mib=64"
        );
    }
}
