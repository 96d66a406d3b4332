//! The thin fuser boundary: each `Filesystem` method opens a span, calls
//! the core (`ops.rs`), locks (`locks.rs`), and replies with the value or
//! the errno. Every request gets exactly one reply; a panic in a handler is
//! caught (the dropped reply answers `EIO`) and never takes a worker down.
//! Each storage request passes the reader hand-off (`readers`).

use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::backing::Passthrough;
use super::locks::Locks;
use super::ops::{Core, OpenFile};
use super::readers::Readers;
use super::spans::{Op, ReqSpan, Spans};
use super::storage::SysResult;

/// Attribute and entry cache time.
const TTL: Duration = Duration::from_secs(1);

/// The `fuser::Filesystem` of the daemon.
#[derive(Debug)]
pub struct Fs {
    pub core: Arc<Core>,
    pub locks: Arc<Locks>,
    pub spans: Arc<Spans>,
    /// Kernel passthrough of open files (see `backing`).
    pub passthrough: Arc<Passthrough>,
    /// Set when the kernel took FUSE_FLOCK_LOCKS.
    pub flock: Arc<AtomicBool>,
    /// Which worker reads the device (see `readers`).
    pub readers: Arc<Readers>,
}

const FSYNC: Op = Op::new("fsync");
const FSYNCDIR: Op = Op::new("fsyncdir");
const FALLOCATE: Op = Op::new("fallocate");
const FLUSH: Op = Op::new("flush");
/// Requests that may take long whatever the storage's latency. (A flush
/// is not one: it is instant for most handles, and one that writes back
/// a storage cache for long is caught by the stalled-reader watch.)
const MAY_BLOCK: [Op; 3] = [FSYNC, FSYNCDIR, FALLOCATE];

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

/// Runs `f`, the handler of `op`, catching a panic (a dropped reply
/// answers `EIO`): for the requests that need no storage and no span.
fn guarded(op: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!(op, "request handler panicked");
    }
}

impl Fs {
    pub fn new(
        core: Arc<Core>,
        locks: Arc<Locks>,
        spans: Arc<Spans>,
        readers: Arc<Readers>,
        passthrough: bool,
    ) -> Self {
        Self {
            core,
            locks,
            spans,
            passthrough: Arc::new(Passthrough::new(passthrough)),
            flock: Arc::new(AtomicBool::new(false)),
            readers,
        }
    }

