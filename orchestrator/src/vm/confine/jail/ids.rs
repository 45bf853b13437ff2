//! The unprivileged uid/gid each VM's processes run as.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The uid/gid a VM's processes run as: `base + hash(runtime dir) % span`,
/// distinct per VM so one VMM cannot touch another's files.
pub fn vm_ids(runtime_dir: &Path, fixed: Option<u32>) -> (u32, u32) {
    if let Some(id) = fixed {
        return (id, id);
    }
    const BASE: u32 = 2_000_000_000;
    const SPAN: u64 = 1_000_000;
    let id = BASE + (dir_hash(runtime_dir) % SPAN) as u32;
    (id, id)
}

/// FNV-1a of a path: stable across runs and builds (DefaultHasher is not).
pub fn dir_hash(path: &Path) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ids_are_stable_unprivileged_and_differ_per_dir() {
        let a = vm_ids(Path::new("/run/ironclaw/a"), None);
        assert_eq!(a, vm_ids(Path::new("/run/ironclaw/a"), None));
        assert_ne!(a, vm_ids(Path::new("/run/ironclaw/b"), None));
        assert!(a.0 >= 2_000_000_000);
        assert_eq!(vm_ids(Path::new("/x"), Some(1234)), (1234, 1234));
    }
}
