//! Snapshots as QEMU migrations to and from files: the capabilities every
//! stream is written and read with, a stream through an fd (`getfd`,
//! `fd:`), a `mapped-ram` file through an fd set (`add-fd`, `file:`), and
//! the waits, each with a host-side deadline.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::command::INCOMING_FD;
use super::QemuError;
use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::VmError;

/// How long writing or loading a snapshot (a migration to or from a file) may take.
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

/// How long a pre-copy snapshot lets the guest run while its memory is
/// copied. A guest that changes memory faster than it is written would keep
/// the copy going; after this it is paused and the copy finishes.
const PRECOPY_LIMIT: Duration = Duration::from_secs(3);

/// The pause QEMU aims for when it decides to stop copying with the guest
/// running (`downtime-limit`, ms): the pages still to write must fit in it
/// at the rate measured so far.
const PRECOPY_DOWNTIME_MS: u64 = 20;

/// How often a migration's progress is asked for: bounds the time between
/// QEMU completing a pre-copy (the guest is paused then) and the resume.
const PRECOPY_POLL: Duration = Duration::from_millis(3);

/// The fd set QEMU gets a snapshot's descriptor in (`add-fd`), for the
/// `file:` URI `mapped-ram` needs (it writes and reads at offsets).
const SNAPSHOT_FDSET: u64 = 7;

/// Whether this QEMU has the `mapped-ram` migration capability (QEMU ≥ 9.0).
pub(super) async fn has_mapped_ram(qmp: &mut Qmp) -> Result<bool, QmpError> {
    let caps = qmp.execute("query-migrate-capabilities", None).await?;
    Ok(caps.as_array().is_some_and(|list| {
        list.iter()
            .any(|c| c.get("capability").and_then(|v| v.as_str()) == Some("mapped-ram"))
    }))
}

/// Sets `mapped-ram` on, `x-ignore-shared` off: every block's pages at
/// their offsets in the file (a clone's private RAM included).
pub(super) async fn set_mapped_ram(qmp: &mut Qmp) -> Result<(), QmpError> {
    let caps = serde_json::json!({ "capabilities": [
        { "capability": "x-ignore-shared", "state": false },
        { "capability": "mapped-ram", "state": true }
    ]});
    qmp.execute("migrate-set-capabilities", Some(caps)).await?;
    Ok(())
}

/// The migration parameters of every snapshot: no bandwidth cap (QEMU's
/// default of 128 MiB/s, meant for a network shared with other traffic,
/// also holds with the guest stopped: it made a 256 MiB guest's snapshot
/// take half a second), and [`PRECOPY_DOWNTIME_MS`] for a pre-copy.
pub(super) async fn set_parameters(qmp: &mut Qmp) -> Result<(), QmpError> {
    let params = serde_json::json!({
        "downtime-limit": PRECOPY_DOWNTIME_MS,
        "max-bandwidth": 16u64 << 30,
    });
    qmp.execute("migrate-set-parameters", Some(params)).await?;
    Ok(())
}

/// Hands `file` to QEMU in [`SNAPSHOT_FDSET`]; the URI that names it.
pub(super) async fn fdset_add(qmp: &mut Qmp, file: &File) -> Result<String, QmpError> {
    qmp.execute_with_fd(
        "add-fd",
        serde_json::json!({ "fdset-id": SNAPSHOT_FDSET }),
        file,
    )
    .await?;
    Ok(format!("file:/dev/fdset/{SNAPSHOT_FDSET}"))
}

/// Removes QEMU's descriptor of the snapshot again (after the migration,
/// also a failed one), so the VMM keeps no handle on the file.
pub(super) async fn fdset_remove(qmp: &mut Qmp) -> Result<(), QmpError> {
    let args = serde_json::json!({ "fdset-id": SNAPSHOT_FDSET });
    qmp.execute("remove-fd", Some(args)).await.map(|_| ())
}

/// Why an outgoing migration did not complete.
pub(super) enum MigrateError {
    Qmp(QmpError),
    Failed(String),
    TimedOut,
}

impl From<QmpError> for MigrateError {
    fn from(e: QmpError) -> Self {
        MigrateError::Qmp(e)
    }
}

impl From<MigrateError> for VmError {
    fn from(e: MigrateError) -> Self {
        match e {
            MigrateError::Qmp(e) => QemuError::SnapshotQmp(e).into(),
            MigrateError::Failed(why) => QemuError::MigrationFailed(why).into(),
            MigrateError::TimedOut => QemuError::MigrationTimeout(MIGRATION_WAIT).into(),
        }
    }
}

