//! Reference-model property test of [`Core`]: random sequences of
//! create/mkdir/open/write/read/truncate/rename/unlink/rmdir/stat/close,
//! over a small name space, applied to a core over one temporary directory
//! and to `std::fs` on a second one. After each step both must agree (the
//! same value, or the same errno); at the end the trees (names, kinds,
//! contents), as the core lists and reads them, must be equal.
//!
//! The core is driven as the kernel drives it: a model of the dentry cache
//! keeps the inode of every name looked up (moved on rename, dropped on
//! unlink), so operations reach the core by cached inode, not by a fresh
//! lookup, and the core's own bookkeeping of paths is what is tested. A
//! cached name may be evicted (FORGET of all its lookups), an unlinked
//! inode is forgotten at its last close, and at the end, with every handle
//! closed and every name forgotten, the core must hold the root alone.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use proptest::prelude::*;

use super::super::inodes::ROOT_INO;
use super::tests::Fixture;
use super::FileType;

/// The name space: one or two components from these.
const NAMES: [&str; 2] = ["a", "b"];

/// A path of the name space, as component indexes.
type P = Vec<usize>;

#[derive(Debug, Clone)]
enum Op {
    Create(P),
    Mkdir(P),
    Open { path: P, trunc: bool },
    Close(usize),
    Write { h: usize, off: u64, data: Vec<u8> },
    Read { h: usize, off: u64, len: u32 },
    Truncate(P, u64),
    FTruncate(usize, u64),
    Rename(P, P),
    Unlink(P),
    Rmdir(P),
    Stat(P),
    Forget(P),
}

/// What a step returned, on both sides alike.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Done,
    /// A handle operation with no handle open: nothing done.
    NoHandle,
    Bytes(Vec<u8>),
    /// Kind and, for a regular file, size.
    Attr(FileType, u64),
}

type Res = Result<Out, i32>;

fn path_strategy() -> impl Strategy<Value = P> {
    prop::collection::vec(0..NAMES.len(), 1..=2)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let h = 0..8usize;
    prop_oneof![
        4 => path_strategy().prop_map(Op::Create),
        3 => path_strategy().prop_map(Op::Mkdir),
        2 => (path_strategy(), any::<bool>()).prop_map(|(path, trunc)| Op::Open { path, trunc }),
        1 => h.clone().prop_map(Op::Close),
        3 => (h.clone(), 0..48u64, prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(h, off, data)| Op::Write { h, off, data }),
        2 => (h.clone(), 0..64u64, 0..32u32).prop_map(|(h, off, len)| Op::Read { h, off, len }),
        1 => (path_strategy(), 0..64u64).prop_map(|(p, s)| Op::Truncate(p, s)),
        1 => (h, 0..64u64).prop_map(|(h, s)| Op::FTruncate(h, s)),
        3 => (path_strategy(), path_strategy()).prop_map(|(a, b)| Op::Rename(a, b)),
        2 => path_strategy().prop_map(Op::Unlink),
        1 => path_strategy().prop_map(Op::Rmdir),
        2 => path_strategy().prop_map(Op::Stat),
        1 => path_strategy().prop_map(Op::Forget),
    ]
}

