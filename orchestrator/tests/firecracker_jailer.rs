//! Firecracker launched through its `jailer`, against a fake jailer.
//!
//! Neither Firecracker nor its jailer can run on the development machines.
//! The fake jailer here is a shell script that does, for the parts the
//! orchestrator relies on, what the jailer documents (docs/jailer.md of
//! Firecracker): it parses and records its argv, refuses `--no-seccomp`,
//! expects the chroot `<base>/<exec name>/<id>/root` prepared by the caller,
//! copies the exec file into it, creates the cgroups `<controller
//! mount>/<parent cgroup>/<id>` with the `--cgroup` values and joins them,
//! checks the `--netns` path, and execs the "firecracker" (a sleeping
//! script), keeping its pid. A hyper server bound at the chroot's
//! `/run/firecracker.socket` plays Firecracker's API: it checks every request
//! against `firecracker-swagger.yaml` (parsed at test time) and that the
//! files named in requests exist *inside the chroot*.
//!
//! The namespace and cgroup steps are real and need root; without it the
//! tests that launch print `skipped:` and pass.

mod fc_support;
use fc_support::*;

use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ironclaw_orchestrator::vm::backend::Hypervisor;
use ironclaw_orchestrator::vm::firecracker::{
    self, jailer, FirecrackerBackend, FirecrackerError, FirecrackerOptions, JailerConfig,
    SnapshotFiles, Stopped,
};
use ironclaw_orchestrator::vm::runtime::{self, RuntimeDir};
use ironclaw_orchestrator::vm::VmConfig;
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

// ---- the fake jailer --------------------------------------------------------

/// Does what the jailer documents, for the parts the orchestrator relies on.
/// `$FAKE_DIR` (baked in) receives `argv` (one argument a line) and `netns`
/// (what the `--netns` path links to).
const FAKE_JAILER: &str = r#"#!/bin/sh
set -u
out=@OUT@
printf '%s\n' "$@" > "$out/argv.tmp"
id= exec_file= base=/srv/jailer netns= version=1 parent=
cgroups=
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2 ;;
    --exec-file) exec_file=$2; shift 2 ;;
    --uid|--gid) shift 2 ;;
    --chroot-base-dir) base=$2; shift 2 ;;
    --netns) netns=$2; shift 2 ;;
    --cgroup-version) version=$2; shift 2 ;;
    --parent-cgroup) parent=$2; shift 2 ;;
    --cgroup) cgroups="$cgroups
$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "fake jailer: unknown argument $1" >&2; exit 2 ;;
  esac
done
for a in "$@"; do
  [ "$a" = --no-seccomp ] && { echo "fake jailer: --no-seccomp" >&2; exit 3; }
done
case "$(basename "$exec_file")" in *firecracker*) ;; *) echo "bad exec file" >&2; exit 4 ;; esac
root="$base/$(basename "$exec_file")/$id/root"
[ -d "$root/run" ] || { echo "fake jailer: $root/run missing" >&2; exit 5; }
cp "$exec_file" "$root/$(basename "$exec_file")" || exit 6
readlink "$netns" > "$out/netns" || { echo "fake jailer: netns $netns" >&2; exit 7; }
if command -v nsenter >/dev/null && command -v ip >/dev/null; then
  nsenter --net="$netns" ip -o link > "$out/links" || exit 7
fi
[ "$version" = 1 ] || { echo "fake jailer: only v1 here" >&2; exit 8; }
echo "$cgroups" | while IFS= read -r c; do
  [ -n "$c" ] || continue
  file=${c%%=*}; value=${c#*=}; controller=${file%%.*}
  mount=$(awk -v c="$controller" '$3 == "cgroup" { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] == c) { print $2; exit } }' /proc/mounts)
  [ -n "$mount" ] || { echo "fake jailer: no $controller mount" >&2; exit 9; }
  dir="$mount/$parent/$id"
  mkdir -p "$dir" && echo "$value" > "$dir/$file" && echo $$ > "$dir/tasks" || exit 10
  echo "$dir" >> "$out/cgroups"
done || exit 11
mv "$out/argv.tmp" "$out/argv"
exec "$root/$(basename "$exec_file")" --id="$id" "$@"
"#;

// ---- the fake Firecracker API -------------------------------------------------

#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    body: Option<Json>,
}

