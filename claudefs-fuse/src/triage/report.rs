//! The triage report: what one [`ProbeSnapshot`] says, resolved against the
//! mount table, aggregated, sorted and cut to the top entries. Both
//! renderings (table and JSON) are views of a [`TriageReport`]; its serde
//! form is the JSON schema documented in the README ("Triage JSON schema").

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::probes::dev::format_dev;
use crate::probes::hist::LatencyHistogram;
use crate::probes::mountinfo::MountTable;
use crate::probes::opcodes::opcode_name;
use crate::probes::snapshot::{
    FlockKind, FlockMode, FlockTarget, FlockWaiterSample, InFlightSample, LatencyStats,
    ProbeSnapshot, FLOCK_WAITED_THRESHOLD_NS, IN_FLIGHT_THRESHOLD_NS,
};
use crate::triage::format::{format_duration_ns, format_opt_duration_ns, format_unix_ns};

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
    /// `threshold_ns` ([`IN_FLIGHT_THRESHOLD_NS`]).
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
    fn warning(message: String) -> Self {
        Self {
            level: NoteLevel::Warning,
            message,
        }
    }

    fn info(message: String) -> Self {
        Self {
            level: NoteLevel::Info,
            message,
        }
    }
}

/// The message of the note added when the fuse tracepoints were not attached.
pub const FUSE_UNAVAILABLE: &str =
    "per-op FUSE data unavailable: this kernel lacks the fuse tracepoints (Linux >= 6.12)";

fn add_stats(into: &mut LatencyStats, from: &LatencyStats) {
    into.count = into.count.saturating_add(from.count);
    into.errors = into.errors.saturating_add(from.errors);
    into.total_ns = into.total_ns.saturating_add(from.total_ns);
    into.max_ns = into.max_ns.max(from.max_ns);
    into.hist.merge(&from.hist);
}

fn totals(requests: u64, errors: u64, total_ns: u64) -> Totals {
    Totals {
        requests,
        errors,
        total_ns,
        total: format_duration_ns(total_ns),
    }
}

