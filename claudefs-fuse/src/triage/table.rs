//! The human rendering of a [`TriageReport`]: a header with the window and
//! the mounts seen, the notes, then per mount an aligned opcode table, the
//! log2 histograms of the heaviest opcodes (drawn like bpftrace's `hist()`)
//! and the top processes; then the flock section.

use std::fmt::Write as _;

use crate::triage::format::{bucket_label, format_opt_duration_ns, format_rate};
use crate::triage::report::{
    FlockReport, HistogramReport, LatencySummary, LockKind, LockMode, MountRef, MountReport,
    NoteLevel, ProcRow, TriageReport,
};

/// Width of a histogram bar at the largest bucket.
pub const HIST_BAR_WIDTH: usize = 40;
const INDENT: &str = "  ";

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

/// Renders the whole report as text (ends with a newline).
pub fn render_table(report: &TriageReport) -> String {
    let mut out = String::new();
    header(&mut out, report);
    if !report.notes.is_empty() {
        out.push('\n');
        for note in &report.notes {
            let level = match note.level {
                NoteLevel::Info => "note",
                NoteLevel::Warning => "warning",
            };
            let _ = writeln!(out, "{level}: {}", note.message);
        }
    }
    if report.probes.fuse_attached && report.mounts.is_empty() {
        let scope = report
            .filter
            .as_ref()
            .map(|f| format!(" on {}", f.label()))
            .unwrap_or_default();
        let _ = writeln!(out, "\nno FUSE activity observed{scope}");
    }
    for mount in &report.mounts {
        mount_section(&mut out, mount);
    }
    if report.probes.flock_attached {
        flock_section(&mut out, &report.flock);
    }
    out
}

fn header(out: &mut String, report: &TriageReport) {
    let w = &report.window;
    let _ = writeln!(
        out,
        "claudefs-fuse triage: {} .. {} ({})",
        w.started, w.ended, w.duration
    );
    if let Some(filter) = &report.filter {
        let _ = writeln!(out, "mount filter: {}", describe_mount(filter));
    }
    if report.probes.fuse_attached {
        let t = &report.totals;
        let labels: Vec<&str> = report.mounts.iter().map(|m| m.mount.label()).collect();
        let _ = write!(
            out,
            "FUSE: {} request{}, {} error{}, {} total on {} active mount{}",
            t.requests,
            plural(t.requests),
            t.errors,
            plural(t.errors),
            t.total,
            labels.len(),
            plural(labels.len())
        );
        if !labels.is_empty() {
            let _ = write!(out, " ({})", labels.join(", "));
        }
        let idle: Vec<&str> = report
            .idle_fuse_mounts
            .iter()
            .map(MountRef::label)
            .collect();
        if !idle.is_empty() {
            let _ = write!(
                out,
                "; {} idle FUSE mount{} ({})",
                idle.len(),
                plural(idle.len()),
                idle.join(", ")
            );
        }
        out.push('\n');
    }
}

fn plural<N: TryInto<u64>>(n: N) -> &'static str {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `/mnt/x (fuse.sshfs, alice@db1:/srv, conn 0:53)`, or the bare conn.
fn describe_mount(m: &MountRef) -> String {
    match (&m.mount_point, &m.fstype, &m.source) {
        (Some(point), fstype, source) => format!(
            "{point} ({}, {}, conn {})",
            fstype.as_deref().unwrap_or("?"),
            source.as_deref().unwrap_or("?"),
            m.conn
        ),
        (None, _, _) => format!("conn {} (not in the mount table)", m.conn),
    }
}

fn mount_section(out: &mut String, m: &MountReport) {
    let _ = writeln!(out, "\n== {} ==", describe_mount(&m.mount));
    let _ = writeln!(
        out,
        "{INDENT}{} request{}, {} error{}, {} total",
        m.totals.requests,
        plural(m.totals.requests),
        m.totals.errors,
        plural(m.totals.errors),
        m.totals.total
    );
    if !m.in_flight.is_empty() {
        let _ = writeln!(out, "\n{INDENT}requests in flight (not answered):");
        let rows: Vec<Vec<String>> = m
            .in_flight
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.count.to_string(),
                    r.oldest_age.clone(),
                    r.oldest_tgid.to_string(),
                    comm_or_dash(&r.oldest_comm),
                ]
            })
            .collect();
        let columns = [
            ("OPCODE", Left),
            ("COUNT", Right),
            ("OLDEST", Right),
            ("PID", Right),
            ("COMM", Left),
        ];
        write_table(out, &format!("{INDENT}{INDENT}"), &columns, &rows);
    }
    if !m.ops.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = m
            .ops
            .iter()
            .map(|op| {
                let l = &op.latency.display;
                vec![
                    op.name.clone(),
                    op.count.to_string(),
                    op.errors.to_string(),
                    format_rate(op.rate_per_sec),
                    l.p50.clone(),
                    l.p90.clone(),
                    l.p99.clone(),
                    l.max.clone(),
                    l.total.clone(),
                ]
            })
            .collect();
        let columns = [
            ("OPCODE", Left),
            ("COUNT", Right),
            ("ERRORS", Right),
            ("RATE", Right),
            ("P50", Right),
            ("P90", Right),
            ("P99", Right),
            ("MAX", Right),
            ("TOTAL", Right),
        ];
        write_table(out, INDENT, &columns, &rows);
    }
    for hist in &m.histograms {
        out.push('\n');
        out.push_str(&render_histogram(hist, INDENT));
    }
    if m.top_processes_by_requests == m.top_processes_by_time {
        // Same processes in the same order: one table says it all.
        procs_table(
            out,
            "top processes by requests and by time",
            &m.top_processes_by_requests,
        );
    } else {
        procs_table(
            out,
            "top processes by requests",
            &m.top_processes_by_requests,
        );
        procs_table(out, "top processes by time", &m.top_processes_by_time);
    }
}

