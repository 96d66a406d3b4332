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
            eprintln!("claudefs-fuse: {} (see --help)", one_line(&e.to_string()));
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

/// The first paragraph of a clap error as one line: clap puts what was
/// wrong on the first line and the missing arguments or the possible
/// values on the lines below it (`the following required arguments were
/// not provided: --state-dir <DIR>`), then a blank line and the usage.
fn one_line(text: &str) -> String {
    let words: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let line = words.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    if line.is_empty() {
        "bad arguments".to_string()
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(argv: &[&str]) -> String {
        match Cli::try_parse_from(std::iter::once("claudefs-fuse").chain(argv.iter().copied())) {
            Ok(cli) => panic!("{argv:?} parsed: {cli:?}"),
            Err(e) => one_line(&e.to_string()),
        }
    }

    #[test]
    fn errors_are_one_line_naming_the_flag() {
        let cases: [(&[&str], &str); 6] = [
            (&["status"], "--state-dir"),
            (&["mount", "--path", "/a"], "<MOUNTPOINT>"),
            (&["mount", "--threads", "-1", "/m"], "--threads"),
            (&["mount", "--policy", "fastest", "/m"], "round-robin"),
            (&["triage", "--duration", "-5"], "--duration"),
            (&["observe", "--sample-rate", "-0.5"], "--sample-rate"),
        ];
        for (argv, named) in cases {
            let line = parse_error(argv);
            assert!(line.contains(named), "{argv:?}: {line}");
            assert!(
                !line.contains('\n') && !line.starts_with("error"),
                "{line:?}"
            );
        }
    }

    #[test]
    fn one_line_keeps_the_first_paragraph() {
        let text = "error: the following required arguments were not provided:\n  --state-dir <DIR>\n\nUsage: x\n";
        assert_eq!(
            one_line(text),
            "the following required arguments were not provided: --state-dir <DIR>"
        );
        assert_eq!(one_line(""), "bad arguments");
    }
}
