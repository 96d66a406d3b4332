//! Crash-safe journal of open files and pending (not yet fsync'd) writes,
//! and the recovery run over it at start.
//!
//! Format: `journal.log` in the state dir, one JSON record per line,
//! appended with a single `write(2)` each: `open` (fh, ino, pid, flags,
//! path), `dirty` (fh, ino, offset, len, since), `sync` (fh), `close` (fh).
//! Why an append-only log and not an embedded store: the records are
//! tiny, written on every open/close/first-write, and only ever read back
//! whole after a crash; an append is one syscall and needs no extra
//! dependency. A `write` that returned is in the page cache, so it survives
//! a crash of the daemon itself (the case this journal is for); a flusher
//! thread `fdatasync`s the log every [`SYNC_INTERVAL`] when it changed, so a
//! machine crash loses at most that window. A clean shutdown truncates the
//! log to zero bytes: a non-empty log at start means an unclean stop.
//!
//! Dirty ranges: the first write after open/fsync journals its range; a
//! later write outside the journaled range journals a range covering both,
//! at least twice as long (so a sequential writer costs O(log n) records).
//!
//! Recovery (`recover`) feeds the leftover state to
//! [`crate::crash_recovery::CrashRecovery`]: scan (every open file and
//! pending write), replay (re-open each file by path on a storage path; a
//! file that vanished or whose path now names another inode is orphaned),
//! complete; pending writes are reported (stale ones separately: their data
//! may never have reached storage). The summary is logged and kept for
//! status and the exporters; the log is then truncated and the daemon
//! starts clean.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::crash_recovery::{
    CrashRecovery, OpenFileRecord, PendingWrite, RecoveryConfig, RecoveryState,
};

use super::router::{Retry, Router};

/// How often the flusher makes the log durable.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Record {
    Open {
        fh: u64,
        ino: u64,
        pid: u32,
        flags: i32,
        path: String,
    },
    Dirty {
        fh: u64,
        ino: u64,
        off: u64,
        len: u64,
        since: u64,
    },
    Sync {
        fh: u64,
    },
    Close {
        fh: u64,
    },
}

#[derive(Debug)]
struct State {
    file: File,
    dirty: HashMap<u64, (u64, u64)>,
    changed: bool,
}

/// The live journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the records left in `dir/journal.log` (empty after a clean stop).
pub fn read_leftover(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let path = dir.join("journal.log");
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read journal {}: {e}",
                path.display()
            ))
        }
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        // A torn last line (crash mid-append) is skipped.
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            out.push(r);
        }
    }
    Ok(out)
}

