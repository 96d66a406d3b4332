//! Unit tests of the flock service's rules (see the module doc of
//! `locks.rs`): sharing, arrival order of waiters, conversions, owners'
//! closes, interrupts, self-deadlock. Each answer is recorded as (request
//! id, errno) in the order it was sent.

use std::sync::{Arc, Mutex};

use super::{Answer, Locks};
use crate::probes::snapshot::{FlockKind, FlockMode};

type Log = Arc<Mutex<Vec<(u64, Option<i32>)>>>;

struct Rec(u64, Log);

impl Answer for Rec {
    fn answer(self, errno: Option<i32>) {
        self.1.lock().unwrap().push((self.0, errno));
    }
}

/// Pids of no live process (`/proc` knows none of them).
const PID_A: u32 = 0x7fff_0101;
const PID_B: u32 = 0x7fff_0102;
const PID_C: u32 = 0x7fff_0103;
const PID_D: u32 = 0x7fff_0104;

const INO: u64 = 42;

struct Svc {
    locks: Locks<Rec>,
    log: Log,
}

impl Svc {
    fn new() -> Self {
        Self {
            locks: Locks::default(),
            log: Log::default(),
        }
    }

    /// Request `unique` on `INO` by `owner` (an open file description) of `pid`.
    fn req(&self, unique: u64, owner: u64, pid: u32, typ: i32, sleep: bool) {
        self.req_on(INO, unique, owner, pid, typ, sleep);
    }

    fn req_on(&self, ino: u64, unique: u64, owner: u64, pid: u32, typ: i32, sleep: bool) {
        self.locks
            .setlk(
                unique,
                ino,
                owner,
                pid,
                typ,
                sleep,
                Rec(unique, self.log.clone()),
            )
            .send();
    }

    /// The answers sent since the last call.
    fn answers(&self) -> Vec<(u64, Option<i32>)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn waiting(&self) -> usize {
        self.locks.metrics().waiting
    }

    /// Number of locks held (all inodes).
    fn held(&self) -> usize {
        self.locks.status().held.len()
    }
}

const SH: i32 = libc::F_RDLCK;
const EX: i32 = libc::F_WRLCK;
const UN: i32 = libc::F_UNLCK;
const WAIT: bool = true;
const NB: bool = false;

#[test]
fn shared_locks_coexist_and_an_exclusive_waits_for_every_holder() {
    let s = Svc::new();
    s.req(1, 10, PID_A, SH, NB);
    s.req(2, 20, PID_B, SH, NB);
    s.req(3, 30, PID_C, EX, NB);
    assert_eq!(
        s.answers(),
        [(1, None), (2, None), (3, Some(libc::EWOULDBLOCK))]
    );
    s.req(4, 30, PID_C, EX, WAIT);
    assert_eq!((s.answers(), s.waiting()), (vec![], 1));
    // A's close frees A's lock only: B still holds, C waits on.
    s.locks.release_owner(INO, 10);
    assert_eq!((s.answers(), s.waiting()), (vec![], 1));
    // A close by an owner that holds nothing changes nothing.
    s.locks.release_owner(INO, 99);
    assert_eq!((s.answers(), s.held()), (vec![], 1));
    s.locks.release_owner(INO, 20);
    assert_eq!(
        (s.answers(), s.waiting(), s.held()),
        (vec![(4, None)], 0, 1)
    );
    // Now a shared request conflicts with the exclusive holder.
    s.req(5, 10, PID_A, SH, NB);
    assert_eq!(s.answers(), [(5, Some(libc::EWOULDBLOCK))]);
}

