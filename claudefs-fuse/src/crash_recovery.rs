//! Recovery after a daemon crash and restart: the state machine that
//! rebuilds open-file state and outstanding writes before the mount serves
//! requests again.
//!
//! [`CrashRecovery`] owns the recovery state and the [`RecoveryJournal`] of
//! what the scan found. The flow is `Idle -> Scanning -> Replaying ->
//! Complete`; `fail` ends it from any state and `reset` returns to `Idle`
//! with an empty journal. Calls out of order return
//! [`FuseError::InvalidArgument`]
//! and change nothing.
#![forbid(unsafe_code)]

use crate::error::{FuseError, Result};
use crate::inode::InodeId;

/// `O_WRONLY` open flag.
const O_WRONLY: u32 = 1;
/// `O_RDWR` open flag.
const O_RDWR: u32 = 2;
/// `O_APPEND` open flag (Linux value).
const O_APPEND: u32 = 1024;

/// Where recovery stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecoveryState {
    /// Not started.
    Idle,
    /// Collecting open files and pending writes.
    Scanning,
    /// Replaying what the scan found.
    Replaying {
        /// Items replayed so far (never above `total`).
        replayed: u32,
        /// Items to replay.
        total: u32,
    },
    /// Finished.
    Complete {
        /// Items replayed.
        recovered: u32,
        /// Items that could not be reattached.
        orphaned: u32,
    },
    /// Gave up; the text says why.
    Failed(String),
}

impl RecoveryState {
    /// Whether recovery is running (Scanning or Replaying).
    pub fn is_in_progress(&self) -> bool {
        matches!(
            self,
            RecoveryState::Scanning | RecoveryState::Replaying { .. }
        )
    }

    /// Whether recovery has ended (Complete or Failed).
    pub fn is_complete(&self) -> bool {
        matches!(
            self,
            RecoveryState::Complete { .. } | RecoveryState::Failed(_)
        )
    }
}

/// A file that was open when the daemon crashed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpenFileRecord {
    /// Inode of the file.
    pub ino: InodeId,
    /// File handle the kernel knows it by.
    pub fd: u64,
    /// Process that opened it.
    pub pid: u32,
    /// `open(2)` flags.
    pub flags: u32,
    /// Path the file was opened by, for logs (may be stale).
    pub path_hint: String,
}

impl OpenFileRecord {
    /// Whether the file was opened for writing (`O_WRONLY` or `O_RDWR`).
    pub fn is_writable(&self) -> bool {
        self.flags & O_WRONLY != 0 || self.flags & O_RDWR != 0
    }

    /// Whether the file was opened with `O_APPEND`.
    pub fn is_append_only(&self) -> bool {
        self.flags & O_APPEND != 0
    }
}

/// A dirty range not yet written back when the daemon crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PendingWrite {
    /// Inode written to.
    pub ino: InodeId,
    /// Byte offset of the range.
    pub offset: u64,
    /// Length of the range in bytes.
    pub len: u64,
    /// When the range became dirty, seconds.
    pub dirty_since_secs: u64,
}

impl PendingWrite {
    /// Seconds the range has been dirty at `now` (0 if `now` is earlier).
    pub fn age_secs(&self, now: u64) -> u64 {
        now.saturating_sub(self.dirty_since_secs)
    }

    /// Whether the range has been dirty for more than `max_age_secs`.
    pub fn is_stale(&self, now: u64, max_age_secs: u64) -> bool {
        self.age_secs(now) > max_age_secs
    }
}

/// What the recovery scan found, in the order it was recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryJournal {
    open_files: Vec<OpenFileRecord>,
    pending_writes: Vec<PendingWrite>,
}