impl Call {
    fn key(&self) -> String {
        let action = self
            .body
            .as_ref()
            .and_then(|b| b.get("action_type").or_else(|| b.get("state")))
            .and_then(Json::as_str)
            .map(|a| format!(" {a}"))
            .unwrap_or_default();
        format!("{} {}{action}", self.method, self.path)
    }
}

#[derive(Default)]
struct Recorded {
    calls: Vec<Call>,
    violations: Vec<String>,
    state: &'static str,
    pid: Option<i32>,
}

struct Fake {
    spec: Arc<Yaml>,
    /// The VM's runtime directory (pids).
    dir: PathBuf,
    /// The chroot: paths in requests are relative to it.
    chroot: PathBuf,
    rec: Mutex<Recorded>,
}

fn serve_vsock(path: &Path) {
    let listener = UnixListener::bind(path).expect("binding the fake vsock socket");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                if s.read_line(&mut line).await.is_ok() && line.starts_with("CONNECT ") {
                    let _ = s.get_mut().write_all(b"OK 1073741824\n").await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    });
}

impl Fake {
    /// A path as the jailed Firecracker opens it: it must be absolute (seen
    /// from the chroot's `/`) and exist in the chroot.
    fn in_chroot(&self, p: &Json, what: &str, errs: &mut Vec<String>) -> PathBuf {
        let p = p.as_str().unwrap_or_default();
        if !p.starts_with('/') {
            errs.push(format!(
                "{what} {p:?} is not an absolute path in the chroot"
            ));
        }
        self.chroot.join(p.trim_start_matches('/'))
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
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
        let mut rec = self.rec.lock().unwrap();
        if rec.pid.is_none() {
            rec.pid = std::fs::read_to_string(self.dir.join("pids"))
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok());
        }
        rec.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
        });
        let mut errs = check_request(&self.spec, &method, &path, body.as_ref());
        let b = body.unwrap_or(Json::Null);
        // Firecracker opens these itself, inside its chroot.
        let files: &[(&str, &str)] = match (method.as_str(), path.as_str()) {
            ("PUT", "/boot-source") => {
                &[("kernel_image_path", "kernel"), ("initrd_path", "initrd")]
            }
            ("PUT", p) if p.starts_with("/drives/") => &[("path_on_host", "drive")],
            _ => &[],
        };
        for (field, what) in files {
            let host = self.in_chroot(&b[*field], what, &mut errs);
            if !host.is_file() {
                errs.push(format!("{what} {} is not in the chroot", b[*field]));
            }
        }
        if !errs.is_empty() {
            rec.violations.extend(errs.iter().cloned());
            return fault(errs.join("; "));
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/") => {
                let info = json!({
                    "app_name": "Firecracker",
                    "id": "anonymous-instance",
                    "state": rec.state,
                    "vmm_version": "1.17.0-dev",
                });
                let errs = definition_errors(&self.spec, "InstanceInfo", &info);
                assert!(errs.is_empty(), "the fake's own answer: {errs:?}");
                return answer(StatusCode::OK, Some(info));
            }
            ("PUT", "/vsock") => {
                let mut errs = Vec::new();
                let host = self.in_chroot(&b["uds_path"], "vsock uds_path", &mut errs);
                if !errs.is_empty() {
                    rec.violations.extend(errs.iter().cloned());
                    return fault(errs.join("; "));
                }
                serve_vsock(&host);
            }
            ("PUT", "/actions") => match b["action_type"].as_str() {
                Some("InstanceStart") if rec.state != "Not started" => {
                    return fault(
                        "The requested operation is not supported after starting the microVM.",
                    )
                }
                Some("InstanceStart") => rec.state = "Running",
                Some("SendCtrlAltDel") => {
                    if let Some(pid) = rec.pid {
                        // SAFETY: kill(2) on the pid of the stand-in process this test started.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                }
                _ => {}
            },
            ("PATCH", "/vm") => match (b["state"].as_str(), rec.state) {
                (Some("Paused"), "Running") => rec.state = "Paused",
                (Some("Resumed"), "Paused") => rec.state = "Running",
                _ => return fault(format!("cannot move from {} to {}", rec.state, b["state"])),
            },
            _ => {}
        }
        answer(StatusCode::NO_CONTENT, None)
    }
}

