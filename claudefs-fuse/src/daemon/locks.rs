//! flock(2) served by the daemon from [`crate::flock::FlockRegistry`].
//!
//! Only `FUSE_FLOCK_LOCKS` is negotiated (not `FUSE_POSIX_LOCKS`), so every
//! SETLK/SETLKW the daemon receives is a flock; POSIX `fcntl` locks stay
//! with the kernel. The lock owner is the open file description (the
//! kernel's `lock_owner`), which `dup`/`fork` share, as flock wants.
//!
//! * `LOCK_NB` conflict -> `EWOULDBLOCK`; `Deadlock` -> `EDEADLK` when the
//!   caller is single-threaded (Linux would block it forever). A caller
//!   with other threads waits instead, like on Linux: another thread may
//!   unlock (two threads flocking separate opens of one file).
//! * A blocking request that conflicts is parked: its reply object goes to
//!   a FIFO wait queue of the inode and the worker thread returns at once.
//!   Whoever removes a lock (unlock, release, an interrupted waiter) scans
//!   the queue in arrival order and replies to every waiter that can now be
//!   granted.
//! * Interrupts: fuser 0.18 answers `FUSE_INTERRUPT` itself with `ENOSYS`
//!   (the kernel then stops sending them) and never shows it to the file
//!   system. So a watcher thread looks at each parked waiter's task every
//!   [`WATCH_INTERVAL`]: a task that is gone or has an unblocked signal
//!   pending (which is what makes the kernel send `FUSE_INTERRUPT`) gets
//!   `EINTR`, and no lock is left behind. This covers `kill -9` of a
//!   waiter as well.
//! * RELEASE with `FUSE_RELEASE_FLOCK_UNLOCK` frees the owner's lock and
//!   wakes waiters.
//! * Upgrade/downgrade: a non-blocking upgrade that conflicts keeps the
//!   caller's shared lock (the registry's rule; Linux drops it and the
//!   caller then holds nothing: the documented difference). A blocking
//!   upgrade that conflicts behaves like Linux: the shared lock is dropped
//!   first (waking waiters), then the request waits — so two shared holders
//!   upgrading at once do not deadlock.
//! * Measurement: per (kind, mode) the requests served, the ones refused
//!   with `EWOULDBLOCK` and the time from a request's arrival to its
//!   answer ([`FlockCalls`]): what the probes measure from the flock
//!   syscalls, taken here for free, so the daemon needs no syscall
//!   tracepoints to report its own mount's lock contention.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fuser::{Errno, ReplyEmpty};
use serde::Serialize;

use crate::flock::{FlockConflict, FlockHandle, FlockRegistry, FlockType};
use crate::probes::hist::LatencyHistogram;
use crate::probes::snapshot::{FlockKind, FlockMode};

/// How often parked waiters are checked for signals.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Waiter {
    owner: u64,
    pid: u32,
    tid: u32,
    typ: FlockType,
    reply: ReplyEmpty,
    /// When the request arrived.
    since: Instant,
}

/// The flock requests of one (kind, mode) the daemon answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlockCalls {
    pub calls: u64,
    /// Answered `EWOULDBLOCK` (a `LOCK_NB` conflict).
    pub refused: u64,
    /// Arrival to answer, summed (ns).
    pub total_ns: u64,
    /// Arrival to answer, log2 ns buckets (as the probes keep them).
    pub hist: LatencyHistogram,
}

#[derive(Debug, Default)]
struct Inner {
    reg: FlockRegistry,
    inos: std::collections::BTreeSet<u64>,
    queues: HashMap<u64, VecDeque<Waiter>>,
    calls: BTreeMap<(FlockKind, FlockMode), FlockCalls>,
}

impl Inner {
    /// Counts one answered request that arrived at `since`.
    fn answered(&mut self, typ: FlockType, sleep: bool, since: Instant, refused: bool) {
        let kind = match typ {
            FlockType::Shared => FlockKind::Shared,
            FlockType::Exclusive => FlockKind::Exclusive,
            FlockType::Unlock => FlockKind::Unlock,
        };
        let mode = if sleep {
            FlockMode::Blocking
        } else {
            FlockMode::NonBlocking
        };
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let c = self.calls.entry((kind, mode)).or_default();
        c.calls += 1;
        c.refused += u64::from(refused);
        c.total_ns = c.total_ns.saturating_add(ns);
        c.hist.record(ns);
    }
}

