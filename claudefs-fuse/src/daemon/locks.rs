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
//!   Whoever removes or downgrades a lock (unlock, release, an interrupted
//!   waiter, exclusive -> shared) scans the queue in arrival order and
//!   replies to every waiter that can now be granted.
//! * Interrupts: a signal to a waiting caller makes the kernel send
//!   `FUSE_INTERRUPT` with the waiting request's `unique`
//!   ([`Locks::interrupt`]): the waiter is answered `EINTR` and leaves the
//!   queue, waking those behind it. A fatal signal does the same, and the
//!   RELEASE of the dead process's files follows. An interrupt can be read
//!   by one worker before another has parked the request it names; it is
//!   then kept for [`EARLY_INTERRUPT_TTL`] and the request answered
//!   `EINTR` when it comes to park.
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::session::Reply;

use super::journal::{Journal, Record};
use super::journal_state::Held;

use crate::flock::{FlockConflict, FlockHandle, FlockRegistry, FlockType};
use crate::probes::hist::LatencyHistogram;
use crate::probes::snapshot::{FlockKind, FlockMode};

/// How long an interrupt for a request not parked (yet) is kept.
pub const EARLY_INTERRUPT_TTL: Duration = Duration::from_secs(1);
/// Early interrupts kept at most.
const EARLY_INTERRUPTS: usize = 256;

/// The answer of a flock request: sent at once, or kept while the request
/// is parked. The session's [`Reply`] in the daemon; tests record it.
pub trait Answer: Send + 'static {
    /// Success (`None`) or the errno.
    fn answer(self, errno: Option<i32>);
}

impl Answer for Reply {
    fn answer(self, errno: Option<i32>) {
        match errno {
            None => self.ok(),
            Some(e) => self.error(e),
        }
    }
}

#[derive(Debug)]
struct Waiter<A> {
    /// The kernel's id of the request (what an INTERRUPT names).
    unique: u64,
    owner: u64,
    pid: u32,
    typ: FlockType,
    reply: A,
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

#[derive(Debug)]
struct Inner<A> {
    reg: FlockRegistry,
    inos: std::collections::BTreeSet<u64>,
    queues: HashMap<u64, VecDeque<Waiter<A>>>,
    calls: BTreeMap<(FlockKind, FlockMode), FlockCalls>,
    /// Interrupts of requests not parked when they came, oldest first.
    early: VecDeque<(u64, Instant)>,
}

impl<A> Default for Inner<A> {
    fn default() -> Self {
        Self {
            reg: FlockRegistry::default(),
            inos: Default::default(),
            queues: HashMap::new(),
            calls: BTreeMap::new(),
            early: VecDeque::new(),
        }
    }
}

impl<A> Inner<A> {
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

/// The daemon's flock service, answering through `A`.
#[derive(Debug)]
pub struct Locks<A = Reply> {
    inner: Mutex<Inner<A>>,
    /// Where holders are journaled (a restarted server restores them).
    journal: OnceLock<Arc<Journal>>,
}

impl<A> Default for Locks<A> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            journal: OnceLock::new(),
        }
    }
}

/// What [`Locks::setlk`] decided: the answer for the caller to send (so
/// that it can end the request's span first), or that it parked the
/// request (the reply goes out when the lock is granted).
#[derive(Debug)]
pub enum Outcome<A> {
    /// Reply with success (`None`) or this errno.
    Answer(A, Option<i32>),
    Parked,
}

impl<A: Answer> Outcome<A> {
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
            Outcome::Answer(reply, e) => reply.answer(e),
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

impl<A: Answer> Locks<A> {
    fn lock(&self) -> MutexGuard<'_, Inner<A>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Journals holders to `j` from now on.
    pub fn journal_to(&self, j: Arc<Journal>) {
        let _ = self.journal.set(j);
    }

    /// `owner` got a lock of type `typ` on `ino`.
    fn granted(&self, ino: u64, owner: u64, pid: u32, typ: FlockType) {
        if let Some(j) = self.journal.get() {
            j.record(Record::Lock {
                ino,
                owner,
                pid,
                excl: typ == FlockType::Exclusive,
            });
        }
    }

    /// `owner`'s lock on `ino` is gone.
    fn released(&self, ino: u64, owner: u64) {
        if let Some(j) = self.journal.get() {
            j.record(Record::Unlock { ino, owner });
        }
    }

