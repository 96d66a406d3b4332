//! `#[repr(C)]` types shared by the eBPF probes (`claudefs-ebpf`) and the
//! userspace loader in `claudefs-fuse`: map keys and values, the ring-buffer
//! event, the event-filter configuration, and the names of the maps, programs
//! and load-time globals. The `user` feature implements `aya::Pod` for them
//! so userspace can read the maps.
//!
//! Every type here is plain integers with explicit padding fields, so the
//! kernel and userspace agree on the layout byte for byte and hash keys never
//! contain uninitialised padding.
#![no_std]

/// Number of log2 latency buckets. Bucket `i` counts values `v` (in ns) with
/// `floor(log2(v)) == i`; a value of 0 lands in bucket 0.
pub const HIST_BUCKETS: usize = 64;

/// Flock kind index in [`FlockKey::kind`].
pub const FLOCK_KIND_SHARED: u32 = 0;
pub const FLOCK_KIND_EXCLUSIVE: u32 = 1;
pub const FLOCK_KIND_UNLOCK: u32 = 2;
/// Flock mode index in [`FlockKey::mode`].
pub const FLOCK_MODE_BLOCKING: u32 = 0;
pub const FLOCK_MODE_NONBLOCKING: u32 = 1;

/// Flock target type in [`FlockKey::target_type`] and friends: no device
/// could be determined.
pub const TARGET_LOCAL: u32 = 0;
/// The flock became a FUSE_SETLK/SETLKW request; the target id is the FUSE
/// connection `dev_t`.
pub const TARGET_FUSE: u32 = 1;
/// The kernel served the flock itself (`filelock/flock_lock_inode` fired);
/// the target id is the superblock `dev_t`.
pub const TARGET_DEVICE: u32 = 2;

/// A flock call that spent at least this long in the kernel counts as
/// "waited" and is recorded in the waiter map.
pub const FLOCK_WAITED_NS: u64 = 1_000_000;

/// `-EWOULDBLOCK` (== `-EAGAIN`), what a refused `LOCK_NB` returns.
pub const EWOULDBLOCK_RET: i64 = -11;

/// The probes copy this many bytes from the start of a tracepoint record
/// (one helper call) and read fields from the copy; the loader only accepts
/// fields that are naturally aligned and end within these bytes.
pub const RECORD_BYTES: usize = 64;

/// Length of a task command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Key of the per-(connection, opcode) FUSE request statistics.
/// `conn` is the kernel `dev_t` of the FUSE connection (as the tracepoint
/// reports it: `MAJOR << 20 | MINOR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct OpKey {
    pub conn: u32,
    pub opcode: u32,
}

/// Per-CPU value of the per-(connection, opcode) statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpStats {
    pub count: u64,
    /// Requests that ended with a non-zero error.
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: [u64; HIST_BUCKETS],
}

impl OpStats {
    pub const ZERO: OpStats = OpStats {
        count: 0,
        errors: 0,
        total_ns: 0,
        max_ns: 0,
        hist: [0; HIST_BUCKETS],
    };
}

/// A request is identified by its connection and its `unique` id (never 0:
/// the kernel's counter starts above it), the key of an in-flight slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct InflightKey {
    pub conn: u32,
    /// Always 0 (explicit padding, part of the hash key).
    pub _pad: u32,
    pub unique: u64,
}

/// What `fuse_request_send` remembers until `fuse_request_end`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InflightReq {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at send.
    pub start_ns: u64,
    /// Caller (send fires in the context of the thread issuing the request).
    pub tgid: u32,
    pub tid: u32,
    pub opcode: u32,
    /// Request length (`in.h.len`).
    pub len: u32,
}

/// One way of the in-flight table: a request between `fuse_request_send`
/// and `fuse_request_end`. `key.unique == 0` marks a free way.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InflightSlot {
    pub key: InflightKey,
    pub req: InflightReq,
}

/// Ways per in-flight group (a power of two).
pub const INFLIGHT_WAYS: usize = 4;
/// Groups of the in-flight table (a power of two): 8192 x 4 ways = 32768
/// requests in flight, 1.25 MiB.
pub const INFLIGHT_GROUPS: u32 = 8192;

