//! Inode numbers as the client and the kernel exchange them.
//!
//! An [`InodeId`] is the FUSE `nodeid`: the kernel names every object it
//! holds by one, and [`FUSE_ROOT_ID`] is the mount's root directory.

/// Identifier of an inode (the FUSE `nodeid`).
pub type InodeId = u64;

/// The inode number the kernel uses for the root of the mount.
pub const FUSE_ROOT_ID: InodeId = 1;
