//! Prototypes and the warm pool with `backend = firecracker`, against a fake
//! Firecracker.
//!
//! Firecracker cannot run on the development machines. These tests drive the
//! real `prototype::ensure`, `prototype::restore` and `Pool` code with
//! `$IRONCLAW_FIRECRACKER` pointing at a shell script that sleeps (so process
//! start, pid recording, kill and cleanup are real), while a fake in this
//! process plays Firecracker's part: for every runtime directory that
//! appears it serves the API socket (every request checked against
//! `tests/data/firecracker-api.json`, the repository's description of the
//! Firecracker API it uses; answers as described;
//! calls recorded in order), the hybrid vsock socket (`CONNECT 1024` →
//! `OK …`) and, behind it, a minimal guest agent (hello → hello_ack, exec →
//! started/exited 0, reseed → done), and sends the agent's ready notice to
//! `<uds_path>_1025` after `InstanceStart`.

mod fc_support;
use fc_support::*;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ironclaw_orchestrator::vm::config::{AccelChoice, BackendChoice};
use ironclaw_orchestrator::vm::firecracker::{MEMORY_FILE, VMSTATE_FILE};
use ironclaw_orchestrator::vm::pool::{Pool, PoolConfig};
use ironclaw_orchestrator::vm::prototype::{self, Prototype};
use ironclaw_orchestrator::vm::snapshot_files::{digest_file, DigestKind};
use ironclaw_orchestrator::vm::{self, BackendKind, VmConfig};
use serde_json::{json, Value as Json};

// ---- the fake Firecracker ---------------------------------------------------

/// Size of the guest memory file the fake writes (a real one is as large as
/// the VM's memory; this keeps the test fast).
const FAKE_MEM_BYTES: usize = 1 << 20;

/// Serves every VM whose runtime directory appears under `root`, until the
/// test's runtime ends.
fn fake_host(spec: Arc<Spec>, root: PathBuf) -> Arc<FakeFirecracker> {
    fake_host_in(spec, root, None)
}

