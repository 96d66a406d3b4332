//! The kernel mount of the daemon's FUSE file system.
//!
//! The daemon mounts `/dev/fuse` itself with type `fuse.claudefs` (source
//! `claudefs`), so the mount table, `df -T`, the probes' `fstype` label and
//! triage all name the file system, instead of the bare `fuse` that a
//! plain FUSE mount shows. Without the privilege to call mount(2) the
//! caller falls back to [`mount_fusermount`]: the setuid `fusermount3`
//! mounts and hands the device back over a socket (its `_FUSE_COMMFD`
//! protocol); the mount then has type `fuse`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The mount's file system type, as the mount table shows it.
pub const FSTYPE: &str = "fuse.claudefs";
/// The mount's source, as the mount table shows it.
pub const SOURCE: &str = "claudefs";

/// The kernel's mount options for a FUSE mount served through `fd`, of
/// a root directory with mode `root_mode`, owned by `uid`/`gid`; access is
/// checked by the kernel (`default_permissions`) for every user
/// (`allow_other`).
pub fn mount_data(fd: i32, root_mode: u32, uid: u32, gid: u32) -> String {
    format!(
        "fd={fd},rootmode={:o},user_id={uid},group_id={gid},default_permissions,allow_other",
        root_mode & libc::S_IFMT
    )
}

/// Opens `/dev/fuse` and mounts it at `mountpoint`; returns the device
/// descriptor the session serves. `EPERM` means the caller may not mount.
pub fn mount_fuse(mountpoint: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let root_mode = std::fs::metadata(mountpoint)?.mode();
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd = OwnedFd::from(dev);
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let cstr =
        |s: &[u8]| CString::new(s).map_err(|_| std::io::Error::other("NUL in a mount argument"));
    let target = cstr(mountpoint.as_os_str().as_bytes())?;
    let source = cstr(SOURCE.as_bytes())?;
    let fstype = cstr(FSTYPE.as_bytes())?;
    let data = cstr(mount_data(fd.as_raw_fd(), root_mode, uid, gid).as_bytes())?;
    // SAFETY: every pointer is a NUL-terminated string alive for the call;
    // `data` is the option string the fuse file system parses.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Mounts `mountpoint` through `fusermount3` (for a caller that may not
/// call mount(2)): it opens `/dev/fuse`, mounts it, and sends the
/// descriptor back over the unix socket whose number is in
/// `_FUSE_COMMFD` (SCM_RIGHTS).
pub fn mount_fusermount(mountpoint: &Path) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut sv = [0; 2];
    // SAFETY: socketpair fills the two-int array; no other precondition.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o")
        .arg(format!(
            "fsname={SOURCE},subtype=claudefs,default_permissions"
        ))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_fd.to_string());
    // SAFETY: the closure only calls fcntl (async-signal-safe) in the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // The child's end of the socket survives exec.
            if libc::fcntl(theirs_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn()?;
    drop(theirs);
    let fd = recv_fd(&ours);
    let status = child.wait()?;
    match fd {
        Ok(fd) if status.success() => Ok(fd),
        Ok(_) => Err(std::io::Error::other(format!(
            "fusermount3 failed: {status}"
        ))),
        Err(e) => Err(std::io::Error::other(format!(
            "fusermount3 ({status}) sent no device: {e}"
        ))),
    }
}

/// Receives one descriptor sent with SCM_RIGHTS on `sock`.
fn recv_fd(sock: &OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one cmsghdr carrying one int, 8-byte aligned.
    let mut space = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    // SAFETY: msg points at the valid iovec and control buffer above.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled,
    // within msg_controllen.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(std::io::Error::other("no descriptor in the message"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_descriptor_and_root_type() {
        assert_eq!(
            mount_data(7, libc::S_IFDIR | 0o755, 0, 0),
            "fd=7,rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
        );
    }
}
