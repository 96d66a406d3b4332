//! Reading the probe maps and merging their per-CPU values into the plain
//! [`ProbeSnapshot`](crate::probes::snapshot::ProbeSnapshot) types.
//!
//! The merge is pure (sums saturate, maxima take the largest CPU value,
//! histograms add bucket by bucket) and unit-tested without a kernel; the
//! `read_*` functions only walk the maps and call it.

use std::collections::BTreeMap;

use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuHashMap};
use aya::Pod;
use claudefs_ebpf_common::{
    counter, map_names, FlockKey, FlockStats, InflightGroup, InflightSlot, OpCacheSlot, OpKey,
    OpStats, ProcCacheSlot, ProcKey, ProcStats, WaiterKey, WaiterStats, COMM_LEN,
    FLOCK_KIND_EXCLUSIVE, FLOCK_KIND_SHARED, FLOCK_KIND_UNLOCK, FLOCK_MODE_BLOCKING,
    FLOCK_MODE_NONBLOCKING, TARGET_DEVICE, TARGET_FUSE, TARGET_LOCAL,
};

use crate::probes::error::ProbeError;
use crate::probes::hist::LatencyHistogram;
use crate::probes::snapshot::{FlockKind, FlockMode, FlockTarget, LatencyStats};

/// Merges per-CPU request statistics of one key.
pub fn merge_op_stats(per_cpu: &[OpStats]) -> LatencyStats {
    let mut out = LatencyStats::default();
    for s in per_cpu {
        out.count = out.count.saturating_add(s.count);
        out.errors = out.errors.saturating_add(s.errors);
        out.total_ns = out.total_ns.saturating_add(s.total_ns);
        out.max_ns = out.max_ns.max(s.max_ns);
        out.hist.merge(&LatencyHistogram { buckets: s.hist });
    }
    out
}

/// Merged flock statistics of one key: (calls, refused, waited, wait),
/// where `wait.count == calls` and `wait.errors == refused`.
pub type MergedFlock = (u64, u64, u64, LatencyStats);

/// Merges per-CPU flock statistics of one key.
pub fn merge_flock_stats(per_cpu: &[FlockStats]) -> MergedFlock {
    let (mut calls, mut refused, mut waited) = (0u64, 0u64, 0u64);
    let mut wait = LatencyStats::default();
    for s in per_cpu {
        calls = calls.saturating_add(s.calls);
        refused = refused.saturating_add(s.refused);
        waited = waited.saturating_add(s.waited);
        wait.count = wait.count.saturating_add(s.calls);
        wait.errors = wait.errors.saturating_add(s.refused);
        wait.total_ns = wait.total_ns.saturating_add(s.total_ns);
        wait.max_ns = wait.max_ns.max(s.max_ns);
        wait.hist.merge(&LatencyHistogram { buckets: s.hist });
    }
    (calls, refused, waited, wait)
}

/// Merged per-process statistics: (count, total_ns, comm seen by the
/// kernel on some CPU).
pub fn merge_proc_stats(per_cpu: &[ProcStats]) -> (u64, u64, String) {
    let (mut count, mut total) = (0u64, 0u64);
    let mut comm = String::new();
    for s in per_cpu {
        count = count.saturating_add(s.count);
        total = total.saturating_add(s.total_ns);
        if comm.is_empty() {
            comm = comm_from_bytes(&s.comm);
        }
    }
    (count, total, comm)
}

/// Merged waiter statistics of one (target, tgid, fd).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergedWaiter {
    pub calls: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
    pub comm: String,
}

pub fn merge_waiter_stats(per_cpu: &[WaiterStats]) -> MergedWaiter {
    let mut out = MergedWaiter::default();
    for s in per_cpu {
        out.calls = out.calls.saturating_add(s.calls);
        out.total_wait_ns = out.total_wait_ns.saturating_add(s.total_wait_ns);
        out.max_wait_ns = out.max_wait_ns.max(s.max_wait_ns);
        if out.comm.is_empty() {
            out.comm = comm_from_bytes(&s.comm);
        }
    }
    out
}

