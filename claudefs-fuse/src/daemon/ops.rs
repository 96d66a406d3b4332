//! The POSIX core of the daemon: every FUSE operation as a plain method
//! returning `SysResult<T>` (a positive errno on failure), testable without
//! mounting anything. `fs.rs` only turns these into FUSE answers. Each
//! method notes in its [`Served`] the storage path it was served on.
//!
//! Metadata operations resolve the inode's path (see `inodes.rs`) and run
//! as `*at()` calls on a storage path picked by the router. Open files keep
//! the fd of the path they were opened on; when that path turns sick they
//! are re-opened by path on another one (reads at once, writes only before
//! the write is issued — a write that may have happened is not replayed).
//! SETATTR lives in `ops_setattr.rs`.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use super::attr::{FileAttr, FileType, SetTime};

use super::fdcache::{self, FdCache};
use super::idmap::IdMap;
use super::inodes::InodeTable;
use super::journal::{IntentOp, Journal, Record};
use super::nummap::NumMap;
use super::pagecache::PageStamps;
use super::router::{is_path_error, Retry, Routed, Router};
use super::storage::{self, DirEntry, StorageRoot, SysResult};

/// Largest read buffer a worker thread keeps between reads.
const MAX_KEPT_READ_BUF: usize = 4 << 20;

thread_local! {
    /// Per-worker read buffer (see [`Core::read_with`]).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

mod names;
mod once;
mod restore;
mod xattr;

pub use once::CRASH_AFTER_ENV;

/// Flags that make an open non-idempotent (never replayed on another path).
const CREATE_FLAGS: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC;

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    /// FUSE inode.
    pub ino: u64,
    /// Open flags (as given by the kernel).
    pub flags: i32,
    /// Opening process.
    pub pid: u32,
    /// The kernel may keep its cached pages of the file (see `pagecache`).
    pub keep_cache: bool,
    cur: RwLock<(u64, Arc<OwnedFd>)>,
}

impl OpenFile {
    /// Open for writing (`O_WRONLY` or `O_RDWR`).
    pub fn writable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    /// (path id, fd) currently serving this file.
    pub fn current(&self) -> (u64, Arc<OwnedFd>) {
        let c = self.cur.read().unwrap_or_else(|p| p.into_inner());
        (c.0, c.1.clone())
    }
}

/// Attributes of a directory entry for readdir.
#[derive(Debug, Clone)]
pub struct ListEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: std::ffi::OsString,
}

/// The file-system core.
#[derive(Debug)]
pub struct Core {
    pub router: Arc<Router>,
    pub inodes: InodeTable,
    pub idmap: IdMap,
    pub journal: Option<Arc<Journal>>,
    files: RwLock<NumMap<u64, Arc<OpenFile>>>,
    /// Read-only backing fds shared by plain read-only opens.
    pub fds: FdCache,
    /// Storage file stamps at the last open (see `pagecache`).
    pub pages: PageStamps,
    dirs: Mutex<NumMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    /// The first handle of this server (those below are a previous one's).
    first_fh: AtomicU64,
    /// Resent requests found applied before a restart (see `ops/once.rs`).
    pub deduplicated: AtomicU64,
    /// The test hook of `ops/once.rs` (first server of a mount only).
    pub crash_after: Option<String>,
    /// A storage path's file system does work at open and close (NFS-style
    /// close-to-open consistency, see `StorageRoot::close_to_open`): every
    /// open reaches the storage (no shared read-only fds), and the closes
    /// of handles open for writing are passed on (FLUSH).
    pub close_to_open: bool,
}

/// The storage path a request was served on (the last routed call's), for
/// its span and the kernel join: what each `Core` method is given.
/// Also the kernel's id of the request (`unique`, 0 when there is none),
/// which a non-idempotent request is journaled under (see `ops/once.rs`).
#[derive(Debug, Default)]
pub struct Served {
    path: std::cell::Cell<Option<u64>>,
    unique: u64,
}

impl Served {
    /// The context of request `unique`.
    pub fn request(unique: u64) -> Self {
        Self {
            path: Default::default(),
            unique,
        }
    }

    /// The path, if the request reached one.
    pub fn path(&self) -> Option<u64> {
        self.path.get()
    }

    /// The request's `unique` (with the kernel's resend bit, if set).
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Notes the path of `r`; returns its result.
    pub fn note<T>(&self, r: Routed<T>) -> SysResult<T> {
        if r.path.is_some() {
            self.path.set(r.path);
        }
        r.result
    }
}

