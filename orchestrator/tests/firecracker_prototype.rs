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

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ironclaw_orchestrator::vm::config::BackendChoice;
use ironclaw_orchestrator::vm::firecracker::{MEMORY_FILE, VMSTATE_FILE};
use ironclaw_orchestrator::vm::pool::{Pool, PoolConfig};
use ironclaw_orchestrator::vm::prototype::{self, Prototype};
use ironclaw_orchestrator::vm::{self, BackendKind, VmConfig};
use ironclaw_protocol::{ExitStatus, Frame, FrameCodec, Message, PROTOCOL_VERSION};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{FramedRead, FramedWrite};

// ---- the fake Firecracker ---------------------------------------------------

/// Size of the guest memory file the fake writes (a real one is as large as
/// the VM's memory; this keeps the test fast).
const FAKE_MEM_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
struct Call {
    vm: String,
    method: String,
    path: String,
    body: Option<Json>,
}

impl Call {
    /// `<vm> METHOD /path [action or state]`.
    fn key(&self) -> String {
        let action = self
            .body
            .as_ref()
            .and_then(|b| b.get("action_type").or_else(|| b.get("state")))
            .and_then(Json::as_str)
            .map(|a| format!(" {a}"))
            .unwrap_or_default();
        format!("{} {} {}{action}", self.vm, self.method, self.path)
    }
}

/// What the fake guest agent of one VM was asked.
#[derive(Debug, Default, Clone)]
struct AgentLog {
    hellos: u32,
    execs: Vec<Vec<String>>,
    /// (entropy bytes, unix time in ns) of each reseed.
    reseeds: Vec<(usize, u64)>,
}

#[derive(Default)]
struct HostLog {
    calls: Vec<Call>,
    /// Spec violations and protocol misuse (e.g. talking to a paused guest).
    violations: Vec<String>,
    agents: HashMap<String, AgentLog>,
    /// The stand-in process of each VM, from its runtime directory.
    pids: HashMap<String, i32>,
}

/// Plays Firecracker for every VM started under the runtime root.
struct Host {
    spec: Arc<Spec>,
    log: Mutex<HostLog>,
}

/// One fake Firecracker process: its VM state and vsock socket.
struct FakeVm {
    host: Arc<Host>,
    id: String,
    dir: PathBuf,
    calls: Mutex<usize>,
    /// "Not started", "Running" or "Paused", as `GET /` reports it.
    state: Mutex<&'static str>,
    /// The host path of the vsock socket.
    uds: Mutex<Option<PathBuf>>,
    /// A jailed Firecracker's chroot: the paths in its requests are in it.
    chroot: Option<PathBuf>,
}

impl Host {
    fn violation(&self, v: String) {
        self.log.lock().unwrap().violations.push(v);
    }
}

impl FakeVm {
    /// The host path of a path in a request: the same, or for a jailed
    /// Firecracker the path inside its chroot (which must be absolute).
    fn host_path(&self, p: &Json) -> PathBuf {
        let p = p.as_str().unwrap_or_default();
        match &self.chroot {
            None => PathBuf::from(p),
            Some(root) => {
                if !p.starts_with('/') {
                    self.host
                        .violation(format!("{}: {p:?} is not a path in the chroot", self.id));
                }
                root.join(p.trim_start_matches('/'))
            }
        }
    }

