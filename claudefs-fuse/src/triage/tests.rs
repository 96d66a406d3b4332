//! Tests of the report, its table and its JSON, on shared fixtures.

use crate::probes::dev::kernel_dev;
use crate::probes::hist::LatencyHistogram;
use crate::probes::mountinfo::MountTable;
use crate::probes::snapshot::{
    AttachKind, FlockKind, FlockMode, FlockSample, FlockTarget, FlockWaiterSample, InFlightSample,
    LatencyStats, OpSample, ProbeSnapshot, ProcSample, IN_FLIGHT_THRESHOLD_NS,
};
use crate::triage::report::{
    build_report, HistogramReport, LockKind, LockMode, NoteLevel, TargetKind, TriageReport,
    FUSE_UNAVAILABLE, SCHEMA_VERSION, TOP_PROCESSES,
};
use crate::triage::table::{render_histogram, render_table, HIST_MAX_LINES};
use crate::triage::{json::render_json, render, OutputFormat};

const MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
36 27 0:53 / /mnt/data rw,relatime - fuse.sshfs alice@db1:/srv/data rw
37 27 0:54 / /mnt/bind rw,relatime - fuse.bindfs /tmp/src rw
38 27 0:55 / /mnt/idle rw,relatime - fuse /dev/fuse rw
";

const START: u64 = 1_700_000_000_000_000_000;
const ROOT_DEV: u32 = 254 << 20;

fn stats(values: &[u64], errors: u64) -> LatencyStats {
    let mut hist = LatencyHistogram::default();
    values.iter().for_each(|&v| hist.record(v));
    LatencyStats {
        count: values.len() as u64,
        errors,
        total_ns: values.iter().sum(),
        max_ns: values.iter().copied().max().unwrap_or(0),
        hist,
    }
}

fn op(conn: u32, opcode: u32, values: &[u64], errors: u64) -> OpSample {
    OpSample {
        conn,
        opcode,
        stats: stats(values, errors),
    }
}

fn proc_sample(conn: u32, tgid: u32, comm: &str, count: u64, total_ns: u64) -> ProcSample {
    ProcSample {
        conn,
        tgid,
        comm: comm.into(),
        count,
        total_ns,
    }
}

fn flock(target: FlockTarget, kind: FlockKind, mode: FlockMode, waits: &[u64]) -> FlockSample {
    FlockSample {
        target,
        kind,
        mode,
        calls: waits.len() as u64,
        refused: u64::from(mode == FlockMode::NonBlocking),
        waited: waits.iter().filter(|&&w| w >= 1_000_000).count() as u64,
        wait: stats(waits, 0),
    }
}

fn waiter(
    target: FlockTarget,
    tgid: u32,
    fd: u32,
    file: Option<&str>,
    wait: u64,
) -> FlockWaiterSample {
    FlockWaiterSample {
        target,
        tgid,
        comm: format!("proc{tgid}"),
        ino: 1000 + u64::from(fd),
        fd: file.is_some().then_some(fd),
        file: file.map(Into::into),
        calls: 1,
        total_wait_ns: wait,
        max_wait_ns: wait,
    }
}

