//! UID/GID mapping between the host (the ids the kernel hands the FUSE
//! client) and the local ids stored in the file system, for mounts that
//! cross user-namespace boundaries.
//!
//! [`IdMapper`] owns the mapping mode and the two explicit tables (UIDs and
//! GIDs, at most [`MAX_TABLE_ENTRIES`] each). Lookups take `&self` and count
//! into atomics, so one mapper can be shared by the daemon's threads.
//!
//! Rules: Identity and RangeShift never remap id 0 (root); Squash maps
//! every id, root included; Table remaps only ids with an entry.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::error::{FuseError, Result};

/// The most entries each table (UID or GID) holds.
pub const MAX_TABLE_ENTRIES: usize = 65_536;

/// How host ids become local ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdMapMode {
    /// No mapping: local id = host id.
    Identity,
    /// Every id becomes the `nobody` id (root included).
    Squash {
        /// The UID every UID maps to.
        nobody_uid: u32,
        /// The GID every GID maps to.
        nobody_gid: u32,
    },
    /// Host ids in `[host_base, host_base + count)` shift to start at
    /// `local_base`; other ids (and root) pass through.
    RangeShift {
        /// First host id of the range.
        host_base: u32,
        /// Local id the first host id maps to.
        local_base: u32,
        /// Number of ids in the range.
        count: u32,
    },
    /// Ids with an entry in the explicit table map to its local id; others
    /// pass through.
    Table,
}

/// One explicit mapping of a host id to a local id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdMapEntry {
    /// Id as the host (kernel) sees it.
    pub host_id: u32,
    /// Id as stored locally.
    pub local_id: u32,
}

/// Lookup counters of an [`IdMapper`]; a hit is a lookup answered by a
/// table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdMapStats {
    /// UID lookups (`map_uid` and `reverse_map_uid` calls).
    pub uid_lookups: u64,
    /// GID lookups (`map_gid` and `reverse_map_gid` calls).
    pub gid_lookups: u64,
    /// UID lookups answered by a table entry.
    pub uid_hits: u64,
    /// GID lookups answered by a table entry.
    pub gid_hits: u64,
}

/// One explicit table: host -> local, and local -> host for reverse
/// lookups (the first entry added for a local id answers).
#[derive(Debug, Default)]
struct IdTable {
    forward: HashMap<u32, u32>,
    reverse: HashMap<u32, u32>,
}

impl IdTable {
    fn add(&mut self, entry: IdMapEntry, what: &str) -> Result<()> {
        if self.forward.contains_key(&entry.host_id) {
            return Err(FuseError::AlreadyExists(format!(
                "{what} mapping for host id {}",
                entry.host_id
            )));
        }
        if self.forward.len() >= MAX_TABLE_ENTRIES {
            return Err(FuseError::InvalidArgument(format!(
                "{what} table is full ({MAX_TABLE_ENTRIES} entries)"
            )));
        }
        self.forward.insert(entry.host_id, entry.local_id);
        self.reverse.entry(entry.local_id).or_insert(entry.host_id);
        Ok(())
    }
}

/// Counter shards of one id kind (a power of two).
const SHARDS: usize = 8;

/// The next shard a thread counts in.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard (handed out in order on first use).
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// One thread's counts, a cache line pair of its own.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard {
    lookups: AtomicU64,
    hits: AtomicU64,
}

/// Counters of one id kind. Every getattr maps an id of each kind from
/// the threads serving every CPU; one shared counter would move its cache
/// line between those CPUs each time, so each thread counts in a shard of
/// its own and a read adds the shards up.
#[derive(Debug, Default)]
struct Counters {
    shards: [Shard; SHARDS],
}

impl Counters {
    fn count(&self, hit: bool) {
        let s = &self.shards[SHARD.with(|s| *s)];
        s.lookups.fetch_add(1, Ordering::Relaxed);
        if hit {
            s.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lookups(&self) -> u64 {
        self.shards.iter().fold(0u64, |a, s| {
            a.wrapping_add(s.lookups.load(Ordering::Relaxed))
        })
    }

    fn hits(&self) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.hits.load(Ordering::Relaxed)))
    }
}

/// Maps UIDs and GIDs according to an [`IdMapMode`].
#[derive(Debug)]
pub struct IdMapper {
    mode: IdMapMode,
    uids: IdTable,
    gids: IdTable,
    uid_counters: Counters,
    gid_counters: Counters,
}