/// How a restored QEMU gets its snapshot.
pub enum Incoming<'a> {
    /// A migration stream as fd [`INCOMING_FD`], RAM in it or (with
    /// `ignore_shared`) in a shared memory file beside it.
    Stream { ignore_shared: bool },
    /// A live snapshot whose RAM the VM maps ([`super::mapped_ram`]): its
    /// device state is loaded from the same file.
    MappedRam(&'a File),
}

/// Sets the migration capabilities every stream of this backend is written
/// and read with: `x-ignore-shared` when clones share memory (the RAM of a
/// shared memory file stays out of the stream; private RAM is written).
pub(super) async fn set_capabilities(qmp: &mut Qmp, ignore_shared: bool) -> Result<(), QmpError> {
    if ignore_shared {
        let caps = serde_json::json!({ "capabilities": [
            { "capability": "x-ignore-shared", "state": true }
        ]});
        qmp.execute("migrate-set-capabilities", Some(caps)).await?;
    }
    Ok(())
}

/// Loads the snapshot of a QEMU started with `-incoming defer` and waits
/// until it is loaded (the VM is then paused).
pub async fn load_incoming(qmp: &mut Qmp, incoming: Incoming<'_>) -> Result<(), QmpError> {
    match incoming {
        Incoming::Stream { ignore_shared } => {
            set_capabilities(qmp, ignore_shared).await?;
            let uri = format!("fd:{INCOMING_FD}");
            qmp.execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))
                .await?;
            wait_loaded(qmp).await
        }
        Incoming::MappedRam(file) => {
            set_mapped_ram(qmp).await?;
            let uri = fdset_add(qmp, file).await?;
            let loaded = match qmp
                .execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))
                .await
            {
                Ok(_) => wait_loaded(qmp).await,
                Err(e) => Err(e),
            };
            let removed = fdset_remove(qmp).await;
            loaded.and(removed)
        }
    }
}

pub(super) async fn wait_loaded(qmp: &mut Qmp) -> Result<(), QmpError> {
    let deadline = Instant::now() + MIGRATION_WAIT;
    loop {
        let status = qmp.execute("query-status", None).await?;
        match status.get("status").and_then(|s| s.as_str()) {
            Some("inmigrate") if Instant::now() > deadline => {
                return Err(QmpError::Timeout("migrate-incoming".into()))
            }
            Some("inmigrate") => tokio::time::sleep(Duration::from_millis(2)).await,
            _ => return Ok(()),
        }
    }
}

/// The file a snapshot is written to: ours alone, new (never through a
/// planted link), explicitly 0600, opened for writing only.
pub(super) fn create_snapshot_file(dest: &Path) -> Result<File, VmError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(|e| VmError::io(format!("creating {}", dest.display()), e))
}

/// Writes the (stopped) VM's state to `dest` as a migration stream.
pub(super) async fn migrate_to(
    qmp: &mut Qmp,
    dest: &Path,
    ignore_shared: bool,
) -> Result<(), VmError> {
    let qmp_err = |e: QmpError| VmError::from(QemuError::SnapshotQmp(e));
    set_capabilities(qmp, ignore_shared)
        .await
        .map_err(qmp_err)?;
    set_parameters(qmp).await.map_err(qmp_err)?;
    let file = create_snapshot_file(dest)?;
    qmp.execute_with_fd("getfd", serde_json::json!({ "fdname": "snapshot" }), &file)
        .await
        .map_err(qmp_err)?;
    drop(file);
    qmp.execute("migrate", Some(serde_json::json!({ "uri": "fd:snapshot" })))
        .await
        .map_err(qmp_err)?;
    wait_migrated(qmp).await.map_err(VmError::from)
}

/// Waits until a pre-copy migration of the running guest, asked for at
/// `start`, has completed, pausing the guest itself after [`PRECOPY_LIMIT`].
/// Returns since when the guest is paused: when it was paused here, or when
/// QEMU stopped it to finish — its `total-time` after `start` less its
/// `downtime` (whole milliseconds): never later than it was, earlier by the
/// `migrate` command's latency and up to 2 ms of rounding; without those
/// figures, `start`. A failure or the deadline ends it (the migration is
/// then cancelled); the caller resumes the guest in every case.
pub(super) async fn wait_precopy(qmp: &mut Qmp, start: Instant) -> Result<Instant, MigrateError> {
    wait_completed(qmp, start, PRECOPY_LIMIT).await
}

