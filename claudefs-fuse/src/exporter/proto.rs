//! The Prometheus protobuf exposition format: length-delimited
//! `io.prometheus.client.MetricFamily` messages (`application/
//! vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
//! encoding=delimited`), the format in which a scraper gets native
//! histograms.
//!
//! The messages are the part of `metrics.proto` (prometheus/client_model,
//! proto2) this exporter writes, with its field numbers, as `prost`
//! derives; fields it never writes (summaries, exemplars, timestamps) are
//! left out, which a reader of the full schema sees as unset.
//!
//! A histogram carries both of its forms: the classic buckets (`le` =
//! 2^n s, as in the text format) for a scraper that ingests those, and the
//! native ones of schema 3 (zero bucket up to 2^-20 s, then the probes'
//! buckets as they are: no approximation) for one that ingests native
//! histograms.

use prost::Message;

use super::model::{self, MetricKind, Value};
use crate::probes::hist::{LatencyHistogram, NATIVE_SCHEMA};

/// The `Content-Type` of a protobuf scrape.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// `io.prometheus.client.LabelPair`.
#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// `io.prometheus.client.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Summary = 2,
    Untyped = 3,
    Histogram = 4,
    GaugeHistogram = 5,
}

/// `io.prometheus.client.Gauge`.
#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Counter` (without its exemplar).
#[derive(Clone, PartialEq, Message)]
pub struct Counter {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Bucket`: one classic bucket (without exemplar).
#[derive(Clone, PartialEq, Message)]
pub struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    /// Inclusive.
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
}

/// `io.prometheus.client.BucketSpan`: `length` consecutive native buckets,
/// `offset` after the end of the previous span (the first: the index of
/// its first bucket).
#[derive(Clone, PartialEq, Message)]
pub struct BucketSpan {
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

/// `io.prometheus.client.Histogram`: classic and native (integer counts;
/// no negative buckets, no float counts, no exemplars).
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// Classic buckets by increasing bound, `+Inf` left out.
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Each bucket's count minus the previous one's (the first: minus 0).
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    pub positive_delta: Vec<i64>,
}

/// `io.prometheus.client.Metric`: one series.
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
}

/// `io.prometheus.client.MetricFamily`.
#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

/// Empty native buckets a span may carry rather than start a new span
/// (a zero delta costs one byte, a new span three or more).
const MAX_GAP_IN_SPAN: i32 = 2;

/// A latency histogram as a protobuf histogram, classic and native.
pub fn histogram(h: &LatencyHistogram, total_ns: u64) -> Histogram {
    let classic = model::classic_histogram(h, total_ns);
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas: Vec<i64> = Vec::new();
    let (mut last_index, mut last_count) = (None::<i32>, 0i64);
    for (index, count) in model::native_buckets(h) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        match last_index {
            Some(prev) if index - prev - 1 <= MAX_GAP_IN_SPAN => {
                let span = spans.last_mut().expect("a span is open");
                for _ in prev + 1..index {
                    deltas.push(-last_count);
                    last_count = 0;
                }
                span.length = Some(span.length.unwrap_or(0) + (index - prev) as u32);
            }
            _ => spans.push(BucketSpan {
                offset: Some(last_index.map_or(index, |prev| index - prev - 1)),
                length: Some(1),
            }),
        }
        deltas.push(count.wrapping_sub(last_count));
        last_count = count;
        last_index = Some(index);
    }
    if spans.is_empty() {
        // No observation above the zero bucket: a no-op span, so the
        // histogram still reads as native.
        spans.push(BucketSpan {
            offset: Some(0),
            length: Some(0),
        });
    }
    Histogram {
        sample_count: Some(classic.count),
        sample_sum: Some(classic.sum),
        bucket: classic
            .buckets
            .iter()
            .map(|&(le, n)| Bucket {
                cumulative_count: Some(n),
                upper_bound: Some(le),
            })
            .collect(),
        schema: Some(NATIVE_SCHEMA),
        zero_threshold: Some(LatencyHistogram::zero_threshold_seconds()),
        zero_count: Some(h.buckets[0]),
        positive_span: spans,
        positive_delta: deltas,
    }
}

/// One family as its protobuf message.
pub fn family(f: &model::MetricFamily) -> MetricFamily {
    let kind = match f.kind {
        MetricKind::Counter => MetricType::Counter,
        MetricKind::Gauge => MetricType::Gauge,
        MetricKind::Histogram => MetricType::Histogram,
    };
    let metric = f
        .series
        .iter()
        .map(|s| {
            let label = f
                .label_pairs(s)
                .into_iter()
                .map(|(name, value)| LabelPair {
                    name: Some(name.to_string()),
                    value: Some(value.to_string()),
                })
                .collect();
            let mut m = Metric {
                label,
                gauge: None,
                counter: None,
                histogram: None,
            };
            match (&s.value, f.kind) {
                (Value::Number(v), MetricKind::Counter) => {
                    m.counter = Some(Counter { value: Some(*v) })
                }
                (Value::Number(v), _) => m.gauge = Some(Gauge { value: Some(*v) }),
                (Value::Histogram { hist, total_ns }, _) => {
                    m.histogram = Some(histogram(hist, *total_ns))
                }
            }
            m
        })
        .collect();
    MetricFamily {
        name: Some(f.name().to_string()),
        help: Some(f.family.help.to_string()),
        r#type: Some(kind as i32),
        metric,
    }
}

/// Encodes families as length-delimited `MetricFamily` messages.
pub fn encode(families: &[model::MetricFamily]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    for f in families {
        // Writing into a Vec cannot run out of room.
        let _ = family(f).encode_length_delimited(&mut out);
    }
    out
}

/// Decodes length-delimited `MetricFamily` messages (a whole scrape).
pub fn decode(mut body: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut body)?);
    }
    Ok(out)
}

/// The native buckets of a decoded histogram: (index, count) of every
/// bucket its spans cover, by increasing index (zeros included).
pub fn positive_buckets(h: &Histogram) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    let (mut next, mut count, mut deltas) = (0i32, 0i64, h.positive_delta.iter());
    for (i, span) in h.positive_span.iter().enumerate() {
        let offset = span.offset.unwrap_or(0);
        next = if i == 0 { offset } else { next + offset };
        for _ in 0..span.length.unwrap_or(0) {
            count = count.wrapping_add(deltas.next().copied().unwrap_or(0));
            out.push((next, count as u64));
            next += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::model::{classic_histogram, native_buckets, sample_families};

    fn hist(values: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::default();
        values.iter().for_each(|v| h.record(*v));
        h
    }

    #[test]
    fn a_scrape_decodes_back_to_the_same_families() {
        let families = sample_families();
        let decoded = decode(&encode(&families)).unwrap();
        assert_eq!(decoded.len(), families.len());
        for (d, f) in decoded.iter().zip(&families) {
            assert_eq!(d.name.as_deref(), Some(f.name()));
            assert_eq!(d.help.as_deref(), Some(f.family.help));
            assert_eq!(d.metric.len(), f.series.len());
            for (m, s) in d.metric.iter().zip(&f.series) {
                let labels: Vec<(&str, &str)> =
                    m.label.iter().map(|l| (l.name(), l.value())).collect();
                assert_eq!(labels, f.label_pairs(s));
                match (&s.value, f.kind) {
                    (Value::Number(v), MetricKind::Counter) => {
                        assert_eq!(d.r#type(), MetricType::Counter);
                        assert_eq!(m.counter.as_ref().unwrap().value(), *v);
                    }
                    (Value::Number(v), _) => {
                        assert_eq!(d.r#type(), MetricType::Gauge);
                        assert_eq!(m.gauge.as_ref().unwrap().value(), *v);
                    }
                    (Value::Histogram { hist, total_ns }, _) => {
                        assert_eq!(d.r#type(), MetricType::Histogram);
                        let h = m.histogram.as_ref().unwrap();
                        assert_eq!(h.sample_count(), hist.count());
                        assert_eq!(h.sample_sum(), *total_ns as f64 / 1e9);
                        assert_native_equals(h, hist);
                    }
                }
            }
        }
    }

    /// The decoded native buckets are those of the histogram, and the
    /// classic buckets those of the text format.
    fn assert_native_equals(h: &Histogram, hist: &LatencyHistogram) {
        assert_eq!(h.schema(), 3);
        assert_eq!(h.zero_threshold(), 2f64.powi(-20));
        assert_eq!(h.zero_count(), hist.buckets[0]);
        let got: Vec<(i32, u64)> = positive_buckets(h)
            .into_iter()
            .filter(|b| b.1 > 0)
            .collect();
        let want: Vec<(i32, u64)> = native_buckets(hist).collect();
        assert_eq!(got, want);
        let total: u64 = h.zero_count() + got.iter().map(|b| b.1).sum::<u64>();
        assert_eq!(total, h.sample_count());
        let classic = classic_histogram(hist, 0);
        let bounds: Vec<(f64, u64)> = h
            .bucket
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        assert_eq!(bounds, classic.buckets);
    }

    #[test]
    fn spans_and_deltas() {
        // Three values in one bucket, one in the next but one (a gap of
        // one: same span), one far above (a new span), one in the zero
        // bucket.
        let one_ms = 1_000_000;
        let b = LatencyHistogram::bucket_of(one_ms);
        let two_up = LatencyHistogram::bucket_lower(b + 2);
        let h = hist(&[one_ms, one_ms, one_ms, two_up, 2_000_000_000, 100]);
        let p = histogram(&h, 0);
        let first = LatencyHistogram::native_index(b).unwrap();
        let far =
            LatencyHistogram::native_index(LatencyHistogram::bucket_of(2_000_000_000)).unwrap();
        assert_eq!(
            p.positive_span,
            vec![
                BucketSpan {
                    offset: Some(first),
                    length: Some(3)
                },
                BucketSpan {
                    offset: Some(far - (first + 3)),
                    length: Some(1)
                },
            ]
        );
        assert_eq!(p.positive_delta, vec![3, -3, 1, 0]);
        assert_eq!(p.zero_count(), 1);
        assert_native_equals(&p, &h);
    }

    #[test]
    fn an_empty_histogram_still_reads_as_native() {
        let p = histogram(&LatencyHistogram::default(), 0);
        assert_eq!(
            p.positive_span,
            vec![BucketSpan {
                offset: Some(0),
                length: Some(0)
            }]
        );
        assert!(p.positive_delta.is_empty());
        assert_eq!((p.schema(), p.zero_count(), p.sample_count()), (3, 0, 0));
        assert_eq!(p.bucket.len(), 27);
    }

    #[test]
    fn only_the_zero_bucket() {
        let h = hist(&[1, 500, 953]);
        let p = histogram(&h, 1454);
        assert_eq!(p.zero_count(), 3);
        assert_eq!(p.positive_span.len(), 1);
        assert_eq!(p.positive_span[0].length(), 0);
        assert_native_equals(&p, &h);
    }

    #[test]
    fn deltas_are_unpacked_as_in_proto2() {
        // Field 13, wire type 0 (varint), once per delta: what a proto2
        // reader of metrics.proto writes and expects.
        let p = Histogram {
            positive_delta: vec![1, -1],
            ..Histogram::default()
        };
        assert_eq!(p.encode_to_vec(), vec![13 << 3, 2, 13 << 3, 1]);
    }
}
