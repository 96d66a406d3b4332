//! `#[repr(C)]` types shared by the eBPF probes (`claudefs-ebpf`) and the
//! userspace loader in `claudefs-fuse`. The `user` feature implements
//! `aya::Pod` for them so userspace can read the maps.
#![no_std]

/// Number of log2 latency buckets. Bucket `i` counts values `v` (in ns) with
/// `floor(log2(v)) == i`; a value of 0 lands in bucket 0.
pub const HIST_BUCKETS: usize = 64;

/// Flock kind index in [`FlockKey::kind`].
pub const FLOCK_KIND_SHARED: u8 = 0;
pub const FLOCK_KIND_EXCLUSIVE: u8 = 1;
pub const FLOCK_KIND_UNLOCK: u8 = 2;
/// Flock mode index in [`FlockKey::mode`].
pub const FLOCK_MODE_BLOCKING: u8 = 0;
pub const FLOCK_MODE_NONBLOCKING: u8 = 1;

/// Key of the per-(connection, opcode) FUSE request statistics.
/// `conn` is the kernel `dev_t` of the FUSE connection (as the tracepoint
/// reports it: `MAJOR << 20 | MINOR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OpKey {
    pub conn: u32,
    pub opcode: u32,
}

/// Per-CPU value of the per-(connection, opcode) statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpStats {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: [u64; HIST_BUCKETS],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only plain integers and
    // have no implicit padding, so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::OpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpStats {}
}
