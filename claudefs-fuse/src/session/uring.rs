//! FUSE over io_uring (Linux 6.14, protocol 7.42; the kernel's
//! `Documentation/filesystems/fuse/fuse-io-uring.rst`).
//!
//! One queue per possible CPU (the kernel hands a request to the queue of
//! the CPU its caller runs on, and on 6.14-6.18 switches to the rings only
//! once every queue has an entry), each a thread pinned to its CPU with
//! its own SQE128 ring. A queue registers [`DEPTH`] entries
//! (`FUSE_IO_URING_CMD_REGISTER`: a 288-byte header buffer and a payload
//! buffer each); a completion means the kernel put a request in that
//! entry; the answer is written into the same buffers and committed with
//! `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also gives the entry back
//! for the next request: per round, however many requests it answers,
//! one io_uring_enter(2) that submits the answers and one that waits
//! (measured faster than doing both in one). Queue threads run at
//! SCHED_IDLE while nothing else wants their CPU, so the application an
//! answer wakes stays on its CPU (see `queue_sched`).
//!
//! An answer given later from another thread (a parked flock) is written
//! into its entry at once and the queue woken through an eventfd its ring
//! reads. Parked requests hold their entries, so a queue whose entries
//! are nearly all held registers more (up to [`MAX_ENTRIES`]): an unlock
//! never waits for an entry behind the waiters it would release.
//!
//! INTERRUPT, FORGET and notifications still travel over `/dev/fuse`, as
//! do requests sent before the rings are ready: a `/dev/fuse` worker runs
//! beside the queues.
//!
//! After a server dies the kernel keeps the connection's rings "ready",
//! so a request sent before the next server has registered entries on
//! its queue waits in that queue's list; registering does not hand it
//! out (6.14-6.18 only take a waiting request when an answer is
//! committed on the queue). A session that adopts such a connection
//! kicks every queue once its entries are in ([`kick_queues`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use super::abi::{self, uring_cmd};
use super::queue_sched::QueueSched;
use super::reply::{Sender, Token};
use super::{request, serve, Counters, Handler, Readers, Session};

/// Entries a queue registers at start (libfuse's default depth).
pub const DEPTH: usize = 8;
/// Entries a queue registers at most (parked requests hold theirs).
pub const MAX_ENTRIES: usize = 64;
/// `user_data` of the eventfd read.
const EVENT: u64 = u64::MAX;
/// Offsets in an entry's header buffer.
const OP_IN: usize = abi::URING_IN_OUT_HEADER_SZ;
const ENT_IN_OUT: usize = OP_IN + abi::URING_OP_IN_OUT_SZ;

thread_local! {
    /// The queue this thread serves, if it is a queue thread.
    static ON_QUEUE: std::cell::Cell<u32> = const { std::cell::Cell::new(u32::MAX) };
}

/// The CPUs the kernel makes queues for (`/sys/devices/system/cpu/possible`,
/// e.g. `0-3`): the highest id + 1.
pub fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    parse_cpu_list(&text)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut max = None;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        max = max.max(Some(last));
    }
    max.map(|m| m + 1)
}

/// Whether FUSE over io_uring can be offered: the fuse module's
/// `enable_uring` is on, or could be turned on now (root).
pub fn enable() -> bool {
    let p = "/sys/module/fuse/parameters/enable_uring";
    match std::fs::read_to_string(p) {
        Ok(v) if v.trim() == "Y" => true,
        Ok(_) => std::fs::write(p, b"Y").is_ok(),
        Err(_) => false,
    }
}

/// One ring entry's buffers. Who may touch them follows the protocol: the
/// kernel from REGISTER/COMMIT until the entry's completion, then the
/// daemon (the queue thread reads the request, one answering thread
/// writes the answer) until its next COMMIT.
struct RingEntry {
    header: NonNull<u64>,
    payload: NonNull<u8>,
    payload_len: usize,
    iov: [libc::iovec; 2],
}

// SAFETY: the buffers are plain heap memory; access is serialized by the
// ring protocol described on the type (one owner at a time).
unsafe impl Send for RingEntry {}
// SAFETY: as above.
unsafe impl Sync for RingEntry {}

const HEADER_WORDS: usize = abi::URING_REQ_HEADER_SZ / 8;

