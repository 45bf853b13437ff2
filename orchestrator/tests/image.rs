//! The guest's userland: a real VM booted from the default image (Debian
//! minbase + python3) read-only under a tmpfs overlay, and file transfer over
//! the agent protocol.
//!
//! The image is built once into the cache on first use (about a minute,
//! needs Debian's mirror) and shared by every later run; `make test` builds it
//! through `scripts/setup.sh` before the tests start.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use common::{guest_number, runtime, text};
use ironclaw_orchestrator::agent::FileError;
use ironclaw_orchestrator::userland::{self, Progress};
use ironclaw_orchestrator::vm::{self, exec_request, VmConfig, VmHandle};
use sha2::{Digest, Sha256};

/// The default image, built on first use.
fn image() -> &'static PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        eprintln!(
            "image tests: making sure the default image is built (about a minute the first time)"
        );
        userland::ensure_default_image(&mut |p| {
            if let Progress::Step { n, total, what } = p {
                eprintln!("image build [{n}/{total}] {what}");
            }
        })
        .expect("building the default image (needs debootstrap, mkfs.ext4 and Debian's mirror)")
    })
}

fn image_config(id: &str) -> VmConfig {
    let mut c = vm::default_config(id).expect("default config");
    c.rootfs = Some(image().clone());
    c
}

fn spawn(id: &str, config: &VmConfig) -> VmHandle {
    runtime()
        .block_on(vm::spawn_vm_with_config(id, config))
        .unwrap_or_else(|e| panic!("booting {id} from the image: {e}"))
}

static SHARED_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static SHARED_CGROUPS: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

extern "C" fn kill_shared() {
    let pids = SHARED_PIDS.lock().map(|g| g.clone()).unwrap_or_default();
    // VMMs before their reapers (vm::jail), so the reapers collect them.
    for pid in pids.iter().rev() {
        // SAFETY: kill(2) on a pid this process started.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && pids.iter().any(|p| {
            std::path::Path::new(&format!("/proc/{p}/cmdline")).exists()
                && std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| !c.is_empty())
        })
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The VM's cgroups (vm::cgroup) go once its processes are dead.
    for dir in SHARED_CGROUPS.lock().map(|g| g.clone()).unwrap_or_default() {
        let _ = vm::cgroup::remove_dir(&dir);
    }
}

/// One image VM shared by the tests that only run commands and move files.
fn shared() -> &'static VmHandle {
    static VM: OnceLock<&'static VmHandle> = OnceLock::new();
    VM.get_or_init(|| {
        let vm: &'static VmHandle = Box::leak(Box::new(spawn("img-shared", &image_config("x"))));
        *SHARED_PIDS.lock().unwrap() = vm.pids();
        *SHARED_CGROUPS.lock().unwrap() = vm
            .confinement()
            .into_iter()
            .flat_map(|c| c.cgroup)
            .collect();
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(kill_shared) };
        vm
    })
}

fn sh(vm: &VmHandle, script: &str) -> vm::ExecOutput {
    runtime()
        .block_on(vm.agent().run(exec_request(["sh", "-c", script]), None))
        .expect("exec")
}

fn sha256_of(path: &Path) -> String {
    userland::sha256_file(path).unwrap().0
}

#[test]
fn python_runs_and_imports_the_standard_library() {
    let vm = shared();
    let script = "import json, hashlib, sqlite3, subprocess, pathlib, zlib, asyncio, sys\n\
                  db = sqlite3.connect(':memory:')\n\
                  print(json.dumps({'v': sys.version_info[0], 'sum': db.execute('select 40+2').fetchone()[0],\n\
                  'sha': hashlib.sha256(b'x').hexdigest()[:8], 'ls': subprocess.run(['ls', '/'], capture_output=True).returncode}))";
    let out = runtime()
        .block_on(
            vm.agent()
                .run(exec_request(["python3", "-c", script]), None),
        )
        .unwrap();
    assert_eq!(out.status.code, Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        r#"{"v": 3, "sum": 42, "sha": "2d711642", "ls": 0}"#
    );
    // The userland is the image's (Debian's), not the initramfs's busybox.
    let os = sh(vm, "cat /etc/debian_version; readlink -f /bin/sh");
    assert!(text(&os.stdout).starts_with("12."), "{}", text(&os.stdout));
    assert!(
        !text(&os.stdout).contains("busybox"),
        "{}",
        text(&os.stdout)
    );
}

