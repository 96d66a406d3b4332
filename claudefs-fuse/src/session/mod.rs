//! The daemon's own FUSE session layer, written against the kernel's uapi
//! (`include/uapi/linux/fuse.h`).
//!
//! Roles: `abi` (the wire structures), `request` (parsing into a typed
//! [`Request`]), `reply` (the [`Reply`] completion and the [`Sender`]
//! trait transports implement), `init` (INIT negotiation and the
//! serializable [`InitState`]), `notify` (notifications), `dev` (the
//! `/dev/fuse` device), `readers` (which `/dev/fuse` worker reads),
//! `uring` (FUSE over io_uring).
//!
//! A [`Session`] is a connection past INIT: made by [`Session::init`],
//! which answers the kernel's INIT, or by [`Session::adopt`], which takes
//! an fd whose INIT another session already answered (a restarted daemon
//! keeps serving a live mount) together with that session's state. It
//! serves a [`Handler`] through a transport. Every request gets exactly
//! one answer: malformed and unknown requests an errno (counted in
//! [`Counters`]), a handler's panic `EIO`.
//!
//! INTERRUPT reaches the handler ([`Handler::interrupt`]); nothing here
//! answers it with `ENOSYS` (which would make the kernel stop sending it).

pub mod abi;
pub mod dev;
pub mod init;
pub mod notify;
pub mod queue_sched;
pub mod readers;
pub mod reply;
pub mod request;
pub mod uring;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use dev::{BackingId, Device};
pub use init::{InitConfig, InitState};
pub use notify::Notifier;
pub use readers::Readers;
pub use reply::{DirBuf, Reply, Sender, Token};
pub use request::{Operation, ParseError, Request};

/// What a file system implements to be served by a session.
pub trait Handler: Send + Sync + 'static {
    /// Serves `req`; answers through `reply` (now, or later from any
    /// thread: a parked lock request).
    fn dispatch(&self, req: &Request<'_>, reply: Reply);

    /// Whether `req` may take long (the `/dev/fuse` transport then wakes
    /// another worker to read, see `readers`).
    fn may_block(&self, _req: &Request<'_>) -> bool {
        false
    }

    /// The kernel dropped `nlookup` lookups of `nodeid` (FORGET, BATCH_FORGET;
    /// no answer).
    fn forget(&self, nodeid: u64, nlookup: u64);

    /// The kernel asks to interrupt request `unique` (a signal reached its
    /// caller). No answer of its own; the interrupted request is answered
    /// `EINTR` if it is still waiting, else as usual.
    fn interrupt(&self, unique: u64);

    /// The connection is being torn down (DESTROY).
    fn destroy(&self) {}
}

/// Requests the session answered itself, by why.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests read (written by every request: sharded).
    pub requests: crate::sharded::ShardedCounter,
    /// Shorter than a header (nothing to answer).
    pub short: AtomicU64,
    /// Length or arguments wrong (answered `EINVAL`).
    pub malformed: AtomicU64,
    /// Opcodes not served (answered `ENOSYS`).
    pub unknown: AtomicU64,
    /// Handler panics (answered `EIO`).
    pub panics: AtomicU64,
    /// Requests the kernel resent (a previous server read them and did
    /// not answer; [`abi::UNIQUE_RESEND`]).
    pub resent: AtomicU64,
}

/// The transports a session can serve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// read(2)/writev(2) on `/dev/fuse`, one clone per worker.
    Dev,
    /// FUSE over io_uring (Linux 6.14), a ring per CPU.
    Uring,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Dev => "dev",
            Transport::Uring => "uring",
        }
    }
}

/// Called with each `/dev/fuse` clone a worker is about to read on (see
/// [`Session::on_clone`]).
pub type CloneHook = Arc<dyn Fn(&Device) + Send + Sync>;

#[derive(Default, Clone)]
struct Hook(Option<CloneHook>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}

