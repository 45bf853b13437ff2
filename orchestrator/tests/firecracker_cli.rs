//! The `ironclaw` command line where it concerns the Firecracker backend:
//! `doctor` finds Firecracker and its jailer as the backend does, and a
//! combination Firecracker cannot honour is refused before anything starts.
//! Neither needs a real Firecracker: a stand-in executable is enough.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value as Json;

fn ironclaw(tmp: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ironclaw"));
    c.env("IRONCLAW_RUNTIME_DIR", tmp.join("run"))
        .env("IRONCLAW_CACHE_DIR", tmp.join("cache"))
        // The kernel is built into the real cache, not this one.
        .env(
            "IRONCLAW_KERNEL",
            ironclaw_orchestrator::boot::kernel::default_kernel().unwrap(),
        )
        // The test's own environment must not decide what doctor sees.
        .env_remove("IRONCLAW_FIRECRACKER")
        .env_remove("IRONCLAW_FIRECRACKER_JAILER")
        .env_remove("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED")
        .stdin(Stdio::null());
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn executable(path: &Path) {
    std::fs::write(path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `ironclaw doctor --json --quick`: the check called `name`.
fn doctor_check(out: &Output, name: &str) -> Json {
    let report: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}; stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report:#}"))
        .clone()
}

#[test]
fn doctor_finds_firecracker_and_its_jailer_through_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory without firecracker, so PATH cannot be what finds it.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fc = tmp.path().join("my-firecracker");
    let jailer = tmp.path().join("my-jailer");
    executable(&fc);
    executable(&jailer);
    let path = format!("{}:/usr/bin:/bin", bin.display());

    let out = ironclaw(tmp.path())
        .args(["doctor", "--json", "--quick"])
        .env("PATH", &path)
        .env("IRONCLAW_FIRECRACKER", &fc)
        .env("IRONCLAW_FIRECRACKER_JAILER", &jailer)
        .output()
        .unwrap();
    let check = doctor_check(&out, "firecracker");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains(&*fc.to_string_lossy()), "{detail}");
    assert!(detail.contains("$IRONCLAW_FIRECRACKER"), "{detail}");
    assert!(!detail.contains("not on PATH"), "{detail}");
    let check = doctor_check(&out, "fc jailer");
    let detail = check["detail"].as_str().unwrap();
    assert_eq!(check["level"], "ok", "{detail}");
    assert!(detail.contains(&*jailer.to_string_lossy()), "{detail}");

    // A jailer by name is looked up on PATH, as the backend does.
    std::fs::rename(&jailer, bin.join("jailer")).unwrap();
    let out = ironclaw(tmp.path())
        .args(["doctor", "--json", "--quick"])
        .env("PATH", &path)
        .env("IRONCLAW_FIRECRACKER", &fc)
        .env("IRONCLAW_FIRECRACKER_JAILER", "jailer")
        .output()
        .unwrap();
    let check = doctor_check(&out, "fc jailer");
    assert_eq!(check["level"], "ok", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains(&*bin.join("jailer").to_string_lossy()),
        "{check}"
    );

    // A variable naming nothing is reported as such, not as "not on PATH".
    let missing = tmp.path().join("no-such-firecracker");
    let out = ironclaw(tmp.path())
        .args(["doctor", "--json", "--quick"])
        .env("PATH", &path)
        .env("IRONCLAW_FIRECRACKER", &missing)
        .output()
        .unwrap();
    let check = doctor_check(&out, "firecracker");
    assert_eq!(check["level"], "fail", "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains(&*missing.to_string_lossy()), "{detail}");
    assert!(detail.contains("not a file"), "{detail}");

    // Neither set nor on PATH: that is what it says.
    let out = ironclaw(tmp.path())
        .args(["doctor", "--json", "--quick"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let detail = doctor_check(&out, "firecracker")["detail"].clone();
    assert!(detail.as_str().unwrap().contains("not on PATH"), "{detail}");
}

#[test]
fn accel_tcg_with_backend_firecracker_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let fc = tmp.path().join("firecracker");
    executable(&fc);
    let out = ironclaw(tmp.path())
        .args([
            "run",
            "--backend",
            "firecracker",
            "--accel",
            "tcg",
            "--",
            "true",
        ])
        .env("IRONCLAW_FIRECRACKER", &fc)
        .env("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED", "1")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(125) | Some(2)),
        "{:?}: {stderr}",
        out.status
    );
    assert!(stderr.contains("--accel tcg"), "{stderr}");
    assert!(stderr.contains("--backend firecracker"), "{stderr}");
    // Nothing was started or prepared: no runtime directory, no image cache.
    assert!(
        !tmp.path().join("run").exists(),
        "a runtime directory was made"
    );
    assert!(
        !tmp.path().join("cache").exists(),
        "the guest image was prepared"
    );
}