fn rel(p: &[usize]) -> String {
    p.iter().map(|i| NAMES[*i]).collect::<Vec<_>>().join("/")
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The kernel's side of the core: dentry cache, lookup counts, handles.
struct Kernel {
    f: Fixture,
    /// Name -> (inode, is a directory).
    dcache: BTreeMap<String, (u64, bool)>,
    nlookup: HashMap<u64, u64>,
    /// Open handles: (fh, inode).
    handles: Vec<(u64, u64)>,
}

impl Kernel {
    fn new() -> Self {
        Self {
            f: Fixture::new(),
            dcache: BTreeMap::new(),
            nlookup: HashMap::new(),
            handles: Vec::new(),
        }
    }

    /// An entry reply: one more lookup of `ino`, cached at `path`.
    fn entered(&mut self, path: String, ino: u64, dir: bool) {
        *self.nlookup.entry(ino).or_default() += 1;
        self.dcache.insert(path, (ino, dir));
    }

    /// Forgets `ino` when no name and no handle holds it any more.
    fn maybe_forget(&mut self, ino: u64) {
        let named = self.dcache.values().any(|(i, _)| *i == ino);
        let open = self.handles.iter().any(|(_, i)| *i == ino);
        if !named && !open {
            if let Some(n) = self.nlookup.remove(&ino) {
                self.f.core.forget(ino, n);
            }
        }
    }

    /// Drops `path` and everything below it from the dentry cache.
    fn drop_names(&mut self, path: &str) {
        let below = format!("{path}/");
        let gone: Vec<_> = self
            .dcache
            .keys()
            .filter(|k| *k == path || k.starts_with(&below))
            .cloned()
            .collect();
        for k in gone {
            if let Some((ino, _)) = self.dcache.remove(&k) {
                self.maybe_forget(ino);
            }
        }
    }

    /// Walks `p` as the VFS does: (inode, is dir) of the last component.
    fn walk(&mut self, p: &[usize]) -> Result<(u64, bool), i32> {
        let (mut ino, mut dir) = (ROOT_INO, true);
        for i in 0..p.len() {
            if !dir {
                return Err(libc::ENOTDIR);
            }
            let path = rel(&p[..=i]);
            if let Some(&(c, d)) = self.dcache.get(&path) {
                (ino, dir) = (c, d);
                continue;
            }
            let a = self
                .f
                .core
                .lookup(&self.f.cx, ino, OsStr::new(NAMES[p[i]]))?;
            dir = a.kind == FileType::Directory;
            ino = a.ino;
            self.entered(path, ino, dir);
        }
        Ok((ino, dir))
    }

    /// The parent directory's inode of `p`, and the last name.
    fn parent(&mut self, p: &[usize]) -> Result<(u64, &'static OsStr), i32> {
        let (ino, dir) = self.walk(&p[..p.len() - 1])?;
        if !dir {
            return Err(libc::ENOTDIR);
        }
        Ok((ino, OsStr::new(NAMES[p[p.len() - 1]])))
    }

    fn handle(&self, h: usize) -> Option<(usize, u64, u64)> {
        let n = self.handles.len();
        (n > 0).then(|| {
            let i = h % n;
            (i, self.handles[i].0, self.handles[i].1)
        })
    }

    fn apply(&mut self, op: &Op) -> Res {
        let (uid, gid) = (self.f.uid, self.f.gid);
        match op {
            Op::Create(p) => {
                let (parent, name) = self.parent(p)?;
                let r = self.f.core.create(
                    &self.f.cx,
                    parent,
                    name,
                    0o644,
                    libc::O_RDWR | libc::O_EXCL,
                    uid,
                    gid,
                    1,
                );
                r.map(|(attr, fh, _)| {
                    self.entered(rel(p), attr.ino, false);
                    self.handles.push((fh, attr.ino));
                    Out::Done
                })
            }
            Op::Mkdir(p) => {
                let (parent, name) = self.parent(p)?;
                let r = self.f.core.mkdir(&self.f.cx, parent, name, 0o755, uid, gid);
                r.map(|attr| {
                    self.entered(rel(p), attr.ino, true);
                    Out::Done
                })
            }
            Op::Open { path, trunc } => {
                let (ino, _) = self.walk(path)?;
                let flags = libc::O_RDWR | if *trunc { libc::O_TRUNC } else { 0 };
                self.f.core.open(&self.f.cx, ino, flags, 1).map(|(fh, _)| {
                    self.handles.push((fh, ino));
                    Out::Done
                })
            }
            Op::Close(h) => {
                let Some((i, fh, ino)) = self.handle(*h) else {
                    return Ok(Out::NoHandle);
                };
                self.handles.remove(i);
                assert!(self.f.core.release(fh).is_some(), "handle {fh} was open");
                self.maybe_forget(ino);
                Ok(Out::Done)
            }
            Op::Write { h, off, data } => {
                let Some((_, fh, _)) = self.handle(*h) else {
                    return Ok(Out::NoHandle);
                };
                self.f.core.write(&self.f.cx, fh, *off, data).map(|n| {
                    assert_eq!(n, data.len(), "short write");
                    Out::Done
                })
            }
            Op::Read { h, off, len } => {
                let Some((_, fh, _)) = self.handle(*h) else {
                    return Ok(Out::NoHandle);
                };
                self.f.core.read(&self.f.cx, fh, *off, *len).map(Out::Bytes)
            }
            Op::Truncate(p, size) => {
                let (ino, _) = self.walk(p)?;
                self.f.truncate(ino, None, *size).map(|_| Out::Done)
            }
            Op::FTruncate(h, size) => {
                let Some((_, fh, ino)) = self.handle(*h) else {
                    return Ok(Out::NoHandle);
                };
                self.f.truncate(ino, Some(fh), *size).map(|s| {
                    assert_eq!(s, *size, "attributes after ftruncate");
                    Out::Done
                })
            }
            Op::Rename(a, b) => {
                let (pa, na) = self.parent(a)?;
                let (pb, nb) = self.parent(b)?;
                self.f.core.rename(&self.f.cx, pa, na, pb, nb, 0).map(|()| {
                    self.renamed(&rel(a), &rel(b));
                    Out::Done
                })
            }
            Op::Unlink(p) | Op::Rmdir(p) => {
                let dir = matches!(op, Op::Rmdir(_));
                let (parent, name) = self.parent(p)?;
                self.f.core.unlink(&self.f.cx, parent, name, dir).map(|()| {
                    self.drop_names(&rel(p));
                    Out::Done
                })
            }
            Op::Stat(p) => {
                let (ino, _) = self.walk(p)?;
                self.f.core.getattr(&self.f.cx, ino, None).map(|a| {
                    assert_eq!(a.ino, ino, "getattr answers for its inode");
                    let size = if a.kind == FileType::RegularFile {
                        a.size
                    } else {
                        0
                    };
                    Out::Attr(a.kind, size)
                })
            }
            Op::Forget(p) => {
                let path = rel(p);
                let below = format!("{path}/");
                let leaf = !self.dcache.keys().any(|k| k.starts_with(&below));
                if let Some(&(ino, _)) = self.dcache.get(&path) {
                    let open = self.handles.iter().any(|(_, i)| *i == ino);
                    if leaf && !open {
                        self.dcache.remove(&path);
                        self.maybe_forget(ino);
                    }
                }
                Ok(Out::Done)
            }
        }
    }

    /// A rename succeeded: the target's names go, the source's move.
    fn renamed(&mut self, from: &str, to: &str) {
        if from == to {
            return;
        }
        let moved: Vec<_> = self
            .dcache
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(from)?;
                (rest.is_empty() || rest.starts_with('/'))
                    .then(|| (k.clone(), rest.to_string(), *v))
            })
            .collect();
        for (k, _, _) in &moved {
            self.dcache.remove(k);
        }
        self.drop_names(to);
        for (_, rest, v) in moved {
            self.dcache.insert(format!("{to}{rest}"), v);
        }
    }

    /// The tree as the core lists and reads it: path -> contents (None: a directory).
    fn tree(&mut self) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(ROOT_INO, String::new())];
        let (core, cx) = (&self.f.core, &self.f.cx);
        while let Some((dir, prefix)) = todo.pop() {
            let fh = core.opendir(cx, dir).expect("opendir");
            for (_, e) in core.readdir(dir, fh, 2).expect("readdir") {
                let name = e.name.to_str().expect("utf-8 name").to_string();
                let path = format!("{prefix}{name}");
                let a = core
                    .lookup(cx, dir, &e.name)
                    .expect("lookup of a listed name");
                assert_eq!(
                    (a.ino, a.kind),
                    (e.ino, e.kind),
                    "readdir agrees with lookup"
                );
                *self.nlookup.entry(a.ino).or_default() += 1;
                self.dcache
                    .insert(path.clone(), (a.ino, a.kind == FileType::Directory));
                if a.kind == FileType::Directory {
                    todo.push((a.ino, format!("{path}/")));
                    out.insert(path, None);
                } else {
                    let (rfh, _) = core.open(cx, a.ino, libc::O_RDONLY, 1).expect("open");
                    let data = core.read(cx, rfh, 0, a.size as u32 + 1).expect("read");
                    assert_eq!(data.len() as u64, a.size, "{path}: size and contents agree");
                    core.release(rfh);
                    out.insert(path, Some(data));
                }
            }
            core.releasedir(fh);
        }
        out
    }

    /// Closes every handle and evicts every name, deepest first.
    fn forget_all(&mut self) {
        for (fh, _) in std::mem::take(&mut self.handles) {
            self.f.core.release(fh);
        }
        while let Some(k) = self.dcache.keys().max_by_key(|k| k.len()).cloned() {
            let (ino, _) = self.dcache.remove(&k).expect("present");
            self.maybe_forget(ino);
        }
        let left: Vec<_> = self.nlookup.keys().copied().collect();
        for ino in left {
            self.maybe_forget(ino);
        }
    }
}

