//! The serving process of a mount: storage paths, the core, the session.
//!
//! Alone (`--no-keeper`) it mounts, serves and unmounts. Under a keeper
//! (`keeper.rs`) it prepares, says so, and gets the connection over the
//! keeper's channel (`handover.rs`): the first server of a mount answers
//! the kernel's INIT; a later one (after a crash or for an upgrade) adopts
//! the connection with the INIT agreement, rebuilds what the last server
//! held from the journal it left (nodes, open handles, flock holders;
//! `ops/restore.rs`), and asks the kernel to resend the requests that
//! server read and did not answer (FUSE_NOTIFY_RESEND). Asked to drain, it
//! stops reading, finishes the requests it is serving, leaves the parked
//! ones (flock waiters) to the connection, hands the journal over and
//! exits without unmounting.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::config::{PolicyArg, QueuePolicyArg, Settings, TransportArg};
use super::handover::{Channel, ToKeeper, ToServer};
use super::journal_state::LiveState;
use super::{
    check_mountpoint, fs, idmap, journal, kernel_join, lock_state_dir, locks, mount, ops,
    raise_fd_limit, recovery, router, spans, spawn_signal_handler, spawn_sweeper, start_exporter,
    status, status_snapshot, storage, unmount, workers_view, ExportParts,
};
use crate::multipath::LoadBalancePolicy;
use crate::session::queue_sched::{QueuePolicy, QueueSched};
use crate::session::{InitConfig, InitState, Readers, Session, Transport};

/// The test hook `CLAUDEFS_FUSE_TEST_DIE_AT_START`: the server aborts as
/// soon as it has the connection (an upgrade to a binary that dies before
/// it serves).
pub const DIE_AT_START_ENV: &str = "CLAUDEFS_FUSE_TEST_DIE_AT_START";

/// How a server gets its connection.
#[derive(Debug)]
pub enum Launch {
    /// No keeper: it mounts, and unmounts at the end.
    Alone,
    /// Under a keeper, over this channel.
    Keeper(Channel),
}

/// What the keeper says of the mount's servers so far (status, metrics).
#[derive(Debug, Default, serde::Serialize)]
pub struct KeeperView {
    /// Served under a keeper.
    pub keeper: bool,
    /// 0 for the first server of the mount, then one more per restart or
    /// upgrade.
    pub generation: u64,
    pub restarts: u64,
    pub upgrades: u64,
    /// From the last answer of the previous server to the first of this
    /// one, as the keeper measured the hand-over (0 for the first server).
    #[serde(serialize_with = "gap_seconds")]
    pub last_gap_seconds: AtomicU64,
    /// The kernel resent what the previous server left (FUSE_NOTIFY_RESEND).
    pub resent: bool,
}

fn gap_seconds<S: serde::Serializer>(v: &AtomicU64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(f64::from_bits(v.load(Ordering::Relaxed)))
}

impl KeeperView {
    /// The last hand-over's gap, seconds.
    pub fn gap(&self) -> f64 {
        f64::from_bits(self.last_gap_seconds.load(Ordering::Relaxed))
    }
}

/// The connection a server serves.
struct Connection {
    fd: OwnedFd,
    /// The INIT agreement, when another server answered INIT.
    init: Option<InitState>,
    /// The previous server handed over cleanly (drained).
    handed_over: bool,
    keeper: Option<Arc<Channel>>,
    view: KeeperView,
}

/// The storage paths of `s`, opened and checked to reach one storage.
fn open_storage(s: &Settings) -> anyhow::Result<(Arc<router::Router>, u64)> {
    let mut roots = Vec::new();
    let mut root_ino = None;
    for p in &s.paths {
        let root = storage::StorageRoot::open(&p.dir)
            .with_context(|| format!("storage path {}", p.dir.display()))?;
        let st = root.stat(Path::new("")).map_err(|e| {
            anyhow::anyhow!(
                "storage path {}: {}",
                p.dir.display(),
                std::io::Error::from_raw_os_error(e)
            )
        })?;
        match root_ino {
            None => root_ino = Some(st.st_ino),
            Some(i) if i != st.st_ino => {
                bail!(
                    "storage path {} does not reach the same storage as {}",
                    p.dir.display(),
                    s.paths[0].dir.display()
                )
            }
            Some(_) => {}
        }
        roots.push((root, p.priority, p.addr.clone()));
    }
    let root_ino = root_ino.context("no storage path")?;
    let policy = match s.policy {
        PolicyArg::RoundRobin => LoadBalancePolicy::RoundRobin,
        PolicyArg::LeastLatency => LoadBalancePolicy::LeastLatency,
        PolicyArg::Primary => LoadBalancePolicy::Primary,
    };
    Ok((
        Arc::new(router::Router::new(policy, roots, root_ino)?),
        root_ino,
    ))
}

