//! Command-line interface of the `claudefs-fuse` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "claudefs-fuse",
    version,
    about = "ClaudeFS FUSE client and its eBPF observability add-on"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount ClaudeFS (runs in the foreground until unmounted or signalled).
    Mount(crate::daemon::config::MountArgs),
    /// Print the live state of a running daemon.
    Status(crate::daemon::config::StatusArgs),
    /// Hand a mount's connection to a new server binary without remounting.
    Upgrade(crate::daemon::keeper::UpgradeArgs),
    /// Attach the probes to every FUSE mount, collect, and report what is slow.
    Triage(crate::triage::TriageArgs),
    /// Export the probes' metrics (and spans) for every FUSE mount, until stopped.
    Observe(crate::exporter::observe::ObserveArgs),
}

/// Entry point of the binary: parses the arguments, runs the command and
/// turns an error into one clear line on stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!(
                "claudefs-fuse: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Mount(args) => crate::daemon::run_mount(args),
        Command::Status(args) => crate::daemon::run_status(args),
        Command::Upgrade(args) => crate::daemon::keeper::run_upgrade(args),
        Command::Triage(args) => crate::triage::run(&args),
        Command::Observe(args) => crate::exporter::observe::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claudefs-fuse: {e:#}");
            ExitCode::from(1)
        }
    }
}
