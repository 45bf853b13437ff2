//! Snapshots, forks, pause and resume of live sandboxes, end to end: the
//! real `ironclaw serve`, real VMs (QEMU, TCG here), requests over its real
//! unix socket.

mod cli_support;
mod service_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use service_support::{snapshot_dir, Server};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A shell loop that outlives its command (a held sandbox keeps it): it
/// writes an increasing count to /work/count every 0.2 s.
const COUNTER: &str = "(i=0; while true; do i=$((i+1)); echo $i > /work/count; sleep 0.2; done) \
                       >/dev/null 2>&1 &";

async fn create(server: &Server, body: Value) -> Value {
    let (status, sb) = server.call("POST", "/v1/sandboxes", Some(body)).await;
    assert_eq!(status, 201, "{sb}");
    sb
}

/// The id of a sandbox created with `body`.
async fn create_id(server: &Server, body: Value) -> String {
    create(server, body).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn sh(server: &Server, id: &str, cmd: &str) -> String {
    let (status, out) = server
        .call(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({ "cmd": cmd })),
        )
        .await;
    assert_eq!(status, 200, "{cmd}: {out}");
    assert_eq!(out["exit_code"], 0, "{cmd}: {out}");
    out["stdout"].as_str().unwrap().trim().to_string()
}

/// The counter now, and again a second later: it must have gone on.
async fn counter_runs(server: &Server, id: &str) -> (u64, u64) {
    let read = |s: String| s.parse::<u64>().unwrap_or_else(|_| panic!("count {s:?}"));
    let a = read(sh(server, id, "cat /work/count").await);
    let b = read(sh(server, id, "sleep 1; cat /work/count").await);
    assert!(b > a, "the counter in {id} stopped: {a} then {b}");
    (a, b)
}

async fn snapshot(server: &Server, id: &str, body: Value) -> Value {
    let (status, snap) = server
        .call("POST", &format!("/v1/sandboxes/{id}/snapshots"), Some(body))
        .await;
    assert_eq!(status, 201, "{snap}");
    snap
}

