//! `cargo xtask dashboards check`: proves the Grafana dashboards and the
//! alert rules in `dashboards/` against the exporter.
//!
//! Static part (always): every dashboard parses and uses the `${datasource}`
//! variable; every panel target and variable query is extracted; every
//! required metric family of the exporters issue appears on some panel;
//! `promtool check rules` and `promtool test rules` pass.
//!
//! Live part (unless `--static`): two real Prometheus servers (one that
//! ingests native histograms, one that does not) scrape a live
//! `claudefs-fuse mount --metrics-addr ... --ebpf` under a workload that
//! exercises every panel (see [`live`]); then every expanded panel query
//! returns at least one series with a finite value, every variable query
//! finds its label, every metric a dashboard or rule names is one the
//! exporter emits (a scrape of its `/metrics`, plus Prometheus' own
//! `up`/`scrape_*`), every rule evaluates without error, and the path and
//! recovery alerts go active when their condition is produced: each on
//! both Prometheus servers, each of which must store the histograms its
//! way (native only, classic only).
//!
//! Failures are listed (dashboard, panel, query, why) and make the command
//! exit non-zero.

mod env;
mod live;
mod prom;
mod promql;
mod workload;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cmd, workspace_root};

use promql::{Dashboard, Rule};

/// The metric families issues 5 and 15 require, and the io_uring queue
/// classes (issue 13); each must appear on some panel.
pub const REQUIRED: &[&str] = &[
    "claudefs_fuse_requests_total",
    "claudefs_fuse_request_errors_total",
    "claudefs_fuse_request_duration_seconds",
    "claudefs_fuse_flock_requests_total",
    "claudefs_fuse_flock_refused_total",
    "claudefs_fuse_flock_wait_seconds",
    "claudefs_fuse_path_state",
    "claudefs_fuse_path_latency_ema_seconds",
    "claudefs_fuse_path_errors_total",
    "claudefs_fuse_path_score",
    "claudefs_fuse_path_selected_total",
    "claudefs_fuse_paths_usable",
    "claudefs_fuse_recovery_state",
    "claudefs_fuse_recovery_replayed",
    "claudefs_fuse_recovery_total",
    "claudefs_fuse_recovery_recovered",
    "claudefs_fuse_recovery_orphaned",
    "claudefs_fuse_recovery_duration_seconds",
    "claudefs_fuse_idmap_lookups_total",
    "claudefs_fuse_idmap_hits_total",
    "claudefs_fuse_flock_registry_acquires_total",
    "claudefs_fuse_flock_registry_releases_total",
    "claudefs_fuse_flock_registry_conflicts_total",
    "claudefs_fuse_flock_registry_upgrades_total",
    "claudefs_fuse_flock_registry_downgrades_total",
    "claudefs_fuse_spans_dropped_total",
    "claudefs_fuse_probe_events_dropped_total",
    "claudefs_fuse_probe_attached",
    "claudefs_fuse_probe_run_seconds_total",
    "claudefs_fuse_probe_runs_total",
    "claudefs_fuse_build_info",
    "claudefs_fuse_daemon_queue_threads",
    "claudefs_fuse_daemon_queue_demotions_total",
];

