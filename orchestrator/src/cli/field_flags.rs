//! The one table between `VmConfig` fields and the flags that set them, and
//! the rendering of library errors in the terms the user typed: a flag
//! (`--mem`), or with `--config FILE` the file's field (`memory_mib`).
//!
//! The library names config fields, in its errors and in its advice ("set
//! confinement.jail = false"); this module translates both for the command
//! line, so the library stays free of flag names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ironclaw_orchestrator::vm::{ConfigError, VmError};

/// `VmConfig` field → the flag that sets it (`None`: only `--config` does),
/// and a note where the flag's unit differs from the field's.
pub const FIELD_FLAGS: &[(&str, Option<&str>, &str)] = &[
    ("id", None, ""),
    ("vcpus", Some("--vcpus"), ""),
    ("memory_mib", Some("--mem"), ""),
    ("kernel", Some("--kernel"), ""),
    ("initramfs", Some("--initramfs"), ""),
    ("rootfs", Some("--image"), ""),
    ("overlay_mib", Some("--overlay-mib"), ""),
    ("vsock.guest_cid", None, ""),
    ("vsock.uds_path", None, ""),
    ("enable_networking", None, ""),
    (
        "boot_timeout_ms",
        Some("--boot-timeout"),
        "milliseconds; the flag takes seconds",
    ),
    (
        "exec_timeout_ms",
        Some("--timeout"),
        "milliseconds; the flag takes seconds",
    ),
    ("backend", Some("--backend"), ""),
    ("accel", Some("--accel"), ""),
    ("confinement.seccomp", Some("--seccomp"), ""),
    ("confinement.jail", Some("--no-jail"), ""),
    ("confinement.uid", Some("--vmm-uid"), ""),
    (
        "confinement.memory_limit_mib",
        Some("--vmm-memory-limit"),
        "",
    ),
    ("confinement.cpu_limit_millis", Some("--vmm-cpu-limit"), ""),
    ("confinement.pids_limit", Some("--vmm-pids-limit"), ""),
];

/// Library advice that names a setting by assignment, and what to say instead.
const ADVICE: &[(&str, &str)] = &[
    ("confinement.jail = false", "--no-jail"),
    ("confinement.jail is false", "--no-jail is given"),
];

/// A refusal already phrased in the user's terms: printed as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Where the values of a config came from: the flags, or a file (with the
/// fields a flag set on top of it).
#[derive(Debug, Clone)]
pub struct Origin {
    file: Option<PathBuf>,
    by_flag: BTreeSet<&'static str>,
}

impl Origin {
    pub fn flags() -> Origin {
        Origin {
            file: None,
            by_flag: BTreeSet::new(),
        }
    }
    pub fn file(path: &Path) -> Origin {
        Origin {
            file: Some(path.to_path_buf()),
            by_flag: BTreeSet::new(),
        }
    }
    /// Records that a flag set `field` (e.g. `--timeout` with `--config`).
    pub fn set_by_flag(&mut self, field: &'static str) {
        self.by_flag.insert(field);
    }
}

/// A refused config, naming the flag (or the file's field) it came from.
pub fn describe(e: &ConfigError, origin: &Origin) -> String {
    let from_file = origin
        .file
        .as_ref()
        .filter(|_| !origin.by_flag.contains(e.field));
    if let Some(file) = from_file {
        // The file's fields are the user's terms here, advice included.
        return format!("--config {}: `{}` {}", file.display(), e.field, e.reason);
    }
    let reason = in_flag_terms(&e.reason);
    match FIELD_FLAGS.iter().find(|(f, _, _)| *f == e.field) {
        Some((field, Some(flag), note)) if !note.is_empty() => {
            format!("invalid {flag}: {reason} ({note}; config field `{field}`)")
        }
        Some((field, Some(flag), _)) => {
            format!("invalid {flag}: {reason} (config field `{field}`)")
        }
        _ => format!(
            "invalid `{}`: {reason} (no flag sets it; pass a whole config with --config FILE)",
            e.field
        ),
    }
}

