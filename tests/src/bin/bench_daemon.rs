//! Benchmark of `claudefs-fuse mount` against the directory itself,
//! bindfs, and (with `PASSTHROUGH_HP=/path/to/passthrough_hp`) libfuse's
//! passthrough_hp on `/dev/fuse` and with `-o io_uring`, all over the same
//! backing directory; claudefs on io_uring (its default queue policy and
//! `--queue-policy normal`), on `--transport dev`, and with
//! `--passthrough`. Every setup runs in its default configuration.
//!
//! Run (root, /dev/fuse, bindfs): `cargo xtask bench daemon`.
//! Env: `BENCH_ROUNDS` (default 5), `BENCH_MB` (default 64), `BENCH_DIR`
//! (parent of the temp dir, default the system temp dir), `BENCH_CFS_ARGS`
//! (extra `mount` flags for every claudefs setup), `PASSTHROUGH_HP`.
//!
//! Mounts are guards: an error, a panic, SIGINT or SIGTERM (checked between
//! runs) unmounts everything and removes the temp dir before exiting.
//!
//! Rows: stat (answered from the kernel's attribute cache almost always,
//! so it measures the kernel more than the file system), stat uncached
//! (`statx` with `AT_STATX_FORCE_SYNC`: every call reaches the file
//! system), open+close and create+unlink, each by 1 process and by 4 at
//! once (ops/s summed, each loop running for [`LOOP_FOR`]), unlink and
//! rename of fresh files while the kernel holds [`HELD`] inodes of the
//! mount (see [`held`]), sequential
//! write (1 MiB writes + fsync) and read (1 MiB reads after re-open) in
//! MB/s, and the read again after dropping the file's pages from the
//! kernel's cache (`POSIX_FADV_DONTNEED` on the file as the setup shows
//! it). Setups run interleaved, round after round, in a rotating order.
//! The tables show each setup's median, and as ratios the median of the
//! per-round ratios: a slow phase of the VM then hits both sides alike.
//! "best peer" is, per round, the fastest of bindfs and passthrough_hp on
//! either transport.
//!
//! A last table splits each metadata loop's CPU time per operation into
//! the loop's processes (the application and the kernel's FUSE client
//! working for it) and the daemon's process tree, in the kernel and in
//! user space (see `claudefs_e2e::cpu` and [`Cpu`]), and from it the
//! ratios of the targets as they would be with a daemon whose user space
//! took no time: how far a faster daemon could still move a row, as long
//! as the loop is bound by CPU.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use claudefs_e2e::cpu::{self, Who};
use claudefs_e2e::{fuse_bin, is_mounted, wait_until, Bindfs, MountGuard};

const METRICS: [&str; 12] = [
    "stat ops/s",
    "stat uncached, 1 proc",
    "stat uncached, 4 procs",
    "open+close, 1 proc",
    "open+close, 4 procs",
    "create+unlink, 1 proc",
    "create+unlink, 4 procs",
    "unlink, 10k held",
    "rename, 10k held",
    "seq write MB/s",
    "seq read MB/s",
    "seq read, dropped MB/s",
];

/// How long each metadata loop runs.
const LOOP_FOR: Duration = Duration::from_millis(500);

/// Processes of the "4 procs" rows.
const PROCS: usize = 4;

/// Files the kernel holds (looked up and cached) during the "held" rows.
const HELD: usize = 10_000;

/// Unlinks and renames timed in each "held" row.
const HELD_OPS: usize = 1_000;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT/SIGTERM only set [`STOP`]; the loop then returns an error so the
/// mount guards unmount on the way out.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs an async-signal-safe handler (one atomic store).
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// A metadata loop, run in this process or in a worker process.
#[derive(Clone, Copy)]
enum Loop {
    StatUncached,
    OpenClose,
    CreateUnlink,
}

