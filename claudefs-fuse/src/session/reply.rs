//! Answers to requests: the [`Reply`] completion a handler gets with each
//! request, the [`Sender`] trait a transport implements to deliver it, and
//! the packing of directory listings ([`DirBuf`]).
//!
//! A `Reply` is answered exactly once: every answering method consumes it,
//! and one dropped unanswered (a handler that returned early or panicked)
//! answers `EIO` and logs it. A failed request is logged at debug with its
//! operation, inode and errno, so no errno reaches the kernel unlogged.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::abi::{self, Pod};
use crate::probes::opcodes::opcode_name;

/// Which request an answer is for, as the transport knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The kernel's id of the request.
    pub unique: u64,
    /// The transport's own slot of the request (the io_uring entry; 0 on
    /// `/dev/fuse`).
    pub slot: u32,
}

/// Delivers answers to the kernel (a transport), or elsewhere (tests).
pub trait Sender: Send + Sync {
    /// Sends the answer to `token`: `error` 0 with `payload`, or a
    /// positive errno with no payload.
    fn send(&self, token: Token, error: i32, payload: &[&[u8]]) -> std::io::Result<()>;
}

/// The completion of one request (see the module doc).
pub struct Reply {
    token: Token,
    sender: Option<Arc<dyn Sender>>,
    opcode: u32,
    nodeid: u64,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("token", &self.token)
            .field("opcode", &self.opcode)
            .field("nodeid", &self.nodeid)
            .finish()
    }
}

impl Reply {
    /// The completion of request `token` (`opcode` on `nodeid`), answered
    /// through `sender`.
    pub fn new(token: Token, sender: Arc<dyn Sender>, opcode: u32, nodeid: u64) -> Self {
        Self {
            token,
            sender: Some(sender),
            opcode,
            nodeid,
        }
    }

    /// The kernel's id of the request.
    pub fn unique(&self) -> u64 {
        self.token.unique
    }

    fn send(mut self, error: i32, payload: &[&[u8]]) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if let Err(e) = sender.send(self.token, error, payload) {
            // ENOENT: the request was interrupted and is gone; anything
            // else means the connection is ending.
            tracing::debug!(
                op = %opcode_name(self.opcode),
                unique = self.token.unique,
                "answer not delivered: {e}"
            );
        }
    }

    /// Success with no payload.
    pub fn ok(self) {
        self.send(0, &[])
    }

    /// Failure with the positive errno `errno`.
    pub fn error(self, errno: i32) {
        tracing::debug!(
            op = %opcode_name(self.opcode),
            inode = self.nodeid,
            errno,
            "request failed: {}",
            std::io::Error::from_raw_os_error(errno)
        );
        self.send(errno, &[])
    }

    /// Success with `data` as payload.
    pub fn data(self, data: &[u8]) {
        self.send(0, &[data])
    }

    /// Success with the concatenation of `parts` as payload.
    pub fn parts(self, parts: &[&[u8]]) {
        self.send(0, parts)
    }

    /// Success with one kernel structure as payload.
    pub fn pod<T: Pod>(self, v: &T) {
        self.send(0, &[abi::bytes(v)])
    }

    /// Success with a structure followed by another (CREATE).
    pub fn pod2<T: Pod, U: Pod>(self, a: &T, b: &U) {
        self.send(0, &[abi::bytes(a), abi::bytes(b)])
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            tracing::error!(
                op = %opcode_name(self.opcode),
                unique = self.token.unique,
                inode = self.nodeid,
                "request left unanswered (handler returned or panicked): answering EIO"
            );
            let _ = sender.send(self.token, libc::EIO, &[]);
        }
    }
}

/// A directory listing being packed into the kernel's `size` bytes:
/// `fuse_dirent`s (READDIR) or `fuse_direntplus`es (READDIRPLUS), each
/// padded to 8 bytes.
#[derive(Debug)]
pub struct DirBuf {
    buf: Vec<u8>,
    size: usize,
}

impl DirBuf {
    /// An empty listing of at most `size` bytes.
    pub fn new(size: u32) -> Self {
        let size = size as usize;
        Self {
            buf: Vec::with_capacity(size.min(1 << 20)),
            size,
        }
    }

    fn push(&mut self, entry: Option<&abi::EntryOut>, d: abi::Dirent, name: &[u8]) -> bool {
        let head = entry.map_or(0, |_| std::mem::size_of::<abi::EntryOut>());
        let len = abi::dirent_align(head + std::mem::size_of::<abi::Dirent>() + name.len());
        if self.buf.len() + len > self.size {
            return false;
        }
        let start = self.buf.len();
        if let Some(e) = entry {
            self.buf.extend_from_slice(abi::bytes(e));
        }
        self.buf.extend_from_slice(abi::bytes(&d));
        self.buf.extend_from_slice(name);
        self.buf.resize(start + len, 0);
        true
    }

