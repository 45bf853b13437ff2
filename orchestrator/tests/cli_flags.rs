//! The machine flags of the `ironclaw` command line, end to end: the same
//! flags on every subcommand that starts VMs, `--config FILE`, errors that
//! name what the user typed, and `run --pool` refusing what it would ignore.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A runtime root of one test, created by ironclaw itself (as a user's
/// would be) and removed when the test ends.
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        let p = PathBuf::from(format!("/tmp/ironclaw-flags-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Root(p)
    }

    fn ironclaw(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ironclaw"));
        c.env("IRONCLAW_RUNTIME_DIR", &self.0).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ironclaw().args(args).output().unwrap()
    }

    /// Runs `args`, expects IronClaw's own failure (125) with `needle` in
    /// the message, and returns the message.
    fn refused(&self, args: &[&str], needle: &str) -> String {
        let out = self.run(args);
        let err = s(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: no {needle:?} in {err}");
        err
    }

    /// The VM directories left in the root (the pool socket is not one).
    fn vm_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A VmConfig file for this host's default kernel and initramfs, with `extra` fields.
fn config_file(dir: &Path, extra: serde_json::Value) -> PathBuf {
    let kernel = ironclaw_orchestrator::boot::kernel::default_kernel().unwrap();
    let initramfs = ironclaw_orchestrator::boot::initramfs::default_initramfs(&kernel).unwrap();
    let mut v = serde_json::json!({ "id": "from-file", "kernel": kernel, "initramfs": initramfs });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("vm.json");
    std::fs::write(&path, v.to_string()).unwrap();
    path
}

#[test]
fn a_bad_flag_value_is_refused_naming_the_flag() {
    let r = Root::new("mem");
    let err = r.refused(&["run", "--mem", "64", "--", "true"], "--mem");
    assert!(err.contains("128"), "{err}");
    // Advice from the library is given in flags too.
    let args = ["run", "--no-image", "--mem", "128", "--overlay-mib", "512"];
    let err = r.refused(&[&args[..], &["--", "true"]].concat(), "--overlay-mib");
    assert!(err.contains("and --mem (128)"), "{err}");
    assert!(r.vm_dirs().is_empty(), "{:?}", r.vm_dirs());
}

#[test]
fn help_says_what_the_confinement_flags_weaken() {
    for sub in [
        &["run", "--help"][..],
        &["pool", "serve", "--help"],
        &["prototype", "build", "--help"],
    ] {
        let out = Root::new("help").run(sub);
        let help = s(&out.stdout);
        for flag in [
            "--backend",
            "--vcpus",
            "--mem",
            "--accel",
            "--kernel",
            "--initramfs",
            "--image",
            "--config",
            "--no-jail",
            "--seccomp",
        ] {
            assert!(help.contains(flag), "{sub:?} lacks {flag}: {help}");
        }
        let no_jail = help.split("--no-jail").nth(1).unwrap_or_default();
        assert!(
            no_jail.contains("WEAKER") && no_jail.contains("namespaces"),
            "{help}"
        );
    }
}

#[test]
fn run_with_a_config_file_boots_it_and_names_its_fields() {
    let r = Root::new("config");
    let dir = r.0.with_extension("files");
    let file = config_file(&dir, serde_json::json!({ "memory_mib": 256, "vcpus": 1 }));
    let f = file.to_str().unwrap();
    let out = r.run(&["run", "--config", f, "--", "echo", "ok"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    assert_eq!(s(&out.stdout), "ok\n");
    assert!(r.vm_dirs().is_empty(), "{:?}", r.vm_dirs());

    // Machine flags next to --config are refused, by name.
    let args = ["run", "--config", f, "--mem", "512", "--", "true"];
    r.refused(&args, "--mem cannot be combined with --config");

    // A bad value in the file is named by its field, not by a flag.
    let file = config_file(&dir, serde_json::json!({ "memory_mib": 64 }));
    let args = ["run", "--config", file.to_str().unwrap(), "--", "true"];
    let err = r.refused(&args, "`memory_mib`");
    assert!(!err.contains("--mem"), "{err}");
    // So is an unknown one.
    config_file(&dir, serde_json::json!({ "enable_network": true }));
    r.refused(&args, "enable_network");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_pool_refuses_the_machine_flags_it_would_ignore() {
    let r = Root::new("pool-flags");
    // No daemon is needed: the refusal comes first.
    let err = r.refused(&["run", "--pool", "--mem", "512", "--", "true"], "--mem");
    assert!(
        err.contains("--pool") && !err.contains("no pool daemon"),
        "{err}"
    );
    let args = [
        "run",
        "--pool",
        "--backend",
        "qemu",
        "--no-jail",
        "--image",
        "x",
    ];
    r.refused(
        &[&args[..], &["--", "true"]].concat(),
        "--backend, --no-jail, --image cannot be used with --pool",
    );
}

#[test]
fn an_unavailable_backend_is_a_clear_error() {
    let r = Root::new("fc");
    // A PATH without firecracker, whatever this host has installed.
    let empty = r.0.with_extension("path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = r
        .ironclaw()
        .args([
            "run",
            "--backend",
            "firecracker",
            "--no-image",
            "--",
            "true",
        ])
        .env_remove("IRONCLAW_FIRECRACKER")
        .env("PATH", &empty)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&empty);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("firecracker") && err.contains("not found"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(r.vm_dirs().is_empty(), "{:?}", r.vm_dirs());
}

#[test]
fn prototype_build_takes_the_backend() {
    let r = Root::new("proto");
    let out = r.run(&["prototype", "build", "--backend", "qemu"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    let line = s(&out.stdout);
    let (key, dir) = line.trim_end().split_once('\t').expect("key<TAB>dir");
    assert!(Path::new(dir).is_dir(), "{line}");
    let list = r.run(&["prototype", "list"]);
    let row = s(&list.stdout)
        .lines()
        .find(|l| l.starts_with(key))
        .map(String::from)
        .unwrap_or_else(|| panic!("{key} not listed: {}", s(&list.stdout)));
    assert!(row.contains("qemu"), "{row}");
}

#[test]
fn pool_serve_takes_the_backend_and_stops_on_sigterm() {
    let r = Root::new("pool");
    let socket = r.0.join("pool.sock");
    let mut daemon = r
        .ironclaw()
        .args([
            "pool",
            "serve",
            "--backend",
            "qemu",
            "--size",
            "1",
            "--socket",
        ])
        .arg(&socket)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !socket.exists() && t0.elapsed() < Duration::from_secs(120) {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(socket.exists(), "the daemon never listened");
    let sock = socket.to_str().unwrap();
    let out = r.run(&[
        "run",
        "--pool",
        "--pool-socket",
        sock,
        "--",
        "echo",
        "pooled",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    assert_eq!(s(&out.stdout), "pooled\n");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "the socket was left");
    assert!(r.vm_dirs().is_empty(), "left behind: {:?}", r.vm_dirs());
}