    /// The holders a previous server of the connection journaled, taken
    /// back (before any request is served); returns (restored, lost):
    /// a holder whose inode `exists` no longer says is lost.
    pub fn restore(
        &self,
        holders: &BTreeMap<(u64, u64), Held>,
        exists: impl Fn(u64) -> bool,
    ) -> (usize, usize) {
        let (mut restored, mut lost) = (0, 0);
        let mut inner = self.lock();
        for (&(ino, owner), h) in holders {
            if !exists(ino) {
                lost += 1;
                continue;
            }
            let typ = if h.excl {
                FlockType::Exclusive
            } else {
                FlockType::Shared
            };
            inner.inos.insert(ino);
            match inner
                .reg
                .try_acquire(FlockHandle::new(owner, ino, h.pid, typ, true))
            {
                FlockConflict::None => {
                    restored += 1;
                    self.granted(ino, owner, h.pid, typ);
                }
                c => {
                    tracing::warn!(
                        ino,
                        owner,
                        "journaled flock holder conflicts ({c:?}): not restored"
                    );
                    lost += 1;
                }
            }
        }
        (restored, lost)
    }

    /// SETLK/SETLKW `unique` of a flock: `typ` is `F_RDLCK`/`F_WRLCK`/
    /// `F_UNLCK`. Replies now, or parks `reply` until the lock can be
    /// granted (or the request is interrupted); says which.
    #[allow(clippy::too_many_arguments)]
    pub fn setlk(
        &self,
        unique: u64,
        ino: u64,
        owner: u64,
        pid: u32,
        typ: i32,
        sleep: bool,
        reply: A,
    ) -> Outcome<A> {
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
            if inner.reg.has_lock(owner, ino) {
                inner.reg.release(owner, ino);
                self.released(ino, owner);
            }
            // A waiter of this open file description (another thread) stays queued.
            self.wake(&mut inner, ino);
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
                self.granted(ino, owner, pid, ft);
                // A downgrade (exclusive -> shared) may let shared waiters in.
                if ft == FlockType::Shared {
                    self.wake(&mut inner, ino);
                }
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
                    self.released(ino, owner);
                    self.wake(&mut inner, ino);
                    if inner
                        .reg
                        .try_acquire(FlockHandle::new(owner, ino, pid, ft, false))
                        == FlockConflict::None
                    {
                        self.granted(ino, owner, pid, ft);
                        inner.answered(ft, sleep, since, false);
                        return Outcome::Answer(reply, None);
                    }
                }
                if inner.take_early(unique) {
                    inner.answered(ft, sleep, since, false);
                    return Outcome::Answer(reply, Some(libc::EINTR));
                }
                inner.queues.entry(ino).or_default().push_back(Waiter {
                    unique,
                    owner,
                    pid,
                    typ: ft,
                    reply,
                    since,
                });
                Outcome::Parked
            }
        }
    }

    /// Grants, in FIFO order, every waiter of `ino` that can now have its lock.
    fn wake(&self, inner: &mut Inner<A>, ino: u64) {
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
                    self.granted(ino, w.owner, w.pid, w.typ);
                    inner.answered(w.typ, true, w.since, false);
                    w.reply.answer(None)
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
            self.released(ino, owner);
            self.wake(&mut inner, ino);
        }
    }

    /// FUSE_INTERRUPT of request `unique`: a parked waiter with that id is
    /// answered `EINTR` (waking those behind it); an id not parked is kept
    /// for a while, in case its request is still on its way here.
    pub fn interrupt(&self, unique: u64) {
        let mut inner = self.lock();
        let found = inner
            .queues
            .iter()
            .find_map(|(ino, q)| q.iter().position(|w| w.unique == unique).map(|i| (*ino, i)));
        let Some((ino, i)) = found else {
            let now = Instant::now();
            while inner
                .early
                .front()
                .is_some_and(|(_, t)| now.duration_since(*t) > EARLY_INTERRUPT_TTL)
                || inner.early.len() >= EARLY_INTERRUPTS
            {
                inner.early.pop_front();
            }
            inner.early.push_back((unique, now));
            return;
        };
        let Some(w) = inner.queues.get_mut(&ino).and_then(|q| q.remove(i)) else {
            return;
        };
        if inner.queues.get(&ino).is_some_and(VecDeque::is_empty) {
            inner.queues.remove(&ino);
        }
        inner.answered(w.typ, true, w.since, false);
        w.reply.answer(Some(libc::EINTR));
        self.wake(&mut inner, ino);
    }

    /// Unmount: every parked waiter is answered `EINTR`.
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        let queues = std::mem::take(&mut inner.queues);
        for w in queues.into_values().flatten() {
            inner.answered(w.typ, true, w.since, false);
            w.reply.answer(Some(libc::EINTR));
        }
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

