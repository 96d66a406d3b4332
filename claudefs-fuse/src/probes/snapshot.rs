//! What one read-out of the probe maps looks like once per-CPU values are
//! merged: plain userspace values, independent of aya. The loader produces
//! it; the triage report and the exporters consume it.

use crate::probes::hist::LatencyHistogram;

/// Latency statistics of one key (all times in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyStats {
    pub count: u64,
    /// Requests that ended with a non-zero error.
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: LatencyHistogram,
}

/// FUSE requests of one (connection, opcode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpSample {
    /// Kernel `dev_t` of the FUSE connection, as the tracepoint reports it
    /// (`MAJOR << 20 | MINOR`).
    pub conn: u32,
    /// FUSE opcode number (FUSE_LOOKUP = 1 ...).
    pub opcode: u32,
    pub stats: LatencyStats,
}

/// FUSE requests issued by one process on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSample {
    pub conn: u32,
    pub tgid: u32,
    /// Process name (`/proc/PID/comm`), resolved while collecting; empty if the
    /// process was gone.
    pub comm: String,
    pub count: u64,
    pub total_ns: u64,
}

/// Where a flock call was attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlockTarget {
    /// The flock became a FUSE_SETLK/SETLKW request on this FUSE connection.
    Fuse { conn: u32 },
    /// The kernel served it on a file system with this `dev_t` (kernel format).
    Device { dev: u32 },
    /// No device could be determined.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlockKind {
    Shared,
    Exclusive,
    Unlock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlockMode {
    Blocking,
    NonBlocking,
}

/// flock(2) calls of one (target, kind, mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlockSample {
    pub target: FlockTarget,
    pub kind: FlockKind,
    pub mode: FlockMode,
    /// All calls.
    pub calls: u64,
    /// Calls refused with EWOULDBLOCK.
    pub refused: u64,
    /// Calls that waited at least [`FLOCK_WAITED_THRESHOLD_NS`].
    pub waited: u64,
    /// Time spent inside flock(2) (`stats.count == calls`).
    pub wait: LatencyStats,
}

/// A flock call that waits at least this long counts as "waited".
pub const FLOCK_WAITED_THRESHOLD_NS: u64 = 1_000_000;

/// One process waiting in flock(2) on one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlockWaiterSample {
    pub target: FlockTarget,
    pub tgid: u32,
    pub comm: String,
    /// Inode number of the file (a device target) or its FUSE node id.
    pub ino: u64,
    /// The process's descriptor of that file, found in `/proc/PID/fd` by
    /// device and inode while collecting; None if it could not be.
    pub fd: Option<u32>,
    /// The path behind that descriptor; None if it could not be resolved.
    pub file: Option<String>,
    pub calls: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
}

/// An in-flight request counts (is reported) once it has been waiting at
/// least this long, so normal traffic caught mid-request is not noise.
pub const IN_FLIGHT_THRESHOLD_NS: u64 = 1_000_000;

/// FUSE requests of one (connection, opcode) sent to the daemon and not
/// answered yet, waiting at least [`IN_FLIGHT_THRESHOLD_NS`] at snapshot
/// time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightSample {
    pub conn: u32,
    pub opcode: u32,
    /// Requests in flight.
    pub count: u64,
    /// Age of the oldest one (snapshot time minus its send time).
    pub oldest_age_ns: u64,
    /// Process that issued the oldest one.
    pub oldest_tgid: u32,
    /// Its name (`/proc/PID/comm`); empty if the process was gone.
    pub oldest_comm: String,
}

/// How a hook's program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachKind {
    /// A BTF-typed raw tracepoint (`tp_btf`): reads the kernel's
    /// structures directly, the cheapest kind.
    Btf,
    /// A classic tracepoint (the fallback where BTF is missing).
    Tracepoint,
}

impl AttachKind {
    /// The `attach_type` label value and JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachKind::Btf => "tp_btf",
            AttachKind::Tracepoint => "tracepoint",
        }
    }
}

/// One kernel hook and how its program is attached (`None`: not attached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// The tracepoint: `fuse_request_send`, `flock_lock_inode`, ...
    pub hook: &'static str,
    pub kind: Option<AttachKind>,
}

/// The kernel's own accounting of one attached program (`bpf_stats`):
/// only counted while `kernel.bpf_stats_enabled` is 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub hook: &'static str,
    pub kind: AttachKind,
    /// Total time spent running the program, ns.
    pub run_time_ns: u64,
    /// Times it ran.
    pub run_count: u64,
}

/// One read-out of every probe map, merged over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSnapshot {
    /// How the FUSE request programs are attached (`fuse_request_send` /
    /// `fuse_request_end`, Linux >= 6.12); None: not attached.
    pub fuse_attach: Option<AttachKind>,
    /// How the kernel-served flock programs are attached
    /// (`filelock/flock_lock_inode`, `signal/signal_deliver`); None: not.
    pub flock_attach: Option<AttachKind>,
    pub ops: Vec<OpSample>,
    pub procs: Vec<ProcSample>,
    pub flocks: Vec<FlockSample>,
    pub flock_waiters: Vec<FlockWaiterSample>,
    /// Requests in flight, per (conn, opcode): filled by
    /// `Probes::in_flight()` (the triage report asks for it; per-scrape
    /// snapshots leave it empty).
    pub in_flight: Vec<InFlightSample>,
    /// Per-request events lost because the ring buffer was full.
    pub events_lost: u64,
    /// Per-request events delivered to userspace.
    pub events_delivered: u64,
    /// Wall-clock span of the collection, unix ns.
    pub started_unix_ns: u64,
    pub ended_unix_ns: u64,
}
