//! `cargo xtask demo`: the main job on an embedded default. Mounts a demo
//! ClaudeFS client (two storage paths over one temporary directory), attaches
//! the probes with `claudefs-fuse triage`, runs a short mixed workload with
//! some flock contention and shows the triage report. The daemon also runs
//! the exporter (`--metrics-addr 127.0.0.1:9464 --ebpf`); after the report
//! it keeps serving until Ctrl-C (`--no-wait` finishes at once).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cmd, setup, workspace_root};

/// How long the probes collect; the workload fits well inside it.
const TRIAGE_SECS: u64 = 5;
/// Where the demo daemon serves its metrics.
const METRICS_ADDR: &str = "127.0.0.1:9464";

pub fn run(no_wait: bool) -> Result<()> {
    setup::run()?;
    let root = workspace_root();
    cmd::cargo(&root, &["build", "--quiet", "--bins"])?;
    let bin = root.join("target/debug/claudefs-fuse");
    let dir = DemoDir::new()?;
    let mut daemon = Mounted::start(&bin, &dir)?;
    println!(
        "demo: mounted {} (storage: two paths over {})",
        dir.mnt.display(),
        dir.backing.display()
    );
    println!("demo: metrics at http://{METRICS_ADDR}/metrics");

    let mut triage = Command::new(&bin)
        .args(["triage", "--duration", &TRIAGE_SECS.to_string(), "--mount"])
        .arg(&dir.mnt)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start claudefs-fuse triage")?;
    wait_attached(&mut triage)?;
    println!("demo: probes attached; running a mixed workload with flock contention");
    let started = Instant::now();
    workload(&dir.mnt)?;
    println!(
        "demo: workload done in {:.1}s; waiting for the report",
        started.elapsed().as_secs_f64()
    );
    let status = triage.wait()?;
    if !no_wait && status.success() {
        println!(
            "demo: the daemon and its exporter keep running: http://{METRICS_ADDR}/metrics \
             (mounted at {}); Ctrl-C to stop",
            dir.mnt.display()
        );
        wait_for_ctrl_c();
    }
    daemon.stop();
    if !status.success() {
        bail!("claudefs-fuse triage failed with {status}");
    }
    Ok(())
}

/// Blocks until SIGINT or SIGTERM (the default handlers are replaced, so
/// the demo can clean up its mount afterwards).
fn wait_for_ctrl_c() {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs an async-signal-safe handler (one atomic store).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for triage to say it is collecting, echoing its stderr meanwhile.
fn wait_attached(triage: &mut Child) -> Result<()> {
    let stderr = triage.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            let status = triage.wait()?;
            bail!("claudefs-fuse triage exited before attaching ({status})");
        }
        eprint!("{line}");
        if line.contains("collecting") {
            break;
        }
    }
    // Keep echoing its progress lines in the background.
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = lines.read_to_string(&mut rest);
        eprint!("{rest}");
    });
    Ok(())
}

struct DemoDir {
    _tmp: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
    state: PathBuf,
}

impl DemoDir {
    fn new() -> Result<Self> {
        let tmp = std::env::temp_dir().join(format!("claudefs-demo-{}", std::process::id()));
        let backing = tmp.join("storage");
        let mnt = tmp.join("mnt");
        let state = tmp.join("state");
        for d in [&backing, &mnt, &state] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(Self {
            _tmp: tmp,
            backing,
            mnt,
            state,
        })
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self._tmp);
    }
}

/// The demo mount: the claudefs-fuse daemon, unmounted on drop.
struct Mounted {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Mounted {
    fn start(bin: &Path, dir: &DemoDir) -> Result<Self> {
        let child = Command::new(bin)
            .arg("mount")
            .arg("--path")
            .arg(&dir.backing)
            .arg("--path")
            .arg(&dir.backing)
            .arg("--state-dir")
            .arg(&dir.state)
            .args(["--metrics-addr", METRICS_ADDR, "--ebpf"])
            .arg(&dir.mnt)
            .spawn()
            .context("cannot start claudefs-fuse mount")?;
        let mut m = Self {
            child: Some(child),
            mnt: dir.mnt.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mountpoint(&m.mnt) {
            if let Some(c) = m.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    m.child = None;
                    bail!("claudefs-fuse mount exited early ({status})");
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not become a mount point within 10 s",
                    m.mnt.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(m)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT asks the daemon to unmount cleanly.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A daemon that could not unmount leaves a mount to detach.
        if is_mountpoint(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .status();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// A short mixed workload: creates, writes, reads, stats, listings, misses,
/// renames, unlinks, and flock contention between processes.
fn workload(mnt: &Path) -> Result<()> {
    let data = mnt.join("data");
    fs::create_dir_all(&data)?;
    let block = vec![0x5au8; 64 * 1024];
    for i in 0..100 {
        let p = data.join(format!("file-{i:03}"));
        let mut f = fs::File::create(&p)?;
        f.write_all(&block)?;
        if i % 10 == 0 {
            f.sync_all()?;
        }
    }
    for round in 0..5 {
        for i in 0..100 {
            let p = data.join(format!("file-{i:03}"));
            fs::metadata(&p)?;
            if (i + round) % 4 == 0 {
                let mut buf = Vec::new();
                fs::File::open(&p)?.read_to_end(&mut buf)?;
            }
        }
        let _ = fs::read_dir(&data)?.count();
        for i in 0..20 {
            // Lookups of names that do not exist: FUSE errors (ENOENT).
            let _ = fs::metadata(data.join(format!("missing-{round}-{i}")));
        }
    }
    for i in 0..50 {
        let from = data.join(format!("file-{i:03}"));
        let to = data.join(format!("renamed-{i:03}"));
        fs::rename(&from, &to)?;
        fs::remove_file(&to)?;
    }
    flock_contention(&mnt.join("lockfile"))?;
    Ok(())
}

/// One process holds an exclusive flock for 600 ms; another waits for it
/// (blocking) and a third is refused (LOCK_NB).
fn flock_contention(lockfile: &Path) -> Result<()> {
    fs::write(lockfile, b"lock")?;
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(lockfile)
        .args(["-c", "sleep 0.6"])
        .spawn()
        .context("cannot run flock(1) (util-linux)")?;
    std::thread::sleep(Duration::from_millis(150));
    let refused = Command::new("flock")
        .arg("-n")
        .arg(lockfile)
        .arg("true")
        .status()?;
    let waited = Command::new("flock")
        .arg("-x")
        .arg(lockfile)
        .arg("true")
        .status()?;
    holder.wait()?;
    if refused.success() || !waited.success() {
        bail!("flock contention did not behave as expected (refused={refused}, waited={waited})");
    }
    Ok(())
}
