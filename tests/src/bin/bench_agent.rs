//! What the node agent (`claudefs-fuse observe`) costs a busy host: its
//! memory (VmRSS, and VmHWM, the peak) and its CPU seconds per 1M FUSE
//! requests, and what one host puts into Prometheus (series per scrape,
//! scrape size in both formats). The numbers sized the DaemonSet's
//! requests and limits (`deploy/kubernetes/observe-daemonset.yaml`).
//!
//! Run (root, /dev/fuse, BPF): `cargo xtask bench agent`, or
//! `cargo build --release --bins && CLAUDEFS_FUSE_BIN=target/release/claudefs-fuse target/release/bench_agent`.
//! Env: `BENCH_REQUESTS` (FUSE requests to drive, default 1000000),
//! `BENCH_THREADS` (workload threads, default 2), `BENCH_SCRAPE_S`
//! (seconds between scrapes while it runs, default 1: a busier scraper
//! than a real one at 15-30 s).
//!
//! The workload runs against a bindfs mount (any FUSE file system is
//! observed alike): per thread, a loop of open+read+close of one of 64
//! files and a stat with `AT_STATX_FORCE_SYNC` (GETATTR every time), until
//! observe's own `claudefs_fuse_requests_total` of that mount reaches
//! `BENCH_REQUESTS` more than before. CPU is utime+stime of observe from
//! `/proc/PID/stat` before and after, per 1M of those requests.

use std::ffi::CString;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claudefs_e2e::exporter::{http_get, Observe};
use claudefs_e2e::{statx_sync, Bindfs};

/// What a Prometheus that ingests native histograms asks for.
const PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (utime + stime in seconds, VmRSS KiB, VmHWM KiB) of a process.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmRSS:"), kib("VmHWM:"))
}

/// Sum of `claudefs_fuse_requests_total` of `mount` in a text scrape.
fn requests(text: &str, mount: &str) -> f64 {
    let sel = format!("claudefs_fuse_requests_total{{mount=\"{mount}\"");
    text.lines()
        .filter(|l| l.starts_with(&sel))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

fn main() -> anyhow::Result<()> {
    let want = env_num("BENCH_REQUESTS", 1_000_000) as f64;
    let threads = env_num("BENCH_THREADS", 2);
    let scrape_every = Duration::from_secs(env_num("BENCH_SCRAPE_S", 1));
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    fs::create_dir(&src)?;
    for i in 0..64 {
        fs::write(src.join(format!("f{i}")), vec![b'x'; 4096])?;
    }
    let bind = Bindfs::start(&src, &tmp.path().join("bind"))?;
    let mount = bind.dst.canonicalize()?.display().to_string();
    let obs = Observe::start(&[])?;
    let pid = obs.pid();
    std::thread::sleep(Duration::from_secs(1));
    let (idle_cpu, idle_rss, _) = usage(pid);
    let idle_text = http_get(obs.port, "/metrics")?;
    let base = requests(&idle_text, &mount);

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let stop = stop.clone();
            let dir = bind.dst.clone();
            std::thread::spawn(move || {
                let mut i = t as usize;
                while !stop.load(Ordering::Relaxed) {
                    let p = dir.join(format!("f{}", i % 64));
                    let _ = fs::read(&p);
                    if let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) {
                        let _ = statx_sync(&c);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let (cpu0, _, _) = usage(pid);
    let mut last = idle_text;
    let mut peak_rss = idle_rss;
    loop {
        std::thread::sleep(scrape_every);
        last = http_get(obs.port, "/metrics").unwrap_or(last);
        peak_rss = peak_rss.max(usage(pid).1);
        if requests(&last, &mount) - base >= want || t0.elapsed() > Duration::from_secs(900) {
            break;
        }
    }
    let (cpu1, rss, hwm) = usage(pid);
    let done = requests(&last, &mount) - base;
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let proto = claudefs_testkit::get_with(
        obs.port,
        "/metrics",
        &[("Accept", PROTOBUF)],
        Duration::from_secs(10),
    )?;
    let proto_families = claudefs_fuse::exporter::proto::decode(&proto.body)?.len();
    println!("observe, bindfs mount, {threads} workload threads:");
    println!(
        "  FUSE requests      {done:.0} in {secs:.1}s ({:.0}/s)",
        done / secs
    );
    println!(
        "  CPU                {:.2}s user+sys = {:.2} CPU-seconds per 1M FUSE requests ({:.1}% of one CPU)",
        cpu1 - cpu0,
        (cpu1 - cpu0) / done * 1e6,
        (cpu1 - cpu0) / secs * 100.0
    );
    println!("  idle CPU before    {idle_cpu:.2}s since start (probe load, BTF parsing)");
    println!(
        "  RSS                idle {} KiB, busy {} KiB (max sampled {peak_rss} KiB), VmHWM {hwm} KiB",
        idle_rss, rss
    );
    println!(
        "  scrape             {} series, text {} bytes, protobuf {} bytes ({proto_families} families; one mount, {} opcodes)",
        series(&last),
        last.len(),
        proto.body.len(),
        last.lines()
            .filter(|l| l.starts_with("claudefs_fuse_requests_total{"))
            .count()
    );
    Ok(())
}