/// VM directories in the service's runtime root (records excluded).
fn vm_dirs(server: &Server) -> Vec<String> {
    std::fs::read_dir(&server.root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn forks_carry_files_and_processes_and_share_nothing_after() {
    let server = Server::start("snap-forks", false, &["--pool-size", "1"]);
    rt().block_on(async {
        let src = create_id(&server, json!({})).await;
        sh(&server, &src, &format!("echo state > /work/s; {COUNTER}")).await;
        counter_runs(&server, &src).await;

        let snap = snapshot(&server, &src, json!({ "name": "after-setup" })).await;
        assert!(snap["bytes"].as_u64().unwrap() > 0, "{snap}");
        assert!(snap["pause_ms"].as_u64().unwrap() > 0, "{snap}");
        assert_eq!(snap["source_sandbox"], src.as_str());
        // The source ran on.
        counter_runs(&server, &src).await;

        // By id and by name.
        let a = create(&server, json!({ "from_snapshot": snap["id"] })).await;
        let b = create(&server, json!({ "from_snapshot": "after-setup" })).await;
        assert_eq!(a["from_snapshot"], snap["id"]);
        let (a, b) = (
            a["id"].as_str().unwrap().to_string(),
            b["id"].as_str().unwrap().to_string(),
        );
        assert_ne!(a, b);
        for fork in [&a, &b] {
            assert_eq!(sh(&server, fork, "cat /work/s").await, "state");
            counter_runs(&server, fork).await;
            // The current time, not the snapshot's.
            let t: u64 = sh(&server, fork, "date +%s").await.parse().unwrap();
            assert!(t.abs_diff(now_secs()) <= 5, "{fork} thinks it is {t}");
        }
        // A snapshot with its RAM in the file (QEMU with mapped-ram, as the
        // set-up installs) is mapped by both forks, not copied into them.
        let file = snapshot_file(&snapshot_dir(&server.root).join(snap["id"].as_str().unwrap()));
        if file.ends_with("snapshot.mapped-ram") {
            assert_eq!(
                processes_mapping(&file),
                2,
                "forks mapping {}",
                file.display()
            );
        }
        // Fresh entropy in each.
        let random = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
        assert_ne!(sh(&server, &a, random).await, sh(&server, &b, random).await);

        // A change in one is seen nowhere else.
        sh(&server, &a, "echo mine > /work/a; echo changed > /work/s").await;
        for other in [&b, &src] {
            assert_eq!(sh(&server, other, "cat /work/s").await, "state");
            assert_eq!(
                sh(&server, other, "test -e /work/a && echo yes || echo no").await,
                "no"
            );
        }

        // Fork: a snapshot and two sandboxes in one call.
        let (status, forked) = server
            .call(
                "POST",
                &format!("/v1/sandboxes/{src}/fork"),
                Some(json!({ "count": 2 })),
            )
            .await;
        assert_eq!(status, 201, "{forked}");
        let made = forked["sandboxes"].as_array().unwrap();
        assert_eq!(made.len(), 2);
        for sb in made {
            let id = sb["id"].as_str().unwrap();
            assert_eq!(sh(&server, id, "cat /work/s").await, "state");
            counter_runs(&server, id).await;
        }

        let (_, list) = server.call("GET", "/v1/snapshots", None).await;
        assert_eq!(list["snapshots"].as_array().unwrap().len(), 2, "{list}");
        // Removing a snapshot leaves the sandboxes made from it.
        let (status, _) = server
            .call("DELETE", "/v1/snapshots/after-setup", None)
            .await;
        assert_eq!(status, 204);
        assert_eq!(sh(&server, &a, "cat /work/a").await, "mine");
        let (status, err) = server
            .call(
                "POST",
                "/v1/sandboxes",
                Some(json!({ "from_snapshot": "after-setup" })),
            )
            .await;
        assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
        // What a snapshot takes from the snapshot is not asked for again.
        let (status, err) = server
            .call(
                "POST",
                "/v1/sandboxes",
                Some(json!({ "from_snapshot": forked["snapshot"]["id"], "memory_mib": 512 })),
            )
            .await;
        assert_eq!(status, 400, "{err}");
        assert!(err["message"].as_str().unwrap().contains("memory_mib"));
    });
}

/// A guest program that keeps changing its memory and checks it: 16 384
/// pages, each holding the number of passes made over it; a pass checks
/// every page before writing the next number into it, and records a page
/// that does not hold what the last pass wrote in /work/bad. A snapshot
/// that lost a page written while the guest ran (pre-copy) leaves such a
/// page in the VMs restored from it.
const MEMORY_WRITER: &str = r#"
import os
n = 16384
buf = bytearray(n * 4096)
v = 0
while True:
    for i in range(n):
        o = i * 4096
        have = int.from_bytes(buf[o:o + 8], "little")
        if have != v:
            with open("/work/bad", "a") as f:
                f.write(f"page {i}: {have} after pass {v}\n")
        buf[o:o + 8] = (v + 1).to_bytes(8, "little")
    v += 1
    with open("/work/passes.tmp", "w") as f:
        f.write(str(v))
    os.rename("/work/passes.tmp", "/work/passes")
"#;

/// Passes [`MEMORY_WRITER`] has completed in `id`, once it has at least `min` (60 s at most).
async fn passes_at_least(server: &Server, id: &str, min: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: u64 = sh(server, id, "cat /work/passes 2>/dev/null || echo 0")
            .await
            .parse()
            .unwrap();
        if done >= min {
            return done;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id}: {done} passes of the memory writer, waited for {min}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A snapshot is taken while the guest runs (memory copied while it
/// changes, then the rest with the guest paused): a guest changing its
/// memory all the while is found consistent in a sandbox made from the
/// snapshot, and in the source, which runs on.
#[test]
fn a_snapshot_of_a_guest_changing_its_memory_is_consistent() {
    let server = Server::start("snap-precopy", false, &["--pool-size", "1"]);
    rt().block_on(async {
        let src = create_id(&server, json!({})).await;
        let put = format!(
            "cat > /work/writer.py <<'EOF'\n{MEMORY_WRITER}\nEOF\n\
             nohup python3 /work/writer.py >/work/writer.log 2>&1 &"
        );
        sh(&server, &src, &put).await;
        passes_at_least(&server, &src, 2).await;

        let snap = snapshot(&server, &src, json!({})).await;
        let at_snapshot = passes_at_least(&server, &src, 0).await;
        let fork = create_id(&server, json!({ "from_snapshot": snap["id"] })).await;
        // Every page checked at least twice after the restore.
        passes_at_least(&server, &fork, at_snapshot + 2).await;
        passes_at_least(&server, &src, at_snapshot + 2).await;
        for id in [&fork, &src] {
            assert_eq!(
                sh(
                    &server,
                    id,
                    "cat /work/bad 2>/dev/null; cat /work/writer.log"
                )
                .await,
                "",
                "{id}: the memory writer found pages it did not write"
            );
        }
    });
}

#[test]
fn pause_frees_the_vm_and_resume_continues() {
    let server = Server::start("snap-pause", false, &["--pool-size", "1"]);
    rt().block_on(async {
        let sb = create(&server, json!({ "labels": { "k": "v" } })).await;
        let id = sb["id"].as_str().unwrap().to_string();
        let vm_id = sb["vm_id"].as_str().unwrap().to_string();
        sh(&server, &id, &format!("echo kept > /work/f; {COUNTER}")).await;
        let (_, before) = counter_runs(&server, &id).await;
        let pids = vm_pids(&server.root.join(&vm_id));
        assert!(!pids.is_empty(), "no pids recorded for {vm_id}");

        let (status, paused) = server
            .call("POST", &format!("/v1/sandboxes/{id}/pause"), None)
            .await;
        assert_eq!(status, 200, "{paused}");
        assert_eq!(paused["state"], "paused");
        assert!(paused["paused_bytes"].as_u64().unwrap() > 0);
        // Its VM is gone: processes and runtime directory.
        for pid in &pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "VM process {pid} still runs while paused"
            );
        }
        assert!(!server.root.join(&vm_id).exists());
        let (_, list) = server.call("GET", "/v1/sandboxes", None).await;
        let listed = list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id.as_str())
            .cloned()
            .expect("a paused sandbox is listed");
        assert_eq!(listed["state"], "paused");
        assert_eq!(listed["labels"]["k"], "v");
        let (status, err) = server
            .call(
                "POST",
                &format!("/v1/sandboxes/{id}/exec"),
                Some(json!({ "cmd": "true" })),
            )
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (409, Some("sandbox_paused"))
        );
        let (status, _) = server
            .call("POST", &format!("/v1/sandboxes/{id}/pause"), None)
            .await;
        assert_eq!(status, 409);

        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, resumed) = server
            .call("POST", &format!("/v1/sandboxes/{id}/resume"), None)
            .await;
        assert_eq!(status, 200, "{resumed}");
        assert_eq!(resumed["state"], "running");
        assert_eq!(resumed["id"], id.as_str());
        assert_eq!(resumed["labels"]["k"], "v");
        assert_eq!(sh(&server, &id, "cat /work/f").await, "kept");
        let (after, _) = counter_runs(&server, &id).await;
        assert!(
            after > before,
            "the counter went back: {before} then {after}"
        );
        // Its snapshot was used up: nothing of it is left on disk.
        let (_, snaps) = server.call("GET", "/v1/snapshots", None).await;
        assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 0);
        assert_eq!(stored(&snapshot_dir(&server.root)).len(), 0);
        let (status, _) = server
            .call("POST", &format!("/v1/sandboxes/{id}/resume"), None)
            .await;
        assert_eq!(status, 409, "resuming a running sandbox");
    });
}

