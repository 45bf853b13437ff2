//! The Firecracker backend against Firecracker's own API description.
//!
//! Firecracker cannot run on the development machines, so these tests drive
//! the real client code (`start_firecracker_in`, snapshots, stop) against a
//! fake Firecracker: a hyper server on the API unix socket that checks every
//! request against the repository's description of Firecracker's API
//! (`tests/data/firecracker-api.json`, taken from its OpenAPI document),
//! answers as the API describes (204, or 400 with `fault_message`), and
//! records the calls in order. The "firecracker" process is a shell script
//! that sleeps, so process start, pid recording, kill and cleanup are real.

mod fc_support;
use fc_support::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ironclaw_orchestrator::vm::backend::{Hypervisor, LaunchPurpose, LiveCopy, VmInstance};
use ironclaw_orchestrator::vm::firecracker::{
    self, api, FirecrackerBackend, FirecrackerOptions, SnapshotFiles, Stopped, MEMORY_FILE,
    VMSTATE_FILE,
};
use ironclaw_orchestrator::vm::runtime::RuntimeDir;
use ironclaw_orchestrator::vm::{VmConfig, VmError};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

// ---- the fake Firecracker -------------------------------------------------

/// Starts a fake Firecracker (`fc_support::FakeFirecracker`) that binds
/// `<root>/<id>/firecracker.sock` as soon as the VM's runtime directory
/// appears, answering `faults` (method, path, message) with 400.
fn fake_firecracker(
    spec: &Arc<Spec>,
    root: &Path,
    id: &str,
    faults: &[(&str, &str, &str)],
) -> Arc<FakeFirecracker> {
    let fake = FakeFirecracker::new(spec.clone(), Behaviour::with_faults(faults));
    let place = Place::unjailed(root, id);
    fake.serve_once_there(place.records.join("owner"), place, "no runtime dir");
    fake
}

// ---- fixtures ---------------------------------------------------------------

struct Fixture {
    tmp: tempfile::TempDir,
    root: PathBuf,
    opts: FirecrackerOptions,
    spec: Arc<Spec>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = short_tempdir("icfc-");
        let root = tmp.path().join("run");
        // Stands in for the firecracker binary: a process that lives until killed.
        let bin = tmp.path().join("firecracker");
        std::fs::write(&bin, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in ["vmlinuz", "initrd.cpio", "rootfs.ext4"] {
            std::fs::write(tmp.path().join(f), b"x").unwrap();
        }
        Fixture {
            opts: FirecrackerOptions {
                binary: bin,
                seccomp_filter: None,
                jailer: None,
            },
            root,
            spec: spec(),
            tmp,
        }
    }

    fn config(&self, id: &str, rootfs: bool) -> VmConfig {
        let mut c = VmConfig::new(
            id,
            self.tmp.path().join("vmlinuz"),
            self.tmp.path().join("initrd.cpio"),
        );
        c.vcpus = 2;
        c.memory_mib = 512;
        c.vsock.guest_cid = 7;
        if rootfs {
            c.rootfs = Some(self.tmp.path().join("rootfs.ext4"));
        }
        c
    }
}

fn alive(pid: i32) -> bool {
    ironclaw_orchestrator::vm::process::alive(pid)
}

