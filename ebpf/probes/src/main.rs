//! Kernel side of claudefs-fuse: programs on the FUSE request and file
//! lock hooks of the kernel. No syscall tracepoint is ever used: enabling
//! one puts every task of the host on the slow syscall path.
//!
//! - FUSE requests (`fuse`): `fuse_request_send` / `fuse_request_end`
//!   (Linux >= 6.12), per-(connection, opcode) counts, errors, total/max
//!   time and a latency histogram, per-(connection, tgid) counts and time,
//!   optionally one ring-buffer event per request; FUSE_SETLK/SETLKW flock
//!   requests also feed the flock maps.
//! - flock(2) served by the kernel (`flock`): `filelock/flock_lock_inode`
//!   (a deferred attempt starts a wait, the later grant or refusal on the
//!   same thread ends it) and `signal/signal_deliver` (a signal ends a
//!   wait with EINTR).
//!
//! Each hook has a BTF-typed program (`tp_btf`: reads the kernel's
//! structures straight from the typed argument, at member offsets the
//! loader looks up in the kernel's BTF) and a classic-tracepoint fallback
//! (copies the record, reads it at the offsets tracefs reports). No offset
//! is hard-coded: the defaults below are placeholders the loader always
//! overrides. Statistics maps are per-CPU, updated without sampling, and
//! merged in userspace; the programs' own troubles are counted in the
//! `COUNTERS` map.
#![no_std]
#![no_main]

mod flock;
mod fuse;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePointContext,
    EbpfContext, Global,
};
use claudefs_ebpf_common::{
    counter, hist_bucket, EventConfig, FlockKey, FlockPending, FlockStats, InflightGroup,
    OpCacheSlot, OpKey, OpStats, ProcCacheSlot, ProcKey, ProcStats, WaiterKey, WaiterStats,
    COMM_LEN, HIST_BUCKETS, INFLIGHT_GROUPS, OP_CACHE_SLOTS, PROC_CACHE_SLOTS, RECORD_BYTES,
};

// The kernel only lets GPL-compatible programs call bpf_probe_read_kernel
// (the classic programs' record copy, a lock request's arguments).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// ---- Load-time globals (names in `claudefs_ebpf_common::globals`). ----

// Classic tracepoint records.
#[unsafe(no_mangle)]
static SEND_CONN_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SEND_UNIQUE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SEND_OPCODE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SEND_LEN_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static END_CONN_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static END_UNIQUE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static END_LEN_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static END_ERROR_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LOCK_INODE_INO_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LOCK_INODE_DEV_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LOCK_INODE_FLAGS_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LOCK_INODE_TYPE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LOCK_INODE_RET_OFF: Global<u32> = Global::new(0);

// Kernel structures (BTF member offsets).
#[unsafe(no_mangle)]
static REQ_FM_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static FM_FC_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static FC_DEV_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static REQ_IN_LEN_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static REQ_IN_OPCODE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static REQ_IN_UNIQUE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static REQ_IN_NODEID_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static REQ_OUT_LEN_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static REQ_OUT_ERROR_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static REQ_ARGS_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ARGS_IN0_VALUE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LK_IN_TYPE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LK_IN_FLAGS_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODE_INO_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODE_SB_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SB_DEV_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static FL_FLAGS_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static FL_TYPE_OFF: Global<u32> = Global::new(0);

#[unsafe(no_mangle)]
static OPCODE_SETLK: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
static OPCODE_SETLKW: Global<u32> = Global::new(33);
#[unsafe(no_mangle)]
static FUSE_FLOCKS: Global<u32> = Global::new(0);

// ---- Maps (names in `claudefs_ebpf_common::map_names`). ----
// Sizes are defaults; the loader may shrink per-CPU maps on big machines.

/// Requests sent and not yet ended: a set-associative table in an array map
/// (see `InflightGroup`). An array lookup is inlined by the verifier, while
/// a hash-map insert and delete per request cost several hundred ns; a
/// full group evicts its oldest request, so requests that never end
/// (aborted connections) cannot fill it.
#[map]
static INFLIGHT: Array<InflightGroup> = Array::with_max_entries(INFLIGHT_GROUPS, 0);

/// Per-(connection, opcode) statistics. Not LRU: counts never vanish; a
/// full map is counted in `counter::MAP_FULL`.
#[map]
static OP_STATS: PerCpuHashMap<OpKey, OpStats> = PerCpuHashMap::with_max_entries(1024, 0);

/// Per-CPU direct-mapped caches in front of `OP_STATS` and `PROC_STATS`:
/// an array lookup is inlined by the verifier, a hash lookup is a call.
#[map]
static OP_CACHE: PerCpuArray<OpCacheSlot> = PerCpuArray::with_max_entries(OP_CACHE_SLOTS, 0);
#[map]
static PROC_CACHE: PerCpuArray<ProcCacheSlot> = PerCpuArray::with_max_entries(PROC_CACHE_SLOTS, 0);

/// Per-(connection, tgid) statistics, bounded by LRU eviction.
#[map]
static PROC_STATS: LruPerCpuHashMap<ProcKey, ProcStats> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Per-CPU direct-mapped cache (by tgid) of the (conn, tgid) keys known to
/// be in `PROC_STATS` (a stale hit only costs the comm of an evicted entry).
#[map]
static SEEN_PROCS: PerCpuArray<ProcKey> = PerCpuArray::with_max_entries(SEEN_PROCS_SLOTS, 0);
const SEEN_PROCS_SLOTS: u32 = 256;

