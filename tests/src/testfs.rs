//! A small in-process FUSE file system for the end-to-end tests: a root
//! directory with a few fixed files, which counts every request it receives
//! per opcode (an independent cross-check of the probes), can delay
//! lookup/getattr or open of one chosen name, and serves flock(2) itself
//! (negotiating `FUSE_FLOCK_LOCKS`) or leaves it to the kernel.
//!
//! [`MountedFs`] mounts it in a temp dir and unmounts on drop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

/// FUSE opcode numbers (include/uapi/linux/fuse.h).
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const DESTROY: u32 = 38;
    pub const STATX: u32 = 52;
}

/// Contents of every file.
pub const CONTENT: &[u8] = b"hello from the claudefs test fs\n";
/// The file names in the root directory.
pub const FILES: [&str; 4] = ["a", "b", "lockfile", "slow"];

const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;
const F_RDLCK: i32 = libc::F_RDLCK;
const F_WRLCK: i32 = libc::F_WRLCK;
const F_UNLCK: i32 = libc::F_UNLCK;

/// How to build the file system.
#[derive(Debug, Clone, Default)]
pub struct TestFsOptions {
    /// Negotiate FUSE_FLOCK_LOCKS: flock(2) arrives as SETLK/SETLKW.
    pub flock_locks: bool,
    /// Sleep this long in lookup and getattr of these names.
    pub delays: Vec<(String, Duration)>,
    /// Sleep this long in open of this name (lookups stay fast).
    pub open_delay: Option<(String, Duration)>,
    /// Answer FLUSH (a close) of this name with this errno.
    pub flush_error: Option<(String, i32)>,
}

/// Requests received, per opcode: (count, replied with an error).
#[derive(Debug, Default)]
pub struct FsStats {
    counts: Mutex<BTreeMap<u32, (u64, u64)>>,
}

impl FsStats {
    fn count(&self, op: u32) {
        lock(&self.counts).entry(op).or_default().0 += 1;
    }