/// A NUL-padded kernel comm as a string.
pub fn comm_from_bytes(raw: &[u8; COMM_LEN]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The target of a flock map key.
pub fn flock_target(target_type: u32, target_id: u32) -> FlockTarget {
    match target_type {
        TARGET_FUSE => FlockTarget::Fuse { conn: target_id },
        TARGET_DEVICE => FlockTarget::Device { dev: target_id },
        TARGET_LOCAL => FlockTarget::Local,
        _ => FlockTarget::Local,
    }
}

pub fn flock_kind(kind: u32) -> Option<FlockKind> {
    match kind {
        FLOCK_KIND_SHARED => Some(FlockKind::Shared),
        FLOCK_KIND_EXCLUSIVE => Some(FlockKind::Exclusive),
        FLOCK_KIND_UNLOCK => Some(FlockKind::Unlock),
        _ => None,
    }
}

pub fn flock_mode(mode: u32) -> Option<FlockMode> {
    match mode {
        FLOCK_MODE_BLOCKING => Some(FlockMode::Blocking),
        FLOCK_MODE_NONBLOCKING => Some(FlockMode::NonBlocking),
        _ => None,
    }
}

fn map<'a>(maps: &'a aya::Ebpf, name: &'static str) -> Result<&'a Map, ProbeError> {
    maps.map(name).ok_or(ProbeError::Missing {
        what: "map",
        name: name.to_string(),
    })
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { map, source }
}

/// Every (key, per-CPU values) of a per-CPU hash map. Entries deleted while
/// walking (LRU eviction) are skipped rather than failing the read-out.
pub(crate) fn read_per_cpu<K: Pod, V: Pod>(
    ebpf: &aya::Ebpf,
    name: &'static str,
) -> Result<Vec<(K, Vec<V>)>, ProbeError> {
    let m: PerCpuHashMap<&MapData, K, V> =
        PerCpuHashMap::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    let mut out = Vec::new();
    for item in m.iter() {
        match item {
            Ok((k, values)) => out.push((k, values.iter().copied().collect())),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(out)
}

/// Keys of a per-CPU hash map (cheap: no values copied).
pub(crate) fn read_keys<K: Pod, V: Pod>(
    ebpf: &aya::Ebpf,
    name: &'static str,
) -> Result<Vec<K>, ProbeError> {
    let m: PerCpuHashMap<&MapData, K, V> =
        PerCpuHashMap::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    let mut out = Vec::new();
    for k in m.keys() {
        match k {
            Ok(k) => out.push(k),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(out)
}

/// Sum over CPUs of the counter at `idx` (see [`counter`]).
pub(crate) fn read_counter(ebpf: &aya::Ebpf, idx: u32) -> Result<u64, ProbeError> {
    let name = map_names::COUNTERS;
    let m: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    let values = m.get(&idx, 0).map_err(map_err(name))?;
    Ok(values.iter().fold(0u64, |a, b| a.saturating_add(*b)))
}

/// All counters, indexed like [`counter`].
pub(crate) fn read_counters(
    ebpf: &aya::Ebpf,
) -> Result<[u64; counter::COUNT as usize], ProbeError> {
    let mut out = [0u64; counter::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = read_counter(ebpf, i as u32)?;
    }
    Ok(out)
}

/// Every slot of a per-CPU array on every CPU.
pub(crate) fn read_array_slots<V: Pod>(
    ebpf: &aya::Ebpf,
    name: &'static str,
) -> Result<Vec<V>, ProbeError> {
    let m: PerCpuArray<&MapData, V> =
        PerCpuArray::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    let mut out = Vec::new();
    for i in 0..m.len() {
        let values = m.get(&i, 0).map_err(map_err(name))?;
        out.extend(values.iter().copied());
    }
    Ok(out)
}

/// Every occupied way of the in-flight table (`INFLIGHT`, one lookup per
/// group). A way may change while it is read; at worst one request is
/// missed or seen twice in a read-out.
pub(crate) fn read_inflight(ebpf: &aya::Ebpf) -> Result<Vec<InflightSlot>, ProbeError> {
    let name = map_names::INFLIGHT;
    let m: Array<&MapData, InflightGroup> =
        Array::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    let mut out = Vec::new();
    for i in 0..m.len() {
        let group = m.get(&i, 0).map_err(map_err(name))?;
        out.extend(group.ways.iter().filter(|w| w.key.unique != 0).copied());
    }
    Ok(out)
}

/// One (conn, opcode) of in-flight requests: count, and the oldest one's
/// age and caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlightGroup {
    pub count: u64,
    pub oldest_age_ns: u64,
    pub oldest_tgid: u32,
}

/// Groups occupied in-flight ways by (conn, opcode), keeping only requests
/// at least `threshold_ns` old at `now_ns` (CLOCK_MONOTONIC). Free ways
/// (`unique == 0`) are skipped; ties on age keep the lowest tgid.
pub fn group_in_flight(
    slots: &[InflightSlot],
    now_ns: u64,
    threshold_ns: u64,
) -> BTreeMap<(u32, u32), InFlightGroup> {
    let mut out: BTreeMap<(u32, u32), InFlightGroup> = BTreeMap::new();
    for s in slots.iter().filter(|s| s.key.unique != 0) {
        let age = now_ns.saturating_sub(s.req.start_ns);
        if age < threshold_ns {
            continue;
        }
        let g = out.entry((s.key.conn, s.req.opcode)).or_default();
        g.count = g.count.saturating_add(1);
        let older = age > g.oldest_age_ns || (age == g.oldest_age_ns && s.req.tgid < g.oldest_tgid);
        if g.count == 1 || older {
            g.oldest_age_ns = age;
            g.oldest_tgid = s.req.tgid;
        }
    }
    out
}

/// Per-CPU values of each (conn, opcode): its hash entry plus every cache
/// slot (any CPU) it owns. Free slots (`conn == 0`) are skipped.
pub fn group_op_values(
    hash: Vec<(OpKey, Vec<OpStats>)>,
    cache: &[OpCacheSlot],
) -> BTreeMap<OpKey, Vec<OpStats>> {
    let mut out: BTreeMap<OpKey, Vec<OpStats>> = BTreeMap::new();
    for (k, v) in hash {
        out.entry(k).or_default().extend(v);
    }
    for slot in cache.iter().filter(|s| s.key.conn != 0) {
        out.entry(slot.key).or_default().push(slot.stats);
    }
    out
}

/// Per-CPU values of each (conn, tgid): hash entries (with the comm) plus
/// cache slots (counts only).
pub fn group_proc_values(
    hash: Vec<(ProcKey, Vec<ProcStats>)>,
    cache: &[ProcCacheSlot],
) -> BTreeMap<ProcKey, Vec<ProcStats>> {
    let mut out: BTreeMap<ProcKey, Vec<ProcStats>> = BTreeMap::new();
    for (k, v) in hash {
        out.entry(k).or_default().extend(v);
    }
    for slot in cache.iter().filter(|s| s.key.conn != 0) {
        out.entry(slot.key).or_default().push(ProcStats {
            count: slot.count,
            total_ns: slot.total_ns,
            comm: [0; COMM_LEN],
        });
    }
    out
}

/// Per-(conn, opcode) statistics, sorted by key.
pub(crate) fn read_ops(ebpf: &aya::Ebpf) -> Result<Vec<(OpKey, LatencyStats)>, ProbeError> {
    let hash = read_per_cpu::<OpKey, OpStats>(ebpf, map_names::OP_STATS)?;
    let cache = read_array_slots::<OpCacheSlot>(ebpf, map_names::OP_CACHE)?;
    Ok(group_op_values(hash, &cache)
        .into_iter()
        .map(|(k, v)| (k, merge_op_stats(&v)))
        .collect())
}

/// Per-(conn, tgid) statistics, sorted by key: (key, count, total_ns,
/// kernel comm).
pub(crate) fn read_procs(ebpf: &aya::Ebpf) -> Result<Vec<(ProcKey, u64, u64, String)>, ProbeError> {
    let hash = read_per_cpu::<ProcKey, ProcStats>(ebpf, map_names::PROC_STATS)?;
    let cache = read_array_slots::<ProcCacheSlot>(ebpf, map_names::PROC_CACHE)?;
    Ok(group_proc_values(hash, &cache)
        .into_iter()
        .map(|(k, v)| {
            let (count, total, comm) = merge_proc_stats(&v);
            (k, count, total, comm)
        })
        .collect())
}

/// Per-(target, kind, mode) flock statistics.
pub(crate) fn read_flocks(ebpf: &aya::Ebpf) -> Result<Vec<(FlockKey, MergedFlock)>, ProbeError> {
    let mut out: Vec<_> = read_per_cpu::<FlockKey, FlockStats>(ebpf, map_names::FLOCK_STATS)?
        .into_iter()
        .map(|(k, v)| (k, merge_flock_stats(&v)))
        .collect();
    out.sort_by_key(|(k, _)| (k.target_type, k.target_id, k.kind, k.mode));
    Ok(out)
}

/// Per-(target, tgid, fd) flock waiters.
pub(crate) fn read_waiters(ebpf: &aya::Ebpf) -> Result<Vec<(WaiterKey, MergedWaiter)>, ProbeError> {
    let mut out: Vec<_> = read_per_cpu::<WaiterKey, WaiterStats>(ebpf, map_names::FLOCK_WAITERS)?
        .into_iter()
        .map(|(k, v)| (k, merge_waiter_stats(&v)))
        .collect();
    out.sort_by_key(|(k, _)| (k.target_type, k.target_id, k.tgid, k.ino));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use claudefs_ebpf_common::{InflightKey, InflightReq, HIST_BUCKETS};

    fn slot(conn: u32, unique: u64, opcode: u32, start_ns: u64, tgid: u32) -> InflightSlot {
        InflightSlot {
            key: InflightKey {
                conn,
                _pad: 0,
                unique,
            },
            req: InflightReq {
                start_ns,
                tgid,
                tid: tgid,
                opcode,
                len: 40,
            },
        }
    }

    #[test]
    fn in_flight_grouped_by_conn_and_opcode_above_the_threshold() {
        let now = 10_000_000_000;
        let slots = [
            slot(53, 2, 1, now - 3_000_000_000, 100),
            slot(53, 4, 1, now - 5_000_000_000, 200),
            slot(53, 6, 1, now - 500_000, 300),     // too young
            slot(53, 0, 1, now - 9_000_000_000, 1), // free way
            slot(53, 8, 3, now - 2_000_000, 400),
            slot(54, 10, 1, now + 1_000, 500), // sent after "now": age 0
            slot(54, 12, 1, now - 2_000_000, 600),
        ];
        let g = group_in_flight(&slots, now, 1_000_000);
        let got: Vec<_> = g.into_iter().collect();
        assert_eq!(
            got,
            [
                (
                    (53, 1),
                    InFlightGroup {
                        count: 2,
                        oldest_age_ns: 5_000_000_000,
                        oldest_tgid: 200
                    }
                ),
                (
                    (53, 3),
                    InFlightGroup {
                        count: 1,
                        oldest_age_ns: 2_000_000,
                        oldest_tgid: 400
                    }
                ),
                (
                    (54, 1),
                    InFlightGroup {
                        count: 1,
                        oldest_age_ns: 2_000_000,
                        oldest_tgid: 600
                    }
                ),
            ]
        );
        assert!(group_in_flight(&slots, now, u64::MAX).is_empty());
    }

    fn op(count: u64, errors: u64, total: u64, max: u64, buckets: &[(usize, u64)]) -> OpStats {
        let mut hist = [0u64; HIST_BUCKETS];
        for &(i, n) in buckets {
            hist[i] = n;
        }
        OpStats {
            count,
            errors,
            total_ns: total,
            max_ns: max,
            hist,
        }
    }

    #[test]
    fn merges_op_stats_over_cpus() {
        let cpus = [
            op(3, 1, 300, 150, &[(6, 2), (7, 1)]),
            op(0, 0, 0, 0, &[]),
            op(2, 2, 1_000_000, 999_000, &[(7, 1), (19, 1)]),
        ];
        let m = merge_op_stats(&cpus);
        assert_eq!(m.count, 5);
        assert_eq!(m.errors, 3);
        assert_eq!(m.total_ns, 1_000_300);
        assert_eq!(m.max_ns, 999_000);
        assert_eq!(m.hist.buckets[6], 2);
        assert_eq!(m.hist.buckets[7], 2);
        assert_eq!(m.hist.buckets[19], 1);
        assert_eq!(m.hist.count(), m.count);
    }

    #[test]
    fn merge_saturates() {
        let cpus = [
            op(u64::MAX, 0, u64::MAX, 1, &[(0, u64::MAX)]),
            op(5, 0, 5, 2, &[(0, 5)]),
        ];
        let m = merge_op_stats(&cpus);
        assert_eq!(m.count, u64::MAX);
        assert_eq!(m.total_ns, u64::MAX);
        assert_eq!(m.hist.buckets[0], u64::MAX);
        assert_eq!(m.max_ns, 2);
    }

    #[test]
    fn cache_slots_and_hash_entries_add_up() {
        let k1 = OpKey {
            conn: 40,
            opcode: 1,
        };
        let k2 = OpKey {
            conn: 40,
            opcode: 3,
        };
        let hash = vec![(
            k1,
            vec![op(1, 0, 10, 10, &[(3, 1)]), op(2, 1, 20, 15, &[(3, 2)])],
        )];
        let free = OpCacheSlot {
            key: OpKey::default(),
            stats: op(99, 99, 99, 99, &[]),
        };
        let cache = [
            OpCacheSlot {
                key: k1,
                stats: op(4, 0, 400, 200, &[(7, 4)]),
            },
            free,
            OpCacheSlot {
                key: k2,
                stats: op(5, 0, 50, 10, &[(3, 5)]),
            },
            // The same key on another CPU.
            OpCacheSlot {
                key: k2,
                stats: op(1, 1, 5, 5, &[(2, 1)]),
            },
        ];
        let grouped = group_op_values(hash, &cache);
        assert_eq!(grouped.len(), 2, "free slots are skipped");
        let m1 = merge_op_stats(&grouped[&k1]);
        assert_eq!(
            (m1.count, m1.errors, m1.total_ns, m1.max_ns),
            (7, 1, 430, 200)
        );
        assert_eq!(m1.hist.count(), 7);
        let m2 = merge_op_stats(&grouped[&k2]);
        assert_eq!(
            (m2.count, m2.errors, m2.total_ns, m2.max_ns),
            (6, 1, 55, 10)
        );

        let p = ProcKey { conn: 40, tgid: 7 };
        let mut comm = [0u8; COMM_LEN];
        comm[..3].copy_from_slice(b"cat");
        let procs = group_proc_values(
            vec![(
                p,
                vec![ProcStats {
                    count: 0,
                    total_ns: 0,
                    comm,
                }],
            )],
            &[
                ProcCacheSlot {
                    key: p,
                    count: 3,
                    total_ns: 30,
                },
                ProcCacheSlot::default(),
            ],
        );
        assert_eq!(procs.len(), 1);
        assert_eq!(merge_proc_stats(&procs[&p]), (3, 30, "cat".to_string()));
    }

    #[test]
    fn merge_of_nothing_is_empty() {
        assert_eq!(merge_op_stats(&[]), LatencyStats::default());
    }

    #[test]
    fn merges_flock_stats() {
        let mut a = FlockStats::ZERO;
        a.calls = 4;
        a.refused = 1;
        a.waited = 2;
        a.total_ns = 700_000_000;
        a.max_ns = 350_000_000;
        a.hist[28] = 2;
        a.hist[10] = 2;
        let mut b = FlockStats::ZERO;
        b.calls = 1;
        b.total_ns = 5;
        b.max_ns = 5;
        b.hist[2] = 1;
        let (calls, refused, waited, wait) = merge_flock_stats(&[a, b]);
        assert_eq!((calls, refused, waited), (5, 1, 2));
        assert_eq!(wait.count, 5);
        assert_eq!(wait.total_ns, 700_000_005);
        assert_eq!(wait.max_ns, 350_000_000);
        assert_eq!(wait.hist.count(), 5);
    }

    #[test]
    fn merges_procs_and_waiters_with_comm() {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"bash");
        let a = ProcStats {
            count: 0,
            total_ns: 0,
            comm: [0; COMM_LEN],
        };
        let b = ProcStats {
            count: 7,
            total_ns: 70,
            comm,
        };
        assert_eq!(merge_proc_stats(&[a, b]), (7, 70, "bash".to_string()));

        let w1 = WaiterStats {
            calls: 1,
            total_wait_ns: 300,
            max_wait_ns: 300,
            comm,
        };
        let w2 = WaiterStats {
            calls: 2,
            total_wait_ns: 100,
            max_wait_ns: 60,
            comm: [0; COMM_LEN],
        };
        let m = merge_waiter_stats(&[w1, w2]);
        assert_eq!((m.calls, m.total_wait_ns, m.max_wait_ns), (3, 400, 300));
        assert_eq!(m.comm, "bash");
    }

    #[test]
    fn comm_of_full_length_name() {
        assert_eq!(comm_from_bytes(b"0123456789abcdef"), "0123456789abcdef");
        assert_eq!(comm_from_bytes(&[0; COMM_LEN]), "");
    }

    #[test]
    fn flock_key_decoding() {
        assert_eq!(
            flock_target(TARGET_FUSE, 45),
            FlockTarget::Fuse { conn: 45 }
        );
        assert_eq!(
            flock_target(TARGET_DEVICE, 8 << 20),
            FlockTarget::Device { dev: 8 << 20 }
        );
        assert_eq!(flock_target(TARGET_LOCAL, 0), FlockTarget::Local);
        assert_eq!(flock_kind(FLOCK_KIND_UNLOCK), Some(FlockKind::Unlock));
        assert_eq!(flock_kind(9), None);
        assert_eq!(
            flock_mode(FLOCK_MODE_NONBLOCKING),
            Some(FlockMode::NonBlocking)
        );
        assert_eq!(flock_mode(7), None);
    }
}