/// flock(2) waits in progress, by thread id.
#[map]
static FLOCK_PENDING: LruHashMap<u32, FlockPending> = LruHashMap::with_max_entries(4096, 0);

/// Per-(target, kind, mode) flock statistics.
#[map]
static FLOCK_STATS: PerCpuHashMap<FlockKey, FlockStats> = PerCpuHashMap::with_max_entries(256, 0);

/// Per-(target, tgid, file) flock waiters (calls that waited), LRU-bounded.
#[map]
static FLOCK_WAITERS: LruPerCpuHashMap<WaiterKey, WaiterStats> =
    LruPerCpuHashMap::with_max_entries(1024, 0);

/// Per-request events for spans (only when the filter asks for them).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Entry 0: the event filter, written by userspace at any time.
#[map]
static EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexes in `claudefs_ebpf_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

// Zeroed values to insert new keys from (too big for the 512-byte stack).
static OP_STATS_ZERO: OpStats = OpStats::ZERO;
static FLOCK_STATS_ZERO: FlockStats = FlockStats::ZERO;
static PROC_STATS_ZERO: ProcStats = ProcStats {
    count: 0,
    total_ns: 0,
    comm: [0; COMM_LEN],
};

// ---- Helpers. ----

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: `p` points at this CPU's slot of a per-CPU array; tracing
        // programs do not nest on one CPU, so nothing else writes it now.
        unsafe { *p += 1 };
    }
}

/// The value of type `T` at byte `off` of the kernel object at `base`.
///
/// # Safety
/// `base` must be a BTF-typed kernel pointer of a `tp_btf` program (an
/// argument, or a pointer member read through one) and `off` a member
/// offset of its type from the kernel's BTF. The verifier checks the
/// access against that type and turns the load into one that cannot fault
/// (a bad pointer reads as 0).
#[inline(always)]
unsafe fn kernel_field<T: Copy>(base: *const u8, off: &Global<u32>) -> T {
    // SAFETY: see the function's contract.
    unsafe { base.add(off.load() as usize).cast::<T>().read() }
}

/// Adds one value of `ns` to a histogram (`claudefs_ebpf_common::hist_bucket`);
/// the index is bounds-checked here too, so the verifier accepts the store
/// whatever it knows of the index.
#[inline(always)]
fn hist_add(hist: &mut [u64; HIST_BUCKETS], ns: u64) {
    if let Some(b) = hist.get_mut(hist_bucket(ns)) {
        *b += 1;
    }
}

/// The first [`RECORD_BYTES`] bytes of a classic tracepoint record, copied
/// with a single helper call; fields are then read at their load-time
/// offsets. (Classic tracepoint programs may only access the context at
/// constant offsets, and the offsets here are only known at load time.)
#[repr(C, align(8))]
struct Record([u8; RECORD_BYTES]);

impl Record {
    #[inline(always)]
    fn read(ctx: &TracePointContext) -> Option<Record> {
        // SAFETY: bpf_probe_read_kernel never faults. The record sits in a
        // per-CPU trace buffer far larger than RECORD_BYTES, so the bytes
        // past a shorter record are readable; they are never used, because
        // the loader only accepts fields that end within the record.
        match unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const Record) } {
            Ok(r) => Some(r),
            Err(_) => {
                bump(counter::READ_ERRORS);
                None
            }
        }
    }

    /// The `u8` at offset `off` (masked into the buffer).
    #[inline(always)]
    fn u8_at(&self, off: &Global<u32>) -> u8 {
        self.0[off.load() as usize & (RECORD_BYTES - 1)]
    }

    /// The `u32` at offset `off` (masked into the buffer, 4-aligned).
    #[inline(always)]
    fn u32_at(&self, off: &Global<u32>) -> u32 {
        let o = off.load() as usize & (RECORD_BYTES - 4);
        // SAFETY: `o` is a multiple of 4 and `o + 4 <= RECORD_BYTES`, in an
        // 8-aligned buffer: an aligned, in-bounds read of plain bytes.
        unsafe { self.0.as_ptr().add(o).cast::<u32>().read() }
    }

    /// The `u64` at offset `off` (masked into the buffer, 8-aligned).
    #[inline(always)]
    fn u64_at(&self, off: &Global<u32>) -> u64 {
        let o = off.load() as usize & (RECORD_BYTES - 8);
        // SAFETY: as above with 8-byte alignment and bounds.
        unsafe { self.0.as_ptr().add(o).cast::<u64>().read() }
    }
}

/// Looks `key` up in a per-CPU hash map, inserting `zero` first if it is
/// missing; `None` (and a `MAP_FULL` count) if the map is full.
macro_rules! get_or_insert {
    ($map:expr, $key:expr, $zero:expr) => {{
        match $map.get_ptr_mut($key) {
            Some(p) => Some(p),
            None => {
                // EEXIST from a racing CPU is fine: the lookup finds it.
                let _ = $map.insert($key, $zero, aya_ebpf::bindings::BPF_NOEXIST as u64);
                let p = $map.get_ptr_mut($key);
                if p.is_none() {
                    $crate::bump(claudefs_ebpf_common::counter::MAP_FULL);
                }
                p
            }
        }
    }};
}
pub(crate) use get_or_insert;

/// CLOCK_MONOTONIC in ns: the one clock read of each hook.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions; it is marked unsafe
    // only because it is a raw helper binding.
    unsafe { bpf_ktime_get_ns() }
}

fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path,
    // so a loaded program never gets here.
    unsafe { core::hint::unreachable_unchecked() }
}
