//! `cargo xtask <command>`: project automation. `setup` installs what a
//! fresh machine lacks, `test` is the CI entry point, `demo` is the main job
//! on an embedded default, `build-ebpf` builds the probes, `bench` measures,
//! `dashboards check` proves the Grafana dashboards and alert rules against
//! a real Prometheus scraping a live daemon, `deploy generate` writes the
//! Kubernetes objects made from `dashboards/`.

mod bench;
mod cmd;
mod dashboards;
mod demo;
mod deploy;
mod ebpf;
mod setup;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "claudefs-fuse project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces and packages this project needs (idempotent).
    Setup,
    /// Setup, then fmt check, clippy -D warnings, every test in the workspace
    /// and the dashboards check.
    Test,
    /// Mount a demo client (with the exporter), attach the probes, run a
    /// workload, show the report, then keep serving metrics until Ctrl-C.
    Demo {
        /// Finish right after the report (also: CLAUDEFS_DEMO_NO_WAIT=1).
        #[arg(long)]
        no_wait: bool,
    },
    /// Build the eBPF probes object (nightly, -Z build-std=core, bpf-linker).
    BuildEbpf,
    /// Run the benchmarks (release build): all, or one by name (e.g. `daemon`).
    Bench {
        /// Only this benchmark (`daemon`, `probes`, ...).
        name: Option<String>,
    },
    /// The fleet deployment files in `deploy/`.
    Deploy {
        #[command(subcommand)]
        action: DeployAction,
    },
    /// Grafana dashboards and Prometheus alert rules in `dashboards/`.
    Dashboards {
        #[command(subcommand)]
        action: DashboardsAction,
    },
}

#[derive(Subcommand)]
enum DeployAction {
    /// Write the Kubernetes ConfigMap of the dashboards and the
    /// PrometheusRule of the alerts from `dashboards/`.
    Generate,
}

#[derive(Subcommand)]
enum DashboardsAction {
    /// Check the dashboards and rules: statically, then against a real
    /// Prometheus scraping a live daemon under a workload (root, /dev/fuse).
    Check {
        /// Only the static checks (parsing, metric coverage, promtool).
        #[arg(long = "static")]
        static_only: bool,
        /// Print every panel query's series count and largest value.
        #[arg(long)]
        verbose: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test => test(),
        Command::Demo { no_wait } => {
            demo::run(no_wait || std::env::var("CLAUDEFS_DEMO_NO_WAIT").is_ok_and(|v| v == "1"))
        }
        Command::Bench { name } => bench::run(name.as_deref()),
        Command::BuildEbpf => setup::run().and_then(|()| {
            let object = ebpf::build_ebpf(&workspace_root())?;
            println!("{}", object.display());
            Ok(())
        }),
        Command::Deploy {
            action: DeployAction::Generate,
        } => deploy::generate(&workspace_root()),
        Command::Dashboards {
            action:
                DashboardsAction::Check {
                    static_only,
                    verbose,
                },
        } => dashboards::check(static_only, verbose),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn test() -> Result<()> {
    setup::run()?;
    let root = workspace_root();
    cmd::cargo(&root, &["fmt", "--all", "--", "--check"])?;
    cmd::cargo(&root, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cmd::cargo(&root, &["build", "--bins"])?;
    // Every test runs with the daemon on io_uring where the kernel has it
    // (named: under a keeper `auto` means /dev/fuse), then the daemon's e2e
    // suites again on /dev/fuse. Tests that name a transport keep theirs.
    if std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        std::env::set_var("CLAUDEFS_TEST_TRANSPORT", "uring");
    }
    let (mut passed, mut failed) = cmd::cargo_test(&root, &[])?;
    std::env::set_var("CLAUDEFS_TEST_TRANSPORT", "dev");
    let (p, f) = cmd::cargo_test(
        &root,
        &[
            "-p",
            "claudefs-e2e",
            "--test",
            "daemon_posix",
            "--test",
            "daemon_flock",
            "--test",
            "daemon_paths",
        ],
    )?;
    std::env::remove_var("CLAUDEFS_TEST_TRANSPORT");
    passed += p;
    failed += f;
    // The live dashboard proof mounts FUSE and loads probes: it needs root
    // and /dev/fuse. CI has both and must run it; elsewhere say why not.
    let live_possible = effective_uid_is_root() && std::path::Path::new("/dev/fuse").exists();
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !live_possible && !in_ci {
        eprintln!("xtask: not root or no /dev/fuse: dashboards check runs its static part only");
    }
    dashboards::check(!live_possible && !in_ci, false)?;
    // One closing line for whoever reads the end of the log.
    println!("summary: {} passed, {failed} failed", passed + 1);
    Ok(())
}

/// Whether this process runs with effective uid 0 (from /proc/self/status).
fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
