//! The fake Firecracker API: a hyper server on a VM's API unix socket that
//! checks every request against the API description ([`check_request`]),
//! records the calls in order, answers as the API describes (204, `GET /`'s
//! `InstanceInfo`, or 400 with `fault_message`) and keeps the state machine
//! Firecracker reports (Not started, Running, Paused).
//!
//! One [`FakeFirecracker`] records for one or more VMs ([`Place`]s): the
//! process a jailed Firecracker would be opens the paths of its requests in
//! its chroot; an unjailed one opens them as they are. What the tests vary
//! is in [`Behaviour`] (faults, the memory file a snapshot writes, the
//! agent's ready notice) and [`FakeFirecracker::tamper_memory_with_symlink_to`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value as Json};
use tokio::net::{UnixListener, UnixStream};

use super::vsock::{serve_vsock, AgentLog, Guest};
use super::{answer, check_request, definition_errors, fault, Body, Spec};

/// One request the fake was sent.
#[derive(Debug, Clone)]
pub struct Call {
    /// The id of the VM it was sent to.
    pub vm: String,
    pub method: String,
    pub path: String,
    pub body: Option<Json>,
}

impl Call {
    /// `METHOD /path [action or state]`.
    pub fn key(&self) -> String {
        let action = self
            .body
            .as_ref()
            .and_then(|b| b.get("action_type").or_else(|| b.get("state")))
            .and_then(Json::as_str)
            .map(|a| format!(" {a}"))
            .unwrap_or_default();
        format!("{} {}{action}", self.method, self.path)
    }

    /// `<vm> METHOD /path [action or state]`.
    pub fn vm_key(&self) -> String {
        format!("{} {}", self.vm, self.key())
    }
}

/// What the fake saw, for all its VMs.
#[derive(Default)]
pub struct Recorded {
    pub calls: Vec<Call>,
    /// Violations of the API description, paths a jailed Firecracker could
    /// not open, protocol misuse (e.g. talking to a paused guest).
    pub violations: Vec<String>,
    /// What each VM's guest agent was asked.
    pub agents: HashMap<String, AgentLog>,
    /// The stand-in process of each VM, from its records' `pids`.
    pub pids: HashMap<String, i32>,
}

/// What differs between the tests' fakes.
#[derive(Default, Clone)]
pub struct Behaviour {
    /// (method, path, fault message): answered with 400 once the request
    /// passed the checks.
    pub faults: Vec<(String, String, String)>,
    /// The size of the guest memory file a snapshot writes (random bytes),
    /// which a snapshot load then requires; `None`: a short text naming the VM.
    pub memory_bytes: Option<usize>,
    /// After `InstanceStart`, the guest agent announces it listens: a
    /// guest-initiated connection to host port 1025 (`<uds_path>_1025`).
    pub announce_ready: bool,
}

impl Behaviour {
    pub fn with_faults(faults: &[(&str, &str, &str)]) -> Behaviour {
        Behaviour {
            faults: faults
                .iter()
                .map(|(m, p, msg)| (m.to_string(), p.to_string(), msg.to_string()))
                .collect(),
            ..Default::default()
        }
    }
}

/// Where one fake Firecracker process is.
#[derive(Debug, Clone)]
pub struct Place {
    pub id: String,
    /// Its runtime directory.
    pub dir: PathBuf,
    /// The orchestrator's records of it (`owner`, `pids`, `chroot`).
    pub records: PathBuf,
    /// A jailed Firecracker's chroot: the paths in its requests are in it.
    pub chroot: Option<PathBuf>,
}

impl Place {
    /// An unjailed Firecracker in `<root>/<id>`.
    pub fn unjailed(root: &Path, id: &str) -> Place {
        Place {
            id: id.to_string(),
            dir: root.join(id),
            records: ironclaw_orchestrator::vm::runtime::records_dir(root, id),
            chroot: None,
        }
    }