fn snapshot() -> ProbeSnapshot {
    ProbeSnapshot {
        fuse_attach: Some(AttachKind::Btf),
        flock_attach: Some(AttachKind::Btf),
        ops: vec![
            op(53, 1, &[5_000, 5_000, 10_000, 20_000], 2),
            op(53, 3, &[1_000; 5], 0),
            op(53, 15, &[500_000, 1_500_000], 0),
            op(53, 16, &[5_000], 0),
            op(53, 3, &[1_000; 5], 0),
            op(54, 1, &[3_000_000], 1),
            op(99, 14, &[100], 0),
        ],
        procs: vec![
            proc_sample(53, 200, "ls", 5, 1_055_000),
            proc_sample(53, 100, "rsync", 12, 1_000_000),
            proc_sample(54, 300, "find", 1, 3_000_000),
            proc_sample(99, 400, "", 1, 100),
        ],
        flocks: vec![
            flock(
                FlockTarget::Local,
                FlockKind::Unlock,
                FlockMode::Blocking,
                &[100; 3],
            ),
            flock(
                FlockTarget::Device { dev: ROOT_DEV },
                FlockKind::Shared,
                FlockMode::Blocking,
                &[500],
            ),
            flock(
                FlockTarget::Fuse { conn: 53 },
                FlockKind::Exclusive,
                FlockMode::NonBlocking,
                &[2_000],
            ),
            flock(
                FlockTarget::Fuse { conn: 53 },
                FlockKind::Exclusive,
                FlockMode::Blocking,
                &[300_000_000, 1_000],
            ),
        ],
        flock_waiters: vec![
            waiter(FlockTarget::Local, 501, 5, None, 1_000),
            waiter(
                FlockTarget::Fuse { conn: 53 },
                500,
                3,
                Some("/mnt/data/lock"),
                300_000_000,
            ),
        ],
        in_flight: vec![],
        events_lost: 0,
        events_delivered: 25,
        started_unix_ns: START,
        ended_unix_ns: START + 2_000_000_000,
    }
}

fn in_flight(conn: u32, opcode: u32, count: u64, oldest_age_ns: u64) -> InFlightSample {
    InFlightSample {
        conn,
        opcode,
        count,
        oldest_age_ns,
        oldest_tgid: 700u32.wrapping_add(opcode),
        oldest_comm: format!("waiter{opcode}"),
    }
}

/// The fixture plus requests in flight: /mnt/idle (0:55) answered nothing
/// and has a LOOKUP stuck for 12.3s; /mnt/data has two young ones.
fn hung_snapshot() -> ProbeSnapshot {
    let mut snap = snapshot();
    snap.in_flight = vec![
        in_flight(55, 1, 2, 12_300_000_000),
        in_flight(55, 3, 1, 4_000_000_000),
        in_flight(53, 15, 1, 5_000_000),
        in_flight(53, 15, 2, 2_000_000),
    ];
    snap
}

fn report() -> TriageReport {
    build_report(&snapshot(), &MountTable::parse(MOUNTINFO), None)
}

#[test]
fn mounts_sorted_by_total_time_and_unknown_conns_kept() {
    let r = report();
    let conns: Vec<&str> = r.mounts.iter().map(|m| m.mount.conn.as_str()).collect();
    assert_eq!(conns, ["0:54", "0:53", "0:99"]);
    assert_eq!(r.mounts[0].mount.mount_point.as_deref(), Some("/mnt/bind"));
    assert_eq!(r.mounts[1].mount.fstype.as_deref(), Some("fuse.sshfs"));
    assert_eq!(
        r.mounts[1].mount.source.as_deref(),
        Some("alice@db1:/srv/data")
    );
    assert_eq!(r.mounts[2].mount.mount_point, None);
    assert_eq!(r.mounts[2].mount.label(), "0:99");
    assert!(r
        .notes
        .iter()
        .any(|n| n.level == NoteLevel::Info && n.message.contains("connection 0:99")));
    let idle: Vec<&str> = r.idle_fuse_mounts.iter().map(|m| m.label()).collect();
    assert_eq!(idle, ["/mnt/idle"]);
    assert_eq!(r.totals.requests, 4 + 10 + 2 + 1 + 1 + 1);
    assert_eq!(r.totals.errors, 3);
    assert_eq!(r.schema_version, SCHEMA_VERSION);
}

#[test]
fn departed_mounts_are_named_and_noted() {
    let before = MountTable::parse(MOUNTINFO);
    let after = MountTable::parse("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n");
    let r = build_report(&snapshot(), &after.with_departed(&before), None);
    assert_eq!(r.mounts[0].mount.mount_point.as_deref(), Some("/mnt/bind"));
    let info: Vec<&str> = r.notes.iter().map(|n| n.message.as_str()).collect();
    assert_eq!(
        info,
        [
            "/mnt/bind (conn 0:54) was unmounted during collection",
            "/mnt/data (conn 0:53) was unmounted during collection",
            "connection 0:99 is not in the mount table (unmounted during collection?); \
             shown by its device number",
        ]
    );
    assert!(
        r.idle_fuse_mounts.is_empty(),
        "a departed mount is not idle"
    );
}

