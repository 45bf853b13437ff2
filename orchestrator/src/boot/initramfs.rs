//! The initramfs a VM boots: `/init` is `ironclaw-guest`, with a static
//! busybox (so `sh`, `ls`, `cat` exist) and the kernel modules the chosen
//! kernel needs for virtio-mmio, vsock, virtio-serial and disks — none for a
//! kernel built without modules (the microVM kernel: all of it built in).
//!
//! Each is cached (`<cache>/initramfs-<release>-<key>.cpio`) by a hash of
//! everything that goes in; a build writes a temporary file and renames it,
//! so a failed build never leaves an initramfs that would later be used.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::kernel::{built_without_modules, kernel_release, resolve_modules, GUEST_MODULES};
use super::{io_err, BootError};

/// Bumped whenever the layout of the generated initramfs changes.
const FORMAT_VERSION: u32 = 1;

/// The guest agent binary: `$IRONCLAW_GUEST_BIN`, else next to the running
/// executable, else the workspace's static build output.
pub fn guest_binary() -> Result<PathBuf, BootError> {
    if let Some(p) = std::env::var_os("IRONCLAW_GUEST_BIN") {
        return Ok(p.into());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("ironclaw-guest"));
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    for profile in ["release", "debug"] {
        candidates.push(
            workspace
                .join("target/x86_64-unknown-linux-gnu")
                .join(profile)
                .join("ironclaw-guest"),
        );
    }
    candidates
        .into_iter()
        .find(|p| is_static_elf(p).unwrap_or(false))
        .ok_or_else(|| BootError::NoGuestBinary(NO_GUEST_BINARY_HINT.into()))
}

/// What to do when no static guest binary is found.
const NO_GUEST_BINARY_HINT: &str = "build it with `scripts/setup.sh` (or by hand, statically: \
     RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p ironclaw-guest \
     --target x86_64-unknown-linux-gnu) or set IRONCLAW_GUEST_BIN";

/// The static busybox: `$IRONCLAW_BUSYBOX`, else `/bin/busybox` (Debian's busybox-static).
pub fn busybox_binary() -> Result<PathBuf, BootError> {
    let p: PathBuf = std::env::var_os("IRONCLAW_BUSYBOX")
        .map(Into::into)
        .unwrap_or_else(|| "/bin/busybox".into());
    match is_static_elf(&p) {
        Ok(true) => Ok(p),
        Ok(false) => Err(BootError::NoBusybox(format!(
            "{} is dynamically linked; apt-get install busybox-static",
            p.display()
        ))),
        Err(e) => Err(BootError::NoBusybox(format!(
            "{}: {e}; apt-get install busybox-static",
            p.display()
        ))),
    }
}

