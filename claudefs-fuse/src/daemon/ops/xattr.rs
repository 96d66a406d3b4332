//! Extended attributes of an inode: by its name or, for a file that has
//! none any more (unlinked or renamed over while open), through one of its
//! open handles (fgetxattr and friends), as on Linux, where the kernel's
//! requests for an fd name no handle.

use std::ffi::OsStr;

use super::{Core, Served};
use crate::daemon::router::Retry;
use crate::daemon::storage::{self, SysResult};

impl Core {
    pub fn getxattr(
        &self,
        cx: &Served,
        ino: u64,
        name: &OsStr,
        size: u32,
    ) -> SysResult<(usize, Vec<u8>)> {
        match self.inodes.path(ino) {
            Some(rel) => cx.note(
                self.router
                    .run(Retry::Idempotent, |r| r.getxattr(&rel, name, size as usize)),
            ),
            None => {
                let of = self.open_handle(ino, false).ok_or(libc::ENOENT)?;
                self.with_file(cx, &of, Retry::Idempotent, |fd| {
                    storage::fgetxattr(fd, name, size as usize)
                })
            }
        }
    }

    pub fn listxattr(&self, cx: &Served, ino: u64, size: u32) -> SysResult<(usize, Vec<u8>)> {
        match self.inodes.path(ino) {
            Some(rel) => cx.note(
                self.router
                    .run(Retry::Idempotent, |r| r.listxattr(&rel, size as usize)),
            ),
            None => {
                let of = self.open_handle(ino, false).ok_or(libc::ENOENT)?;
                self.with_file(cx, &of, Retry::Idempotent, |fd| {
                    storage::flistxattr(fd, size as usize)
                })
            }
        }
    }

    pub fn setxattr(
        &self,
        cx: &Served,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> SysResult<()> {
        match self.inodes.path(ino) {
            Some(rel) => cx.note(
                self.router
                    .run(Retry::Once, |r| r.setxattr(&rel, name, value, flags)),
            ),
            None => {
                let of = self.open_handle(ino, true).ok_or(libc::ENOENT)?;
                self.with_file(cx, &of, Retry::Once, |fd| {
                    storage::fsetxattr(fd, name, value, flags)
                })
            }
        }
    }

    pub fn removexattr(&self, cx: &Served, ino: u64, name: &OsStr) -> SysResult<()> {
        match self.inodes.path(ino) {
            Some(rel) => cx.note(self.router.run(Retry::Once, |r| r.removexattr(&rel, name))),
            None => {
                let of = self.open_handle(ino, true).ok_or(libc::ENOENT)?;
                self.with_file(cx, &of, Retry::Once, |fd| storage::fremovexattr(fd, name))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use crate::daemon::inodes::ROOT_INO;
    use crate::daemon::ops::tests::Fixture;

    #[test]
    fn xattrs_of_an_open_unlinked_file_go_through_its_handle() {
        let f = Fixture::new();
        let (ino, fh) = f.create(ROOT_INO, "f");
        let (core, cx) = (&f.core, &f.cx);
        let name = OsStr::new("user.k");
        if core.setxattr(cx, ino, name, b"v1", 0) == Err(libc::EOPNOTSUPP) {
            eprintln!("skipping: no user xattrs on {}", f.dir.path().display());
            return;
        }
        core.unlink(cx, ROOT_INO, OsStr::new("f"), false).unwrap();
        assert_eq!(core.getxattr(cx, ino, name, 64).unwrap().1, b"v1");
        core.setxattr(cx, ino, name, b"v2", 0).unwrap();
        assert_eq!(core.getxattr(cx, ino, name, 64).unwrap().1, b"v2");
        let (_, list) = core.listxattr(cx, ino, 256).unwrap();
        assert!(list.split(|&b| b == 0).any(|n| n == b"user.k"));
        core.removexattr(cx, ino, name).unwrap();
        assert_eq!(
            core.getxattr(cx, ino, name, 64).map(drop),
            Err(libc::ENODATA)
        );
        core.release(fh);
        assert_eq!(
            core.getxattr(cx, ino, name, 64).map(drop),
            Err(libc::ENOENT)
        );
    }
}