/// Paused sandboxes are files plus metadata: they survive the service
/// stopping, and being killed outright (the running ones do not: their VMs
/// die with it and the next start removes what they left).
#[test]
fn a_paused_sandbox_survives_a_service_restart_and_a_kill() {
    let mut server = Server::start("snap-restart", false, &["--pool-size", "0"]);
    let root = server.root.clone();
    let id = rt().block_on(async {
        let id = create_id(&server, json!({ "env": { "WHO": "me" } })).await;
        sh(&server, &id, "echo before-restart > /work/f").await;
        let (status, paused) = server
            .call("POST", &format!("/v1/sandboxes/{id}/pause"), None)
            .await;
        assert_eq!(status, 200, "{paused}");
        id
    });
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let mut server = Server::start_in(root.clone(), false, &["--pool-size", "0"]);
    let running = rt().block_on(async {
        let (status, info) = server
            .call("GET", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["state"], "paused");
        let (status, resumed) = server
            .call("POST", &format!("/v1/sandboxes/{id}/resume"), None)
            .await;
        assert_eq!(status, 200, "{resumed}");
        assert_eq!(
            sh(&server, &id, "cat /work/f; echo $WHO").await,
            "before-restart\nme"
        );
        // Paused again, beside one that runs, then the service is killed.
        sh(&server, &id, "echo before-kill >> /work/f").await;
        let (status, _) = server
            .call("POST", &format!("/v1/sandboxes/{id}/pause"), None)
            .await;
        assert_eq!(status, 200);
        create_id(&server, json!({})).await
    });
    server.stop_with(libc::SIGKILL);
    let server = Server::start_in(root, false, &["--pool-size", "0"]);
    rt().block_on(async {
        assert!(
            service_support::vm_processes_under(&server.root).is_empty(),
            "VM processes outlived the killed service"
        );
        assert_eq!(vm_dirs(&server), Vec::<String>::new(), "left behind");
        let (status, _) = server
            .call("GET", &format!("/v1/sandboxes/{running}"), None)
            .await;
        assert_eq!(status, 404, "a running sandbox does not survive a kill");
        let (status, resumed) = server
            .call("POST", &format!("/v1/sandboxes/{id}/resume"), None)
            .await;
        assert_eq!(status, 200, "{resumed}");
        assert_eq!(
            sh(&server, &id, "cat /work/f").await,
            "before-restart\nbefore-kill"
        );
    });
}

