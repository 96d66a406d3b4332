//! Log2 latency histograms as the probes record them (bucket `i` holds
//! values `v` with `floor(log2(v)) == i`, 0 in bucket 0), and the
//! percentile math over them.

use claudefs_ebpf_common::HIST_BUCKETS;

/// A merged log2 histogram of nanosecond values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log2Histogram {
    pub buckets: [u64; HIST_BUCKETS],
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self {
            buckets: [0; HIST_BUCKETS],
        }
    }
}

impl Log2Histogram {
    /// The bucket index the kernel uses for `value`.
    pub fn bucket_of(value: u64) -> usize {
        if value == 0 {
            0
        } else {
            63 - value.leading_zeros() as usize
        }
    }

    /// Smallest value of bucket `i` (inclusive).
    pub fn bucket_lower(i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            1u64 << i
        }
    }

    /// Largest value of bucket `i` (inclusive).
    pub fn bucket_upper(i: usize) -> u64 {
        if i >= 63 {
            u64::MAX
        } else {
            (1u64 << (i + 1)) - 1
        }
    }

    pub fn record(&mut self, value: u64) {
        self.buckets[Self::bucket_of(value)] += 1;
    }

    /// Adds another histogram (per-CPU merge).
    pub fn merge(&mut self, other: &Log2Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Estimated `q`-quantile (0.0..=1.0) in ns: the value is placed by
    /// linear interpolation inside the bucket that holds the rank, so the
    /// estimate always lies within that bucket's bounds. None if empty.
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
            if seen + n >= rank {
                let lo = Self::bucket_lower(i) as f64;
                let hi = Self::bucket_upper(i) as f64;
                let frac = (rank - seen) as f64 / n as f64;
                return Some((lo + (hi - lo) * frac) as u64);
            }
            seen += n;
        }
        None
    }
}
