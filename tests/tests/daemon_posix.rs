//! POSIX behaviour of `claudefs-fuse mount` over one storage path, CLI
//! errors, and clean unmount.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use claudefs_e2e::{fuse_bin, fuse_unavailable, is_mounted, wait_until, MountGuard};

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> i32 {
    let (a, b) = (c(a), c(b));
    // SAFETY: valid C strings; AT_FDCWD-relative absolute paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn xattr_set(p: &Path, n: &str, v: &[u8]) -> i32 {
    let (p, n) = (c(p), CString::new(n).unwrap());
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn xattr_get(p: &Path, n: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (c(p), CString::new(n).unwrap());
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    buf.truncate(r as usize);
    Ok(buf)
}

#[test]
fn posix_suite() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = MountGuard::single_path(tmp.path(), &[]).unwrap();
    let mnt = m.mnt.clone();

    // The mount table names the file system.
    let canon = mnt.canonicalize().unwrap().display().to_string();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(canon.as_str()))
        .unwrap_or_else(|| panic!("{canon} not in mountinfo:\n{info}"));
    assert!(line.contains(" - fuse.claudefs claudefs "), "{line}");

    // Files: create, write, read, append, seek, and the data lands in storage.
    let f = mnt.join("file");
    fs::write(&f, b"hello world").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello world");
    assert_eq!(fs::read(src.join("file")).unwrap(), b"hello world");
    let mut h = fs::OpenOptions::new().append(true).open(&f).unwrap();
    h.write_all(b"!").unwrap();
    drop(h);
    let mut h = fs::File::open(&f).unwrap();
    h.seek(SeekFrom::Start(6)).unwrap();
    let mut s = String::new();
    h.read_to_string(&mut s).unwrap();
    assert_eq!(s, "world!");
    drop(h);
    // Stable inode numbers: the backing st_ino, the same across lookups.
    assert_eq!(
        fs::metadata(&f).unwrap().ino(),
        fs::metadata(src.join("file")).unwrap().ino()
    );

    // Truncate, chmod, chown, utimens.
    let h = fs::OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(5).unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"hello");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&f, Some(1234), Some(2345)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 2345));
    assert_eq!(fs::metadata(src.join("file")).unwrap().uid(), 1234);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mtime(), 1_000_000_000);

    // Directories.
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/x"), b"x").unwrap();
    let mut names: Vec<_> = fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["x"]);
    assert_eq!(errno_of(fs::remove_dir(mnt.join("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::create_dir(mnt.join("d"))), libc::EEXIST);
    assert_eq!(errno_of(fs::metadata(mnt.join("nope"))), libc::ENOENT);
    assert_eq!(errno_of(fs::metadata(mnt.join("file/x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::read_dir(mnt.join("file"))), libc::ENOTDIR);
    assert_eq!(
        errno_of(fs::File::options().write(true).open(mnt.join("d"))),
        libc::EISDIR
    );
    assert_eq!(errno_of(fs::remove_file(mnt.join("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::remove_dir(mnt.join("file"))), libc::ENOTDIR);
    assert_eq!(
        errno_of(fs::File::options().write(true).create_new(true).open(&f)),
        libc::EEXIST
    );

    // Rename: plain (moves a subtree), NOREPLACE, EXCHANGE.
    fs::rename(mnt.join("d"), mnt.join("d2")).unwrap();
    assert_eq!(fs::read(mnt.join("d2/x")).unwrap(), b"x");
    fs::write(mnt.join("a"), b"A").unwrap();
    fs::write(mnt.join("b"), b"B").unwrap();
    assert_eq!(
        renameat2(&mnt.join("a"), &mnt.join("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        renameat2(&mnt.join("a"), &mnt.join("b"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(mnt.join("a")).unwrap(), b"B");
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b"A");
    assert_eq!(
        renameat2(&mnt.join("a"), &mnt.join("c"), libc::RENAME_NOREPLACE),
        0
    );
    assert_eq!(fs::read(mnt.join("c")).unwrap(), b"B");
    fs::rename(mnt.join("c"), mnt.join("b")).unwrap();
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b"B");
    assert_eq!(
        errno_of(fs::rename(mnt.join("missing"), mnt.join("z"))),
        libc::ENOENT
    );

    // Links and symlinks.
    fs::hard_link(mnt.join("b"), mnt.join("b2")).unwrap();
    assert_eq!(fs::metadata(mnt.join("b")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(mnt.join("b")).unwrap().ino(),
        fs::metadata(mnt.join("b2")).unwrap().ino()
    );
    std::os::unix::fs::symlink("d2/x", mnt.join("s")).unwrap();
    assert_eq!(fs::read_link(mnt.join("s")).unwrap(), Path::new("d2/x"));
    assert_eq!(fs::read(mnt.join("s")).unwrap(), b"x");
    assert!(fs::symlink_metadata(mnt.join("s"))
        .unwrap()
        .file_type()
        .is_symlink());
    fs::remove_file(mnt.join("b2")).unwrap();
    assert_eq!(fs::metadata(mnt.join("b")).unwrap().nlink(), 1);

    // xattrs.
    assert_eq!(xattr_set(&mnt.join("b"), "user.k", b"v1"), 0);
    assert_eq!(xattr_get(&mnt.join("b"), "user.k").unwrap(), b"v1");
    assert_eq!(xattr_get(&src.join("b"), "user.k").unwrap(), b"v1");
    assert_eq!(xattr_get(&mnt.join("b"), "user.none"), Err(libc::ENODATA));

    // mknod (fifo), fallocate, statfs, access.
    let fifo = c(&mnt.join("fifo"));
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(src.join("fifo")).unwrap().file_type()
    ));
    let h = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("b"))
        .unwrap();
    // SAFETY: valid fd.
    assert_eq!(
        unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&h), 0, 0, 8192) },
        0
    );
    assert_eq!(fs::metadata(mnt.join("b")).unwrap().len(), 8192);
    drop(h);
    let mc = c(&mnt);
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(mc.as_ptr(), &mut sv) }, 0);
    assert!(sv.f_blocks > 0);
    let bc = c(&mnt.join("b"));
    // SAFETY: valid C string.
    assert_eq!(
        unsafe { libc::access(bc.as_ptr(), libc::R_OK | libc::W_OK) },
        0
    );

    // Unlink.
    fs::remove_file(mnt.join("b")).unwrap();
    assert!(!src.join("b").exists());
    fs::remove_file(mnt.join("d2/x")).unwrap();
    fs::remove_dir(mnt.join("d2")).unwrap();

    // Many files in a directory (readdir across several replies).
    fs::create_dir(mnt.join("many")).unwrap();
    for i in 0..300 {
        fs::write(mnt.join(format!("many/f{i:03}")), b"").unwrap();
    }
    assert_eq!(fs::read_dir(mnt.join("many")).unwrap().count(), 300);

    // A clean stop unmounts and leaves an empty journal.
    let st = m.stop().unwrap();
    assert!(st.success(), "daemon exit: {st}");
    assert!(!is_mounted(&tmp.path().join("mnt")));
    assert_eq!(
        fs::metadata(tmp.path().join("state/journal.log"))
            .unwrap()
            .len(),
        0
    );
}

fn run_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(fuse_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_errors_are_one_line() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let src = tmp.path().display().to_string();
    let st = tmp.path().join("st").display().to_string();
    let m = mnt.display().to_string();
    let file = tmp.path().join("f");
    fs::write(&file, b"").unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec!["mount".into(), "--bogus".into(), m.clone()],
        vec![
            "mount".into(),
            "--path".into(),
            "/does/not/exist".into(),
            "--state-dir".into(),
            st.clone(),
            m.clone(),
        ],
        vec![
            "mount".into(),
            "--path".into(),
            src.clone(),
            "--idmap".into(),
            "weird".into(),
            m.clone(),
        ],
        vec![
            "mount".into(),
            "--path".into(),
            src.clone(),
            "--state-dir".into(),
            st.clone(),
            file.display().to_string(),
        ],
        vec!["mount".into(), "--state-dir".into(), st.clone(), m.clone()],
        vec![
            "status".into(),
            "--state-dir".into(),
            tmp.path().join("none").display().to_string(),
        ],
    ];
    for args in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = run_cli(&a);
        assert_ne!(code, 0, "{args:?} should fail");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err:?}"
        );
        assert!(err.starts_with("claudefs-fuse: "), "{args:?}: {err:?}");
    }
    // A mountpoint in use.
    let g = MountGuard::start(
        &mnt,
        &tmp.path().join("s1"),
        &["--path".into(), src.clone()],
    )
    .unwrap();
    let (code, err) = run_cli(&[
        "mount",
        "--path",
        &src,
        "--state-dir",
        &tmp.path().join("s2").display().to_string(),
        &m,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("in use"), "{err}");
    drop(g);
}

/// Backing fds the daemon `pid` holds on `file` (links in /proc/PID/fd;
/// a deleted file's link ends in " (deleted)").
fn fds_on(pid: u32, file: &Path) -> usize {
    let want = file.display().to_string();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|l| {
                    let l = l.display().to_string();
                    l == want || l == format!("{want} (deleted)")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Plain read-only opens share one cached backing fd; a writer gets its
/// own; the cached fd goes when the file is removed through the mount
/// (FORGET) and, for a file removed on the storage itself, once idle.
#[test]
fn read_only_opens_share_a_backing_fd_that_leaves_with_the_file() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = MountGuard::single_path(tmp.path(), &[]).unwrap();
    let src = src.canonicalize().unwrap();
    let (mnt, pid) = (m.mnt.clone(), m.pid());
    assert_eq!(
        m.status().unwrap()["close_to_open"],
        false,
        "the fd cache serves local storage only; {} is not on a known local file system",
        src.display()
    );
    fs::write(src.join("r"), b"data").unwrap();
    for _ in 0..50 {
        assert_eq!(fs::read(mnt.join("r")).unwrap(), b"data");
    }
    assert_eq!(
        fds_on(pid, &src.join("r")),
        1,
        "50 read-only opens share one fd"
    );
    let held = fs::File::open(mnt.join("r")).unwrap();
    let mut w = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("r"))
        .unwrap();
    assert_eq!(fds_on(pid, &src.join("r")), 2, "a writer has its own fd");
    w.write_all(b"DATA").unwrap();
    drop(w);
    assert_eq!(fs::read(mnt.join("r")).unwrap(), b"DATA");
    drop(held);
    fs::remove_file(mnt.join("r")).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || fds_on(pid, &src.join("r")) == 0),
        "the daemon still holds a removed file"
    );
    assert!(!src.join("r").exists());

    fs::write(src.join("s"), b"gone soon").unwrap();
    assert_eq!(fs::read(mnt.join("s")).unwrap(), b"gone soon");
    assert_eq!(fds_on(pid, &src.join("s")), 1);
    fs::remove_file(src.join("s")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || fds_on(pid, &src.join("s")) == 0),
        "an idle fd on a file removed on the storage stays open"
    );
}

