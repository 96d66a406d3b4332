//! Crash-safe journal of what a restarted server needs to carry on: the
//! nodes the kernel knows, open files, pending (not yet fsync'd) writes,
//! flock holders and recent non-idempotent requests (the records and the
//! state they add up to are in `journal_state.rs`).
//!
//! Format: `journal.log` in the state dir, one JSON record per line. The
//! rest of the file after the last record is zero bytes (see below); a
//! reader stops at the first NUL. Why an append-only log and not an
//! embedded store: the records are tiny, written on every open/close/
//! first-write, and only ever read back whole after a crash.
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
//! at most that window.
//!
//! The journal keeps the live state in memory too; when the log has grown
//! past [`COMPACT_AT`] (and twice its last start), it is started over from
//! a snapshot of that state, written to a new file renamed over the old
//! one (a crash in between leaves one whole log or the other).
//!
//! A clean shutdown truncates the log to zero bytes: a non-empty log at
//! start means an unclean stop. A hand-over to the next server
//! ([`Journal::hand_over`]) leaves the log as it is, durable.
//!
//! Dirty ranges: the first write after open/fsync journals its range; a
//! later write outside the journaled range journals a range covering both,
//! at least twice as long (so a sequential writer costs O(log n) records).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use super::journal_state::{IntentOp, LiveState, Record};

use super::journal_line;
use super::nummap::NumMap;

/// How often the flusher makes the log durable.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(50);

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
    /// Bytes the log started with (its snapshot).
    base: usize,
    live: LiveState,
    /// Journaled dirty range per handle (the writes' fast path).
    dirty: NumMap<u64, (u64, u64)>,
    /// Reused to format a record.
    line: Vec<u8>,
    changed: bool,
    /// Set by `finish`/`hand_over`: the map is gone, appends are ignored.
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
    dir: PathBuf,
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

/// A new log file at `path` holding `records`, mapped; returns the file,
/// its map and the records' length. Durable before it returns.
fn new_log(path: &Path, records: &[Record]) -> std::io::Result<(File, Map, usize)> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let mut bytes = Vec::new();
    for r in records {
        journal_line::record(&mut bytes, r);
    }
    let mut map = Map::new(&file, INITIAL_MAP)?;
    if bytes.len() > map.cap {
        map.grow(&file, bytes.len())?;
    }
    map.put(0, &bytes);
    file.sync_all()?;
    Ok((file, map, bytes.len()))
}