#[test]
fn ops_sorted_by_total_time_merged_and_summarised() {
    let r = report();
    let data = &r.mounts[1];
    let names: Vec<&str> = data.ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["READ", "LOOKUP", "GETATTR", "WRITE"]);
    assert_eq!(data.totals.requests, 17);
    assert_eq!(data.totals.total_ns, 2_000_000 + 40_000 + 10_000 + 5_000);

    let getattr = &data.ops[2];
    assert_eq!(getattr.count, 10, "two samples of one key are merged");
    assert_eq!(getattr.latency.total_ns, 10_000);
    assert_eq!(getattr.rate_per_sec, Some(5.0));

    let lookup = &data.ops[1];
    assert_eq!((lookup.count, lookup.errors), (4, 2));
    assert_eq!(lookup.latency.mean_ns, Some(10_000));
    assert_eq!(lookup.latency.display.max, "20us");

    // READ: 500us in native bucket -87 ((488.3us, 532.5us]), 1.5ms in
    // -75. p50 is the top of the first; p99 falls in the second, whose top
    // (1506065 ns) exceeds the recorded max, so it is capped at 1.5ms.
    let read = &data.ops[0];
    assert_eq!(read.latency.p50_ns, Some(532_474));
    assert_eq!(read.latency.p99_ns, Some(1_500_000));
    assert_eq!(read.latency.max_ns, 1_500_000);
    assert_eq!(read.latency.display.p99, "1.5ms");
    assert_eq!(read.latency.display.total, "2ms");
}

#[test]
fn histograms_for_the_three_heaviest_ops() {
    let r = report();
    let data = &r.mounts[1];
    let names: Vec<&str> = data.histograms.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["READ", "LOOKUP", "GETATTR"]);
    let read = &data.histograms[0];
    // READ: 500 us and 1.5 ms, native buckets (2^(i-1)/8 s, 2^(i/8) s].
    let buckets: Vec<(Option<i32>, u64, u64, u64)> = read
        .buckets
        .iter()
        .map(|b| (b.index, b.lower_ns, b.upper_ns, b.count))
        .collect();
    assert_eq!(buckets.len(), 13, "{buckets:?}");
    let first = buckets[0];
    let last = buckets[buckets.len() - 1];
    // ceil(8 log2(500e-6)) = -87, ceil(8 log2(1.5e-3)) = -75.
    assert_eq!((first.0, first.3), (Some(-87), 1));
    assert_eq!((last.0, last.3), (Some(-75), 1));
    assert!(first.1 <= 500_000 && 500_000 <= first.2, "{first:?}");
    assert!(last.1 <= 1_500_000 && 1_500_000 <= last.2, "{last:?}");
    assert!(buckets[1..12].iter().all(|b| b.3 == 0));
    for w in buckets.windows(2) {
        assert_eq!(w[0].2 + 1, w[1].1, "contiguous");
        assert_eq!(w[0].0.map(|i| i + 1), w[1].0);
    }
    assert!(HistogramReport::from_hist(1, &LatencyHistogram::default())
        .buckets
        .is_empty());
}