/// A file's cached pages stay across opens while its storage file is
/// unchanged (a re-read sends no READ), and go at the next open once it
/// changed on the storage, even with the same size (close-to-open).
#[test]
fn reopened_files_keep_their_pages_until_the_storage_file_changes() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = MountGuard::single_path(tmp.path(), &[]).unwrap();
    let k = m.mnt.join("k");
    fs::write(src.join("k"), b"first version").unwrap();
    assert_eq!(fs::read(&k).unwrap(), b"first version");
    let reads = || {
        m.status().unwrap()["requests"]["read"][0]
            .as_u64()
            .unwrap_or(0)
    };
    let before = reads();
    for _ in 0..5 {
        assert_eq!(fs::read(&k).unwrap(), b"first version");
    }
    assert_eq!(
        reads(),
        before,
        "re-reads of an unchanged file come from its pages"
    );
    // Changed on the storage (same size): the next open drops the pages.
    fs::write(src.join("k"), b"second versio").unwrap();
    assert_eq!(fs::read(&k).unwrap(), b"second versio");
    assert!(reads() > before);
    // Written through the mount: its pages hold the write.
    fs::write(&k, b"third version").unwrap();
    assert_eq!(fs::read(&k).unwrap(), b"third version");
    assert_eq!(fs::read(src.join("k")).unwrap(), b"third version");
    fs::write(src.join("k"), b"fourth versio").unwrap();
    assert_eq!(fs::read(&k).unwrap(), b"fourth versio");
}

