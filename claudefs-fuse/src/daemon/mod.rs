//! `claudefs-fuse mount` and `claudefs-fuse status`: a multi-threaded FUSE
//! daemon serving a directory tree reached through one or more storage
//! paths, built on the Phase-6 modules.
//!
//! Roles: `config` (flags and TOML), `storage` (`*at()` syscalls on a root
//! fd), `inodes` (stable inode numbers), `router` (multipath routing,
//! retry, health checks), `ops` (the POSIX core), `attr` (its attribute
//! types), `fs` (the thin boundary between `crate::session` and the core), `locks` (flock), `idmap` (uid/gid mapping), `journal` (open
//! files, pending writes, crash recovery), `spans` (per-request spans),
//! `kernel_join` (kernel events met with requests, `--ebpf`), `status`
//! (live state over a unix socket), `nummap` (the hasher of the maps keyed
//! by handle or inode number), `fdcache` (shared read-only backing fds), `pagecache` (when the kernel
//! keeps a file's cached pages at open), `backing` (passthrough
//! registrations), `mount` (the /dev/fuse mount), `journal_line` (the
//! journal's record format). Metrics and OTLP export live in
//! `crate::exporter`.

pub mod attr;
pub mod backing;
pub mod config;
pub mod fdcache;
pub mod filehandle;
pub mod fs;
pub mod handover;
pub mod idmap;
pub mod inodes;
pub mod journal;
pub mod journal_line;
pub mod journal_state;
pub mod keeper;
pub mod kernel_join;
pub mod locks;
pub mod mount;
pub mod nummap;
pub mod ops;
pub mod pagecache;
pub mod recovery;
pub mod router;
pub mod server;
pub mod spans;
pub mod status;
pub mod storage;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::session::{Readers, Transport};
use anyhow::{bail, Context};

use config::{MountArgs, StatusArgs};

/// The file system type of the mount at `abs`, if it is a mount point.
fn fstype_at(abs: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = abs.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(target.as_str()))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|r| r.split(' ').next())
        .map(str::to_string)
}

/// Whether `dir` is already a mount point (or a dead FUSE mount). A dead
/// claudefs-fuse mount (its daemon killed whole: no server, no keeper) is
/// detached first: nothing can use it any more, and a service manager
/// restarting the mount would otherwise fail on it.
pub(crate) fn check_mountpoint(dir: &Path) -> anyhow::Result<PathBuf> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let abs = std::path::absolute(dir)?;
            if fstype_at(&abs).as_deref() != Some(mount::FSTYPE) {
                bail!(
                    "mountpoint {} is in use (a dead FUSE mount; unmount it first)",
                    dir.display()
                )
            }
            tracing::warn!(
                "{}: a dead claudefs-fuse mount (its daemon was killed): detaching it",
                dir.display()
            );
            let c = CString::new(abs.as_os_str().as_bytes())?;
            // SAFETY: valid C string; detaches the dead mount.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                bail!(
                    "mountpoint {} is a dead claudefs-fuse mount that cannot be detached: {}",
                    dir.display(),
                    std::io::Error::last_os_error()
                );
            }
            return check_mountpoint(dir);
        }
        Err(e) => bail!("mountpoint {}: {e}", dir.display()),
    };
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", dir.display());
    }
    let abs = dir.canonicalize()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = abs.to_string_lossy().replace(' ', "\\040");
    if abs != Path::new("/")
        && mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
    {
        bail!(
            "mountpoint {} is in use (already a mount point)",
            dir.display()
        );
    }
    Ok(abs)
}

/// Takes the state dir's lock file (one daemon per state dir).
pub(crate) fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--state-dir {}: cannot create it", dir.display()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("daemon.lock"))
        .with_context(|| format!("state dir {}", dir.display()))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "state dir {} is in use by another claudefs-fuse daemon",
            dir.display()
        );
    }
    Ok(f)
}

/// Logs to stderr, filtered by `CLAUDEFS_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAUDEFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Unmounts `mountpoint`. A busy mount is detached lazily;
/// if files stay open on it for [`BUSY_GRACE`], the FUSE connection is
/// aborted so the daemon can exit (the open files then get `ENOTCONN`).
pub(crate) fn unmount(mountpoint: &Path, done: &AtomicBool) {
    let Ok(c) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    let dev = std::fs::metadata(mountpoint)
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        .ok();
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return;
    }
    tracing::warn!("{} is busy: detaching it", mountpoint.display());
    // SAFETY: valid C string; detaches a busy mount.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    let t0 = std::time::Instant::now();
    while t0.elapsed() < BUSY_GRACE {
        if done.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(dev) = dev {
        let minor = libc::minor(dev);
        tracing::warn!("files still open after {BUSY_GRACE:?}: aborting the FUSE connection");
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1");
    }
}

