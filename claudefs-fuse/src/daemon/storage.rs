//! Storage paths: one root directory per path, every operation a `*at()`
//! syscall relative to the root's `O_PATH` fd.
//!
//! Keeping the root as an fd (not a path string) means a storage path whose
//! mount goes away (a killed FUSE server, a lazily unmounted export) keeps
//! answering through that mount (with `ENOTCONN`/`EIO`), so the router sees
//! the sickness instead of silently falling through to the empty directory
//! underneath. Paths handed to these functions are relative to the root
//! (empty = the root itself) and never start with `/`.
//!
//! Errors are plain positive errno values (`Errno = i32`).

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// A positive errno value.
pub type Errno = i32;
/// Result of a storage syscall.
pub type SysResult<T> = Result<T, Errno>;

fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn cvt(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(ret)
    }
}

/// Runs `f` on `rel` as a C string for `*at()` (`.` for the root), built
/// on the stack for paths shorter than 256 bytes (rustix's `Arg`): a
/// request's call allocates nothing for its path. An interior NUL is
/// `EINVAL`, before `f` runs.
pub fn with_cpath<T>(rel: &Path, f: impl FnOnce(&std::ffi::CStr) -> SysResult<T>) -> SysResult<T> {
    use rustix::path::Arg;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut out = None;
    let built = rel.into_with_c_str(|c| {
        out = Some(f(c));
        Ok(())
    });
    match (out, built) {
        (Some(r), _) => r,
        (None, Err(e)) => Err(e.raw_os_error()),
        (None, Ok(())) => Err(libc::EINVAL),
    }
}

fn cname(name: &OsStr) -> SysResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| libc::EINVAL)
}

/// One directory entry read from storage.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub dtype: u8,
}

/// One root directory through which the shared storage is reached.
#[derive(Debug)]
pub struct StorageRoot {
    /// Where the root was opened (for messages and status).
    pub dir: PathBuf,
    fd: OwnedFd,
}