/// `--cache-timeout-ms` is how long the kernel trusts a name and its
/// attributes: at 0 every stat reaches the daemon and sees a change made on
/// the storage at once; at 60 s the kernel answers stats itself and still
/// shows the old size past the default timeout (1 s).
#[test]
fn the_cache_timeout_is_how_long_the_kernel_trusts_attributes() {
    if fuse_unavailable().is_some() {
        return;
    }
    for ms in [0u64, 60_000] {
        let tmp = tempfile::tempdir().unwrap();
        let flags = ["--cache-timeout-ms".to_string(), ms.to_string()];
        let (src, m) = MountGuard::single_path(tmp.path(), &flags).unwrap();
        assert_eq!(m.status().unwrap()["cache_timeout_ms"].as_u64(), Some(ms));
        let f = m.mnt.join("f");
        fs::write(src.join("f"), b"12345").unwrap();
        assert_eq!(fs::metadata(&f).unwrap().len(), 5);
        let asked = || {
            let s = m.status().unwrap();
            let n = |op: &str| s["requests"][op][0].as_u64().unwrap_or(0);
            n("lookup") + n("getattr")
        };
        let before = asked();
        for _ in 0..20 {
            assert_eq!(fs::metadata(&f).unwrap().len(), 5);
        }
        let stats = asked() - before;
        fs::write(src.join("f"), b"1234567").unwrap();
        if ms == 0 {
            assert!(
                stats >= 20,
                "20 stats at timeout 0 asked the daemon {stats} times"
            );
            assert_eq!(fs::metadata(&f).unwrap().len(), 7);
        } else {
            assert_eq!(stats, 0, "stats within the timeout asked the daemon");
            std::thread::sleep(Duration::from_millis(1200));
            assert_eq!(
                fs::metadata(&f).unwrap().len(),
                5,
                "the kernel asked again before the 60 s timeout"
            );
        }
    }
}