#[test]
fn top_processes_are_sorted_and_cut() {
    let r = report();
    let data = &r.mounts[1];
    let by_req: Vec<u32> = data
        .top_processes_by_requests
        .iter()
        .map(|p| p.tgid)
        .collect();
    let by_time: Vec<u32> = data.top_processes_by_time.iter().map(|p| p.tgid).collect();
    assert_eq!(by_req, [100, 200]);
    assert_eq!(by_time, [200, 100]);
    assert_eq!(data.top_processes_by_time[0].comm, "ls");
    assert_eq!(data.top_processes_by_time[0].mean_ns, Some(211_000));

    let mut snap = snapshot();
    snap.procs = (1..=15)
        .map(|t| proc_sample(53, t, "w", u64::from(t % 4), u64::from(100 - t)))
        .collect();
    let r = build_report(&snap, &MountTable::parse(MOUNTINFO), Some(53));
    let m = &r.mounts[0];
    assert_eq!(m.top_processes_by_requests.len(), TOP_PROCESSES);
    assert_eq!(m.top_processes_by_time.len(), TOP_PROCESSES);
    // Requests 3 (tgids 3, 7, 11, 15 with rising totals... falling: 97, 93, 89, 85).
    let first: Vec<u32> = m.top_processes_by_requests[..4]
        .iter()
        .map(|p| p.tgid)
        .collect();
    assert_eq!(first, [3, 7, 11, 15]);
    assert_eq!(m.top_processes_by_time[0].tgid, 1);
    assert_eq!(m.top_processes_by_time[9].tgid, 10);
}

#[test]
fn flock_rows_and_waiters() {
    let r = report();
    let rows: Vec<(&str, LockKind, LockMode, u64, u64, u64)> = r
        .flock
        .rows
        .iter()
        .map(|f| {
            (
                f.target.label.as_str(),
                f.kind,
                f.mode,
                f.calls,
                f.refused,
                f.waited,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "/mnt/data",
                LockKind::Exclusive,
                LockMode::Blocking,
                2,
                0,
                1
            ),
            (
                "/mnt/data",
                LockKind::Exclusive,
                LockMode::Nonblocking,
                1,
                1,
                0
            ),
            ("/", LockKind::Shared, LockMode::Blocking, 1, 0, 0),
            ("local", LockKind::Unlock, LockMode::Blocking, 3, 0, 0),
        ]
    );
    assert_eq!(r.flock.rows[0].target.kind, TargetKind::Fuse);
    assert_eq!(r.flock.rows[2].target.kind, TargetKind::Device);
    assert_eq!(r.flock.rows[3].target.mount, None);
    assert_eq!(r.flock.rows[0].wait.max_ns, 300_000_000);
    assert_eq!(r.flock.rows[0].wait.display.max, "300ms");
    let waiters: Vec<(u32, Option<&str>)> = r
        .flock
        .top_waiters
        .iter()
        .map(|w| (w.tgid, w.file.as_deref()))
        .collect();
    assert_eq!(waiters, [(500, Some("/mnt/data/lock")), (501, None)]);
}

#[test]
fn filter_keeps_one_connection() {
    let mounts = MountTable::parse(MOUNTINFO);
    let r = build_report(&snapshot(), &mounts, Some(53));
    assert_eq!(r.mounts.len(), 1);
    assert_eq!(r.mounts[0].mount.conn, "0:53");
    assert_eq!(r.totals.requests, 17);
    assert!(r.idle_fuse_mounts.is_empty());
    assert_eq!(
        r.filter.as_ref().and_then(|f| f.mount_point.as_deref()),
        Some("/mnt/data")
    );
    assert!(r.flock.rows.iter().all(|f| f.target.label == "/mnt/data"));
    assert_eq!(r.flock.rows.len(), 2);
    assert_eq!(r.flock.top_waiters.len(), 1);
    assert!(r.notes.is_empty(), "{:?}", r.notes);

    let idle = build_report(&snapshot(), &mounts, Some(55));
    assert!(idle.mounts.is_empty());
    assert_eq!(idle.idle_fuse_mounts.len(), 1);
    let text = render_table(&idle);
    assert!(
        text.contains("no FUSE activity observed on /mnt/idle"),
        "{text}"
    );

    let root = build_report(&snapshot(), &mounts, Some(ROOT_DEV));
    assert_eq!(root.flock.rows.len(), 1);
    assert_eq!(root.flock.rows[0].kind, LockKind::Shared);
}

