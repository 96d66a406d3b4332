//! Building Prometheus metric families by hand: the collectors compute
//! their values at scrape time and emit `MetricFamily` values directly,
//! so nothing in the FUSE request path touches a Prometheus type.
//!
//! [`classic_histogram`] turns a latency histogram of the probes (schema-3
//! native buckets in seconds) into a classic Prometheus histogram: one
//! cumulative bucket per power of two seconds, each exactly one of the
//! native bucket boundaries, so nothing is approximated.

use std::collections::BTreeMap;

use prometheus::core::Desc;
use prometheus::proto::{self, MetricFamily, MetricType};

use super::names::Family;
use crate::probes::hist::LatencyHistogram;

/// Smallest finite `le` bound: 2^-20 s (about 954 ns, the native zero
/// bucket's threshold). Faster values are counted in this bucket (buckets
/// are cumulative).
pub const FIRST_BOUND_LOG2_SECONDS: i32 = -20;
/// Largest finite `le` bound: 2^6 s (64 s). Slower values are only in
/// `+Inf`.
pub const LAST_BOUND_LOG2_SECONDS: i32 = 6;

/// The classic `le` bounds: (latency bucket whose upper boundary it is,
/// bound in seconds) for `2^n` s, `n` in
/// [`FIRST_BOUND_LOG2_SECONDS`]..=[`LAST_BOUND_LOG2_SECONDS`].
pub fn classic_bounds() -> impl Iterator<Item = (usize, f64)> {
    (FIRST_BOUND_LOG2_SECONDS..=LAST_BOUND_LOG2_SECONDS).map(|n| {
        let bucket = (8 * n + claudefs_ebpf_common::HIST_NATIVE_OFFSET) as usize;
        (bucket, 2f64.powi(n))
    })
}

/// A latency histogram (ns) as a classic Prometheus histogram in seconds:
/// the bucket with bound `2^n` s counts every latency bucket up to the one
/// whose upper boundary it is. `_count` is the number of observations,
/// `_sum` is `total_ns / 1e9`.
pub fn classic_histogram(h: &LatencyHistogram, total_ns: u64) -> proto::Histogram {
    let mut out = proto::Histogram::default();
    let buckets = classic_bounds()
        .map(|(bucket, le)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(le);
            b.set_cumulative_count(h.cumulative(bucket));
            b
        })
        .collect();
    out.set_bucket(buckets);
    out.set_sample_count(h.count());
    out.set_sample_sum(total_ns as f64 / 1e9);
    out
}

/// Label values, in the order of the family's label names.
pub type LabelValues = Vec<String>;

/// Samples of one family, merged by label values (two sources with the
/// same labels add up, so a family never has duplicate series).
#[derive(Debug)]
pub struct FamilyBuilder {
    family: Family,
    kind: MetricType,
    samples: BTreeMap<LabelValues, Sample>,
}

#[derive(Debug, Clone)]
enum Sample {
    Value(f64),
    Histogram {
        hist: Box<LatencyHistogram>,
        total_ns: u64,
    },
}

impl FamilyBuilder {
    pub fn counter(family: Family) -> Self {
        Self::new(family, MetricType::COUNTER)
    }

    pub fn gauge(family: Family) -> Self {
        Self::new(family, MetricType::GAUGE)
    }

    pub fn histogram(family: Family) -> Self {
        Self::new(family, MetricType::HISTOGRAM)
    }

    fn new(family: Family, kind: MetricType) -> Self {
        Self {
            family,
            kind,
            samples: BTreeMap::new(),
        }
    }

    /// Adds `v` to the series with these label values (a gauge sums too,
    /// which is what merging two sources of one series means here).
    pub fn add(&mut self, labels: LabelValues, v: f64) -> &mut Self {
        debug_assert_eq!(labels.len(), self.family.labels.len());
        match self.samples.entry(labels).or_insert(Sample::Value(0.0)) {
            Sample::Value(x) => *x += v,
            Sample::Histogram { .. } => {}
        }
        self
    }

    /// Merges a log2 histogram of nanoseconds into the series.
    pub fn add_hist(
        &mut self,
        labels: LabelValues,
        h: &LatencyHistogram,
        total_ns: u64,
    ) -> &mut Self {
        debug_assert_eq!(labels.len(), self.family.labels.len());
        match self
            .samples
            .entry(labels)
            .or_insert_with(|| Sample::Histogram {
                hist: Box::default(),
                total_ns: 0,
            }) {
            Sample::Histogram { hist, total_ns: t } => {
                hist.merge(h);
                *t = t.saturating_add(total_ns);
            }
            Sample::Value(_) => {}
        }
        self
    }

    /// The family (with HELP and TYPE); None if it has no series.
    pub fn build(self) -> Option<MetricFamily> {
        if self.samples.is_empty() {
            return None;
        }
        let mut mf = MetricFamily::default();
        mf.set_name(self.family.name.to_string());
        mf.set_help(self.family.help.to_string());
        mf.set_field_type(self.kind);
        let mut metrics = Vec::with_capacity(self.samples.len());
        for (labels, sample) in self.samples {
            let mut m = proto::Metric::default();
            let pairs = self
                .family
                .labels
                .iter()
                .zip(labels)
                .map(|(name, value)| {
                    let mut p = proto::LabelPair::default();
                    p.set_name(name.to_string());
                    p.set_value(value);
                    p
                })
                .collect();
            m.set_label(pairs);
            match sample {
                Sample::Value(v) => match self.kind {
                    MetricType::COUNTER => {
                        let mut c = proto::Counter::default();
                        c.set_value(v);
                        m.set_counter(c);
                    }
                    _ => {
                        let mut g = proto::Gauge::default();
                        g.set_value(v);
                        m.set_gauge(g);
                    }
                },
                Sample::Histogram { hist, total_ns } => {
                    m.set_histogram(classic_histogram(&hist, total_ns));
                }
            }
            metrics.push(m);
        }
        mf.set_metric(metrics);
        Some(mf)
    }
}