#[test]
fn a_64_mib_file_round_trips_with_the_same_sha256() {
    let vm = shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("big.bin");
    // Incompressible, deterministic bytes.
    let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
    let mut block = Sha256::digest(b"seed").to_vec();
    for _ in 0..(64 << 20) / 32 {
        block = Sha256::digest(&block).to_vec();
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let want = sha256_of(&src);

    let n = runtime()
        .block_on(vm.agent().put_file(&src, "/root/big.bin"))
        .unwrap();
    assert_eq!(n, 64 << 20);
    let in_guest = sh(vm, "sha256sum /root/big.bin");
    assert_eq!(
        text(&in_guest.stdout).split_whitespace().next(),
        Some(want.as_str())
    );
    let stat = runtime()
        .block_on(vm.agent().stat("/root/big.bin"))
        .unwrap();
    assert_eq!(stat.size, 64 << 20);

    let back = dir.join("back.bin");
    let n = runtime()
        .block_on(vm.agent().get_file("/root/big.bin", &back))
        .unwrap();
    assert_eq!(n, 64 << 20);
    assert_eq!(sha256_of(&back), want);
    runtime()
        .block_on(vm.agent().remove("/root/big.bin", false))
        .unwrap();
}

#[test]
fn list_stat_mkdir_remove() {
    let vm = shared();
    let a = vm.agent();
    runtime()
        .block_on(a.mkdir("/root/t/sub/deep", 0o750, true))
        .unwrap();
    let mut data: &[u8] = b"hello\n";
    runtime()
        .block_on(a.put(&mut data, "/root/t/hello.txt", 0o640))
        .unwrap();
    assert_eq!(
        sh(vm, "ln -s /etc/passwd /root/t/link").status.code,
        Some(0)
    );
    let names: Vec<(String, ironclaw_protocol::FileKind, u32)> = runtime()
        .block_on(a.list_dir("/root/t"))
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.stat.kind, e.stat.mode))
        .collect();
    use ironclaw_protocol::FileKind::*;
    assert_eq!(
        names,
        [
            ("hello.txt".to_string(), File, 0o640),
            ("link".to_string(), Symlink, 0o777),
            ("sub".to_string(), Dir, 0o755),
        ]
    );
    let link = runtime().block_on(a.stat("t/link")).unwrap();
    assert_eq!(link.link_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(text(&sh(vm, "cat /root/t/hello.txt").stdout), "hello\n");
    let err = runtime().block_on(a.remove("/root/t", false)).unwrap_err();
    assert!(err.to_string().contains("/root/t"), "{err}");
    runtime().block_on(a.remove("/root/t", true)).unwrap();
    assert!(runtime().block_on(a.stat("/root/t")).is_err());
    // Getting a directory is refused with a clear message.
    let err = runtime()
        .block_on(a.get("/etc", &mut tokio::io::sink()))
        .unwrap_err();
    assert!(err.to_string().contains("a directory"), "{err}");
}

