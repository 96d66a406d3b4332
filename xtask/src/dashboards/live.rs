//! The live half of `cargo xtask dashboards check`: a real Prometheus
//! (Debian's `prometheus`, scrape and rule interval 1 s, tsdb in a temp
//! dir, free 127.0.0.1 ports) scrapes a live `claudefs-fuse mount
//! --metrics-addr ... --ebpf` with two storage paths, path 0 reached
//! through a bindfs mount so that it can be failed. The story:
//!
//! 1. a mixed file workload (with ENOENT errors) runs throughout, with
//!    rounds of flock contention;
//! 2. bindfs is killed: path 0 fails (Prometheus sees
//!    `path_state{state="failed"}` and the PathFailed alert goes pending),
//!    then bindfs is remounted and the path comes back;
//! 3. files are left open and written, the daemon is killed with -9, one
//!    of those files is removed from storage, and the daemon is restarted:
//!    its crash recovery replays the journal and orphans the removed file
//!    (the RecoveryOrphans alert fires);
//! 4. every dashboard query is evaluated over the whole run.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::promql::{self, Dashboard, Expansion, Rule};
use super::workload::{self, Background, HeldOpen, OtlpSink};
use super::{Report, PROMETHEUS_SERIES};

/// Panel queries that may stay at zero in this run, by (panel, refId):
/// drops that only a host under pressure produces.
const MAY_BE_ZERO: &[(&str, &str)] = &[("Probe events", "B"), ("Statistics map full", "A")];

/// Scrape and rule evaluation interval of the test Prometheus.
const SCRAPE_S: u64 = 1;
const JOB: &str = "claudefs-fuse";

