//! The kernel mount of the daemon's FUSE file system.
//!
//! The daemon mounts `/dev/fuse` itself with type `fuse.claudefs` (source
//! `claudefs`), so the mount table, `df -T`, the probes' `fstype` label and
//! triage all name the file system, instead of the bare `fuse` that a
//! plain FUSE mount shows. Without the privilege to call mount(2) the
//! caller falls back to fuser's own mount (through fusermount), with type
//! `fuse`.

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
