//! `claudefs-fuse triage`: turns one read-out of the probes
//! ([`ProbeSnapshot`](crate::probes::snapshot::ProbeSnapshot)) into a report
//! per mount and opcode, with flock contention, as a table or as JSON.
//!
//! This module owns the arguments, the run loop (`collect`: loading the
//! probes, waiting, Ctrl-C), the report model and its two renderings.

pub mod args;
mod build;
pub mod collect;
pub mod format;
pub mod json;
pub mod report;
pub mod table;

#[cfg(test)]
mod tests;

pub use args::{OutputFormat, TriageArgs};
pub use collect::run;
pub use report::{build_report, TriageReport};

/// Renders a report in the chosen format (the text ends with a newline).
pub fn render(report: &TriageReport, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => table::render_table(report),
        OutputFormat::Json => json::render_json(report),
    }
}