    /// A Firecracker jailed in `chroot`, its runtime directory `<root>/<id>`.
    pub fn jailed(root: &Path, id: &str, chroot: PathBuf) -> Place {
        Place {
            chroot: Some(chroot),
            ..Place::unjailed(root, id)
        }
    }

    /// The API socket the orchestrator connects to.
    pub fn api_socket(&self) -> PathBuf {
        match &self.chroot {
            Some(root) => root.join("run/firecracker.socket"),
            None => self
                .dir
                .join(ironclaw_orchestrator::vm::firecracker::API_SOCKET),
        }
    }
}

/// Plays Firecracker for the VMs it serves.
pub struct FakeFirecracker {
    pub spec: Arc<Spec>,
    pub behaviour: Behaviour,
    pub log: Mutex<Recorded>,
    /// Misbehave as a compromised Firecracker could: leave a symlink to
    /// this host file where a snapshot's memory file should be.
    symlink_memory: Mutex<Option<PathBuf>>,
}

/// The state of one fake Firecracker process.
#[derive(Default)]
struct VmState {
    /// Requests so far.
    calls: usize,
    /// "Not started", "Running" or "Paused", as `GET /` reports it.
    state: &'static str,
    /// The host path of the vsock socket.
    uds: Option<PathBuf>,
    /// Paths (as requested) of the drives the VM has, as a snapshot records them.
    drives: Vec<String>,
}

/// One fake Firecracker process.
pub struct FakeVm {
    host: Arc<FakeFirecracker>,
    place: Place,
    state: Mutex<VmState>,
}

impl FakeFirecracker {
    pub fn new(spec: Arc<Spec>, behaviour: Behaviour) -> Arc<FakeFirecracker> {
        Arc::new(FakeFirecracker {
            spec,
            behaviour,
            log: Mutex::new(Recorded::default()),
            symlink_memory: Mutex::new(None),
        })
    }

    /// Serves `place`'s API socket from now on.
    pub fn serve(self: &Arc<Self>, place: Place) -> std::io::Result<()> {
        let listener = UnixListener::bind(place.api_socket())?;
        let vm = Arc::new(FakeVm {
            host: self.clone(),
            place,
            state: Mutex::new(VmState {
                state: "Not started",
                ..Default::default()
            }),
        });
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
        Ok(())
    }

    /// Serves `place` once `ready` exists (the process it stands in for
    /// would have started by then); `what` says what did not happen
    /// otherwise.
    pub fn serve_once_there(self: &Arc<Self>, ready: PathBuf, place: Place, what: &'static str) {
        let fake = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !ready.exists() {
                assert!(tokio::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fake.serve(place).expect("binding the fake API socket");
        });
    }

    /// From now on, a snapshot's memory file is a symlink to `victim`.
    pub fn tamper_memory_with_symlink_to(&self, victim: &Path) {
        *self.symlink_memory.lock().unwrap() = Some(victim.to_path_buf());
    }

    fn violations(&self, errs: &[String]) {
        self.log.lock().unwrap().violations.extend_from_slice(errs);
    }

    /// The calls, as [`Call::key`].
    pub fn keys(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(Call::key)
            .collect()
    }

    /// The calls, as [`Call::vm_key`].
    pub fn vm_keys(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.calls.iter().map(Call::vm_key).collect()
    }

    /// The body of the first `method path` call to any VM.
    pub fn body(&self, method: &str, path: &str) -> Json {
        self.find_body(|c| c.method == method && c.path == path)
            .unwrap_or_else(|| panic!("no {method} {path} call"))
    }

    /// The body of the first `method path` call to VM `vm`.
    pub fn vm_body(&self, vm: &str, method: &str, path: &str) -> Json {
        self.find_body(|c| c.vm == vm && c.method == method && c.path == path)
            .unwrap_or_else(|| panic!("no {method} {path} call for {vm}"))
    }

    fn find_body(&self, want: impl Fn(&Call) -> bool) -> Option<Json> {
        let log = self.log.lock().unwrap();
        log.calls
            .iter()
            .find(|c| want(c))
            .and_then(|c| c.body.clone())
    }