impl Loop {
    fn name(self) -> &'static str {
        match self {
            Loop::StatUncached => "stat",
            Loop::OpenClose => "open",
            Loop::CreateUnlink => "create",
        }
    }

    fn from_name(s: &str) -> Option<Loop> {
        [Loop::StatUncached, Loop::OpenClose, Loop::CreateUnlink]
            .into_iter()
            .find(|l| l.name() == s)
    }

    /// Runs for [`LOOP_FOR`] on `dir` (worker `id` keeps its own names).
    fn run(self, dir: &Path, id: usize) -> anyhow::Result<Count> {
        let f = dir.join("small");
        let cf = std::ffi::CString::new(f.as_os_str().as_encoded_bytes())?;
        Ok(match self {
            Loop::StatUncached => ops_per_sec(|_| claudefs_e2e::statx_sync(&cf))?,
            Loop::OpenClose => ops_per_sec(|_| fs::File::open(&f).map(drop))?,
            Loop::CreateUnlink => ops_per_sec(|i| {
                let p = dir.join(format!("c{id}-{i}"));
                drop(fs::File::create(&p)?);
                fs::remove_file(&p)
            })?,
        })
    }

    /// [`PROCS`] worker processes at once; their counts summed.
    fn run_parallel(self, dir: &Path) -> anyhow::Result<Count> {
        let me = std::env::current_exe()?;
        let children: Vec<Child> = (0..PROCS)
            .map(|id| {
                Command::new(&me)
                    .args(["--worker", self.name()])
                    .arg(dir)
                    .arg(id.to_string())
                    .stdout(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        let mut total = Count {
            per_sec: 0.0,
            ops: 0,
        };
        for c in children {
            let out = c.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                anyhow::bail!("worker failed: {text}");
            }
            let mut words = text.split_whitespace();
            let (Some(rate), Some(ops)) = (words.next(), words.next()) else {
                anyhow::bail!("worker said {text:?}, not \"OPS_PER_SEC OPS\"");
            };
            total.per_sec += rate.parse::<f64>()?;
            total.ops += ops.parse::<u64>()?;
        }
        Ok(total)
    }
}

/// What a loop did: ops/s, and how many operations.
struct Count {
    per_sec: f64,
    ops: u64,
}

/// Runs `op(i)` for i = 0, 1, ... for [`LOOP_FOR`].
fn ops_per_sec(mut op: impl FnMut(u64) -> std::io::Result<()>) -> std::io::Result<Count> {
    let t = Instant::now();
    let mut i = 0;
    loop {
        for _ in 0..64 {
            op(i)?;
            i += 1;
        }
        let el = t.elapsed();
        if el >= LOOP_FOR {
            return Ok(Count {
                per_sec: i as f64 / el.as_secs_f64(),
                ops: i,
            });
        }
    }
}

/// One setup's round: every metric, and the CPU per operation of the
/// metadata loops (see [`Cpu`]).
fn bench(
    dir: &Path,
    daemon: &[u32],
    mb: usize,
) -> anyhow::Result<([f64; METRICS.len()], [Cpu; LOOPS])> {
    fs::create_dir_all(dir)?;
    let f = dir.join("small");
    fs::write(&f, b"x")?;
    let stat = ops_per_sec(|_| fs::metadata(&f).map(drop))?.per_sec;
    let daemon = cpu::tree(daemon);
    let mut loops = [0.0; LOOPS];
    let mut cpus = [Cpu::default(); LOOPS];
    for (k, l) in [Loop::StatUncached, Loop::OpenClose, Loop::CreateUnlink]
        .into_iter()
        .enumerate()
    {
        for (j, who) in [Who::Me, Who::Children].into_iter().enumerate() {
            let (app0, daemon0) = (cpu::used_ns(who), cpu::run_ns(&daemon));
            let ticks0 = cpu::ticks(&daemon);
            let c = match who {
                Who::Me => l.run(dir, 0)?,
                Who::Children => l.run_parallel(dir)?,
            };
            let (app1, daemon1) = (cpu::used_ns(who), cpu::run_ns(&daemon));
            let ticks1 = cpu::ticks(&daemon);
            let per_op = |ns: u64| ns as f64 / 1000.0 / c.ops.max(1) as f64;
            loops[2 * k + j] = c.per_sec;
            cpus[2 * k + j] = Cpu {
                app_us: per_op(app1.saturating_sub(app0)),
                daemon_us: per_op(daemon1.saturating_sub(daemon0)),
                user_ticks: ticks1.0.saturating_sub(ticks0.0),
                system_ticks: ticks1.1.saturating_sub(ticks0.1),
            };
        }
    }
    let (unlink, rename) = held(dir)?;
    let big = dir.join("big");
    let buf = vec![0x5au8; 1 << 20];
    // Start the timed write with nothing else to write back (the loops
    // above and the previous setup leave dirty data behind).
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let t = Instant::now();
    let mut w = fs::File::create(&big)?;
    for _ in 0..mb {
        w.write_all(&buf)?;
    }
    w.sync_all()?;
    drop(w);
    let write = mb as f64 / t.elapsed().as_secs_f64();
    let mut rbuf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut r = fs::File::open(&big)?;
    let mut total = 0;
    loop {
        let k = r.read(&mut rbuf)?;
        if k == 0 {
            break;
        }
        total += k;
    }
    let read = (total >> 20) as f64 / t.elapsed().as_secs_f64();
    let dropped = read_dropped(&big, &mut rbuf)?;
    fs::remove_file(&big)?;
    let [a, b, c, d, e, g] = loops;
    Ok((
        [stat, a, b, c, d, e, g, unlink, rename, write, read, dropped],
        cpus,
    ))
}

/// The metadata loops: METRICS[1..=LOOPS].
const LOOPS: usize = 6;

/// CPU time per operation of a metadata loop, us: the loop's processes
/// (the application and the kernel working for it) and the daemon's
/// process tree, with the daemon's user and system ticks (their sum over
/// the rounds splits `daemon_us` into user space and kernel). The kernel
/// part is mostly the protocol's (taking the request, the answer's copy,
/// the switches to and from the daemon), the user part the daemon's own
/// work. When the round trip is bound by CPU (one process: the two sides
/// take turns on one CPU; four: both CPUs busy), a daemon whose user
/// space took no time would make the loop at most (app + daemon) / (app
/// + daemon's kernel part) times faster.
#[derive(Clone, Copy, Default)]
struct Cpu {
    app_us: f64,
    daemon_us: f64,
    user_ticks: u64,
    system_ticks: u64,
}

/// Lifts the RLIMIT_NOFILE hard limit for the daemons this process
/// starts, where it may (CAP_SYS_RESOURCE): passthrough_hp keeps an fd
/// open per inode the kernel holds, and both it and claudefs raise their
/// soft limit to the hard one, so the hard limit bounds the [`HELD`]
/// rows. Without the capability (a container: 20000 here) it stays, which
/// is why [`HELD`] stays well below 20000.
fn raise_nofile() {
    let want: libc::rlim_t = 1 << 20;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_max < want {
            lim.rlim_max = want;
            // Refused without CAP_SYS_RESOURCE: the limit stays.
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Unlinks and renames (ops/s) of [`HELD_OPS`] fresh files while the
/// kernel holds [`HELD`] other inodes of the mount (all of `dir/held`,
/// made on the first round and looked up again each round): an unlink or
/// rename whose cost grows with the inodes held shows here.
fn held(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let held = dir.join("held");
    fs::create_dir_all(&held)?;
    for i in 0..HELD {
        let f = held.join(format!("h{i}"));
        if fs::symlink_metadata(&f).is_err() {
            fs::write(&f, b"")?;
        }
    }
    let work = dir.join("moves");
    fs::create_dir_all(&work)?;
    let names = |tag: &str| -> Vec<PathBuf> {
        (0..HELD_OPS)
            .map(|i| work.join(format!("{tag}{i}")))
            .collect()
    };
    let (a, b) = (names("a"), names("b"));
    let timed = |op: &dyn Fn(usize) -> std::io::Result<()>| -> std::io::Result<f64> {
        let t = Instant::now();
        for i in 0..HELD_OPS {
            op(i)?;
        }
        Ok(HELD_OPS as f64 / t.elapsed().as_secs_f64())
    };
    for f in &a {
        fs::write(f, b"")?;
    }
    let unlink = timed(&|i| fs::remove_file(&a[i]))?;
    for f in &a {
        fs::write(f, b"")?;
    }
    let rename = timed(&|i| fs::rename(&a[i], &b[i]))?;
    for f in &b {
        fs::remove_file(f)?;
    }
    Ok((unlink, rename))
}

/// Drops `path`'s cached pages, then reads it through in 1 MiB reads
/// (MB/s).
fn read_dropped(path: &Path, buf: &mut [u8]) -> std::io::Result<f64> {
    use std::os::fd::AsRawFd;
    let mut r = fs::File::open(path)?;
    // SAFETY: fadvise on an open fd, whole file.
    let e = unsafe { libc::posix_fadvise(r.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if e != 0 {
        return Err(std::io::Error::from_raw_os_error(e));
    }
    let t = Instant::now();
    let mut total = 0;
    loop {
        let k = r.read(buf)?;
        if k == 0 {
            break;
        }
        total += k;
    }
    Ok((total >> 20) as f64 / t.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// libfuse's passthrough_hp serving `src` at `mnt`, in the foreground as
/// our child; unmounted and stopped on drop.
struct PassthroughHp {
    mnt: PathBuf,
    child: Child,
}

impl PassthroughHp {
    /// With `uring`, FUSE over io_uring is switched on first (libfuse
    /// falls back to `/dev/fuse` in silence when the module's
    /// `enable_uring` is off), and the mount must show io_uring rings.
    fn start(bin: &Path, src: &Path, mnt: &Path, uring: bool) -> anyhow::Result<Self> {
        fs::create_dir_all(mnt)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--foreground");
        if uring {
            if !claudefs_fuse::session::uring::enable() {
                anyhow::bail!(
                    "cannot switch on FUSE over io_uring (/sys/module/fuse/parameters/enable_uring)"
                );
            }
            cmd.args(["-o", "io_uring"]);
        }
        let child = cmd
            .arg(src)
            .arg(mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", bin.display()))?;
        let hp = PassthroughHp {
            mnt: mnt.to_path_buf(),
            child,
        };
        if !wait_until(Duration::from_secs(10), || is_mounted(mnt)) {
            anyhow::bail!("passthrough_hp did not mount {}", mnt.display());
        }
        if uring && !wait_until(Duration::from_secs(5), || io_uring_fds(hp.child.id()) > 0) {
            anyhow::bail!("passthrough_hp -o io_uring runs without an io_uring ring");
        }
        Ok(hp)
    }
}

/// How many io_uring instances process `pid` holds open.
fn io_uring_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t.as_os_str() == "anon_inode:[io_uring]")
                .count()
        })
        .unwrap_or(0)
}

impl Drop for PassthroughHp {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        claudefs_e2e::terminate(&mut self.child, Duration::from_secs(3));
    }
}

/// A setup: its name, the directory the loops run in, and what keeps its
/// mount alive.
struct Setup {
    name: &'static str,
    dir: PathBuf,
    /// The daemon's process (its descendants count too), if any.
    daemon: Vec<u32>,
    _mount: Box<dyn std::any::Any>,
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, kind, dir, id] = args.as_slice() {
        if flag == "--worker" {
            let l = Loop::from_name(kind).ok_or_else(|| anyhow::anyhow!("no loop {kind}"))?;
            let c = l.run(Path::new(dir), id.parse()?)?;
            println!("{} {}", c.per_sec, c.ops);
            return Ok(());
        }
    }
    if !fuse_bin().exists() {
        anyhow::bail!(
            "{} missing: cargo build --release -p claudefs-fuse",
            fuse_bin().display()
        );
    }
    let rounds = env_num("BENCH_ROUNDS", 5);
    let mb = env_num("BENCH_MB", 64);
    let parent = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let extra: Vec<String> = std::env::var("BENCH_CFS_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let hp_bin = std::env::var_os("PASSTHROUGH_HP").map(PathBuf::from);
    catch_signals();
    raise_nofile();
    let tmp = tempfile::tempdir_in(parent)?;
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared)?;

    let mut setups = vec![Setup {
        name: "native",
        dir: shared.join("b-native"),
        daemon: Vec::new(),
        _mount: Box::new(()),
    }];
    let bind = Bindfs::start(&shared, &tmp.path().join("bindfs"))?;
    setups.push(Setup {
        name: "bindfs",
        dir: bind.dst.join("b-bindfs"),
        daemon: bind.pid().into_iter().collect(),
        _mount: Box::new(bind),
    });
    if let Some(bin) = &hp_bin {
        for (name, uring) in [("pt_hp", false), ("pt_hp uring", true)] {
            let mnt = tmp.path().join(name.replace(' ', "-"));
            let hp = PassthroughHp::start(bin, &shared, &mnt, uring)?;
            setups.push(Setup {
                name,
                dir: mnt.join(format!("b-{}", name.replace(' ', "-"))),
                daemon: vec![hp.child.id()],
                _mount: Box::new(hp),
            });
        }
    }
    let cfs = |name: &'static str, flags: &[&str], setups: &mut Vec<Setup>| {
        let mut a = vec!["--path".to_string(), shared.display().to_string()];
        a.extend(flags.iter().map(|s| s.to_string()));
        a.extend(extra.iter().cloned());
        let tag = name.replace([' ', '+'], "-");
        let m = MountGuard::start(
            &tmp.path().join(format!("m-{tag}")),
            &tmp.path().join(format!("st-{tag}")),
            &a,
        )?;
        let transport = m.status()?["transport"].as_str().unwrap_or("?").to_string();
        eprintln!("{name}: transport {transport}");
        setups.push(Setup {
            name,
            dir: m.mnt.join(format!("b-{tag}")),
            daemon: vec![m.keeper_pid()],
            _mount: Box::new(m),
        });
        anyhow::Ok(())
    };
    cfs("claudefs uring", &["--transport", "uring"], &mut setups)?;
    cfs(
        "uring normal",
        &["--transport", "uring", "--queue-policy", "normal"],
        &mut setups,
    )?;
    cfs("claudefs dev", &["--transport", "dev"], &mut setups)?;
    cfs("claudefs+pt", &["--passthrough"], &mut setups)?;

    let n = setups.len();
    let mut results = vec![vec![Vec::new(); METRICS.len()]; n];
    let mut cpu_results = vec![vec![Vec::new(); LOOPS]; n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            if STOP.load(Ordering::Relaxed) {
                anyhow::bail!("interrupted: mounts cleaned up");
            }
            let (r, cpus) = bench(&setups[i].dir, &setups[i].daemon, mb)?;
            for (m, v) in r.iter().enumerate() {
                results[i][m].push(*v);
            }
            for (m, c) in cpus.into_iter().enumerate() {
                cpu_results[i][m].push(c);
            }
            eprintln!("round {round} {}: {r:.0?}", setups[i].name);
        }
    }

    let idx = |name: &str| setups.iter().position(|s| s.name == name);
    let med = |i: usize, m: usize| median(&mut results[i][m].clone());
    // Per round: a / max(b...); the median over rounds.
    let ratio = |a: usize, b: &[usize], m: usize| {
        let mut r: Vec<f64> = (0..rounds)
            .map(|n| {
                let best = b.iter().map(|&j| results[j][m][n]).fold(0.0, f64::max);
                results[a][m][n] / best
            })
            .collect();
        median(&mut r)
    };
    print!("\n{:<24}", "median");
    for s in &setups {
        print!(" {:>14}", s.name);
    }
    println!();
    for (m, name) in METRICS.iter().enumerate() {
        print!("{name:<24}");
        for i in 0..n {
            print!(" {:>14.0}", med(i, m));
        }
        println!();
    }

    let (uring, dev) = (idx("claudefs uring"), idx("claudefs dev"));
    let peers: Vec<usize> = ["bindfs", "pt_hp", "pt_hp uring"]
        .iter()
        .filter_map(|p| idx(p))
        .collect();
    let mut comparisons: Vec<(String, usize, Vec<usize>)> = Vec::new();
    if let (Some(d), Some(h)) = (dev, idx("pt_hp")) {
        comparisons.push(("dev / pt_hp".into(), d, vec![h]));
    }
    if let Some(u) = uring {
        comparisons.push(("uring / best peer".into(), u, peers.clone()));
        if let Some(h) = idx("pt_hp uring") {
            comparisons.push(("uring / pt_hp uring".into(), u, vec![h]));
        }
        if let Some(n) = idx("uring normal") {
            comparisons.push(("uring idle / normal".into(), u, vec![n]));
        }
    }
    if let (Some(d), Some(b)) = (dev, idx("bindfs")) {
        comparisons.push(("dev / bindfs".into(), d, vec![b]));
    }
    print!("\n{:<24}", "ratio (median of rounds)");
    for (label, _, _) in &comparisons {
        print!(" {label:>20}");
    }
    println!();
    for (m, name) in METRICS.iter().enumerate() {
        print!("{name:<24}");
        for (_, a, b) in &comparisons {
            print!(" {:>20.2}", ratio(*a, b, m));
        }
        println!();
    }

    // CPU per operation of the metadata loops (see `Cpu`), and the ratios
    // of the targets with a daemon whose user space took no time.
    let user_share = |i: usize, m: usize| {
        let (u, s) = cpu_results[i][m]
            .iter()
            .fold((0, 0), |(u, s), c| (u + c.user_ticks, s + c.system_ticks));
        if u + s == 0 {
            0.0
        } else {
            u as f64 / (u + s) as f64
        }
    };
    print!("\n{:<24}", "CPU/op us: app+sys+user");
    for s in &setups {
        print!(" {:>17}", s.name);
    }
    println!();
    for (m, name) in METRICS[1..=LOOPS].iter().enumerate() {
        print!("{name:<24}");
        for (i, per_round) in cpu_results.iter().enumerate() {
            let mut app: Vec<f64> = per_round[m].iter().map(|c| c.app_us).collect();
            let mut daemon: Vec<f64> = per_round[m].iter().map(|c| c.daemon_us).collect();
            let (app, daemon, share) = (median(&mut app), median(&mut daemon), user_share(i, m));
            let cell = format!(
                "{app:.1}+{:.1}+{:.1}",
                daemon * (1.0 - share),
                daemon * share
            );
            print!(" {cell:>17}");
        }
        println!();
    }
    let ceiling = |a: usize, b: &[usize], m: usize| {
        let share = user_share(a, m - 1);
        let mut r: Vec<f64> = (0..rounds)
            .map(|n| {
                let best = b.iter().map(|&j| results[j][m][n]).fold(0.0, f64::max);
                let c = cpu_results[a][m - 1][n];
                let floor = c.app_us + c.daemon_us * (1.0 - share);
                let scale = if floor > 0.0 {
                    (c.app_us + c.daemon_us) / floor
                } else {
                    1.0
                };
                results[a][m][n] * scale / best
            })
            .collect();
        median(&mut r)
    };
    let targets: Vec<&(String, usize, Vec<usize>)> = comparisons
        .iter()
        .filter(|(label, _, _)| label == "dev / pt_hp" || label == "uring / best peer")
        .collect();
    if !targets.is_empty() {
        print!("\n{:<24}", "ratio, 0 us user space");
        for (label, _, _) in &targets {
            print!(" {label:>20}");
        }
        println!();
        for (m, name) in METRICS.iter().enumerate().take(LOOPS + 1).skip(1) {
            print!("{name:<24}");
            for (_, a, b) in &targets {
                print!(" {:>20.2}", ceiling(*a, b, m));
            }
            println!();
        }
    }
    println!(
        "({rounds} interleaved rounds, {mb} MiB sequential files; best peer = fastest of {} per round; \
         claudefs flags: {}{})",
        peers
            .iter()
            .map(|&i| setups[i].name)
            .collect::<Vec<_>>()
            .join(", "),
        if extra.is_empty() {
            "defaults".to_string()
        } else {
            extra.join(" ")
        },
        if hp_bin.is_none() {
            "; set PASSTHROUGH_HP=/path/to/passthrough_hp for the libfuse rows"
        } else {
            ""
        }
    );
    Ok(())
}
