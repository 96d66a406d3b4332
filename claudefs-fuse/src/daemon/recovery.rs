//! The recovery run over what the journal left: which open files (and
//! pending writes) a dead server held, and which of them a new server got
//! back.
//!
//! [`recover`] feeds the live state to
//! [`crate::crash_recovery::CrashRecovery`]: scan (every open file and
//! pending write), replay (each file through `reattach`: a server carrying
//! on the connection re-opens the handle; a fresh mount only checks that
//! the file is still there), complete; a file that vanished or whose path
//! now names another inode is orphaned. Pending writes are reported (stale
//! ones separately: their data may never have reached storage). The
//! summary is logged and kept for status and the exporters.

use serde::{Deserialize, Serialize};

use crate::crash_recovery::{
    CrashRecovery, OpenFileRecord, PendingWrite, RecoveryConfig, RecoveryState,
};

use std::os::fd::AsRawFd;

use super::journal_state::{LiveState, OpenHandle};
use super::router::{Retry, Router};

/// What recovery found, kept for status and the exporters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RecoverySummary {
    /// Final `RecoveryState` (Debug form), `Idle` after a clean stop.
    pub state: String,
    pub unclean: bool,
    pub open_files: usize,
    pub writable_open_files: usize,
    pub recovered: u32,
    pub orphaned: u32,
    pub orphaned_paths: Vec<String>,
    pub pending_writes: usize,
    pub stale_pending_writes: usize,
    /// `path@offset+len` of each pending write.
    pub pending: Vec<String>,
    /// How long the recovery run took, seconds.
    #[serde(default)]
    pub duration_seconds: f64,
    /// The server carries on a live connection (restart or upgrade): the
    /// handles were re-opened, not only checked.
    #[serde(default)]
    pub carried_on: bool,
    /// Nodes the kernel knew that were found again / not found.
    #[serde(default)]
    pub nodes_restored: usize,
    #[serde(default)]
    pub nodes_lost: usize,
    /// flock holders restored / lost (their file gone).
    #[serde(default)]
    pub locks_restored: usize,
    #[serde(default)]
    pub locks_lost: usize,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs crash recovery over `live` (see the module doc); `reattach(fh,
/// handle)` says whether open file `fh` is back.
pub fn recover(
    live: &LiveState,
    mut reattach: impl FnMut(u64, &OpenHandle) -> bool,
) -> (RecoveryState, RecoverySummary) {
    let config = RecoveryConfig::default_config();
    let stale_age = config.stale_write_age_secs;
    let mut cr = CrashRecovery::new(config);
    let mut sum = RecoverySummary {
        unclean: !live.is_empty(),
        ..Default::default()
    };
    if live.opens.is_empty() && live.dirty.is_empty() {
        if sum.unclean {
            // Nothing open: nothing to replay.
            let _ = cr.begin_scan();
            let _ = cr.begin_replay(0);
            let _ = cr.complete(0);
        }
        sum.state = format!("{:?}", cr.state());
        return (cr.state().clone(), sum);
    }
    if let Err(e) = cr.begin_scan() {
        cr.fail(e.to_string());
    }
    for (fh, o) in &live.opens {
        let rec = OpenFileRecord {
            ino: o.ino,
            fd: *fh,
            pid: o.pid,
            flags: o.flags as u32,
            path_hint: o.path.clone(),
        };
        if let Err(e) = cr.record_open_file(rec) {
            tracing::warn!("recovery: {e}");
        }
    }
    for (fh, d) in &live.dirty {
        let _ = cr.record_pending_write(PendingWrite {
            ino: d.ino,
            offset: d.off,
            len: d.len,
            dirty_since_secs: d.since,
        });
        sum.pending.push(format!(
            "{}@{}+{}",
            live.opens.get(fh).map(|o| o.path.as_str()).unwrap_or("?"),
            d.off,
            d.len
        ));
    }
    sum.open_files = cr.journal().open_files().len();
    sum.writable_open_files = cr.journal().writable_open_files().len();
    sum.pending_writes = cr.journal().pending_write_count();
    sum.stale_pending_writes = cr
        .journal()
        .stale_pending_writes(now_secs(), stale_age)
        .len();
    if cr.begin_replay(live.opens.len() as u32).is_ok() {
        let mut orphaned = 0;
        for (fh, o) in &live.opens {
            if reattach(*fh, o) {
                cr.advance_replay(1);
            } else {
                orphaned += 1;
                sum.orphaned_paths.push(o.path.clone());
            }
        }
        if let Err(e) = cr.complete(orphaned) {
            cr.fail(e.to_string());
        }
    }
    if let RecoveryState::Complete {
        recovered,
        orphaned,
    } = cr.state()
    {
        sum.recovered = *recovered;
        sum.orphaned = *orphaned;
    }
    sum.state = format!("{:?}", cr.state());
    (cr.state().clone(), sum)
}

