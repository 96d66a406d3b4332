//! BSD `flock(2)` whole-file advisory locks, as the kernel forwards them
//! to a FUSE daemon with `FUSE_FLOCK_LOCKS`. POSIX byte-range locks
//! (`fcntl`) live elsewhere.
//!
//! [`FlockRegistry`] owns the table of granted locks. A lock belongs to an
//! open file description, named here by its `fd` token, on one inode: the
//! pair `(fd, ino)` identifies it, so a forked child sharing the
//! description shares the lock, while a second `open()` of the same file by
//! the same process is a separate owner that can conflict with the first.
//! The `pid` recorded with a lock is the process that took it; it names the
//! holder in conflicts and lets [`FlockRegistry::release_all_for_pid`] clean
//! up after an exited process.
//!
//! The registry never waits: a conflicting request returns at once, and a
//! blocking request that gets [`FlockConflict::WouldBlock`] is queued by
//! the caller and retried when locks are released.
//!
//! # Difference from Linux
//! Linux converts a lock by first dropping the old one, so a refused
//! `LOCK_EX | LOCK_NB` upgrade leaves the caller with no lock at all. This
//! registry refuses an upgrade without touching the existing shared lock:
//! the caller still holds it afterwards.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use crate::inode::InodeId;

/// What a `flock` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlockType {
    /// `LOCK_SH`: any number of shared holders.
    Shared,
    /// `LOCK_EX`: one holder, nobody else.
    Exclusive,
    /// `LOCK_UN`: release the lock.
    Unlock,
}

/// One `flock` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlockHandle {
    /// Token of the open file description (the FUSE lock owner).
    pub fd: u64,
    /// Inode the lock is on.
    pub ino: InodeId,
    /// Process making the request.
    pub pid: u32,
    /// Requested lock.
    pub lock_type: FlockType,
    /// `LOCK_NB`: fail at once instead of waiting.
    pub nonblocking: bool,
}

impl FlockHandle {
    /// A request by `pid` through `fd` for `lock_type` on `ino`.
    pub fn new(fd: u64, ino: InodeId, pid: u32, lock_type: FlockType, nonblocking: bool) -> Self {
        Self {
            fd,
            ino,
            pid,
            lock_type,
            nonblocking,
        }
    }

    /// Whether the caller is willing to wait (no `LOCK_NB`).
    pub fn is_blocking(&self) -> bool {
        !self.nonblocking
    }

    /// Whether a shared lock is requested.
    pub fn is_shared(&self) -> bool {
        self.lock_type == FlockType::Shared
    }

    /// Whether an exclusive lock is requested.
    pub fn is_exclusive(&self) -> bool {
        self.lock_type == FlockType::Exclusive
    }
}

/// Result of [`FlockRegistry::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlockConflict {
    /// Granted (or released, for [`FlockType::Unlock`]).
    None,
    /// Refused: `holder_pid` holds a conflicting lock. A blocking request
    /// may wait and retry.
    WouldBlock {
        /// Process holding a conflicting lock.
        holder_pid: u32,
    },
    /// Refused: a blocking request conflicts only with locks its own
    /// process holds through other descriptors, so waiting would never end.
    Deadlock,
}

impl FlockConflict {
    /// Whether the request was granted.
    pub fn is_granted(&self) -> bool {
        *self == FlockConflict::None
    }
}

/// One granted lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlockEntry {
    /// Token of the owning open file description.
    pub fd: u64,
    /// Locked inode.
    pub ino: InodeId,
    /// Process that took the lock.
    pub pid: u32,
    /// [`FlockType::Shared`] or [`FlockType::Exclusive`].
    pub lock_type: FlockType,
}

/// Counters of a [`FlockRegistry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlockStats {
    /// New locks granted (conversions are not counted here).
    pub acquires: u64,
    /// Locks removed (unlock, release, process cleanup).
    pub releases: u64,
    /// Requests refused (`WouldBlock` or `Deadlock`).
    pub conflicts: u64,
    /// Shared locks converted to exclusive.
    pub upgrades: u64,
    /// Exclusive locks converted to shared.
    pub downgrades: u64,
}

/// Table of granted `flock` locks. Invariant: an inode with an exclusive
/// lock has no other lock, and each `(fd, ino)` holds at most one lock.
#[derive(Debug, Clone, Default)]
pub struct FlockRegistry {
    /// Holders per inode, in the order their locks were granted.
    locks: HashMap<InodeId, Vec<FlockEntry>>,
    stats: FlockStats,
}

