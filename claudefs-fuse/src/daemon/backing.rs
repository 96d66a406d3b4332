//! Kernel passthrough backing files (`--passthrough`).
//!
//! Registering a storage file with the kernel (`FUSE_DEV_IOC_BACKING_OPEN`)
//! costs an ioctl and a kernel-side open, and closing it another ioctl. So
//! one registration serves every open handle of an inode with the same
//! access mode (the kernel does the I/O through the registered file, so an
//! `O_RDONLY` registration must never serve a writer), and it stays
//! registered after the last handle closes, in a bounded set of idle
//! entries (least recently used out first): an open/close loop registers
//! once.
//!
//! An idle entry is dropped when the kernel forgets its inode (which is
//! also what follows an unlink), when its storage path is no longer usable
//! (it is never handed out then; the daemon's sweeper drops it within
//! about a second), and at unmount.
//!
//! [`BackingCache`] is the bookkeeping (generic, tested without a kernel);
//! [`Passthrough`] is the daemon's use of it with the session's `BackingId`.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::session::BackingId;

use super::nummap::NumMap;
use super::ops::OpenFile;
use super::router::Router;

/// Idle registrations kept at most.
pub const IDLE_LIMIT: usize = 256;

/// `(inode, O_ACCMODE of the open flags)`.
type Key = (u64, i32);

#[derive(Debug)]
struct Entry<T> {
    id: Arc<T>,
    /// The storage path of the registered file.
    path: u64,
    /// Open handles using it.
    open: usize,
    /// When it was last handed out (a counter).
    used: u64,
}

/// The registrations, generic over the kernel's id type (the session's
/// `BackingId`, which unregisters on drop) so the bookkeeping is testable.
#[derive(Debug)]
pub struct BackingCache<T> {
    entries: NumMap<Key, Entry<T>>,
    by_fh: NumMap<u64, Key>,
    idle: usize,
    tick: u64,
    limit: usize,
}

impl<T> Default for BackingCache<T> {
    fn default() -> Self {
        Self::with_limit(IDLE_LIMIT)
    }
}

impl<T> BackingCache<T> {
    /// A cache keeping at most `limit` idle registrations.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            entries: NumMap::default(),
            by_fh: NumMap::default(),
            idle: 0,
            tick: 0,
            limit,
        }
    }

    /// The registration for handle `fh` of `ino` opened with `flags` on
    /// storage path `path`: a cached one if its path is still `usable`,
    /// else a new one from `register`.
    pub fn acquire<E>(
        &mut self,
        fh: u64,
        ino: u64,
        flags: i32,
        path: u64,
        usable: impl Fn(u64) -> bool,
        register: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let key = (ino, flags & libc::O_ACCMODE);
        self.tick += 1;
        if let Some(e) = self.entries.get(&key) {
            if e.open == 0 && !usable(e.path) {
                self.entries.remove(&key);
                self.idle -= 1;
            }
        }
        let id = match self.entries.get_mut(&key) {
            Some(e) => {
                if e.open == 0 {
                    self.idle -= 1;
                }
                e.open += 1;
                e.used = self.tick;
                e.id.clone()
            }
            None => {
                let id = Arc::new(register()?);
                self.entries.insert(
                    key,
                    Entry {
                        id: id.clone(),
                        path,
                        open: 1,
                        used: self.tick,
                    },
                );
                id
            }
        };
        self.by_fh.insert(fh, key);
        Ok(id)
    }

    /// Handle `fh` closed: its registration goes idle with its last handle.
    pub fn release(&mut self, fh: u64) {
        let Some(key) = self.by_fh.remove(&fh) else {
            return;
        };
        if let Some(e) = self.entries.get_mut(&key) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 {
                self.idle += 1;
                self.evict();
            }
        }
    }

    /// Drops the idle registrations past the limit, oldest first.
    fn evict(&mut self) {
        while self.idle > self.limit {
            let oldest = self
                .entries
                .iter()
                .filter(|(_, e)| e.open == 0)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.entries.remove(&k);
                    self.idle -= 1;
                }
                None => break,
            }
        }
    }

    /// The kernel forgot `ino`: its idle registrations go.
    pub fn forget(&mut self, ino: u64) {
        let before = self.entries.len();
        self.entries.retain(|k, e| k.0 != ino || e.open > 0);
        self.idle -= before - self.entries.len();
    }

    /// Drops every idle registration on a path that is not `usable`.
    pub fn drop_unusable(&mut self, usable: impl Fn(u64) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.open > 0 || usable(e.path));
        self.idle -= before - self.entries.len();
    }

    /// Drops everything (unmount).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_fh.clear();
        self.idle = 0;
    }

    /// (registrations, idle ones).
    pub fn counts(&self) -> (usize, usize) {
        (self.entries.len(), self.idle)
    }
}

/// The daemon's passthrough state: whether it is on (wanted with
/// `--passthrough` and granted by the kernel) and its registrations.
#[derive(Debug)]
pub struct Passthrough {
    on: AtomicBool,
    cache: Mutex<BackingCache<BackingId>>,
}

impl Passthrough {
    /// Passthrough as asked for by `--passthrough`.
    pub fn new(wanted: bool) -> Self {
        Self {
            on: AtomicBool::new(wanted),
            cache: Mutex::new(BackingCache::default()),
        }
    }