impl RingEntry {
    fn new(payload_len: usize) -> Self {
        let header = Box::into_raw(vec![0u64; HEADER_WORDS].into_boxed_slice());
        let payload = Box::into_raw(vec![0u8; payload_len].into_boxed_slice());
        // SAFETY: Box::into_raw never returns null.
        let (header, payload) = unsafe {
            (
                NonNull::new_unchecked(header.cast::<u64>()),
                NonNull::new_unchecked(payload.cast::<u8>()),
            )
        };
        Self {
            iov: [
                libc::iovec {
                    iov_base: header.as_ptr().cast(),
                    iov_len: abi::URING_REQ_HEADER_SZ,
                },
                libc::iovec {
                    iov_base: payload.as_ptr().cast(),
                    iov_len: payload_len,
                },
            ],
            header,
            payload,
            payload_len,
        }
    }

    /// The header buffer.
    ///
    /// # Safety
    /// Only while the daemon owns the entry (see the type).
    #[expect(
        clippy::mut_from_ref,
        reason = "the buffers belong to the ring; the protocol, not a borrow, says who writes"
    )]
    unsafe fn header(&self) -> &mut [u8] {
        // SAFETY: HEADER_WORDS u64s allocated in `new`; ownership per caller.
        unsafe {
            std::slice::from_raw_parts_mut(self.header.as_ptr().cast(), abi::URING_REQ_HEADER_SZ)
        }
    }

    /// The payload buffer.
    ///
    /// # Safety
    /// As [`Self::header`].
    #[expect(
        clippy::mut_from_ref,
        reason = "the buffers belong to the ring; the protocol, not a borrow, says who writes"
    )]
    unsafe fn payload(&self) -> &mut [u8] {
        // SAFETY: payload_len bytes allocated in `new`; ownership per caller.
        unsafe { std::slice::from_raw_parts_mut(self.payload.as_ptr(), self.payload_len) }
    }

    /// The kernel's part of the header (commit id, payload size).
    ///
    /// # Safety
    /// As [`Self::header`].
    unsafe fn ent_in_out(&self) -> abi::UringEntInOut {
        // SAFETY: per caller.
        let h = unsafe { self.header() };
        abi::read::<abi::UringEntInOut>(&h[ENT_IN_OUT..]).map_or_else(Default::default, |v| v.0)
    }

    /// Writes the answer to `unique` into the buffers.
    ///
    /// # Safety
    /// As [`Self::header`]: the caller answers the request this entry holds.
    unsafe fn write_answer(&self, unique: u64, error: i32, parts: &[&[u8]]) {
        // SAFETY: per caller.
        let (h, p) = unsafe { (self.header(), self.payload()) };
        let len: usize = parts.iter().map(|b| b.len()).sum();
        let (error, len) = match () {
            _ if error != 0 => (error, 0),
            _ if len > p.len() => {
                tracing::error!(
                    unique,
                    len,
                    "answer larger than the ring's payload buffer: EIO"
                );
                (libc::EIO, 0)
            }
            _ => (0, len),
        };
        if error == 0 {
            let mut at = 0;
            for b in parts {
                p[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            }
        }
        let oh = super::dev::out_header(unique, error, len);
        h[..16].copy_from_slice(abi::bytes(&oh));
        // payload_sz is the u32 after flags and commit_id.
        h[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
    }
}

impl Drop for RingEntry {
    fn drop(&mut self) {
        // SAFETY: both pointers came from Box::into_raw of slices of these
        // lengths in `new`, and are freed once here.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.header.as_ptr(),
                HEADER_WORDS,
            )));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.payload.as_ptr(),
                self.payload_len,
            )));
        }
    }
}

/// A queue's state shared with the threads that answer its requests.
struct Queue {
    qid: u16,
    entries: Box<[OnceLock<RingEntry>]>,
    /// Entries answered and not yet committed.
    answered: parking_lot::Mutex<Vec<u32>>,
    /// Wakes the queue thread for answers given elsewhere.
    event: OwnedFd,
}

impl Sender for Queue {
    fn send(&self, token: Token, error: i32, payload: &[&[u8]]) -> std::io::Result<()> {
        let Some(e) = self
            .entries
            .get(token.slot as usize)
            .and_then(OnceLock::get)
        else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: `token` is the request this entry holds, answered once
        // (a Reply is consumed by its answer); the kernel does not touch the
        // entry before its commit, which only follows this answer.
        unsafe { e.write_answer(token.unique, error, payload) };
        self.answered.lock().push(token.slot);
        if ON_QUEUE.get() != u32::from(self.qid) {
            // Cannot fail while the queue holds its eventfd (the counter
            // would need 2^64 - 1 wakeups to block).
            let _ = rustix::io::write(&self.event, &1u64.to_ne_bytes());
        }
        Ok(())
    }
}