/// Whether to offer FUSE over io_uring at INIT (only if the fuse module
/// has it on then). Under a keeper `auto` means `/dev/fuse`: requests a
/// dead server took from an io_uring queue are not resent by the kernel.
fn want_uring(s: &Settings) -> anyhow::Result<bool> {
    Ok(match s.transport {
        TransportArg::Dev => false,
        TransportArg::Auto if s.keeper => false,
        TransportArg::Auto => crate::session::uring::enable(),
        TransportArg::Uring if crate::session::uring::enable() => true,
        TransportArg::Uring => bail!(
            "--transport uring: FUSE over io_uring is unavailable (no /sys/module/fuse/parameters/enable_uring, or it cannot be set: Linux >= 6.14 with CONFIG_FUSE_IO_URING and root are needed)"
        ),
    })
}

/// Takes the connection: mounts (alone), or waits for the keeper's start.
fn connect(launch: Launch, mountpoint: &Path) -> anyhow::Result<Connection> {
    match launch {
        Launch::Alone => {
            let fd = match mount::mount_fuse(mountpoint) {
                Ok(fd) => Ok(fd),
                // Not allowed to mount: fusermount3 mounts for us.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    mount::mount_fusermount(mountpoint)
                }
                Err(e) => Err(e),
            }
            .map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", mountpoint.display()))?;
            Ok(Connection {
                fd,
                init: None,
                handed_over: false,
                keeper: None,
                view: KeeperView::default(),
            })
        }
        Launch::Keeper(chan) => {
            chan.send(&ToKeeper::Prepared, &[])
                .context("keeper channel")?;
            let Some((msg, fds)) = chan.recv::<ToServer>().context("keeper channel")? else {
                bail!("the keeper went away before it gave the connection");
            };
            let ToServer::Start {
                generation,
                init,
                handed_over,
                restarts,
                upgrades,
                last_gap_seconds,
            } = msg
            else {
                bail!("keeper channel: expected the start, got {msg:?}");
            };
            let fd = fds
                .into_iter()
                .next()
                .context("keeper channel: the start came without the /dev/fuse fd")?;
            Ok(Connection {
                fd,
                init,
                handed_over,
                keeper: Some(Arc::new(chan)),
                view: KeeperView {
                    keeper: true,
                    generation,
                    restarts,
                    upgrades,
                    last_gap_seconds: AtomicU64::new(last_gap_seconds.to_bits()),
                    resent: false,
                },
            })
        }
    }
}