/// What `fstat(2)` says of an open file, the fields compared below.
#[derive(Debug, PartialEq, Eq)]
struct Fstat {
    nlink: u64,
    size: i64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

fn fstat(f: &fs::File) -> Fstat {
    use std::os::fd::AsRawFd;
    // SAFETY: zeroed `stat` is a valid out-buffer; the fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-pointer.
    let rc = unsafe { libc::fstat(f.as_raw_fd(), &mut st) };
    assert_eq!(rc, 0, "fstat: {}", std::io::Error::last_os_error());
    Fstat {
        nlink: st.st_nlink,
        size: st.st_size,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
    }
}

/// Open, write, unlink, then fstat and change the file through its
/// handle (ftruncate, fchmod, fchown, futimens, pwrite); a read-only open
/// unlinked; a file renamed over while open; one of two hard links
/// removed. Returns what fstat said at each step.
fn unlinked_while_open(dir: &Path) -> Vec<(&'static str, Fstat)> {
    use std::os::unix::fs::FileExt;
    let mut seen = Vec::new();
    let u = dir.join("u");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&u)
        .unwrap();
    f.write_all_at(&[b'x'; 1234], 0).unwrap();
    fs::remove_file(&u).unwrap();
    seen.push(("unlinked", fstat(&f)));
    f.set_len(100).unwrap();
    seen.push(("ftruncate", fstat(&f)));
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    seen.push(("fchmod", fstat(&f)));
    std::os::unix::fs::fchown(&f, Some(1234), Some(2345)).unwrap();
    seen.push(("fchown", fstat(&f)));
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    seen.push(("futimens", fstat(&f)));
    f.write_all_at(b"tail", 200).unwrap();
    f.sync_all().unwrap();
    seen.push(("pwrite", fstat(&f)));
    let mut back = vec![0; 300];
    let n = f.read_at(&mut back, 0).unwrap();
    assert_eq!(n, 204, "{}", dir.display());
    assert_eq!(&back[..4], b"xxxx");
    assert_eq!(&back[200..204], b"tail");
    drop(f);
    assert_eq!(errno_of(fs::metadata(&u)), libc::ENOENT);

    // A read-only open (which may share a cached backing fd).
    let v = dir.join("v");
    fs::write(&v, b"abc").unwrap();
    let r = fs::File::open(&v).unwrap();
    fs::remove_file(&v).unwrap();
    seen.push(("read-only unlinked", fstat(&r)));
    drop(r);

    // Renamed over: the open file has lost its name to another file,
    // whose attributes it must not show nor change.
    let (a, b) = (dir.join("a"), dir.join("b"));
    fs::write(&a, b"aaaa").unwrap();
    fs::write(&b, b"bb").unwrap();
    let old = fs::OpenOptions::new().write(true).open(&a).unwrap();
    fs::rename(&b, &a).unwrap();
    seen.push(("renamed over", fstat(&old)));
    old.set_permissions(fs::Permissions::from_mode(0o611))
        .unwrap();
    seen.push(("renamed over, fchmod", fstat(&old)));
    let new = fs::File::open(&a).unwrap();
    seen.push(("the new file", fstat(&new)));
    drop((old, new));
    fs::remove_file(&a).unwrap();

