//! The run loop of `claudefs-fuse triage`: attach the probes, collect until
//! the duration ends or Ctrl-C (SIGINT) or SIGTERM, detach, and print the
//! report. The signals are caught from the start, so one that arrives
//! while the probes load still ends with a report (of an empty window).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::probes::mountinfo::MountTable;
use crate::probes::{EventFilter, ProbeOptions, ProbeSet, Probes};
use crate::triage::args::TriageArgs;
use crate::triage::{build_report, render};

/// How often the ring buffer and the loader's bookkeeping are serviced.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the triage command.
pub fn run(args: &TriageArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(collect(args))
}

async fn collect(args: &TriageArgs) -> Result<()> {
    // Registered before anything slow, so Ctrl-C or `timeout` never kills
    // the command without its report.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mounts_before = MountTable::read_self().context("cannot read /proc/self/mountinfo")?;
    let only_conn = match &args.mount {
        None => None,
        Some(path) => {
            let entry = mounts_before
                .resolve(path)
                .with_context(|| format!("--mount {}", path.display()))?;
            if !entry.is_fuse() {
                bail!(
                    "--mount {}: not on a FUSE mount (it is on {entry})",
                    path.display()
                );
            }
            Some(entry.dev)
        }
    };
    let scope = match (&args.mount, only_conn) {
        (Some(p), Some(_)) => format!("the FUSE mount holding {}", p.display()),
        _ => "every FUSE mount on this host".to_string(),
    };

    let mut probes = Probes::load(&ProbeOptions {
        events: EventFilter::Off,
        only_conn,
        set: ProbeSet::All,
        classic_only: false,
    })?;
    for warning in probes.warnings() {
        eprintln!("triage: {warning}");
    }
    eprintln!(
        "triage: collecting for {} s on {scope} (Ctrl-C to stop early)",
        args.duration
    );

    let started = Instant::now();
    // The duration is at most a week (args), so this cannot overflow; if
    // it did, collect until a signal.
    let deadline = started.checked_add(Duration::from_secs(args.duration));
    let progress = std::io::stderr().is_terminal();
    let mut next_progress = started;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    let mut interrupted = None;
    loop {
        tokio::select! {
            _ = sigint.recv() => { interrupted = Some("Ctrl-C"); }
            _ = sigterm.recv() => { interrupted = Some("SIGTERM"); }
            _ = ticker.tick() => {}
        }
        probes.poll()?;
        let now = Instant::now();
        if interrupted.is_some() || deadline.is_some_and(|d| now >= d) {
            break;
        }
        if progress && now >= next_progress {
            next_progress = now + Duration::from_secs(1);
            let snap = probes.snapshot()?;
            let requests: u64 = snap.ops.iter().map(|o| o.stats.count).sum();
            let flocks: u64 = snap.flocks.iter().map(|f| f.calls).sum();
            eprint!(
                "\rtriage: {:>3}/{} s  {requests} FUSE requests  {flocks} flock calls   ",
                now.duration_since(started).as_secs(),
                args.duration
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprint!("\r{:79}\r", "");
    }
    if let Some(signal) = interrupted {
        eprintln!(
            "triage: stopped early by {signal} after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let mut snapshot = probes.snapshot()?;
    snapshot.in_flight = probes.in_flight()?;
    drop(probes);

    // Mounts seen before or after the collection both name connections.
    let mut entries = mounts_before.entries().to_vec();
    if let Ok(after) = MountTable::read_self() {
        for e in after.entries() {
            if !entries.iter().any(|x| x.dev == e.dev) {
                entries.push(e.clone());
            }
        }
    }
    let mounts = MountTable::from_entries(entries);
    let report = build_report(&snapshot, &mounts, only_conn);
    let mut out = std::io::stdout().lock();
    out.write_all(render(&report, args.format).as_bytes())?;
    out.flush()?;
    Ok(())
}
