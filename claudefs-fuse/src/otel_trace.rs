//! OpenTelemetry-compatible spans for FUSE operations: building them
//! ([`OtelSpanBuilder`]), holding finished ones until an exporter takes
//! them ([`OtelExportBuffer`]) and deciding which traces to record
//! ([`OtelSampler`]).
//!
//! The module owns only the span data model; it does no I/O. Ids are never
//! zero: a span built without a trace id or span id gets one derived
//! deterministically from its inputs (std's `DefaultHasher`, no `rand`).
#![forbid(unsafe_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

pub use crate::tracing_client::{SpanId, TraceContext, TraceId};

/// The most spans an [`OtelExportBuffer`] holds.
pub const MAX_EXPORT_BUFFER_CAPACITY: usize = 10_000;

/// Outcome of the operation a span covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum SpanStatus {
    /// The operation succeeded (set by the application, not by default).
    Ok,
    /// The operation failed; the text says why.
    Error(String),
    /// No status was set (the default).
    #[default]
    Unset,
}

/// The role of a span in its trace, as OpenTelemetry defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpanKind {
    /// Work inside the process (the default).
    #[default]
    Internal,
    /// An outgoing request.
    Client,
    /// An incoming request handled here.
    Server,
    /// A message sent for later processing.
    Producer,
    /// A message received for processing.
    Consumer,
}

/// One key/value attribute of a span.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpanAttribute {
    /// Attribute name, e.g. `file.inode`.
    pub key: String,
    /// Attribute value, as text.
    pub value: String,
}

impl SpanAttribute {
    /// An attribute `key = value`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// A finished (or finishing) span.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OtelSpan {
    /// Trace the span belongs to.
    pub trace_id: TraceId,
    /// This span's id.
    pub span_id: SpanId,
    /// The parent span, if any.
    pub parent_span_id: Option<SpanId>,
    /// Operation name, e.g. `fuse.read`.
    pub operation: String,
    /// Name of the service that recorded the span.
    pub service: String,
    /// Start time, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// End time, nanoseconds since the Unix epoch.
    pub end_unix_ns: u64,
    /// Outcome of the operation.
    pub status: SpanStatus,
    /// Role of the span.
    pub kind: SpanKind,
    /// Attributes in the order they were added.
    pub attributes: Vec<SpanAttribute>,
}

impl OtelSpan {
    /// Time between start and end; 0 if the end lies before the start.
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    /// Whether the status is [`SpanStatus::Error`].
    pub fn is_error(&self) -> bool {
        matches!(self.status, SpanStatus::Error(_))
    }

    /// Appends an attribute.
    pub fn add_attribute(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.attributes.push(SpanAttribute::new(key, value));
    }

    /// Replaces the status.
    pub fn set_status(&mut self, status: SpanStatus) {
        self.status = status;
    }

    /// Sets the end time.
    pub fn finish(&mut self, end_ns: u64) {
        self.end_unix_ns = end_ns;
    }

    /// The context a child span of this one is built with
    /// ([`OtelSpanBuilder::with_parent`]).
    pub fn context(&self) -> TraceContext {
        TraceContext::new(self.trace_id, self.span_id, true)
    }
}

/// Builds an [`OtelSpan`]; every method takes and returns the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelSpanBuilder {
    /// Trace id; derived from the inputs when unset (or zero).
    pub trace_id: Option<TraceId>,
    /// Span id; derived from operation and start time when unset (or zero).
    pub span_id: Option<SpanId>,
    /// Parent span, set by [`with_parent`](Self::with_parent).
    pub parent_span_id: Option<SpanId>,
    /// Operation name.
    pub operation: String,
    /// Service name.
    pub service: String,
    /// Start time, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// Status (default [`SpanStatus::Unset`]).
    pub status: SpanStatus,
    /// Kind (default [`SpanKind::Internal`]).
    pub kind: SpanKind,
    /// Attributes in the order they were added.
    pub attributes: Vec<SpanAttribute>,
}