/// [`wait_precopy`], pausing the guest after `limit` (never with
/// `Duration::MAX`).
async fn wait_completed(
    qmp: &mut Qmp,
    start: Instant,
    limit: Duration,
) -> Result<Instant, MigrateError> {
    let mut paused_here = None;
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => {
                let ms = |field: &str| info.get(field).and_then(|v| v.as_u64());
                let stopped = match (ms("total-time"), ms("downtime")) {
                    (Some(total), Some(down)) => {
                        start + Duration::from_millis(total.saturating_sub(down + 1))
                    }
                    _ => start,
                };
                return Ok(paused_here.unwrap_or(stopped.min(Instant::now())));
            }
            Some("failed") | Some("cancelled") => {
                return Err(MigrateError::Failed(
                    info.get("error-desc")
                        .and_then(|d| d.as_str())
                        .unwrap_or("no reason given")
                        .to_string(),
                ))
            }
            _ if start.elapsed() > MIGRATION_WAIT => {
                let _ = qmp.execute("migrate_cancel", None).await;
                return Err(MigrateError::TimedOut);
            }
            _ if paused_here.is_none() && start.elapsed() > limit => {
                qmp.execute("stop", None).await?;
                paused_here = Some(Instant::now());
            }
            _ => tokio::time::sleep(PRECOPY_POLL).await,
        }
    }
}

/// Waits until an outgoing migration has completed (a failure or the
/// deadline ends it: the migration is then cancelled).
pub(super) async fn wait_migrated(qmp: &mut Qmp) -> Result<(), MigrateError> {
    wait_completed(qmp, Instant::now(), Duration::MAX)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// What the scripted QEMU answers to its n-th `query-migrate` (from 1),
    /// and whether it was told `stop` before.
    type Script = fn(usize, bool) -> Value;

    /// A QMP peer on a socket in `dir` that answers `query-migrate` as
    /// `script` says and everything else with `{}`. Returns the socket and
    /// the commands it was sent.
    fn scripted_qemu(
        dir: &Path,
        script: Script,
    ) -> (std::path::PathBuf, tokio::task::JoinHandle<Vec<String>>) {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let greeting = b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";
            write.write_all(greeting).await.unwrap();
            let mut lines = BufReader::new(read).lines();
            let (mut seen, mut queries, mut stopped) = (Vec::new(), 0, false);
            while let Ok(Some(line)) = lines.next_line().await {
                let req: Value = serde_json::from_str(&line).unwrap();
                let command = req["execute"].as_str().unwrap().to_string();
                let answer = match command.as_str() {
                    "query-migrate" => {
                        queries += 1;
                        script(queries, stopped)
                    }
                    "stop" => {
                        stopped = true;
                        json!({})
                    }
                    _ => json!({}),
                };
                seen.push(command);
                let mut out = serde_json::to_vec(&json!({ "return": answer })).unwrap();
                out.push(b'\n');
                write.write_all(&out).await.unwrap();
            }
            seen
        });
        (path, peer)
    }

    async fn precopy(
        script: Script,
        limit: Duration,
    ) -> (Instant, Result<Instant, VmError>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let (sock, peer) = scripted_qemu(dir.path(), script);
        let mut qmp = Qmp::connect(&sock).await.unwrap();
        let start = Instant::now();
        let since = wait_completed(&mut qmp, start, limit)
            .await
            .map_err(VmError::from);
        drop(qmp);
        (start, since, peer.await.unwrap())
    }

    #[tokio::test]
    async fn a_precopy_qemu_completes_is_paused_since_its_downtime_began() {
        let (start, since, seen) = precopy(
            |n, _| match n {
                1 | 2 => json!({ "status": "active" }),
                _ => json!({ "status": "completed", "total-time": 5, "downtime": 2 }),
            },
            Duration::from_secs(60),
        )
        .await;
        // total-time less downtime, less a millisecond of rounding.
        assert_eq!(since.unwrap(), start + Duration::from_millis(2));
        assert!(!seen.contains(&"stop".to_string()), "{seen:?}");
    }

    #[tokio::test]
    async fn a_precopy_that_does_not_converge_is_finished_with_the_guest_paused() {
        let limit = Duration::from_millis(200);
        let (start, since, seen) = precopy(
            |_, stopped| match stopped {
                false => json!({ "status": "active" }),
                // Figures that would date the pause before the limit.
                true => json!({ "status": "completed", "total-time": 50, "downtime": 1 }),
            },
            limit,
        )
        .await;
        // Paused here once the limit had passed, and counted from then.
        let since = since.unwrap();
        assert!(since >= start + limit, "{:?}", since - start);
        assert_eq!(seen.iter().filter(|c| *c == "stop").count(), 1, "{seen:?}");
        assert_eq!(seen.last().map(String::as_str), Some("query-migrate"));
    }

    #[tokio::test]
    async fn a_failed_precopy_says_why() {
        let (_, since, _) = precopy(
            |_, _| json!({ "status": "failed", "error-desc": "disk full" }),
            Duration::from_secs(60),
        )
        .await;
        let err = since.unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
