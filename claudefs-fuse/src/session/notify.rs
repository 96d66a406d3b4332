//! Notifications the daemon sends the kernel unasked: invalidating an
//! inode's cached data and attributes or a directory entry, asking for
//! the requests in flight again (RESEND, Linux 6.9, protocol 7.40), and
//! dropping every cached dentry at once (INC_EPOCH, Linux 6.16).
//!
//! A notification is an out header with `unique` 0 and the notification
//! code in `error`, written to the device like an answer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::abi::{self, init_flags, notify_code};
use super::dev::Device;
use super::init::InitState;

/// Sends notifications on a session's device.
#[derive(Debug, Clone)]
pub struct Notifier {
    dev: Arc<Device>,
    state: InitState,
}

/// Encodes notification `code` with `payload` parts (header included).
pub fn encode(code: i32, payload: &[&[u8]]) -> Vec<u8> {
    let len =
        std::mem::size_of::<abi::OutHeader>() + payload.iter().map(|p| p.len()).sum::<usize>();
    let h = abi::OutHeader {
        len: len as u32,
        error: code,
        unique: 0,
    };
    let mut v = abi::bytes(&h).to_vec();
    for p in payload {
        v.extend_from_slice(p);
    }
    v
}

impl Notifier {
    pub(crate) fn new(dev: Arc<Device>, state: InitState) -> Self {
        Self { dev, state }
    }

    fn send(&self, code: i32, payload: &[&[u8]]) -> std::io::Result<()> {
        self.dev.write_all(&encode(code, payload))
    }

    /// Drops the kernel's cached attributes of `ino` and its cached data
    /// from `off` for `len` bytes (`len` 0: to the end; `off` < 0: the
    /// attributes only).
    pub fn inval_inode(&self, ino: u64, off: i64, len: i64) -> std::io::Result<()> {
        let o = abi::NotifyInvalInodeOut { ino, off, len };
        self.send(notify_code::INVAL_INODE, &[abi::bytes(&o)])
    }

    /// Drops the kernel's cached entry `name` of directory `parent`.
    pub fn inval_entry(&self, parent: u64, name: &OsStr) -> std::io::Result<()> {
        let o = abi::NotifyInvalEntryOut {
            parent,
            namelen: name.len() as u32,
            flags: 0,
        };
        self.send(
            notify_code::INVAL_ENTRY,
            &[abi::bytes(&o), name.as_bytes(), b"\0"],
        )
    }

    /// Asks the kernel to send again every request read from the device and
    /// not answered (their `unique` then has [`abi::UNIQUE_RESEND`] set).
    /// Unsupported before protocol 7.40.
    pub fn resend(&self) -> std::io::Result<()> {
        if !self.state.offered_has(init_flags::HAS_RESEND) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
        }
        self.send(notify_code::RESEND, &[])
    }

    /// Drops every cached dentry of the mount at once (Linux 6.16; the
    /// kernel answers `EINVAL` before).
    pub fn inc_epoch(&self) -> std::io::Result<()> {
        self.send(notify_code::INC_EPOCH, &[])
    }
}

impl InitState {
    /// Whether the kernel offered `flag` (whether or not it is in force).
    pub fn offered_has(&self, flag: u64) -> bool {
        self.offered & flag != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_invalidation_carries_the_name_and_its_nul() {
        let o = abi::NotifyInvalEntryOut {
            parent: 1,
            namelen: 3,
            flags: 0,
        };
        let v = encode(notify_code::INVAL_ENTRY, &[abi::bytes(&o), b"abc", b"\0"]);
        let (h, rest) = abi::read::<abi::OutHeader>(&v).unwrap();
        assert_eq!((h.len as usize, h.error, h.unique), (v.len(), 3, 0));
        assert_eq!(&rest[16..], b"abc\0");
        assert_eq!(encode(notify_code::RESEND, &[]).len(), 16);
    }
}