/// How long a busy mount may keep the daemon after SIGTERM.
const BUSY_GRACE: Duration = Duration::from_secs(2);

/// Waits for SIGINT/SIGTERM on a helper thread, then unmounts `mountpoint`.
pub(crate) fn spawn_signal_handler(
    mountpoint: PathBuf,
    done: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("cfs-signals".into())
        .spawn(move || {
            rt.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            });
            tracing::info!("signal received: unmounting {}", mountpoint.display());
            unmount(&mountpoint, &done);
        })?;
    Ok(())
}

/// Raises the soft limit on open files to the hard one: every file open
/// on the mount holds a backing fd in the daemon, and the usual soft
/// limit (1024) is far below what applications open.
pub(crate) fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                tracing::warn!("cannot raise the open-file limit above {}", lim.rlim_cur);
            }
        }
    }
}

/// Starts the thread that, about once a second, closes cached read-only
/// fds that are idle or on failed paths (see `fdcache`) and drops idle
/// passthrough registrations on failed paths (see `backing`); it stops
/// when `stop` is set.
pub(crate) fn spawn_sweeper(
    core: Arc<ops::Core>,
    passthrough: Arc<backing::Passthrough>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cfs-sweeper".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                core.fds
                    .sweep(std::time::Instant::now(), |p| core.router.usable(p));
                passthrough.sweep(&core.router);
            }
        })?;
    Ok(())
}

/// `claudefs-fuse mount`: the keeper of the mount (by default), the server
/// a keeper runs (its channel in the environment), or a server alone
/// (`--no-keeper`), in the foreground until unmounted or signalled.
pub fn run_mount(args: MountArgs) -> anyhow::Result<()> {
    init_logging();
    if let Some(chan) = handover::Channel::from_env() {
        return server::run(args.resolve()?, server::Launch::Keeper(chan?));
    }
    let s = args.resolve()?;
    if s.keeper {
        keeper::run(s)
    } else {
        server::run(s, server::Launch::Alone)
    }
}

/// What the exporter reads from the daemon.
pub(crate) struct ExportParts {
    core: Arc<ops::Core>,
    locks: Arc<locks::Locks>,
    spans: Arc<spans::Spans>,
    joiner: Arc<kernel_join::Joiner>,
    summary: recovery::RecoverySummary,
    readers: Arc<Readers>,
    threads: usize,
    transport: Transport,
    counters: Arc<crate::session::Counters>,
    keeper: Arc<server::KeeperView>,
    queue_sched: Arc<crate::session::queue_sched::QueueSched>,
}

/// The exporter's view of the `/dev/fuse` workers, `threads` in all.
pub(crate) fn workers_view(
    readers: &Readers,
    threads: usize,
) -> crate::exporter::daemon_metrics::WorkersView {
    let (poll_hits, poll_misses) = readers.poll_counts();
    crate::exporter::daemon_metrics::WorkersView {
        threads,
        reading: readers.reading().min(threads),
        parked: readers.parked(),
        woken_may_block: readers.wakeups.may_block.load(Ordering::Relaxed),
        woken_stalled: readers.wakeups.stalled.load(Ordering::Relaxed),
        woken_backlog: readers.wakeups.backlog.load(Ordering::Relaxed),
        poll_hits,
        poll_misses,
    }
}

/// `mountpoint` with the symlinks of its parent resolved, as
/// `/proc/self/mountinfo` names it (unchanged if the parent cannot be).
fn as_mounted(mountpoint: &Path) -> PathBuf {
    match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| mountpoint.to_path_buf()),
        _ => mountpoint.to_path_buf(),
    }
}

