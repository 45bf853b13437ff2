//! The statistics of the benchmark report.

use std::time::Duration;

/// The median of the samples (the upper one of an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Milliseconds with one decimal, for the report.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The 90th percentile of the samples (nearest rank).
pub fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 9).div_ceil(10).max(1) - 1]
}