/// A non-zero 64-bit hash of `value` under `salt`.
fn hash64<T: Hash + ?Sized>(salt: u8, value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    salt.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

impl OtelSpanBuilder {
    /// A builder for `operation` of `service` starting at `start_unix_ns`.
    pub fn new(
        operation: impl Into<String>,
        service: impl Into<String>,
        start_unix_ns: u64,
    ) -> Self {
        Self {
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            operation: operation.into(),
            service: service.into(),
            start_unix_ns,
            status: SpanStatus::Unset,
            kind: SpanKind::Internal,
            attributes: Vec::new(),
        }
    }

    /// Makes the span a child of `parent`: takes its trace id and records
    /// its span id as the parent. Zero (invalid) ids in `parent` are
    /// ignored.
    pub fn with_parent(mut self, parent: &TraceContext) -> Self {
        if parent.trace_id.is_valid() {
            self.trace_id = Some(parent.trace_id);
        }
        if parent.span_id.is_valid() {
            self.parent_span_id = Some(parent.span_id);
        }
        self
    }

    /// Sets the trace id (a zero id counts as unset).
    pub fn with_trace_id(mut self, trace_id: TraceId) -> Self {
        self.trace_id = Some(trace_id);
        self
    }

    /// Sets the span id (a zero id counts as unset).
    pub fn with_span_id(mut self, span_id: SpanId) -> Self {
        self.span_id = Some(span_id);
        self
    }

    /// Sets the kind.
    pub fn with_kind(mut self, kind: SpanKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the status.
    pub fn with_status(mut self, status: SpanStatus) -> Self {
        self.status = status;
        self
    }

    /// Appends an attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push(SpanAttribute::new(key, value));
        self
    }

    /// Finishes the span at `end_unix_ns`.
    ///
    /// Without a span id, one is derived from the hash of operation and
    /// start time; without a trace id, one is derived from the hash of
    /// operation, service and start time. Derived ids are never zero.
    pub fn build(self, end_unix_ns: u64) -> OtelSpan {
        let span_id = match self.span_id {
            Some(id) if id.is_valid() => id,
            _ => SpanId(hash64(0, &(&self.operation, self.start_unix_ns)).max(1)),
        };
        let trace_id = match self.trace_id {
            Some(id) if id.is_valid() => id,
            _ => {
                let inputs = (&self.operation, &self.service, self.start_unix_ns);
                let high = u128::from(hash64(1, &inputs));
                let low = u128::from(hash64(2, &inputs));
                TraceId(((high << 64) | low).max(1))
            }
        };
        OtelSpan {
            trace_id,
            span_id,
            parent_span_id: self.parent_span_id,
            operation: self.operation,
            service: self.service,
            start_unix_ns: self.start_unix_ns,
            end_unix_ns,
            status: self.status,
            kind: self.kind,
            attributes: self.attributes,
        }
    }
}

/// Finished spans waiting for an exporter; when full, the oldest span is
/// dropped to make room.
#[derive(Debug, Clone)]
pub struct OtelExportBuffer {
    /// Most spans held; 1..=[`MAX_EXPORT_BUFFER_CAPACITY`] (a value set
    /// outside that range is clamped when used).
    pub capacity: usize,
    spans: VecDeque<OtelSpan>,
    dropped: u64,
}

impl OtelExportBuffer {
    /// A buffer for `capacity` spans, clamped to
    /// 1..=[`MAX_EXPORT_BUFFER_CAPACITY`].
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_EXPORT_BUFFER_CAPACITY);
        Self {
            capacity,
            spans: VecDeque::with_capacity(capacity.min(1024)),
            dropped: 0,
        }
    }

    /// Adds a span, dropping the oldest if the buffer is full.
    pub fn push(&mut self, span: OtelSpan) {
        let capacity = self.capacity.clamp(1, MAX_EXPORT_BUFFER_CAPACITY);
        while self.spans.len() >= capacity {
            self.spans.pop_front();
            self.dropped += 1;
        }
        self.spans.push_back(span);
    }

    /// Removes and returns every buffered span, oldest first.
    pub fn drain(&mut self) -> Vec<OtelSpan> {
        self.spans.drain(..).collect()
    }

    /// Number of buffered spans.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no span is buffered.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// How many spans were dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Whether a trace is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplingDecision {
    /// Record the trace and export its spans.
    RecordAndSample,
    /// Do not record the trace.
    Drop,
}

/// Largest prime below 2^32: the modulus of the sampler's hash.
const SAMPLER_PRIME: u64 = 4_294_967_291;

