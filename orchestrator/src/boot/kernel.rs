//! The kernel a VM boots: IronClaw's microVM kernel (built by
//! `scripts/build-kernel.sh` from `kernel/microvm.config` into the cache, no
//! modules), or `$IRONCLAW_KERNEL`, or Debian's (`--kernel /boot/vmlinuz-…`);
//! its release string, and the modules of that release the guest loads (none
//! for a kernel built without modules).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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

/// The microVM kernel's configuration fragment (docs/kernel.md).
pub const MICROVM_CONFIG: &str = include_str!("../../../kernel/microvm.config");

/// The cache directory (under the cache root) of built microVM kernels.
pub const MICROVM_KERNELS_DIR: &str = "kernels";

/// The patches applied to Debian's sources before the build, in order, as
/// `(file name under kernel/patches, contents)` (docs/kernel.md).
pub const MICROVM_PATCHES: &[(&str, &str)] = &[(
    "0001-virtio-vsock-16k-rx-buffers.patch",
    include_str!("../../../kernel/patches/0001-virtio-vsock-16k-rx-buffers.patch"),
)];

/// The hash naming the microVM kernel of this configuration: the first 16
/// hex digits of the SHA-256 of `kernel/microvm.config` followed by the
/// patches, what `scripts/build-kernel.sh --hash` prints.
pub fn microvm_config_hash() -> String {
    let mut hash = Sha256::new();
    hash.update(MICROVM_CONFIG.as_bytes());
    for (_, patch) in MICROVM_PATCHES {
        hash.update(patch.as_bytes());
    }
    hex::encode(&hash.finalize()[..8])
}

/// Where the kernel a VM boots by default comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelOrigin {
    /// `$IRONCLAW_KERNEL`.
    Environment,
    /// IronClaw's microVM kernel, built into the cache.
    MicroVm,
}

/// The kernel to boot: `$IRONCLAW_KERNEL`, else the microVM kernel of this
/// configuration ([`microvm_kernel`]). Debian's is never taken silently: a
/// missing microVM kernel is an error that says how to build it or how to
/// choose Debian's.
pub fn default_kernel() -> Result<PathBuf, BootError> {
    default_kernel_with_origin().map(|(k, _)| k)
}

/// [`default_kernel`] and where it came from (for `ironclaw doctor`).
pub fn default_kernel_with_origin() -> Result<(PathBuf, KernelOrigin), BootError> {
    if let Some(k) = std::env::var_os("IRONCLAW_KERNEL") {
        return Ok((k.into(), KernelOrigin::Environment));
    }
    Ok((microvm_kernel()?, KernelOrigin::MicroVm))
}

/// The microVM kernel built from this configuration:
/// `<cache>/kernels/<source version>-<config hash>/bzImage` (the newest, if
/// kernels of several Debian source versions were built).
pub fn microvm_kernel() -> Result<PathBuf, BootError> {
    let hash = microvm_config_hash();
    let missing = |dir: &Path| BootError::NoMicroVmKernel {
        dir: dir.to_path_buf(),
        hash: hash.clone(),
    };
    let root = crate::cache::root();
    let Some(dir) = crate::cache::existing_trusted_dir(MICROVM_KERNELS_DIR)? else {
        return Err(missing(&root.join(MICROVM_KERNELS_DIR)));
    };
    find_microvm_kernel(&dir, &hash).ok_or_else(|| missing(&dir))
}

/// The newest `<dir>/*-<hash>/bzImage`.
pub fn find_microvm_kernel(dir: &Path, hash: &str) -> Option<PathBuf> {
    let suffix = format!("-{hash}");
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && name.ends_with(&suffix)
        })
        .map(|e| e.path().join("bzImage"))
        .filter_map(|k| {
            let m = fs::metadata(&k).ok().filter(|m| m.is_file())?;
            Some((m.modified().ok()?, k))
        })
        .max()
        .map(|(_, k)| k)
}

/// Whether `kernel` is a microVM kernel of the cache (a `bzImage` in a
/// build directory under `<cache>/kernels`), of this configuration or not.
pub fn is_microvm_kernel(kernel: &Path) -> bool {
    let kernels = crate::cache::root().join(MICROVM_KERNELS_DIR);
    kernel.file_name().is_some_and(|n| n == "bzImage")
        && kernel.parent().and_then(Path::parent) == Some(kernels.as_path())
}

/// The uncompressed ELF kernel built with a microVM `bzImage` (what
/// Firecracker boots): `vmlinux` beside it, when there is one.
pub fn vmlinux_for(kernel: &Path) -> Option<PathBuf> {
    if kernel.file_name()? != "bzImage" {
        return None;
    }
    let vmlinux = kernel.with_file_name("vmlinux");
    vmlinux.is_file().then_some(vmlinux)
}

/// The kernel file Firecracker is given for `kernel`: the microVM kernel's
/// `vmlinux` (Firecracker boots an uncompressed ELF on x86), else `kernel`.
pub fn firecracker_kernel(kernel: &Path) -> PathBuf {
    vmlinux_for(kernel).unwrap_or_else(|| kernel.to_path_buf())
}

/// Debian's kernel: the newest `/boot/vmlinuz-*`, the cloud flavour first
/// (`linux-image-cloud-amd64`, which the set-up installs). The benchmark
/// boots it beside the microVM kernel; `--kernel` selects it for a VM.
pub fn debian_kernel() -> Result<PathBuf, BootError> {
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
        BootError::NoKernel("no /boot/vmlinuz-*; apt-get install linux-image-cloud-amd64".into())
    })
}

