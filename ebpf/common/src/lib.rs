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

/// Buckets of a latency histogram: the buckets of a Prometheus native
/// histogram of schema 3 **in seconds** (8 buckets per power of two, each
/// about 9% wide), so the export loses nothing. Bucket `j >= 1` is native
/// bucket `j - HIST_NATIVE_OFFSET`, holding values `v` (ns) with
/// `2^((i-1)/8) s < v <= 2^(i/8) s`; bucket 0 holds every value up to
/// `2^-20 s` (about 954 ns, the native zero bucket's threshold), the last
/// bucket everything above `2^((HIST_BUCKETS - 2 - HIST_NATIVE_OFFSET)/8) s`
/// (about 11 days).
pub const HIST_BUCKETS: usize = 320;

/// `native index = bucket - HIST_NATIVE_OFFSET` for buckets `>= 1`.
pub const HIST_NATIVE_OFFSET: i32 = 160;

/// For each of the 8 sub-buckets of an octave `[2^k, 2^(k+1))` ns: the
/// boundary `2^((n + f)/8)`, with `f` the fractional part of
/// `8 * log2(1e9)` (which moves boundaries from powers of two in ns to
/// powers of two in seconds), minus 1, times 2^32, rounded down.
/// Computed with 60 significant digits; the last one is exact
/// (`1e9 / 2^29 - 1`, times 2^32), so 1 s is the upper bound of its bucket.
pub const HIST_SUB_THRESHOLDS: [u64; 8] = [
    67_063_634,
    461_861_164,
    892_390_922,
    1_361_886_953,
    1_873_876_005,
    2_432_204_026,
    3_041_065_049,
    3_705_032_704,
];

