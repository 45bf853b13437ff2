//! Shared by the test binaries that run the `ironclaw` command as a user
//! does: a private runtime root per test, the command, and what a VM leaves
//! in the runtime root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A fresh runtime root `/tmp/ironclaw-<binary>-<pid>-<name>`, removed first.
pub fn root(binary: &str, name: &str) -> PathBuf {
    let p = PathBuf::from(format!(
        "/tmp/ironclaw-{binary}-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// `ironclaw` with its runtime root set and no stdin.
pub fn ironclaw(runtime_root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ironclaw"));
    c.env("IRONCLAW_RUNTIME_DIR", runtime_root)
        .stdin(Stdio::null());
    c
}

pub fn run(runtime_root: &Path, args: &[&str]) -> Output {
    ironclaw(runtime_root).args(args).output().unwrap()
}

pub fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn entries(runtime_root: &Path, records: bool) -> Vec<PathBuf> {
    std::fs::read_dir(runtime_root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with('.') == records)
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The VMs' runtime directories (their records, `.<id>`, are not listed:
/// they go with them).
pub fn vm_dirs(runtime_root: &Path) -> Vec<PathBuf> {
    entries(runtime_root, false)
}

/// Records directories of VMs.
pub fn records_dirs(runtime_root: &Path) -> Vec<PathBuf> {
    entries(runtime_root, true)
}

/// Everything in the runtime root: VM directories and their records.
pub fn leftovers(runtime_root: &Path) -> Vec<PathBuf> {
    let mut all = vm_dirs(runtime_root);
    all.extend(records_dirs(runtime_root));
    all
}

/// The pids the VMs under `runtime_root` recorded.
pub fn recorded_pids(runtime_root: &Path) -> Vec<u32> {
    records_dirs(runtime_root)
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("pids"))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether a process with this pid exists (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Processes started with `IRONCLAW_RUNTIME_DIR=root` (the server, its VMs).
pub fn processes_of(root: &Path) -> Vec<String> {
    let needle = format!("IRONCLAW_RUNTIME_DIR={}", root.display());
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|v| v == needle.as_bytes())
            && pid_alive(e.file_name().to_string_lossy().parse().unwrap())
        {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    found
}

/// The workspace root (the repository).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Runs `cmd` with stdout and stderr together in a scratch file, for at
/// most `limit`: its exit status (None when it was killed at the limit) and
/// its output.
pub fn run_with_limit(
    mut cmd: Command,
    name: &str,
    limit: std::time::Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let out = std::env::temp_dir().join(format!("ironclaw-{name}-{}.out", std::process::id()));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::options().append(true).open(&out).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (status, output)
}

/// A tmpfs of a given size mounted on a fresh directory for a test's life
/// (a small disk that fills up). The suite runs as root, as it must to
/// confine VMs.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(name: &str, size: &str) -> Tmpfs {
        let path = PathBuf::from(format!("/tmp/ironclaw-tmpfs-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs on {}",
            path.display()
        );
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