/// Starts the exporter thread if anything is to be exported. A failure
/// to load the probes or set up OTLP is a warning: the mount serves on.
pub(crate) fn start_exporter(
    s: &config::Settings,
    mountpoint: &Path,
    listener: Option<std::net::TcpListener>,
    otlp: Option<crate::exporter::otlp::OtlpTarget>,
    parts: ExportParts,
) -> Option<crate::exporter::Exporter> {
    use crate::exporter::{self as ex, daemon_metrics as dm};
    if listener.is_none() && otlp.is_none() && !s.ebpf {
        return None;
    }
    let metrics = Arc::new(ex::Metrics::new());
    let stats = Arc::new(ex::otlp::ExportStats::default());
    // As the mount table spells it: through symlinks above the mountpoint
    // (not into it, which would be a request to this very daemon).
    let mountpoint = &as_mounted(mountpoint);
    let conn = crate::probes::mountinfo::MountTable::read_self()
        .ok()
        .and_then(|t| t.mounted_at(mountpoint).map(|e| e.dev));
    if conn.is_none() {
        tracing::warn!(
            "{} is not in /proc/self/mountinfo: the probes report every FUSE mount; \
             claudefs_fuse_requests_waiting looks for it again at each scrape",
            mountpoint.display()
        );
    }
    if listener.is_some() {
        match ex::fusectl::Fusectl::find_or_mount() {
            Ok(fc) => {
                let only = ex::fusectl::Connections::MountedAt(mountpoint.to_path_buf());
                let c = ex::fusectl::WaitingCollector::new(fc, only);
                if let Err(e) = metrics.register(Box::new(c)) {
                    tracing::warn!("{e}");
                }
            }
            Err(e) => {
                tracing::warn!("fusectl unavailable ({e}): no claudefs_fuse_requests_waiting")
            }
        }
    }
    let probes = if s.ebpf {
        // Only the FUSE request programs: the daemon measures the flock
        // requests it serves itself (see `locks`).
        let opts = crate::probes::ProbeOptions {
            events: crate::probes::EventFilter::All,
            only_conn: conn,
            set: crate::probes::ProbeSet::Fuse,
            classic_only: false,
        };
        match ex::load_probes(&opts) {
            Ok(p) => {
                let collector =
                    ex::probe_metrics::ProbeCollector::new(p.clone(), conn).without_flock();
                if let Err(e) = metrics.register(Box::new(collector)) {
                    tracing::warn!("{e}");
                }
                parts.core.router.set_kernel_latency(true);
                parts.joiner.set_active(true);
                tracing::info!("probes attached for {}", mountpoint.display());
                Some(p)
            }
            Err(e) => {
                tracing::warn!("--ebpf: cannot load the probes ({e}); serving without them");
                None
            }
        }
    } else {
        None
    };
    let view = {
        let (core, locks, spans, stats) = (
            parts.core.clone(),
            parts.locks.clone(),
            parts.spans.clone(),
            stats.clone(),
        );
        let summary = parts.summary.clone();
        let (readers, threads) = (parts.readers.clone(), parts.threads);
        let transport = parts.transport.name();
        let (session, keeper) = (parts.counters.clone(), parts.keeper.clone());
        let queue_sched = parts.queue_sched.clone();
        let uring = parts.transport == Transport::Uring;
        let mount = mountpoint.display().to_string();
        Arc::new(move || {
            let counters = core.router.counters();
            let paths = core
                .router
                .snapshot()
                .into_iter()
                .map(|(p, _)| {
                    let c = counters.get(p.id.0 as usize).copied().unwrap_or_default();
                    dm::PathView {
                        id: p.id.0,
                        remote_addr: p.remote_addr.clone(),
                        state: p.state,
                        latency_ema_us: p.metrics.latency_us,
                        errors_total: c.errors,
                        score: p.metrics.score(),
                        selected_total: c.selected,
                    }
                })
                .collect();
            let lm = locks.metrics();
            dm::DaemonView {
                mount: mount.clone(),
                paths,
                recovery: summary.clone(),
                idmap: core.idmap.mapper().stats(),
                flock: lm.stats,
                flock_waiting: lm.waiting,
                flock_calls: lm.calls,
                open_files: core.open_count(),
                requests: spans.op_counts(),
                spans_dropped: spans.counts().1 + stats.lost(),
                spans_exported: stats.exported.load(Ordering::Relaxed),
                workers: workers_view(&readers, threads),
                transport,
                queues: uring.then(|| {
                    let q = queue_sched.view();
                    dm::QueuesView {
                        idle: q.idle,
                        normal: q.threads.saturating_sub(q.idle),
                        demotions: q.demotions,
                    }
                }),
                server: dm::ServerView {
                    generation: keeper.generation,
                    restarts: keeper.restarts,
                    upgrades: keeper.upgrades,
                    last_gap_seconds: keeper.gap(),
                    resent: session.resent.load(Ordering::Relaxed),
                    deduplicated: core.deduplicated.load(Ordering::Relaxed),
                },
            }
        })
    };
    if let Err(e) = metrics.register(Box::new(dm::DaemonCollector::new(view))) {
        tracing::warn!("{e}");
    }
    let join = probes.as_ref().map(|_| ex::JoinTarget {
        joiner: parts.joiner.clone(),
        router: parts.core.router.clone(),
        spans: parts.spans.clone(),
    });
    let cfg = ex::ExporterConfig {
        listener,
        metrics,
        probes,
        otlp,
        span_buffer: Some(parts.spans.buffer()),
        join,
        kernel_spans: None,
        slow: s.slow_threshold,
        stats,
    };
    match ex::Exporter::start(cfg) {
        Ok(e) => {
            if let Some(a) = s.metrics_addr {
                tracing::info!("metrics on http://{a}/metrics");
            }
            Some(e)
        }
        Err(e) => {
            tracing::warn!("exporter not started: {e:#}");
            None
        }
    }
}

