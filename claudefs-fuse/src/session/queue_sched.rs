//! The scheduling class of the io_uring queue threads (`--queue-policy`).
//!
//! A queue thread is pinned to its CPU and serves the applications that
//! run there. When it answers, it wakes the waiting application while it
//! is itself still running, so the scheduler sees that CPU busy and moves
//! the application to an idle one. On a VM, waking an idle vCPU costs an
//! IPI and a VM exit, tens of microseconds, several times the request:
//! measured here (2 vCPUs, uncached statx by one process), a quarter of
//! the wakeups moved the application and it made ~100k requests/s, while
//! libfuse's passthrough_hp, whose wakeups moved 1 in 200 times, made
//! ~260k. A thread of class SCHED_IDLE does not count against its CPU
//! when the scheduler picks where a woken task runs: with idle queue
//! threads the application stays on its CPU (~265k/s in the same run).
//!
//! SCHED_IDLE has a price: such a thread only runs when nothing else
//! wants its CPU. With a busy loop on each CPU the idle queue threads
//! answered ~840 requests/s instead of ~135k. The guard keeps that away:
//! every [`CHECK_EVERY`] it reads each idle queue thread's run-queue delay
//! (`/proc/self/task/TID/schedstat`), and a thread that waited more than
//! [`MAX_MEAN_DELAY`] per run on average (and [`MIN_DELAY`] in all) since
//! the last check goes back to SCHED_OTHER. It tries SCHED_IDLE again
//! after a backoff of [`FIRST_BACKOFF`], doubled (up to [`MAX_BACKOFF`])
//! when the contention is back within [`CALM`] of a try.
//!
//! `--queue-policy normal` keeps the queue threads at SCHED_OTHER.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the guard checks the idle queue threads while requests flow.
pub const CHECK_EVERY: Duration = Duration::from_millis(10);
/// How often it checks while no queue thread ran since the last check.
pub const QUIET_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Mean run-queue delay per run above which a queue thread is contended
/// (seen here: 1.5-4 us per run on an otherwise idle CPU, 4 us with four
/// applications on two CPUs, over 1 ms behind a busy loop).
pub const MAX_MEAN_DELAY: Duration = Duration::from_micros(50);
/// Run-queue delay since the last check below which a thread is not
/// contended, whatever its mean (one slow run is not contention).
pub const MIN_DELAY: Duration = Duration::from_millis(1);
/// The first stay at SCHED_OTHER after a demotion.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest stay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// Contention back within this long of a try doubles the backoff.
pub const CALM: Duration = Duration::from_secs(1);

/// The class queue threads run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueuePolicy {
    /// SCHED_IDLE while nothing else competes for their CPU, guarded.
    Idle,
    /// SCHED_OTHER always.
    Normal,
}

/// One queue thread as the guard and the status see it.
#[derive(Debug, Default)]
struct Slot {
    /// Kernel thread id, 0 until the thread registers.
    tid: AtomicI32,
    /// Runs at SCHED_IDLE now.
    idle: AtomicBool,
}

/// The queue threads' classes: what the queue threads register with and
/// the guard changes.
#[derive(Debug)]
pub struct QueueSched {
    policy: QueuePolicy,
    slots: Vec<Slot>,
    demotions: AtomicU64,
    /// No guard runs: no thread goes to SCHED_IDLE.
    unguarded: AtomicBool,
}

/// What the status (as is) and the metrics show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueSchedView {
    pub policy: QueuePolicy,
    /// Queue threads running.
    pub threads: usize,
    /// Of which at SCHED_IDLE now.
    pub idle: usize,
    /// Times the guard moved a queue thread back to SCHED_OTHER.
    pub demotions: u64,
}

/// Sets the class of thread `tid` (0: the caller).
fn set_class(tid: i32, idle: bool) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    let class = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: sched_setscheduler reads the sched_param we pass and changes
    // the class of a thread of this process; no memory is handed over.
    if unsafe { libc::sched_setscheduler(tid, class, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a thread of this process can move from SCHED_IDLE back to
/// SCHED_OTHER (CAP_SYS_NICE, or a nice value within RLIMIT_NICE): tried
/// once, on a thread of its own that ends at once either way.
fn may_leave_idle() -> Result<(), String> {
    static ANSWER: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("cfs-sched-probe".into())
                .spawn(|| set_class(0, true).and_then(|()| set_class(0, false)))
                .map_err(|e| e.to_string())?
                .join()
                .map_err(|_| "the probe thread panicked".to_string())?
                .map_err(|e| e.to_string())
        })
        .clone()
}

