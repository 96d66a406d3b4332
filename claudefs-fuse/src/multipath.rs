//! Multipath routing: which of up to [`MAX_PATHS`] transport paths to a
//! storage node the next request uses.
//!
//! [`MultipathRouter`] owns the paths, their health state and metrics, and
//! the load-balancing policy. It does no I/O: callers report each request's
//! outcome with `record_success` / `record_error` and ask `select_path`
//! for the next path. Errors degrade a path (3rd cumulative error) and then
//! fail it (10th); `mark_active` restores it and clears its error count.
//! Selection is a scan of at most 16 paths without allocation.
#![forbid(unsafe_code)]

use crate::error::{FuseError, Result};

/// The most paths a router holds.
pub const MAX_PATHS: usize = 16;

/// Cumulative errors that make an Active path Degraded.
pub const DEGRADED_AFTER_ERRORS: u64 = 3;

/// Cumulative errors that make a path Failed.
pub const FAILED_AFTER_ERRORS: u64 = 10;

/// Identifier of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u64);

/// Health of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathState {
    /// Healthy.
    Active,
    /// Usable but erroring.
    Degraded,
    /// Not usable.
    Failed,
    /// Being re-established; not usable.
    Reconnecting,
}

impl PathState {
    /// Whether requests may use the path (Active or Degraded).
    pub fn is_usable(&self) -> bool {
        matches!(self, PathState::Active | PathState::Degraded)
    }
}

/// Priority of a path; a higher value is preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathPriority(pub u8);

impl PathPriority {
    /// The priority of a path nobody ranked.
    pub const DEFAULT: u8 = 100;
}

impl Default for PathPriority {
    fn default() -> Self {
        PathPriority(Self::DEFAULT)
    }
}

/// Measurements of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathMetrics {
    /// Exponential moving average of request latency, microseconds.
    pub latency_us: u64,
    /// Errors since the path was last marked active.
    pub error_count: u64,
    /// Bytes sent over the path.
    pub bytes_sent: u64,
    /// Bytes received over the path.
    pub bytes_recv: u64,
    /// When the last error happened, seconds.
    pub last_error_at_secs: u64,
}

impl Default for PathMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PathMetrics {
    /// Fresh metrics with a 1 ms latency baseline.
    pub fn new() -> Self {
        Self {
            latency_us: 1000,
            error_count: 0,
            bytes_sent: 0,
            bytes_recv: 0,
            last_error_at_secs: 0,
        }
    }

    /// Folds a request latency into the average:
    /// `new = (7 * old + latency_us) / 8` (computed without overflow).
    pub fn record_success(&mut self, latency_us: u64) {
        let sum = 7 * u128::from(self.latency_us) + u128::from(latency_us);
        // At most max(old, latency_us), so it fits in u64.
        self.latency_us = (sum / 8) as u64;
    }

    /// Counts an error at `now_secs`.
    pub fn record_error(&mut self, now_secs: u64) {
        self.error_count = self.error_count.saturating_add(1);
        self.last_error_at_secs = now_secs;
    }

    /// Adds transferred bytes.
    pub fn record_bytes(&mut self, sent: u64, recv: u64) {
        self.bytes_sent = self.bytes_sent.saturating_add(sent);
        self.bytes_recv = self.bytes_recv.saturating_add(recv);
    }

    /// 1.0 if an error happened within the last `window_secs` before
    /// `now_secs`, else 0.0.
    pub fn error_rate_recent(&self, now_secs: u64, window_secs: u64) -> f64 {
        if self.error_count > 0 && self.last_error_at_secs >= now_secs.saturating_sub(window_secs) {
            1.0
        } else {
            0.0
        }
    }

    /// Cost of the path, lower is better: latency plus 1000 per error.
    pub fn score(&self) -> u64 {
        self.latency_us
            .saturating_add(self.error_count.saturating_mul(1000))
    }
}

/// One path and what the router knows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The path's id.
    pub id: PathId,
    /// Health state.
    pub state: PathState,
    /// Priority; a higher value is preferred by [`LoadBalancePolicy::Primary`].
    pub priority: u8,
    /// Address of the remote end.
    pub remote_addr: String,
    /// Measurements.
    pub metrics: PathMetrics,
}

