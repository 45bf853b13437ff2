//! A damaged prototype is detected and rebuilt, never restored. Runs in its
//! own test binary because it points the cache at a private directory.

mod common;

use std::sync::Mutex;

use common::{runtime, sh, text};
use ironclaw_orchestrator::vm::{self, prototype};

#[test]
fn truncated_or_corrupt_snapshots_are_rebuilt() {
    let cache =
        std::path::PathBuf::from(format!("/tmp/ironclaw-cache-test-{}", std::process::id()));
    // The kernel is built into the real cache, not this one.
    let kernel = ironclaw_orchestrator::boot::kernel::default_kernel().unwrap();
    // SAFETY: the only test of this binary sets these before any thread reads them.
    std::env::set_var("IRONCLAW_KERNEL", kernel);
    std::env::set_var("IRONCLAW_CACHE_DIR", &cache);
    let cfg = {
        runtime();
        vm::default_config("cache-test").unwrap()
    };
    let messages = Mutex::new(Vec::<String>::new());
    let progress = |m: &str| messages.lock().unwrap().push(m.to_string());
    // Ensures the prototype again, which must rebuild it.
    let rebuild = |why: &str| {
        messages.lock().unwrap().clear();
        let p = runtime()
            .block_on(prototype::ensure(&cfg, &progress))
            .unwrap();
        let said = messages.lock().unwrap().clone();
        assert!(
            said.iter().any(|m| m.contains("rebuilding")),
            "{why}: not rebuilt: {said:?}"
        );
        p
    };

    let built = runtime()
        .block_on(prototype::ensure(&cfg, &progress))
        .unwrap();
    let snap = built.snapshot();
    let size = std::fs::metadata(&snap).unwrap().len();

    // Truncated: the size no longer matches the metadata.
    let f = std::fs::OpenOptions::new().write(true).open(&snap).unwrap();
    f.set_len(size / 2).unwrap();
    drop(f);
    let rebuilt = rebuild("a truncated stream");
    assert_eq!(
        std::fs::metadata(rebuilt.snapshot()).unwrap().len(),
        rebuilt.meta.files[0].bytes
    );

    // Corrupt: same size, different bytes in the middle.
    let mut bytes = std::fs::read(rebuilt.snapshot()).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(rebuilt.snapshot(), &bytes).unwrap();
    let again = rebuild("an altered stream");

    // Guest memory kept beside the stream (clones sharing it): one page
    // altered in place is caught too.
    let again = if let [_, ram] = &again.files()[..] {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(ram).unwrap();
        f.write_all_at(&[0x5a; 4096], 1 << 20).unwrap();
        drop(f);
        rebuild("an altered memory file")
    } else {
        again
    };

    // The rebuilt prototype restores and runs.
    let vm = runtime()
        .block_on(prototype::restore(&again, "after-rebuild", &cfg))
        .unwrap();
    assert_eq!(text(&sh(&vm, "echo ok").stdout), "ok\n");
    runtime().block_on(vm::destroy_vm(vm)).unwrap();
    // An unchanged prototype is reused, not rebuilt.
    messages.lock().unwrap().clear();
    let reused = runtime()
        .block_on(prototype::ensure(&cfg, &progress))
        .unwrap();
    assert_eq!(reused.meta.created_unix, again.meta.created_unix);
    assert!(
        messages.lock().unwrap().is_empty(),
        "{:?}",
        messages.lock().unwrap()
    );
    let _ = std::fs::remove_dir_all(&cache);
}
