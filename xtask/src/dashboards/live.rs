//! The live half of `cargo xtask dashboards check`: two real Prometheus
//! servers (Debian's `prometheus`, scrape and rule interval 1 s, tsdb in a
//! temp dir, free 127.0.0.1 ports, `dashboards/alerts.yml` loaded), one
//! with `--enable-feature=native-histograms` (it scrapes the protobuf
//! format and keeps only the native form of a histogram that has both:
//! no `_bucket`, `_sum`, `_count` series) and one without (text, classic
//! buckets), scrape a live `claudefs-fuse mount --metrics-addr ... --ebpf`
//! with two storage paths, path 0 reached through a bindfs mount so that
//! it can be failed, every request sampled into a span, with
//! `kernel.bpf_stats_enabled` on (the programs' run time panels). Each
//! must store the histograms its way, and every check below is made
//! against both. The story (about 20 s):
//!
//! 1. a mixed file workload (with ENOENT errors) runs throughout, with
//!    rounds of flock contention (one holds waiters parked for 2.5 s);
//!    the OTLP collector is down, so spans are dropped, until a stand-in
//!    collector comes up and spans are exported;
//!    then the server is killed with -9 while a flock is held and a
//!    waiter parked: the keeper starts the next server, which takes the
//!    lock back and gets the waiter's request resent, and is upgraded
//!    (the restart and hand-over panels);
//! 2. bindfs is killed: path 0 fails (Prometheus sees
//!    `path_state{state="failed"}` and the PathFailed alert goes pending),
//!    then bindfs is remounted and the path comes back;
//! 3. files are left open and written, the daemon is killed with -9, one
//!    of those files is removed from storage, and the daemon is restarted:
//!    its crash recovery replays the journal and orphans the removed file
//!    (the RecoveryOrphans alert fires). The daemon runs on the /dev/fuse
//!    transport until then (the worker panels show its readers; an
//!    io_uring daemon keeps one /dev/fuse worker, whose wakeups and polls
//!    stay zero) and on io_uring after (the io_uring queues panel);
//! 4. every dashboard query, with `$job`/`$instance`/`$mount` set to this
//!    daemon and its mount and the other variables "All", is evaluated
//!    over the whole run on each Prometheus and must return a series with
//!    a non-zero finite value (a native histogram: its count), except the
//!    drop counters listed in [`MAY_BE_ZERO`].

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::env::{start_bindfs, stop_bindfs, Env, Ingestion, JOB, SCRAPE_S};
use super::prom::{active_alerts, http_get, query, series, unix_now, wait_for};
use super::promql::{self, Dashboard, Expansion, Rule};
use super::workload::{self, Background, HeldOpen, OtlpSink};
use super::{Report, PROMETHEUS_SERIES};

/// Panel queries that may stay at zero in this run, by (panel, refId):
/// drops that only a host under pressure produces, worker wakeups that
/// only slow storage (or an fsync racing another request) produces, and
/// resent requests found applied, which only a create, unlink or rename
/// in flight at the crash produces (the e2e restart tests make one).
const MAY_BE_ZERO: &[(&str, &str)] = &[
    ("Probe events", "B"),
    ("Statistics map full", "A"),
    ("Daemon workers", "B"),
    ("Hand-over", "C"),
    // Demotions need CPUs busy with something else.
    ("io_uring queues", "B"),
];