#[test]
fn waiters_are_granted_in_arrival_order_each_when_it_can_be() {
    let s = Svc::new();
    s.req(1, 10, PID_A, EX, NB);
    s.req(2, 20, PID_B, EX, WAIT);
    s.req(3, 30, PID_C, EX, WAIT);
    s.req(4, 40, PID_D, SH, WAIT);
    assert_eq!((s.answers(), s.waiting()), (vec![(1, None)], 3));
    s.req(5, 10, PID_A, UN, NB);
    assert_eq!(s.answers(), [(2, None), (5, None)], "the first waiter only");
    s.locks.release_owner(INO, 20);
    assert_eq!(s.answers(), [(3, None)]);
    s.req(6, 30, PID_C, UN, NB);
    assert_eq!(s.answers(), [(4, None), (6, None)]);
    assert_eq!(s.waiting(), 0);
}

#[test]
fn shared_waiters_behind_an_exclusive_holder_wake_together_in_order() {
    let s = Svc::new();
    s.req(1, 10, PID_A, EX, NB);
    s.req(2, 20, PID_B, SH, WAIT);
    s.req(3, 30, PID_C, SH, WAIT);
    s.req(4, 40, PID_D, EX, WAIT);
    s.answers();
    s.locks.release_owner(INO, 10);
    assert_eq!(s.answers(), [(2, None), (3, None)]);
    assert_eq!(
        (s.waiting(), s.held()),
        (1, 2),
        "the exclusive one waits for both"
    );
}

#[test]
fn a_downgrade_lets_shared_waiters_in() {
    let s = Svc::new();
    s.req(1, 10, PID_A, EX, NB);
    s.req(2, 20, PID_B, SH, WAIT);
    s.answers();
    s.req(3, 10, PID_A, SH, NB);
    assert_eq!(s.answers(), [(2, None), (3, None)]);
    assert_eq!((s.waiting(), s.held()), (0, 2));
}

#[test]
fn upgrades_nonblocking_keeps_the_shared_lock_blocking_drops_it_first() {
    let s = Svc::new();
    s.req(1, 10, PID_A, SH, NB);
    s.req(2, 20, PID_B, SH, NB);
    // LOCK_NB upgrade against another shared holder: refused, A keeps its lock.
    s.req(3, 10, PID_A, EX, NB);
    assert_eq!(
        s.answers(),
        [(1, None), (2, None), (3, Some(libc::EWOULDBLOCK))]
    );
    assert_eq!(s.held(), 2);
    // Both upgrade blocking at once: A drops its shared lock and waits;
    // B, alone now, gets exclusive at once (no deadlock) ...
    s.req(4, 10, PID_A, EX, WAIT);
    assert_eq!((s.answers(), s.waiting(), s.held()), (vec![], 1, 1));
    s.req(5, 20, PID_B, EX, WAIT);
    assert_eq!((s.answers(), s.waiting()), (vec![(5, None)], 1));
    // ... and A gets it when B lets go.
    s.req(6, 20, PID_B, UN, NB);
    assert_eq!(s.answers(), [(4, None), (6, None)]);
    let st = s.locks.status();
    assert_eq!((st.held.len(), st.upgrades), (1, 1), "{st:?}");
}

#[test]
fn an_interrupt_answers_only_its_waiter_and_never_twice() {
    let s = Svc::new();
    s.req(1, 10, PID_A, EX, NB);
    s.req(2, 20, PID_B, SH, WAIT);
    s.req(3, 30, PID_C, SH, WAIT);
    s.answers();
    s.locks.interrupt(3);
    assert_eq!(
        (s.answers(), s.waiting()),
        (vec![(3, Some(libc::EINTR))], 1)
    );
    s.locks.interrupt(3);
    assert_eq!(s.answers(), [], "already answered");
    s.locks.release_owner(INO, 10);
    assert_eq!(s.answers(), [(2, None)]);
    // An interrupt racing with the grant (the request is answered) is a no-op.
    s.locks.interrupt(2);
    assert_eq!((s.answers(), s.held()), (vec![], 1));
    // The interrupted request got nothing: its owner holds no lock.
    s.req(4, 40, PID_D, EX, NB);
    assert_eq!(s.answers(), [(4, Some(libc::EWOULDBLOCK))]);
    s.req(5, 20, PID_B, UN, NB);
    s.req(6, 40, PID_D, EX, NB);
    assert_eq!(s.answers(), [(5, None), (6, None)]);
}

