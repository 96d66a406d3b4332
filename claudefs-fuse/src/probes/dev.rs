//! Device numbers. The tracepoints report the kernel's internal `dev_t`
//! (`MAJOR << 20 | MINOR`, 32 bits): the FUSE `connection` is the
//! superblock's `s_dev`, and so is `flock_lock_inode`'s `s_dev`, and
//! mountinfo prints it as `major:minor`. Userspace (`stat(2)`'s `st_dev`)
//! uses glibc's 64-bit layout ([`libc::major`]/[`libc::minor`]).
//! Everything the probes report is in the kernel encoding; these helpers
//! convert.

use std::path::Path;

/// Bits of the minor number in the kernel's internal `dev_t`.
pub const KERNEL_MINOR_BITS: u32 = 20;
const KERNEL_MINOR_MASK: u32 = (1 << KERNEL_MINOR_BITS) - 1;
const KERNEL_MAJOR_MAX: u32 = u32::MAX >> KERNEL_MINOR_BITS;

/// The kernel's internal `dev_t` for `major:minor` (`MKDEV`), None if either
/// part is too wide for it (major > 4095 or minor > 1048575).
pub fn kernel_dev(major: u32, minor: u32) -> Option<u32> {
    (major <= KERNEL_MAJOR_MAX && minor <= KERNEL_MINOR_MASK)
        .then_some((major << KERNEL_MINOR_BITS) | minor)
}

/// Major number of a kernel `dev_t` (`MAJOR`).
pub fn kernel_major(dev: u32) -> u32 {
    dev >> KERNEL_MINOR_BITS
}

/// Minor number of a kernel `dev_t` (`MINOR`).
pub fn kernel_minor(dev: u32) -> u32 {
    dev & KERNEL_MINOR_MASK
}

/// `"major:minor"` of a kernel `dev_t`, as mountinfo prints it.
pub fn format_dev(dev: u32) -> String {
    format!("{}:{}", kernel_major(dev), kernel_minor(dev))
}

/// Kernel `dev_t` of a userspace `st_dev`; None if it has no kernel
/// encoding.
pub fn kernel_dev_from_user(st_dev: libc::dev_t) -> Option<u32> {
    kernel_dev(libc::major(st_dev), libc::minor(st_dev))
}

/// Userspace `st_dev` of a kernel `dev_t`.
pub fn user_dev_from_kernel(dev: u32) -> libc::dev_t {
    libc::makedev(kernel_major(dev), kernel_minor(dev))
}

/// The kernel `dev_t` of the file system holding `path`: for the root of a
/// FUSE mount this is the connection id the FUSE tracepoints report.
pub fn kernel_dev_of_path(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let st_dev = std::fs::metadata(path)?.dev();
    kernel_dev_from_user(st_dev).ok_or_else(|| {
        std::io::Error::other(format!(
            "device {}:{} of {} has no kernel dev_t encoding",
            libc::major(st_dev),
            libc::minor(st_dev),
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_conversions_round_trip() {
        assert_eq!(kernel_dev(0, 53), Some(53));
        assert_eq!(kernel_dev(8, 17), Some(0x0080_0011));
        assert_eq!(kernel_dev(4095, 0xfffff), Some(u32::MAX));
        assert_eq!(kernel_dev(4096, 0), None);
        assert_eq!(kernel_dev(0, 1 << 20), None);
        assert_eq!(format_dev(0x0080_0011), "8:17");
        assert_eq!(format_dev(u32::MAX), "4095:1048575");

        for (major, minor) in [(0, 53), (8, 17), (259, 3), (4095, 0xfffff), (0, 256)] {
            let dev = kernel_dev(major, minor).unwrap();
            let st_dev = user_dev_from_kernel(dev);
            assert_eq!(libc::major(st_dev), major);
            assert_eq!(libc::minor(st_dev), minor);
            assert_eq!(kernel_dev_from_user(st_dev), Some(dev));
        }
        // glibc's st_dev keeps the low minor bits at the bottom: 8:17 is 0x811.
        assert_eq!(user_dev_from_kernel(0x0080_0011), 0x811);
    }

    #[test]
    fn dev_of_a_real_path() {
        use std::os::unix::fs::MetadataExt;
        let st = std::fs::metadata("/").unwrap().dev();
        let k = kernel_dev_of_path(Path::new("/")).unwrap();
        assert_eq!(user_dev_from_kernel(k), st);
    }
}