    /// The pid of VM `vm`'s stand-in process, once a request came after it
    /// was recorded.
    pub fn pid(&self, vm: &str) -> Option<i32> {
        self.log.lock().unwrap().pids.get(vm).copied()
    }

    /// No violation was recorded and no network interface configured.
    pub fn assert_clean(&self) {
        let log = self.log.lock().unwrap();
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
}

/// Whether `uid`/`gid` may read a file with metadata `m` (by its mode bits).
pub fn readable_by(m: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = m.mode();
    mode & 0o004 != 0
        || (m.uid() == uid && mode & 0o400 != 0)
        || (m.gid() == gid && mode & 0o040 != 0)
}

/// What the fake's snapshot state file records: the paths the restored VM
/// will open again (in the chroot of whoever loads it).
pub fn fake_vmstate(id: &str, drives: &[String]) -> String {
    json!({"fake vmstate of": id, "drives": drives}).to_string()
}

impl Guest for FakeVm {
    fn id(&self) -> &str {
        &self.place.id
    }

    fn running(&self) -> bool {
        self.state.lock().unwrap().state == "Running"
    }

    fn violation(&self, v: String) {
        self.host.violations(&[v]);
    }

    fn with_agent_log(&self, f: &mut dyn FnMut(&mut AgentLog)) {
        let mut log = self.host.log.lock().unwrap();
        f(log.agents.entry(self.place.id.clone()).or_default())
    }
}

impl FakeVm {
    /// The host path of a path in a request: the same, or for a jailed
    /// Firecracker the path inside its chroot (which must be absolute).
    fn host_path(&self, p: &Json, what: &str, errs: &mut Vec<String>) -> PathBuf {
        let p = p.as_str().unwrap_or_default();
        match &self.place.chroot {
            None => PathBuf::from(p),
            Some(root) => {
                if !p.starts_with('/') {
                    errs.push(format!(
                        "{}: {what} {p:?} is not an absolute path in the chroot",
                        self.place.id
                    ));
                }
                root.join(p.trim_start_matches('/'))
            }
        }
    }

    /// The jail uid and gid: the chroot's `/run` belongs to them.
    fn jail_ids(&self) -> Option<(u32, u32)> {
        let root = self.place.chroot.as_ref()?;
        let m = std::fs::metadata(root.join("run")).expect("the chroot's /run");
        Some((m.uid(), m.gid()))
    }

