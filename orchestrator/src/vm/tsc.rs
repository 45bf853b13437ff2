//! The host's TSC rate, which a QEMU guest kernel is told on its command line
//! (`tsc_early_khz=`).
//!
//! Under TCG, QEMU's guest `rdtsc` is the host's time-stamp counter plus an
//! offset, so the guest's TSC ticks at the host's rate. Calibrating it
//! against the emulated PIT is at the mercy of emulation (it stalled in the
//! first measurements, with QEMU 7.2; `docs/decisions.md`), so the kernel is
//! told the rate, and a wrong rate makes every guest clock run wrong: with
//! the 2 GHz once written here, a 2.6 GHz host ran its guests' clocks 30 %
//! fast (`sleep 5` returned after 3.9 s).
//!
//! The rate is measured against `CLOCK_MONOTONIC_RAW`, which the host kernel
//! itself derives from the TSC with its own calibration, so the measurement
//! recovers that calibration up to the sampling error (about 25 ppm over the
//! 25 ms window: a guest clock off by ~2 s a day, which the reseed of every
//! restore resets). Measured once per process, only when a VM boots (a
//! restored VM keeps the rate its snapshot was booted with: prototypes are
//! per host, as the cache is).

use std::sync::OnceLock;
use std::time::Duration;

/// How long the TSC is counted against the host clock.
const WINDOW: Duration = Duration::from_millis(25);

/// Rates outside this range (kHz) are a broken measurement, not a CPU.
const PLAUSIBLE_KHZ: std::ops::RangeInclusive<u64> = 100_000..=20_000_000;

/// The host's TSC rate in kHz, measured once per process; `None` where there
/// is no usable TSC (then the guest calibrates against the PIT).
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let khz = measure(WINDOW);
        if khz.is_none() {
            tracing::warn!("could not measure the host's TSC rate: guest kernels calibrate theirs");
        }
        khz
    })
}

/// One reading of the TSC with the raw monotonic clock around it: the
/// tightest of a few tries, timed at the midpoint (ns, TSC).
#[cfg(target_arch = "x86_64")]
fn sample() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..8 {
        let before = raw_ns();
        // SAFETY: rdtsc has no preconditions on x86_64.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        let after = raw_ns();
        let spread = after.saturating_sub(before);
        if spread < best.0 {
            best = (spread, before + spread / 2, tsc);
        }
    }
    (best.1, best.2)
}

#[cfg(target_arch = "x86_64")]
fn measure(window: Duration) -> Option<u64> {
    let (ns0, tsc0) = sample();
    std::thread::sleep(window);
    let (ns1, tsc1) = sample();
    let ns = ns1.checked_sub(ns0).filter(|&ns| ns > 0)?;
    let cycles = tsc1.checked_sub(tsc0)?;
    // cycles per ms = kHz.
    let khz = (cycles as u128 * 1_000_000 / ns as u128) as u64;
    PLAUSIBLE_KHZ.contains(&khz).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure(_window: Duration) -> Option<u64> {
    None
}

#[cfg(target_arch = "x86_64")]
fn raw_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for a clock every Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two measurements agree closely (the rate is the host's, not noise).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_rate_is_plausible_and_repeatable() {
        let a = measure(WINDOW).expect("a TSC on x86_64");
        let b = measure(WINDOW).expect("a TSC on x86_64");
        let diff = a.abs_diff(b) as f64 / a as f64;
        assert!(diff < 0.001, "{a} kHz then {b} kHz");
        assert_eq!(host_tsc_khz(), host_tsc_khz());
    }
}
