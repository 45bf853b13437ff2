//! A build's work directory beside the images, and the clean-up of those a
//! dead build left behind.

use std::fs;
use std::path::{Path, PathBuf};

use super::{io_err, UserlandError};

/// A build's work directory, `.build-<pid>-<random>`: removed when dropped,
/// and by a later build if this process died first.
pub(super) struct WorkDir {
    pub(super) path: PathBuf,
}

impl WorkDir {
    pub(super) fn create(images: &Path) -> Result<WorkDir, UserlandError> {
        let mut rnd = [0u8; 4];
        getrandom::getrandom(&mut rnd).map_err(|e| UserlandError::Io {
            context: "choosing a work directory name".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = images.join(format!(
            ".build-{}-{}",
            std::process::id(),
            hex::encode(rnd)
        ));
        fs::create_dir(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_work_dir(&self.path);
    }
}

fn remove_work_dir(path: &Path) {
    // debootstrap mounts /proc (and more) inside its target while it runs; a
    // killed build can leave them mounted. Detach them first so removing the
    // tree can never reach into a live /proc or /sys.
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(path))
            .collect();
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in points {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    let _ = fs::remove_dir_all(path);
}

/// Work directories of builds whose process is gone.
pub(super) fn remove_stale_work_dirs(images: &Path) {
    let Ok(rd) = fs::read_dir(images) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".build-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_work_dir(&e.path());
        }
    }
}