/// Rewrites the config settings a library message names into the flags that
/// reach them: `confinement.jail = false` → `--no-jail`, `memory_mib` →
/// `--mem`. Only dotted or underscored names are rewritten (a plain word like
/// "kernel" is prose, not a field); fields no flag sets stay as they are.
pub fn in_flag_terms(message: &str) -> String {
    let mut out = message.to_string();
    for (setting, flag) in ADVICE {
        out = out.replace(setting, flag);
    }
    // Longest first, so `confinement.memory_limit_mib` is not taken for `memory_mib`.
    let mut fields: Vec<_> = FIELD_FLAGS
        .iter()
        .filter(|(f, flag, _)| flag.is_some() && f.contains(['.', '_']))
        .collect();
    fields.sort_by_key(|(f, _, _)| std::cmp::Reverse(f.len()));
    for (field, flag, _) in fields {
        out = replace_word(&out, field, flag.unwrap_or_default());
    }
    out
}

/// Replaces `word` where it stands alone (not inside a longer name).
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + word.len()..].chars().next();
        // A trailing '.' ends a sentence; it does not continue the name.
        let after_ok = match after {
            Some('.') => !rest[i + word.len() + 1..]
                .chars()
                .next()
                .is_some_and(is_name),
            Some(c) => !is_name(c),
            None => true,
        };
        out.push_str(&rest[..i]);
        if before.is_some_and(is_name) || !after_ok {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

/// How an error that ends a subcommand is printed. `config_file`: whether the
/// VM came from `--config` (then the library's field names are the user's terms).
pub fn render(e: &anyhow::Error, config_file: bool) -> String {
    if e.downcast_ref::<Refusal>().is_some() || config_file {
        return format!("{e:#}");
    }
    if let Some(VmError::Config(c)) = e.downcast_ref::<VmError>() {
        return describe(c, &Origin::flags());
    }
    in_flag_terms(&format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(field: &'static str, reason: &str) -> ConfigError {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }

    #[test]
    fn every_field_with_a_flag_is_named_by_it() {
        let m = describe(&refused("confinement.jail", "is off"), &Origin::flags());
        assert!(m.starts_with("invalid --no-jail: is off"), "{m}");
        let m = describe(
            &refused("memory_mib", "is 64, must be between 128 and 65536"),
            &Origin::flags(),
        );
        assert!(m.starts_with("invalid --mem: is 64"), "{m}");
        let m = describe(&refused("boot_timeout_ms", "is 5"), &Origin::flags());
        assert!(m.contains("--boot-timeout") && m.contains("seconds"), "{m}");
        let m = describe(&refused("vsock.uds_path", "is bad"), &Origin::flags());
        assert!(
            m.contains("no flag sets it") && m.contains("--config"),
            "{m}"
        );
    }

    #[test]
    fn with_a_file_the_field_is_named_unless_a_flag_set_it() {
        let mut origin = Origin::file(Path::new("vm.json"));
        let m = describe(&refused("memory_mib", "is 64"), &origin);
        assert_eq!(m, "--config vm.json: `memory_mib` is 64");
        origin.set_by_flag("exec_timeout_ms");
        let m = describe(&refused("exec_timeout_ms", "is 0"), &origin);
        assert!(m.starts_with("invalid --timeout"), "{m}");
    }

    #[test]
    fn library_advice_is_rewritten_into_flags() {
        assert_eq!(
            in_flag_terms("needs root; run as root, or set confinement.jail = false to go on"),
            "needs root; run as root, or set --no-jail to go on"
        );
        assert_eq!(
            in_flag_terms("limit reached; raise confinement.memory_limit_mib"),
            "limit reached; raise --vmm-memory-limit"
        );
        assert_eq!(
            in_flag_terms("between 8 and memory_mib (256). or set confinement.uid."),
            "between 8 and --mem (256). or set --vmm-uid."
        );
        // Prose and names no flag sets stay.
        assert_eq!(
            in_flag_terms("the kernel's vsock.uds_path, my_memory_mib"),
            "the kernel's vsock.uds_path, my_memory_mib"
        );
    }

    #[test]
    fn render_keeps_refusals_and_translates_the_rest() {
        let e = anyhow::Error::new(Refusal("`memory_mib` stays".into()));
        assert_eq!(render(&e, false), "`memory_mib` stays");
        let e = anyhow::Error::new(VmError::Config(refused("vcpus", "is 0")));
        assert!(render(&e, false).starts_with("invalid --vcpus: is 0"));
        let e = anyhow::anyhow!("set confinement.jail = false");
        assert_eq!(render(&e, false), "set --no-jail");
        assert_eq!(render(&e, true), "set confinement.jail = false");
    }
}