pub fn run(
    root: &Path,
    dashboards: &[Dashboard],
    rules: &[Rule],
    verbose: bool,
    report: &mut Report,
) -> Result<()> {
    preconditions()?;
    let bin = super::build_daemon(root)?;
    let started = Instant::now();
    let mut env = Env::new(bin)?;
    env.bindfs = Some(start_bindfs(&env.storage, &env.via)?);
    env.start_daemon()?;
    env.start_prometheus(&root.join("dashboards/alerts.yml"))?;
    let t0 = unix_now();
    let prom = env.prom_port;
    wait_for(
        Duration::from_secs(15),
        "Prometheus to scrape the daemon",
        || Ok(series(prom, &format!("up{{job=\"{JOB}\"}} == 1"))? > 0),
    )?;
    println!("live: Prometheus scrapes the daemon; running the workload");

    // 1. Mixed workload and flock contention.
    // A file open all along and waiters parked for 2.5 s: the gauges
    // (open files, parked flock requests) are seen by several scrapes.
    let long_open =
        fs::File::create(env.mnt.join("long-open")).context("cannot create a file on the mount")?;
    let background = Background::start(&env.mnt);
    for hold in [2500, 400, 400] {
        if let Err(e) = workload::flock_round(&env.mnt, Duration::from_millis(hold)) {
            report.fail(e);
        }
    }
    std::thread::sleep(Duration::from_secs(2));

    // Every request becomes a span; the collector is down so far, so
    // exports fail and spans are dropped. It comes up now.
    wait_for(Duration::from_secs(15), "dropped spans", || {
        Ok(series(prom, "claudefs_fuse_spans_dropped_total > 0")? > 0)
    })?;
    let sink = OtlpSink::start(env.otlp_port).context("cannot start the OTLP sink")?;

    // 2. Fail path 0 (kill its bindfs), see it failed, bring it back.
    if let Some(b) = env.bindfs.take() {
        stop_bindfs(b, &env.via);
    }
    wait_for(
        Duration::from_secs(20),
        "path 0 to be failed in Prometheus",
        || {
            Ok(series(
                prom,
                "claudefs_fuse_path_state{path_id=\"0\",state=\"failed\"} == 1",
            )? > 0)
        },
    )?;
    let pending = wait_for(Duration::from_secs(10), "the PathFailed alert", || {
        Ok(active_alerts(prom)?.contains("ClaudefsFusePathFailed"))
    });
    if let Err(e) = pending {
        report.fail(format!("{e:#}"));
    }
    println!("live: path 0 failed; remounting it");
    env.bindfs = Some(start_bindfs(&env.storage, &env.via)?);
    wait_for(Duration::from_secs(20), "path 0 to be active again", || {
        Ok(series(
            prom,
            "claudefs_fuse_path_state{path_id=\"0\",state=\"active\"} == 1",
        )? > 0)
    })?;

    // 3. Crash with open files, orphan one, restart: recovery.
    drop(long_open);
    let held = HeldOpen::open(&env.mnt, 3).context("cannot open files for the recovery run")?;
    std::thread::sleep(Duration::from_millis(200)); // the journal syncs every 50 ms
    env.kill_daemon();
    held.close();
    fs::remove_file(env.storage.join("orphan")).context("cannot remove the orphan")?;
    env.start_daemon()?;
    println!("live: daemon killed with open files and restarted; waiting for its recovery");
    wait_for(
        Duration::from_secs(20),
        "a completed recovery with an orphan",
        || {
            Ok(series(
            prom,
            "claudefs_fuse_recovery_state{state=\"complete\"} == 1 and on (instance) claudefs_fuse_recovery_orphaned > 0",
        )? > 0)
        },
    )?;
    for _ in 0..2 {
        if let Err(e) = workload::flock_round(&env.mnt, Duration::from_millis(400)) {
            report.fail(e);
        }
    }
    std::thread::sleep(Duration::from_secs(4));
    wait_for(Duration::from_secs(15), "exported spans", || {
        Ok(series(prom, "claudefs_fuse_spans_exported_total > 0")? > 0)
    })?;
    let rounds = background.rounds.load(std::sync::atomic::Ordering::Relaxed);
    let exports = sink.requests.load(std::sync::atomic::Ordering::Relaxed);
    drop(background);
    drop(sink);
    let t1 = unix_now();
    println!(
        "live: workload done ({rounds} file rounds, {exports} OTLP exports, {:.0}s); evaluating the queries",
        t1 - t0
    );
    report.section("live workload");

    let scrape = http_get(env.metrics_port, "/metrics")
        .and_then(|(code, body)| {
            if code == 200 {
                Ok(body)
            } else {
                bail!("GET /metrics: HTTP {code}")
            }
        })
        .context("cannot scrape the daemon")?;
    let emitted = promql::exposition_names(&scrape);
    println!("  scrape: {} series names", emitted.len());

    // Grafana with a 1 s scrape interval: $__interval is the step, and
    // $__rate_interval is 4 scrapes. The job, instance and mount variables
    // select this daemon and its own mount (the probes also see other FUSE
    // mounts on the host, e.g. the bindfs path); opcode and path are "All".
    let vars = [
        ("job", JOB.to_string()),
        ("instance", format!("127.0.0.1:{}", env.metrics_port)),
        ("mount", env.mnt.display().to_string()),
    ];
    let x = Expansion {
        interval_s: SCRAPE_S,
        rate_interval_s: 4 * SCRAPE_S,
        range_s: (t1 - t0).ceil() as u64,
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), promql::regex_quote(v)))
            .collect(),
    };
    check_targets(prom, dashboards, &x, (t0, t1), verbose, report);
    report.section("panel queries return data");
    check_variables(prom, dashboards, &x, t0, t1, report);
    report.section("variable queries find their labels");
    check_names(dashboards, rules, &emitted, report);
    report.section("every metric named is emitted");
    check_rules(prom, rules, report)?;
    report.section("alert rules evaluate (and fire when they should)");
    println!("live: took {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn preconditions() -> Result<()> {
    let uid = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("the live check needs root (FUSE mounts and eBPF probes); `--static` skips it");
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("the live check needs /dev/fuse; `--static` skips it");
    }
    for tool in ["prometheus", "bindfs", "flock", "fusermount3"] {
        if !crate::cmd::succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")])) {
            bail!("{tool} is missing: run `cargo xtask setup`");
        }
    }
    Ok(())
}

/// Every panel query, expanded, returns at least one series with a
/// finite value over the run (instant targets: at its end).
fn check_targets(
    prom: u16,
    dashboards: &[Dashboard],
    x: &Expansion,
    (t0, t1): (f64, f64),
    verbose: bool,
    report: &mut Report,
) {
    for d in dashboards {
        let mut ok = 0;
        for t in &d.targets {
            let expr = promql::expand(&t.expr, x);
            let result = if t.instant {
                query(
                    prom,
                    "/api/v1/query",
                    &[("query", &expr), ("time", &format!("{t1:.3}"))],
                )
            } else {
                query(
                    prom,
                    "/api/v1/query_range",
                    &[
                        ("query", &expr),
                        ("start", &format!("{t0:.3}")),
                        ("end", &format!("{t1:.3}")),
                        ("step", &SCRAPE_S.to_string()),
                    ],
                )
            };
            let what = format!("{} / {} [{}] {}", d.title, t.panel, t.ref_id, t.panel_type);
            match result {
                Err(e) => report.fail(format!("{what}: {e:#}\n{expr}")),
                Ok(data) => {
                    let (n, finite) = count_series(&data);
                    let max = max_value(&data);
                    if verbose {
                        println!("    {what}: {n} series, max {max}");
                    }
                    let zero_ok = MAY_BE_ZERO.contains(&(t.panel.as_str(), t.ref_id.as_str()));
                    if n == 0 {
                        report.fail(format!("{what}: no series\n{expr}"));
                    } else if !finite {
                        report.fail(format!("{what}: {n} series, no finite value\n{expr}"));
                    } else if max == 0.0 && !zero_ok {
                        report.fail(format!(
                            "{what}: {n} series, all zero: the workload does not exercise it\n{expr}"
                        ));
                    } else {
                        ok += 1;
                    }
                }
            }
        }
        println!(
            "  {}: {ok}/{} queries return data",
            d.title,
            d.targets.len()
        );
    }
}