/// Series Prometheus adds to every target itself.
pub const PROMETHEUS_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// `cargo xtask dashboards check [--static] [--verbose]`.
pub fn check(static_only: bool, verbose: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let root = workspace_root();
    let dir = root.join("dashboards");
    let mut report = Report::default();

    let mut dashboards = Vec::new();
    for file in promql::dashboard_files(&dir)? {
        match promql::load_dashboard(&file) {
            Ok(d) => dashboards.push(d),
            Err(e) => report.fail(format!("{e:#}")),
        }
    }
    let rules_text = std::fs::read_to_string(dir.join("alerts.yml"))
        .context("cannot read dashboards/alerts.yml")?;
    let rules = promql::parse_rules(&rules_text)?;
    let targets: usize = dashboards.iter().map(|d| d.targets.len()).sum();
    println!(
        "dashboards: {} dashboards, {targets} panel queries, {} alert rules",
        dashboards.len(),
        rules.len()
    );
    for d in &dashboards {
        let panels: BTreeSet<&str> = d.targets.iter().map(|t| t.panel.as_str()).collect();
        println!(
            "  {} ({}): {} panels, {} queries, variables {}",
            d.title,
            d.file.file_name().unwrap_or_default().to_string_lossy(),
            panels.len(),
            d.targets.len(),
            d.variables
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    required_on_panels(&dashboards, &mut report);
    alert_metadata(&root, &rules, &mut report);
    promtool(&dir, &mut report);
    report.section("static checks");

    if !static_only {
        live::run(&root, &dashboards, &rules, verbose, &mut report)?;
    }
    report.finish(started)
}

/// Every family of [`REQUIRED`] is read by some panel query.
fn required_on_panels(dashboards: &[Dashboard], report: &mut Report) {
    let on_panels: BTreeSet<String> = dashboards
        .iter()
        .flat_map(|d| &d.targets)
        .flat_map(|t| promql::metric_names(&t.expr))
        .collect();
    for family in REQUIRED {
        if !on_panels.iter().any(|n| promql::in_family(n, family)) {
            report.fail(format!("required metric {family} is on no panel"));
        }
    }
}

/// Every alert has `for:`, a severity of critical|warning|info, a summary,
/// a description and a `runbook_url` of `README.md#runbook-<name in lower
/// case>`, and that section exists: a `Runbook: <name>` heading in the
/// README.
fn alert_metadata(root: &Path, rules: &[Rule], report: &mut Report) {
    let docs = std::fs::read_to_string(root.join("README.md")).unwrap_or_default();
    let headings: BTreeSet<&str> = docs
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches('#').trim().strip_prefix("Runbook: "))
        .collect();
    for r in rules.iter().filter(|r| r.alert) {
        let field = |k: &str| r.fields.get(k).map(String::as_str).unwrap_or("");
        let mut missing: Vec<String> = ["for", "summary", "description"]
            .iter()
            .filter(|k| field(k).is_empty())
            .map(|k| format!("no {k}"))
            .collect();
        if !["critical", "warning", "info"].contains(&field("severity")) {
            missing.push(format!("severity {:?}", field("severity")));
        }
        let url = format!("README.md#runbook-{}", r.name.to_ascii_lowercase());
        if field("runbook_url") != url {
            missing.push(format!(
                "runbook_url {:?}, want {url:?}",
                field("runbook_url")
            ));
        }
        if !headings.contains(r.name.as_str()) {
            missing.push(format!("no `### Runbook: {}` section", r.name));
        }
        if !missing.is_empty() {
            report.fail(format!("alert {}: {}", r.name, missing.join("; ")));
        }
    }
}

/// `promtool check rules alerts.yml` and `promtool test rules alerts_test.yml`.
fn promtool(dir: &Path, report: &mut Report) {
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let shown = format!("promtool {}", args.join(" "));
        match Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
        {
            Ok(out) if out.status.success() => println!("  {shown}: ok"),
            Ok(out) => report.fail(format!(
                "{shown} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => report.fail(format!(
                "cannot run promtool ({e}); `cargo xtask setup` installs Debian's prometheus"
            )),
        }
    }
}

/// Failures collected over the whole check.
#[derive(Default)]
pub struct Report {
    failures: Vec<String>,
    shown: usize,
}

impl Report {
    pub fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    /// Prints the failures since the last section, under `name`.
    pub fn section(&mut self, name: &str) {
        let new = &self.failures[self.shown..];
        if new.is_empty() {
            println!("{name}: ok");
        } else {
            println!("{name}: {} FAILED", new.len());
            for f in new {
                println!("  FAIL {}", f.replace('\n', "\n       "));
            }
        }
        self.shown = self.failures.len();
    }

    fn finish(mut self, started: std::time::Instant) -> Result<()> {
        if self.shown < self.failures.len() {
            self.section("other");
        }
        let secs = started.elapsed().as_secs_f64();
        if self.failures.is_empty() {
            println!("dashboards check: ok in {secs:.0}s");
            Ok(())
        } else {
            bail!(
                "dashboards check: {} failures in {secs:.0}s (listed above)",
                self.failures.len()
            )
        }
    }
}

/// Builds the daemon binary and returns its path (honours CARGO_TARGET_DIR).
pub fn build_daemon(root: &Path) -> Result<std::path::PathBuf> {
    cmd::cargo(
        root,
        &[
            "build",
            "--quiet",
            "-p",
            "claudefs-fuse",
            "--bin",
            "claudefs-fuse",
        ],
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .map(|p| if p.is_relative() { root.join(p) } else { p })
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("debug/claudefs-fuse"))
}