    /// Records `errs` as violations and answers them as a fault.
    fn refuse(&self, errs: Vec<String>) -> Response<Body> {
        self.host.violations(&errs);
        fault(errs.join("; "))
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
            let mut vm = self.state.lock().unwrap();
            vm.calls += 1;
            vm.calls == 1
        };
        {
            let mut log = self.host.log.lock().unwrap();
            if let Some(pid) = std::fs::read_to_string(self.place.records.join("pids"))
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                log.pids.insert(self.place.id.clone(), pid);
            }
            log.calls.push(Call {
                vm: self.place.id.clone(),
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
            });
        }
        let mut errs = check_request(&self.host.spec, &method, &path, body.as_ref());
        let b = body.unwrap_or(Json::Null);
        // Firecracker opens these itself (a jailed one inside its chroot).
        let files: &[(&str, &str)] = match (method.as_str(), path.as_str()) {
            ("PUT", "/boot-source") => {
                &[("kernel_image_path", "kernel"), ("initrd_path", "initrd")]
            }
            ("PUT", p) if p.starts_with("/drives/") => &[("path_on_host", "drive")],
            _ => &[],
        };
        for (field, what) in files {
            let host = self.host_path(&b[*field], what, &mut errs);
            if !host.is_file() {
                errs.push(format!("{what} {} is not there to open", b[*field]));
            }
        }
        if !errs.is_empty() {
            return self.refuse(errs);
        }
        let faults = &self.host.behaviour.faults;
        if let Some((_, _, msg)) = faults.iter().find(|(m, p, _)| *m == method && *p == path) {
            return fault(msg.clone());
        }
        let mut vm = self.state.lock().unwrap();
        match (method.as_str(), path.as_str()) {
            ("GET", "/") => {
                let info = json!({
                    "app_name": "Firecracker",
                    "id": "anonymous-instance",
                    "state": vm.state,
                    "vmm_version": "1.17.0-dev",
                });
                let errs = definition_errors(&self.host.spec, "InstanceInfo", &info);
                assert!(errs.is_empty(), "the fake's own answer: {errs:?}");
                return answer(StatusCode::OK, Some(info));
            }
            ("PUT", "/vsock") => {
                let mut errs = Vec::new();
                let uds = self.host_path(&b["uds_path"], "vsock uds_path", &mut errs);
                if !errs.is_empty() {
                    return self.refuse(errs);
                }
                vm.uds = Some(uds.clone());
                serve_vsock(self.clone(), &uds);
            }
            ("PUT", "/actions") => match b["action_type"].as_str() {
                Some("InstanceStart") if vm.state != "Not started" => {
                    return fault(
                        "The requested operation is not supported after starting the microVM.",
                    )
                }
                Some("InstanceStart") => {
                    vm.state = "Running";
                    if let (true, Some(uds)) = (self.host.behaviour.announce_ready, &vm.uds) {
                        let mut ready = uds.clone().into_os_string();
                        ready.push("_1025");
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let _ = UnixStream::connect(PathBuf::from(ready)).await;
                        });
                    }
                }
                Some("SendCtrlAltDel") => {
                    // The guest reboots and Firecracker exits: end the stand-in process.
                    if let Some(pid) = self.host.pid(&self.place.id) {
                        // SAFETY: kill(2) on the pid of the stand-in process this test started.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                }
                _ => {}
            },
            ("PATCH", "/vm") => match (b["state"].as_str(), vm.state) {
                (Some("Paused"), "Running") => vm.state = "Paused",
                (Some("Resumed"), "Paused") => vm.state = "Running",
                (want, now) => return fault(format!("cannot move from {now} to {want:?}")),
            },
            ("PUT", p) if p.starts_with("/drives/") => {
                vm.drives
                    .push(b["path_on_host"].as_str().unwrap().to_string());
            }
            ("PUT", "/snapshot/create") => {
                if vm.state != "Paused" {
                    return fault("Cannot create a snapshot: the microVM is not paused");
                }
                if let Err(errs) = self.create_snapshot(&b, &vm) {
                    return self.refuse(errs);
                }
            }
            ("PUT", "/snapshot/load") => {
                if !first_call {
                    return fault("Loading a microVM snapshot not allowed after configuring boot-specific resources.");
                }
                let uds = match self.load_snapshot(&b) {
                    Ok(Ok(uds)) => uds,
                    Ok(Err(msg)) => return fault(msg),
                    Err(errs) => return self.refuse(errs),
                };
                vm.uds = Some(uds.clone());
                serve_vsock(self.clone(), &uds);
                vm.state = if b["resume_vm"] == json!(true) {
                    "Running"
                } else {
                    "Paused"
                };
            }
            _ => {}
        }
        answer(StatusCode::NO_CONTENT, None)
    }

    /// Writes the snapshot's state and memory files, as the jail uid for a
    /// jailed Firecracker (who must be able to write where they go).
    fn create_snapshot(&self, b: &Json, vm: &VmState) -> Result<(), Vec<String>> {
        let id = &self.place.id;
        let memory = match self.host.behaviour.memory_bytes {
            Some(n) => {
                let mut memory = vec![0u8; n];
                getrandom::getrandom(&mut memory).unwrap();
                memory
            }
            None => format!("fake memory of {id}").into_bytes(),
        };
        let jail = self.jail_ids();
        let mut errs = Vec::new();
        for (field, bytes) in [
            ("snapshot_path", fake_vmstate(id, &vm.drives).into_bytes()),
            ("mem_file_path", memory),
        ] {
            let host = self.host_path(&b[field], field, &mut errs);
            if let Some((uid, _)) = jail {
                let parent = host.parent().unwrap();
                match std::fs::metadata(parent) {
                    Ok(m) if m.uid() == uid && m.mode() & 0o200 != 0 => {}
                    Ok(m) => errs.push(format!(
                        "{field}: the jail uid {uid} cannot write in {} (owner {}, mode {:o})",
                        parent.display(),
                        m.uid(),
                        m.mode()
                    )),
                    Err(e) => errs.push(format!("{field}: {}: {e}", parent.display())),
                }
            }
            if !errs.is_empty() {
                continue;
            }
            let victim = self.host.symlink_memory.lock().unwrap().clone();
            if let (Some(victim), "mem_file_path") = (victim, field) {
                std::os::unix::fs::symlink(victim, &host).unwrap();
                continue;
            }
            if let Err(e) = std::fs::write(&host, bytes) {
                errs.push(format!("{field}: writing {}: {e}", host.display()));
                continue;
            }
            if let Some((uid, gid)) = jail {
                std::os::unix::fs::chown(&host, Some(uid), Some(gid)).unwrap();
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// Checks a snapshot load: the files there (readable by a jailed
    /// Firecracker's uid), the drives the state file names there again, a
    /// vsock socket of the clone's own. The host path of that socket, a
    /// fault (a memory file of the wrong size), or violations.
    fn load_snapshot(&self, b: &Json) -> Result<Result<PathBuf, String>, Vec<String>> {
        let mut errs = Vec::new();
        let state = self.host_path(&b["snapshot_path"], "snapshot_path", &mut errs);
        let memory = self.host_path(
            &b["mem_backend"]["backend_path"],
            "mem_backend.backend_path",
            &mut errs,
        );
        let jail = self.jail_ids();
        for f in [&state, &memory] {
            match (std::fs::metadata(f), jail) {
                (Ok(m), Some((uid, gid))) if m.is_file() && !readable_by(&m, uid, gid) => {
                    errs.push(format!(
                        "{} cannot be read by the jail uid {uid}/gid {gid} (owner {}:{}, mode {:o})",
                        f.display(),
                        m.uid(),
                        m.gid(),
                        m.mode()
                    ))
                }
                (Ok(m), _) if m.is_file() => {}
                (Ok(_), _) => errs.push(format!("{} is not a file", f.display())),
                (Err(e), _) => errs.push(format!("{} is not there: {e}", f.display())),
            }
        }
        // The restored VM opens its drives again, by the paths recorded.
        if errs.is_empty() {
            let recorded: Json = std::fs::read_to_string(&state)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            match recorded["drives"].as_array() {
                None => errs.push(format!(
                    "{} is not a state file the fake wrote",
                    state.display()
                )),
                Some(drives) => {
                    for d in drives {
                        let host = self.host_path(d, "drive", &mut errs);
                        if !host.is_file() {
                            errs.push(format!("drive {d} of the snapshot is not there"));
                        }
                    }
                }
            }
        }
        if b["vsock_override"]["uds_path"].as_str().is_none() {
            errs.push(format!(
                "{}: snapshot load without vsock_override: clones need their own vsock socket",
                self.place.id
            ));
        }
        let uds = self.host_path(
            &b["vsock_override"]["uds_path"],
            "vsock_override.uds_path",
            &mut errs,
        );
        if !errs.is_empty() {
            return Err(errs);
        }
        // Firecracker maps the file as guest memory: a file of the wrong
        // size cannot be loaded.
        if let Some(n) = self.host.behaviour.memory_bytes {
            let len = std::fs::metadata(&memory).map(|m| m.len()).unwrap_or(0);
            if len != n as u64 {
                return Ok(Err(format!(
                    "memory file {} has {len} bytes, the snapshot needs {n}",
                    memory.display()
                )));
            }
        }
        Ok(Ok(uds))
    }
}
