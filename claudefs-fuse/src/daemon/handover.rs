//! The channel between the keeper and the server it runs (see
//! `keeper.rs`): a `SOCK_SEQPACKET` socket pair, one JSON message per
//! packet, file descriptors alongside (`SCM_RIGHTS`). The server finds
//! its end in the fd named by [`CHANNEL_FD_ENV`].
//!
//! A server's life on it: it prepares (flags, storage paths) and says
//! [`ToKeeper::Prepared`]; the keeper answers [`ToServer::Start`] with the
//! `/dev/fuse` fd (and the INIT agreement once there is one); the server
//! sends [`ToKeeper::Init`] after answering INIT itself, [`ToKeeper::Hold`]
//! with each `/dev/fuse` clone it reads on (the requests it read stay with
//! the connection while the keeper holds them, so that the next server
//! gets them resent), and [`ToKeeper::Serving`]. [`ToServer::Drain`] asks
//! it to stop reading, finish what it holds, hand the journal over and
//! exit without unmounting ([`ToKeeper::Drained`]).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::session::InitState;

/// The environment variable naming the server's end of the channel.
pub const CHANNEL_FD_ENV: &str = "CLAUDEFS_FUSE_KEEPER_FD";

/// Largest message.
const MAX_MESSAGE: usize = 64 << 10;
/// Most fds in one message.
const MAX_FDS: usize = 64;

/// From the keeper to a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToServer {
    /// Serve the connection (the message carries its `/dev/fuse` fd).
    /// Without `init` the server answers the kernel's INIT itself.
    Start {
        generation: u64,
        init: Option<InitState>,
        /// The previous server drained and handed the journal over (an
        /// upgrade), rather than died.
        #[serde(default)]
        handed_over: bool,
        restarts: u64,
        upgrades: u64,
        last_gap_seconds: f64,
    },
    /// Stop reading, finish, hand the journal over, exit.
    Drain,
    /// The hand-over to this server took `seconds` (sent once it serves).
    Gap { seconds: f64 },
}

/// From a server to the keeper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToKeeper {
    /// Flags checked and storage paths open: ready to take the connection.
    Prepared,
    /// INIT answered: the agreement later servers adopt.
    Init { state: InitState },
    /// Hold the fds of the message (the server's `/dev/fuse` clones).
    Hold,
    /// Serving; requests in flight were resent (`resent` says whether the
    /// kernel could).
    Serving {
        resent: bool,
        transport: crate::session::Transport,
    },
    /// Drained: about to exit.
    Drained,
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair (both ends close on exec).
    pub fn pair() -> std::io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// The server's end named by [`CHANNEL_FD_ENV`], if it is set.
    pub fn from_env() -> Option<anyhow::Result<Channel>> {
        let v = std::env::var(CHANNEL_FD_ENV).ok()?;
        // The variable is for this process only, not for what it runs.
        std::env::remove_var(CHANNEL_FD_ENV);
        let Ok(raw) = v.parse::<RawFd>() else {
            return Some(Err(anyhow::anyhow!(
                "{CHANNEL_FD_ENV}={v}: not an fd number"
            )));
        };
        if rustix::io::fcntl_getfd(
            // SAFETY: only checks that the fd is open; not owned yet.
            unsafe { BorrowedFd::borrow_raw(raw) },
        )
        .is_err()
        {
            return Some(Err(anyhow::anyhow!(
                "{CHANNEL_FD_ENV}={v}: no such open fd"
            )));
        }
        // SAFETY: the keeper left this fd open for this process alone, and
        // nothing else here owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        Some(Ok(Channel { fd }))
    }

    /// The raw fd, to be inherited by a child (see `keeper.rs`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends `msg` with `fds`.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        for chunk in fds.chunks(MAX_FDS).take(1) {
            if !control.push(SendAncillaryMessage::ScmRights(chunk)) {
                return Err(std::io::Error::other("too many fds for one message"));
            }
        }
        if fds.len() > MAX_FDS {
            return Err(std::io::Error::other("too many fds for one message"));
        }
        sendmsg(
            &self.fd,
            &[IoSlice::new(&body)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }

    /// Receives a message and its fds; `None` when the other end is gone.
    pub fn recv<T: DeserializeOwned>(&self) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match recvmsg(
                &self.fd,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(m) => break m,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
        if got.bytes == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..got.bytes]).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad message: {e}"))
        })?;
        Ok(Some((msg, fds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn messages_and_fds_cross_and_eof_is_none() {
        let (k, s) = Channel::pair().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"through the channel").unwrap();
        k.send(
            &ToServer::Start {
                generation: 3,
                init: None,
                handed_over: false,
                restarts: 2,
                upgrades: 1,
                last_gap_seconds: 0.5,
            },
            &[f.as_fd()],
        )
        .unwrap();
        let (msg, fds) = s.recv::<ToServer>().unwrap().unwrap();
        assert!(matches!(msg, ToServer::Start { generation: 3, .. }));
        assert_eq!(fds.len(), 1);
        let mut g = std::fs::File::from(fds.into_iter().next().unwrap());
        g.rewind().unwrap();
        let mut text = String::new();
        g.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the channel");
        let serving = ToKeeper::Serving {
            resent: true,
            transport: crate::session::Transport::Dev,
        };
        s.send(&serving, &[]).unwrap();
        let (msg, fds) = k.recv::<ToKeeper>().unwrap().unwrap();
        assert_eq!(msg, serving);
        assert!(fds.is_empty());
        drop(s);
        assert!(k.recv::<ToKeeper>().unwrap().is_none());
    }
}