impl IdMapper {
    /// A mapper in `mode` with empty tables.
    pub fn new(mode: IdMapMode) -> Self {
        Self {
            mode,
            uids: IdTable::default(),
            gids: IdTable::default(),
            uid_counters: Counters::default(),
            gid_counters: Counters::default(),
        }
    }

    /// Adds a UID table entry. Fails, changing nothing, on a duplicate
    /// `host_id` ([`FuseError::AlreadyExists`]) or when the table already
    /// holds [`MAX_TABLE_ENTRIES`] ([`FuseError::InvalidArgument`]).
    /// Entries are used in [`IdMapMode::Table`] only.
    pub fn add_uid_entry(&mut self, entry: IdMapEntry) -> Result<()> {
        self.uids.add(entry, "uid")
    }

    /// Adds a GID table entry; same rules as [`add_uid_entry`](Self::add_uid_entry).
    pub fn add_gid_entry(&mut self, entry: IdMapEntry) -> Result<()> {
        self.gids.add(entry, "gid")
    }

    /// Maps a host UID to the local UID.
    pub fn map_uid(&self, host_uid: u32) -> u32 {
        let nobody = match self.mode {
            IdMapMode::Squash { nobody_uid, .. } => nobody_uid,
            _ => 0,
        };
        self.map(host_uid, nobody, &self.uids, &self.uid_counters)
    }

    /// Maps a host GID to the local GID.
    pub fn map_gid(&self, host_gid: u32) -> u32 {
        let nobody = match self.mode {
            IdMapMode::Squash { nobody_gid, .. } => nobody_gid,
            _ => 0,
        };
        self.map(host_gid, nobody, &self.gids, &self.gid_counters)
    }

    /// The host UID a local UID came from, answered from the UID table in
    /// [`IdMapMode::Table`]; `None` without an entry or in another mode.
    pub fn reverse_map_uid(&self, local_uid: u32) -> Option<u32> {
        self.reverse(local_uid, &self.uids, &self.uid_counters)
    }

    /// The host GID a local GID came from; see
    /// [`reverse_map_uid`](Self::reverse_map_uid).
    pub fn reverse_map_gid(&self, local_gid: u32) -> Option<u32> {
        self.reverse(local_gid, &self.gids, &self.gid_counters)
    }

    /// Number of UID table entries.
    pub fn uid_entry_count(&self) -> usize {
        self.uids.forward.len()
    }

    /// Number of GID table entries.
    pub fn gid_entry_count(&self) -> usize {
        self.gids.forward.len()
    }

    /// The mapping mode.
    pub fn mode(&self) -> &IdMapMode {
        &self.mode
    }

    /// A snapshot of the lookup counters.
    pub fn stats(&self) -> IdMapStats {
        IdMapStats {
            uid_lookups: self.uid_counters.lookups(),
            gid_lookups: self.gid_counters.lookups(),
            uid_hits: self.uid_counters.hits(),
            gid_hits: self.gid_counters.hits(),
        }
    }

    fn map(&self, id: u32, nobody: u32, table: &IdTable, counters: &Counters) -> u32 {
        let (mapped, hit) = match self.mode {
            IdMapMode::Identity => (id, false),
            IdMapMode::Squash { .. } => (nobody, false),
            IdMapMode::RangeShift {
                host_base,
                local_base,
                count,
            } => (shift(id, host_base, local_base, count), false),
            IdMapMode::Table => match table.forward.get(&id) {
                Some(&local) => (local, true),
                None => (id, false),
            },
        };
        counters.count(hit);
        mapped
    }

    fn reverse(&self, local: u32, table: &IdTable, counters: &Counters) -> Option<u32> {
        let host = match self.mode {
            IdMapMode::Table => table.reverse.get(&local).copied(),
            _ => None,
        };
        counters.count(host.is_some());
        host
    }
}

