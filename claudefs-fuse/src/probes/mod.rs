//! The probe loader and what it reads out of the kernel.
//!
//! [`Probes::load`] attaches the eBPF programs embedded in this binary (see
//! `build.rs`) to the FUSE and flock tracepoints of the running kernel;
//! [`Probes::poll`] must then be called about every 100 ms to drain the
//! event ring, forward the probes' log records and resolve process and file
//! names while the processes are alive; [`Probes::snapshot`] reads the
//! cumulative statistics. Dropping [`Probes`] detaches everything.
//!
//! Modules: `tracefs` (formats and offsets), `loader` (load/attach),
//! `readout` (per-CPU merge), `events` (ring buffer), `clock` (monotonic to
//! unix time), `dev` (`dev_t` encodings), `procfs` (names, capabilities),
//! `error`; `hist` and `snapshot` are the types the report consumes.

pub mod clock;
pub mod dev;
pub mod error;
pub mod events;
pub mod hist;
mod loader;
pub mod mountinfo;
pub mod opcodes;
pub mod procfs;
pub mod readout;
pub mod snapshot;
pub mod tracefs;

use std::collections::HashSet;
use std::path::PathBuf;

use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::Ebpf;
use aya_log::EbpfLogger;
use claudefs_ebpf_common::{counter, map_names, EventConfig, FlockInflight, ProcKey, WaiterKey};

use crate::probes::clock::MonoToUnix;
pub use crate::probes::error::ProbeError;
use crate::probes::events::EventQueue;
pub use crate::probes::events::{EventFilter, RequestEvent};
use crate::probes::procfs::NameCache;
use crate::probes::snapshot::{
    FlockSample, FlockWaiterSample, InFlightSample, OpSample, ProbeSnapshot, ProcSample,
    IN_FLIGHT_THRESHOLD_NS,
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

/// What to collect besides the statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Per-request events for spans. [`EventFilter::Off`] by default.
    pub events: EventFilter,
    /// Only emit events of this FUSE connection (kernel `dev_t`, see
    /// [`dev::kernel_dev_of_path`]); `None` for all. Statistics always
    /// cover every connection.
    pub only_conn: Option<u32>,
    /// Attach only the FUSE request programs, not the flock ones. The
    /// mount daemon, which serves flock itself and measures its waits,
    /// sets this: the flock syscall tracepoints would put every task on
    /// the host on the slower traced-syscall path.
    pub fuse_only: bool,
}

