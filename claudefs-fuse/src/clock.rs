//! Kernel monotonic time to wall-clock time. The probes stamp events with
//! `bpf_ktime_get_ns()` (CLOCK_MONOTONIC); userspace converts with one
//! offset `realtime - monotonic`, measured once at load by reading both
//! clocks back to back and keeping the tightest of a few samples. The
//! daemon times requests with the same monotonic clock in plain ns
//! (cheaper per request than `Instant` arithmetic).

/// Reads a clock in ns since its epoch (libc's vDSO call, no system
/// call); 0 if the clock is unavailable (cannot happen for the two clocks
/// used here on Linux). Not rustix's `clock_gettime`: it calls the vDSO
/// in a way valgrind cannot follow (callgrind aborts on the daemon), and
/// callgrind is how the daemon's cost per request is measured.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC now, in ns (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall clock now, in unix ns.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Converts CLOCK_MONOTONIC ns to unix ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonoToUnix {
    /// `realtime - monotonic` at calibration, in ns.
    offset_ns: i128,
}

impl MonoToUnix {
    /// A converter with a known offset (`unix = mono + offset`).
    pub fn with_offset(offset_ns: i128) -> MonoToUnix {
        MonoToUnix { offset_ns }
    }

    /// Calibrates from samples of (realtime before, monotonic, realtime
    /// after): the sample with the smallest realtime gap wins, and the
    /// monotonic reading is placed at the midpoint of its gap.
    pub fn from_samples(samples: &[(u64, u64, u64)]) -> Option<MonoToUnix> {
        let (before, mono, after) = samples
            .iter()
            .filter(|(b, _, a)| a >= b)
            .min_by_key(|(b, _, a)| a - b)?;
        let mid = *before as i128 + (*after as i128 - *before as i128) / 2;
        Some(MonoToUnix {
            offset_ns: mid - *mono as i128,
        })
    }

    /// Calibrates against the running system's clocks.
    pub fn calibrate() -> MonoToUnix {
        let samples: Vec<(u64, u64, u64)> = (0..5)
            .map(|_| {
                let before = realtime_ns();
                let mono = monotonic_ns();
                let after = realtime_ns();
                (before, mono, after)
            })
            .collect();
        MonoToUnix::from_samples(&samples).unwrap_or(MonoToUnix { offset_ns: 0 })
    }

    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// Unix ns of a monotonic timestamp, clamped to `0..=u64::MAX`.
    pub fn to_unix_ns(&self, mono_ns: u64) -> u64 {
        let v = mono_ns as i128 + self.offset_ns;
        v.clamp(0, u64::MAX as i128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_with_offset() {
        let c = MonoToUnix::with_offset(1_700_000_000_000_000_000);
        assert_eq!(c.to_unix_ns(5), 1_700_000_000_000_000_005);
        let neg = MonoToUnix::with_offset(-10);
        assert_eq!(neg.to_unix_ns(3), 0, "clamped at the epoch");
        assert_eq!(neg.to_unix_ns(13), 3);
        let big = MonoToUnix::with_offset(i128::from(u64::MAX));
        assert_eq!(big.to_unix_ns(10), u64::MAX, "clamped at u64::MAX");
    }

    #[test]
    fn tightest_sample_wins_and_uses_midpoint() {
        let samples = [
            (1_000, 100, 1_400),   // gap 400
            (2_000, 1_050, 2_010), // gap 10: midpoint 2_005 -> offset 955
            (3_000, 2_000, 3_100),
        ];
        let c = MonoToUnix::from_samples(&samples).unwrap();
        assert_eq!(c.offset_ns(), 955);
        assert_eq!(c.to_unix_ns(1_050), 2_005);
    }

    #[test]
    fn rejects_backwards_samples() {
        assert!(MonoToUnix::from_samples(&[(10, 1, 5)]).is_none());
        assert!(MonoToUnix::from_samples(&[]).is_none());
    }

    #[test]
    fn calibrated_clock_matches_the_wall_clock() {
        let c = MonoToUnix::calibrate();
        let mono = monotonic_ns();
        let real = realtime_ns();
        let diff = c.to_unix_ns(mono) as i128 - real as i128;
        assert!(diff.abs() < 50_000_000, "off by {diff} ns");
    }
}
