//! Whether the kernel may keep a file's cached pages when the file is
//! opened again (`FOPEN_KEEP_CACHE`): close-to-open, as an NFS client does.
//!
//! At every open the daemon fstats the storage file (after the open, which
//! is where an NFS-style storage client revalidates) and compares its
//! stamp (size, mtime, ctime) with the one recorded for the inode at the
//! previous open, or at the last close of a handle open for writing
//! through this mount (those writes went through the kernel's page cache,
//! so the cache holds them). Equal: nothing changed the file on the
//! storage in between, and the pages stay. Different (another client, or
//! a write on the storage directly): the kernel drops them. As with NFS,
//! a write by another client while this mount has the file open for
//! writing is not told apart from its own; concurrent writers from two
//! clients need locking on any close-to-open file system.
//!
//! Stamps go when the kernel forgets the inode (its pages go with it).

use std::sync::{Mutex, MutexGuard};

use super::nummap::NumMap;

/// Stamps kept at most; past this the table starts afresh (the next open
/// of each file then drops its pages once).
pub const MAX_STAMPS: usize = 1 << 16;

/// What identifies one state of a file's contents on the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(st: &libc::stat) -> Self {
        Self {
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// The stamps of the inodes opened through this mount.
#[derive(Debug, Default)]
pub struct PageStamps {
    map: Mutex<NumMap<u64, Stamp>>,
}

impl PageStamps {
    fn lock(&self) -> MutexGuard<'_, NumMap<u64, Stamp>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `ino` was opened and its storage file is now `st`: whether the
    /// kernel may keep the pages it has cached for it.
    pub fn opened(&self, ino: u64, st: &libc::stat) -> bool {
        let now = Stamp::of(st);
        let mut m = self.lock();
        if m.len() >= MAX_STAMPS && !m.contains_key(&ino) {
            m.clear();
        }
        m.insert(ino, now) == Some(now)
    }

    /// A handle of `ino` open for writing closed with the storage file at
    /// `st`: the kernel's pages hold what it wrote.
    pub fn wrote(&self, ino: u64, st: &libc::stat) {
        let mut m = self.lock();
        if m.len() < MAX_STAMPS || m.contains_key(&ino) {
            m.insert(ino, Stamp::of(st));
        }
    }

    /// The kernel forgot `ino`.
    pub fn forget(&self, ino: u64) {
        self.lock().remove(&ino);
    }

    /// Number of stamps kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no stamp is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(size: i64, mtime: i64, ctime: i64) -> libc::stat {
        // SAFETY: an all-zero stat is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_size = size;
        st.st_mtime = mtime;
        st.st_ctime = ctime;
        st
    }

    #[test]
    fn pages_stay_only_while_the_storage_file_is_unchanged() {
        let p = PageStamps::default();
        assert!(!p.opened(7, &st(10, 1, 1)), "first open: nothing known");
        assert!(p.opened(7, &st(10, 1, 1)));
        assert!(!p.opened(7, &st(10, 2, 2)), "rewritten, same size");
        assert!(p.opened(7, &st(10, 2, 2)));
        assert!(!p.opened(7, &st(10, 2, 3)), "ctime: metadata or data");
        assert!(!p.opened(7, &st(11, 2, 3)), "size");
        assert!(!p.opened(8, &st(11, 2, 3)), "another inode");
    }

    #[test]
    fn a_writers_close_through_the_mount_keeps_the_pages() {
        let p = PageStamps::default();
        assert!(!p.opened(7, &st(0, 1, 1)));
        p.wrote(7, &st(4096, 5, 5));
        assert!(p.opened(7, &st(4096, 5, 5)));
        p.forget(7);
        assert!(!p.opened(7, &st(4096, 5, 5)), "forgotten: pages gone");
    }

    #[test]
    fn a_full_table_starts_afresh() {
        let p = PageStamps::default();
        for ino in 0..MAX_STAMPS as u64 {
            p.opened(ino, &st(1, 1, 1));
        }
        assert_eq!(p.len(), MAX_STAMPS);
        assert!(p.opened(5, &st(1, 1, 1)), "a known inode is checked");
        assert!(!p.opened(u64::MAX, &st(1, 1, 1)));
        assert_eq!(p.len(), 1);
    }
}