impl QueueSched {
    /// Classes for `queues` queue threads under `policy`.
    pub fn new(policy: QueuePolicy, queues: usize) -> Self {
        Self {
            policy,
            slots: (0..queues).map(|_| Slot::default()).collect(),
            demotions: AtomicU64::new(0),
            unguarded: AtomicBool::new(false),
        }
    }

    /// Called by queue thread `qid` as it starts: under `idle` it moves to
    /// SCHED_IDLE, if this process may move a thread back from it (the
    /// guard must be able to demote it; see `may_leave_idle`).
    pub fn register(&self, qid: usize) {
        let Some(slot) = self.slots.get(qid) else {
            return;
        };
        if self.policy == QueuePolicy::Idle && !self.unguarded.load(Ordering::Relaxed) {
            match may_leave_idle().map_err(std::io::Error::other).and_then(|()| set_class(0, true)) {
                Ok(()) => slot.idle.store(true, Ordering::Relaxed),
                Err(e) => tracing::warn!(
                    queue = qid,
                    "queue thread stays at SCHED_OTHER (a thread of this process cannot leave SCHED_IDLE, or enter it: {e})"
                ),
            }
        }
        // Last: the guard takes the thread in the class it is in now.
        slot.tid.store(
            rustix::thread::gettid().as_raw_nonzero().get(),
            Ordering::Release,
        );
    }

    /// The queue threads it was made for (one per possible CPU over
    /// io_uring): the queues `run_uring` starts.
    pub fn queues(&self) -> usize {
        self.slots.len()
    }

    /// The guard could not start: queue threads that register from now on
    /// stay at SCHED_OTHER.
    pub fn unguarded(&self) {
        self.unguarded.store(true, Ordering::Relaxed);
    }

    pub fn view(&self) -> QueueSchedView {
        QueueSchedView {
            policy: self.policy,
            threads: self
                .slots
                .iter()
                .filter(|s| s.tid.load(Ordering::Relaxed) != 0)
                .count(),
            idle: self
                .slots
                .iter()
                .filter(|s| s.idle.load(Ordering::Relaxed))
                .count(),
            demotions: self.demotions.load(Ordering::Relaxed),
        }
    }

    /// Starts the guard (under `idle` only); it ends when `stop` is set.
    pub fn spawn_guard(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        if self.policy != QueuePolicy::Idle {
            return Ok(());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("cfs-queue-guard".into())
            .spawn(move || me.guard(&stop))
            .map(drop)
    }

    fn guard(&self, stop: &AtomicBool) {
        let mut watches: Vec<Option<Watch>> = self.slots.iter().map(|_| None).collect();
        let mut pause = QUIET_CHECK_EVERY;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(pause);
            let now = Instant::now();
            let mut ran = false;
            for (qid, (slot, w)) in self.slots.iter().zip(&mut watches).enumerate() {
                let tid = slot.tid.load(Ordering::Acquire);
                if tid == 0 {
                    continue;
                }
                if w.is_none() {
                    *w = Watch::open(tid, slot.idle.load(Ordering::Relaxed));
                }
                let Some(watch) = w else { continue };
                let Some(stat) = watch.read() else {
                    // The thread is gone (the session ends).
                    *w = None;
                    continue;
                };
                ran |= stat.runs != watch.last.runs;
                match watch.decide(now, stat) {
                    Decision::Keep => {}
                    Decision::Demote { mean } => match set_class(tid, false) {
                        Ok(()) => {
                            slot.idle.store(false, Ordering::Relaxed);
                            self.demotions.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                queue = qid,
                                mean_delay_us = mean.as_micros() as u64,
                                backoff_s = watch.backoff.as_secs(),
                                "queue thread waited for its CPU: back to SCHED_OTHER"
                            );
                        }
                        Err(e) => {
                            // Still idle: watched as such, demoted again
                            // at the next check.
                            watch.failed(now);
                            tracing::warn!(
                                queue = qid,
                                "cannot move a queue thread back to SCHED_OTHER: {e}"
                            );
                        }
                    },
                    Decision::Promote => match set_class(tid, true) {
                        Ok(()) => {
                            slot.idle.store(true, Ordering::Relaxed);
                            tracing::debug!(queue = qid, "queue thread back to SCHED_IDLE");
                        }
                        Err(e) => {
                            // Still normal: tried again after a backoff.
                            watch.failed(now);
                            tracing::debug!(queue = qid, "queue thread stays at SCHED_OTHER: {e}")
                        }
                    },
                }
            }
            pause = if ran { CHECK_EVERY } else { QUIET_CHECK_EVERY };
        }
    }
}

