//! Kernel side of claudefs-fuse: tracepoint programs that watch the FUSE
//! device and the flock(2) syscalls.
//!
//! - `fuse/fuse_request_send` + `fuse/fuse_request_end` (Linux >= 6.12):
//!   requests are paired by (connection, unique) in a set-associative
//!   in-flight table that evicts its oldest entry when a group is full, so
//!   requests that never end cannot fill it. On end: per-(connection,
//!   opcode) count, errors, total/max time and a log2 histogram; per
//!   (connection, tgid) count and time; optionally one event in the ring
//!   buffer, behind the filter of the `EVENT_CONFIG` map.
//! - `syscalls/sys_enter_flock` + `sys_exit_flock`: a per-thread in-flight
//!   entry; per (target, kind, mode) calls, refused, waited and a wait
//!   histogram; per (target, tgid, fd) waiters. The target is the FUSE
//!   connection when the call turned into FUSE_SETLK/SETLKW on that thread,
//!   else the device reported by `filelock/flock_lock_inode`, else local.
//!
//! Statistics maps are per-CPU and updated without sampling; userspace
//! merges them. Tracepoint field offsets are load-time globals the loader
//! sets from tracefs `format` files, never hard-coded here (the values below
//! are only defaults). aya-log is used only on unexpected states.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePointContext,
    EbpfContext, Global,
};
use aya_log_ebpf::warn;
use claudefs_ebpf_common::{
    counter, inflight_group, op_cache_slot, proc_cache_slot, EventConfig, FlockInflight, FlockKey,
    FlockStats, InflightGroup, InflightKey, InflightReq, InflightSlot, OpCacheSlot, OpKey, OpStats,
    ProcCacheSlot, ProcKey, ProcStats, RequestEventRaw, WaiterKey, WaiterStats, COMM_LEN,
    EVENTS_ALL, EVENTS_ONE_IN, EVENTS_SLOWER_THAN, EWOULDBLOCK_RET, FLOCK_KIND_EXCLUSIVE,
    FLOCK_KIND_SHARED, FLOCK_KIND_UNLOCK, FLOCK_MODE_BLOCKING, FLOCK_MODE_NONBLOCKING,
    FLOCK_WAITED_NS, HIST_BUCKETS, INFLIGHT_GROUPS, INFLIGHT_WAYS, OP_CACHE_SLOTS,
    PROC_CACHE_SLOTS, RECORD_BYTES, TARGET_DEVICE, TARGET_FUSE, TARGET_LOCAL,
};

// The kernel only lets GPL-compatible programs call bpf_probe_read_kernel,
// which reads the tracepoint fields at run-time offsets.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// ---- Load-time globals (names in `claudefs_ebpf_common::globals`). ----
// Defaults are the offsets of Linux 6.18 x86_64; the loader always
// overrides them with what tracefs reports on the running kernel.

#[unsafe(no_mangle)]
static SEND_CONN_OFF: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static SEND_UNIQUE_OFF: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static SEND_OPCODE_OFF: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static SEND_LEN_OFF: Global<u32> = Global::new(28);
#[unsafe(no_mangle)]
static END_CONN_OFF: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static END_UNIQUE_OFF: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static END_LEN_OFF: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static END_ERROR_OFF: Global<u32> = Global::new(28);
#[unsafe(no_mangle)]
static FLOCK_FD_OFF: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static FLOCK_CMD_OFF: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static FLOCK_RET_OFF: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static FLOCK_RET_IS_32: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LOCK_INODE_DEV_OFF: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static OPCODE_SETLK: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
static OPCODE_SETLKW: Global<u32> = Global::new(33);

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

/// flock(2) calls in flight, by thread id.
#[map]
static FLOCK_INFLIGHT: LruHashMap<u32, FlockInflight> = LruHashMap::with_max_entries(4096, 0);

/// Per-(target, kind, mode) flock statistics.
#[map]
static FLOCK_STATS: PerCpuHashMap<FlockKey, FlockStats> = PerCpuHashMap::with_max_entries(256, 0);

