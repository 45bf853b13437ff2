//! The jailer's cgroups: the version, the `--cgroup` limit arguments, and
//! the directories the jailer makes (recorded for reaping).

use std::path::{Path, PathBuf};

use super::super::super::cgroup::{self, Limits};
use super::{invalid, JailerError, JailerStep, PARENT_CGROUP};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}
impl CgroupVersion {
    pub(super) fn arg(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }
}

/// `--cgroup` values for `limits` (v1 and v2 name the files differently).
pub fn cgroup_args(version: CgroupVersion, limits: Limits) -> Vec<String> {
    let version = match version {
        CgroupVersion::V1 => cgroup::Version::V1,
        CgroupVersion::V2 => cgroup::Version::V2,
    };
    limits
        .files(version)
        .into_iter()
        .map(|(_, file, value)| format!("{file}={value}"))
        .collect()
}

/// The cgroup directories the jailer makes for `id`: like the jailer, the
/// mount of each controller (v1) or the cgroup2 mount (v2) is read from
/// `/proc/mounts` (`mounts`), then `<mount>/<PARENT_CGROUP>/<id>`.
pub fn cgroup_dirs(
    mounts: &str,
    version: CgroupVersion,
    id: &str,
) -> Result<Vec<PathBuf>, JailerError> {
    let entries: Vec<(&str, &str, &str)> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((point, fstype, opts))
        })
        .collect();
    let below = |point: &str| Path::new(point).join(PARENT_CGROUP).join(id);
    match version {
        CgroupVersion::V2 => entries
            .iter()
            .find(|(_, fstype, _)| *fstype == "cgroup2")
            .map(|(point, _, _)| vec![below(point)])
            .ok_or_else(|| {
                invalid(
                    JailerStep::DetectCgroups,
                    "no cgroup2 mount in /proc/mounts",
                )
            }),
        CgroupVersion::V1 => cgroup::CONTROLLERS
            .iter()
            .map(|c| {
                entries
                    .iter()
                    .find(|(_, fstype, opts)| {
                        *fstype == "cgroup" && opts.split(',').any(|o| o == *c)
                    })
                    .map(|(point, _, _)| below(point))
                    .ok_or_else(|| {
                        invalid(
                            JailerStep::DetectCgroups,
                            format!("no cgroup v1 mount with the {c} controller in /proc/mounts"),
                        )
                    })
            })
            .collect(),
    }
}

pub(super) fn detect_version() -> Result<CgroupVersion, JailerError> {
    let layout = cgroup::Layout::detect().map_err(|e| {
        invalid(
            JailerStep::DetectCgroups,
            format!("{e}; set $IRONCLAW_JAILER_CGROUP_VERSION"),
        )
    })?;
    Ok(match layout.version {
        cgroup::Version::V1 => CgroupVersion::V1,
        cgroup::Version::V2 => CgroupVersion::V2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        memory_mib: 300,
        cpu_millis: 1500,
        pids: 64,
    };

    #[test]
    fn cgroup_arguments_per_version() {
        assert_eq!(
            cgroup_args(CgroupVersion::V1, LIMITS),
            [
                "memory.limit_in_bytes=314572800",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=150000",
                "pids.max=64"
            ]
        );
        assert_eq!(
            cgroup_args(CgroupVersion::V2, LIMITS),
            [
                "memory.max=314572800",
                "cpu.max=150000 100000",
                "pids.max=64"
            ]
        );
    }

    #[test]
    fn cgroup_dirs_follow_the_mounts_like_the_jailer() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
            cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
            cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
            cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup_dirs(mounts, CgroupVersion::V1, "vm-1").unwrap(),
            [
                PathBuf::from("/sys/fs/cgroup/memory/ironclaw/vm-1"),
                "/sys/fs/cgroup/cpu,cpuacct/ironclaw/vm-1".into(),
                "/sys/fs/cgroup/pids/ironclaw/vm-1".into(),
            ]
        );
        assert_eq!(
            cgroup_dirs(mounts, CgroupVersion::V2, "vm-1").unwrap(),
            [PathBuf::from("/sys/fs/cgroup/unified/ironclaw/vm-1")]
        );
        for d in cgroup_dirs(mounts, CgroupVersion::V1, "vm-1").unwrap() {
            assert!(cgroup::is_ours(&d), "{}", d.display());
        }
        let err = cgroup_dirs("", CgroupVersion::V1, "x").unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }
}