impl StorageRoot {
    /// Opens `dir` as an `O_PATH | O_DIRECTORY` fd.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `c` is a valid NUL-terminated string; the returned fd is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly opened descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            dir: dir.to_path_buf(),
            fd,
        })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The root's fd (for `*at` calls outside this module).
    pub fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }

    /// `/proc/self/fd/N/rel`: a path usable by the non-`*at` calls (xattrs)
    /// that still goes through this root's mount.
    fn proc_path(&self, rel: &Path) -> SysResult<CString> {
        let mut p = format!("/proc/self/fd/{}", self.raw()).into_bytes();
        if !rel.as_os_str().is_empty() {
            p.push(b'/');
            p.extend_from_slice(rel.as_os_str().as_bytes());
        }
        CString::new(p).map_err(|_| libc::EINVAL)
    }

    /// `fstatat(rel, AT_SYMLINK_NOFOLLOW)`.
    pub fn stat(&self, rel: &Path) -> SysResult<libc::stat> {
        // SAFETY: zeroed `stat` is a valid out-buffer for fstatat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        with_cpath(rel, |c| {
            // SAFETY: valid dirfd, C string and out-pointer.
            cvt(unsafe {
                libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
            })
        })?;
        Ok(st)
    }

    /// `statfs` of the root (the health probe).
    pub fn statfs(&self) -> SysResult<libc::statvfs> {
        // SAFETY: zeroed statvfs is a valid out-buffer.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out-pointer.
        cvt(unsafe { libc::fstatvfs(self.raw(), &mut st) })?;
        Ok(st)
    }

    /// Whether open(2) and close(2) of a file here do work of their own
    /// (close-to-open consistency: an NFS-style client revalidates its
    /// cache at open, writes back and reports deferred errors at close):
    /// true unless the root is on a local disk or memory file system known
    /// to do nothing then (ext4, xfs, btrfs, tmpfs, ramfs, f2fs, zfs,
    /// bcachefs). NFS, CIFS, Ceph, 9p, FUSE, overlay and anything unknown
    /// do.
    pub fn close_to_open(&self) -> bool {
        const NOTHING_AT_OPEN_OR_CLOSE: [i64; 8] = [
            0xEF53,      // ext2/3/4
            0x5846_5342, // xfs
            0x9123_683E, // btrfs
            0x0102_1994, // tmpfs
            0x8584_58F6, // ramfs
            0xF2F5_2010, // f2fs
            0x2FC1_2FC1, // zfs
            0xCA45_1A4E, // bcachefs
        ];
        // SAFETY: zeroed statfs is a valid out-buffer.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out-pointer.
        if unsafe { libc::fstatfs(self.raw(), &mut st) } != 0 {
            return true;
        }
        !NOTHING_AT_OPEN_OR_CLOSE.contains(&(st.f_type as i64))
    }

    /// `openat(rel, flags, mode)`; symlinks at the last component are refused.
    pub fn open_at(&self, rel: &Path, flags: i32, mode: u32) -> SysResult<OwnedFd> {
        let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        let fd = with_cpath(rel, |c| {
            // SAFETY: valid dirfd and C string; the result is checked.
            cvt(unsafe { libc::openat(self.raw(), c.as_ptr(), flags, mode as libc::c_uint) })
        })?;
        // SAFETY: freshly opened fd that we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `mkdirat`.
    pub fn mkdir(&self, rel: &Path, mode: u32) -> SysResult<()> {
        with_cpath(rel, |c| {
            // SAFETY: valid dirfd and C string.
            cvt(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) })
        })
        .map(drop)
    }

    /// `mknodat`.
    pub fn mknod(&self, rel: &Path, mode: u32, rdev: u64) -> SysResult<()> {
        with_cpath(rel, |c| {
            // SAFETY: valid dirfd and C string.
            cvt(unsafe {
                libc::mknodat(
                    self.raw(),
                    c.as_ptr(),
                    mode as libc::mode_t,
                    rdev as libc::dev_t,
                )
            })
        })
        .map(drop)
    }

    /// `symlinkat(target, rel)`.
    pub fn symlink(&self, target: &Path, rel: &Path) -> SysResult<()> {
        let t = CString::new(target.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
        with_cpath(rel, |c| {
            // SAFETY: valid C strings and dirfd.
            cvt(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) })
        })
        .map(drop)
    }

    /// `readlinkat`.
    pub fn readlink(&self, rel: &Path) -> SysResult<Vec<u8>> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        let n = with_cpath(rel, |c| {
            // SAFETY: buffer pointer/length describe a writable buffer.
            let n = unsafe {
                libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n < 0 {
                Err(last_errno())
            } else {
                Ok(n as usize)
            }
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    /// `unlinkat` (with `AT_REMOVEDIR` for `dir`).
    pub fn unlink(&self, rel: &Path, dir: bool) -> SysResult<()> {
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        with_cpath(rel, |c| {
            // SAFETY: valid dirfd and C string.
            cvt(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), flags) })
        })
        .map(drop)
    }

    /// `renameat2`.
    pub fn rename(&self, from: &Path, to: &Path, flags: u32) -> SysResult<()> {
        with_cpath(from, |a| {
            with_cpath(to, |b| {
                // SAFETY: valid dirfds and C strings.
                cvt(unsafe {
                    libc::renameat2(self.raw(), a.as_ptr(), self.raw(), b.as_ptr(), flags)
                })
            })
        })
        .map(drop)
    }

    /// `linkat(existing, new)`.
    pub fn link(&self, existing: &Path, new: &Path) -> SysResult<()> {
        with_cpath(existing, |a| {
            with_cpath(new, |b| {
                // SAFETY: valid dirfds and C strings.
                cvt(unsafe { libc::linkat(self.raw(), a.as_ptr(), self.raw(), b.as_ptr(), 0) })
            })
        })
        .map(drop)
    }

    /// `fchownat(.., AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id unchanged.
    pub fn chown(&self, rel: &Path, uid: u32, gid: u32) -> SysResult<()> {
        with_cpath(rel, |c| {
            // SAFETY: valid dirfd and C string.
            cvt(unsafe {
                libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
            })
        })
        .map(drop)
    }

    /// `fchmodat` (symlinks have no mode of their own: refused with EOPNOTSUPP by the kernel).
    pub fn chmod(&self, rel: &Path, mode: u32) -> SysResult<()> {
        with_cpath(rel, |c| {
            // SAFETY: valid dirfd and C string.
            cvt(unsafe { libc::fchmodat(self.raw(), c.as_ptr(), mode as libc::mode_t, 0) })
        })
        .map(drop)
    }

    /// `utimensat(.., AT_SYMLINK_NOFOLLOW)`.
    pub fn utimens(&self, rel: &Path, times: &[libc::timespec; 2]) -> SysResult<()> {
        with_cpath(rel, |c| {
            // SAFETY: valid dirfd, C string and a 2-element timespec array.
            cvt(unsafe {
                libc::utimensat(
                    self.raw(),
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
        })
        .map(drop)
    }

    /// Truncates by path (opens for writing).
    pub fn truncate(&self, rel: &Path, size: u64) -> SysResult<()> {
        let fd = self.open_at(rel, libc::O_WRONLY, 0)?;
        ftruncate(fd.as_raw_fd(), size)
    }

    /// Reads a whole directory (without `.` and `..`).
    pub fn read_dir(&self, rel: &Path) -> SysResult<Vec<DirEntry>> {
        let fd = self.open_at(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let raw = fd.as_raw_fd();
        // SAFETY: `raw` is a valid directory fd; on success ownership moves to the DIR*.
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            return Err(last_errno());
        }
        std::mem::forget(fd);
        let mut out = Vec::new();
        loop {
            // SAFETY: errno is thread-local; reset it to tell end-of-dir from errors.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `dir` is a valid DIR* until closedir below.
            let ent = unsafe { libc::readdir64(dir) };
            if ent.is_null() {
                let e = last_errno();
                // SAFETY: `dir` is valid and closed exactly once.
                unsafe { libc::closedir(dir) };
                if e != 0 {
                    return Err(e);
                }
                return Ok(out);
            }
            // SAFETY: a non-null dirent64 from readdir64 has a NUL-terminated d_name.
            let (name, ino, dtype) = unsafe {
                let e = &*ent;
                let name = std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                    .to_bytes()
                    .to_vec();
                (name, e.d_ino, e.d_type)
            };
            if name == b"." || name == b".." {
                continue;
            }
            out.push(DirEntry {
                name: OsString::from_vec(name),
                ino,
                dtype,
            });
        }
    }

    /// `lgetxattr`: (value size, value) — with `size == 0` only the size.
    pub fn getxattr(&self, rel: &Path, name: &OsStr, size: usize) -> SysResult<(usize, Vec<u8>)> {
        let p = self.proc_path(rel)?;
        let n = cname(name)?;
        let mut buf = vec![0u8; size];
        // SAFETY: valid C strings; buffer pointer/length describe writable memory.
        let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
        if r < 0 {
            return Err(last_errno());
        }
        buf.truncate(if size == 0 { 0 } else { r as usize });
        Ok((r as usize, buf))
    }

    /// `llistxattr`.
    pub fn listxattr(&self, rel: &Path, size: usize) -> SysResult<(usize, Vec<u8>)> {
        let p = self.proc_path(rel)?;
        let mut buf = vec![0u8; size];
        // SAFETY: valid C string; buffer pointer/length describe writable memory.
        let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) };
        if r < 0 {
            return Err(last_errno());
        }
        buf.truncate(if size == 0 { 0 } else { r as usize });
        Ok((r as usize, buf))
    }

    /// `lsetxattr`.
    pub fn setxattr(&self, rel: &Path, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
        let p = self.proc_path(rel)?;
        let n = cname(name)?;
        // SAFETY: valid C strings and value buffer.
        cvt(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    /// `lremovexattr`.
    pub fn removexattr(&self, rel: &Path, name: &OsStr) -> SysResult<()> {
        let p = self.proc_path(rel)?;
        let n = cname(name)?;
        // SAFETY: valid C strings.
        cvt(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
    }
}

/// `fgetxattr`: (value size, value) of an open file — with `size == 0`
/// only the size.
pub fn fgetxattr(fd: RawFd, name: &OsStr, size: usize) -> SysResult<(usize, Vec<u8>)> {
    let n = cname(name)?;
    let mut buf = vec![0u8; size];
    // SAFETY: valid fd and C string; buffer pointer/length describe writable memory.
    let r = unsafe { libc::fgetxattr(fd, n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(last_errno());
    }
    buf.truncate(if size == 0 { 0 } else { r as usize });
    Ok((r as usize, buf))
}

/// `flistxattr`.
pub fn flistxattr(fd: RawFd, size: usize) -> SysResult<(usize, Vec<u8>)> {
    let mut buf = vec![0u8; size];
    // SAFETY: valid fd; buffer pointer/length describe writable memory.
    let r = unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(last_errno());
    }
    buf.truncate(if size == 0 { 0 } else { r as usize });
    Ok((r as usize, buf))
}

/// `fsetxattr`.
pub fn fsetxattr(fd: RawFd, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
    let n = cname(name)?;
    // SAFETY: valid fd, C string and value buffer.
    cvt(unsafe { libc::fsetxattr(fd, n.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
        .map(drop)
}

/// `fremovexattr`.
pub fn fremovexattr(fd: RawFd, name: &OsStr) -> SysResult<()> {
    let n = cname(name)?;
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::fremovexattr(fd, n.as_ptr()) }).map(drop)
}

/// `ftruncate`.
pub fn ftruncate(fd: RawFd, size: u64) -> SysResult<()> {
    // SAFETY: plain syscall on a caller-owned fd.
    cvt(unsafe { libc::ftruncate(fd, size as libc::off_t) }).map(drop)
}

/// `fchmod`: the mode of an open file (one unlinked while open included).
pub fn fchmod(fd: RawFd, mode: u32) -> SysResult<()> {
    // SAFETY: plain syscall on a caller-owned fd.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(drop)
}

/// `fchown` (`u32::MAX` leaves an id as it is).
pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: plain syscall on a caller-owned fd.
    cvt(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

/// `futimens`.
pub fn futimens(fd: RawFd, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: caller-owned fd and a 2-element timespec array.
    cvt(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
}

/// `pread` into a fresh buffer.
pub fn pread(fd: RawFd, offset: u64, size: usize) -> SysResult<Vec<u8>> {
    let mut buf = Vec::new();
    pread_into(fd, offset, size, &mut buf)?;
    Ok(buf)
}

/// `pread` of up to `size` bytes into `buf` (replacing its contents; the
/// buffer is not zeroed first, so a reused one costs no allocation and no
/// memset). Returns the number of bytes read (short only at end of file).
pub fn pread_into(fd: RawFd, offset: u64, size: usize, buf: &mut Vec<u8>) -> SysResult<usize> {
    buf.clear();
    buf.reserve(size);
    let mut done = 0;
    while done < size {
        // SAFETY: the pointer/length stay inside `buf`'s reserved capacity;
        // pread only writes there.
        let n = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().add(done).cast(),
                size - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    // SAFETY: the first `done` bytes were written by pread.
    unsafe { buf.set_len(done) };
    Ok(done)
}

/// `pwrite` of the whole buffer.
pub fn pwrite(fd: RawFd, offset: u64, data: &[u8]) -> SysResult<usize> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: the pointer/length stay inside `data`.
        let n = unsafe {
            libc::pwrite(
                fd,
                data[done..].as_ptr().cast(),
                data.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(done)
}

/// `fsync`/`fdatasync`.
pub fn fsync(fd: RawFd, datasync: bool) -> SysResult<()> {
    // SAFETY: plain syscall on a caller-owned fd.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })
    .map(drop)
}

/// What `close` of `fd` would report, without closing it: closes a
/// duplicate (as libfuse's passthrough does), so a storage file system
/// that reports write-back errors at close (NFS, FUSE) reports them now.
pub fn flush(fd: RawFd) -> SysResult<()> {
    // SAFETY: plain syscall on a caller-owned fd.
    let dup = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is ours alone and closed once, here.
    cvt(unsafe { libc::close(dup) }).map(drop)
}

/// `fallocate`.
pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    // SAFETY: plain syscall on a caller-owned fd.
    cvt(unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) }).map(drop)
}

/// `lseek`.
pub fn lseek(fd: RawFd, offset: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain syscall on a caller-owned fd.
    let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

/// `fstat`.
pub fn fstat(fd: RawFd) -> SysResult<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_reach_the_calls_as_c_strings_short_long_and_bad() {
        let d = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(d.path()).unwrap();
        // The root itself is ".".
        assert_eq!(root.stat(Path::new("")).unwrap().st_ino, {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(d.path()).unwrap().ino()
        });
        // Short (on the stack) and longer than the stack buffer (heap).
        let deep = vec!["dddddddddd"; 30].join("/");
        std::fs::create_dir_all(d.path().join(&deep)).unwrap();
        for name in ["f".to_string(), format!("{deep}/f")] {
            assert!(name.len() < 256 || name.len() > 300);
            let rel = Path::new(&name);
            drop(
                root.open_at(rel, libc::O_CREAT | libc::O_WRONLY, 0o600)
                    .unwrap(),
            );
            assert_eq!(root.stat(rel).unwrap().st_size, 0);
            root.unlink(rel, false).unwrap();
            assert_eq!(root.stat(rel).unwrap_err(), libc::ENOENT);
            root.mknod(rel, libc::S_IFREG | 0o600, 0).unwrap();
            root.unlink(rel, false).unwrap();
        }
        // An interior NUL is EINVAL, before any call.
        let bad = Path::new(OsStr::from_bytes(b"a\0b"));
        assert_eq!(root.stat(bad).unwrap_err(), libc::EINVAL);
        assert_eq!(root.unlink(bad, false).unwrap_err(), libc::EINVAL);
    }

    #[test]
    fn close_to_open_on_all_but_known_local_file_systems() {
        // /dev/shm is tmpfs on Linux; procfs is not on the local list.
        assert!(!StorageRoot::open(Path::new("/dev/shm"))
            .unwrap()
            .close_to_open());
        assert!(StorageRoot::open(Path::new("/proc"))
            .unwrap()
            .close_to_open());
        // flush() of an fd leaves the fd open.
        let d = tempfile::tempdir().unwrap();
        let r = StorageRoot::open(d.path()).unwrap();
        let fd = r
            .open_at(Path::new("f"), libc::O_CREAT | libc::O_RDWR, 0o644)
            .unwrap();
        flush(fd.as_raw_fd()).unwrap();
        assert_eq!(pwrite(fd.as_raw_fd(), 0, b"x"), Ok(1));
    }

    #[test]
    fn basic_ops_relative_to_root() {
        let d = tempfile::tempdir().unwrap();
        let r = StorageRoot::open(d.path()).unwrap();
        r.mkdir(Path::new("a"), 0o755).unwrap();
        let fd = r
            .open_at(Path::new("a/f"), libc::O_CREAT | libc::O_RDWR, 0o644)
            .unwrap();
        pwrite(fd.as_raw_fd(), 0, b"hello").unwrap();
        assert_eq!(pread(fd.as_raw_fd(), 1, 10).unwrap(), b"ello");
        assert_eq!(r.stat(Path::new("a/f")).unwrap().st_size, 5);
        assert_eq!(r.mkdir(Path::new("a"), 0o755), Err(libc::EEXIST));
        assert_eq!(r.unlink(Path::new("a"), true), Err(libc::ENOTEMPTY));
        r.symlink(Path::new("f"), Path::new("a/l")).unwrap();
        assert_eq!(r.readlink(Path::new("a/l")).unwrap(), b"f");
        let names: Vec<_> = r
            .read_dir(Path::new("a"))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names.len(), 2);
        assert!(r.statfs().is_ok());
    }
}
