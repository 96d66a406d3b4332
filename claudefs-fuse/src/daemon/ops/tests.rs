//! Unit tests of [`Core`] over a temporary directory: no mount, no root.
//! Each test checks the core's answer and, where it matters, what the
//! storage directory holds afterwards (through `std::fs`, not the core).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use super::super::config::IdMapSpec;
use super::super::idmap::IdMap;
use super::super::inodes::ROOT_INO;
use super::super::router::Router;
use super::super::storage::StorageRoot;
use super::{Core, FileType, Served, SetTime};
use crate::multipath::LoadBalancePolicy;

/// A core with one storage path over a fresh temporary directory.
pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
    pub core: Core,
    pub cx: Served,
    /// The caller's ids (new nodes get them; chown to oneself needs no root).
    pub uid: u32,
    pub gid: u32,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = StorageRoot::open(dir.path()).expect("open storage root");
        let root_ino = root.stat(Path::new("")).expect("stat root").st_ino;
        let router = Router::new(
            LoadBalancePolicy::RoundRobin,
            vec![(root, 100, "local".to_string())],
            root_ino,
        )
        .expect("router");
        let idmap = IdMap::from_spec(&IdMapSpec::Identity).expect("identity idmap");
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            core: Core::new(Arc::new(router), root_ino, idmap, None),
            dir,
            cx: Served::default(),
            uid,
            gid,
        }
    }

    /// The storage path of `rel` (to check the storage behind the core's back).
    pub fn disk(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates `name` in `parent` read-write; returns (ino, fh).
    pub fn create(&self, parent: u64, name: &str) -> (u64, u64) {
        let (attr, fh, _) = self
            .core
            .create(
                &self.cx,
                parent,
                OsStr::new(name),
                0o644,
                libc::O_RDWR | libc::O_EXCL,
                self.uid,
                self.gid,
                1,
            )
            .expect("create");
        (attr.ino, fh)
    }

    pub fn mkdir(&self, parent: u64, name: &str) -> u64 {
        self.core
            .mkdir(
                &self.cx,
                parent,
                OsStr::new(name),
                0o755,
                self.uid,
                self.gid,
            )
            .expect("mkdir")
            .ino
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<u64, i32> {
        self.core
            .lookup(&self.cx, parent, OsStr::new(name))
            .map(|a| a.ino)
    }

    pub fn size(&self, ino: u64) -> Result<u64, i32> {
        self.core.getattr(&self.cx, ino, None).map(|a| a.size)
    }

    /// Sets only the size (a truncate), through `fh` if given.
    pub fn truncate(&self, ino: u64, fh: Option<u64>, size: u64) -> Result<u64, i32> {
        self.core
            .setattr(&self.cx, ino, fh, None, None, None, Some(size), None, None)
            .map(|a| a.size)
    }
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn root_getattr_and_lookup_of_a_created_file() {
    let f = Fixture::new();
    let root = f.core.getattr(&f.cx, ROOT_INO, None).unwrap();
    assert_eq!((root.ino, root.kind), (ROOT_INO, FileType::Directory));
    assert_eq!(f.lookup(ROOT_INO, "a"), Err(libc::ENOENT));
    assert!(f.cx.path().is_some(), "a routed request notes its path");

    let (ino, fh) = f.create(ROOT_INO, "a");
    assert_ne!(ino, ROOT_INO);
    assert_eq!(f.lookup(ROOT_INO, "a"), Ok(ino), "same ino as create gave");
    let attr = f.core.getattr(&f.cx, ino, Some(fh)).unwrap();
    assert_eq!(
        (attr.kind, attr.perm, attr.size),
        (FileType::RegularFile, 0o644, 0)
    );
    assert_eq!((attr.uid, attr.gid), (f.uid, f.gid));
    assert!(f.disk("a").is_file());
    // An unknown inode (never looked up) has no path.
    assert_eq!(f.size(0xdead_beef), Err(libc::ENOENT));
}

#[test]
fn bad_names_are_refused_with_einval_and_leave_nothing_behind() {
    let f = Fixture::new();
    let dir = f.mkdir(ROOT_INO, "d");
    let (file, _) = f.create(ROOT_INO, "f");
    let bad: [&OsStr; 6] = [
        name(""),
        name("a/b"),
        name("/abs"),
        OsStr::from_bytes(b"nul\0byte"),
        name("."),
        name(".."),
    ];
    for n in bad {
        let c = &f.cx;
        let core = &f.core;
        assert_eq!(
            core.lookup(c, dir, n).map(drop),
            Err(libc::EINVAL),
            "lookup {n:?}"
        );
        assert_eq!(
            core.mkdir(c, dir, n, 0o755, f.uid, f.gid).map(drop),
            Err(libc::EINVAL),
            "mkdir {n:?}"
        );
        assert_eq!(
            core.create(c, dir, n, 0o644, libc::O_RDWR, f.uid, f.gid, 1)
                .map(drop),
            Err(libc::EINVAL),
            "create {n:?}"
        );
        assert_eq!(
            core.unlink(c, dir, n, false),
            Err(libc::EINVAL),
            "unlink {n:?}"
        );
        assert_eq!(
            core.unlink(c, dir, n, true),
            Err(libc::EINVAL),
            "rmdir {n:?}"
        );
        assert_eq!(
            core.rename(c, ROOT_INO, name("f"), dir, n, 0),
            Err(libc::EINVAL),
            "rename to {n:?}"
        );
        assert_eq!(
            core.link(c, file, dir, n).map(drop),
            Err(libc::EINVAL),
            "link {n:?}"
        );
        assert_eq!(
            core.symlink(c, dir, n, Path::new("t"), f.uid, f.gid)
                .map(drop),
            Err(libc::EINVAL),
            "symlink {n:?}"
        );
    }
    // Nothing was made, moved or removed, inside `d` or next to the storage root.
    assert_eq!(std::fs::read_dir(f.disk("d")).unwrap().count(), 0);
    assert!(f.disk("f").is_file());
    let outside = f.dir.path().parent().unwrap();
    assert!(!outside.join("f").exists());
}

#[test]
fn write_at_offsets_then_read_back_short_at_end_of_file() {
    let f = Fixture::new();
    let (ino, fh) = f.create(ROOT_INO, "a");
    assert_eq!(f.core.write(&f.cx, fh, 0, b"hello world"), Ok(11));
    assert_eq!(f.core.write(&f.cx, fh, 6, b"WORLD!"), Ok(6));
    assert_eq!(f.core.read(&f.cx, fh, 0, 100).unwrap(), b"hello WORLD!");
    assert_eq!(f.core.read(&f.cx, fh, 6, 3).unwrap(), b"WOR");
    assert_eq!(f.core.read(&f.cx, fh, 100, 10).unwrap(), b"");
    // A write past the end leaves a hole of zeros.
    f.core.write(&f.cx, fh, 20, b"z").unwrap();
    assert_eq!(f.size(ino), Ok(21));
    assert_eq!(f.core.read(&f.cx, fh, 12, 9).unwrap(), b"\0\0\0\0\0\0\0\0z");
    assert_eq!(std::fs::read(f.disk("a")).unwrap().len(), 21);
    // read_with hands over the same bytes without a copy.
    let n = f.core.read_with(&f.cx, fh, 0, 5, |r| r.map(|b| b.to_vec()));
    assert_eq!(n.unwrap(), b"hello");
    assert_eq!(f.core.fsync(&f.cx, fh, true), Ok(()));
    assert_eq!(f.core.lseek(&f.cx, fh, 0, libc::SEEK_END), Ok(21));
}

#[test]
fn open_modes_exclusive_create_and_truncating_open() {
    let f = Fixture::new();
    let (ino, fh) = f.create(ROOT_INO, "a");
    f.core.write(&f.cx, fh, 0, b"data").unwrap();
    f.core.release(fh);
    let again = f.core.create(
        &f.cx,
        ROOT_INO,
        name("a"),
        0o644,
        libc::O_RDWR | libc::O_EXCL,
        f.uid,
        f.gid,
        1,
    );
    assert_eq!(again.map(drop), Err(libc::EEXIST));
    assert_eq!(
        std::fs::read(f.disk("a")).unwrap(),
        b"data",
        "EEXIST kept it"
    );

    // A read-only open cannot write; the storage says EBADF.
    let (ro, of) = f.core.open(&f.cx, ino, libc::O_RDONLY, 1).unwrap();
    assert!(!of.writable());
    assert_eq!(f.core.write(&f.cx, ro, 0, b"x"), Err(libc::EBADF));
    assert_eq!(f.core.read(&f.cx, ro, 0, 10).unwrap(), b"data");
    // O_TRUNC empties it.
    let (rw, of) = f
        .core
        .open(&f.cx, ino, libc::O_RDWR | libc::O_TRUNC, 1)
        .unwrap();
    assert!(of.writable());
    assert_eq!(f.size(ino), Ok(0));
    assert_eq!(f.core.open_count(), 2);
    f.core.release(ro);
    f.core.release(rw);
    assert_eq!(f.core.open_count(), 0);
    assert_eq!(
        f.core.read(&f.cx, rw, 0, 1),
        Err(libc::EBADF),
        "released fh"
    );
    assert!(
        f.core.release(rw).is_none(),
        "a second release finds nothing"
    );
    // Opening a directory for writing: EISDIR.
    assert_eq!(
        f.core.open(&f.cx, ROOT_INO, libc::O_RDWR, 1).map(drop),
        Err(libc::EISDIR)
    );
}

#[test]
fn mkdir_rmdir_unlink_errnos() {
    let f = Fixture::new();
    let d = f.mkdir(ROOT_INO, "d");
    let attr = f.core.getattr(&f.cx, d, None).unwrap();
    assert_eq!((attr.kind, attr.perm), (FileType::Directory, 0o755));
    let mk = |p, n| {
        f.core
            .mkdir(&f.cx, p, name(n), 0o755, f.uid, f.gid)
            .map(drop)
    };
    assert_eq!(mk(ROOT_INO, "d"), Err(libc::EEXIST));
    f.create(d, "x");
    assert_eq!(mk(f.lookup(d, "x").unwrap(), "y"), Err(libc::ENOTDIR));
    assert_eq!(
        f.core.unlink(&f.cx, ROOT_INO, name("d"), true),
        Err(libc::ENOTEMPTY)
    );
    assert_eq!(
        f.core.unlink(&f.cx, ROOT_INO, name("d"), false),
        Err(libc::EISDIR)
    );
    assert_eq!(f.core.unlink(&f.cx, d, name("x"), true), Err(libc::ENOTDIR));
    assert_eq!(
        f.core.unlink(&f.cx, d, name("nope"), false),
        Err(libc::ENOENT)
    );
    assert_eq!(f.core.unlink(&f.cx, d, name("x"), false), Ok(()));
    assert_eq!(f.lookup(d, "x"), Err(libc::ENOENT));
    assert_eq!(f.core.unlink(&f.cx, ROOT_INO, name("d"), true), Ok(()));
    assert!(!f.disk("d").exists());
    assert_eq!(
        f.core.unlink(&f.cx, ROOT_INO, name("d"), true),
        Err(libc::ENOENT)
    );
}

#[test]
fn rename_moves_the_subtree_and_inodes_follow_it() {
    let f = Fixture::new();
    let d = f.mkdir(ROOT_INO, "d");
    let sub = f.mkdir(d, "sub");
    let (file, fh) = f.create(sub, "f");
    f.core.write(&f.cx, fh, 0, b"abc").unwrap();
    f.core
        .rename(&f.cx, ROOT_INO, name("d"), ROOT_INO, name("e"), 0)
        .unwrap();
    // The moved inodes answer at their new paths without a new lookup.
    assert_eq!(f.size(file), Ok(3));
    assert_eq!(f.lookup(sub, "f"), Ok(file));
    let (g, _) = f.create(sub, "g");
    assert!(f.disk("e/sub/g").is_file(), "created under the new path");
    assert_eq!(f.lookup(ROOT_INO, "d"), Err(libc::ENOENT));
    assert_eq!(f.lookup(ROOT_INO, "e"), Ok(d));

    // Into itself: EINVAL; over a non-empty directory: ENOTEMPTY.
    assert_eq!(
        f.core.rename(&f.cx, ROOT_INO, name("e"), sub, name("x"), 0),
        Err(libc::EINVAL)
    );
    f.mkdir(ROOT_INO, "full");
    f.create(f.lookup(ROOT_INO, "full").unwrap(), "k");
    assert_eq!(
        f.core
            .rename(&f.cx, ROOT_INO, name("e"), ROOT_INO, name("full"), 0),
        Err(libc::ENOTEMPTY)
    );
    // A file over a file replaces it; NOREPLACE refuses.
    assert_eq!(
        f.core.rename(
            &f.cx,
            sub,
            name("g"),
            sub,
            name("f"),
            libc::RENAME_NOREPLACE
        ),
        Err(libc::EEXIST)
    );
    f.core
        .rename(&f.cx, sub, name("g"), sub, name("f"), 0)
        .unwrap();
    assert_eq!(f.lookup(sub, "f"), Ok(g));
    assert_eq!(f.size(g), Ok(0));
    assert_eq!(f.lookup(sub, "g"), Err(libc::ENOENT));
    // Renaming a name onto itself changes nothing.
    f.core
        .rename(&f.cx, sub, name("f"), sub, name("f"), 0)
        .unwrap();
    assert_eq!(f.size(g), Ok(0));
    assert_eq!(f.lookup(sub, "f"), Ok(g));
}

#[test]
fn rename_exchange_swaps_the_inodes_paths() {
    let f = Fixture::new();
    let (a, fa) = f.create(ROOT_INO, "a");
    let d = f.mkdir(ROOT_INO, "d");
    let (inner, _) = f.create(d, "inner");
    f.core.write(&f.cx, fa, 0, b"12345").unwrap();
    f.core
        .rename(
            &f.cx,
            ROOT_INO,
            name("a"),
            ROOT_INO,
            name("d"),
            libc::RENAME_EXCHANGE,
        )
        .unwrap();
    assert!(f.disk("a/inner").is_file() && f.disk("d").is_file());
    assert_eq!(f.size(a), Ok(5), "a's inode now lives at d");
    assert_eq!(f.lookup(ROOT_INO, "d"), Ok(a));
    assert_eq!(f.lookup(ROOT_INO, "a"), Ok(d));
    assert_eq!(f.size(inner), Ok(0), "the directory's child moved with it");
    assert_eq!(f.lookup(d, "inner"), Ok(inner));
}

#[test]
fn hard_links_share_the_inode_and_survive_one_unlink() {
    let f = Fixture::new();
    let (ino, fh) = f.create(ROOT_INO, "a");
    f.core.write(&f.cx, fh, 0, b"xy").unwrap();
    let d = f.mkdir(ROOT_INO, "d");
    let l = f.core.link(&f.cx, ino, d, name("b")).unwrap();
    assert_eq!((l.ino, l.nlink, l.size), (ino, 2, 2));
    assert_eq!(
        f.core.link(&f.cx, ino, d, name("b")).map(drop),
        Err(libc::EEXIST)
    );
    assert_eq!(
        f.core.link(&f.cx, d, ROOT_INO, name("dl")).map(drop),
        Err(libc::EPERM),
        "no hard links to directories"
    );
    // Dropping the most recent name keeps the inode reachable by the other.
    f.core.unlink(&f.cx, d, name("b"), false).unwrap();
    let attr = f.core.getattr(&f.cx, ino, None).unwrap();
    assert_eq!((attr.nlink, attr.size), (1, 2));
    assert_eq!(f.lookup(ROOT_INO, "a"), Ok(ino));
}

#[test]
fn symlinks_read_back_their_target() {
    let f = Fixture::new();
    let s = f
        .core
        .symlink(
            &f.cx,
            ROOT_INO,
            name("s"),
            Path::new("../some/where"),
            f.uid,
            f.gid,
        )
        .unwrap();
    assert_eq!(s.kind, FileType::Symlink);
    assert_eq!(f.core.readlink(&f.cx, s.ino).unwrap(), b"../some/where");
    assert_eq!(
        std::fs::read_link(f.disk("s")).unwrap(),
        Path::new("../some/where")
    );
    assert_eq!(
        f.core
            .symlink(&f.cx, ROOT_INO, name("s"), Path::new("x"), f.uid, f.gid)
            .map(drop),
        Err(libc::EEXIST)
    );
    let (file, _) = f.create(ROOT_INO, "f");
    assert_eq!(f.core.readlink(&f.cx, file), Err(libc::EINVAL));
    // A symlink is never followed by open (O_NOFOLLOW).
    assert_eq!(
        f.core.open(&f.cx, s.ino, libc::O_RDONLY, 1).map(drop),
        Err(libc::ELOOP)
    );
}

#[test]
fn readdir_lists_dots_then_entries_and_resumes_at_an_offset() {
    let f = Fixture::new();
    let d = f.mkdir(ROOT_INO, "d");
    let (x, _) = f.create(d, "x");
    let y = f.mkdir(d, "y");
    let fh = f.core.opendir(&f.cx, d).unwrap();
    let all = f.core.readdir(d, fh, 0).unwrap();
    let names: Vec<_> = all.iter().map(|(_, e)| e.name.to_str().unwrap()).collect();
    assert_eq!(&names[..2], [".", ".."]);
    assert_eq!((all[0].1.ino, all[1].1.ino), (d, ROOT_INO));
    let mut rest: Vec<_> = all[2..]
        .iter()
        .map(|(_, e)| (e.name.to_str().unwrap().to_string(), e.ino, e.kind))
        .collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rest,
        vec![
            ("x".to_string(), x, FileType::RegularFile),
            ("y".to_string(), y, FileType::Directory)
        ]
    );
    // Offsets are the next entry's position: resuming after any entry
    // gives exactly the entries after it.
    for (i, (off, _)) in all.iter().enumerate() {
        let tail = f.core.readdir(d, fh, *off).unwrap();
        let want: Vec<_> = all[i + 1..].iter().map(|(_, e)| e.name.clone()).collect();
        let got: Vec<_> = tail.iter().map(|(_, e)| e.name.clone()).collect();
        assert_eq!(got, want, "resume at {off}");
    }
    // The listing is the one taken at opendir.
    f.create(d, "later");
    assert_eq!(f.core.readdir(d, fh, 0).unwrap().len(), 4);
    f.core.releasedir(fh);
    assert_eq!(f.core.readdir(d, fh, 0).map(drop), Err(libc::EBADF));
    // The root's `..` is itself.
    let rfh = f.core.opendir(&f.cx, ROOT_INO).unwrap();
    assert_eq!(f.core.readdir(ROOT_INO, rfh, 1).unwrap()[0].1.ino, ROOT_INO);
    let (file, _) = f.create(ROOT_INO, "file");
    assert_eq!(f.core.opendir(&f.cx, file), Err(libc::ENOTDIR));
    // readdirplus's entry counts as a lookup.
    assert_eq!(f.core.entry_plus(&f.cx, d, name("x")).unwrap().ino, x);
}

#[test]
fn setattr_truncates_chmods_and_sets_times() {
    let f = Fixture::new();
    let (ino, fh) = f.create(ROOT_INO, "a");
    f.core.write(&f.cx, fh, 0, b"0123456789").unwrap();
    assert_eq!(f.truncate(ino, None, 4), Ok(4));
    assert_eq!(f.core.read(&f.cx, fh, 0, 100).unwrap(), b"0123");
    assert_eq!(f.truncate(ino, Some(fh), 6), Ok(6), "through the handle");
    assert_eq!(f.core.read(&f.cx, fh, 0, 100).unwrap(), b"0123\0\0");
    assert_eq!(std::fs::metadata(f.disk("a")).unwrap().len(), 6);

    let set = |mode, mtime| {
        f.core
            .setattr(&f.cx, ino, None, mode, None, None, None, None, mtime)
    };
    let a = set(Some(libc::S_IFREG | 0o4710), None).unwrap();
    assert_eq!((a.perm, a.kind), (0o4710, FileType::RegularFile));
    let t = super::super::attr::Timestamp {
        sec: 1_000_000_000,
        nsec: 5,
    };
    let a = set(None, Some(SetTime::At(t))).unwrap();
    assert_eq!(a.mtime, t);
    assert_eq!(a.perm, 0o4710, "a time change keeps the mode");
    // HANDLE_KILLPRIV_V2: the core drops suid (and sgid of a group-executable file).
    f.core.kill_suidgid(&f.cx, ino).unwrap();
    assert_eq!(f.core.getattr(&f.cx, ino, None).unwrap().perm, 0o710);
    // Chown to oneself is allowed without root.
    let a = f
        .core
        .setattr(
            &f.cx,
            ino,
            None,
            None,
            Some(f.uid),
            Some(f.gid),
            None,
            None,
            None,
        )
        .unwrap();
    assert_eq!((a.uid, a.gid), (f.uid, f.gid));
    // Truncating a directory: EISDIR.
    assert_eq!(f.truncate(ROOT_INO, None, 0), Err(libc::EISDIR));
}

#[test]
fn xattrs_set_get_list_remove() {
    let f = Fixture::new();
    let (ino, _) = f.create(ROOT_INO, "a");
    let n = name("user.colour");
    f.core.setxattr(&f.cx, ino, n, b"blue", 0).unwrap();
    assert_eq!(
        f.core.setxattr(&f.cx, ino, n, b"red", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        f.core
            .setxattr(&f.cx, ino, name("user.none"), b"x", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    assert_eq!(f.core.getxattr(&f.cx, ino, n, 0).unwrap(), (4, vec![]));
    assert_eq!(
        f.core.getxattr(&f.cx, ino, n, 64).unwrap(),
        (4, b"blue".to_vec())
    );
    assert_eq!(f.core.getxattr(&f.cx, ino, n, 2), Err(libc::ERANGE));
    let (len, list) = f.core.listxattr(&f.cx, ino, 256).unwrap();
    assert_eq!(list.len(), len);
    assert!(list.split(|b| *b == 0).any(|s| s == b"user.colour"));
    f.core.removexattr(&f.cx, ino, n).unwrap();
    assert_eq!(f.core.getxattr(&f.cx, ino, n, 64), Err(libc::ENODATA));
    assert_eq!(f.core.removexattr(&f.cx, ino, n), Err(libc::ENODATA));
}

#[test]
fn forget_drops_an_inode_only_when_its_lookups_reach_zero() {
    let f = Fixture::new();
    let (ino, fh) = f.create(ROOT_INO, "a"); // lookup 1
                                             // Closed: a forgotten inode is not reached through an open handle.
    f.core.release(fh);
    assert_eq!(f.lookup(ROOT_INO, "a"), Ok(ino)); // 2
    assert_eq!(
        f.core.entry_plus(&f.cx, ROOT_INO, name("a")).unwrap().ino,
        ino
    ); // 3
    let held = f.core.inodes.len();
    f.core.forget(ino, 2);
    assert_eq!(f.size(ino), Ok(0), "one lookup left");
    f.core.forget(ino, 1);
    assert_eq!(f.size(ino), Err(libc::ENOENT), "forgotten");
    assert_eq!(f.core.inodes.len(), held - 1);
    // Forgetting more than is held, or an unknown inode, is harmless.
    f.core.forget(ino, 5);
    f.core.forget(0xdead_beef, 1);
    // The root is never forgotten.
    f.core.forget(ROOT_INO, 1000);
    assert!(f.core.getattr(&f.cx, ROOT_INO, None).is_ok());
    // A new lookup brings it back.
    assert_eq!(f.lookup(ROOT_INO, "a"), Ok(ino));
    assert_eq!(f.size(ino), Ok(0));
}

#[test]
fn an_open_handle_keeps_working_after_its_file_is_unlinked() {
    let f = Fixture::new();
    let (ino, fh) = f.create(ROOT_INO, "a");
    f.core.write(&f.cx, fh, 0, b"before").unwrap();
    f.core.unlink(&f.cx, ROOT_INO, name("a"), false).unwrap();
    assert!(!f.disk("a").exists());
    assert_eq!(f.core.read(&f.cx, fh, 0, 100).unwrap(), b"before");
    assert_eq!(f.core.write(&f.cx, fh, 6, b"+after"), Ok(6));
    let attr = f.core.getattr(&f.cx, ino, Some(fh)).unwrap();
    assert_eq!((attr.ino, attr.size, attr.nlink), (ino, 12, 0));
    // ftruncate(2) of the open, unlinked file (SETATTR with the handle).
    assert_eq!(f.truncate(ino, Some(fh), 3), Ok(3));
    assert_eq!(f.core.read(&f.cx, fh, 0, 100).unwrap(), b"bef");
    // Without a handle in the request (fstat: the kernel sends none) the
    // inode, which has no name left, answers from its open handle.
    assert_eq!(f.size(ino), Ok(3));
    f.core.release(fh);
    assert_eq!(f.core.open_count(), 0);
    assert_eq!(f.size(ino), Err(libc::ENOENT));
}

#[test]
fn a_stale_inode_never_answers_for_the_new_file_at_its_old_name() {
    let f = Fixture::new();
    let (old, fh) = f.create(ROOT_INO, "a");
    f.core.write(&f.cx, fh, 0, b"old file").unwrap();
    f.core.unlink(&f.cx, ROOT_INO, name("a"), false).unwrap();
    // The kernel still holds `old` (open, not forgotten); a new file takes the name.
    let (new, nfh) = f.create(ROOT_INO, "a");
    f.core.write(&f.cx, nfh, 0, b"new").unwrap();
    assert_ne!(old, new);
    // What the kernel may still ask about the old inode without a handle
    // must not reach the new file.
    // It answers from its own open handle (as fstat on Linux does).
    assert_eq!(f.size(old), Ok(8));
    let chmod = f
        .core
        .setattr(&f.cx, old, None, Some(0o600), None, None, None, None, None);
    assert_eq!(chmod.map(|a| a.ino), Ok(old));
    assert_eq!(f.truncate(old, None, 0), Ok(0));
    assert_eq!(f.core.read(&f.cx, fh, 0, 100).unwrap(), b"");
    assert_eq!(
        std::fs::read(f.disk("a")).unwrap(),
        b"new",
        "new file untouched"
    );
    let perm = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(f.disk("a")).unwrap().permissions(),
    );
    assert_eq!(perm & 0o777, 0o644);
    // The same after a rename over the name.
    f.core.release(nfh);
    let (other, _) = f.create(ROOT_INO, "b");
    f.core
        .rename(&f.cx, ROOT_INO, name("b"), ROOT_INO, name("a"), 0)
        .unwrap();
    assert_eq!(f.size(new), Err(libc::ENOENT), "the replaced inode");
    assert_eq!(f.size(other), Ok(0));
    assert_eq!(f.lookup(ROOT_INO, "a"), Ok(other));
    // Replaced on the storage behind the core's back (another client of
    // the shared storage; `other` stays open, so its number is not reused).
    std::fs::remove_file(f.disk("a")).unwrap();
    std::fs::write(f.disk("a"), b"third").unwrap();
    assert_eq!(f.size(other), Ok(0), "answered from its open handle");
    let third = f.lookup(ROOT_INO, "a").unwrap();
    assert_ne!(third, other);
    assert_eq!(f.size(third), Ok(5));
}

#[test]
fn access_checks_the_local_owner_and_mode() {
    let f = Fixture::new();
    let (ino, _) = f.create(ROOT_INO, "a");
    f.core
        .setattr(&f.cx, ino, None, Some(0o640), None, None, None, None, None)
        .unwrap();
    let attr = f.core.getattr(&f.cx, ino, None).unwrap();
    let other = attr.uid.wrapping_add(1).max(1);
    let other_gid = attr.gid.wrapping_add(1);
    let acc = |mask, uid, gid| f.core.access(&f.cx, ino, mask, uid, gid);
    assert_eq!(
        acc(libc::R_OK | libc::W_OK, attr.uid.max(1), attr.gid),
        if attr.uid == 0 {
            Err(libc::EACCES) // uid 1 is neither owner nor root when we are root
        } else {
            Ok(())
        }
    );
    assert_eq!(acc(libc::R_OK, other, attr.gid), Ok(()), "group may read");
    assert_eq!(acc(libc::W_OK, other, attr.gid), Err(libc::EACCES));
    assert_eq!(acc(libc::R_OK, other, other_gid), Err(libc::EACCES));
    assert_eq!(acc(libc::F_OK, other, other_gid), Ok(()));
    assert_eq!(acc(libc::R_OK | libc::W_OK, 0, 0), Ok(()), "root");
    assert_eq!(acc(libc::X_OK, 0, 0), Err(libc::EACCES), "no x bit at all");
}

#[test]
fn fallocate_and_statfs_reach_the_storage() {
    let f = Fixture::new();
    let (ino, fh) = f.create(ROOT_INO, "a");
    f.core.fallocate(&f.cx, fh, 0, 8192, 0).unwrap();
    assert_eq!(f.size(ino), Ok(8192));
    assert_eq!(
        f.core.fallocate(&f.cx, fh, 0, 0, 0),
        Err(libc::EINVAL),
        "zero length"
    );
    let st = f.core.statfs(&f.cx).unwrap();
    assert!(st.f_bsize > 0 && st.f_namemax >= 255);
    assert_eq!(f.core.fsyncdir(&f.cx, ROOT_INO, false), Ok(()));
    assert_eq!(f.core.flush(&f.cx, fh), Ok(()));
    assert_eq!(f.core.flush(&f.cx, 0xbad), Err(libc::EBADF));
}
