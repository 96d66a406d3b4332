//! Every metric name, its help text, unit and label names, in one place.
//!
//! Names follow the Prometheus conventions: a `claudefs_fuse_` prefix,
//! base units in the name (`_seconds`), `_total` on counters. The names
//! listed in issue 5 are fixed (dashboards and alert rules are built on
//! them); add new ones here, never rename.

/// One metric family: name, help text, and its label names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

macro_rules! families {
    ($($(#[doc = $doc:literal])* $id:ident = $name:literal, [$($label:literal),*], $help:literal;)*) => {
        $(
            $(#[doc = $doc])*
            pub const $id: Family = Family { name: $name, help: $help, labels: &[$($label),*] };
        )*
        /// Every family this exporter can emit.
        pub const ALL: &[Family] = &[$($id),*];
    };
}

families! {
    // ---- from the probes (kernel side, every FUSE mount) ----
    /// Counter, requests: FUSE requests the kernel finished.
    REQUESTS = "claudefs_fuse_requests_total", ["mount", "fstype", "opcode"],
        "FUSE requests finished by the kernel, as the probes saw them.";
    /// Counter, requests: FUSE requests answered with an error.
    REQUEST_ERRORS = "claudefs_fuse_request_errors_total", ["mount", "fstype", "opcode"],
        "FUSE requests answered with a non-zero error.";
    /// Histogram, seconds: kernel send to end (includes queueing in /dev/fuse).
    REQUEST_DURATION = "claudefs_fuse_request_duration_seconds", ["mount", "fstype", "opcode"],
        "FUSE request latency from the kernel sending it to the end of the reply (queueing in /dev/fuse included); classic buckets at powers of two seconds, native histogram of schema 3 (8 buckets per power of two) in the protobuf format.";
    /// Counter, requests: answered by the mount daemon, per operation.
    DAEMON_REQUESTS = "claudefs_fuse_daemon_requests_total", ["op"],
        "FUSE requests the mount daemon answered, by operation (counted by the daemon itself; no probes needed).";
    /// Counter, requests: answered by the mount daemon with an error.
    DAEMON_REQUEST_ERRORS = "claudefs_fuse_daemon_request_errors_total", ["op"],
        "FUSE requests the mount daemon answered with an error, by operation.";
    /// Gauge, always 1: the request transport in use.
    DAEMON_TRANSPORT_INFO = "claudefs_fuse_daemon_transport_info", ["transport"],
        "Always 1; the transport label says how FUSE requests reach the mount daemon: uring (FUSE over io_uring, a ring per CPU) or dev (read/write on /dev/fuse).";
    /// Gauge, threads: the daemon's FUSE workers by state.
    DAEMON_WORKERS = "claudefs_fuse_daemon_workers", ["state"],
        "The mount daemon's FUSE worker threads (--threads) by state: reading (waiting on /dev/fuse), serving (in a request), parked (idle and not reading: one reader serves fast requests alone).";
    /// Counter, wakeups: parked workers woken to read /dev/fuse.
    DAEMON_WORKER_WAKEUPS = "claudefs_fuse_daemon_worker_wakeups_total", ["reason"],
        "Parked FUSE workers woken to read /dev/fuse: reason=may_block (a request that may take long started while no other worker read), reason=stalled (requests waited behind one that took over 10 ms: storage is slow or hangs), reason=backlog (requests kept queueing behind a busy reader: the load needs more workers).";
    /// Gauge, threads: the io_uring queue threads by scheduling class.
    DAEMON_QUEUE_THREADS = "claudefs_fuse_daemon_queue_threads", ["class"],
        "The mount daemon's io_uring queue threads (one per CPU) by scheduling class: class=idle (SCHED_IDLE: the application woken by an answer stays on its CPU), class=normal (SCHED_OTHER: --queue-policy normal, or moved back by the guard because something else competed for the CPU).";
    /// Counter, demotions: queue threads moved back to SCHED_OTHER.
    DAEMON_QUEUE_DEMOTIONS = "claudefs_fuse_daemon_queue_demotions_total", [],
        "Times the guard moved an io_uring queue thread from SCHED_IDLE back to SCHED_OTHER because it waited for its CPU (mean run-queue delay above 50 us); a steady rise means the host's CPUs are busy and the queue threads keep backing off (up to 64 s at a time).";
    /// Counter, polls: the lone reader's polls for the next request.
    DAEMON_READER_POLLS = "claudefs_fuse_daemon_reader_polls_total", ["result"],
        "Polls of /dev/fuse by the reading worker after an answer (--poll-us): result=hit (the next request came within the window, no sleep and wakeup), result=miss (the window ran out).";
    /// Gauge, requests: queued for or being served by the daemon (fusectl).
    REQUESTS_WAITING = "claudefs_fuse_requests_waiting", ["mount", "fstype"],
        "FUSE requests queued for the daemon or being served by it (the kernel's fusectl `waiting` count); above zero while no request finishes means a stuck daemon.";
    /// Counter, calls: flock(2) calls.
    FLOCK_REQUESTS = "claudefs_fuse_flock_requests_total", ["mount", "kind", "mode"],
        "flock(2) calls, by kind (shared, exclusive, unlock) and mode (blocking, nonblocking).";
    /// Counter, calls: flock(2) calls refused with EWOULDBLOCK.
    FLOCK_REFUSED = "claudefs_fuse_flock_refused_total", ["mount", "kind", "mode"],
        "flock(2) calls refused with EWOULDBLOCK.";
    /// Histogram, seconds: time spent inside flock(2).
    FLOCK_WAIT = "claudefs_fuse_flock_wait_seconds", ["mount", "kind", "mode"],
        "Time spent inside flock(2); classic buckets at powers of two seconds, native histogram of schema 3 (8 buckets per power of two) in the protobuf format.";
    /// Counter, events: per-request events lost (ring full or not taken in time).
    PROBE_EVENTS_DROPPED = "claudefs_fuse_probe_events_dropped_total", [],
        "Per-request probe events lost because the kernel ring buffer or the userspace queue was full.";
    /// Counter, events: per-request events delivered to userspace.
    PROBE_EVENTS_DELIVERED = "claudefs_fuse_probe_events_delivered_total", [],
        "Per-request probe events delivered to userspace.";
    /// Counter, keys: new keys that did not fit a full statistics map.
    PROBE_MAP_FULL = "claudefs_fuse_probe_map_full_total", [],
        "New keys the probes could not store because a statistics map was full.";
    /// Gauge, 0/1: whether a probe program is attached.
    PROBE_ATTACHED = "claudefs_fuse_probe_attached", ["program", "attach_type"],
        "1 if the eBPF program of the hook is attached, 0 if it could not be; attach_type: tp_btf (BTF tracepoint), tracepoint (classic fallback) or none.";

    /// Counter, seconds: run time of the hook's program (kernel bpf_stats).
    PROBE_RUN_SECONDS = "claudefs_fuse_probe_run_seconds_total", ["program", "attach_type"],
        "Time the kernel spent running the eBPF program of the hook (bpf_stats); exported only while kernel.bpf_stats_enabled is 1 (the kernel counts only then, at the cost of a clock read per run).";
    /// Counter, runs: runs of the hook's program (kernel bpf_stats).
    PROBE_RUNS = "claudefs_fuse_probe_runs_total", ["program", "attach_type"],
        "Runs of the eBPF program of the hook (bpf_stats); exported only while kernel.bpf_stats_enabled is 1 (the kernel counts only then).";

    // ---- from the daemon (one mount) ----
    /// Gauge, 0/1: one-hot state of each storage path.
    PATH_STATE = "claudefs_fuse_path_state", ["path_id", "remote_addr", "state"],
        "1 for the current state of the storage path (active, degraded, failed, reconnecting), 0 for the other three.";
    /// Gauge, seconds: moving average of the path's request latency.
    PATH_LATENCY_EMA = "claudefs_fuse_path_latency_ema_seconds", ["path_id", "remote_addr"],
        "Exponential moving average of request latency on the storage path (kernel-measured with --ebpf).";
    /// Counter, errors: sick answers of the path.
    PATH_ERRORS = "claudefs_fuse_path_errors_total", ["path_id", "remote_addr"],
        "Answers of the storage path saying the path itself is sick (EIO, ENOTCONN, ...).";
    /// Gauge, dimensionless: routing cost (latency us + 1000 per recent error).
    PATH_SCORE = "claudefs_fuse_path_score", ["path_id", "remote_addr"],
        "Routing cost of the storage path (EMA latency in microseconds plus 1000 per error since it was last active); lower is preferred.";
    /// Counter, selections: times the router picked the path.
    PATH_SELECTED = "claudefs_fuse_path_selected_total", ["path_id", "remote_addr"],
        "Times the router picked the storage path for a request.";
    /// Gauge, paths: paths that may take requests.
    PATHS_USABLE = "claudefs_fuse_paths_usable", [],
        "Storage paths that may take requests (active or degraded).";
    /// Gauge, 0/1: one-hot state of the startup crash recovery.
    RECOVERY_STATE = "claudefs_fuse_recovery_state", ["state"],
        "1 for the state of the crash recovery run at startup (idle, scanning, replaying, complete, failed), 0 for the others.";
    /// Gauge, files: files replayed by the recovery.
    RECOVERY_REPLAYED = "claudefs_fuse_recovery_replayed", [],
        "Open files the crash recovery replayed so far.";
    /// Counter, files: files the recovery had to replay (set once at startup).
    RECOVERY_TOTAL = "claudefs_fuse_recovery_total", [],
        "Open files the journal held at startup, which the crash recovery had to replay (fixed for the life of the daemon).";
    /// Gauge, files: files reattached by the recovery.
    RECOVERY_RECOVERED = "claudefs_fuse_recovery_recovered", [],
        "Open files the crash recovery reattached.";
    /// Gauge, files: files the recovery could not reattach.
    RECOVERY_ORPHANED = "claudefs_fuse_recovery_orphaned", [],
        "Open files the crash recovery could not reattach (gone or replaced on storage).";
    /// Gauge, seconds: how long the recovery took.
    RECOVERY_DURATION = "claudefs_fuse_recovery_duration_seconds", [],
        "How long the crash recovery run at startup took.";
    /// Gauge, writes: pending writes found by the recovery.
    RECOVERY_PENDING_WRITES = "claudefs_fuse_recovery_pending_writes", [],
        "Writes the journal held as not yet synced at startup.";
    /// Gauge, nodes: inodes the kernel knew that a restarted server found again or not.
    RECOVERY_NODES = "claudefs_fuse_recovery_nodes", ["state"],
        "Inodes the kernel held when the last server stopped, that this server found again on storage (state restored) or not (state lost).";
    /// Gauge, locks: flock holders a restarted server took back or not.
    RECOVERY_LOCKS = "claudefs_fuse_recovery_locks", ["state"],
        "flock locks held when the last server stopped, that this server holds again (state restored) or lost (state lost: the file is gone).";
    /// Gauge: the server's generation on its connection.
    SERVER_GENERATION = "claudefs_fuse_server_generation", [],
        "Servers of this mount's connection before this one (0: the first; one more per restart or upgrade).";
    /// Counter, restarts: servers the keeper restarted after a crash.
    SERVER_RESTARTS = "claudefs_fuse_server_restarts_total", [],
        "Times the keeper started a new server because the last one died with the mount alive (counted for the life of the mount).";
    /// Counter, upgrades: hand-overs to a new server binary.
    SERVER_UPGRADES = "claudefs_fuse_server_upgrades_total", [],
        "Times the connection was handed to a new server on request (upgrade, SIGHUP to the keeper).";
    /// Gauge, seconds: the last hand-over's gap.
    SERVER_HANDOVER_GAP = "claudefs_fuse_server_handover_gap_seconds", [],
        "From the last server stopping (its death or its drain) to this one serving, as the keeper measured it; 0 for the first server.";
    /// Counter, requests: requests the kernel resent to this server.
    REQUESTS_RESENT = "claudefs_fuse_daemon_requests_resent_total", [],
        "Requests the previous server had read and not answered, which the kernel resent to this one (FUSE_NOTIFY_RESEND).";
    /// Counter, requests: resent requests answered without being applied again.
    REQUESTS_DEDUPLICATED = "claudefs_fuse_daemon_requests_deduplicated_total", [],
        "Resent non-idempotent requests (create, mkdir, unlink, rename ...) found applied before the restart and answered without being applied twice.";
    /// Counter, lookups: uid/gid mapping lookups.
    IDMAP_LOOKUPS = "claudefs_fuse_idmap_lookups_total", ["kind"],
        "uid/gid mapping lookups (kind uid or gid).";
    /// Counter, lookups: lookups answered by a table entry.
    IDMAP_HITS = "claudefs_fuse_idmap_hits_total", ["kind"],
        "uid/gid mapping lookups answered by a table entry.";
    /// Counter, locks: flock locks granted by the daemon's registry.
    FLOCK_REGISTRY_ACQUIRES = "claudefs_fuse_flock_registry_acquires_total", [],
        "flock locks the daemon granted (conversions not counted).";
    /// Counter, locks: locks removed.
    FLOCK_REGISTRY_RELEASES = "claudefs_fuse_flock_registry_releases_total", [],
        "flock locks the daemon removed (unlock, close, process exit).";
    /// Counter, requests: lock requests refused.
    FLOCK_REGISTRY_CONFLICTS = "claudefs_fuse_flock_registry_conflicts_total", [],
        "flock requests the daemon refused (would block or deadlock).";
    /// Counter, conversions: shared to exclusive.
    FLOCK_REGISTRY_UPGRADES = "claudefs_fuse_flock_registry_upgrades_total", [],
        "Shared flock locks converted to exclusive.";
    /// Counter, conversions: exclusive to shared.
    FLOCK_REGISTRY_DOWNGRADES = "claudefs_fuse_flock_registry_downgrades_total", [],
        "Exclusive flock locks converted to shared.";
    /// Gauge, requests: blocking flock requests parked.
    FLOCK_WAITING = "claudefs_fuse_flock_waiting", [],
        "Blocking flock requests the daemon holds until the lock is free.";
    /// Gauge, files: open file handles.
    OPEN_FILES = "claudefs_fuse_open_files", [],
        "File handles open on the mount.";
    /// Counter, spans: spans lost before export.
    SPANS_DROPPED = "claudefs_fuse_spans_dropped_total", [],
        "Spans dropped before export (buffer full while the collector was down or slow, or export failed).";
    /// Counter, spans: spans handed to the OTLP collector.
    SPANS_EXPORTED = "claudefs_fuse_spans_exported_total", [],
        "Spans the OTLP collector accepted.";

    // ---- the exporter itself ----
    /// Gauge, always 1: build information.
    BUILD_INFO = "claudefs_fuse_build_info", ["version"],
        "Always 1; the version label says which claudefs-fuse build is running.";
    /// Gauge, seconds: how long the previous scrape took.
    SCRAPE_DURATION = "claudefs_fuse_scrape_duration_seconds", [],
        "How long the previous /metrics scrape took to gather.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let mut seen = std::collections::HashSet::new();
        for f in ALL {
            assert!(f.name.starts_with("claudefs_fuse_"), "{}", f.name);
            assert!(seen.insert(f.name), "duplicate {}", f.name);
            assert!(!f.help.is_empty());
            assert!(f
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }
}
