//! Writing a root tree into an ext4 image with `mkfs.ext4 -d`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::key::walk;
use super::step::run_logged;
use super::{io_err, Progress, UserlandError};

/// Blocks, files and inodes a tree needs, not following symlinks.
fn tree_usage(root: &Path) -> Result<(u64, u64), UserlandError> {
    let mut bytes = 0u64;
    let mut inodes = 1u64;
    for (_, meta, _) in walk(root)? {
        inodes += 1;
        bytes += meta.len().div_ceil(4096) * 4096;
    }
    Ok((bytes, inodes))
}

/// `mkfs.ext4 -d root` into `image`, sized from the tree; retried larger if
/// the estimate was short. No journal: the image is only ever mounted read-only.
pub(super) fn make_ext4(
    root: &Path,
    image: &Path,
    log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), UserlandError> {
    let tool = crate::vm::host::which("mkfs.ext4")
        .or_else(|| Some(PathBuf::from("/usr/sbin/mkfs.ext4")).filter(|p| p.is_file()))
        .or_else(|| Some(PathBuf::from("/sbin/mkfs.ext4")).filter(|p| p.is_file()))
        .ok_or(UserlandError::MissingTool {
            tool: "mkfs.ext4",
            hint: "apt-get install e2fsprogs (or run scripts/setup.sh)",
        })?;
    let (bytes, inodes) = tree_usage(root)?;
    let inodes = inodes + inodes / 5 + 1024;
    // Data, inode tables (256 bytes each), then slack for directories' and
    // the file system's own blocks.
    let mut size_mib = (bytes + inodes * 256).div_ceil(1 << 20) * 6 / 5 + 32;
    const TRIES: u32 = 3;
    for attempt in 1..=TRIES {
        let _ = fs::remove_file(image);
        let f = fs::File::create(image).map_err(io_err(format!("creating {}", image.display())))?;
        f.set_len(size_mib << 20)
            .map_err(io_err(format!("sizing {}", image.display())))?;
        drop(f);
        let mut cmd = Command::new(&tool);
        cmd.args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-L",
            "ironclaw",
        ])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(root)
        .arg(image);
        match run_logged("mkfs.ext4", cmd, log, progress) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < TRIES => {
                progress(Progress::Detail(format!(
                    "{size_mib} MiB was not enough ({e}); retrying larger"
                )));
                size_mib = size_mib * 3 / 2;
            }
            Err(UserlandError::StepFailed { .. }) => {
                return Err(UserlandError::TooBig {
                    root: root.to_path_buf(),
                    size_mib,
                    tries: TRIES,
                })
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// mkfs.ext4 (e2fsprogs) is installed by scripts/setup.sh, which every
    /// test run goes through; without it this fails rather than pass unseen.
    #[test]
    fn build_from_a_directory_makes_an_ext4_image() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("tree/bin")).unwrap();
        fs::write(d.join("tree/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
        let image = d.join("out.ext4");
        make_ext4(&d.join("tree"), &image, &d.join("log"), &mut |_| {}).unwrap();
        let mut head = vec![0u8; 2048];
        fs::File::open(&image)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        // The ext4 superblock's magic 0xEF53 at offset 1024 + 56.
        assert_eq!(&head[1080..1082], &[0x53, 0xEF]);
    }
}