    /// Adds an entry (READDIR): `off` is the offset of the entry after it,
    /// `typ` its `DT_*` type. False (nothing added) when it does not fit.
    pub fn add(&mut self, ino: u64, off: u64, typ: u8, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let d = abi::Dirent {
            ino,
            off,
            namelen: name.len() as u32,
            typ: u32::from(typ),
        };
        self.push(None, d, name)
    }

    /// Adds an entry with its lookup (READDIRPLUS; `entry.nodeid` 0 gives
    /// the kernel the name only, for `.` and `..`). False when it does not
    /// fit (the entry's lookup is then not taken).
    pub fn add_plus(&mut self, entry: &abi::EntryOut, off: u64, typ: u8, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let d = abi::Dirent {
            ino: if entry.nodeid == 0 {
                entry.attr.ino
            } else {
                entry.nodeid
            },
            off,
            namelen: name.len() as u32,
            typ: u32::from(typ),
        };
        self.push(Some(entry), d, name)
    }

    /// The packed bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// An answer as a [`Recorder`] keeps it: (unique, errno, payload).
pub type Answered = (u64, i32, Vec<u8>);

/// A [`Sender`] keeping what it is sent, for tests of handlers.
#[derive(Debug, Default)]
pub struct Recorder {
    /// (unique, errno, payload) of every answer, in order.
    pub answers: parking_lot::Mutex<Vec<Answered>>,
}

impl Sender for Recorder {
    fn send(&self, token: Token, error: i32, payload: &[&[u8]]) -> std::io::Result<()> {
        self.answers
            .lock()
            .push((token.unique, error, payload.concat()));
        Ok(())
    }
}

impl Recorder {
    /// A reply to request `unique` of `opcode` that this recorder keeps.
    pub fn reply(self: &Arc<Self>, unique: u64, opcode: u32) -> Reply {
        Reply::new(Token { unique, slot: 0 }, self.clone(), opcode, 1)
    }

    /// The answers so far, taken.
    pub fn take(&self) -> Vec<Answered> {
        std::mem::take(&mut *self.answers.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::abi::op;

    #[test]
    fn a_reply_answers_once_and_a_dropped_one_answers_eio() {
        let r = Arc::new(Recorder::default());
        r.reply(1, op::GETATTR).error(libc::ENOENT);
        r.reply(2, op::WRITE).pod(&abi::WriteOut {
            size: 5,
            padding: 0,
        });
        drop(r.reply(3, op::LOOKUP));
        let got = r.take();
        assert_eq!(got[0], (1, libc::ENOENT, vec![]));
        assert_eq!((got[1].0, got[1].1, got[1].2.len()), (2, 0, 8));
        assert_eq!(got[2], (3, libc::EIO, vec![]));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_dropped_reply_inside_a_panic_still_answers() {
        let r = Arc::new(Recorder::default());
        let reply = r.reply(9, op::READ);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _keep = reply;
            panic!("handler bug");
        }));
        assert!(res.is_err());
        assert_eq!(r.take(), vec![(9, libc::EIO, vec![])]);
    }

    #[test]
    fn dirents_are_padded_and_stop_at_the_size() {
        let mut d = DirBuf::new(64);
        assert!(d.add(5, 1, libc::DT_REG, OsStr::new("abc")));
        assert_eq!(d.bytes().len(), 32, "24 + 3 rounded up to 8");
        assert!(!d.add(6, 2, libc::DT_REG, OsStr::new("a-much-longer-name")));
        assert!(d.add(6, 2, libc::DT_DIR, OsStr::new("de")));
        assert_eq!(d.bytes().len(), 64);
        let (first, _) = abi::read::<abi::Dirent>(d.bytes()).unwrap();
        assert_eq!((first.ino, first.off, first.namelen), (5, 1, 3));
        let mut p = DirBuf::new(4096);
        let e = abi::EntryOut {
            nodeid: 0,
            attr: abi::Attr {
                ino: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(p.add_plus(&e, 1, libc::DT_DIR, OsStr::new(".")));
        assert_eq!(p.bytes().len(), 128 + 32);
        let (dot, _) = abi::read::<abi::Dirent>(&p.bytes()[128..]).unwrap();
        assert_eq!(dot.ino, 1);
    }
}