#[test]
fn notes_for_missing_probes_lost_events_and_empty_window() {
    let mut snap = snapshot();
    snap.fuse_attach = None;
    snap.flock_attach = None;
    snap.events_lost = 5;
    snap.ended_unix_ns = snap.started_unix_ns;
    let r = build_report(&snap, &MountTable::default(), None);
    let warnings: Vec<&str> = r
        .notes
        .iter()
        .filter(|n| n.level == NoteLevel::Warning)
        .map(|n| n.message.as_str())
        .collect();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert_eq!(warnings[0], FUSE_UNAVAILABLE);
    assert!(warnings[1].starts_with("flock data unavailable"));
    assert!(warnings[2].starts_with("5 of 30 per-request events were lost"));
    assert!(warnings[3].contains("window is empty"));
    assert!(r
        .mounts
        .iter()
        .all(|m| m.ops.iter().all(|o| o.rate_per_sec.is_none())));

    let text = render_table(&r);
    assert!(
        text.contains(&format!("warning: {FUSE_UNAVAILABLE}")),
        "{text}"
    );
    assert!(!text.contains("no FUSE activity observed"), "{text}");
    assert!(!text.contains("== flock =="), "{text}");
}

#[test]
fn empty_snapshot_renders() {
    let r = build_report(&ProbeSnapshot::default(), &MountTable::default(), None);
    assert!(r.mounts.is_empty() && r.flock.rows.is_empty());
    assert_eq!(r.window.duration_ns, 0);
    let mut attached = ProbeSnapshot {
        fuse_attach: Some(AttachKind::Btf),
        flock_attach: Some(AttachKind::Btf),
        ..ProbeSnapshot::default()
    };
    attached.ended_unix_ns = 1_000_000_000;
    let r = build_report(&attached, &MountTable::default(), None);
    let text = render_table(&r);
    assert!(text.contains("\nno FUSE activity observed\n"), "{text}");
    assert!(text.contains("no flock calls observed"), "{text}");
    assert!(r.notes.is_empty());
    let v: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(v["mounts"], serde_json::json!([]));
}

#[test]
fn extreme_values_saturate_without_panicking() {
    let mut hist = LatencyHistogram::default();
    hist.buckets[claudefs_ebpf_common::HIST_BUCKETS - 1] = u64::MAX;
    hist.buckets[0] = u64::MAX;
    let huge = LatencyStats {
        count: u64::MAX,
        errors: u64::MAX,
        total_ns: u64::MAX,
        max_ns: u64::MAX,
        hist,
    };
    let sample = |conn, opcode| OpSample {
        conn,
        opcode,
        stats: huge.clone(),
    };
    let snap = ProbeSnapshot {
        fuse_attach: Some(AttachKind::Btf),
        flock_attach: Some(AttachKind::Btf),
        ops: vec![
            sample(u32::MAX, u32::MAX),
            sample(u32::MAX, u32::MAX),
            sample(1, 0),
        ],
        procs: vec![proc_sample(u32::MAX, u32::MAX, "x", u64::MAX, u64::MAX); 2],
        flocks: vec![FlockSample {
            target: FlockTarget::Device { dev: u32::MAX },
            kind: FlockKind::Shared,
            mode: FlockMode::Blocking,
            calls: u64::MAX,
            refused: u64::MAX,
            waited: u64::MAX,
            wait: huge.clone(),
        }],
        flock_waiters: vec![],
        in_flight: vec![in_flight(1, u32::MAX, u64::MAX, u64::MAX); 2],
        events_lost: u64::MAX,
        events_delivered: u64::MAX,
        started_unix_ns: u64::MAX,
        ended_unix_ns: 0,
    };
    let r = build_report(&snap, &MountTable::default(), None);
    assert_eq!(r.totals.requests, u64::MAX);
    // Both mounts saturate to the same totals: the tie is broken by conn.
    let conns: Vec<&str> = r.mounts.iter().map(|m| m.mount.conn.as_str()).collect();
    assert_eq!(conns, ["0:1", "4095:1048575"]);
    let widest = &r.mounts[1];
    assert_eq!(widest.ops[0].name, format!("OPCODE_{}", u32::MAX));
    assert_eq!(widest.ops[0].latency.mean_ns, Some(1));
    assert_eq!(widest.top_processes_by_requests[0].requests, u64::MAX);
    assert!(r.window.duration_ns == 0 && r.mounts[0].ops[0].rate_per_sec.is_none());
    for format in [OutputFormat::Table, OutputFormat::Json] {
        assert!(!render(&r, format).is_empty());
    }
    let back: TriageReport = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(back, r);
}