/// Whether `path` is an ELF executable without a program interpreter (static).
fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let mut head = vec![0u8; 4096];
    let n = fs::File::open(path)?.read(&mut head)?;
    head.truncate(n);
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 {
        return Ok(false);
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(head[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(p_type) = head.get(o..o + 4) else {
            return Ok(false);
        };
        if u32::from_le_bytes(p_type.try_into().expect("4 bytes")) == 3 {
            return Ok(false); // PT_INTERP: dynamically linked
        }
    }
    Ok(true)
}

/// Busybox applet paths (`bin/sh`, `usr/bin/awk`, …), from the binary itself.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, BootError> {
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io_err(format!("running {} --list-full", busybox.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect())
}

/// Everything that goes into an initramfs.
struct Inputs {
    guest: PathBuf,
    busybox: PathBuf,
    release: String,
    modules_dir: PathBuf,
    modules: Vec<String>,
}

impl Inputs {
    fn gather(kernel: &Path) -> Result<Inputs, BootError> {
        let release = kernel_release(kernel)?;
        let modules_root = std::env::var_os("IRONCLAW_MODULES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/lib/modules".into());
        let modules_dir = modules_root.join(&release);
        // A kernel without loadable modules (the microVM kernel) has
        // everything built in: the initramfs carries no modules.
        let modules = if built_without_modules(kernel, &release) {
            Vec::new()
        } else {
            resolve_modules(&modules_dir, &release, GUEST_MODULES)?
        };
        Ok(Inputs {
            guest: guest_binary()?,
            busybox: busybox_binary()?,
            release,
            modules_dir,
            modules,
        })
    }

    fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        [self.guest.clone(), self.busybox.clone()]
            .into_iter()
            .chain(self.modules.iter().map(|m| self.modules_dir.join(m)))
    }

    /// Content hash of every input: a changed binary or module means a new
    /// initramfs. Hashing them (a few MiB) is remembered in the cache under
    /// the inputs' stamps — path, size, mtime, inode and ctime, which any
    /// rewrite or replacement of a file changes — so it runs once per build
    /// of the inputs, not on every `ironclaw run`.
    fn key(&self) -> Result<String, BootError> {
        let mut identity = format!("{FORMAT_VERSION}:{}", self.release);
        for f in self.files() {
            let m = fs::metadata(&f).map_err(io_err(format!("reading {}", f.display())))?;
            identity.push_str(&format!(
                "\n{}:{}:{}",
                f.display(),
                crate::vm::host::stat_stamp(&m),
                m.ctime() * 1_000_000_000 + m.ctime_nsec()
            ));
        }
        let record = crate::cache::memo_record("initramfs-key", &identity);
        if let Some(Ok(known)) = record.as_deref().map(fs::read_to_string) {
            if known.len() == 24 && known.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(known);
            }
        }
        let mut h = Sha256::new();
        h.update(FORMAT_VERSION.to_le_bytes());
        h.update(self.release.as_bytes());
        for f in self.files() {
            let data = fs::read(&f).map_err(io_err(format!("reading {}", f.display())))?;
            h.update((data.len() as u64).to_le_bytes());
            h.update(&data);
        }
        let key = hex::encode(&h.finalize()[..12]);
        if let Some(path) = &record {
            // Only a saving: without the record the inputs are hashed again.
            let _ = crate::cache::write_file(path, key.as_bytes());
        }
        Ok(key)
    }
}

/// The default initramfs for `kernel`, built into the cache on first use.
pub fn default_initramfs(kernel: &Path) -> Result<PathBuf, BootError> {
    let inputs = Inputs::gather(kernel)?;
    // The initramfs carries the guest agent: only a cache of our own will do.
    let dir = crate::cache::trusted_dir("")?;
    let path = dir.join(format!(
        "initramfs-{}-{}.cpio",
        inputs.release,
        inputs.key()?
    ));
    if path.is_file() {
        return Ok(path);
    }
    let mut rnd = [0u8; 6];
    getrandom::getrandom(&mut rnd)
        .map_err(|e| io_err("random name")(std::io::Error::other(e.to_string())))?;
    let tmp = dir.join(format!(".initramfs-{}.tmp", hex::encode(rnd)));
    let built = write_initramfs(&inputs, &tmp).and_then(|()| {
        fs::rename(&tmp, &path).map_err(io_err(format!("renaming to {}", path.display())))
    });
    if built.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    built.map(|()| {
        tracing::info!(path = %path.display(), "built initramfs");
        path
    })
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

struct CpioWriter<W: Write> {
    out: Option<W>,
    ino: u32,
}

impl<W: Write> CpioWriter<W> {
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: Option<(u32, u32)>,
    ) -> std::io::Result<()> {
        self.ino += 1;
        let mut b = cpio::newc::Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(1);
        if mode & S_IFDIR != 0 && mode & S_IFREG == 0 {
            b = b.nlink(2);
        }
        if let Some((maj, min)) = rdev {
            b = b.rdev_major(maj).rdev_minor(min);
        }
        let out = self.out.take().expect("writer present");
        let mut w = b.write(out, data.len() as u32);
        w.write_all(data)?;
        self.out = Some(w.finish()?);
        Ok(())
    }
    fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, &[], None)
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, S_IFREG | mode, data, None)
    }
    fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes(), None)
    }
    fn finish(mut self) -> std::io::Result<W> {
        cpio::newc::trailer(self.out.take().expect("writer present"))
    }
}