/// Per-(target, tgid, fd) flock waiters (calls that waited), LRU-bounded.
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

/// The first [`RECORD_BYTES`] bytes of a tracepoint record, copied with a
/// single helper call; fields are then read at their load-time offsets.
/// (Tracepoint programs may only access the context at constant offsets,
/// and the offsets here are only known at load time.)
#[repr(C, align(8))]
struct Record([u8; RECORD_BYTES]);

impl Record {
    #[inline(always)]
    fn read(ctx: &TracePointContext) -> Result<Record, i64> {
        // SAFETY: bpf_probe_read_kernel never faults. The record sits in a
        // per-CPU trace buffer far larger than RECORD_BYTES, so the bytes
        // past a shorter record are readable; they are never used, because
        // the loader only accepts fields that end within the record.
        match unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const Record) } {
            Ok(r) => Ok(r),
            Err(_) => {
                bump(counter::READ_ERRORS);
                Err(-1)
            }
        }
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

/// `floor(log2(v))`, 0 for 0: the histogram bucket of `v`. Branchy on
/// purpose, so it compiles to plain BPF without a count-leading-zeros.
#[inline(always)]
fn log2_bucket(mut v: u64) -> usize {
    let mut r = 0usize;
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
    r & (HIST_BUCKETS - 1)
}

/// Looks `key` up in a per-CPU hash map, inserting `zero` first if it is
/// missing; `None` (and a `MAP_FULL` count) if the map is full.
macro_rules! get_or_insert {
    ($map:expr, $key:expr, $zero:expr) => {{
        match $map.get_ptr_mut($key) {
            Some(p) => Some(p),
            None => {
                // EEXIST from a racing CPU is fine: the lookup finds it.
                let _ = $map.insert($key, $zero, BPF_NOEXIST as u64);
                let p = $map.get_ptr_mut($key);
                if p.is_none() {
                    bump(counter::MAP_FULL);
                }
                p
            }
        }
    }};
}

/// CLOCK_MONOTONIC in ns.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions; it is marked unsafe
    // only because it is a raw helper binding.
    unsafe { bpf_ktime_get_ns() }
}

fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

// ---- FUSE requests. ----

#[tracepoint]
pub fn fuse_request_send(ctx: TracePointContext) -> u32 {
    let _ = try_fuse_request_send(&ctx);
    0
}

