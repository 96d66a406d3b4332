//! Device numbers. The tracepoints report the kernel's internal `dev_t`
//! (`MAJOR << 20 | MINOR`, 32 bits): the FUSE `connection` is the
//! superblock's `s_dev`, and so is `flock_lock_inode`'s `s_dev`. Userspace
//! (`stat(2)`'s `st_dev`, glibc `makedev`) uses a different 64-bit layout,
//! and mountinfo prints `major:minor`. Everything the probes report is in
//! the kernel encoding; these helpers convert.

use std::path::Path;

const MINOR_BITS: u32 = 20;
const MINOR_MASK: u32 = (1 << MINOR_BITS) - 1;

/// Kernel `dev_t` from major and minor (`MKDEV`).
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << MINOR_BITS) | (minor & MINOR_MASK)
}

/// Major number of a kernel `dev_t` (`MAJOR`).
pub fn kernel_major(dev: u32) -> u32 {
    dev >> MINOR_BITS
}

/// Minor number of a kernel `dev_t` (`MINOR`).
pub fn kernel_minor(dev: u32) -> u32 {
    dev & MINOR_MASK
}

/// Major number of a userspace (glibc) `dev_t`.
pub fn user_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

/// Minor number of a userspace (glibc) `dev_t`.
pub fn user_minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

/// Userspace (glibc `makedev`) `dev_t` from major and minor.
pub fn user_dev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
}

/// Kernel `dev_t` of a userspace `st_dev`.
pub fn kernel_dev_from_user(st_dev: u64) -> u32 {
    kernel_dev(user_major(st_dev), user_minor(st_dev))
}

/// Userspace `dev_t` of a kernel `dev_t`.
pub fn user_dev_from_kernel(dev: u32) -> u64 {
    user_dev(kernel_major(dev), kernel_minor(dev))
}

/// The kernel `dev_t` of the file system holding `path`: for the root of a
/// FUSE mount this is the connection id the FUSE tracepoints report.
pub fn kernel_dev_of_path(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(kernel_dev_from_user(std::fs::metadata(path)?.dev()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_encoding() {
        assert_eq!(kernel_dev(0, 63), 63);
        assert_eq!(kernel_dev(8, 1), (8 << 20) | 1);
        assert_eq!(kernel_major((259 << 20) | 5), 259);
        assert_eq!(kernel_minor((259 << 20) | 5), 5);
    }

    #[test]
    fn user_encoding_matches_glibc() {
        // glibc: makedev(8, 1) == 0x801; makedev(0, 300) == 0x10002c.
        assert_eq!(user_dev(8, 1), 0x801);
        assert_eq!(user_dev(0, 300), 0x10_002c);
        assert_eq!(user_major(0x801), 8);
        assert_eq!(user_minor(0x10_002c), 300);
        // And against libc's own macros.
        assert_eq!(user_dev(259, 70000), libc::makedev(259, 70000));
        assert_eq!(user_major(libc::makedev(4000, 9)), 4000);
        assert_eq!(user_minor(libc::makedev(4000, 1 << 19)), 1 << 19);
    }

    #[test]
    fn round_trips() {
        for (major, minor) in [(0, 0), (0, 63), (8, 1), (253, 4), (4095, (1 << 20) - 1)] {
            let k = kernel_dev(major, minor);
            let u = user_dev_from_kernel(k);
            assert_eq!(u, libc::makedev(major, minor));
            assert_eq!(kernel_dev_from_user(u), k);
        }
    }

    #[test]
    fn dev_of_a_real_path() {
        use std::os::unix::fs::MetadataExt;
        let st = std::fs::metadata("/").unwrap().dev();
        let k = kernel_dev_of_path(Path::new("/")).unwrap();
        assert_eq!(user_dev_from_kernel(k), st);
    }
}
