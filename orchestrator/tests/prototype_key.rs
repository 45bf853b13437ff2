//! The prototype key names the QEMU that will load the snapshot: the one
//! `$IRONCLAW_QEMU` points at, not whichever is first on `PATH`. Its own test
//! binary, because it changes the process environment.

use ironclaw_orchestrator::vm::{self, prototype};

#[test]
fn the_key_follows_ironclaw_qemu_not_path() {
    let cfg = vm::default_config("key-test").expect("default config (run scripts/setup.sh first)");
    let (on_path, _) = prototype::key_for(&cfg).unwrap();

    // Another QEMU (here the same program under another name) is another VMM.
    let dir = tempfile::tempdir().unwrap();
    let system_qemu = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .expect("qemu-system-x86_64 on PATH (scripts/setup.sh installs it)");
    let other = dir.path().join("qemu-system-x86_64");
    std::os::unix::fs::symlink(&system_qemu, &other).unwrap();
    let saved_path = std::env::var_os("PATH").unwrap();
    // SAFETY: this binary's only test; no other thread reads the environment.
    unsafe {
        std::env::set_var("IRONCLAW_QEMU", &other);
        // No QEMU on PATH at all: the key must not need one.
        std::env::set_var("PATH", dir.path().join("empty"));
    }
    let overridden = prototype::key_for(&cfg);
    // SAFETY: as above.
    unsafe {
        std::env::set_var("PATH", &saved_path);
        std::env::remove_var("IRONCLAW_QEMU");
    }
    let (overridden, _) = overridden.expect("a key with $IRONCLAW_QEMU set and no QEMU on PATH");
    assert_ne!(
        on_path, overridden,
        "changing $IRONCLAW_QEMU must change the prototype key"
    );
    // And back: the same inputs give the same key.
    assert_eq!(prototype::key_for(&cfg).unwrap().0, on_path);
}