fn try_fuse_request_send(ctx: &TracePointContext) -> Result<(), i64> {
    let start_ns = now_ns();
    let rec = Record::read(ctx)?;
    let conn = rec.u32_at(&SEND_CONN_OFF);
    let unique = rec.u64_at(&SEND_UNIQUE_OFF);
    let opcode = rec.u32_at(&SEND_OPCODE_OFF);
    let len = rec.u32_at(&SEND_LEN_OFF);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let key = InflightKey {
        conn,
        _pad: 0,
        unique,
    };
    let req = InflightReq {
        start_ns,
        tgid: (pid_tgid >> 32) as u32,
        tid,
        opcode,
        len,
    };
    if let Some(g) = INFLIGHT.get_ptr_mut(inflight_group(conn, unique)) {
        // Threads start probing at different ways, so two CPUs sending into
        // the same group at the same instant do not pick the same free way.
        let first = tid as usize;
        let mut chosen = None;
        let (mut oldest_ns, mut oldest) = (u64::MAX, 0usize);
        for i in 0..INFLIGHT_WAYS {
            let w = (first + i) & (INFLIGHT_WAYS - 1);
            // SAFETY: `g` points at a valid array-map value; `w` is in range.
            let slot = unsafe { &(*g).ways[w] };
            if slot.key.unique == 0 {
                chosen = Some(w);
                break;
            }
            if slot.req.start_ns < oldest_ns {
                (oldest_ns, oldest) = (slot.req.start_ns, w);
            }
        }
        let w = match chosen {
            Some(w) => w,
            None => {
                bump(counter::INFLIGHT_EVICTED);
                oldest
            }
        };
        // SAFETY: as above; the way is free or evicted, so no other request
        // owns it.
        unsafe { (*g).ways[w & (INFLIGHT_WAYS - 1)] = InflightSlot { key, req } };
    }
    // Create the caller's per-process entry here, where the current task is
    // the caller: end runs in the daemon's context, so its comm would be
    // the daemon's.
    // A small per-CPU cache of the callers seen last skips the hash lookup
    // for the common case of one process issuing many requests.
    let proc_key = ProcKey {
        conn,
        tgid: req.tgid,
    };
    let seen = SEEN_PROCS.get_ptr_mut(req.tgid & (SEEN_PROCS_SLOTS - 1));
    // SAFETY: this CPU's slot of a per-CPU array.
    let cached = seen.is_some_and(|p| unsafe { *p } == proc_key);
    if !cached {
        if PROC_STATS.get_ptr(proc_key).is_none() {
            let fresh = ProcStats {
                count: 0,
                total_ns: 0,
                comm: comm(),
            };
            let _ = PROC_STATS.insert(proc_key, fresh, BPF_NOEXIST as u64);
        }
        if let Some(p) = seen {
            // SAFETY: as above.
            unsafe { *p = proc_key };
        }
    }
    // A flock(2) that became a lock request: attribute it to this mount.
    if opcode == OPCODE_SETLK.load() || opcode == OPCODE_SETLKW.load() {
        if let Some(f) = FLOCK_INFLIGHT.get_ptr_mut(tid) {
            // SAFETY: entries of this map are only written by the thread
            // whose tid is the key, and this is that thread.
            unsafe {
                (*f).target_type = TARGET_FUSE;
                (*f).target_id = conn;
            }
        }
    }
    Ok(())
}

#[tracepoint]
pub fn fuse_request_end(ctx: TracePointContext) -> u32 {
    let _ = try_fuse_request_end(&ctx);
    0
}

fn try_fuse_request_end(ctx: &TracePointContext) -> Result<(), i64> {
    let end_ns = now_ns();
    let rec = Record::read(ctx)?;
    let conn = rec.u32_at(&END_CONN_OFF);
    let unique = rec.u64_at(&END_UNIQUE_OFF);
    let Some(g) = INFLIGHT.get_ptr_mut(inflight_group(conn, unique)) else {
        return Ok(());
    };
    let mut found = None;
    for w in 0..INFLIGHT_WAYS {
        // SAFETY: `g` points at a valid array-map value; `w` is in range.
        let slot = unsafe { &mut (*g).ways[w] };
        if slot.key.unique == unique && slot.key.conn == conn {
            let req = slot.req;
            // Free the way only after copying the request out.
            slot.key = InflightKey::default();
            found = Some(req);
            break;
        }
    }
    let Some(req) = found else {
        bump(counter::UNMATCHED_ENDS);
        return Ok(());
    };
    let error = rec.u32_at(&END_ERROR_OFF) as i32;
    let delta = end_ns.saturating_sub(req.start_ns);

    let op_key = OpKey {
        conn,
        opcode: req.opcode,
    };
    let s = match OP_CACHE.get_ptr_mut(op_cache_slot(&op_key)) {
        // SAFETY: this CPU's slot of a per-CPU array; tracing programs do
        // not nest on one CPU, so nothing else touches it meanwhile.
        Some(slot) if unsafe { (*slot).key == op_key || (*slot).key.conn == 0 } => unsafe {
            (*slot).key = op_key;
            Some(&raw mut (*slot).stats)
        },
        _ => get_or_insert!(OP_STATS, &op_key, &OP_STATS_ZERO),
    };
    if let Some(s) = s {
        // SAFETY: this CPU's value of a per-CPU map (cache slot or hash
        // entry); the plain read-modify-writes are exact (no nesting).
        unsafe {
            (*s).count += 1;
            if error != 0 {
                (*s).errors += 1;
            }
            (*s).total_ns += delta;
            if delta > (*s).max_ns {
                (*s).max_ns = delta;
            }
            (*s).hist[log2_bucket(delta)] += 1;
        }
    }

    // The hash entry normally exists: send created it in the caller's
    // context (with its comm); the counts go to the cache when they can.
    let proc_key = ProcKey {
        conn,
        tgid: req.tgid,
    };
    match PROC_CACHE.get_ptr_mut(proc_cache_slot(&proc_key)) {
        // SAFETY: as above, this CPU's slot of a per-CPU array.
        Some(slot) if unsafe { (*slot).key == proc_key || (*slot).key.conn == 0 } => unsafe {
            (*slot).key = proc_key;
            (*slot).count += 1;
            (*slot).total_ns += delta;
        },
        _ => {
            if let Some(p) = get_or_insert!(PROC_STATS, &proc_key, &PROC_STATS_ZERO) {
                // SAFETY: as above, this CPU's value of a per-CPU map.
                unsafe {
                    (*p).count += 1;
                    (*p).total_ns += delta;
                }
            }
        }
    }

    maybe_emit(&rec, conn, unique, &req, end_ns, delta, error);
    Ok(())
}

