//! The processes of one live run: a bindfs mount (storage path 0), the
//! `claudefs-fuse mount` daemon and two Prometheus servers scraping it (one
//! that ingests native histograms, one that does not), in a temporary
//! directory with free 127.0.0.1 ports, with `kernel.bpf_stats_enabled`
//! on; everything is stopped, removed and set back on drop.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::prom::{http_get, wait_for};

/// Scrape and rule evaluation interval of the test Prometheus.
pub const SCRAPE_S: u64 = 1;
/// Its job name for the daemon.
pub const JOB: &str = "claudefs-fuse";

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// How a test Prometheus ingests histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingestion {
    /// `--enable-feature=native-histograms`: scrapes protobuf and keeps
    /// the native histogram of a histogram that has both forms.
    Native,
    /// Without it: text, classic buckets.
    Classic,
}

impl Ingestion {
    pub fn name(self) -> &'static str {
        match self {
            Ingestion::Native => "native",
            Ingestion::Classic => "classic",
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn umount_lazy(dir: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
}

pub fn start_bindfs(src: &Path, dst: &Path) -> Result<Child> {
    let mut child = Command::new("bindfs")
        .arg("-f")
        .arg(src)
        .arg(dst)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start bindfs")?;
    let t = Instant::now();
    while !is_mounted(dst) {
        if t.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("bindfs did not mount {}", dst.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

pub fn stop_bindfs(mut child: Child, dst: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dst)
        .stderr(Stdio::null())
        .status();
    umount_lazy(dst);
}

/// The temporary directory, ports and processes of one live run; stops
/// everything and removes the directory on drop.
pub struct Env {
    pub bin: PathBuf,
    pub tmp: PathBuf,
    pub storage: PathBuf,
    pub via: PathBuf,
    pub mnt: PathBuf,
    pub state: PathBuf,
    pub idmap: PathBuf,
    pub metrics_port: u16,
    pub otlp_port: u16,
    pub bindfs: Option<Child>,
    pub daemon: Option<Child>,
    pub prometheus: Vec<Child>,
    /// `kernel.bpf_stats_enabled` before the run, set back on drop.
    bpf_stats_was: Option<String>,
}

impl Env {
    pub fn new(bin: PathBuf) -> Result<Self> {
        let tmp = std::env::temp_dir().join(format!("claudefs-dashboards-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let env = Self {
            bin,
            storage: tmp.join("storage"),
            via: tmp.join("via-bindfs"),
            mnt: tmp.join("mnt"),
            state: tmp.join("state"),
            idmap: tmp.join("idmap"),
            tmp,
            metrics_port: claudefs_testkit::free_port()?,
            otlp_port: claudefs_testkit::free_port()?,
            bindfs: None,
            daemon: None,
            prometheus: Vec::new(),
            bpf_stats_was: None,
        };
        for d in [&env.storage, &env.via, &env.mnt] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        // Root maps to itself through the table: idmap lookups and hits.
        fs::write(&env.idmap, "u 0 0\ng 0 0\n")?;
        Ok(env)
    }

    pub fn log(&self) -> PathBuf {
        self.tmp.join("daemon.log")
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts (or restarts) the daemon and waits for its mount, its
    /// status socket and its metrics endpoint.
    /// Mounts the daemon under test on `transport` (`dev` or `uring`).
    pub fn start_daemon(&mut self, transport: &str) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let child = Command::new(&self.bin)
            .arg("mount")
            .arg("--path")
            .arg(format!("{},priority=200,addr=bindfs", self.via.display()))
            .arg("--path")
            .arg(format!(
                "{},priority=100,addr=direct",
                self.storage.display()
            ))
            .args(["--policy", "primary", "--health-interval-ms", "100"])
            .args(["--transport", transport])
            .arg("--idmap")
            .arg(format!("table:{}", self.idmap.display()))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .arg("--ebpf")
            .args(["--sample-rate", "1"])
            .arg("--otlp-endpoint")
            .arg(format!("http://127.0.0.1:{}", self.otlp_port))
            .arg("--state-dir")
            .arg(&self.state)
            .arg(&self.mnt)
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: keeper and server die together in
            // `kill_daemon`.
            .process_group(0)
            .spawn()
            .context("cannot start claudefs-fuse mount")?;
        self.daemon = Some(child);
        let t = Instant::now();
        loop {
            let ready = is_mounted(&self.mnt)
                && std::os::unix::net::UnixStream::connect(self.state.join("status.sock")).is_ok()
                && http_get(self.metrics_port, "/healthz").is_ok_and(|(c, _)| c == 200);
            if ready {
                return Ok(());
            }
            if let Some(c) = self.daemon.as_mut() {
                if let Some(st) = c.try_wait()? {
                    self.daemon = None;
                    bail!("claudefs-fuse mount exited ({st}):\n{}", self.log_tail());
                }
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!(
                    "claudefs-fuse mount not ready in 20 s:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 the daemon, keeper and server (the whole daemon crashes:
    /// the mount goes), and lazily unmount what it leaves.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: signals the process group this child leads.
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
            let _ = c.wait();
            // The server (not our child) is gone once its mount is dead.
            let t = Instant::now();
            while self.state.join("status.sock").exists()
                && std::os::unix::net::UnixStream::connect(self.state.join("status.sock")).is_ok()
                && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        umount_lazy(&self.mnt);
    }

    /// Turns `kernel.bpf_stats_enabled` on for the run (the probe health
    /// dashboard's run time panels); set back on drop.
    pub fn enable_bpf_stats(&mut self) -> Result<()> {
        let was = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("cannot read {BPF_STATS}"))?
            .trim()
            .to_string();
        fs::write(BPF_STATS, "1").with_context(|| format!("cannot write {BPF_STATS}"))?;
        self.bpf_stats_was.get_or_insert(was);
        Ok(())
    }

    /// Starts a Prometheus of `ingestion` on a free port, scraping the
    /// daemon with `rules` loaded, and waits until it is ready.
    pub fn start_prometheus(&mut self, rules: &Path, ingestion: Ingestion) -> Result<u16> {
        let name = ingestion.name();
        let port = claudefs_testkit::free_port()?;
        let config = self.tmp.join(format!("prometheus-{name}.yml"));
        let tsdb = self.tmp.join(format!("tsdb-{name}"));
        fs::create_dir_all(&tsdb)?;
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
                rules.display(),
                self.metrics_port
            ),
        )?;
        let log_path = self.tmp.join(format!("prometheus-{name}.log"));
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        if ingestion == Ingestion::Native {
            cmd.arg("--enable-feature=native-histograms");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path)?)
            .spawn()
            .context("cannot start prometheus (`cargo xtask setup` installs it)")?;
        self.prometheus.push(child);
        wait_for(
            Duration::from_secs(20),
            &format!("Prometheus ({name}) to be ready"),
            || Ok(http_get(port, "/-/ready").is_ok_and(|(c, _)| c == 200)),
        )
        .with_context(|| fs::read_to_string(&log_path).unwrap_or_default())?;
        Ok(port)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SIGTERM: the daemon unmounts cleanly.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            umount_lazy(&self.mnt);
        }
        for mut c in self.prometheus.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(was) = self.bpf_stats_was.take().filter(|w| w != "1") {
            let _ = fs::write(BPF_STATS, was);
        }
        if let Some(b) = self.bindfs.take() {
            stop_bindfs(b, &self.via);
        }
        if is_mounted(&self.via) {
            umount_lazy(&self.via);
        }
        let _ = fs::remove_dir_all(&self.tmp);
    }
}