/// Wakes every thread of this process out of a blocking syscall (a
/// `/dev/fuse` read) with `SIGUSR1`, whose handler does nothing and is
/// installed without `SA_RESTART` ([`install_wake_handler`]).
fn wake_blocked_reads() {
    let pid = std::process::id() as libc::pid_t;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for t in tasks.flatten() {
        if let Some(tid) = t
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        {
            // SAFETY: signals a thread of this process with a signal whose
            // handler is a no-op.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
        }
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Ignores SIGINT and SIGTERM (under a keeper, see `run`).
fn ignore_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sets the disposition of a signal to ignore.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// Installs the no-op `SIGUSR1` handler of [`wake_blocked_reads`].
fn install_wake_handler() {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask;
    // the handler does nothing (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

/// What a server checks and opens before it takes a connection: every
/// flag that can be wrong fails here, before a state dir is created or a
/// journal read (the keeper runs the same checks before it mounts).
pub struct Prepared {
    router: Arc<router::Router>,
    root_ino: u64,
    otlp_target: Option<crate::exporter::otlp::OtlpTarget>,
    want_uring: bool,
    idmap: idmap::IdMap,
}

impl Prepared {
    pub fn new(s: &Settings) -> anyhow::Result<Prepared> {
        let (router, root_ino) = open_storage(s)?;
        let otlp_target = crate::exporter::otlp::target_from(
            s.otlp_endpoint.as_deref(),
            s.otlp_protocol.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Prepared {
            router,
            root_ino,
            otlp_target,
            want_uring: want_uring(s)?,
            idmap: idmap::IdMap::from_spec(&s.idmap)?,
        })
    }
}

/// Runs one server of a mount until the connection ends (or it is drained).
pub fn run(s: Settings, launch: Launch) -> anyhow::Result<()> {
    let alone = matches!(launch, Launch::Alone);
    // Under a keeper the mountpoint is mounted (and may have no server
    // now: it is not touched) and the keeper holds the state dir.
    let mountpoint = if alone {
        check_mountpoint(&s.mountpoint)?
    } else {
        std::path::absolute(&s.mountpoint)?
    };
    // SAFETY: umask only affects this process; the kernel already applied the caller's.
    unsafe { libc::umask(0) };
    raise_fd_limit();
    let Prepared {
        router,
        root_ino,
        otlp_target,
        want_uring,
        idmap,
    } = Prepared::new(&s)?;
    // Alone, the metrics port is taken before anything is created.
    let mut listener = match (&launch, s.metrics_addr) {
        (Launch::Alone, Some(a)) => Some(crate::exporter::http::bind(a)?),
        _ => None,
    };
    let _lock = if alone {
        Some(lock_state_dir(&s.state_dir)?)
    } else {
        None
    };
    if !alone {
        install_wake_handler();
    }

    let mut conn = connect(launch, &mountpoint)?;
    if std::env::var_os(DIE_AT_START_ENV).is_some() {
        // The test hook of a new binary that takes the connection and dies.
        tracing::error!("{DIE_AT_START_ENV}: aborting with the connection taken");
        std::process::abort();
    }
    // Under a keeper: bound once the previous server (an upgrade's) has
    // let the port go.
    if listener.is_none() {
        listener = s
            .metrics_addr
            .map(crate::exporter::http::bind)
            .transpose()?;
    }

    // INIT first: a start that fails here leaves the journal as it was.
    let init = InitConfig {
        passthrough: s.passthrough,
        io_uring: want_uring,
        ..Default::default()
    };
    let never = AtomicBool::new(false);
    let fail = |msg: String| -> anyhow::Error {
        if alone {
            unmount(&mountpoint, &never);
        }
        anyhow::anyhow!(msg)
    };
    let mut session = match conn.init {
        Some(state) => Session::adopt(conn.fd, state),
        None => match Session::init(conn.fd, &init) {
            Ok(session) => {
                if let Some(k) = &conn.keeper {
                    k.send(
                        &ToKeeper::Init {
                            state: *session.state(),
                        },
                        &[],
                    )
                    .context("keeper channel")?;
                }
                session
            }
            Err(e) => {
                return Err(fail(format!(
                    "FUSE INIT on {} failed: {e}",
                    mountpoint.display()
                )))
            }
        },
    };
    let transport = if session
        .state()
        .has(crate::session::abi::init_flags::OVER_IO_URING)
    {
        Transport::Uring
    } else if s.transport == TransportArg::Uring {
        return Err(fail(
            "--transport uring: the kernel did not offer FUSE over io_uring at INIT".into(),
        ));
    } else {
        if want_uring {
            tracing::info!("the kernel did not offer FUSE over io_uring: serving on /dev/fuse");
        }
        Transport::Dev
    };
    // What the last server left: carried on (same connection) or only
    // reported (a new mount after a crash).
    let carry_on = conn.init.is_some();
    if carry_on && transport == Transport::Uring {
        // Requests sent since the last server died may wait in the
        // kernel's queues until one request on theirs completes.
        session.kick_queues_at(mountpoint.clone());
    }
    let leftover = LiveState::from_records(&journal::read_leftover(&s.state_dir)?);
    let t_recovery = std::time::Instant::now();
    let journal = if carry_on {
        journal::Journal::start(&s.state_dir, leftover.clone())?
    } else {
        journal::Journal::create(&s.state_dir)?
    };
    let mut core = ops::Core::new(router.clone(), root_ino, idmap, Some(journal));
    if conn.view.generation == 0 {
        core.crash_after = std::env::var(ops::CRASH_AFTER_ENV).ok();
    }
    let core = Arc::new(core);
    let locks = Arc::new(locks::Locks::default());
    if let Some(j) = &core.journal {
        locks.journal_to(j.clone());
    }
    let mut summary = if carry_on {
        let (nodes_restored, nodes_lost) = core.restore_nodes(&leftover);
        core.resume_handles(conn.view.generation, &leftover);
        let (_, mut sum) = recovery::recover(&leftover, |fh, h| core.restore_handle(fh, h));
        let (locks_restored, locks_lost) =
            locks.restore(&leftover.locks, |ino| core.inodes.path(ino).is_some());
        sum.carried_on = true;
        // A drained server left nothing unfinished.
        sum.unclean = !conn.handed_over;
        sum.nodes_restored = nodes_restored;
        sum.nodes_lost = nodes_lost;
        sum.locks_restored = locks_restored;
        sum.locks_lost = locks_lost;
        sum
    } else {
        recovery::recover(&leftover, |_, o| recovery::still_there(&router, o)).1
    };
    summary.duration_seconds = t_recovery.elapsed().as_secs_f64();
    recovery::report(&summary);

    let joiner = Arc::new(kernel_join::Joiner::default());
    let mut spans = spans::Spans::new(s.sample_rate, 10_000).with_slow_threshold(s.slow_threshold);
    if s.ebpf {
        spans = spans.with_joiner(joiner.clone());
    }
    let spans = Arc::new(spans);
    let fs = fs::Fs::new(
        core.clone(),
        locks.clone(),
        spans.clone(),
        s.passthrough,
        fs::CacheTimeout::new(s.cache_timeout),
    );
    let passthrough = fs.passthrough.clone();

    if let Some(k) = &conn.keeper {
        // The keeper holds each clone this server reads on.
        let k = k.clone();
        session.on_clone(Arc::new(move |dev| match dev.try_clone_fd() {
            Ok(fd) => {
                if let Err(e) = k.send(&ToKeeper::Hold, &[fd.as_fd()]) {
                    tracing::warn!("cannot hand a /dev/fuse clone to the keeper: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot hand a /dev/fuse clone to the keeper: {e}"),
        }));
    }
    fs.connected(session.state(), session.device().clone());
    // Over io_uring one /dev/fuse worker remains (INTERRUPT, FORGET, and
    // requests before the rings are ready). With one CPU to run on, the
    // reader's poll only delays the application that would send the next
    // request.
    let threads = match transport {
        Transport::Uring => 1,
        Transport::Dev => s.threads,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let poll_us = if cpus > 1 && transport == Transport::Dev {
        s.poll_us
    } else {
        0
    };
    let readers = Arc::new(Readers::new(
        threads,
        Duration::from_micros(poll_us),
        cpus > 1,
    ));

    let queue_sched = Arc::new(QueueSched::new(
        match s.queue_policy {
            QueuePolicyArg::Idle => QueuePolicy::Idle,
            QueuePolicyArg::Normal => QueuePolicy::Normal,
        },
        match transport {
            Transport::Uring => crate::session::uring::possible_cpus(),
            Transport::Dev => 0,
        },
    ));

    let stop = Arc::new(AtomicBool::new(false));
    router.spawn_health_checker(Duration::from_millis(s.health_interval_ms), stop.clone())?;
    spawn_sweeper(core.clone(), passthrough.clone(), stop.clone())?;

    if carry_on {
        // What the last server read and did not answer comes again.
        match session.notifier().resend() {
            Ok(()) => conn.view.resent = true,
            Err(e) => tracing::warn!(
                "the kernel cannot resend the requests the last server left (FUSE_NOTIFY_RESEND, Linux >= 6.9): {e}; those requests stay unanswered until their callers give up"
            ),
        }
    }
    let view = Arc::new(std::mem::take(&mut conn.view));
    let snap = {
        let (core, locks, spans) = (core.clone(), locks.clone(), spans.clone());
        let readers = readers.clone();
        let counters = session.counters().clone();
        let summary = summary.clone();
        let view = view.clone();
        let mp = mountpoint.display().to_string();
        let policy = format!("{:?}", s.policy);
        let cache_timeout_ms = s.cache_timeout.as_millis() as u64;
        let queue_sched = queue_sched.clone();
        Arc::new(move || {
            let mut st = status_snapshot(
                &mp,
                &policy,
                &core,
                &locks,
                &spans,
                &summary,
                passthrough.wanted(),
            );
            st.workers = serde_json::to_value(workers_view(&readers, threads)).unwrap_or_default();
            st.transport = transport.name().to_string();
            st.cache_timeout_ms = Some(cache_timeout_ms);
            let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
            st.session = serde_json::json!({
                "requests": counters.requests.get(), "short": c(&counters.short),
                "malformed": c(&counters.malformed), "unknown": c(&counters.unknown),
                "panics": c(&counters.panics), "resent": c(&counters.resent),
                "deduplicated": c(&core.deduplicated),
            });
            st.keeper = serde_json::to_value(&*view).unwrap_or_default();
            if transport == Transport::Uring {
                st.queues = serde_json::to_value(queue_sched.view()).unwrap_or_default();
            }
            st
        })
    };
    let sock = status::serve(&s.state_dir, snap)?;

    if alone {
        spawn_signal_handler(mountpoint.clone(), stop.clone())?;
    } else {
        // The keeper's signals stop the mount (a terminal's Ctrl-C reaches
        // both): the server leaves them to it.
        ignore_stop_signals();
    }
    let exporter = start_exporter(
        &s,
        &mountpoint,
        listener,
        otlp_target,
        ExportParts {
            core: core.clone(),
            locks: locks.clone(),
            spans: spans.clone(),
            joiner,
            summary: summary.clone(),
            readers: readers.clone(),
            threads,
            transport,
            counters: session.counters().clone(),
            keeper: view.clone(),
            queue_sched: queue_sched.clone(),
        },
    );
    let draining = Arc::new(AtomicBool::new(false));
    if let Some(k) = &conn.keeper {
        k.send(
            &ToKeeper::Serving {
                resent: view.resent,
                transport,
            },
            &[],
        )
        .context("keeper channel")?;
        spawn_drain_listener(
            k.clone(),
            draining.clone(),
            stop.clone(),
            readers.clone(),
            view.clone(),
        )?;
    }
    tracing::info!(
        "{} {} ({} storage paths, transport {}, {} /dev/fuse workers{})",
        if carry_on { "carrying on" } else { "mounted" },
        mountpoint.display(),
        router.len(),
        transport.name(),
        threads,
        if conn.keeper.is_some() {
            format!(", server generation {}", view.generation)
        } else {
            String::new()
        }
    );
    let result = match transport {
        Transport::Uring => session.run_uring(Arc::new(fs), readers.clone(), queue_sched),
        Transport::Dev => session.run_dev(Arc::new(fs), readers.clone(), Some(stop.clone())),
    };
    stop.store(true, Ordering::Relaxed);
    if draining.load(Ordering::Relaxed) {
        // The connection is the next server's: no unmount, no answer to
        // the parked requests (they are resent to it), the journal as is.
        if let Some(e) = exporter {
            e.stop();
        }
        if let Some(j) = &core.journal {
            j.hand_over();
        }
        if let Some(k) = &conn.keeper {
            let _ = k.send(&ToKeeper::Drained, &[]);
        }
        tracing::info!(
            "drained: the next server carries on {}",
            mountpoint.display()
        );
        // Exits without dropping the parked replies (a dropped reply
        // answers EIO).
        std::process::exit(0);
    }
    if let Some(e) = exporter {
        e.stop();
    }
    locks.shutdown();
    if let Some(j) = &core.journal {
        j.finish();
    }
    let _ = std::fs::remove_file(sock);
    tracing::info!("unmounted {}", mountpoint.display());
    result.map_err(|e| anyhow::anyhow!("FUSE session ended with an error: {e}"))
}

/// Waits for the keeper's drain: stops the workers (each leaves after the
/// request it serves; one blocked in a read is woken out of it). A keeper
/// that goes away leaves the server serving, without its protection.
fn spawn_drain_listener(
    k: Arc<Channel>,
    draining: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    readers: Arc<Readers>,
    view: Arc<KeeperView>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cfs-keeper".into())
        .spawn(move || loop {
            match k.recv::<ToServer>() {
                Ok(Some((ToServer::Drain, _))) => {
                    tracing::info!("keeper: drain (a new server takes over)");
                    draining.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    readers.close();
                    // A worker may be entering read(2) as the signal comes:
                    // wake them until they are all out.
                    for _ in 0..200 {
                        wake_blocked_reads();
                        std::thread::sleep(Duration::from_millis(5));
                        if readers.reading() == 0 {
                            break;
                        }
                    }
                    return;
                }
                Ok(Some((ToServer::Gap { seconds }, _))) => view
                    .last_gap_seconds
                    .store(seconds.to_bits(), Ordering::Relaxed),
                Ok(Some((msg, _))) => tracing::warn!("keeper channel: unexpected {msg:?}"),
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        "the keeper is gone: serving on, but a crash of this server now ends the mount"
                    );
                    return;
                }
            }
        })?;
    Ok(())
}

/// The mountpoint argument, as the keeper resolved it.
pub fn mountpoint_of(s: &Settings) -> PathBuf {
    std::path::absolute(&s.mountpoint).unwrap_or_else(|_| s.mountpoint.clone())
}
