//! Multipath routing of requests over the storage paths.
//!
//! A [`crate::multipath::MultipathRouter`] (behind a mutex) picks the path
//! of each request. The outcome goes back to it: the measured latency of
//! every answered request (an answer such as `ENOENT` is a healthy path
//! answering) to `record_success`, and an errno saying that the path itself
//! is sick ([`is_path_error`]) to `record_error`. A sick answer also probes
//! the path's root at once; a root that does not answer marks the path
//! Failed immediately instead of waiting for ten errors.
//!
//! Requests that are safe to repeat ([`Retry::Idempotent`]: lookups,
//! getattr, reads, readdir, opens without `O_CREAT|O_TRUNC`) move on to the
//! next usable path; anything that may already have changed storage is not
//! replayed and returns the error. With no usable path a request fails at
//! once with `EIO`.
//!
//! Every request reads the router's choice, never its mutex: the path to
//! use, whether each path is usable and whether requests are slow are
//! mirrored in atomics, brought up to date whenever the router changes
//! (the guard `Router::lock` returns does it on unlock). Latencies gather in
//! per-thread shards ([`crate::sharded`]) and are folded into the EMAs at
//! most every [`FOLD_EVERY`] (and whenever status or the health checker
//! looks), a batch counting as that many requests of its mean latency.
//! Only round robin over two or more usable paths takes the mutex per
//! request (its choice moves with every request).
//!
//! The health checker thread probes Failed and Reconnecting paths every
//! `interval`: it re-opens the root directory by name (a remounted export
//! is a new mount) and checks that it is the same storage (root `st_ino`)
//! and answers `statfs`. An answering Failed path becomes Reconnecting, and
//! only after [`PROBES_TO_ACTIVE`] consecutive good probes Active again; a
//! failed probe sends it back to Failed.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_utils::sync::ShardedLock;

use crate::clock::monotonic_ns;
use crate::multipath::{LoadBalancePolicy, MultipathRouter, PathId, PathInfo, PathState};
use crate::sharded::Sharded;

use super::storage::{Errno, StorageRoot, SysResult};

/// Consecutive good probes before a Reconnecting path is Active again.
pub const PROBES_TO_ACTIVE: u32 = 3;

/// A request's outcome and the storage path it was served on (the last
/// one tried; none when no path was usable).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Routed<T> {
    pub result: SysResult<T>,
    pub path: Option<u64>,
}

/// Whether an errno says the storage path itself is sick.
pub fn is_path_error(e: Errno) -> bool {
    matches!(
        e,
        libc::EIO
            | libc::ENOTCONN
            | libc::ESTALE
            | libc::ETIMEDOUT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ENODEV
            | libc::ENXIO
            | libc::ECONNRESET
            | libc::ECONNABORTED
            | libc::ECONNREFUSED
            | libc::ESHUTDOWN
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::ENOLINK
            | libc::ECOMM
    )
}

/// What the kernel is told of `e`, a request's errno on path `usable`
/// or not after its outcome was reported: a sick answer of a path that
/// failed under it is `EIO` (the storage path died: `ECONNABORTED`,
/// `ENOTCONN` of a dead FUSE storage mean nothing to the application of
/// this live mount); any other errno, also a sick-looking one of a path
/// whose root still answers (`ENXIO` of a FIFO), is the file's own answer.
fn answer(e: Errno, usable: bool) -> Errno {
    if is_path_error(e) && !usable {
        libc::EIO
    } else {
        e
    }
}

/// Whether a request may be repeated on another path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Safe to repeat (reads of any kind).
    Idempotent,
    /// May have changed storage: never replayed.
    Once,
}

#[derive(Debug)]
struct Slot {
    dir: std::path::PathBuf,
    /// Read by every request (the lock in per-thread shards), replaced by
    /// the health checker after a reconnect.
    root: ShardedLock<Arc<StorageRoot>>,
    good_probes: Mutex<u32>,
    /// Sick answers since start (the router's own count resets).
    errors: AtomicU64,
    /// The router's state of the path says it takes requests (mirror).
    usable: AtomicBool,
}

/// Monotonic counters of one path, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounters {
    pub selected: u64,
    pub errors: u64,
}