/// [`fake_host`] for Firecracker launched through the fake jailer recording
/// into `jailer_out`: each VM is served at its chroot's API socket once the
/// jailer has run for it (`argv-<id>`, consumed), its paths taken in the chroot.
fn fake_host_in(
    spec: Arc<Spec>,
    root: PathBuf,
    jailer_out: Option<PathBuf>,
) -> Arc<FakeFirecracker> {
    let host = FakeFirecracker::new(
        spec,
        Behaviour {
            memory_bytes: Some(FAKE_MEM_BYTES),
            announce_ready: true,
            ..Default::default()
        },
    );
    let h = host.clone();
    tokio::spawn(async move {
        // Each directory is served once, so one being removed (its socket
        // already gone, `owner` not yet) is not served again. A directory
        // made anew under the same id has a new `owner` file.
        let mut served = std::collections::HashSet::new();
        loop {
            if let Ok(entries) = std::fs::read_dir(&root) {
                for e in entries.flatten() {
                    let id = e.file_name().to_string_lossy().to_string();
                    // `.<id>`: the records of VM `id`, not a VM.
                    if id.starts_with('.') {
                        continue;
                    }
                    let records = ironclaw_orchestrator::vm::runtime::records_dir(&root, &id);
                    let generation = std::fs::metadata(records.join("owner"))
                        .and_then(|m| m.modified())
                        .map(|t| (id.clone(), t));
                    let Ok(generation) = generation else {
                        continue;
                    };
                    if served.contains(&generation) {
                        continue;
                    }
                    // A new VM: its directory is complete (`owner` written)
                    // and nobody serves its API socket yet.
                    let place = match &jailer_out {
                        None => Place::unjailed(&root, &id),
                        Some(out) => {
                            let ran = out.join(format!("argv-{id}"));
                            let Ok(jail) = std::fs::read_to_string(records.join("chroot")) else {
                                continue;
                            };
                            if std::fs::remove_file(&ran).is_err() {
                                continue;
                            }
                            Place::jailed(&root, &id, PathBuf::from(jail.trim()).join("root"))
                        }
                    };
                    if place.chroot.is_none() && place.api_socket().exists() {
                        continue;
                    }
                    if h.serve(place).is_ok() {
                        served.insert(generation);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    host
}

// ---- fixtures ---------------------------------------------------------------

/// The process-wide test environment: `$IRONCLAW_FIRECRACKER`, cache and
/// runtime directories are read from the environment by the code under test,
/// so they are set once and the tests run one at a time.
struct Env {
    tmp: PathBuf,
    root: PathBuf,
    cache: PathBuf,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // Kept past this function: the last test to finish removes it
        // (`finished`), as nothing drops a static.
        let tmp = short_tempdir("icfp-").keep();
        let bin = tmp.join("firecracker");
        std::fs::write(&bin, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.join("run");
        let cache = tmp.join("cache");
        // SAFETY (of the process environment): set once, before any code
        // under test reads these variables; the tests are serialized.
        std::env::set_var("IRONCLAW_FIRECRACKER", &bin);
        // The fake runs unjailed: these tests are about prototypes, the jail
        // policy is tested in firecracker_jailer.rs.
        std::env::set_var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED", "1");
        std::env::set_var("IRONCLAW_RUNTIME_DIR", &root);
        std::env::set_var("IRONCLAW_CACHE_DIR", &cache);
        Env { tmp, root, cache }
    })
}

/// The tests share the process environment: one at a time (an async lock:
/// it is held across the whole test).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A config for a Firecracker VM with its own kernel file (so its own
/// prototype key).
fn config(name: &str) -> VmConfig {
    let env = env();
    let kernel = env.tmp.join(format!("{name}-vmlinuz"));
    let initrd = env.tmp.join(format!("{name}-initrd.cpio"));
    for f in [&kernel, &initrd] {
        std::fs::write(f, name).unwrap();
    }
    let mut c = VmConfig::new(name, kernel, initrd);
    c.backend = BackendChoice::Firecracker;
    c.vcpus = 1;
    c.memory_mib = 256;
    c.boot_timeout_ms = 10_000;
    c
}

fn alive(pid: i32) -> bool {
    vm::process::alive(pid)
}

/// Nothing of any VM is left: no runtime directory, no process, no build
/// directory.
fn assert_nothing_left(host: &FakeFirecracker) {
    let env = env();
    let left: Vec<_> = std::fs::read_dir(&env.root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime directories left: {left:?}");
    for (vm, pid) in &host.log.lock().unwrap().pids {
        assert!(
            !alive(*pid),
            "the process of {vm} (pid {pid}) is still running"
        );
    }
    let builds: Vec<_> = std::fs::read_dir(env.cache.join("prototypes"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(".build-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(builds.is_empty(), "build directories left: {builds:?}");
}

/// The calls of building the prototype whose build VM is `build_vm`.
fn build_calls(build_vm: &str) -> Vec<String> {
    [
        "PUT /machine-config",
        "PUT /boot-source",
        "PUT /vsock",
        "PUT /actions InstanceStart",
        "PATCH /vm Paused",
        "PUT /snapshot/create",
    ]
    .iter()
    .map(|c| format!("{build_vm} {c}"))
    .collect()
}

fn clone_calls(clone: &str) -> Vec<String> {
    ["PUT /snapshot/load", "PATCH /vm Resumed"]
        .iter()
        .map(|c| format!("{clone} {c}"))
        .collect()
}

fn build_vm_of(proto: &Prototype) -> String {
    format!("proto-{}", &proto.meta.key[..12])
}

// ---- tests ------------------------------------------------------------------

/// Tests of this file; the last one to finish removes the temporary tree.
const TESTS: usize = 4;

fn finished() {
    static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if DONE.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == TESTS {
        let _ = std::fs::remove_dir_all(&env().tmp);
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prototype_build_restore_and_rebuild_through_the_snapshot_api() {
    let _serial = serial().await;
    let env = env();
    let host = fake_host(spec(), env.root.clone());
    let cfg = config("fcproto");
    let messages = Mutex::new(Vec::<String>::new());
    let progress = |m: &str| messages.lock().unwrap().push(m.to_string());

    // Build: cold boot, `true`, pause, snapshot into the build directory.
    let proto = prototype::ensure(&cfg, &progress)
        .await
        .expect("building a Firecracker prototype");
    let build_vm = build_vm_of(&proto);
    assert_eq!(host.vm_keys(), build_calls(&build_vm));
    assert_eq!(proto.meta.backend, BackendKind::Firecracker);
    assert_eq!(proto.meta.accel, vm::Accel::Kvm);
    assert_eq!(
        proto.dir,
        env.cache.join("prototypes").join(&proto.meta.key)
    );
    let names: Vec<&str> = proto.meta.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [VMSTATE_FILE, MEMORY_FILE]);
    for f in &proto.meta.files {
        let p = proto.dir.join(&f.name);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), f.bytes, "{f:?}");
        assert_eq!(f.digest, DigestKind::NonzeroPages, "{f:?}");
        let digest = hex::encode(digest_file(&p, f.digest).unwrap());
        assert_eq!(digest, f.sha256, "{f:?}");
    }
    assert_eq!(proto.meta.files[1].bytes, FAKE_MEM_BYTES as u64);
    let meta: Json =
        serde_json::from_str(&std::fs::read_to_string(proto.dir.join("meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["backend"], json!("firecracker"));
    assert_eq!(meta["files"].as_array().unwrap().len(), 2);
    // The snapshot was written into the temporary build directory, which was
    // then renamed into place.
    let create = host.vm_body(&build_vm, "PUT", "/snapshot/create");
    assert_eq!(create["snapshot_type"], json!("Full"));
    let state = PathBuf::from(create["snapshot_path"].as_str().unwrap());
    let memory = PathBuf::from(create["mem_file_path"].as_str().unwrap());
    let build_dir = state.parent().unwrap();
    assert_eq!(memory.parent().unwrap(), build_dir);
    assert_eq!(build_dir.parent().unwrap(), env.cache.join("prototypes"));
    let build_name = build_dir.file_name().unwrap().to_string_lossy();
    assert!(
        build_name.starts_with(&format!(".build-{}-", proto.meta.key)),
        "{build_name}"
    );
    assert_eq!(state.file_name().unwrap(), VMSTATE_FILE);
    assert_eq!(memory.file_name().unwrap(), MEMORY_FILE);
    assert!(!build_dir.exists(), "the build directory was not renamed");
    // The build VM's vsock socket was in its own runtime directory.
    assert_eq!(
        host.vm_body(&build_vm, "PUT", "/vsock")["uds_path"],
        json!(env.root.join(&build_vm).join("vsock.sock"))
    );
    {
        let log = host.log.lock().unwrap();
        let agent = &log.agents[&build_vm];
        assert_eq!(agent.execs, [["true"]]);
        // Seeded once when it booted, as every VM is; clones get their own.
        assert_eq!(agent.reseeds.len(), 1, "{agent:?}");
    }

    // Two clones, each in its own runtime directory with its own vsock socket.
    let before = now_ns();
    let a = prototype::restore(&proto, "fcp-a", &cfg)
        .await
        .expect("restoring clone a");
    let b = prototype::restore(&proto, "fcp-b", &cfg)
        .await
        .expect("restoring clone b");
    let mut want = build_calls(&build_vm);
    want.extend(clone_calls("fcp-a"));
    want.extend(clone_calls("fcp-b"));
    assert_eq!(host.vm_keys(), want);
    for clone in [&a, &b] {
        assert_eq!(clone.backend, BackendKind::Firecracker);
        assert_eq!(clone.runtime_dir(), env.root.join(&clone.id));
        assert_eq!(
            host.vm_body(&clone.id, "PUT", "/snapshot/load"),
            json!({
                "snapshot_path": proto.dir.join(VMSTATE_FILE),
                "mem_backend": {"backend_type": "File", "backend_path": proto.dir.join(MEMORY_FILE)},
                "resume_vm": false,
                "vsock_override": {"uds_path": env.root.join(&clone.id).join("vsock.sock")},
            })
        );
        let out = clone
            .agent()
            .run(vm::exec_request(["true"]), None)
            .await
            .unwrap();
        assert_eq!(out.status.code, Some(0));
        // Reseeded (entropy and clock) before anything ran.
        let log = host.log.lock().unwrap();
        let agent = &log.agents[&clone.id];
        assert_eq!(agent.reseeds.len(), 1, "{agent:?}");
        let (entropy, time) = agent.reseeds[0];
        assert_eq!(entropy, 64);
        assert!(time >= before && time <= now_ns(), "{time}");
        assert_eq!(agent.execs, [["true"]]);
    }
    let pids: Vec<u32> = [&a, &b].iter().flat_map(|v| v.pids()).collect();
    vm::destroy_vm(a).await.unwrap();
    vm::destroy_vm(b).await.unwrap();
    for pid in pids {
        assert!(!alive(pid as i32), "pid {pid} survived destroy");
    }
    assert_nothing_left(&host);

    // A truncated memory file is detected and the prototype rebuilt.
    let mem_file = proto.dir.join(MEMORY_FILE);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&mem_file)
        .unwrap();
    f.set_len(FAKE_MEM_BYTES as u64 / 2).unwrap();
    drop(f);
    messages.lock().unwrap().clear();
    let calls_before = host.vm_keys().len();
    let rebuilt = prototype::ensure(&cfg, &progress)
        .await
        .expect("rebuilding after truncation");
    assert!(
        messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("rebuilding")),
        "{:?}",
        messages.lock().unwrap()
    );
    assert_eq!(host.vm_keys()[calls_before..], build_calls(&build_vm)[..]);
    assert_eq!(rebuilt.meta.key, proto.meta.key);
    for f in &rebuilt.meta.files {
        assert_eq!(
            std::fs::metadata(rebuilt.dir.join(&f.name)).unwrap().len(),
            f.bytes
        );
    }

    // A corrupted state file (same size) is caught by its checksum.
    let state_file = rebuilt.dir.join(VMSTATE_FILE);
    let mut bytes = std::fs::read(&state_file).unwrap();
    for b in &mut bytes[..8] {
        *b ^= 0x5a;
    }
    std::fs::write(&state_file, &bytes).unwrap();
    messages.lock().unwrap().clear();
    let calls_before = host.vm_keys().len();
    let again = prototype::ensure(&cfg, &progress)
        .await
        .expect("rebuilding after corruption");
    assert!(
        messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("rebuilding")),
        "{:?}",
        messages.lock().unwrap()
    );
    assert_eq!(host.vm_keys()[calls_before..], build_calls(&build_vm)[..]);

    // The rebuilt prototype restores; an intact one is reused, not rebuilt.
    let c = prototype::restore(&again, "fcp-c", &cfg)
        .await
        .expect("restoring from the rebuilt prototype");
    vm::destroy_vm(c).await.unwrap();
    messages.lock().unwrap().clear();
    let calls_before = host.vm_keys().len();
    let reused = prototype::ensure(&cfg, &progress).await.unwrap();
    assert_eq!(reused.meta, again.meta);
    assert!(messages.lock().unwrap().is_empty());
    assert_eq!(host.vm_keys().len(), calls_before);

    host.assert_clean();
    assert_nothing_left(&host);
    let key = again.meta.key.clone();
    assert_eq!(prototype::remove(&key).unwrap(), [key]);
    assert!(!again.dir.exists());
    finished();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_of_one_through_the_snapshot_api() {
    let _serial = serial().await;
    let env = env();
    let host = fake_host(spec(), env.root.clone());
    let cfg = config("fcpool");
    let pool = Pool::start(
        &cfg,
        PoolConfig {
            size: 1,
            max_memory_mib: 4096,
        },
    )
    .await
    .expect("starting a pool of Firecracker clones");
    assert!(
        pool.wait_ready(1, Duration::from_secs(30)).await,
        "{:?}",
        pool.stats()
    );
    let vm = pool.acquire().await.expect("acquiring");
    assert_eq!(vm.backend, BackendKind::Firecracker);
    let out = vm
        .agent()
        .run(vm::exec_request(["true"]), None)
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0));
    assert_eq!(pool.stats().hits, 1);
    assert!(
        pool.wait_ready(1, Duration::from_secs(30)).await,
        "no refill: {:?}",
        pool.stats()
    );
    let first = vm.id.clone();
    let second = format!("{}-1", first.strip_suffix("-0").expect("first clone is -0"));
    pool.release(vm).await.unwrap();
    pool.shutdown().await.unwrap();

    let proto_key = prototype::key_for(&cfg).unwrap().0;
    let build_vm = format!("proto-{}", &proto_key[..12]);
    let mut want = build_calls(&build_vm);
    want.extend(clone_calls(&first));
    want.extend(clone_calls(&second));
    assert_eq!(host.vm_keys(), want);
    {
        let log = host.log.lock().unwrap();
        // Reseeded after the restore; warmed by the pool with its command
        // (`true`), a reseed and `true`; reseeded again at acquire, then our
        // command.
        let agent = &log.agents[&first];
        assert_eq!(agent.reseeds.len(), 3, "{agent:?}");
        assert_eq!(agent.execs, [["true"], ["true"], ["true"]]);
    }
    for clone in [&first, &second] {
        assert_eq!(
            host.vm_body(clone, "PUT", "/snapshot/load")["vsock_override"]["uds_path"],
            json!(env.root.join(clone).join("vsock.sock"))
        );
    }
    host.assert_clean();
    assert_nothing_left(&host);
    prototype::remove(&proto_key).unwrap();
    finished();
}

/// A live snapshot of a running clone through `VmHandle::snapshot_live`
/// (what the service's snapshot, fork and pause do): paused, written into
/// the two files it names, resumed; the clone's session goes on, and a VM
/// restored from those files (`vm::restore_vm`, as a fork or a resume is)
/// loads them with its own vsock socket, is reseeded and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_snapshot_of_a_clone_restores_into_a_new_vm() {
    let _serial = serial().await;
    let env = env();
    let host = fake_host(spec(), env.root.clone());
    let cfg = config("fclive");
    let proto = prototype::ensure(&cfg, &|_| {})
        .await
        .expect("building a Firecracker prototype");
    let source = prototype::restore(&proto, "fcl-source", &cfg)
        .await
        .expect("restoring the source clone");
    let out = env.tmp.join("fclive-snapshot");
    std::fs::create_dir(&out).unwrap();

    let live = source
        .snapshot_live(&out, vm::LiveCopy::Precopy)
        .await
        .expect("live snapshot of the clone");
    assert_eq!(live.files, [VMSTATE_FILE, MEMORY_FILE]);
    let mut want = build_calls(&build_vm_of(&proto));
    want.extend(clone_calls("fcl-source"));
    want.extend(
        [
            "PATCH /vm Paused",
            "PUT /snapshot/create",
            "PATCH /vm Resumed",
        ]
        .map(|c| format!("fcl-source {c}")),
    );
    assert_eq!(host.vm_keys(), want);
    assert_eq!(
        host.vm_body("fcl-source", "PUT", "/snapshot/create"),
        json!({"snapshot_type": "Full", "snapshot_path": out.join(VMSTATE_FILE),
               "mem_file_path": out.join(MEMORY_FILE)})
    );
    assert_eq!(
        std::fs::metadata(out.join(MEMORY_FILE)).unwrap().len(),
        FAKE_MEM_BYTES as u64
    );
    let out_source = source
        .agent()
        .run(vm::exec_request(["true"]), None)
        .await
        .expect("the source answers after its snapshot");
    assert_eq!(out_source.status.code, Some(0));

    // The machine the snapshot records: Firecracker, on KVM.
    let fork_cfg = VmConfig {
        id: "fcl-fork".into(),
        accel: AccelChoice::Kvm,
        ..cfg.clone()
    };
    let files: Vec<PathBuf> = live.files.iter().map(|f| out.join(f)).collect();
    let before = now_ns();
    let fork = vm::restore_vm(&fork_cfg, &files)
        .await
        .expect("restoring the live snapshot");
    assert_eq!(fork.backend, BackendKind::Firecracker);
    assert_eq!(
        host.vm_body("fcl-fork", "PUT", "/snapshot/load"),
        json!({
            "snapshot_path": out.join(VMSTATE_FILE),
            "mem_backend": {"backend_type": "File", "backend_path": out.join(MEMORY_FILE)},
            "resume_vm": false,
            "vsock_override": {"uds_path": env.root.join("fcl-fork").join("vsock.sock")},
        })
    );
    let out_fork = fork
        .agent()
        .run(vm::exec_request(["true"]), None)
        .await
        .expect("the restored VM answers");
    assert_eq!(out_fork.status.code, Some(0));
    {
        let log = host.log.lock().unwrap();
        let agent = &log.agents["fcl-fork"];
        assert_eq!(agent.reseeds.len(), 1, "{agent:?}");
        let (entropy, time) = agent.reseeds[0];
        assert_eq!(entropy, 64);
        assert!(time >= before && time <= now_ns(), "{time}");
        assert_eq!(agent.execs, [["true"]]);
    }
    assert_eq!(
        host.vm_keys()[want.len()..],
        ["fcl-fork PUT /snapshot/load", "fcl-fork PATCH /vm Resumed"]
    );

    vm::destroy_vm(source).await.unwrap();
    vm::destroy_vm(fork).await.unwrap();
    host.assert_clean();
    assert_nothing_left(&host);
    prototype::remove(&proto.meta.key).unwrap();
    finished();
}

/// Removes the jailer's variables when the test ends, even by a panic.
struct JailerEnv;

impl Drop for JailerEnv {
    fn drop(&mut self) {
        for var in [
            "IRONCLAW_FIRECRACKER_JAILER",
            "IRONCLAW_JAILER_CHROOT_BASE",
            "IRONCLAW_JAILER_UID",
            "IRONCLAW_JAILER_GID",
        ] {
            std::env::remove_var(var);
        }
    }
}

/// The path of `ironclaw run` and `ironclaw pool serve` on a root host with
/// Firecracker's jailer: the prototype is built by a jailed Firecracker (its
/// snapshot written in the chroot and moved into the prototype cache) and
/// each clone is restored in a jail of its own. (Creating the snapshot used
/// to fail with "not implemented for a jailed Firecracker".) Needs root, as
/// the jailer tests do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jailed_prototype_build_and_restore_through_the_snapshot_api() {
    use std::os::unix::fs::MetadataExt;
    let _serial = serial().await;
    let env = env();
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "needs root (the jailer's network namespace, cgroups, chown), like the rest of `make test`"
    );
    let cfg = config("fcjail");
    let direct_key = prototype::key_for(&cfg).unwrap().0;

    let out = env.tmp.join("jailer-out");
    std::fs::create_dir_all(&out).unwrap();
    let jailer = env.tmp.join("jailer");
    std::fs::write(
        &jailer,
        FAKE_JAILER.replace("@OUT@", &out.to_string_lossy()),
    )
    .unwrap();
    std::fs::set_permissions(&jailer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = env.tmp.join("jail");
    let _jailer_env = JailerEnv;
    // SAFETY (of the process environment): the tests of this file are
    // serialized and the variables are removed when this one ends.
    std::env::set_var("IRONCLAW_FIRECRACKER_JAILER", &jailer);
    std::env::set_var("IRONCLAW_JAILER_CHROOT_BASE", &base);
    std::env::set_var("IRONCLAW_JAILER_UID", "4242");
    std::env::set_var("IRONCLAW_JAILER_GID", "4343");
    let host = fake_host_in(spec(), env.root.clone(), Some(out));

    let proto = prototype::ensure(&cfg, &|_| {})
        .await
        .expect("building a prototype with a jailed Firecracker");
    assert_ne!(
        proto.meta.key, direct_key,
        "a jailed snapshot holds chroot paths: its prototype must not be the unjailed one"
    );
    let build_vm = build_vm_of(&proto);
    assert_eq!(host.vm_keys(), build_calls(&build_vm));
    assert_eq!(
        host.vm_body(&build_vm, "PUT", "/vsock")["uds_path"],
        json!("/vsock.sock")
    );
    let create = host.vm_body(&build_vm, "PUT", "/snapshot/create");
    assert_eq!(create["snapshot_path"], json!("/snapshot/vmstate"));
    assert_eq!(create["mem_file_path"], json!("/snapshot/memory"));
    // Moved out of the chroot into the cache: the orchestrator's, readable
    // by the jails' shared gid.
    for (name, bytes) in [
        (VMSTATE_FILE, None),
        (MEMORY_FILE, Some(FAKE_MEM_BYTES as u64)),
    ] {
        let m = std::fs::symlink_metadata(proto.dir.join(name)).unwrap();
        assert!(m.is_file(), "{name}");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (euid, 4343, 0o640),
            "{name}"
        );
        if let Some(b) = bytes {
            assert_eq!(m.len(), b, "{name}");
        }
    }

    let a = prototype::restore(&proto, "fcj-a", &cfg)
        .await
        .expect("restoring a clone in a new jail");
    let b = prototype::restore(&proto, "fcj-b", &cfg)
        .await
        .expect("restoring a second clone in a new jail");
    let mut want = build_calls(&build_vm);
    want.extend(clone_calls("fcj-a"));
    want.extend(clone_calls("fcj-b"));
    assert_eq!(host.vm_keys(), want);
    for clone in [&a, &b] {
        assert_eq!(
            host.vm_body(&clone.id, "PUT", "/snapshot/load"),
            json!({
                "snapshot_path": "/snapshot/vmstate",
                "mem_backend": {"backend_type": "File", "backend_path": "/snapshot/memory"},
                "resume_vm": false,
                "vsock_override": {"uds_path": "/vsock.sock"},
            })
        );
        let out = clone
            .agent()
            .run(vm::exec_request(["true"]), None)
            .await
            .unwrap();
        assert_eq!(out.status.code, Some(0));
        let log = host.log.lock().unwrap();
        assert_eq!(log.agents[&clone.id].reseeds.len(), 1);
    }
    vm::destroy_vm(a).await.unwrap();
    vm::destroy_vm(b).await.unwrap();
    host.assert_clean();
    assert_nothing_left(&host);
    let chroots: Vec<_> = std::fs::read_dir(base.join("firecracker"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(chroots.is_empty(), "chroots left: {chroots:?}");
    // The clones' jails are gone, the prototype's files are intact.
    let again = prototype::ensure(&cfg, &|_| {}).await.unwrap();
    assert_eq!(again.meta, proto.meta);
    prototype::remove(&proto.meta.key).unwrap();
    finished();
}