/// `std::fs` on a second directory, with the same handles.
struct Plain {
    root: tempfile::TempDir,
    handles: Vec<std::fs::File>,
}

impl Plain {
    fn p(&self, p: &[usize]) -> PathBuf {
        self.root.path().join(rel(p))
    }

    fn handle(&self, h: usize) -> Option<usize> {
        let n = self.handles.len();
        h.checked_rem(n)
    }

    fn apply(&mut self, op: &Op) -> Res {
        let done = |r: std::io::Result<()>| r.map(|()| Out::Done).map_err(errno);
        match op {
            Op::Create(p) => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(self.p(p))
                .map(|f| {
                    self.handles.push(f);
                    Out::Done
                })
                .map_err(errno),
            Op::Mkdir(p) => done(std::fs::create_dir(self.p(p))),
            Op::Open { path, trunc } => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .truncate(*trunc)
                .open(self.p(path))
                .map(|f| {
                    self.handles.push(f);
                    Out::Done
                })
                .map_err(errno),
            Op::Close(h) => {
                let Some(i) = self.handle(*h) else {
                    return Ok(Out::NoHandle);
                };
                self.handles.remove(i);
                Ok(Out::Done)
            }
            Op::Write { h, off, data } => {
                let Some(i) = self.handle(*h) else {
                    return Ok(Out::NoHandle);
                };
                done(self.handles[i].write_all_at(data, *off))
            }
            Op::Read { h, off, len } => {
                let Some(i) = self.handle(*h) else {
                    return Ok(Out::NoHandle);
                };
                let mut buf = vec![0; *len as usize];
                let mut n = 0;
                loop {
                    match self.handles[i].read_at(&mut buf[n..], off + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => return Err(errno(e)),
                    }
                    if n == buf.len() {
                        break;
                    }
                }
                buf.truncate(n);
                Ok(Out::Bytes(buf))
            }
            Op::Truncate(p, size) => done(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.p(p))
                    .and_then(|f| f.set_len(*size)),
            ),
            Op::FTruncate(h, size) => {
                let Some(i) = self.handle(*h) else {
                    return Ok(Out::NoHandle);
                };
                done(self.handles[i].set_len(*size))
            }
            Op::Rename(a, b) => done(std::fs::rename(self.p(a), self.p(b))),
            Op::Unlink(p) => done(std::fs::remove_file(self.p(p))),
            Op::Rmdir(p) => done(std::fs::remove_dir(self.p(p))),
            Op::Stat(p) => std::fs::symlink_metadata(self.p(p))
                .map(|m| {
                    if m.is_dir() {
                        Out::Attr(FileType::Directory, 0)
                    } else {
                        Out::Attr(FileType::RegularFile, m.len())
                    }
                })
                .map_err(errno),
            Op::Forget(_) => Ok(Out::Done),
        }
    }

    fn tree(&self) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(self.root.path().to_path_buf(), String::new())];
        while let Some((dir, prefix)) = todo.pop() {
            for e in std::fs::read_dir(&dir).expect("read_dir") {
                let e = e.expect("dir entry");
                let path = format!("{prefix}{}", e.file_name().to_str().expect("utf-8"));
                if e.file_type().expect("file type").is_dir() {
                    todo.push((e.path(), format!("{path}/")));
                    out.insert(path, None);
                } else {
                    out.insert(path, Some(std::fs::read(e.path()).expect("read")));
                }
            }
        }
        out
    }
}