/// `floor(log2(v))` for `v >= 1`. Branchy on purpose: plain BPF has no
/// count-leading-zeros.
#[inline(always)]
pub fn log2_floor(mut v: u64) -> u32 {
    let mut r = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The histogram bucket of a latency of `ns` nanoseconds (see
/// [`HIST_BUCKETS`]). The kernel and userspace both use this function,
/// so the two agree on every boundary.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let k = log2_floor(ns);
    // The bits below the leading one, as a 32-bit fraction of the octave
    // (exact for values below 2^33 ns, within 2^-32 of it above).
    let rest = ns - (1u64 << k);
    let frac = if k <= 32 {
        rest << (32 - k)
    } else {
        rest >> (k - 32)
    };
    let mut sub = 0u64;
    let mut n = 0;
    while n < 8 {
        if frac > HIST_SUB_THRESHOLDS[n] {
            sub += 1;
        }
        n += 1;
    }
    // 8k + sub + 1 is the schema-3 index of the value in ns, plus 240
    // (native index 0 holds (2^(-1/8) s, 1 s]).
    let full = 8 * u64::from(k) + sub + 1;
    let zero_upto = (240 - HIST_NATIVE_OFFSET) as u64;
    if full <= zero_upto {
        0
    } else {
        let j = full - zero_upto;
        if j >= HIST_BUCKETS as u64 {
            HIST_BUCKETS - 1
        } else {
            j as usize
        }
    }
}

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

/// The classic-tracepoint programs (the fallback where the kernel has no
/// BTF) copy this many bytes from the start of a tracepoint record (one
/// helper call) and read fields from the copy; the loader only accepts
/// fields that are naturally aligned and end within these bytes.
pub const RECORD_BYTES: usize = 128;

/// `FILE_LOCK_DEFERRED`: what `flock_lock_inode` returns to a blocking
/// request that must wait (it is called again once woken).
pub const FILE_LOCK_DEFERRED: i32 = 1;
/// `FL_SLEEP` in a file lock's flags: a blocking request (no `LOCK_NB`).
pub const FL_SLEEP: u32 = 128;
/// `FL_CLOSE` in a file lock's flags: the unlock of a last close, not a
/// flock(2) call.
pub const FL_CLOSE: u32 = 64;
/// `FUSE_LK_FLOCK` in `fuse_lk_in.lk_flags`: the lock request is a flock(2).
pub const FUSE_LK_FLOCK: u32 = 1;

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
/// Groups of the in-flight table (a power of two): 2048 x 4 ways = 8192
/// requests in flight, 320 KiB. Each request's group is written by its
/// sender's CPU and read by the answerer's: a small table keeps those
/// lines in the caches (measured: 8192 groups cost about 15 ns more per
/// request on a 2-vCPU VM).
pub const INFLIGHT_GROUPS: u32 = 2048;

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

/// A flock(2) wait in progress on one thread (key: tid): a kernel-served
/// request that `flock_lock_inode` deferred, or a FUSE_SETLK/SETLKW
/// flock request sent and not answered yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlockPending {
    /// `bpf_ktime_get_ns()` when the wait started.
    pub start_ns: u64,
    /// Inode number ([`TARGET_DEVICE`]) or FUSE node id ([`TARGET_FUSE`]).
    pub ino: u64,
    /// [`TARGET_DEVICE`] or [`TARGET_FUSE`].
    pub target_type: u32,
    /// Device or connection `dev_t` (kernel encoding).
    pub target_id: u32,
    pub tgid: u32,
    /// `FLOCK_KIND_*`.
    pub kind: u32,
    /// `FLOCK_MODE_*`.
    pub mode: u32,
    pub _pad: u32,
    /// Command name of the waiter (the thread that started the wait).
    pub comm: [u8; COMM_LEN],
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

/// Key of the flock waiter map: one process waiting on one file of a
/// target. Userspace finds the process's descriptor of that file by
/// matching device and inode in `/proc/PID/fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct WaiterKey {
    pub target_type: u32,
    pub target_id: u32,
    pub tgid: u32,
    pub _pad: u32,
    /// Inode number ([`TARGET_DEVICE`]) or FUSE node id ([`TARGET_FUSE`]).
    pub ino: u64,
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
    /// A pending flock wait replaced by another request of its thread
    /// before its end was seen (its wait is not counted).
    pub const FLOCK_WAITS_LOST: u32 = 5;
    /// A tracepoint record or request argument could not be read.
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
    pub const FLOCK_PENDING: &str = "FLOCK_PENDING";
    pub const FLOCK_STATS: &str = "FLOCK_STATS";
    pub const FLOCK_WAITERS: &str = "FLOCK_WAITERS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_CONFIG: &str = "EVENT_CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
}

/// Names of the programs (the functions in the probes crate). Each hook
/// has a BTF-typed program (`tp_btf`, reading the kernel's structures
/// directly) and a classic-tracepoint fallback (reading the record).
pub mod program_names {
    pub const FUSE_SEND_BTF: &str = "fuse_send_btf";
    pub const FUSE_END_BTF: &str = "fuse_end_btf";
    pub const FUSE_SEND_TP: &str = "fuse_send_tp";
    pub const FUSE_END_TP: &str = "fuse_end_tp";
    pub const FLOCK_LOCK_INODE_BTF: &str = "flock_lock_inode_btf";
    pub const FLOCK_LOCK_INODE_TP: &str = "flock_lock_inode_tp";
    pub const SIGNAL_DELIVER_BTF: &str = "signal_deliver_btf";
    pub const SIGNAL_DELIVER_TP: &str = "signal_deliver_tp";
    /// Empty programs on the FUSE hooks: the floor of what any probe there
    /// costs (`bench_probes`); never attached otherwise.
    pub const FLOOR_SEND_BTF: &str = "floor_send_btf";
    pub const FLOOR_END_BTF: &str = "floor_end_btf";
}