impl<A> Inner<A> {
    /// Whether an interrupt of `unique` came before the request parked
    /// (it is then used up).
    fn take_early(&mut self, unique: u64) -> bool {
        match self.early.iter().position(|(u, _)| *u == unique) {
            Some(i) => {
                self.early.remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod service_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    /// Answers recorded as (request id, errno).
    type Log = Arc<StdMutex<Vec<(u64, Option<i32>)>>>;

    struct Rec(u64, Log);

    impl Answer for Rec {
        fn answer(self, errno: Option<i32>) {
            self.1.lock().unwrap().push((self.0, errno));
        }
    }

    /// Pids of no live process, so the registry never sees one caller.
    const PID_A: u32 = 0x7fff_0001;
    const PID_B: u32 = 0x7fff_0002;

    fn setlk(l: &Locks<Rec>, log: &Log, unique: u64, owner: u64, pid: u32, typ: i32, sleep: bool) {
        l.setlk(unique, 7, owner, pid, typ, sleep, Rec(unique, log.clone()))
            .send();
    }

    fn answers(log: &Log) -> Vec<(u64, Option<i32>)> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[test]
    fn a_conflict_refuses_without_sleep_and_parks_with_it() {
        let (l, log) = (Locks::<Rec>::default(), Log::default());
        setlk(&l, &log, 1, 10, PID_A, libc::F_WRLCK, false);
        setlk(&l, &log, 2, 20, PID_B, libc::F_WRLCK, false);
        setlk(&l, &log, 3, 20, PID_B, libc::F_RDLCK, true);
        assert_eq!(answers(&log), vec![(1, None), (2, Some(libc::EWOULDBLOCK))]);
        assert_eq!(l.metrics().waiting, 1);
        // The holder's unlock grants the parked request (answered first,
        // while the unlock's own answer is sent by its caller).
        setlk(&l, &log, 4, 10, PID_A, libc::F_UNLCK, false);
        assert_eq!(answers(&log), vec![(3, None), (4, None)]);
        assert_eq!(l.metrics().waiting, 0);
    }

    #[test]
    fn an_interrupt_answers_the_parked_request_eintr_and_wakes_the_next() {
        let (l, log) = (Locks::<Rec>::default(), Log::default());
        setlk(&l, &log, 1, 10, PID_A, libc::F_WRLCK, false);
        setlk(&l, &log, 2, 20, PID_B, libc::F_WRLCK, true);
        setlk(&l, &log, 3, 30, PID_B, libc::F_WRLCK, true);
        assert_eq!(answers(&log), vec![(1, None)]);
        l.interrupt(99); // names no parked request: nothing answered
        assert!(answers(&log).is_empty());
        l.interrupt(2);
        assert_eq!(answers(&log), vec![(2, Some(libc::EINTR))]);
        assert_eq!(l.metrics().waiting, 1, "3 still waits for the holder");
        l.release_owner(7, 10);
        assert_eq!(answers(&log), vec![(3, None)]);
        let calls = l.metrics().calls;
        let blocking_ex = calls
            .iter()
            .find(|(k, m, _)| *k == FlockKind::Exclusive && *m == FlockMode::Blocking)
            .unwrap();
        assert_eq!(blocking_ex.2.calls, 2, "the interrupted request counts too");
    }

    #[test]
    fn an_interrupt_read_before_its_request_parked_still_interrupts_it() {
        let (l, log) = (Locks::<Rec>::default(), Log::default());
        setlk(&l, &log, 1, 10, PID_A, libc::F_WRLCK, false);
        l.interrupt(5);
        setlk(&l, &log, 5, 20, PID_B, libc::F_WRLCK, true);
        assert_eq!(answers(&log), vec![(1, None), (5, Some(libc::EINTR))]);
        assert_eq!(l.metrics().waiting, 0);
        // Used up: the next request with that id (ids are reused) parks.
        setlk(&l, &log, 5, 20, PID_B, libc::F_WRLCK, true);
        assert_eq!(l.metrics().waiting, 1);
    }

    #[test]
    fn release_frees_the_owner_and_shutdown_answers_every_waiter() {
        let (l, log) = (Locks::<Rec>::default(), Log::default());
        setlk(&l, &log, 1, 10, PID_A, libc::F_WRLCK, false);
        setlk(&l, &log, 2, 20, PID_B, libc::F_WRLCK, true);
        setlk(&l, &log, 3, 30, PID_B, libc::F_WRLCK, true);
        l.release_owner(7, 10);
        assert_eq!(answers(&log), vec![(1, None), (2, None)]);
        l.shutdown();
        assert_eq!(answers(&log), vec![(3, Some(libc::EINTR))]);
        assert_eq!(l.status().waiting, 0);
    }
}