impl RecoveryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an open file.
    pub fn add_open_file(&mut self, record: OpenFileRecord) {
        self.open_files.push(record);
    }

    /// Records a pending write.
    pub fn add_pending_write(&mut self, write: PendingWrite) {
        self.pending_writes.push(write);
    }

    /// Number of open files recorded.
    pub fn open_file_count(&self) -> usize {
        self.open_files.len()
    }

    /// Number of pending writes recorded.
    pub fn pending_write_count(&self) -> usize {
        self.pending_writes.len()
    }

    /// The open files opened for writing.
    pub fn writable_open_files(&self) -> Vec<&OpenFileRecord> {
        self.open_files.iter().filter(|r| r.is_writable()).collect()
    }

    /// The pending writes dirty for more than `max_age_secs` at `now_secs`.
    pub fn stale_pending_writes(&self, now_secs: u64, max_age_secs: u64) -> Vec<&PendingWrite> {
        self.pending_writes
            .iter()
            .filter(|w| w.is_stale(now_secs, max_age_secs))
            .collect()
    }

    /// Every open file recorded.
    pub fn open_files(&self) -> &[OpenFileRecord] {
        &self.open_files
    }

    /// Every pending write recorded.
    pub fn pending_writes(&self) -> &[PendingWrite] {
        &self.pending_writes
    }

    fn clear(&mut self) {
        self.open_files.clear();
        self.pending_writes.clear();
    }
}

/// Limits of a recovery run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecoveryConfig {
    /// How long recovery may take, seconds.
    pub max_recovery_secs: u64,
    /// The most open files one scan records.
    pub max_open_files: usize,
    /// Age after which a pending write counts as stale, seconds.
    pub stale_write_age_secs: u64,
}

impl RecoveryConfig {
    /// 30 s to recover, 10 000 open files, writes stale after 300 s.
    pub fn default_config() -> Self {
        Self {
            max_recovery_secs: 30,
            max_open_files: 10_000,
            stale_write_age_secs: 300,
        }
    }
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self::default_config()
    }
}

/// The recovery state machine and its journal.
#[derive(Debug, Clone)]
pub struct CrashRecovery {
    config: RecoveryConfig,
    state: RecoveryState,
    journal: RecoveryJournal,
}

fn wrong_state(action: &str, state: &RecoveryState) -> FuseError {
    FuseError::InvalidArgument(format!("cannot {action} in recovery state {state:?}"))
}

