//! The JSON rendering of a [`TriageReport`]: one pretty-printed document,
//! the report's serde form, with `"schema_version"` at the top level. The
//! schema is documented in the README ("Triage JSON schema").

use crate::triage::report::TriageReport;

/// Renders the report as one JSON document (ends with a newline).
pub fn render_json(report: &TriageReport) -> String {
    match serde_json::to_string_pretty(report) {
        Ok(mut text) => {
            text.push('\n');
            text
        }
        // Cannot happen for these types (no maps with non-string keys);
        // still, print a valid document rather than panic.
        Err(err) => format!(
            "{{\"schema_version\": {}, \"error\": {}}}\n",
            report.schema_version,
            serde_json::Value::String(err.to_string())
        ),
    }
}