    fn state(&self) -> &'static str {
        *self.state.lock().unwrap()
    }

    fn set_state(&self, s: &'static str) {
        *self.state.lock().unwrap() = s;
    }

    async fn handle(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let raw = req.into_body().collect().await.unwrap().to_bytes();
        let body = if raw.is_empty() {
            None
        } else {
            match serde_json::from_slice::<Json>(&raw) {
                Ok(b) => Some(b),
                Err(e) => return fault(format!("invalid JSON body: {e}")),
            }
        };
        let first_call = {
            let mut n = self.calls.lock().unwrap();
            *n += 1;
            *n == 1
        };
        {
            let mut log = self.host.log.lock().unwrap();
            if let Some(pid) = std::fs::read_to_string(self.dir.join("pids"))
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                log.pids.insert(self.id.clone(), pid);
            }
            log.calls.push(Call {
                vm: self.id.clone(),
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
            });
            let errs = check_request(&self.host.spec, &method, &path, body.as_ref());
            if !errs.is_empty() {
                log.violations.extend(errs.iter().cloned());
                return fault(errs.join("; "));
            }
        }
        let b = body.unwrap_or(Json::Null);
        match (method.as_str(), path.as_str()) {
            ("GET", "/") => {
                let info = json!({
                    "app_name": "Firecracker",
                    "id": "anonymous-instance",
                    "state": self.state(),
                    "vmm_version": "1.17.0-dev",
                });
                let errs = definition_errors(&self.host.spec, "InstanceInfo", &info);
                assert!(errs.is_empty(), "the fake's own answer: {errs:?}");
                return answer(StatusCode::OK, Some(info));
            }
            ("PUT", "/vsock") => {
                let uds = self.host_path(&b["uds_path"]);
                *self.uds.lock().unwrap() = Some(uds.clone());
                serve_vsock(self.clone(), &uds);
            }
            ("PUT", "/actions") => match b["action_type"].as_str() {
                Some("InstanceStart") if self.state() != "Not started" => {
                    return fault(
                        "The requested operation is not supported after starting the microVM.",
                    )
                }
                Some("InstanceStart") => {
                    self.set_state("Running");
                    // The booted guest's agent announces it listens: a
                    // guest-initiated connection to host port 1025 lands on
                    // `<uds_path>_1025`.
                    let uds = self.uds.lock().unwrap().clone();
                    if let Some(uds) = uds {
                        let mut ready = uds.into_os_string();
                        ready.push("_1025");
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let _ = UnixStream::connect(PathBuf::from(ready)).await;
                        });
                    }
                }
                _ => {}
            },
            ("PATCH", "/vm") => match (b["state"].as_str(), self.state()) {
                (Some("Paused"), "Running") => self.set_state("Paused"),
                (Some("Resumed"), "Paused") => self.set_state("Running"),
                (want, now) => return fault(format!("cannot move from {now} to {want:?}")),
            },
            ("PUT", "/snapshot/create") => {
                if self.state() != "Paused" {
                    return fault("Cannot create a snapshot: the microVM is not paused");
                }
                let state = &self.host_path(&b["snapshot_path"]);
                let mem = &self.host_path(&b["mem_file_path"]);
                let uds = self.uds.lock().unwrap().clone().unwrap_or_default();
                if let Err(e) = std::fs::write(
                    state,
                    format!("fake vmstate of {}; vsock {}", self.id, uds.display()),
                ) {
                    return fault(format!("writing {}: {e}", state.display()));
                }
                let mut memory = vec![0u8; FAKE_MEM_BYTES];
                getrandom::getrandom(&mut memory).unwrap();
                if let Err(e) = std::fs::write(mem, &memory) {
                    return fault(format!("writing {}: {e}", mem.display()));
                }
                if let Some(root) = &self.chroot {
                    // Written by Firecracker as the jail uid.
                    use std::os::unix::fs::MetadataExt;
                    let run = std::fs::metadata(root.join("run")).unwrap();
                    for f in [state, mem] {
                        std::os::unix::fs::chown(f, Some(run.uid()), Some(run.gid())).unwrap();
                    }
                }
            }
            ("PUT", "/snapshot/load") => {
                if !first_call {
                    return fault("Loading a microVM snapshot not allowed after configuring boot-specific resources.");
                }
                let state = &self.host_path(&b["snapshot_path"]);
                let mem = &self.host_path(&b["mem_backend"]["backend_path"]);
                if !state.exists() {
                    return fault(format!("{} does not exist", state.display()));
                }
                // Firecracker maps the file as guest memory: a file of the
                // wrong size cannot be loaded.
                match std::fs::metadata(mem) {
                    Ok(m) if m.len() == FAKE_MEM_BYTES as u64 => {}
                    Ok(m) => {
                        return fault(format!(
                            "memory file {} has {} bytes, the snapshot needs {FAKE_MEM_BYTES}",
                            mem.display(),
                            m.len()
                        ))
                    }
                    Err(e) => return fault(format!("{}: {e}", mem.display())),
                }
                if b["vsock_override"]["uds_path"].as_str().is_none() {
                    self.host
                        .violation(format!("{}: snapshot load without vsock_override", self.id));
                    return fault("clones need their own vsock socket");
                }
                let uds = self.host_path(&b["vsock_override"]["uds_path"]);
                *self.uds.lock().unwrap() = Some(uds.clone());
                serve_vsock(self.clone(), &uds);
                self.set_state(if b["resume_vm"] == json!(true) {
                    "Running"
                } else {
                    "Paused"
                });
            }
            _ => {}
        }
        answer(StatusCode::NO_CONTENT, None)
    }
}

/// Firecracker's hybrid vsock host socket with the guest agent behind it.
fn serve_vsock(vm: Arc<FakeVm>, path: &Path) {
    let listener = UnixListener::bind(path).expect("binding the fake vsock socket");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(vm.clone(), stream));
        }
    });
}