/// Knuth's multiplicative constant (prime, about `SAMPLER_PRIME` divided by
/// the golden ratio): consecutive ids land evenly spread over the range.
const SAMPLER_MULTIPLIER: u64 = 2_654_435_761;

/// Head sampler keeping a fixed share of traces, decided by trace id alone
/// so every span of a trace gets the same decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OtelSampler {
    sample_rate: f64,
    threshold: u64,
}

impl OtelSampler {
    /// A sampler keeping `sample_rate` of all traces: 0.0 none, 1.0 all.
    /// The rate is clamped to [0, 1]; NaN counts as 0.
    pub fn new(sample_rate: f64) -> Self {
        let sample_rate = if sample_rate.is_nan() {
            0.0
        } else {
            sample_rate.clamp(0.0, 1.0)
        };
        // Exact for 0.0 and 1.0: SAMPLER_PRIME is far below 2^53.
        let threshold = (sample_rate * SAMPLER_PRIME as f64) as u64;
        Self {
            sample_rate,
            threshold,
        }
    }

    /// The decision for `trace_id`, a pure function of its lower 32 bits
    /// and the rate: those bits are multiplied by a large constant modulo a
    /// prime, and the trace is kept when the result is below
    /// `rate * prime`.
    pub fn should_sample(&self, trace_id: TraceId) -> SamplingDecision {
        let low = trace_id.0 as u32 as u64;
        let bucket = (low % SAMPLER_PRIME) * SAMPLER_MULTIPLIER % SAMPLER_PRIME;
        if bucket < self.threshold {
            SamplingDecision::RecordAndSample
        } else {
            SamplingDecision::Drop
        }
    }

    /// The (clamped) share of traces kept.
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(start: u64, end: u64) -> OtelSpan {
        OtelSpanBuilder::new("fuse.read", "claudefs", start).build(end)
    }

    #[test]
    fn duration_is_end_minus_start() {
        assert_eq!(span(100, 350).duration_ns(), 250);
        assert_eq!(span(7, 7).duration_ns(), 0);
    }

    #[test]
    fn duration_saturates_when_end_precedes_start() {
        assert_eq!(span(500, 100).duration_ns(), 0);
    }

    #[test]
    fn is_error_only_for_error_status() {
        let mut s = span(0, 1);
        assert!(!s.is_error());
        s.set_status(SpanStatus::Ok);
        assert!(!s.is_error());
        s.set_status(SpanStatus::Error("EIO".into()));
        assert!(s.is_error());
        assert_eq!(s.status, SpanStatus::Error("EIO".into()));
    }

    #[test]
    fn add_attribute_appends_in_order() {
        let mut s = span(0, 1);
        s.add_attribute("file.inode", "42");
        s.add_attribute(String::from("file.size"), String::from("4096"));
        assert_eq!(
            s.attributes,
            vec![
                SpanAttribute::new("file.inode", "42"),
                SpanAttribute::new("file.size", "4096")
            ]
        );
    }

    #[test]
    fn finish_sets_end_time() {
        let mut s = span(10, 10);
        s.finish(75);
        assert_eq!(s.end_unix_ns, 75);
        assert_eq!(s.duration_ns(), 65);
    }

    #[test]
    fn build_defaults() {
        let s = OtelSpanBuilder::new("fuse.open", "svc", 5).build(9);
        assert_eq!(s.operation, "fuse.open");
        assert_eq!(s.service, "svc");
        assert_eq!((s.start_unix_ns, s.end_unix_ns), (5, 9));
        assert_eq!(s.kind, SpanKind::Internal);
        assert_eq!(s.status, SpanStatus::Unset);
        assert_eq!(s.parent_span_id, None);
        assert!(s.attributes.is_empty());
        assert!(s.trace_id.is_valid() && s.span_id.is_valid());
    }

    #[test]
    fn build_span_id_is_deterministic_in_operation_and_start() {
        let a = OtelSpanBuilder::new("op", "svc", 1000).build(2000);
        let b = OtelSpanBuilder::new("op", "svc", 1000).build(3000);
        assert_eq!(a.span_id, b.span_id);
        assert_eq!(a.trace_id, b.trace_id);
        let c = OtelSpanBuilder::new("op", "svc", 1001).build(2000);
        let d = OtelSpanBuilder::new("op2", "svc", 1000).build(2000);
        assert_ne!(a.span_id, c.span_id);
        assert_ne!(a.span_id, d.span_id);
    }