/// The storage paths and the router that picks among them.
#[derive(Debug)]
pub struct Router {
    slots: Vec<Slot>,
    router: Mutex<MultipathRouter>,
    root_ino: u64,
    /// Latency comes from the kernel (`--ebpf`): successful requests do
    /// not report the daemon-measured time (see `kernel_join`).
    kernel_latency: AtomicBool,
    /// A usable path's latency EMA is above [`SLOW_EMA_US`] (see `slow`).
    slow: AtomicBool,
    /// The path every request takes ([`PICK_NONE`], [`PICK_LOCKED`]).
    pick: AtomicU64,
    /// Times the router picked each path.
    selected: Sharded,
    /// Latencies not yet in the EMAs, per path: the sum in microseconds
    /// above [`COUNT_BITS`], their number below.
    pending: Sharded,
    /// When latencies were last folded in (CLOCK_MONOTONIC ns, 0 never).
    folded_ns: AtomicU64,
}

/// No usable path: requests fail with `EIO`.
const PICK_NONE: u64 = u64::MAX;
/// Round robin over several paths: ask the router each time.
const PICK_LOCKED: u64 = u64::MAX - 1;

/// Latencies gathered in the shards are folded into the EMAs at most
/// this often (by the request that finds them older).
pub const FOLD_EVERY: Duration = Duration::from_millis(1);

/// Bits of a pending entry that count its latencies.
const COUNT_BITS: u32 = 20;
/// A latency counts at most this many microseconds (71 minutes), so a
/// batch's sum cannot overflow its 44 bits.
const MAX_PENDING_US: u64 = u32::MAX as u64;
/// A batch of n equal latencies moves the EMA as n requests do; past this
/// many the old value's weight (7/8)^n is below 0.02%.
const FOLD_STEPS: u64 = 64;

/// The router, locked; on unlock the mirrors follow what changed.
struct Locked<'a> {
    guard: MutexGuard<'a, MultipathRouter>,
    owner: &'a Router,
}

impl Deref for Locked<'_> {
    type Target = MultipathRouter;
    fn deref(&self) -> &MultipathRouter {
        &self.guard
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut MultipathRouter {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.owner.mirror(&mut self.guard);
    }
}

