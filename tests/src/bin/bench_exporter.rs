//! Benchmark of the exporters: what a scrape of a busy daemon takes, and
//! what exporting costs the FUSE requests.
//!
//! Run (root, /dev/fuse, BPF):
//! `cargo xtask bench exporter`, or
//! `cargo build --release --bins && CLAUDEFS_FUSE_BIN=target/release/claudefs-fuse target/release/bench_exporter`
//! Env: `BENCH_ROUNDS` (default 11), `BENCH_SECS` (seconds per loop,
//! default 2), `BENCH_SCRAPES` (default 50), `BENCH_DIR` (parent of the
//! temp dir, default the system temp dir), `BENCH_EXPORT_ARGS` (the
//! exporting flags, to attribute the cost; `{metrics}` and `{sink}` stand
//! for the metrics address and the sink URL; needs `--metrics-addr`).
//!
//! 1. Scrape: a daemon mounted with `--metrics-addr ... --ebpf` while a
//!    metadata workload (create, stat, readdir, read, unlink, a failing
//!    lookup) runs in another thread; `BENCH_SCRAPES` timed
//!    `GET /metrics` (connect to last byte), 20 ms apart: median, p90,
//!    max, exposition size, and the daemon's own render time
//!    (`claudefs_fuse_scrape_duration_seconds`).
//! 2. Cost: single-threaded FUSE loops on a daemon without exporter
//!    ("off": plain `mount`), on one exporting metrics and spans
//!    ("export": `--metrics-addr --otlp-endpoint <local sink>
//!    --sample-rate 0.01 --slow-threshold 10ms`, or `BENCH_EXPORT_ARGS`),
//!    and on one that also loads the probes ("export+ebpf": the same plus
//!    `--ebpf`: kernel latency into the path EMAs, kernel parent spans,
//!    per-opcode kernel histograms); the exporting ones are scraped every
//!    second by a Prometheus-like client during their loops. Loops: stat
//!    with `AT_STATX_FORCE_SYNC` (one GETATTR per call: the attribute
//!    cache does not answer it) and open+close (OPEN, RELEASE). Each round
//!    mounts each setup afresh, alone (the probes are global tracepoints,
//!    so the others never run with them loaded), in an order that rotates
//!    every round; the table shows medians of ops/s and the cost: the
//!    median over rounds of 1 - setup/off within the round.
//!    The OTLP sink is an HTTP/protobuf receiver in this process
//!    (`POST /v1/traces` -> 200) that counts the spans it decodes.
//!
//! Mounts are guards: an error, a panic, SIGINT or SIGTERM (checked in the
//! loops) unmounts everything and removes the temp dir before exiting.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claudefs_e2e::exporter::{free_port, http_get, http_receiver, spans};
use claudefs_e2e::{fuse_bin, wait_until, MountGuard};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT/SIGTERM only set [`STOP`]; the loops then return an error so the
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

fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::Relaxed) {
        anyhow::bail!("interrupted: mounts cleaned up");
    }
    Ok(())
}

fn env_num<T: std::str::FromStr>(k: &str, default: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `op` for `secs` seconds (after a short warm-up): ops/s.
fn rate(secs: f64, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..200 {
        op()?;
    }
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..100 {
            op()?;
        }
        n += 100;
        let e = t.elapsed().as_secs_f64();
        if e >= secs {
            return Ok(n as f64 / e);
        }
        check_stop()?;
    }
}

/// (stat ops/s, open+close ops/s) in `dir`.
fn fuse_loops(dir: &Path, secs: f64) -> anyhow::Result<[f64; 2]> {
    fs::create_dir_all(dir)?;
    let f = dir.join("small");
    fs::write(&f, b"x")?;
    let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes())?;
    let stat = rate(secs, || Ok(claudefs_e2e::statx_sync(&c)?))?;
    let open = rate(secs, || {
        drop(fs::File::open(&f)?);
        Ok(())
    })?;
    Ok([stat, open])
}

