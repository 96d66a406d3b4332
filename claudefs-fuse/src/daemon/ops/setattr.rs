//! SETATTR and the suid/sgid clearing of the core: changes of an inode
//! by its name or, for a file that has none any more (unlinked or
//! renamed over while open), through one of its open handles
//! (fchmod, fchown, futimens, ftruncate of the open file), as on Linux.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use super::{Core, FileAttr, OpenFile, Served, SetTime};
use crate::daemon::attr::timespec;
use crate::daemon::router::Retry;
use crate::daemon::storage::{self, StorageRoot, SysResult};

/// What a SETATTR changes: the inode by its name, or, for a file that
/// has no name any more (unlinked while open), through an open handle.
enum Target {
    Named(Arc<Path>),
    Open(Arc<OpenFile>),
}

impl Core {
    /// Where a change of `ino` is made: by its name; for a file that has
    /// none any more (unlinked while open), through `handle` or another
    /// open handle of it (one open for writing first when `writer`).
    fn target(&self, ino: u64, handle: Option<Arc<OpenFile>>, writer: bool) -> SysResult<Target> {
        match self.inodes.path(ino) {
            Some(rel) => Ok(Target::Named(rel)),
            None => handle
                .or_else(|| self.open_handle(ino, writer))
                .map(Target::Open)
                .ok_or(libc::ENOENT),
        }
    }

    /// Runs one step of a SETATTR on `target`: by name, or through the
    /// open file's fd (never replayed on another path).
    fn set_on<T>(
        &self,
        cx: &Served,
        target: &Target,
        mut by_name: impl FnMut(&StorageRoot, &Path) -> SysResult<T>,
        by_fd: impl FnMut(RawFd) -> SysResult<T>,
    ) -> SysResult<T> {
        match target {
            Target::Named(rel) => cx.note(self.router.run(Retry::Once, |r| by_name(r, rel))),
            Target::Open(of) => self.with_file(cx, of, Retry::Once, by_fd),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        cx: &Served,
        ino: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> SysResult<FileAttr> {
        let handle = fh.and_then(|fh| self.file(fh).ok());
        let target = self.target(ino, handle.clone(), size.is_some())?;
        if uid.is_some() || gid.is_some() {
            let hu = match uid {
                Some(u) => self.idmap.uid_to_host(u).ok_or(libc::EPERM)?,
                None => u32::MAX,
            };
            let hg = match gid {
                Some(g) => self.idmap.gid_to_host(g).ok_or(libc::EPERM)?,
                None => u32::MAX,
            };
            self.set_on(
                cx,
                &target,
                |r, rel| r.chown(rel, hu, hg),
                |fd| storage::fchown(fd, hu, hg),
            )?;
        }
        if let Some(m) = mode {
            self.set_on(
                cx,
                &target,
                |r, rel| r.chmod(rel, m & 0o7777),
                |fd| storage::fchmod(fd, m & 0o7777),
            )?;
        }
        if let Some(sz) = size {
            match &handle {
                Some(of) => self.with_file(cx, of, Retry::Once, |fd| storage::ftruncate(fd, sz))?,
                None => self.set_on(
                    cx,
                    &target,
                    |r, rel| r.truncate(rel, sz),
                    |fd| storage::ftruncate(fd, sz),
                )?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            let t = [timespec(atime), timespec(mtime)];
            self.set_on(
                cx,
                &target,
                |r, rel| r.utimens(rel, &t),
                |fd| storage::futimens(fd, &t),
            )?;
        }
        self.getattr(cx, ino, fh)
    }

    /// Clears the suid bit and, on a group-executable file, the sgid bit
    /// of `ino`, as the VFS does for a write, truncate or chown by a caller
    /// without `CAP_FSETID` (the kernel asks, `HANDLE_KILLPRIV_V2`; the
    /// daemon's own calls on storage keep the bits, as root's do).
    pub fn kill_suidgid(&self, cx: &Served, ino: u64) -> SysResult<()> {
        let killed = |mode: libc::mode_t| {
            let mut kill = libc::S_ISUID;
            if mode & libc::S_IXGRP != 0 {
                kill |= libc::S_ISGID;
            }
            (mode & libc::S_IFMT == libc::S_IFREG && mode & kill != 0)
                .then_some(mode & 0o7777 & !kill)
        };
        self.set_on(
            cx,
            &self.target(ino, None, false)?,
            |r, rel| match killed(r.stat(rel)?.st_mode) {
                Some(m) => r.chmod(rel, m),
                None => Ok(()),
            },
            |fd| match killed(storage::fstat(fd)?.st_mode) {
                Some(m) => storage::fchmod(fd, m),
                None => Ok(()),
            },
        )
    }
}
