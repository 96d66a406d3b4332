//! Metrics of the mount daemon: storage paths (multipath router), crash
//! recovery, uid/gid mapping, the flock registry and the flock requests
//! the daemon served (the `claudefs_fuse_flock_*` families of its own
//! mount, measured by the lock service, not by the probes), and the span
//! pipeline.
//!
//! The daemon hands the exporter a closure producing a [`DaemonView`] of
//! plain values; the collector calls it at scrape time (a few short lock
//! holds, never one a FUSE worker waits on for long) and turns it into
//! families with [`daemon_families`], which tests call directly.

use std::sync::Arc;

use super::model::{Collector, FamilyBuilder, MetricFamily};
use super::names::{self, Family};
use super::probe_metrics::FlockFamilies;
use crate::daemon::locks::FlockCalls;
use crate::daemon::recovery::RecoverySummary;
use crate::flock::FlockStats;
use crate::idmap::IdMapStats;
use crate::multipath::PathState;
use crate::probes::snapshot::{FlockKind, FlockMode};

/// The families this module emits.
pub const FAMILIES: &[Family] = &[
    names::PATH_STATE,
    names::PATH_LATENCY_EMA,
    names::PATH_ERRORS,
    names::PATH_SCORE,
    names::PATH_SELECTED,
    names::PATHS_USABLE,
    names::RECOVERY_STATE,
    names::RECOVERY_REPLAYED,
    names::RECOVERY_TOTAL,
    names::RECOVERY_RECOVERED,
    names::RECOVERY_ORPHANED,
    names::RECOVERY_DURATION,
    names::RECOVERY_PENDING_WRITES,
    names::IDMAP_LOOKUPS,
    names::IDMAP_HITS,
    names::FLOCK_REGISTRY_ACQUIRES,
    names::FLOCK_REGISTRY_RELEASES,
    names::FLOCK_REGISTRY_CONFLICTS,
    names::FLOCK_REGISTRY_UPGRADES,
    names::FLOCK_REGISTRY_DOWNGRADES,
    names::FLOCK_WAITING,
    names::FLOCK_REQUESTS,
    names::FLOCK_REFUSED,
    names::FLOCK_WAIT,
    names::OPEN_FILES,
    names::DAEMON_REQUESTS,
    names::DAEMON_REQUEST_ERRORS,
    names::DAEMON_WORKERS,
    names::DAEMON_WORKER_WAKEUPS,
    names::DAEMON_READER_POLLS,
    names::SPANS_DROPPED,
    names::SPANS_EXPORTED,
];

/// The four path states, in label order.
pub const PATH_STATES: [(PathState, &str); 4] = [
    (PathState::Active, "active"),
    (PathState::Degraded, "degraded"),
    (PathState::Failed, "failed"),
    (PathState::Reconnecting, "reconnecting"),
];

/// The five recovery states, in label order.
pub const RECOVERY_STATES: [&str; 5] = ["idle", "scanning", "replaying", "complete", "failed"];

/// One storage path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathView {
    pub id: u64,
    pub remote_addr: String,
    pub state: PathState,
    pub latency_ema_us: u64,
    /// Sick answers since start (monotonic).
    pub errors_total: u64,
    pub score: u64,
    pub selected_total: u64,
}

/// The daemon's FUSE workers (see `daemon::readers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct WorkersView {
    pub threads: usize,
    pub reading: usize,
    pub parked: usize,
    pub woken_may_block: u64,
    pub woken_stalled: u64,
    pub woken_backlog: u64,
    /// The lone reader's polls that found the next request / ran out.
    pub poll_hits: u64,
    pub poll_misses: u64,
}

/// Everything the daemon exposes, as plain values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaemonView {
    /// The mount point (the `mount` label of the flock families).
    pub mount: String,
    pub paths: Vec<PathView>,
    pub recovery: RecoverySummary,
    pub idmap: IdMapStats,
    pub flock: FlockStats,
    pub flock_waiting: usize,
    /// The flock requests served, per (kind, mode).
    pub flock_calls: Vec<(FlockKind, FlockMode, FlockCalls)>,
    pub open_files: usize,
    /// Requests answered: (op, answered, errors).
    pub requests: Vec<(&'static str, u64, u64)>,
    pub spans_dropped: u64,
    pub spans_exported: u64,
    pub workers: WorkersView,
    /// The request transport (`uring`, `dev`; empty: not known).
    pub transport: &'static str,
    /// Over io_uring: the queue threads.
    pub queues: Option<QueuesView>,
    pub server: ServerView,
}