fn procs_table(out: &mut String, title: &str, procs: &[ProcRow]) {
    if procs.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{INDENT}{title}:");
    let rows: Vec<Vec<String>> = procs
        .iter()
        .map(|p| {
            vec![
                p.tgid.to_string(),
                comm_or_dash(&p.comm),
                p.requests.to_string(),
                p.total.clone(),
                format_opt_duration_ns(p.mean_ns),
            ]
        })
        .collect();
    let columns = [
        ("PID", Right),
        ("COMM", Left),
        ("REQUESTS", Right),
        ("TOTAL", Right),
        ("MEAN", Right),
    ];
    write_table(out, &format!("{INDENT}{INDENT}"), &columns, &rows);
}

fn comm_or_dash(comm: &str) -> String {
    if comm.is_empty() {
        "-".to_owned()
    } else {
        comm.to_owned()
    }
}

fn flock_section(out: &mut String, flock: &FlockReport) {
    out.push_str("\n== flock ==\n");
    if flock.rows.is_empty() {
        let _ = writeln!(out, "{INDENT}no flock calls observed");
        return;
    }
    let wait_cells = |w: &LatencySummary| {
        [
            w.display.p50.clone(),
            w.display.p99.clone(),
            w.display.max.clone(),
            w.display.total.clone(),
        ]
    };
    let rows: Vec<Vec<String>> = flock
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.target.label.clone(),
                kind_name(r.kind).to_owned(),
                mode_name(r.mode).to_owned(),
                r.calls.to_string(),
                r.refused.to_string(),
                r.waited.to_string(),
            ];
            row.extend(wait_cells(&r.wait));
            row
        })
        .collect();
    let columns = [
        ("TARGET", Left),
        ("KIND", Left),
        ("MODE", Left),
        ("CALLS", Right),
        ("REFUSED", Right),
        ("WAITED", Right),
        ("WAIT P50", Right),
        ("WAIT P99", Right),
        ("WAIT MAX", Right),
        ("WAIT TOTAL", Right),
    ];
    write_table(out, INDENT, &columns, &rows);

    if flock.top_waiters.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{INDENT}top waiting processes:");
    let rows: Vec<Vec<String>> = flock
        .top_waiters
        .iter()
        .map(|w| {
            vec![
                w.tgid.to_string(),
                comm_or_dash(&w.comm),
                w.calls.to_string(),
                w.total_wait.clone(),
                w.max_wait.clone(),
                w.target.label.clone(),
                match &w.file {
                    Some(file) => file.clone(),
                    None => format!("inode {} (no open fd found)", w.ino),
                },
            ]
        })
        .collect();
    let columns = [
        ("PID", Right),
        ("COMM", Left),
        ("CALLS", Right),
        ("TOTAL WAIT", Right),
        ("MAX WAIT", Right),
        ("TARGET", Left),
        ("FILE", Left),
    ];
    write_table(out, &format!("{INDENT}{INDENT}"), &columns, &rows);
}

fn kind_name(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Shared => "shared",
        LockKind::Exclusive => "exclusive",
        LockKind::Unlock => "unlock",
    }
}

fn mode_name(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Blocking => "blocking",
        LockMode::Nonblocking => "nonblocking",
    }
}

/// Lines a histogram is drawn with at most: wider ranges merge neighbouring
/// buckets.
pub const HIST_MAX_LINES: usize = 40;

/// A histogram drawn like bpftrace's `hist()`: a title line, then one line
/// per bucket (about 9% wide) from the lowest to the highest non-empty one,
/// with the bucket's bounds, the count and a bar of `@` scaled to the
/// largest line; a range of more than [`HIST_MAX_LINES`] buckets is drawn
/// with neighbouring buckets merged. Every line starts with `indent`.
pub fn render_histogram(hist: &HistogramReport, indent: &str) -> String {
    let mut out = format!("{indent}{} latency:\n", hist.name);
    let per_line = hist.buckets.len().div_ceil(HIST_MAX_LINES).max(1);
    let lines: Vec<(u64, u64, u64)> = hist
        .buckets
        .chunks(per_line)
        .map(|c| {
            let count = c.iter().fold(0u64, |a, b| a.saturating_add(b.count));
            (c[0].lower_ns, c[c.len() - 1].upper_ns, count)
        })
        .collect();
    let max = lines.iter().map(|l| l.2).max().unwrap_or(0);
    let labels: Vec<String> = lines.iter().map(|l| bucket_label(l.0, l.1)).collect();
    let width = labels.iter().map(String::len).max().unwrap_or(0);
    for ((_, _, count), label) in lines.iter().zip(&labels) {
        let bar = if max == 0 {
            0
        } else {
            // u128: count * width cannot overflow.
            (u128::from(*count) * HIST_BAR_WIDTH as u128 / u128::from(max)) as usize
        };
        let _ = writeln!(
            out,
            "{indent}{label:<width$}  {count:>8} |{:<bar_width$}|",
            "@".repeat(bar),
            bar_width = HIST_BAR_WIDTH
        );
    }
    out
}

/// Writes rows under a header, each column as wide as its widest cell,
/// columns two spaces apart, trailing spaces trimmed.
fn write_table(out: &mut String, indent: &str, columns: &[(&str, Align)], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from(indent);
        for (i, ((cell, width), (_, align))) in row.iter().zip(&widths).zip(columns).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = match align {
                Left => write!(line, "{cell:<width$}"),
                Right => write!(line, "{cell:>width$}"),
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}