#[test]
fn histogram_text_matches_bpftrace_layout() {
    let mut hist = LatencyHistogram::default();
    // 1 ms is in (976.6us, 1064.9us], native bucket -79.
    let one_ms = LatencyHistogram::bucket_of(1_000_000);
    hist.buckets[one_ms] = 12;
    hist.buckets[one_ms + 1] = 24;
    hist.buckets[one_ms + 3] = 1;
    let text = render_histogram(&HistogramReport::from_hist(1, &hist), "  ");
    let expected = "  LOOKUP latency:\n\
\x20 [977us, 1.06ms]         12 |@@@@@@@@@@@@@@@@@@@@                    |\n\
\x20 [1.06ms, 1.16ms]        24 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n\
\x20 [1.16ms, 1.27ms]         0 |                                        |\n\
\x20 [1.27ms, 1.38ms]         1 |@                                       |\n";
    assert_eq!(text, expected);
}

#[test]
fn wide_histograms_merge_neighbouring_buckets() {
    let mut hist = LatencyHistogram::default();
    hist.record(2_000);
    hist.record(5_000_000_000);
    let report = HistogramReport::from_hist(1, &hist);
    assert!(report.buckets.len() > HIST_MAX_LINES);
    let text = render_histogram(&report, "");
    let lines = text.lines().count() - 1;
    assert!(lines <= HIST_MAX_LINES, "{text}");
    let counted: u64 = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            l.split('|')
                .next()?
                .split_whitespace()
                .last()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(counted, 2, "{text}");
}

#[test]
fn table_layout() {
    let text = render_table(&report());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "claudefs-fuse triage: 2023-11-14T22:13:20.000Z .. 2023-11-14T22:13:22.000Z (2s)"
    );
    assert_eq!(
        lines[1],
        "FUSE: 19 requests, 3 errors, 5.06ms total on 3 active mounts \
         (/mnt/bind, /mnt/data, 0:99); 1 idle FUSE mount (/mnt/idle)"
    );
    let section = text
        .split("== /mnt/data (fuse.sshfs, alice@db1:/srv/data, conn 0:53) ==\n")
        .nth(1)
        .expect("a section for /mnt/data");
    let table: Vec<&str> = section.lines().skip(2).take(5).collect();
    assert_eq!(
        table,
        [
            "  OPCODE   COUNT  ERRORS   RATE     P50    P90    P99    MAX  TOTAL",
            "  READ         2       0    1/s   532us  1.5ms  1.5ms  1.5ms    2ms",
            "  LOOKUP       4       2    2/s  5.39us   20us   20us   20us   40us",
            // Ten calls of 1us all sit in bucket (953.7ns, 1.04us]: the
            // percentiles are interpolated inside it, capped at the max.
            "  GETATTR     10       0    5/s   996ns    1us    1us    1us   10us",
            "  WRITE        1       0  0.5/s     5us    5us    5us    5us    5us",
        ]
    );
    assert!(text.contains("\n  READ latency:\n"));
    // /mnt/bind: one process, one request; the two top lists are one table.
    let bind = text.split("== /mnt/data").next().unwrap();
    assert!(
        bind.contains("\n  1 request, 1 error, 3ms total\n"),
        "{bind}"
    );
    assert_eq!(bind.matches("top processes").count(), 1, "{bind}");
    assert!(
        bind.contains("top processes by requests and by time:"),
        "{bind}"
    );
    assert!(section.contains(
        "top processes by requests:\n    PID  COMM   REQUESTS   TOTAL    MEAN\n    100  rsync"
    ));
    assert!(section
        .contains("top processes by time:\n    PID  COMM   REQUESTS   TOTAL    MEAN\n    200  ls"));
    assert!(text.contains("== flock =="));
    assert!(text.contains("/mnt/data/lock"));
    assert!(text.contains("inode 1005 (no open fd found)"));
}

