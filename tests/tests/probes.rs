//! End-to-end tests of the eBPF probes against a real FUSE mount (root):
//! request counts, events, in-flight requests, histograms, and against
//! bpftrace; the flock probes are in `probes_flock.rs`.
//!
//! Each test loads its own probe set and mounts its own [`TestFs`]; the
//! probes see every FUSE connection on the host, so every assertion filters
//! by the test's own connection (and its own child pids).
//!
//! [`TestFs`]: claudefs_e2e::testfs::TestFs

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use claudefs_e2e::probes::{assert_attached_as_expected, load_probes, load_probes_as};
use claudefs_e2e::testfs::{opcode, MountedFs, TestFsOptions};
use claudefs_e2e::{require_privileges, stat};
use claudefs_fuse::probes::events::RING_RECORD_BYTES;
use claudefs_fuse::probes::hist::LatencyHistogram;
use claudefs_fuse::probes::snapshot::ProbeSnapshot;
use claudefs_fuse::probes::{EventFilter, ProbeOptions, Probes};

/// Opcodes the file system does not see through its methods: the
/// handshake, and FUSE_STATX, which fuser 0.18 answers with ENOSYS itself
/// (the kernel sends it once, for the first statx(2) on the mount, then
/// falls back to GETATTR for good).
const NOT_COUNTED_BY_FS: [u32; 3] = [opcode::INIT, opcode::DESTROY, opcode::STATX];

/// Per-opcode (count, errors) of one connection.
fn op_counts(snap: &ProbeSnapshot, conn: u32) -> BTreeMap<u32, (u64, u64)> {
    snap.ops
        .iter()
        .filter(|o| o.conn == conn && !NOT_COUNTED_BY_FS.contains(&o.opcode))
        .map(|o| (o.opcode, (o.stats.count, o.stats.errors)))
        .collect()
}

fn fs_counts(fs: &MountedFs) -> BTreeMap<u32, (u64, u64)> {
    fs.stats.snapshot()
}

fn diff(
    after: &BTreeMap<u32, (u64, u64)>,
    before: &BTreeMap<u32, (u64, u64)>,
) -> BTreeMap<u32, (u64, u64)> {
    after
        .iter()
        .filter_map(|(op, (c, e))| {
            let (bc, be) = before.get(op).copied().unwrap_or((0, 0));
            (c - bc > 0 || e - be > 0).then_some((*op, (c - bc, e - be)))
        })
        .collect()
}

/// What the probes counted (`snap` against `before_probes`) and what the
/// file system counted since `before_fs` are the same, per opcode: the
/// file system's counts (count, errors), returned.
fn assert_probes_count_as_the_fs(
    snap: &ProbeSnapshot,
    fs: &MountedFs,
    before_probes: &BTreeMap<u32, (u64, u64)>,
    before_fs: &BTreeMap<u32, (u64, u64)>,
) -> BTreeMap<u32, (u64, u64)> {
    let by_probes = diff(&op_counts(snap, fs.conn), before_probes);
    let by_fs = diff(&fs_counts(fs), before_fs);
    assert_eq!(
        by_probes, by_fs,
        "probes (left) vs file system (right), (count, errors) per opcode"
    );
    by_fs
}