/// Descriptors of `families` (for `Collector::desc`).
pub fn descs(families: &[Family]) -> Vec<Desc> {
    families
        .iter()
        .filter_map(|f| {
            Desc::new(
                f.name.to_string(),
                f.help.to_string(),
                f.labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
            .ok()
        })
        .collect()
}

/// Encodes families in the text exposition format.
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    use prometheus::Encoder;
    let mut buf = Vec::with_capacity(16 * 1024);
    let _ = prometheus::TextEncoder::new().encode(families, &mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::names;

    fn hist(values: &[u64]) -> (LatencyHistogram, u64) {
        let mut h = LatencyHistogram::default();
        for v in values {
            h.record(*v);
        }
        (h, values.iter().sum())
    }

    #[test]
    fn buckets_are_cumulative_powers_of_two_in_seconds() {
        // 500 ns, 1500 ns, 3 us, 1 ms, 100 s (beyond the last bound).
        let values = [500, 1500, 3000, 1_000_000, 100_000_000_000];
        let (h, total) = hist(&values);
        let p = classic_histogram(&h, total);
        assert_eq!(p.get_sample_count(), 5);
        assert!((p.get_sample_sum() - total as f64 / 1e9).abs() < 1e-12);
        let b = p.get_bucket();
        assert_eq!(
            b.len() as i32,
            LAST_BOUND_LOG2_SECONDS - FIRST_BOUND_LOG2_SECONDS + 1
        );
        assert_eq!(b[0].upper_bound(), 2f64.powi(-20));
        assert_eq!(b.last().unwrap().upper_bound(), 64.0);
        let at = |n: i32| {
            b.iter()
                .find(|x| x.upper_bound() == 2f64.powi(n))
                .unwrap()
                .cumulative_count()
        };
        assert_eq!(at(-20), 1); // 500 ns <= 954 ns
        assert_eq!(at(-19), 2); // + 1500 ns <= 1.9 us
        assert_eq!(at(-18), 3); // + 3 us <= 3.8 us
        assert_eq!(at(-10), 3); // 2^-10 s = 976.6 us < 1 ms
        assert_eq!(at(-9), 4); // + 1 ms <= 1.95 ms
        assert_eq!(at(6), 4); // 100 s only in +Inf
        for w in b.windows(2) {
            assert!(w[0].cumulative_count() <= w[1].cumulative_count());
            assert!(w[0].upper_bound() < w[1].upper_bound());
        }
    }

    #[test]
    fn a_bound_is_inclusive() {
        // 1 s exactly is counted in the bucket with le = 1.
        let (h, total) = hist(&[1_000_000_000, 1_000_000_001]);
        let p = classic_histogram(&h, total);
        let c = |n: i32| p.get_bucket()[(n - FIRST_BOUND_LOG2_SECONDS) as usize].cumulative_count();
        assert_eq!(c(-1), 0);
        assert_eq!(c(0), 1);
        assert_eq!(c(1), 2);
    }

    #[test]
    fn merged_series_and_text_exposition() {
        let mut f = FamilyBuilder::counter(names::REQUESTS);
        let l = || vec!["/mnt".to_string(), "fuse.x".to_string(), "READ".to_string()];
        f.add(l(), 2.0).add(l(), 3.0);
        let mut hb = FamilyBuilder::histogram(names::REQUEST_DURATION);
        let (h, total) = hist(&[2000, 3000]);
        hb.add_hist(l(), &h, total);
        let text = String::from_utf8(encode(&[f.build().unwrap(), hb.build().unwrap()])).unwrap();
        assert!(text.contains("# HELP claudefs_fuse_requests_total "));
        assert!(text.contains("# TYPE claudefs_fuse_requests_total counter"));
        assert!(text.contains(
            "claudefs_fuse_requests_total{mount=\"/mnt\",fstype=\"fuse.x\",opcode=\"READ\"} 5"
        ));
        assert!(text.contains("# TYPE claudefs_fuse_request_duration_seconds histogram"));
        assert!(text.contains("claudefs_fuse_request_duration_seconds_bucket{mount=\"/mnt\",fstype=\"fuse.x\",opcode=\"READ\",le=\"0.000003814697265625\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains("claudefs_fuse_request_duration_seconds_sum{mount=\"/mnt\",fstype=\"fuse.x\",opcode=\"READ\"} 0.000005"));
        assert!(text.contains("claudefs_fuse_request_duration_seconds_count{mount=\"/mnt\",fstype=\"fuse.x\",opcode=\"READ\"} 2"));
    }

    #[test]
    fn empty_family_is_omitted() {
        assert!(FamilyBuilder::gauge(names::PATHS_USABLE).build().is_none());
    }

    #[test]
    fn every_family_has_a_desc() {
        assert_eq!(descs(names::ALL).len(), names::ALL.len());
    }
}