async fn serve_connection(vm: Arc<FakeVm>, mut stream: UnixStream) {
    // Byte by byte: the frames that follow the handshake line are the agent's.
    let mut line = Vec::new();
    loop {
        match stream.read_u8().await {
            Ok(b'\n') => break,
            Ok(b) if line.len() < 64 => line.push(b),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&line).to_string();
    if line != format!("CONNECT {}", ironclaw_protocol::AGENT_VSOCK_PORT) {
        vm.host
            .violation(format!("{}: unexpected vsock request {line:?}", vm.id));
        return;
    }
    if vm.state() != "Running" {
        // A paused or unstarted guest does not answer.
        vm.host.violation(format!(
            "{}: agent connection while the VM is {}",
            vm.id,
            vm.state()
        ));
        return;
    }
    if stream.write_all(b"OK 1073741824\n").await.is_err() {
        return;
    }
    let (r, w) = tokio::io::split(stream);
    let mut frames = FramedRead::new(r, FrameCodec::new());
    let mut out = FramedWrite::new(w, FrameCodec::new());
    while let Some(Ok(frame)) = frames.next().await {
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                vm.host.violation(format!("{}: bad frame: {e}", vm.id));
                return;
            }
        };
        let id = frame.stream;
        let replies = {
            let mut log = vm.host.log.lock().unwrap();
            let agent = log.agents.entry(vm.id.clone()).or_default();
            match msg {
                Message::Hello { .. } => {
                    agent.hellos += 1;
                    vec![Message::HelloAck {
                        version: PROTOCOL_VERSION,
                        agent_version: "fake".into(),
                        kernel_release: "fake-firecracker".into(),
                    }]
                }
                Message::Exec(req) => {
                    agent.execs.push(req.argv.clone());
                    vec![
                        Message::Started { pid: 42 },
                        Message::Exited(ExitStatus {
                            code: Some(0),
                            ..Default::default()
                        }),
                    ]
                }
                Message::Reseed {
                    entropy,
                    unix_time_ns,
                } => {
                    agent.reseeds.push((entropy.len(), unix_time_ns));
                    vec![Message::Done]
                }
                other => vec![Message::Error {
                    message: format!("the fake agent does not do {other:?}"),
                }],
            }
        };
        for m in replies {
            if out.send(Frame::control(id, &m)).await.is_err() {
                return;
            }
        }
    }
}

/// Serves every VM whose runtime directory appears under `root`, until the
/// test's runtime ends.
fn fake_host(spec: Arc<Spec>, root: PathBuf) -> Arc<Host> {
    fake_host_in(spec, root, None)
}