impl CrashRecovery {
    /// An Idle recovery with an empty journal.
    pub fn new(config: RecoveryConfig) -> Self {
        Self {
            config,
            state: RecoveryState::Idle,
            journal: RecoveryJournal::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &RecoveryState {
        &self.state
    }

    /// The limits this recovery runs with.
    pub fn config(&self) -> &RecoveryConfig {
        &self.config
    }

    /// What the scan recorded.
    pub fn journal(&self) -> &RecoveryJournal {
        &self.journal
    }

    /// Idle -> Scanning; fails in any other state.
    pub fn begin_scan(&mut self) -> Result<()> {
        if self.state != RecoveryState::Idle {
            return Err(wrong_state("begin scan", &self.state));
        }
        self.state = RecoveryState::Scanning;
        Ok(())
    }

    /// Records an open file while Scanning. Fails outside Scanning, and
    /// with [`FuseError::InvalidArgument`] once `max_open_files` are
    /// recorded; a failed call records nothing.
    pub fn record_open_file(&mut self, record: OpenFileRecord) -> Result<()> {
        if self.state != RecoveryState::Scanning {
            return Err(wrong_state("record an open file", &self.state));
        }
        if self.journal.open_file_count() >= self.config.max_open_files {
            return Err(FuseError::InvalidArgument(format!(
                "more than {} open files to recover",
                self.config.max_open_files
            )));
        }
        self.journal.add_open_file(record);
        Ok(())
    }

    /// Records a pending write while Scanning; fails otherwise.
    pub fn record_pending_write(&mut self, write: PendingWrite) -> Result<()> {
        if self.state != RecoveryState::Scanning {
            return Err(wrong_state("record a pending write", &self.state));
        }
        self.journal.add_pending_write(write);
        Ok(())
    }

    /// Scanning -> Replaying { replayed: 0, total }; fails otherwise.
    pub fn begin_replay(&mut self, total: u32) -> Result<()> {
        if self.state != RecoveryState::Scanning {
            return Err(wrong_state("begin replay", &self.state));
        }
        self.state = RecoveryState::Replaying { replayed: 0, total };
        Ok(())
    }

    /// Adds `count` replayed items, clamped to the total. Does nothing
    /// outside Replaying.
    pub fn advance_replay(&mut self, count: u32) {
        if let RecoveryState::Replaying { replayed, total } = &mut self.state {
            *replayed = replayed.saturating_add(count).min(*total);
        }
    }

    /// Replaying -> Complete { recovered: replayed, orphaned }; fails
    /// otherwise.
    pub fn complete(&mut self, orphaned: u32) -> Result<()> {
        let RecoveryState::Replaying { replayed, .. } = self.state else {
            return Err(wrong_state("complete", &self.state));
        };
        self.state = RecoveryState::Complete {
            recovered: replayed,
            orphaned,
        };
        Ok(())
    }

    /// Any state -> Failed(reason). The journal is kept for diagnosis.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.state = RecoveryState::Failed(reason.into());
    }

    /// Any state -> Idle, with an empty journal.
    pub fn reset(&mut self) {
        self.state = RecoveryState::Idle;
        self.journal.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_file(fd: u64, flags: u32) -> OpenFileRecord {
        OpenFileRecord {
            ino: 100 + fd,
            fd,
            pid: 4242,
            flags,
            path_hint: format!("/mnt/file{fd}"),
        }
    }

    fn write(ino: InodeId, dirty_since_secs: u64) -> PendingWrite {
        PendingWrite {
            ino,
            offset: 0,
            len: 4096,
            dirty_since_secs,
        }
    }

    fn scanning() -> CrashRecovery {
        let mut r = CrashRecovery::new(RecoveryConfig::default_config());
        r.begin_scan().unwrap();
        r
    }

    fn replaying(total: u32) -> CrashRecovery {
        let mut r = scanning();
        r.begin_replay(total).unwrap();
        r
    }

    fn is_invalid(result: Result<()>) -> bool {
        matches!(result, Err(FuseError::InvalidArgument(_)))
    }

    #[test]
    fn default_config_values() {
        let c = RecoveryConfig::default_config();
        assert_eq!(
            (
                c.max_recovery_secs,
                c.max_open_files,
                c.stale_write_age_secs
            ),
            (30, 10_000, 300)
        );
        assert_eq!(RecoveryConfig::default(), c);
        assert_eq!(CrashRecovery::new(c).config(), &c);
    }

    #[test]
    fn starts_idle_and_empty() {
        let r = CrashRecovery::new(RecoveryConfig::default());
        assert_eq!(r.state(), &RecoveryState::Idle);
        assert_eq!(r.journal().open_file_count(), 0);
        assert_eq!(r.journal().pending_write_count(), 0);
    }

    #[test]
    fn begin_scan_transitions_to_scanning() {
        let r = scanning();
        assert_eq!(r.state(), &RecoveryState::Scanning);
    }

    #[test]
    fn begin_scan_errors_if_not_idle() {
        let mut r = scanning();
        assert!(is_invalid(r.begin_scan()));
        assert_eq!(r.state(), &RecoveryState::Scanning);
        let mut r = replaying(1);
        assert!(r.begin_scan().is_err());
        r.fail("x");
        assert!(r.begin_scan().is_err());
    }

    #[test]
    fn record_open_file_errors_if_not_scanning() {
        let mut r = CrashRecovery::new(RecoveryConfig::default());
        assert!(is_invalid(r.record_open_file(open_file(1, 0))));
        let mut r = replaying(3);
        assert!(r.record_open_file(open_file(1, 0)).is_err());
        assert_eq!(r.journal().open_file_count(), 0);
    }

    #[test]
    fn record_pending_write_errors_if_not_scanning() {
        let mut r = CrashRecovery::new(RecoveryConfig::default());
        assert!(is_invalid(r.record_pending_write(write(1, 0))));
        let mut r = scanning();
        r.record_pending_write(write(1, 0)).unwrap();
        assert_eq!(r.journal().pending_write_count(), 1);
        r.begin_replay(1).unwrap();
        assert!(r.record_pending_write(write(2, 0)).is_err());
        assert_eq!(r.journal().pending_write_count(), 1);
    }

    #[test]
    fn max_open_files_limit_enforced() {
        let config = RecoveryConfig {
            max_open_files: 3,
            ..RecoveryConfig::default()
        };
        let mut r = CrashRecovery::new(config);
        r.begin_scan().unwrap();
        for fd in 0..3 {
            r.record_open_file(open_file(fd, 0)).unwrap();
        }
        assert!(is_invalid(r.record_open_file(open_file(3, 0))));
        assert_eq!(r.journal().open_file_count(), 3);
        assert!(r.journal().open_files().iter().all(|f| f.fd != 3));
        assert_eq!(r.state(), &RecoveryState::Scanning);
    }

    #[test]
    fn begin_replay_transitions() {
        let r = replaying(7);
        assert_eq!(
            r.state(),
            &RecoveryState::Replaying {
                replayed: 0,
                total: 7
            }
        );
    }

    #[test]
    fn begin_replay_fails_unless_scanning() {
        let mut r = CrashRecovery::new(RecoveryConfig::default());
        assert!(is_invalid(r.begin_replay(1)));
        assert_eq!(r.state(), &RecoveryState::Idle);
        let mut r = replaying(2);
        assert!(r.begin_replay(5).is_err());
        assert_eq!(
            r.state(),
            &RecoveryState::Replaying {
                replayed: 0,
                total: 2
            }
        );
    }

    #[test]
    fn advance_replay_increments() {
        let mut r = replaying(10);
        r.advance_replay(3);
        r.advance_replay(4);
        assert_eq!(
            r.state(),
            &RecoveryState::Replaying {
                replayed: 7,
                total: 10
            }
        );
    }

    #[test]
    fn advance_replay_clamps_at_total() {
        let mut r = replaying(5);
        r.advance_replay(4);
        r.advance_replay(4);
        assert_eq!(
            r.state(),
            &RecoveryState::Replaying {
                replayed: 5,
                total: 5
            }
        );
        r.advance_replay(u32::MAX);
        assert_eq!(
            r.state(),
            &RecoveryState::Replaying {
                replayed: 5,
                total: 5
            }
        );
    }

    #[test]
    fn advance_replay_outside_replaying_does_nothing() {
        let mut r = scanning();
        r.advance_replay(3);
        assert_eq!(r.state(), &RecoveryState::Scanning);
        let mut r = CrashRecovery::new(RecoveryConfig::default());
        r.advance_replay(3);
        assert_eq!(r.state(), &RecoveryState::Idle);
    }

    #[test]
    fn complete_transitions_with_replayed_count() {
        let mut r = replaying(10);
        r.advance_replay(8);
        r.complete(2).unwrap();
        assert_eq!(
            r.state(),
            &RecoveryState::Complete {
                recovered: 8,
                orphaned: 2
            }
        );
    }

    #[test]
    fn complete_fails_unless_replaying() {
        let mut r = scanning();
        assert!(is_invalid(r.complete(0)));
        assert_eq!(r.state(), &RecoveryState::Scanning);
        let mut r = replaying(1);
        r.complete(0).unwrap();
        assert!(r.complete(0).is_err());
    }

    #[test]
    fn fail_from_any_state() {
        let mut idle = CrashRecovery::new(RecoveryConfig::default());
        let mut scan = scanning();
        let mut replay = replaying(4);
        let mut done = replaying(1);
        done.complete(0).unwrap();
        for r in [&mut idle, &mut scan, &mut replay, &mut done] {
            r.fail(String::from("metadata server unreachable"));
            assert_eq!(
                r.state(),
                &RecoveryState::Failed("metadata server unreachable".into())
            );
            assert!(r.state().is_complete() && !r.state().is_in_progress());
        }
    }

    #[test]
    fn reset_clears_journal_and_returns_to_idle() {
        let mut r = scanning();
        r.record_open_file(open_file(1, 2)).unwrap();
        r.record_pending_write(write(1, 0)).unwrap();
        r.fail("crash during recovery");
        assert_eq!(r.journal().open_file_count(), 1, "fail keeps the journal");
        r.reset();
        assert_eq!(r.state(), &RecoveryState::Idle);
        assert_eq!(r.journal().open_file_count(), 0);
        assert_eq!(r.journal().pending_write_count(), 0);
        r.begin_scan().unwrap();
    }

    #[test]
    fn is_writable_flags() {
        assert!(!open_file(1, 0).is_writable(), "O_RDONLY");
        assert!(open_file(1, 1).is_writable(), "O_WRONLY");
        assert!(open_file(1, 2).is_writable(), "O_RDWR");
        assert!(open_file(1, 2 | 1024).is_writable());
        assert!(!open_file(1, 1024 | 0o100).is_writable());
    }

    #[test]
    fn is_append_only_flag() {
        assert!(open_file(1, 1 | 1024).is_append_only());
        assert!(!open_file(1, 2).is_append_only());
        assert!(!open_file(1, 2048).is_append_only());
    }

    #[test]
    fn pending_write_age_and_staleness() {
        let w = write(1, 100);
        assert_eq!(w.age_secs(150), 50);
        assert_eq!(w.age_secs(50), 0);
        assert!(!w.is_stale(400, 300), "exactly max age is not stale");
        assert!(w.is_stale(401, 300));
    }

    #[test]
    fn stale_pending_writes_age_filter() {
        let mut j = RecoveryJournal::new();
        j.add_pending_write(write(1, 0));
        j.add_pending_write(write(2, 500));
        j.add_pending_write(write(3, 700));
        let stale: Vec<InodeId> = j
            .stale_pending_writes(1000, 300)
            .iter()
            .map(|w| w.ino)
            .collect();
        assert_eq!(stale, vec![1, 2]);
        assert!(j.stale_pending_writes(10, 300).is_empty());
    }

    #[test]
    fn writable_open_files_filter() {
        let mut j = RecoveryJournal::new();
        j.add_open_file(open_file(1, 0));
        j.add_open_file(open_file(2, 1));
        j.add_open_file(open_file(3, 1024));
        j.add_open_file(open_file(4, 2));
        let fds: Vec<u64> = j.writable_open_files().iter().map(|f| f.fd).collect();
        assert_eq!(fds, vec![2, 4]);
        assert_eq!(j.open_file_count(), 4);
    }

    #[test]
    fn is_in_progress_and_is_complete() {
        let cases = [
            (RecoveryState::Idle, false, false),
            (RecoveryState::Scanning, true, false),
            (
                RecoveryState::Replaying {
                    replayed: 1,
                    total: 2,
                },
                true,
                false,
            ),
            (
                RecoveryState::Complete {
                    recovered: 2,
                    orphaned: 0,
                },
                false,
                true,
            ),
            (RecoveryState::Failed("x".into()), false, true),
        ];
        for (state, in_progress, complete) in cases {
            assert_eq!(state.is_in_progress(), in_progress, "{state:?}");
            assert_eq!(state.is_complete(), complete, "{state:?}");
        }
    }

    #[test]
    fn full_happy_path_recovery() {
        let mut r = CrashRecovery::new(RecoveryConfig::default());
        r.begin_scan().unwrap();
        assert!(r.state().is_in_progress());
        r.record_open_file(open_file(1, 2)).unwrap();
        r.record_open_file(open_file(2, 0)).unwrap();
        r.record_pending_write(write(101, 10)).unwrap();
        let total = (r.journal().open_file_count() + r.journal().pending_write_count()) as u32;
        r.begin_replay(total).unwrap();
        r.advance_replay(1);
        r.advance_replay(1);
        assert!(r.state().is_in_progress());
        r.complete(1).unwrap();
        assert_eq!(
            r.state(),
            &RecoveryState::Complete {
                recovered: 2,
                orphaned: 1
            }
        );
        assert!(r.state().is_complete());
        assert_eq!(r.journal().writable_open_files().len(), 1);
        assert_eq!(r.journal().pending_writes()[0].ino, 101);
    }
}
