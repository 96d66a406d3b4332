//! Latency histograms as the probes (and the daemon's lock service) record
//! them: the buckets of a Prometheus native histogram of schema 3 in
//! seconds, about 9% wide (see `claudefs_ebpf_common::hist_bucket`, the
//! one function the kernel and userspace both use), and the percentile
//! math over them.
//!
//! Bucket 0 holds every value up to 2^-20 s (about 954 ns, the native zero
//! bucket); bucket `j >= 1` is native bucket `j - HIST_NATIVE_OFFSET`. A
//! percentile is placed by linear interpolation inside the bucket holding
//! its rank, so it is within one bucket width (9.05%) of the true value.

use std::sync::OnceLock;

use claudefs_ebpf_common::{hist_bucket, HIST_BUCKETS, HIST_NATIVE_OFFSET};

/// The native histogram schema of the buckets (8 per power of two).
pub const NATIVE_SCHEMA: i32 = 3;

/// A merged latency histogram of nanosecond values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub buckets: [u64; HIST_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: [0; HIST_BUCKETS],
        }
    }
}

/// Largest value (ns) of each bucket, inclusive, found from `hist_bucket`
/// itself so the bounds agree with the kernel's bucketing exactly.
fn uppers() -> &'static [u64; HIST_BUCKETS] {
    static UPPERS: OnceLock<[u64; HIST_BUCKETS]> = OnceLock::new();
    UPPERS.get_or_init(|| {
        let mut out = [u64::MAX; HIST_BUCKETS];
        for (i, slot) in out.iter_mut().enumerate().take(HIST_BUCKETS - 1) {
            // The largest v with hist_bucket(v) <= i (the function is
            // monotonic): binary search over u64.
            let (mut lo, mut hi) = (0u64, u64::MAX);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if hist_bucket(mid) <= i {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            *slot = lo;
        }
        out
    })
}

impl LatencyHistogram {
    /// The bucket of `ns`.
    pub fn bucket_of(ns: u64) -> usize {
        hist_bucket(ns)
    }

    /// Smallest value (ns) of bucket `i`, inclusive.
    pub fn bucket_lower(i: usize) -> u64 {
        match i {
            0 => 0,
            i => uppers()[(i - 1).min(HIST_BUCKETS - 1)].saturating_add(1),
        }
    }

    /// Largest value (ns) of bucket `i`, inclusive (`u64::MAX` for the
    /// last bucket, which holds everything above).
    pub fn bucket_upper(i: usize) -> u64 {
        uppers()[i.min(HIST_BUCKETS - 1)]
    }

    /// The native histogram index of bucket `i` (schema 3, seconds);
    /// `None` for bucket 0, the zero bucket.
    pub fn native_index(i: usize) -> Option<i32> {
        (i > 0).then(|| i as i32 - HIST_NATIVE_OFFSET)
    }

    /// The exact upper boundary of bucket `i` in seconds, as Prometheus
    /// sees it: `2^(native index / 8)` (the zero bucket's threshold for 0).
    pub fn upper_seconds(i: usize) -> f64 {
        let native = i as i32 - HIST_NATIVE_OFFSET;
        2f64.powf(f64::from(native) / 8.0)
    }

    /// The native zero bucket's threshold, seconds: 2^-20.
    pub fn zero_threshold_seconds() -> f64 {
        Self::upper_seconds(0)
    }

    pub fn record(&mut self, ns: u64) {
        let b = &mut self.buckets[Self::bucket_of(ns)];
        *b = b.saturating_add(1);
    }