/// RangeShift of one id. Root, ids outside the range and ids whose local
/// id would overflow `u32` pass through.
fn shift(id: u32, host_base: u32, local_base: u32, count: u32) -> u32 {
    if id == 0 || id < host_base || u64::from(id) >= u64::from(host_base) + u64::from(count) {
        return id;
    }
    local_base.checked_add(id - host_base).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host_id: u32, local_id: u32) -> IdMapEntry {
        IdMapEntry { host_id, local_id }
    }

    fn range(host_base: u32, local_base: u32, count: u32) -> IdMapper {
        IdMapper::new(IdMapMode::RangeShift {
            host_base,
            local_base,
            count,
        })
    }

    fn squash() -> IdMapper {
        IdMapper::new(IdMapMode::Squash {
            nobody_uid: 65534,
            nobody_gid: 65533,
        })
    }

    #[test]
    fn identity_passes_through() {
        let m = IdMapper::new(IdMapMode::Identity);
        for id in [0, 1, 1000, u32::MAX] {
            assert_eq!(m.map_uid(id), id);
            assert_eq!(m.map_gid(id), id);
        }
    }

    #[test]
    fn identity_ignores_table_entries() {
        let mut m = IdMapper::new(IdMapMode::Identity);
        m.add_uid_entry(entry(1000, 5)).unwrap();
        assert_eq!(m.map_uid(1000), 1000);
        assert_eq!(m.uid_entry_count(), 1);
    }

    #[test]
    fn squash_maps_every_uid_to_nobody() {
        let m = squash();
        for id in [1, 1000, 65534, u32::MAX] {
            assert_eq!(m.map_uid(id), 65534);
        }
    }

    #[test]
    fn squash_maps_root_too() {
        let m = squash();
        assert_eq!(m.map_uid(0), 65534);
        assert_eq!(m.map_gid(0), 65533);
    }

    #[test]
    fn squash_uses_nobody_gid_for_gids() {
        let m = squash();
        assert_eq!(m.map_gid(1000), 65533);
        assert_eq!(m.map_gid(42), 65533);
    }

    #[test]
    fn range_shift_remaps_in_range() {
        let m = range(100_000, 1000, 65_536);
        assert_eq!(m.map_uid(100_000), 1000);
        assert_eq!(m.map_uid(100_005), 1005);
        assert_eq!(m.map_uid(165_535), 66_535);
        assert_eq!(m.map_gid(100_007), 1007);
    }

    #[test]
    fn range_shift_passes_out_of_range_ids() {
        let m = range(100_000, 1000, 10);
        assert_eq!(m.map_uid(99_999), 99_999);
        assert_eq!(m.map_uid(100_010), 100_010);
        assert_eq!(m.map_uid(5), 5);
        assert_eq!(m.map_gid(100_010), 100_010);
    }

    #[test]
    fn range_shift_with_zero_count_maps_nothing() {
        let m = range(10, 20, 0);
        assert_eq!(m.map_uid(10), 10);
    }

    #[test]
    fn range_shift_never_remaps_root() {
        let m = range(0, 5000, 100);
        assert_eq!(m.map_uid(0), 0);
        assert_eq!(m.map_gid(0), 0);
        assert_eq!(m.map_uid(1), 5001);
    }

    #[test]
    fn range_shift_near_u32_max_does_not_overflow() {
        let m = range(u32::MAX - 1, u32::MAX - 1, 10);
        assert_eq!(m.map_uid(u32::MAX - 1), u32::MAX - 1);
        assert_eq!(m.map_uid(u32::MAX), u32::MAX);
        let m = range(10, u32::MAX, 10);
        assert_eq!(m.map_uid(10), u32::MAX);
        assert_eq!(m.map_uid(11), 11, "local id would overflow: passes through");
    }

    #[test]
    fn identity_never_remaps_root() {
        assert_eq!(IdMapper::new(IdMapMode::Identity).map_uid(0), 0);
    }

    #[test]
    fn table_lookup_hit_and_miss() {
        let mut m = IdMapper::new(IdMapMode::Table);
        m.add_uid_entry(entry(1000, 2000)).unwrap();
        assert_eq!(m.map_uid(1000), 2000);
        assert_eq!(m.map_uid(1001), 1001);
    }

    #[test]
    fn table_remaps_root_only_when_listed() {
        let mut m = IdMapper::new(IdMapMode::Table);
        assert_eq!(m.map_uid(0), 0);
        m.add_uid_entry(entry(0, 65534)).unwrap();
        assert_eq!(m.map_uid(0), 65534);
    }

    #[test]
    fn gid_table_is_separate_from_uid_table() {
        let mut m = IdMapper::new(IdMapMode::Table);
        m.add_gid_entry(entry(50, 60)).unwrap();
        assert_eq!(m.map_gid(50), 60);
        assert_eq!(m.map_uid(50), 50);
        assert_eq!((m.uid_entry_count(), m.gid_entry_count()), (0, 1));
        assert_eq!(m.reverse_map_gid(60), Some(50));
        assert_eq!(m.reverse_map_uid(60), None);
    }

    #[test]
    fn reverse_map_uid_finds_host_id() {
        let mut m = IdMapper::new(IdMapMode::Table);
        m.add_uid_entry(entry(1000, 2000)).unwrap();
        m.add_uid_entry(entry(1001, 2001)).unwrap();
        assert_eq!(m.reverse_map_uid(2001), Some(1001));
        assert_eq!(m.reverse_map_uid(1000), None);
    }

    #[test]
    fn reverse_map_prefers_first_entry_for_a_shared_local_id() {
        let mut m = IdMapper::new(IdMapMode::Table);
        m.add_uid_entry(entry(7, 100)).unwrap();
        m.add_uid_entry(entry(8, 100)).unwrap();
        assert_eq!(m.reverse_map_uid(100), Some(7));
        assert_eq!(m.map_uid(8), 100);
    }

    #[test]
    fn reverse_map_is_none_outside_table_mode() {
        let mut m = range(100, 0, 10);
        m.add_uid_entry(entry(1, 2)).unwrap();
        assert_eq!(m.reverse_map_uid(2), None);
        assert_eq!(m.reverse_map_gid(2), None);
    }

    #[test]
    fn duplicate_host_id_is_rejected_and_changes_nothing() {
        let mut m = IdMapper::new(IdMapMode::Table);
        m.add_uid_entry(entry(1000, 2000)).unwrap();
        let err = m.add_uid_entry(entry(1000, 3000)).unwrap_err();
        assert!(matches!(err, FuseError::AlreadyExists(_)));
        assert_eq!(m.map_uid(1000), 2000);
        assert_eq!(m.uid_entry_count(), 1);
        assert_eq!(m.reverse_map_uid(3000), None);
        m.add_gid_entry(entry(1, 1)).unwrap();
        assert!(m.add_gid_entry(entry(1, 2)).is_err());
    }

    #[test]
    fn table_holds_at_most_65536_entries() {
        let mut m = IdMapper::new(IdMapMode::Table);
        for i in 0..MAX_TABLE_ENTRIES as u32 {
            m.add_uid_entry(entry(i, i + 1)).unwrap();
        }
        assert_eq!(m.uid_entry_count(), 65_536);
        let err = m.add_uid_entry(entry(70_000, 1)).unwrap_err();
        assert!(matches!(err, FuseError::InvalidArgument(_)));
        assert_eq!(m.uid_entry_count(), 65_536);
        assert_eq!(m.map_uid(70_000), 70_000);
        // The GID table has its own limit.
        m.add_gid_entry(entry(70_000, 1)).unwrap();
    }

    #[test]
    fn stats_count_lookups_and_table_hits() {
        let mut m = IdMapper::new(IdMapMode::Table);
        m.add_uid_entry(entry(1, 10)).unwrap();
        m.add_gid_entry(entry(2, 20)).unwrap();
        m.map_uid(1);
        m.map_uid(3);
        m.reverse_map_uid(10);
        m.map_gid(2);
        m.map_gid(2);
        m.reverse_map_gid(99);
        assert_eq!(
            m.stats(),
            IdMapStats {
                uid_lookups: 3,
                gid_lookups: 3,
                uid_hits: 2,
                gid_hits: 2,
            }
        );
    }

    #[test]
    fn stats_have_no_hits_without_table_mode() {
        let m = range(100, 0, 10);
        m.map_uid(105);
        m.map_gid(105);
        let stats = m.stats();
        assert_eq!((stats.uid_lookups, stats.gid_lookups), (1, 1));
        assert_eq!((stats.uid_hits, stats.gid_hits), (0, 0));
        assert_eq!(
            IdMapper::new(IdMapMode::Identity).stats(),
            IdMapStats::default()
        );
    }

    #[test]
    fn mapper_is_shared_between_threads() {
        let mut m = IdMapper::new(IdMapMode::Table);
        m.add_uid_entry(entry(5, 50)).unwrap();
        let m = std::sync::Arc::new(m);
        // More threads than counter shards: some share one.
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        assert_eq!(m.map_uid(5), 50);
                        assert_eq!(m.map_uid(6), 6);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.stats().uid_lookups, 6000);
        assert_eq!(m.stats().uid_hits, 3000);
    }

    #[test]
    fn mode_is_reported() {
        let m = squash();
        assert_eq!(
            m.mode(),
            &IdMapMode::Squash {
                nobody_uid: 65534,
                nobody_gid: 65533
            }
        );
    }
}
