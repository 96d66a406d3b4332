//! The triage report: what one [`ProbeSnapshot`](crate::probes::snapshot::ProbeSnapshot) says, resolved against the
//! mount table, aggregated, sorted and cut to the top entries. Both
//! renderings (table and JSON) are views of a [`TriageReport`]; its serde
//! form is the JSON schema documented in the README ("Triage JSON schema").
//! How a snapshot becomes a report lives in `build.rs`.

use serde::{Deserialize, Serialize};

use crate::probes::dev::format_dev;
use crate::probes::hist::LatencyHistogram;
use crate::probes::mountinfo::MountTable;
use crate::probes::opcodes::opcode_name;
use crate::probes::snapshot::{FlockKind, FlockMode, FlockTarget, LatencyStats};
use crate::triage::format::{format_duration_ns, format_opt_duration_ns};

/// Version of the JSON document; bumped when a field changes meaning or
/// disappears (adding fields does not bump it).
pub const SCHEMA_VERSION: u32 = 2;
/// Processes listed per mount, by requests and by time.
pub const TOP_PROCESSES: usize = 10;
/// Opcodes per mount whose histogram is shown (the heaviest by total time).
pub const HISTOGRAM_OPS: usize = 3;
/// Waiting processes listed in the flock section.
pub const TOP_FLOCK_WAITERS: usize = 10;
/// A request in flight this long makes its mount sort first and raises a
/// "daemon may be hung" warning.
pub const HUNG_THRESHOLD_NS: u64 = 1_000_000_000;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriageReport {
    pub schema_version: u32,
    pub window: Window,
    pub probes: ProbeStatus,
    /// The mount asked for with `--mount`, None when reporting all.
    pub filter: Option<MountRef>,
    /// FUSE requests over all reported mounts.
    pub totals: Totals,
    /// Mounts with FUSE requests: those with a request in flight for at
    /// least [`HUNG_THRESHOLD_NS`] first (oldest first), then heaviest
    /// (total time) first.
    pub mounts: Vec<MountReport>,
    /// FUSE mounts of the mount table that saw no request.
    pub idle_fuse_mounts: Vec<MountRef>,
    pub flock: FlockReport,
    pub notes: Vec<Note>,
}

/// The collection window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub started_unix_ns: u64,
    pub ended_unix_ns: u64,
    /// `ended - started`, 0 if the end is not after the start.
    pub duration_ns: u64,
    /// RFC 3339 UTC renderings.
    pub started: String,
    pub ended: String,
    pub duration: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub fuse_attached: bool,
    /// `"tp_btf"` or `"tracepoint"`; None when not attached.
    pub fuse_attach_type: Option<String>,
    pub flock_attached: bool,
    pub flock_attach_type: Option<String>,
    pub events_delivered: u64,
    pub events_lost: u64,
}

/// A FUSE connection or device and what the mount table says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRef {
    /// `"major:minor"`.
    pub conn: String,
    /// Kernel `dev_t` (`major << 20 | minor`).
    pub dev: u32,
    /// None when the device is not in the mount table (unmounted).
    pub mount_point: Option<String>,
    pub fstype: Option<String>,
    pub source: Option<String>,
}

impl MountRef {
    /// Resolves a kernel `dev_t` against the mount table.
    pub fn resolve(dev: u32, mounts: &MountTable) -> Self {
        let entry = mounts.by_dev(dev);
        Self {
            conn: format_dev(dev),
            dev,
            mount_point: entry.map(|e| e.mount_point.to_string_lossy().into_owned()),
            fstype: entry.map(|e| e.fstype.clone()),
            source: entry.map(|e| e.source.clone()),
        }
    }