impl FlockRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `handle` without waiting.
    ///
    /// - [`FlockType::Unlock`] releases the fd's lock and returns `None`.
    /// - A request from an fd that holds the same lock type is a no-op
    ///   `None`; exclusive to shared (downgrade) always succeeds; shared to
    ///   exclusive (upgrade) succeeds only without other holders, and a
    ///   refused upgrade keeps the shared lock.
    /// - A conflicting request is refused, and nothing changes. A
    ///   non-blocking request gets `WouldBlock` naming a conflicting holder
    ///   (one of another process if there is one). A blocking request gets
    ///   `Deadlock` if every conflicting lock belongs to its own process,
    ///   otherwise `WouldBlock` naming a holder of another process.
    pub fn try_acquire(&mut self, handle: FlockHandle) -> FlockConflict {
        let requested = match handle.lock_type {
            FlockType::Unlock => {
                self.release(handle.fd, handle.ino);
                return FlockConflict::None;
            }
            lock_type => lock_type,
        };
        let holders = self.locks.get(&handle.ino).map_or(&[][..], Vec::as_slice);
        let own = holders.iter().position(|e| e.fd == handle.fd);
        if let Some(i) = own {
            if holders[i].lock_type == requested {
                return FlockConflict::None;
            }
        }
        // Other fds' locks conflict with an exclusive request always, with
        // a shared one only if they are exclusive.
        let conflicts = |e: &&FlockEntry| {
            e.fd != handle.fd
                && (requested == FlockType::Exclusive || e.lock_type == FlockType::Exclusive)
        };
        if let Some(first) = holders.iter().find(conflicts) {
            let other_pid = holders
                .iter()
                .filter(conflicts)
                .find(|e| e.pid != handle.pid)
                .map(|e| e.pid);
            let result = match other_pid {
                Some(holder_pid) => FlockConflict::WouldBlock { holder_pid },
                None if handle.nonblocking => FlockConflict::WouldBlock {
                    holder_pid: first.pid,
                },
                None => FlockConflict::Deadlock,
            };
            self.stats.conflicts += 1;
            return result;
        }
        let holders = self.locks.entry(handle.ino).or_default();
        match own {
            Some(i) => {
                holders[i].lock_type = requested;
                if requested == FlockType::Exclusive {
                    self.stats.upgrades += 1;
                } else {
                    self.stats.downgrades += 1;
                }
            }
            None => {
                holders.push(FlockEntry {
                    fd: handle.fd,
                    ino: handle.ino,
                    pid: handle.pid,
                    lock_type: requested,
                });
                self.stats.acquires += 1;
            }
        }
        FlockConflict::None
    }

    /// Removes the lock `fd` holds on `ino`, if any.
    pub fn release(&mut self, fd: u64, ino: InodeId) {
        let Some(holders) = self.locks.get_mut(&ino) else {
            return;
        };
        if let Some(i) = holders.iter().position(|e| e.fd == fd) {
            holders.remove(i);
            self.stats.releases += 1;
        }
        if holders.is_empty() {
            self.locks.remove(&ino);
        }
    }

    /// Removes every lock taken by `pid` (the process exited or crashed).
    pub fn release_all_for_pid(&mut self, pid: u32) {
        let mut released = 0;
        self.locks.retain(|_, holders| {
            let before = holders.len();
            holders.retain(|e| e.pid != pid);
            released += (before - holders.len()) as u64;
            !holders.is_empty()
        });
        self.stats.releases += released;
    }

    /// Whether `fd` holds a lock on `ino`.
    pub fn has_lock(&self, fd: u64, ino: InodeId) -> bool {
        self.lock_type_for(fd, ino).is_some()
    }

    /// The lock `fd` holds on `ino`, if any.
    pub fn lock_type_for(&self, fd: u64, ino: InodeId) -> Option<FlockType> {
        self.locks
            .get(&ino)?
            .iter()
            .find(|e| e.fd == fd)
            .map(|e| e.lock_type)
    }

    /// How many fds hold a lock on `ino`.
    pub fn holder_count(&self, ino: InodeId) -> usize {
        self.locks.get(&ino).map_or(0, Vec::len)
    }

    /// The locks held on `ino`, in the order they were granted.
    pub fn holders(&self, ino: InodeId) -> Vec<FlockEntry> {
        self.locks.get(&ino).cloned().unwrap_or_default()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FlockStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INO: InodeId = 42;

    fn sh(fd: u64, pid: u32) -> FlockHandle {
        FlockHandle::new(fd, INO, pid, FlockType::Shared, true)
    }

    fn ex(fd: u64, pid: u32) -> FlockHandle {
        FlockHandle::new(fd, INO, pid, FlockType::Exclusive, true)
    }

    fn blocking(mut handle: FlockHandle) -> FlockHandle {
        handle.nonblocking = false;
        handle
    }

    #[test]
    fn handle_accessors() {
        let h = FlockHandle::new(3, 9, 100, FlockType::Shared, false);
        assert!(h.is_blocking() && h.is_shared() && !h.is_exclusive());
        let h = FlockHandle::new(3, 9, 100, FlockType::Exclusive, true);
        assert!(!h.is_blocking() && !h.is_shared() && h.is_exclusive());
        let h = FlockHandle::new(3, 9, 100, FlockType::Unlock, true);
        assert!(!h.is_shared() && !h.is_exclusive());
    }

    #[test]
    fn shared_plus_shared_succeeds() {
        let mut r = FlockRegistry::new();
        assert_eq!(r.try_acquire(sh(1, 10)), FlockConflict::None);
        assert_eq!(r.try_acquire(sh(2, 20)), FlockConflict::None);
        assert_eq!(r.holder_count(INO), 2);
    }

    #[test]
    fn exclusive_blocks_shared() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(ex(1, 10)).is_granted());
        assert_eq!(
            r.try_acquire(sh(2, 20)),
            FlockConflict::WouldBlock { holder_pid: 10 }
        );
        assert!(!r.has_lock(2, INO));
    }

    #[test]
    fn exclusive_blocks_exclusive() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(ex(1, 10)).is_granted());
        assert_eq!(
            r.try_acquire(ex(2, 20)),
            FlockConflict::WouldBlock { holder_pid: 10 }
        );
        assert_eq!(r.holder_count(INO), 1);
    }

    #[test]
    fn shared_blocks_exclusive() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(sh(1, 10)).is_granted());
        assert_eq!(
            r.try_acquire(ex(2, 20)),
            FlockConflict::WouldBlock { holder_pid: 10 }
        );
    }

    #[test]
    fn locks_on_different_inodes_are_independent() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(ex(1, 10)).is_granted());
        let other = FlockHandle::new(2, INO + 1, 20, FlockType::Exclusive, true);
        assert!(r.try_acquire(other).is_granted());
        assert_eq!((r.holder_count(INO), r.holder_count(INO + 1)), (1, 1));
    }

    #[test]
    fn nonblocking_gets_would_block_even_against_own_pid() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(ex(1, 10)).is_granted());
        assert_eq!(
            r.try_acquire(ex(2, 10)),
            FlockConflict::WouldBlock { holder_pid: 10 }
        );
    }

    #[test]
    fn blocking_against_own_pid_only_is_deadlock() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(sh(1, 10)).is_granted());
        assert!(r.try_acquire(sh(2, 10)).is_granted());
        assert_eq!(r.try_acquire(blocking(ex(3, 10))), FlockConflict::Deadlock);
        assert!(!r.has_lock(3, INO));
    }

    #[test]
    fn blocking_against_another_pid_would_block_naming_it() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(sh(1, 10)).is_granted());
        assert!(r.try_acquire(sh(2, 20)).is_granted());
        assert_eq!(
            r.try_acquire(blocking(ex(3, 10))),
            FlockConflict::WouldBlock { holder_pid: 20 }
        );
    }

    #[test]
    fn same_fd_reacquiring_same_type_is_a_noop() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(sh(1, 10)).is_granted());
        assert!(r.try_acquire(sh(1, 10)).is_granted());
        assert_eq!(r.holder_count(INO), 1);
        assert_eq!(r.stats().acquires, 1);
    }

    #[test]
    fn release_removes_lock() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(ex(1, 10)).is_granted());
        r.release(1, INO);
        assert_eq!(r.holder_count(INO), 0);
        assert!(r.try_acquire(ex(2, 20)).is_granted());
    }

    #[test]
    fn release_of_unknown_lock_changes_nothing() {
        let mut r = FlockRegistry::new();
        assert!(r.try_acquire(sh(1, 10)).is_granted());
        r.release(9, INO);
        r.release(1, INO + 5);
        assert!(r.has_lock(1, INO));
        assert_eq!(r.stats().releases, 0);
    }

    #[test]
    fn has_lock_after_acquire_and_release() {
        let mut r = FlockRegistry::new();
        assert!(!r.has_lock(1, INO));
        r.try_acquire(sh(1, 10));
        assert!(r.has_lock(1, INO));
        assert!(!r.has_lock(1, INO + 1));
        r.release(1, INO);
        assert!(!r.has_lock(1, INO));
    }

    #[test]
    fn unlock_request_releases() {
        let mut r = FlockRegistry::new();
        r.try_acquire(ex(1, 10));
        let unlock = FlockHandle::new(1, INO, 10, FlockType::Unlock, false);
        assert_eq!(r.try_acquire(unlock), FlockConflict::None);
        assert!(!r.has_lock(1, INO));
        assert_eq!(r.try_acquire(unlock), FlockConflict::None);
        assert_eq!(r.stats().releases, 1);
    }

    #[test]
    fn upgrade_shared_to_exclusive_when_alone() {
        let mut r = FlockRegistry::new();
        r.try_acquire(sh(1, 10));
        assert_eq!(r.try_acquire(ex(1, 10)), FlockConflict::None);
        assert_eq!(r.lock_type_for(1, INO), Some(FlockType::Exclusive));
        assert_eq!(r.holder_count(INO), 1);
        assert_eq!(r.stats().upgrades, 1);
        assert!(!r.try_acquire(sh(2, 20)).is_granted());
    }

    #[test]
    fn upgrade_blocked_by_another_shared_holder_keeps_shared_lock() {
        let mut r = FlockRegistry::new();
        r.try_acquire(sh(1, 10));
        r.try_acquire(sh(2, 20));
        assert_eq!(
            r.try_acquire(ex(1, 10)),
            FlockConflict::WouldBlock { holder_pid: 20 }
        );
        assert_eq!(r.lock_type_for(1, INO), Some(FlockType::Shared));
        assert_eq!(r.holder_count(INO), 2);
        assert_eq!(r.stats().upgrades, 0);
        // Once the other holder leaves, the upgrade goes through.
        r.release(2, INO);
        assert!(r.try_acquire(ex(1, 10)).is_granted());
    }

    #[test]
    fn blocking_upgrade_against_own_other_fd_is_deadlock() {
        let mut r = FlockRegistry::new();
        r.try_acquire(sh(1, 10));
        r.try_acquire(sh(2, 10));
        assert_eq!(r.try_acquire(blocking(ex(1, 10))), FlockConflict::Deadlock);
        assert_eq!(r.lock_type_for(1, INO), Some(FlockType::Shared));
    }

    #[test]
    fn downgrade_exclusive_to_shared_always_works() {
        let mut r = FlockRegistry::new();
        r.try_acquire(ex(1, 10));
        assert_eq!(r.try_acquire(sh(1, 10)), FlockConflict::None);
        assert_eq!(r.lock_type_for(1, INO), Some(FlockType::Shared));
        assert_eq!(r.stats().downgrades, 1);
        assert!(r.try_acquire(sh(2, 20)).is_granted());
    }

    #[test]
    fn forked_child_shares_the_description_lock() {
        let mut r = FlockRegistry::new();
        r.try_acquire(ex(1, 10));
        // Same fd token, other pid: same open file description.
        assert!(r.try_acquire(ex(1, 11)).is_granted());
        assert_eq!(r.holders(INO)[0].pid, 10);
        r.try_acquire(FlockHandle::new(1, INO, 11, FlockType::Unlock, true));
        assert!(!r.has_lock(1, INO));
    }

    #[test]
    fn release_all_for_pid_cleans_up() {
        let mut r = FlockRegistry::new();
        r.try_acquire(sh(1, 10));
        r.try_acquire(sh(2, 20));
        r.try_acquire(FlockHandle::new(3, 7, 10, FlockType::Exclusive, true));
        r.release_all_for_pid(10);
        assert!(!r.has_lock(1, INO));
        assert!(!r.has_lock(3, 7));
        assert!(r.has_lock(2, INO));
        assert_eq!(r.holder_count(7), 0);
        assert_eq!(r.stats().releases, 2);
        assert!(r
            .try_acquire(FlockHandle::new(4, 7, 30, FlockType::Exclusive, true))
            .is_granted());
    }

    #[test]
    fn holder_count_and_holders_in_grant_order() {
        let mut r = FlockRegistry::new();
        assert_eq!(r.holder_count(INO), 0);
        assert!(r.holders(INO).is_empty());
        for (fd, pid) in [(5, 1), (3, 2), (9, 3)] {
            r.try_acquire(sh(fd, pid));
        }
        assert_eq!(r.holder_count(INO), 3);
        let fds: Vec<u64> = r.holders(INO).iter().map(|e| e.fd).collect();
        assert_eq!(fds, vec![5, 3, 9]);
        assert_eq!(
            r.holders(INO)[1],
            FlockEntry {
                fd: 3,
                ino: INO,
                pid: 2,
                lock_type: FlockType::Shared
            }
        );
    }

    #[test]
    fn lock_type_for_returns_none_after_release() {
        let mut r = FlockRegistry::new();
        r.try_acquire(ex(1, 10));
        assert_eq!(r.lock_type_for(1, INO), Some(FlockType::Exclusive));
        r.release(1, INO);
        assert_eq!(r.lock_type_for(1, INO), None);
    }

    #[test]
    fn stats_count_every_outcome() {
        let mut r = FlockRegistry::new();
        r.try_acquire(sh(1, 10)); // acquire
        r.try_acquire(sh(2, 20)); // acquire
        r.try_acquire(ex(3, 30)); // conflict
        r.try_acquire(ex(1, 10)); // refused upgrade: conflict
        r.release(2, INO); // release
        r.try_acquire(ex(1, 10)); // upgrade
        r.try_acquire(sh(1, 10)); // downgrade
        assert_eq!(
            r.stats(),
            FlockStats {
                acquires: 2,
                releases: 1,
                conflicts: 2,
                upgrades: 1,
                downgrades: 1,
            }
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire {
            fd: u64,
            ino: InodeId,
            pid: u32,
            lock_type: FlockType,
            nonblocking: bool,
        },
        Release {
            fd: u64,
            ino: InodeId,
        },
        ReleasePid(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let lock_type = prop_oneof![
            Just(FlockType::Shared),
            Just(FlockType::Exclusive),
            Just(FlockType::Unlock)
        ];
        prop_oneof![
            6 => (0..5u64, 0..3u64, 0..3u32, lock_type, any::<bool>()).prop_map(
                |(fd, ino, pid, lock_type, nonblocking)| Op::Acquire { fd, ino, pid, lock_type, nonblocking }
            ),
            2 => (0..5u64, 0..3u64).prop_map(|(fd, ino)| Op::Release { fd, ino }),
            1 => (0..3u32).prop_map(Op::ReleasePid),
        ]
    }

    fn assert_invariants(r: &FlockRegistry) -> std::result::Result<(), TestCaseError> {
        let held: usize = (0..3).map(|ino| r.holder_count(ino)).sum();
        prop_assert_eq!(held as u64, r.stats().acquires - r.stats().releases);
        for ino in 0..3 {
            let holders = r.holders(ino);
            let exclusive = holders
                .iter()
                .filter(|e| e.lock_type == FlockType::Exclusive)
                .count();
            prop_assert!(exclusive == 0 || holders.len() == 1, "{holders:?}");
            for (i, e) in holders.iter().enumerate() {
                prop_assert_eq!(e.ino, ino);
                prop_assert!(e.lock_type != FlockType::Unlock);
                prop_assert!(holders[i + 1..].iter().all(|o| o.fd != e.fd));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn exclusive_is_never_held_beside_another_lock(ops in prop::collection::vec(op(), 1..60)) {
            let mut r = FlockRegistry::new();
            for op in ops {
                match op {
                    Op::Acquire { fd, ino, pid, lock_type, nonblocking } => {
                        let before = r.lock_type_for(fd, ino);
                        let result = r.try_acquire(FlockHandle::new(fd, ino, pid, lock_type, nonblocking));
                        match (lock_type, result) {
                            (FlockType::Unlock, res) => {
                                prop_assert_eq!(res, FlockConflict::None);
                                prop_assert!(!r.has_lock(fd, ino));
                            }
                            (t, FlockConflict::None) => prop_assert_eq!(r.lock_type_for(fd, ino), Some(t)),
                            (_, refused) => {
                                // A refusal changes nothing (a shared lock survives a refused upgrade).
                                prop_assert_eq!(r.lock_type_for(fd, ino), before);
                                if nonblocking {
                                    prop_assert!(
                                        matches!(refused, FlockConflict::WouldBlock { .. }),
                                        "non-blocking request got {:?}",
                                        refused
                                    );
                                }
                                if let FlockConflict::WouldBlock { holder_pid } = refused {
                                    prop_assert!(r.holders(ino).iter().any(|e| e.pid == holder_pid && e.fd != fd));
                                }
                            }
                        }
                    }
                    Op::Release { fd, ino } => {
                        r.release(fd, ino);
                        prop_assert!(!r.has_lock(fd, ino));
                    }
                    Op::ReleasePid(pid) => {
                        r.release_all_for_pid(pid);
                        for ino in 0..3 {
                            prop_assert!(r.holders(ino).iter().all(|e| e.pid != pid));
                        }
                    }
                }
                assert_invariants(&r)?;
            }
        }
    }
}