/// Builds the report of one snapshot. With `filter_conn`, only that FUSE
/// connection (kernel `dev_t`) is reported, and only the flock calls
/// attributed to it. Duplicate keys in the snapshot are merged.
pub fn build_report(
    snapshot: &ProbeSnapshot,
    mounts: &MountTable,
    filter_conn: Option<u32>,
) -> TriageReport {
    let wanted = |conn: u32| filter_conn.is_none_or(|f| f == conn);
    let duration_ns = snapshot
        .ended_unix_ns
        .saturating_sub(snapshot.started_unix_ns);
    let window_secs = (duration_ns > 0).then(|| duration_ns as f64 / 1e9);
    let mut notes = Vec::new();

    // Per connection: merged stats per opcode, and per process.
    let mut ops: BTreeMap<u32, BTreeMap<u32, LatencyStats>> = BTreeMap::new();
    for op in snapshot.ops.iter().filter(|op| wanted(op.conn)) {
        let stats = ops
            .entry(op.conn)
            .or_default()
            .entry(op.opcode)
            .or_default();
        add_stats(stats, &op.stats);
    }
    let mut procs: BTreeMap<u32, BTreeMap<u32, ProcRow>> = BTreeMap::new();
    for p in snapshot.procs.iter().filter(|p| wanted(p.conn)) {
        let row = procs
            .entry(p.conn)
            .or_default()
            .entry(p.tgid)
            .or_insert_with(|| ProcRow {
                tgid: p.tgid,
                comm: String::new(),
                requests: 0,
                total_ns: 0,
                total: String::new(),
                mean_ns: None,
            });
        if row.comm.is_empty() {
            row.comm.clone_from(&p.comm);
        }
        row.requests = row.requests.saturating_add(p.count);
        row.total_ns = row.total_ns.saturating_add(p.total_ns);
    }

    let mut in_flight: BTreeMap<u32, Vec<&InFlightSample>> = BTreeMap::new();
    for f in snapshot.in_flight.iter().filter(|f| wanted(f.conn)) {
        in_flight.entry(f.conn).or_default().push(f);
    }

    let conns: BTreeSet<u32> = ops
        .keys()
        .chain(procs.keys())
        .chain(in_flight.keys())
        .copied()
        .collect();
    let mut mount_reports: Vec<MountReport> = conns
        .into_iter()
        .map(|conn| {
            let mut m = build_mount(
                MountRef::resolve(conn, mounts),
                ops.remove(&conn).unwrap_or_default(),
                procs.remove(&conn).unwrap_or_default(),
                window_secs,
            );
            m.in_flight = in_flight_rows(in_flight.remove(&conn).unwrap_or_default());
            m
        })
        .collect();
    // A hung mount may have answered nothing: it goes first regardless.
    let hung_age = |m: &MountReport| oldest_in_flight(m).filter(|&a| a >= HUNG_THRESHOLD_NS);
    mount_reports.sort_by(|a, b| {
        hung_age(b)
            .cmp(&hung_age(a))
            .then(
                (b.totals.total_ns, b.totals.requests).cmp(&(a.totals.total_ns, a.totals.requests)),
            )
            .then(a.mount.dev.cmp(&b.mount.dev))
    });

    let mut all = Totals::default();
    for m in &mount_reports {
        all.requests = all.requests.saturating_add(m.totals.requests);
        all.errors = all.errors.saturating_add(m.totals.errors);
        all.total_ns = all.total_ns.saturating_add(m.totals.total_ns);
    }
    let all = totals(all.requests, all.errors, all.total_ns);

    let active: BTreeSet<u32> = mount_reports.iter().map(|m| m.mount.dev).collect();
    let mut idle_devs = BTreeSet::new();
    let idle_fuse_mounts = mounts
        .fuse_mounts()
        .filter(|e| wanted(e.dev) && !active.contains(&e.dev) && idle_devs.insert(e.dev))
        .map(|e| MountRef::resolve(e.dev, mounts))
        .collect();

    let flock = build_flock(snapshot, mounts, filter_conn);

    if snapshot.fuse_attach.is_none() {
        notes.push(Note::warning(FUSE_UNAVAILABLE.to_owned()));
    }
    if snapshot.flock_attach.is_none() {
        notes.push(Note::warning(
            "flock data unavailable: the filelock/flock_lock_inode and signal/signal_deliver \
             tracepoints were not attached"
                .to_owned(),
        ));
    }
    if snapshot.events_lost > 0 {
        let sent = snapshot
            .events_lost
            .saturating_add(snapshot.events_delivered);
        notes.push(Note::warning(format!(
            "{} of {sent} per-request events were lost (ring buffer full): per-request \
             spans are incomplete; counts, histograms and totals are exact",
            snapshot.events_lost
        )));
    }
    if duration_ns == 0 {
        notes.push(Note::warning(format!(
            "the collection window is empty (started {}, ended {}): rates are not computed",
            snapshot.started_unix_ns, snapshot.ended_unix_ns
        )));
    }
    for m in &mount_reports {
        let Some(oldest) = oldest_in_flight(m) else {
            continue;
        };
        let count = m
            .in_flight
            .iter()
            .fold(0u64, |n, r| n.saturating_add(r.count));
        let what = format!(
            "{count} request{} to {} {} been waiting up to {}",
            if count == 1 { "" } else { "s" },
            m.mount.label(),
            if count == 1 { "has" } else { "have" },
            format_duration_ns(oldest)
        );
        notes.push(if oldest >= HUNG_THRESHOLD_NS {
            Note::warning(format!("{what}: the FUSE daemon may be hung"))
        } else {
            Note::info(format!("{what} (in flight at the end of collection)"))
        });
    }
    for m in &mount_reports {
        match &m.mount.mount_point {
            None => notes.push(Note::info(format!(
                "connection {} is not in the mount table (unmounted during collection?); \
                 shown by its device number",
                m.mount.conn
            ))),
            Some(point) if !mounts.is_mounted(m.mount.dev) => notes.push(Note::info(format!(
                "{point} (conn {}) was unmounted during collection",
                m.mount.conn
            ))),
            Some(_) => {}
        }
    }

    TriageReport {
        schema_version: SCHEMA_VERSION,
        window: Window {
            started_unix_ns: snapshot.started_unix_ns,
            ended_unix_ns: snapshot.ended_unix_ns,
            duration_ns,
            started: format_unix_ns(snapshot.started_unix_ns),
            ended: format_unix_ns(snapshot.ended_unix_ns),
            duration: format_duration_ns(duration_ns),
        },
        probes: ProbeStatus {
            fuse_attached: snapshot.fuse_attach.is_some(),
            fuse_attach_type: snapshot.fuse_attach.map(|k| k.as_str().to_owned()),
            flock_attached: snapshot.flock_attach.is_some(),
            flock_attach_type: snapshot.flock_attach.map(|k| k.as_str().to_owned()),
            events_delivered: snapshot.events_delivered,
            events_lost: snapshot.events_lost,
        },
        filter: filter_conn.map(|conn| MountRef::resolve(conn, mounts)),
        totals: all,
        mounts: mount_reports,
        idle_fuse_mounts,
        flock,
        notes,
    }
}

