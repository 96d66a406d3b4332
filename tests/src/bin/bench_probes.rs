//! Overhead benchmark of the eBPF probes (root).
//!
//! 1. Per setup, two loops: FUSE metadata ops/s, a `stat(2)` loop on a
//!    file of the in-process test file system (entry and attribute TTL 0,
//!    so every stat is a LOOKUP and a GETATTR request); and a `getpid(2)`
//!    loop, which no probe should touch (a syscall tracepoint anywhere
//!    would put it, and every task of the host, on the slow syscall path).
//!    Setups: no probes; the floor (empty BTF programs on the two FUSE
//!    hooks: what any probe there costs, tracepoint dispatch included);
//!    our probes as `observe` loads them (BTF, FUSE + flock hooks), as the
//!    mount daemon's `--ebpf` loads them (FUSE only), on classic
//!    tracepoints (the fallback), with every request sent to the ring
//!    buffer; and an equivalent bpftrace script on the same hooks (FUSE
//!    latency into a per-(conn, opcode) histogram, kernel flock waits from
//!    filelock/flock_lock_inode). Runs are interleaved (the order rotates
//!    every round); the table shows medians, and as ratios against no
//!    probes the median of the per-round ratios (a slow phase of the VM
//!    then hits both sides of a ratio alike). With `--bpf-stats` the
//!    benchmark also turns on `kernel.bpf_stats_enabled` for its duration
//!    (restored afterwards) and reports the kernel's own measure of the
//!    average run time of each tool's programs.
//! 2. Ring-buffer drain: the stat loop runs with the event filter at All
//!    while userspace does not drain; then one `drain_events` call empties
//!    the full ring on one core and is timed (real kernel records, decode
//!    and queue included).
//!
//! Usage: `bench_probes [--fs testfs|bindfs] [--rounds N] [--secs S]
//! [--bpf-stats] [--only WORD,...]` (defaults testfs, 15 and 0.5; `--only`
//! keeps the setups whose label holds one of the words, plus no probes). With bindfs the CPU per op
//! includes the bindfs process's threads.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claudefs_e2e::testfs::{MountedFs, TestFsOptions};
use claudefs_e2e::Bpftrace;

/// The FUSE mount the stat loop runs on.
enum BenchFs {
    /// The in-process test fs (its daemon threads are in this process).
    Test(MountedFs),
    /// bindfs over a temp dir, run in the foreground as our child, with
    /// every cache timeout at 0.
    Bindfs {
        _dir: tempfile::TempDir,
        mountpoint: std::path::PathBuf,
        conn: u32,
        daemon: Child,
    },
}