/// The command area of a ring SQE for entry `commit_id` of queue `qid`.
fn cmd(qid: u16, commit_id: u64) -> [u8; 80] {
    let req = abi::UringCmdReq {
        flags: 0,
        commit_id,
        qid,
        padding: [0; 6],
    };
    let mut c = [0u8; 80];
    c[..std::mem::size_of::<abi::UringCmdReq>()].copy_from_slice(abi::bytes(&req));
    c
}

/// `sqe` with its `len` field set (the crate's URING_CMD builder has no
/// setter; REGISTER passes the number of iovecs there).
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is repr(C): a 64-byte io_uring_sqe (whose u32 `len`
    // is at offset 24) and 64 bytes of command; any bytes are valid for it.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Pins the calling thread to `cpu` (best effort: a queue thread on
/// another CPU still works, only without locality); whether it is.
fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!(
                cpu,
                "thread not pinned: {}",
                std::io::Error::last_os_error()
            );
            return false;
        }
    }
    true
}

/// Makes one request complete on each of the `queues` queues of the
/// connection mounted at `mountpoint`, so that requests waiting in the
/// kernel's list of a queue go out (see the module doc): from a thread
/// of its own, pinned to each CPU in turn (the kernel picks the queue of
/// the caller's CPU), an uncached stat of the mount's root. Returns at
/// once; the thread logs what it did.
pub fn kick_queues(mountpoint: std::path::PathBuf, queues: usize) {
    let spawned = std::thread::Builder::new()
        .name("cfs-ring-kick".into())
        .spawn(move || {
            let mut kicked = 0;
            // A queue not kicked may hold a request until another one on
            // it completes: said at warn.
            for cpu in 0..queues {
                if !pin(cpu) {
                    tracing::warn!(
                        cpu,
                        "cannot run on this CPU to kick its io_uring queue: a request sent there while no server served may wait"
                    );
                    continue;
                }
                match rustix::fs::statx(
                    rustix::fs::CWD,
                    &mountpoint,
                    rustix::fs::AtFlags::STATX_FORCE_SYNC,
                    rustix::fs::StatxFlags::BASIC_STATS,
                ) {
                    Ok(_) => kicked += 1,
                    Err(e) => tracing::warn!(
                        cpu,
                        "cannot kick the io_uring queue (stat of {}: {e}): a request sent there while no server served may wait",
                        mountpoint.display()
                    ),
                }
            }
            tracing::debug!(kicked, queues, "io_uring queues kicked after the adoption");
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the io_uring queue kick: {e}; requests sent while no server served may wait");
    }
}

/// Counts the queues still registering their first entries; the last one
/// in kicks the queues if the session asked for it.
struct Registering {
    left: AtomicUsize,
    queues: usize,
    kick_at: Option<std::path::PathBuf>,
}

impl Registering {
    fn registered(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(at) = &self.kick_at {
                kick_queues(at.clone(), self.queues);
            }
        }
    }
}

/// One queue's ring and the thread's bookkeeping.
struct QueueRing {
    ring: IoUring<squeue::Entry128>,
    queue: Arc<Queue>,
    fd: RawFd,
    registered: usize,
    payload_len: usize,
    event_buf: Box<u64>,
}

impl QueueRing {
    fn push(&mut self, sqe: &squeue::Entry128) -> std::io::Result<()> {
        loop {
            // SAFETY: every buffer an SQE names (the entries' buffers and
            // iovecs, the eventfd buffer) lives as long as the ring.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Registers one more entry.
    fn register(&mut self) -> std::io::Result<()> {
        let slot = self.registered;
        let Some(cell) = self.queue.entries.get(slot) else {
            return Ok(());
        };
        let e = cell.get_or_init(|| RingEntry::new(self.payload_len));
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd), uring_cmd::REGISTER)
            .cmd(cmd(self.queue.qid, 0))
            .addr(Some(e.iov.as_ptr() as u64))
            .build()
            .user_data(slot as u64);
        self.push(&with_len(sqe, 2))?;
        self.registered += 1;
        Ok(())
    }

    fn commit(&mut self, slot: u32) -> std::io::Result<()> {
        let Some(e) = self
            .queue
            .entries
            .get(slot as usize)
            .and_then(OnceLock::get)
        else {
            return Ok(());
        };
        // SAFETY: the entry was answered and is not yet committed: ours.
        let commit_id = unsafe { e.ent_in_out() }.commit_id;
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd), uring_cmd::COMMIT_AND_FETCH)
            .cmd(cmd(self.queue.qid, commit_id))
            .build()
            .user_data(u64::from(slot));
        self.push(&sqe)
    }

    fn arm_event(&mut self) -> std::io::Result<()> {
        let buf: *mut u64 = &mut *self.event_buf;
        let sqe: squeue::Entry128 =
            opcode::Read::new(types::Fd(self.queue.event.as_raw_fd()), buf.cast(), 8)
                .build()
                .user_data(EVENT)
                .into();
        self.push(&sqe)
    }
}