/// Age of the oldest request in flight on a mount.
fn oldest_in_flight(m: &MountReport) -> Option<u64> {
    m.in_flight.iter().map(|r| r.oldest_age_ns).max()
}

/// One row per opcode (duplicates merged), oldest first, ties by opcode.
fn in_flight_rows(samples: Vec<&InFlightSample>) -> Vec<InFlightRow> {
    let mut by_op: BTreeMap<u32, InFlightRow> = BTreeMap::new();
    for f in samples {
        let row = by_op.entry(f.opcode).or_insert_with(|| InFlightRow {
            opcode: f.opcode,
            name: opcode_name(f.opcode).into_owned(),
            count: 0,
            oldest_age_ns: f.oldest_age_ns,
            oldest_age: String::new(),
            oldest_tgid: f.oldest_tgid,
            oldest_comm: f.oldest_comm.clone(),
            threshold_ns: IN_FLIGHT_THRESHOLD_NS,
        });
        row.count = row.count.saturating_add(f.count);
        if f.oldest_age_ns > row.oldest_age_ns {
            row.oldest_age_ns = f.oldest_age_ns;
            row.oldest_tgid = f.oldest_tgid;
            row.oldest_comm.clone_from(&f.oldest_comm);
        }
    }
    let mut rows: Vec<InFlightRow> = by_op
        .into_values()
        .map(|mut r| {
            r.oldest_age = format_duration_ns(r.oldest_age_ns);
            r
        })
        .collect();
    // Stable sort: equal ages keep the opcode order.
    rows.sort_by_key(|r| std::cmp::Reverse(r.oldest_age_ns));
    rows
}

fn build_mount(
    mount: MountRef,
    ops: BTreeMap<u32, LatencyStats>,
    procs: BTreeMap<u32, ProcRow>,
    window_secs: Option<f64>,
) -> MountReport {
    let (mut requests, mut errors, mut total_ns) = (0u64, 0u64, 0u64);
    let mut by_time: Vec<(u32, LatencyStats)> = ops.into_iter().collect();
    by_time.sort_by(|(a_op, a), (b_op, b)| {
        (b.total_ns, b.count)
            .cmp(&(a.total_ns, a.count))
            .then(a_op.cmp(b_op))
    });
    let rows = by_time
        .iter()
        .map(|(opcode, stats)| {
            requests = requests.saturating_add(stats.count);
            errors = errors.saturating_add(stats.errors);
            total_ns = total_ns.saturating_add(stats.total_ns);
            OpRow {
                opcode: *opcode,
                name: opcode_name(*opcode).into_owned(),
                count: stats.count,
                errors: stats.errors,
                rate_per_sec: window_secs.map(|s| stats.count as f64 / s),
                latency: LatencySummary::from_stats(stats),
            }
        })
        .collect();
    let histograms = by_time
        .iter()
        .filter(|(_, s)| s.hist.count() > 0)
        .take(HISTOGRAM_OPS)
        .map(|(opcode, s)| HistogramReport::from_hist(*opcode, &s.hist))
        .collect();

    let procs: Vec<ProcRow> = procs
        .into_values()
        .map(|mut p| {
            p.total = format_duration_ns(p.total_ns);
            p.mean_ns = p.total_ns.checked_div(p.requests);
            p
        })
        .collect();
    let mut by_requests = procs.clone();
    by_requests.sort_by(|a, b| {
        (b.requests, b.total_ns)
            .cmp(&(a.requests, a.total_ns))
            .then(a.tgid.cmp(&b.tgid))
    });
    by_requests.truncate(TOP_PROCESSES);
    let mut by_proc_time = procs;
    by_proc_time.sort_by(|a, b| {
        (b.total_ns, b.requests)
            .cmp(&(a.total_ns, a.requests))
            .then(a.tgid.cmp(&b.tgid))
    });
    by_proc_time.truncate(TOP_PROCESSES);

    MountReport {
        mount,
        totals: totals(requests, errors, total_ns),
        in_flight: Vec::new(),
        ops: rows,
        histograms,
        top_processes_by_requests: by_requests,
        top_processes_by_time: by_proc_time,
    }
}