    #[test]
    fn build_keeps_explicit_ids_but_replaces_zero_ones() {
        let s = OtelSpanBuilder::new("op", "svc", 1)
            .with_trace_id(TraceId(77))
            .with_span_id(SpanId(88))
            .build(2);
        assert_eq!((s.trace_id, s.span_id), (TraceId(77), SpanId(88)));
        let z = OtelSpanBuilder::new("op", "svc", 1)
            .with_trace_id(TraceId(0))
            .with_span_id(SpanId(0))
            .build(2);
        assert!(z.trace_id.is_valid() && z.span_id.is_valid());
    }

    #[test]
    fn with_parent_propagates_trace_and_parent_span() {
        let parent = TraceContext::new(TraceId(0xfeed), SpanId(0xbeef), true);
        let s = OtelSpanBuilder::new("child", "svc", 10)
            .with_parent(&parent)
            .build(20);
        assert_eq!(s.trace_id, TraceId(0xfeed));
        assert_eq!(s.parent_span_id, Some(SpanId(0xbeef)));
        assert_ne!(s.span_id, SpanId(0xbeef));
    }

    #[test]
    fn with_parent_ignores_invalid_ids() {
        let parent = TraceContext::new(TraceId(0), SpanId(0), true);
        let s = OtelSpanBuilder::new("child", "svc", 10)
            .with_parent(&parent)
            .build(20);
        assert!(s.trace_id.is_valid());
        assert_eq!(s.parent_span_id, None);
    }