// ---- fixtures -------------------------------------------------------------------

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Fixture {
    tmp: TempDir,
    /// Runtime root.
    root: PathBuf,
    /// Chroot base.
    base: PathBuf,
    /// Where the fake jailer records.
    out: PathBuf,
    opts: FirecrackerOptions,
    spec: Arc<Yaml>,
}

impl Fixture {
    fn new(jailer_script: Option<&str>) -> Fixture {
        let tmp = TempDir::new("icjl");
        let out = tmp.0.join("out");
        std::fs::create_dir(&out).unwrap();
        let fc = tmp.0.join("firecracker");
        // The "firecracker" the jailer execs: a process that lives until killed.
        write_exec(&fc, "#!/bin/sh\nexec sleep 600\n");
        let jailer = tmp.0.join("jailer");
        let script = jailer_script
            .unwrap_or(FAKE_JAILER)
            .replace("@OUT@", &out.to_string_lossy());
        write_exec(&jailer, &script);
        for f in ["vmlinuz", "initrd.cpio", "rootfs.ext4"] {
            std::fs::write(tmp.0.join(f), f).unwrap();
        }
        let base = tmp.0.join("jail");
        Fixture {
            opts: FirecrackerOptions {
                binary: fc,
                seccomp_filter: None,
                jailer: Some(JailerConfig {
                    binary: jailer,
                    chroot_base: base.clone(),
                    uid: Some(4242),
                    gid: Some(4343),
                    cgroup_version: None,
                }),
            },
            root: tmp.0.join("run"),
            base,
            out,
            spec: spec(),
            tmp,
        }
    }

    fn config(&self, id: &str, rootfs: bool) -> VmConfig {
        let mut c = VmConfig::new(
            id,
            self.tmp.0.join("vmlinuz"),
            self.tmp.0.join("initrd.cpio"),
        );
        c.vcpus = 2;
        c.memory_mib = 512;
        c.vsock.guest_cid = 7;
        if rootfs {
            c.rootfs = Some(self.tmp.0.join("rootfs.ext4"));
        }
        c
    }

    fn jail_dir(&self, id: &str) -> PathBuf {
        self.base.join("firecracker").join(id)
    }

    fn chroot(&self, id: &str) -> PathBuf {
        self.jail_dir(id).join("root")
    }