/// One group of the set-associative in-flight table (an array-map value).
/// A request always lands in group `inflight_group(conn, unique)`; when all
/// ways are taken, the oldest request is evicted (counted), so requests
/// that never end cannot fill the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InflightGroup {
    pub ways: [InflightSlot; INFLIGHT_WAYS],
}

/// The group of a request. Uniques of one connection grow by 2, so
/// consecutive requests of a connection fill consecutive groups.
#[inline(always)]
pub fn inflight_group(conn: u32, unique: u64) -> u32 {
    ((unique >> 1) as u32).wrapping_add(conn.wrapping_mul(0x9E37_79B1)) & (INFLIGHT_GROUPS - 1)
}

/// A slot of the per-CPU, direct-mapped cache in front of `OP_STATS`: the
/// first key that lands in a slot owns it for good (`key.conn == 0`: free;
/// connection ids are never 0), later keys of that slot use the hash map.
/// A key's statistics are the sum of its cache slots and its hash entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpCacheSlot {
    pub key: OpKey,
    pub stats: OpStats,
}

/// Slots per CPU of the op-stats cache (a power of two).
pub const OP_CACHE_SLOTS: u32 = 128;

/// The op-stats cache slot of a key.
#[inline(always)]
pub fn op_cache_slot(key: &OpKey) -> u32 {
    key.conn.wrapping_mul(0x9E37_79B1).wrapping_add(key.opcode) & (OP_CACHE_SLOTS - 1)
}

/// Key of the per-process request statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ProcKey {
    pub conn: u32,
    pub tgid: u32,
}

/// Per-CPU value of the per-process request statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcStats {
    pub count: u64,
    pub total_ns: u64,
    /// Command name of the thread that created this entry on this CPU (a
    /// fallback for when `/proc/PID/comm` is gone); NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// A slot of the per-CPU, direct-mapped cache in front of `PROC_STATS`
/// (same ownership rule as [`OpCacheSlot`]; the comm stays in the hash
/// entry, which `fuse_request_send` creates).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcCacheSlot {
    pub key: ProcKey,
    pub count: u64,
    pub total_ns: u64,
}

/// Slots per CPU of the per-process cache (a power of two).
pub const PROC_CACHE_SLOTS: u32 = 256;

/// The per-process cache slot of a key.
#[inline(always)]
pub fn proc_cache_slot(key: &ProcKey) -> u32 {
    (key.tgid ^ key.conn.wrapping_mul(0x9E37_79B1)) & (PROC_CACHE_SLOTS - 1)
}

/// A flock(2) call in flight on one thread (key: tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlockInflight {
    /// `bpf_ktime_get_ns()` at `sys_enter_flock`.
    pub start_ns: u64,
    pub tgid: u32,
    pub fd: u32,
    pub cmd: u32,
    /// [`TARGET_LOCAL`], [`TARGET_FUSE`] or [`TARGET_DEVICE`].
    pub target_type: u32,
    /// Connection or device `dev_t` (kernel encoding), 0 for local.
    pub target_id: u32,
    pub _pad: u32,
}

/// Key of the per-(target, kind, mode) flock statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlockKey {
    pub target_type: u32,
    pub target_id: u32,
    /// `FLOCK_KIND_*`.
    pub kind: u32,
    /// `FLOCK_MODE_*`.
    pub mode: u32,
}

/// Per-CPU value of the flock statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlockStats {
    pub calls: u64,
    /// Calls that returned `-EWOULDBLOCK`.
    pub refused: u64,
    /// Calls that spent at least [`FLOCK_WAITED_NS`] in the kernel.
    pub waited: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: [u64; HIST_BUCKETS],
}

impl FlockStats {
    pub const ZERO: FlockStats = FlockStats {
        calls: 0,
        refused: 0,
        waited: 0,
        total_ns: 0,
        max_ns: 0,
        hist: [0; HIST_BUCKETS],
    };
}

