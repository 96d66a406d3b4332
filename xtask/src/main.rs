//! `cargo xtask <command>`: project automation. `setup` installs what a
//! fresh machine lacks, `test` is the CI entry point, `demo` is the main job
//! on an embedded default, `build-ebpf` builds the probes, `bench` measures,
//! `dashboards check` proves the Grafana dashboards and alert rules against
//! a real Prometheus scraping a live daemon.

mod cmd;
mod dashboards;
mod demo;
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
    /// Setup, then fmt check, clippy -D warnings and every test in the workspace.
    Test,
    /// Mount a demo client, attach the probes, run a workload, show the report.
    Demo,
    /// Build the eBPF probes object (nightly, -Z build-std=core, bpf-linker).
    BuildEbpf,
    /// Grafana dashboards and Prometheus alert rules in `dashboards/`.
    Dashboards {
        #[command(subcommand)]
        action: DashboardsAction,
    },
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
        Command::Demo => demo::run(),
        Command::BuildEbpf => setup::run().and_then(|()| {
            let object = ebpf::build_ebpf(&workspace_root())?;
            println!("{}", object.display());
            Ok(())
        }),
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
    cmd::cargo(&root, &["test"])?;
    Ok(())
}
