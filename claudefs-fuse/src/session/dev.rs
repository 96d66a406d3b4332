//! The `/dev/fuse` device: reads of requests, writes of answers (one
//! `writev` each, as the kernel wants an answer whole), clones for worker
//! threads (`FUSE_DEV_IOC_CLONE`: each clone has its own queue of requests
//! being processed, so workers do not contend on one), and passthrough
//! backing registrations (`FUSE_DEV_IOC_BACKING_OPEN/CLOSE`, Linux 6.9).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::abi;
use super::reply::{Sender, Token};

/// One open descriptor of a FUSE connection.
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
}

fn cvt(rc: isize) -> std::io::Result<usize> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

impl Device {
    /// The device behind `fd` (an open, mounted `/dev/fuse`).
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// A new descriptor attached to the same connection.
    pub fn clone_session(&self) -> std::io::Result<Device> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")?;
        let mut main = self.fd.as_raw_fd() as u32;
        // SAFETY: FUSE_DEV_IOC_CLONE reads a u32 (the session's fd) from
        // the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), abi::ioctl::CLONE as _, &mut main) };
        cvt(rc as isize)?;
        Ok(Device { fd: f.into() })
    }

    /// A duplicate of the descriptor (keeps the connection alive while held).
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Reads one request into `buf` (blocking). rustix's system calls,
    /// not libc's: libc's read and writev are pthread cancellation points
    /// and wrap every call in two cancellation toggles (callgrind: ~100
    /// instructions per request of the ~1900 an uncached stat costs).
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(rustix::io::read(&self.fd, buf)?)
    }

    /// Writes `parts` as one message.
    pub fn writev(&self, parts: &[IoSlice<'_>]) -> std::io::Result<usize> {
        Ok(rustix::io::writev(&self.fd, parts)?)
    }

    /// Writes one message.
    pub fn write_all(&self, b: &[u8]) -> std::io::Result<()> {
        self.writev(&[IoSlice::new(b)]).map(drop)
    }

    /// Registers `file` for kernel passthrough; the id goes in an open's
    /// answer.
    pub fn backing_open(&self, file: BorrowedFd<'_>) -> std::io::Result<u32> {
        let map = abi::BackingMap {
            fd: file.as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: FUSE_DEV_IOC_BACKING_OPEN reads a fuse_backing_map from
        // the pointer, valid for the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), abi::ioctl::BACKING_OPEN as _, &map) };
        cvt(rc as isize).map(|id| id as u32)
    }

    /// Drops passthrough registration `id`.
    pub fn backing_close(&self, id: u32) -> std::io::Result<()> {
        // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads a u32 from the pointer.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), abi::ioctl::BACKING_CLOSE as _, &id) };
        cvt(rc as isize).map(drop)
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Encodes the out header of an answer to `unique` (`error` positive).
pub fn out_header(unique: u64, error: i32, payload_len: usize) -> abi::OutHeader {
    abi::OutHeader {
        len: (std::mem::size_of::<abi::OutHeader>() + payload_len) as u32,
        error: -error,
        unique,
    }
}

impl Sender for Device {
    fn send(&self, token: Token, error: i32, payload: &[&[u8]]) -> std::io::Result<()> {
        let payload: &[&[u8]] = if error != 0 { &[] } else { payload };
        let len = payload.iter().map(|p| p.len()).sum();
        let h = out_header(token.unique, error, len);
        let mut iov = [IoSlice::new(&[]); 4];
        iov[0] = IoSlice::new(abi::bytes(&h));
        if payload.len() < iov.len() {
            for (i, p) in payload.iter().enumerate() {
                iov[i + 1] = IoSlice::new(p);
            }
            self.writev(&iov[..payload.len() + 1]).map(drop)
        } else {
            let mut v = abi::bytes(&h).to_vec();
            for p in payload {
                v.extend_from_slice(p);
            }
            self.write_all(&v)
        }
    }
}

/// A passthrough registration; dropped, it is unregistered.
#[derive(Debug)]
pub struct BackingId {
    dev: Arc<Device>,
    id: u32,
}

impl BackingId {
    /// Registers `file` on `dev`'s connection.
    pub fn open(dev: &Arc<Device>, file: BorrowedFd<'_>) -> std::io::Result<Self> {
        let id = dev.backing_open(file)?;
        Ok(Self {
            dev: dev.clone(),
            id,
        })
    }

    /// The id the kernel gave.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for BackingId {
    fn drop(&mut self) {
        if let Err(e) = self.dev.backing_close(self.id) {
            tracing::debug!(id = self.id, "passthrough registration not closed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_has_a_negative_errno_and_no_payload() {
        let h = out_header(7, libc::ENOENT, 0);
        assert_eq!((h.len, h.error, h.unique), (16, -libc::ENOENT, 7));
    }

    #[test]
    fn answers_are_written_whole() {
        // A pipe stands in for the device.
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        let (rd, wr) = unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        let dev = Device::new(wr);
        let parts: [&[u8]; 5] = [b"a", b"bc", b"d", b"e", b"f"];
        dev.send(Token { unique: 3, slot: 0 }, 0, &parts).unwrap();
        dev.send(Token { unique: 4, slot: 0 }, 0, &parts[..2])
            .unwrap();
        let rdev = Device::new(rd);
        let mut buf = [0u8; 64];
        let n = rdev.read(&mut buf).unwrap();
        assert_eq!(n, 16 + 6 + 16 + 3);
        let (h, rest) = abi::read::<abi::OutHeader>(&buf[..n]).unwrap();
        assert_eq!((h.len, h.unique), (22, 3));
        assert_eq!(&rest[..6], b"abcdef");
    }
}