impl BenchFs {
    fn mount(kind: &str) -> Result<BenchFs, String> {
        match kind {
            "testfs" => MountedFs::mount(TestFsOptions::default())
                .map(BenchFs::Test)
                .map_err(|e| format!("cannot mount the test file system: {e}")),
            "bindfs" => {
                let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
                for d in [&src, &mnt] {
                    std::fs::create_dir(d).map_err(|e| e.to_string())?;
                }
                std::fs::write(src.join("a"), b"a").map_err(|e| e.to_string())?;
                let before = claudefs_fuse::probes::dev::kernel_dev_of_path(&mnt)
                    .map_err(|e| e.to_string())?;
                let daemon = Command::new("bindfs")
                    .args([
                        "-f",
                        "-o",
                        "entry_timeout=0,attr_timeout=0,negative_timeout=0",
                    ])
                    .args([&src, &mnt])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot run bindfs: {e}"))?;
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let now =
                        claudefs_fuse::probes::dev::kernel_dev_of_path(&mnt).unwrap_or(before);
                    if now != before {
                        return Ok(BenchFs::Bindfs {
                            _dir: dir,
                            mountpoint: mnt,
                            conn: now,
                            daemon,
                        });
                    }
                    if Instant::now() > deadline {
                        return Err("bindfs did not mount within 10 s".to_string());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            other => Err(format!("unknown --fs {other} (testfs or bindfs)")),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        match self {
            BenchFs::Test(fs) => fs.path(name),
            BenchFs::Bindfs { mountpoint, .. } => mountpoint.join(name),
        }
    }

    fn conn(&self) -> u32 {
        match self {
            BenchFs::Test(fs) => fs.conn,
            BenchFs::Bindfs { conn, .. } => *conn,
        }
    }

    /// CPU time of an out-of-process daemon (all threads), in ns.
    fn daemon_cpu_ns(&self) -> u64 {
        match self {
            BenchFs::Test(_) => 0,
            BenchFs::Bindfs { daemon, .. } => task_cpu_ns(daemon.id()),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            BenchFs::Test(_) => "in-process test fs, TTL 0: LOOKUP + GETATTR per stat",
            BenchFs::Bindfs { .. } => "bindfs over a temp dir, all cache timeouts 0",
        }
    }
}

impl Drop for BenchFs {
    fn drop(&mut self) {
        if let BenchFs::Bindfs {
            mountpoint, daemon, ..
        } = self
        {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&*mountpoint)
                .status();
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

/// Sum of `sum_exec_runtime` (ns) over the threads of `pid`.
fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
use claudefs_fuse::probes::{EventFilter, ProbeOptions, ProbeSet, Probes};

const BPFTRACE_SCRIPT: &str = r#"
BEGIN { printf("READY\n"); }
tracepoint:fuse:fuse_request_send {
  @start[args->connection, args->unique] = nsecs;
  @opc[args->connection, args->unique] = args->opcode;
  @procs[args->connection, pid] = count();
}
tracepoint:fuse:fuse_request_end /@start[args->connection, args->unique]/ {
  $d = nsecs - @start[args->connection, args->unique];
  $op = @opc[args->connection, args->unique];
  @lat[args->connection, $op] = hist($d);
  @total[args->connection, $op] = sum($d);
  if (args->error != 0) { @err[args->connection, $op] = count(); }
  delete(@start[args->connection, args->unique]);
  delete(@opc[args->connection, args->unique]);
}
tracepoint:filelock:flock_lock_inode /args->ret == 1 && !@fl_start[tid]/ { @fl_start[tid] = nsecs; }
tracepoint:filelock:flock_lock_inode /args->ret != 1 && !(args->flags & 64)/ {
  $s = @fl_start[tid] ? @fl_start[tid] : nsecs;
  @flock_wait[args->s_dev, args->type] = hist(nsecs - $s);
  if (args->ret == -11) { @flock_refused[args->s_dev, args->type] = count(); }
  delete(@fl_start[tid]);
}
tracepoint:signal:signal_deliver /@fl_start[tid]/ { delete(@fl_start[tid]); }
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    None,
    Floor,
    Ours,
    OursFuseOnly,
    OursClassic,
    OursEvents,
    Bpftrace,
}

impl Setup {
    const ALL: [Setup; 7] = [
        Setup::None,
        Setup::Floor,
        Setup::Ours,
        Setup::OursFuseOnly,
        Setup::OursClassic,
        Setup::OursEvents,
        Setup::Bpftrace,
    ];

    fn label(self) -> &'static str {
        match self {
            Setup::None => "no probes",
            Setup::Floor => "floor: empty tp_btf, FUSE hooks",
            Setup::Ours => "claudefs probes (observe)",
            Setup::OursFuseOnly => "claudefs probes, FUSE only (daemon)",
            Setup::OursClassic => "claudefs probes, classic tracepoints",
            Setup::OursEvents => "claudefs probes + events(all)",
            Setup::Bpftrace => "bpftrace (same hooks, hist)",
        }
    }

    fn needs_bpftrace(self) -> bool {
        self == Setup::Bpftrace
    }
}

/// What is attached during one run; detached on drop.
enum Attached {
    Nothing,
    Ours(Box<Probes>),
    Bpftrace(Bpftrace),
}

fn attach(setup: Setup) -> Result<Attached, String> {
    let ours = |events, set, classic_only| {
        let opts = ProbeOptions {
            events,
            only_conn: None,
            set,
            classic_only,
        };
        Probes::load(&opts)
            .map(|p| Attached::Ours(Box::new(p)))
            .map_err(|e| e.to_string())
    };
    match setup {
        Setup::None => Ok(Attached::Nothing),
        Setup::Floor => ours(EventFilter::Off, ProbeSet::Floor, false),
        Setup::Ours => ours(EventFilter::Off, ProbeSet::All, false),
        Setup::OursFuseOnly => ours(EventFilter::Off, ProbeSet::Fuse, false),
        Setup::OursClassic => ours(EventFilter::Off, ProbeSet::All, true),
        Setup::OursEvents => ours(EventFilter::All, ProbeSet::All, false),
        Setup::Bpftrace => Bpftrace::start(BPFTRACE_SCRIPT)
            .map(Attached::Bpftrace)
            .map_err(|e| e.to_string()),
    }
}

/// CPU time (user + system) of this whole process, in ns: the stat loop,
/// the in-process FUSE daemon threads, the poll loop, and the eBPF
/// programs, which run in the context of the task that hits the
/// tracepoint (send: the stat thread, end: a daemon thread).
fn process_cpu_ns() -> u64 {
    // SAFETY: `ru` is plain data that getrusage fills.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// One run: wall-clock throughput, CPU cost per operation, the getpid
/// loop's rate, and (with `--bpf-stats`) the average run time of the
/// attached programs.
#[derive(Clone, Debug)]
struct Run {
    ops_per_sec: f64,
    cpu_ns_per_op: f64,
    getpid_per_sec: f64,
    bpf_ns_per_run: Option<f64>,
    /// Our programs only: (hook, ns per run) over this run (`--bpf-stats`).
    per_hook: Vec<(&'static str, f64)>,
}

/// getpid(2) calls per second over `secs`, on this thread.
fn getpid_rate(secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1000 {
            // SAFETY: getpid has no preconditions; the raw syscall, so the
            // C library cannot answer it from a cache.
            unsafe { libc::syscall(libc::SYS_getpid) };
        }
        n += 1000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Sum of (run_cnt, run_time_ns) over the BPF programs `pid` holds open
/// (`kernel.bpf_stats_enabled` must be on for the times to count).
fn bpf_prog_stats(pid: u32) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    let mut total = (0u64, 0u64);
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !text.contains("prog_type:") {
            continue;
        }
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.0 += get("run_cnt:");
        total.1 += get("run_time_ns:");
    }
    total
}

/// Turns `kernel.bpf_stats_enabled` on and restores it on drop.
struct BpfStats {
    previous: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The sysctl's value before the benchmark, for the signal handler.
static PREVIOUS_BPF_STATS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(b'0');
/// The benchmark turned the sysctl on.
static BPF_STATS_ON: AtomicBool = AtomicBool::new(false);
/// The benchmark's mount point, for the signal handler.
static MOUNT_POINT: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// SIGINT/SIGTERM: restore the sysctl, detach the mount (its daemon dies
/// with us), then exit. Async-signal-safe: atomic loads and the open,
/// write, close, umount2 and _exit syscalls only.
extern "C" fn cleanup_and_exit(_sig: libc::c_int) {
    // SAFETY: NUL-terminated paths and a 1-byte buffer that outlive the
    // calls; every call is async-signal-safe.
    unsafe {
        if BPF_STATS_ON.load(Ordering::Relaxed) {
            let byte = [PREVIOUS_BPF_STATS.load(Ordering::Relaxed)];
            let fd = libc::open(
                c"/proc/sys/kernel/bpf_stats_enabled".as_ptr(),
                libc::O_WRONLY,
            );
            if fd >= 0 {
                libc::write(fd, byte.as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        if let Some(mp) = MOUNT_POINT.get() {
            libc::umount2(mp.as_ptr(), libc::MNT_DETACH);
        }
        libc::_exit(130);
    }
}

fn install_cleanup(mountpoint: &std::path::Path) {
    if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
        let _ = MOUNT_POINT.set(c);
    }
    let handler = cleanup_and_exit as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installs a handler that only makes async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

impl BpfStats {
    fn enable() -> std::io::Result<BpfStats> {
        let previous = std::fs::read_to_string(BPF_STATS_SYSCTL)?;
        let first = previous.trim().bytes().next().unwrap_or(b'0');
        PREVIOUS_BPF_STATS.store(first, Ordering::Relaxed);
        std::fs::write(BPF_STATS_SYSCTL, "1")?;
        BPF_STATS_ON.store(true, Ordering::Relaxed);
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS_SYSCTL, self.previous.trim());
    }
}

/// Runs the stat loop for `secs` while polling the probes.
fn run_stat_loop(fs: &BenchFs, attached: &mut Attached, secs: f64) -> Run {
    let hook_stats = |a: &Attached| match a {
        Attached::Ours(p) => p.program_stats(),
        _ => Vec::new(),
    };
    let hooks_before = hook_stats(attached);
    let cpu_before = process_cpu_ns() + fs.daemon_cpu_ns();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let path = fs.path("a");
    let worker = {
        let (stop, ops) = (stop.clone(), ops.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if claudefs_e2e::stat(&path).is_ok() {
                    n += 1;
                }
            }
            ops.store(n, Ordering::Relaxed);
            start.elapsed()
        })
    };
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        if let Attached::Ours(p) = attached {
            let _ = p.poll();
            let _ = p.take_events();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = worker.join().unwrap_or(Duration::from_secs_f64(secs));
    let cpu = (process_cpu_ns() + fs.daemon_cpu_ns()).saturating_sub(cpu_before);
    let n = ops.load(Ordering::Relaxed).max(1) as f64;
    let holder = match attached {
        Attached::Nothing => None,
        Attached::Ours(_) => Some(std::process::id()),
        Attached::Bpftrace(b) => Some(b.id()),
    };
    let bpf_ns_per_run = holder.and_then(|pid| {
        let (cnt, ns) = bpf_prog_stats(pid);
        (cnt > 0 && ns > 0).then(|| ns as f64 / cnt as f64)
    });
    let per_hook = hook_stats(attached)
        .into_iter()
        .filter_map(|after| {
            let before = hooks_before.iter().find(|b| b.hook == after.hook)?;
            let runs = after.run_count.checked_sub(before.run_count)?;
            let ns = after.run_time_ns.checked_sub(before.run_time_ns)?;
            (runs > 0).then(|| (after.hook, ns as f64 / runs as f64))
        })
        .collect();
    Run {
        per_hook,
        ops_per_sec: n / elapsed.as_secs_f64(),
        cpu_ns_per_op: cpu as f64 / n,
        getpid_per_sec: getpid_rate(secs / 2.0),
        bpf_ns_per_run,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Fills the ring with real events (not draining), then times one drain.
fn drain_benchmark(fs: &BenchFs, fill_secs: f64) -> Result<(usize, Duration, u64), String> {
    let opts = ProbeOptions {
        events: EventFilter::All,
        only_conn: Some(fs.conn()),
        set: ProbeSet::All,
        classic_only: false,
    };
    let mut probes = Probes::load(&opts).map_err(|e| e.to_string())?;
    let mut nothing = Attached::Nothing;
    run_stat_loop(fs, &mut nothing, fill_secs);
    let t = Instant::now();
    let n = probes.drain_events();
    let elapsed = t.elapsed();
    let lost = probes.counters().map(|c| c.events_lost).unwrap_or(0);
    Ok((n, elapsed, lost))
}

fn arg(args: &[String], name: &str, default: f64) -> f64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rounds = arg(&args, "--rounds", 15.0).max(1.0) as usize;
    let secs = arg(&args, "--secs", 0.5).max(0.1);
    let want_bpf_stats = args.iter().any(|a| a == "--bpf-stats");
    if !claudefs_e2e::require_privileges("bench_probes") {
        return std::process::ExitCode::SUCCESS;
    }
    let fs_kind = args
        .windows(2)
        .find(|w| w[0] == "--fs")
        .map_or("testfs", |w| w[1].as_str());
    let fs = match BenchFs::mount(fs_kind) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    install_cleanup(&fs.path(""));
    let _bpf_stats = if want_bpf_stats {
        match BpfStats::enable() {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("cannot enable {BPF_STATS_SYSCTL}: {e}");
                None
            }
        }
    } else {
        None
    };
    let have_bpftrace = Command::new("bpftrace").arg("--version").output().is_ok();
    // `--only a,b`: setups whose label contains one of the words (no
    // probes always runs: it is the reference).
    let only: Vec<String> = args
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let setups: Vec<Setup> = Setup::ALL
        .into_iter()
        .filter(|s| !s.needs_bpftrace() || have_bpftrace)
        .filter(|s| {
            *s == Setup::None
                || only.is_empty()
                || only.iter().any(|o| s.label().contains(o.as_str()))
        })
        .collect();
    println!(
        "stat(2) loop on a FUSE mount ({}), {rounds} rounds x {secs} s per setup, interleaved",
        fs.describe()
    );
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); setups.len()];
    // Warm-up (page cache, dentries, CPU frequency).
    let _ = run_stat_loop(&fs, &mut Attached::Nothing, secs.max(1.0));
    // Every setup runs right next to a run without probes (in alternating
    // order), and its ratio is taken against that neighbour: the VM's
    // throughput drifts over seconds, far more than what is measured.
    let mut paired_none: Vec<Vec<Run>> = vec![Vec::new(); setups.len()];
    let steal_before = steal_share();
    for round in 0..rounds {
        for k in 1..setups.len() {
            let i = 1 + (k - 1 + round) % (setups.len() - 1);
            let order = if (round + k) % 2 == 0 { [0, i] } else { [i, 0] };
            for j in order {
                let mut attached = match attach(setups[j]) {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("{}: {e}", setups[j].label());
                        return std::process::ExitCode::FAILURE;
                    }
                };
                let r = run_stat_loop(&fs, &mut attached, secs);
                drop(attached);
                eprintln!(
                    "  round {round:>2} {:<36} {:>8.0} op/s {:>8.0} CPU ns/op{}",
                    setups[j].label(),
                    r.ops_per_sec,
                    r.cpu_ns_per_op,
                    r.bpf_ns_per_run
                        .map(|b| format!(" {b:>6.0} ns/BPF run"))
                        .unwrap_or_default()
                        + &r.per_hook
                            .iter()
                            .map(|(h, ns)| format!(" {h} {ns:.0}"))
                            .collect::<String>()
                );
                if j == 0 {
                    paired_none[i].push(r.clone());
                }
                results[j].push(r);
            }
        }
    }
    let steal = steal_share().zip(steal_before).map(|(a, b)| a.since(&b));
    print_table(&setups, &results, &paired_none);
    if let Some(steal) = steal {
        println!(
            "(CPU time the hypervisor took from this VM meanwhile: {:.1}%)",
            steal * 100.0
        );
    }
    if !have_bpftrace {
        println!("(bpftrace not installed: its rows are missing)");
    }

    match drain_benchmark(&fs, secs.max(1.0)) {
        Ok((n, elapsed, lost)) => {
            let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
            println!(
                "\nring-buffer drain (real kernel events, one thread, decode + queue included): \
                 {n} events in {:.2} ms = {:.2} M events/s{}",
                elapsed.as_secs_f64() * 1e3,
                rate / 1e6,
                if lost > 0 {
                    format!(" ({lost} lost to a full ring while filling)")
                } else {
                    String::new()
                }
            );
        }
        Err(e) => println!("\nring-buffer drain: {e}"),
    }
    std::process::ExitCode::SUCCESS
}

/// Steal and total jiffies of all CPUs so far (`/proc/stat`).
#[derive(Clone, Copy)]
struct CpuTimes {
    steal: u64,
    total: u64,
}

impl CpuTimes {
    /// The share of CPU time stolen between `earlier` and this reading.
    fn since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }
}

fn steal_share() -> Option<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    Some(CpuTimes {
        steal: *fields.get(7)?,
        total: fields.iter().take(8).sum(),
    })
}

fn print_table(setups: &[Setup], results: &[Vec<Run>], paired_none: &[Vec<Run>]) {
    // results[i][k] ran next to paired_none[i][k] (results[0]: every run
    // without probes).
    let ratios = |i: usize, f: fn(&Run) -> f64| -> Vec<f64> {
        if i == 0 {
            return vec![1.0; results[0].len()];
        }
        results[i]
            .iter()
            .zip(&paired_none[i])
            .map(|(a, none)| f(a) / f(none))
            .collect()
    };
    let ratio = |i: usize, f: fn(&Run) -> f64| median(&mut ratios(i, f));
    let med = |i: usize, f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = results[i].iter().map(f).collect();
        median(&mut v)
    };
    let pct = |r: f64| (r - 1.0) * 100.0;
    println!(
        "\n{:<38} {:>9} {:>8} {:>11} {:>8} {:>11} {:>8} {:>10}",
        "setup",
        "stat op/s",
        "vs none",
        "CPU ns/stat",
        "vs none",
        "getpid/s",
        "vs none",
        "BPF ns/run"
    );
    for (i, s) in setups.iter().enumerate() {
        let mut bpf: Vec<f64> = results[i].iter().filter_map(|r| r.bpf_ns_per_run).collect();
        println!(
            "{:<38} {:>9.0} {:>+7.2}% {:>11.0} {:>+7.2}% {:>11.0} {:>+7.2}% {:>10}",
            s.label(),
            med(i, |r| r.ops_per_sec),
            pct(ratio(i, |r| r.ops_per_sec)),
            med(i, |r| r.cpu_ns_per_op),
            pct(ratio(i, |r| r.cpu_ns_per_op)),
            med(i, |r| r.getpid_per_sec),
            pct(ratio(i, |r| r.getpid_per_sec)),
            if bpf.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", median(&mut bpf))
            }
        );
    }
    if let Some(floor) = setups.iter().position(|s| *s == Setup::Floor) {
        if let Some(ours) = setups.iter().position(|s| *s == Setup::Ours) {
            let (o, f) = (
                ratios(ours, |r| r.ops_per_sec),
                ratios(floor, |r| r.ops_per_sec),
            );
            let mut r: Vec<f64> = o.iter().zip(&f).map(|(o, f)| o / f).collect();
            println!(
                "claudefs probes vs the floor (stat op/s, median of per-round ratios): {:+.2}%",
                pct(median(&mut r))
            );
        }
    }
    println!(
        "(stat op/s: wall-clock throughput of one stat thread; CPU ns/stat: CPU of this \
         process and of the FUSE daemon's threads per stat, eBPF programs included; getpid/s: \
         a raw getpid(2) loop on one thread; \"vs none\": median of the per-round ratios to no \
         probes, each run against the run without probes next to it; BPF ns/run: the kernel's average run time of the attached programs, with \
         --bpf-stats)"
    );
}