/// The io_uring queue threads' scheduling classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueuesView {
    pub idle: usize,
    pub normal: usize,
    pub demotions: u64,
}

/// The server's place on its connection (see `daemon::keeper`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerView {
    pub generation: u64,
    pub restarts: u64,
    pub upgrades: u64,
    pub last_gap_seconds: f64,
    pub resent: u64,
    pub deduplicated: u64,
}

/// The label of a `RecoveryState` in its Debug form (`Complete { .. }`).
pub fn recovery_state_label(debug: &str) -> &'static str {
    let head: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    RECOVERY_STATES
        .iter()
        .copied()
        .find(|s| *s == head)
        .unwrap_or("idle")
}

/// The daemon metric families of one view.
pub fn daemon_families(v: &DaemonView) -> Vec<MetricFamily> {
    let mut state = FamilyBuilder::gauge(names::PATH_STATE);
    let mut ema = FamilyBuilder::gauge(names::PATH_LATENCY_EMA);
    let mut errors = FamilyBuilder::counter(names::PATH_ERRORS);
    let mut score = FamilyBuilder::gauge(names::PATH_SCORE);
    let mut selected = FamilyBuilder::counter(names::PATH_SELECTED);
    let mut usable = FamilyBuilder::gauge(names::PATHS_USABLE);
    usable.add(vec![], 0.0);
    for p in &v.paths {
        let l = || vec![p.id.to_string(), p.remote_addr.clone()];
        for (s, name) in PATH_STATES {
            let mut labels = l();
            labels.push(name.to_string());
            state.add(labels, if s == p.state { 1.0 } else { 0.0 });
        }
        ema.add(l(), p.latency_ema_us as f64 / 1e6);
        errors.add(l(), p.errors_total as f64);
        score.add(l(), p.score as f64);
        selected.add(l(), p.selected_total as f64);
        if p.state.is_usable() {
            usable.add(vec![], 1.0);
        }
    }
    let r = &v.recovery;
    let current = recovery_state_label(&r.state);
    let mut rstate = FamilyBuilder::gauge(names::RECOVERY_STATE);
    for s in RECOVERY_STATES {
        rstate.add(vec![s.to_string()], if s == current { 1.0 } else { 0.0 });
    }
    let one = |f: Family, counter: bool, x: f64| {
        let mut b = if counter {
            FamilyBuilder::counter(f)
        } else {
            FamilyBuilder::gauge(f)
        };
        b.add(vec![], x);
        b
    };
    let mut lookups = FamilyBuilder::counter(names::IDMAP_LOOKUPS);
    lookups.add(vec!["uid".into()], v.idmap.uid_lookups as f64);
    lookups.add(vec!["gid".into()], v.idmap.gid_lookups as f64);
    let mut hits = FamilyBuilder::counter(names::IDMAP_HITS);
    hits.add(vec!["uid".into()], v.idmap.uid_hits as f64);
    hits.add(vec!["gid".into()], v.idmap.gid_hits as f64);
    let mut flock = FlockFamilies::new();
    for (kind, mode, c) in &v.flock_calls {
        let wait = (&c.hist, c.total_ns);
        flock.add(v.mount.clone(), *kind, *mode, c.calls, c.refused, wait);
    }
    let [flocks, refused, wait] = flock.into_builders();
    let mut answered = FamilyBuilder::counter(names::DAEMON_REQUESTS);
    let mut failed = FamilyBuilder::counter(names::DAEMON_REQUEST_ERRORS);
    for (op, n, errors) in &v.requests {
        answered.add(vec![op.to_string()], *n as f64);
        failed.add(vec![op.to_string()], *errors as f64);
    }
    let w = &v.workers;
    let mut workers = FamilyBuilder::gauge(names::DAEMON_WORKERS);
    let serving = w.threads.saturating_sub(w.reading + w.parked);
    for (state, n) in [
        ("reading", w.reading),
        ("serving", serving),
        ("parked", w.parked),
    ] {
        workers.add(vec![state.into()], n as f64);
    }
    let mut woken = FamilyBuilder::counter(names::DAEMON_WORKER_WAKEUPS);
    woken.add(vec!["may_block".into()], w.woken_may_block as f64);
    woken.add(vec!["stalled".into()], w.woken_stalled as f64);
    woken.add(vec!["backlog".into()], w.woken_backlog as f64);
    let mut transport = FamilyBuilder::gauge(names::DAEMON_TRANSPORT_INFO);
    if !v.transport.is_empty() {
        transport.add(vec![v.transport.into()], 1.0);
    }
    let mut queues = FamilyBuilder::gauge(names::DAEMON_QUEUE_THREADS);
    let mut demotions = FamilyBuilder::counter(names::DAEMON_QUEUE_DEMOTIONS);
    if let Some(q) = &v.queues {
        queues.add(vec!["idle".into()], q.idle as f64);
        queues.add(vec!["normal".into()], q.normal as f64);
        demotions.add(vec![], q.demotions as f64);
    }
    let mut polls = FamilyBuilder::counter(names::DAEMON_READER_POLLS);
    polls.add(vec!["hit".into()], w.poll_hits as f64);
    polls.add(vec!["miss".into()], w.poll_misses as f64);
    let f = &v.flock;
    let mut nodes = FamilyBuilder::gauge(names::RECOVERY_NODES);
    nodes.add(vec!["restored".into()], r.nodes_restored as f64);
    nodes.add(vec!["lost".into()], r.nodes_lost as f64);
    let mut rlocks = FamilyBuilder::gauge(names::RECOVERY_LOCKS);
    rlocks.add(vec!["restored".into()], r.locks_restored as f64);
    rlocks.add(vec!["lost".into()], r.locks_lost as f64);
    let sv = &v.server;
    [
        state,
        ema,
        errors,
        score,
        selected,
        usable,
        rstate,
        one(names::RECOVERY_REPLAYED, false, f64::from(r.recovered)),
        one(names::RECOVERY_TOTAL, true, r.open_files as f64),
        one(names::RECOVERY_RECOVERED, false, f64::from(r.recovered)),
        one(names::RECOVERY_ORPHANED, false, f64::from(r.orphaned)),
        one(names::RECOVERY_DURATION, false, r.duration_seconds),
        one(
            names::RECOVERY_PENDING_WRITES,
            false,
            r.pending_writes as f64,
        ),
        nodes,
        rlocks,
        one(names::SERVER_GENERATION, false, sv.generation as f64),
        one(names::SERVER_RESTARTS, true, sv.restarts as f64),
        one(names::SERVER_UPGRADES, true, sv.upgrades as f64),
        one(names::SERVER_HANDOVER_GAP, false, sv.last_gap_seconds),
        one(names::REQUESTS_RESENT, true, sv.resent as f64),
        one(names::REQUESTS_DEDUPLICATED, true, sv.deduplicated as f64),
        lookups,
        hits,
        one(names::FLOCK_REGISTRY_ACQUIRES, true, f.acquires as f64),
        one(names::FLOCK_REGISTRY_RELEASES, true, f.releases as f64),
        one(names::FLOCK_REGISTRY_CONFLICTS, true, f.conflicts as f64),
        one(names::FLOCK_REGISTRY_UPGRADES, true, f.upgrades as f64),
        one(names::FLOCK_REGISTRY_DOWNGRADES, true, f.downgrades as f64),
        one(names::FLOCK_WAITING, false, v.flock_waiting as f64),
        flocks,
        refused,
        wait,
        one(names::OPEN_FILES, false, v.open_files as f64),
        answered,
        failed,
        transport,
        workers,
        woken,
        polls,
        queues,
        demotions,
        one(names::SPANS_DROPPED, true, v.spans_dropped as f64),
        one(names::SPANS_EXPORTED, true, v.spans_exported as f64),
    ]
    .into_iter()
    .filter_map(FamilyBuilder::build)
    .collect()
}

