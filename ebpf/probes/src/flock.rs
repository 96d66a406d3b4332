//! flock(2) waits, without syscall tracepoints.
//!
//! - Served by the kernel: `filelock/flock_lock_inode` fires at the end of
//!   each attempt. A blocking request that conflicts returns
//!   `FILE_LOCK_DEFERRED` and is tried again on the same thread once woken,
//!   until it is granted (0) or fails; a `LOCK_NB` request that conflicts
//!   fails with `-EWOULDBLOCK` at once. So the first deferred attempt
//!   starts a wait (a `FLOCK_PENDING` entry of the thread) and the next
//!   attempt that is not deferred ends it. A signal ends a wait without
//!   another attempt: `signal/signal_deliver` on the waiting thread ends it
//!   (EINTR). The unlock of a last close (`FL_CLOSE`) is not a flock(2)
//!   call and is skipped.
//! - Served by a FUSE daemon (`FUSE_FLOCK_LOCKS`): the flock becomes a
//!   FUSE_SETLK (`LOCK_NB`) or FUSE_SETLKW request with `FUSE_LK_FLOCK`;
//!   its send starts the wait, its end ends it (refused: `-EWOULDBLOCK`).
//!   Only the BTF program reads the request's arguments; with the classic
//!   fallback FUSE flocks are not counted.
//!
//! Each call adds to the per-(target, kind, mode) statistics; a call that
//! waited at least `FLOCK_WAITED_NS` also to its (target, tgid, file)
//! waiter entry.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use claudefs_ebpf_common::{
    counter, FlockKey, FlockPending, InflightReq, WaiterKey, WaiterStats, COMM_LEN,
    EWOULDBLOCK_RET, FILE_LOCK_DEFERRED, FLOCK_KIND_EXCLUSIVE, FLOCK_KIND_SHARED,
    FLOCK_KIND_UNLOCK, FLOCK_MODE_BLOCKING, FLOCK_MODE_NONBLOCKING, FLOCK_WAITED_NS, FL_CLOSE,
    FL_SLEEP, FUSE_LK_FLOCK, TARGET_DEVICE, TARGET_FUSE,
};

use crate::fuse::Sent;
use crate::{
    bump, comm, get_or_insert, hist_add, kernel_field, now_ns, Record, ARGS_IN0_VALUE_OFF,
    FLOCK_PENDING, FLOCK_STATS, FLOCK_STATS_ZERO, FLOCK_WAITERS, FL_FLAGS_OFF, FL_TYPE_OFF,
    INODE_INO_OFF, INODE_SB_OFF, LK_IN_FLAGS_OFF, LK_IN_TYPE_OFF, LOCK_INODE_DEV_OFF,
    LOCK_INODE_FLAGS_OFF, LOCK_INODE_INO_OFF, LOCK_INODE_RET_OFF, LOCK_INODE_TYPE_OFF,
    OPCODE_SETLKW, REQ_ARGS_OFF, REQ_IN_NODEID_OFF, SB_DEV_OFF,
};

/// One attempt of the kernel's flock code, as `flock_lock_inode` shows it.
struct Attempt {
    ino: u64,
    dev: u32,
    flags: u32,
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    typ: u8,
    ret: i32,
}

/// `FLOCK_KIND_*` of a lock type (`F_RDLCK` 0, `F_WRLCK` 1, `F_UNLCK` 2).
#[inline(always)]
fn kind_of(typ: u32) -> Option<u32> {
    match typ {
        0 => Some(FLOCK_KIND_SHARED),
        1 => Some(FLOCK_KIND_EXCLUSIVE),
        2 => Some(FLOCK_KIND_UNLOCK),
        _ => None,
    }
}

#[btf_tracepoint(function = "flock_lock_inode")]
pub fn flock_lock_inode_btf(ctx: BtfTracePointContext) -> i32 {
    let now = now_ns();
    let inode: *const u8 = ctx.arg(0);
    let fl: *const u8 = ctx.arg(1);
    let ret: i32 = ctx.arg(2);
    // The verifier types the lock as possibly NULL.
    if fl.is_null() || inode.is_null() {
        return 0;
    }
    // SAFETY: `inode` and `fl` are the tracepoint's `struct inode *` and
    // `struct file_lock *`; the offsets come from the kernel's BTF.
    let attempt = unsafe {
        let sb: *const u8 = kernel_field(inode, &INODE_SB_OFF);
        Attempt {
            ino: kernel_field(inode, &INODE_INO_OFF),
            dev: kernel_field(sb, &SB_DEV_OFF),
            flags: kernel_field(fl, &FL_FLAGS_OFF),
            typ: kernel_field(fl, &FL_TYPE_OFF),
            ret,
        }
    };
    on_attempt(&attempt, now);
    0
}