pub(crate) fn status_snapshot(
    mp: &str,
    policy: &str,
    core: &ops::Core,
    locks: &locks::Locks,
    spans: &spans::Spans,
    recovery: &recovery::RecoverySummary,
    passthrough: bool,
) -> status::Status {
    let paths = core
        .router
        .snapshot()
        .into_iter()
        .map(|(p, dir)| status::PathStatus {
            id: p.id.0,
            dir: dir.display().to_string(),
            addr: p.remote_addr.clone(),
            state: format!("{:?}", p.state),
            priority: p.priority,
            latency_us: p.metrics.latency_us,
            error_count: p.metrics.error_count,
            score: p.metrics.score(),
        })
        .collect();
    let st = core.idmap.mapper().stats();
    let (buffered, dropped) = spans.counts();
    status::Status {
        mountpoint: mp.to_string(),
        pid: std::process::id(),
        policy: policy.to_string(),
        paths,
        flock: serde_json::to_value(locks.status()).unwrap_or_default(),
        recovery: recovery.clone(),
        idmap: serde_json::json!({
            "mode": core.idmap.describe(),
            "uid_lookups": st.uid_lookups, "gid_lookups": st.gid_lookups,
            "uid_hits": st.uid_hits, "gid_hits": st.gid_hits,
        }),
        open_files: core.open_count(),
        inodes: core.inodes.len(),
        spans: serde_json::json!({"sample_rate": spans.rate(), "buffered": buffered, "dropped": dropped}),
        passthrough,
        workers: serde_json::Value::Null,
        cached_fds: core.fds.len(),
        close_to_open: core.close_to_open,
        cache_timeout_ms: None,
        requests: spans
            .op_counts()
            .into_iter()
            .map(|(op, n, e)| (op.to_string(), [n, e]))
            .collect(),
        transport: String::new(),
        session: serde_json::Value::Null,
        keeper: serde_json::Value::Null,
        queues: serde_json::Value::Null,
    }
}

/// Prints the live state of a running daemon.
pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let dir = match (&args.state_dir, &args.mountpoint) {
        (Some(d), _) => d.clone(),
        (None, Some(m)) => config::default_state_dir(m),
        (None, None) => bail!("give --state-dir or --mountpoint"),
    };
    let s = status::fetch(&dir).with_context(|| match (&args.state_dir, &args.mountpoint) {
        (None, Some(m)) => format!("--mountpoint {}", m.display()),
        _ => format!("--state-dir {}", dir.display()),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", status::render(&s));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::as_mounted;

    /// The mount table names a mountpoint with its parent's symlinks
    /// resolved; the exporter looks it up by that name.
    #[test]
    fn a_mountpoint_is_named_as_the_mount_table_names_it() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().canonicalize().unwrap().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(as_mounted(&link.join("mnt")), real.join("mnt"));
        assert_eq!(as_mounted(&real.join("mnt")), real.join("mnt"));
        let gone = d.path().join("gone/mnt");
        assert_eq!(as_mounted(&gone), gone);
    }
}
