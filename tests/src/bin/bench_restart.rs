//! Benchmark of a server restart and an upgrade as an application sees
//! them: the gap in its answers.
//!
//! Run (root, /dev/fuse): `cargo xtask bench restart`, or
//! `cargo build --release --bins && CLAUDEFS_FUSE_BIN=target/release/claudefs-fuse target/release/bench_restart`
//! Env: `BENCH_TRIES` (default 20), `BENCH_DIR` (parent of the temp dir).
//!
//! One mount under a keeper (`--transport dev`); a client thread stats a
//! file in a loop with `AT_STATX_FORCE_SYNC` (one GETATTR per call) and
//! notes when each answer came. `BENCH_TRIES` times each, 300 ms apart:
//! kill -9 of the server, and `claudefs-fuse upgrade` to a second copy of
//! the binary (alternating). The gap of a try is the largest one between
//! two answers from just before the kill (or the `upgrade` command) to the
//! new server serving; the table gives the median and
//! the max over the tries, the keeper's own measure (drain or death to
//! the next server serving), and as the reference the largest gap
//! between two answers in a 300 ms window of the same run without a
//! restart (what the VM's scheduling alone costs).

use std::ffi::CString;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claudefs_e2e::{fuse_bin, statx_sync, MountGuard};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// The largest gap between answers (sorted times, ns) in `[from, to)`,
/// counting from the last answer before `from` to the first after `to`.
fn largest_gap(answers: &[u64], from: u64, to: u64) -> u64 {
    let a = answers.partition_point(|&t| t < from).saturating_sub(1);
    let b = (answers.partition_point(|&t| t < to) + 1).min(answers.len());
    answers[a..b]
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let tries: usize = std::env::var("BENCH_TRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let parent = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(parent)?;
    let copy = tmp.path().join("claudefs-fuse-next");
    std::fs::copy(fuse_bin(), &copy)?;
    let (_src, m) = MountGuard::single_path(tmp.path(), &["--transport".into(), "dev".into()])?;
    std::fs::write(m.mnt.join("f"), b"x")?;
    let path = CString::new(m.mnt.join("f").to_string_lossy().as_bytes())?;
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<u64>::with_capacity(1 << 20)));
    let client = {
        let (stop, answers) = (stop.clone(), answers.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut local = Vec::with_capacity(1 << 20);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if statx_sync(&path).is_err() {
                    errors += 1;
                }
                local.push(t0.elapsed().as_nanos() as u64);
            }
            answers.lock().unwrap().extend(local);
            Ok(errors)
        })
    };
    let now = || t0.elapsed().as_nanos() as u64;
    let mut kills = Vec::new();
    let mut upgrades = Vec::new();
    let mut keeper_kill = Vec::new();
    let mut keeper_upgrade = Vec::new();
    let mut quiet = Vec::new();
    let mut generation = 0;
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..tries * 2 {
        let w0 = now();
        std::thread::sleep(Duration::from_millis(300));
        quiet.push((w0, now()));
        generation += 1;
        let at;
        if i % 2 == 0 {
            let pid = m.pid();
            at = now();
            // SAFETY: signals the server of the mount under test.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        } else {
            at = now();
            let bin = if (i / 2) % 2 == 0 {
                copy.clone()
            } else {
                fuse_bin()
            };
            let out = Command::new(fuse_bin())
                .args(["upgrade", "--mountpoint"])
                .arg(&m.mnt)
                .arg("--state-dir")
                .arg(&m.state)
                .arg("--binary")
                .arg(&bin)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "upgrade failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let st = m.wait_generation(generation, Duration::from_secs(10))?;
        let window = (at, now() + 20_000_000);
        if i % 2 == 0 {
            kills.push(window);
        } else {
            upgrades.push(window);
        }
        // The keeper's measure reaches the server once it serves.
        std::thread::sleep(Duration::from_millis(50));
        let gap = m.status()?["keeper"]["last_gap_seconds"]
            .as_f64()
            .unwrap_or(0.0);
        let _ = st;
        if i % 2 == 0 {
            keeper_kill.push(gap);
        } else {
            keeper_upgrade.push(gap);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let errors = client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    let answers = answers.lock().unwrap().clone();
    let gaps = |events: &[(u64, u64)]| -> Vec<f64> {
        events
            .iter()
            .map(|&(a, b)| largest_gap(&answers, a, b) as f64 / 1e6)
            .collect()
    };
    let mut kill_gaps = gaps(&kills);
    let mut upgrade_gaps = gaps(&upgrades);
    let mut quiet_gaps: Vec<f64> = quiet
        .iter()
        .map(|&(a, b)| largest_gap(&answers, a, b) as f64 / 1e6)
        .collect();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let ms = |v: &mut Vec<f64>| v.iter_mut().for_each(|x| *x *= 1e3);
    ms(&mut keeper_kill);
    ms(&mut keeper_upgrade);
    println!(
        "{} answers, {} errors; {} tries each (ms)",
        answers.len(),
        errors,
        tries
    );
    println!(
        "{:<34} {:>10} {:>10} {:>16} {:>14}",
        "event", "median", "max", "keeper median", "keeper max"
    );
    for (name, g, k) in [
        ("kill -9 of the server", &mut kill_gaps, &mut keeper_kill),
        (
            "upgrade to another binary",
            &mut upgrade_gaps,
            &mut keeper_upgrade,
        ),
    ] {
        let (gmax, kmax) = (max(g), max(k));
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>16.1} {:>14.1}",
            name,
            median(g),
            gmax,
            median(k),
            kmax
        );
    }
    let qmax = max(&quiet_gaps);
    println!(
        "{:<34} {:>10.2} {:>10.2}",
        "reference: largest gap, no restart",
        median(&mut quiet_gaps),
        qmax
    );
    println!("targets: median < 100 ms, max < 500 ms; the application saw {errors} errors");
    m.stop()?;
    anyhow::ensure!(errors == 0, "the client saw {errors} errors");
    Ok(())
}