/// Classic fallback of [`flock_lock_inode_btf`].
#[tracepoint]
pub fn flock_lock_inode_tp(ctx: TracePointContext) -> u32 {
    let now = now_ns();
    if let Some(rec) = Record::read(&ctx) {
        let attempt = Attempt {
            ino: rec.u64_at(&LOCK_INODE_INO_OFF),
            dev: rec.u32_at(&LOCK_INODE_DEV_OFF),
            flags: rec.u32_at(&LOCK_INODE_FLAGS_OFF),
            typ: rec.u8_at(&LOCK_INODE_TYPE_OFF),
            ret: rec.u32_at(&LOCK_INODE_RET_OFF) as i32,
        };
        on_attempt(&attempt, now);
    }
    0
}

#[btf_tracepoint(function = "signal_deliver")]
pub fn signal_deliver_btf(_ctx: BtfTracePointContext) -> i32 {
    on_signal(now_ns());
    0
}

/// Classic fallback of [`signal_deliver_btf`].
#[tracepoint]
pub fn signal_deliver_tp(_ctx: TracePointContext) -> u32 {
    on_signal(now_ns());
    0
}

#[inline(always)]
fn on_attempt(a: &Attempt, now: u64) {
    if a.flags & FL_CLOSE != 0 {
        return;
    }
    let Some(kind) = kind_of(u32::from(a.typ)) else {
        return;
    };
    let mode = if a.flags & FL_SLEEP != 0 {
        FLOCK_MODE_BLOCKING
    } else {
        FLOCK_MODE_NONBLOCKING
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let mut start_ns = now;
    let mut waiting = false;
    if let Some(p) = FLOCK_PENDING.get_ptr(tid) {
        // SAFETY: a valid map value; entries are only written by the thread
        // whose tid is the key, and this is that thread.
        let p = unsafe { &*p };
        if p.target_type == TARGET_DEVICE && p.target_id == a.dev && p.ino == a.ino {
            start_ns = p.start_ns;
            waiting = true;
        } else {
            // A wait whose end this thread never showed (it cannot be in
            // two flock calls at once).
            bump(counter::FLOCK_WAITS_LOST);
        }
    }
    if a.ret == FILE_LOCK_DEFERRED {
        if !waiting {
            let entry = FlockPending {
                start_ns,
                ino: a.ino,
                target_type: TARGET_DEVICE,
                target_id: a.dev,
                tgid: (pid_tgid >> 32) as u32,
                kind,
                mode,
                _pad: 0,
                comm: comm(),
            };
            if FLOCK_PENDING.insert(tid, entry, 0).is_err() {
                bump(counter::MAP_FULL);
            }
        }
        return;
    }
    let _ = FLOCK_PENDING.remove(tid);
    let key = FlockKey {
        target_type: TARGET_DEVICE,
        target_id: a.dev,
        kind,
        mode,
    };
    let waiter = WaiterKey {
        target_type: TARGET_DEVICE,
        target_id: a.dev,
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ino: a.ino,
    };
    account(
        &key,
        &waiter,
        now - start_ns,
        a.ret == EWOULDBLOCK_RET as i32,
        None,
    );
}

/// A signal delivered to a thread waiting for a kernel-served lock ends
/// the wait (the call returns EINTR). FUSE waits end with their request.
#[inline(always)]
fn on_signal(now: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(p) = FLOCK_PENDING.get_ptr(tid) else {
        return;
    };
    // SAFETY: a valid map value, copied before the delete below.
    let p = unsafe { *p };
    if p.target_type != TARGET_DEVICE {
        return;
    }
    let _ = FLOCK_PENDING.remove(tid);
    end_pending(&p, now, false);
}

/// A FUSE_SETLK/SETLKW request was sent: a flock one (`FUSE_LK_FLOCK`)
/// starts a wait of the calling thread.
///
/// # Safety
/// `req` is the BTF-typed `struct fuse_req *` of `fuse_request_send`.
#[inline(always)]
pub(crate) unsafe fn fuse_lock_sent(req: *const u8, s: &Sent, pid_tgid: u64, start_ns: u64) {
    // SAFETY: pointer members read through the BTF-typed request; the
    // argument itself is untyped (`const void *`), so it is read with the
    // helper, which never faults.
    let (typ, flags, nodeid) = unsafe {
        let args: *const u8 = kernel_field(req, &REQ_ARGS_OFF);
        let lk_in: *const u8 = kernel_field(args, &ARGS_IN0_VALUE_OFF);
        let typ = bpf_probe_read_kernel(lk_in.add(LK_IN_TYPE_OFF.load() as usize).cast::<u32>());
        let flags = bpf_probe_read_kernel(lk_in.add(LK_IN_FLAGS_OFF.load() as usize).cast::<u32>());
        let nodeid: u64 = kernel_field(req, &REQ_IN_NODEID_OFF);
        (typ, flags, nodeid)
    };
    let (Ok(typ), Ok(flags)) = (typ, flags) else {
        bump(counter::READ_ERRORS);
        return;
    };
    if flags & FUSE_LK_FLOCK == 0 {
        return;
    }
    let Some(kind) = kind_of(typ) else {
        return;
    };
    let tid = pid_tgid as u32;
    if FLOCK_PENDING.get_ptr(tid).is_some() {
        bump(counter::FLOCK_WAITS_LOST);
    }
    let entry = FlockPending {
        start_ns,
        ino: nodeid,
        target_type: TARGET_FUSE,
        target_id: s.conn,
        tgid: (pid_tgid >> 32) as u32,
        kind,
        mode: if s.opcode == OPCODE_SETLKW.load() {
            FLOCK_MODE_BLOCKING
        } else {
            FLOCK_MODE_NONBLOCKING
        },
        _pad: 0,
        comm: comm(),
    };
    if FLOCK_PENDING.insert(tid, entry, 0).is_err() {
        bump(counter::MAP_FULL);
    }
}

/// A FUSE_SETLK/SETLKW request of `req.tid` ended on `conn`.
#[inline(always)]
pub(crate) fn fuse_lock_answered(req: &InflightReq, conn: u32, end_ns: u64, error: i32) {
    let Some(p) = FLOCK_PENDING.get_ptr(req.tid) else {
        return;
    };
    // SAFETY: a valid map value, copied before the delete below.
    let p = unsafe { *p };
    if p.target_type != TARGET_FUSE || p.target_id != conn {
        return;
    }
    let _ = FLOCK_PENDING.remove(req.tid);
    end_pending(&p, end_ns, error == EWOULDBLOCK_RET as i32);
}

#[inline(always)]
fn end_pending(p: &FlockPending, now: u64, refused: bool) {
    let key = FlockKey {
        target_type: p.target_type,
        target_id: p.target_id,
        kind: p.kind,
        mode: p.mode,
    };
    let waiter = WaiterKey {
        target_type: p.target_type,
        target_id: p.target_id,
        tgid: p.tgid,
        _pad: 0,
        ino: p.ino,
    };
    account(
        &key,
        &waiter,
        now.saturating_sub(p.start_ns),
        refused,
        Some(&p.comm),
    );
}

/// Adds one flock call to the statistics, and to its waiter if it waited.
/// `waiter_comm`: the waiter's command name when the current task is not
/// the waiter.
#[inline(always)]
fn account(
    key: &FlockKey,
    waiter: &WaiterKey,
    wait: u64,
    refused: bool,
    waiter_comm: Option<&[u8; COMM_LEN]>,
) {
    let waited = wait >= FLOCK_WAITED_NS;
    if let Some(s) = get_or_insert!(FLOCK_STATS, key, &FLOCK_STATS_ZERO) {
        // SAFETY: this CPU's value of a per-CPU map; tracing programs do
        // not nest on one CPU.
        let s = unsafe { &mut *s };
        s.calls += 1;
        if refused {
            s.refused += 1;
        }
        if waited {
            s.waited += 1;
        }
        s.total_ns += wait;
        if wait > s.max_ns {
            s.max_ns = wait;
        }
        hist_add(&mut s.hist, wait);
    }
    if !waited {
        return;
    }
    let w = match FLOCK_WAITERS.get_ptr_mut(waiter) {
        Some(w) => Some(w),
        None => {
            let fresh = WaiterStats {
                calls: 0,
                total_wait_ns: 0,
                max_wait_ns: 0,
                comm: match waiter_comm {
                    Some(c) => *c,
                    None => comm(),
                },
            };
            let _ = FLOCK_WAITERS.insert(waiter, &fresh, BPF_NOEXIST as u64);
            FLOCK_WAITERS.get_ptr_mut(waiter)
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