#[test]
fn json_round_trips_and_has_the_documented_fields() {
    let r = report();
    let text = render(&r, OutputFormat::Json);
    let back: TriageReport = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(back, r);

    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema_version"], 2);
    assert_eq!(v["window"]["duration_ns"], 2_000_000_000u64);
    assert_eq!(v["window"]["started"], "2023-11-14T22:13:20.000Z");
    assert_eq!(v["probes"]["fuse_attached"], true);
    let data = &v["mounts"][1];
    assert_eq!(data["mount"]["conn"], "0:53");
    assert_eq!(data["mount"]["dev"], 53);
    assert_eq!(data["mount"]["mount_point"], "/mnt/data");
    assert_eq!(data["ops"][0]["name"], "READ");
    assert_eq!(data["ops"][0]["opcode"], 15);
    assert_eq!(data["ops"][0]["rate_per_sec"], 1.0);
    assert_eq!(data["ops"][0]["latency"]["p99_ns"], 1_500_000);
    assert_eq!(data["ops"][0]["latency"]["display"]["p99"], "1.5ms");
    assert_eq!(data["histograms"][0]["buckets"][0]["lower_ns"], 488_282);
    assert_eq!(data["histograms"][0]["buckets"][0]["index"], -87);
    assert_eq!(v["probes"]["fuse_attach_type"], "tp_btf");
    assert_eq!(data["top_processes_by_time"][0]["comm"], "ls");
    assert_eq!(
        v["mounts"][2]["mount"]["mount_point"],
        serde_json::Value::Null
    );
    let row = &v["flock"]["rows"][0];
    assert_eq!(row["target"]["kind"], "fuse");
    assert_eq!(row["target"]["mount"]["conn"], "0:53");
    assert_eq!(row["kind"], "exclusive");
    assert_eq!(row["mode"], "blocking");
    assert_eq!(row["wait"]["max_ns"], 300_000_000);
    assert_eq!(v["flock"]["rows"][3]["target"]["kind"], "local");
    assert_eq!(v["flock"]["top_waiters"][0]["file"], "/mnt/data/lock");
    assert_eq!(v["notes"][0]["level"], "info");
    assert_eq!(v["idle_fuse_mounts"][0]["fstype"], "fuse");
    assert!(text.ends_with("}\n"));
}

