//! The kernel's FUSE wire format: the `#[repr(C)]` structures and constants
//! of `include/uapi/linux/fuse.h` that the daemon speaks (protocol 7.45,
//! written here from the header's layouts), and the two byte-level helpers
//! every other module uses to read and write them.
//!
//! All structures are padded to 64-bit boundaries by the kernel's own
//! design, so none has padding bytes of the compiler's, and any bit
//! pattern is a valid value of each (integers only): [`Pod`] states that.

use std::mem::size_of;

/// Major protocol version spoken.
pub const KERNEL_VERSION: u32 = 7;
/// Highest minor protocol version spoken.
pub const KERNEL_MINOR_VERSION: u32 = 45;
/// Node id of the root directory.
pub const ROOT_ID: u64 = 1;
/// The kernel refuses reads of the device into smaller buffers.
pub const MIN_READ_BUFFER: usize = 8192;
/// Bit 63 of `unique`: a request the kernel resent (FUSE_NOTIFY_RESEND).
pub const UNIQUE_RESEND: u64 = 1 << 63;
/// Bit 0 of `unique` marks an INTERRUPT request's own id.
pub const INT_REQ_BIT: u64 = 1;

/// Opcodes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
}

/// INIT flags (`flags | flags2 << 32`).
pub mod init_flags {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const POSIX_LOCKS: u64 = 1 << 1;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const EXPORT_SUPPORT: u64 = 1 << 4;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const FLOCK_LOCKS: u64 = 1 << 10;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const HANDLE_KILLPRIV: u64 = 1 << 19;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const ABORT_ERROR: u64 = 1 << 21;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const SETXATTR_EXT: u64 = 1 << 29;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const HAS_RESEND: u64 = 1 << 39;
    pub const OVER_IO_URING: u64 = 1 << 41;
    pub const REQUEST_TIMEOUT: u64 = 1 << 42;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// Open reply flags (`fuse_open_out.open_flags`).
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const NONSEEKABLE: u32 = 1 << 2;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// `fuse_release_in.release_flags`.
pub const RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
/// `fuse_getattr_in.getattr_flags`: `fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;
/// `fuse_lk_in.lk_flags`: a flock(2) lock.
pub const LK_FLOCK: u32 = 1 << 0;
/// `fuse_write_in.write_flags`: `lock_owner` is valid.
pub const WRITE_LOCKOWNER: u32 = 1 << 1;
/// `fuse_write_in.write_flags`: clear suid/sgid (HANDLE_KILLPRIV_V2).
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_read_in.read_flags`: `lock_owner` is valid.
pub const READ_LOCKOWNER: u32 = 1 << 1;
/// `fuse_open_in.open_flags`: clear suid/sgid (HANDLE_KILLPRIV_V2, O_TRUNC).
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// `fuse_fsync_in.fsync_flags`: data only.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;

/// Notification codes (`enum fuse_notify_code`), sent as `error`.
pub mod notify_code {
    pub const INVAL_INODE: i32 = 2;
    pub const INVAL_ENTRY: i32 = 3;
    pub const DELETE: i32 = 6;
    pub const RESEND: i32 = 7;
    pub const INC_EPOCH: i32 = 8;
}

/// Device ioctls (`FUSE_DEV_IOC_*`, magic 229).
pub mod ioctl {
    const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
        (dir << 30) | (size << 16) | (229 << 8) | nr
    }
    const WRITE: u64 = 1;
    const READ: u64 = 2;
    /// `_IOR(229, 0, uint32_t)`: attach this fd to the session of another.
    pub const CLONE: u64 = ioc(READ, 0, 4);
    /// `_IOW(229, 1, struct fuse_backing_map)`: register a passthrough file.
    pub const BACKING_OPEN: u64 = ioc(WRITE, 1, 16);
    /// `_IOW(229, 2, uint32_t)`: drop a passthrough registration.
    pub const BACKING_CLOSE: u64 = ioc(WRITE, 2, 4);
}

/// io_uring commands (`enum fuse_uring_cmd`).
pub mod uring_cmd {
    pub const REGISTER: u32 = 1;
    pub const COMMIT_AND_FETCH: u32 = 2;
}

/// Plain old data: a `#[repr(C)]` struct of integers with no padding
/// bytes, for which every bit pattern is a valid value.
///
/// # Safety
/// Implement only for such types.
pub unsafe trait Pod: Copy + 'static {}

/// Reads a `T` from the front of `b` (any alignment); the rest follows.
pub fn read<T: Pod>(b: &[u8]) -> Option<(T, &[u8])> {
    if b.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `b` holds at least size_of::<T>() bytes, `T: Pod` accepts any
    // bit pattern, and read_unaligned has no alignment requirement.
    let v = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) };
    Some((v, &b[size_of::<T>()..]))
}