    fn cache(&self) -> MutexGuard<'_, BackingCache<BackingId>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether passthrough is (still) on.
    pub fn wanted(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The kernel does not offer it, or refused it: serve I/O in the daemon.
    pub fn turn_off(&self) {
        self.on.store(false, Ordering::Relaxed);
    }

    /// The registration for handle `fh` of `of` (shared per inode and
    /// access mode, cached when idle), made with `open` when needed; None
    /// when passthrough is off (or the kernel just refused it).
    pub fn registration(
        &self,
        fh: u64,
        of: &OpenFile,
        router: &Router,
        open: impl FnOnce(&dyn AsFd) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.wanted() {
            return None;
        }
        let (path, fd) = of.current();
        let r = self.cache().acquire(
            fh,
            of.ino,
            of.flags,
            path,
            |p| router.usable(p),
            || open(&fd.as_fd()),
        );
        match r {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(
                    "kernel refused FUSE passthrough ({e}); serving reads and writes in the daemon"
                );
                self.turn_off();
                None
            }
        }
    }

    /// Handle `fh` closed.
    pub fn released(&self, fh: u64) {
        self.cache().release(fh);
    }

    /// Drops the idle registrations on paths that failed (they hold files
    /// open there; called by the daemon's sweeper).
    pub fn sweep(&self, router: &Router) {
        self.cache().drop_unusable(|p| router.usable(p));
    }

    /// The kernel forgot inode `ino`.
    pub fn forget(&self, ino: u64) {
        self.cache().forget(ino);
    }

    /// Unmount: every registration goes.
    pub fn clear(&self) {
        self.cache().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn ok(n: &Cell<u32>) -> impl FnOnce() -> Result<u32, ()> + '_ {
        move || {
            n.set(n.get() + 1);
            Ok(n.get())
        }
    }

    #[test]
    fn an_open_close_loop_registers_once() {
        let n = Cell::new(0);
        let mut c = BackingCache::default();
        for fh in 0..100 {
            c.acquire(fh, 7, libc::O_RDONLY, 0, |_| true, ok(&n))
                .unwrap();
            c.release(fh);
        }
        assert_eq!(n.get(), 1);
        assert_eq!(c.counts(), (1, 1));
    }

    #[test]
    fn access_modes_do_not_share() {
        let n = Cell::new(0);
        let mut c = BackingCache::default();
        let r = c
            .acquire(1, 7, libc::O_RDONLY, 0, |_| true, ok(&n))
            .unwrap();
        let w = c
            .acquire(2, 7, libc::O_RDWR | libc::O_APPEND, 0, |_| true, ok(&n))
            .unwrap();
        let r2 = c
            .acquire(3, 7, libc::O_RDONLY | libc::O_NOATIME, 0, |_| true, ok(&n))
            .unwrap();
        assert_ne!(r, w);
        assert_eq!(r, r2);
        assert_eq!(n.get(), 2);
    }

    #[test]
    fn an_idle_entry_of_an_unusable_path_is_not_handed_out() {
        let n = Cell::new(0);
        let mut c = BackingCache::default();
        c.acquire(1, 7, libc::O_RDONLY, 0, |_| true, ok(&n))
            .unwrap();
        c.release(1);
        let id = c
            .acquire(2, 7, libc::O_RDONLY, 1, |p| p != 0, ok(&n))
            .unwrap();
        assert_eq!((*id, n.get()), (2, 2));
        c.release(2);
        c.drop_unusable(|p| p != 1);
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn an_entry_in_use_is_shared_even_if_its_path_failed() {
        // The kernel already does the I/O of the open handle through it.
        let n = Cell::new(0);
        let mut c = BackingCache::default();
        c.acquire(1, 7, libc::O_RDONLY, 0, |_| true, ok(&n))
            .unwrap();
        c.acquire(2, 7, libc::O_RDONLY, 1, |_| false, ok(&n))
            .unwrap();
        assert_eq!(n.get(), 1);
        c.drop_unusable(|_| false);
        assert_eq!(c.counts(), (1, 0));
    }

    #[test]
    fn idle_entries_are_bounded_oldest_out() {
        let n = Cell::new(0);
        let mut c = BackingCache::with_limit(2);
        for ino in 1..=3 {
            c.acquire(ino, ino, libc::O_RDONLY, 0, |_| true, ok(&n))
                .unwrap();
        }
        // Touch 1 again so that 2 is the oldest.
        c.acquire(10, 1, libc::O_RDONLY, 0, |_| true, ok(&n))
            .unwrap();
        c.release(10);
        for fh in 1..=3 {
            c.release(fh);
        }
        assert_eq!(c.counts(), (2, 2));
        let before = n.get();
        c.acquire(20, 1, libc::O_RDONLY, 0, |_| true, ok(&n))
            .unwrap();
        c.acquire(21, 3, libc::O_RDONLY, 0, |_| true, ok(&n))
            .unwrap();
        assert_eq!(n.get(), before, "1 and 3 stayed");
        c.acquire(22, 2, libc::O_RDONLY, 0, |_| true, ok(&n))
            .unwrap();
        assert_eq!(n.get(), before + 1, "2 was evicted");
    }

    #[test]
    fn forget_drops_idle_entries_of_the_inode() {
        let n = Cell::new(0);
        let mut c = BackingCache::default();
        c.acquire(1, 7, libc::O_RDONLY, 0, |_| true, ok(&n))
            .unwrap();
        c.acquire(2, 7, libc::O_WRONLY, 0, |_| true, ok(&n))
            .unwrap();
        c.release(1);
        c.forget(7);
        assert_eq!(c.counts(), (1, 0), "the one in use stays");
        c.release(2);
        c.forget(7);
        assert_eq!(c.counts(), (0, 0));
        c.release(99);
    }

    #[test]
    fn a_refused_registration_leaves_nothing() {
        let mut c: BackingCache<u32> = BackingCache::default();
        assert!(c
            .acquire(1, 7, libc::O_RDONLY, 0, |_| true, || Err("no"))
            .is_err());
        assert_eq!(c.counts(), (0, 0));
        c.release(1);
    }
}
