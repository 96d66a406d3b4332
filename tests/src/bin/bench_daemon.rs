//! Benchmark of `claudefs-fuse mount` against bindfs over the same
//! directory and against the directory itself, with and without
//! `--passthrough`, on the default transport (io_uring where available)
//! and on `--transport dev`.
//!
//! Run (root, /dev/fuse, bindfs):
//! `cargo build --release -p claudefs-fuse && cargo run --release -p claudefs-e2e --bin bench_daemon`
//! Env: `BENCH_ROUNDS` (default 5), `BENCH_MB` (default 256), `BENCH_DIR`
//! (parent of the temp dir, default the system temp dir), `BENCH_CFS_ARGS`
//! (extra `mount` flags for both claudefs setups, e.g. `--threads 4`).
//!
//! Mounts are guards: an error, a panic, SIGINT or SIGTERM (checked between
//! runs) unmounts everything and removes the temp dir before exiting.
//!
//! Rows: stat (answered from the kernel's attribute cache almost always,
//! so it measures the kernel more than the file system), stat uncached
//! (`statx` with `AT_STATX_FORCE_SYNC`: every call reaches the file system),
//! open/close and create/unlink loops (ops/s, each run for
//! [`LOOP_FOR`]), sequential write (1 MiB writes + fsync) and read (1 MiB
//! reads after re-open) in MB/s, and the read again after dropping the
//! file's pages from the kernel's cache (`POSIX_FADV_DONTNEED` on the
//! file as the setup shows it: for the FUSE mounts the read then goes
//! through the file system to the storage's cached pages, for the native
//! directory to the disk). Setups run interleaved, round after round,
//! in a rotating order. The table shows each setup's median, and as ratios
//! (claudefs/bindfs, claudefs/native, ...) the median of the per-round
//! ratios: a slow phase of the VM then hits both sides of a ratio alike.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use claudefs_e2e::{fuse_bin, Bindfs, MountGuard};

const METRICS: [&str; 7] = [
    "stat ops/s",
    "stat uncached ops/s",
    "open+close ops/s",
    "create+unlink ops/s",
    "seq write MB/s",
    "seq read MB/s",
    "seq read, dropped MB/s",
];

/// How long each metadata loop runs.
const LOOP_FOR: Duration = Duration::from_millis(400);

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

/// Runs `op(i)` for i = 0, 1, ... for [`LOOP_FOR`]; returns ops/s.
fn ops_per_sec(mut op: impl FnMut(u64) -> std::io::Result<()>) -> std::io::Result<f64> {
    let t = Instant::now();
    let mut i = 0;
    loop {
        for _ in 0..64 {
            op(i)?;
            i += 1;
        }
        let el = t.elapsed();
        if el >= LOOP_FOR {
            return Ok(i as f64 / el.as_secs_f64());
        }
    }
}

fn bench(dir: &Path, mb: usize) -> anyhow::Result<[f64; METRICS.len()]> {
    fs::create_dir_all(dir)?;
    let f = dir.join("small");
    fs::write(&f, b"x")?;
    let stat = ops_per_sec(|_| fs::metadata(&f).map(drop))?;
    let cf = std::ffi::CString::new(f.as_os_str().as_encoded_bytes())?;
    let uncached = ops_per_sec(|_| claudefs_e2e::statx_sync(&cf))?;
    let open = ops_per_sec(|_| fs::File::open(&f).map(drop))?;
    let create = ops_per_sec(|i| {
        let p = dir.join(format!("c{i}"));
        drop(fs::File::create(&p)?);
        fs::remove_file(&p)
    })?;
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
    Ok([stat, uncached, open, create, write, read, dropped])
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

fn main() -> anyhow::Result<()> {
    if !fuse_bin().exists() {
        anyhow::bail!(
            "{} missing: cargo build --release -p claudefs-fuse",
            fuse_bin().display()
        );
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mb: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let parent = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let extra: Vec<String> = std::env::var("BENCH_CFS_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    catch_signals();
    let tmp = tempfile::tempdir_in(parent)?;
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared)?;
    let _bind = Bindfs::start(&shared, &tmp.path().join("bindfs"))?;
    let mut path = vec!["--path".to_string(), shared.display().to_string()];
    path.extend(extra.iter().cloned());
    let mut dev_args = path.clone();
    dev_args.extend(["--transport".to_string(), "dev".to_string()]);
    let dev = MountGuard::start(
        &tmp.path().join("cfs-dev"),
        &tmp.path().join("st3"),
        &dev_args,
    )?;
    let cfs = MountGuard::start(&tmp.path().join("cfs"), &tmp.path().join("st1"), &path)?;
    let transport = cfs.status()?["transport"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let mut pt_args = path.clone();
    pt_args.push("--passthrough".into());
    let pt = MountGuard::start(
        &tmp.path().join("cfs-pt"),
        &tmp.path().join("st2"),
        &pt_args,
    )?;
    let setups: Vec<(&str, PathBuf)> = vec![
        ("native", shared.join("b-native")),
        ("bindfs", tmp.path().join("bindfs/b-bindfs")),
        ("claudefs", cfs.mnt.join("b-cfs")),
        ("claudefs+pt", pt.mnt.join("b-pt")),
        ("claudefs-dev", dev.mnt.join("b-dev")),
    ];
    let mut results = vec![vec![Vec::new(); METRICS.len()]; setups.len()];
    for round in 0..rounds {
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let (name, dir) = &setups[i];
            if STOP.load(Ordering::Relaxed) {
                anyhow::bail!("interrupted: mounts cleaned up");
            }
            let r = bench(dir, mb)?;
            for (k, v) in r.iter().enumerate() {
                results[i][k].push(*v);
            }
            eprintln!("round {round} {name}: {r:.0?}");
        }
    }
    // Median of each setup, and the median over rounds of a/b per metric.
    let med = |i: usize, k: usize| median(&mut results[i][k].clone());
    let ratio = |a: usize, b: usize, k: usize| {
        let mut r: Vec<f64> = (0..rounds)
            .map(|n| results[a][k][n] / results[b][k][n])
            .collect();
        median(&mut r)
    };
    println!(
        "\n{:<22} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "metric (median)",
        "native",
        "bindfs",
        "claudefs",
        "claudefs+pt",
        "claudefs-dev",
        "cfs/bind",
        "dev/bind",
        "cfs/dev",
        "pt/bind",
        "cfs/nat"
    );
    for (k, m) in METRICS.iter().enumerate() {
        println!(
            "{:<22} {:>10.0} {:>10.0} {:>10.0} {:>12.0} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            m,
            med(0, k),
            med(1, k),
            med(2, k),
            med(3, k),
            med(4, k),
            ratio(2, 1, k),
            ratio(4, 1, k),
            ratio(2, 4, k),
            ratio(3, 1, k),
            ratio(2, 0, k)
        );
    }
    println!("(claudefs and claudefs+pt: transport {transport}; claudefs-dev: --transport dev)");
    println!(
        "({rounds} interleaved rounds, {mb} MiB sequential files; ratios are medians of per-round ratios; claudefs flags: {})",
        if extra.is_empty() {
            "defaults".to_string()
        } else {
            extra.join(" ")
        }
    );
    Ok(())
}