/// The bytes of `v`.
pub fn bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so all size_of::<T>() bytes behind
    // the reference are initialised; the slice borrows `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

macro_rules! pod {
    ($($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? } = $size:expr;)*) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
        // SAFETY: repr(C) of integer fields laid out without gaps (the
        // size assertion below checks the sum against the kernel's size).
        unsafe impl Pod for $name {}
        const _: () = assert!(size_of::<$name>() == $size && 0 $(+ size_of::<$ty>())* == $size);
    )*};
}

pod! {
    /// `fuse_in_header`: the start of every request.
    InHeader { len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32, pid: u32,
        /// Length of request extensions, in 8-byte units.
        total_extlen: u16, padding: u16 } = 40;
    /// `fuse_out_header`: the start of every reply and notification.
    OutHeader { len: u32, error: i32, unique: u64 } = 16;
    /// `fuse_attr`.
    Attr { ino: u64, size: u64, blocks: u64, atime: u64, mtime: u64, ctime: u64,
        atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32, nlink: u32, uid: u32,
        gid: u32, rdev: u32, blksize: u32, flags: u32 } = 88;
    /// `fuse_kstatfs`.
    Kstatfs { blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64, bsize: u32,
        namelen: u32, frsize: u32, padding: u32, spare: [u32; 6] } = 80;
    /// `fuse_file_lock`.
    FileLock { start: u64, end: u64, typ: u32, pid: u32 } = 24;
    /// `fuse_entry_out`.
    EntryOut { nodeid: u64, generation: u64, entry_valid: u64, attr_valid: u64,
        entry_valid_nsec: u32, attr_valid_nsec: u32, attr: Attr } = 128;
    /// `fuse_forget_in`.
    ForgetIn { nlookup: u64 } = 8;
    /// `fuse_forget_one`.
    ForgetOne { nodeid: u64, nlookup: u64 } = 16;
    /// `fuse_batch_forget_in`.
    BatchForgetIn { count: u32, dummy: u32 } = 8;
    /// `fuse_getattr_in`.
    GetattrIn { getattr_flags: u32, dummy: u32, fh: u64 } = 16;
    /// `fuse_attr_out`.
    AttrOut { attr_valid: u64, attr_valid_nsec: u32, dummy: u32, attr: Attr } = 104;
    /// `fuse_mknod_in`.
    MknodIn { mode: u32, rdev: u32, umask: u32, padding: u32 } = 16;
    /// `fuse_mkdir_in`.
    MkdirIn { mode: u32, umask: u32 } = 8;
    /// `fuse_rename_in`.
    RenameIn { newdir: u64 } = 8;
    /// `fuse_rename2_in`.
    Rename2In { newdir: u64, flags: u32, padding: u32 } = 16;
    /// `fuse_link_in`.
    LinkIn { oldnodeid: u64 } = 8;
    /// `fuse_setattr_in`.
    SetattrIn { valid: u32, padding: u32, fh: u64, size: u64, lock_owner: u64, atime: u64,
        mtime: u64, ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32,
        unused4: u32, uid: u32, gid: u32, unused5: u32 } = 88;
    /// `fuse_open_in`.
    OpenIn { flags: u32, open_flags: u32 } = 8;
    /// `fuse_create_in`.
    CreateIn { flags: u32, mode: u32, umask: u32, open_flags: u32 } = 16;
    /// `fuse_open_out`.
    OpenOut { fh: u64, open_flags: u32, backing_id: i32 } = 16;
    /// `fuse_release_in`.
    ReleaseIn { fh: u64, flags: u32, release_flags: u32, lock_owner: u64 } = 24;
    /// `fuse_flush_in`.
    FlushIn { fh: u64, unused: u32, padding: u32, lock_owner: u64 } = 24;
    /// `fuse_read_in`.
    ReadIn { fh: u64, offset: u64, size: u32, read_flags: u32, lock_owner: u64, flags: u32,
        padding: u32 } = 40;
    /// `fuse_write_in`.
    WriteIn { fh: u64, offset: u64, size: u32, write_flags: u32, lock_owner: u64, flags: u32,
        padding: u32 } = 40;
    /// `fuse_write_out`.
    WriteOut { size: u32, padding: u32 } = 8;
    /// `fuse_fsync_in`.
    FsyncIn { fh: u64, fsync_flags: u32, padding: u32 } = 16;
    /// `fuse_setxattr_in` without `FUSE_SETXATTR_EXT` (its first 8 bytes).
    SetxattrIn { size: u32, flags: u32 } = 8;
    /// `fuse_getxattr_in`.
    GetxattrIn { size: u32, padding: u32 } = 8;
    /// `fuse_getxattr_out`.
    GetxattrOut { size: u32, padding: u32 } = 8;
    /// `fuse_lk_in`.
    LkIn { fh: u64, owner: u64, lk: FileLock, lk_flags: u32, padding: u32 } = 48;
    /// `fuse_lk_out`.
    LkOut { lk: FileLock } = 24;
    /// `fuse_access_in`.
    AccessIn { mask: u32, padding: u32 } = 8;
    /// `fuse_init_in` (protocol >= 7.36; older kernels send the first 16 bytes).
    InitIn { major: u32, minor: u32, max_readahead: u32, flags: u32, flags2: u32,
        unused: [u32; 11] } = 64;
    /// `fuse_init_out`.
    InitOut { major: u32, minor: u32, max_readahead: u32, flags: u32, max_background: u16,
        congestion_threshold: u16, max_write: u32, time_gran: u32, max_pages: u16,
        map_alignment: u16, flags2: u32, max_stack_depth: u32, request_timeout: u16,
        unused: [u16; 11] } = 64;
    /// `fuse_interrupt_in`.
    InterruptIn { unique: u64 } = 8;
    /// `fuse_fallocate_in`.
    FallocateIn { fh: u64, offset: u64, length: u64, mode: u32, padding: u32 } = 32;
    /// `fuse_lseek_in`.
    LseekIn { fh: u64, offset: u64, whence: u32, padding: u32 } = 24;
    /// `fuse_lseek_out`.
    LseekOut { offset: u64 } = 8;
    /// `fuse_statfs_out`.
    StatfsOut { st: Kstatfs } = 80;
    /// `fuse_dirent` without its name.
    Dirent { ino: u64, off: u64, namelen: u32, typ: u32 } = 24;
    /// `fuse_notify_inval_inode_out`.
    NotifyInvalInodeOut { ino: u64, off: i64, len: i64 } = 24;
    /// `fuse_notify_inval_entry_out`.
    NotifyInvalEntryOut { parent: u64, namelen: u32, flags: u32 } = 16;
    /// `fuse_backing_map` (FUSE_DEV_IOC_BACKING_OPEN).
    BackingMap { fd: i32, flags: u32, padding: u64 } = 16;
    /// `fuse_uring_ent_in_out`: the ring entry's part of its header buffer.
    UringEntInOut { flags: u64, commit_id: u64, payload_sz: u32, padding: u32,
        reserved: u64 } = 32;
    /// `fuse_uring_cmd_req`: the command area of a ring SQE.
    UringCmdReq { flags: u64, commit_id: u64, qid: u16, padding: [u8; 6] } = 24;
}