/// The scheduler's counters of one thread (`schedstat`: time on CPU, time
/// waiting on a run queue, in ns, and runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStat {
    pub run_delay_ns: u64,
    pub runs: u64,
}

impl SchedStat {
    /// Parses `/proc/.../schedstat` ("exec_ns delay_ns runs").
    pub fn parse(text: &str) -> Option<Self> {
        let mut f = text.split_ascii_whitespace().map(|v| v.parse::<u64>().ok());
        let (_exec, run_delay_ns, runs) = (f.next()??, f.next()??, f.next()??);
        Some(Self { run_delay_ns, runs })
    }
}

/// What to do with a thread after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Back to SCHED_OTHER: it waited `mean` per run.
    Demote {
        mean: Duration,
    },
    /// SCHED_IDLE again: the backoff is over.
    Promote,
}

/// The guard's state of one queue thread.
#[derive(Debug)]
pub struct Watch {
    file: Option<File>,
    last: SchedStat,
    idle: bool,
    /// The stay at SCHED_OTHER the next demotion gives.
    backoff: Duration,
    /// At SCHED_OTHER: when to try SCHED_IDLE again.
    retry_at: Option<Instant>,
    /// When the last try was.
    tried_at: Option<Instant>,
}

impl Watch {
    /// A watch over counters `last` of a thread `idle` or not.
    pub fn new(last: SchedStat, idle: bool) -> Self {
        Self {
            file: None,
            last,
            idle,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            tried_at: None,
        }
    }

