//! Typed bodies of the Firecracker API requests IronClaw sends, one struct per
//! resource, named and shaped as in Firecracker's OpenAPI description
//! (`firecracker-swagger.yaml`, definitions of the same names; the part used
//! is described in `tests/data/firecracker-api.json`, which the tests check against).
//!
//! Every body refuses unknown fields (`deny_unknown_fields`), so a misspelt
//! field is an error in our own tests rather than a field Firecracker never
//! sees. Each body knows its own method and path ([`ApiRequest`]); the client
//! can only send types that implement it. There is deliberately no type for
//! `/network-interfaces`, and [`SnapshotLoadParams`] has no
//! `network_overrides`: no code path can configure a network device.

use std::path::PathBuf;

use hyper::Method;
use serde::{Deserialize, Serialize};

/// A request body together with the endpoint it belongs to.
pub trait ApiRequest: Serialize {
    const METHOD: Method;
    /// The request path, e.g. `/boot-source`.
    fn path(&self) -> String;
}

/// `PUT /machine-config` (definition `MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    /// Sent explicitly (false) so the VM's shape never depends on a default.
    pub smt: bool,
    /// Only diff snapshots need it; full snapshots do not.
    pub track_dirty_pages: bool,
}

impl ApiRequest for MachineConfiguration {
    const METHOD: Method = Method::PUT;
    fn path(&self) -> String {
        "/machine-config".into()
    }
}

/// `PUT /boot-source` (definition `BootSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

impl ApiRequest for BootSource {
    const METHOD: Method = Method::PUT;
    fn path(&self) -> String {
        "/boot-source".into()
    }
}

/// `PUT /drives/{drive_id}` (definition `Drive`), a virtio-block drive backed
/// by a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Also the last path segment; [`Drive::new`] keeps it to `[A-Za-z0-9_-]`.
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

/// A drive id that cannot be used as a path segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("drive id {0:?} must be 1-64 characters of [A-Za-z0-9_-]")]
pub struct BadDriveId(pub String);

impl Drive {
    pub fn new(
        drive_id: &str,
        path_on_host: impl Into<PathBuf>,
        is_root_device: bool,
        is_read_only: bool,
    ) -> Result<Drive, BadDriveId> {
        let ok = !drive_id.is_empty()
            && drive_id.len() <= 64
            && drive_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(BadDriveId(drive_id.into()));
        }
        Ok(Drive {
            drive_id: drive_id.into(),
            path_on_host: path_on_host.into(),
            is_root_device,
            is_read_only,
        })
    }
}

impl ApiRequest for Drive {
    const METHOD: Method = Method::PUT;
    fn path(&self) -> String {
        format!("/drives/{}", self.drive_id)
    }
}

/// `PUT /vsock` (definition `Vsock`). Firecracker creates and listens on
/// `uds_path` (hybrid vsock: `CONNECT <port>\n`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

impl ApiRequest for Vsock {
    const METHOD: Method = Method::PUT;
    fn path(&self) -> String {
        "/vsock".into()
    }
}

/// The actions of `PUT /actions` that IronClaw uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    /// x86 only: the guest kernel reboots on it, which ends Firecracker.
    SendCtrlAltDel,
}

/// `PUT /actions` (definition `InstanceActionInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

impl ApiRequest for InstanceActionInfo {
    const METHOD: Method = Method::PUT;
    fn path(&self) -> String {
        "/actions".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PATCH /vm` (definition `Vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub state: VmState,
}

impl ApiRequest for Vm {
    const METHOD: Method = Method::PATCH;
    fn path(&self) -> String {
        "/vm".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    Full,
    Diff,
}

/// `PUT /snapshot/create` (definition `SnapshotCreateParams`). The VM must be paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    pub snapshot_type: SnapshotType,
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
}

impl ApiRequest for SnapshotCreateParams {
    const METHOD: Method = Method::PUT;
    fn path(&self) -> String {
        "/snapshot/create".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    File,
    Uffd,
}

/// Definition `MemoryBackend`: where a restored VM's memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: PathBuf,
}

/// Definition `VsockOverride`: a new host socket for the restored vsock device,
/// so that each clone of one snapshot gets its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load` (definition `SnapshotLoadParams`). Only accepted by a
/// fresh Firecracker process. `mem_backend` is used rather than the
/// deprecated `mem_file_path`; network overrides are not representable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemoryBackend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    pub resume_vm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

impl ApiRequest for SnapshotLoadParams {
    const METHOD: Method = Method::PUT;
    fn path(&self) -> String {
        "/snapshot/load".into()
    }
}

/// Answer of `GET /` (definition `InstanceInfo`). Answers are read leniently
/// (unknown fields ignored): a newer Firecracker may add some.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: String,
    pub vmm_version: String,
}

/// Body of Firecracker's error answers (definition `Error`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<BootSource>(
            r#"{"kernel_image_path":"/k","boot_arg":"console=ttyS0"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("boot_arg"), "{err}");
        assert!(serde_json::from_str::<SnapshotLoadParams>(
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},
                "resume_vm":true,"network_overrides":[]}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<Vsock>(r#"{"guest_cid":3,"uds_path":"/v","vsock_id":"x"}"#)
                .is_err()
        );
    }

    #[test]
    fn bodies_serialize_as_the_api_expects() {
        let body = serde_json::to_value(InstanceActionInfo {
            action_type: ActionType::InstanceStart,
        })
        .unwrap();
        assert_eq!(body, serde_json::json!({"action_type": "InstanceStart"}));
        let boot = BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        };
        assert_eq!(
            serde_json::to_value(&boot).unwrap(),
            serde_json::json!({"kernel_image_path": "/k"})
        );
        assert_eq!(Vm::METHOD, Method::PATCH);
    }

    #[test]
    fn drive_ids_are_path_safe() {
        assert_eq!(
            Drive::new("rootfs", "/r", false, true).unwrap().path(),
            "/drives/rootfs"
        );
        for bad in ["", "../vm", "a/b", "a b", "a?b"] {
            assert!(Drive::new(bad, "/r", false, true).is_err(), "{bad:?}");
        }
    }
}
