//! Metrics from the eBPF probes, computed at scrape time from one
//! [`ProbeSnapshot`]: FUSE requests per (mount, fstype, opcode) and flock
//! calls per (mount, kind, mode), with latency histograms built from the
//! kernel's log2 histograms, plus the probes' own health.
//!
//! Labels stay bounded: opcodes go through the closed set of
//! [`opcode_label`]; mounts are named by mount point (a connection that
//! has no mount any more keeps the last name it had, or `dev:MAJ:MIN`).

use std::sync::{Arc, Mutex};

use super::model::{Collector, FamilyBuilder, MetricFamily};
use super::names::{self, Family};
use crate::probes::dev::format_dev;
use crate::probes::hist::LatencyHistogram;
use crate::probes::mountinfo::MountTable;
use crate::probes::opcodes::opcode_label;
use crate::probes::snapshot::{
    AttachKind, AttachedProgram, FlockKind, FlockMode, FlockTarget, ProbeSnapshot, ProgramStats,
};
use crate::probes::{ProbeCounters, Probes};

/// The families this module emits.
pub const FAMILIES: &[Family] = &[
    names::REQUESTS,
    names::REQUEST_ERRORS,
    names::REQUEST_DURATION,
    names::FLOCK_REQUESTS,
    names::FLOCK_REFUSED,
    names::FLOCK_WAIT,
    names::PROBE_EVENTS_DROPPED,
    names::PROBE_EVENTS_DELIVERED,
    names::PROBE_MAP_FULL,
    names::PROBE_ATTACHED,
    names::PROBE_RUN_SECONDS,
    names::PROBE_RUNS,
];

/// Departed mounts remembered at most (then forgotten).
const DEPARTED_LIMIT: usize = 1024;

/// Everything one scrape reads from the probes.
#[derive(Debug, Clone, Default)]
pub struct ProbeReadout {
    pub snapshot: ProbeSnapshot,
    pub counters: ProbeCounters,
    pub attached: Vec<AttachedProgram>,
    /// The kernel's run time and count per program (empty unless
    /// `kernel.bpf_stats_enabled` is 1).
    pub program_stats: Vec<ProgramStats>,
}

fn mount_of(mounts: &MountTable, dev: u32) -> (String, String) {
    match mounts.by_dev(dev) {
        Some(e) => (e.mount_point.display().to_string(), e.fstype.clone()),
        None => (format!("dev:{}", format_dev(dev)), String::new()),
    }
}

fn kind_label(k: FlockKind) -> &'static str {
    match k {
        FlockKind::Shared => "shared",
        FlockKind::Exclusive => "exclusive",
        FlockKind::Unlock => "unlock",
    }
}

fn mode_label(m: FlockMode) -> &'static str {
    match m {
        FlockMode::Blocking => "blocking",
        FlockMode::NonBlocking => "nonblocking",
    }
}

/// The `claudefs_fuse_flock_*` families, labelled alike whether the
/// probes (flock syscalls) or the mount daemon (the requests its lock
/// service answered) fill them.
pub(crate) struct FlockFamilies {
    calls: FamilyBuilder,
    refused: FamilyBuilder,
    wait: FamilyBuilder,
}

impl FlockFamilies {
    pub(crate) fn new() -> Self {
        Self {
            calls: FamilyBuilder::counter(names::FLOCK_REQUESTS),
            refused: FamilyBuilder::counter(names::FLOCK_REFUSED),
            wait: FamilyBuilder::histogram(names::FLOCK_WAIT),
        }
    }

    /// The series of (`mount`, `kind`, `mode`): calls, refusals and the
    /// wait histogram with its sum (ns).
    pub(crate) fn add(
        &mut self,
        mount: String,
        kind: FlockKind,
        mode: FlockMode,
        calls: u64,
        refused: u64,
        (hist, total_ns): (&LatencyHistogram, u64),
    ) {
        let labels = vec![
            mount,
            kind_label(kind).to_string(),
            mode_label(mode).to_string(),
        ];
        self.calls.add(labels.clone(), calls as f64);
        self.refused.add(labels.clone(), refused as f64);
        self.wait.add_hist(labels, hist, total_ns);
    }

    /// (requests, refused, wait).
    pub(crate) fn into_builders(self) -> [FamilyBuilder; 3] {
        [self.calls, self.refused, self.wait]
    }
}