#[test]
fn an_interrupted_blocking_upgrade_leaves_its_caller_without_a_lock() {
    let s = Svc::new();
    s.req(1, 10, PID_A, SH, NB);
    s.req(2, 20, PID_B, SH, NB);
    s.req(3, 10, PID_A, EX, WAIT);
    s.locks.interrupt(3);
    assert_eq!(s.answers(), [(1, None), (2, None), (3, Some(libc::EINTR))]);
    // As on Linux: the shared lock went when the upgrade began to wait.
    s.req(4, 20, PID_B, EX, NB);
    assert_eq!(s.answers(), [(4, None)]);
}

#[test]
fn locks_of_different_inodes_are_independent_and_bad_types_are_einval() {
    let s = Svc::new();
    s.req_on(1, 1, 10, PID_A, EX, NB);
    s.req_on(2, 2, 20, PID_B, EX, NB);
    s.req_on(1, 3, 30, PID_C, 12345, WAIT);
    assert_eq!(s.answers(), [(1, None), (2, None), (3, Some(libc::EINVAL))]);
    s.req_on(2, 4, 10, PID_A, EX, WAIT);
    s.locks.release_owner(1, 20); // 20 holds nothing on inode 1
    assert_eq!((s.answers(), s.waiting()), (vec![], 1));
    s.locks.release_owner(2, 20);
    assert_eq!(s.answers(), [(4, None)]);
}

#[test]
fn a_self_deadlock_of_a_single_threaded_caller_is_edeadlk() {
    // A live single-threaded process: it holds one open file's lock and
    // asks for a conflicting one through a second open file.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    let s = Svc::new();
    s.req(1, 10, pid, EX, NB);
    s.req(2, 20, pid, EX, WAIT);
    let answers = s.answers();
    child.kill().expect("kill sleep");
    child.wait().expect("reap sleep");
    assert_eq!(answers, [(1, None), (2, Some(libc::EDEADLK))]);
    assert_eq!(s.waiting(), 0);
}

#[test]
fn a_caller_with_other_threads_waits_for_its_own_lock_instead() {
    // This process has another thread (Linux waits: it may unlock).
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || rx.recv());
    let pid = std::process::id();
    let s = Svc::new();
    s.req(1, 10, pid, EX, NB);
    s.req(2, 20, pid, EX, WAIT);
    assert_eq!((s.answers(), s.waiting()), (vec![(1, None)], 1));
    s.req(3, 10, pid, UN, NB);
    assert_eq!(s.answers(), [(2, None), (3, None)]);
    tx.send(()).unwrap();
    other.join().unwrap().unwrap();
}

#[test]
fn the_metrics_count_every_answered_request_once() {
    let s = Svc::new();
    s.req(1, 10, PID_A, EX, NB);
    s.req(2, 20, PID_B, EX, NB);
    s.req(3, 20, PID_B, EX, WAIT);
    s.req(4, 30, PID_C, EX, WAIT);
    s.locks.interrupt(4);
    s.req(5, 10, PID_A, UN, NB);
    let m = s.locks.metrics();
    let get = |k, mode| {
        m.calls
            .iter()
            .find(|(kk, mm, _)| *kk == k && *mm == mode)
            .map(|(_, _, c)| (c.calls, c.refused))
    };
    assert_eq!(
        get(FlockKind::Exclusive, FlockMode::NonBlocking),
        Some((2, 1))
    );
    assert_eq!(get(FlockKind::Exclusive, FlockMode::Blocking), Some((2, 0)));
    assert_eq!(get(FlockKind::Unlock, FlockMode::NonBlocking), Some((1, 0)));
    assert_eq!(get(FlockKind::Shared, FlockMode::Blocking), None);
    assert_eq!(m.waiting, 0);
    assert_eq!(s.answers().len(), 5);
}
