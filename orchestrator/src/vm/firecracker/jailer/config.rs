//! [`JailerConfig`]: how to run Firecracker under the jailer, from the
//! environment, and the checks made before anything is created.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{
    invalid, io, CgroupVersion, JailerError, JailerStep, DEFAULT_CHROOT_BASE, MAX_JAIL_ID,
};

/// How to run Firecracker under the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// The `jailer` executable.
    pub binary: PathBuf,
    /// `--chroot-base-dir`.
    pub chroot_base: PathBuf,
    /// The first uid of the range `--uid` is leased from, one per live VM
    /// ([`crate::vm::jail::lease_from`]); `None`: the QEMU jail's range
    /// ([`crate::vm::jail::vm_ids`]). A VM's `confinement.uid` wins.
    pub uid: Option<u32>,
    /// `--gid` of every jailed VM (the group snapshots moved out are
    /// readable by); `None`: each VM's uid.
    pub gid: Option<u32>,
    /// `--cgroup-version`; `None`: what the host has (v2 when the unified
    /// hierarchy has the memory controller, else v1).
    pub cgroup_version: Option<CgroupVersion>,
}

fn env_u32(var: &'static str) -> Result<Option<u32>, JailerError> {
    let Some(v) = std::env::var_os(var) else {
        return Ok(None);
    };
    let v = v.to_string_lossy().into_owned();
    v.parse().map(Some).map_err(|e| JailerError::Env {
        var,
        value: v,
        reason: format!("{e}"),
    })
}

impl JailerConfig {
    /// From the environment: `$IRONCLAW_FIRECRACKER_JAILER` (a path, or a name
    /// looked up on PATH) turns the jailer on; `$IRONCLAW_JAILER_CHROOT_BASE`
    /// (default [`DEFAULT_CHROOT_BASE`]), `$IRONCLAW_JAILER_UID` (the first
    /// uid of the range jail uids are leased from), `$IRONCLAW_JAILER_GID`,
    /// `$IRONCLAW_JAILER_CGROUP_VERSION` (1 or 2).
    pub fn from_env() -> Result<Option<JailerConfig>, JailerError> {
        let Some(bin) = std::env::var_os("IRONCLAW_FIRECRACKER_JAILER") else {
            return Ok(None);
        };
        let bin = PathBuf::from(bin);
        let binary = if bin.components().count() == 1 && !bin.is_absolute() {
            super::super::super::host::which(&bin.to_string_lossy()).unwrap_or(bin)
        } else {
            bin
        };
        let cgroup_version = match std::env::var("IRONCLAW_JAILER_CGROUP_VERSION").ok() {
            None => None,
            Some(v) if v == "1" => Some(CgroupVersion::V1),
            Some(v) if v == "2" => Some(CgroupVersion::V2),
            Some(v) => {
                return Err(JailerError::Env {
                    var: "IRONCLAW_JAILER_CGROUP_VERSION",
                    value: v,
                    reason: "expected 1 or 2".into(),
                })
            }
        };
        Ok(Some(JailerConfig {
            binary,
            chroot_base: std::env::var_os("IRONCLAW_JAILER_CHROOT_BASE")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_CHROOT_BASE.into()),
            uid: env_u32("IRONCLAW_JAILER_UID")?,
            gid: env_u32("IRONCLAW_JAILER_GID")?,
            cgroup_version,
        }))
    }

    /// The jailer is an executable file and the Firecracker binary has a name
    /// the jailer accepts (it insists on `firecracker` in it). Checked before
    /// anything is created.
    pub fn check(&self, firecracker: &Path) -> Result<(), JailerError> {
        let step = JailerStep::CheckJailer;
        let m = fs::metadata(&self.binary)
            .map_err(io(step, format!("the jailer {}", self.binary.display())))?;
        if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
            return Err(invalid(
                step,
                format!(
                    "the jailer {} is not an executable file",
                    self.binary.display()
                ),
            ));
        }
        let name = exec_name(firecracker)?;
        if !name.contains("firecracker") {
            return Err(invalid(
                step,
                format!(
                    "the jailer only execs a file whose name contains `firecracker`; {} does not",
                    firecracker.display()
                ),
            ));
        }
        if !self.chroot_base.is_absolute() {
            return Err(invalid(
                step,
                format!(
                    "the chroot base {} must be an absolute path",
                    self.chroot_base.display()
                ),
            ));
        }
        Ok(())
    }
}

pub(super) fn exec_name(firecracker: &Path) -> Result<String, JailerError> {
    firecracker
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            invalid(
                JailerStep::CheckJailer,
                format!("{} names no file", firecracker.display()),
            )
        })
}

/// The jailer accepts ids of ASCII letters, digits and `-`, up to 64 bytes
/// (VmConfig also allows `_`, which the jailer refuses).
pub fn check_id(id: &str) -> Result<(), JailerError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_JAIL_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            JailerStep::CheckId,
            format!("the jailer accepts VM ids of letters, digits and `-`, at most {MAX_JAIL_ID} long; {id:?} is not one"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_the_jailer_refuses_are_refused() {
        check_id("vm-1").unwrap();
        for bad in ["vm_1", "", &"a".repeat(65)] {
            let err = check_id(bad).unwrap_err();
            assert!(err.to_string().contains("checking the VM id"), "{err}");
        }
    }

    #[test]
    fn a_missing_jailer_or_oddly_named_firecracker_is_refused() {
        let cfg = JailerConfig {
            binary: "/nonexistent/jailer".into(),
            chroot_base: "/srv/jailer".into(),
            uid: None,
            gid: None,
            cgroup_version: None,
        };
        let err = cfg.check(Path::new("/usr/bin/firecracker")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/jailer"), "{err}");
        let cfg = JailerConfig {
            binary: std::env::current_exe().unwrap(),
            ..cfg
        };
        cfg.check(Path::new("/usr/bin/firecracker-v1.10")).unwrap();
        let err = cfg.check(Path::new("/usr/bin/fc")).unwrap_err();
        assert!(err.to_string().contains("firecracker"), "{err}");
    }
}