/// Writes one event to the ring buffer if the filter wants it.
#[inline(always)]
fn maybe_emit(
    rec: &Record,
    conn: u32,
    unique: u64,
    req: &InflightReq,
    end_ns: u64,
    delta: u64,
    error: i32,
) {
    let Some(cfg) = EVENT_CONFIG.get(0) else {
        return;
    };
    let wanted = match cfg.mode {
        EVENTS_ALL => true,
        EVENTS_ONE_IN => {
            let n = cfg.one_in as u64;
            match COUNTERS.get_ptr_mut(counter::SAMPLE_SEQ) {
                // SAFETY: this CPU's slot of a per-CPU array.
                Some(seq) => unsafe {
                    *seq += 1;
                    n <= 1 || *seq % n == 0
                },
                None => false,
            }
        }
        EVENTS_SLOWER_THAN => delta > cfg.slower_than_ns,
        _ => false,
    };
    if !wanted || (cfg.filter_conn != 0 && cfg.only_conn != conn) {
        return;
    }
    let reply_len = rec.u32_at(&END_LEN_OFF);
    match EVENTS.reserve::<RequestEventRaw>(0) {
        Some(mut slot) => {
            slot.write(RequestEventRaw {
                conn,
                opcode: req.opcode,
                unique,
                tgid: req.tgid,
                tid: req.tid,
                start_ns: req.start_ns,
                end_ns,
                error,
                len: req.len,
                reply_len,
                _pad: 0,
            });
            // No wakeup: userspace drains on a timer; waking it from here
            // would cost microseconds per request.
            slot.submit(BPF_RB_NO_WAKEUP as u64);
            bump(counter::EVENTS_SUBMITTED);
        }
        None => bump(counter::EVENTS_LOST),
    }
}

// ---- flock(2). ----

#[tracepoint]
pub fn sys_enter_flock(ctx: TracePointContext) -> u32 {
    let _ = try_sys_enter_flock(&ctx);
    0
}

fn try_sys_enter_flock(ctx: &TracePointContext) -> Result<(), i64> {
    let start_ns = now_ns();
    // Syscall arguments are 8-byte slots; the low half (little endian)
    // holds the `unsigned int` values.
    let rec = Record::read(ctx)?;
    let fd = rec.u32_at(&FLOCK_FD_OFF);
    let cmd = rec.u32_at(&FLOCK_CMD_OFF);
    let pid_tgid = bpf_get_current_pid_tgid();
    let entry = FlockInflight {
        start_ns,
        tgid: (pid_tgid >> 32) as u32,
        fd,
        cmd,
        target_type: TARGET_LOCAL,
        target_id: 0,
        _pad: 0,
    };
    if FLOCK_INFLIGHT.insert(pid_tgid as u32, entry, 0).is_err() {
        bump(counter::MAP_FULL);
    }
    Ok(())
}

#[tracepoint]
pub fn flock_lock_inode(ctx: TracePointContext) -> u32 {
    let _ = try_flock_lock_inode(&ctx);
    0
}

