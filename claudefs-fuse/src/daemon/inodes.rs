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
//! everything below it. A name belongs to one inode at a time; an index
//! from name to inode, ordered by the names' bytes, finds an unlinked
//! name's inode and the names below a renamed directory without walking
//! the table.

use super::nummap::NumMap;
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::ops::Bound;
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

/// A name in the index, ordered by its bytes, so that the names below a
/// directory `d` are one range: from `d/` up to `d0` (`0` follows `/`).
/// The table's names are normalised (joined from single names), so byte
/// equality is path equality.
#[derive(Debug, Clone)]
struct Name(Arc<Path>);

impl Name {
    fn bytes(&self) -> &[u8] {
        bytes(&self.0)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
}

#[derive(Debug)]
struct Inner {
    nodes: NumMap<u64, Node>,
    /// The inode each name in `nodes` is of.
    by_path: BTreeMap<Name, u64>,
}

impl Inner {
    /// Gives `path` (already among `ino`'s names) to `ino` alone: an
    /// inode that had it loses it.
    fn index(&mut self, path: &Arc<Path>, ino: u64) {
        match self.by_path.insert(Name(path.clone()), ino) {
            Some(old) if old != ino => {
                if let Some(n) = self.nodes.get_mut(&old) {
                    n.paths.retain(|p| p != path);
                }
            }
            _ => {}
        }
    }

    /// Name `path` is gone: from the index and from its inode.
    fn drop_name(&mut self, path: &Path) {
        if let Some(ino) = self.by_path.remove(bytes(path)) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.paths.retain(|p| **p != *path);
            }
        }
    }

    /// `dir` and every name below it, with their inodes.
    fn below(&self, dir: &Path) -> Vec<(Arc<Path>, u64)> {
        let d = bytes(dir);
        let lo = [d, b"/"].concat();
        let hi = [d, b"0"].concat();
        let exact = self.by_path.get_key_value(d);
        exact
            .into_iter()
            .chain(
                self.by_path
                    .range::<[u8], _>((Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))),
            )
            .map(|(n, &ino)| (n.0.clone(), ino))
            .collect()
    }

    /// Renames names: each `(old, new, ino)` moves `ino`'s name `old` to
    /// `new`, index included.
    fn apply_moves(&mut self, moves: &[(Arc<Path>, Arc<Path>, u64)]) {
        for (old, _, ino) in moves {
            if self.by_path.get(bytes(old)) == Some(ino) {
                self.by_path.remove(bytes(old));
            }
        }
        // Grouped by inode (a directory's rename moves many inodes, each
        // with a name or two).
        let mut by_ino: Vec<&(Arc<Path>, Arc<Path>, u64)> = moves.iter().collect();
        by_ino.sort_unstable_by_key(|m| m.2);
        for group in by_ino.chunk_by(|x, y| x.2 == y.2) {
            let Some(n) = self.nodes.get_mut(&group[0].2) else {
                continue;
            };
            // All at once: an exchange of two names of one inode swaps them.
            for p in n.paths.iter_mut() {
                if let Some((_, new, _)) = group.iter().find(|(o, _, _)| o == p) {
                    *p = new.clone();
                }
            }
            // Two names can become one (a stale name under the target).
            let mut seen: Vec<Arc<Path>> = Vec::with_capacity(n.paths.len());
            n.paths.retain(|p| {
                let dup = seen.contains(p);
                if !dup {
                    seen.push(p.clone());
                }
                !dup
            });
        }
        for (_, new, ino) in moves {
            if self.nodes.get(ino).is_some_and(|n| n.paths.contains(new)) {
                self.index(new, *ino);
            }
        }
    }
}

