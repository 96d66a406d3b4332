//! One OpenTelemetry span per sampled FUSE request.
//!
//! Each request gets a trace id derived from the kernel's request id (and a
//! per-daemon seed); [`crate::otel_trace::OtelSampler`] decides from it.
//! A kept request becomes an [`crate::otel_trace::OtelSpan`] in the shared
//! [`crate::otel_trace::OtelExportBuffer`] that exporters drain.
//!
//! Requests slower than the slow threshold (`--slow-threshold`) always
//! become spans, sampled or not. With `--ebpf` a finished request that
//! used a storage path or became a span goes to the [`Joiner`] instead,
//! where the exporter meets it with the kernel's event of the same
//! `unique` (see `crate::daemon::kernel_join`).
//!
//! Span shape: operation = the FUSE operation name in lower case
//! (`lookup`, `read`, `setlk`, ...), service `claudefs-fuse`, kind Server,
//! status Error(errno name, e.g. `ENOENT`) on failure and Unset otherwise.
//! Attributes
//! (dotted lower-case names, values as decimal strings):
//!
//! | key                | meaning                                   |
//! |--------------------|-------------------------------------------|
//! | `fuse.inode`       | inode the request is about                |
//! | `fuse.fh`          | file handle, when the request has one     |
//! | `fuse.unique`      | the kernel's request id                   |
//! | `claudefs.path_id` | storage path that served it, if any       |
//! | `fuse.bytes`       | bytes read or written                     |
//! | `user.id`          | caller uid (as the kernel reports it)     |
//! | `process.pid`      | caller pid                                |
//! | `error.errno`      | errno replied, on failure only            |

use crate::sharded::Sharded;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::otel_trace::{
    OtelExportBuffer, OtelSampler, OtelSpanBuilder, SamplingDecision, SpanKind, SpanStatus,
};
use crate::tracing_client::TraceId;

pub use super::kernel_join::{Finished, Joiner};

/// Service name of every span.
pub const SERVICE: &str = "claudefs-fuse";

/// The symbolic name of an errno (`2` -> `"ENOENT"`); `errno N` if unknown.
pub fn errno_name(e: i32) -> std::borrow::Cow<'static, str> {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::ENOLINK => "ENOLINK",
        libc::ECOMM => "ECOMM",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        _ => return format!("errno {e}").into(),
    };
    name.into()
}

/// Wall-clock time, unix ns.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// SplitMix64 finaliser: spreads `z` over 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The operations the daemon counts (`claudefs_fuse_daemon_requests_total`
/// `op` label); anything else counts as `other`.
pub const OPS: [&str; 31] = [
    "access",
    "create",
    "fallocate",
    "flush",
    "fsync",
    "fsyncdir",
    "getattr",
    "getxattr",
    "link",
    "listxattr",
    "lookup",
    "lseek",
    "mkdir",
    "mknod",
    "open",
    "opendir",
    "read",
    "readdir",
    "readdirplus",
    "readlink",
    "release",
    "removexattr",
    "rename",
    "rmdir",
    "setattr",
    "setlk",
    "setxattr",
    "statfs",
    "symlink",
    "unlink",
    "write",
];

/// Counted operations: [`OPS`], then `other`.
const OP_SLOTS: usize = OPS.len() + 1;

/// Requests answered and answered with an error, per operation: counter
/// `i` answered, `OP_SLOTS + i` errors (every request writes them:
/// sharded).
#[derive(Debug)]
struct OpCounters(Sharded);

impl Default for OpCounters {
    fn default() -> Self {
        Self(Sharded::new(2 * OP_SLOTS))
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// An operation name and its counter slot (its index in [`OPS`], or
/// `other`). `const { Op::new("read") }` finds the slot at compile time,
/// so a request does not search for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    name: &'static str,
    index: usize,
}

impl Op {
    /// The operation's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub const fn new(name: &'static str) -> Self {
        let mut i = 0;
        while i < OPS.len() {
            if str_eq(OPS[i], name) {
                return Self { name, index: i };
            }
            i += 1;
        }
        Self {
            name,
            index: OPS.len(),
        }
    }
}