/// The end of the release string of every microVM kernel
/// (`CONFIG_LOCALVERSION` in kernel/microvm.config).
pub const MICROVM_RELEASE_SUFFIX: &str = "-ironclaw";

/// Whether `kernel` was built without loadable modules (`CONFIG_MODULES`
/// off): a microVM kernel (its release ends in `-ironclaw`: built by
/// `scripts/build-kernel.sh`, which never builds modules, wherever the file
/// was copied to), or a kernel whose build configuration says so — `config`
/// beside it, else `/boot/config-<release>`. Such a kernel needs nothing from
/// `/lib/modules`: the initramfs carries no modules and `/init` loads none.
/// Any other kernel is assumed to have modules (and they are looked for).
pub fn built_without_modules(kernel: &Path, release: &str) -> bool {
    if release.ends_with(MICROVM_RELEASE_SUFFIX) {
        return true;
    }
    let candidates = [
        kernel.with_file_name("config"),
        PathBuf::from(format!("/boot/config-{release}")),
    ];
    candidates
        .iter()
        .find_map(|c| fs::read_to_string(c).ok())
        .is_some_and(|text| {
            text.lines()
                .any(|l| l.trim() == "# CONFIG_MODULES is not set")
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

    /// The orchestrator looks for the kernel the set-up script built: both
    /// name it by the same hash of kernel/microvm.config.
    #[test]
    fn the_config_hash_is_the_build_scripts() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = std::process::Command::new(workspace.join("scripts/build-kernel.sh"))
            .arg("--hash")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            microvm_config_hash()
        );
        // And the embedded configuration and patches are the repository's files.
        assert_eq!(
            fs::read_to_string(workspace.join("kernel/microvm.config")).unwrap(),
            MICROVM_CONFIG
        );
        let mut patches: Vec<(String, String)> = fs::read_dir(workspace.join("kernel/patches"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".patch"))
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        patches.sort();
        let embedded: Vec<(String, String)> = MICROVM_PATCHES
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect();
        assert_eq!(
            patches, embedded,
            "kernel/patches and MICROVM_PATCHES differ"
        );
    }

    /// What the set-up must build into the kernel for the guest to run with
    /// no modules (the ones Debian's kernel loads, and the rest the brief of
    /// the guest needs): the fragment names each.
    #[test]
    fn the_config_builds_in_what_the_guest_needs() {
        for opt in [
            "CONFIG_VIRTIO_MMIO=y",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
            "CONFIG_VIRTIO_VSOCKETS=y",
            "CONFIG_VIRTIO_CONSOLE=y",
            "CONFIG_VIRTIO_BLK=y",
            "CONFIG_HW_RANDOM_VIRTIO=y",
            "CONFIG_OVERLAY_FS=y",
            "CONFIG_EXT4_FS=y",
            "CONFIG_DEVTMPFS=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_PVH=y",
            "CONFIG_SECCOMP_FILTER=y",
            "CONFIG_MEMCG=y",
            "CONFIG_CGROUP_PIDS=y",
            "# CONFIG_MODULES is not set",
        ] {
            assert!(
                MICROVM_CONFIG.lines().any(|l| l == opt),
                "kernel/microvm.config lacks {opt}"
            );
        }
        // The release suffix by which a microVM kernel is known to have no modules.
        let localversion = format!("CONFIG_LOCALVERSION=\"{MICROVM_RELEASE_SUFFIX}\"");
        assert!(MICROVM_CONFIG.lines().any(|l| l == localversion));
    }

    #[test]
    fn finds_the_newest_kernel_of_the_config_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let build = |name: &str| {
            fs::create_dir(dir.join(name)).unwrap();
            fs::write(dir.join(name).join("bzImage"), name).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            dir.join(name).join("bzImage")
        };
        assert_eq!(find_microvm_kernel(dir, "abc"), None);
        build("6.1.1-1-other");
        let old = build("6.1.1-1-abc");
        // A staged (unfinished) build is never taken.
        fs::create_dir(dir.join(".stage.x-abc")).unwrap();
        fs::write(dir.join(".stage.x-abc/bzImage"), "half").unwrap();
        assert_eq!(find_microvm_kernel(dir, "abc"), Some(old));
        let new = build("6.1.2-1-abc");
        assert_eq!(find_microvm_kernel(dir, "abc"), Some(new.clone()));
        assert_eq!(vmlinux_for(&new), None);
        fs::write(new.with_file_name("vmlinux"), "elf").unwrap();
        assert_eq!(vmlinux_for(&new), Some(new.with_file_name("vmlinux")));
        assert_eq!(firecracker_kernel(&new), new.with_file_name("vmlinux"));
        let debian = Path::new("/boot/vmlinuz-6.1.0-56-cloud-amd64");
        assert_eq!(firecracker_kernel(debian), debian);
    }

    #[test]
    fn a_kernel_without_modules_is_told_by_its_config() {
        let tmp = tempfile::tempdir().unwrap();
        let k = tmp.path().join("bzImage");
        fs::write(&k, "k").unwrap();
        assert!(!built_without_modules(&k, "no-such-release-x"));
        fs::write(
            tmp.path().join("config"),
            "CONFIG_64BIT=y\n# CONFIG_MODULES is not set\n",
        )
        .unwrap();
        assert!(built_without_modules(&k, "no-such-release-x"));
        fs::write(tmp.path().join("config"), "CONFIG_MODULES=y\n").unwrap();
        assert!(!built_without_modules(&k, "no-such-release-x"));
        // A microVM kernel copied anywhere, by its release.
        assert!(built_without_modules(&k, "6.1.192-ironclaw"));
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
