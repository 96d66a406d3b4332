//! The thin boundary between the session and the core: [`Fs`] is the
//! session's [`Handler`]. Each request opens a span, calls the core
//! (`ops.rs`) or the lock service (`locks.rs`), and answers with the value
//! or the errno; the span ends with the storage path the core noted.
//! Every request gets exactly one answer (the session's `Reply` answers
//! `EIO` if a handler drops it, a panic included).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::attr::{FileAttr, SetTime, Timestamp};
use super::backing::Passthrough;
use super::locks::Locks;
use super::ops::{Core, OpenFile, Served};
use super::spans::{Op, ReqSpan, Spans};
use super::storage::SysResult;
use crate::session::abi::{self, fattr, fopen};
use crate::session::{BackingId, Device, DirBuf, Handler, InitState, Operation, Reply, Request};

/// How long the kernel may keep an entry or attributes we answered
/// (`--cache-timeout-ms`), as the protocol carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTimeout {
    secs: u64,
    nsec: u32,
}

impl CacheTimeout {
    pub fn new(d: Duration) -> Self {
        Self {
            secs: d.as_secs(),
            nsec: d.subsec_nanos(),
        }
    }
}

/// The session handler of the daemon.
#[derive(Debug)]
pub struct Fs {
    pub core: Arc<Core>,
    pub locks: Arc<Locks>,
    pub spans: Arc<Spans>,
    /// Kernel passthrough of open files (see `backing`).
    pub passthrough: Arc<Passthrough>,
    /// The kernel took FUSE_FLOCK_LOCKS.
    pub flock: AtomicBool,
    /// The kernel took HANDLE_KILLPRIV_V2: the daemon clears suid/sgid.
    killpriv: AtomicBool,
    /// The connection's device, for passthrough registrations.
    dev: OnceLock<Arc<Device>>,
    /// Entry and attribute timeout of every answer that carries one.
    cache: CacheTimeout,
}

const FSYNC: Op = Op::new("fsync");
const FSYNCDIR: Op = Op::new("fsyncdir");
const FALLOCATE: Op = Op::new("fallocate");

