//! Whether a uid/gid may read or look up a path, by its mode bits: the jail
//! uid reads boot files through bind mounts and the jailer's chroot through
//! hard links, so only the files' own permissions count.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether the mode of `m` grants `uid`/`gid` the access `bits` (`0o4`
/// read, `0o1` execute/search), as other, owner or group.
fn allows(m: &Metadata, uid: u32, gid: u32, bits: u32) -> bool {
    let mode = m.mode();
    mode & bits != 0
        || (m.uid() == uid && mode & (bits << 6) != 0)
        || (m.gid() == gid && mode & (bits << 3) != 0)
}

/// Whether `uid`/`gid` may read the file of `m`.
pub fn readable_by(m: &Metadata, uid: u32, gid: u32) -> bool {
    allows(m, uid, gid, 0o4)
}

/// Whether `uid`/`gid` may look up `path`: every directory on the way must
/// be searchable (a program under `/root`, say, is not).
pub fn reachable(path: &Path, uid: u32, gid: u32) -> bool {
    path.ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| allows(&m, uid, gid, 0o1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn mode_bits_decide_for_other_owner_and_group() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let f = dir.join("f");
        std::fs::write(&f, "x").unwrap();
        let (me, mygroup) = {
            let m = std::fs::metadata(&f).unwrap();
            (m.uid(), m.gid())
        };
        let mode = |bits| {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(bits)).unwrap();
            std::fs::metadata(&f).unwrap()
        };
        let stranger = 2_000_000_001;
        assert!(readable_by(&mode(0o004), stranger, stranger));
        assert!(!readable_by(&mode(0o640), stranger, stranger));
        assert!(readable_by(&mode(0o400), me, stranger));
        assert!(readable_by(&mode(0o040), stranger, mygroup));
        assert!(!readable_by(&mode(0o100), me, mygroup));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!reachable(&f, stranger, stranger));
        assert!(reachable(&f, me, mygroup));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(reachable(&f, stranger, stranger));
    }
}