fn target_wanted(target: FlockTarget, filter_conn: Option<u32>) -> bool {
    match (filter_conn, target) {
        (None, _) => true,
        (Some(f), FlockTarget::Fuse { conn }) => f == conn,
        (Some(f), FlockTarget::Device { dev }) => f == dev,
        (Some(_), FlockTarget::Local) => false,
    }
}

fn build_flock(
    snapshot: &ProbeSnapshot,
    mounts: &MountTable,
    filter_conn: Option<u32>,
) -> FlockReport {
    type Key = (FlockTarget, FlockKind, FlockMode);
    let mut merged: BTreeMap<Key, (u64, u64, u64, LatencyStats)> = BTreeMap::new();
    for f in snapshot
        .flocks
        .iter()
        .filter(|f| target_wanted(f.target, filter_conn))
    {
        let entry = merged.entry((f.target, f.kind, f.mode)).or_default();
        entry.0 = entry.0.saturating_add(f.calls);
        entry.1 = entry.1.saturating_add(f.refused);
        entry.2 = entry.2.saturating_add(f.waited);
        add_stats(&mut entry.3, &f.wait);
    }
    let mut rows: Vec<FlockRow> = merged
        .into_iter()
        .map(
            |((target, kind, mode), (calls, refused, waited, wait))| FlockRow {
                target: FlockTargetRef::resolve(target, mounts),
                kind: kind.into(),
                mode: mode.into(),
                calls,
                refused,
                waited,
                waited_threshold_ns: FLOCK_WAITED_THRESHOLD_NS,
                wait: LatencySummary::from_stats(&wait),
            },
        )
        .collect();
    // Stable sort: equal rows keep the (target, kind, mode) order.
    rows.sort_by_key(|r| std::cmp::Reverse((r.wait.total_ns, r.calls)));

    let mut waiters: Vec<&FlockWaiterSample> = snapshot
        .flock_waiters
        .iter()
        .filter(|w| target_wanted(w.target, filter_conn))
        .collect();
    waiters.sort_by(|a, b| {
        (b.total_wait_ns, b.max_wait_ns)
            .cmp(&(a.total_wait_ns, a.max_wait_ns))
            .then((a.tgid, a.ino).cmp(&(b.tgid, b.ino)))
    });
    let top_waiters = waiters
        .into_iter()
        .take(TOP_FLOCK_WAITERS)
        .map(|w| FlockWaiterRow {
            target: FlockTargetRef::resolve(w.target, mounts),
            tgid: w.tgid,
            comm: w.comm.clone(),
            ino: w.ino,
            fd: w.fd,
            file: w.file.clone(),
            calls: w.calls,
            total_wait_ns: w.total_wait_ns,
            max_wait_ns: w.max_wait_ns,
            total_wait: format_duration_ns(w.total_wait_ns),
            max_wait: format_duration_ns(w.max_wait_ns),
        })
        .collect();
    FlockReport { rows, top_waiters }
}
