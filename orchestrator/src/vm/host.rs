//! Small facts about the host every backend needs: finding tools (honouring
//! the `IRONCLAW_*` overrides), the tail of a log for an error message, and
//! the identity of an input file.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::VmError;

/// Finds `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `$env` when set, else `name` on `PATH`; `hint` says how to install it.
pub fn find_tool(env: &str, name: &str, hint: &str) -> Result<PathBuf, VmError> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| which(name))
        .ok_or_else(|| VmError::MissingTool {
            tool: name.into(),
            hint: hint.into(),
        })
}

/// The last `max` bytes of a log file, for error messages. Reads only those
/// bytes: a guest can make its console log large.
pub fn tail(path: &Path, max: usize) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max as u64)))?;
        let mut data = Vec::with_capacity(max.min(len as usize));
        f.take(max as u64).read_to_end(&mut data)?;
        Ok(data)
    };
    let Ok(data) = read() else {
        return format!("({} unreadable)", path.display());
    };
    let text = String::from_utf8_lossy(&data).trim().to_string();
    if text.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        text
    }
}

/// Identity of an input file: path, size, modification time and inode.
/// Cheap (no hashing) and changes whenever the file is replaced or rewritten.
pub fn file_identity(path: &Path) -> Result<String, VmError> {
    let m =
        fs::metadata(path).map_err(|e| VmError::io(format!("reading {}", path.display()), e))?;
    Ok(format!("{}:{}", path.display(), stat_stamp(&m)))
}

/// Size, mtime (ns) and inode: what changes when a file is rewritten or replaced.
pub fn stat_stamp(m: &fs::Metadata) -> String {
    format!(
        "{}:{}:{}",
        m.len(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ino()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_only_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nlast words\n");
        fs::write(&log, &text).unwrap();
        assert_eq!(tail(&log, 11), "last words");
        assert!(tail(&dir.path().join("none"), 10).contains("unreadable"));
        fs::write(&log, "").unwrap();
        assert!(tail(&log, 10).contains("is empty"));
    }

    #[test]
    fn identity_changes_when_a_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kernel");
        fs::write(&f, "a").unwrap();
        let before = file_identity(&f).unwrap();
        fs::remove_file(&f).unwrap();
        fs::write(&f, "bb").unwrap();
        assert_ne!(before, file_identity(&f).unwrap());
    }
}
