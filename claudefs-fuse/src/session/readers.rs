//! Which worker of the `/dev/fuse` transport reads the device: one at a
//! time while requests are fast.
//!
//! The transport runs `--threads N` workers, each looping read-request /
//! serve it (see `super::run_dev`). The kernel gives a request to the worker that has slept
//! longest (an exclusive FIFO wait queue), so N idle workers mean every
//! request wakes a different, cache-cold thread, often on another CPU.
//! On fast storage that wakeup is most of what a request costs.
//!
//! `Readers` keeps a single worker reading while requests are fast: a
//! worker that finishes a request while another worker is already reading
//! parks (after its reply is sent) instead of going back to the device. A
//! parked worker is woken to read again when
//! - a request starts that may block (the caller says: fsync, fsyncdir,
//!   fallocate, or any request while a usable storage path's latency EMA
//!   is above 1 ms) and no other worker is reading, or
//! - with `scale_out` (a daemon that can run on several CPUs): the lone
//!   reader finds a request already queued just before it writes an
//!   answer, eight answers in a row (the load outgrows one worker: several
//!   processes send at once), and again at every later look while that
//!   lasts; a worker that finishes while requests are queued then stays a
//!   reader instead of parking, or
//! - the watch thread finds requests queued on the device at two looks in
//!   a row with no request started in between: a request has waited a
//!   whole [`WATCH_INTERVAL`] (a request thought fast is taking long, or
//!   the reading worker's thread ended).
//!
//! So at most N requests are still served at once; what changes is that
//! fast requests on fast storage are served by one warm thread.
//!
//! The backlog look comes before the answer, not after it: a process
//! waiting for the answer, woken on the reader's CPU, often runs before
//! the reader's write(2) returns and sends its next request, which a look
//! after the answer would take for a second process's. One process would
//! then bring in reader after reader, each wakeup of a different thread
//! spreading the pair over the CPUs.
//!
//! Polling: after its reply, the lone reader polls the device for the
//! next request for a short while before it sleeps in read(2). A request
//! that finds its reader asleep costs a wakeup, and on a VM that is an
//! interrupt to another CPU taking it out of halt: several microseconds,
//! more than the request itself on fast storage. The window adapts to the
//! gap between a reply and the next request (an EMA): twice that gap,
//! at most `--poll-us` (default 100 us), and no polling while the gap is
//! longer than that, so a quiet mount, or an application that takes long
//! between requests, costs no CPU. A daemon that can run on one CPU only
//! is made without polling (there it would only delay the application).
//!
//! The watch thread also releases every parked worker when the connection
//! ends (`POLLERR` on the device), so the session's workers can all exit.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};

/// How often the watch thread looks for requests queued with no reader.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// `state`'s idle-worker half.
const IDLE: u64 = u32::MAX as u64;
/// One request entered, in `state`.
const ENTERED: u64 = 1 << 32;

#[derive(Debug, Default)]
struct Parked {
    /// Workers waiting in `leave`.
    waiting: usize,
    /// Wakeups granted and not yet taken.
    tickets: usize,
    /// The connection ended: nobody parks any more.
    closed: bool,
}

/// Answers in a row that find a request already queued before the lone
/// reader brings in another reader.
const BACKLOG_STREAK: u64 = 8;

/// While requests keep queueing, the lone reader looks at the device only
/// after every this many answers.
const RECHECK_EVERY: u64 = 16;

/// The shortest poll window worth starting.
const MIN_POLL_NS: u64 = 2_000;