/// Runs `ops` on both sides; the first disagreement is the failure.
fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut k = Kernel::new();
    let mut plain = Plain {
        root: tempfile::tempdir().expect("tempdir"),
        handles: Vec::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        let core = k.apply(op);
        let want = plain.apply(op);
        prop_assert_eq!(&core, &want, "step {}: {:?}", i, op);
        prop_assert_eq!(k.handles.len(), plain.handles.len());
    }
    prop_assert_eq!(k.tree(), plain.tree(), "trees after {} steps", ops.len());
    k.forget_all();
    prop_assert_eq!(k.f.core.open_count(), 0);
    prop_assert_eq!(
        k.f.core.inodes.len(),
        1,
        "every lookup forgotten: the root alone is left"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_agrees_with_a_plain_directory(ops in prop::collection::vec(op_strategy(), 20..48)) {
        check(&ops)?;
    }
}

#[test]
fn a_renamed_directory_takes_its_cached_children_along() {
    let ops = [
        Op::Mkdir(vec![0]),
        Op::Create(vec![0, 1]),
        Op::Rename(vec![0], vec![1]),
        Op::Stat(vec![1, 1]),
        Op::Truncate(vec![1, 1], 3),
        Op::Open {
            path: vec![1, 1],
            trunc: false,
        },
        Op::Read {
            h: 1,
            off: 0,
            len: 8,
        },
    ];
    check(&ops).unwrap();
}