/// An initialised FUSE connection (see the module doc).
#[derive(Debug)]
pub struct Session {
    dev: Arc<Device>,
    state: InitState,
    counters: Arc<Counters>,
    on_clone: Hook,
    /// Where the connection is mounted, for the io_uring queues' kick
    /// after an adoption (see [`Session::kick_queues_at`]).
    kick_at: Option<std::path::PathBuf>,
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("reading INIT from /dev/fuse: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Init(#[from] init::InitError),
    #[error("connection ended before INIT")]
    Ended,
}

fn retryable(e: &std::io::Error) -> bool {
    // ENOENT: the request was interrupted before it could be read.
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::ENOENT)
    )
}

impl Session {
    /// Answers the kernel's INIT on `fd` (just mounted) with what `cfg`
    /// wants and the kernel offers.
    pub fn init(fd: std::os::fd::OwnedFd, cfg: &InitConfig) -> Result<Session, SessionError> {
        let dev = Arc::new(Device::new(fd));
        let mut buf = vec![0u8; abi::MIN_READ_BUFFER.max(cfg.max_write as usize + 4096)];
        loop {
            let n = match dev.read(&mut buf) {
                Ok(n) => n,
                Err(e) if retryable(&e) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                    return Err(SessionError::Ended)
                }
                Err(e) => return Err(e.into()),
            };
            let req = match request::parse(&buf[..n]) {
                Ok(r) => r,
                Err(e) => {
                    if let Some((unique, errno)) = e.answer() {
                        let _ = dev.send(Token { unique, slot: 0 }, errno, &[]);
                    }
                    continue;
                }
            };
            let token = Token {
                unique: req.unique(),
                slot: 0,
            };
            let Operation::Init(kernel) = req.op else {
                tracing::warn!(
                    opcode = req.header.opcode,
                    "request before INIT: answered EIO"
                );
                let _ = dev.send(token, libc::EIO, &[]);
                continue;
            };
            match init::negotiate(&kernel, cfg) {
                Ok(state) => {
                    dev.send(token, 0, &[abi::bytes(&state.reply())])?;
                    return Ok(Session {
                        dev,
                        state,
                        counters: Arc::default(),
                        on_clone: Hook::default(),
                        kick_at: None,
                    });
                }
                Err(e) => {
                    let _ = dev.send(token, libc::EPROTO, &[]);
                    return Err(e.into());
                }
            }
        }
    }

    /// A session on `fd`, whose INIT was answered with `state` (by another
    /// session, maybe of another process): no INIT is read or sent.
    pub fn adopt(fd: std::os::fd::OwnedFd, state: InitState) -> Session {
        Session {
            dev: Arc::new(Device::new(fd)),
            state,
            counters: Arc::default(),
            on_clone: Hook::default(),
            kick_at: None,
        }
    }

    /// Calls `hook` with every `/dev/fuse` clone a worker reads on, before
    /// it reads (a process that keeps the connection across a restart of
    /// this one holds them: the requests read on a clone stay with the
    /// connection while it is open).
    pub fn on_clone(&mut self, hook: CloneHook) {
        self.on_clone = Hook(Some(hook));
    }

    /// Once its io_uring queues have registered their entries, the session
    /// makes one request complete on each queue, by an uncached stat of
    /// `mountpoint` from each CPU (see `uring::kick_queues`). For a session
    /// that adopts a connection whose previous server died on io_uring:
    /// requests sent while no queue had entries wait in the kernel until a
    /// request on their queue completes, which an idle mount may never see.
    pub fn kick_queues_at(&mut self, mountpoint: std::path::PathBuf) {
        self.kick_at = Some(mountpoint);
    }

    /// What INIT agreed.
    pub fn state(&self) -> &InitState {
        &self.state
    }

    /// The connection's main device.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The session's counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// A notifier on this connection.
    pub fn notifier(&self) -> Notifier {
        Notifier::new(self.dev.clone(), self.state)
    }

    /// Serves `handler` on `/dev/fuse` with `readers.workers()` workers,
    /// each on its own clone of the device, until the connection ends (or,
    /// with `stop`, until it is set: each worker looks before each read,
    /// so one already blocked in read(2) leaves after the request it
    /// reads; the connection is then another session's to serve).
    pub fn run_dev<H: Handler>(
        &self,
        handler: Arc<H>,
        readers: Arc<Readers>,
        stop: Option<Arc<AtomicBool>>,
    ) -> std::io::Result<()> {
        readers.spawn_watch(self.dev.try_clone_fd()?)?;
        self.serve_dev(handler, readers, stop)
    }

    /// The `/dev/fuse` workers of [`Session::run_dev`], without the
    /// readers' watch (the io_uring transport's lone device worker, which
    /// never parks, needs none: a watch waking 100 times a second only
    /// disturbs the queues' CPUs).
    fn serve_dev<H: Handler>(
        &self,
        handler: Arc<H>,
        readers: Arc<Readers>,
        stop: Option<Arc<AtomicBool>>,
    ) -> std::io::Result<()> {
        let mut threads = Vec::new();
        for i in 0..readers.workers().max(1) {
            let dev = Arc::new(self.dev.clone_session()?);
            if let Some(hook) = &self.on_clone.0 {
                hook(&dev);
            }
            let (handler, readers, stop) = (handler.clone(), readers.clone(), stop.clone());
            let counters = self.counters.clone();
            let size = self.state.buffer_size();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cfs-fuse-{i}"))
                    .spawn(move || {
                        let r = dev_worker(dev, &*handler, &readers, &counters, size, stop);
                        readers.close();
                        r
                    })?,
            );
        }
        let mut result = Ok(());
        for t in threads {
            match t.join() {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(_) => tracing::error!("a FUSE worker thread panicked"),
            }
        }
        result
    }
}

