//! The keeper of a mount: `claudefs-fuse mount` mounts, holds the
//! `/dev/fuse` connection for as long as the mount exists, and runs the
//! server that serves it (the same binary, over the channel of
//! `handover.rs`). No request goes through the keeper.
//!
//! * The server dies (kill -9, a panic, OOM): the keeper starts the next
//!   one at once; it adopts the connection and carries on from the
//!   journal, and the kernel resends what the dead one had read (see
//!   `server.rs`). A server that dies before it serves, or within
//!   [`LOOP_UPTIME`] of serving, five times within [`LOOP_WINDOW`], is in a
//!   restart loop: the next starts wait, doubling up to [`MAX_BACKOFF`].
//! * Upgrade (`claudefs-fuse upgrade`, over `<state-dir>/keeper.sock`, or
//!   SIGHUP for the same binary): the new server prepares first; one that
//!   fails to start changes nothing. Then the old one drains and exits,
//!   and the new one takes the connection. The gap, from the drain to the
//!   new server serving, is measured and reported.
//! * The keeper holds each server's `/dev/fuse` clones until the next
//!   server serves: the requests read on a clone stay with the connection
//!   only while it is open.
//! * SIGTERM/SIGINT unmount; the keeper exits when its server does and the
//!   connection is gone.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::config::Settings;
use super::handover::{Channel, ToKeeper, ToServer, CHANNEL_FD_ENV};
use super::{check_mountpoint, lock_state_dir, mount, unmount};
use crate::session::{InitState, Transport};

/// The keeper's control socket in the state dir.
pub const SOCKET: &str = "keeper.sock";
/// Restarts within this window that make a restart loop (five).
pub const LOOP_WINDOW: Duration = Duration::from_secs(30);
/// A server that served less long than this before it died counts
/// towards a restart loop.
pub const LOOP_UPTIME: Duration = Duration::from_millis(100);
const LOOP_RESTARTS: usize = 5;
/// Longest wait before a restart in a loop.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a new server may take to prepare, and an old one to drain.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(20);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// An upgrade request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The new binary (default: the running server's).
    pub binary: Option<PathBuf>,
}

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeAnswer {
    pub ok: bool,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub generation: u64,
    /// From the old server's drain to the new one serving.
    #[serde(default)]
    pub gap_seconds: f64,
}

enum Event {
    Msg {
        generation: u64,
        msg: ToKeeper,
        fds: Vec<OwnedFd>,
    },
    Exited {
        generation: u64,
        status: std::io::Result<ExitStatus>,
    },
    Upgrade {
        binary: Option<PathBuf>,
        reply: Option<mpsc::Sender<UpgradeAnswer>>,
    },
    Stop,
}

/// A server the keeper runs.
struct Server {
    generation: u64,
    pid: u32,
    binary: PathBuf,
    /// The binary of the server it took over from in an upgrade: the one
    /// to go back to if this one dies before it serves.
    fallback: Option<PathBuf>,
    chan: Arc<Channel>,
    started: bool,
    serving: Option<Transport>,
    serving_since: Option<Instant>,
    held: Vec<OwnedFd>,
}

/// An upgrade under way.
struct Upgrade {
    next: Server,
    reply: Option<mpsc::Sender<UpgradeAnswer>>,
    since: Instant,
    /// When the old server was asked to drain.
    drain: Option<Instant>,
}

struct Keeper {
    fd: OwnedFd,
    init: Option<InitState>,
    args: Vec<std::ffi::OsString>,
    generation: u64,
    restarts: u64,
    upgrades: u64,
    last_gap: f64,
    events: mpsc::Sender<Event>,
    /// Clones of servers gone, held until the next one serves.
    old_held: Vec<OwnedFd>,
    /// When the current server's predecessor stopped serving.
    gap_from: Option<Instant>,
    crashes: VecDeque<Instant>,
}

fn answer_err(reply: Option<mpsc::Sender<UpgradeAnswer>>, error: String) {
    tracing::warn!("upgrade refused: {error}");
    if let Some(r) = reply {
        let _ = r.send(UpgradeAnswer {
            ok: false,
            error,
            generation: 0,
            gap_seconds: 0.0,
        });
    }
}

