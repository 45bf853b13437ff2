//! How Firecracker processes are started: [`FirecrackerOptions`] (binary,
//! seccomp filter, jailer) from the environment, and the unjailed command.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::FirecrackerError;
use super::files::FIRECRACKER_BINARY;
use super::jailer::JailerConfig;

/// How Firecracker processes are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerOptions {
    /// The `firecracker` executable.
    pub binary: PathBuf,
    /// A custom seccomp filter (Firecracker's compiled BPF format), passed as
    /// `--seccomp-filter`. Without it Firecracker uses its built-in filters.
    pub seccomp_filter: Option<PathBuf>,
    /// Start Firecracker through its jailer (`$IRONCLAW_FIRECRACKER_JAILER`).
    pub jailer: Option<JailerConfig>,
}

/// How Firecracker is launched here, from the environment: `jailed` (with
/// `$IRONCLAW_FIRECRACKER_JAILER`) or `direct`. Part of a prototype's key: a
/// snapshot records the paths its VMM saw (a jailed one's are chroot paths),
/// so one taken one way cannot be loaded the other.
pub(super) fn launch_kind(opts: &FirecrackerOptions) -> &'static str {
    if opts.jailer.is_some() {
        "jailed"
    } else {
        "direct"
    }
}

/// `$IRONCLAW_FIRECRACKER`, else `firecracker` on PATH.
pub fn find_binary() -> Option<PathBuf> {
    std::env::var_os("IRONCLAW_FIRECRACKER")
        .map(PathBuf::from)
        .or_else(|| super::super::host::which(FIRECRACKER_BINARY))
}

impl FirecrackerOptions {
    /// Options from the environment: the binary from `$IRONCLAW_FIRECRACKER`
    /// or PATH, a seccomp filter from `$IRONCLAW_FIRECRACKER_SECCOMP_FILTER`,
    /// the jailer from `$IRONCLAW_FIRECRACKER_JAILER` and friends
    /// ([`JailerConfig::from_env`]).
    ///
    /// Fails closed: started by root, Firecracker must run under its jailer
    /// unless `$IRONCLAW_FIRECRACKER_ALLOW_UNJAILED=1` says otherwise.
    pub fn from_env() -> Result<FirecrackerOptions, FirecrackerError> {
        let opts = FirecrackerOptions {
            binary: find_binary().ok_or(FirecrackerError::MissingBinary)?,
            seccomp_filter: std::env::var_os("IRONCLAW_FIRECRACKER_SECCOMP_FILTER")
                .map(PathBuf::from),
            jailer: JailerConfig::from_env()?,
        };
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let allowed = std::env::var("IRONCLAW_FIRECRACKER_ALLOW_UNJAILED").is_ok_and(|v| v == "1");
        if root && opts.jailer.is_none() && !allowed {
            return Err(FirecrackerError::UnjailedAsRoot);
        }
        Ok(opts)
    }

    /// Checks what can be checked before anything is created: the filter
    /// file, and the jailer (exists, executable; a Firecracker name it takes).
    pub fn check(&self) -> Result<(), FirecrackerError> {
        self.check_filter()?;
        if let Some(jailer) = &self.jailer {
            jailer.check(&self.binary)?;
        }
        Ok(())
    }

    /// The command that starts Firecracker directly (unjailed) with its API
    /// socket at `api_socket`. Refused when a jailer is configured: a jailed
    /// launch needs its chroot prepared first ([`super::jailer::Jail`]).
    pub fn command(&self, api_socket: &Path, log: &Path) -> Result<Command, FirecrackerError> {
        if let Some(jailer) = &self.jailer {
            return Err(FirecrackerError::JailerBypassed {
                jailer: jailer.binary.clone(),
            });
        }
        self.check_filter()?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--api-sock").arg(api_socket);
        cmd.arg("--log-path").arg(log);
        // Never `--no-seccomp`: either Firecracker's built-in filters or this file.
        if let Some(filter) = &self.seccomp_filter {
            cmd.arg("--seccomp-filter").arg(filter);
        }
        Ok(cmd)
    }

    fn check_filter(&self) -> Result<(), FirecrackerError> {
        if let Some(filter) = &self.seccomp_filter {
            match std::fs::metadata(filter) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    return Err(FirecrackerError::SeccompFilter {
                        path: filter.clone(),
                        reason: "not a regular file".into(),
                    })
                }
                Err(e) => {
                    return Err(FirecrackerError::SeccompFilter {
                        path: filter.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn opts() -> FirecrackerOptions {
        FirecrackerOptions {
            binary: "/usr/bin/firecracker".into(),
            seccomp_filter: None,
            jailer: None,
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_keeps_seccomp_on() {
        let cmd = opts()
            .command(
                Path::new("/run/x/firecracker.sock"),
                Path::new("/run/x/fc.log"),
            )
            .unwrap();
        let a = args(&cmd);
        assert_eq!(&a[..2], ["--api-sock", "/run/x/firecracker.sock"]);
        assert!(!a.iter().any(|x| x.contains("no-seccomp")), "{a:?}");
        assert!(!a.iter().any(|x| x.contains("seccomp-filter")), "{a:?}");

        let filter = std::env::current_exe().unwrap();
        let with_filter = FirecrackerOptions {
            seccomp_filter: Some(filter.clone()),
            ..opts()
        };
        let a = args(
            &with_filter
                .command(Path::new("/s"), Path::new("/l"))
                .unwrap(),
        );
        let i = a.iter().position(|x| x == "--seccomp-filter").unwrap();
        assert_eq!(a[i + 1], filter.to_string_lossy());
        assert!(!a.iter().any(|x| x.contains("no-seccomp")), "{a:?}");
    }

    #[test]
    fn missing_filter_file_is_refused() {
        let o = FirecrackerOptions {
            seccomp_filter: Some("/nonexistent/filter.bpf".into()),
            ..opts()
        };
        let err = o.command(Path::new("/s"), Path::new("/l")).unwrap_err();
        assert!(matches!(err, FirecrackerError::SeccompFilter { .. }));
        assert!(err.to_string().contains("/nonexistent/filter.bpf"), "{err}");
    }

    #[test]
    fn a_configured_jailer_is_never_bypassed() {
        let o = FirecrackerOptions {
            jailer: Some(JailerConfig {
                binary: "/usr/bin/jailer".into(),
                chroot_base: "/srv/jailer".into(),
                uid: Some(1000),
                gid: Some(1000),
                cgroup_version: None,
            }),
            ..opts()
        };
        let err = o.command(Path::new("/s"), Path::new("/l")).unwrap_err();
        assert!(
            matches!(err, FirecrackerError::JailerBypassed { .. }),
            "{err}"
        );
        // The jailer does not exist: refused by the check that runs before
        // anything is created.
        let err = o.check().unwrap_err();
        assert!(err.to_string().contains("/usr/bin/jailer"), "{err}");
    }
}
