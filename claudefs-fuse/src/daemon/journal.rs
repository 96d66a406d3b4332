//! Crash-safe journal of open files and pending (not yet fsync'd) writes,
//! and the recovery run over it at start.
//!
//! Format: `journal.log` in the state dir, one JSON record per line:
//! `open` (fh, ino, pid, flags, path), `dirty` (fh, ino, offset, len,
//! since), `sync` (fh), `close` (fh). The rest of the file after the last
//! record is zero bytes (see below); a reader stops at the first NUL.
//! Why an append-only log and not an embedded store: the records are
//! tiny, written on every open/close/first-write, and only ever read back
//! whole after a crash.
//!
//! Appends are copies into a shared memory map of the file (grown by
//! doubling with `ftruncate` + `mremap`), not `write(2)` calls: an open and
//! a close are then no syscall at all for the journal (a `write(2)` per
//! open and close, extending an ext4 file each time, was ~12% of the
//! daemon's CPU in an open/close loop). A store into a `MAP_SHARED` page is
//! in the page cache at once, so it survives a crash of the daemon itself
//! (the case this journal is for) exactly as a returned `write` did; a
//! flusher thread, asleep while nothing changes, `fdatasync`s the log at
//! most every [`SYNC_INTERVAL`] after a change, so a machine crash loses
//! at most that window. When no file is
//! open and the log has grown past [`COMPACT_AT`], it is zeroed and
//! restarted from offset 0 (nothing in it is live any more). A clean
//! shutdown truncates the log to zero bytes: a non-empty log (any record
//! before the first NUL) at start means an unclean stop.
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
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::crash_recovery::{
    CrashRecovery, OpenFileRecord, PendingWrite, RecoveryConfig, RecoveryState,
};

use super::journal_line;
use super::nummap::NumMap;
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

/// Initial size of the mapped log.
const INITIAL_MAP: usize = 1 << 20;

/// Log size past which it is restarted when no file is open.
pub const COMPACT_AT: usize = 4 << 20;

/// A shared, writable map of the whole log file.
#[derive(Debug)]
struct Map {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the map is only touched under the journal's mutex.
unsafe impl Send for Map {}

impl Map {
    fn new(file: &File, cap: usize) -> std::io::Result<Self> {
        file.set_len(cap as u64)?;
        // SAFETY: a fresh shared mapping of `cap` bytes of a file that is
        // (at least) that long; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            cap,
        })
    }

    /// Grows the file and the map to at least `need` bytes.
    fn grow(&mut self, file: &File, need: usize) -> std::io::Result<()> {
        let mut cap = self.cap.max(INITIAL_MAP);
        while cap < need {
            cap *= 2;
        }
        file.set_len(cap as u64)?;
        // SAFETY: remaps our own mapping; the file is now `cap` bytes long.
        let ptr = unsafe { libc::mremap(self.ptr.cast(), self.cap, cap, libc::MREMAP_MAYMOVE) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        self.ptr = ptr.cast();
        self.cap = cap;
        Ok(())
    }

    /// Copies `data` to offset `at` (`at + data.len() <= cap`).
    fn put(&mut self, at: usize, data: &[u8]) {
        assert!(at + data.len() <= self.cap);
        // SAFETY: in bounds (checked above) of a live writable mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(at), data.len()) };
    }

    /// Zeroes the first `len` bytes.
    fn zero(&mut self, len: usize) {
        let len = len.min(self.cap);
        // SAFETY: in bounds of a live writable mapping.
        unsafe { std::ptr::write_bytes(self.ptr, 0, len) };
    }

    fn unmap(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: our own mapping, unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.cap) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        self.unmap();
    }
}

#[derive(Debug)]
struct State {
    file: Arc<File>,
    map: Map,
    /// End of the records in the map.
    pos: usize,
    /// Handles with an `open` record and no `close` yet.
    open: usize,
    dirty: NumMap<u64, (u64, u64)>,
    /// Reused to format a record.
    line: Vec<u8>,
    changed: bool,
    /// Set by `finish`: the file is truncated and the map gone.
    closed: bool,
    /// Wakes the flusher when `changed` or `closed` is set.
    wake: Arc<Condvar>,
}

impl State {
    fn mark_changed(&mut self) {
        if !self.changed {
            self.changed = true;
            self.wake.notify_one();
        }
    }
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

/// The records in a log's bytes (up to the first NUL; torn lines skipped).
pub fn parse_log(bytes: &[u8]) -> Vec<Record> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes[..end]
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Record>(line).ok())
        .collect()
}

/// Reads the records left in `dir/journal.log` (empty after a clean stop).
pub fn read_leftover(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let path = dir.join("journal.log");
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read journal {}: {e}",
                path.display()
            ))
        }
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read journal {}: {e}", path.display()))?;
    Ok(parse_log(&bytes))
}