impl Keeper {
    /// Starts server `generation` from `binary`; its messages and its exit
    /// come as events.
    fn spawn(&mut self, binary: &Path) -> anyhow::Result<Server> {
        self.generation += 1;
        let generation = self.generation - 1;
        let (mine, theirs) = Channel::pair()?;
        // Inherited by the server alone: the only child started here.
        rustix::io::fcntl_setfd(theirs.as_fd(), rustix::io::FdFlags::empty())?;
        let child = Command::new(binary)
            .args(&self.args)
            .env(CHANNEL_FD_ENV, theirs.as_fd().as_raw_fd().to_string())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start server {}", binary.display()))?;
        drop(theirs);
        let pid = child.id();
        let chan = Arc::new(mine);
        let (ev, c) = (self.events.clone(), chan.clone());
        std::thread::Builder::new()
            .name(format!("cfs-server-{generation}"))
            .spawn(move || {
                while let Ok(Some((msg, fds))) = c.recv::<ToKeeper>() {
                    let _ = ev.send(Event::Msg {
                        generation,
                        msg,
                        fds,
                    });
                }
            })?;
        let ev = self.events.clone();
        let mut child = child;
        std::thread::Builder::new()
            .name(format!("cfs-wait-{generation}"))
            .spawn(move || {
                let status = child.wait();
                let _ = ev.send(Event::Exited { generation, status });
            })?;
        tracing::info!(generation, pid, "server started ({})", binary.display());
        Ok(Server {
            generation,
            pid,
            binary: binary.to_path_buf(),
            fallback: None,
            chan,
            started: false,
            serving: None,
            serving_since: None,
            held: Vec::new(),
        })
    }

    /// Gives `server` the connection (`handed_over`: by a drained server).
    fn start(&self, server: &mut Server, handed_over: bool) -> anyhow::Result<()> {
        server.started = true;
        server.chan.send(
            &ToServer::Start {
                generation: server.generation,
                init: self.init,
                handed_over,
                restarts: self.restarts,
                upgrades: self.upgrades,
                last_gap_seconds: self.last_gap,
            },
            &[self.fd.as_fd()],
        )?;
        Ok(())
    }

    /// Whether the connection still exists (not unmounted nor aborted).
    fn connected(&self) -> bool {
        let mut p = [rustix::event::PollFd::new(
            &self.fd,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut p, Some(&rustix::time::Timespec::default())) {
            Ok(_) => !p[0]
                .revents()
                .intersects(rustix::event::PollFlags::ERR | rustix::event::PollFlags::HUP),
            Err(_) => false,
        }
    }

    /// How long to wait before restarting after the crash of a server
    /// that served since `serving_since` (a loop backs off).
    fn backoff(&mut self, serving_since: Option<Instant>) -> Duration {
        let now = Instant::now();
        if serving_since.is_none_or(|t| now.duration_since(t) < LOOP_UPTIME) {
            self.crashes.push_back(now);
        }
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > LOOP_WINDOW)
        {
            self.crashes.pop_front();
        }
        let n = self.crashes.len();
        if n < LOOP_RESTARTS {
            return Duration::ZERO;
        }
        let d = Duration::from_millis(500 << (n - LOOP_RESTARTS).min(5)).min(MAX_BACKOFF);
        tracing::error!(
            "the server restarts in a loop ({n} restarts in {LOOP_WINDOW:?}): waiting {d:?} before the next"
        );
        d
    }
}

fn kill(pid: u32) {
    // SAFETY: signals a child of this process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Accepts upgrade requests on `<state-dir>/keeper.sock`.
fn spawn_control(dir: &Path, events: mpsc::Sender<Event>) -> anyhow::Result<PathBuf> {
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("cannot bind keeper socket {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("cfs-keeper-ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match serde_json::from_str::<UpgradeRequest>(&line) {
                    Ok(req) => {
                        let (tx, rx) = mpsc::channel();
                        let _ = events.send(Event::Upgrade {
                            binary: req.binary,
                            reply: Some(tx),
                        });
                        rx.recv_timeout(PREPARE_TIMEOUT + DRAIN_TIMEOUT + Duration::from_secs(5))
                            .unwrap_or(UpgradeAnswer {
                                ok: false,
                                error: "the keeper did not answer in time".into(),
                                generation: 0,
                                gap_seconds: 0.0,
                            })
                    }
                    Err(e) => UpgradeAnswer {
                        ok: false,
                        error: format!("bad request: {e}"),
                        generation: 0,
                        gap_seconds: 0.0,
                    },
                };
                let mut conn = conn;
                if let Ok(mut body) = serde_json::to_vec(&answer) {
                    body.push(b'\n');
                    let _ = conn.write_all(&body);
                }
            }
        })?;
    Ok(path)
}