impl PathInfo {
    /// An Active path with fresh metrics.
    pub fn new(id: PathId, remote_addr: impl Into<String>, priority: u8) -> Self {
        Self {
            id,
            state: PathState::Active,
            priority,
            remote_addr: remote_addr.into(),
            metrics: PathMetrics::new(),
        }
    }

    /// Marks the path Degraded.
    pub fn mark_degraded(&mut self) {
        self.state = PathState::Degraded;
    }

    /// Marks the path Failed.
    pub fn mark_failed(&mut self) {
        self.state = PathState::Failed;
    }

    /// Marks the path Reconnecting.
    pub fn mark_reconnecting(&mut self) {
        self.state = PathState::Reconnecting;
    }

    /// Marks the path Active and clears its error count.
    pub fn mark_active(&mut self) {
        self.state = PathState::Active;
        self.metrics.error_count = 0;
    }

    /// Whether requests may use the path.
    pub fn is_usable(&self) -> bool {
        self.state.is_usable()
    }
}

/// How [`MultipathRouter::select_path`] picks among usable paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadBalancePolicy {
    /// Each usable path in turn, in insertion order.
    RoundRobin,
    /// The usable path with the lowest score.
    LeastLatency,
    /// The usable path with the highest priority (lowest score on a tie).
    Primary,
}

/// Chooses a path for each request and tracks path health.
#[derive(Debug, Clone)]
pub struct MultipathRouter {
    policy: LoadBalancePolicy,
    /// Paths in insertion order.
    paths: Vec<PathInfo>,
    /// Index RoundRobin starts searching from next.
    next_rr: usize,
}

impl MultipathRouter {
    /// A router without paths.
    pub fn new(policy: LoadBalancePolicy) -> Self {
        Self {
            policy,
            paths: Vec::with_capacity(MAX_PATHS),
            next_rr: 0,
        }
    }

    /// The load-balancing policy.
    pub fn policy(&self) -> LoadBalancePolicy {
        self.policy
    }

    /// Adds a path. Fails with [`FuseError::AlreadyExists`] on a duplicate
    /// id and [`FuseError::InvalidArgument`] when [`MAX_PATHS`] are held.
    pub fn add_path(&mut self, info: PathInfo) -> Result<()> {
        if self.index_of(info.id).is_some() {
            return Err(FuseError::AlreadyExists(format!("path {}", info.id.0)));
        }
        if self.paths.len() >= MAX_PATHS {
            return Err(FuseError::InvalidArgument(format!(
                "at most {MAX_PATHS} paths"
            )));
        }
        self.paths.push(info);
        Ok(())
    }

    /// Removes a path; [`FuseError::NotFound`] if unknown.
    pub fn remove_path(&mut self, id: PathId) -> Result<()> {
        let index = self.require(id)?;
        self.paths.remove(index);
        // Keep RoundRobin's position on the path that was next.
        if index < self.next_rr {
            self.next_rr -= 1;
        }
        if self.next_rr >= self.paths.len() {
            self.next_rr = 0;
        }
        Ok(())
    }

    /// The path the next request should use, or `None` if no path is
    /// usable.
    pub fn select_path(&mut self) -> Option<PathId> {
        match self.policy {
            LoadBalancePolicy::RoundRobin => {
                let n = self.paths.len();
                let index = (0..n)
                    .map(|k| (self.next_rr + k) % n)
                    .find(|&i| self.paths[i].is_usable())?;
                self.next_rr = (index + 1) % n;
                Some(self.paths[index].id)
            }
            // `min_by_key` keeps the first of equal minima: insertion order
            // breaks the remaining ties.
            LoadBalancePolicy::LeastLatency => self
                .usable()
                .min_by_key(|p| p.metrics.score())
                .map(|p| p.id),
            LoadBalancePolicy::Primary => self
                .usable()
                .min_by_key(|p| (std::cmp::Reverse(p.priority), p.metrics.score()))
                .map(|p| p.id),
        }
    }

    /// Folds a successful request's latency into the path's average.
    pub fn record_success(&mut self, id: PathId, latency_us: u64) -> Result<()> {
        self.path_mut(id)?.metrics.record_success(latency_us);
        Ok(())
    }