/// `FUSE_URING_IN_OUT_HEADER_SZ`: room for the in/out header in a ring
/// entry's header buffer.
pub const URING_IN_OUT_HEADER_SZ: usize = 128;
/// `FUSE_URING_OP_IN_OUT_SZ`: room for the per-opcode header.
pub const URING_OP_IN_OUT_SZ: usize = 128;
/// `struct fuse_uring_req_header`: in_out, op_in, ring_ent_in_out.
pub const URING_REQ_HEADER_SZ: usize =
    URING_IN_OUT_HEADER_SZ + URING_OP_IN_OUT_SZ + size_of::<UringEntInOut>();

/// `FUSE_DIRENT_ALIGN`: dirents are padded to 8 bytes.
pub const fn dirent_align(n: usize) -> usize {
    (n + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernels() {
        // Values as the C macros compute them on x86_64.
        assert_eq!(ioctl::CLONE, 0x8004_e500);
        assert_eq!(ioctl::BACKING_OPEN, 0x4010_e501);
        assert_eq!(ioctl::BACKING_CLOSE, 0x4004_e502);
    }

    #[test]
    fn read_and_bytes_round_trip_at_any_alignment() {
        let h = OutHeader {
            len: 16,
            error: -2,
            unique: 0x1122_3344_5566_7788,
        };
        let mut buf = vec![0u8; 1];
        buf.extend_from_slice(bytes(&h));
        buf.push(9);
        let (back, rest) = read::<OutHeader>(&buf[1..]).unwrap();
        assert_eq!(back, h);
        assert_eq!(rest, &[9]);
        assert!(read::<OutHeader>(&buf[..10]).is_none());
    }

    #[test]
    fn the_ring_header_is_as_large_as_the_kernel_expects() {
        assert_eq!(URING_REQ_HEADER_SZ, 288);
        assert_eq!(dirent_align(24 + 5), 32);
    }
}