    fn open(tid: i32, idle: bool) -> Option<Self> {
        let file = File::open(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        let mut w = Self::new(SchedStat::default(), idle);
        w.file = Some(file);
        w.last = w.read()?;
        Some(w)
    }

    fn read(&self) -> Option<SchedStat> {
        let mut buf = [0u8; 96];
        let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
        SchedStat::parse(std::str::from_utf8(&buf[..n]).ok()?)
    }

    /// The class change [`Self::decide`] asked for at `now` did not
    /// happen: the thread is still in its old class. A thread left idle is
    /// watched as idle again; one left normal tries again after its
    /// backoff.
    pub fn failed(&mut self, now: Instant) {
        self.idle = !self.idle;
        self.retry_at = (!self.idle).then(|| now + self.backoff);
    }

    /// Folds in the counters read at `now`.
    pub fn decide(&mut self, now: Instant, stat: SchedStat) -> Decision {
        let delay = stat.run_delay_ns.saturating_sub(self.last.run_delay_ns);
        let runs = stat.runs.saturating_sub(self.last.runs).max(1);
        self.last = stat;
        if !self.idle {
            if self.retry_at.is_some_and(|t| now >= t) {
                self.idle = true;
                self.retry_at = None;
                self.tried_at = Some(now);
                return Decision::Promote;
            }
            return Decision::Keep;
        }
        let mean = Duration::from_nanos(delay / runs);
        if Duration::from_nanos(delay) < MIN_DELAY || mean <= MAX_MEAN_DELAY {
            return Decision::Keep;
        }
        let soon = self
            .tried_at
            .is_some_and(|t| now.saturating_duration_since(t) < CALM);
        self.backoff = if soon {
            (self.backoff * 2).min(MAX_BACKOFF)
        } else {
            FIRST_BACKOFF
        };
        self.idle = false;
        self.retry_at = Some(now + self.backoff);
        Decision::Demote { mean }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(delay_us: u64, runs: u64) -> SchedStat {
        SchedStat {
            run_delay_ns: delay_us * 1000,
            runs,
        }
    }

    #[test]
    fn schedstat_parses_and_refuses_garbage() {
        assert_eq!(
            SchedStat::parse("118300 91400 56336\n"),
            Some(SchedStat {
                run_delay_ns: 91400,
                runs: 56336
            })
        );
        assert_eq!(SchedStat::parse("1 2\n"), None);
        assert_eq!(SchedStat::parse("1 x 3\n"), None);
        assert_eq!(SchedStat::parse(""), None);
    }

    #[test]
    fn short_waits_keep_the_thread_idle() {
        let t0 = Instant::now();
        let mut w = Watch::new(at(0, 0), true);
        // 5000 runs waiting 4 us each (applications on the same CPU).
        assert_eq!(w.decide(t0, at(20_000, 5000)), Decision::Keep);
        // One run that waited 900 us: not contention.
        assert_eq!(w.decide(t0, at(20_900, 5001)), Decision::Keep);
    }

    #[test]
    fn waiting_behind_a_busy_cpu_demotes_then_backs_off() {
        let t0 = Instant::now();
        let mut w = Watch::new(at(0, 0), true);
        // 10 runs waiting 1.2 ms each.
        match w.decide(t0, at(12_000, 10)) {
            Decision::Demote { mean } => assert_eq!(mean, Duration::from_micros(1200)),
            d => panic!("{d:?}"),
        }
        // At SCHED_OTHER until the backoff is over.
        assert_eq!(
            w.decide(t0 + FIRST_BACKOFF / 2, at(12_010, 20)),
            Decision::Keep
        );
        assert_eq!(
            w.decide(t0 + FIRST_BACKOFF, at(12_020, 30)),
            Decision::Promote
        );
        // Contention again right after the try: twice the stay.
        let t1 = t0 + FIRST_BACKOFF + CHECK_EVERY;
        assert!(matches!(
            w.decide(t1, at(30_000, 40)),
            Decision::Demote { .. }
        ));
        assert_eq!(w.backoff, FIRST_BACKOFF * 2);
        assert_eq!(w.decide(t1 + FIRST_BACKOFF, at(30_000, 40)), Decision::Keep);
        let t2 = t1 + FIRST_BACKOFF * 2;
        assert_eq!(w.decide(t2, at(30_000, 40)), Decision::Promote);
        // Calm for longer than CALM: the next demotion starts over.
        let t3 = t2 + CALM * 3;
        assert_eq!(w.decide(t3 - CALM, at(30_100, 1000)), Decision::Keep);
        assert!(matches!(
            w.decide(t3, at(50_000, 1010)),
            Decision::Demote { .. }
        ));
        assert_eq!(w.backoff, FIRST_BACKOFF);
    }

    #[test]
    fn a_class_change_that_fails_leaves_the_watch_with_the_thread() {
        let t0 = Instant::now();
        let mut w = Watch::new(at(0, 0), true);
        assert!(matches!(
            w.decide(t0, at(12_000, 10)),
            Decision::Demote { .. }
        ));
        // The demotion failed: still idle, so contention demotes again.
        w.failed(t0);
        assert!(matches!(
            w.decide(t0 + CHECK_EVERY, at(24_000, 20)),
            Decision::Demote { .. }
        ));
        let t1 = t0 + CHECK_EVERY + w.backoff;
        assert_eq!(w.decide(t1, at(24_000, 20)), Decision::Promote);
        // The promotion failed: still normal, tried again after a backoff.
        w.failed(t1);
        assert_eq!(w.decide(t1 + CHECK_EVERY, at(90_000, 30)), Decision::Keep);
        assert_eq!(w.decide(t1 + w.backoff, at(90_000, 30)), Decision::Promote);
    }

    #[test]
    fn the_backoff_stops_doubling_at_its_ceiling() {
        let mut now = Instant::now();
        let mut w = Watch::new(at(0, 0), true);
        let mut delay = 0;
        for _ in 0..12 {
            delay += 50_000;
            assert!(matches!(
                w.decide(now, at(delay, 1)),
                Decision::Demote { .. }
            ));
            now += w.backoff;
            assert_eq!(w.decide(now, at(delay, 1)), Decision::Promote);
        }
        assert_eq!(w.backoff, MAX_BACKOFF);
    }

    #[test]
    fn a_queue_thread_registers_and_the_view_counts_it() {
        let q = Arc::new(QueueSched::new(QueuePolicy::Normal, 2));
        let q2 = q.clone();
        std::thread::spawn(move || q2.register(1)).join().unwrap();
        assert_eq!(
            q.view(),
            QueueSchedView {
                policy: QueuePolicy::Normal,
                threads: 1,
                idle: 0,
                demotions: 0
            }
        );
        // Out of range: ignored.
        q.register(7);
        assert_eq!(q.view().threads, 1);
    }

    #[test]
    fn an_idle_queue_thread_runs_at_sched_idle() {
        let q = Arc::new(QueueSched::new(QueuePolicy::Idle, 1));
        let q2 = q.clone();
        let class = std::thread::spawn(move || {
            q2.register(0);
            // SAFETY: asks the caller's own class; no pointers.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        // SCHED_IDLE needs no privilege; moving back to SCHED_OTHER does
        // (CAP_SYS_NICE or RLIMIT_NICE): without it the thread stays put.
        let v = q.view();
        if v.idle == 1 {
            assert_eq!(class, libc::SCHED_IDLE);
        } else {
            assert_eq!(class, libc::SCHED_OTHER);
        }
    }
}