/// The largest finite value in a query result (NaN if none).
fn max_value(data: &Value) -> f64 {
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            s["values"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![s["value"].clone()])
        })
        .filter_map(|v| v[1].as_str().and_then(|x| x.parse::<f64>().ok()))
        .filter(|x| x.is_finite())
        .fold(f64::NAN, f64::max)
}

/// Series in a query result, and whether any value is a finite number.
fn count_series(data: &Value) -> (usize, bool) {
    let result = data["result"].as_array().cloned().unwrap_or_default();
    let finite = |v: &Value| {
        v.get(1)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    };
    let any = result.iter().any(|s| {
        s["values"]
            .as_array()
            .is_some_and(|vs| vs.iter().any(finite))
            || finite(&s["value"])
    });
    (result.len(), any)
}

/// Every `label_values(selector, label)` variable finds at least one value.
fn check_variables(
    prom: u16,
    dashboards: &[Dashboard],
    x: &Expansion,
    t0: f64,
    t1: f64,
    report: &mut Report,
) {
    for d in dashboards {
        for v in &d.variables {
            let Some(sel) = &v.selector else { continue };
            let sel = promql::expand(sel, x);
            let got = query(
                prom,
                "/api/v1/series",
                &[
                    ("match[]", &sel),
                    ("start", &format!("{t0:.3}")),
                    ("end", &format!("{t1:.3}")),
                ],
            );
            match got {
                Err(e) => report.fail(format!("{} variable {}: {e:#}", d.title, v.name)),
                Ok(list) => {
                    let values: BTreeSet<&str> = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s[v.label.as_str()].as_str())
                        .collect();
                    if values.is_empty() {
                        report.fail(format!(
                            "{} variable {}: no value of {} in {sel}",
                            d.title, v.name, v.label
                        ));
                    }
                }
            }
        }
    }
}

/// Every metric a panel, variable or rule names is emitted by the exporter
/// (or added by Prometheus to every target).
fn check_names(
    dashboards: &[Dashboard],
    rules: &[Rule],
    emitted: &BTreeSet<String>,
    report: &mut Report,
) {
    let known = |n: &str| emitted.contains(n) || PROMETHEUS_SERIES.contains(&n);
    for d in dashboards {
        for t in &d.targets {
            for n in promql::metric_names(&t.expr).iter().filter(|n| !known(n)) {
                report.fail(format!(
                    "{} / {}: {n} is not emitted by the exporter",
                    d.title, t.panel
                ));
            }
        }
        for v in &d.variables {
            let names = v
                .selector
                .as_deref()
                .map(promql::metric_names)
                .unwrap_or_default();
            for n in names.iter().filter(|n| !known(n)) {
                report.fail(format!(
                    "{} variable {}: {n} is not emitted by the exporter",
                    d.title, v.name
                ));
            }
        }
    }
    for r in rules {
        for n in promql::metric_names(&r.expr).iter().filter(|n| !known(n)) {
            report.fail(format!(
                "rule {}: {n} is not emitted by the exporter",
                r.name
            ));
        }
    }
}

/// The rules Prometheus loaded are ours and evaluate without error; the
/// alerts for conditions the run produced and cleared are inactive at the
/// end, RecoveryOrphans is firing, and NoUsablePath never was.
fn check_rules(prom: u16, rules: &[Rule], report: &mut Report) -> Result<()> {
    let data = query(prom, "/api/v1/rules", &[])?;
    let mut loaded = BTreeSet::new();
    for g in data["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("?").to_string();
            if r["health"] != "ok" {
                report.fail(format!(
                    "rule {name}: health {} {}",
                    r["health"], r["lastError"]
                ));
            }
            loaded.insert(name);
        }
    }
    let ours: BTreeSet<String> = rules.iter().map(|r| r.name.clone()).collect();
    if loaded != ours {
        report.fail(format!(
            "Prometheus loaded rules {loaded:?}, alerts.yml has {ours:?}"
        ));
    }
    let active = active_alerts(prom)?;
    if !active.contains("ClaudefsFuseRecoveryOrphans") {
        report.fail(format!("ClaudefsFuseRecoveryOrphans is not firing after a recovery with an orphan (active: {active:?})"));
    }
    for quiet in [
        "ClaudefsFusePathFailed",
        "ClaudefsFuseNoUsablePath",
        "ClaudefsFuseRecoveryFailed",
    ] {
        if active.contains(quiet) {
            report.fail(format!(
                "{quiet} is active at the end of the run, when it should not be"
            ));
        }
    }
    println!(
        "  {} rules loaded, active at the end: {active:?}",
        loaded.len()
    );
    Ok(())
}