/// The disk holding the snapshots fills up while one is written: a clear
/// error, nothing left on it, the sandbox runs on.
#[test]
fn a_full_disk_while_writing_a_snapshot_leaves_nothing() {
    let disk = cli_support::Tmpfs::mount("snapshots", "32m");
    let snaps = disk.path.join("snapshots");
    let server = Server::start(
        "snap-disk",
        false,
        &[
            "--pool-size",
            "0",
            "--snapshot-dir",
            snaps.to_str().unwrap(),
        ],
    );
    rt().block_on(async {
        let id = create_id(&server, json!({})).await;
        sh(&server, &id, "echo alive > /work/f").await;
        for path in [
            format!("/v1/sandboxes/{id}/snapshots"),
            format!("/v1/sandboxes/{id}/pause"),
        ] {
            let (status, err) = server.call("POST", &path, Some(json!({}))).await;
            assert_eq!(status, 507, "{path}: {err}");
            assert_eq!(err["code"], "storage_full");
            assert!(
                err["message"].as_str().unwrap().contains("disk"),
                "{path}: {err}"
            );
            assert!(
                stored(&snaps).is_empty(),
                "{path} left {:?}",
                stored(&snaps)
            );
        }
        assert_eq!(sh(&server, &id, "cat /work/f").await, "alive");
    });
    drop(server);
}