impl Journal {
    /// Opens (truncates) `dir/journal.log` and starts the flusher.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("journal.log");
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot create journal {}: {e}", path.display()))?;
        let map = Map::new(&file, INITIAL_MAP)
            .map_err(|e| anyhow::anyhow!("cannot map journal {}: {e}", path.display()))?;
        file.sync_all()?;
        let file = Arc::new(file);
        let wake = Arc::new(Condvar::new());
        let state = Arc::new(Mutex::new(State {
            file,
            map,
            pos: 0,
            open: 0,
            dirty: NumMap::default(),
            line: Vec::new(),
            changed: false,
            closed: false,
            wake: wake.clone(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("cfs-journal".into())
            .spawn(move || {
                while !sp.load(Ordering::Relaxed) {
                    // Asleep until something changes (no wakeups on an idle
                    // mount), then one sync per SYNC_INTERVAL at most.
                    {
                        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                        while !s.changed && !s.closed && !sp.load(Ordering::Relaxed) {
                            s = wake.wait(s).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                    std::thread::sleep(SYNC_INTERVAL);
                    let file = {
                        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                        if !s.changed || s.closed {
                            if s.closed {
                                return;
                            }
                            continue;
                        }
                        s.changed = false;
                        s.file.clone()
                    };
                    // Writes back the pages stored through the map too.
                    // SAFETY: plain syscall on an fd we hold open.
                    unsafe { libc::fdatasync(file.as_raw_fd()) };
                }
            })?;
        Ok(Self { path, state, stop })
    }

    /// Appends the line that `write` puts in the reused line buffer.
    fn append_with(s: &mut State, write: impl FnOnce(&mut Vec<u8>)) {
        if s.closed {
            return;
        }
        let mut line = std::mem::take(&mut s.line);
        line.clear();
        write(&mut line);
        Self::put(s, &line);
        s.line = line;
    }

    fn append(s: &mut State, r: &Record) {
        Self::append_with(s, |out| journal_line::record(out, r));
    }

    fn put(s: &mut State, line: &[u8]) {
        let need = s.pos + line.len();
        if need > s.map.cap {
            let State { map, file, .. } = s;
            if let Err(e) = map.grow(file, need) {
                tracing::warn!("journal append failed: {e}");
                return;
            }
        }
        s.map.put(s.pos, line);
        s.pos = need;
        s.mark_changed();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn opened(&self, fh: u64, ino: u64, pid: u32, flags: i32, path: &Path) {
        let path = path.to_string_lossy();
        let mut s = self.lock();
        s.open += 1;
        Self::append_with(&mut s, |out| {
            journal_line::open(out, fh, ino, pid, flags, &path)
        });
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
        s.open = s.open.saturating_sub(1);
        if s.open == 0 && s.dirty.is_empty() && s.pos >= COMPACT_AT && !s.closed {
            // Nothing in the log is live: start it over.
            let used = s.pos;
            s.map.zero(used);
            s.pos = 0;
            s.mark_changed();
            return;
        }
        Self::append(&mut s, &Record::Close { fh });
    }

    /// Bytes of records in the log (for tests and status).
    pub fn len(&self) -> usize {
        self.lock().pos
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clean shutdown: leaves an empty journal.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut s = self.lock();
        s.closed = true;
        s.wake.notify_one();
        s.map.unmap();
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
    /// How long the recovery run took, seconds.
    #[serde(default)]
    pub duration_seconds: f64,
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
                .result
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

    #[test]
    fn log_grows_past_the_first_map_and_restarts_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path()).unwrap();
        let long = "p".repeat(1000);
        // One file stays open while the log grows past the first map.
        j.opened(1, 10, 5, 2, Path::new("keep"));
        let n = (INITIAL_MAP * 2) / 1000;
        for fh in 2..2 + n as u64 {
            j.opened(fh, 11, 5, 0, Path::new(&long));
            j.closed(fh);
        }
        assert!(j.len() > INITIAL_MAP);
        let recs = read_leftover(dir.path()).unwrap();
        assert_eq!(recs.len(), 1 + 2 * n);
        let (open, _) = live(&recs);
        assert_eq!(open.len(), 1);
        // Past COMPACT_AT with nothing open, the log starts over.
        for fh in 10_000..10_000 + (COMPACT_AT / 1000) as u64 {
            j.opened(fh, 11, 5, 0, Path::new(&long));
            j.closed(fh);
        }
        j.closed(1);
        assert!(j.len() < COMPACT_AT);
        let (open, _) = live(&read_leftover(dir.path()).unwrap());
        assert!(open.is_empty());
        j.opened(7, 12, 5, 2, Path::new("after"));
        let recs = read_leftover(dir.path()).unwrap();
        let (open, _) = live(&recs);
        assert_eq!(open.len(), 1, "{recs:?}");
        j.finish();
        assert_eq!(fs_len(dir.path()), 0);
        // Appends after finish are ignored (no crash on the unmapped log).
        j.opened(8, 12, 5, 2, Path::new("late"));
        assert_eq!(fs_len(dir.path()), 0);
    }

    fn fs_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("journal.log")).unwrap().len()
    }

    #[test]
    fn parse_stops_at_nul_and_skips_torn_lines() {
        let mut log = b"{\"t\":\"close\",\"fh\":1}\n{\"t\":\"clo".to_vec();
        log.extend_from_slice(&[0xff, b'\n']);
        log.extend_from_slice(b"{\"t\":\"close\",\"fh\":2}\n");
        log.extend_from_slice(&[0; 64]);
        log.extend_from_slice(b"{\"t\":\"close\",\"fh\":3}\n");
        assert_eq!(
            parse_log(&log),
            vec![Record::Close { fh: 1 }, Record::Close { fh: 2 }]
        );
    }
}
