//! Stable inode numbers and the path of each inode the kernel knows.
//!
//! The FUSE inode number is the backing file's `st_ino`: every storage path
//! reaches the same storage, so the number is the same whichever path
//! answered, and it survives a daemon restart. Two numbers are swapped: the
//! storage root's `st_ino` shows as `FUSE_ROOT_ID` (1), and a backing file
//! whose `st_ino` happens to be 1 shows as the root's `st_ino`.
//!
//! Each inode keeps its path relative to the storage root (the most recent
//! name it was looked up under) and the kernel's lookup count; `forget`
//! drops it at zero. Renames rewrite the paths of the moved entry and of
//! everything below it.

use super::nummap::NumMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `base/rest` without the trailing `/` that `join("")` would add.
fn rejoin(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

/// The FUSE root inode.
pub const ROOT_INO: u64 = 1;

/// Lookup count of a node a restarted server got back from the journal:
/// the kernel's count is not journaled (it changes on every lookup), so
/// such a node stays until the mount ends instead of going at its last
/// FORGET.
pub const RESTORED_LOOKUPS: u64 = 1 << 48;

#[derive(Debug)]
struct Node {
    /// Known names, most recent first (several for hard links), shared
    /// with the requests that use them (no copy per request).
    paths: Vec<Arc<Path>>,
    lookups: u64,
}

#[derive(Debug)]
struct Inner {
    nodes: NumMap<u64, Node>,
}

/// Inode number <-> path table.
#[derive(Debug)]
pub struct InodeTable {
    root_backing: u64,
    inner: RwLock<Inner>,
}

impl InodeTable {
    /// A table whose root directory has backing `st_ino` `root_backing`.
    pub fn new(root_backing: u64) -> Self {
        let mut nodes = NumMap::default();
        nodes.insert(
            ROOT_INO,
            Node {
                paths: vec![Arc::from(Path::new(""))],
                lookups: 1,
            },
        );
        Self {
            root_backing,
            inner: RwLock::new(Inner { nodes }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// FUSE inode number of a backing `st_ino`.
    pub fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_backing {
            ROOT_INO
        } else if st_ino == ROOT_INO {
            self.root_backing
        } else {
            st_ino
        }
    }

    /// Path (relative to the storage root) of a known inode.
    pub fn path(&self, ino: u64) -> Option<Arc<Path>> {
        self.read()
            .nodes
            .get(&ino)
            .and_then(|n| n.paths.first().cloned())
    }

    /// Path of `name` inside directory `parent`.
    pub fn child_path(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        let inner = self.read();
        let p = inner.nodes.get(&parent)?.paths.first()?;
        Some(p.join(name))
    }

    /// Records one kernel lookup of `st_ino` at `path`; returns the FUSE ino.
    pub fn remember(&self, st_ino: u64, path: &Path) -> u64 {
        self.remember_noting(st_ino, path).0
    }

    /// [`Self::remember`], and whether the node is new or its first name
    /// changed (what the journal keeps).
    pub fn remember_noting(&self, st_ino: u64, path: &Path) -> (u64, bool) {
        let ino = self.fuse_ino(st_ino);
        let mut inner = self.write();
        let node = inner.nodes.entry(ino).or_insert_with(|| Node {
            paths: Vec::new(),
            lookups: 0,
        });
        let mut changed = false;
        if ino != ROOT_INO || node.paths.is_empty() {
            changed = node.paths.first().is_none_or(|p| **p != *path);
            node.paths.retain(|p| **p != *path);
            node.paths.insert(0, Arc::from(path));
        }
        node.lookups = node.lookups.saturating_add(1);
        (ino, changed)
    }

    /// A node the kernel knew before a restart, at `path` (see
    /// [`RESTORED_LOOKUPS`]); a node already known is left as it is.
    pub fn restore(&self, ino: u64, path: &Path) {
        if ino == ROOT_INO {
            return;
        }
        self.write().nodes.entry(ino).or_insert_with(|| Node {
            paths: vec![Arc::from(path)],
            lookups: RESTORED_LOOKUPS,
        });
    }

    /// The kernel dropped `n` lookups of `ino`; says whether it is gone.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let mut inner = self.write();
        if let Some(node) = inner.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                inner.nodes.remove(&ino);
                return true;
            }
        }
        false
    }

    /// Name `rel` was removed: forget it. An inode whose last name it was
    /// keeps its lookups but has no path (a file unlinked while open is
    /// reached through its open handles, see `Core::getattr`), so nothing
    /// finds it, or a file made later under the same name, by that name.
    pub fn unlinked(&self, rel: &Path) {
        let mut inner = self.write();
        for node in inner.nodes.values_mut() {
            node.paths.retain(|p| **p != *rel);
        }
    }

    /// `from` was renamed to `to`: rewrite it and everything below it.
    pub fn renamed(&self, from: &Path, to: &Path) {
        if from.as_os_str().is_empty() || from == to {
            return;
        }
        self.unlinked(to);
        let mut inner = self.write();
        for node in inner.nodes.values_mut() {
            for p in node.paths.iter_mut() {
                if let Ok(rest) = p.strip_prefix(from) {
                    *p = rejoin(to, rest).into();
                }
            }
        }
    }

    /// `a` and `b` were exchanged.
    pub fn exchanged(&self, a: &Path, b: &Path) {
        let mut inner = self.write();
        for node in inner.nodes.values_mut() {
            for p in node.paths.iter_mut() {
                if let Ok(rest) = p.strip_prefix(a) {
                    *p = rejoin(b, rest).into();
                } else if let Ok(rest) = p.strip_prefix(b) {
                    *p = rejoin(a, rest).into();
                }
            }
        }
    }

    /// Number of inodes held (root included).
    pub fn len(&self) -> usize {
        self.read().nodes.len()
    }

    /// Never true: the root is always held.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_one_are_swapped() {
        let t = InodeTable::new(2);
        assert_eq!(t.fuse_ino(2), ROOT_INO);
        assert_eq!(t.fuse_ino(1), 2);
        assert_eq!(t.fuse_ino(77), 77);
    }

    #[test]
    fn lookup_counts_and_forget() {
        let t = InodeTable::new(2);
        let i = t.remember(10, Path::new("a"));
        t.remember(10, Path::new("a"));
        t.forget(i, 1);
        assert_eq!(t.path(i), Some(Path::new("a").into()));
        t.forget(i, 1);
        assert_eq!(t.path(i), None);
        t.forget(ROOT_INO, 100);
        // Hard links: removing one name keeps the other.
        let h = t.remember(20, Path::new("x"));
        t.remember(20, Path::new("y"));
        t.unlinked(Path::new("y"));
        assert_eq!(t.path(h), Some(Path::new("x").into()));
        // The last name gone (unlinked while open): no path, still held.
        t.unlinked(Path::new("x"));
        assert_eq!(t.path(h), None);
        assert_eq!(t.len(), 2);
        t.remember(20, Path::new("z"));
        assert_eq!(t.path(h), Some(Path::new("z").into()));
        assert_eq!(t.path(ROOT_INO), Some(Path::new("").into()));
    }

    #[test]
    fn noting_says_when_the_journal_needs_a_record() {
        let t = InodeTable::new(2);
        assert_eq!(t.remember_noting(10, Path::new("a")), (10, true));
        assert_eq!(t.remember_noting(10, Path::new("a")), (10, false));
        assert_eq!(t.remember_noting(10, Path::new("b")), (10, true));
        assert_eq!(t.remember_noting(10, Path::new("b")), (10, false));
        assert!(!t.forget(10, 3));
        assert!(t.forget(10, 1));
        t.restore(11, Path::new("r"));
        assert_eq!(t.path(11), Some(Path::new("r").into()));
        assert!(!t.forget(11, 1000), "a restored node stays");
    }

    #[test]
    fn rename_moves_subtree() {
        let t = InodeTable::new(2);
        t.remember(10, Path::new("d"));
        t.remember(11, Path::new("d/x"));
        t.remember(12, Path::new("dx"));
        t.renamed(Path::new("d"), Path::new("e/f"));
        assert_eq!(t.path(10).unwrap().as_os_str(), "e/f");
        assert_eq!(t.path(11).unwrap(), Path::new("e/f/x").into());
        assert_eq!(t.path(12).unwrap(), Path::new("dx").into());
        t.exchanged(Path::new("e/f"), Path::new("dx"));
        assert_eq!(t.path(11).unwrap(), Path::new("dx/x").into());
        assert_eq!(t.path(12).unwrap(), Path::new("e/f").into());
        assert_eq!(t.path(12).unwrap().as_os_str(), "e/f");
        // Renamed over: the replaced file loses its name to the moved one.
        t.remember(13, Path::new("g"));
        t.renamed(Path::new("e/f"), Path::new("g"));
        assert_eq!(t.path(13), None);
        assert_eq!(t.path(12).unwrap(), Path::new("g").into());
        t.renamed(Path::new("g"), Path::new("g"));
        assert_eq!(t.path(12).unwrap(), Path::new("g").into());
    }
}
