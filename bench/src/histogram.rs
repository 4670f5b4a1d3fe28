//! Latency samples and their percentiles (HDR histogram, microseconds).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::model::Latency;

/// Latencies in microseconds, 1 µs to 60 s, three significant digits.
#[derive(Debug)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies { histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds") }
    }
}

/// Percentiles of the curve drawn in charts.
const CURVE: [f64; 14] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 100.0];

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        // Values above the top bound are clamped rather than lost.
        self.histogram.saturating_record(micros);
    }

    pub fn merge(&mut self, other: Latencies) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn percentile(&self, percentile: f64) -> u64 {
        self.histogram.value_at_percentile(percentile)
    }

    pub fn summary(&self) -> Latency {
        if self.histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            mean: self.histogram.mean(),
            p50: self.percentile(50.0),
            p90: self.percentile(90.0),
            p99: self.percentile(99.0),
            p999: self.percentile(99.9),
            max: self.histogram.max(),
            curve: CURVE.iter().map(|p| (*p, self.percentile(*p))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles of known distributions, within the histogram's 0.1% precision.
    #[test]
    fn uniform_distribution() {
        let mut latencies = Latencies::default();
        for micros in 1..=100_000u64 {
            latencies.record(Duration::from_micros(micros));
        }
        let close = |value: u64, expected: u64| (value as f64 - expected as f64).abs() <= expected as f64 * 0.001 + 1.0;
        assert!(close(latencies.percentile(50.0), 50_000), "{}", latencies.percentile(50.0));
        assert!(close(latencies.percentile(99.0), 99_000));
        assert!(close(latencies.percentile(99.9), 99_900));
        let summary = latencies.summary();
        assert!((summary.mean - 50_000.5).abs() < 50.0, "{}", summary.mean);
        assert!(close(summary.max, 100_000));
        assert_eq!(summary.curve.len(), CURVE.len());
        assert!(summary.curve.windows(2).all(|w| w[0].1 <= w[1].1), "a percentile curve never falls");
    }

    #[test]
    fn bimodal_distribution_and_merging() {
        // 99% fast (100 µs), 1% slow (10 ms): p99 is fast, p99.9 is slow.
        let mut fast = Latencies::default();
        let mut slow = Latencies::default();
        for _ in 0..99_000 {
            fast.record(Duration::from_micros(100));
        }
        for _ in 0..1_000 {
            slow.record(Duration::from_millis(10));
        }
        fast.merge(slow);
        assert_eq!(fast.count(), 100_000);
        assert_eq!(fast.percentile(50.0), 100);
        assert_eq!(fast.percentile(99.0), 100);
        let p999 = fast.percentile(99.9);
        assert!((9_990..=10_010).contains(&p999), "{p999}");
    }

    #[test]
    fn extremes_are_kept() {
        let mut latencies = Latencies::default();
        latencies.record(Duration::ZERO);
        latencies.record(Duration::from_secs(3600));
        assert_eq!(latencies.count(), 2);
        assert_eq!(latencies.percentile(0.0), 1);
        assert!(latencies.summary().max >= 59_000_000);
        assert_eq!(Latencies::default().summary(), Latency::default());
    }
}
