//! The exporter's own metric model: a [`MetricFamily`] is a family of
//! `names` with its series, computed at scrape time by a [`Collector`]
//! through [`FamilyBuilder`], so nothing in the FUSE request path touches
//! a metric type. The encoders (`text`, `proto`) read this model.
//!
//! A histogram series keeps the probes' latency histogram itself
//! (schema-3 native buckets in seconds), so each encoder takes from it
//! what its format carries: [`classic_histogram`] gives one cumulative
//! bucket per power of two seconds, each exactly one of the native bucket
//! boundaries (nothing is approximated); [`native_buckets`] gives the
//! native buckets as they are.

use std::collections::BTreeMap;

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

/// A classic Prometheus histogram: cumulative buckets (`le` in seconds,
/// count), without `+Inf` (which is `count`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassicHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    /// Seconds.
    pub sum: f64,
}

/// A latency histogram (ns) as a classic Prometheus histogram in seconds:
/// the bucket with bound `2^n` s counts every latency bucket up to the one
/// whose upper boundary it is. `count` is the number of observations,
/// `sum` is `total_ns / 1e9`.
pub fn classic_histogram(h: &LatencyHistogram, total_ns: u64) -> ClassicHistogram {
    ClassicHistogram {
        buckets: classic_bounds()
            .map(|(bucket, le)| (le, h.cumulative(bucket)))
            .collect(),
        count: h.count(),
        sum: total_ns as f64 / 1e9,
    }
}

/// The non-empty native buckets of `h` above the zero bucket: (native
/// index of schema 3, count), by increasing index. The zero bucket's
/// count is `h.buckets[0]`.
pub fn native_buckets(h: &LatencyHistogram) -> impl Iterator<Item = (i32, u64)> + '_ {
    h.buckets
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, n)| **n > 0)
        .filter_map(|(i, n)| Some((LatencyHistogram::native_index(i)?, *n)))
}

/// Label values, in the order of the family's label names.
pub type LabelValues = Vec<String>;

/// What a family's series are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// The `# TYPE` word of the text format.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// The value of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Histogram {
        hist: Box<LatencyHistogram>,
        /// Sum of the observations, ns.
        total_ns: u64,
    },
}

/// One series: its label values (in the order of the family's label
/// names) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: LabelValues,
    pub value: Value,
}

/// One metric family with its series, sorted by label values.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    pub family: Family,
    pub kind: MetricKind,
    pub series: Vec<Series>,
}

impl MetricFamily {
    pub fn name(&self) -> &'static str {
        self.family.name
    }

    /// The (name, value) label pairs of one of its series.
    pub fn label_pairs<'a>(&self, s: &'a Series) -> Vec<(&'static str, &'a str)> {
        self.family
            .labels
            .iter()
            .copied()
            .zip(s.labels.iter().map(String::as_str))
            .collect()
    }
}

/// A source of metric families, asked at each scrape.
pub trait Collector: Send + Sync {
    /// Every family it may emit (two collectors of one registry may not
    /// share a family).
    fn families(&self) -> &[Family];

    /// The families now (those without series left out).
    fn collect(&self) -> Vec<MetricFamily>;
}

/// Samples of one family, merged by label values (two sources with the
/// same labels add up, so a family never has duplicate series).
#[derive(Debug)]
pub struct FamilyBuilder {
    family: Family,
    kind: MetricKind,
    samples: BTreeMap<LabelValues, Value>,
}

impl FamilyBuilder {
    pub fn counter(family: Family) -> Self {
        Self::new(family, MetricKind::Counter)
    }

    pub fn gauge(family: Family) -> Self {
        Self::new(family, MetricKind::Gauge)
    }

    pub fn histogram(family: Family) -> Self {
        Self::new(family, MetricKind::Histogram)
    }

    fn new(family: Family, kind: MetricKind) -> Self {
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
        debug_assert_ne!(self.kind, MetricKind::Histogram);
        match self.samples.entry(labels).or_insert(Value::Number(0.0)) {
            Value::Number(x) => *x += v,
            Value::Histogram { .. } => {}
        }
        self
    }

