//! FUSE requests: `fuse_request_send` (in the caller's context) records the
//! request in the in-flight table; `fuse_request_end` (in whoever answers)
//! finds it there and adds the request to the per-(connection, opcode) and
//! per-(connection, tgid) statistics, and maybe to the event ring.
//!
//! Requests are paired by (connection, unique) in a set-associative
//! in-flight table that evicts its oldest entry when a group is full, so
//! requests that never end cannot fill it. Per request: one clock read per
//! hook, no helper copy in the BTF programs, array-map lookups the verifier
//! inlines on the common path.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use claudefs_ebpf_common::{
    counter, inflight_group, op_cache_slot, proc_cache_slot, InflightKey, InflightReq,
    InflightSlot, OpKey, ProcKey, ProcStats, RequestEventRaw, EVENTS_ALL, EVENTS_ONE_IN,
    EVENTS_SLOWER_THAN, INFLIGHT_WAYS,
};

use crate::{
    bump, comm, flock, get_or_insert, hist_add, kernel_field, now_ns, Record, COUNTERS,
    END_CONN_OFF, END_ERROR_OFF, END_LEN_OFF, END_UNIQUE_OFF, EVENTS, EVENT_CONFIG, FC_DEV_OFF,
    FM_FC_OFF, FUSE_FLOCKS, INFLIGHT, OPCODE_SETLK, OPCODE_SETLKW, OP_CACHE, OP_STATS,
    OP_STATS_ZERO, PROC_CACHE, PROC_STATS, PROC_STATS_ZERO, REQ_FM_OFF, REQ_IN_LEN_OFF,
    REQ_IN_OPCODE_OFF, REQ_IN_UNIQUE_OFF, REQ_OUT_ERROR_OFF, REQ_OUT_LEN_OFF, SEEN_PROCS,
    SEEN_PROCS_SLOTS, SEND_CONN_OFF, SEND_LEN_OFF, SEND_OPCODE_OFF, SEND_UNIQUE_OFF,
};

/// What a send hook reads of a request.
pub(crate) struct Sent {
    pub conn: u32,
    pub unique: u64,
    pub opcode: u32,
    /// Request length (`in.h.len`).
    pub len: u32,
}

/// What an end hook reads of a request.
struct Ended {
    conn: u32,
    unique: u64,
    error: i32,
    /// Reply length (`out.h.len`).
    reply_len: u32,
}

/// The connection of a request: `req->fm->fc->dev`.
///
/// # Safety
/// `req` is the BTF-typed `struct fuse_req *` of a `tp_btf` program.
#[inline(always)]
unsafe fn conn_of(req: *const u8) -> u32 {
    // SAFETY: pointer members read through BTF-typed pointers stay
    // BTF-typed (see `kernel_field`).
    unsafe {
        let fm: *const u8 = kernel_field(req, &REQ_FM_OFF);
        let fc: *const u8 = kernel_field(fm, &FM_FC_OFF);
        kernel_field(fc, &FC_DEV_OFF)
    }
}

pub(crate) fn is_lock(opcode: u32) -> bool {
    opcode == OPCODE_SETLK.load() || opcode == OPCODE_SETLKW.load()
}

#[btf_tracepoint(function = "fuse_request_send")]
pub fn fuse_send_btf(ctx: BtfTracePointContext) -> i32 {
    let start_ns = now_ns();
    let req: *const u8 = ctx.arg(0);
    // SAFETY: `req` is the tracepoint's `const struct fuse_req *`; the
    // offsets come from the kernel's BTF.
    let sent = unsafe {
        Sent {
            conn: conn_of(req),
            unique: kernel_field(req, &REQ_IN_UNIQUE_OFF),
            opcode: kernel_field(req, &REQ_IN_OPCODE_OFF),
            len: kernel_field(req, &REQ_IN_LEN_OFF),
        }
    };
    let pid_tgid = on_send(&sent, start_ns);
    if FUSE_FLOCKS.load() != 0 && is_lock(sent.opcode) {
        // SAFETY: as above.
        unsafe { flock::fuse_lock_sent(req, &sent, pid_tgid, start_ns) };
    }
    0
}

#[btf_tracepoint(function = "fuse_request_end")]
pub fn fuse_end_btf(ctx: BtfTracePointContext) -> i32 {
    let end_ns = now_ns();
    let req: *const u8 = ctx.arg(0);
    // SAFETY: as in `fuse_send_btf`.
    let ended = unsafe {
        Ended {
            conn: conn_of(req),
            unique: kernel_field(req, &REQ_IN_UNIQUE_OFF),
            error: kernel_field(req, &REQ_OUT_ERROR_OFF),
            reply_len: kernel_field(req, &REQ_OUT_LEN_OFF),
        }
    };
    on_end(&ended, end_ns);
    0
}