    /// Counts an error on the path: the 3rd cumulative error makes an
    /// Active path Degraded, the 10th makes a usable path Failed. A
    /// Reconnecting or Failed path keeps its state.
    pub fn record_error(&mut self, id: PathId, now_secs: u64) -> Result<()> {
        let path = self.path_mut(id)?;
        path.metrics.record_error(now_secs);
        let errors = path.metrics.error_count;
        if errors >= FAILED_AFTER_ERRORS && path.is_usable() {
            path.mark_failed();
        } else if errors >= DEGRADED_AFTER_ERRORS && path.state == PathState::Active {
            path.mark_degraded();
        }
        Ok(())
    }

    /// Adds transferred bytes to the path's counters.
    pub fn record_bytes(&mut self, id: PathId, sent: u64, recv: u64) -> Result<()> {
        self.path_mut(id)?.metrics.record_bytes(sent, recv);
        Ok(())
    }

    /// Marks the path Reconnecting.
    pub fn mark_reconnecting(&mut self, id: PathId) -> Result<()> {
        self.path_mut(id)?.mark_reconnecting();
        Ok(())
    }

    /// Marks the path Active and clears its error count.
    pub fn mark_active(&mut self, id: PathId) -> Result<()> {
        self.path_mut(id)?.mark_active();
        Ok(())
    }

    /// Marks the path Degraded.
    pub fn mark_degraded(&mut self, id: PathId) -> Result<()> {
        self.path_mut(id)?.mark_degraded();
        Ok(())
    }

    /// Marks the path Failed.
    pub fn mark_failed(&mut self, id: PathId) -> Result<()> {
        self.path_mut(id)?.mark_failed();
        Ok(())
    }

    /// Number of paths.
    pub fn path_count(&self) -> usize {
        self.paths.len()
    }

    /// Number of usable (Active or Degraded) paths.
    pub fn usable_path_count(&self) -> usize {
        self.usable().count()
    }

    /// Whether no path is usable (also true without paths).
    pub fn all_paths_failed(&self) -> bool {
        !self.paths.iter().any(PathInfo::is_usable)
    }

    /// All paths, in insertion order.
    pub fn paths(&self) -> &[PathInfo] {
        &self.paths
    }

    /// The path with this id.
    pub fn get_path(&self, id: PathId) -> Option<&PathInfo> {
        self.paths.iter().find(|p| p.id == id)
    }

    fn usable(&self) -> impl Iterator<Item = &PathInfo> {
        self.paths.iter().filter(|p| p.is_usable())
    }

    fn index_of(&self, id: PathId) -> Option<usize> {
        self.paths.iter().position(|p| p.id == id)
    }

    fn require(&self, id: PathId) -> Result<usize> {
        self.index_of(id)
            .ok_or_else(|| FuseError::NotFound(format!("path {}", id.0)))
    }