#[test]
fn in_flight_requests_are_reported_and_hung_mounts_go_first() {
    let mounts = MountTable::parse(MOUNTINFO);
    let r = build_report(&hung_snapshot(), &mounts, None);
    let conns: Vec<&str> = r.mounts.iter().map(|m| m.mount.conn.as_str()).collect();
    assert_eq!(conns, ["0:55", "0:54", "0:53", "0:99"]);
    assert!(r.idle_fuse_mounts.is_empty());
    let idle = &r.mounts[0];
    assert_eq!(idle.totals.requests, 0);
    assert!(idle.ops.is_empty());
    let rows: Vec<(&str, u64, u64, u32, &str)> = idle
        .in_flight
        .iter()
        .map(|f| {
            (
                f.name.as_str(),
                f.count,
                f.oldest_age_ns,
                f.oldest_tgid,
                f.oldest_comm.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("LOOKUP", 2, 12_300_000_000, 701, "waiter1"),
            ("GETATTR", 1, 4_000_000_000, 703, "waiter3"),
        ]
    );
    assert_eq!(idle.in_flight[0].oldest_age, "12.3s");
    assert_eq!(idle.in_flight[0].threshold_ns, IN_FLIGHT_THRESHOLD_NS);
    // Duplicate samples merge: the oldest wins.
    let data = &r.mounts[2];
    assert_eq!(data.in_flight.len(), 1);
    assert_eq!(
        (data.in_flight[0].count, data.in_flight[0].oldest_age_ns),
        (3, 5_000_000)
    );
    let notes: Vec<(NoteLevel, &str)> = r
        .notes
        .iter()
        .map(|n| (n.level, n.message.as_str()))
        .collect();
    assert!(notes.contains(&(
        NoteLevel::Warning,
        "3 requests to /mnt/idle have been waiting up to 12.3s: the FUSE daemon may be hung"
    )));
    assert!(notes.contains(&(
        NoteLevel::Info,
        "3 requests to /mnt/data have been waiting up to 5ms (in flight at the end of collection)"
    )));

    let text = render_table(&r);
    assert!(
        text.contains(
            "warning: 3 requests to /mnt/idle have been waiting up to 12.3s: \
             the FUSE daemon may be hung\n"
        ),
        "{text}"
    );
    let idle_section = text
        .split("== /mnt/idle (fuse, /dev/fuse, conn 0:55) ==\n")
        .nth(1)
        .expect("a section for /mnt/idle");
    let lines: Vec<&str> = idle_section.lines().take(6).collect();
    assert_eq!(
        lines,
        [
            "  0 requests, 0 errors, 0ns total",
            "",
            "  requests in flight (not answered):",
            "    OPCODE   COUNT  OLDEST  PID  COMM",
            "    LOOKUP       2   12.3s  701  waiter1",
            "    GETATTR      1      4s  703  waiter3",
        ]
    );
    // In flight comes before the op table.
    let data_section = text.split("conn 0:53) ==\n").nth(1).unwrap();
    let (before, after) = data_section.split_once("  OPCODE   COUNT  ERRORS").unwrap();
    assert!(
        before.contains("requests in flight (not answered):\n"),
        "{before}"
    );
    assert!(!after.contains("requests in flight"));

    let v: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
    let f = &v["mounts"][0]["in_flight"][0];
    assert_eq!(f["name"], "LOOKUP");
    assert_eq!(f["oldest_age_ns"], 12_300_000_000u64);
    assert_eq!(f["oldest_comm"], "waiter1");
    assert_eq!(v["mounts"][1]["in_flight"], serde_json::json!([]));
    let back: TriageReport = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(back, r);

    // The filter keeps only the chosen connection's requests.
    let r = build_report(&hung_snapshot(), &mounts, Some(53));
    assert_eq!(r.mounts.len(), 1);
    assert_eq!(r.mounts[0].in_flight[0].name, "READ");
    assert!(!r.notes.iter().any(|n| n.message.contains("/mnt/idle")));
}

#[test]
fn no_in_flight_renders_as_before() {
    let r = report();
    assert!(r.mounts.iter().all(|m| m.in_flight.is_empty()));
    assert!(!render_table(&r).contains("in flight"));
    assert!(!r.notes.iter().any(|n| n.message.contains("waiting")));
}

#[test]
fn root_dev_constant_is_the_kernel_encoding() {
    assert_eq!(kernel_dev(254, 0), Some(ROOT_DEV));
}

/// Every key the JSON can hold is named in the schema documentation.
#[test]
fn every_json_field_is_documented() {
    fn keys(value: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    out.insert(k.clone());
                    keys(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let doc = include_str!("../../../README.md");
    let mut snap = hung_snapshot();
    snap.fuse_attach = None;
    let mut all = std::collections::BTreeSet::new();
    for filter in [None, Some(53)] {
        let r = build_report(&snap, &MountTable::parse(MOUNTINFO), filter);
        keys(&serde_json::to_value(&r).unwrap(), &mut all);
    }
    assert!(all.len() > 60, "{all:?}");
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(missing.is_empty(), "undocumented JSON fields: {missing:?}");
}