/// SIGTERM/SIGINT -> stop, SIGHUP -> upgrade to the same binary.
fn spawn_signals(events: mpsc::Sender<Event>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("cfs-keeper-sig".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::hangup()),
                ) else {
                    return;
                };
                loop {
                    let ev = tokio::select! {
                        _ = term.recv() => Event::Stop,
                        _ = int.recv() => Event::Stop,
                        _ = hup.recv() => Event::Upgrade { binary: None, reply: None },
                    };
                    if events.send(ev).is_err() {
                        return;
                    }
                }
            });
        })?;
    Ok(())
}

/// Runs the keeper of the mount `s` until the mount ends.
pub fn run(s: Settings) -> anyhow::Result<()> {
    let mountpoint = check_mountpoint(&s.mountpoint)?;
    // Every flag the server would refuse is refused here, before the
    // state dir is created or anything mounted.
    drop(super::server::Prepared::new(&s)?);
    if let Some(a) = s.metrics_addr {
        drop(crate::exporter::http::bind(a)?);
    }
    let _lock = lock_state_dir(&s.state_dir)?;
    // A status socket left by a killed daemon would pass for this mount's.
    let _ = std::fs::remove_file(s.state_dir.join(super::status::SOCKET));
    let binary = std::env::current_exe().context("cannot find this program's binary")?;
    let fd = match mount::mount_fuse(&mountpoint) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => mount::mount_fusermount(&mountpoint),
        Err(e) => Err(e),
    }
    .map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", mountpoint.display()))?;
    let (tx, events) = mpsc::channel();
    let never = AtomicBool::new(false);
    let ctl = match spawn_control(&s.state_dir, tx.clone()).and_then(|p| {
        spawn_signals(tx.clone())?;
        Ok(p)
    }) {
        Ok(p) => p,
        Err(e) => {
            unmount(&mountpoint, &never);
            return Err(e);
        }
    };
    let mut k = Keeper {
        fd,
        init: None,
        args: std::env::args_os().skip(1).collect(),
        generation: 0,
        restarts: 0,
        upgrades: 0,
        last_gap: 0.0,
        events: tx,
        old_held: Vec::new(),
        gap_from: None,
        crashes: VecDeque::new(),
    };
    let result = serve(&mut k, &mountpoint, &binary, &events);
    let _ = std::fs::remove_file(ctl);
    if result.is_err() && k.connected() {
        unmount(&mountpoint, &never);
    }
    result
}