/// Above this latency EMA (microseconds) a path's requests may block a
/// worker for long; they are not served by the lone reader (`readers`).
pub const SLOW_EMA_US: u64 = 1000;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Router {
    /// Routes over `roots` (path id = index), all of which must reach the
    /// storage whose root has `st_ino` `root_ino`.
    pub fn new(
        policy: LoadBalancePolicy,
        roots: Vec<(StorageRoot, u8, String)>,
        root_ino: u64,
    ) -> anyhow::Result<Self> {
        let mut router = MultipathRouter::new(policy);
        let mut slots = Vec::new();
        for (i, (root, prio, addr)) in roots.into_iter().enumerate() {
            router
                .add_path(PathInfo::new(PathId(i as u64), addr, prio))
                .map_err(|e| anyhow::anyhow!("adding path {}: {e}", root.dir.display()))?;
            slots.push(Slot {
                dir: root.dir.clone(),
                root: ShardedLock::new(Arc::new(root)),
                good_probes: Mutex::new(0),
                errors: AtomicU64::new(0),
                usable: AtomicBool::new(false),
            });
        }
        let n = slots.len();
        let me = Self {
            slots,
            router: Mutex::new(router),
            root_ino,
            kernel_latency: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            pick: AtomicU64::new(PICK_NONE),
            selected: Sharded::new(n),
            pending: Sharded::new(n),
            folded_ns: AtomicU64::new(0),
        };
        drop(me.lock());
        Ok(me)
    }

    /// The router, locked (its mirrors are brought up to date on unlock).
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self.router.lock().unwrap_or_else(|p| p.into_inner()),
            owner: self,
        }
    }

    /// Brings the atomics requests read in line with `r`.
    fn mirror(&self, r: &mut MultipathRouter) {
        let mut usable = 0;
        let mut only = PICK_NONE;
        for p in r.paths() {
            let u = p.is_usable();
            if let Some(s) = self.slots.get(p.id.0 as usize) {
                if s.usable.load(Ordering::Relaxed) != u {
                    s.usable.store(u, Ordering::Relaxed);
                }
            }
            if u {
                usable += 1;
                only = p.id.0;
            }
        }
        let pick = match (r.policy(), usable) {
            (_, 0) => PICK_NONE,
            (_, 1) => only,
            (LoadBalancePolicy::RoundRobin, _) => PICK_LOCKED,
            // Least latency and primary choose without changing the router.
            _ => r.select_path().map_or(PICK_NONE, |p| p.0),
        };
        if self.pick.load(Ordering::Relaxed) != pick {
            self.pick.store(pick, Ordering::Relaxed);
        }
        let slow = r
            .paths()
            .iter()
            .any(|p| p.is_usable() && p.metrics.latency_us > SLOW_EMA_US);
        if self.slow.load(Ordering::Relaxed) != slow {
            self.slow.store(slow, Ordering::Relaxed);
        }
    }

    /// Whether requests may take long: a usable path's latency EMA is
    /// above [`SLOW_EMA_US`]. Kept up to date on every latency, error and
    /// state change.
    pub fn slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Root of path `id`.
    pub fn root(&self, id: u64) -> Option<Arc<StorageRoot>> {
        let slot = self.slots.get(id as usize)?;
        let root = slot.root.read().unwrap_or_else(|p| p.into_inner());
        Some(root.clone())
    }

    /// Number of storage paths.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Never true: a daemon has at least one path.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether path `id` may take requests.
    pub fn usable(&self, id: u64) -> bool {
        self.slots
            .get(id as usize)
            .is_some_and(|s| s.usable.load(Ordering::Relaxed))
    }

    /// A copy of every path's info (for status), pending latencies folded
    /// in first.
    pub fn snapshot(&self) -> Vec<(PathInfo, std::path::PathBuf)> {
        self.fold();
        let r = self.lock();
        r.paths()
            .iter()
            .map(|p| (p.clone(), self.slots[p.id.0 as usize].dir.clone()))
            .collect()
    }

    /// Picks a usable path.
    pub fn select(&self) -> SysResult<u64> {
        let id = match self.pick.load(Ordering::Relaxed) {
            PICK_NONE => return Err(libc::EIO),
            PICK_LOCKED => self.lock().select_path().map(|p| p.0).ok_or(libc::EIO)?,
            id => id,
        };
        self.selected.add(id as usize, 1);
        Ok(id)
    }

    /// Monotonic counters of every path, by path id.
    pub fn counters(&self) -> Vec<PathCounters> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| PathCounters {
                selected: self.selected.get(i),
                errors: s.errors.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether path latency comes from the kernel (`--ebpf`) rather than
    /// from the daemon's own measurement.
    pub fn set_kernel_latency(&self, on: bool) {
        self.kernel_latency.store(on, Ordering::Relaxed);
    }

    /// Adds a request's latency on path `id` (measured here or by the
    /// kernel) to the pending ones; folds them in when due.
    pub fn record_latency(&self, id: u64, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.record_latency_at(id, ns, monotonic_ns());
    }

    /// Adds a latency of `ns` ended at `now_ns` (CLOCK_MONOTONIC).
    fn record_latency_at(&self, id: u64, ns: u64, now_ns: u64) {
        let us = (ns / 1000).min(MAX_PENDING_US);
        self.pending.add(id as usize, (us << COUNT_BITS) | 1);
        let last = self.folded_ns.load(Ordering::Relaxed);
        let due = last == 0 || now_ns.saturating_sub(last) >= FOLD_EVERY.as_nanos() as u64;
        // One request folds; the others carry on.
        if due
            && self
                .folded_ns
                .compare_exchange(last, now_ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.fold();
        }
    }

    /// Folds every path's pending latencies into its EMA: a batch of n
    /// latencies counts as n requests of their mean.
    pub fn fold(&self) {
        let mut r = self.lock();
        for id in 0..self.slots.len() {
            let p = self.pending.take(id);
            let n = p & ((1 << COUNT_BITS) - 1);
            if n == 0 {
                continue;
            }
            let mean = (p >> COUNT_BITS) / n;
            for _ in 0..n.min(FOLD_STEPS) {
                let _ = r.record_success(PathId(id as u64), mean);
            }
        }
    }

    /// Starts one request: the time to measure it from (CLOCK_MONOTONIC
    /// ns), unless path latency comes from the kernel (`--ebpf`).
    fn start(&self) -> Option<u64> {
        (!self.kernel_latency.load(Ordering::Relaxed)).then(monotonic_ns)
    }

    /// Reports the outcome of one request on path `id` started at `t0`.
    fn report(&self, id: u64, t0: Option<u64>, result: Option<Errno>) {
        match result {
            Some(e) if is_path_error(e) => self.sick_answer(id, e),
            _ => {
                if let Some(t0) = t0 {
                    let now = monotonic_ns();
                    self.record_latency_at(id, now.saturating_sub(t0), now);
                }
            }
        }
    }

    /// A sick-looking answer `e` on path `id`. `ENXIO` and `ENODEV` while
    /// the root answers are the file's own (a FIFO opened for writing with
    /// no reader, a device node without its driver) and count nothing;
    /// anything else counts as in [`Self::path_failed`].
    fn sick_answer(&self, id: u64, e: Errno) {
        let root_ok = self.root_answers(id);
        if root_ok && matches!(e, libc::ENXIO | libc::ENODEV) {
            return;
        }
        self.count_sick(id, root_ok);
    }

    /// Whether path `id`'s root answers statfs and stat.
    fn root_answers(&self, id: u64) -> bool {
        self.root(id)
            .is_some_and(|r| r.statfs().is_ok() && r.stat(std::path::Path::new("")).is_ok())
    }

    /// A sick answer on path `id`: count it, and fail the path at once if
    /// its root does not answer either.
    pub fn path_failed(&self, id: u64) {
        self.count_sick(id, self.root_answers(id));
    }

    fn count_sick(&self, id: u64, root_ok: bool) {
        if let Some(s) = self.slots.get(id as usize) {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut r = self.lock();
        let _ = r.record_error(PathId(id), now_secs());
        if !root_ok {
            if r.get_path(PathId(id))
                .is_some_and(|p| p.state != PathState::Failed)
            {
                tracing::warn!(path = id, "storage path failed");
            }
            let _ = r.mark_failed(PathId(id));
        }
    }

    /// Runs `f` on a selected path; retries on the next usable path when
    /// `retry` allows and the path was sick.
    pub fn run<T>(
        &self,
        retry: Retry,
        mut f: impl FnMut(&StorageRoot) -> SysResult<T>,
    ) -> Routed<T> {
        let attempts = self.slots.len().max(1);
        let mut last = libc::EIO;
        let mut path = None;
        for _ in 0..attempts {
            let id = match self.select() {
                Ok(id) => id,
                Err(e) => {
                    return Routed {
                        result: Err(e),
                        path,
                    }
                }
            };
            // The request holds its own reference: one hung on a dead root
            // does not keep the health checker from putting a fresh one in
            // place (holding the read lock through `f` instead was
            // measured 2.5% faster at 4 processes, not worth a path that
            // cannot come back).
            let Some(root) = self.root(id) else {
                return Routed {
                    result: Err(libc::EIO),
                    path,
                };
            };
            path = Some(id);
            let t0 = self.start();
            let r = f(&root);
            let Err(e) = r else {
                self.report(id, t0, None);
                return Routed { result: r, path };
            };
            self.report(id, t0, Some(e));
            match answer(e, self.usable(id)) {
                e if is_path_error(e) && retry == Retry::Idempotent => last = e,
                e => {
                    return Routed {
                        result: Err(e),
                        path,
                    }
                }
            }
        }
        Routed {
            result: Err(last),
            path,
        }
    }

    /// Runs `f` on path `id` (an open file's path), reporting the outcome.
    pub fn run_on<T>(&self, id: u64, f: impl FnOnce(&StorageRoot) -> SysResult<T>) -> Routed<T> {
        let Some(root) = self.root(id) else {
            return Routed {
                result: Err(libc::EIO),
                path: None,
            };
        };
        let t0 = self.start();
        let r = f(&root);
        self.report(id, t0, r.as_ref().err().copied());
        Routed {
            result: r.map_err(|e| answer(e, self.usable(id))),
            path: Some(id),
        }
    }

    /// One health-check round over Failed and Reconnecting paths.
    pub fn probe_once(&self) {
        for (i, slot) in self.slots.iter().enumerate() {
            let id = PathId(i as u64);
            let state = match self.lock().get_path(id) {
                Some(p) => p.state,
                None => continue,
            };
            if !matches!(state, PathState::Failed | PathState::Reconnecting) {
                continue;
            }
            let fresh = StorageRoot::open(&slot.dir).ok().filter(|r| {
                r.statfs().is_ok()
                    && r.stat(std::path::Path::new(""))
                        .is_ok_and(|st| st.st_ino == self.root_ino)
            });
            let mut good = slot.good_probes.lock().unwrap_or_else(|p| p.into_inner());
            match fresh {
                Some(root) => {
                    // A request still running on the old root keeps it.
                    *slot.root.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(root);
                    *good += 1;
                    let mut r = self.lock();
                    if state == PathState::Failed {
                        let _ = r.mark_reconnecting(id);
                        tracing::info!(path = i, "storage path answers again: reconnecting");
                    }
                    if *good >= PROBES_TO_ACTIVE {
                        let _ = r.mark_active(id);
                        *good = 0;
                        tracing::info!(path = i, "storage path active again");
                    }
                }
                None => {
                    *good = 0;
                    let _ = self.lock().mark_failed(id);
                }
            }
        }
    }

    /// Starts the health checker; it stops when `stop` is set.
    pub fn spawn_health_checker(
        self: &Arc<Self>,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("cfs-health".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    me.fold();
                    me.probe_once();
                }
            })
    }
}

#[cfg(test)]
mod tests;
