//! Live snapshots whose guest RAM a restored VM maps instead of copying.
//!
//! QEMU's `mapped-ram` migration capability (QEMU ≥ 9.0) writes each RAM
//! block's pages at fixed, page-aligned offsets of the snapshot file (zero
//! pages left as holes), with a bitmap of the pages present. After a live
//! snapshot is written, [`detach_ram`] clears that bitmap for the guest RAM
//! block (`mem`): the loader then reads none of its pages, and the restored
//! VM maps the pages region of the same file private
//! (`memory-backend-file,offset=…,readonly=on,share=off`) — the snapshot's
//! pages are shared in the host's page cache by every VM restored from it,
//! as a prototype's memory file is by its clones.
//!
//! Where the block's header is, is read from the file and checked against
//! itself (its version, its page size, its bitmap starting right after it,
//! its pages 1 MiB-aligned after the bitmap and inside the file), so a file
//! of another layout is refused rather than misread.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The guest RAM block: the memory backend's id (see `GuestMemory`).
const RAM_BLOCK: &[u8] = b"mem";
/// `MappedRamHeader`: be32 version, be64 page size, bitmap offset, pages offset.
const HEADER_BYTES: usize = 4 + 8 + 8 + 8;
const HEADER_VERSION: u32 = 1;
const PAGE: u64 = 4096;
/// QEMU aligns each block's pages region to 1 MiB in the file.
const PAGES_ALIGN: u64 = 1 << 20;
/// The stream's set-up section, where the block headers are, is near the start.
const SETUP_SCAN: usize = 1 << 16;

/// Where the guest RAM block of a `mapped-ram` snapshot lies in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    pub bitmap_offset: u64,
    pub pages_offset: u64,
    pub bytes: u64,
}

impl RamRegion {
    fn bitmap_bytes(&self) -> u64 {
        // One bit per page, in whole 64-bit words.
        (self.bytes / PAGE).div_ceil(64) * 8
    }
}

/// Finds the header of the guest RAM block of `ram_bytes` in the snapshot
/// file `path`.
pub fn ram_region(path: &Path, ram_bytes: u64) -> Result<RamRegion, String> {
    let mut file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .len();
    let mut head = Vec::with_capacity(SETUP_SCAN);
    (&mut file)
        .take(SETUP_SCAN as u64)
        .read_to_end(&mut head)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    find(&head, ram_bytes, len).ok_or_else(|| {
        format!(
            "{} has no mapped-ram header for a guest RAM block of {} MiB",
            path.display(),
            ram_bytes >> 20
        )
    })
}

/// The block record (`len`, id, be64 size) followed by a header that checks out.
fn find(head: &[u8], ram_bytes: u64, file_len: u64) -> Option<RamRegion> {
    let mut record = vec![RAM_BLOCK.len() as u8];
    record.extend_from_slice(RAM_BLOCK);
    record.extend_from_slice(&ram_bytes.to_be_bytes());
    let mut from = 0;
    while let Some(i) = head[from..]
        .windows(record.len())
        .position(|w| w == record.as_slice())
    {
        let at = from + i + record.len();
        if let Some(h) = head.get(at..at + HEADER_BYTES) {
            let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().unwrap());
            let region = RamRegion {
                bitmap_offset: be64(12),
                pages_offset: be64(20),
                bytes: ram_bytes,
            };
            let version = u32::from_be_bytes(h[0..4].try_into().unwrap());
            if version == HEADER_VERSION
                && be64(4) == PAGE
                && region.bitmap_offset == (at + HEADER_BYTES) as u64
                && region.pages_offset.is_multiple_of(PAGES_ALIGN)
                && region.pages_offset >= region.bitmap_offset + region.bitmap_bytes()
                && region.pages_offset + ram_bytes <= file_len
            {
                return Some(region);
            }
        }
        from += i + 1;
    }
    None
}

/// Makes the snapshot `path` (just written with `mapped-ram`) one whose
/// guest RAM is mapped, not loaded: clears the RAM block's page bitmap and
/// makes the file read-only for everyone (its directory keeps others out;
/// the restored VM's jail uid reads it through a bind mount).
pub fn detach_ram(path: &Path, ram_bytes: u64) -> Result<RamRegion, String> {
    let region = ram_region(path, ram_bytes)?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(region.bitmap_offset))
        .and_then(|_| file.write_all(&vec![0u8; region.bitmap_bytes() as usize]))
        .and_then(|_| file.sync_data())
        .and_then(|_| file.set_permissions(std::fs::Permissions::from_mode(0o444)))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(region)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file laid out as QEMU writes it: some stream bytes, the block
    /// record, the header, the bitmap, the pages at 1 MiB.
    fn snapshot(dir: &Path, ram: u64, bitmap_offset_delta: u64) -> std::path::PathBuf {
        let mut head = b"QEVM\0\0\0\x03 other sections".to_vec();
        head.push(3);
        head.extend_from_slice(b"mem");
        head.extend_from_slice(&ram.to_be_bytes());
        let bitmap_offset = (head.len() + HEADER_BYTES) as u64 + bitmap_offset_delta;
        head.extend_from_slice(&1u32.to_be_bytes());
        head.extend_from_slice(&PAGE.to_be_bytes());
        head.extend_from_slice(&bitmap_offset.to_be_bytes());
        head.extend_from_slice(&PAGES_ALIGN.to_be_bytes());
        head.extend_from_slice(&[0xff; 64]);
        let path = dir.join("snapshot.mapped-ram");
        let mut f = File::create(&path).unwrap();
        f.write_all(&head).unwrap();
        f.set_len(PAGES_ALIGN + ram + 100).unwrap();
        path
    }

    #[test]
    fn the_ram_block_is_found_and_its_bitmap_cleared() {
        let t = tempfile::tempdir().unwrap();
        let ram = 64 * PAGE;
        let path = snapshot(t.path(), ram, 0);
        let region = ram_region(&path, ram).unwrap();
        assert_eq!(region.pages_offset, PAGES_ALIGN);
        assert_eq!(region.bitmap_bytes(), 8);
        detach_ram(&path, ram).unwrap();
        let data = std::fs::read(&path).unwrap();
        let b = region.bitmap_offset as usize;
        assert_eq!(&data[b..b + 8], &[0u8; 8], "bitmap cleared");
        assert_eq!(data[b + 8], 0xff, "nothing after it touched");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
    }

    #[test]
    fn a_header_that_does_not_check_out_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let ram = 64 * PAGE;
        // The bitmap not right after the header: another layout.
        let path = snapshot(t.path(), ram, 8);
        assert!(ram_region(&path, ram).is_err());
        // Another RAM size than the VM's.
        let path = snapshot(t.path(), ram, 0);
        let err = ram_region(&path, 2 * ram).unwrap_err();
        assert!(err.contains("no mapped-ram header"), "{err}");
        // A file cut short of its pages region.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(PAGES_ALIGN)
            .unwrap();
        assert!(ram_region(&path, ram).is_err());
    }
}