    fn path_mut(&mut self, id: PathId) -> Result<&mut PathInfo> {
        let index = self.require(id)?;
        Ok(&mut self.paths[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(id: u64) -> PathInfo {
        PathInfo::new(
            PathId(id),
            format!("10.0.0.{id}:9000"),
            PathPriority::DEFAULT,
        )
    }

    fn router(policy: LoadBalancePolicy, ids: &[u64]) -> MultipathRouter {
        let mut r = MultipathRouter::new(policy);
        for &id in ids {
            r.add_path(path(id)).unwrap();
        }
        r
    }

    fn select_n(r: &mut MultipathRouter, n: usize) -> Vec<u64> {
        (0..n).map(|_| r.select_path().unwrap().0).collect()
    }

    #[test]
    fn metrics_start_at_one_millisecond() {
        let m = PathMetrics::new();
        assert_eq!(m.latency_us, 1000);
        assert_eq!((m.error_count, m.bytes_sent, m.bytes_recv), (0, 0, 0));
        assert_eq!(PathMetrics::default(), m);
        assert_eq!(PathPriority::default(), PathPriority(100));
    }

    #[test]
    fn ema_follows_the_formula() {
        let mut m = PathMetrics::new();
        m.record_success(9000);
        assert_eq!(m.latency_us, (7 * 1000 + 9000) / 8);
        m.record_success(0);
        assert_eq!(m.latency_us, 7 * 2000 / 8);
        let mut big = PathMetrics::new();
        big.latency_us = u64::MAX;
        big.record_success(u64::MAX);
        assert_eq!(big.latency_us, u64::MAX);
    }

    #[test]
    fn error_rate_recent_window() {
        let mut m = PathMetrics::new();
        assert_eq!(m.error_rate_recent(100, 10), 0.0);
        m.record_error(95);
        assert_eq!(m.error_rate_recent(100, 10), 1.0);
        assert_eq!(m.error_rate_recent(105, 10), 1.0);
        assert_eq!(m.error_rate_recent(106, 10), 0.0);
        assert_eq!(m.error_rate_recent(3, 10), 1.0);
    }

    #[test]
    fn score_adds_a_millisecond_per_error() {
        let mut m = PathMetrics::new();
        m.record_error(1);
        m.record_error(2);
        assert_eq!(m.score(), 3000);
        assert_eq!((m.error_count, m.last_error_at_secs), (2, 2));
    }

    #[test]
    fn path_state_usability() {
        assert!(PathState::Active.is_usable());
        assert!(PathState::Degraded.is_usable());
        assert!(!PathState::Failed.is_usable());
        assert!(!PathState::Reconnecting.is_usable());
    }

    #[test]
    fn path_info_marks() {
        let mut p = path(1);
        assert_eq!(p.state, PathState::Active);
        p.mark_degraded();
        assert!(p.is_usable());
        p.mark_failed();
        assert!(!p.is_usable());
        p.mark_reconnecting();
        assert_eq!(p.state, PathState::Reconnecting);
        p.metrics.record_error(5);
        p.mark_active();
        assert_eq!((p.state, p.metrics.error_count), (PathState::Active, 0));
    }

    #[test]
    fn add_and_remove_paths() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1, 2, 3]);
        assert_eq!(r.path_count(), 3);
        r.remove_path(PathId(2)).unwrap();
        assert_eq!(r.path_count(), 2);
        assert!(r.get_path(PathId(2)).is_none());
        let ids: Vec<u64> = r.paths().iter().map(|p| p.id.0).collect();
        assert_eq!(ids, vec![1, 3]);
        assert!(matches!(
            r.remove_path(PathId(2)),
            Err(FuseError::NotFound(_))
        ));
    }