    /// The mount point, or `"major:minor"` when unknown.
    pub fn label(&self) -> &str {
        self.mount_point.as_deref().unwrap_or(&self.conn)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub total: String,
}

/// FUSE requests of one mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountReport {
    pub mount: MountRef,
    pub totals: Totals,
    /// Requests sent and not answered at the end of collection, per
    /// opcode, oldest first; only those waiting at least
    /// `threshold_ns` ([`IN_FLIGHT_THRESHOLD_NS`](crate::probes::snapshot::IN_FLIGHT_THRESHOLD_NS)).
    pub in_flight: Vec<InFlightRow>,
    /// One row per opcode, by total time, heaviest first.
    pub ops: Vec<OpRow>,
    /// Histograms of the [`HISTOGRAM_OPS`] heaviest opcodes.
    pub histograms: Vec<HistogramReport>,
    pub top_processes_by_requests: Vec<ProcRow>,
    pub top_processes_by_time: Vec<ProcRow>,
}

/// Requests of one opcode still waiting for the daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightRow {
    pub opcode: u32,
    pub name: String,
    pub count: u64,
    pub oldest_age_ns: u64,
    pub oldest_age: String,
    /// Caller of the oldest request.
    pub oldest_tgid: u32,
    /// Empty when the process was gone before its name was read.
    pub oldest_comm: String,
    /// Requests younger than this are not counted.
    pub threshold_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRow {
    pub opcode: u32,
    pub name: String,
    pub count: u64,
    pub errors: u64,
    /// Requests per second over the window; None if the window is empty.
    pub rate_per_sec: Option<f64>,
    pub latency: LatencySummary,
}

/// Latency of a set of calls, in ns. Percentiles are estimated from the
/// log2 histogram (linear inside the bucket) and capped at the exact max.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50_ns: Option<u64>,
    pub p90_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: u64,
    pub mean_ns: Option<u64>,
    pub total_ns: u64,
    pub display: LatencyDisplay,
}

/// [`LatencySummary`] rendered for humans (`"1.23ms"`, `"-"` for None).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyDisplay {
    pub p50: String,
    pub p90: String,
    pub p99: String,
    pub max: String,
    pub mean: String,
    pub total: String,
}

impl LatencySummary {
    pub fn from_stats(stats: &LatencyStats) -> Self {
        let q = |q| quantile_capped(stats, q);
        let (p50_ns, p90_ns, p99_ns) = (q(0.5), q(0.9), q(0.99));
        let mean_ns = stats.total_ns.checked_div(stats.count);
        Self {
            p50_ns,
            p90_ns,
            p99_ns,
            max_ns: stats.max_ns,
            mean_ns,
            total_ns: stats.total_ns,
            display: LatencyDisplay {
                p50: format_opt_duration_ns(p50_ns),
                p90: format_opt_duration_ns(p90_ns),
                p99: format_opt_duration_ns(p99_ns),
                max: format_duration_ns(stats.max_ns),
                mean: format_opt_duration_ns(mean_ns),
                total: format_duration_ns(stats.total_ns),
            },
        }
    }
}

/// The `q`-quantile of the histogram, capped at the recorded maximum when
/// there is one (interpolation inside the top bucket can overshoot it).
pub fn quantile_capped(stats: &LatencyStats, q: f64) -> Option<u64> {
    let value = stats.hist.quantile(q)?;
    Some(if stats.max_ns > 0 {
        value.min(stats.max_ns)
    } else {
        value
    })
}

/// A log2 histogram from its lowest to its highest non-empty bucket
/// (buckets in between may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramReport {
    pub opcode: u32,
    pub name: String,
    pub count: u64,
    pub buckets: Vec<HistBucket>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistBucket {
    /// Index of the Prometheus native histogram bucket of schema 3 (in
    /// seconds): the bucket holds `(2^((index-1)/8), 2^(index/8)]` s.
    /// None for the zero bucket (values up to 2^-20 s, about 954 ns).
    pub index: Option<i32>,
    /// Smallest value of the bucket, inclusive.
    pub lower_ns: u64,
    /// Largest value of the bucket, inclusive.
    pub upper_ns: u64,
    pub count: u64,
}