fn try_flock_lock_inode(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // Fires for every flock the kernel itself serves (also on close);
    // only a thread inside flock(2) has an entry.
    if let Some(f) = FLOCK_INFLIGHT.get_ptr_mut(tid) {
        let dev = Record::read(ctx)?.u32_at(&LOCK_INODE_DEV_OFF);
        // SAFETY: only the thread owning the entry writes it (see send).
        unsafe {
            if (*f).target_type != TARGET_FUSE {
                (*f).target_type = TARGET_DEVICE;
                (*f).target_id = dev;
            }
        }
    }
    Ok(())
}

#[tracepoint]
pub fn sys_exit_flock(ctx: TracePointContext) -> u32 {
    let _ = try_sys_exit_flock(&ctx);
    0
}

fn try_sys_exit_flock(ctx: &TracePointContext) -> Result<(), i64> {
    let end_ns = now_ns();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let entry = match FLOCK_INFLIGHT.get_ptr(tid) {
        // SAFETY: a valid map value, copied before the delete below.
        Some(p) => unsafe { *p },
        None => {
            bump(counter::UNMATCHED_FLOCK_EXITS);
            return Ok(());
        }
    };
    let _ = FLOCK_INFLIGHT.remove(tid);
    let rec = Record::read(ctx)?;
    let ret: i64 = if FLOCK_RET_IS_32.load() != 0 {
        rec.u32_at(&FLOCK_RET_OFF) as i32 as i64
    } else {
        rec.u64_at(&FLOCK_RET_OFF) as i64
    };
    // Mirrors flock_translate_cmd(): anything else is EINVAL, not a lock.
    let kind = match entry.cmd & !4 {
        1 => FLOCK_KIND_SHARED,
        2 => FLOCK_KIND_EXCLUSIVE,
        8 => FLOCK_KIND_UNLOCK,
        _ => return Ok(()),
    };
    let mode = if entry.cmd & 4 != 0 {
        FLOCK_MODE_NONBLOCKING
    } else {
        FLOCK_MODE_BLOCKING
    };
    let wait = end_ns.saturating_sub(entry.start_ns);
    let waited = wait >= FLOCK_WAITED_NS;
    let key = FlockKey {
        target_type: entry.target_type,
        target_id: entry.target_id,
        kind,
        mode,
    };
    match get_or_insert!(FLOCK_STATS, &key, &FLOCK_STATS_ZERO) {
        // SAFETY: this CPU's value of a per-CPU map (see OP_STATS).
        Some(s) => unsafe {
            (*s).calls += 1;
            if ret == EWOULDBLOCK_RET {
                (*s).refused += 1;
            }
            if waited {
                (*s).waited += 1;
            }
            (*s).total_ns += wait;
            if wait > (*s).max_ns {
                (*s).max_ns = wait;
            }
            (*s).hist[log2_bucket(wait)] += 1;
        },
        None => warn!(ctx, "flock statistics map is full"),
    }

    if waited {
        let wkey = WaiterKey {
            target_type: entry.target_type,
            target_id: entry.target_id,
            tgid: entry.tgid,
            fd: entry.fd,
        };
        let w = match FLOCK_WAITERS.get_ptr_mut(wkey) {
            Some(w) => Some(w),
            None => {
                let fresh = WaiterStats {
                    calls: 0,
                    total_wait_ns: 0,
                    max_wait_ns: 0,
                    comm: comm(),
                };
                let _ = FLOCK_WAITERS.insert(wkey, fresh, BPF_NOEXIST as u64);
                FLOCK_WAITERS.get_ptr_mut(wkey)
            }
        };
        if let Some(w) = w {
            // SAFETY: this CPU's value of a per-CPU map.
            unsafe {
                (*w).calls += 1;
                (*w).total_wait_ns += wait;
                if wait > (*w).max_wait_ns {
                    (*w).max_wait_ns = wait;
                }
            }
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path,
    // so a loaded program never gets here.
    unsafe { core::hint::unreachable_unchecked() }
}
