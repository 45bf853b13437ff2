//! The kernel a VM boots: the host's (or `$IRONCLAW_KERNEL`), its release
//! string, and the modules of that release the guest loads.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{io_err, BootError};

/// Modules the guest needs, by name; their dependencies are added from
/// `modules.dep`, and modules built into the kernel are skipped.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "vmw_vsock_virtio_transport",
    "virtio_console",
    "virtio_blk",
    "virtio_rng",
    "overlay",
];

/// The kernel to boot: `$IRONCLAW_KERNEL`, else the newest `/boot/vmlinuz-*`
/// (Debian's `linux-image-cloud-amd64` is what the set-up script installs).
pub fn default_kernel() -> Result<PathBuf, BootError> {
    if let Some(k) = std::env::var_os("IRONCLAW_KERNEL") {
        return Ok(k.into());
    }
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .map_err(|e| BootError::NoKernel(format!("/boot: {e}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    // Prefer the cloud flavour: small, with virtio as modules.
    kernels.sort_by_key(|p| (p.to_string_lossy().contains("cloud"), p.clone()));
    kernels.pop().ok_or_else(|| {
        BootError::NoKernel(
            "no /boot/vmlinuz-*; apt-get install linux-image-cloud-amd64 or set IRONCLAW_KERNEL"
                .into(),
        )
    })
}

/// The release string of a bzImage (what `uname -r` prints in the guest),
/// read from the kernel's setup header.
pub fn kernel_release(kernel: &Path) -> Result<String, BootError> {
    let bad = |reason: &str| BootError::BadKernel {
        path: kernel.to_path_buf(),
        reason: reason.into(),
    };
    let mut f = fs::File::open(kernel).map_err(io_err(format!("opening {}", kernel.display())))?;
    let mut head = vec![0u8; 64 * 1024];
    let n = f
        .read(&mut head)
        .map_err(io_err(format!("reading {}", kernel.display())))?;
    head.truncate(n);
    if head.len() < 0x210 || &head[0x202..0x206] != b"HdrS" {
        return Err(bad("no HdrS setup header"));
    }
    let ptr = u16::from_le_bytes([head[0x20E], head[0x20F]]) as usize + 0x200;
    let version = head
        .get(ptr..)
        .ok_or_else(|| bad("version pointer out of range"))?;
    let end = version
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .ok_or_else(|| bad("unterminated version"))?;
    let release = String::from_utf8_lossy(&version[..end]).into_owned();
    if release.is_empty() {
        return Err(bad("empty version string"));
    }
    Ok(release)
}

/// Module files (relative to `/lib/modules/<release>`) to load, in load order.
pub fn resolve_modules(
    modules_dir: &Path,
    release: &str,
    wanted: &[&str],
) -> Result<Vec<String>, BootError> {
    let norm = |s: &str| s.replace('-', "_");
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        norm(file.split('.').next().unwrap_or(file))
    };
    let dep_text = fs::read_to_string(modules_dir.join("modules.dep")).map_err(io_err(format!(
        "reading {}/modules.dep",
        modules_dir.display()
    )))?;
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep_text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let dlist = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(name_of(path), (path.to_string(), dlist));
    }
    let builtin: HashSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(name_of)
        .collect();

    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
        name_of: &dyn Fn(&str) -> String,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some((path, dlist)) = deps.get(name) else {
            return;
        };
        for d in dlist {
            visit(&name_of(d), deps, seen, order, name_of);
        }
        order.push(path.clone());
    }

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for w in wanted {
        let w = norm(w);
        if deps.contains_key(&w) {
            visit(&w, &deps, &mut seen, &mut order, &name_of);
        } else if !builtin.contains(&w) {
            return Err(BootError::MissingModule {
                module: w,
                release: release.into(),
                dir: modules_dir.to_path_buf(),
            });
        }
    }
    if let Some(c) = order.iter().find(|p| !p.ends_with(".ko")) {
        return Err(BootError::CompressedModule(modules_dir.join(c)));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_modules_in_dependency_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(
            dir.join("modules.dep"),
            "kernel/a/virtio.ko: kernel/a/virtio_ring.ko\n\
             kernel/a/virtio_ring.ko:\n\
             kernel/a/virtio_mmio.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko\n\
             kernel/b/virtio-rng.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko\n",
        )
        .unwrap();
        fs::write(dir.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let order = resolve_modules(dir, "t", &["virtio_mmio", "virtio_rng", "ext4"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/a/virtio_ring.ko",
                "kernel/a/virtio.ko",
                "kernel/a/virtio_mmio.ko",
                "kernel/b/virtio-rng.ko"
            ]
        );
        let err = resolve_modules(dir, "t", &["nonexistent_mod"]).unwrap_err();
        assert!(err.to_string().contains("nonexistent_mod"), "{err}");
    }

    #[test]
    fn rejects_non_kernels() {
        let exe = std::env::current_exe().unwrap();
        assert!(matches!(
            kernel_release(&exe),
            Err(BootError::BadKernel { .. })
        ));
    }
}