/// Polls until the probes and the file system agree and nothing changed
/// for a few rounds (asynchronous requests such as RELEASE arrive after
/// close returns), or 10 s pass. Returns the last probe snapshot.
fn settle(fs: &MountedFs, probes: &mut Probes) -> ProbeSnapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    let mut stable = 0;
    loop {
        probes.poll().expect("poll");
        let snap = probes.snapshot().expect("snapshot");
        let now = (op_counts(&snap, fs.conn), fs_counts(fs));
        if last.as_ref() == Some(&now) && now.0 == now.1 {
            stable += 1;
        } else {
            stable = 0;
        }
        if stable >= 3 || Instant::now() > deadline {
            return snap;
        }
        last = Some(now);
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn read_file(path: &Path) {
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = [0u8; 4096];
    // Plain reads (read_to_end would stat the file first).
    while f.read(&mut buf).expect("read") > 0 {}
}

#[test]
fn request_counts_match_the_file_system_exactly() {
    if !require_privileges("request_counts_match_the_file_system_exactly") {
        return;
    }
    request_counts_match(false);
}

#[test]
fn request_counts_match_on_classic_tracepoints() {
    if !require_privileges("request_counts_match_on_classic_tracepoints") {
        return;
    }
    request_counts_match(true);
}

fn request_counts_match(classic: bool) {
    let mut probes = load_probes_as(classic);
    let fs = MountedFs::mount(TestFsOptions::default()).expect("mount");
    probes
        .set_event_filter(EventFilter::All, Some(fs.conn))
        .expect("event filter");
    let before_probes = op_counts(&settle(&fs, &mut probes), fs.conn);
    let before_fs = fs_counts(&fs);
    let _ = probes.take_events();

    const HITS: u64 = 20;
    const MISSES: u64 = 7;
    for _ in 0..HITS {
        assert_eq!(stat(&fs.path("a")), Ok(()));
    }
    for i in 0..MISSES {
        assert_eq!(stat(&fs.path(&format!("missing-{i}"))), Err(libc::ENOENT));
    }
    for _ in 0..5 {
        read_file(&fs.path("b"));
    }
    let names = std::fs::read_dir(&fs.mountpoint).expect("readdir").count();
    assert_eq!(names, 4);

    let snap = settle(&fs, &mut probes);
    let by_fs = assert_probes_count_as_the_fs(&snap, &fs, &before_probes, &before_fs);
    // The workload's known operations are all there.
    assert_eq!(
        by_fs.get(&opcode::LOOKUP).map(|c| c.1),
        Some(MISSES),
        "{by_fs:?}"
    );
    assert!(
        by_fs
            .get(&opcode::LOOKUP)
            .is_some_and(|c| c.0 >= HITS + MISSES),
        "{by_fs:?}"
    );
    assert_eq!(by_fs.get(&opcode::OPEN).map(|c| c.0), Some(5), "{by_fs:?}");
    assert_eq!(
        by_fs.get(&opcode::RELEASE).map(|c| c.0),
        Some(5),
        "{by_fs:?}"
    );
    assert_eq!(
        by_fs.get(&opcode::OPENDIR).map(|c| c.0),
        Some(1),
        "{by_fs:?}"
    );

    // Every request of the window came through the ring buffer as well.
    let events: Vec<_> = probes
        .take_events()
        .into_iter()
        .filter(|e| e.conn == fs.conn)
        .collect();
    let total: u64 = by_fs.values().map(|c| c.0).sum();
    assert_eq!(events.len() as u64, total);
    assert_eq!(snap.events_lost, 0);
    let missing_lookups = events
        .iter()
        .filter(|e| e.opcode == opcode::LOOKUP && e.error == -libc::ENOENT)
        .count() as u64;
    assert_eq!(missing_lookups, MISSES);
    let me = std::process::id();
    assert!(events.iter().any(|e| e.tgid == me));
    for e in &events {
        assert!(e.end_unix_ns >= e.start_unix_ns);
    }

    // Per-process attribution: this process issued the stats and reads.
    let mine = snap
        .procs
        .iter()
        .find(|p| p.conn == fs.conn && p.tgid == me)
        .expect("a per-process entry for this test process");
    assert!(mine.count >= HITS + MISSES, "{mine:?}");
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    assert_eq!(mine.comm, comm.trim_end());
}

/// Per-opcode (count, histogram count) of one connection, every opcode
/// (the handshake too: the kernel emits an event for each).
fn op_totals(snap: &ProbeSnapshot, conn: u32) -> BTreeMap<u32, (u64, u64)> {
    snap.ops
        .iter()
        .filter(|o| o.conn == conn)
        .map(|o| (o.opcode, (o.stats.count, o.stats.hist.count())))
        .collect()
}

#[test]
fn a_full_event_ring_counts_lost_events_and_keeps_counts_exact() {
    if !require_privileges("a_full_event_ring_counts_lost_events_and_keeps_counts_exact") {
        return;
    }
    // A small ring: two pages (the smallest power of two above one).
    let ring_bytes = 2 * claudefs_fuse::probes::page_size();
    let capacity = ring_bytes as u64 / RING_RECORD_BYTES as u64;
    // Loaded before the mount, so the probes see all of its requests and
    // agree with the file system's own counts; events only once the
    // connection is known, and only of it.
    let mut probes = Probes::load_with_event_ring(&ProbeOptions::default(), ring_bytes)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_attached_as_expected(&probes, false);
    let fs = MountedFs::mount(TestFsOptions::default()).expect("mount");
    probes
        .set_event_filter(EventFilter::All, Some(fs.conn))
        .expect("event filter");

    let before = settle(&fs, &mut probes);
    let before_counters = probes.counters().expect("counters");
    let before_fs = fs_counts(&fs);
    let _ = probes.take_events();

    // Far more requests than the ring holds, with the reader held back:
    // nothing below drains the ring (no poll, snapshot nor counters).
    let stats = (20 * capacity).max(2000);
    for i in 0..stats {
        if i % 2 == 0 {
            assert_eq!(stat(&fs.path("a")), Ok(()));
        } else {
            assert_eq!(stat(&fs.path(&format!("missing-{i}"))), Err(libc::ENOENT));
        }
    }

    let after = settle(&fs, &mut probes);
    let c = probes.counters().expect("counters");
    let events: Vec<_> = probes.take_events();

    // The statistics are exact: per opcode as the file system counted.
    let by_fs =
        assert_probes_count_as_the_fs(&after, &fs, &op_counts(&before, fs.conn), &before_fs);
    assert_eq!(
        by_fs.get(&opcode::LOOKUP).map(|c| c.1),
        Some(stats / 2),
        "every missing name is a failed LOOKUP: {by_fs:?}"
    );
    // Every opcode's histogram holds each of its requests once.
    for o in after.ops.iter().filter(|o| o.conn == fs.conn) {
        assert_eq!(o.stats.hist.count(), o.stats.count, "opcode {}", o.opcode);
    }

    let (totals_before, totals_after) = (op_totals(&before, fs.conn), op_totals(&after, fs.conn));
    let requests: u64 = totals_after.values().map(|t| t.0).sum::<u64>()
        - totals_before.values().map(|t| t.0).sum::<u64>();
    let submitted = c.events_submitted - before_counters.events_submitted;
    let lost = c.events_lost - before_counters.events_lost;
    let delivered = c.events_delivered - before_counters.events_delivered;
    eprintln!(
        "ring of {ring_bytes} bytes ({capacity} records of {RING_RECORD_BYTES} bytes): \
         {stats} stats, {requests} requests, {submitted} events submitted, {lost} lost, \
         {delivered} delivered"
    );
    // The filter passes only our connection's events, so every one of its
    // requests was either written to the ring or counted as lost.
    assert_eq!(c.map_full, 0, "a request not counted would break the sums");
    assert!(lost > 0, "the ring never filled: {c:?}");
    assert_eq!(submitted + lost, requests, "{c:?}");
    // The ring held what fits in it (the producer never fills it whole):
    // the size asked for took effect.
    assert!(
        submitted <= capacity && 2 * submitted > capacity,
        "{submitted} events in a ring of {capacity} records"
    );
    // Nothing was lost on the userspace side.
    assert_eq!(delivered, submitted, "{c:?}");
    assert_eq!(c.events_dropped_in_queue, 0, "{c:?}");
    assert_eq!(events.len() as u64, submitted);
    assert!(events.iter().all(|e| e.conn == fs.conn));
    // Each event is one of the requests counted.
    let mut per_op: BTreeMap<u32, u64> = BTreeMap::new();
    for e in &events {
        *per_op.entry(e.opcode).or_default() += 1;
    }
    for (op, n) in &per_op {
        let counted =
            totals_after.get(op).map_or(0, |t| t.0) - totals_before.get(op).map_or(0, |t| t.0);
        assert!(*n <= counted, "opcode {op}: {n} events, {counted} requests");
    }
}

#[test]
fn blocked_request_shows_as_in_flight() {
    if !require_privileges("blocked_request_shows_as_in_flight") {
        return;
    }
    const DELAY: Duration = Duration::from_millis(1500);
    let mut probes = load_probes();
    let fs = MountedFs::mount(TestFsOptions {
        delays: vec![("slow".to_string(), DELAY)],
        ..Default::default()
    })
    .expect("mount");
    let _ = settle(&fs, &mut probes);
    // Nothing of ours is stuck before the call.
    let idle = probes.in_flight().expect("in flight");
    assert!(idle.iter().all(|f| f.conn != fs.conn), "{idle:?}");

    let path = fs.path("slow");
    let caller = std::thread::spawn(move || stat(&path));
    std::thread::sleep(Duration::from_millis(1100));
    let t = Instant::now();
    let in_flight = probes.in_flight().expect("in flight");
    eprintln!("reading the in-flight table: {:?}", t.elapsed());
    let ours: Vec<_> = in_flight.iter().filter(|f| f.conn == fs.conn).collect();
    assert_eq!(caller.join().expect("caller"), Ok(()));

    let lookup = ours
        .iter()
        .find(|f| f.opcode == opcode::LOOKUP)
        .unwrap_or_else(|| panic!("no LOOKUP in flight: {ours:?}"));
    assert_eq!(lookup.count, 1, "{ours:?}");
    assert!(
        lookup.oldest_age_ns >= 1_000_000_000 && lookup.oldest_age_ns < 10_000_000_000,
        "{lookup:?}"
    );
    assert_eq!(lookup.oldest_tgid, std::process::id(), "{lookup:?}");
    assert!(!lookup.oldest_comm.is_empty(), "{lookup:?}");

    // Once answered, nothing of ours is left in flight.
    let _ = settle(&fs, &mut probes);
    let after = probes.in_flight().expect("in flight");
    assert!(after.iter().all(|f| f.conn != fs.conn), "{after:?}");
}

#[test]
fn injected_latency_lands_in_its_sub_bucket() {
    if !require_privileges("injected_latency_lands_in_its_sub_bucket") {
        return;
    }
    // 24 ms is in native bucket -43, (22.1 ms, 24.1 ms]: a 9% bucket, not
    // the power of two around it ([16.8, 33.6) ms in ns, [15.6, 31.3) ms
    // in seconds).
    const DELAY: Duration = Duration::from_millis(24);
    let bucket = LatencyHistogram::bucket_of(DELAY.as_nanos() as u64);
    assert_eq!(LatencyHistogram::native_index(bucket), Some(-43));

    let mut probes = load_probes();
    let fs = MountedFs::mount(TestFsOptions {
        delays: vec![("slow".to_string(), DELAY)],
        ..Default::default()
    })
    .expect("mount");
    probes
        .set_event_filter(
            EventFilter::SlowerThan(Duration::from_millis(10)),
            Some(fs.conn),
        )
        .expect("event filter");
    let hist_of = |snap: &ProbeSnapshot, op: u32| {
        snap.ops
            .iter()
            .find(|o| o.conn == fs.conn && o.opcode == op)
            .map(|o| o.stats.hist.clone())
            .unwrap_or_default()
    };
    let before = settle(&fs, &mut probes);
    let fs_before = fs_counts(&fs);
    let _ = probes.take_events();

    const SLOW_STATS: u64 = 3;
    for _ in 0..SLOW_STATS {
        assert_eq!(stat(&fs.path("slow")), Ok(()));
        assert_eq!(stat(&fs.path("a")), Ok(()));
    }
    let after = settle(&fs, &mut probes);
    let by_fs = diff(&fs_counts(&fs), &fs_before);

    // Every request slower than 10 ms came through the event filter with
    // its exact duration; the histogram holds each of those in the bucket
    // of its duration, as the kernel computed it.
    let events: Vec<_> = probes
        .take_events()
        .into_iter()
        .filter(|e| e.conn == fs.conn)
        .collect();
    let ten_ms = LatencyHistogram::bucket_of(10_000_000);
    for op in [opcode::LOOKUP, opcode::GETATTR] {
        let (b, a) = (hist_of(&before, op), hist_of(&after, op));
        let delta: Vec<u64> = (0..a.buckets.len())
            .map(|i| a.buckets[i] - b.buckets[i])
            .collect();
        assert_eq!(
            delta.iter().sum::<u64>(),
            by_fs.get(&op).map_or(0, |c| c.0),
            "opcode {op}"
        );
        let mut from_events = vec![0u64; delta.len()];
        for e in events.iter().filter(|e| e.opcode == op) {
            from_events[LatencyHistogram::bucket_of(e.duration_ns())] += 1;
        }
        assert_eq!(
            delta[ten_ms + 1..],
            from_events[ten_ms + 1..],
            "opcode {op}: histogram vs event durations"
        );
    }
    let slow_lookups: Vec<_> = events
        .iter()
        .filter(|e| e.opcode == opcode::LOOKUP && e.duration_ns() >= DELAY.as_nanos() as u64)
        .collect();
    assert_eq!(
        slow_lookups.len() as u64,
        SLOW_STATS,
        "one slow lookup per stat of `slow`: {events:?}"
    );
    for e in &slow_lookups {
        assert_eq!(e.tgid, std::process::id());
        let b = LatencyHistogram::bucket_of(e.duration_ns());
        let (lo, hi) = (
            LatencyHistogram::bucket_lower(b),
            LatencyHistogram::bucket_upper(b),
        );
        assert!(lo <= e.duration_ns() && e.duration_ns() <= hi, "{e:?}");
        // A sub-bucket: about 9% wide.
        assert!((hi - lo) as f64 / lo as f64 <= 0.091, "{lo}..={hi}");
        if e.duration_ns() <= LatencyHistogram::bucket_upper(bucket) {
            assert_eq!(b, bucket);
        } else {
            eprintln!(
                "note: a slow lookup took {} ns, past its bucket (a loaded machine)",
                e.duration_ns()
            );
        }
    }
}

#[test]
fn percentiles_of_a_known_distribution_are_within_ten_percent() {
    if !require_privileges("percentiles_of_a_known_distribution_are_within_ten_percent") {
        return;
    }
    let mut probes = load_probes();
    let fs = MountedFs::mount(TestFsOptions {
        delays: vec![
            ("a".to_string(), Duration::from_millis(2)),
            ("b".to_string(), Duration::from_millis(4)),
            ("slow".to_string(), Duration::from_millis(8)),
        ],
        ..Default::default()
    })
    .expect("mount");
    probes
        .set_event_filter(EventFilter::All, Some(fs.conn))
        .expect("event filter");
    let lookups = |snap: &ProbeSnapshot| {
        snap.ops
            .iter()
            .find(|o| o.conn == fs.conn && o.opcode == opcode::LOOKUP)
            .map(|o| o.stats.clone())
            .unwrap_or_default()
    };
    settle(&fs, &mut probes);
    let before = lookups(&probes.snapshot().expect("snapshot"));
    let _ = probes.take_events();
    // 50 lookups of 2 ms, 40 of 4 ms, 10 of 8 ms: p50 2 ms, p90 4 ms,
    // p99 8 ms (plus each request's own cost).
    for (name, n) in [("a", 50), ("b", 40), ("slow", 10)] {
        for _ in 0..n {
            assert_eq!(stat(&fs.path(name)), Ok(()));
        }
    }
    let after = settle(&fs, &mut probes);
    let mut stats = lookups(&after);
    for (i, b) in stats.hist.buckets.iter_mut().enumerate() {
        *b -= before.hist.buckets[i];
    }
    let mut exact: Vec<u64> = probes
        .take_events()
        .into_iter()
        .filter(|e| e.conn == fs.conn && e.opcode == opcode::LOOKUP)
        .map(|e| e.duration_ns())
        .collect();
    exact.sort_unstable();
    assert_eq!(
        exact.len() as u64,
        stats.hist.count(),
        "every lookup seen once"
    );
    assert!(exact.len() >= 100, "{}", exact.len());
    for q in [0.5, 0.9, 0.99] {
        let rank = ((q * exact.len() as f64).ceil() as usize).max(1);
        let truth = exact[rank - 1] as f64;
        let est = stats.hist.quantile(q).expect("quantile") as f64;
        let off = (est - truth).abs() / truth;
        assert!(
            off < 0.10,
            "p{}: {est} ns vs {truth} ns ({off:.3})",
            q * 100.0
        );
    }
}

/// bpftrace counting `fuse_request_send` per opcode on one connection.
fn bpftrace_send_counter(conn: u32) -> String {
    format!(
        "BEGIN {{ printf(\"READY\\n\"); }}\n\
         tracepoint:fuse:fuse_request_send /args->connection == {conn}/ {{ @sends[args->opcode] = count(); }}\n"
    )
}

/// `@sends[OPCODE]: N` lines of bpftrace's map print.
fn parse_bpftrace_counts(out: &str) -> BTreeMap<u32, u64> {
    out.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("@sends[")?;
            let (op, n) = rest.split_once("]:")?;
            Some((op.trim().parse().ok()?, n.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn counts_match_bpftrace_on_a_bindfs_mount() {
    if !require_privileges("counts_match_bpftrace_on_a_bindfs_mount") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir(&src).expect("mkdir src");
    let bindfs = claudefs_e2e::Bindfs::start_with(
        &src,
        &mnt,
        &["-o", "entry_timeout=0,attr_timeout=0,negative_timeout=0"],
    )
    .expect("bindfs");
    let conn = claudefs_fuse::probes::dev::kernel_dev_of_path(&bindfs.dst).expect("conn");

    let mut probes = load_probes();
    let tracer = claudefs_e2e::Bpftrace::start(&bpftrace_send_counter(conn)).expect("bpftrace");
    let counts = |snap: &ProbeSnapshot| -> BTreeMap<u32, u64> {
        snap.ops
            .iter()
            .filter(|o| o.conn == conn)
            .map(|o| (o.opcode, o.stats.count))
            .collect()
    };
    probes.poll().expect("poll");
    let before = counts(&probes.snapshot().expect("snapshot"));

    // A mixed workload: creates, writes and fsyncs, reads, stats, a
    // directory listing, renames, links, unlinks, a flock.
    for i in 0..20 {
        let f = mnt.join(format!("f{i}"));
        std::fs::write(&f, vec![b'x'; 3000 + i]).expect("write");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .expect("open");
        file.sync_all().expect("fsync");
        // SAFETY: flock on a valid open fd.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        drop(file);
        let mut back = Vec::new();
        std::fs::File::open(&f)
            .and_then(|mut r| r.read_to_end(&mut back))
            .expect("read");
        assert_eq!(back.len(), 3000 + i);
        assert_eq!(stat(&f), Ok(()));
        assert_eq!(stat(&mnt.join("missing")), Err(libc::ENOENT));
    }
    assert_eq!(std::fs::read_dir(&mnt).expect("readdir").count(), 20);
    std::fs::create_dir(mnt.join("d")).expect("mkdir");
    for i in 0..20 {
        let f = mnt.join(format!("f{i}"));
        if i % 2 == 0 {
            std::fs::rename(&f, mnt.join("d").join(format!("g{i}"))).expect("rename");
        } else {
            std::fs::remove_file(&f).expect("unlink");
        }
    }
    for i in (0..20).step_by(2) {
        std::fs::remove_file(mnt.join("d").join(format!("g{i}"))).expect("unlink");
    }
    std::fs::remove_dir(mnt.join("d")).expect("rmdir");

    // Wait until our counts stop moving (RELEASE and FORGET come late).
    let mut last = BTreeMap::new();
    let mut stable = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stable < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        probes.poll().expect("poll");
        let now = counts(&probes.snapshot().expect("snapshot"));
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    let by_bpftrace = parse_bpftrace_counts(&tracer.stop());
    let ours: BTreeMap<u32, u64> = last
        .iter()
        .map(|(op, n)| (*op, n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(
        ours.len() >= 8 && ours.values().sum::<u64>() > 200,
        "the workload reached the file system: {ours:?}"
    );
    assert_eq!(ours, by_bpftrace, "ours vs bpftrace, per opcode");
}
