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
//! The health checker thread probes Failed and Reconnecting paths every
//! `interval`: it re-opens the root directory by name (a remounted export
//! is a new mount) and checks that it is the same storage (root `st_ino`)
//! and answers `statfs`. An answering Failed path becomes Reconnecting, and
//! only after [`PROBES_TO_ACTIVE`] consecutive good probes Active again; a
//! failed probe sends it back to Failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::multipath::{LoadBalancePolicy, MultipathRouter, PathId, PathInfo, PathState};

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
    root: RwLock<Arc<StorageRoot>>,
    good_probes: Mutex<u32>,
    /// Times the router picked this path.
    selected: AtomicU64,
    /// Sick answers since start (the router's own count resets).
    errors: AtomicU64,
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
                root: RwLock::new(Arc::new(root)),
                good_probes: Mutex::new(0),
                selected: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            });
        }
        Ok(Self {
            slots,
            router: Mutex::new(router),
            root_ino,
            kernel_latency: AtomicBool::new(false),
            slow: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, MultipathRouter> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether requests may take long: a usable path's latency EMA is
    /// above [`SLOW_EMA_US`]. Kept up to date on every latency, error and
    /// state change.
    pub fn slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    fn refresh_slow(&self, r: &MultipathRouter) {
        let slow = r
            .paths()
            .iter()
            .any(|p| p.is_usable() && p.metrics.latency_us > SLOW_EMA_US);
        if self.slow.load(Ordering::Relaxed) != slow {
            self.slow.store(slow, Ordering::Relaxed);
        }
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
        self.lock()
            .get_path(PathId(id))
            .is_some_and(|p| p.is_usable())
    }

    /// A copy of every path's info (for status).
    pub fn snapshot(&self) -> Vec<(PathInfo, std::path::PathBuf)> {
        let r = self.lock();
        r.paths()
            .iter()
            .map(|p| (p.clone(), self.slots[p.id.0 as usize].dir.clone()))
            .collect()
    }

    /// Picks a usable path.
    pub fn select(&self) -> SysResult<u64> {
        let id = self.lock().select_path().map(|p| p.0).ok_or(libc::EIO)?;
        if let Some(s) = self.slots.get(id as usize) {
            s.selected.fetch_add(1, Ordering::Relaxed);
        }
        Ok(id)
    }

    /// Monotonic counters of every path, by path id.
    pub fn counters(&self) -> Vec<PathCounters> {
        self.slots
            .iter()
            .map(|s| PathCounters {
                selected: s.selected.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether path latency comes from the kernel (`--ebpf`) rather than
    /// from the daemon's own measurement.
    pub fn set_kernel_latency(&self, on: bool) {
        self.kernel_latency.store(on, Ordering::Relaxed);
    }

    /// Folds a latency measured elsewhere (the kernel's) into path `id`'s EMA.
    pub fn record_latency(&self, id: u64, latency: Duration) {
        let mut r = self.lock();
        let _ = r.record_success(PathId(id), latency.as_micros() as u64);
        self.refresh_slow(&r);
    }

    /// Starts one request: the time to measure it from, unless path
    /// latency comes from the kernel (`--ebpf`).
    fn start(&self) -> Option<Instant> {
        (!self.kernel_latency.load(Ordering::Relaxed)).then(Instant::now)
    }

    /// Reports the outcome of one request on path `id` started at `t0`.
    fn report(&self, id: u64, t0: Option<Instant>, result: Option<Errno>) {
        match result {
            Some(e) if is_path_error(e) => self.sick_answer(id, e),
            _ => {
                if let Some(t0) = t0 {
                    self.record_latency(id, t0.elapsed());
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
        self.refresh_slow(&r);
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
            let Some(root) = self.root(id) else {
                return Routed {
                    result: Err(libc::EIO),
                    path,
                };
            };
            path = Some(id);
            let t0 = self.start();
            let r = f(&root);
            let err = r.as_ref().err().copied();
            self.report(id, t0, err);
            let r = r.map_err(|e| answer(e, self.usable(id)));
            match r {
                Err(e) if is_path_error(e) && retry == Retry::Idempotent => last = e,
                result => return Routed { result, path },
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
                    self.refresh_slow(&r);
                }
                None => {
                    *good = 0;
                    let mut r = self.lock();
                    let _ = r.mark_failed(id);
                    self.refresh_slow(&r);
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
                    me.probe_once();
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_paths() -> (tempfile::TempDir, Router) {
        let d = tempfile::tempdir().unwrap();
        let ino = StorageRoot::open(d.path())
            .unwrap()
            .stat(std::path::Path::new(""))
            .unwrap()
            .st_ino;
        let roots = vec![
            (StorageRoot::open(d.path()).unwrap(), 100, "a".to_string()),
            (StorageRoot::open(d.path()).unwrap(), 100, "b".to_string()),
        ];
        (
            d,
            Router::new(LoadBalancePolicy::RoundRobin, roots, ino).unwrap(),
        )
    }

    #[test]
    fn idempotent_requests_retry_on_next_path() {
        let (_d, r) = two_paths();
        let mut calls = 0;
        let out = r.run(Retry::Idempotent, |_| {
            calls += 1;
            if calls == 1 {
                Err(libc::ENOTCONN)
            } else {
                Ok(7)
            }
        });
        assert_eq!(out.result, Ok(7));
        assert_eq!(calls, 2);
        // The path that answered comes back with the answer.
        assert!(out.path.is_some());
        let first = r.run(Retry::Idempotent, |_| Ok(())).path;
        let second = r.run(Retry::Idempotent, |_| Ok(())).path;
        assert_ne!(first, second, "round robin over two paths");
    }

    #[test]
    fn non_idempotent_requests_are_not_replayed() {
        let (_d, r) = two_paths();
        let mut calls = 0;
        let out: SysResult<()> = r
            .run(Retry::Once, |_| {
                calls += 1;
                Err(libc::EIO)
            })
            .result;
        assert_eq!(out, Err(libc::EIO));
        assert_eq!(calls, 1);
        // An ordinary errno is an answer, not a sick path.
        assert_eq!(
            r.run(Retry::Idempotent, |_| -> SysResult<()> {
                Err(libc::ENOENT)
            })
            .result,
            Err(libc::ENOENT)
        );
    }

    #[test]
    fn a_sick_answer_of_a_path_that_failed_under_it_is_eio() {
        let (_d, r) = two_paths();
        // The roots answer: a sick-looking errno is the file's own.
        let out = r.run(Retry::Once, |_| -> SysResult<()> { Err(libc::ENXIO) });
        assert_eq!(out.result, Err(libc::ENXIO));
        assert!(r.usable(0) && r.usable(1));
        // The path fails while the request is on it (as when a concurrent
        // request found its root dead): what the dead storage said (a
        // killed FUSE storage: ECONNABORTED) is answered EIO, once.
        let mut calls = 0;
        let out = r.run(Retry::Once, |_| -> SysResult<()> {
            calls += 1;
            let _ = r.lock().mark_failed(PathId(0));
            let _ = r.lock().mark_failed(PathId(1));
            Err(libc::ECONNABORTED)
        });
        assert_eq!((out.result, calls), (Err(libc::EIO), 1));
        let out = r.run_on(1, |_| -> SysResult<()> { Err(libc::ENOTCONN) });
        assert_eq!(out.result, Err(libc::EIO));
        // A plain answer of a failed path stays what it is.
        let out = r.run_on(1, |_| -> SysResult<()> { Err(libc::ENOENT) });
        assert_eq!(out.result, Err(libc::ENOENT));
        assert_eq!(answer(libc::ESTALE, true), libc::ESTALE);
        assert_eq!(answer(libc::ESTALE, false), libc::EIO);
    }

    #[test]
    fn enxio_and_enodev_of_a_live_root_are_the_files_answers() {
        let (_d, r) = two_paths();
        for e in [libc::ENXIO, libc::ENODEV] {
            for _ in 0..10 {
                let out = r.run(Retry::Once, |_| -> SysResult<()> { Err(e) });
                assert_eq!(out.result, Err(e));
            }
        }
        // Twenty answers, not one counted: both paths stay Active.
        for id in 0..2 {
            assert_eq!(
                r.lock().get_path(PathId(id)).unwrap().state,
                PathState::Active
            );
        }
        assert!(r.counters().iter().all(|c| c.errors == 0));
        // EIO of a live root still counts against its path.
        let out = r.run(Retry::Once, |_| -> SysResult<()> { Err(libc::EIO) });
        assert_eq!(out.result, Err(libc::EIO));
        assert_eq!(r.counters().iter().map(|c| c.errors).sum::<u64>(), 1);
    }

    #[test]
    fn failed_path_needs_three_good_probes() {
        let (_d, r) = two_paths();
        let _ = r.lock().mark_failed(PathId(0));
        assert!(!r.usable(0));
        r.probe_once();
        assert_eq!(
            r.lock().get_path(PathId(0)).unwrap().state,
            PathState::Reconnecting
        );
        r.probe_once();
        assert!(!r.usable(0));
        r.probe_once();
        assert!(r.usable(0));
    }

    #[test]
    fn no_usable_path_fails_fast() {
        let (_d, r) = two_paths();
        let _ = r.lock().mark_failed(PathId(0));
        let _ = r.lock().mark_failed(PathId(1));
        let out = r.run(Retry::Idempotent, |_| Ok(()));
        assert_eq!((out.result, out.path), (Err(libc::EIO), None));
    }

    #[test]
    fn slow_follows_the_usable_paths_latency() {
        let (_d, r) = two_paths();
        assert!(!r.slow(), "a fresh path's 1 ms baseline is not slow");
        for _ in 0..30 {
            r.record_latency(1, Duration::from_millis(20));
        }
        assert!(r.slow());
        // A slow path that fails is no longer picked: not slow any more.
        let _ = r.lock().mark_failed(PathId(1));
        r.path_failed(0); // a sick answer on path 0 whose root still answers
        assert!(r.usable(0));
        assert!(!r.slow());
        for _ in 0..40 {
            r.record_latency(0, Duration::from_micros(10));
        }
        assert!(!r.slow());
    }

    #[test]
    fn every_request_feeds_its_paths_latency_ema() {
        let (_d, r) = two_paths();
        let ema = |id| r.lock().get_path(PathId(id)).unwrap().metrics.latency_us;
        for _ in 0..200 {
            r.run(Retry::Idempotent, |_| Ok(())).result.unwrap();
        }
        // 100 near-instant requests per path: each EMA falls from its
        // 1000 us baseline by 7/8 per request, to about 0.
        assert!(ema(0) < 5 && ema(1) < 5, "{} {}", ema(0), ema(1));
        r.set_kernel_latency(true);
        let _ = r.run_on(0, |_| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        });
        assert!(
            ema(0) < 5,
            "with --ebpf the kernel's latency is recorded instead"
        );
    }
}