/// Names of the load-time globals (`Global<u32>` in the probes crate). The
/// loader sets each: member offsets of kernel structures from the kernel's
/// BTF (for the `tp_btf` programs), field offsets from tracefs `format`
/// files (for the classic ones), and a few numbers and switches.
pub mod globals {
    // Classic tracepoint records (tracefs formats).
    pub const SEND_CONN_OFF: &str = "SEND_CONN_OFF";
    pub const SEND_UNIQUE_OFF: &str = "SEND_UNIQUE_OFF";
    pub const SEND_OPCODE_OFF: &str = "SEND_OPCODE_OFF";
    pub const SEND_LEN_OFF: &str = "SEND_LEN_OFF";
    pub const END_CONN_OFF: &str = "END_CONN_OFF";
    pub const END_UNIQUE_OFF: &str = "END_UNIQUE_OFF";
    pub const END_LEN_OFF: &str = "END_LEN_OFF";
    pub const END_ERROR_OFF: &str = "END_ERROR_OFF";
    pub const LOCK_INODE_INO_OFF: &str = "LOCK_INODE_INO_OFF";
    pub const LOCK_INODE_DEV_OFF: &str = "LOCK_INODE_DEV_OFF";
    pub const LOCK_INODE_FLAGS_OFF: &str = "LOCK_INODE_FLAGS_OFF";
    pub const LOCK_INODE_TYPE_OFF: &str = "LOCK_INODE_TYPE_OFF";
    pub const LOCK_INODE_RET_OFF: &str = "LOCK_INODE_RET_OFF";
    // Kernel structures (BTF member offsets, bytes).
    /// `fuse_req.fm`, `fuse_mount.fc`, `fuse_conn.dev`: the connection.
    pub const REQ_FM_OFF: &str = "REQ_FM_OFF";
    pub const FM_FC_OFF: &str = "FM_FC_OFF";
    pub const FC_DEV_OFF: &str = "FC_DEV_OFF";
    /// `fuse_req.in.h.{len,opcode,unique,nodeid}`.
    pub const REQ_IN_LEN_OFF: &str = "REQ_IN_LEN_OFF";
    pub const REQ_IN_OPCODE_OFF: &str = "REQ_IN_OPCODE_OFF";
    pub const REQ_IN_UNIQUE_OFF: &str = "REQ_IN_UNIQUE_OFF";
    pub const REQ_IN_NODEID_OFF: &str = "REQ_IN_NODEID_OFF";
    /// `fuse_req.out.h.{len,error}`.
    pub const REQ_OUT_LEN_OFF: &str = "REQ_OUT_LEN_OFF";
    pub const REQ_OUT_ERROR_OFF: &str = "REQ_OUT_ERROR_OFF";
    /// `fuse_req.args`, `fuse_args.in_args[0].value`: a lock request's
    /// `fuse_lk_in`, whose `lk.type` and `lk_flags` offsets follow.
    pub const REQ_ARGS_OFF: &str = "REQ_ARGS_OFF";
    pub const ARGS_IN0_VALUE_OFF: &str = "ARGS_IN0_VALUE_OFF";
    pub const LK_IN_TYPE_OFF: &str = "LK_IN_TYPE_OFF";
    pub const LK_IN_FLAGS_OFF: &str = "LK_IN_FLAGS_OFF";
    /// `inode.i_ino`, `inode.i_sb`, `super_block.s_dev`.
    pub const INODE_INO_OFF: &str = "INODE_INO_OFF";
    pub const INODE_SB_OFF: &str = "INODE_SB_OFF";
    pub const SB_DEV_OFF: &str = "SB_DEV_OFF";
    /// `file_lock.c.flc_flags` and `file_lock.c.flc_type` (a byte).
    pub const FL_FLAGS_OFF: &str = "FL_FLAGS_OFF";
    pub const FL_TYPE_OFF: &str = "FL_TYPE_OFF";
    /// FUSE_SETLK and FUSE_SETLKW opcode numbers.
    pub const OPCODE_SETLK: &str = "OPCODE_SETLK";
    pub const OPCODE_SETLKW: &str = "OPCODE_SETLKW";
    /// 1: FUSE flock requests are counted in the flock maps (`observe`,
    /// triage); 0: not (the mount daemon counts its own).
    pub const FUSE_FLOCKS: &str = "FUSE_FLOCKS";
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
    unsafe impl aya::Pod for super::FlockPending {}
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
    assert!(HIST_BUCKETS <= 512);
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
    assert!(size_of::<FlockPending>() == 40 + COMM_LEN);
    assert!(size_of::<FlockKey>() == 16);
    assert!(size_of::<FlockStats>() == 8 * (5 + HIST_BUCKETS));
    assert!(size_of::<WaiterKey>() == 24);
    assert!(size_of::<WaiterStats>() == 40);
    assert!(size_of::<RequestEventRaw>() == 56);
    assert!(size_of::<EventConfig>() == 24);
};

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// The schema-3 bucket of `ns` computed in floating point: the
    /// smallest `i` with `ns / 1e9 <= 2^(i/8)`.
    fn reference_bucket(ns: u64) -> usize {
        let s = ns as f64 / 1e9;
        let i = (8.0 * s.log2()).ceil() as i64;
        (i + i64::from(HIST_NATIVE_OFFSET)).clamp(0, HIST_BUCKETS as i64 - 1) as usize
    }

    #[test]
    fn log2_floor_matches_leading_zeros() {
        for v in [1u64, 2, 3, 4, 1023, 1024, 1 << 40, u64::MAX] {
            assert_eq!(log2_floor(v), 63 - v.leading_zeros(), "{v}");
        }
    }

    #[test]
    fn buckets_are_schema_3_in_seconds() {
        // Away from boundaries, the integer function and the float agree.
        let mut v = 955u64;
        while v < 1 << 50 {
            let b = hist_bucket(v);
            let r = reference_bucket(v);
            if b != r {
                // Only allowed within float error of a boundary.
                let i = b as i32 - HIST_NATIVE_OFFSET;
                let upper = 1e9 * 2f64.powf(f64::from(i) / 8.0);
                let lower = 1e9 * 2f64.powf(f64::from(i - 1) / 8.0);
                let near = (v as f64 - upper).abs() / upper < 1e-9
                    || (v as f64 - lower).abs() / lower < 1e-9;
                assert!(near, "{v} ns: bucket {b}, reference {r}");
            }
            v += v / 7 + 1;
        }
    }

    #[test]
    fn powers_of_two_in_seconds_are_upper_bounds() {
        // 1 s, 2 s, ... and 1 s / 2^j while it is an integer number of ns.
        let mut exact = std::vec::Vec::new();
        for j in 0..20u32 {
            exact.push((1_000_000_000u64 << j, 8 * j as i32));
        }
        for j in 1..=9u32 {
            exact.push((1_000_000_000u64 >> j, -8 * j as i32));
        }
        for (ns, native) in exact {
            let b = hist_bucket(ns);
            assert_eq!(b as i32 - HIST_NATIVE_OFFSET, native, "{ns} ns");
            // Exact below 2^33 ns; above, the fraction keeps 32 bits and a
            // boundary may be off by up to 2^(k-32) ns (2 ns at 16 s).
            if ns < 1 << 33 {
                assert_eq!(hist_bucket(ns + 1), b + 1, "{} ns opens the next", ns + 1);
            } else {
                assert_eq!(hist_bucket(ns + (ns >> 31)), b + 1, "{ns} + 2^(k-32)");
            }
        }
    }

    #[test]
    fn zero_bucket_and_clamp() {
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1), 0);
        // 2^-20 s = 953.67 ns is the zero bucket's threshold.
        assert_eq!(hist_bucket(953), 0);
        assert_eq!(hist_bucket(954), 1);
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn buckets_are_monotonic_and_about_9_percent_wide() {
        let mut last = 0usize;
        let mut first_of_bucket = 954u64;
        let mut v = 954u64;
        while v < 1u64 << 44 {
            let b = hist_bucket(v);
            assert!(b >= last && b <= last + 1, "{v}: {last} -> {b}");
            if b != last {
                if last >= 2 {
                    let width = (v - first_of_bucket) as f64 / first_of_bucket as f64;
                    assert!((0.085..0.095).contains(&width), "{v}: width {width}");
                }
                first_of_bucket = v;
                last = b;
            }
            v += 1 + v / 4096;
        }
    }

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