    /// The fake Firecracker API: binds the chroot's API socket once the
    /// (fake) jailer has run.
    fn fake_api(&self, id: &str) -> Arc<Fake> {
        let fake = Arc::new(Fake {
            spec: self.spec.clone(),
            dir: self.root.join(id),
            chroot: self.chroot(id),
            rec: Mutex::new(Recorded {
                state: "Not started",
                ..Default::default()
            }),
        });
        let server = fake.clone();
        let argv = self.out.join("argv");
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !argv.exists() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the jailer never ran"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let socket = server.chroot.join("run/firecracker.socket");
            let listener = UnixListener::bind(&socket).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    fn argv(&self) -> Vec<String> {
        std::fs::read_to_string(self.out.join("argv"))
            .expect("the jailer's argv")
            .lines()
            .map(String::from)
            .collect()
    }

    /// The cgroup directories the fake jailer made, in order, each once
    /// (it records one per `--cgroup`; cpu has two files).
    fn cgroups_made(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for l in std::fs::read_to_string(self.out.join("cgroups"))
            .unwrap_or_default()
            .lines()
        {
            if !dirs.iter().any(|d| d == Path::new(l)) {
                dirs.push(l.into());
            }
        }
        dirs
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The jail steps (network namespace, cgroups, chown) need root.
fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    visible(&format!(
        "skipped: {test}: the jailer needs root (namespaces, cgroups, chown)"
    ));
    true
}

fn alive(pid: i32) -> bool {
    ironclaw_orchestrator::vm::process::alive(pid)
}

fn keys(fake: &Fake) -> Vec<String> {
    fake.rec
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(Call::key)
        .collect()
}

fn body_of(fake: &Fake, method: &str, path: &str) -> Json {
    fake.rec
        .lock()
        .unwrap()
        .calls
        .iter()
        .find(|c| c.method == method && c.path == path)
        .and_then(|c| c.body.clone())
        .unwrap_or_else(|| panic!("no {method} {path} call"))
}

fn assert_clean(fake: &Fake) {
    let rec = fake.rec.lock().unwrap();
    assert!(
        rec.violations.is_empty(),
        "violations: {:#?}",
        rec.violations
    );
    for c in &rec.calls {
        assert!(
            !c.path.contains("network-interfaces"),
            "a network interface was configured: {c:?}"
        );
    }
}

/// The cgroup version the launch is expected to pick on this host.
fn host_cgroup_version() -> &'static str {
    match ironclaw_orchestrator::vm::cgroup::Layout::detect().map(|l| l.version) {
        Ok(ironclaw_orchestrator::vm::cgroup::Version::V2) => "2",
        _ => "1",
    }
}

/// The jailer's argv expected for `config` (the `--netns` value is checked apart).
fn expected_argv(fx: &Fixture, config: &VmConfig, uid: u32, gid: u32, netns: &str) -> Vec<String> {
    let l = config.limits();
    let mem = u64::from(l.memory_mib) << 20;
    let quota = u64::from(l.cpu_millis) * 100;
    let mut a: Vec<String> = vec![
        "--id".into(),
        config.id.clone(),
        "--exec-file".into(),
        fx.opts.binary.to_string_lossy().into(),
        "--uid".into(),
        uid.to_string(),
        "--gid".into(),
        gid.to_string(),
        "--chroot-base-dir".into(),
        fx.base.to_string_lossy().into(),
        "--cgroup-version".into(),
        host_cgroup_version().into(),
        "--parent-cgroup".into(),
        "ironclaw".into(),
    ];
    let cg: Vec<String> = if host_cgroup_version() == "1" {
        vec![
            format!("memory.limit_in_bytes={mem}"),
            "cpu.cfs_period_us=100000".into(),
            format!("cpu.cfs_quota_us={quota}"),
            format!("pids.max={}", l.pids),
        ]
    } else {
        vec![
            format!("memory.max={mem}"),
            format!("cpu.max={quota} 100000"),
            format!("pids.max={}", l.pids),
        ]
    };
    for c in cg {
        a.push("--cgroup".into());
        a.push(c);
    }
    a.extend(
        [
            "--netns",
            netns,
            "--",
            "--api-sock",
            "/run/firecracker.socket",
            "--log-path",
            "/firecracker.log",
        ]
        .map(String::from),
    );
    a
}

fn own_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn assert_nothing_left(fx: &Fixture, id: &str, cgroups: &[PathBuf]) {
    assert!(
        !fx.jail_dir(id).exists(),
        "chroot {} left",
        fx.jail_dir(id).display()
    );
    assert!(!fx.root.join(id).exists(), "runtime dir left");
    for cg in cgroups {
        assert!(!cg.exists(), "cgroup {} left", cg.display());
    }
}

// ---- tests ------------------------------------------------------------------------

/// `start_firecracker` with the jailer configured through the environment:
/// argv, chroot-relative paths, files in the chroot, lifecycle, cleanup.
/// The only test here that sets environment variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_firecracker_through_the_jailer_from_the_environment() {
    if skip_unless_root("start_firecracker_through_the_jailer_from_the_environment") {
        return;
    }
    let fx = Fixture::new(None);
    let jailer_config = fx.opts.jailer.clone().unwrap();
    std::env::set_var("IRONCLAW_FIRECRACKER", &fx.opts.binary);
    std::env::set_var("IRONCLAW_FIRECRACKER_JAILER", &jailer_config.binary);
    std::env::set_var("IRONCLAW_JAILER_CHROOT_BASE", &fx.base);
    std::env::set_var("IRONCLAW_JAILER_UID", "4242");
    std::env::set_var("IRONCLAW_JAILER_GID", "4343");
    std::env::set_var("IRONCLAW_RUNTIME_DIR", &fx.root);
    assert_eq!(FirecrackerOptions::from_env().unwrap(), fx.opts);