fn write_initramfs(inputs: &Inputs, dest: &Path) -> Result<(), BootError> {
    // A new file (random name, never through a symlink), readable by the VMM's jail uid.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dest)
            .map_err(io_err(format!("creating {}", dest.display())))?
    };
    let mut w = CpioWriter {
        out: Some(BufWriter::new(file)),
        ino: 0,
    };
    let ctx = |what: &str| io_err(format!("writing {what} into {}", dest.display()));
    let read = |p: &Path| fs::read(p).map_err(io_err(format!("reading {}", p.display())));

    let mut dirs: Vec<String> = [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "root",
        "etc",
        "etc/ironclaw",
        "lib",
        "mnt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let module_root = format!("lib/modules/{}", inputs.release);
    for m in &inputs.modules {
        let mut p = Path::new(&module_root).join(m);
        while p.pop() && !p.as_os_str().is_empty() {
            dirs.push(p.to_string_lossy().into_owned());
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        w.dir(d).map_err(ctx(d))?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    w.entry("dev/console", S_IFCHR | 0o600, &[], Some((5, 1)))
        .map_err(ctx("dev/console"))?;
    w.file("init", 0o755, &read(&inputs.guest)?)
        .map_err(ctx("init"))?;
    w.file("bin/busybox", 0o755, &read(&inputs.busybox)?)
        .map_err(ctx("busybox"))?;
    for applet in busybox_applets(&inputs.busybox)? {
        if applet != "bin/busybox"
            && dirs
                .iter()
                .any(|d| Path::new(&applet).parent() == Some(Path::new(d)))
        {
            w.symlink(&applet, "/bin/busybox").map_err(ctx(&applet))?;
        }
    }
    let mut list = String::new();
    for m in &inputs.modules {
        let dest = format!("{module_root}/{m}");
        w.file(&dest, 0o644, &read(&inputs.modules_dir.join(m))?)
            .map_err(ctx(&dest))?;
        list.push_str(&format!("/{dest}\n"));
    }
    w.file("etc/ironclaw/modules", 0o644, list.as_bytes())
        .map_err(ctx("module list"))?;
    w.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(ctx("passwd"))?;
    w.file(
        "etc/group",
        0o644,
        b"root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    )
    .map_err(ctx("group"))?;
    w.file("etc/hostname", 0o644, b"ironclaw\n")
        .map_err(ctx("hostname"))?;
    let mut out = w.finish().map_err(ctx("trailer"))?;
    out.flush().map_err(ctx("flush"))?;
    out.into_inner()
        .map_err(|e| io_err("flush")(e.into_error()))?
        .sync_all()
        .map_err(ctx("sync"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command the hint tells a user to run exists in this repository:
    /// a `make` target in the Makefile, a script under the workspace.
    #[test]
    fn the_remembered_key_follows_the_inputs_content() {
        let t = tempfile::tempdir().unwrap();
        let inputs = Inputs {
            guest: t.path().join("guest"),
            busybox: t.path().join("busybox"),
            release: "test-release".into(),
            modules_dir: t.path().into(),
            modules: Vec::new(),
        };
        fs::write(&inputs.guest, b"agent one").unwrap();
        fs::write(&inputs.busybox, b"busybox").unwrap();
        let first = inputs.key().unwrap();
        assert_eq!(inputs.key().unwrap(), first, "the remembered key");
        // Same size, other bytes: a new key, not the remembered one.
        fs::write(&inputs.guest, b"agent two").unwrap();
        let second = inputs.key().unwrap();
        assert_ne!(second, first);
        fs::write(&inputs.guest, b"agent one").unwrap();
        assert_eq!(
            inputs.key().unwrap(),
            first,
            "content decides, not the record"
        );
    }

    #[test]
    fn the_missing_guest_hint_names_commands_that_exist() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let makefile = fs::read_to_string(workspace.join("Makefile")).unwrap();
        let quoted: Vec<&str> = NO_GUEST_BINARY_HINT.split('`').skip(1).step_by(2).collect();
        assert!(!quoted.is_empty(), "the hint names no command");
        for cmd in quoted {
            if let Some(target) = cmd.strip_prefix("make ") {
                assert!(
                    makefile
                        .lines()
                        .any(|l| l.starts_with(&format!("{target}:"))),
                    "the hint names `{cmd}`, which the Makefile lacks"
                );
            } else {
                let program = cmd.split_whitespace().next().unwrap();
                assert!(
                    workspace.join(program).is_file(),
                    "the hint names `{cmd}`, but {program} does not exist"
                );
            }
        }
    }
}