// ---- tests ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_follows_the_api_description() {
    let fx = Fixture::new();
    let config = fx.config("proto", true);
    let fake = fake_firecracker(&fx.spec, &fx.root, "proto", &[]);

    let mut vm = firecracker::start_firecracker_in(&fx.opts, &config, &fx.root)
        .await
        .expect("start_firecracker");
    let dir = vm.runtime_dir().to_path_buf();
    assert_eq!(dir, fx.root.join("proto"));
    assert_eq!(vm.describe().await.unwrap().state, "Running");
    // The agent's channel is Firecracker's hybrid vsock socket, spoken by the existing Vsock.
    let vsock = vm.vsock();
    assert_eq!(vsock.uds_path, dir.join("vsock.sock"));
    assert_eq!(vsock.port, ironclaw_protocol::AGENT_VSOCK_PORT);
    vsock.connect().await.expect("vsock handshake with the VM");

    vm.pause().await.unwrap();
    assert_eq!(vm.describe().await.unwrap().state, "Paused");
    let snap_dir = fx.tmp.path().join("snap");
    std::fs::create_dir(&snap_dir).unwrap();
    let files = SnapshotFiles {
        state: snap_dir.join("vm.state"),
        memory: snap_dir.join("vm.mem"),
    };
    vm.create_snapshot(&files).await.unwrap();
    vm.resume().await.unwrap();

    // A clone from the snapshot, in a fresh process with its own vsock socket.
    let clone_fake = fake_firecracker(&fx.spec, &fx.root, "clone-1", &[]);
    let clone_config = VmConfig {
        id: "clone-1".into(),
        ..config.clone()
    };
    let mut clone =
        firecracker::restore_firecracker_in(&fx.opts, &clone_config, &fx.root, &files, false)
            .await
            .expect("restoring the snapshot");
    assert_eq!(clone.describe().await.unwrap().state, "Paused");
    clone.resume().await.unwrap();
    let clone_vsock = clone.vsock();
    assert_eq!(clone_vsock.uds_path, fx.root.join("clone-1/vsock.sock"));
    clone_vsock
        .connect()
        .await
        .expect("vsock handshake with the clone");

    // Stop: Ctrl-Alt-Del ends the (fake) Firecracker within the bound.
    let pid = vm.pid() as i32;
    let stopped = vm.stop(Duration::from_secs(5)).await;
    assert!(matches!(stopped, Stopped::Exited(_)), "{stopped:?}");
    assert!(!alive(pid));
    let clone_pid = clone.pid() as i32;
    assert!(matches!(
        clone.stop(Duration::from_secs(5)).await,
        Stopped::Exited(_)
    ));
    drop(vm);
    drop(clone);
    assert!(!alive(clone_pid));
    assert!(!dir.exists(), "runtime dir left behind");
    assert!(
        !fx.root.join("clone-1").exists(),
        "clone runtime dir left behind"
    );

    fake.assert_clean();
    clone_fake.assert_clean();
    assert_eq!(
        fake.keys(),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /vsock",
            "PUT /actions InstanceStart",
            "GET /",
            "PATCH /vm Paused",
            "GET /",
            "PUT /snapshot/create",
            "PATCH /vm Resumed",
            "PUT /actions SendCtrlAltDel",
        ]
    );
    assert_eq!(
        clone_fake.keys(),
        [
            "PUT /snapshot/load",
            "GET /",
            "PATCH /vm Resumed",
            "PUT /actions SendCtrlAltDel",
        ]
    );

    // What was sent, field by field.
    assert_eq!(
        fake.body("PUT", "/machine-config"),
        json!({"vcpu_count": 2, "mem_size_mib": 512, "smt": false, "track_dirty_pages": false})
    );
    let boot = fake.body("PUT", "/boot-source");
    assert_eq!(
        boot["kernel_image_path"],
        json!(fx.tmp.path().join("vmlinuz"))
    );
    assert_eq!(
        boot["initrd_path"],
        json!(fx.tmp.path().join("initrd.cpio"))
    );
    // With a rootfs, the guest is told to boot into it (issue 6).
    let args = boot["boot_args"].as_str().unwrap();
    assert!(
        args.ends_with(" ironclaw.rootfs=/dev/vda ironclaw.overlay_mib=128"),
        "{args}"
    );
    for want in [
        "console=ttyS0",
        "rdinit=/init",
        "reboot=k",
        "panic=1",
        "pci=off",
    ] {
        assert!(args.split_whitespace().any(|w| w == want), "{want}: {args}");
    }
    assert_eq!(
        fake.body("PUT", "/drives/rootfs"),
        json!({"drive_id": "rootfs", "path_on_host": fx.tmp.path().join("rootfs.ext4"),
               "is_root_device": false, "is_read_only": true})
    );
    assert_eq!(
        fake.body("PUT", "/vsock"),
        json!({"guest_cid": 7, "uds_path": dir.join("vsock.sock")})
    );
    assert_eq!(
        fake.body("PUT", "/snapshot/create"),
        json!({"snapshot_type": "Full", "snapshot_path": files.state, "mem_file_path": files.memory})
    );
    assert_eq!(
        clone_fake.body("PUT", "/snapshot/load"),
        json!({
            "snapshot_path": files.state,
            "mem_backend": {"backend_type": "File", "backend_path": files.memory},
            "resume_vm": false,
            "vsock_override": {"uds_path": fx.root.join("clone-1/vsock.sock")},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_message_is_surfaced_and_nothing_is_left() {
    let fx = Fixture::new();
    let config = fx.config("bad-kernel", false);
    let msg =
        "Invalid kernel path: Cannot open kernel image: No such file or directory (os error 2)";
    let fake = fake_firecracker(
        &fx.spec,
        &fx.root,
        "bad-kernel",
        &[("PUT", "/boot-source", msg)],
    );

    let err = firecracker::start_firecracker_in(&fx.opts, &config, &fx.root)
        .await
        .expect_err("the fake refuses the boot source");
    assert_eq!(err.fault_message(), Some(msg));
    let text = err.to_string();
    assert!(text.contains(msg), "{text}");
    assert!(text.contains("PUT /boot-source"), "{text}");
    assert!(text.contains("400"), "{text}");

    // The process was killed and the runtime directory removed.
    let pid = fake.pid("bad-kernel").expect("pid recorded by the VM");
    assert!(!alive(pid), "firecracker (pid {pid}) still running");
    assert!(!fx.root.join("bad-kernel").exists());
    fake.assert_clean();
    // Configuration stops at the first refusal; no drive call without a rootfs.
    assert_eq!(fake.keys(), ["PUT /machine-config", "PUT /boot-source"]);

    // Through the VmError the rest of the code sees, the message survives too.
    let vm_err: VmError = err.into();
    assert!(vm_err.to_string().contains(msg), "{vm_err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_trait_launches_without_rootfs_and_kills() {
    let fx = Fixture::new();
    let config = fx.config("via-trait", false);
    let fake = fake_firecracker(&fx.spec, &fx.root, "via-trait", &[]);
    let backend = FirecrackerBackend {
        options: fx.opts.clone(),
    };
    let dir = RuntimeDir::create(&fx.root, "via-trait").unwrap();
    let mut inst = backend
        .launch(&config, &dir, LaunchPurpose::Run)
        .await
        .expect("launch");
    let pids = inst.pids();
    assert_eq!(pids.len(), 1);
    assert!(inst.exited().is_none());
    assert_eq!(inst.console_log(), dir.file("console.log"));
    inst.channel().open().await.expect("agent channel");
    inst.kill();
    assert!(inst.exited().is_some());
    assert!(!alive(pids[0] as i32));
    drop(inst);
    drop(dir);
    assert!(!fx.root.join("via-trait").exists());
    fake.assert_clean();
    assert_eq!(
        fake.keys(),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /vsock",
            "PUT /actions InstanceStart",
        ]
    );
}

/// The calls that launch a VM with a rootfs, as the backend trait does.
const LAUNCH_CALLS: [&str; 5] = [
    "PUT /machine-config",
    "PUT /boot-source",
    "PUT /drives/rootfs",
    "PUT /vsock",
    "PUT /actions InstanceStart",
];

/// A VM launched for snapshots through the backend trait (as prototypes and
/// sandboxes are), against a fake answering `faults` with 400; its runtime
/// directory, and an empty directory for a snapshot.
async fn launched_for_snapshots(
    fx: &Fixture,
    id: &str,
    faults: &[(&str, &str, &str)],
) -> (
    Arc<FakeFirecracker>,
    RuntimeDir,
    Box<dyn VmInstance>,
    PathBuf,
) {
    let fake = fake_firecracker(&fx.spec, &fx.root, id, faults);
    let backend = FirecrackerBackend {
        options: fx.opts.clone(),
    };
    let dir = RuntimeDir::create(&fx.root, id).unwrap();
    let inst = backend
        .launch(&fx.config(id, true), &dir, LaunchPurpose::Snapshot)
        .await
        .expect("launch");
    assert_eq!(fake.keys(), LAUNCH_CALLS);
    let out = fx.tmp.path().join(format!("{id}-snapshot"));
    std::fs::create_dir(&out).unwrap();
    (fake, dir, inst, out)
}

/// File names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A live snapshot (`VmInstance::snapshot_live`, what snapshots, forks and
/// pauses of running sandboxes use): `PATCH /vm` Paused, a full
/// `PUT /snapshot/create` into the two files the trait returns, `PATCH /vm`
/// Resumed, in that order; the VM runs on and can be snapshotted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_snapshot_pauses_snapshots_and_resumes() {
    let fx = Fixture::new();
    let (fake, dir, mut inst, out) = launched_for_snapshots(&fx, "live", &[]).await;

    let names = inst
        .snapshot_live(&out, LiveCopy::Precopy)
        .await
        .expect("live snapshot")
        .files;
    // Main file first, as the trait says; they are the files Firecracker
    // was asked to write, and all that is there.
    assert_eq!(names, [VMSTATE_FILE, MEMORY_FILE]);
    assert_eq!(
        fake.keys()[LAUNCH_CALLS.len()..],
        [
            "PATCH /vm Paused",
            "PUT /snapshot/create",
            "PATCH /vm Resumed"
        ]
    );
    assert_eq!(
        fake.body("PUT", "/snapshot/create"),
        json!({"snapshot_type": "Full", "snapshot_path": out.join(VMSTATE_FILE),
               "mem_file_path": out.join(MEMORY_FILE)})
    );
    let mut want = names.clone();
    want.sort();
    assert_eq!(names_in(&out), want);
    assert!(std::fs::read_to_string(out.join(VMSTATE_FILE))
        .unwrap()
        .contains("\"fake vmstate of\":\"live\""));
    assert_eq!(
        std::fs::read_to_string(out.join(MEMORY_FILE)).unwrap(),
        "fake memory of live"
    );

    // Running: the agent answers (the fake refuses a connection to a paused
    // guest), and a second live snapshot goes the same way.
    inst.channel()
        .open()
        .await
        .expect("agent channel after the snapshot");
    let again = fx.tmp.path().join("live-snapshot-2");
    std::fs::create_dir(&again).unwrap();
    assert_eq!(
        inst.snapshot_live(&again, LiveCopy::Paused)
            .await
            .expect("second live snapshot")
            .files,
        [VMSTATE_FILE, MEMORY_FILE]
    );
    assert_eq!(
        fake.keys()[LAUNCH_CALLS.len() + 3..],
        [
            "PATCH /vm Paused",
            "PUT /snapshot/create",
            "PATCH /vm Resumed"
        ]
    );

    inst.kill();
    drop(inst);
    drop(dir);
    assert!(!fx.root.join("live").exists());
    fake.assert_clean();
}

/// When Firecracker refuses `PUT /snapshot/create`, the live snapshot fails
/// with its `fault_message` and the VM is resumed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_live_snapshot_resumes_the_vm() {
    let fx = Fixture::new();
    let msg = "Cannot save the microVM state: No space left on device (os error 28)";
    let (fake, dir, mut inst, out) =
        launched_for_snapshots(&fx, "live-full", &[("PUT", "/snapshot/create", msg)]).await;

    let err = inst
        .snapshot_live(&out, LiveCopy::Precopy)
        .await
        .expect_err("the fake refuses the snapshot");
    let text = err.to_string();
    assert!(text.contains(msg), "{text}");
    assert_eq!(
        fake.keys()[LAUNCH_CALLS.len()..],
        [
            "PATCH /vm Paused",
            "PUT /snapshot/create",
            "PATCH /vm Resumed"
        ]
    );
    // The refused request was a valid full snapshot into the trait's files.
    assert_eq!(
        fake.body("PUT", "/snapshot/create"),
        json!({"snapshot_type": "Full", "snapshot_path": out.join(VMSTATE_FILE),
               "mem_file_path": out.join(MEMORY_FILE)})
    );
    inst.channel()
        .open()
        .await
        .expect("agent channel after the failed snapshot");

    inst.kill();
    drop(inst);
    drop(dir);
    fake.assert_clean();
}

#[tokio::test]
async fn refused_config_starts_nothing() {
    let fx = Fixture::new();
    let mut config = fx.config("netted", false);
    config.enable_networking = true;
    let err = firecracker::start_firecracker_in(&fx.opts, &config, &fx.root)
        .await
        .expect_err("networking is refused");
    assert!(err.to_string().contains("enable_networking"), "{err}");
    assert!(!fx.root.join("netted").exists());
}

#[tokio::test]
async fn exiting_firecracker_is_reported_with_its_log() {
    let fx = Fixture::new();
    let bin = fx.tmp.path().join("failing-firecracker");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'Error: /dev/kvm: No such file' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = FirecrackerOptions {
        binary: bin,
        ..fx.opts.clone()
    };
    let err = firecracker::start_firecracker_in(&opts, &fx.config("early", false), &fx.root)
        .await
        .expect_err("the process exits");
    let text = err.to_string();
    assert!(text.contains("exited"), "{text}");
    assert!(text.contains("/dev/kvm"), "{text}");
    assert!(!fx.root.join("early").exists());
}

/// Every field the typed bodies can carry (all optional ones set) exists in
/// the API description with the right type; the lifecycle test covers the
/// fields actually sent.
#[test]
fn every_body_field_is_in_the_api_description() {
    let spec = spec();
    let bodies: Vec<(&str, Json)> = vec![
        (
            "MachineConfiguration",
            json!(api::MachineConfiguration {
                vcpu_count: 32,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: true,
            }),
        ),
        (
            "BootSource",
            json!(api::BootSource {
                kernel_image_path: "/k".into(),
                initrd_path: Some("/i".into()),
                boot_args: Some(ironclaw_orchestrator::vm::cmdline::firecracker(
                    &VmConfig::new("a", "/k", "/i"),
                )),
            }),
        ),
        (
            "Drive",
            json!(api::Drive::new("rootfs", "/r", false, true).unwrap()),
        ),
        (
            "Vsock",
            json!(api::Vsock {
                guest_cid: 3,
                uds_path: "/v.sock".into(),
            }),
        ),
        (
            "InstanceActionInfo",
            json!(api::InstanceActionInfo {
                action_type: api::ActionType::SendCtrlAltDel,
            }),
        ),
        (
            "Vm",
            json!(api::Vm {
                state: api::VmState::Paused,
            }),
        ),
        (
            "SnapshotCreateParams",
            json!(api::SnapshotCreateParams {
                snapshot_type: api::SnapshotType::Diff,
                snapshot_path: "/s".into(),
                mem_file_path: "/m".into(),
            }),
        ),
        (
            "SnapshotLoadParams",
            json!(api::SnapshotLoadParams {
                snapshot_path: "/s".into(),
                mem_backend: api::MemoryBackend {
                    backend_type: api::MemoryBackendType::Uffd,
                    backend_path: "/uffd.sock".into(),
                },
                track_dirty_pages: Some(true),
                resume_vm: true,
                vsock_override: Some(api::VsockOverride {
                    uds_path: "/v2.sock".into(),
                }),
            }),
        ),
    ];
    for (def, body) in &bodies {
        let errs = definition_errors(&spec, def, body);
        assert!(errs.is_empty(), "{def}: {errs:?}");
    }
    // The checker itself catches what it must.
    let errs = definition_errors(&spec, "Vsock", &json!({"guest_cid": 2, "uds": "/x"}));
    assert_eq!(errs.len(), 3, "{errs:?}"); // below minimum, uds_path missing, unknown `uds`
    let errs = definition_errors(&spec, "Vm", &json!({"state": "Stopped"}));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(!check_request(&spec, "PUT", "/no-such-thing", None).is_empty());
    assert!(!check_request(&spec, "PUT", "/vsock", None).is_empty());
    assert!(check_request(
        &spec,
        "PUT",
        "/drives/rootfs",
        Some(&json!({"drive_id": "rootfs", "is_root_device": false}))
    )
    .is_empty());
}

// ---- the committed description against Firecracker's own document ---------

/// Firecracker's own OpenAPI document, where it is available:
/// `$IRONCLAW_FIRECRACKER_SPEC`, else `../shared/spec/firecracker-swagger.yaml`
/// beside the repository. `Err` says why there is none.
fn openapi_document() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("IRONCLAW_FIRECRACKER_SPEC") {
        // Asked for explicitly: a wrong path is an error, not a skip.
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "$IRONCLAW_FIRECRACKER_SPEC={} is not a file",
            p.display()
        );
        return Ok(p);
    }
    let beside =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/firecracker-swagger.yaml");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(format!(
        "$IRONCLAW_FIRECRACKER_SPEC is unset and {} does not exist (set $IRONCLAW_FIRECRACKER_SPEC to Firecracker's src/firecracker/swagger/firecracker.yaml to run it)",
        beside.display()
    ))
}

