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
pub enum Command {}

/// Entry point of the binary: parses the arguments, runs the command and
/// turns an error into one clear line on stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {}
}
