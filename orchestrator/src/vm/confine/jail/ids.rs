//! The unprivileged uid/gid each VM's processes run as.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::vm::runtime::RuntimeDir;

/// First jail uid: far above the accounts a host hands out.
const BASE: u32 = 2_000_000_000;
/// How many jail uids there are.
const SPAN: u32 = 1_000_000;

/// The uid/gid a VM's processes run as: `fixed` (the config's) when given;
/// else one of `BASE..BASE+SPAN` (starting at a hash of the runtime
/// directory) that no other live VM under the same runtime root holds and
/// that is no account or group of the host, leased in the VM's records until
/// they are removed with it. One VMM can then never signal or own another's
/// processes and files.
pub fn vm_ids(dir: &RuntimeDir, fixed: Option<u32>) -> std::io::Result<(u32, u32)> {
    if let Some(id) = fixed {
        return Ok((id, id));
    }
    let uid = dir.lease_uid(candidates(dir.path(), BASE, SPAN), |id| !account_exists(id))?;
    Ok((uid, uid))
}

/// A uid leased for the VM of `dir` from the range `base..base+SPAN`, the
/// lowest free one first (a configured range, e.g. the jailer's): never one
/// another live VM under the same runtime root holds, never an account or
/// group of the host.
pub fn lease_from(dir: &RuntimeDir, base: u32) -> std::io::Result<u32> {
    let span = SPAN.min(u32::MAX - base);
    dir.lease_uid((0..span).map(move |i| base + i), |id| !account_exists(id))
}

/// `base..base+span`, starting at a hash of `dir` and wrapping around.
fn candidates(dir: &Path, base: u32, span: u32) -> impl Iterator<Item = u32> {
    let start = (dir_hash(dir) % u64::from(span)) as u32;
    (0..span).map(move |i| base + (start + i) % span)
}

/// Whether `id` is a user or group the host knows (a jail uid must be nobody's).
/// A lookup that fails counts as taken.
fn account_exists(id: u32) -> bool {
    !matches!(User::from_uid(Uid::from_raw(id)), Ok(None))
        || !matches!(Group::from_gid(Gid::from_raw(id)), Ok(None))
}

/// FNV-1a of a path: stable across runs and builds (DefaultHasher is not).
pub fn dir_hash(path: &Path) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_live_vms_never_share_a_uid() {
        let root = tempfile::tempdir().unwrap();
        let a = RuntimeDir::create(root.path(), "a").unwrap();
        let (ua, ga) = vm_ids(&a, None).unwrap();
        assert_eq!(ua, ga);
        assert!(ua >= BASE);
        // Another VM whose hash lands on the same uid: every candidate list
        // starting at `a`'s uid gets the next free one instead.
        let b = RuntimeDir::create(root.path(), "b").unwrap();
        let same_start = (ua - BASE..SPAN).chain(0..ua - BASE).map(|i| BASE + i);
        let ub = b.lease_uid(same_start, |_| true).unwrap();
        assert_ne!(ua, ub, "two live VMs got one uid");
        // Once `a` is gone, its uid is free again.
        drop(a);
        let c = RuntimeDir::create(root.path(), "c").unwrap();
        let again = c
            .lease_uid((ua - BASE..SPAN).map(|i| BASE + i), |_| true)
            .unwrap();
        assert_eq!(again, ua);
        // A fixed uid is taken as given.
        assert_eq!(vm_ids(&c, Some(1234)).unwrap(), (1234, 1234));
        // From a configured range: the lowest free uid, one per live VM.
        let base = BASE + SPAN - 10;
        let d = RuntimeDir::create(root.path(), "d").unwrap();
        let e = RuntimeDir::create(root.path(), "e").unwrap();
        assert_eq!(lease_from(&d, base).unwrap(), base);
        assert_eq!(lease_from(&e, base).unwrap(), base + 1);
    }

    #[test]
    fn host_accounts_are_skipped() {
        // uid/gid 0 is root on every host: never handed out.
        assert!(account_exists(0));
        let root = tempfile::tempdir().unwrap();
        let d = RuntimeDir::create(root.path(), "d").unwrap();
        let got = d
            .lease_uid(candidates(Path::new("/x"), 0, 2), |id| !account_exists(id))
            .unwrap_or(u32::MAX);
        assert_ne!(got, 0);
    }

    #[test]
    fn candidates_cover_the_range_once_from_the_hash() {
        let all: Vec<u32> = candidates(Path::new("/run/ironclaw/a"), 10, 5).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, vec![10, 11, 12, 13, 14]);
        assert_eq!(
            all[0],
            10 + (dir_hash(Path::new("/run/ironclaw/a")) % 5) as u32
        );
    }
}