    /// Merges a latency histogram of nanoseconds into the series.
    pub fn add_hist(
        &mut self,
        labels: LabelValues,
        h: &LatencyHistogram,
        total_ns: u64,
    ) -> &mut Self {
        debug_assert_eq!(labels.len(), self.family.labels.len());
        debug_assert_eq!(self.kind, MetricKind::Histogram);
        match self
            .samples
            .entry(labels)
            .or_insert_with(|| Value::Histogram {
                hist: Box::default(),
                total_ns: 0,
            }) {
            Value::Histogram { hist, total_ns: t } => {
                hist.merge(h);
                *t = t.saturating_add(total_ns);
            }
            Value::Number(_) => {}
        }
        self
    }

    /// The family; None if it has no series.
    pub fn build(self) -> Option<MetricFamily> {
        if self.samples.is_empty() {
            return None;
        }
        Some(MetricFamily {
            family: self.family,
            kind: self.kind,
            series: self
                .samples
                .into_iter()
                .map(|(labels, value)| Series { labels, value })
                .collect(),
        })
    }
}

/// Every family of `collected`, merged by name (series of one family from
/// two collectors are put together), sorted by name, each family's series
/// sorted by label values: the order of a scrape.
pub fn gather(collected: impl IntoIterator<Item = MetricFamily>) -> Vec<MetricFamily> {
    let mut by_name: BTreeMap<&'static str, MetricFamily> = BTreeMap::new();
    for f in collected.into_iter().filter(|f| !f.series.is_empty()) {
        match by_name.entry(f.name()) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(f);
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                e.get_mut().series.extend(f.series);
            }
        }
    }
    let mut out: Vec<MetricFamily> = by_name.into_values().collect();
    for f in &mut out {
        f.series.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
    out
}