    // One of two hard links removed: one link left.
    let (x, y) = (dir.join("x"), dir.join("y"));
    fs::write(&x, b"xy").unwrap();
    fs::hard_link(&x, &y).unwrap();
    let h = fs::OpenOptions::new().write(true).open(&y).unwrap();
    fs::remove_file(&y).unwrap();
    seen.push(("one link left", fstat(&h)));
    h.set_permissions(fs::Permissions::from_mode(0o640))
        .unwrap();
    drop(h);
    let left = fs::File::open(&x).unwrap();
    seen.push(("the other link", fstat(&left)));
    drop(left);
    fs::remove_file(&x).unwrap();
    seen
}

/// fstat of a file that is open and then unlinked (or renamed over)
/// answers from the open file, as on Linux: st_nlink 0, the size written,
/// and ftruncate/fchmod/fchown/futimens through the handle change that
/// file and no other. The same sequence on a local directory is the
/// reference.
#[test]
fn fstat_of_an_unlinked_open_file_is_the_open_file() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    fs::create_dir(&reference).unwrap();
    let want = unlinked_while_open(&reference);
    let (src, m) = MountGuard::single_path(tmp.path(), &[]).unwrap();
    let got = unlinked_while_open(&m.mnt);
    // The reference itself is Linux's answer; check the points that
    // matter, so a wrong reference cannot pass either.
    let at = |name| &want.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!((at("unlinked").nlink, at("unlinked").size), (0, 1234));
    assert_eq!((at("ftruncate").nlink, at("ftruncate").size), (0, 100));
    assert_eq!(at("fchmod").mode, 0o600);
    assert_eq!((at("fchown").uid, at("fchown").gid), (1234, 2345));
    assert_eq!(at("futimens").mtime, 1_500_000_000);
    assert_eq!((at("pwrite").nlink, at("pwrite").size), (0, 204));
    assert_eq!(at("read-only unlinked").nlink, 0);
    assert_eq!((at("renamed over").nlink, at("renamed over").size), (0, 4));
    assert_eq!(at("renamed over, fchmod").mode, 0o611);
    assert_eq!(
        (at("the new file").size, at("the new file").mode),
        (2, 0o644)
    );
    assert_eq!(at("one link left").nlink, 1);
    assert_eq!(at("the other link").mode, 0o640);
    for ((step, w), (_, g)) in want.iter().zip(&got) {
        // Times the test did not set differ between the runs.
        let g = Fstat {
            mtime: if *step == "futimens" {
                g.mtime
            } else {
                w.mtime
            },
            ..*g
        };
        assert_eq!(&g, w, "{step}: through the mount vs the local directory");
    }
    assert_eq!(got.len(), want.len());
    // Nothing is left on the storage.
    assert_eq!(fs::read_dir(&src).unwrap().count(), 0);
}

/// lseek(SEEK_DATA) past the end answers ENXIO, as on Linux, however
/// often: a file's own answer, which must not count against its storage
/// path (ten of them used to fail the only path, and the mount answered
/// EIO to everything).
#[test]
fn seek_data_past_the_end_is_enxio_and_leaves_the_path_alone() {
    if fuse_unavailable().is_some() {
        return;
    }
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = MountGuard::single_path(tmp.path(), &[]).unwrap();
    fs::write(src.join("f"), vec![7u8; 4096]).unwrap();
    let f = fs::File::open(m.mnt.join("f")).unwrap();
    for _ in 0..30 {
        // SAFETY: lseek on an fd this test owns.
        let r = unsafe { libc::lseek(f.as_raw_fd(), 8192, libc::SEEK_DATA) };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENXIO)
        );
    }
    // SAFETY: as above; data starts at 0.
    assert_eq!(unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) }, 0);
    assert_eq!(fs::read(m.mnt.join("f")).unwrap().len(), 4096);
    let st = m.status().unwrap();
    assert_eq!(st["paths"][0]["state"], "Active", "{st}");
    assert_eq!(st["paths"][0]["error_count"], 0, "{st}");
}