/// Key of the flock waiter map: one process waiting on one fd of a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct WaiterKey {
    pub target_type: u32,
    pub target_id: u32,
    pub tgid: u32,
    pub fd: u32,
}

/// Per-CPU value of the flock waiter map (only calls that waited).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WaiterStats {
    pub calls: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// One finished FUSE request, as written to the events ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RequestEventRaw {
    pub conn: u32,
    pub opcode: u32,
    pub unique: u64,
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub end_ns: u64,
    pub error: i32,
    /// Request length (`in.h.len`).
    pub len: u32,
    /// Reply length (`out.h.len`).
    pub reply_len: u32,
    pub _pad: u32,
}

/// [`EventConfig::mode`]: no events.
pub const EVENTS_OFF: u32 = 0;
/// Every request.
pub const EVENTS_ALL: u32 = 1;
/// One request in [`EventConfig::one_in`] (counted per CPU).
pub const EVENTS_ONE_IN: u32 = 2;
/// Requests slower than [`EventConfig::slower_than_ns`].
pub const EVENTS_SLOWER_THAN: u32 = 3;

/// The event filter, entry 0 of the config array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventConfig {
    /// `EVENTS_*`.
    pub mode: u32,
    /// N of 1-in-N (0 and 1 both mean every request).
    pub one_in: u32,
    pub slower_than_ns: u64,
    /// Non-zero: only emit events of connection `only_conn`.
    pub filter_conn: u32,
    pub only_conn: u32,
}

/// Indexes of the per-CPU counters array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 0;
    /// Events written to the ring buffer.
    pub const EVENTS_SUBMITTED: u32 = 1;
    /// `fuse_request_end` without a matching send (sent before the probes
    /// were attached, or evicted from the in-flight table).
    pub const UNMATCHED_ENDS: u32 = 2;
    /// A statistics map was full and a new key could not be inserted.
    pub const MAP_FULL: u32 = 3;
    /// Running per-CPU sequence for the 1-in-N event filter.
    pub const SAMPLE_SEQ: u32 = 4;
    /// `sys_exit_flock` without a matching enter.
    pub const UNMATCHED_FLOCK_EXITS: u32 = 5;
    /// A tracepoint field could not be read.
    pub const READ_ERRORS: u32 = 6;
    /// In-flight requests evicted from a full in-flight group.
    pub const INFLIGHT_EVICTED: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

/// Names of the maps, as userspace looks them up.
pub mod map_names {
    pub const INFLIGHT: &str = "INFLIGHT";
    pub const OP_STATS: &str = "OP_STATS";
    pub const OP_CACHE: &str = "OP_CACHE";
    pub const PROC_CACHE: &str = "PROC_CACHE";
    pub const PROC_STATS: &str = "PROC_STATS";
    pub const FLOCK_INFLIGHT: &str = "FLOCK_INFLIGHT";
    pub const FLOCK_STATS: &str = "FLOCK_STATS";
    pub const FLOCK_WAITERS: &str = "FLOCK_WAITERS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_CONFIG: &str = "EVENT_CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
}

/// Names of the programs (the functions in the probes crate).
pub mod program_names {
    pub const FUSE_REQUEST_SEND: &str = "fuse_request_send";
    pub const FUSE_REQUEST_END: &str = "fuse_request_end";
    pub const SYS_ENTER_FLOCK: &str = "sys_enter_flock";
    pub const SYS_EXIT_FLOCK: &str = "sys_exit_flock";
    pub const FLOCK_LOCK_INODE: &str = "flock_lock_inode";
}

