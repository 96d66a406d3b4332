//! Joining the daemon's finished requests with the kernel's view of them
//! (`--ebpf`), by the request's `unique` id.
//!
//! A FUSE worker records each finished request that became a span, and
//! at most one request per storage path per [`EMA_INTERVAL`] among the
//! others that used a path ([`Joiner::ema_due`]), so the join work stays
//! bounded however busy the mount is, while a quiet mount still has every
//! request counted ([`Joiner::record`], one short lock of one of 16
//! shards). The exporter thread takes the probes' events about every
//! 100 ms and [`join_events`] meets them:
//! - the kernel latency (send to end, which includes the time the request
//!   waited in /dev/fuse before a worker read it) feeds the path's EMA
//!   ([`Router::record_latency`]) instead of the daemon-measured time;
//! - the kernel event becomes a parent span (kind Client, `fuse.request`)
//!   of the daemon's span (kind Server), in the same trace, so a trace
//!   shows queueing versus service time;
//! - kernel events slower than the slow threshold that have no daemon
//!   span become kernel-only spans.
//!
//! An entry whose event never comes (lost, or a request the probes did
//! not see) expires after [`EXPIRY`]: its path gets the daemon-measured
//! latency and its span is exported without a parent. The table is
//! bounded ([`SHARD_LIMIT`] per shard); past that, requests are not
//! joined.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::router::Router;
use super::spans::{errno_name, mix, now_ns, Spans, SERVICE};
use crate::otel_trace::{OtelSpan, OtelSpanBuilder, SpanKind, SpanStatus};
use crate::probes::opcodes::opcode_label;
use crate::probes::RequestEvent;
use crate::tracing_client::{SpanId, TraceContext};

const SHARDS: usize = 16;
/// Entries per shard at most.
pub const SHARD_LIMIT: usize = 8192;
/// How long an entry waits for its kernel event.
pub const EXPIRY: Duration = Duration::from_secs(2);
/// A path's EMA takes a kernel latency at most this often.
pub const EMA_INTERVAL: Duration = Duration::from_millis(1);
/// Paths the EMA sampling tells apart (more share slots, which only makes
/// their sampling sparser).
const EMA_SLOTS: usize = 64;

/// What the daemon knows about one finished request.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The storage path that served it, if any.
    pub path: Option<u64>,
    pub daemon_elapsed_ns: u64,
    /// When the daemon finished it, unix ns.
    pub end_ns: u64,
    /// Its span, if it is exported.
    pub span: Option<OtelSpan>,
}

/// Finished requests waiting for their kernel event.
#[derive(Debug)]
pub struct Joiner {
    shards: Vec<Mutex<HashMap<u64, Finished>>>,
    /// Requests not joined because the table was full.
    pub overflow: AtomicU64,
    /// Kernel events met with a daemon request.
    pub joined: AtomicU64,
    /// Entries that expired without a kernel event.
    pub expired: AtomicU64,
    /// Set once the probes are attached; until then nothing is recorded.
    active: AtomicBool,
    /// Per path (slot), when its EMA last took a request (ns after `epoch`).
    ema_last_ns: Vec<AtomicU64>,
    epoch: Instant,
}

impl Default for Joiner {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            overflow: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            active: AtomicBool::new(false),
            ema_last_ns: (0..EMA_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }
}

impl Joiner {
    fn shard(&self, unique: u64) -> &Mutex<HashMap<u64, Finished>> {
        &self.shards[(mix(unique) as usize) % SHARDS]
    }

