//! `IRONCLAW_CLONE_MEMORY=copy`: clones load their own copy of the
//! prototype's memory (the path QEMU 7.2 takes), with a prototype of its own;
//! a value that is neither `share` nor `copy` is refused by name. Its own
//! test binary, because it changes the process environment.

mod common;

use common::{runtime, sh, text};
use ironclaw_orchestrator::vm::{self, prototype};

fn quiet(_: &str) {}

#[test]
fn copying_clones_have_a_prototype_of_their_own_and_run() {
    let cfg = {
        runtime();
        vm::default_config("copy-test").expect("default config (run scripts/setup.sh first)")
    };
    let (shared_key, _) = prototype::key_for(&cfg).unwrap();
    // SAFETY: this binary's only test sets it before any other thread reads it.
    unsafe { std::env::set_var("IRONCLAW_CLONE_MEMORY", "copy") };
    let (copy_key, _) = prototype::key_for(&cfg).unwrap();
    assert_ne!(
        shared_key, copy_key,
        "the memory mode must be part of the key"
    );
    let proto = runtime().block_on(prototype::ensure(&cfg, &quiet)).unwrap();
    assert_eq!(proto.meta.key, copy_key);
    assert_eq!(
        proto.files().len(),
        1,
        "a copying prototype is one stream with the RAM in it: {:?}",
        proto.files()
    );
    let vm = runtime()
        .block_on(prototype::restore(&proto, "copying-clone", &cfg))
        .unwrap();
    assert_eq!(text(&sh(&vm, "echo copied").stdout), "copied\n");
    runtime().block_on(vm::destroy_vm(vm)).unwrap();

    // SAFETY: as above.
    unsafe { std::env::set_var("IRONCLAW_CLONE_MEMORY", "sometimes") };
    let err = prototype::key_for(&cfg).unwrap_err().to_string();
    unsafe { std::env::remove_var("IRONCLAW_CLONE_MEMORY") };
    assert!(
        err.contains("IRONCLAW_CLONE_MEMORY") && err.contains("sometimes"),
        "{err}"
    );
}
