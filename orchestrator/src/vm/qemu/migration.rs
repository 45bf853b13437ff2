//! Snapshots as QEMU migrations to and from files: the capabilities every
//! stream is written and read with, a stream through an fd (`getfd`,
//! `fd:`), a `mapped-ram` file through an fd set (`add-fd`, `file:`), and
//! the waits, each with a host-side deadline.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use super::command::INCOMING_FD;
use super::QemuError;
use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::VmError;

/// How long writing or loading a snapshot (a migration to or from a file) may take.
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

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
    let deadline = std::time::Instant::now() + MIGRATION_WAIT;
    loop {
        let status = qmp.execute("query-status", None).await?;
        match status.get("status").and_then(|s| s.as_str()) {
            Some("inmigrate") if std::time::Instant::now() > deadline => {
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

/// Waits until an outgoing migration has completed (a failure or the
/// deadline ends it: the migration is then cancelled).
pub(super) async fn wait_migrated(qmp: &mut Qmp) -> Result<(), MigrateError> {
    let deadline = std::time::Instant::now() + MIGRATION_WAIT;
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(MigrateError::Failed(
                    info.get("error-desc")
                        .and_then(|d| d.as_str())
                        .unwrap_or("no reason given")
                        .to_string(),
                ))
            }
            _ if std::time::Instant::now() > deadline => {
                let _ = qmp.execute("migrate_cancel", None).await;
                return Err(MigrateError::TimedOut);
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
