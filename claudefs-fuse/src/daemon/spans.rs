//! One OpenTelemetry span per sampled FUSE request.
//!
//! Each request gets a trace id derived from the kernel's request id (and a
//! per-daemon seed); [`crate::otel_trace::OtelSampler`] decides from it.
//! A kept request becomes an [`crate::otel_trace::OtelSpan`] in the shared
//! [`crate::otel_trace::OtelExportBuffer`] that exporters drain.
//!
//! Span shape: operation = the FUSE operation name in lower case
//! (`lookup`, `read`, `setlk`, ...), service `claudefs-fuse`, kind Server,
//! status Error(`errno N`) on failure and Unset otherwise. Attributes
//! (dotted lower-case names, values as decimal strings):
//!
//! | key                | meaning                                   |
//! |--------------------|-------------------------------------------|
//! | `fuse.inode`       | inode the request is about                |
//! | `fuse.fh`          | file handle, when the request has one     |
//! | `claudefs.path_id` | storage path that served it, if any       |
//! | `fuse.bytes`       | bytes read or written                     |
//! | `user.id`          | caller uid (as the kernel reports it)     |
//! | `process.pid`      | caller pid                                |
//! | `error.errno`      | errno replied, on failure only            |

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::otel_trace::{
    OtelExportBuffer, OtelSampler, OtelSpanBuilder, SamplingDecision, SpanKind, SpanStatus,
};
use crate::tracing_client::TraceId;

/// Service name of every span.
pub const SERVICE: &str = "claudefs-fuse";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A request being traced.
#[derive(Debug)]
pub struct ReqSpan {
    op: &'static str,
    trace: TraceId,
    start_ns: u64,
    ino: u64,
    uid: u32,
    pid: u32,
}

/// Sampler + export buffer.
#[derive(Debug)]
pub struct Spans {
    sampler: OtelSampler,
    buffer: Arc<Mutex<OtelExportBuffer>>,
    seed: u64,
}

impl Spans {
    /// Keeps a share `rate` of requests, up to `capacity` buffered spans.
    pub fn new(rate: f64, capacity: usize) -> Self {
        Self {
            sampler: OtelSampler::new(rate),
            buffer: Arc::new(Mutex::new(OtelExportBuffer::new(capacity))),
            seed: mix(now_ns() ^ u64::from(std::process::id())),
        }
    }

    /// The buffer exporters drain.
    pub fn buffer(&self) -> Arc<Mutex<OtelExportBuffer>> {
        self.buffer.clone()
    }

    /// Sampling rate.
    pub fn rate(&self) -> f64 {
        self.sampler.sample_rate()
    }

    /// (buffered, dropped) counts.
    pub fn counts(&self) -> (usize, u64) {
        let b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        (b.len(), b.dropped())
    }

    /// Starts tracing request `unique` if the sampler keeps it.
    pub fn begin(
        &self,
        op: &'static str,
        unique: u64,
        ino: u64,
        uid: u32,
        pid: u32,
    ) -> Option<ReqSpan> {
        let hi = mix(self.seed ^ unique);
        let lo = mix(hi ^ unique.rotate_left(17)) | 1;
        let trace = TraceId((u128::from(hi) << 64) | u128::from(lo));
        match self.sampler.should_sample(trace) {
            SamplingDecision::Drop => None,
            SamplingDecision::RecordAndSample => {
                super::router::clear_last_path();
                Some(ReqSpan {
                    op,
                    trace,
                    start_ns: now_ns(),
                    ino,
                    uid,
                    pid,
                })
            }
        }
    }

    /// Finishes a span (no-op for unsampled requests).
    pub fn end(
        &self,
        span: Option<ReqSpan>,
        fh: Option<u64>,
        bytes: Option<u64>,
        errno: Option<i32>,
    ) {
        let Some(s) = span else { return };
        let mut b = OtelSpanBuilder::new(s.op, SERVICE, s.start_ns)
            .with_trace_id(s.trace)
            .with_kind(SpanKind::Server)
            .with_attribute("fuse.inode", s.ino.to_string());
        if let Some(fh) = fh {
            b = b.with_attribute("fuse.fh", fh.to_string());
        }
        if let Some(p) = super::router::last_path() {
            b = b.with_attribute("claudefs.path_id", p.to_string());
        }
        if let Some(n) = bytes {
            b = b.with_attribute("fuse.bytes", n.to_string());
        }
        b = b
            .with_attribute("user.id", s.uid.to_string())
            .with_attribute("process.pid", s.pid.to_string());
        if let Some(e) = errno {
            b = b
                .with_attribute("error.errno", e.to_string())
                .with_status(SpanStatus::Error(format!("errno {e}")));
        }
        let span = b.build(now_ns());
        self.buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_request_becomes_server_span() {
        let s = Spans::new(1.0, 10);
        let r = s.begin("read", 42, 7, 1000, 55);
        assert!(r.is_some());
        s.end(r, Some(3), Some(4096), None);
        let spans = s.buffer().lock().unwrap().drain();
        assert_eq!(spans.len(), 1);
        let sp = &spans[0];
        assert_eq!(sp.operation, "read");
        assert_eq!(sp.service, SERVICE);
        assert_eq!(sp.kind, SpanKind::Server);
        let get = |k: &str| {
            sp.attributes
                .iter()
                .find(|a| a.key == k)
                .map(|a| a.value.clone())
        };
        assert_eq!(get("fuse.inode").as_deref(), Some("7"));
        assert_eq!(get("fuse.bytes").as_deref(), Some("4096"));
        assert_eq!(get("error.errno"), None);
    }

    #[test]
    fn errors_and_dropping() {
        let s = Spans::new(1.0, 10);
        let r = s.begin("lookup", 1, 1, 0, 1);
        s.end(r, None, None, Some(2));
        let spans = s.buffer().lock().unwrap().drain();
        assert!(spans[0].is_error());
        let none = Spans::new(0.0, 10);
        assert!(none.begin("read", 5, 1, 0, 1).is_none());
    }
}