/// Whether the file of `o` is still at its path (same inode): what a
/// fresh mount, which has no handle to re-open, checks.
pub fn still_there(router: &Router, o: &OpenHandle) -> bool {
    let rel = std::path::PathBuf::from(&o.path);
    router
        .run(Retry::Idempotent, |r| {
            let fd = r.open_at(&rel, libc::O_PATH, 0)?;
            super::storage::fstat(fd.as_raw_fd())
        })
        .result
        .is_ok_and(|st| st.st_ino == o.ino)
}

/// Logs what an unclean stop left and what came back.
pub fn report(sum: &RecoverySummary) {
    if !sum.unclean {
        return;
    }
    tracing::warn!(
        "recovered after an unclean stop{}: {} open files ({} recovered, {} orphaned), {} pending writes ({} stale), {} nodes ({} lost), {} locks ({} lost): {}",
        if sum.carried_on { " (same connection)" } else { "" },
        sum.open_files,
        sum.recovered,
        sum.orphaned,
        sum.pending_writes,
        sum.stale_pending_writes,
        sum.nodes_restored,
        sum.nodes_lost,
        sum.locks_restored,
        sum.locks_lost,
        sum.state
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::journal_state::Record;

    fn open(fh: u64, path: &str) -> Record {
        Record::Open {
            fh,
            ino: 10 + fh,
            pid: 5,
            flags: libc::O_RDWR,
            path: path.into(),
        }
    }

    #[test]
    fn clean_stop_is_idle_and_reattach_decides_recovered_or_orphaned() {
        let (st, sum) = recover(&LiveState::default(), |_, _| true);
        assert_eq!(st, RecoveryState::Idle);
        assert!(!sum.unclean);

        let live = LiveState::from_records(&[
            open(1, "a"),
            open(2, "gone"),
            Record::Dirty {
                fh: 1,
                ino: 11,
                off: 0,
                len: 4,
                since: 1,
            },
        ]);
        let mut asked = Vec::new();
        let (st, sum) = recover(&live, |fh, o| {
            asked.push(fh);
            o.path != "gone"
        });
        assert_eq!(asked, vec![1, 2]);
        assert_eq!(
            st,
            RecoveryState::Complete {
                recovered: 1,
                orphaned: 1
            }
        );
        assert_eq!(sum.open_files, 2);
        assert_eq!(sum.orphaned_paths, vec!["gone".to_string()]);
        assert_eq!(sum.pending, vec!["a@0+4".to_string()]);
        assert_eq!(sum.pending_writes, 1);
    }

    #[test]
    fn nodes_only_is_unclean_and_complete() {
        let live = LiveState::from_records(&[Record::Node {
            ino: 5,
            path: "x".into(),
            h: None,
        }]);
        let (st, sum) = recover(&live, |_, _| unreachable!());
        assert!(sum.unclean);
        assert!(matches!(st, RecoveryState::Complete { .. }), "{st:?}");
    }
}