/// The lock service's numbers for the metrics (see [`Locks::metrics`]).
#[derive(Debug)]
pub struct LockMetrics {
    pub stats: crate::flock::FlockStats,
    /// Blocking requests parked now.
    pub waiting: usize,
    pub calls: Vec<(FlockKind, FlockMode, FlockCalls)>,
}

/// Lock state for status.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LockStatus {
    pub held: Vec<String>,
    pub waiting: usize,
    pub acquires: u64,
    pub releases: u64,
    pub conflicts: u64,
    pub upgrades: u64,
    pub downgrades: u64,
}

/// The daemon's flock service.
#[derive(Debug, Default)]
pub struct Locks {
    inner: Mutex<Inner>,
    stop: AtomicBool,
}

/// What [`Locks::setlk`] decided: the answer for the caller to send (so
/// that it can end the request's span first), or that it parked the
/// request (the reply goes out when the lock is granted).
#[derive(Debug)]
pub enum Outcome {
    /// Reply with success (`None`) or this errno.
    Answer(ReplyEmpty, Option<i32>),
    Parked,
}

impl Outcome {
    /// The errno of an answer.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Outcome::Answer(_, e) => *e,
            Outcome::Parked => None,
        }
    }

    /// Sends the answer (a parked request has none yet).
    pub fn send(self) {
        match self {
            Outcome::Answer(reply, None) => reply.ok(),
            Outcome::Answer(reply, Some(e)) => reply.error(Errno::from_i32(e)),
            Outcome::Parked => {}
        }
    }
}

/// Whether process `pid` has a single thread (false if unknown).
fn single_threaded(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|st| {
        st.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .is_some_and(|n| n.trim() == "1")
    })
}

impl Locks {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SETLK/SETLKW of a flock: `typ` is `F_RDLCK`/`F_WRLCK`/`F_UNLCK`.
    /// Replies now, or parks `reply` until the lock can be granted; says
    /// which.
    #[allow(clippy::too_many_arguments)]
    pub fn setlk(
        &self,
        ino: u64,
        owner: u64,
        pid: u32,
        tid: u32,
        typ: i32,
        sleep: bool,
        reply: ReplyEmpty,
    ) -> Outcome {
        let since = Instant::now();
        let ft = match typ {
            libc::F_RDLCK => FlockType::Shared,
            libc::F_WRLCK => FlockType::Exclusive,
            libc::F_UNLCK => FlockType::Unlock,
            _ => {
                return Outcome::Answer(reply, Some(libc::EINVAL));
            }
        };
        let mut inner = self.lock();
        if ft == FlockType::Unlock {
            inner.reg.release(owner, ino);
            // A waiter of this open file description (another thread) stays queued.
            Self::wake(&mut inner, ino);
            inner.answered(ft, sleep, since, false);
            return Outcome::Answer(reply, None);
        }
        inner.inos.insert(ino);
        let conflict = inner
            .reg
            .try_acquire(FlockHandle::new(owner, ino, pid, ft, !sleep));
        // Only the caller's own process holds the conflicting locks: with
        // other threads one of them may release them (Linux waits), so the
        // request waits; a single-threaded caller would wait forever.
        let conflict = match conflict {
            FlockConflict::Deadlock if !single_threaded(pid) => {
                FlockConflict::WouldBlock { holder_pid: pid }
            }
            c => c,
        };
        match conflict {
            FlockConflict::None => {
                inner.answered(ft, sleep, since, false);
                Outcome::Answer(reply, None)
            }
            FlockConflict::Deadlock => {
                inner.answered(ft, sleep, since, false);
                Outcome::Answer(reply, Some(libc::EDEADLK))
            }
            FlockConflict::WouldBlock { .. } if !sleep => {
                inner.answered(ft, sleep, since, true);
                Outcome::Answer(reply, Some(libc::EWOULDBLOCK))
            }
            FlockConflict::WouldBlock { .. } => {
                if inner.reg.has_lock(owner, ino) {
                    // Blocking conversion: drop the old lock first, like Linux.
                    inner.reg.release(owner, ino);
                    Self::wake(&mut inner, ino);
                    if inner
                        .reg
                        .try_acquire(FlockHandle::new(owner, ino, pid, ft, false))
                        == FlockConflict::None
                    {
                        inner.answered(ft, sleep, since, false);
                        return Outcome::Answer(reply, None);
                    }
                }
                inner.queues.entry(ino).or_default().push_back(Waiter {
                    owner,
                    pid,
                    tid,
                    typ: ft,
                    reply,
                    since,
                });
                Outcome::Parked
            }
        }
    }

