//! File attributes as the core returns them (ids already mapped to the
//! local side), and the times a SETATTR may set: the core's own types, so
//! that it does not depend on the FUSE wire format.

/// The kind of a file, from its mode or directory-entry type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    RegularFile,
    Directory,
    Symlink,
    NamedPipe,
    CharDevice,
    BlockDevice,
    Socket,
}

impl FileType {
    /// From `st_mode`.
    pub fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFIFO => FileType::NamedPipe,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFBLK => FileType::BlockDevice,
            libc::S_IFSOCK => FileType::Socket,
            _ => FileType::RegularFile,
        }
    }

    /// From a `DT_*` directory-entry type (unknown counts as regular).
    pub fn from_dtype(d: u8) -> Self {
        match d {
            libc::DT_DIR => FileType::Directory,
            libc::DT_LNK => FileType::Symlink,
            libc::DT_FIFO => FileType::NamedPipe,
            libc::DT_CHR => FileType::CharDevice,
            libc::DT_BLK => FileType::BlockDevice,
            libc::DT_SOCK => FileType::Socket,
            _ => FileType::RegularFile,
        }
    }

    /// The `S_IF*` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::RegularFile => libc::S_IFREG,
            FileType::Directory => libc::S_IFDIR,
            FileType::Symlink => libc::S_IFLNK,
            FileType::NamedPipe => libc::S_IFIFO,
            FileType::CharDevice => libc::S_IFCHR,
            FileType::BlockDevice => libc::S_IFBLK,
            FileType::Socket => libc::S_IFSOCK,
        }
    }

    /// The `DT_*` type.
    pub fn dtype(self) -> u8 {
        ((self.mode_bits() >> 12) & 0xf) as u8
    }
}

/// A point in time as stat(2) gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    fn new(sec: i64, nsec: i64) -> Self {
        Self {
            sec,
            nsec: nsec.clamp(0, 999_999_999) as u32,
        }
    }
}

/// Attributes of a file, ids on the local side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttr {
    /// FUSE inode number.
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub kind: FileType,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl FileAttr {
    /// From a backing `stat`, with the FUSE inode `ino` and local ids.
    pub fn from_stat(st: &libc::stat, ino: u64, uid: u32, gid: u32) -> Self {
        Self {
            ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: Timestamp::new(st.st_atime, st.st_atime_nsec),
            mtime: Timestamp::new(st.st_mtime, st.st_mtime_nsec),
            ctime: Timestamp::new(st.st_ctime, st.st_ctime_nsec),
            kind: FileType::from_mode(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid,
            gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
        }
    }
}

/// A time SETATTR sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// The current time (`UTIME_NOW`).
    Now,
    At(Timestamp),
}

/// The `utimensat` timespec for `t` (`UTIME_OMIT` when unset).
pub fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => libc::timespec {
            tv_sec: t.sec as libc::time_t,
            tv_nsec: i64::from(t.nsec),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_follow_the_mode_bits() {
        assert_eq!(FileType::Directory.dtype(), libc::DT_DIR);
        assert_eq!(FileType::RegularFile.dtype(), libc::DT_REG);
        assert_eq!(FileType::Symlink.dtype(), libc::DT_LNK);
        for d in [libc::DT_DIR, libc::DT_LNK, libc::DT_FIFO, libc::DT_SOCK] {
            assert_eq!(FileType::from_dtype(d).dtype(), d);
        }
    }

    #[test]
    fn unset_times_are_omitted() {
        assert_eq!(timespec(None).tv_nsec, libc::UTIME_OMIT);
        assert_eq!(timespec(Some(SetTime::Now)).tv_nsec, libc::UTIME_NOW);
        let t = timespec(Some(SetTime::At(Timestamp { sec: -5, nsec: 7 })));
        assert_eq!((t.tv_sec, t.tv_nsec), (-5, 7));
    }
}