#[test]
fn damaged_or_foreign_snapshots_are_refused_and_nothing_starts() {
    // A kernel of our own, so the test can "upgrade" it.
    let kernel_dir = tempfile::tempdir().unwrap();
    let kernel = kernel_dir.path().join("vmlinuz");
    std::fs::copy(host_kernel(), &kernel).unwrap();
    let server = Server::start(
        "snap-refused",
        false,
        &["--pool-size", "0", "--kernel", kernel.to_str().unwrap()],
    );
    let snaps = snapshot_dir(&server.root);
    rt().block_on(async {
        let id = create_id(&server, json!({})).await;
        sh(&server, &id, "echo x > /work/x").await;
        let refused = |status: u16, err: &Value, what: &str| {
            assert_eq!(status, 422, "{what}: {err}");
            assert_eq!(err["code"], "snapshot_invalid", "{what}: {err}");
            let msg = err["message"].as_str().unwrap();
            assert!(msg.contains("nothing was started"), "{what}: {msg}");
            msg.to_string()
        };
        let from = |snap: &Value| json!({ "from_snapshot": snap["id"] });

        // Truncated.
        let snap = snapshot(&server, &id, json!({})).await;
        let file = snapshot_file(&snaps.join(snap["id"].as_str().unwrap()));
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let before = vm_dirs(&server);
        let (status, err) = server
            .call("POST", "/v1/sandboxes", Some(from(&snap)))
            .await;
        let msg = refused(status, &err, "truncated");
        assert!(msg.contains("truncated"), "{msg}");
        assert_eq!(vm_dirs(&server), before, "a VM was started");

        // The same size, other bytes.
        let snap = snapshot(&server, &id, json!({})).await;
        let file = snapshot_file(&snaps.join(snap["id"].as_str().unwrap()));
        overwrite_middle(&file);
        let (status, err) = server
            .call("POST", "/v1/sandboxes", Some(from(&snap)))
            .await;
        let msg = refused(status, &err, "altered");
        assert!(msg.contains("checksum"), "{msg}");
        assert_eq!(vm_dirs(&server), before, "a VM was started");

        // Taken with a kernel that has since been replaced.
        let snap = snapshot(&server, &id, json!({})).await;
        let (status, paused) = server
            .call("POST", &format!("/v1/sandboxes/{id}/pause"), None)
            .await;
        assert_eq!(status, 200, "{paused}");
        let new = kernel_dir.path().join("vmlinuz.new");
        std::fs::copy(host_kernel(), &new).unwrap();
        std::fs::rename(&new, &kernel).unwrap();
        let (status, err) = server
            .call("POST", "/v1/sandboxes", Some(from(&snap)))
            .await;
        let msg = refused(status, &err, "other kernel");
        assert!(msg.contains("another kernel"), "{msg}");
        let (status, err) = server
            .call("POST", &format!("/v1/sandboxes/{id}/resume"), None)
            .await;
        refused(status, &err, "resume on another kernel");
        assert_eq!(vm_dirs(&server), Vec::<String>::new(), "a VM was started");
        // Still paused, still listed: the caller decides what to do with it.
        let (_, info) = server
            .call("GET", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(info["state"], "paused");
        let (status, _) = server
            .call("DELETE", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(status, 204);
        assert_eq!(
            stored(&snaps).len(),
            3,
            "the three snapshots stay until removed"
        );
    });
}

#[test]
fn the_storage_limit_refuses_and_leaves_nothing() {
    // A snapshot of a 256 MiB guest takes ~100 MiB here.
    let server = Server::start(
        "snap-full",
        false,
        &["--pool-size", "0", "--max-snapshot-storage", "16"],
    );
    let snaps = snapshot_dir(&server.root);
    rt().block_on(async {
        let id = create_id(&server, json!({})).await;
        for path in [
            format!("/v1/sandboxes/{id}/snapshots"),
            format!("/v1/sandboxes/{id}/pause"),
            format!("/v1/sandboxes/{id}/fork"),
        ] {
            let (status, err) = server.call("POST", &path, Some(json!({}))).await;
            assert_eq!(status, 507, "{path}: {err}");
            assert_eq!(err["code"], "storage_full");
            assert!(err["message"]
                .as_str()
                .unwrap()
                .contains("--max-snapshot-storage"));
            assert!(
                stored(&snaps).is_empty(),
                "{path} left {:?}",
                stored(&snaps)
            );
        }
        // The sandbox runs on, untouched.
        assert_eq!(sh(&server, &id, "echo alive").await, "alive");
        let (_, info) = server
            .call("GET", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(info["state"], "running");
    });
}

/// Entries of a snapshot directory other than its lock.
fn stored(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect()
}

/// The host pids a VM's runtime directory records.
fn vm_pids(vm_dir: &Path) -> Vec<u32> {
    let records = vm_dir.parent().unwrap().join(format!(
        ".{}",
        vm_dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::read_to_string(records.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The snapshot's (first) file, as its metadata names it: a migration
/// stream, or a live snapshot with its RAM mapped by forks.
fn snapshot_file(dir: &Path) -> PathBuf {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    dir.join(meta["files"][0]["name"].as_str().unwrap())
}

/// How many processes map `file` (by its inode: a VMM maps it through a
/// bind mount in its runtime directory).
fn processes_mapping(file: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(file).unwrap().ino().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| p.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|p| {
            std::fs::read_to_string(p.path().join("maps")).is_ok_and(|maps| {
                maps.lines()
                    .any(|l| l.split_whitespace().nth(4) == Some(ino.as_str()))
            })
        })
        .count()
}

fn overwrite_middle(file: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(file).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(b"not what the VMM wrote").unwrap();
}

/// The kernel the service would boot by default.
fn host_kernel() -> PathBuf {
    ironclaw_orchestrator::boot::kernel::default_kernel().unwrap()
}