    /// Grants, in FIFO order, every waiter of `ino` that can now have its lock.
    fn wake(inner: &mut Inner, ino: u64) {
        let Some(mut q) = inner.queues.remove(&ino) else {
            return;
        };
        let mut keep = VecDeque::new();
        while let Some(w) = q.pop_front() {
            match inner
                .reg
                .try_acquire(FlockHandle::new(w.owner, ino, w.pid, w.typ, false))
            {
                FlockConflict::None => {
                    inner.answered(w.typ, true, w.since, false);
                    w.reply.ok()
                }
                // Parked with only its own process in the way: it keeps
                // waiting for another of its threads (see `setlk`).
                FlockConflict::Deadlock | FlockConflict::WouldBlock { .. } => keep.push_back(w),
            }
        }
        if !keep.is_empty() {
            inner.queues.insert(ino, keep);
        }
    }

    /// RELEASE with `FUSE_RELEASE_FLOCK_UNLOCK`: frees `owner`'s lock.
    pub fn release_owner(&self, ino: u64, owner: u64) {
        let mut inner = self.lock();
        if inner.reg.has_lock(owner, ino) {
            inner.reg.release(owner, ino);
            Self::wake(&mut inner, ino);
        }
    }

    /// Replies `EINTR` to parked waiters whose task got a signal or is gone.
    pub fn check_waiters(&self, pending: impl Fn(u32) -> bool) {
        let mut inner = self.lock();
        let inos: Vec<u64> = inner.queues.keys().copied().collect();
        for ino in inos {
            let Some(q) = inner.queues.get_mut(&ino) else {
                continue;
            };
            let mut keep = VecDeque::new();
            let mut interrupted = Vec::new();
            while let Some(w) = q.pop_front() {
                if pending(w.tid) {
                    interrupted.push((w.typ, w.since));
                    w.reply.error(Errno::EINTR);
                } else {
                    keep.push_back(w);
                }
            }
            *q = keep;
            if q.is_empty() {
                inner.queues.remove(&ino);
            }
            let removed = !interrupted.is_empty();
            for (typ, since) in interrupted {
                inner.answered(typ, true, since, false);
            }
            if removed {
                Self::wake(&mut inner, ino);
            }
        }
    }

    /// Starts the watcher thread (see module doc).
    pub fn spawn_watcher(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("cfs-flock".into())
            .spawn(move || {
                while !me.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(WATCH_INTERVAL);
                    let idle = me.lock().queues.is_empty();
                    if !idle {
                        me.check_waiters(signal_pending);
                    }
                }
            })
    }

    /// Stops the watcher; parked waiters get `EINTR` (unmount).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.check_waiters(|_| true);
    }

    /// For the metrics, from one look under the lock: registry counters,
    /// parked waiters, and the requests answered so far per (kind, mode).
    pub fn metrics(&self) -> LockMetrics {
        let inner = self.lock();
        LockMetrics {
            stats: inner.reg.stats(),
            waiting: inner.queues.values().map(VecDeque::len).sum(),
            calls: inner
                .calls
                .iter()
                .map(|((k, m), c)| (*k, *m, c.clone()))
                .collect(),
        }
    }

    /// Snapshot for status.
    pub fn status(&self) -> LockStatus {
        let mut inner = self.lock();
        let Inner { reg, inos, .. } = &mut *inner;
        inos.retain(|i| reg.holder_count(*i) > 0);
        let inner = &*inner;
        let s = inner.reg.stats();
        let mut held = Vec::new();
        for ino in &inner.inos {
            for e in inner.reg.holders(*ino) {
                held.push(format!(
                    "ino={} owner={:#x} pid={} {:?}",
                    e.ino, e.fd, e.pid, e.lock_type
                ));
            }
        }
        LockStatus {
            held,
            waiting: inner.queues.values().map(VecDeque::len).sum(),
            acquires: s.acquires,
            releases: s.releases,
            conflicts: s.conflicts,
            upgrades: s.upgrades,
            downgrades: s.downgrades,
        }
    }
}

/// Whether task `tid` is gone or has an unblocked signal pending.
pub fn signal_pending(tid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    let blocked = field("SigBlk:");
    let ignored = field("SigIgn:");
    let kill = 1u64 << (libc::SIGKILL - 1);
    pending & kill != 0 || pending & !blocked & !ignored != 0
}
