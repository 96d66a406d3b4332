//! Read-only backing files kept open across opens (the idea of nfsd's
//! file cache): a plain `O_RDONLY` open of an inode reuses a backing fd
//! that is already open read-only for it, instead of a new `openat` and,
//! at release, a `close`. Reads are positional (`pread`), so handles can
//! share one fd; an open for writing, or with any other flag, always gets
//! its own fd (`ETXTBSY` and what a close of a writer does stay as they were).
//!
//! An entry holds its storage path's fd until:
//! - the kernel forgets the inode (FORGET; also what follows an unlink),
//! - no handle uses it and none opened it for [`IDLE_FOR`], or its path
//!   is no longer usable (checked by [`FdCache::sweep`], about once a
//!   second),
//! - more than [`MAX_ENTRIES`] are cached (the longest idle goes first),
//! - the daemon unmounts.
//!
//! Only on storage that does nothing at open and close (`Core::
//! close_to_open` false: local disks): an NFS-style client revalidates
//! its cache at open, so there every open goes to the storage.
//!
//! Keyed by the FUSE inode, which is the storage's `st_ino`, so an entry
//! always names the same file, whatever renames happen.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::nummap::NumMap;

/// Entries kept at most.
pub const MAX_ENTRIES: usize = 256;
/// An entry no handle uses and none opened for this long is closed.
pub const IDLE_FOR: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Entry {
    path: u64,
    fd: Arc<OwnedFd>,
    used: Instant,
}

/// The cache (see the module doc).
#[derive(Debug, Default)]
pub struct FdCache {
    map: Mutex<NumMap<u64, Entry>>,
}

/// Whether an open with these flags may share a cached read-only fd:
/// read-only, and no flag that changes what the fd does (flags like
/// `O_LARGEFILE`, whose value differs between architectures, do not).
pub fn shareable(flags: i32) -> bool {
    let changes = libc::O_DIRECT
        | libc::O_NOATIME
        | libc::O_TRUNC
        | libc::O_APPEND
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_PATH
        | libc::O_TMPFILE
        | libc::O_CREAT
        | libc::O_EXCL;
    flags & libc::O_ACCMODE == libc::O_RDONLY && flags & changes == 0
}

fn idle(e: &Entry) -> bool {
    Arc::strong_count(&e.fd) == 1
}

impl FdCache {
    fn lock(&self) -> MutexGuard<'_, NumMap<u64, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached read-only fd of `ino` and its path, if that path is
    /// still `usable`. (Entries leave the map under the lock but are
    /// closed after it: a close on a hung storage path may block, and must
    /// not hold up the opens of other files.)
    pub fn get(&self, ino: u64, usable: impl Fn(u64) -> bool) -> Option<(u64, Arc<OwnedFd>)> {
        let mut m = self.lock();
        let e = m.get_mut(&ino)?;
        if !usable(e.path) {
            let gone = m.remove(&ino);
            drop(m);
            drop(gone);
            return None;
        }
        e.used = Instant::now();
        Some((e.path, e.fd.clone()))
    }

    /// Caches `fd`, just opened read-only for `ino` on path `path`. When
    /// full, the longest idle entry makes room (none idle: not cached).
    pub fn put(&self, ino: u64, path: u64, fd: &Arc<OwnedFd>) {
        let mut m = self.lock();
        let mut gone = None;
        if m.len() >= MAX_ENTRIES && !m.contains_key(&ino) {
            let oldest = m
                .iter()
                .filter(|(_, e)| idle(e))
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => gone = m.remove(&k),
                None => return,
            }
        }
        let replaced = m.insert(
            ino,
            Entry {
                path,
                fd: fd.clone(),
                used: Instant::now(),
            },
        );
        drop(m);
        drop((gone, replaced));
    }

    /// The kernel forgot `ino`.
    pub fn forget(&self, ino: u64) {
        let gone = self.lock().remove(&ino);
        drop(gone);
    }

    /// Closes entries idle for [`IDLE_FOR`] at `now` and entries on paths
    /// that are not `usable` (in use ones stay with their handles).
    pub fn sweep(&self, now: Instant, usable: impl Fn(u64) -> bool) {
        let gone: Vec<Entry> = self
            .lock()
            .extract_if(|_, e| {
                let stale = idle(e) && now.saturating_duration_since(e.used) >= IDLE_FOR;
                stale || !usable(e.path)
            })
            .map(|(_, e)| e)
            .collect();
        drop(gone);
    }

    /// Number of cached fds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every cached fd (unmount).
    pub fn clear(&self) {
        let gone = std::mem::take(&mut *self.lock());
        drop(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(std::fs::File::open("/dev/null").unwrap().into())
    }

    #[test]
    fn only_plain_read_only_opens_share() {
        assert!(shareable(libc::O_RDONLY));
        assert!(shareable(libc::O_RDONLY | libc::O_LARGEFILE | 0o100000));
        assert!(!shareable(libc::O_WRONLY));
        assert!(!shareable(libc::O_RDWR));
        assert!(!shareable(libc::O_RDONLY | libc::O_DIRECT));
        assert!(!shareable(libc::O_RDONLY | libc::O_NOATIME));
        assert!(!shareable(libc::O_RDONLY | libc::O_TRUNC));
    }

    #[test]
    fn reuse_forget_and_unusable_paths() {
        let c = FdCache::default();
        let f = fd();
        c.put(7, 1, &f);
        let (path, got) = c.get(7, |_| true).unwrap();
        assert_eq!(path, 1);
        assert!(Arc::ptr_eq(&got, &f));
        c.forget(7);
        assert!(c.get(7, |_| true).is_none());
        c.put(8, 2, &f);
        assert!(
            c.get(8, |p| p != 2).is_none(),
            "a failed path's fd is not handed out"
        );
        assert!(c.is_empty());
    }

    #[test]
    fn sweep_closes_idle_and_keeps_those_in_use() {
        let c = FdCache::default();
        let busy = fd();
        c.put(1, 0, &busy);
        c.put(2, 0, &fd()); // idle: only the cache holds it
        c.sweep(Instant::now(), |_| true);
        assert_eq!(c.len(), 2, "nothing idle long enough yet");
        c.sweep(Instant::now() + IDLE_FOR, |_| true);
        assert_eq!(c.len(), 1);
        assert!(c.get(1, |_| true).is_some());
        c.sweep(Instant::now(), |p| p != 0);
        assert!(c.is_empty(), "unusable path: dropped even in use");
        assert_eq!(Arc::strong_count(&busy), 1, "the handle keeps its fd");
    }

    #[test]
    fn full_cache_evicts_the_longest_idle_or_skips() {
        let c = FdCache::default();
        let held: Vec<_> = (0..MAX_ENTRIES as u64)
            .map(|i| {
                let f = fd();
                c.put(i, 0, &f);
                f
            })
            .collect();
        c.put(9999, 0, &fd());
        assert!(c.get(9999, |_| true).is_none(), "all in use: not cached");
        drop(held);
        let _ = c.get(0, |_| true); // 0 is now the most recently used
        c.put(9999, 0, &fd());
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(c.get(9999, |_| true).is_some());
        assert!(c.get(0, |_| true).is_some());
        assert!(c.get(1, |_| true).is_none(), "the longest idle went");
    }
}
