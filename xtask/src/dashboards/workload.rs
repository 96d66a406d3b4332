//! The workload of the live dashboards check: file operations that give
//! every FUSE panel data (including errors: lookups of missing names), and
//! flock(2) contention that gives every lock panel data (a blocking wait, a
//! refused LOCK_NB, shared locks, and an upgrade and a downgrade on one
//! open file). Everything here tolerates I/O errors: the workload keeps
//! running while a storage path fails and while the daemon is restarted.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// File operations in a loop on a background thread until dropped.
pub struct Background {
    stop: Arc<AtomicBool>,
    pub rounds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn start(mnt: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let thread = {
            let (mnt, stop, rounds) = (mnt.to_path_buf(), stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    file_ops(&mnt, round);
                    round += 1;
                    rounds.store(round, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self {
            stop,
            rounds,
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One round: create and write, stat, read, list, look up missing names,
/// rename and unlink, then a burst of back-to-back open/close (what makes
/// the daemon's reader poll). Errors are ignored (paths fail on purpose).
fn file_ops(mnt: &Path, round: u64) {
    let dir = mnt.join("work");
    let _ = fs::create_dir_all(&dir);
    let block = vec![0x5au8; 16 * 1024];
    for i in 0..8 {
        let p = dir.join(format!("f{i}"));
        if round.is_multiple_of(4) || fs::metadata(&p).is_err() {
            if let Ok(mut f) = fs::File::create(&p) {
                let _ = f.write_all(&block);
                if i == 0 {
                    let _ = f.sync_all();
                }
            }
        }
        let _ = fs::metadata(&p);
        let mut buf = Vec::new();
        if let Ok(mut f) = fs::File::open(&p) {
            let _ = f.read_to_end(&mut buf);
        }
    }
    if let Ok(rd) = fs::read_dir(&dir) {
        let _ = rd.count();
    }
    for i in 0..4 {
        // FUSE errors: ENOENT from LOOKUP.
        let _ = fs::metadata(dir.join(format!("missing-{round}-{i}")));
    }
    for _ in 0..128 {
        let _ = fs::File::open(dir.join("f1"));
    }
    let from = dir.join(format!("tmp-{round}"));
    let to = dir.join(format!("renamed-{round}"));
    if fs::write(&from, b"x").is_ok() && fs::rename(&from, &to).is_ok() {
        let _ = fs::remove_file(&to);
    }
}

/// flock(2) contention through flock(1) (util-linux) and bash:
/// an exclusive holder, a refused non-blocking request, a blocking
/// exclusive waiter, a blocking shared waiter, and an upgrade then a
/// downgrade on one open file. The holder keeps the lock for `hold`, the
/// time the waiters stay parked in the daemon. Returns what went
/// unexpectedly.
pub fn flock_round(mnt: &Path, hold: Duration) -> Result<(), String> {
    let lockfile: PathBuf = mnt.join("lockfile");
    fs::write(&lockfile, b"lock").map_err(|e| format!("create lockfile: {e}"))?;
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&lockfile)
        .arg("-c")
        .arg(format!("sleep {:.1}", hold.as_secs_f64()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run flock(1): {e}"))?;
    std::thread::sleep(Duration::from_millis(100));
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let refused = !quiet(Command::new("flock").arg("-n").arg(&lockfile).arg("true"));
    let shared_waiter = Command::new("flock")
        .arg("-s")
        .arg(&lockfile)
        .arg("true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let waited = quiet(Command::new("flock").arg("-x").arg(&lockfile).arg("true"));
    let _ = holder.wait();
    if let Ok(mut c) = shared_waiter {
        let _ = c.wait();
    }
    // Upgrade then downgrade on one open file description (fd 9).
    let converted = quiet(
        Command::new("bash")
            .args([
                "-c",
                "exec 9<>\"$1\" && flock -s 9 && flock -x 9 && flock -s 9 && flock -u 9",
                "flock-convert",
            ])
            .arg(&lockfile),
    );
    if refused && waited && converted {
        Ok(())
    } else {
        Err(format!(
            "flock contention: refused={refused} waited={waited} converted={converted}"
        ))
    }
}

/// Files held open (written, not synced) across a kill -9 of the daemon,
/// so that the next start has a journal to recover; `orphan` is removed
/// from storage while the daemon is down.
pub struct HeldOpen {
    files: Vec<fs::File>,
}

impl HeldOpen {
    pub fn open(mnt: &Path, n: usize) -> std::io::Result<Self> {
        let mut files = Vec::new();
        for i in 0..n {
            let mut f = fs::File::create(mnt.join(format!("held-{i}")))?;
            f.write_all(b"written, not synced")?;
            files.push(f);
        }
        let mut f = fs::File::create(mnt.join("orphan"))?;
        f.write_all(b"vanishes while the daemon is down")?;
        files.push(f);
        Ok(Self { files })
    }

    /// Closes the descriptors (after the daemon died: no FUSE traffic).
    pub fn close(self) {
        drop(self.files);
    }
}

/// A stand-in OTLP/HTTP collector: answers every request (`POST
/// /v1/traces`) with `200 OK` and an empty body (an empty
/// `ExportTraceServiceResponse`), counting them. Started late on purpose:
/// until then the daemon's exports fail and its spans are dropped.
pub struct OtlpSink {
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpSink {
    pub fn start(port: u16) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, requests) = (stop.clone(), requests.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let requests = requests.clone();
                            std::thread::spawn(move || serve_otlp(conn, &requests));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            stop,
            requests,
            thread: Some(thread),
        })
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// HTTP/1.1 requests on one connection, each answered `200 OK`.
fn serve_otlp(conn: std::net::TcpStream, requests: &AtomicU64) {
    claudefs_testkit::serve(conn, |_, _| {
        requests.fetch_add(1, Ordering::Relaxed);
        Vec::new()
    });
}