/// A request being answered (and maybe traced).
#[derive(Debug)]
pub struct ReqSpan {
    op: &'static str,
    op_index: usize,
    /// Timed: it may become a span or be joined with the kernel.
    timed: bool,
    trace: TraceId,
    start_ns: u64,
    ino: u64,
    uid: u32,
    pid: u32,
    unique: u64,
    sampled: bool,
}

/// Sampler + export buffer (+ slow threshold and kernel joiner).
#[derive(Debug)]
pub struct Spans {
    sampler: OtelSampler,
    buffer: Arc<Mutex<OtelExportBuffer>>,
    seed: u64,
    /// Requests at least this slow always become spans (0: off).
    slow_ns: u64,
    joiner: Option<Arc<Joiner>>,
    ops: OpCounters,
}

impl Spans {
    /// Keeps a share `rate` of requests, up to `capacity` buffered spans.
    pub fn new(rate: f64, capacity: usize) -> Self {
        Self {
            sampler: OtelSampler::new(rate),
            buffer: Arc::new(Mutex::new(OtelExportBuffer::new(capacity))),
            seed: mix(now_ns() ^ u64::from(std::process::id())),
            slow_ns: 0,
            joiner: None,
            ops: OpCounters::default(),
        }
    }

    /// Requests slower than `t` always become spans.
    pub fn with_slow_threshold(mut self, t: Option<Duration>) -> Self {
        self.slow_ns = t.map_or(0, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        self
    }

    /// Finished requests go to `joiner` (kernel events with `--ebpf`).
    pub fn with_joiner(mut self, joiner: Arc<Joiner>) -> Self {
        self.joiner = Some(joiner);
        self
    }

    /// The trace id of request `unique`.
    pub fn trace_of(&self, unique: u64) -> TraceId {
        let hi = mix(self.seed ^ unique);
        let lo = mix(hi ^ unique.rotate_left(17)) | 1;
        TraceId((u128::from(hi) << 64) | u128::from(lo))
    }

    /// The per-daemon seed ids are derived from.
    pub fn seed(&self) -> u64 {
        self.seed
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

    /// Requests answered so far: (op, answered, errors), nonzero ones.
    pub fn op_counts(&self) -> Vec<(&'static str, u64, u64)> {
        OPS.iter()
            .copied()
            .chain(["other"])
            .enumerate()
            .map(|(i, op)| (op, self.ops.0.get(i), self.ops.0.get(OP_SLOTS + i)))
            .filter(|(_, n, _)| *n > 0)
            .collect()
    }

    /// Starts request `unique`: it is counted when it ends, and timed if
    /// the sampler keeps it (or if it may still become a slow-request span
    /// or be joined with the kernel).
    pub fn begin(&self, op: Op, unique: u64, ino: u64, uid: u32, pid: u32) -> Option<ReqSpan> {
        let trace = self.trace_of(unique);
        let sampled = matches!(
            self.sampler.should_sample(trace),
            SamplingDecision::RecordAndSample
        );
        let joining = self.joiner.as_ref().is_some_and(|j| j.is_active());
        let timed = sampled || self.slow_ns > 0 || joining;
        Some(ReqSpan {
            op: op.name,
            op_index: op.index,
            timed,
            trace,
            start_ns: if timed { now_ns() } else { 0 },
            ino,
            uid,
            pid,
            unique,
            sampled,
        })
    }

    /// Counts a finished request served on storage path `path` (if any);
    /// finishes its span if it is traced.
    pub fn end(
        &self,
        span: Option<ReqSpan>,
        path: Option<u64>,
        fh: Option<u64>,
        bytes: Option<u64>,
        errno: Option<i32>,
    ) {
        let Some(s) = span else { return };
        self.ops.0.add(s.op_index, 1);
        if errno.is_some() {
            self.ops.0.add(OP_SLOTS + s.op_index, 1);
        }
        if !s.timed {
            return;
        }
        let end_ns = now_ns();
        let elapsed = end_ns.saturating_sub(s.start_ns);
        let keep = s.sampled || (self.slow_ns > 0 && elapsed >= self.slow_ns);
        let built = keep.then(|| self.build(&s, end_ns, path, fh, bytes, errno));
        if let Some(j) = self.joiner.as_ref().filter(|j| j.is_active()) {
            if built.is_some() || path.is_some_and(|p| j.ema_due(p)) {
                let f = Finished {
                    path,
                    daemon_elapsed_ns: elapsed,
                    end_ns,
                    span: built,
                };
                if let Some(f) = j.record(s.unique, f) {
                    // The joiner is full: export what we have unjoined.
                    if let Some(sp) = f.span {
                        self.push(sp);
                    }
                }
                return;
            }
        }
        if let Some(sp) = built {
            self.push(sp);
        }
    }

    /// Adds a finished span to the export buffer.
    pub fn push(&self, span: crate::otel_trace::OtelSpan) {
        self.buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(span);
    }

    fn build(
        &self,
        s: &ReqSpan,
        end_ns: u64,
        path: Option<u64>,
        fh: Option<u64>,
        bytes: Option<u64>,
        errno: Option<i32>,
    ) -> crate::otel_trace::OtelSpan {
        let mut b = OtelSpanBuilder::new(s.op, SERVICE, s.start_ns)
            .with_trace_id(s.trace)
            .with_kind(SpanKind::Server)
            .with_attribute("fuse.inode", s.ino.to_string());
        if let Some(fh) = fh {
            b = b.with_attribute("fuse.fh", fh.to_string());
        }
        b = b.with_attribute("fuse.unique", s.unique.to_string());
        if let Some(p) = path {
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
                .with_status(SpanStatus::Error(errno_name(e).into_owned()));
        }
        b.build(end_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_request_becomes_server_span() {
        let s = Spans::new(1.0, 10);
        let r = s.begin(Op::new("read"), 42, 7, 1000, 55);
        assert!(r.is_some());
        s.end(r, None, Some(3), Some(4096), None);
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
        let r = s.begin(Op::new("lookup"), 1, 1, 0, 1);
        s.end(r, None, None, None, Some(2));
        let spans = s.buffer().lock().unwrap().drain();
        assert_eq!(spans[0].status, SpanStatus::Error("ENOENT".into()));
        // Not sampled: no span, but counted.
        let none = Spans::new(0.0, 10);
        for unique in 0..3 {
            let r = none.begin(Op::new("read"), unique, 1, 0, 1);
            none.end(r, None, None, None, (unique == 0).then_some(libc::EIO));
        }
        let r = none.begin(Op::new("some_new_op"), 9, 1, 0, 1);
        none.end(r, None, None, None, None);
        assert!(none.buffer().lock().unwrap().is_empty());
        assert_eq!(none.op_counts(), vec![("read", 3, 1), ("other", 1, 0)]);
        assert_eq!(s.op_counts(), vec![("lookup", 1, 1)]);
    }

    #[test]
    fn slow_requests_always_become_spans() {
        let s = Spans::new(0.0, 10).with_slow_threshold(Some(Duration::from_millis(5)));
        let fast = s.begin(Op::new("read"), 1, 1, 0, 1);
        s.end(fast, None, None, None, None);
        assert!(s.buffer().lock().unwrap().is_empty());
        let slow = s.begin(Op::new("read"), 2, 1, 0, 1);
        std::thread::sleep(Duration::from_millis(6));
        s.end(slow, None, None, None, None);
        assert_eq!(s.buffer().lock().unwrap().drain().len(), 1);
    }

    #[test]
    fn op_slots() {
        for (i, o) in OPS.iter().enumerate() {
            assert_eq!(Op::new(o).index, i);
        }
        const OPEN: Op = Op::new("open");
        assert_eq!(OPS[OPEN.index], "open");
        assert_eq!(Op::new("ope").index, OPS.len());
        assert_eq!(Op::new("opened").index, OPS.len());
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(libc::EIO), "EIO");
        assert_eq!(errno_name(4242), "errno 4242");
    }
}