impl Journal {
    /// Opens (truncates) `dir/journal.log` and starts the flusher.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("journal.log");
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot create journal {}: {e}", path.display()))?;
        file.sync_all()?;
        let state = Arc::new(Mutex::new(State {
            file,
            dirty: HashMap::new(),
            changed: false,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("cfs-journal".into())
            .spawn(move || {
                while !sp.load(Ordering::Relaxed) {
                    std::thread::sleep(SYNC_INTERVAL);
                    let fd = {
                        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                        if !s.changed {
                            continue;
                        }
                        s.changed = false;
                        s.file.try_clone()
                    };
                    if let Ok(f) = fd {
                        // SAFETY: plain syscall on an fd we own.
                        unsafe { libc::fdatasync(f.as_raw_fd()) };
                    }
                }
            })?;
        Ok(Self { path, state, stop })
    }

    fn append(s: &mut State, r: &Record) {
        if let Ok(mut line) = serde_json::to_vec(r) {
            line.push(b'\n');
            if let Err(e) = s.file.write_all(&line) {
                tracing::warn!("journal append failed: {e}");
            }
            s.changed = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn opened(&self, fh: u64, ino: u64, pid: u32, flags: i32, path: &Path) {
        let r = Record::Open {
            fh,
            ino,
            pid,
            flags,
            path: path.to_string_lossy().into_owned(),
        };
        Self::append(&mut self.lock(), &r);
    }

    pub fn wrote(&self, fh: u64, ino: u64, off: u64, len: u64) {
        let mut s = self.lock();
        let end = off.saturating_add(len);
        let (a, b) = match s.dirty.get(&fh) {
            Some(&(a, b)) if off >= a && end <= b => return,
            Some(&(a, b)) => {
                let a2 = a.min(off);
                (a2, end.max(b).max(b.saturating_add(b - a)))
            }
            None => (off, end),
        };
        s.dirty.insert(fh, (a, b));
        Self::append(
            &mut s,
            &Record::Dirty {
                fh,
                ino,
                off: a,
                len: b - a,
                since: now_secs(),
            },
        );
    }

    pub fn synced(&self, fh: u64) {
        let mut s = self.lock();
        if s.dirty.remove(&fh).is_some() {
            Self::append(&mut s, &Record::Sync { fh });
        }
    }

    pub fn closed(&self, fh: u64) {
        let mut s = self.lock();
        s.dirty.remove(&fh);
        Self::append(&mut s, &Record::Close { fh });
    }

    /// Clean shutdown: leaves an empty journal.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let s = self.lock();
        let ok = s.file.set_len(0).and_then(|_| s.file.sync_all());
        if let Err(e) = ok {
            tracing::warn!("cannot empty journal {}: {e}", self.path.display());
        }
    }
}

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
}

/// Live state of open files and dirty ranges after replaying `records`.
fn live(records: &[Record]) -> (Vec<Record>, Vec<Record>) {
    let mut opens: Vec<Record> = Vec::new();
    let mut dirty: HashMap<u64, Record> = HashMap::new();
    for r in records {
        match r {
            Record::Open { .. } => opens.push(r.clone()),
            Record::Dirty { fh, .. } => {
                dirty.insert(*fh, r.clone());
            }
            Record::Sync { fh } => {
                dirty.remove(fh);
            }
            Record::Close { fh } => {
                dirty.remove(fh);
                opens.retain(|o| !matches!(o, Record::Open { fh: f, .. } if f == fh));
            }
        }
    }
    let mut d: Vec<Record> = dirty.into_values().collect();
    d.sort_by_key(|r| match r {
        Record::Dirty { fh, .. } => *fh,
        _ => 0,
    });
    (opens, d)
}

/// Runs crash recovery over the leftover `records` (see module doc).
pub fn recover(records: &[Record], router: &Router) -> (RecoveryState, RecoverySummary) {
    let config = RecoveryConfig::default_config();
    let stale_age = config.stale_write_age_secs;
    let mut cr = CrashRecovery::new(config);
    let mut sum = RecoverySummary {
        unclean: !records.is_empty(),
        ..Default::default()
    };
    if records.is_empty() {
        sum.state = format!("{:?}", cr.state());
        return (cr.state().clone(), sum);
    }
    let (opens, dirty) = live(records);
    if let Err(e) = cr.begin_scan() {
        cr.fail(e.to_string());
    }
    let mut paths: HashMap<u64, String> = HashMap::new();
    for o in &opens {
        if let Record::Open {
            fh,
            ino,
            pid,
            flags,
            path,
        } = o
        {
            paths.insert(*fh, path.clone());
            let rec = OpenFileRecord {
                ino: *ino,
                fd: *fh,
                pid: *pid,
                flags: *flags as u32,
                path_hint: path.clone(),
            };
            if let Err(e) = cr.record_open_file(rec) {
                tracing::warn!("recovery: {e}");
            }
        }
    }
    for d in &dirty {
        if let Record::Dirty {
            fh,
            ino,
            off,
            len,
            since,
        } = d
        {
            let _ = cr.record_pending_write(PendingWrite {
                ino: *ino,
                offset: *off,
                len: *len,
                dirty_since_secs: *since,
            });
            sum.pending.push(format!(
                "{}@{}+{}",
                paths.get(fh).map(String::as_str).unwrap_or("?"),
                off,
                len
            ));
        }
    }
    let files: Vec<OpenFileRecord> = cr.journal().open_files().to_vec();
    sum.open_files = files.len();
    sum.writable_open_files = cr.journal().writable_open_files().len();
    sum.pending_writes = cr.journal().pending_write_count();
    sum.stale_pending_writes = cr
        .journal()
        .stale_pending_writes(now_secs(), stale_age)
        .len();
    if cr.begin_replay(files.len() as u32).is_ok() {
        let mut orphaned = 0;
        for f in &files {
            let rel = PathBuf::from(&f.path_hint);
            let ok = router
                .run(Retry::Idempotent, |r| {
                    let fd = r.open_at(&rel, libc::O_PATH, 0)?;
                    super::storage::fstat(fd.as_raw_fd())
                })
                .map(|st| st.st_ino == f.ino)
                .unwrap_or(false);
            if ok {
                cr.advance_replay(1);
            } else {
                orphaned += 1;
                sum.orphaned_paths.push(f.path_hint.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_state_drops_closed_and_synced() {
        let recs = vec![
            Record::Open {
                fh: 1,
                ino: 10,
                pid: 5,
                flags: 2,
                path: "a".into(),
            },
            Record::Open {
                fh: 2,
                ino: 11,
                pid: 5,
                flags: 2,
                path: "b".into(),
            },
            Record::Dirty {
                fh: 1,
                ino: 10,
                off: 0,
                len: 4,
                since: 1,
            },
            Record::Dirty {
                fh: 2,
                ino: 11,
                off: 0,
                len: 4,
                since: 1,
            },
            Record::Sync { fh: 2 },
            Record::Close { fh: 2 },
        ];
        let (o, d) = live(&recs);
        assert_eq!(o.len(), 1);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn journal_round_trip_and_clean_finish() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path()).unwrap();
        j.opened(1, 10, 5, 2, Path::new("x"));
        j.wrote(1, 10, 0, 10);
        j.wrote(1, 10, 5, 5); // inside: no record
        j.wrote(1, 10, 10, 10); // extends
        let recs = read_leftover(dir.path()).unwrap();
        assert_eq!(recs.len(), 3);
        j.finish();
        assert!(read_leftover(dir.path()).unwrap().is_empty());
    }
}