    #[test]
    fn child_of_a_span_shares_its_trace() {
        let root = span(0, 100);
        let child = OtelSpanBuilder::new("fuse.write", "claudefs", 5)
            .with_parent(&root.context())
            .build(6);
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.parent_span_id, Some(root.span_id));
    }

    #[test]
    fn builder_kind_status_and_attributes() {
        let s = OtelSpanBuilder::new("rpc", "svc", 0)
            .with_kind(SpanKind::Client)
            .with_status(SpanStatus::Ok)
            .with_attribute("peer", "10.0.0.1")
            .with_attribute("port", "9000")
            .build(1);
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.status, SpanStatus::Ok);
        assert_eq!(s.attributes.len(), 2);
        assert_eq!(s.attributes[1], SpanAttribute::new("port", "9000"));
    }

    #[test]
    fn buffer_push_len_drain() {
        let mut buf = OtelExportBuffer::new(8);
        assert!(buf.is_empty());
        buf.push(span(1, 2));
        buf.push(span(3, 4));
        assert_eq!(buf.len(), 2);
        let drained = buf.drain();
        assert_eq!(drained.len(), 2);
        assert_eq!(drained[0].start_unix_ns, 1);
        assert_eq!(drained[1].start_unix_ns, 3);
        assert!(buf.is_empty());
        assert!(buf.drain().is_empty());
    }

    #[test]
    fn buffer_drops_oldest_when_full() {
        let mut buf = OtelExportBuffer::new(3);
        for start in 0..5 {
            buf.push(span(start, start + 1));
        }
        assert_eq!(buf.len(), 3);
        assert_eq!(buf.dropped(), 2);
        let starts: Vec<u64> = buf.drain().iter().map(|s| s.start_unix_ns).collect();
        assert_eq!(starts, vec![2, 3, 4]);
    }

    #[test]
    fn buffer_capacity_is_clamped() {
        assert_eq!(OtelExportBuffer::new(0).capacity, 1);
        assert_eq!(OtelExportBuffer::new(50_000).capacity, 10_000);
        let mut buf = OtelExportBuffer::new(0);
        buf.push(span(1, 2));
        buf.push(span(3, 4));
        assert_eq!(buf.len(), 1);
        assert_eq!(buf.drain()[0].start_unix_ns, 3);
    }

    #[test]
    fn buffer_respects_a_lowered_capacity_field() {
        let mut buf = OtelExportBuffer::new(10);
        for start in 0..6 {
            buf.push(span(start, start));
        }
        buf.capacity = 2;
        buf.push(span(99, 99));
        assert_eq!(buf.len(), 2);
        assert_eq!(buf.dropped(), 5);
    }

    #[test]
    fn sampler_rate_one_keeps_everything() {
        let sampler = OtelSampler::new(1.0);
        for id in [
            0u128,
            1,
            2,
            0xffff_ffff,
            u128::MAX,
            4_294_967_290,
            4_294_967_295,
        ] {
            assert_eq!(
                sampler.should_sample(TraceId(id)),
                SamplingDecision::RecordAndSample
            );
        }
    }

    #[test]
    fn sampler_rate_zero_drops_everything() {
        let sampler = OtelSampler::new(0.0);
        for id in [0u128, 1, 2, 0xffff_ffff, u128::MAX] {
            assert_eq!(sampler.should_sample(TraceId(id)), SamplingDecision::Drop);
        }
    }

    #[test]
    fn sampler_half_keeps_about_half() {
        let sampler = OtelSampler::new(0.5);
        let kept = (1..=10_000u128)
            .filter(|&i| sampler.should_sample(TraceId(i)) == SamplingDecision::RecordAndSample)
            .count();
        assert!((4_800..=5_200).contains(&kept), "kept {kept}");
    }

    #[test]
    fn sampler_is_deterministic_and_uses_only_lower_32_bits() {
        let a = OtelSampler::new(0.3);
        let b = OtelSampler::new(0.3);
        for low in 0..500u128 {
            let id = TraceId(low * 7919);
            assert_eq!(a.should_sample(id), a.should_sample(id));
            assert_eq!(a.should_sample(id), b.should_sample(id));
            let same_low = TraceId(id.0 | (0xdead_beef_u128 << 64));
            assert_eq!(a.should_sample(id), a.should_sample(same_low));
        }
    }

    #[test]
    fn sampler_clamps_rate() {
        assert_eq!(OtelSampler::new(-0.5).sample_rate(), 0.0);
        assert_eq!(OtelSampler::new(3.0).sample_rate(), 1.0);
        assert_eq!(OtelSampler::new(f64::NAN).sample_rate(), 0.0);
        assert_eq!(OtelSampler::new(0.25).sample_rate(), 0.25);
        let nan = OtelSampler::new(f64::NAN);
        assert_eq!(nan.should_sample(TraceId(0)), SamplingDecision::Drop);
    }

    #[test]
    fn sampler_higher_rate_keeps_a_superset() {
        let low = OtelSampler::new(0.2);
        let high = OtelSampler::new(0.6);
        for i in 0..2_000u128 {
            let id = TraceId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            if low.should_sample(id) == SamplingDecision::RecordAndSample {
                assert_eq!(high.should_sample(id), SamplingDecision::RecordAndSample);
            }
        }
    }

    /// SplitMix64: a deterministic stream of well-spread ids for the
    /// property tests.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn kept_share(sampler: &OtelSampler, ids: impl Iterator<Item = u128>) -> f64 {
        let (mut kept, mut total) = (0u32, 0u32);
        for id in ids {
            total += 1;
            if sampler.should_sample(TraceId(id)) == SamplingDecision::RecordAndSample {
                kept += 1;
            }
        }
        f64::from(kept) / f64::from(total)
    }

    proptest! {
        #[test]
        fn sampler_keeps_the_rate_over_random_ids(rate in 0.0f64..=1.0, seed in any::<u64>()) {
            let sampler = OtelSampler::new(rate);
            let mut state = seed;
            let ids = (0..10_000).map(|_| {
                (u128::from(splitmix(&mut state)) << 64) | u128::from(splitmix(&mut state))
            });
            let share = kept_share(&sampler, ids);
            prop_assert!((share - rate).abs() < 0.03, "rate {rate} kept {share}");
        }

        #[test]
        fn sampler_keeps_the_rate_over_consecutive_ids(rate in 0.0f64..=1.0, start in any::<u32>()) {
            let sampler = OtelSampler::new(rate);
            let ids = (0..10_000u128).map(|i| u128::from(start) + i);
            let share = kept_share(&sampler, ids);
            prop_assert!((share - rate).abs() < 0.03, "rate {rate} kept {share}");
        }
    }
}