/// A metadata workload in `dir` until `stop`.
fn metadata_workload(dir: PathBuf, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let _ = fs::create_dir_all(&dir);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let p = dir.join(format!("m{}", i % 64));
        let _ = fs::write(&p, b"data");
        let _ = fs::metadata(&p);
        let _ = fs::read(&p);
        let _ = claudefs_e2e::stat(&dir.join("missing"));
        if i.is_multiple_of(16) {
            let _ = fs::read_dir(&dir).map(|d| d.count());
        }
        if !i.is_multiple_of(2) {
            let _ = fs::remove_file(&p);
        }
        i += 1;
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

struct ScrapeResult {
    ms: Vec<f64>,
    render_ms: Vec<f64>,
    bytes: usize,
    series: usize,
    workload_ops: u64,
}

/// Part 1: `n` timed scrapes of a daemon under a metadata workload.
fn scrape_busy(tmp: &Path, n: usize) -> anyhow::Result<ScrapeResult> {
    let src = tmp.join("scrape-src");
    fs::create_dir_all(&src)?;
    let port = free_port();
    let m = MountGuard::start(
        &tmp.join("scrape-mnt"),
        &tmp.join("scrape-state"),
        &[
            "--path".into(),
            src.display().to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{port}"),
            "--ebpf".into(),
        ],
    )?;
    if !wait_until(Duration::from_secs(10), || {
        http_get(port, "/healthz").is_ok()
    }) {
        anyhow::bail!("no /healthz: {}", m.log_text());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let worker = {
        let (dir, stop, ops) = (m.mnt.join("meta"), stop.clone(), ops.clone());
        std::thread::spawn(move || metadata_workload(dir, stop, ops))
    };
    let result = (|| {
        // Let the workload fill every family first.
        std::thread::sleep(Duration::from_millis(500));
        let mut ms = Vec::with_capacity(n);
        let mut render_ms = Vec::with_capacity(n);
        let mut last = String::new();
        for _ in 0..n {
            check_stop()?;
            let t = Instant::now();
            last = http_get(port, "/metrics")?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            if let Some(s) = metric_value(&last, "claudefs_fuse_scrape_duration_seconds") {
                render_ms.push(s * 1e3);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let series = last
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        if !last.contains(
            "claudefs_fuse_probe_attached{program=\"fuse_request_send\",attach_type=\"tp_btf\"} 1",
        ) {
            anyhow::bail!("the probes are not attached:\n{}", m.log_text());
        }
        Ok::<_, anyhow::Error>((ms, render_ms, last.len(), series))
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let (ms, render_ms, bytes, series) = result?;
    Ok(ScrapeResult {
        ms,
        render_ms,
        bytes,
        series,
        workload_ops: ops.load(Ordering::Relaxed),
    })
}

/// A Prometheus-like client: `GET /metrics` every second until `stop`.
fn scraper(port: u16, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        if http_get(port, "/metrics").is_ok() {
            ok.fetch_add(1, Ordering::Relaxed);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn main() -> anyhow::Result<()> {
    if !fuse_bin().exists() {
        anyhow::bail!(
            "{} missing: cargo build --release -p claudefs-fuse",
            fuse_bin().display()
        );
    }
    let rounds: usize = env_num("BENCH_ROUNDS", 11).max(1);
    let secs: f64 = env_num("BENCH_SECS", 2.0);
    let n_scrapes: usize = env_num("BENCH_SCRAPES", 50).max(1);
    let parent = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    catch_signals();
    let tmp = tempfile::tempdir_in(parent)?;

    // 1. Scrape of a busy daemon.
    let mut sc = scrape_busy(tmp.path(), n_scrapes)?;
    sc.ms.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "scrapes: {:.2?} ms (workload did {} iterations)",
        sc.ms, sc.workload_ops
    );

    // 2. Cost of exporting.
    let (sink_port, got) = http_receiver()?;
    let src = tmp.path().join("src");
    fs::create_dir_all(&src)?;
    let off_args = vec!["--path".to_string(), src.display().to_string()];
    let export = std::env::var("BENCH_EXPORT_ARGS").unwrap_or_else(|_| {
        "--metrics-addr {metrics} --otlp-endpoint {sink} --otlp-protocol \
         http/protobuf --sample-rate 0.01 --slow-threshold 10ms"
            .to_string()
    });
    let export_flags: Vec<String> = export.split_whitespace().map(String::from).collect();
    let mut ebpf_flags = export_flags.clone();
    if !ebpf_flags.iter().any(|a| a == "--ebpf") {
        ebpf_flags.push("--ebpf".into());
    }
    let setups: [(&str, &[String]); 3] = [
        ("off", &[]),
        ("export", &export_flags),
        ("export+ebpf", &ebpf_flags),
    ];
    let mut results = vec![[Vec::new(), Vec::new()]; setups.len()];
    let mut scrapes_ok = 0;
    for round in 0..rounds {
        for k in 0..setups.len() {
            // Rotate the order so that no setup always runs first.
            let setup = (k + round) % setups.len();
            let (name, flags) = setups[setup];
            check_stop()?;
            let port = free_port();
            let mut args = off_args.clone();
            args.extend(flags.iter().map(|a| {
                a.replace("{metrics}", &format!("127.0.0.1:{port}"))
                    .replace("{sink}", &format!("http://127.0.0.1:{sink_port}"))
            }));
            let m = MountGuard::start(
                &tmp.path().join(format!("mnt-{setup}")),
                &tmp.path().join(format!("state-{setup}-{round}")),
                &args,
            )?;
            let stop = Arc::new(AtomicBool::new(false));
            let ok = Arc::new(AtomicU64::new(0));
            let scr = if args.iter().any(|a| a == "--metrics-addr") {
                let ebpf = args.iter().any(|a| a == "--ebpf");
                if !wait_until(Duration::from_secs(10), || {
                    http_get(port, "/metrics").is_ok_and(|t| {
                        !ebpf
                            || t.contains(
                                "claudefs_fuse_probe_attached{program=\"fuse_request_send\",attach_type=\"tp_btf\"} 1",
                            )
                    })
                }) {
                    anyhow::bail!("exporting daemon without probes: {}", m.log_text());
                }
                let (stop, ok) = (stop.clone(), ok.clone());
                Some(std::thread::spawn(move || scraper(port, stop, ok)))
            } else {
                None
            };
            let before = spans(&got).len();
            let r = fuse_loops(&m.mnt.join("d"), secs);
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = scr {
                let _ = t.join();
            }
            let r = r?;
            scrapes_ok += ok.load(Ordering::Relaxed);
            drop(m);
            let got_spans = spans(&got).len() - before;
            for (k, v) in r.iter().enumerate() {
                results[setup][k].push(*v);
            }
            eprintln!(
                "round {round} {name}: stat {:.0}/s, open+close {:.0}/s{}",
                r[0],
                r[1],
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(", {got_spans} spans received from this mount")
                }
            );
        }
    }
    // Give the sink a moment for the last batch.
    std::thread::sleep(Duration::from_secs(1));
    let total_spans = spans(&got).len();

    let ms = &sc.ms;
    let med_ms = ms[ms.len() / 2];
    let render = if sc.render_ms.is_empty() {
        f64::NAN
    } else {
        median(&mut sc.render_ms)
    };
    println!("\nscrape of a busy daemon (--metrics-addr --ebpf, metadata workload running)");
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>12} {:>8} {:>14}",
        "", "median", "p90", "max", "size", "series", "render median"
    );
    println!(
        "{:<28} {:>8.2} {:>8.2} {:>8.2} {:>10} B {:>8} {:>11.2} ms",
        format!("GET /metrics ms ({n_scrapes})"),
        med_ms,
        percentile(ms, 0.9),
        ms[ms.len() - 1],
        sc.bytes,
        sc.series,
        render
    );
    println!(
        "target: under 20 ms -> {}",
        if ms[ms.len() - 1] < 20.0 {
            "met (max)"
        } else if percentile(ms, 0.9) < 20.0 {
            "met (p90)"
        } else {
            "NOT met"
        }
    );

    println!(
        "\n{:<26} {:>12} {:>12} {:>8} {:>12} {:>8}",
        "FUSE ops/s (median)", "no exporter", "exporting", "cost", "+ --ebpf", "cost"
    );
    let mut worst: [f64; 2] = [0.0; 2];
    for (k, label) in ["stat (GETATTR) ops/s", "open+close ops/s"]
        .iter()
        .enumerate()
    {
        // The cost is the median of the per-round ratios: setups of one
        // round run back to back, so a slow phase of the machine hits them
        // alike and cancels out of their ratio.
        let cost = |setup: usize| {
            let mut r: Vec<f64> = results[setup][k]
                .iter()
                .zip(&results[0][k])
                .map(|(on, off)| 1.0 - on / off)
                .collect();
            median(&mut r)
        };
        let (c_on, c_ebpf) = (cost(1), cost(2));
        worst[0] = worst[0].max(c_on);
        worst[1] = worst[1].max(c_ebpf);
        println!(
            "{:<26} {:>12.0} {:>12.0} {:>7.1}% {:>12.0} {:>7.1}%",
            label,
            median(&mut results[0][k].clone()),
            median(&mut results[1][k].clone()),
            c_on * 100.0,
            median(&mut results[2][k].clone()),
            c_ebpf * 100.0
        );
    }
    println!(
        "({rounds} rounds of {secs} s per loop, setup order rotating, fresh mount per setup and round; \
         exporting = {}; {scrapes_ok} scrapes at 1/s; the local OTLP sink received {total_spans} spans)",
        export_flags.join(" ")
    );
    println!(
        "target: exporting costs under 2% -> {} (worst row {:.1}%); with --ebpf the probes' \
         own cost adds (see bench_probes): worst row {:.1}%",
        if worst[0] < 0.02 { "met" } else { "NOT met" },
        worst[0] * 100.0,
        worst[1] * 100.0
    );
    if total_spans == 0 && export_flags.iter().any(|a| a == "--otlp-endpoint") {
        anyhow::bail!("the OTLP sink received no spans");
    }
    Ok(())
}