/// Names of the alerts pending or firing now.
fn active_alerts(prom: u16) -> Result<BTreeSet<String>> {
    let data = query(prom, "/api/v1/alerts", &[])?;
    Ok(data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
        .collect())
}

/// Series an instant query returns now.
fn series(prom: u16, expr: &str) -> Result<usize> {
    let data = query(prom, "/api/v1/query", &[("query", expr)])?;
    Ok(data["result"].as_array().map(Vec::len).unwrap_or(0))
}

/// GET on the Prometheus HTTP API; the `data` of a success, else its error.
fn query(prom: u16, path: &str, params: &[(&str, &str)]) -> Result<Value> {
    let qs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect();
    let url = if qs.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", qs.join("&"))
    };
    let (code, body) = http_get(prom, &url)?;
    let json: Value = serde_json::from_str(&body)
        .with_context(|| format!("HTTP {code} from Prometheus, not JSON: {}", body.trim()))?;
    if json["status"] != "success" {
        bail!(
            "{}: {}",
            json["errorType"].as_str().unwrap_or("error"),
            json["error"].as_str().unwrap_or(&body)
        );
    }
    Ok(json["data"].clone())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET on 127.0.0.1: (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Polls `f` every 200 ms until it is true; fails after `timeout`.
fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < timeout {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match last {
        Some(e) => bail!("timed out after {timeout:?} waiting for {what} (last error: {e:#})"),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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

fn start_bindfs(src: &Path, dst: &Path) -> Result<Child> {
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

fn stop_bindfs(mut child: Child, dst: &Path) {
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
struct Env {
    bin: PathBuf,
    tmp: PathBuf,
    storage: PathBuf,
    via: PathBuf,
    mnt: PathBuf,
    state: PathBuf,
    idmap: PathBuf,
    metrics_port: u16,
    prom_port: u16,
    otlp_port: u16,
    bindfs: Option<Child>,
    daemon: Option<Child>,
    prometheus: Option<Child>,
}

impl Env {
    fn new(bin: PathBuf) -> Result<Self> {
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
            metrics_port: free_port()?,
            prom_port: free_port()?,
            otlp_port: free_port()?,
            bindfs: None,
            daemon: None,
            prometheus: None,
        };
        for d in [&env.storage, &env.via, &env.mnt, &env.tmp.join("tsdb")] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        // Root maps to itself through the table: idmap lookups and hits.
        fs::write(&env.idmap, "u 0 0\ng 0 0\n")?;
        Ok(env)
    }

    fn log(&self) -> PathBuf {
        self.tmp.join("daemon.log")
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts (or restarts) the daemon and waits for its mount, its
    /// status socket and its metrics endpoint.
    fn start_daemon(&mut self) -> Result<()> {
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
            .spawn()
            .context("cannot start claudefs-fuse mount")?;
        self.daemon = Some(child);
        let t = Instant::now();
        loop {
            let ready = is_mounted(&self.mnt)
                && self.state.join("status.sock").exists()
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

    /// kill -9 the daemon and lazily unmount what it leaves.
    fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        umount_lazy(&self.mnt);
    }

    fn start_prometheus(&mut self, rules: &Path) -> Result<()> {
        let config = self.tmp.join("prometheus.yml");
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
        let log = fs::File::create(self.tmp.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.tmp.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.prom_port))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start prometheus (`cargo xtask setup` installs it)")?;
        self.prometheus = Some(child);
        let port = self.prom_port;
        wait_for(Duration::from_secs(20), "Prometheus to be ready", || {
            Ok(http_get(port, "/-/ready").is_ok_and(|(c, _)| c == 200))
        })
        .with_context(|| fs::read_to_string(self.tmp.join("prometheus.log")).unwrap_or_default())
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
        if let Some(mut c) = self.prometheus.take() {
            let _ = c.kill();
            let _ = c.wait();
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