/// The keeper's event loop (see the module doc).
fn serve(
    k: &mut Keeper,
    mountpoint: &Path,
    binary: &Path,
    events: &mpsc::Receiver<Event>,
) -> anyhow::Result<()> {
    let mut cur = k.spawn(binary)?;
    let mut upgrade: Option<Upgrade> = None;
    // An upgrade handed over, answered when the new server serves.
    let mut upgraded: Option<mpsc::Sender<UpgradeAnswer>> = None;
    let mut stopping = false;
    let never = AtomicBool::new(false);
    loop {
        let ev = match events.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => Some(ev),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("keeper: event channel closed"),
        };
        // Deadlines of an upgrade under way.
        if let Some(u) = &upgrade {
            if u.drain.is_none() && u.since.elapsed() > PREPARE_TIMEOUT {
                let u = upgrade.take().unwrap_or_else(|| unreachable!());
                kill(u.next.pid);
                answer_err(
                    u.reply,
                    format!(
                        "the new server ({}) did not get ready within {PREPARE_TIMEOUT:?}; the old one keeps serving",
                        u.next.binary.display()
                    ),
                );
            } else if u.drain.is_some_and(|t| t.elapsed() > DRAIN_TIMEOUT) {
                tracing::warn!("the old server did not drain within {DRAIN_TIMEOUT:?}: killed");
                kill(cur.pid);
            }
        }
        let Some(ev) = ev else { continue };
        match ev {
            Event::Stop => {
                if !stopping {
                    stopping = true;
                    tracing::info!("signal received: unmounting {}", mountpoint.display());
                    unmount(mountpoint, &never);
                }
            }
            Event::Msg {
                generation,
                msg,
                fds,
            } => {
                let is_cur = generation == cur.generation;
                let is_next = upgrade
                    .as_ref()
                    .is_some_and(|u| u.next.generation == generation);
                match msg {
                    ToKeeper::Prepared if is_cur && !cur.started => k.start(&mut cur, false)?,
                    ToKeeper::Prepared if is_next => {
                        let u = upgrade.as_mut().unwrap_or_else(|| unreachable!());
                        tracing::info!(
                            generation,
                            "upgrade: the new server is ready; draining the old one"
                        );
                        u.drain = Some(Instant::now());
                        k.gap_from = u.drain;
                        if cur.chan.send(&ToServer::Drain, &[]).is_err() {
                            kill(cur.pid);
                        }
                    }
                    ToKeeper::Init { state } => k.init = Some(state),
                    ToKeeper::Hold => {
                        if is_cur {
                            cur.held.extend(fds);
                        } else if let Some(u) = upgrade.as_mut().filter(|_| is_next) {
                            u.next.held.extend(fds);
                        }
                    }
                    ToKeeper::Serving { transport, .. } if is_cur => {
                        cur.serving = Some(transport);
                        cur.serving_since = Some(Instant::now());
                        // The requests the last server left were resent.
                        k.old_held.clear();
                        if let Some(t) = k.gap_from.take() {
                            k.last_gap = t.elapsed().as_secs_f64();
                            tracing::info!(
                                generation,
                                "server generation {generation} serves: {:.1} ms after the last one stopped",
                                k.last_gap * 1e3
                            );
                            let _ = cur.chan.send(
                                &ToServer::Gap {
                                    seconds: k.last_gap,
                                },
                                &[],
                            );
                        }
                        if let Some(r) = upgraded.take() {
                            let _ = r.send(UpgradeAnswer {
                                ok: true,
                                error: String::new(),
                                generation,
                                gap_seconds: k.last_gap,
                            });
                        }
                    }
                    ToKeeper::Drained | ToKeeper::Prepared | ToKeeper::Serving { .. } => {}
                }
            }
            Event::Upgrade { binary, reply } => {
                if upgrade.is_some() {
                    answer_err(reply, "an upgrade is already under way".into());
                    continue;
                }
                match cur.serving {
                    None => {
                        answer_err(reply, "no server is serving the mount now".into());
                        continue;
                    }
                    Some(Transport::Uring) => {
                        answer_err(
                            reply,
                            "the server serves over io_uring, whose requests in flight cannot be handed over: mount with --transport dev to upgrade in place".into(),
                        );
                        continue;
                    }
                    Some(Transport::Dev) => {}
                }
                let bin = binary.unwrap_or_else(|| cur.binary.clone());
                let runnable = std::fs::metadata(&bin).map(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                        && m.is_file()
                });
                match runnable {
                    Ok(true) => {}
                    Ok(false) => {
                        answer_err(
                            reply,
                            format!("{} is not an executable file", bin.display()),
                        );
                        continue;
                    }
                    Err(e) => {
                        answer_err(reply, format!("{}: {e}", bin.display()));
                        continue;
                    }
                }
                match k.spawn(&bin) {
                    Ok(next) => {
                        upgrade = Some(Upgrade {
                            next,
                            reply,
                            since: Instant::now(),
                            drain: None,
                        })
                    }
                    Err(e) => answer_err(reply, format!("{e:#}")),
                }
            }
            Event::Exited { generation, status } => {
                let status =
                    status.map_err(|e| anyhow::anyhow!("cannot wait for the server: {e}"))?;
                if upgrade
                    .as_ref()
                    .is_some_and(|u| u.next.generation == generation)
                {
                    // The new server died before it took over.
                    let u = upgrade.take().unwrap_or_else(|| unreachable!());
                    if u.drain.is_none() {
                        answer_err(
                            u.reply,
                            format!(
                                "the new server ({}) exited before it was ready ({status}); the old one keeps serving",
                                u.next.binary.display()
                            ),
                        );
                        continue;
                    }
                    answer_err(
                        u.reply,
                        format!("the new server exited ({status}) during the hand-over; the last binary takes over"),
                    );
                    continue;
                }
                if generation != cur.generation {
                    continue;
                }
                k.old_held.append(&mut cur.held);
                if stopping || !k.connected() {
                    tracing::info!("the mount ended: keeper exits");
                    if let Some(u) = upgrade.take() {
                        kill(u.next.pid);
                    }
                    return if status.success() || stopping {
                        Ok(())
                    } else {
                        Err(anyhow::anyhow!("the server exited ({status})"))
                    };
                }
                if cur.serving.is_none() && k.init.is_none() {
                    // The first server could not start: no loop of it.
                    bail!("the server exited before serving ({status}); see its error above");
                }
                match upgrade.take() {
                    Some(mut u) if u.drain.is_some() => {
                        k.upgrades += 1;
                        k.start(&mut u.next, status.success())?;
                        u.next.fallback = Some(cur.binary.clone());
                        cur = u.next;
                        // Answered when it serves.
                        upgraded = u.reply.or(Some(mpsc::channel().0));
                    }
                    other => {
                        upgrade = other;
                        k.restarts += 1;
                        if k.gap_from.is_none() {
                            k.gap_from = Some(Instant::now());
                        }
                        tracing::warn!(
                            generation,
                            "the server stopped ({status}) with the mount alive: starting the next one"
                        );
                        std::thread::sleep(k.backoff(cur.serving_since));
                        // A new binary that died before it served: back to
                        // the one it took over from.
                        let bin = match (&cur.serving, &cur.fallback) {
                            (None, Some(old)) => {
                                tracing::error!(
                                    "the upgraded server ({}) died before it served: back to {}",
                                    cur.binary.display(),
                                    old.display()
                                );
                                if let Some(r) = upgraded.take() {
                                    let _ = r.send(UpgradeAnswer {
                                        ok: false,
                                        error: format!(
                                            "the new server ({}) died before it served ({status}); {} took over again",
                                            cur.binary.display(),
                                            old.display()
                                        ),
                                        generation: 0,
                                        gap_seconds: 0.0,
                                    });
                                }
                                old.clone()
                            }
                            _ => cur.binary.clone(),
                        };
                        cur = k.spawn(&bin)?;
                    }
                }
            }
        }
    }
}

