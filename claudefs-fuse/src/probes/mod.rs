//! The probe loader and what it reads out of the kernel.
//!
//! [`Probes::load`] attaches the eBPF programs embedded in this binary (see
//! `build.rs`) to the FUSE and flock tracepoints of the running kernel;
//! [`Probes::poll`] must then be called about every 100 ms to drain the
//! event ring and resolve process and file names while the processes are
//! alive; [`Probes::snapshot`] reads the
//! cumulative statistics. Dropping [`Probes`] detaches everything.
//!
//! Modules: `btf` (kernel structure offsets), `tracefs` (formats and
//! offsets for the classic fallback), `layout` (both into load-time
//! globals), `loader` (load/attach), `readout`
//! (per-CPU merge), `events` (ring buffer), `clock` (monotonic to unix
//! time), `dev` (`dev_t` encodings), `procfs` (names, capabilities, the
//! files of flock waiters), `error`; `hist` and `snapshot` are the types
//! the report consumes.

pub mod btf;
pub mod dev;
pub mod error;
pub mod events;
pub mod hist;
mod layout;
mod loader;
pub mod mountinfo;
pub mod opcodes;
pub mod procfs;
pub mod readout;
pub mod snapshot;
pub mod tracefs;

pub use crate::probes::loader::page_size;

use std::collections::HashSet;

use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::Ebpf;
use claudefs_ebpf_common::{counter, map_names, EventConfig, FlockPending, ProcKey, WaiterKey};

use crate::clock::{self, MonoToUnix};
pub use crate::probes::error::ProbeError;
use crate::probes::events::EventQueue;
pub use crate::probes::events::{EventFilter, RequestEvent};
use crate::probes::procfs::NameCache;
use crate::probes::snapshot::{
    AttachKind, AttachedProgram, FlockSample, FlockTarget, FlockWaiterSample, InFlightSample,
    OpSample, ProbeSnapshot, ProcSample, ProgramStats, IN_FLIGHT_THRESHOLD_NS,
};

/// The eBPF object built by `build.rs` (or `CLAUDEFS_EBPF_OBJECT`).
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/claudefs-ebpf.o"));

/// Events kept between two [`Probes::take_events`] calls.
const EVENT_QUEUE_CAPACITY: usize = 1 << 20;

/// The per-process map is walked for new processes every this many polls.
const PROC_SCAN_EVERY: u64 = 5;

/// Bound of the sets of map keys whose names were already resolved.
const KNOWN_KEYS_LIMIT: usize = 100_000;

/// Which programs to attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProbeSet {
    /// FUSE requests and flock(2) (`observe`, `triage`).
    #[default]
    All,
    /// FUSE requests only, without counting FUSE flock requests: the mount
    /// daemon serves flock itself and reports its own lock contention.
    Fuse,
    /// Empty programs on the FUSE hooks: the floor of what a probe there
    /// costs, for benchmarks.
    Floor,
}

/// What to collect besides the statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Per-request events for spans. [`EventFilter::Off`] by default.
    pub events: EventFilter,
    /// Only emit events of this FUSE connection (kernel `dev_t`, see
    /// [`dev::kernel_dev_of_path`]); `None` for all. Statistics always
    /// cover every connection.
    pub only_conn: Option<u32>,
    pub set: ProbeSet,
    /// Attach classic tracepoints even where the BTF ones work (to test
    /// and measure the fallback).
    pub classic_only: bool,
}

/// Counters the probes keep about themselves (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Events dropped because the ring buffer was full (the request is
    /// still counted in the statistics).
    pub events_lost: u64,
    /// Events the kernel wrote to the ring buffer.
    pub events_submitted: u64,
    /// Events drained from the ring and decoded.
    pub events_delivered: u64,
    /// Events dropped from the userspace queue (not taken in time).
    pub events_dropped_in_queue: u64,
    /// Request ends without a recorded send (in flight at attach time).
    pub unmatched_ends: u64,
    /// Pending flock waits whose end was never seen (the thread started
    /// another request first).
    pub flock_waits_lost: u64,
    /// New keys that did not fit a full statistics map.
    pub map_full: u64,
    /// In-flight requests evicted from a full group of the in-flight table
    /// (their ends then count as unmatched).
    pub inflight_evicted: u64,
    /// Tracepoint fields that could not be read.
    pub read_errors: u64,
}