/// For each `(old, ino)`: `(old, new, ino)`, `new` being `old` with its
/// leading `from` replaced by `to`.
fn moves(names: Vec<(Arc<Path>, u64)>, from: &Path, to: &Path) -> Vec<(Arc<Path>, Arc<Path>, u64)> {
    names
        .into_iter()
        .filter_map(|(old, ino)| {
            let new: Arc<Path> = rejoin(to, old.strip_prefix(from).ok()?).into();
            Some((old, new, ino))
        })
        .collect()
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
        let root: Arc<Path> = Arc::from(Path::new(""));
        let mut nodes = NumMap::default();
        nodes.insert(
            ROOT_INO,
            Node {
                paths: vec![root.clone()],
                lookups: 1,
            },
        );
        let by_path = BTreeMap::from([(Name(root), ROOT_INO)]);
        Self {
            root_backing,
            inner: RwLock::new(Inner { nodes, by_path }),
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
        node.lookups = node.lookups.saturating_add(1);
        let changed = (ino != ROOT_INO || node.paths.is_empty())
            && node.paths.first().is_none_or(|p| **p != *path);
        if changed {
            node.paths.retain(|p| **p != *path);
            let name: Arc<Path> = Arc::from(path);
            node.paths.insert(0, name.clone());
            inner.index(&name, ino);
        }
        (ino, changed)
    }

    /// A node the kernel knew before a restart, at `path` (see
    /// [`RESTORED_LOOKUPS`]); a node already known is left as it is.
    pub fn restore(&self, ino: u64, path: &Path) {
        if ino == ROOT_INO {
            return;
        }
        let mut inner = self.write();
        if inner.nodes.contains_key(&ino) {
            return;
        }
        let name: Arc<Path> = Arc::from(path);
        inner.nodes.insert(
            ino,
            Node {
                paths: vec![name.clone()],
                lookups: RESTORED_LOOKUPS,
            },
        );
        inner.index(&name, ino);
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
                if let Some(gone) = inner.nodes.remove(&ino) {
                    for p in &gone.paths {
                        if inner.by_path.get(bytes(p)) == Some(&ino) {
                            inner.by_path.remove(bytes(p));
                        }
                    }
                }
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
        self.write().drop_name(rel);
    }

    /// `from` was renamed to `to`: rewrite it and everything below it.
    pub fn renamed(&self, from: &Path, to: &Path) {
        if from.as_os_str().is_empty() || from == to {
            return;
        }
        let mut inner = self.write();
        inner.drop_name(to);
        let m = moves(inner.below(from), from, to);
        inner.apply_moves(&m);
    }

    /// `a` and `b` were exchanged.
    pub fn exchanged(&self, a: &Path, b: &Path) {
        // The kernel refuses to exchange a directory with one below it.
        if a.starts_with(b) || b.starts_with(a) {
            return;
        }
        let mut inner = self.write();
        let mut m = moves(inner.below(a), a, b);
        m.extend(moves(inner.below(b), b, a));
        inner.apply_moves(&m);
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

    /// The table as it was before the name index: every operation walks
    /// all nodes. A name still belongs to one inode at a time.
    #[derive(Default)]
    struct Walking {
        nodes: std::collections::BTreeMap<u64, (Vec<PathBuf>, u64)>,
    }

    impl Walking {
        fn take_name(&mut self, path: &Path) {
            for (paths, _) in self.nodes.values_mut() {
                paths.retain(|p| p != path);
            }
        }

        fn remember(&mut self, ino: u64, path: &Path) {
            let (paths, _) = self.nodes.get(&ino).cloned().unwrap_or_default();
            if paths.first().map(PathBuf::as_path) != Some(path) {
                self.take_name(path);
            }
            let node = self.nodes.entry(ino).or_default();
            if node.0.first().map(PathBuf::as_path) != Some(path) {
                node.0.insert(0, path.to_path_buf());
            }
            node.1 += 1;
        }

        fn forget(&mut self, ino: u64, n: u64) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.1 = node.1.saturating_sub(n);
                if node.1 == 0 {
                    self.nodes.remove(&ino);
                }
            }
        }

        fn renamed(&mut self, from: &Path, to: &Path) {
            if from.as_os_str().is_empty() || from == to {
                return;
            }
            self.take_name(to);
            self.rewrite(|p| p.strip_prefix(from).ok().map(|rest| rejoin(to, rest)));
        }

        fn exchanged(&mut self, a: &Path, b: &Path) {
            if a.starts_with(b) || b.starts_with(a) {
                return;
            }
            self.rewrite(|p| {
                if let Ok(rest) = p.strip_prefix(a) {
                    Some(rejoin(b, rest))
                } else {
                    p.strip_prefix(b).ok().map(|rest| rejoin(a, rest))
                }
            });
        }

        /// Renames every name `moved` maps, the new names taken from any
        /// other inode that had them (an inode's own names merge, in
        /// place).
        fn rewrite(&mut self, moved: impl Fn(&Path) -> Option<PathBuf>) {
            let new: Vec<(PathBuf, u64)> = self
                .nodes
                .iter()
                .flat_map(|(&ino, (paths, _))| {
                    paths.iter().filter_map(|p| moved(p)).map(move |n| (n, ino))
                })
                .collect();
            for (&ino, (paths, _)) in self.nodes.iter_mut() {
                paths.retain(|p| {
                    moved(p).is_some() || !new.iter().any(|(n, i)| n == p && *i != ino)
                });
                let mut out: Vec<PathBuf> = Vec::new();
                for p in paths.iter() {
                    let p = moved(p).unwrap_or_else(|| p.clone());
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                *paths = out;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Remember(u64, usize),
        Forget(u64, u64),
        Unlinked(usize),
        Renamed(usize, usize),
        Exchanged(usize, usize),
    }

    const NAMES: [&str; 11] = [
        "a", "b", "a/x", "a/y", "b/x", "c", "c/a", "ab", "a/x/z", "a0", "a.b",
    ];

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (10u64..16, 0..NAMES.len()).prop_map(|(i, n)| Step::Remember(i, n)),
            2 => (10u64..16, 1u64..3).prop_map(|(i, n)| Step::Forget(i, n)),
            2 => (0..NAMES.len()).prop_map(Step::Unlinked),
            1 => (0..NAMES.len(), 0..NAMES.len()).prop_map(|(a, b)| Step::Renamed(a, b)),
            1 => (0..NAMES.len(), 0..NAMES.len()).prop_map(|(a, b)| Step::Exchanged(a, b)),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_name_index_agrees_with_walking_the_table(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let t = InodeTable::new(2);
            let mut m = Walking::default();
            for s in &steps {
                match *s {
                    Step::Remember(i, n) => {
                        t.remember(i, Path::new(NAMES[n]));
                        m.remember(i, Path::new(NAMES[n]));
                    }
                    Step::Forget(i, n) => {
                        t.forget(i, n);
                        m.forget(i, n);
                    }
                    Step::Unlinked(n) => {
                        t.unlinked(Path::new(NAMES[n]));
                        m.take_name(Path::new(NAMES[n]));
                    }
                    Step::Renamed(a, b) => {
                        t.renamed(Path::new(NAMES[a]), Path::new(NAMES[b]));
                        m.renamed(Path::new(NAMES[a]), Path::new(NAMES[b]));
                    }
                    Step::Exchanged(a, b) => {
                        t.exchanged(Path::new(NAMES[a]), Path::new(NAMES[b]));
                        m.exchanged(Path::new(NAMES[a]), Path::new(NAMES[b]));
                    }
                }
                for ino in 10..16 {
                    let want = m.nodes.get(&ino).and_then(|(p, _)| p.first().cloned());
                    let got = t.path(ino).map(|p| p.to_path_buf());
                    proptest::prop_assert_eq!(got, want, "inode {} after {:?}", ino, s);
                }
                proptest::prop_assert_eq!(t.len(), m.nodes.len() + 1);
                let inner = t.read();
                for (ino, node) in inner.nodes.iter() {
                    for p in &node.paths {
                        proptest::prop_assert_eq!(inner.by_path.get(bytes(p)), Some(ino));
                    }
                }
                let named: usize = inner.nodes.values().map(|n| n.paths.len()).sum();
                proptest::prop_assert_eq!(inner.by_path.len(), named);
            }
        }
    }
}
