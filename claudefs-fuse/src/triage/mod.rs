//! `claudefs-fuse triage`: turns one read-out of the probes
//! ([`ProbeSnapshot`](crate::probes::snapshot::ProbeSnapshot)) into a report
//! per mount and opcode, with flock contention, as a table or as JSON.
//!
//! This module owns the arguments, the report model and its two renderings;
//! the command's run loop (loading the probes, waiting, Ctrl-C) lives with
//! the CLI.

pub mod args;
pub mod format;

pub use args::{OutputFormat, TriageArgs};