/// Names of the load-time globals (`Global<u32>` in the probes crate) that
/// hold tracepoint field offsets and the few numbers read from tracefs.
/// Each is set by the loader from `events/<cat>/<name>/format`.
pub mod globals {
    pub const SEND_CONN_OFF: &str = "SEND_CONN_OFF";
    pub const SEND_UNIQUE_OFF: &str = "SEND_UNIQUE_OFF";
    pub const SEND_OPCODE_OFF: &str = "SEND_OPCODE_OFF";
    pub const SEND_LEN_OFF: &str = "SEND_LEN_OFF";
    pub const END_CONN_OFF: &str = "END_CONN_OFF";
    pub const END_UNIQUE_OFF: &str = "END_UNIQUE_OFF";
    pub const END_LEN_OFF: &str = "END_LEN_OFF";
    pub const END_ERROR_OFF: &str = "END_ERROR_OFF";
    pub const FLOCK_FD_OFF: &str = "FLOCK_FD_OFF";
    pub const FLOCK_CMD_OFF: &str = "FLOCK_CMD_OFF";
    pub const FLOCK_RET_OFF: &str = "FLOCK_RET_OFF";
    /// 1 when `sys_exit_flock`'s `ret` is 4 bytes wide (it is 8 on 64-bit).
    pub const FLOCK_RET_IS_32: &str = "FLOCK_RET_IS_32";
    pub const LOCK_INODE_DEV_OFF: &str = "LOCK_INODE_DEV_OFF";
    /// FUSE_SETLK and FUSE_SETLKW opcode numbers, from the print fmt of
    /// `fuse_request_send`.
    pub const OPCODE_SETLK: &str = "OPCODE_SETLK";
    pub const OPCODE_SETLKW: &str = "OPCODE_SETLKW";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only plain integers
    // and arrays of them, and have no implicit padding (explicit `_pad`
    // fields where alignment needs it), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::OpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InflightKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InflightReq {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InflightSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InflightGroup {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpCacheSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcCacheSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlockInflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlockStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WaiterKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WaiterStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RequestEventRaw {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EventConfig {}
}

/// Compile-time layout checks: the kernel and userspace must agree on these
/// sizes, and none of the types may have implicit padding.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<OpKey>() == 8);
    assert!(size_of::<OpStats>() == 8 * (4 + HIST_BUCKETS));
    assert!(size_of::<InflightKey>() == 16);
    assert!(size_of::<InflightReq>() == 24);
    assert!(size_of::<InflightSlot>() == 40);
    assert!(size_of::<InflightGroup>() == 40 * INFLIGHT_WAYS);
    assert!(INFLIGHT_WAYS.is_power_of_two() && INFLIGHT_GROUPS.is_power_of_two());
    assert!(size_of::<ProcKey>() == 8);
    assert!(size_of::<ProcStats>() == 32);
    assert!(size_of::<OpCacheSlot>() == 8 + size_of::<OpStats>());
    assert!(size_of::<ProcCacheSlot>() == 24);
    assert!(OP_CACHE_SLOTS.is_power_of_two() && PROC_CACHE_SLOTS.is_power_of_two());
    assert!(size_of::<FlockInflight>() == 32);
    assert!(size_of::<FlockKey>() == 16);
    assert!(size_of::<FlockStats>() == 8 * (5 + HIST_BUCKETS));
    assert!(size_of::<WaiterKey>() == 16);
    assert!(size_of::<WaiterStats>() == 40);
    assert!(size_of::<RequestEventRaw>() == 56);
    assert!(size_of::<EventConfig>() == 24);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_requests_of_a_connection_use_distinct_groups() {
        // Uniques grow by 2: a window of in-flight requests much smaller
        // than the table never shares a group (no eviction, no collision).
        let conn = 63;
        let mut seen = [false; INFLIGHT_GROUPS as usize];
        for unique in (1_000_002..1_000_002 + 2 * u64::from(INFLIGHT_GROUPS)).step_by(2) {
            let g = inflight_group(conn, unique) as usize;
            assert!(!seen[g], "group {g} reused within one window");
            seen[g] = true;
        }
    }

    #[test]
    fn cache_slots_are_in_range() {
        for conn in [1u32, 40, 63, 1 << 20 | 5, u32::MAX] {
            for opcode in 0..64 {
                assert!(op_cache_slot(&OpKey { conn, opcode }) < OP_CACHE_SLOTS);
            }
            for tgid in [1u32, 2, 255, 256, 4_194_304] {
                assert!(proc_cache_slot(&ProcKey { conn, tgid }) < PROC_CACHE_SLOTS);
            }
        }
    }
}