/// Serves queue `q` until the connection ends.
fn queue_thread<H: Handler>(
    mut qr: QueueRing,
    handler: Arc<H>,
    counters: Arc<Counters>,
    sched: &QueueSched,
    registering: &Registering,
) -> std::io::Result<()> {
    let qid = qr.queue.qid;
    pin(usize::from(qid));
    sched.register(usize::from(qid));
    ON_QUEUE.set(u32::from(qid));
    for _ in 0..DEPTH {
        qr.register()?;
    }
    qr.arm_event()?;
    // The kernel takes the entries as the SQEs are submitted.
    qr.ring.submit()?;
    registering.registered();
    let sender: Arc<dyn Sender> = qr.queue.clone();
    let mut done = Vec::with_capacity(MAX_ENTRIES);
    let mut answered = Vec::with_capacity(MAX_ENTRIES);
    let mut held = 0usize;
    loop {
        match qr.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(qr.ring.completion().map(|c| (c.user_data(), c.result())));
        let mut rearm = false;
        let mut ended = false;
        for &(ud, res) in &done {
            if ud == EVENT {
                rearm = true;
                continue;
            }
            if res < 0 {
                match -res {
                    libc::ENOTCONN | libc::ENODEV | libc::ECANCELED => ended = true,
                    e => tracing::warn!(
                        queue = qid,
                        "ring entry failed: {}",
                        std::io::Error::from_raw_os_error(e)
                    ),
                }
                continue;
            }
            let Some(e) = qr.queue.entries.get(ud as usize).and_then(OnceLock::get) else {
                continue;
            };
            held += 1;
            // SAFETY: the completion hands the entry, holding a request, to
            // the daemon until its commit.
            let (h, p) = unsafe { (e.header(), e.payload()) };
            let n = (unsafe { e.ent_in_out() }.payload_sz as usize).min(p.len());
            let parsed = request::parse_ring(&h[..OP_IN], &h[OP_IN..ENT_IN_OUT], &p[..n]);
            serve(parsed, ud as u32, &sender, &*handler, &counters, |_| {
                None::<()>
            });
        }
        // Swapped, not taken: both vectors keep their capacity (no
        // allocation per round).
        std::mem::swap(&mut answered, &mut *qr.queue.answered.lock());
        let committed = !answered.is_empty();
        for slot in answered.drain(..) {
            held = held.saturating_sub(1);
            qr.commit(slot)?;
        }
        // The answers go in a system call of their own, before the wait:
        // measured A/B (4 alternations in one run, uncached stat), 1 process
        // ran at ~55k/s instead of ~42k/s and 4 at ~270k/s instead of
        // ~250k/s than with the answers and the wait in one
        // io_uring_enter (the application's wakeup no longer waits for the
        // queue thread to go to sleep in the same call; not proven).
        if committed {
            qr.ring.submit()?;
        }
        if ended {
            return Ok(());
        }
        // Parked requests hold entries: keep two free.
        while held + 2 > qr.registered && qr.registered < MAX_ENTRIES {
            qr.register()?;
        }
        if rearm {
            qr.arm_event()?;
        }
    }
}