    fn error(&self, op: u32) {
        lock(&self.counts).entry(op).or_default().1 += 1;
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> BTreeMap<u32, (u64, u64)> {
        lock(&self.counts).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
struct Held {
    exclusive: Option<u64>,
    shared: HashSet<u64>,
}

impl Held {
    fn conflicts(&self, owner: u64, typ: i32) -> bool {
        let other_excl = self.exclusive.is_some_and(|o| o != owner);
        match typ {
            F_WRLCK => other_excl || self.shared.iter().any(|&o| o != owner),
            _ => other_excl,
        }
    }

    fn remove(&mut self, owner: u64) {
        if self.exclusive == Some(owner) {
            self.exclusive = None;
        }
        self.shared.remove(&owner);
    }

    fn grant(&mut self, owner: u64, typ: i32) {
        if typ == F_WRLCK {
            self.exclusive = Some(owner);
        } else {
            self.shared.insert(owner);
        }
    }
}

#[derive(Debug, Default)]
struct LockTable {
    held: Mutex<HashMap<u64, Held>>,
    changed: Condvar,
}

/// The file system.
#[derive(Debug)]
pub struct TestFs {
    opts: TestFsOptions,
    stats: Arc<FsStats>,
    locks: Arc<LockTable>,
}

fn ino_of(name: &OsStr) -> Option<u64> {
    FILES
        .iter()
        .position(|f| OsStr::new(f) == name)
        .map(|i| i as u64 + 2)
}

fn name_of(ino: u64) -> Option<&'static str> {
    FILES
        .get(usize::try_from(ino.checked_sub(2)?).ok()?)
        .copied()
}

fn attr(ino: u64) -> FileAttr {
    let dir = ino == ROOT;
    FileAttr {
        ino: INodeNo(ino),
        size: if dir { 0 } else { CONTENT.len() as u64 },
        blocks: 1,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl TestFs {
    pub fn new(opts: TestFsOptions) -> TestFs {
        TestFs {
            opts,
            stats: Arc::new(FsStats::default()),
            locks: Arc::new(LockTable::default()),
        }
    }

    pub fn stats(&self) -> Arc<FsStats> {
        self.stats.clone()
    }

    fn maybe_delay(&self, ino: u64) {
        let name = name_of(ino);
        if let Some((_, d)) = self
            .opts
            .delays
            .iter()
            .find(|(n, _)| Some(n.as_str()) == name)
        {
            std::thread::sleep(*d);
        }
    }

    fn exists(ino: u64) -> bool {
        ino == ROOT || name_of(ino).is_some()
    }
}

impl Filesystem for TestFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.opts.flock_locks {
            config
                .add_capabilities(InitFlags::FUSE_FLOCK_LOCKS)
                .map_err(|_| std::io::Error::other("kernel lacks FUSE_FLOCK_LOCKS"))?;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.stats.count(opcode::LOOKUP);
        match ino_of(name).filter(|_| parent.0 == ROOT) {
            Some(ino) => {
                self.maybe_delay(ino);
                reply.entry(&TTL, &attr(ino), Generation(0));
            }
            None => {
                self.stats.error(opcode::LOOKUP);
                reply.error(Errno::ENOENT);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.stats.count(opcode::GETATTR);
        if Self::exists(ino.0) {
            self.maybe_delay(ino.0);
            reply.attr(&TTL, &attr(ino.0));
        } else {
            self.stats.error(opcode::GETATTR);
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.stats.count(opcode::OPEN);
        if let Some((name, d)) = &self.opts.open_delay {
            if name_of(ino.0) == Some(name.as_str()) {
                std::thread::sleep(*d);
            }
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.stats.count(opcode::READ);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(CONTENT.len());
        let end = start.saturating_add(size as usize).min(CONTENT.len());
        reply.data(&CONTENT[start..end]);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.stats.count(opcode::FLUSH);
        match &self.opts.flush_error {
            Some((name, e)) if name_of(ino.0) == Some(name.as_str()) => {
                self.stats.error(opcode::FLUSH);
                reply.error(Errno::from_i32(*e));
            }
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.count(opcode::RELEASE);
        // FUSE_RELEASE_FLOCK_UNLOCK: the last close drops the flock.
        if let Some(owner) = lock_owner {
            let mut held = lock(&self.locks.held);
            if let Some(h) = held.get_mut(&ino.0) {
                h.remove(owner.0);
            }
            self.locks.changed.notify_all();
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.stats.count(opcode::OPENDIR);
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.stats.count(opcode::READDIR);
        let mut entries = vec![
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
        ];
        for (i, f) in FILES.iter().enumerate() {
            entries.push((i as u64 + 2, FileType::RegularFile, *f));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.stats.count(opcode::RELEASEDIR);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.count(opcode::FSYNCDIR);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.stats.count(opcode::STATFS);
        reply.statfs(0, 0, 0, 0, 0, 512, 255, 0);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        self.stats.count(opcode::GETXATTR);
        self.stats.error(opcode::GETXATTR);
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.stats.count(opcode::LISTXATTR);
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.stats.count(opcode::ACCESS);
        reply.ok();
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        self.stats.count(opcode::GETLK);
        reply.locked(0, 0, F_UNLCK, pid);
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let op = if sleep { opcode::SETLKW } else { opcode::SETLK };
        self.stats.count(op);
        let (ino, owner) = (ino.0, lock_owner.0);
        let mut held = lock(&self.locks.held);
        let h = held.entry(ino).or_default();
        // Linux flock semantics: a conversion drops the old lock first.
        h.remove(owner);
        self.locks.changed.notify_all();
        if typ == F_UNLCK || (typ != F_RDLCK && typ != F_WRLCK) {
            reply.ok();
            return;
        }
        if !h.conflicts(owner, typ) {
            h.grant(owner, typ);
            reply.ok();
            return;
        }
        if !sleep {
            self.stats.error(op);
            reply.error(Errno::EAGAIN);
            return;
        }
        drop(held);
        // Wait off the request loop, so the holder's unlock can arrive.
        let locks = self.locks.clone();
        std::thread::spawn(move || {
            let mut held = lock(&locks.held);
            loop {
                let h = held.entry(ino).or_default();
                if !h.conflicts(owner, typ) {
                    h.grant(owner, typ);
                    break;
                }
                held = locks.changed.wait(held).unwrap_or_else(|p| p.into_inner());
            }
            drop(held);
            reply.ok();
        });
    }
}

/// A mounted [`TestFs`] in its own temp dir; unmounted on drop.
pub struct MountedFs {
    /// Owns the temp dir (removed after unmount).
    _dir: tempfile::TempDir,
    pub mountpoint: PathBuf,
    /// Kernel `dev_t` of the FUSE connection (what the probes report).
    pub conn: u32,
    pub stats: Arc<FsStats>,
    session: Option<fuser::BackgroundSession>,
}

impl MountedFs {
    pub fn mount(opts: TestFsOptions) -> std::io::Result<MountedFs> {
        let dir = tempfile::Builder::new().prefix("claudefs-e2e-").tempdir()?;
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint)?;
        let fs = TestFs::new(opts);
        let stats = fs.stats();
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("claudefs-testfs".to_string()),
            MountOption::Subtype("claudefs-testfs".to_string()),
        ];
        config.n_threads = Some(2);
        let session = fuser::Session::new(fs, &mountpoint, &config)?.spawn()?;
        let conn = claudefs_fuse::probes::dev::kernel_dev_of_path(&mountpoint)?;
        Ok(MountedFs {
            _dir: dir,
            mountpoint,
            conn,
            stats,
            session: Some(session),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }
}

fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|mp| claudefs_fuse::probes::tracefs::unescape_mountinfo(mp) == want)
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
        if is_mounted(&self.mountpoint) {
            if let Ok(c) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
                // SAFETY: `c` is a valid NUL-terminated path for the call.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