    let id = "jailed-1";
    let config = fx.config(id, true);
    let fake = fx.fake_api(id);
    let mut vm = firecracker::start_firecracker(&config)
        .await
        .expect("start_firecracker through the jailer");
    let chroot = fx.chroot(id);

    // The jailer's command line, exactly.
    let argv = fx.argv();
    let netns = &argv[argv.iter().position(|a| a == "--netns").unwrap() + 1];
    assert!(
        netns.starts_with(&format!("/proc/{}/fd/", std::process::id())),
        "{netns}"
    );
    assert_eq!(argv, expected_argv(&fx, &config, 4242, 4343, netns));
    assert!(!argv.iter().any(|a| a.contains("no-seccomp")), "{argv:?}");
    // An empty network namespace of its own.
    let ns = std::fs::read_to_string(fx.out.join("netns")).unwrap();
    assert!(ns.starts_with("net:["), "{ns}");
    assert_ne!(ns.trim(), own_netns());
    // Holding only a `lo` that is down (where nsenter and ip exist to look).
    if let Ok(links) = std::fs::read_to_string(fx.out.join("links")) {
        let links: Vec<&str> = links.lines().collect();
        assert_eq!(links.len(), 1, "{links:?}");
        assert!(
            links[0].contains(" lo:") && links[0].contains("state DOWN"),
            "{links:?}"
        );
    } else {
        visible("note: nsenter/ip missing, the namespace's interfaces were not listed");
    }
    // The process the orchestrator holds is the "firecracker" the jailer
    // exec'd (same pid), in the cgroups the jailer made.
    let cgroups = fx.cgroups_made();
    assert_eq!(cgroups.len(), 3, "{cgroups:?}");
    for cg in &cgroups {
        assert!(cg.ends_with(format!("ironclaw/{id}")), "{}", cg.display());
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|p| p == vm.pid().to_string()), "{procs}");
    }
    assert_eq!(
        vm.jail().unwrap().cgroup_dirs(),
        &cgroups[..],
        "the orchestrator knows the jailer's cgroups"
    );

    // Files in the chroot, readable by the jail uid, named by their path in it.
    for (f, src) in [
        ("vmlinux", "vmlinuz"),
        ("initrd", "initrd.cpio"),
        ("rootfs", "rootfs.ext4"),
    ] {
        assert_eq!(
            std::fs::read_to_string(chroot.join(f)).unwrap(),
            src,
            "{f} in the chroot"
        );
    }
    for (f, owner) in [("run", 4242), ("firecracker.log", 4242)] {
        assert_eq!(
            std::fs::metadata(chroot.join(f)).unwrap().uid(),
            owner,
            "{f}"
        );
    }
    let boot = body_of(&fake, "PUT", "/boot-source");
    assert_eq!(boot["kernel_image_path"], json!("/vmlinux"));
    assert_eq!(boot["initrd_path"], json!("/initrd"));
    assert_eq!(
        body_of(&fake, "PUT", "/drives/rootfs"),
        json!({"drive_id": "rootfs", "path_on_host": "/rootfs",
               "is_root_device": false, "is_read_only": true})
    );
    assert_eq!(
        body_of(&fake, "PUT", "/vsock"),
        json!({"guest_cid": 7, "uds_path": "/vsock.sock"})
    );
    // The host side of the vsock is the socket in the chroot; the agent's
    // ready socket there belongs to the jail uid, who must connect to it.
    let vsock = vm.vsock();
    assert_eq!(vsock.uds_path, chroot.join("vsock.sock"));
    vsock
        .connect()
        .await
        .expect("vsock handshake through the chroot");
    let ready = vsock.guest_initiated_path(ironclaw_protocol::AGENT_READY_PORT);
    assert_eq!(std::fs::metadata(&ready).unwrap().uid(), 4242);

    assert_eq!(vm.describe().await.unwrap().state, "Running");
    vm.pause().await.unwrap();
    // Snapshots of a jailed VM are refused with a clear error, not sent with
    // host paths the jailed process cannot see.
    let err = vm
        .create_snapshot(&SnapshotFiles {
            state: fx.tmp.0.join("s"),
            memory: fx.tmp.0.join("m"),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not implemented"), "{err}");
    vm.resume().await.unwrap();

    let pid = vm.pid() as i32;
    let stopped = vm.stop(Duration::from_secs(5)).await;
    assert!(matches!(stopped, Stopped::Exited(_)), "{stopped:?}");
    assert!(!alive(pid));
    drop(vm);
    assert_nothing_left(&fx, id, &cgroups);

    assert_clean(&fake);
    assert_eq!(
        keys(&fake),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /vsock",
            "PUT /actions InstanceStart",
            "GET /",
            "PATCH /vm Paused",
            "PATCH /vm Resumed",
            "PUT /actions SendCtrlAltDel",
        ]
    );
    // Fail closed: as root, without a jailer, Firecracker is refused unless
    // the operator opts out explicitly.
    std::env::remove_var("IRONCLAW_FIRECRACKER_JAILER");
    let err = FirecrackerOptions::from_env().unwrap_err();
    assert!(
        matches!(err, firecracker::FirecrackerError::UnjailedAsRoot),
        "{err}"
    );
    assert!(
        err.to_string().contains("IRONCLAW_FIRECRACKER_JAILER"),
        "{err}"
    );
    std::env::set_var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED", "1");
    assert!(FirecrackerOptions::from_env().unwrap().jailer.is_none());
    std::env::remove_var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED");
    for var in [
        "IRONCLAW_FIRECRACKER",
        "IRONCLAW_FIRECRACKER_JAILER",
        "IRONCLAW_JAILER_CHROOT_BASE",
        "IRONCLAW_JAILER_UID",
        "IRONCLAW_JAILER_GID",
        "IRONCLAW_RUNTIME_DIR",
    ] {
        std::env::remove_var(var);
    }
}