/// Classic fallback of [`fuse_send_btf`] (no flock accounting: the
/// record does not hold the lock request's arguments).
#[tracepoint]
pub fn fuse_send_tp(ctx: TracePointContext) -> u32 {
    let start_ns = now_ns();
    if let Some(rec) = Record::read(&ctx) {
        let sent = Sent {
            conn: rec.u32_at(&SEND_CONN_OFF),
            unique: rec.u64_at(&SEND_UNIQUE_OFF),
            opcode: rec.u32_at(&SEND_OPCODE_OFF),
            len: rec.u32_at(&SEND_LEN_OFF),
        };
        on_send(&sent, start_ns);
    }
    0
}

/// Classic fallback of [`fuse_end_btf`].
#[tracepoint]
pub fn fuse_end_tp(ctx: TracePointContext) -> u32 {
    let end_ns = now_ns();
    if let Some(rec) = Record::read(&ctx) {
        let ended = Ended {
            conn: rec.u32_at(&END_CONN_OFF),
            unique: rec.u64_at(&END_UNIQUE_OFF),
            error: rec.u32_at(&END_ERROR_OFF) as i32,
            reply_len: rec.u32_at(&END_LEN_OFF),
        };
        on_end(&ended, end_ns);
    }
    0
}

/// Empty programs on the same hooks: what any probe there costs
/// (`bench_probes`' floor). Never attached otherwise.
#[btf_tracepoint(function = "fuse_request_send")]
pub fn floor_send_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "fuse_request_end")]
pub fn floor_end_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Records a sent request; returns the caller's pid_tgid.
#[inline(always)]
fn on_send(s: &Sent, start_ns: u64) -> u64 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let key = InflightKey {
        conn: s.conn,
        _pad: 0,
        unique: s.unique,
    };
    let req = InflightReq {
        start_ns,
        tgid: (pid_tgid >> 32) as u32,
        tid,
        opcode: s.opcode,
        len: s.len,
    };
    if let Some(g) = INFLIGHT.get_ptr_mut(inflight_group(s.conn, s.unique)) {
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
    // the daemon's. A small per-CPU cache of the callers seen last skips
    // the hash lookup for the common case of one process issuing many
    // requests.
    let proc_key = ProcKey {
        conn: s.conn,
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
    pid_tgid
}

/// Accounts an ended request against its recorded send.
#[inline(always)]
fn on_end(e: &Ended, end_ns: u64) {
    let Some(g) = INFLIGHT.get_ptr_mut(inflight_group(e.conn, e.unique)) else {
        return;
    };
    let mut found = None;
    for w in 0..INFLIGHT_WAYS {
        // SAFETY: `g` points at a valid array-map value; `w` is in range.
        let slot = unsafe { &mut (*g).ways[w] };
        if slot.key.unique == e.unique && slot.key.conn == e.conn {
            let req = slot.req;
            // Free the way only after copying the request out.
            slot.key = InflightKey::default();
            found = Some(req);
            break;
        }
    }
    let Some(req) = found else {
        bump(counter::UNMATCHED_ENDS);
        return;
    };
    let delta = end_ns.saturating_sub(req.start_ns);

    let op_key = OpKey {
        conn: e.conn,
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
        let s = unsafe { &mut *s };
        s.count += 1;
        if e.error != 0 {
            s.errors += 1;
        }
        s.total_ns += delta;
        if delta > s.max_ns {
            s.max_ns = delta;
        }
        hist_add(&mut s.hist, delta);
    }

    // The hash entry normally exists: send created it in the caller's
    // context (with its comm); the counts go to the cache when they can.
    let proc_key = ProcKey {
        conn: e.conn,
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

    if FUSE_FLOCKS.load() != 0 && is_lock(req.opcode) {
        flock::fuse_lock_answered(&req, e.conn, end_ns, e.error);
    }
    maybe_emit(e, &req, end_ns, delta);
}

/// Writes one event to the ring buffer if the filter wants it.
#[inline(always)]
fn maybe_emit(e: &Ended, req: &InflightReq, end_ns: u64, delta: u64) {
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
    if !wanted || (cfg.filter_conn != 0 && cfg.only_conn != e.conn) {
        return;
    }
    match EVENTS.reserve::<RequestEventRaw>(0) {
        Some(mut slot) => {
            slot.write(RequestEventRaw {
                conn: e.conn,
                opcode: req.opcode,
                unique: e.unique,
                tgid: req.tgid,
                tid: req.tid,
                start_ns: req.start_ns,
                end_ns,
                error: e.error,
                len: req.len,
                reply_len: e.reply_len,
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
