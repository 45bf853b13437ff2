//! Fresh randomness and the right time for a VM restored from a snapshot.

use std::io;
use std::os::fd::AsRawFd;

use ironclaw_protocol::MAX_RESEED_ENTROPY;

/// `_IOW('R', 0x03, int[2])`: add entropy, crediting it.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// `/dev/urandom`, opened once (by [`open_urandom`] when the agent starts, so
/// a snapshot's clones reseed without a path walk of their own).
static URANDOM: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Opens `/dev/urandom` for [`reseed`] ahead of the first request.
pub fn open_urandom() {
    if let Err(e) = urandom() {
        eprintln!("ironclaw-guest: opening /dev/urandom: {e}");
    }
}

fn urandom() -> io::Result<&'static std::fs::File> {
    if let Some(f) = URANDOM.get() {
        return Ok(f);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    Ok(URANDOM.get_or_init(|| f))
}

pub fn reseed(entropy: &[u8], unix_time_ns: u64) -> io::Result<()> {
    if entropy.is_empty() || entropy.len() > MAX_RESEED_ENTROPY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "entropy must be 1..={MAX_RESEED_ENTROPY} bytes, got {}",
                entropy.len()
            ),
        ));
    }
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    let urandom = urandom()?;
    // SAFETY: info is a correctly laid out rand_pool_info that outlives the call.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Without an explicit reseed, clones would keep the CRNG state of the
    // snapshot until the kernel's next scheduled reseed.
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec for CLOCK_REALTIME.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