/// The `Hypervisor` trait path, uid/gid derived per VM as the QEMU jail does;
/// `kill` (what destroy does) leaves no process, chroot or cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_trait_launches_jailed_and_destroy_leaves_nothing() {
    if skip_unless_root("backend_trait_launches_jailed_and_destroy_leaves_nothing") {
        return;
    }
    let mut fx = Fixture::new(None);
    if let Some(j) = fx.opts.jailer.as_mut() {
        j.uid = None;
        j.gid = None;
    }
    let id = "via-trait";
    let config = fx.config(id, false);
    let fake = fx.fake_api(id);
    let backend = FirecrackerBackend {
        options: fx.opts.clone(),
    };
    let dir = RuntimeDir::create(&fx.root, id).unwrap();
    let mut inst = backend.launch(&config, &dir).await.expect("launch");
    let (uid, gid) = ironclaw_orchestrator::vm::jail::vm_ids(dir.path(), None);
    let argv = fx.argv();
    let netns = argv[argv.iter().position(|a| a == "--netns").unwrap() + 1].clone();
    assert_eq!(argv, expected_argv(&fx, &config, uid, gid, &netns));
    inst.channel().open().await.expect("agent channel");
    let pids = inst.pids();
    let cgroups = fx.cgroups_made();
    assert!(!cgroups.is_empty());
    inst.kill();
    assert!(inst.exited().is_some());
    assert!(!alive(pids[0] as i32));
    // kill removes the jail at once; the runtime dir goes with its owner.
    assert!(!fx.jail_dir(id).exists(), "chroot left after kill");
    drop(inst);
    drop(dir);
    assert_nothing_left(&fx, id, &cgroups);
    assert_clean(&fake);
    assert_eq!(
        keys(&fake),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /vsock",
            "PUT /actions InstanceStart",
        ]
    );
}