/// The definition a Swagger `$ref` names.
fn ref_name(v: &Yaml) -> Option<&str> {
    v.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
}

/// `responses` of a Swagger operation are keyed by integers or strings.
fn response(op: &Yaml, status: u64) -> Option<&Yaml> {
    op.get("responses")?
        .as_mapping()?
        .iter()
        .find(|(k, _)| k.as_u64() == Some(status) || k.as_str() == Some(&status.to_string()))
        .map(|(_, v)| v)
}

fn str_set(v: Option<&Yaml>) -> std::collections::BTreeSet<String> {
    v.and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

/// Every way the committed description (`ours`) differs from Firecracker's
/// OpenAPI document (`theirs`, Swagger 2.0): each path, method, body and
/// answer definition, path parameter, field, type, required list, enum
/// value and numeric range of ours must be there, the same.
fn drift(ours: &Json, theirs: &Yaml) -> Vec<String> {
    let mut errs = Vec::new();
    for (path, ops) in ours["operations"].as_object().expect("operations") {
        let Some(their_ops) = theirs["paths"].get(path.as_str()) else {
            errs.push(format!("path {path} is not in Firecracker's document"));
            continue;
        };
        for (method, op) in ops.as_object().expect("methods") {
            let at = format!("{method} {path}");
            let Some(top) = their_ops.get(method.to_ascii_lowercase().as_str()) else {
                errs.push(format!("{at}: no such method in Firecracker's document"));
                continue;
            };
            let params: Vec<&Yaml> = top
                .get("parameters")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
                .collect();
            let body = params.iter().find(|p| p["in"].as_str() == Some("body"));
            match (op["body"].as_str(), body) {
                (Some(def), Some(p)) => {
                    if ref_name(&p["schema"]) != Some(def) {
                        errs.push(format!(
                            "{at}: body is {def} here, {:?} there",
                            ref_name(&p["schema"])
                        ));
                    }
                    let theirs_required = p["required"].as_bool().unwrap_or(false);
                    let ours_required = op["body_required"].as_bool().unwrap_or(false);
                    if theirs_required != ours_required {
                        errs.push(format!(
                            "{at}: body_required is {ours_required} here, {theirs_required} there"
                        ));
                    }
                }
                (Some(def), None) => errs.push(format!("{at}: takes no body there, {def} here")),
                (None, Some(_)) => errs.push(format!("{at}: takes a body there, none here")),
                (None, None) => {}
            }
            let ours_params: std::collections::BTreeMap<String, String> = op["path_parameters"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let their_params: std::collections::BTreeMap<String, String> = params
                .iter()
                .filter(|p| p["in"].as_str() == Some("path"))
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["type"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            if ours_params != their_params {
                errs.push(format!(
                    "{at}: path parameters {ours_params:?} here, {their_params:?} there"
                ));
            }
            if let Some(def) = op["answer"].as_str() {
                let theirs = response(top, 200).and_then(|r| ref_name(&r["schema"]));
                if theirs != Some(def) {
                    errs.push(format!("{at}: answers {def} here, {theirs:?} there"));
                }
            }
        }
    }
    for (name, def) in ours["definitions"].as_object().expect("definitions") {
        let Some(their) = theirs["definitions"].get(name.as_str()) else {
            errs.push(format!(
                "definition {name} is not in Firecracker's document"
            ));
            continue;
        };
        let ours_required: std::collections::BTreeSet<String> = def["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect();
        let their_required = str_set(their.get("required"));
        if ours_required != their_required {
            errs.push(format!(
                "{name}: required {ours_required:?} here, {their_required:?} there"
            ));
        }
        for (field, f) in def["properties"].as_object().expect("properties") {
            let at = format!("{name}.{field}");
            let Some(tf) = their.get("properties").and_then(|p| p.get(field.as_str())) else {
                errs.push(format!("{at} is not in Firecracker's document"));
                continue;
            };
            if let Some(d) = f["definition"].as_str() {
                if ref_name(tf) != Some(d) {
                    errs.push(format!("{at}: {d} here, {:?} there", ref_name(tf)));
                }
                continue;
            }
            let their_type = tf.get("type").and_then(Yaml::as_str);
            if f["type"].as_str() != their_type {
                errs.push(format!(
                    "{at}: type {} here, {their_type:?} there",
                    f["type"]
                ));
            }
            let their_enum = tf.get("enum").map(|e| str_set(Some(e)));
            match (f["enum"].as_array(), &their_enum) {
                (Some(values), Some(theirs)) => {
                    for v in values {
                        if !v.as_str().is_some_and(|v| theirs.contains(v)) {
                            errs.push(format!("{at}: enum value {v} is not one of {theirs:?}"));
                        }
                    }
                }
                (Some(_), None) => errs.push(format!("{at}: an enum here, none there")),
                (None, Some(theirs)) => {
                    errs.push(format!("{at}: enum {theirs:?} there, not described here"))
                }
                (None, None) => {}
            }
            for bound in ["minimum", "maximum"] {
                let theirs = tf.get(bound).and_then(Yaml::as_i64);
                if f[bound].as_i64() != theirs {
                    errs.push(format!("{at}: {bound} {} here, {theirs:?} there", f[bound]));
                }
            }
        }
    }
    errs
}

/// Drift between tests/data/firecracker-api.json and the Firecracker
/// version it was taken from is caught where Firecracker's document is
/// available; elsewhere the test says, past the harness's capture, that it
/// was skipped and why.
#[test]
fn api_description_agrees_with_firecrackers_openapi_document() {
    let path = match openapi_document() {
        Ok(p) => p,
        Err(reason) => {
            visible(&format!(
                "skipped: api_description_agrees_with_firecrackers_openapi_document: {reason}"
            ));
            return;
        }
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("Firecracker's OpenAPI document {}: {e}", path.display()));
    let theirs: Yaml = serde_yaml::from_str(&text).expect("parsing Firecracker's OpenAPI document");
    let ours = spec();
    let errs = drift(&ours, &theirs);
    assert!(
        errs.is_empty(),
        "{API_DESCRIPTION} differs from {} (Firecracker {}):\n{}",
        path.display(),
        theirs["info"]["version"].as_str().unwrap_or("?"),
        errs.join("\n")
    );
    // The note in the description names the version it was taken from.
    assert_eq!(
        ours["firecracker_version"].as_str(),
        theirs["info"]["version"].as_str(),
        "update `firecracker_version` (and `source`) of {API_DESCRIPTION}"
    );
}

/// The drift check itself flags each kind of difference (runs everywhere,
/// on a small document written here).
#[test]
fn drift_check_flags_every_kind_of_difference() {
    let theirs: Yaml = serde_yaml::from_str(
        r##"
paths:
  /drives/{drive_id}:
    put:
      parameters:
        - { name: drive_id, in: path, required: true, type: string }
        - { name: body, in: body, required: true, schema: { $ref: "#/definitions/Drive" } }
      responses:
        204: { description: ok }
  /:
    get:
      responses:
        200: { schema: { $ref: "#/definitions/Info" } }
definitions:
  Drive:
    type: object
    required: [drive_id]
    properties:
      drive_id: { type: string }
      count: { type: integer, minimum: 1, maximum: 32 }
      mode: { type: string, enum: [A, B, C] }
      sub: { $ref: "#/definitions/Info" }
  Info:
    type: object
    properties:
      state: { type: string }
"##,
    )
    .unwrap();
    let ours = json!({
        "operations": {
            "/drives/{drive_id}": {"PUT": {"path_parameters": {"drive_id": "string"}, "body": "Drive", "body_required": true}},
            "/": {"GET": {"answer": "Info"}}
        },
        "definitions": {
            "Drive": {"required": ["drive_id"], "properties": {
                "drive_id": {"type": "string"},
                "count": {"type": "integer", "minimum": 1, "maximum": 32},
                "mode": {"type": "string", "enum": ["A", "C"]},
                "sub": {"definition": "Info"}
            }},
            "Info": {"required": [], "properties": {"state": {"type": "string"}}}
        }
    });
    assert_eq!(drift(&ours, &theirs), Vec::<String>::new());
    let changes: &[(&str, Json, &str)] = &[
        (
            "/operations/~1vsock",
            json!({"PUT": {"body": "Drive"}}),
            "path /vsock",
        ),
        (
            "/operations/~1drives~1{drive_id}/PATCH",
            json!({"body": "Drive"}),
            "no such method",
        ),
        (
            "/operations/~1drives~1{drive_id}/PUT/body_required",
            json!(false),
            "body_required",
        ),
        (
            "/operations/~1drives~1{drive_id}/PUT/body",
            json!("Info"),
            "body is Info",
        ),
        (
            "/operations/~1drives~1{drive_id}/PUT/path_parameters/drive_id",
            json!("integer"),
            "path parameters",
        ),
        ("/operations/~1/GET/answer", json!("Drive"), "answers Drive"),
        (
            "/definitions/Gone",
            json!({"required": [], "properties": {}}),
            "Gone is not",
        ),
        (
            "/definitions/Drive/required",
            json!(["drive_id", "count"]),
            "required",
        ),
        (
            "/definitions/Drive/properties/extra",
            json!({"type": "string"}),
            "Drive.extra is not",
        ),
        (
            "/definitions/Drive/properties/count/type",
            json!("string"),
            "type \"string\"",
        ),
        (
            "/definitions/Drive/properties/count/maximum",
            json!(64),
            "maximum 64",
        ),
        (
            "/definitions/Drive/properties/mode/enum",
            json!(["A", "D"]),
            "enum value \"D\"",
        ),
        (
            "/definitions/Drive/properties/drive_id/enum",
            json!(["x"]),
            "an enum here",
        ),
        (
            "/definitions/Drive/properties/sub",
            json!({"definition": "Drive"}),
            "Drive.sub",
        ),
    ];
    for (pointer, value, want) in changes {
        let mut changed = ours.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let key = key.replace("~1", "/");
        changed
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{parent}"))
            .as_object_mut()
            .unwrap()
            .insert(key, value.clone());
        let errs = drift(&changed, &theirs);
        assert!(
            errs.len() == 1 && errs[0].contains(want),
            "{pointer} = {value}: expected one difference mentioning {want:?}, got {errs:?}"
        );
    }
    // An enum there that the description leaves out is flagged too.
    let mut changed = ours.clone();
    changed["definitions"]["Drive"]["properties"]["mode"] = json!({"type": "string"});
    assert_eq!(drift(&changed, &theirs).len(), 1);
}