/// The probe metric families of one readout (pure: testable without BPF).
pub fn probe_families(r: &ProbeReadout, mounts: &MountTable) -> Vec<MetricFamily> {
    let mut requests = FamilyBuilder::counter(names::REQUESTS);
    let mut errors = FamilyBuilder::counter(names::REQUEST_ERRORS);
    let mut duration = FamilyBuilder::histogram(names::REQUEST_DURATION);
    for op in &r.snapshot.ops {
        let (mount, fstype) = mount_of(mounts, op.conn);
        let labels = vec![mount, fstype, opcode_label(op.opcode).to_string()];
        requests.add(labels.clone(), op.stats.count as f64);
        errors.add(labels.clone(), op.stats.errors as f64);
        duration.add_hist(labels, &op.stats.hist, op.stats.total_ns);
    }
    let mut flock = FlockFamilies::new();
    for f in &r.snapshot.flocks {
        let mount = match f.target {
            FlockTarget::Fuse { conn } => mount_of(mounts, conn).0,
            FlockTarget::Device { dev } => mount_of(mounts, dev).0,
            FlockTarget::Local => "local".to_string(),
        };
        let wait = (&f.wait.hist, f.wait.total_ns);
        flock.add(mount, f.kind, f.mode, f.calls, f.refused, wait);
    }
    let [flocks, refused, wait] = flock.into_builders();
    let c = &r.counters;
    let mut dropped = FamilyBuilder::counter(names::PROBE_EVENTS_DROPPED);
    dropped.add(
        vec![],
        c.events_lost.saturating_add(c.events_dropped_in_queue) as f64,
    );
    let mut delivered = FamilyBuilder::counter(names::PROBE_EVENTS_DELIVERED);
    delivered.add(vec![], c.events_delivered as f64);
    let mut map_full = FamilyBuilder::counter(names::PROBE_MAP_FULL);
    map_full.add(vec![], c.map_full as f64);
    let mut attached = FamilyBuilder::gauge(names::PROBE_ATTACHED);
    for a in &r.attached {
        let kind = a.kind.map_or("none", AttachKind::as_str);
        attached.add(
            vec![a.hook.to_string(), kind.to_string()],
            if a.kind.is_some() { 1.0 } else { 0.0 },
        );
    }
    let mut run_seconds = FamilyBuilder::counter(names::PROBE_RUN_SECONDS);
    let mut runs = FamilyBuilder::counter(names::PROBE_RUNS);
    for p in &r.program_stats {
        let labels = vec![p.hook.to_string(), p.kind.as_str().to_string()];
        run_seconds.add(labels.clone(), p.run_time_ns as f64 / 1e9);
        runs.add(labels, p.run_count as f64);
    }
    [
        requests,
        errors,
        duration,
        flocks,
        refused,
        wait,
        dropped,
        delivered,
        map_full,
        attached,
        run_seconds,
        runs,
    ]
    .into_iter()
    .filter_map(FamilyBuilder::build)
    .collect()
}

/// Probes shared between the poll loop and the scrapes.
pub type SharedProbes = Arc<Mutex<Probes>>;

/// A `Collector` reading the probes at each scrape.
pub struct ProbeCollector {
    probes: SharedProbes,
    /// Only this FUSE connection (the daemon's own mount); None for all.
    only_conn: Option<u32>,
    mounts: Mutex<MountTable>,
    families: Vec<Family>,
    /// Leave out the flock families (someone else reports them).
    no_flock: bool,
}

/// The flock families of this module.
const FLOCK_FAMILIES: [Family; 3] = [
    names::FLOCK_REQUESTS,
    names::FLOCK_REFUSED,
    names::FLOCK_WAIT,
];

impl std::fmt::Debug for ProbeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeCollector").finish_non_exhaustive()
    }
}

impl ProbeCollector {
    /// `only_conn`: report only this FUSE connection (kernel `dev_t`) and
    /// the flock calls served on it; `None` reports every mount.
    pub fn new(probes: SharedProbes, only_conn: Option<u32>) -> Self {
        Self {
            probes,
            only_conn,
            mounts: Mutex::new(MountTable::read_self().unwrap_or_default()),
            families: FAMILIES.to_vec(),
            no_flock: false,
        }
    }

    /// Without the `claudefs_fuse_flock_*` families: the mount daemon
    /// reports its own flock requests itself (and loads no flock programs).
    pub fn without_flock(mut self) -> Self {
        let kept: Vec<Family> = FAMILIES
            .iter()
            .filter(|f| !FLOCK_FAMILIES.iter().any(|x| x.name == f.name))
            .copied()
            .collect();
        self.families = kept;
        self.no_flock = true;
        self
    }