    /// Starts (or stops) joining.
    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Relaxed);
    }

    /// Whether requests are being joined.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether a request of `path` finishing now should feed the path's
    /// EMA: true at most once per [`EMA_INTERVAL`] per path (monotonic
    /// clock, so a wall-clock step does not stall it).
    pub fn ema_due(&self, path: u64) -> bool {
        // Nanoseconds since the joiner was made, never 0.
        let now_ns = u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(EMA_INTERVAL.as_nanos() as u64);
        let last = &self.ema_last_ns[path as usize % EMA_SLOTS];
        let prev = last.load(Ordering::Relaxed);
        now_ns.saturating_sub(prev) >= EMA_INTERVAL.as_nanos() as u64
            && last
                .compare_exchange(prev, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Records a finished request; gives it back if the table is full.
    pub fn record(&self, unique: u64, f: Finished) -> Option<Finished> {
        let mut m = self.shard(unique).lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= SHARD_LIMIT {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return Some(f);
        }
        m.insert(unique, f);
        None
    }

    /// Takes the entry of `unique`.
    pub fn take(&self, unique: u64) -> Option<Finished> {
        self.shard(unique)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&unique)
    }

    /// Removes the entries finished before `before_ns`.
    pub fn expire(&self, before_ns: u64) -> Vec<Finished> {
        let mut out = Vec::new();
        for s in &self.shards {
            let mut m = s.lock().unwrap_or_else(|p| p.into_inner());
            if m.is_empty() {
                continue;
            }
            out.extend(m.extract_if(|_, f| f.end_ns < before_ns).map(|(_, f)| f));
        }
        self.expired.fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The kernel's span of one request: kind Client (the kernel asks the
/// daemon), named `fuse.request`, in trace `ctx` when joined.
pub fn kernel_span(ev: &RequestEvent, spans: &Spans, path: Option<u64>) -> OtelSpan {
    let trace = spans.trace_of(ev.unique);
    let span_id = SpanId(mix(spans.seed() ^ ev.unique ^ 0x6b65_726e_656c) | 1);
    let mut b = OtelSpanBuilder::new("fuse.request", SERVICE, ev.start_unix_ns)
        .with_trace_id(trace)
        .with_span_id(span_id)
        .with_kind(SpanKind::Client)
        .with_attribute("fuse.opcode", opcode_label(ev.opcode))
        .with_attribute("fuse.unique", ev.unique.to_string())
        .with_attribute("fuse.request_bytes", ev.len.to_string())
        .with_attribute("fuse.reply_bytes", ev.reply_len.to_string())
        .with_attribute("process.pid", ev.tgid.to_string())
        .with_attribute("thread.id", ev.tid.to_string());
    if let Some(p) = path {
        b = b.with_attribute("claudefs.path_id", p.to_string());
    }
    if ev.error != 0 {
        let e = ev.error.saturating_neg();
        b = b
            .with_attribute("error.errno", e.to_string())
            .with_status(SpanStatus::Error(errno_name(e).into_owned()));
    }
    b.build(ev.end_unix_ns.max(ev.start_unix_ns))
}

/// Meets kernel events with the daemon's finished requests (see the
/// module doc); then expires old entries. Returns the spans to export.
pub fn join_events(
    events: &[RequestEvent],
    joiner: &Joiner,
    router: &Router,
    spans: &Spans,
    slow: Option<Duration>,
) -> Vec<OtelSpan> {
    let slow_ns = slow.map(|d| d.as_nanos() as u64);
    let mut out = Vec::new();
    for ev in events {
        match joiner.take(ev.unique) {
            Some(f) => {
                joiner.joined.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = f.path {
                    router.record_latency(p, Duration::from_nanos(ev.duration_ns()));
                }
                let slow_kernel = slow_ns.is_some_and(|s| ev.duration_ns() >= s);
                match f.span {
                    Some(mut child) => {
                        let parent = kernel_span(ev, spans, f.path);
                        // The daemon's span lies inside the kernel's.
                        child.start_unix_ns = child.start_unix_ns.max(parent.start_unix_ns);
                        child.end_unix_ns = child
                            .end_unix_ns
                            .min(parent.end_unix_ns)
                            .max(child.start_unix_ns);
                        let ctx = TraceContext::new(parent.trace_id, parent.span_id, true);
                        child.trace_id = ctx.trace_id;
                        child.parent_span_id = Some(ctx.span_id);
                        out.push(parent);
                        out.push(child);
                    }
                    None if slow_kernel => out.push(kernel_span(ev, spans, f.path)),
                    None => {}
                }
            }
            None => {
                if slow_ns.is_some_and(|s| ev.duration_ns() >= s) {
                    out.push(kernel_span(ev, spans, None));
                }
            }
        }
    }
    let cutoff = now_ns().saturating_sub(EXPIRY.as_nanos() as u64);
    for f in joiner.expire(cutoff) {
        if let Some(p) = f.path {
            router.record_latency(p, Duration::from_nanos(f.daemon_elapsed_ns));
        }
        if let Some(s) = f.span {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::storage::StorageRoot;
    use crate::multipath::{LoadBalancePolicy, PathId};
    use std::sync::Arc;

    fn router() -> (tempfile::TempDir, Router) {
        let d = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(d.path()).unwrap();
        let ino = root.stat(std::path::Path::new("")).unwrap().st_ino;
        let r = Router::new(
            LoadBalancePolicy::RoundRobin,
            vec![(root, 100, "a".into())],
            ino,
        )
        .unwrap();
        (d, r)
    }

    #[test]
    fn kernel_event_becomes_parent_and_feeds_the_ema() {
        let (_d, r) = router();
        r.set_kernel_latency(true);
        let joiner = Arc::new(Joiner::default());
        joiner.set_active(true);
        let spans = Spans::new(1.0, 100).with_joiner(joiner.clone());
        let t0 = now_ns();
        let sp = spans.begin(crate::daemon::spans::Op::new("getattr"), 77, 1, 0, 42);
        spans.end(sp, Some(0), None, None, Some(libc::ENOENT));
        assert_eq!(joiner.len(), 1);
        assert!(spans.buffer().lock().unwrap().is_empty());
        let ev = RequestEvent {
            conn: 1,
            unique: 77,
            opcode: 3,
            tgid: 42,
            tid: 42,
            start_unix_ns: t0.saturating_sub(1_000_000),
            end_unix_ns: now_ns() + 9_000_000,
            error: -libc::ENOENT,
            len: 56,
            reply_len: 16,
        };
        let out = join_events(&[ev], &joiner, &r, &spans, None);
        assert_eq!(out.len(), 2);
        let (parent, child) = (&out[0], &out[1]);
        assert_eq!(parent.kind, SpanKind::Client);
        assert_eq!(child.kind, SpanKind::Server);
        assert_eq!(parent.trace_id, child.trace_id);
        assert_eq!(child.parent_span_id, Some(parent.span_id));
        assert!(parent.start_unix_ns <= child.start_unix_ns);
        assert!(child.end_unix_ns <= parent.end_unix_ns);
        assert_eq!(parent.status, SpanStatus::Error("ENOENT".into()));
        // About 10 ms of kernel latency went into the EMA (from 1 ms).
        let ema = r.snapshot()[0].0.metrics.latency_us;
        assert!(ema > 1000, "ema {ema}");
        let _ = PathId(0);
        assert!(joiner.is_empty());
    }

    #[test]
    fn ema_takes_one_request_per_path_per_interval() {
        let joiner = Joiner::default();
        assert!(joiner.ema_due(0), "the first request of a path counts");
        assert!(
            !joiner.ema_due(0),
            "the next one within the interval does not"
        );
        assert!(joiner.ema_due(1), "paths are sampled apart");
        std::thread::sleep(EMA_INTERVAL * 2);
        assert!(joiner.ema_due(0));
    }

    #[test]
    fn busy_path_records_sampled_requests_only() {
        let (_d, r) = router();
        r.set_kernel_latency(true);
        let joiner = Arc::new(Joiner::default());
        joiner.set_active(true);
        // Rate 0: no span is kept, so only the EMA sampling records.
        let spans = Spans::new(0.0, 100).with_joiner(joiner.clone());
        for unique in 0..1000u64 {
            let sp = spans.begin(
                crate::daemon::spans::Op::new("getattr"),
                unique * 2,
                1,
                0,
                42,
            );
            spans.end(sp, Some(0), None, None, None);
        }
        let n = joiner.len();
        assert!(
            (1..1000).contains(&n),
            "{n} of 1000 back-to-back requests recorded"
        );
    }

    #[test]
    fn unjoined_entries_expire_with_daemon_latency() {
        let (_d, r) = router();
        let joiner = Joiner::default();
        let spans = Spans::new(0.0, 10);
        joiner.record(
            5,
            Finished {
                path: Some(0),
                daemon_elapsed_ns: 50_000_000,
                end_ns: 1,
                span: None,
            },
        );
        let out = join_events(&[], &joiner, &r, &spans, None);
        assert!(out.is_empty());
        assert!(joiner.is_empty());
        assert!(r.snapshot()[0].0.metrics.latency_us > 1000);
    }
}
