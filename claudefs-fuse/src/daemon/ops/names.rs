//! The requests that make, remove and move names: mknod, mkdir, unlink
//! and rmdir, symlink, rename, link. Each goes through `once` (see
//! `once.rs`: applied once across a server restart) and keeps the inode
//! table and the journal's nodes in step.

use std::ffi::OsStr;
use std::path::Path;

use super::{Core, FileAttr, Served};
use crate::daemon::journal::{IntentOp, Record};
use crate::daemon::router::Retry;
use crate::daemon::storage::SysResult;

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        cx: &Served,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> SysResult<FileAttr> {
        let rel = self.child(parent, name)?;
        self.once(
            cx,
            IntentOp::Make,
            &rel,
            None,
            || {
                cx.note(self.router.run(Retry::Once, |r| {
                    r.mknod(&rel, mode, rdev as u64)?;
                    self.own(r, &rel, uid, gid)?;
                    self.entry_at(r, &rel)
                }))
            },
            || self.entry_of(cx, &rel),
        )
    }

    pub fn mkdir(
        &self,
        cx: &Served,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> SysResult<FileAttr> {
        let rel = self.child(parent, name)?;
        self.once(
            cx,
            IntentOp::Make,
            &rel,
            None,
            || {
                cx.note(self.router.run(Retry::Once, |r| {
                    r.mkdir(&rel, mode)?;
                    self.own(r, &rel, uid, gid)?;
                    self.entry_at(r, &rel)
                }))
            },
            || self.entry_of(cx, &rel),
        )
    }

    pub fn unlink(&self, cx: &Served, parent: u64, name: &OsStr, dir: bool) -> SysResult<()> {
        let rel = self.child(parent, name)?;
        self.once(
            cx,
            IntentOp::Remove,
            &rel,
            None,
            || cx.note(self.router.run(Retry::Once, |r| r.unlink(&rel, dir))),
            || Ok(()),
        )?;
        self.inodes.unlinked(&rel);
        Ok(())
    }

    pub fn symlink(
        &self,
        cx: &Served,
        parent: u64,
        name: &OsStr,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> SysResult<FileAttr> {
        let rel = self.child(parent, name)?;
        self.once(
            cx,
            IntentOp::Make,
            &rel,
            None,
            || {
                cx.note(self.router.run(Retry::Once, |r| {
                    r.symlink(target, &rel)?;
                    self.own(r, &rel, uid, gid)?;
                    self.entry_at(r, &rel)
                }))
            },
            || self.entry_of(cx, &rel),
        )
    }

    pub fn rename(
        &self,
        cx: &Served,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> SysResult<()> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        // An exchange is its own inverse: not found applied by its effect.
        let op = if exchange {
            IntentOp::Exchange
        } else {
            IntentOp::Rename
        };
        self.once(
            cx,
            op,
            &from,
            Some(&to),
            || {
                cx.note(
                    self.router
                        .run(Retry::Once, |r| r.rename(&from, &to, flags)),
                )
            },
            || Ok(()),
        )?;
        let (a, b) = (
            from.to_string_lossy().into_owned(),
            to.to_string_lossy().into_owned(),
        );
        if exchange {
            self.inodes.exchanged(&from, &to);
            self.journal(|| Record::Swapped { a, b });
        } else {
            self.inodes.renamed(&from, &to);
            self.journal(|| Record::Moved { from: a, to: b });
        }
        Ok(())
    }

    pub fn link(
        &self,
        cx: &Served,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> SysResult<FileAttr> {
        let from = self.path(ino)?;
        let to = self.child(newparent, newname)?;
        self.once(
            cx,
            IntentOp::Make,
            &to,
            None,
            || {
                cx.note(self.router.run(Retry::Once, |r| {
                    r.link(&from, &to)?;
                    self.entry_at(r, &to)
                }))
            },
            || self.entry_of(cx, &to),
        )
    }
}