/// Adaptive polling of the lone reader (see the module doc).
#[derive(Debug)]
struct Poll {
    /// Longest window, ns; 0 = never poll.
    max_ns: u64,
    /// When the lone reader last answered (ns since `epoch`), 0 = unset.
    left_ns: AtomicU64,
    /// EMA of the gaps from an answer to the next request, ns.
    gap_ns: AtomicU64,
    /// Polls that found a request, and polls that ran out.
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Poll {
    /// CLOCK_MONOTONIC in plain ns (cheaper than `Instant` arithmetic,
    /// twice per request), never 0 (0 is "unset").
    fn now_ns(&self) -> u64 {
        crate::clock::monotonic_ns().max(1)
    }

    /// A request entered: folds the gap since the last answer into the EMA.
    fn entered(&self) {
        if self.max_ns == 0 {
            return;
        }
        let left = self.left_ns.swap(0, Ordering::Relaxed);
        if left != 0 {
            let gap = self.now_ns().saturating_sub(left);
            let ema = self.gap_ns.load(Ordering::Relaxed);
            let next = (u128::from(ema) * 7 + u128::from(gap)) / 8;
            self.gap_ns.store(next as u64, Ordering::Relaxed);
        }
    }

    /// The window to poll for now: twice the usual gap, at most `max_ns`;
    /// none while gaps are longer than that.
    fn window_ns(&self) -> u64 {
        let gap = self.gap_ns.load(Ordering::Relaxed);
        if gap >= self.max_ns {
            0
        } else {
            (gap * 2).clamp(MIN_POLL_NS, self.max_ns)
        }
    }
}

/// Why a parked worker was woken (counted for status).
#[derive(Debug, Default)]
pub struct Wakeups {
    /// A request that may block started with no other reader.
    pub may_block: AtomicU64,
    /// Requests waited behind a request that took longer than a look of
    /// the watch, with no other reader.
    pub stalled: AtomicU64,
    /// Requests kept queueing behind a busy lone reader.
    pub backlog: AtomicU64,
}

/// The reader hand-off between the transport's workers (see the module doc).
#[derive(Debug)]
pub struct Readers {
    /// Low 32 bits: workers in the read loop (reading the device or about
    /// to). High 32 bits: requests entered so far (wrapping), so the watch
    /// can tell a stuck reader from a busy one with one load.
    state: AtomicU64,
    /// Requests entered at the watch's previous look.
    watched: AtomicU64,
    /// The watch's previous look found requests queued.
    watched_queued: AtomicBool,
    parked: Mutex<Parked>,
    cv: Condvar,
    pub wakeups: Wakeups,
    poll: Poll,
    /// Add readers when requests queue behind a busy one (see `new`).
    scale_out: bool,
    /// The lone reader's answers in a row that found a request queued.
    backlog: AtomicU64,
    /// The device (a duplicate of the session's descriptor), once known.
    dev: OnceLock<OwnedFd>,
    workers: usize,
}

/// A worker serving one request; it leaves (and may park) on drop.
#[must_use]
pub struct Serving<'a>(&'a Readers);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Readers {
    /// `workers` workers, all reading at first; the lone reader polls for
    /// up to `poll` after an answer (see the module doc; zero: never).
    /// With `scale_out`, requests that keep queueing behind a busy reader
    /// bring in more readers (for a daemon that can run on several CPUs).
    pub fn new(workers: usize, poll: Duration, scale_out: bool) -> Self {
        let max_ns = u64::try_from(poll.as_nanos()).unwrap_or(u64::MAX);
        Self {
            poll: Poll {
                max_ns,
                left_ns: AtomicU64::new(0),
                gap_ns: AtomicU64::new(max_ns),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            },
            scale_out,
            backlog: AtomicU64::new(0),
            dev: OnceLock::new(),
            workers,
            state: AtomicU64::new(workers as u64 & IDLE),
            watched: AtomicU64::new(u64::MAX),
            watched_queued: AtomicBool::new(false),
            parked: Mutex::new(Parked::default()),
            cv: Condvar::new(),
            wakeups: Wakeups::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker took a request; `may_block` if it may take long (another
    /// worker is then woken to read, if none is).
    pub fn enter(&self, may_block: bool) -> Serving<'_> {
        // One more request entered, one reader fewer (a worker entering
        // was counted idle, so the low half does not borrow).
        let before = self.state.fetch_add(ENTERED - 1, Ordering::AcqRel);
        debug_assert!(before & IDLE > 0, "a worker entered that was not counted");
        self.poll.entered();
        if may_block && before & IDLE <= 1 && self.wake_one() {
            self.wakeups.may_block.fetch_add(1, Ordering::Relaxed);
        }
        Serving(self)
    }

    /// The worker's request is answered: it goes back to reading if no
    /// other worker reads, else it parks until woken.
    fn leave(&self) {
        if self.reading() == 0 {
            self.state.fetch_add(1, Ordering::AcqRel);
            self.poll_for_next();
            return;
        }
        // Requests queued although a worker reads: the load needs more than
        // one reader, so this one stays.
        if self.scale_out && self.queued() {
            self.state.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut p = self.lock();
        // Decided under the lock, so a wake_one after the check sees us.
        if self.reading() > 0 && !p.closed {
            p.waiting += 1;
            while p.tickets == 0 && !p.closed {
                p = self.cv.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.tickets > 0 {
                p.tickets -= 1;
            }
            p.waiting -= 1;
        }
        drop(p);
        self.state.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether requests are queued on the device right now (false before
    /// the device is known).
    fn queued(&self) -> bool {
        let Some(dev) = self.dev.get() else {
            return false;
        };
        poll_now(dev).is_ok_and(|r| !r.is_empty())
    }

    /// A worker is about to write an answer: if it is the lone reader, a
    /// request already queued now came before this answer (see the
    /// module doc), [`BACKLOG_STREAK`] answers in a row wake another
    /// reader (the load outgrows one worker), and while that lasts the
    /// device is looked at only every [`RECHECK_EVERY`] answers (read(2)
    /// finds the next request at once), each look that still finds
    /// requests queued waking one more.
    pub fn answering(&self) {
        if !self.scale_out || self.reading() != 0 {
            return;
        }
        let streak = self.backlog.load(Ordering::Relaxed);
        if streak >= BACKLOG_STREAK
            && !(self.backlog.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(RECHECK_EVERY)
        {
            return;
        }
        if !self.queued() {
            self.backlog.store(0, Ordering::Relaxed);
            return;
        }
        let streak = if streak < BACKLOG_STREAK {
            self.backlog.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            streak
        };
        if streak >= BACKLOG_STREAK && self.wake_one() {
            self.wakeups.backlog.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The lone reader answered: it polls for the next request (see the
    /// module doc), unless requests keep queueing (read(2) finds the next
    /// one at once).
    fn poll_for_next(&self) {
        let p = &self.poll;
        if p.max_ns == 0 {
            return;
        }
        let start = p.now_ns();
        p.left_ns.store(start, Ordering::Relaxed);
        if self.backlog.load(Ordering::Relaxed) >= BACKLOG_STREAK {
            return;
        }
        let window = p.window_ns();
        if window == 0 {
            return;
        }
        loop {
            if self.queued() {
                p.hits.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if p.now_ns().saturating_sub(start) >= window {
                p.misses.fetch_add(1, Ordering::Relaxed);
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Wakes one parked worker to read; false if none is parked.
    fn wake_one(&self) -> bool {
        let mut p = self.lock();
        if p.waiting > p.tickets {
            p.tickets += 1;
            self.cv.notify_one();
            true
        } else {
            false
        }
    }

    /// Workers reading (or about to) right now.
    pub fn reading(&self) -> usize {
        (self.state.load(Ordering::Acquire) & IDLE) as usize
    }

    /// The workers in all.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Polls that found a request, and polls that ran out.
    pub fn poll_counts(&self) -> (u64, u64) {
        (
            self.poll.hits.load(Ordering::Relaxed),
            self.poll.misses.load(Ordering::Relaxed),
        )
    }

    /// Workers parked right now.
    pub fn parked(&self) -> usize {
        let p = self.lock();
        p.waiting - p.tickets.min(p.waiting)
    }

    /// The connection ended: releases every parked worker for good.
    pub fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }

    /// One look at the device `dev`: requests queued at this look and at
    /// the previous one, and none entered in between (one request has
    /// waited a whole look interval: the reader is stuck in a request, or
    /// its thread is gone), wake a parked worker; a dead connection (or a
    /// device that cannot be polled) closes. Returns false once closed.
    pub fn watch_once(&self, dev: &OwnedFd) -> bool {
        let revents = match poll_now(dev) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => return true,
            Err(_) => PollFlags::NVAL,
        };
        if revents.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
            self.close();
            return false;
        }
        let queued = revents.contains(PollFlags::IN);
        let was_queued = self.watched_queued.swap(queued, Ordering::Relaxed);
        let entered = self.state.load(Ordering::Acquire) >> 32;
        let none_entered = self.watched.swap(entered, Ordering::Relaxed) == entered;
        if queued && was_queued && none_entered && self.wake_one() {
            self.wakeups.stalled.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Keeps `dev` (a duplicate of the session's device descriptor) for
    /// the lone reader's polls and starts the watch thread over it; the
    /// thread ends with the connection.
    pub fn spawn_watch(self: &Arc<Self>, dev: OwnedFd) -> std::io::Result<()> {
        if self.dev.set(dev).is_err() {
            return Err(std::io::Error::other("the readers' watch runs already"));
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("cfs-readers".into())
            .spawn(move || {
                let Some(dev) = me.dev.get() else { return };
                // Closed: the connection ended, or the session stopped
                // serving it (another may adopt it).
                while !me.lock().closed && me.watch_once(dev) {
                    std::thread::sleep(WATCH_INTERVAL);
                }
            })?;
        Ok(())
    }
}

/// What a zero-timeout `poll` of `fd` for input says now (empty: nothing
/// queued).
fn poll_now(fd: impl AsFd) -> rustix::io::Result<PollFlags> {
    let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut pfd, Some(&zero))?;
    Ok(pfd[0].revents())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(5), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A pipe stands in for the device: readable = requests queued,
    /// writer closed = POLLHUP.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let (rd, wr) = std::io::pipe().unwrap();
        (rd.into(), wr.into())
    }

    /// A worker that takes one request and leaves: it parks while another
    /// worker reads.
    fn parked_worker(r: &Arc<Readers>) -> std::thread::JoinHandle<()> {
        let r = r.clone();
        std::thread::spawn(move || drop(r.enter(false)))
    }

    /// Queues a "request" on the pipe.
    fn queue_one(wr: &OwnedFd) {
        assert_eq!(rustix::io::write(wr, b"x"), Ok(1));
    }

    #[test]
    fn a_lone_reader_goes_straight_back() {
        let r = Readers::new(1, Duration::ZERO, false);
        drop(r.enter(false));
        assert_eq!(r.reading(), 1);
        assert_eq!(r.parked(), 0);
    }

    #[test]
    fn finishing_while_another_reads_parks_until_a_blocking_request() {
        let r = Arc::new(Readers::new(2, Duration::ZERO, false));
        // Worker A takes a request; B is still reading.
        let a = {
            let r = r.clone();
            let (tx, rx) = mpsc::channel();
            let h = std::thread::spawn(move || {
                drop(r.enter(false));
                tx.send(()).unwrap();
            });
            (h, rx)
        };
        wait_for("A parks", || r.parked() == 1);
        assert_eq!(r.reading(), 1);
        assert!(a.1.try_recv().is_err(), "A must stay parked");
        // B takes a fast request: A stays parked.
        let s = r.enter(false);
        assert_eq!(r.reading(), 0);
        assert_eq!(r.parked(), 1);
        drop(s);
        assert_eq!(r.reading(), 1);
        // B takes a request that may block: A is woken to read.
        let s = r.enter(true);
        a.1.recv_timeout(Duration::from_secs(5)).expect("A woken");
        a.0.join().unwrap();
        assert_eq!(r.reading(), 1);
        assert_eq!(r.wakeups.may_block.load(Ordering::Relaxed), 1);
        // B finishes while A reads: B would park (checked without blocking).
        assert_eq!(r.parked(), 0);
        r.close();
        drop(s);
        assert_eq!(r.reading(), 2);
    }

    #[test]
    fn a_blocking_request_with_another_reader_wakes_nobody() {
        let r = Readers::new(2, Duration::ZERO, false);
        let s = r.enter(true);
        assert_eq!(r.wakeups.may_block.load(Ordering::Relaxed), 0);
        r.close(); // so that leaving does not park this test's thread
        drop(s);
        assert_eq!(r.reading(), 2);
    }

    #[test]
    fn watch_wakes_a_parked_worker_when_requests_queue_and_closes_on_hangup() {
        let (rd, wr) = pipe();
        let r = Arc::new(Readers::new(2, Duration::ZERO, false));
        let parked = parked_worker(&r);
        wait_for("parks", || r.parked() == 1);
        let busy = r.enter(false); // the reader is now stuck in a request
        assert!(r.watch_once(&rd), "nothing queued yet");
        assert_eq!(r.parked(), 1);
        queue_one(&wr);
        // Another request entered since the last look: busy, not stuck.
        drop(busy);
        let busy = r.enter(false);
        assert!(r.watch_once(&rd));
        assert_eq!(
            r.parked(),
            1,
            "the reader made progress since the last look"
        );
        assert!(r.watch_once(&rd));
        parked.join().unwrap();
        assert_eq!(r.wakeups.stalled.load(Ordering::Relaxed), 1);
        assert_eq!(r.reading(), 1);
        drop(wr);
        let mut buf = [0u8; 1];
        rustix::io::read(&rd, &mut buf).unwrap();
        assert!(!r.watch_once(&rd), "hangup closes");
        drop(busy); // closed: nobody parks
        assert_eq!(r.reading(), 2);
    }

    #[test]
    fn watch_wakes_a_parked_worker_when_the_reader_is_gone() {
        let (rd, wr) = pipe();
        // Worker A parks; worker B counts as reading but never reads again
        // (its thread ended), so queued requests stay queued.
        let r = Arc::new(Readers::new(2, Duration::ZERO, false));
        let a = parked_worker(&r);
        wait_for("parks", || r.parked() == 1);
        queue_one(&wr);
        assert!(r.watch_once(&rd));
        assert_eq!(r.parked(), 1, "one look is not enough");
        assert!(r.watch_once(&rd));
        a.join().unwrap();
        assert_eq!(r.wakeups.stalled.load(Ordering::Relaxed), 1);
        r.close();
    }

    /// Takes every queued "request" off the pipe.
    fn drain(rd: &OwnedFd) {
        let mut buf = [0u8; 64];
        loop {
            let more = poll_now(rd).is_ok_and(|r| !r.is_empty())
                && rustix::io::read(rd, &mut buf).is_ok_and(|n| n > 0);
            if !more {
                return;
            }
        }
    }

    #[test]
    fn the_lone_reader_polls_only_while_requests_follow_answers_closely() {
        let (rd, wr) = pipe();
        let rd2 = rd.try_clone().unwrap();
        let r = Arc::new(Readers::new(1, Duration::from_micros(20), false));
        r.spawn_watch(rd).unwrap();
        let polls = || r.poll_counts();
        // A fresh reader does not poll: its gap is not known to be short.
        drop(r.enter(false));
        assert_eq!(polls(), (0, 0));
        // Requests right after answers: the window opens; nothing comes in,
        // so each poll runs out. (Loops, not fixed counts: a preempted test
        // thread makes a long gap now and then.)
        let mut n = 0;
        while polls().1 == 0 {
            drop(r.enter(false));
            n += 1;
            assert!(n < 10_000, "never polled");
        }
        assert_eq!(polls().0, 0);
        // Requests arriving now and then from another thread: some arrive
        // while the reader polls, and the poll finds them.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    queue_one(&wr);
                    std::thread::sleep(Duration::from_micros(20));
                }
                wr
            })
        };
        let t = Instant::now();
        while polls().0 == 0 {
            drop(r.enter(false));
            drain(&rd2);
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no poll found a request"
            );
        }
        stop.store(true, Ordering::Relaxed);
        let _wr = sender.join().unwrap();
        drain(&rd2);
        // Long gaps close the window again: no more polls.
        for _ in 0..30 {
            std::thread::sleep(Duration::from_micros(200));
            drop(r.enter(false));
        }
        let before = polls();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_micros(200));
            drop(r.enter(false));
        }
        assert_eq!(
            polls(),
            before,
            "polled although requests come 200 us apart"
        );
        r.close();
    }

    /// Serves one request the way a worker does: enters, answers (the
    /// backlog look), leaves.
    fn serve_one(r: &Readers) {
        let s = r.enter(false);
        r.answering();
        drop(s);
    }

    #[test]
    fn requests_queueing_behind_the_reader_bring_in_another() {
        let (rd, wr) = pipe();
        let r = Arc::new(Readers::new(2, Duration::ZERO, true));
        r.spawn_watch(rd).unwrap();
        let parked = parked_worker(&r);
        wait_for("parks", || r.parked() == 1);
        // Every answer of the lone reader finds a request already queued.
        queue_one(&wr);
        for _ in 0..BACKLOG_STREAK {
            serve_one(&r);
        }
        parked.join().unwrap();
        assert_eq!(r.wakeups.backlog.load(Ordering::Relaxed), 1);
        assert_eq!(r.reading(), 2);
        // With requests queued, a worker that finishes stays a reader
        // (parking here would hang this test).
        serve_one(&r);
        assert_eq!(r.reading(), 2);
        assert_eq!(r.parked(), 0);
        r.close();
    }

    #[test]
    fn a_backlog_that_lasts_keeps_bringing_in_readers() {
        let (rd, wr) = pipe();
        let rd2 = rd.try_clone().unwrap();
        let r = Arc::new(Readers::new(3, Duration::ZERO, true));
        r.spawn_watch(rd).unwrap();
        let a = parked_worker(&r);
        wait_for("A parks", || r.parked() == 1);
        let b = parked_worker(&r);
        wait_for("B parks", || r.parked() == 2);
        queue_one(&wr);
        for _ in 0..BACKLOG_STREAK {
            serve_one(&r);
        }
        let woken = r.wakeups.backlog.load(Ordering::Relaxed);
        assert_eq!(woken, 1);
        wait_for("the woken worker reads", || r.reading() == 2);
        // The woken worker answers at a moment with nothing queued and
        // parks again (its thread here stands in for it), so this test's
        // thread is the lone reader once more, with the streak still on.
        drain(&rd2);
        let c = parked_worker(&r);
        wait_for("the woken worker parks again", || r.parked() == 2);
        queue_one(&wr);
        for _ in 0..RECHECK_EVERY {
            serve_one(&r);
        }
        assert_eq!(
            r.wakeups.backlog.load(Ordering::Relaxed),
            2,
            "the backlog lasts: the next look brings in another reader"
        );
        r.close();
        for t in [a, b, c] {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_request_sent_after_the_answer_is_no_backlog() {
        // One process in a loop: its next request comes as soon as it has
        // the answer, often before the reader's write returns, so the
        // reader finds it queued when it leaves. That is no backlog.
        let (rd, wr) = pipe();
        let rd2 = rd.try_clone().unwrap();
        let r = Arc::new(Readers::new(2, Duration::ZERO, true));
        r.spawn_watch(rd).unwrap();
        let parked = parked_worker(&r);
        wait_for("parks", || r.parked() == 1);
        for _ in 0..4 * BACKLOG_STREAK {
            let s = r.enter(false);
            r.answering();
            queue_one(&wr);
            drop(s);
            drain(&rd2);
        }
        assert_eq!(r.wakeups.backlog.load(Ordering::Relaxed), 0);
        assert_eq!(r.parked(), 1, "nobody woken");
        assert_eq!(r.reading(), 1);
        r.close();
        parked.join().unwrap();
    }

    #[test]
    fn a_request_that_just_arrived_on_an_idle_mount_is_not_a_stall() {
        let (rd, wr) = pipe();
        let r = Arc::new(Readers::new(2, Duration::ZERO, false));
        let parked = parked_worker(&r);
        wait_for("parks", || r.parked() == 1);
        // Idle: nothing entered for several looks.
        assert!(r.watch_once(&rd));
        assert!(r.watch_once(&rd));
        // A request arrives just before a look (its reader is waking).
        queue_one(&wr);
        assert!(r.watch_once(&rd));
        assert_eq!(r.parked(), 1, "queued for less than a look interval");
        assert_eq!(r.wakeups.stalled.load(Ordering::Relaxed), 0);
        // Still queued a look later, none entered: that is a stall.
        assert!(r.watch_once(&rd));
        parked.join().unwrap();
        assert_eq!(r.wakeups.stalled.load(Ordering::Relaxed), 1);
        r.close();
    }
}