/// Families covering every shape the encoders meet: counters, gauges,
/// histograms (empty, one value, a spread past the last bound), label
/// values that need escaping, values that are fractions and large.
#[cfg(test)]
pub(crate) fn sample_families() -> Vec<MetricFamily> {
    use super::names;
    let mut c = FamilyBuilder::counter(names::REQUESTS);
    let l = |m: &str, op: &str| vec![m.to_string(), "fuse.x".to_string(), op.to_string()];
    c.add(l("/mnt/a", "READ"), 5.0);
    c.add(l("/mnt/\"q\" \\ b\nc", "WRITE"), 0.5);
    c.add(l("/mnt/a", "GETATTR"), 12_345_678_901_234.0);
    c.add(l("/mnt/a", "LOOKUP"), 1e-7);
    let mut g = FamilyBuilder::gauge(names::PATHS_USABLE);
    g.add(vec![], 2.0);
    let mut h = FamilyBuilder::histogram(names::REQUEST_DURATION);
    let mut spread = LatencyHistogram::default();
    let values = [500u64, 1500, 3000, 1_000_000, 24_000_000, 100_000_000_000];
    values.iter().for_each(|v| spread.record(*v));
    h.add_hist(l("/mnt/a", "READ"), &spread, values.iter().sum());
    h.add_hist(l("/mnt/a", "OPEN"), &LatencyHistogram::default(), 0);
    let mut one = LatencyHistogram::default();
    one.record(24_000_000);
    h.add_hist(l("/mnt/b", "READ"), &one, 24_000_000);
    [c, g, h]
        .into_iter()
        .filter_map(FamilyBuilder::build)
        .collect()
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
        assert_eq!(p.count, 5);
        assert!((p.sum - total as f64 / 1e9).abs() < 1e-12);
        let b = &p.buckets;
        assert_eq!(
            b.len() as i32,
            LAST_BOUND_LOG2_SECONDS - FIRST_BOUND_LOG2_SECONDS + 1
        );
        assert_eq!(b[0].0, 2f64.powi(-20));
        assert_eq!(b.last().unwrap().0, 64.0);
        let at = |n: i32| b.iter().find(|x| x.0 == 2f64.powi(n)).unwrap().1;
        assert_eq!(at(-20), 1); // 500 ns <= 954 ns
        assert_eq!(at(-19), 2); // + 1500 ns <= 1.9 us
        assert_eq!(at(-18), 3); // + 3 us <= 3.8 us
        assert_eq!(at(-10), 3); // 2^-10 s = 976.6 us < 1 ms
        assert_eq!(at(-9), 4); // + 1 ms <= 1.95 ms
        assert_eq!(at(6), 4); // 100 s only in +Inf
        for w in b.windows(2) {
            assert!(w[0].1 <= w[1].1);
            assert!(w[0].0 < w[1].0);
        }
    }

    #[test]
    fn a_bound_is_inclusive() {
        // 1 s exactly is counted in the bucket with le = 1.
        let (h, total) = hist(&[1_000_000_000, 1_000_000_001]);
        let p = classic_histogram(&h, total);
        let c = |n: i32| p.buckets[(n - FIRST_BOUND_LOG2_SECONDS) as usize].1;
        assert_eq!(c(-1), 0);
        assert_eq!(c(0), 1);
        assert_eq!(c(1), 2);
    }

    #[test]
    fn native_buckets_hold_each_value_between_its_boundaries() {
        let values = [500, 1500, 1500, 3000, 24_000_000, 1_000_000_000];
        let (h, _) = hist(&values);
        let got: Vec<(i32, u64)> = native_buckets(&h).collect();
        // 500 ns is in the zero bucket; the others in one native bucket
        // each, 1500 ns twice.
        assert_eq!(h.buckets[0], 1);
        assert_eq!(got.iter().map(|b| b.1).sum::<u64>(), 5);
        assert_eq!(got.len(), 4);
        for (index, n) in &got {
            let upper = 2f64.powf(f64::from(*index) / 8.0);
            let lower = 2f64.powf(f64::from(index - 1) / 8.0);
            let inside = values
                .iter()
                .filter(|v| {
                    let s = **v as f64 / 1e9;
                    s > lower && s <= upper * (1.0 + 1e-12)
                })
                .count() as u64;
            assert_eq!(inside, *n, "native bucket {index}");
        }
        // 1 s is the upper boundary of native bucket 0.
        assert_eq!(got.last(), Some(&(0, 1)));
        for w in got.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
    }

    #[test]
    fn merged_series() {
        let mut f = FamilyBuilder::counter(names::REQUESTS);
        let l = || vec!["/mnt".to_string(), "fuse.x".to_string(), "READ".to_string()];
        f.add(l(), 2.0).add(l(), 3.0);
        let f = f.build().unwrap();
        assert_eq!(f.series.len(), 1);
        assert_eq!(f.series[0].value, Value::Number(5.0));
        let mut hb = FamilyBuilder::histogram(names::REQUEST_DURATION);
        let (h, total) = hist(&[2000, 3000]);
        hb.add_hist(l(), &h, total).add_hist(l(), &h, total);
        let hb = hb.build().unwrap();
        let Value::Histogram { hist, total_ns } = &hb.series[0].value else {
            panic!("not a histogram: {hb:?}");
        };
        assert_eq!((hist.count(), *total_ns), (4, 10_000));
    }

    #[test]
    fn empty_family_is_omitted() {
        assert!(FamilyBuilder::gauge(names::PATHS_USABLE).build().is_none());
    }

    #[test]
    fn gather_sorts_families_and_series_and_merges_sources() {
        let one = |labels: &[&str], v: f64| {
            let mut b = FamilyBuilder::counter(names::IDMAP_LOOKUPS);
            for l in labels {
                b.add(vec![l.to_string()], v);
            }
            b.build().unwrap()
        };
        let mut usable = FamilyBuilder::gauge(names::PATHS_USABLE);
        usable.add(vec![], 1.0);
        let got = gather([
            usable.build().unwrap(),
            one(&["uid"], 1.0),
            one(&["gid"], 2.0),
        ]);
        let order: Vec<&str> = got.iter().map(MetricFamily::name).collect();
        assert_eq!(
            order,
            [
                "claudefs_fuse_idmap_lookups_total",
                "claudefs_fuse_paths_usable"
            ]
        );
        let labels: Vec<&str> = got[0].series.iter().map(|s| s.labels[0].as_str()).collect();
        assert_eq!(labels, ["gid", "uid"]);
    }
}