    #[test]
    fn duplicate_path_id_is_rejected() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1]);
        let err = r.add_path(path(1)).unwrap_err();
        assert!(matches!(err, FuseError::AlreadyExists(_)));
        assert_eq!(r.path_count(), 1);
    }

    #[test]
    fn at_most_sixteen_paths() {
        let ids: Vec<u64> = (0..16).collect();
        let mut r = router(LoadBalancePolicy::RoundRobin, &ids);
        assert_eq!(r.path_count(), 16);
        assert!(matches!(
            r.add_path(path(99)),
            Err(FuseError::InvalidArgument(_))
        ));
        assert_eq!(r.path_count(), 16);
        r.remove_path(PathId(0)).unwrap();
        r.add_path(path(99)).unwrap();
    }

    #[test]
    fn unknown_id_is_an_error_everywhere() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1]);
        let id = PathId(7);
        assert!(r.record_success(id, 5).is_err());
        assert!(r.record_error(id, 5).is_err());
        assert!(r.record_bytes(id, 1, 1).is_err());
        assert!(r.mark_reconnecting(id).is_err());
        assert!(r.mark_active(id).is_err());
        assert!(r.mark_degraded(id).is_err());
        assert!(r.mark_failed(id).is_err());
    }

    #[test]
    fn round_robin_cycles_in_insertion_order() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[10, 20, 30]);
        assert_eq!(select_n(&mut r, 7), vec![10, 20, 30, 10, 20, 30, 10]);
    }

    #[test]
    fn round_robin_skips_unusable_paths() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1, 2, 3, 4]);
        r.mark_failed(PathId(1)).unwrap();
        r.mark_reconnecting(PathId(3)).unwrap();
        assert_eq!(select_n(&mut r, 4), vec![2, 4, 2, 4]);
        r.mark_active(PathId(3)).unwrap();
        assert_eq!(select_n(&mut r, 3), vec![2, 3, 4]);
    }

    #[test]
    fn round_robin_continues_after_removal() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1, 2, 3]);
        assert_eq!(select_n(&mut r, 2), vec![1, 2]);
        r.remove_path(PathId(1)).unwrap();
        assert_eq!(select_n(&mut r, 3), vec![3, 2, 3]);
        r.remove_path(PathId(3)).unwrap();
        assert_eq!(select_n(&mut r, 2), vec![2, 2]);
    }

    #[test]
    fn least_latency_picks_lowest_score() {
        let mut r = router(LoadBalancePolicy::LeastLatency, &[1, 2, 3]);
        for _ in 0..20 {
            r.record_success(PathId(1), 5000).unwrap();
            r.record_success(PathId(2), 200).unwrap();
            r.record_success(PathId(3), 800).unwrap();
        }
        assert_eq!(r.select_path(), Some(PathId(2)));
        // Errors cost 1000 each: two of them push path 2 past path 3.
        r.record_error(PathId(2), 1).unwrap();
        r.record_error(PathId(2), 1).unwrap();
        assert_eq!(r.select_path(), Some(PathId(3)));
    }

    #[test]
    fn least_latency_tie_goes_to_first_inserted() {
        let mut r = router(LoadBalancePolicy::LeastLatency, &[5, 4, 3]);
        assert_eq!(r.select_path(), Some(PathId(5)));
        assert_eq!(r.select_path(), Some(PathId(5)));
    }

    #[test]
    fn primary_picks_highest_priority() {
        let mut r = MultipathRouter::new(LoadBalancePolicy::Primary);
        r.add_path(PathInfo::new(PathId(1), "a", 50)).unwrap();
        r.add_path(PathInfo::new(PathId(2), "b", 200)).unwrap();
        r.add_path(PathInfo::new(PathId(3), "c", 100)).unwrap();
        for _ in 0..5 {
            assert_eq!(r.select_path(), Some(PathId(2)));
        }
    }

    #[test]
    fn primary_falls_back_when_primary_fails() {
        let mut r = MultipathRouter::new(LoadBalancePolicy::Primary);
        r.add_path(PathInfo::new(PathId(1), "a", 50)).unwrap();
        r.add_path(PathInfo::new(PathId(2), "b", 200)).unwrap();
        r.add_path(PathInfo::new(PathId(3), "c", 100)).unwrap();
        r.mark_failed(PathId(2)).unwrap();
        assert_eq!(r.select_path(), Some(PathId(3)));
        r.mark_reconnecting(PathId(3)).unwrap();
        assert_eq!(r.select_path(), Some(PathId(1)));
        r.mark_active(PathId(2)).unwrap();
        assert_eq!(r.select_path(), Some(PathId(2)));
    }

    #[test]
    fn primary_tie_on_priority_picks_lowest_score() {
        let mut r = router(LoadBalancePolicy::Primary, &[1, 2]);
        r.record_success(PathId(1), 9000).unwrap();
        r.record_success(PathId(2), 10).unwrap();
        assert_eq!(r.select_path(), Some(PathId(2)));
    }

    #[test]
    fn record_error_increments_and_degrades_after_three() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1]);
        r.record_error(PathId(1), 10).unwrap();
        r.record_error(PathId(1), 11).unwrap();
        let p = r.get_path(PathId(1)).unwrap();
        assert_eq!((p.metrics.error_count, p.state), (2, PathState::Active));
        assert_eq!(p.metrics.last_error_at_secs, 11);
        r.record_error(PathId(1), 12).unwrap();
        assert_eq!(r.get_path(PathId(1)).unwrap().state, PathState::Degraded);
        assert_eq!(r.usable_path_count(), 1);
    }

    #[test]
    fn failed_after_ten_errors() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1, 2]);
        for i in 0..9 {
            r.record_error(PathId(1), i).unwrap();
        }
        assert_eq!(r.get_path(PathId(1)).unwrap().state, PathState::Degraded);
        r.record_error(PathId(1), 9).unwrap();
        assert_eq!(r.get_path(PathId(1)).unwrap().state, PathState::Failed);
        assert_eq!(r.usable_path_count(), 1);
        assert_eq!(select_n(&mut r, 2), vec![2, 2]);
    }

    #[test]
    fn errors_do_not_override_reconnecting() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1]);
        r.mark_reconnecting(PathId(1)).unwrap();
        for i in 0..12 {
            r.record_error(PathId(1), i).unwrap();
        }
        assert_eq!(
            r.get_path(PathId(1)).unwrap().state,
            PathState::Reconnecting
        );
    }

    #[test]
    fn mark_active_clears_errors_and_restarts_the_count() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1]);
        for i in 0..10 {
            r.record_error(PathId(1), i).unwrap();
        }
        r.mark_active(PathId(1)).unwrap();
        let p = r.get_path(PathId(1)).unwrap();
        assert_eq!((p.state, p.metrics.error_count), (PathState::Active, 0));
        r.record_error(PathId(1), 20).unwrap();
        r.record_error(PathId(1), 21).unwrap();
        assert_eq!(r.get_path(PathId(1)).unwrap().state, PathState::Active);
    }

    #[test]
    fn usable_count_and_all_paths_failed() {
        let mut r = router(LoadBalancePolicy::LeastLatency, &[1, 2]);
        assert!(!r.all_paths_failed());
        r.mark_failed(PathId(1)).unwrap();
        r.mark_degraded(PathId(2)).unwrap();
        assert_eq!(r.usable_path_count(), 1);
        assert!(!r.all_paths_failed());
        r.mark_reconnecting(PathId(2)).unwrap();
        assert_eq!(r.usable_path_count(), 0);
        assert!(r.all_paths_failed());
        assert!(MultipathRouter::new(LoadBalancePolicy::Primary).all_paths_failed());
    }

    #[test]
    fn select_returns_none_without_usable_paths() {
        for policy in [
            LoadBalancePolicy::RoundRobin,
            LoadBalancePolicy::LeastLatency,
            LoadBalancePolicy::Primary,
        ] {
            let mut r = MultipathRouter::new(policy);
            assert_eq!(r.select_path(), None);
            r.add_path(path(1)).unwrap();
            r.mark_failed(PathId(1)).unwrap();
            assert_eq!(r.select_path(), None, "{policy:?}");
            assert_eq!(r.policy(), policy);
        }
    }

    #[test]
    fn bytes_are_accumulated() {
        let mut r = router(LoadBalancePolicy::RoundRobin, &[1]);
        r.record_bytes(PathId(1), 100, 7).unwrap();
        r.record_bytes(PathId(1), 28, 3).unwrap();
        let m = r.get_path(PathId(1)).unwrap().metrics;
        assert_eq!((m.bytes_sent, m.bytes_recv), (128, 10));
    }

    fn state() -> impl Strategy<Value = PathState> {
        prop_oneof![
            Just(PathState::Active),
            Just(PathState::Degraded),
            Just(PathState::Failed),
            Just(PathState::Reconnecting),
        ]
    }

    proptest! {
        #[test]
        fn round_robin_visits_every_usable_path_once_per_cycle(
            states in prop::collection::vec(state(), 1..=MAX_PATHS),
            warmup in 0usize..20,
        ) {
            let mut r = MultipathRouter::new(LoadBalancePolicy::RoundRobin);
            for (i, s) in states.iter().enumerate() {
                let mut p = path(i as u64);
                p.state = *s;
                r.add_path(p).unwrap();
            }
            let usable: Vec<u64> = r.paths().iter().filter(|p| p.is_usable()).map(|p| p.id.0).collect();
            if usable.is_empty() {
                prop_assert_eq!(r.select_path(), None);
                return Ok(());
            }
            // The first cycle is the usable paths in insertion order.
            prop_assert_eq!(select_n(&mut r, usable.len()), usable.clone());
            for _ in 0..warmup {
                r.select_path();
            }
            let mut cycle = select_n(&mut r, usable.len());
            cycle.sort_unstable();
            prop_assert_eq!(cycle, usable);
        }

        #[test]
        fn ema_stays_within_what_it_was_fed(fed in prop::collection::vec(any::<u64>(), 1..50)) {
            // The baseline of 1000 counts as fed.
            let lo = fed.iter().copied().min().unwrap().min(1000);
            let hi = fed.iter().copied().max().unwrap().max(1000);
            let mut m = PathMetrics::new();
            for &latency in &fed {
                m.record_success(latency);
                prop_assert!(lo <= m.latency_us && m.latency_us <= hi);
            }
        }
    }
}