impl HistogramReport {
    pub fn from_hist(opcode: u32, hist: &LatencyHistogram) -> Self {
        let nonempty = || hist.buckets.iter().enumerate().filter(|(_, &n)| n > 0);
        let buckets = match (nonempty().next(), nonempty().next_back()) {
            (Some((lo, _)), Some((hi, _))) => (lo..=hi)
                .map(|i| HistBucket {
                    index: LatencyHistogram::native_index(i),
                    lower_ns: LatencyHistogram::bucket_lower(i),
                    upper_ns: LatencyHistogram::bucket_upper(i),
                    count: hist.buckets[i],
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            opcode,
            name: opcode_name(opcode).into_owned(),
            count: hist.count(),
            buckets,
        }
    }
}

/// FUSE requests of one process on one mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRow {
    pub tgid: u32,
    /// Empty when the process was gone before its name was read.
    pub comm: String,
    pub requests: u64,
    pub total_ns: u64,
    pub total: String,
    pub mean_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlockReport {
    /// Rows by total wait, heaviest first.
    pub rows: Vec<FlockRow>,
    /// The [`TOP_FLOCK_WAITERS`] processes that waited longest, per file.
    pub top_waiters: Vec<FlockWaiterRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// The flock became a FUSE_SETLK/SETLKW request on a FUSE connection.
    Fuse,
    /// The kernel served it on the file system of a device.
    Device,
    /// No device could be determined.
    Local,
}

/// Where flock calls were attributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlockTargetRef {
    pub kind: TargetKind,
    /// None for [`TargetKind::Local`].
    pub mount: Option<MountRef>,
    /// Mount point, `"major:minor"`, or `"local"`.
    pub label: String,
}

impl FlockTargetRef {
    pub fn resolve(target: FlockTarget, mounts: &MountTable) -> Self {
        let (kind, dev) = match target {
            FlockTarget::Fuse { conn } => (TargetKind::Fuse, Some(conn)),
            FlockTarget::Device { dev } => (TargetKind::Device, Some(dev)),
            FlockTarget::Local => (TargetKind::Local, None),
        };
        let mount = dev.map(|d| MountRef::resolve(d, mounts));
        let label = mount.as_ref().map_or("local", MountRef::label).to_owned();
        Self { kind, mount, label }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    Shared,
    Exclusive,
    Unlock,
}

impl From<FlockKind> for LockKind {
    fn from(kind: FlockKind) -> Self {
        match kind {
            FlockKind::Shared => Self::Shared,
            FlockKind::Exclusive => Self::Exclusive,
            FlockKind::Unlock => Self::Unlock,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    Blocking,
    Nonblocking,
}

impl From<FlockMode> for LockMode {
    fn from(mode: FlockMode) -> Self {
        match mode {
            FlockMode::Blocking => Self::Blocking,
            FlockMode::NonBlocking => Self::Nonblocking,
        }
    }
}

/// flock(2) calls of one (target, kind, mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlockRow {
    pub target: FlockTargetRef,
    pub kind: LockKind,
    pub mode: LockMode,
    pub calls: u64,
    /// Refused with EWOULDBLOCK.
    pub refused: u64,
    /// Took at least `waited_threshold_ns`.
    pub waited: u64,
    pub waited_threshold_ns: u64,
    /// Time spent inside flock(2).
    pub wait: LatencySummary,
}

/// One process waiting in flock(2) on one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlockWaiterRow {
    pub target: FlockTargetRef,
    pub tgid: u32,
    pub comm: String,
    /// Inode number of the file (FUSE: its node id).
    pub ino: u64,
    /// The process's descriptor of the file, None if it was not found.
    pub fd: Option<u32>,
    /// Path behind the fd, None if it could not be resolved.
    pub file: Option<String>,
    pub calls: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
    pub total_wait: String,
    pub max_wait: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteLevel {
    Info,
    Warning,
}

/// Something the reader should know to interpret the numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub level: NoteLevel,
    pub message: String,
}

impl Note {
    pub(super) fn warning(message: String) -> Self {
        Self {
            level: NoteLevel::Warning,
            message,
        }
    }

    pub(super) fn info(message: String) -> Self {
        Self {
            level: NoteLevel::Info,
            message,
        }
    }
}

/// The message of the note added when the fuse tracepoints were not attached.
pub const FUSE_UNAVAILABLE: &str =
    "per-op FUSE data unavailable: this kernel lacks the fuse tracepoints (Linux >= 6.12)";

pub use super::build::build_report;
