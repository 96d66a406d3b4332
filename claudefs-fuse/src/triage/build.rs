//! Building a [`TriageReport`] from one [`ProbeSnapshot`]: resolving
//! connections against the mount table, merging duplicate keys, sorting
//! and cutting to the top entries, and the notes that explain the numbers.

use std::collections::{BTreeMap, BTreeSet};

use crate::probes::mountinfo::MountTable;
use crate::probes::opcodes::opcode_name;
use crate::probes::snapshot::{
    FlockKind, FlockMode, FlockTarget, FlockWaiterSample, InFlightSample, LatencyStats,
    ProbeSnapshot, FLOCK_WAITED_THRESHOLD_NS, IN_FLIGHT_THRESHOLD_NS,
};
use crate::triage::format::{format_duration_ns, format_unix_ns};
use crate::triage::report::*;

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
