//! What the load-generating benches share: settings from the environment and
//! latency percentiles.

use std::time::Duration;

/// The environment variable `name` parsed as `T`, or `default` when it is unset
/// or does not parse.
///
/// ```
/// assert_eq!(kaa_testkit::bench::env_or("KAA_TESTKIT_UNSET_EXAMPLE", 7usize), 7);
/// ```
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0.0–1.0) of `sorted` (ascending) by the nearest-rank method:
/// the smallest value with at least `p` of the values at or below it; zero for
/// no values.
///
/// ```
/// use std::time::Duration;
/// use kaa_testkit::bench::percentile;
/// let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
/// assert_eq!(percentile(&ms, 0.5), Duration::from_millis(50));
/// assert_eq!(percentile(&ms, 0.99), Duration::from_millis(99));
/// assert_eq!(percentile(&ms, 1.0), Duration::from_millis(100));
/// assert_eq!(percentile(&[], 0.5), Duration::ZERO);
/// ```
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() as f64 * p.clamp(0.0, 1.0)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