    /// Adds another histogram (per-CPU merge).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Observations up to `i` included.
    pub fn cumulative(&self, i: usize) -> u64 {
        self.buckets[..=i.min(HIST_BUCKETS - 1)]
            .iter()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Estimated `q`-quantile (0.0..=1.0) in ns: the value is placed by
    /// linear interpolation inside the bucket that holds the rank, so the
    /// estimate always lies within that bucket's bounds. None if empty.
    /// The last bucket is unbounded: callers cap with the exact maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // Rank of the wanted observation, 1-based.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if seen.saturating_add(n) >= rank {
                let lo = Self::bucket_lower(i) as f64;
                let hi = Self::bucket_upper(i) as f64;
                let frac = (rank - seen) as f64 / n as f64;
                return Some((lo + (hi - lo) * frac) as u64);
            }
            seen = seen.saturating_add(n);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_kernel_bucketing() {
        for i in 1..HIST_BUCKETS - 1 {
            let (lo, hi) = (
                LatencyHistogram::bucket_lower(i),
                LatencyHistogram::bucket_upper(i),
            );
            assert!(lo <= hi, "bucket {i}");
            assert_eq!(LatencyHistogram::bucket_of(lo), i);
            assert_eq!(LatencyHistogram::bucket_of(hi), i);
            assert_eq!(LatencyHistogram::bucket_of(hi + 1), i + 1);
        }
        assert_eq!(LatencyHistogram::bucket_lower(0), 0);
        assert_eq!(LatencyHistogram::bucket_upper(0), 953);
        assert_eq!(LatencyHistogram::bucket_upper(HIST_BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn native_boundaries_in_seconds() {
        // 1 s is the upper bound of native bucket 0.
        let one_s = LatencyHistogram::bucket_of(1_000_000_000);
        assert_eq!(LatencyHistogram::native_index(one_s), Some(0));
        assert_eq!(LatencyHistogram::bucket_upper(one_s), 1_000_000_000);
        assert_eq!(LatencyHistogram::upper_seconds(one_s), 1.0);
        assert_eq!(LatencyHistogram::native_index(0), None);
        assert_eq!(LatencyHistogram::zero_threshold_seconds(), 2f64.powi(-20));
        // The integer bounds sit on the float boundaries: exactly below
        // 2^33 ns, within 2^-31 relative above (32-bit fraction).
        for i in 1..HIST_BUCKETS - 1 {
            let upper_ns = LatencyHistogram::upper_seconds(i) * 1e9;
            let got = LatencyHistogram::bucket_upper(i) as f64;
            let slack = if upper_ns < 2f64.powi(33) {
                1.0 + upper_ns * 1e-12
            } else {
                upper_ns * 2f64.powi(-31)
            };
            assert!((got - upper_ns).abs() < slack, "{i}: {got} vs {upper_ns}");
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket_width() {
        // A spread of values: every estimate within 9.1% of the exact one.
        let values: Vec<u64> = (0..10_000u64).map(|i| 50_000 + i * i * 37).collect();
        let mut h = LatencyHistogram::default();
        values.iter().for_each(|&v| h.record(v));
        let mut sorted = values.clone();
        sorted.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = sorted[((q * sorted.len() as f64).ceil() as usize).max(1) - 1] as f64;
            let est = h.quantile(q).unwrap() as f64;
            assert!(
                (est - exact).abs() / exact < 0.091,
                "q={q}: {est} vs {exact}"
            );
        }
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn a_24_ms_value_lands_in_its_sub_bucket() {
        let b = LatencyHistogram::bucket_of(24_000_000);
        assert!(LatencyHistogram::bucket_lower(b) <= 24_000_000);
        assert!(LatencyHistogram::bucket_upper(b) >= 24_000_000);
        // 9% wide: 22 ms and 26 ms are elsewhere.
        assert_ne!(LatencyHistogram::bucket_of(22_000_000), b);
        assert_ne!(LatencyHistogram::bucket_of(26_000_000), b);
    }

    #[test]
    fn merge_and_saturation() {
        let mut a = LatencyHistogram::default();
        a.buckets[5] = u64::MAX;
        let mut b = LatencyHistogram::default();
        b.buckets[5] = 3;
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.buckets[5], u64::MAX);
        assert_eq!(a.count(), u64::MAX);
        assert_eq!(a.cumulative(4), 0);
        assert_eq!(a.cumulative(5), u64::MAX);
    }
}