/// Loaded and attached probes. Detached when dropped.
pub struct Probes {
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
    queue: EventQueue,
    clock: MonoToUnix,
    warnings: Vec<String>,
    attached: Vec<AttachedProgram>,
    /// (hook, kind, program name) of each attached program.
    programs: Vec<(&'static str, AttachKind, &'static str)>,
    fuse_attach: Option<AttachKind>,
    flock_attach: Option<AttachKind>,
    started_unix_ns: u64,
    names: NameCache,
    known_procs: HashSet<ProcKey>,
    known_waiters: HashSet<WaiterKey>,
    polls: u64,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.attached)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl Probes {
    /// Loads the embedded probes and attaches them: as BTF tracepoints
    /// where the kernel's BTF allows, else as classic tracepoints (tracefs
    /// mounted if needed), each fallback said in [`Probes::warnings`]. A
    /// kernel without the FUSE tracepoints still gets the flock probes
    /// (and a warning).
    pub fn load(opts: &ProbeOptions) -> Result<Probes, ProbeError> {
        Probes::load_sized(opts, PROBES_OBJECT, None)
    }

    /// [`Probes::load`] with an event ring of `bytes` instead of the
    /// object's 8 MiB (about 130 000 events of 64 bytes each: the 56-byte
    /// record and the ring's 8-byte header). `bytes` must be a power of two
    /// and a multiple of the page size, else this is an error (whatever
    /// the privileges). A full ring loses events, counted in
    /// [`ProbeCounters::events_lost`], never counts or histograms; tests
    /// make the ring small to fill it.
    pub fn load_with_event_ring(opts: &ProbeOptions, bytes: u32) -> Result<Probes, ProbeError> {
        Probes::load_sized(opts, PROBES_OBJECT, Some(bytes))
    }

    /// [`Probes::load`] with another build of the probes object.
    pub fn load_object(opts: &ProbeOptions, object: &[u8]) -> Result<Probes, ProbeError> {
        Probes::load_sized(opts, object, None)
    }

    fn load_sized(
        opts: &ProbeOptions,
        object: &[u8],
        event_ring_bytes: Option<u32>,
    ) -> Result<Probes, ProbeError> {
        // Checked here, before the privileges, so a bad size is the same
        // error for any user.
        let event_ring_bytes = event_ring_bytes
            .map(|bytes| loader::check_event_ring_bytes(bytes, page_size()))
            .transpose()?;
        let missing = procfs::missing_caps_of_self();
        if !missing.is_empty() {
            return Err(ProbeError::Privileges {
                missing: missing.join(", "),
            });
        }
        let loaded = loader::load(opts, object, event_ring_bytes)?;
        let mut ebpf = loaded.ebpf;
        set_event_config(&mut ebpf, opts.events.to_config(opts.only_conn))?;
        let ring = match ebpf.take_map(map_names::EVENTS) {
            Some(m) => Some(RingBuf::try_from(m).map_err(|source| ProbeError::Map {
                map: map_names::EVENTS,
                source,
            })?),
            None => None,
        };
        Ok(Probes {
            ebpf,
            ring,
            queue: EventQueue::new(EVENT_QUEUE_CAPACITY),
            clock: MonoToUnix::calibrate(),
            warnings: loaded.warnings,
            attached: loaded.attached,
            programs: loaded.programs,
            fuse_attach: loaded.fuse_attach,
            flock_attach: loaded.flock_attach,
            started_unix_ns: clock::realtime_ns(),
            names: NameCache::default(),
            known_procs: HashSet::new(),
            known_waiters: HashSet::new(),
            polls: 0,
        })
    }

    /// Call about every 100 ms: drains the ring buffer into the event
    /// queue, forwards the probes' log records, and resolves the comm and
    /// `/proc/PID/fd/FD` of flock waiters and new processes while alive.
    pub fn poll(&mut self) -> Result<(), ProbeError> {
        self.drain_events();
        self.resolve_inflight_flocks()?;
        // The kernel maps are LRU-bounded; keep the "seen" sets bounded too
        // (clearing only costs re-resolving names that are cached anyway).
        if self.known_procs.len() > KNOWN_KEYS_LIMIT {
            self.known_procs.clear();
        }
        if self.known_waiters.len() > KNOWN_KEYS_LIMIT {
            self.known_waiters.clear();
        }
        // Walking the per-process map costs a syscall per key, so it is
        // done every few polls; the kernel keeps each caller's comm too.
        self.polls = self.polls.wrapping_add(1);
        if self.polls % PROC_SCAN_EVERY == 1 {
            for key in readout::read_keys::<ProcKey, claudefs_ebpf_common::ProcStats>(
                &self.ebpf,
                map_names::PROC_STATS,
            )? {
                if self.known_procs.insert(key) {
                    self.names.resolve_comm(key.tgid);
                }
            }
        }
        for key in readout::read_keys::<WaiterKey, claudefs_ebpf_common::WaiterStats>(
            &self.ebpf,
            map_names::FLOCK_WAITERS,
        )? {
            if self.known_waiters.insert(key) {
                self.names.resolve_comm(key.tgid);
                self.names.resolve_file(&waiter_file(
                    key.target_type,
                    key.target_id,
                    key.tgid,
                    key.ino,
                ));
            }
        }
        Ok(())
    }

    /// Events drained so far (oldest first); empties the queue.
    pub fn take_events(&mut self) -> Vec<RequestEvent> {
        self.queue.take()
    }

    /// Changes the event filter of the running probes.
    pub fn set_event_filter(
        &mut self,
        events: EventFilter,
        only_conn: Option<u32>,
    ) -> Result<(), ProbeError> {
        set_event_config(&mut self.ebpf, events.to_config(only_conn))
    }

    /// Everything recorded since load, merged over CPUs.
    pub fn snapshot(&mut self) -> Result<ProbeSnapshot, ProbeError> {
        self.drain_events();
        let ops = readout::read_ops(&self.ebpf)?
            .into_iter()
            .map(|(k, stats)| OpSample {
                conn: k.conn,
                opcode: k.opcode,
                stats,
            })
            .collect();
        let procs = readout::read_procs(&self.ebpf)?
            .into_iter()
            .map(|(k, count, total_ns, kernel_comm)| {
                self.names.resolve_comm(k.tgid);
                ProcSample {
                    conn: k.conn,
                    tgid: k.tgid,
                    comm: self
                        .names
                        .comm(k.tgid)
                        .map(str::to_string)
                        .unwrap_or(kernel_comm),
                    count,
                    total_ns,
                }
            })
            .collect();
        let flocks = readout::read_flocks(&self.ebpf)?
            .into_iter()
            .filter_map(|(k, (calls, refused, waited, wait))| {
                Some(FlockSample {
                    target: readout::flock_target(k.target_type, k.target_id),
                    kind: readout::flock_kind(k.kind)?,
                    mode: readout::flock_mode(k.mode)?,
                    calls,
                    refused,
                    waited,
                    wait,
                })
            })
            .collect();
        let flock_waiters = readout::read_waiters(&self.ebpf)?
            .into_iter()
            .map(|(k, w)| {
                self.names.resolve_comm(k.tgid);
                let wf = waiter_file(k.target_type, k.target_id, k.tgid, k.ino);
                self.names.resolve_file(&wf);
                let file = self.names.file(&wf);
                FlockWaiterSample {
                    target: readout::flock_target(k.target_type, k.target_id),
                    tgid: k.tgid,
                    comm: self
                        .names
                        .comm(k.tgid)
                        .map(str::to_string)
                        .unwrap_or(w.comm),
                    ino: k.ino,
                    fd: file.map(|(fd, _)| fd),
                    file: file.map(|(_, p)| p.to_string()),
                    calls: w.calls,
                    total_wait_ns: w.total_wait_ns,
                    max_wait_ns: w.max_wait_ns,
                }
            })
            .collect();
        Ok(ProbeSnapshot {
            fuse_attach: self.fuse_attach,
            flock_attach: self.flock_attach,
            ops,
            procs,
            flocks,
            flock_waiters,
            // Reading the in-flight table costs a lookup per group (a few
            // ms): callers that want it ask `in_flight()` themselves.
            in_flight: Vec::new(),
            events_lost: readout::read_counter(&self.ebpf, counter::EVENTS_LOST)?,
            events_delivered: self.queue.delivered,
            started_unix_ns: self.started_unix_ns,
            ended_unix_ns: clock::realtime_ns(),
        })
    }

    /// FUSE requests sent and not answered yet, waiting at least
    /// [`IN_FLIGHT_THRESHOLD_NS`], per (conn, opcode). Reads the whole
    /// in-flight table (one lookup per group, a few ms), so it is not
    /// part of [`Probes::snapshot`], which runs per scrape.
    pub fn in_flight(&mut self) -> Result<Vec<InFlightSample>, ProbeError> {
        if self.fuse_attach.is_none() {
            return Ok(Vec::new());
        }
        let slots = readout::read_inflight(&self.ebpf)?;
        // After the read: a request sent meanwhile gets age 0, not a wrap.
        let now = clock::monotonic_ns();
        Ok(
            readout::group_in_flight(&slots, now, IN_FLIGHT_THRESHOLD_NS)
                .into_iter()
                .map(|((conn, opcode), g)| {
                    self.names.resolve_comm(g.oldest_tgid);
                    InFlightSample {
                        conn,
                        opcode,
                        count: g.count,
                        oldest_age_ns: g.oldest_age_ns,
                        oldest_tgid: g.oldest_tgid,
                        oldest_comm: self
                            .names
                            .comm(g.oldest_tgid)
                            .map(str::to_string)
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        )
    }

    /// The probes' own counters (lost events, unmatched ends, full maps).
    pub fn counters(&mut self) -> Result<ProbeCounters, ProbeError> {
        self.drain_events();
        let c = readout::read_counters(&self.ebpf)?;
        Ok(ProbeCounters {
            events_lost: c[counter::EVENTS_LOST as usize],
            events_submitted: c[counter::EVENTS_SUBMITTED as usize],
            events_delivered: self.queue.delivered,
            events_dropped_in_queue: self.queue.dropped,
            unmatched_ends: c[counter::UNMATCHED_ENDS as usize],
            flock_waits_lost: c[counter::FLOCK_WAITS_LOST as usize],
            map_full: c[counter::MAP_FULL as usize],
            inflight_evicted: c[counter::INFLIGHT_EVICTED as usize],
            read_errors: c[counter::READ_ERRORS as usize],
        })
    }

    /// What the loader had to work around (tracefs mounted, tracepoints
    /// missing ...), one sentence each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Every hook and how its program is attached.
    pub fn attached_programs(&self) -> Vec<AttachedProgram> {
        self.attached.clone()
    }

    /// The kernel's run time and run count of each attached program
    /// (`bpf_stats`). Empty unless `kernel.bpf_stats_enabled` is 1: the
    /// kernel only counts while it is (which costs a clock read per run).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        if !bpf_stats_enabled() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &(hook, kind, program) in &self.programs {
            let Some(info) = self.ebpf.program(program).and_then(|p| p.info().ok()) else {
                continue;
            };
            out.push(ProgramStats {
                hook,
                kind,
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                run_count: info.run_count(),
            });
        }
        out
    }

    /// The monotonic-to-unix converter the events use.
    pub fn clock(&self) -> MonoToUnix {
        self.clock
    }

    /// Drains the ring buffer into the queue; returns how many events.
    /// Bounded per call so a flood cannot keep the caller here forever.
    pub fn drain_events(&mut self) -> usize {
        let Some(ring) = self.ring.as_mut() else {
            return 0;
        };
        let mut n = 0usize;
        while n < 4 * EVENT_QUEUE_CAPACITY {
            let Some(item) = ring.next() else {
                break;
            };
            if let Some(ev) = events::decode(&item, &self.clock) {
                self.queue.push(ev);
            }
            n += 1;
        }
        n
    }

    /// Resolves the names and files of threads waiting for a flock now:
    /// a blocked waiter is alive now, and may be gone by the time it is
    /// reported.
    fn resolve_inflight_flocks(&mut self) -> Result<(), ProbeError> {
        let name = map_names::FLOCK_PENDING;
        let Some(m) = self.ebpf.map(name) else {
            return Ok(());
        };
        let map: HashMap<&MapData, u32, FlockPending> =
            HashMap::try_from(m).map_err(|source| ProbeError::Map { map: name, source })?;
        let entries: Vec<FlockPending> =
            map.iter().filter_map(Result::ok).map(|(_, v)| v).collect();
        for e in entries {
            self.names.resolve_comm(e.tgid);
            self.names
                .resolve_file(&waiter_file(e.target_type, e.target_id, e.tgid, e.ino));
        }
        Ok(())
    }
}

/// Whether the kernel counts BPF program run time (`kernel.bpf_stats_enabled`).
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// The file a flock map entry names, as `procfs` looks it up.
fn waiter_file(target_type: u32, target_id: u32, tgid: u32, ino: u64) -> procfs::WaiterFile {
    let target = readout::flock_target(target_type, target_id);
    let dev = match target {
        FlockTarget::Fuse { conn } => conn,
        FlockTarget::Device { dev } => dev,
        FlockTarget::Local => 0,
    };
    procfs::WaiterFile {
        tgid,
        dev: dev::user_dev_from_kernel(dev),
        ino,
        fuse: matches!(target, FlockTarget::Fuse { .. }),
    }
}

fn set_event_config(ebpf: &mut Ebpf, cfg: EventConfig) -> Result<(), ProbeError> {
    let name = map_names::EVENT_CONFIG;
    let m = ebpf.map_mut(name).ok_or(ProbeError::Missing {
        what: "map",
        name: name.to_string(),
    })?;
    let mut arr: Array<&mut MapData, EventConfig> =
        Array::try_from(m).map_err(|source| ProbeError::Map { map: name, source })?;
    arr.set(0, cfg, 0)
        .map_err(|source| ProbeError::Map { map: name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_ring_of_a_bad_size_is_refused_before_anything_loads() {
        // Refused before the privilege check, so this holds for any user.
        let page = page_size();
        for bytes in [0, page + 1, 3 * page] {
            let err = Probes::load_with_event_ring(&ProbeOptions::default(), bytes)
                .expect_err("a bad ring size")
                .to_string();
            assert!(
                err.contains("event ring") && err.contains("power of two"),
                "{bytes}: {err}"
            );
        }
    }
}