/// [`fake_host`] for Firecracker launched through the fake jailer recording
/// into `jailer_out`: each VM is served at its chroot's API socket once the
/// jailer has run for it (`argv-<id>`, consumed), its paths taken in the chroot.
fn fake_host_in(spec: Arc<Spec>, root: PathBuf, jailer_out: Option<PathBuf>) -> Arc<Host> {
    let host = Arc::new(Host {
        spec,
        log: Mutex::new(HostLog::default()),
    });
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
                    let generation = std::fs::metadata(e.path().join("owner"))
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
                    let (socket, chroot) = match &jailer_out {
                        None if e.path().join("firecracker.sock").exists() => continue,
                        None => (e.path().join("firecracker.sock"), None),
                        Some(out) => {
                            let ran = out.join(format!("argv-{id}"));
                            let Ok(jail) = std::fs::read_to_string(e.path().join("chroot")) else {
                                continue;
                            };
                            if std::fs::remove_file(&ran).is_err() {
                                continue;
                            }
                            let root = PathBuf::from(jail.trim()).join("root");
                            (root.join("run/firecracker.socket"), Some(root))
                        }
                    };
                    let vm = Arc::new(FakeVm {
                        host: h.clone(),
                        id,
                        dir: e.path(),
                        calls: Mutex::new(0),
                        state: Mutex::new("Not started"),
                        uds: Mutex::new(None),
                        chroot,
                    });
                    let Ok(listener) = UnixListener::bind(&socket) else {
                        continue;
                    };
                    served.insert(generation);
                    tokio::spawn(async move {
                        while let Ok((stream, _)) = listener.accept().await {
                            let vm = vm.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let vm = vm.clone();
                                    async move { Ok::<_, Infallible>(vm.handle(req).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    });
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
        let mut b = [0u8; 4];
        getrandom::getrandom(&mut b).unwrap();
        // Short: socket paths are limited to 107 bytes.
        let tmp = PathBuf::from(format!("/tmp/icfp-{}", hex::encode(b)));
        std::fs::create_dir_all(&tmp).unwrap();
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

fn keys(host: &Host) -> Vec<String> {
    host.log
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(Call::key)
        .collect()
}

fn body(host: &Host, vm: &str, method: &str, path: &str) -> Json {
    host.log
        .lock()
        .unwrap()
        .calls
        .iter()
        .find(|c| c.vm == vm && c.method == method && c.path == path)
        .and_then(|c| c.body.clone())
        .unwrap_or_else(|| panic!("no {method} {path} call for {vm}"))
}

fn assert_clean(host: &Host) {
    let log = host.log.lock().unwrap();
    assert!(
        log.violations.is_empty(),
        "violations: {:#?}",
        log.violations
    );
    for c in &log.calls {
        assert!(
            !c.path.contains("network-interfaces"),
            "a network interface was configured: {c:?}"
        );
    }
}

/// Nothing of any VM is left: no runtime directory, no process, no build
/// directory.
fn assert_nothing_left(host: &Host) {
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

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
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
const TESTS: usize = 3;

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
    assert_eq!(keys(&host), build_calls(&build_vm));
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
        assert_eq!(sha256_hex(&p), f.sha256, "{f:?}");
    }
    assert_eq!(proto.meta.files[1].bytes, FAKE_MEM_BYTES as u64);
    let meta: Json =
        serde_json::from_str(&std::fs::read_to_string(proto.dir.join("meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["backend"], json!("firecracker"));
    assert_eq!(meta["files"].as_array().unwrap().len(), 2);
    // The snapshot was written into the temporary build directory, which was
    // then renamed into place.
    let create = body(&host, &build_vm, "PUT", "/snapshot/create");
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
        body(&host, &build_vm, "PUT", "/vsock")["uds_path"],
        json!(env.root.join(&build_vm).join("vsock.sock"))
    );
    {
        let log = host.log.lock().unwrap();
        let agent = &log.agents[&build_vm];
        assert_eq!(agent.execs, [["true"]]);
        assert!(agent.reseeds.is_empty());
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
    assert_eq!(keys(&host), want);
    for clone in [&a, &b] {
        assert_eq!(clone.backend, BackendKind::Firecracker);
        assert_eq!(clone.runtime_dir(), env.root.join(&clone.id));
        assert_eq!(
            body(&host, &clone.id, "PUT", "/snapshot/load"),
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
    let calls_before = keys(&host).len();
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
    assert_eq!(keys(&host)[calls_before..], build_calls(&build_vm)[..]);
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
    let calls_before = keys(&host).len();
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
    assert_eq!(keys(&host)[calls_before..], build_calls(&build_vm)[..]);

    // The rebuilt prototype restores; an intact one is reused, not rebuilt.
    let c = prototype::restore(&again, "fcp-c", &cfg)
        .await
        .expect("restoring from the rebuilt prototype");
    vm::destroy_vm(c).await.unwrap();
    messages.lock().unwrap().clear();
    let calls_before = keys(&host).len();
    let reused = prototype::ensure(&cfg, &progress).await.unwrap();
    assert_eq!(reused.meta, again.meta);
    assert!(messages.lock().unwrap().is_empty());
    assert_eq!(keys(&host).len(), calls_before);

    assert_clean(&host);
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
    assert_eq!(keys(&host), want);
    {
        let log = host.log.lock().unwrap();
        // Reseeded after the restore and again at acquire; warmed with `true`
        // by the pool, then our command.
        let agent = &log.agents[&first];
        assert_eq!(agent.reseeds.len(), 2, "{agent:?}");
        assert_eq!(agent.execs, [["true"], ["true"]]);
    }
    for clone in [&first, &second] {
        assert_eq!(
            body(&host, clone, "PUT", "/snapshot/load")["vsock_override"]["uds_path"],
            json!(env.root.join(clone).join("vsock.sock"))
        );
    }
    assert_clean(&host);
    assert_nothing_left(&host);
    prototype::remove(&proto_key).unwrap();
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
    assert_eq!(keys(&host), build_calls(&build_vm));
    assert_eq!(
        body(&host, &build_vm, "PUT", "/vsock")["uds_path"],
        json!("/vsock.sock")
    );
    let create = body(&host, &build_vm, "PUT", "/snapshot/create");
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
    assert_eq!(keys(&host), want);
    for clone in [&a, &b] {
        assert_eq!(
            body(&host, &clone.id, "PUT", "/snapshot/load"),
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
    assert_clean(&host);
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