/// A jailer that fails (as the real one does without /dev/kvm, say) fails
/// the launch with an error naming the step, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_jailer_fails_the_launch_and_leaves_nothing() {
    if skip_unless_root("failing_jailer_fails_the_launch_and_leaves_nothing") {
        return;
    }
    let fx = Fixture::new(Some(
        "#!/bin/sh\necho 'Failed to create /dev/kvm via mknod inside the jail' >&2\nexit 1\n",
    ));
    let id = "jail-fails";
    let err = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, true), &fx.root)
        .await
        .expect_err("the jailer exits");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            FirecrackerError::Jailer(jailer::JailerError::Exited { .. })
        ),
        "{text}"
    );
    assert!(text.contains("running the jailer"), "{text}");
    assert!(text.contains("mknod"), "{text}");
    assert_nothing_left(&fx, id, &[]);
}

/// A configured jailer that does not exist stops the launch before anything
/// is created; it never falls back to an unjailed Firecracker.
#[tokio::test]
async fn missing_jailer_fails_before_anything_starts() {
    let mut fx = Fixture::new(None);
    let missing = fx.tmp.0.join("no-such-jailer");
    fx.opts.jailer.as_mut().unwrap().binary = missing.clone();
    let id = "no-jailer";
    let err = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, false), &fx.root)
        .await
        .expect_err("no jailer");
    let text = err.to_string();
    assert!(text.contains(&*missing.to_string_lossy()), "{text}");
    assert!(text.contains("checking the jailer"), "{text}");
    assert!(!fx.root.join(id).exists());
    assert!(!fx.base.exists(), "nothing under the chroot base");
    assert!(!fx.out.join("argv.tmp").exists(), "nothing was run");

    // The trait path too (its runtime directory is the caller's).
    let dir = RuntimeDir::create(&fx.root, id).unwrap();
    let backend = FirecrackerBackend {
        options: fx.opts.clone(),
    };
    let err = backend
        .launch(&fx.config(id, false), &dir)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("no-such-jailer"), "{err}");
    assert!(!fx.base.exists());
    assert!(!dir.file("pids").exists(), "no process was started");
}

/// Ids the jailer would refuse are refused before it runs.
#[tokio::test]
async fn id_the_jailer_refuses_is_refused_up_front() {
    let fx = Fixture::new(None);
    let err =
        firecracker::start_firecracker_in(&fx.opts, &fx.config("under_score", false), &fx.root)
            .await
            .expect_err("`_` is not a jailer id");
    assert!(err.to_string().contains("checking the VM id"), "{err}");
    assert!(!fx.base.join("firecracker/under_score").exists());
    assert!(!fx.root.join("under_score").exists());
}

/// After an orchestrator crash (runtime dir owned by a dead process), reaping
/// kills the jailed Firecracker and removes its chroot and cgroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaping_removes_a_dead_orchestrators_jail() {
    if skip_unless_root("reaping_removes_a_dead_orchestrators_jail") {
        return;
    }
    let fx = Fixture::new(None);
    let id = "orphan";
    let _fake = fx.fake_api(id);
    let vm = firecracker::start_firecracker_in(&fx.opts, &fx.config(id, false), &fx.root)
        .await
        .expect("launch");
    let pid = vm.pid() as i32;
    let cgroups = fx.cgroups_made();
    // Pretend the orchestrator died: forget the VM (nothing is cleaned up)
    // and mark its runtime dir as owned by a process that is gone.
    std::mem::forget(vm);
    std::fs::write(fx.root.join(id).join("owner"), "999999999 1\n").unwrap();
    let reaped = runtime::reap_stale(&fx.root);
    assert_eq!(reaped, [id.to_string()]);
    // The killed process is our (forgotten) child: collect it.
    let mut status = 0;
    // SAFETY: waitpid on a child of this process.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(!alive(pid));
    assert_eq!(cgroups.len(), 3, "{cgroups:?}");
    assert_nothing_left(&fx, id, &cgroups);
}