/// Options of `claudefs-fuse upgrade`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpgradeArgs {
    /// The mount to upgrade.
    #[arg(long, value_name = "DIR")]
    pub mountpoint: PathBuf,
    /// The new server binary (default: the running one's, restarted).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// State dir of the mount (default: the mountpoint's).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `claudefs-fuse upgrade`: hands the connection of a mount to a new
/// server and prints the gap.
pub fn run_upgrade(args: UpgradeArgs) -> anyhow::Result<()> {
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| super::config::default_state_dir(&args.mountpoint));
    let a = request_upgrade(&dir, &args.mountpoint, args.binary)?;
    println!(
        "upgraded {}: server generation {} serves, {:.1} ms after the last one stopped",
        args.mountpoint.display(),
        a.generation,
        a.gap_seconds * 1e3
    );
    Ok(())
}

/// `claudefs-fuse upgrade`: asks the keeper of `mountpoint` to hand the
/// connection to a new server.
pub fn request_upgrade(
    state_dir: &Path,
    mountpoint: &Path,
    binary: Option<PathBuf>,
) -> anyhow::Result<UpgradeAnswer> {
    let sock = state_dir.join(SOCKET);
    let mut conn = match UnixStream::connect(&sock) {
        Ok(c) => c,
        Err(e) => {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let abs = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
            let target = abs.to_string_lossy().replace(' ', "\\040");
            let fstype = mounts.lines().find_map(|l| {
                let mut f = l.split(' ');
                (f.nth(4) == Some(target.as_str()))
                    .then(|| l.split(" - ").nth(1).and_then(|r| r.split(' ').next()))
                    .flatten()
                    .map(str::to_string)
            });
            match fstype {
                None => bail!("{} is not mounted", mountpoint.display()),
                Some(t) if t != mount::FSTYPE => bail!(
                    "{} is not a claudefs-fuse mount (file system type {t})",
                    mountpoint.display()
                ),
                Some(_) if state_dir.join(super::status::SOCKET).exists() => bail!(
                    "{} has no keeper (mounted with --no-keeper): it cannot be upgraded in place",
                    mountpoint.display()
                ),
                Some(_) => bail!(
                    "no keeper answers on {}: {e} (give --state-dir if the mount has its own)",
                    sock.display()
                ),
            }
        }
    };
    if let Some(b) = &binary {
        if !b.is_file() {
            bail!("--binary {}: no such file", b.display());
        }
    }
    let binary = binary.map(|b| std::path::absolute(&b).unwrap_or(b));
    let mut req = serde_json::to_vec(&UpgradeRequest { binary })?;
    req.push(b'\n');
    conn.write_all(&req)?;
    conn.set_read_timeout(Some(
        PREPARE_TIMEOUT + DRAIN_TIMEOUT + Duration::from_secs(10),
    ))?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .context("the keeper did not answer")?;
    let a: UpgradeAnswer =
        serde_json::from_str(&line).context("the keeper's answer is not understood")?;
    if !a.ok {
        bail!("upgrade of {} failed: {}", mountpoint.display(), a.error);
    }
    Ok(a)
}