/// The daemon's status (`claudefs-fuse status --json`).
fn daemon_status(env: &Env) -> Result<Value> {
    let out = Command::new(&env.bin)
        .args(["status", "--json", "--state-dir"])
        .arg(&env.state)
        .output()?;
    if !out.status.success() {
        bail!("status: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// kill -9 of the server while flock(1) holds a lock and another waits
/// on it; the next server serves, the holder still holds, the waiter gets
/// the lock once the holder lets go.
fn restart_under_a_lock(env: &Env) -> Result<()> {
    let lockfile = env.mnt.join("restart-lock");
    fs::write(&lockfile, b"").context("cannot create the lock file")?;
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&lockfile)
        .args(["sleep", "1.5"])
        .spawn()
        .context("cannot run flock(1)")?;
    std::thread::sleep(Duration::from_millis(300));
    let mut waiter = Command::new("flock")
        .arg("-x")
        .arg(&lockfile)
        .arg("true")
        .spawn()
        .context("cannot run flock(1)")?;
    std::thread::sleep(Duration::from_millis(300));
    let st = daemon_status(env)?;
    let generation = st["keeper"]["generation"].as_u64().unwrap_or(0);
    let pid = st["pid"].as_u64().context("no server pid in status")? as libc::pid_t;
    // SAFETY: signals the server of the mount under test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(Duration::from_secs(10), "the next server to serve", || {
        Ok(daemon_status(env).is_ok_and(|s| {
            s["keeper"]["generation"].as_u64() > Some(generation)
                && s["session"]["resent"].as_u64() >= Some(1)
        }))
    })?;
    if waiter.try_wait()?.is_some() {
        bail!("the waiter got the lock while the holder held it");
    }
    if !holder.wait()?.success() || !waiter.wait()?.success() {
        bail!("flock(1) failed across the restart");
    }
    // And one upgrade (to the same binary): the upgrade counter.
    let out = Command::new(&env.bin)
        .args(["upgrade", "--mountpoint"])
        .arg(&env.mnt)
        .arg("--state-dir")
        .arg(&env.state)
        .output()?;
    if !out.status.success() {
        bail!("upgrade: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!("live: server killed under a held lock, then upgraded; the next one serves");
    Ok(())
}

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
    env.enable_bpf_stats()?;
    env.start_daemon("dev")?;
    let rules_file = root.join("dashboards/alerts.yml");
    let proms = [Ingestion::Native, Ingestion::Classic]
        .into_iter()
        .map(|i| Ok((i, env.start_prometheus(&rules_file, i)?)))
        .collect::<Result<Vec<(Ingestion, u16)>>>()?;
    let t0 = unix_now();
    // The story waits on the native one; the checks ask both.
    let prom = proms[0].1;
    for &(i, port) in &proms {
        wait_for(
            Duration::from_secs(15),
            &format!("Prometheus ({}) to scrape the daemon", i.name()),
            || Ok(series(port, &format!("up{{job=\"{JOB}\"}} == 1"))? > 0),
        )?;
    }
    println!("live: both Prometheus servers scrape the daemon; running the workload");

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
    if let Err(e) = restart_under_a_lock(&env) {
        report.fail(format!("server restart: {e:#}"));
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
    for &(i, port) in &proms {
        let what = format!("the PathFailed alert ({})", i.name());
        let pending = wait_for(Duration::from_secs(10), &what, || {
            Ok(active_alerts(port)?.contains("ClaudefsFusePathFailed"))
        });
        if let Err(e) = pending {
            report.fail(format!("{e:#}"));
        }
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
    env.start_daemon("uring")?;
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
    check_names(dashboards, rules, &emitted, report);
    report.section("every metric named is emitted");
    for &(i, port) in &proms {
        let name = i.name();
        check_ingestion(port, i, report);
        report.section(&format!("{name}: histograms stored as {name}"));
        check_targets(port, dashboards, &x, (t0, t1), verbose, report);
        report.section(&format!("{name}: panel queries return data"));
        check_variables(port, dashboards, &x, t0, t1, report);
        report.section(&format!("{name}: variable queries find their labels"));
        check_rules(port, rules, report)?;
        report.section(&format!(
            "{name}: alert rules evaluate (and fire when they should)"
        ));
    }
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
    if !Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        bail!(
            "the live check needs a kernel with FUSE over io_uring (Linux 6.14+, \
             CONFIG_FUSE_IO_URING) for the io_uring queues panel; `--static` skips it"
        );
    }
    for tool in ["prometheus", "bindfs", "flock", "fusermount3"] {
        if !crate::cmd::succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")])) {
            bail!("{tool} is missing: run `cargo xtask setup`");
        }
    }
    Ok(())
}

/// The histograms this daemon exposes are stored as `ingestion` says:
/// natively (`histogram_count` has data, no `_bucket` series: a
/// Prometheus that ingests native histograms keeps only that form of a
/// histogram that has both), or as classic buckets (and no native one).
fn check_ingestion(prom: u16, ingestion: Ingestion, report: &mut Report) {
    let sel = format!("{{job=\"{JOB}\"}}");
    for family in [
        "claudefs_fuse_request_duration_seconds",
        "claudefs_fuse_flock_wait_seconds",
    ] {
        let native = series(prom, &format!("histogram_count({family}{sel})"));
        let classic = series(prom, &format!("{family}_bucket{sel}"));
        match (ingestion, native, classic) {
            (_, Err(e), _) | (_, _, Err(e)) => report.fail(format!("{family}: {e:#}")),
            (Ingestion::Native, Ok(n), Ok(c)) if n == 0 || c > 0 => report.fail(format!(
                "{family}: {n} native histogram series and {c} classic bucket series, want native only"
            )),
            (Ingestion::Classic, Ok(n), Ok(c)) if n > 0 || c == 0 => report.fail(format!(
                "{family}: {n} native histogram series and {c} classic bucket series, want classic only"
            )),
            (_, Ok(n), Ok(c)) => println!(
                "  {family}: {n} native histogram series, {c} classic bucket series"
            ),
        }
    }
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

/// The points of a query result's series, as numbers: floats as they
/// are, a native histogram as its count (instant `value`/`histogram`,
/// range `values`/`histograms`: `[time, value]` pairs).
fn points(series: &Value) -> Vec<f64> {
    let number = |p: &Value| {
        let v = &p[1];
        v.as_str()
            .or_else(|| v["count"].as_str())
            .and_then(|x| x.parse::<f64>().ok())
    };
    let mut out = Vec::new();
    for key in ["values", "histograms"] {
        out.extend(
            series[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(number),
        );
    }
    for key in ["value", "histogram"] {
        if !series[key].is_null() {
            out.extend(number(&series[key]));
        }
    }
    out
}

/// The largest finite value in a query result (NaN if none).
fn max_value(data: &Value) -> f64 {
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(points)
        .filter(|x| x.is_finite())
        .fold(f64::NAN, f64::max)
}

/// Series in a query result, and whether any value is a finite number.
fn count_series(data: &Value) -> (usize, bool) {
    let result = data["result"].as_array().cloned().unwrap_or_default();
    let any = result
        .iter()
        .any(|s| points(s).into_iter().any(f64::is_finite));
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