/// The kernel's attributes of `a`.
fn attr_out(a: &FileAttr) -> abi::Attr {
    abi::Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.sec as u64,
        mtime: a.mtime.sec as u64,
        ctime: a.ctime.sec as u64,
        atimensec: a.atime.nsec,
        mtimensec: a.mtime.nsec,
        ctimensec: a.ctime.nsec,
        mode: a.kind.mode_bits() | u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The kernel's entry of `a` (a lookup it now holds), valid for `t`.
fn entry_out(a: &FileAttr, t: CacheTimeout) -> abi::EntryOut {
    abi::EntryOut {
        nodeid: a.ino,
        generation: 0,
        entry_valid: t.secs,
        attr_valid: t.secs,
        entry_valid_nsec: t.nsec,
        attr_valid_nsec: t.nsec,
        attr: attr_out(a),
    }
}

/// The time SETATTR sets from `valid` bits `set` / `now`.
fn set_time(valid: u32, set: u32, now: u32, sec: u64, nsec: u32) -> Option<SetTime> {
    if valid & now != 0 {
        Some(SetTime::Now)
    } else if valid & set != 0 {
        Some(SetTime::At(Timestamp {
            sec: sec as i64,
            nsec,
        }))
    } else {
        None
    }
}

impl Fs {
    pub fn new(
        core: Arc<Core>,
        locks: Arc<Locks>,
        spans: Arc<Spans>,
        passthrough: bool,
        cache: CacheTimeout,
    ) -> Self {
        Self {
            core,
            locks,
            spans,
            passthrough: Arc::new(Passthrough::new(passthrough)),
            flock: AtomicBool::new(false),
            killpriv: AtomicBool::new(false),
            dev: OnceLock::new(),
            cache,
        }
    }

    /// Takes what INIT agreed on the connection `dev`.
    pub fn connected(&self, state: &InitState, dev: Arc<Device>) {
        use abi::init_flags as f;
        self.flock
            .store(state.has(f::FLOCK_LOCKS), Ordering::Relaxed);
        if !state.has(f::FLOCK_LOCKS) {
            tracing::warn!("kernel lacks FUSE_FLOCK_LOCKS: flock is served by the kernel locally");
        }
        self.killpriv
            .store(state.has(f::HANDLE_KILLPRIV_V2), Ordering::Relaxed);
        if self.passthrough.wanted() && !state.has(f::PASSTHROUGH) {
            tracing::warn!("kernel does not offer FUSE passthrough; --passthrough ignored");
            self.passthrough.turn_off();
        }
        let _ = self.dev.set(dev);
    }

    /// Open flags of an answer for `of` (see `Core::flushes`, `pagecache`;
    /// no `FOPEN_KEEP_CACHE` with `passthrough`, where the kernel reads the
    /// backing file and refuses the open's cache mode).
    fn fopen(&self, of: &OpenFile, passthrough: bool) -> u32 {
        let mut f = 0;
        if !self.core.flushes(of) {
            f |= fopen::NOFLUSH;
        }
        if of.keep_cache && !passthrough {
            f |= fopen::KEEP_CACHE;
        }
        f
    }

    /// The open answer for handle `fh` of `of`: with a passthrough
    /// registration when passthrough is on.
    fn open_out(&self, fh: u64, of: &OpenFile) -> abi::OpenOut {
        let reg = self
            .passthrough
            .registration(fh, of, &self.core.router, |fd| {
                let dev = self
                    .dev
                    .get()
                    .ok_or_else(|| std::io::Error::other("no device"))?;
                BackingId::open(dev, fd.as_fd())
            });
        match reg {
            Some(id) => abi::OpenOut {
                fh,
                open_flags: self.fopen(of, true) | fopen::PASSTHROUGH,
                backing_id: id.id() as i32,
            },
            None => abi::OpenOut {
                fh,
                open_flags: self.fopen(of, false),
                backing_id: 0,
            },
        }
    }

    /// Ends the span of a request served as `cx` says, with result `r`.
    fn fin<T>(
        &self,
        sp: Option<ReqSpan>,
        cx: &Served,
        r: SysResult<T>,
        fh: Option<u64>,
        bytes: impl Fn(&T) -> u64,
    ) -> SysResult<T> {
        match &r {
            Ok(v) => {
                let b = bytes(v);
                self.spans
                    .end(sp, cx.path(), fh, (b > 0).then_some(b), None)
            }
            Err(e) => self.spans.end(sp, cx.path(), fh, None, Some(*e)),
        }
        r
    }

    /// Ends the span and answers success or the errno.
    fn empty(
        &self,
        sp: Option<ReqSpan>,
        cx: &Served,
        r: SysResult<()>,
        fh: Option<u64>,
        reply: Reply,
    ) {
        match self.fin(sp, cx, r, fh, |_| 0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Ends the span and answers an entry or the errno.
    fn entry(&self, sp: Option<ReqSpan>, cx: &Served, r: SysResult<FileAttr>, reply: Reply) {
        match self.fin(sp, cx, r, None, |_| 0) {
            Ok(a) => reply.pod(&entry_out(&a, self.cache)),
            Err(e) => reply.error(e),
        }
    }

    /// Ends the span and answers attributes or the errno.
    fn attr(
        &self,
        sp: Option<ReqSpan>,
        cx: &Served,
        r: SysResult<FileAttr>,
        fh: Option<u64>,
        reply: Reply,
    ) {
        match self.fin(sp, cx, r, fh, |_| 0) {
            Ok(a) => reply.pod(&abi::AttrOut {
                attr_valid: self.cache.secs,
                attr_valid_nsec: self.cache.nsec,
                dummy: 0,
                attr: attr_out(&a),
            }),
            Err(e) => reply.error(e),
        }
    }

    /// Ends the span and answers bytes (or their size when the kernel
    /// asked with size 0: xattrs) or the errno.
    fn sized(
        &self,
        sp: Option<ReqSpan>,
        cx: &Served,
        r: SysResult<(usize, Vec<u8>)>,
        size: u32,
        reply: Reply,
    ) {
        match self.fin(sp, cx, r, None, |v| v.0 as u64) {
            Ok((n, _)) if size == 0 => reply.pod(&abi::GetxattrOut {
                size: n as u32,
                padding: 0,
            }),
            Ok((_, v)) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    /// Clears suid/sgid of `ino` when the kernel asks (`asked`).
    fn kill_suidgid(&self, cx: &Served, ino: u64, asked: bool) -> SysResult<()> {
        if asked && self.killpriv.load(Ordering::Relaxed) {
            self.core.kill_suidgid(cx, ino)
        } else {
            Ok(())
        }
    }

    fn setattr(
        &self,
        sp: Option<ReqSpan>,
        cx: &Served,
        ino: u64,
        a: &abi::SetattrIn,
        reply: Reply,
    ) {
        let v = a.valid;
        let fh = (v & fattr::FH != 0).then_some(a.fh);
        let r = self
            .core
            .setattr(
                cx,
                ino,
                fh,
                (v & fattr::MODE != 0).then_some(a.mode),
                (v & fattr::UID != 0).then_some(a.uid),
                (v & fattr::GID != 0).then_some(a.gid),
                (v & fattr::SIZE != 0).then_some(a.size),
                set_time(v, fattr::ATIME, fattr::ATIME_NOW, a.atime, a.atimensec),
                set_time(v, fattr::MTIME, fattr::MTIME_NOW, a.mtime, a.mtimensec),
            )
            .and_then(|attr| {
                if v & fattr::KILL_SUIDGID != 0 && self.killpriv.load(Ordering::Relaxed) {
                    self.core.kill_suidgid(cx, ino)?;
                    return self.core.getattr(cx, ino, fh);
                }
                Ok(attr)
            });
        self.attr(sp, cx, r, fh, reply)
    }

    fn open(
        &self,
        sp: Option<ReqSpan>,
        cx: &Served,
        req: &Request<'_>,
        a: &abi::OpenIn,
        reply: Reply,
    ) {
        let ino = req.nodeid();
        let r = self
            .core
            .open(cx, ino, a.flags as i32, req.pid())
            .and_then(|o| {
                self.kill_suidgid(cx, ino, a.open_flags & abi::OPEN_KILL_SUIDGID != 0)?;
                Ok(o)
            });
        match r {
            Ok((fh, of)) => {
                self.spans.end(sp, cx.path(), Some(fh), None, None);
                reply.pod(&self.open_out(fh, &of))
            }
            Err(e) => {
                self.spans.end(sp, cx.path(), None, None, Some(e));
                reply.error(e)
            }
        }
    }

    fn create(
        &self,
        sp: Option<ReqSpan>,
        cx: &Served,
        req: &Request<'_>,
        a: &abi::CreateIn,
        name: &OsStr,
        reply: Reply,
    ) {
        let r = self.core.create(
            cx,
            req.nodeid(),
            name,
            a.mode,
            a.flags as i32,
            req.uid(),
            req.gid(),
            req.pid(),
        );
        let r = r.and_then(|o| {
            self.kill_suidgid(cx, o.0.ino, a.open_flags & abi::OPEN_KILL_SUIDGID != 0)?;
            Ok(o)
        });
        match r {
            Ok((attr, fh, of)) => {
                self.spans.end(sp, cx.path(), Some(fh), None, None);
                reply.pod2(&entry_out(&attr, self.cache), &self.open_out(fh, &of))
            }
            Err(e) => {
                self.spans.end(sp, cx.path(), None, None, Some(e));
                reply.error(e)
            }
        }
    }

    fn readdir(
        &self,
        sp: Option<ReqSpan>,
        cx: &Served,
        ino: u64,
        a: &abi::ReadIn,
        plus: bool,
        reply: Reply,
    ) {
        let r = self.core.readdir(ino, a.fh, a.offset);
        let entries = match self.fin(sp, cx, r, Some(a.fh), |_| 0) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let mut buf = DirBuf::new(a.size);
        for (off, e) in entries {
            let typ = e.kind.dtype();
            if !plus {
                if !buf.add(e.ino, off, typ, &e.name) {
                    break;
                }
                continue;
            }
            if e.name == "." || e.name == ".." {
                let mut dot = abi::EntryOut::default();
                dot.attr.ino = e.ino;
                if !buf.add_plus(&dot, off, typ, &e.name) {
                    break;
                }
                continue;
            }
            let Ok(attr) = self.core.entry_plus(cx, ino, &e.name) else {
                continue;
            };
            if !buf.add_plus(&entry_out(&attr, self.cache), off, typ, &e.name) {
                // Not handed to the kernel: its lookup is not held.
                self.core.forget(attr.ino, 1);
                break;
            }
        }
        reply.data(buf.bytes())
    }

    fn setlk(
        &self,
        sp: Option<ReqSpan>,
        req: &Request<'_>,
        a: &abi::LkIn,
        sleep: bool,
        reply: Reply,
    ) {
        // A parked request counts as answered here: its span is the
        // daemon's part (queueing it), its wait is in the flock metrics.
        // The span ends before the answer goes out, as for every request
        // (with `--ebpf` the kernel's end event then finds it).
        let outcome = self.locks.setlk(
            req.unique(),
            req.nodeid(),
            a.owner,
            a.lk.pid,
            a.lk.typ as i32,
            sleep,
            reply,
        );
        self.spans.end(sp, None, None, None, outcome.errno());
        outcome.send();
    }
}

impl Handler for Fs {
    fn may_block(&self, req: &Request<'_>) -> bool {
        matches!(
            req.op,
            Operation::Fsync(_) | Operation::Fsyncdir(_) | Operation::Fallocate(_)
        ) || self.core.router.slow()
    }

    fn forget(&self, ino: u64, nlookup: u64) {
        self.core.forget(ino, nlookup);
        // The kernel evicted the inode (FORGET comes once, at eviction).
        self.passthrough.forget(ino);
        self.core.fds.forget(ino);
        self.core.pages.forget(ino);
    }

    fn interrupt(&self, unique: u64) {
        self.locks.interrupt(unique);
    }

    fn destroy(&self) {
        self.locks.shutdown();
        self.passthrough.clear();
        self.core.fds.clear();
    }

    fn dispatch(&self, req: &Request<'_>, reply: Reply) {
        use Operation as O;
        let ino = req.nodeid();
        let cx = Served::request(req.unique());
        let cx = &cx;
        let core = &self.core;
        let begin = |op: Op| {
            self.spans
                .begin(op, req.unique(), ino, req.uid(), req.pid())
        };
        match &req.op {
            O::Lookup { name } => {
                let sp = begin(const { Op::new("lookup") });
                self.entry(sp, cx, core.lookup(cx, ino, name), reply)
            }
            O::Getattr { fh } => {
                let sp = begin(const { Op::new("getattr") });
                self.attr(sp, cx, core.getattr(cx, ino, *fh), *fh, reply)
            }
            O::Setattr(a) => self.setattr(begin(const { Op::new("setattr") }), cx, ino, a, reply),
            O::Readlink => {
                let sp = begin(const { Op::new("readlink") });
                match self.fin(sp, cx, core.readlink(cx, ino), None, |v| v.len() as u64) {
                    Ok(v) => reply.data(&v),
                    Err(e) => reply.error(e),
                }
            }
            O::Mknod { name, arg } => {
                let sp = begin(const { Op::new("mknod") });
                let r = core.mknod(cx, ino, name, arg.mode, arg.rdev, req.uid(), req.gid());
                self.entry(sp, cx, r, reply)
            }
            O::Mkdir { name, arg } => {
                let sp = begin(const { Op::new("mkdir") });
                let r = core.mkdir(cx, ino, name, arg.mode, req.uid(), req.gid());
                self.entry(sp, cx, r, reply)
            }
            O::Unlink { name } => {
                let sp = begin(const { Op::new("unlink") });
                self.empty(sp, cx, core.unlink(cx, ino, name, false), None, reply)
            }
            O::Rmdir { name } => {
                let sp = begin(const { Op::new("rmdir") });
                self.empty(sp, cx, core.unlink(cx, ino, name, true), None, reply)
            }
            O::Symlink { name, target } => {
                let sp = begin(const { Op::new("symlink") });
                let r = core.symlink(cx, ino, name, Path::new(target), req.uid(), req.gid());
                self.entry(sp, cx, r, reply)
            }
            O::Rename {
                newdir,
                flags,
                name,
                newname,
            } => {
                let sp = begin(const { Op::new("rename") });
                let r = core.rename(cx, ino, name, *newdir, newname, *flags);
                self.empty(sp, cx, r, None, reply)
            }
            O::Link { oldnodeid, newname } => {
                let sp = begin(const { Op::new("link") });
                self.entry(sp, cx, core.link(cx, *oldnodeid, ino, newname), reply)
            }
            O::Open(a) => self.open(begin(const { Op::new("open") }), cx, req, a, reply),
            O::Read(a) => {
                let sp = begin(const { Op::new("read") });
                core.read_with(cx, a.fh, a.offset, a.size, |r| {
                    match self.fin(sp, cx, r, Some(a.fh), |v| v.len() as u64) {
                        Ok(v) => reply.data(v),
                        Err(e) => reply.error(e),
                    }
                })
            }
            O::Write { arg, data } => {
                let sp = begin(const { Op::new("write") });
                let r = self
                    .kill_suidgid(cx, ino, arg.write_flags & abi::WRITE_KILL_SUIDGID != 0)
                    .and_then(|()| core.write(cx, arg.fh, arg.offset, data));
                match self.fin(sp, cx, r, Some(arg.fh), |n| *n as u64) {
                    Ok(n) => reply.pod(&abi::WriteOut {
                        size: n as u32,
                        padding: 0,
                    }),
                    Err(e) => reply.error(e),
                }
            }
            O::Statfs => {
                let sp = begin(const { Op::new("statfs") });
                match self.fin(sp, cx, core.statfs(cx), None, |_| 0) {
                    Ok(s) => reply.pod(&abi::StatfsOut {
                        st: abi::Kstatfs {
                            blocks: s.f_blocks,
                            bfree: s.f_bfree,
                            bavail: s.f_bavail,
                            files: s.f_files,
                            ffree: s.f_ffree,
                            bsize: s.f_bsize as u32,
                            namelen: s.f_namemax as u32,
                            frsize: s.f_frsize as u32,
                            padding: 0,
                            spare: [0; 6],
                        },
                    }),
                    Err(e) => reply.error(e),
                }
            }
            O::Release(a) => {
                let sp = begin(const { Op::new("release") });
                if a.release_flags & abi::RELEASE_FLOCK_UNLOCK != 0 {
                    self.locks.release_owner(ino, a.lock_owner);
                }
                core.release(a.fh);
                self.passthrough.released(a.fh);
                self.spans.end(sp, None, Some(a.fh), None, None);
                reply.ok()
            }
            O::Fsync(a) => {
                let sp = begin(FSYNC);
                let datasync = a.fsync_flags & abi::FSYNC_FDATASYNC != 0;
                self.empty(sp, cx, core.fsync(cx, a.fh, datasync), Some(a.fh), reply)
            }
            O::Flush(a) => {
                // A close of one descriptor of the file: the storage's
                // close-time errors reach the application's close(2).
                let sp = begin(const { Op::new("flush") });
                self.empty(sp, cx, core.flush(cx, a.fh), Some(a.fh), reply)
            }
            O::Setxattr { arg, name, value } => {
                let sp = begin(const { Op::new("setxattr") });
                let r = core.setxattr(cx, ino, name, value, arg.flags as i32);
                self.empty(sp, cx, r, None, reply)
            }
            O::Getxattr { size, name } => {
                let sp = begin(const { Op::new("getxattr") });
                self.sized(sp, cx, core.getxattr(cx, ino, name, *size), *size, reply)
            }
            O::Listxattr { size } => {
                let sp = begin(const { Op::new("listxattr") });
                self.sized(sp, cx, core.listxattr(cx, ino, *size), *size, reply)
            }
            O::Removexattr { name } => {
                let sp = begin(const { Op::new("removexattr") });
                self.empty(sp, cx, core.removexattr(cx, ino, name), None, reply)
            }
            O::Opendir(_) => {
                let sp = begin(const { Op::new("opendir") });
                match self.fin(sp, cx, core.opendir(cx, ino), None, |_| 0) {
                    Ok(fh) => reply.pod(&abi::OpenOut {
                        fh,
                        open_flags: 0,
                        backing_id: 0,
                    }),
                    Err(e) => reply.error(e),
                }
            }
            O::Readdir(a) => self.readdir(
                begin(const { Op::new("readdir") }),
                cx,
                ino,
                a,
                false,
                reply,
            ),
            O::Readdirplus(a) => self.readdir(
                begin(const { Op::new("readdirplus") }),
                cx,
                ino,
                a,
                true,
                reply,
            ),
            O::Releasedir(a) => {
                core.releasedir(a.fh);
                reply.ok()
            }
            O::Fsyncdir(a) => {
                let sp = begin(FSYNCDIR);
                let datasync = a.fsync_flags & abi::FSYNC_FDATASYNC != 0;
                self.empty(sp, cx, core.fsyncdir(cx, ino, datasync), None, reply)
            }
            O::Getlk(a) => {
                // Only flock is negotiated; F_GETLK never reaches the daemon.
                reply.pod(&abi::LkOut {
                    lk: abi::FileLock {
                        typ: libc::F_UNLCK as u32,
                        ..a.lk
                    },
                })
            }
            O::Setlk { arg, sleep } => {
                self.setlk(begin(const { Op::new("setlk") }), req, arg, *sleep, reply)
            }
            O::Access { mask } => {
                let sp = begin(const { Op::new("access") });
                let r = core.access(cx, ino, *mask as i32, req.uid(), req.gid());
                self.empty(sp, cx, r, None, reply)
            }
            O::Create { arg, name } => self.create(
                begin(const { Op::new("create") }),
                cx,
                req,
                arg,
                name,
                reply,
            ),
            O::Fallocate(a) => {
                let sp = begin(FALLOCATE);
                let r = core.fallocate(cx, a.fh, a.offset, a.length, a.mode as i32);
                self.empty(sp, cx, r, Some(a.fh), reply)
            }
            O::Lseek(a) => {
                let sp = begin(const { Op::new("lseek") });
                let r = core.lseek(cx, a.fh, a.offset as i64, a.whence as i32);
                match self.fin(sp, cx, r, Some(a.fh), |_| 0) {
                    Ok(o) => reply.pod(&abi::LseekOut { offset: o as u64 }),
                    Err(e) => reply.error(e),
                }
            }
            // Answered by the session itself; never handed here.
            O::Forget { .. }
            | O::BatchForget { .. }
            | O::Interrupt { .. }
            | O::Init(_)
            | O::Destroy => reply.error(libc::ENOSYS),
        }
    }
}
