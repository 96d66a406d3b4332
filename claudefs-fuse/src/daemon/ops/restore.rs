//! What a server carrying on a live connection gets back from the journal
//! the previous server left: the nodes the kernel knows (FUSE inode ->
//! path, each checked on storage), the open handles (re-opened by path,
//! with their handle numbers), and a handle space of its own.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use super::{Core, OpenFile, CREATE_FLAGS};
use crate::daemon::filehandle;
use crate::daemon::journal_state::{LiveState, OpenHandle};
use crate::daemon::router::Retry;
use crate::daemon::storage;

/// Handle numbers of server generation `g` start at `g << HANDLE_SPACE_BITS`:
/// a directory handle of a previous server (not journaled) never meets a
/// new one.
pub const HANDLE_SPACE_BITS: u32 = 40;

impl Core {
    /// Restores the nodes of `live`; returns (found again, lost). A node
    /// is found when its path still names the same inode, or else where
    /// its file handle leads (renamed on storage meanwhile; see
    /// `filehandle.rs`).
    pub fn restore_nodes(&self, live: &LiveState) -> (usize, usize) {
        let (mut found, mut lost) = (0, 0);
        for (ino, path) in &live.nodes {
            let rel = PathBuf::from(path);
            let same = self
                .router
                .run(Retry::Idempotent, |r| r.stat(&rel))
                .result
                .is_ok_and(|st| self.inodes.fuse_ino(st.st_ino) == *ino);
            let at = if same {
                Some(rel)
            } else {
                live.handles.get(ino).and_then(|h| self.by_handle(*ino, h))
            };
            match at {
                Some(at) => {
                    if at.as_os_str() != path.as_str() {
                        tracing::info!(ino, from = path, to = %at.display(), "node found by its file handle at a new path");
                    }
                    self.inodes.restore(*ino, &at);
                    found += 1;
                }
                None => {
                    tracing::debug!(ino, path, "node of the last server not found again");
                    lost += 1;
                }
            }
        }
        (found, lost)
    }

    /// Where the file of handle `h` (node `ino`) is now, on a usable path.
    fn by_handle(&self, ino: u64, h: &str) -> Option<PathBuf> {
        (0..self.router.len() as u64)
            .filter(|&p| self.router.usable(p))
            .filter_map(|p| self.router.root(p))
            .find_map(|root| {
                filehandle::find(&root, h)
                    .filter(|(_, st_ino)| self.inodes.fuse_ino(*st_ino) == ino)
                    .map(|(rel, _)| rel)
            })
    }

    /// Re-opens handle `fh` of the previous server; says whether it is
    /// back (the file still there, the same inode).
    pub fn restore_handle(&self, fh: u64, h: &OpenHandle) -> bool {
        let rel = self
            .inodes
            .path(h.ino)
            .unwrap_or_else(|| std::path::Path::new(&h.path).into());
        let flags = h.flags & !CREATE_FLAGS;
        let routed = self.router.run(Retry::Idempotent, |r| {
            let fd = r.open_at(&rel, flags, 0)?;
            let st = storage::fstat(fd.as_raw_fd())?;
            Ok((fd, st))
        });
        let path_id = routed.path.unwrap_or(0);
        let (fd, st) = match routed.result {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(fh, path = %rel.display(), "open file not re-opened: {}", std::io::Error::from_raw_os_error(e));
                return false;
            }
        };
        if self.inodes.fuse_ino(st.st_ino) != h.ino {
            tracing::warn!(fh, path = %rel.display(), "open file not re-opened: its path names another file now");
            return false;
        }
        let of = Arc::new(OpenFile {
            ino: h.ino,
            flags,
            pid: h.pid,
            keep_cache: false,
            cur: RwLock::new((path_id, Arc::new(fd))),
        });
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, of);
        true
    }

    /// New handles of server `generation` come after those of `live`.
    pub fn resume_handles(&self, generation: u64, live: &LiveState) {
        let start = (live.max_fh() + 1).max(generation << HANDLE_SPACE_BITS);
        self.next_fh.fetch_max(start, Ordering::Relaxed);
        self.first_fh.fetch_max(start, Ordering::Relaxed);
    }
}