    /// Open flags of a reply for `of`: `FOPEN_NOFLUSH` unless its closes
    /// are to reach the storage (see `Core::flushes`), `FOPEN_KEEP_CACHE`
    /// while the storage file is unchanged (see `pagecache`; not with
    /// `passthrough`, where the kernel reads the backing file and refuses
    /// the open's cache mode).
    fn fopen(&self, of: &OpenFile, passthrough: bool) -> FopenFlags {
        let mut f = FopenFlags::empty();
        if !self.core.flushes(of) {
            f |= FopenFlags::FOPEN_NOFLUSH;
        }
        if of.keep_cache && !passthrough {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        f
    }

    /// Serves request `op` on `ino` with `f` (which replies), given the
    /// request's span: the reader hand-off around it (see `readers`: fsync,
    /// fsyncdir and fallocate may block, and every request while a storage
    /// path is slow) and a panic guard.
    fn serve(&self, op: Op, req: &Request, ino: u64, f: impl FnOnce(Option<ReqSpan>)) {
        let may_block = MAY_BLOCK.contains(&op) || self.core.router.slow();
        let _serving = self.readers.enter(may_block);
        let spans = &self.spans;
        let served = catch_unwind(AssertUnwindSafe(|| {
            f(spans.begin(op, req.unique().0, ino, req.uid(), req.pid()));
        }));
        if served.is_err() {
            tracing::error!(op = op.name(), "request handler panicked; replied EIO");
        }
    }

    /// Ends the span of a request answered with success or an errno, and
    /// sends that answer.
    fn answer_empty(
        &self,
        sp: Option<ReqSpan>,
        r: SysResult<()>,
        fh: Option<u64>,
        reply: ReplyEmpty,
    ) {
        match self.fin(sp, r, fh, |_| 0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Ends the span of a request answered with a directory entry (or an
    /// errno), and sends that answer.
    fn answer_entry(&self, sp: Option<ReqSpan>, r: SysResult<FileAttr>, reply: ReplyEntry) {
        match self.fin(sp, r, None, |_| 0) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn fin<T>(
        &self,
        sp: Option<ReqSpan>,
        r: SysResult<T>,
        fh: Option<u64>,
        bytes: impl Fn(&T) -> u64,
    ) -> Result<T, Errno> {
        match r {
            Ok(v) => {
                let b = bytes(&v);
                self.spans
                    .end(sp, fh, if b > 0 { Some(b) } else { None }, None);
                Ok(v)
            }
            Err(e) => {
                self.spans.end(sp, fh, None, Some(e));
                Err(err(e))
            }
        }
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        match config.add_capabilities(InitFlags::FUSE_FLOCK_LOCKS) {
            Ok(()) => self.flock.store(true, Ordering::Relaxed),
            Err(_) => tracing::warn!(
                "kernel lacks FUSE_FLOCK_LOCKS: flock is served by the kernel locally"
            ),
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if self.passthrough.wanted() {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !ok {
                tracing::warn!("kernel does not offer FUSE passthrough; --passthrough ignored");
                self.passthrough.turn_off();
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.locks.shutdown();
        self.passthrough.clear();
        self.core.fds.clear();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.serve(const { Op::new("lookup") }, req, parent.0, |sp| {
            self.answer_entry(sp, self.core.lookup(parent.0, name), reply)
        })
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        guarded("forget", || {
            self.core.forget(ino.0, nlookup);
            // The kernel evicted the inode (FORGET comes once, at eviction).
            self.passthrough.forget(ino.0);
            self.core.fds.forget(ino.0);
            self.core.pages.forget(ino.0);
        })
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve(const { Op::new("getattr") }, req, ino.0, |sp| {
            let fh = fh.map(|f| f.0);
            match self.fin(sp, self.core.getattr(ino.0, fh), fh, |_| 0) {
                Ok(a) => reply.attr(&TTL, &a),
                Err(e) => reply.error(e),
            }
        })
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.serve(const { Op::new("setattr") }, req, ino.0, |sp| {
            let fh = fh.map(|f| f.0);
            let r = self
                .core
                .setattr(ino.0, fh, mode, uid, gid, size, atime, mtime);
            match self.fin(sp, r, fh, |_| 0) {
                Ok(a) => reply.attr(&TTL, &a),
                Err(e) => reply.error(e),
            }
        })
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve(const { Op::new("readlink") }, req, ino.0, |sp| {
            match self.fin(sp, self.core.readlink(ino.0), None, |v| v.len() as u64) {
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(e),
            }
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.serve(const { Op::new("mknod") }, req, parent.0, |sp| {
            let r = self
                .core
                .mknod(parent.0, name, mode, rdev, req.uid(), req.gid());
            self.answer_entry(sp, r, reply)
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.serve(const { Op::new("mkdir") }, req, parent.0, |sp| {
            let r = self.core.mkdir(parent.0, name, mode, req.uid(), req.gid());
            self.answer_entry(sp, r, reply)
        })
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(const { Op::new("unlink") }, req, parent.0, |sp| {
            self.answer_empty(sp, self.core.unlink(parent.0, name, false), None, reply)
        })
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(const { Op::new("rmdir") }, req, parent.0, |sp| {
            self.answer_empty(sp, self.core.unlink(parent.0, name, true), None, reply)
        })
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.serve(const { Op::new("symlink") }, req, parent.0, |sp| {
            let r = self
                .core
                .symlink(parent.0, link_name, target, req.uid(), req.gid());
            self.answer_entry(sp, r, reply)
        })
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.serve(const { Op::new("rename") }, req, parent.0, |sp| {
            let r = self
                .core
                .rename(parent.0, name, newparent.0, newname, flags.bits());
            self.answer_empty(sp, r, None, reply)
        })
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.serve(const { Op::new("link") }, req, ino.0, |sp| {
            self.answer_entry(sp, self.core.link(ino.0, newparent.0, newname), reply)
        })
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.serve(const { Op::new("open") }, req, ino.0, |sp| {
            match self.core.open(ino.0, flags.0, req.pid()) {
                Ok((fh, of)) => {
                    self.spans.end(sp, Some(fh), None, None);
                    match self
                        .passthrough
                        .registration(fh, &of, &self.core.router, |fd| reply.open_backing(fd))
                    {
                        Some(id) => {
                            reply.opened_passthrough(FileHandle(fh), self.fopen(&of, true), &id)
                        }
                        None => reply.opened(FileHandle(fh), self.fopen(&of, false)),
                    }
                }
                Err(e) => {
                    self.spans.end(sp, None, None, Some(e));
                    reply.error(err(e))
                }
            }
        })
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.serve(const { Op::new("read") }, req, ino.0, |sp| {
            self.core.read_with(fh.0, offset, size, |r| {
                match self.fin(sp, r, Some(fh.0), |v| v.len() as u64) {
                    Ok(v) => reply.data(v),
                    Err(e) => reply.error(e),
                }
            })
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.serve(const { Op::new("write") }, req, ino.0, |sp| {
            match self.fin(sp, self.core.write(fh.0, offset, data), Some(fh.0), |n| {
                *n as u64
            }) {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(e),
            }
        })
    }

    /// A close of one descriptor of the file: the storage's close-time
    /// errors reach the application's close(2) (see `Core::flush`).
    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.serve(FLUSH, req, ino.0, |sp| {
            self.answer_empty(sp, self.core.flush(fh.0), Some(fh.0), reply)
        })
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(const { Op::new("release") }, req, ino.0, |sp| {
            if let Some(owner) = lock_owner {
                self.locks.release_owner(ino.0, owner.0);
            }
            self.core.release(fh.0);
            self.passthrough.released(fh.0);
            self.spans.end(sp, Some(fh.0), None, None);
            reply.ok()
        })
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(FSYNC, req, ino.0, |sp| {
            self.answer_empty(sp, self.core.fsync(fh.0, datasync), Some(fh.0), reply)
        })
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve(const { Op::new("opendir") }, req, ino.0, |sp| {
            match self.fin(sp, self.core.opendir(ino.0), None, |_| 0) {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        })
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.serve(const { Op::new("readdir") }, req, ino.0, |sp| {
            match self.fin(
                sp,
                self.core.readdir(ino.0, fh.0, offset),
                Some(fh.0),
                |_| 0,
            ) {
                Ok(entries) => {
                    for (off, e) in entries {
                        if reply.add(INodeNo(e.ino), off, e.kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(e),
            }
        })
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.serve(
            const { Op::new("readdirplus") },
            req,
            ino.0,
            |sp| match self.fin(
                sp,
                self.core.readdir(ino.0, fh.0, offset),
                Some(fh.0),
                |_| 0,
            ) {
                Ok(entries) => {
                    for (off, e) in entries {
                        if e.name == "." || e.name == ".." {
                            continue;
                        }
                        let Ok(attr) = self.core.entry_plus(ino.0, &e.name) else {
                            continue;
                        };
                        if reply.add(attr.ino, off, &e.name, &TTL, &attr, Generation(0)) {
                            self.core.forget(attr.ino.0, 1);
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(e),
            },
        )
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded("releasedir", || {
            self.core.releasedir(fh.0);
            reply.ok();
        })
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(FSYNCDIR, req, ino.0, |sp| {
            self.answer_empty(sp, self.core.fsyncdir(ino.0, datasync), None, reply)
        })
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.serve(const { Op::new("statfs") }, req, ino.0, |sp| {
            match self.fin(sp, self.core.statfs(), None, |_| 0) {
                Ok(s) => reply.statfs(
                    s.f_blocks,
                    s.f_bfree,
                    s.f_bavail,
                    s.f_files,
                    s.f_ffree,
                    s.f_bsize as u32,
                    s.f_namemax as u32,
                    s.f_frsize as u32,
                ),
                Err(e) => reply.error(e),
            }
        })
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.serve(const { Op::new("setxattr") }, req, ino.0, |sp| {
            self.answer_empty(
                sp,
                self.core.setxattr(ino.0, name, value, flags),
                None,
                reply,
            )
        })
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.serve(const { Op::new("getxattr") }, req, ino.0, |sp| {
            match self.fin(sp, self.core.getxattr(ino.0, name, size), None, |v| {
                v.0 as u64
            }) {
                Ok((n, _)) if size == 0 => reply.size(n as u32),
                Ok((_, v)) => reply.data(&v),
                Err(e) => reply.error(e),
            }
        })
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.serve(
            const { Op::new("listxattr") },
            req,
            ino.0,
            |sp| match self.fin(sp, self.core.listxattr(ino.0, size), None, |v| v.0 as u64) {
                Ok((n, _)) if size == 0 => reply.size(n as u32),
                Ok((_, v)) => reply.data(&v),
                Err(e) => reply.error(e),
            },
        )
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(const { Op::new("removexattr") }, req, ino.0, |sp| {
            self.answer_empty(sp, self.core.removexattr(ino.0, name), None, reply)
        })
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.serve(const { Op::new("access") }, req, ino.0, |sp| {
            self.answer_empty(
                sp,
                self.core.access(ino.0, mask.bits(), req.uid(), req.gid()),
                None,
                reply,
            )
        })
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.serve(
            const { Op::new("create") },
            req,
            parent.0,
            |sp| match self.core.create(
                parent.0,
                name,
                mode,
                flags,
                req.uid(),
                req.gid(),
                req.pid(),
            ) {
                Ok((attr, fh, of)) => {
                    self.spans.end(sp, Some(fh), None, None);
                    match self
                        .passthrough
                        .registration(fh, &of, &self.core.router, |fd| reply.open_backing(fd))
                    {
                        Some(id) => reply.created_passthrough(
                            &TTL,
                            &attr,
                            Generation(0),
                            FileHandle(fh),
                            self.fopen(&of, true),
                            &id,
                        ),
                        None => reply.created(
                            &TTL,
                            &attr,
                            Generation(0),
                            FileHandle(fh),
                            self.fopen(&of, false),
                        ),
                    }
                }
                Err(e) => {
                    self.spans.end(sp, None, None, Some(e));
                    reply.error(err(e))
                }
            },
        )
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        start: u64,
        end: u64,
        _typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        // Only flock is negotiated; F_GETLK never reaches the daemon.
        reply.locked(start, end, libc::F_UNLCK, pid);
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(const { Op::new("setlk") }, req, ino.0, |sp| {
            // A parked request counts as answered here: its span is the
            // daemon's part (queueing it), its wait is in the flock metrics.
            // The span ends before the reply goes out, as for every request
            // (with `--ebpf` the kernel's end event then finds it).
            let outcome = self
                .locks
                .setlk(ino.0, lock_owner.0, pid, req.pid(), typ, sleep, reply);
            self.spans.end(sp, None, None, outcome.errno());
            outcome.send();
        })
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.serve(FALLOCATE, req, ino.0, |sp| {
            self.answer_empty(
                sp,
                self.core.fallocate(fh.0, offset, length, mode),
                Some(fh.0),
                reply,
            )
        })
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.serve(const { Op::new("lseek") }, req, ino.0, |sp| {
            match self.fin(sp, self.core.lseek(fh.0, offset, whence), Some(fh.0), |_| 0) {
                Ok(o) => reply.offset(o),
                Err(e) => reply.error(e),
            }
        })
    }
}