impl Journal {
    /// Opens (truncates) `dir/journal.log` and starts the flusher.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        Self::start(dir, LiveState::default())
    }

    /// Starts `dir/journal.log` over with `live` (what a previous server
    /// left, for a server carrying on its connection) and starts the
    /// flusher.
    pub fn start(dir: &Path, live: LiveState) -> anyhow::Result<Self> {
        let path = dir.join("journal.log");
        let tmp = dir.join("journal.log.new");
        let (file, map, pos) = new_log(&tmp, &live.records())
            .and_then(|l| std::fs::rename(&tmp, &path).map(|_| l))
            .map_err(|e| anyhow::anyhow!("cannot create journal {}: {e}", path.display()))?;
        let dirty = live
            .dirty
            .iter()
            .map(|(fh, d)| (*fh, (d.off, d.off.saturating_add(d.len))))
            .collect();
        let file = Arc::new(file);
        let wake = Arc::new(Condvar::new());
        let state = Arc::new(Mutex::new(State {
            file,
            map,
            pos,
            base: pos,
            live,
            dirty,
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
        Ok(Self {
            dir: dir.to_path_buf(),
            path,
            state,
            stop,
        })
    }

    /// Appends the line that `write` puts in the reused line buffer.
    fn append_with(&self, s: &mut State, write: impl FnOnce(&mut Vec<u8>)) {
        if s.closed {
            return;
        }
        let mut line = std::mem::take(&mut s.line);
        line.clear();
        write(&mut line);
        self.put(s, &line);
        s.line = line;
    }

    fn append(&self, s: &mut State, r: &Record) {
        self.maybe_compact(s);
        s.live.apply(r);
        self.append_with(s, |out| journal_line::record(out, r));
    }

    /// Starts the log over when it has grown enough (before a record is
    /// applied: the snapshot must not hold the record about to be written).
    fn maybe_compact(&self, s: &mut State) {
        if !s.closed && s.pos >= COMPACT_AT && s.pos >= 2 * s.base {
            self.compact(s);
        }
    }

    fn put(&self, s: &mut State, line: &[u8]) {
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

    /// Starts the log over from a snapshot of the live state.
    fn compact(&self, s: &mut State) {
        let tmp = self.dir.join("journal.log.new");
        match new_log(&tmp, &s.live.records())
            .and_then(|l| std::fs::rename(&tmp, &self.path).map(|_| l))
        {
            Ok((file, map, pos)) => {
                s.file = Arc::new(file);
                s.map = map;
                s.pos = pos;
                s.base = pos;
            }
            Err(e) => {
                // Keep appending to the old log (it is still whole).
                tracing::warn!("cannot start the journal over: {e}");
                s.base = s.pos;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Journals `r`.
    pub fn record(&self, r: Record) {
        let mut s = self.lock();
        self.append(&mut s, &r);
    }

    /// What the journal knows of request `u` (its intent record).
    pub fn intent(&self, u: u64) -> Option<super::journal_state::Intent> {
        self.lock().live.intents.get(&u).cloned()
    }

    /// The live state (what a restarted server would rebuild).
    pub fn live(&self) -> LiveState {
        self.lock().live.clone()
    }

    pub fn opened(&self, fh: u64, ino: u64, pid: u32, flags: i32, path: &Path) {
        let path = path.to_string_lossy();
        let mut s = self.lock();
        self.maybe_compact(&mut s);
        s.live.opens.insert(
            fh,
            super::journal_state::OpenHandle {
                ino,
                pid,
                flags,
                path: path.to_string(),
            },
        );
        self.append_with(&mut s, |out| {
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
        self.append(
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
            self.append(&mut s, &Record::Sync { fh });
        }
    }

    pub fn closed(&self, fh: u64) {
        let mut s = self.lock();
        s.dirty.remove(&fh);
        self.append(&mut s, &Record::Close { fh });
    }

    /// Bytes of records in the log (for tests and status).
    pub fn len(&self) -> usize {
        self.lock().pos
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops journaling: the flusher ends and the map goes.
    fn close(&self, s: &mut State) {
        self.stop.store(true, Ordering::Relaxed);
        s.closed = true;
        s.wake.notify_one();
        s.map.unmap();
    }

    /// Hand-over to the next server of the connection: the log stays as
    /// it is, durable, for it to carry on from.
    pub fn hand_over(&self) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        self.close(&mut s);
        if let Err(e) = s.file.sync_data() {
            tracing::warn!("cannot sync journal {}: {e}", self.path.display());
        }
    }

    /// Clean shutdown: leaves an empty journal.
    pub fn finish(&self) {
        let mut s = self.lock();
        self.close(&mut s);
        let ok = s.file.set_len(0).and_then(|_| s.file.sync_all());
        if let Err(e) = ok {
            tracing::warn!("cannot empty journal {}: {e}", self.path.display());
        }
    }
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
        let s = LiveState::from_records(&recs);
        assert_eq!(s.opens.len(), 1);
        assert_eq!(s.dirty.len(), 1);
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
        let open = LiveState::from_records(&recs).opens;
        assert_eq!(open.len(), 1);
        // Past COMPACT_AT with nothing open, the log starts over.
        for fh in 10_000..10_000 + (COMPACT_AT / 1000) as u64 {
            j.opened(fh, 11, 5, 0, Path::new(&long));
            j.closed(fh);
        }
        j.closed(1);
        assert!(j.len() < COMPACT_AT);
        let open = LiveState::from_records(&read_leftover(dir.path()).unwrap()).opens;
        assert!(open.is_empty());
        j.opened(7, 12, 5, 2, Path::new("after"));
        let recs = read_leftover(dir.path()).unwrap();
        let open = LiveState::from_records(&recs).opens;
        assert_eq!(open.len(), 1, "{recs:?}");
        j.finish();
        assert_eq!(fs_len(dir.path()), 0);
        // Appends after finish are ignored (no crash on the unmapped log).
        j.opened(8, 12, 5, 2, Path::new("late"));
        assert_eq!(fs_len(dir.path()), 0);
    }

    #[test]
    fn compaction_keeps_what_is_live_and_a_handed_over_log_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path()).unwrap();
        j.record(Record::Node {
            ino: 10,
            path: "d".into(),
            h: None,
        });
        j.opened(1, 10, 5, 2, Path::new("d"));
        j.record(Record::Lock {
            ino: 10,
            owner: 3,
            pid: 5,
            excl: true,
        });
        let long = "p".repeat(1000);
        for fh in 2..2 + (COMPACT_AT / 500) as u64 {
            j.opened(fh, 11, 5, 0, Path::new(&long));
            j.closed(fh);
        }
        j.record(Record::Swapped {
            a: "d".into(),
            b: "e".into(),
        });
        assert!(j.len() < COMPACT_AT, "the log started over");
        let want = j.live();
        assert_eq!(want.nodes[&10], "e");
        assert_eq!(want.opens.len(), 1);
        j.hand_over();
        let left = LiveState::from_records(&read_leftover(dir.path()).unwrap());
        assert_eq!(left, want);
        // The next server starts from it and keeps journaling.
        let j2 = Journal::start(dir.path(), left).unwrap();
        j2.closed(1);
        let again = LiveState::from_records(&read_leftover(dir.path()).unwrap());
        assert!(again.opens.is_empty());
        assert_eq!(again.locks.len(), 1);
        assert_eq!(again.nodes[&10], "e");
        j2.finish();
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