/// Counters the probes keep about themselves (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Events dropped because the ring buffer was full.
    pub events_lost: u64,
    /// Events the kernel wrote to the ring buffer.
    pub events_submitted: u64,
    /// Events drained from the ring and decoded.
    pub events_delivered: u64,
    /// Events dropped from the userspace queue (not taken in time).
    pub events_dropped_in_queue: u64,
    /// Request ends without a recorded send (in flight at attach time).
    pub unmatched_ends: u64,
    /// flock exits without a recorded enter.
    pub unmatched_flock_exits: u64,
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
    /// Must stay alive: dropping it closes the log map the programs use.
    logger: Option<EbpfLogger<loader::TracingLog>>,
    ring: Option<RingBuf<MapData>>,
    queue: EventQueue,
    clock: MonoToUnix,
    warnings: Vec<String>,
    attached: Vec<(String, bool)>,
    fuse_attached: bool,
    flock_attached: bool,
    started_unix_ns: u64,
    names: NameCache,
    known_procs: HashSet<ProcKey>,
    known_waiters: HashSet<WaiterKey>,
    polls: u64,
    opcode_names: Vec<(u32, String)>,
    tracefs_root: PathBuf,
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
    /// Mounts tracefs if needed (and says so in [`Probes::warnings`]),
    /// loads the embedded probes and attaches them. A kernel without the
    /// FUSE tracepoints still gets the flock probes (`fuse_attached` false
    /// and a warning).
    pub fn load(opts: &ProbeOptions) -> Result<Probes, ProbeError> {
        Probes::load_object(opts, PROBES_OBJECT)
    }

    /// [`Probes::load`] with another build of the probes object.
    pub fn load_object(opts: &ProbeOptions, object: &[u8]) -> Result<Probes, ProbeError> {
        let missing = procfs::missing_caps_of_self();
        if !missing.is_empty() {
            return Err(ProbeError::Privileges {
                missing: missing.join(", "),
            });
        }
        let mut warnings = Vec::new();
        let tfs = tracefs::Tracefs::find_or_mount()?;
        if tfs.mounted_by_us {
            let msg = format!(
                "tracefs was not mounted; mounted it at {}",
                tfs.root().display()
            );
            tracing::info!("{msg}");
            warnings.push(msg);
        }
        let layout = loader::read_layout(&tfs, &mut warnings)?;
        if !layout.fuse && !layout.flock {
            return Err(ProbeError::NoTracepoints {
                missing: "fuse/fuse_request_send, fuse/fuse_request_end, \
                          syscalls/sys_enter_flock, syscalls/sys_exit_flock"
                    .to_string(),
            });
        }
        let mut ebpf = loader::load_object(object, &layout)?;
        let logger = match EbpfLogger::init_with_logger(&mut ebpf, loader::TracingLog) {
            Ok(l) => Some(l),
            Err(e) => {
                warnings.push(format!(
                    "probe log records unavailable: {}",
                    ProbeError::Log(e)
                ));
                None
            }
        };
        set_event_config(&mut ebpf, opts.events.to_config(opts.only_conn))?;

        let mut attached = Vec::new();
        // (wanted, tracepoints present, programs); programs not wanted are
        // not listed as attached or missing.
        let groups = [
            (true, layout.fuse, &loader::FUSE_PROGRAMS[..]),
            (!opts.fuse_only, layout.flock, &loader::FLOCK_PROGRAMS[..]),
            (
                !opts.fuse_only,
                layout.flock && layout.lock_inode,
                std::slice::from_ref(&loader::LOCK_INODE_PROGRAM),
            ),
        ];
        let mut group_ok = [false; 3];
        for (i, (wanted, enabled, specs)) in groups.iter().enumerate() {
            if !wanted {
                continue;
            }
            let mut all = *enabled;
            for spec in specs.iter() {
                let ok = *enabled && loader::attach(&mut ebpf, spec, &mut warnings)?;
                all &= ok;
                attached.push((spec.program.to_string(), ok));
            }
            group_ok[i] = all;
        }
        let ring = match ebpf.take_map(map_names::EVENTS) {
            Some(m) => Some(RingBuf::try_from(m).map_err(|source| ProbeError::Map {
                map: map_names::EVENTS,
                source,
            })?),
            None => None,
        };
        Ok(Probes {
            ebpf,
            logger,
            ring,
            queue: EventQueue::new(EVENT_QUEUE_CAPACITY),
            clock: MonoToUnix::calibrate(),
            warnings,
            attached,
            fuse_attached: group_ok[0],
            flock_attached: group_ok[1],
            started_unix_ns: clock::realtime_ns(),
            names: NameCache::default(),
            known_procs: HashSet::new(),
            known_waiters: HashSet::new(),
            polls: 0,
            opcode_names: layout.opcode_names,
            tracefs_root: tfs.root().to_path_buf(),
        })
    }

    /// Call about every 100 ms: drains the ring buffer into the event
    /// queue, forwards the probes' log records, and resolves the comm and
    /// `/proc/PID/fd/FD` of flock waiters and new processes while alive.
    pub fn poll(&mut self) -> Result<(), ProbeError> {
        self.drain_events();
        self.flush_log();
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
                self.names.resolve_fd(key.tgid, key.fd);
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
                self.names.resolve_fd(k.tgid, k.fd);
                FlockWaiterSample {
                    target: readout::flock_target(k.target_type, k.target_id),
                    tgid: k.tgid,
                    comm: self
                        .names
                        .comm(k.tgid)
                        .map(str::to_string)
                        .unwrap_or(w.comm),
                    fd: k.fd,
                    file: self.names.fd_path(k.tgid, k.fd).map(str::to_string),
                    calls: w.calls,
                    total_wait_ns: w.total_wait_ns,
                    max_wait_ns: w.max_wait_ns,
                }
            })
            .collect();
        Ok(ProbeSnapshot {
            fuse_attached: self.fuse_attached,
            flock_attached: self.flock_attached,
            ops,
            procs,
            flocks,
            flock_waiters,
            // Reading the in-flight table costs about 12 ms (one lookup per
            // group): callers that want it ask `in_flight()` themselves.
            in_flight: Vec::new(),
            events_lost: readout::read_counter(&self.ebpf, counter::EVENTS_LOST)?,
            events_delivered: self.queue.delivered,
            started_unix_ns: self.started_unix_ns,
            ended_unix_ns: clock::realtime_ns(),
        })
    }

    /// FUSE requests sent and not answered yet, waiting at least
    /// [`IN_FLIGHT_THRESHOLD_NS`], per (conn, opcode). Reads the whole
    /// in-flight table (one lookup per group, about 12 ms), so it is not
    /// part of [`Probes::snapshot`], which runs per scrape.
    pub fn in_flight(&mut self) -> Result<Vec<InFlightSample>, ProbeError> {
        if !self.fuse_attached {
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
            unmatched_flock_exits: c[counter::UNMATCHED_FLOCK_EXITS as usize],
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

    /// Every program and whether it is attached.
    pub fn attached_programs(&self) -> Vec<(String, bool)> {
        self.attached.clone()
    }

    /// Opcode number -> name as this kernel's `fuse_request_send` prints
    /// them (empty without the FUSE tracepoints).
    pub fn opcode_names(&self) -> &[(u32, String)] {
        &self.opcode_names
    }

    /// Where tracefs is mounted.
    pub fn tracefs_root(&self) -> &std::path::Path {
        &self.tracefs_root
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

    fn flush_log(&mut self) {
        let Some(logger) = self.logger.as_mut() else {
            return;
        };
        // aya-log unwraps on a malformed record; never let that take the
        // caller down. The programs already hold the map, so dropping the
        // logger after a failure is safe.
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush())).is_ok();
        if !ok {
            self.warnings
                .push("a malformed probe log record stopped log forwarding".to_string());
            self.logger = None;
        }
    }

    /// Resolves names of threads currently inside flock(2): a blocked
    /// waiter is alive now, and may be gone by the time it is reported.
    fn resolve_inflight_flocks(&mut self) -> Result<(), ProbeError> {
        let name = map_names::FLOCK_INFLIGHT;
        let Some(m) = self.ebpf.map(name) else {
            return Ok(());
        };
        let map: HashMap<&MapData, u32, FlockInflight> =
            HashMap::try_from(m).map_err(|source| ProbeError::Map { map: name, source })?;
        let entries: Vec<FlockInflight> =
            map.iter().filter_map(Result::ok).map(|(_, v)| v).collect();
        for e in entries {
            self.names.resolve_comm(e.tgid);
            self.names.refresh_fd(e.tgid, e.fd);
        }
        Ok(())
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