/// Produces the daemon's view at scrape time.
pub type ViewFn = Arc<dyn Fn() -> DaemonView + Send + Sync>;

/// A `Collector` over a [`ViewFn`].
pub struct DaemonCollector {
    view: ViewFn,
    families: Vec<Family>,
}

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonCollector").finish_non_exhaustive()
    }
}

impl DaemonCollector {
    pub fn new(view: ViewFn) -> Self {
        Self {
            view,
            families: FAMILIES.to_vec(),
        }
    }
}

impl Collector for DaemonCollector {
    fn families(&self) -> &[Family] {
        &self.families
    }

    fn collect(&self) -> Vec<MetricFamily> {
        daemon_families(&(self.view)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::text::encode;

    /// The exposition text of `v`.
    fn rendered(v: &DaemonView) -> String {
        String::from_utf8(encode(&daemon_families(v))).unwrap()
    }

    /// Every line of `want` is in `text`.
    fn assert_has<S: AsRef<str>>(text: &str, want: impl IntoIterator<Item = S>) {
        for w in want {
            let w = w.as_ref();
            assert!(text.contains(w), "missing {w} in\n{text}");
        }
    }

    #[test]
    fn recovery_labels() {
        assert_eq!(recovery_state_label("Idle"), "idle");
        assert_eq!(
            recovery_state_label("Complete { recovered: 2, orphaned: 1 }"),
            "complete"
        );
        assert_eq!(
            recovery_state_label("Replaying { replayed: 1, total: 3 }"),
            "replaying"
        );
        assert_eq!(recovery_state_label("Failed(\"x\")"), "failed");
    }

    #[test]
    fn one_hot_states_and_gauges() {
        let v = DaemonView {
            paths: vec![
                PathView {
                    id: 0,
                    remote_addr: "a:1".into(),
                    state: PathState::Failed,
                    latency_ema_us: 1500,
                    errors_total: 4,
                    score: 5500,
                    selected_total: 10,
                },
                PathView {
                    id: 1,
                    remote_addr: "b:1".into(),
                    state: PathState::Active,
                    latency_ema_us: 200,
                    errors_total: 0,
                    score: 200,
                    selected_total: 20,
                },
            ],
            recovery: RecoverySummary {
                state: "Complete { recovered: 2, orphaned: 1 }".into(),
                open_files: 3,
                recovered: 2,
                orphaned: 1,
                duration_seconds: 0.25,
                nodes_restored: 7,
                locks_lost: 1,
                ..Default::default()
            },
            server: ServerView {
                generation: 2,
                restarts: 1,
                upgrades: 1,
                last_gap_seconds: 0.012,
                resent: 3,
                deduplicated: 1,
            },
            ..Default::default()
        };
        let text = rendered(&v);
        assert_has(
            &text,
            [
                "claudefs_fuse_path_state{path_id=\"0\",remote_addr=\"a:1\",state=\"failed\"} 1",
                "claudefs_fuse_path_state{path_id=\"0\",remote_addr=\"a:1\",state=\"active\"} 0",
                "claudefs_fuse_path_state{path_id=\"1\",remote_addr=\"b:1\",state=\"active\"} 1",
                "claudefs_fuse_path_latency_ema_seconds{path_id=\"0\",remote_addr=\"a:1\"} 0.0015",
                "claudefs_fuse_path_errors_total{path_id=\"0\",remote_addr=\"a:1\"} 4",
                "claudefs_fuse_path_selected_total{path_id=\"1\",remote_addr=\"b:1\"} 20",
                "claudefs_fuse_paths_usable 1",
                "claudefs_fuse_recovery_state{state=\"complete\"} 1",
                "claudefs_fuse_recovery_state{state=\"idle\"} 0",
                "claudefs_fuse_recovery_total 3",
                "claudefs_fuse_recovery_recovered 2",
                "claudefs_fuse_recovery_orphaned 1",
                "claudefs_fuse_recovery_duration_seconds 0.25",
                "claudefs_fuse_idmap_lookups_total{kind=\"uid\"} 0",
                "claudefs_fuse_flock_registry_acquires_total 0",
                "claudefs_fuse_spans_dropped_total 0",
                "claudefs_fuse_recovery_nodes{state=\"restored\"} 7",
                "claudefs_fuse_recovery_locks{state=\"lost\"} 1",
                "claudefs_fuse_server_generation 2",
                "claudefs_fuse_server_restarts_total 1",
                "claudefs_fuse_server_upgrades_total 1",
                "claudefs_fuse_server_handover_gap_seconds 0.012",
                "claudefs_fuse_daemon_requests_resent_total 3",
                "claudefs_fuse_daemon_requests_deduplicated_total 1",
            ],
        );
        assert_eq!(text.matches("claudefs_fuse_path_state{").count(), 8);
    }

    #[test]
    fn flock_requests_of_the_own_mount() {
        let mut c = FlockCalls::default();
        for ns in [2_000, 300_000_000] {
            c.calls += 1;
            c.total_ns += ns;
            c.hist.record(ns);
        }
        let nb = FlockCalls {
            calls: 3,
            refused: 2,
            ..Default::default()
        };
        let v = DaemonView {
            mount: "/mnt/cfs".into(),
            flock_calls: vec![
                (FlockKind::Exclusive, FlockMode::Blocking, c),
                (FlockKind::Shared, FlockMode::NonBlocking, nb),
            ],
            ..Default::default()
        };
        let text = rendered(&v);
        let l = "mount=\"/mnt/cfs\",kind=\"exclusive\",mode=\"blocking\"";
        assert_has(
            &text,
            [
                format!("claudefs_fuse_flock_requests_total{{{l}}} 2"),
                format!("claudefs_fuse_flock_refused_total{{{l}}} 0"),
                format!("claudefs_fuse_flock_wait_seconds_count{{{l}}} 2"),
                format!("claudefs_fuse_flock_wait_seconds_sum{{{l}}} 0.300002"),
                // 2 us <= 2^-18 s; 300 ms <= 2^-1 s.
                format!("claudefs_fuse_flock_wait_seconds_bucket{{{l},le=\"0.0000019073486328125\"}} 0"),
                format!("claudefs_fuse_flock_wait_seconds_bucket{{{l},le=\"0.000003814697265625\"}} 1"),
                format!("claudefs_fuse_flock_wait_seconds_bucket{{{l},le=\"0.25\"}} 1"),
                format!("claudefs_fuse_flock_wait_seconds_bucket{{{l},le=\"0.5\"}} 2"),
                "claudefs_fuse_flock_refused_total{mount=\"/mnt/cfs\",kind=\"shared\",mode=\"nonblocking\"} 2".to_string(),
            ],
        );
        // No flock request served yet: no flock series at all.
        let empty = rendered(&DaemonView::default());
        assert!(
            !empty.contains("claudefs_fuse_flock_requests_total"),
            "{empty}"
        );
    }

    #[test]
    fn requests_answered_per_operation() {
        let v = DaemonView {
            requests: vec![("getattr", 10, 2), ("other", 1, 0)],
            ..Default::default()
        };
        let text = rendered(&v);
        assert_has(
            &text,
            [
                "claudefs_fuse_daemon_requests_total{op=\"getattr\"} 10",
                "claudefs_fuse_daemon_request_errors_total{op=\"getattr\"} 2",
                "claudefs_fuse_daemon_requests_total{op=\"other\"} 1",
            ],
        );
    }

    #[test]
    fn workers_by_state_and_wakeups_by_reason() {
        let v = DaemonView {
            workers: WorkersView {
                threads: 4,
                reading: 1,
                parked: 2,
                woken_may_block: 5,
                woken_stalled: 7,
                woken_backlog: 3,
                poll_hits: 11,
                poll_misses: 2,
            },
            transport: "uring",
            ..Default::default()
        };
        let text = rendered(&v);
        assert_has(
            &text,
            [
                "claudefs_fuse_daemon_workers{state=\"reading\"} 1",
                "claudefs_fuse_daemon_workers{state=\"serving\"} 1",
                "claudefs_fuse_daemon_workers{state=\"parked\"} 2",
                "claudefs_fuse_daemon_worker_wakeups_total{reason=\"may_block\"} 5",
                "claudefs_fuse_daemon_worker_wakeups_total{reason=\"stalled\"} 7",
                "claudefs_fuse_daemon_worker_wakeups_total{reason=\"backlog\"} 3",
                "claudefs_fuse_daemon_reader_polls_total{result=\"hit\"} 11",
                "claudefs_fuse_daemon_reader_polls_total{result=\"miss\"} 2",
                "claudefs_fuse_daemon_transport_info{transport=\"uring\"} 1",
            ],
        );
        assert!(
            !text.contains("claudefs_fuse_daemon_queue"),
            "no queue families without queue threads: {text}"
        );
    }

    #[test]
    fn queue_threads_by_class_over_io_uring() {
        let v = DaemonView {
            transport: "uring",
            queues: Some(QueuesView {
                idle: 1,
                normal: 3,
                demotions: 9,
            }),
            ..Default::default()
        };
        let text = rendered(&v);
        assert_has(
            &text,
            [
                "claudefs_fuse_daemon_queue_threads{class=\"idle\"} 1",
                "claudefs_fuse_daemon_queue_threads{class=\"normal\"} 3",
                "claudefs_fuse_daemon_queue_demotions_total 9",
            ],
        );
    }
}