/// A worker's way to answer: the readers look for a backlog just before
/// each answer is written (see [`Readers::answering`]).
struct WorkerSender {
    dev: Arc<Device>,
    readers: Arc<Readers>,
}

impl Sender for WorkerSender {
    fn send(&self, token: Token, error: i32, payload: &[&[u8]]) -> std::io::Result<()> {
        self.readers.answering();
        self.dev.send(token, error, payload)
    }
}

/// One `/dev/fuse` worker: reads and serves requests until the connection
/// ends (ENODEV) or `stop` is set.
fn dev_worker<H: Handler>(
    dev: Arc<Device>,
    handler: &H,
    readers: &Arc<Readers>,
    counters: &Counters,
    size: usize,
    stop: Option<Arc<AtomicBool>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; size];
    let sender: Arc<dyn Sender> = Arc::new(WorkerSender {
        dev: dev.clone(),
        readers: readers.clone(),
    });
    loop {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Ok(());
        }
        let n = match dev.read(&mut buf) {
            Ok(n) => n,
            Err(e) if retryable(&e) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
            Err(e) => return Err(e),
        };
        let req = request::parse(&buf[..n]);
        serve(req, 0, &sender, handler, counters, |may_block| {
            Some(readers.enter(may_block))
        });
    }
}

/// Serves one request as parsed (any transport): answers what the
/// session answers itself (malformed and unknown requests included),
/// hands the rest to `handler` with a [`Reply`] through `sender`, `slot`
/// naming the transport's slot. `enter(may_block)` brackets the
/// handler's call (the reader hand-off).
pub fn serve<H: Handler, G>(
    parsed: Result<Request<'_>, ParseError>,
    slot: u32,
    sender: &Arc<dyn Sender>,
    handler: &H,
    counters: &Counters,
    enter: impl FnOnce(bool) -> Option<G>,
) {
    counters.requests.inc();
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            let c = match e {
                ParseError::Short { .. } => &counters.short,
                ParseError::Unknown { .. } => &counters.unknown,
                _ => &counters.malformed,
            };
            c.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{e}");
            if let Some((unique, errno)) = e.answer() {
                let _ = sender.send(Token { unique, slot }, errno, &[]);
            }
            return;
        }
    };
    let guard = |f: &mut dyn FnMut()| {
        if catch_unwind(AssertUnwindSafe(f)).is_err() {
            counters.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(opcode = req.header.opcode, "request handler panicked");
        }
    };
    let token = Token {
        unique: req.unique(),
        slot,
    };
    if req.unique() & abi::UNIQUE_RESEND != 0 {
        counters.resent.fetch_add(1, Ordering::Relaxed);
    }
    match &req.op {
        Operation::Forget { nlookup } => guard(&mut || handler.forget(req.nodeid(), *nlookup)),
        Operation::BatchForget { nodes } => guard(&mut || {
            for n in nodes {
                handler.forget(n.nodeid, n.nlookup);
            }
        }),
        Operation::Interrupt { unique } => guard(&mut || handler.interrupt(*unique)),
        Operation::Init(_) => {
            tracing::warn!("INIT on an initialised connection: answered EPROTO");
            let _ = sender.send(token, libc::EPROTO, &[]);
        }
        Operation::Destroy => {
            guard(&mut || handler.destroy());
            let _ = sender.send(token, 0, &[]);
        }
        _ => {
            let may_block = handler.may_block(&req);
            let _serving = enter(may_block);
            let mut reply = Some(Reply::new(
                token,
                sender.clone(),
                req.header.opcode,
                req.nodeid(),
            ));
            // A panic drops the reply, which answers EIO.
            guard(&mut || {
                if let Some(r) = reply.take() {
                    handler.dispatch(&req, r)
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::request::tests::raw;
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Echo {
        forgot: Mutex<Vec<(u64, u64)>>,
        interrupted: Mutex<Vec<u64>>,
    }

    impl Handler for Echo {
        fn dispatch(&self, req: &Request<'_>, reply: Reply) {
            match req.op {
                Operation::Getattr { .. } => reply.error(libc::ENOENT),
                Operation::Statfs => panic!("handler bug"),
                _ => reply.ok(),
            }
        }
        fn forget(&self, nodeid: u64, nlookup: u64) {
            self.forgot.lock().push((nodeid, nlookup));
        }
        fn interrupt(&self, unique: u64) {
            self.interrupted.lock().push(unique);
        }
    }

    fn run(bufs: &[Vec<u8>]) -> (Vec<reply::Answered>, Echo, Counters) {
        let rec = Arc::new(reply::Recorder::default());
        let sender: Arc<dyn Sender> = rec.clone();
        let h = Echo::default();
        let c = Counters::default();
        for b in bufs {
            serve(request::parse(b), 0, &sender, &h, &c, |_| None::<()>);
        }
        (rec.take(), h, c)
    }

    #[test]
    fn every_request_gets_one_answer_and_forget_and_interrupt_none() {
        let getattr = raw(abi::op::GETATTR, 1, 5, &[0; 16]);
        let statfs = raw(abi::op::STATFS, 2, 1, &[]);
        let forget = raw(
            abi::op::FORGET,
            3,
            9,
            abi::bytes(&abi::ForgetIn { nlookup: 2 }),
        );
        let intr = raw(
            abi::op::INTERRUPT,
            5,
            0,
            abi::bytes(&abi::InterruptIn { unique: 1 }),
        );
        let unknown = raw(abi::op::IOCTL, 6, 1, &[0; 32]);
        let bad = raw(abi::op::LOOKUP, 7, 1, b"no-nul");
        let (answers, h, c) = run(&[getattr, statfs, forget, intr, unknown, bad, vec![1, 2, 3]]);
        let errs: Vec<(u64, i32)> = answers.iter().map(|a| (a.0, a.1)).collect();
        assert_eq!(
            errs,
            vec![
                (1, libc::ENOENT),
                (2, libc::EIO),
                (6, libc::ENOSYS),
                (7, libc::EINVAL)
            ]
        );
        assert_eq!(*h.forgot.lock(), vec![(9, 2)]);
        assert_eq!(*h.interrupted.lock(), vec![1]);
        assert_eq!(c.panics.load(Ordering::Relaxed), 1);
        assert_eq!(c.unknown.load(Ordering::Relaxed), 1);
        assert_eq!(c.malformed.load(Ordering::Relaxed), 1);
        assert_eq!(c.short.load(Ordering::Relaxed), 1);
    }
}