impl Session {
    /// Serves `handler` over io_uring (FUSE_OVER_IO_URING must be in
    /// force), with a `/dev/fuse` worker beside the queues (see the module
    /// doc), until the connection ends. The queue threads run in the
    /// classes `sched` gives them (see `queue_sched`).
    pub fn run_uring<H: Handler>(
        &self,
        handler: Arc<H>,
        readers: Arc<Readers>,
        sched: Arc<QueueSched>,
    ) -> std::io::Result<()> {
        if !self.state.has(abi::init_flags::OVER_IO_URING) {
            return Err(std::io::Error::other(
                "the kernel did not take FUSE_OVER_IO_URING",
            ));
        }
        let payload_len = (self.state.max_write as usize)
            .max(usize::from(self.state.max_pages) * 4096)
            .max(abi::MIN_READ_BUFFER);
        let guard_stop = Arc::new(AtomicBool::new(false));
        if let Err(e) = sched.spawn_guard(guard_stop.clone()) {
            // Without its guard no queue thread may go to SCHED_IDLE.
            tracing::warn!("cannot start the queue guard: {e}; queue threads stay at SCHED_OTHER");
            sched.unguarded();
        }
        let mut threads = Vec::new();
        let registering = Arc::new(Registering {
            left: AtomicUsize::new(sched.queues()),
            queues: sched.queues(),
            kick_at: self.kick_at.clone(),
        });
        // One queue per possible CPU (the kernel's rule for 6.14-6.18),
        // as many as `sched` has classes for.
        for qid in 0..sched.queues() {
            // SAFETY: eventfd has no preconditions; the result is checked.
            let ev = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if ev < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let queue = Arc::new(Queue {
                qid: qid as u16,
                entries: (0..MAX_ENTRIES).map(|_| OnceLock::new()).collect(),
                answered: parking_lot::Mutex::new(Vec::with_capacity(MAX_ENTRIES)),
                // SAFETY: `ev` was just created and is owned here.
                event: unsafe { OwnedFd::from_raw_fd(ev) },
            });
            let fd = std::os::fd::AsFd::as_fd(&*self.dev).as_raw_fd();
            let (handler, counters) = (handler.clone(), self.counters.clone());
            let sched = sched.clone();
            let registering = registering.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cfs-ring-{qid}"))
                    .spawn(move || {
                        // A single-issuer ring is the creating thread's own.
                        let r = IoUring::<squeue::Entry128>::builder()
                            .setup_single_issuer()
                            .setup_defer_taskrun()
                            .build((MAX_ENTRIES * 2) as u32)
                            .and_then(|ring| {
                                let qr = QueueRing {
                                    ring,
                                    queue,
                                    fd,
                                    registered: 0,
                                    payload_len,
                                    event_buf: Box::new(0),
                                };
                                queue_thread(qr, handler, counters, &sched, &registering)
                            });
                        if let Err(e) = &r {
                            tracing::error!(queue = qid, "io_uring queue stopped: {e}");
                        }
                        r
                    })?,
            );
        }
        let result = self.serve_dev(handler, readers, None);
        guard_stop.store(true, Ordering::Relaxed);
        // The queues end as the kernel tears its entries down; the process
        // does not wait long for them.
        let t0 = std::time::Instant::now();
        while threads.iter().any(|t| !t.is_finished()) && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stopped = AtomicBool::new(true);
        for t in threads {
            if t.is_finished() {
                if let Ok(Err(e)) = t.join() {
                    tracing::debug!("queue ended with {e}");
                }
            } else {
                stopped.store(false, Ordering::Relaxed);
            }
        }
        if !stopped.load(Ordering::Relaxed) {
            tracing::debug!("io_uring queues still running at the end of the session");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_give_the_highest_id_plus_one() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(12));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn register_sqes_carry_two_iovecs_and_the_queue() {
        let e = RingEntry::new(4096);
        let sqe = opcode::UringCmd80::new(types::Fd(3), uring_cmd::REGISTER)
            .cmd(cmd(1, 0))
            .addr(Some(e.iov.as_ptr() as u64))
            .build();
        // SAFETY: Entry128 is 128 plain bytes (see with_len).
        let raw: [u8; 128] = unsafe { std::mem::transmute(with_len(sqe, 2)) };
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2);
        assert_eq!(
            u64::from_ne_bytes(raw[16..24].try_into().unwrap()),
            e.iov.as_ptr() as u64
        );
        // The command area starts at byte 48: flags, commit_id, qid.
        assert_eq!(
            u16::from_ne_bytes(raw[48 + 16..48 + 18].try_into().unwrap()),
            1
        );
    }

    #[test]
    fn an_answer_goes_into_the_entry_with_its_payload_size() {
        let e = RingEntry::new(64);
        // SAFETY: the test owns the entry (no kernel).
        unsafe {
            e.write_answer(9, 0, &[b"abc", b"de"]);
            let (oh, _) = abi::read::<abi::OutHeader>(e.header()).unwrap();
            assert_eq!((oh.len, oh.error, oh.unique), (21, 0, 9));
            assert_eq!(e.ent_in_out().payload_sz, 5);
            assert_eq!(&e.payload()[..5], b"abcde");
            e.write_answer(10, 0, &[&[0u8; 65]]);
            let (oh, _) = abi::read::<abi::OutHeader>(e.header()).unwrap();
            assert_eq!((oh.error, e.ent_in_out().payload_sz), (-libc::EIO, 0));
        }
    }
}