    fn readout(&self) -> Option<ProbeReadout> {
        let mut p = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot = match p.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot read the probe maps: {e}");
                return None;
            }
        };
        let counters = p.counters().unwrap_or_default();
        let snapshot = match self.only_conn {
            Some(conn) => only_connection(snapshot, conn),
            None => snapshot,
        };
        Some(ProbeReadout {
            snapshot,
            counters,
            attached: p.attached_programs(),
            program_stats: p.program_stats(),
        })
    }
}

/// The part of `snapshot` about one FUSE connection.
fn only_connection(mut snapshot: ProbeSnapshot, conn: u32) -> ProbeSnapshot {
    let own = FlockTarget::Fuse { conn };
    snapshot.ops.retain(|o| o.conn == conn);
    snapshot.procs.retain(|p| p.conn == conn);
    snapshot.in_flight.retain(|p| p.conn == conn);
    snapshot.flocks.retain(|f| f.target == own);
    snapshot.flock_waiters.retain(|w| w.target == own);
    snapshot
}

impl Collector for ProbeCollector {
    fn families(&self) -> &[Family] {
        &self.families
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(r) = self.readout() else {
            return Vec::new();
        };
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(now) = MountTable::read_self() {
            let earlier = std::mem::take(&mut *mounts);
            *mounts = if earlier.departed().len() > DEPARTED_LIMIT {
                now
            } else {
                now.with_departed(&earlier)
            };
        }
        let mut families = probe_families(&r, &mounts);
        if self.no_flock {
            families.retain(|f| !FLOCK_FAMILIES.iter().any(|x| x.name == f.name()));
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::text::encode;
    use crate::probes::snapshot::{FlockSample, LatencyStats, OpSample};

    fn stats(values: &[u64], errors: u64) -> LatencyStats {
        let mut hist = LatencyHistogram::default();
        for v in values {
            hist.record(*v);
        }
        LatencyStats {
            count: values.len() as u64,
            errors,
            total_ns: values.iter().sum(),
            max_ns: values.iter().copied().max().unwrap_or(0),
            hist,
        }
    }

    fn mounts() -> MountTable {
        // dev 0:55 -> kernel dev 55.
        MountTable::parse("36 1 0:55 / /mnt/cfs rw,nosuid - fuse.claudefs claudefs rw,user_id=0\n")
    }

    #[test]
    fn only_connection_keeps_one_mount_and_its_flocks() {
        let op = |conn| OpSample {
            conn,
            opcode: 3,
            stats: stats(&[1000], 0),
        };
        let flock = |target| FlockSample {
            target,
            kind: FlockKind::Exclusive,
            mode: FlockMode::Blocking,
            calls: 1,
            refused: 0,
            waited: 0,
            wait: stats(&[10], 0),
        };
        let snap = ProbeSnapshot {
            ops: vec![op(39), op(40)],
            flocks: vec![
                flock(FlockTarget::Fuse { conn: 39 }),
                flock(FlockTarget::Fuse { conn: 40 }),
                flock(FlockTarget::Local),
            ],
            ..ProbeSnapshot::default()
        };
        let own = only_connection(snap, 40);
        assert_eq!(own.ops.len(), 1);
        assert_eq!(own.ops[0].conn, 40);
        assert_eq!(own.flocks.len(), 1);
        assert_eq!(own.flocks[0].target, FlockTarget::Fuse { conn: 40 });
    }

    #[test]
    fn ops_get_bounded_labels_and_histograms() {
        let r = ProbeReadout {
            snapshot: ProbeSnapshot {
                ops: vec![
                    OpSample {
                        conn: 55,
                        opcode: 3,
                        stats: stats(&[2000, 5000], 1),
                    },
                    // Unknown opcodes fold into OTHER.
                    OpSample {
                        conn: 55,
                        opcode: 9999,
                        stats: stats(&[100], 0),
                    },
                    OpSample {
                        conn: 55,
                        opcode: 8888,
                        stats: stats(&[100], 0),
                    },
                    // A connection without a mount.
                    OpSample {
                        conn: 77,
                        opcode: 15,
                        stats: stats(&[100], 0),
                    },
                ],
                flocks: vec![FlockSample {
                    target: FlockTarget::Fuse { conn: 55 },
                    kind: FlockKind::Exclusive,
                    mode: FlockMode::NonBlocking,
                    calls: 4,
                    refused: 2,
                    waited: 0,
                    wait: stats(&[1000, 1000, 1000, 1000], 2),
                }],
                ..Default::default()
            },
            counters: ProbeCounters {
                events_lost: 3,
                events_dropped_in_queue: 4,
                ..Default::default()
            },
            attached: vec![
                AttachedProgram {
                    hook: "fuse_request_send",
                    kind: Some(AttachKind::Btf),
                },
                AttachedProgram {
                    hook: "flock_lock_inode",
                    kind: None,
                },
            ],
            program_stats: vec![
                ProgramStats {
                    hook: "fuse_request_send",
                    kind: AttachKind::Btf,
                    run_time_ns: 2_500_000_000,
                    run_count: 10_000_000,
                },
                ProgramStats {
                    hook: "fuse_request_end",
                    kind: AttachKind::Tracepoint,
                    run_time_ns: 7_000,
                    run_count: 35,
                },
            ],
        };
        let text = String::from_utf8(encode(&probe_families(&r, &mounts()))).unwrap();
        let want = [
            "claudefs_fuse_requests_total{mount=\"/mnt/cfs\",fstype=\"fuse.claudefs\",opcode=\"GETATTR\"} 2",
            "claudefs_fuse_request_errors_total{mount=\"/mnt/cfs\",fstype=\"fuse.claudefs\",opcode=\"GETATTR\"} 1",
            "claudefs_fuse_requests_total{mount=\"/mnt/cfs\",fstype=\"fuse.claudefs\",opcode=\"OTHER\"} 2",
            "claudefs_fuse_requests_total{mount=\"dev:0:77\",fstype=\"\",opcode=\"READ\"} 1",
            "claudefs_fuse_request_duration_seconds_count{mount=\"/mnt/cfs\",fstype=\"fuse.claudefs\",opcode=\"GETATTR\"} 2",
            "claudefs_fuse_request_duration_seconds_sum{mount=\"/mnt/cfs\",fstype=\"fuse.claudefs\",opcode=\"GETATTR\"} 0.000007",
            "claudefs_fuse_flock_requests_total{mount=\"/mnt/cfs\",kind=\"exclusive\",mode=\"nonblocking\"} 4",
            "claudefs_fuse_flock_refused_total{mount=\"/mnt/cfs\",kind=\"exclusive\",mode=\"nonblocking\"} 2",
            "claudefs_fuse_flock_wait_seconds_bucket{mount=\"/mnt/cfs\",kind=\"exclusive\",mode=\"nonblocking\",le=\"0.0000019073486328125\"} 4",
            "claudefs_fuse_probe_events_dropped_total 7",
            "claudefs_fuse_probe_attached{program=\"fuse_request_send\",attach_type=\"tp_btf\"} 1",
            "claudefs_fuse_probe_attached{program=\"flock_lock_inode\",attach_type=\"none\"} 0",
            "claudefs_fuse_probe_run_seconds_total{program=\"fuse_request_send\",attach_type=\"tp_btf\"} 2.5",
            "claudefs_fuse_probe_runs_total{program=\"fuse_request_send\",attach_type=\"tp_btf\"} 10000000",
            "claudefs_fuse_probe_run_seconds_total{program=\"fuse_request_end\",attach_type=\"tracepoint\"} 0.000007",
            "claudefs_fuse_probe_runs_total{program=\"fuse_request_end\",attach_type=\"tracepoint\"} 35",
        ];
        for w in want {
            assert!(text.contains(w), "missing {w} in\n{text}");
        }
        // Exactly one OTHER series (merged), so no duplicate series.
        assert_eq!(
            text.matches("claudefs_fuse_requests_total{mount=\"/mnt/cfs\",fstype=\"fuse.claudefs\",opcode=\"OTHER\"}")
                .count(),
            1
        );
    }

    #[test]
    fn no_run_counters_while_bpf_stats_is_off() {
        // program_stats() is empty while kernel.bpf_stats_enabled is 0.
        let r = ProbeReadout {
            attached: vec![AttachedProgram {
                hook: "fuse_request_send",
                kind: Some(AttachKind::Btf),
            }],
            ..Default::default()
        };
        let text = String::from_utf8(encode(&probe_families(&r, &mounts()))).unwrap();
        assert!(text.contains("claudefs_fuse_probe_attached{"), "{text}");
        assert!(!text.contains("claudefs_fuse_probe_run"), "{text}");
    }
}