#[test]
fn copy_out_of_a_missing_path_is_a_clear_error() {
    let vm = shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let local = dir.join("out.txt");
    let err = runtime()
        .block_on(vm.agent().get_file("/no/such/file", &local))
        .unwrap_err();
    assert!(matches!(err, FileError::Remote(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/no/such/file") && msg.contains("No such file"),
        "{msg}"
    );
    // Nothing was written on the host: no file, no leftover temporary.
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    // A local directory as target is refused before anything is fetched.
    let err = runtime()
        .block_on(vm.agent().get_file("/etc/hostname", dir))
        .unwrap_err();
    assert!(matches!(err, FileError::TargetIsDirectory(_)), "{err:?}");
}

#[test]
fn writes_stay_in_their_vm_and_the_image_never_changes() {
    let image = image();
    let meta = userland::load_meta(userland::DEFAULT_IMAGE)
        .unwrap()
        .unwrap();
    let before = sha256_of(image);
    assert_eq!(
        before, meta.sha256,
        "the stored image differs from its build"
    );

    let a = spawn("img-a", &image_config("x"));
    let write = sh(
        &a,
        "echo from-a > /root/marker && echo from-a > /etc/marker && \
         echo tampered >> /usr/bin/python3 && rm -f /bin/ls && sync",
    );
    assert_eq!(write.status.code, Some(0), "{}", text(&write.stderr));
    assert_eq!(text(&sh(&a, "cat /etc/marker").stdout), "from-a\n");
    // Another VM from the same image, at the same time, sees none of it.
    let b = shared();
    let seen = sh(b, "cat /root/marker /etc/marker; ls /bin/ls");
    assert!(
        !text(&seen.stdout).contains("from-a"),
        "{}",
        text(&seen.stdout)
    );
    assert!(text(&seen.stdout).contains("/bin/ls"));
    runtime().block_on(vm::destroy_vm(a)).unwrap();

    // Nor does the next VM booted from it.
    let c = spawn("img-c", &image_config("x"));
    let seen = sh(
        &c,
        "cat /root/marker /etc/marker 2>&1; ls /bin/ls; python3 -c 'print(6*7)'",
    );
    assert!(
        !text(&seen.stdout).contains("from-a"),
        "{}",
        text(&seen.stdout)
    );
    assert!(
        text(&seen.stdout).contains("/bin/ls\n42\n"),
        "{}",
        text(&seen.stdout)
    );
    runtime().block_on(vm::destroy_vm(c)).unwrap();

    assert_eq!(sha256_of(image), before, "a VM changed the image file");
}

#[test]
fn a_full_overlay_fails_the_write_not_the_vm() {
    let mut config = image_config("x");
    config.overlay_mib = 16;
    let vm = spawn("img-small", &config);
    let out = runtime()
        .block_on(vm.agent().run(
            vm::ExecRequest {
                timeout_ms: Some(60_000),
                ..exec_request(["sh", "-c", "dd if=/dev/zero of=/root/fill bs=1M count=64"])
            },
            None,
        ))
        .unwrap();
    assert!(!out.status.timed_out);
    assert_ne!(out.status.code, Some(0));
    assert!(
        text(&out.stderr).contains("No space left on device"),
        "{}",
        text(&out.stderr)
    );
    // /tmp is part of the overlay too, not a way around the limit.
    let tmp = sh(
        &vm,
        "dd if=/dev/zero of=/tmp/fill2 bs=1M count=64 2>&1; echo rc=$?",
    );
    assert!(
        text(&tmp.stdout).contains("No space left"),
        "{}",
        text(&tmp.stdout)
    );
    // An upload that does not fit fails with the guest's error, and leaves nothing.
    sh(&vm, "rm -f /root/fill /tmp/fill2");
    let mut big = tokio::io::AsyncReadExt::take(tokio::io::repeat(7), 32 << 20);
    let err = runtime()
        .block_on(vm.agent().put(&mut big, "/root/upload.bin", 0o644))
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    let left = text(&sh(&vm, "ls -A /root").stdout);
    assert!(!left.contains("upload"), "{left}");
    // The VM still serves.
    assert_eq!(text(&sh(&vm, "echo alive").stdout), "alive\n");
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
}

#[test]
fn cli_copies_files_in_and_out_around_the_command() {
    image();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("in.txt"), "21\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironclaw"))
        .env("IRONCLAW_RUNTIME_DIR", common::test_root())
        .stdin(std::process::Stdio::null())
        .arg("run")
        .arg("--copy-in")
        .arg(format!("{}:/work/in.txt", dir.join("in.txt").display()))
        .arg("--copy-out")
        .arg(format!("/work/out.txt:{}", dir.join("out.txt").display()))
        .args([
            "--",
            "python3",
            "-c",
            "n = int(open('/work/in.txt').read()); open('/work/out.txt', 'w').write(str(2 * n)); print('ok')",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
    assert_eq!(std::fs::read_to_string(dir.join("out.txt")).unwrap(), "42");
    // A copy-out of a path the command did not create names it and fails the run.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironclaw"))
        .env("IRONCLAW_RUNTIME_DIR", common::test_root())
        .stdin(std::process::Stdio::null())
        .arg("run")
        .arg("--copy-out")
        .arg(format!("/nope.txt:{}", dir.join("nope.txt").display()))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("/nope.txt"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("nope.txt").exists());
}

#[test]
fn clones_of_an_image_prototype_are_separate_too() {
    // `ironclaw run` clones VMs from a snapshot of a booted VM by default; a
    // snapshot taken with the image mounted must give each clone its own overlay.
    let config = image_config("x");
    let progress = |msg: &str| eprintln!("image tests: {msg}");
    let (a, b) = runtime().block_on(async {
        let a = vm::prototype::spawn_from_prototype("img-clone-a", &config, &progress).await;
        let b = vm::prototype::spawn_from_prototype("img-clone-b", &config, &progress).await;
        (a.expect("clone a"), b.expect("clone b"))
    });
    let w = sh(
        &a,
        "echo from-clone-a > /root/clone-marker && python3 -c 'print(7*6)'",
    );
    assert_eq!(text(&w.stdout), "42\n", "{}", text(&w.stderr));
    let seen = sh(&b, "cat /root/clone-marker 2>&1; cat /etc/debian_version");
    assert!(
        !text(&seen.stdout).contains("from-clone-a"),
        "{}",
        text(&seen.stdout)
    );
    assert!(text(&seen.stdout).contains("12."), "{}", text(&seen.stdout));
    runtime().block_on(async {
        vm::destroy_vm(a).await.unwrap();
        vm::destroy_vm(b).await.unwrap();
    });
}

/// Sectors the guest has read from its image disk so far (`/sys/block/*/stat`).
fn sectors_read(vm: &VmHandle) -> u64 {
    guest_number(vm, "cat /sys/block/vd*/stat", 2, "disk statistics")
}

#[test]
fn the_first_python_in_a_fresh_clone_reads_nothing_from_disk() {
    // The prototype ran python3 with common imports before its snapshot, so
    // the files are in the page cache every clone starts with.
    let config = image_config("x");
    let progress = |msg: &str| eprintln!("image tests: {msg}");
    let vm = runtime()
        .block_on(vm::prototype::spawn_from_prototype(
            "img-warm", &config, &progress,
        ))
        .expect("clone");
    let before = sectors_read(&vm);
    let py = sh(
        &vm,
        "python3 -c 'import json, subprocess, pathlib; print(6*7)'",
    );
    assert_eq!(text(&py.stdout), "42\n", "{}", text(&py.stderr));
    let read = sectors_read(&vm) - before;
    // A cold python3 with these imports reads several MiB; a few KiB of
    // metadata may still be read.
    assert!(
        read < 256,
        "the first python3 in a fresh clone read {read} sectors ({} KiB) from disk",
        read / 2
    );
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
}