impl Core {
    /// A core over `router`'s paths.
    pub fn new(
        router: Arc<Router>,
        root_backing: u64,
        idmap: IdMap,
        journal: Option<Journal>,
    ) -> Self {
        let close_to_open =
            (0..router.len() as u64).any(|i| router.root(i).is_none_or(|r| r.close_to_open()));
        Self {
            close_to_open,
            router,
            inodes: InodeTable::new(root_backing),
            idmap,
            journal: journal.map(Arc::new),
            files: RwLock::new(NumMap::default()),
            fds: FdCache::default(),
            pages: PageStamps::default(),
            dirs: Mutex::new(NumMap::default()),
            next_fh: AtomicU64::new(1),
            first_fh: AtomicU64::new(1),
            deduplicated: AtomicU64::new(0),
            crash_after: None,
        }
    }

    /// FUSE attributes (ids mapped host -> local) of a backing `stat`.
    pub fn attr(&self, st: &libc::stat) -> FileAttr {
        FileAttr::from_stat(
            st,
            self.inodes.fuse_ino(st.st_ino),
            self.idmap.uid_to_local(st.st_uid),
            self.idmap.gid_to_local(st.st_gid),
        )
    }

    fn path(&self, ino: u64) -> SysResult<Arc<Path>> {
        self.inodes.path(ino).ok_or(libc::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> SysResult<PathBuf> {
        let b = name.as_encoded_bytes();
        // `.`/`..` would name the parent or leave the storage root.
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(libc::EINVAL);
        }
        self.inodes.child_path(parent, name).ok_or(libc::ENOENT)
    }

    /// Stats `rel` and records a kernel lookup of it.
    fn entry_at(&self, root: &StorageRoot, rel: &Path) -> SysResult<FileAttr> {
        let st = root.stat(rel)?;
        self.remember(root, st.st_ino, rel);
        Ok(self.attr(&st))
    }

    /// Gives a new node the caller's owner (mapped local -> host).
    fn own(&self, root: &StorageRoot, rel: &Path, uid: u32, gid: u32) -> SysResult<()> {
        let (Some(u), Some(g)) = (self.idmap.uid_to_host(uid), self.idmap.gid_to_host(gid)) else {
            return Ok(());
        };
        if u == 0 && g == 0 {
            return Ok(());
        }
        root.chown(rel, u, g)
    }

    pub fn lookup(&self, cx: &Served, parent: u64, name: &OsStr) -> SysResult<FileAttr> {
        let rel = self.child(parent, name)?;
        cx.note(
            self.router
                .run(Retry::Idempotent, |r| self.entry_at(r, &rel)),
        )
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if self.inodes.forget(ino, n) {
            self.journal(|| Record::Unnode { ino });
        }
    }

    /// Records a kernel lookup of `st_ino` at `rel` (on `root`), journaling
    /// a node that is new or has a new name, with its file handle.
    fn remember(&self, root: &StorageRoot, st_ino: u64, rel: &Path) -> u64 {
        let (ino, changed) = self.inodes.remember_noting(st_ino, rel);
        if changed && self.journal.is_some() {
            let h = super::filehandle::handle_of(root, rel);
            self.journal(|| Record::Node {
                ino,
                path: rel.to_string_lossy().into_owned(),
                h,
            });
        }
        ino
    }

    /// Journals the record `r` makes, if there is a journal.
    fn journal(&self, r: impl FnOnce() -> Record) {
        if let Some(j) = &self.journal {
            j.record(r());
        }
    }

    /// Attributes of `ino`: from handle `fh` when the kernel names one
    /// (`FUSE_GETATTR_FH`), else by the inode's name, else (a file that
    /// lost its last name while open: unlinked, or renamed over) from one
    /// of its open handles, as `fstat` on Linux answers (`st_nlink` 0).
    /// A name that now holds another file (its storage `st_ino` differs,
    /// say changed behind this mount) counts as gone.
    pub fn getattr(&self, cx: &Served, ino: u64, fh: Option<u64>) -> SysResult<FileAttr> {
        if let Some(of) = fh.and_then(|fh| self.file(fh).ok()) {
            if let Ok(st) = self.with_file(cx, &of, Retry::Idempotent, storage::fstat) {
                return Ok(self.attr(&st));
            }
        }
        let by_name = match self.inodes.path(ino) {
            Some(rel) => cx.note(self.router.run(Retry::Idempotent, |r| r.stat(&rel))),
            None => Err(libc::ENOENT),
        };
        let st = match by_name {
            Ok(st) if self.inodes.fuse_ino(st.st_ino) == ino => st,
            Ok(_) | Err(libc::ENOENT) => {
                let of = self.open_handle(ino, false).ok_or(libc::ENOENT)?;
                self.with_file(cx, &of, Retry::Idempotent, storage::fstat)?
            }
            Err(e) => return Err(e),
        };
        Ok(self.attr(&st))
    }

    /// An open handle of `ino`, one open for writing first when `writer`.
    fn open_handle(&self, ino: u64, writer: bool) -> Option<Arc<OpenFile>> {
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        let mut of_ino = files.values().filter(|of| of.ino == ino);
        if writer {
            if let Some(of) = of_ino.clone().find(|of| of.writable()) {
                return Some(of.clone());
            }
        }
        of_ino.next().cloned()
    }

    pub fn readlink(&self, cx: &Served, ino: u64) -> SysResult<Vec<u8>> {
        let rel = self.path(ino)?;
        cx.note(self.router.run(Retry::Idempotent, |r| r.readlink(&rel)))
    }

    /// Makes a handle for `ino` opened with `flags` by `pid`, served by
    /// `(path id, fd)`, and journals it.
    fn register(
        &self,
        ino: u64,
        flags: i32,
        pid: u32,
        (path_id, fd): (u64, Arc<OwnedFd>),
        rel: &Path,
        keep_cache: bool,
    ) -> (u64, Arc<OpenFile>) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let of = Arc::new(OpenFile {
            ino,
            flags,
            pid,
            keep_cache,
            cur: RwLock::new((path_id, fd)),
        });
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, of.clone());
        if let Some(j) = &self.journal {
            j.opened(fh, ino, pid, flags, rel);
        }
        (fh, of)
    }

    /// Opens `ino`; returns the handle and its open file. A plain
    /// read-only open shares a cached read-only fd (see `fdcache`), unless
    /// the storage keeps close-to-open consistency (every open reaches it).
    pub fn open(
        &self,
        cx: &Served,
        ino: u64,
        flags: i32,
        pid: u32,
    ) -> SysResult<(u64, Arc<OpenFile>)> {
        let rel = self.path(ino)?;
        let oflags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY);
        let shareable = !self.close_to_open && fdcache::shareable(oflags);
        if shareable {
            if let Some((path_id, fd)) = self.fds.get(ino, |p| self.router.usable(p)) {
                cx.path.set(Some(path_id));
                let keep = self.keep_cache(ino, &fd);
                return Ok(self.register(ino, oflags, pid, (path_id, fd), &rel, keep));
            }
        }
        let retry = if flags & CREATE_FLAGS != 0 {
            Retry::Once
        } else {
            Retry::Idempotent
        };
        let routed = self.router.run(retry, |r| r.open_at(&rel, oflags, 0));
        let path_id = routed.path.unwrap_or(0);
        let fd = Arc::new(cx.note(routed)?);
        if shareable {
            self.fds.put(ino, path_id, &fd);
        }
        let keep = self.keep_cache(ino, &fd);
        Ok(self.register(ino, oflags, pid, (path_id, fd), &rel, keep))
    }

    /// Creates and opens `name`.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        cx: &Served,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
        pid: u32,
    ) -> SysResult<(FileAttr, u64, Arc<OpenFile>)> {
        let rel = self.child(parent, name)?;
        let oflags = (flags | libc::O_CREAT) & !libc::O_NOCTTY;
        self.once(
            cx,
            IntentOp::Make,
            &rel,
            None,
            || {
                let routed = self.router.run(Retry::Once, |r| {
                    let fd = r.open_at(&rel, oflags, mode)?;
                    self.own(r, &rel, uid, gid)?;
                    let st = storage::fstat(fd.as_raw_fd())?;
                    self.remember(r, st.st_ino, &rel);
                    let attr = self.attr(&st);
                    self.pages.opened(attr.ino, &st);
                    Ok((fd, attr))
                });
                let path_id = routed.path.unwrap_or(0);
                let (fd, attr) = cx.note(routed)?;
                let (fh, of) = self.register(
                    attr.ino,
                    oflags & !CREATE_FLAGS,
                    pid,
                    (path_id, Arc::new(fd)),
                    &rel,
                    false,
                );
                Ok((attr, fh, of))
            },
            // Made before a restart: opened as it is now (no O_TRUNC).
            || {
                let attr = self.entry_of(cx, &rel)?;
                let (fh, of) = self.open(cx, attr.ino, oflags & !CREATE_FLAGS, pid)?;
                Ok((attr, fh, of))
            },
        )
    }

    /// Whether the kernel may keep its cached pages of `ino`, just opened
    /// on `fd` (see `pagecache`); not when the file cannot be stat'ed.
    fn keep_cache(&self, ino: u64, fd: &OwnedFd) -> bool {
        storage::fstat(fd.as_raw_fd()).is_ok_and(|st| self.pages.opened(ino, &st))
    }

    /// The open file of handle `fh`.
    pub fn file(&self, fh: u64) -> SysResult<Arc<OpenFile>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)
    }

    /// Re-opens `of` on a usable path other than `bad`.
    fn reopen(&self, cx: &Served, of: &OpenFile, bad: u64) -> SysResult<()> {
        let rel = self.path(of.ino)?;
        let flags = of.flags & !CREATE_FLAGS;
        let routed = self
            .router
            .run(Retry::Idempotent, |r| r.open_at(&rel, flags, 0));
        let path_id = routed.path.unwrap_or(bad);
        let fd = cx.note(routed)?;
        let mut cur = of.cur.write().unwrap_or_else(|p| p.into_inner());
        if cur.0 == bad {
            *cur = (path_id, Arc::new(fd));
        }
        tracing::info!(
            ino = of.ino,
            from = bad,
            to = path_id,
            "open file moved to another storage path"
        );
        Ok(())
    }

    /// Runs `f` on the open file's fd with failover (see module doc).
    pub fn with_file<T>(
        &self,
        cx: &Served,
        of: &OpenFile,
        retry: Retry,
        mut f: impl FnMut(RawFd) -> SysResult<T>,
    ) -> SysResult<T> {
        let attempts = self.router.len() + 1;
        let mut last = libc::EIO;
        for _ in 0..attempts {
            let (pid, fd) = of.current();
            if !self.router.usable(pid) {
                self.reopen(cx, of, pid)?;
                continue;
            }
            match cx.note(self.router.run_on(pid, |_| f(fd.as_raw_fd()))) {
                Err(e) if is_path_error(e) && retry == Retry::Idempotent => {
                    last = e;
                    self.reopen(cx, of, pid)?;
                }
                other => return other,
            }
        }
        Err(last)
    }

    pub fn read(&self, cx: &Served, fh: u64, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        self.read_with(cx, fh, offset, size, |r| r.map(<[u8]>::to_vec))
    }

    /// Reads into this thread's reusable buffer and hands the bytes (or
    /// the errno) to `f`: no allocation and no zeroing per read.
    pub fn read_with<R>(
        &self,
        cx: &Served,
        fh: u64,
        offset: u64,
        size: u32,
        f: impl FnOnce(SysResult<&[u8]>) -> R,
    ) -> R {
        let of = match self.file(fh) {
            Ok(of) => of,
            Err(e) => return f(Err(e)),
        };
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            let r = self.with_file(cx, &of, Retry::Idempotent, |fd| {
                storage::pread_into(fd, offset, size as usize, &mut buf)
            });
            let out = f(r.map(|n| &buf[..n]));
            if buf.capacity() > MAX_KEPT_READ_BUF {
                *buf = Vec::new();
            }
            out
        })
    }

    pub fn write(&self, cx: &Served, fh: u64, offset: u64, data: &[u8]) -> SysResult<usize> {
        let of = self.file(fh)?;
        if let Some(j) = &self.journal {
            j.wrote(fh, of.ino, offset, data.len() as u64);
        }
        self.with_file(cx, &of, Retry::Once, |fd| storage::pwrite(fd, offset, data))
    }

    pub fn fsync(&self, cx: &Served, fh: u64, datasync: bool) -> SysResult<()> {
        let of = self.file(fh)?;
        self.with_file(cx, &of, Retry::Once, |fd| storage::fsync(fd, datasync))?;
        if let Some(j) = &self.journal {
            j.synced(fh);
        }
        Ok(())
    }

    /// Whether the kernel is to pass on the closes of `of`'s descriptors
    /// (FLUSH): for a handle open for writing on storage that acts on
    /// close. Otherwise the open says `FOPEN_NOFLUSH`, which spares every
    /// close(2) a round trip to the daemon.
    pub fn flushes(&self, of: &OpenFile) -> bool {
        self.close_to_open && of.writable()
    }

    /// A close of a descriptor of handle `fh` (FLUSH): the storage's
    /// close-time errors for a handle open for writing; nothing to do for
    /// a read-only one (a kernel without `FOPEN_NOFLUSH` sends those too).
    /// Not replayed on another path.
    pub fn flush(&self, cx: &Served, fh: u64) -> SysResult<()> {
        let of = self.file(fh)?;
        if !of.writable() {
            return Ok(());
        }
        self.with_file(cx, &of, Retry::Once, storage::flush)
    }

    /// `fsync` of directory `ino` (its entries: creates, renames, unlinks).
    pub fn fsyncdir(&self, cx: &Served, ino: u64, datasync: bool) -> SysResult<()> {
        let rel = self.path(ino)?;
        cx.note(self.router.run(Retry::Idempotent, |r| {
            let fd = r.open_at(
                &rel,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                0,
            )?;
            storage::fsync(fd.as_raw_fd(), datasync)
        }))
    }

    /// Closes handle `fh`; returns the open file it was.
    /// A writer's close records the file's stamp (its writes are in the
    /// kernel's pages, see `pagecache`), when its path still answers.
    pub fn release(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let of = self
            .files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        if let Some(j) = &self.journal {
            j.closed(fh);
        }
        if let Some(of) = &of {
            let (path, fd) = of.current();
            if of.writable() && self.router.usable(path) {
                if let Ok(st) = storage::fstat(fd.as_raw_fd()) {
                    self.pages.wrote(of.ino, &st);
                }
            }
        }
        of
    }

    /// Number of open file handles.
    pub fn open_count(&self) -> usize {
        self.files.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn fallocate(
        &self,
        cx: &Served,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> SysResult<()> {
        let of = self.file(fh)?;
        self.with_file(cx, &of, Retry::Once, |fd| {
            storage::fallocate(fd, mode, offset, len)
        })
    }

    pub fn lseek(&self, cx: &Served, fh: u64, offset: i64, whence: i32) -> SysResult<i64> {
        let of = self.file(fh)?;
        self.with_file(cx, &of, Retry::Idempotent, |fd| {
            storage::lseek(fd, offset, whence)
        })
    }

    pub fn opendir(&self, cx: &Served, ino: u64) -> SysResult<u64> {
        let rel = self.path(ino)?;
        let entries = cx.note(self.router.run(Retry::Idempotent, |r| r.read_dir(&rel)))?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// Entries of an open directory from `offset` on (`.` and `..` first).
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> SysResult<Vec<(u64, ListEntry)>> {
        let known = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned();
        let entries = match known {
            Some(e) => e,
            // Opened by a previous server of the connection: listed again.
            None if fh < self.first_fh.load(Ordering::Relaxed) => {
                let rel = self.path(ino)?;
                let e = Arc::new(
                    self.router
                        .run(Retry::Idempotent, |r| r.read_dir(&rel))
                        .result?,
                );
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, e.clone());
                e
            }
            None => return Err(libc::EBADF),
        };
        let mut out = Vec::new();
        let dots = [
            (".", ino),
            (
                "..",
                if ino == super::inodes::ROOT_INO {
                    ino
                } else {
                    super::inodes::ROOT_INO
                },
            ),
        ];
        for (i, (n, dino)) in dots.iter().enumerate() {
            if (i as u64) >= offset {
                out.push((
                    i as u64 + 1,
                    ListEntry {
                        ino: *dino,
                        kind: FileType::Directory,
                        name: (*n).into(),
                    },
                ));
            }
        }
        for (i, e) in entries
            .iter()
            .enumerate()
            .skip((offset as usize).saturating_sub(2))
        {
            out.push((
                i as u64 + 3,
                ListEntry {
                    ino: self.inodes.fuse_ino(e.ino),
                    kind: FileType::from_dtype(e.dtype),
                    name: e.name.clone(),
                },
            ));
        }
        Ok(out)
    }

    /// Attributes of a directory entry for readdirplus (records a lookup).
    pub fn entry_plus(&self, cx: &Served, parent: u64, name: &OsStr) -> SysResult<FileAttr> {
        self.lookup(cx, parent, name)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    pub fn statfs(&self, cx: &Served) -> SysResult<libc::statvfs> {
        cx.note(self.router.run(Retry::Idempotent, |r| r.statfs()))
    }

    /// access(2) against the local (mapped) owner and mode.
    pub fn access(&self, cx: &Served, ino: u64, mask: i32, uid: u32, gid: u32) -> SysResult<()> {
        let attr = self.getattr(cx, ino, None)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        let perm = attr.perm as i32;
        let bits = if uid == 0 {
            let x = if perm & 0o111 != 0 || attr.kind == FileType::Directory {
                1
            } else {
                0
            };
            6 | x
        } else if uid == attr.uid {
            (perm >> 6) & 7
        } else if gid == attr.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if mask & !bits & 7 != 0 {
            Err(libc::EACCES)
        } else {
            Ok(())
        }
    }
}

mod setattr;

#[cfg(test)]
mod handle_tests;
#[cfg(test)]
mod reftest;
#[cfg(test)]
mod tests;
