//! A crash of the server that applications do not notice: the keeper holds
//! the connection, the next server adopts it, carries on from the journal
//! (nodes, open handles, flock holders) and gets the requests in flight
//! resent; an upgrade hands the connection to another binary the same
//! way. The restart tests name `--transport dev` (requests in flight on
//! io_uring are not resent by the kernel: `uring_mount_survives_a_restart`
//! shows what holds there, and `daemon_restart_uring.rs` what a request
//! sent while no server runs gets).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use claudefs_e2e::{fuse_bin, fuse_unavailable, Bindfs, MountGuard};

const RECORD: usize = 4096;

fn dev_mount(tmp: &Path, extra: &[&str]) -> (PathBuf, MountGuard) {
    let mut args = vec!["--transport".to_string(), "dev".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    MountGuard::single_path(tmp, &args).unwrap()
}

fn flock(f: &File, op: i32) -> Result<(), i32> {
    // SAFETY: plain syscall on an open fd.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The workload the restarts run under; every error it meets is kept.
struct Workload {
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
    records: Arc<AtomicU64>,
    walks: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
    holder: File,
    waiter: JoinHandle<Result<Duration, i32>>,
    released: Arc<AtomicBool>,
}

fn record(seq: u64) -> Vec<u8> {
    let mut r = vec![(seq % 251) as u8; RECORD];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    r
}

impl Workload {
    fn start(mnt: &Path) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (records, walks, reads) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut threads = Vec::new();
        let fail = {
            let errors = errors.clone();
            move |what: String| errors.lock().unwrap().push(what)
        };
        // Writer: write + fsync + read back, one fd across every restart.
        {
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(mnt.join("log"))
                .unwrap();
            let (stop, n, fail) = (stop.clone(), records.clone(), fail.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; RECORD];
                while !stop.load(Ordering::Relaxed) {
                    let seq = n.load(Ordering::Relaxed);
                    let r = record(seq);
                    let off = seq * RECORD as u64;
                    if let Err(e) = f.write_all_at(&r, off) {
                        return fail(format!("write {seq}: {e}"));
                    }
                    if let Err(e) = f.sync_data() {
                        return fail(format!("fsync {seq}: {e}"));
                    }
                    if let Err(e) = f.read_exact_at(&mut buf, off) {
                        return fail(format!("read back {seq}: {e}"));
                    }
                    if buf != r {
                        return fail(format!("record {seq} read back wrong"));
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Reader: holds an fd open and reads it.
        {
            fs::write(mnt.join("ro"), b"read me across restarts").unwrap();
            let f = File::open(mnt.join("ro")).unwrap();
            let (stop, n, fail) = (stop.clone(), reads.clone(), fail.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    match f.read_at(&mut buf, 0) {
                        Ok(23) if &buf[..23] == b"read me across restarts" => {}
                        Ok(k) => return fail(format!("reader got {k} bytes")),
                        Err(e) => return fail(format!("reader: {e}")),
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }));
        }
        // Walker: lists a tree from a directory it stays in.
        {
            let tree = mnt.join("tree");
            for d in 0..4 {
                fs::create_dir_all(tree.join(format!("d{d}"))).unwrap();
                for f in 0..8 {
                    fs::write(tree.join(format!("d{d}/f{f}")), b"x").unwrap();
                }
            }
            let (stop, n, fail) = (stop.clone(), walks.clone(), fail.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut count = 0;
                    let top = match fs::read_dir(&tree) {
                        Ok(t) => t,
                        Err(e) => return fail(format!("walk: {e}")),
                    };
                    for d in top {
                        let d = match d {
                            Ok(d) => d,
                            Err(e) => return fail(format!("walk entry: {e}")),
                        };
                        match fs::read_dir(d.path()) {
                            Ok(files) => {
                                for f in files {
                                    match f.and_then(|f| fs::metadata(f.path())) {
                                        Ok(_) => count += 1,
                                        Err(e) => return fail(format!("walk stat: {e}")),
                                    }
                                }
                            }
                            Err(e) => return fail(format!("walk dir: {e}")),
                        }
                    }
                    if count != 32 {
                        return fail(format!("walk found {count} files, not 32"));
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // A holder of an exclusive flock, and a waiter blocked on it.
        let holder = File::create(mnt.join("lock")).unwrap();
        flock(&holder, libc::LOCK_EX).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let waiter = {
            let f = File::open(mnt.join("lock")).unwrap();
            let released = released.clone();
            std::thread::spawn(move || {
                let r = flock(&f, libc::LOCK_EX);
                let t = Instant::now();
                if !released.load(Ordering::SeqCst) {
                    // Granted while the holder still held: wrong.
                    return Err(-1);
                }
                r.map(|()| t.elapsed())
            })
        };
        Workload {
            stop,
            errors,
            threads,
            records,
            walks,
            reads,
            holder,
            waiter,
            released,
        }
    }

    /// Ends the workload; checks every process finished cleanly, the data,
    /// and the lock (still held, then passed to the waiter).
    fn finish(self, mnt: &Path, src: &Path) {
        std::thread::sleep(Duration::from_millis(100));
        // The holder still holds: another open description cannot take it.
        let probe = File::open(mnt.join("lock")).unwrap();
        assert_eq!(
            flock(&probe, libc::LOCK_EX | libc::LOCK_NB),
            Err(libc::EWOULDBLOCK),
            "the lock holder lost its lock"
        );
        assert!(!self.waiter.is_finished(), "the waiter got the lock early");
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "the workload saw errors: {errors:?}");
        self.released.store(true, Ordering::SeqCst);
        flock(&self.holder, libc::LOCK_UN).unwrap();
        let t0 = Instant::now();
        while !self.waiter.is_finished() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(self.waiter.is_finished(), "the waiter never got the lock");
        assert!(
            self.waiter.join().unwrap().is_ok(),
            "the waiter's flock failed"
        );
        // Every record written and fsync'd is on storage, intact.
        let n = self.records.load(Ordering::Relaxed);
        let mut data = Vec::new();
        File::open(src.join("log"))
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert!(data.len() as u64 >= n * RECORD as u64);
        for seq in 0..n {
            let off = (seq as usize) * RECORD;
            assert_eq!(
                &data[off..off + RECORD],
                &record(seq)[..],
                "record {seq} damaged"
            );
        }
        assert!(
            n > 0
                && self.walks.load(Ordering::Relaxed) > 0
                && self.reads.load(Ordering::Relaxed) > 0
        );
    }
}

#[test]
fn kill9_of_the_server_20_times_under_a_workload_goes_unnoticed() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = dev_mount(tmp.path(), &[]);
    let w = Workload::start(&m.mnt);
    let mut gaps = Vec::new();
    for i in 1..=20u64 {
        std::thread::sleep(Duration::from_millis(150));
        let killed = m.kill9_server();
        let st = m.wait_generation(i, Duration::from_secs(10)).unwrap();
        assert_ne!(st["pid"].as_u64(), Some(u64::from(killed)));
        assert_eq!(st["keeper"]["restarts"], i, "{st}");
        assert_eq!(st["keeper"]["resent"], true, "{st}");
        assert_eq!(st["recovery"]["carried_on"], true, "{st}");
        assert_eq!(st["recovery"]["orphaned"], 0, "{st}");
        assert!(
            st["recovery"]["locks_restored"].as_u64().unwrap() >= 1,
            "the holder's lock came back: {st}"
        );
        // The waiter's parked flock request was resent to the new server.
        assert!(
            claudefs_e2e::wait_until(Duration::from_secs(3), || m
                .status()
                .is_ok_and(|s| s["session"]["resent"].as_u64() >= Some(1))),
            "nothing resent to generation {i}: {}",
            m.status().unwrap()
        );
        gaps.push(st["keeper"]["last_gap_seconds"].as_f64().unwrap_or(0.0));
    }
    w.finish(&m.mnt, &src);
    let st = m.status().unwrap();
    assert_eq!(st["keeper"]["generation"], 20);
    eprintln!("restart gaps as the keeper measured them (s): {gaps:?}");
    m.stop().unwrap();
}

#[test]
fn upgrades_to_a_second_binary_under_a_workload_go_unnoticed() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("claudefs-fuse-next");
    fs::copy(fuse_bin(), &copy).unwrap();
    let (src, m) = dev_mount(tmp.path(), &[]);
    let w = Workload::start(&m.mnt);
    for i in 1..=10u64 {
        std::thread::sleep(Duration::from_millis(150));
        let bin = if i % 2 == 1 { copy.clone() } else { fuse_bin() };
        let out = Command::new(fuse_bin())
            .args(["upgrade", "--mountpoint"])
            .arg(&m.mnt)
            .arg("--state-dir")
            .arg(&m.state)
            .arg("--binary")
            .arg(&bin)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "upgrade {i}: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("generation {i} serves")), "{text}");
        let st = m.wait_generation(i, Duration::from_secs(5)).unwrap();
        assert_eq!(st["keeper"]["upgrades"], i, "{st}");
        assert_eq!(st["keeper"]["restarts"], 0, "{st}");
        // A drained server leaves nothing unfinished behind.
        assert_eq!(st["recovery"]["unclean"], false, "{st}");
        let exe = fs::read_link(format!("/proc/{}/exe", st["pid"])).unwrap();
        assert_eq!(exe, bin.canonicalize().unwrap());
    }
    w.finish(&m.mnt, &src);
    m.stop().unwrap();
}

/// Mounts with the server set to abort right after applying the first
/// request of kind `op`; runs `act` (which must succeed exactly once).
fn crash_after(
    op: &str,
    prepare: impl Fn(&Path),
    act: impl Fn(&Path) -> std::io::Result<()>,
) -> (PathBuf, MountGuard) {
    let tmp = tempfile::tempdir().unwrap().keep();
    let src = tmp.join("src");
    fs::create_dir_all(&src).unwrap();
    prepare(&src);
    let args: Vec<String> = ["--path", src.to_str().unwrap(), "--transport", "dev"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let m = MountGuard::start_with_env(
        &tmp.join("mnt"),
        &tmp.join("state"),
        &args,
        &[("CLAUDEFS_FUSE_TEST_CRASH_AFTER", op)],
    )
    .unwrap();
    act(&m.mnt).unwrap_or_else(|e| panic!("{op}: the application saw {e}: {}", m.log_text()));
    let st = m.wait_generation(1, Duration::from_secs(5)).unwrap();
    assert_eq!(
        st["keeper"]["restarts"], 1,
        "{op}: the server crashed once: {st}"
    );
    assert_eq!(st["session"]["deduplicated"], 1, "{op}: {st}");
    (src, m)
}

#[test]
fn a_non_idempotent_request_in_flight_at_a_crash_applies_once() {
    if fuse_unavailable().is_some() {
        return;
    }
    // create O_EXCL: a second application would be EEXIST.
    let (src, m) = crash_after(
        "make",
        |_| {},
        |mnt| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(mnt.join("new"))?
                .write_all(b"made once")
        },
    );
    assert_eq!(fs::read(src.join("new")).unwrap(), b"made once");
    drop(m);
    // unlink: a second one would be ENOENT.
    let (src, m) = crash_after(
        "remove",
        |src| fs::write(src.join("victim"), b"x").unwrap(),
        |mnt| fs::remove_file(mnt.join("victim")),
    );
    assert!(!src.join("victim").exists());
    drop(m);
    // rename: a second one would be ENOENT.
    let (src, m) = crash_after(
        "rename",
        |src| fs::write(src.join("from"), b"moved").unwrap(),
        |mnt| fs::rename(mnt.join("from"), mnt.join("to")),
    );
    assert!(!src.join("from").exists());
    assert_eq!(fs::read(src.join("to")).unwrap(), b"moved");
    drop(m);
}

fn upgrade(m: &MountGuard, mnt: &Path, binary: Option<&Path>) -> std::process::Output {
    let mut c = Command::new(fuse_bin());
    c.args(["upgrade", "--mountpoint"])
        .arg(mnt)
        .arg("--state-dir")
        .arg(&m.state);
    if let Some(b) = binary {
        c.arg("--binary").arg(b);
    }
    c.output().unwrap()
}

fn one_line_error(out: &std::process::Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(want), "{err} lacks {want}");
}

#[test]
fn upgrade_refuses_bad_input_and_the_server_keeps_serving() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_src, m) = dev_mount(tmp.path(), &[]);
    let mut open = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.mnt.join("held"))
        .unwrap();
    open.write_all(b"before").unwrap();
    let pid = m.pid();
    // A binary that fails to start.
    let bad = tmp.path().join("bad-binary");
    fs::write(&bad, "#!/bin/sh\necho cannot start >&2\nexit 3\n").unwrap();
    fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = upgrade(&m, &m.mnt, Some(&bad));
    one_line_error(&out, "exited before it was ready");
    // Not executable, missing.
    let plain = tmp.path().join("plain");
    fs::write(&plain, "x").unwrap();
    one_line_error(&upgrade(&m, &m.mnt, Some(&plain)), "not an executable file");
    one_line_error(
        &upgrade(&m, &m.mnt, Some(&tmp.path().join("missing"))),
        "no such file",
    );
    // Nothing changed: the same server serves, the open file works.
    assert_eq!(m.pid(), pid);
    let st = m.status().unwrap();
    assert_eq!(st["keeper"]["generation"], 0, "{st}");
    open.write_all(b" after").unwrap();
    assert_eq!(fs::read(m.mnt.join("held")).unwrap(), b"before after");

    // A mount without a keeper.
    let tmp2 = tempfile::tempdir().unwrap();
    let (_s2, alone) = MountGuard::single_path(tmp2.path(), &["--no-keeper".into()]).unwrap();
    one_line_error(&upgrade(&alone, &alone.mnt, None), "has no keeper");
    assert!(alone.status().is_ok());
    // Another file system's mount, and no mount at all.
    let other_src = tmp2.path().join("other-src");
    fs::create_dir_all(&other_src).unwrap();
    let other = Bindfs::start(&other_src, &tmp2.path().join("other")).unwrap();
    one_line_error(
        &upgrade(&alone, &other.dst, None),
        "not a claudefs-fuse mount",
    );
    let nowhere = tmp2.path().join("nowhere");
    fs::create_dir_all(&nowhere).unwrap();
    let out = Command::new(fuse_bin())
        .args(["upgrade", "--mountpoint"])
        .arg(&nowhere)
        .output()
        .unwrap();
    one_line_error(&out, "is not mounted");
}

#[test]
fn a_server_restarting_in_a_loop_backs_off_and_a_clean_unmount_ends_the_keeper() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_src, m) = dev_mount(tmp.path(), &[]);
    fs::write(m.mnt.join("f"), b"data").unwrap();
    for i in 1..=6u64 {
        m.kill9_server();
        m.wait_generation(i, Duration::from_secs(15)).unwrap();
    }
    assert!(
        m.log_text().contains("restarts in a loop"),
        "{}",
        m.log_text()
    );
    assert_eq!(fs::read(m.mnt.join("f")).unwrap(), b"data");
    let keeper = m.keeper_pid();
    assert!(m.stop().unwrap().success());
    assert!(
        !claudefs_e2e::cpu::runs(keeper),
        "keeper {keeper} still runs"
    );
}

#[test]
fn uring_mount_survives_a_restart() {
    if !claudefs_e2e::uring_mounts() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) =
        MountGuard::single_path(tmp.path(), &["--transport".into(), "uring".into()]).unwrap();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.mnt.join("kept"))
        .unwrap();
    f.write_all_at(b"on io_uring", 0).unwrap();
    // Idle: no request is in flight when the server dies.
    m.kill9_server();
    let st = m.wait_generation(1, Duration::from_secs(10)).unwrap();
    assert_eq!(st["transport"], "uring", "{st}");
    let mut buf = [0u8; 11];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"on io_uring");
    f.write_all_at(b"ON", 0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(fs::read(src.join("kept")).unwrap(), b"ON io_uring");
    assert!(fs::metadata(m.mnt.join("kept")).is_ok());
    // Upgrades are refused on io_uring, with the reason.
    let out = upgrade(&m, &m.mnt, None);
    one_line_error(&out, "io_uring");
}

/// Four writers write and fsync; `n` records each so far.
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<u64, String>>>,
}

impl Writers {
    fn start(mnt: &Path) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4)
            .map(|i| {
                let f = File::create(mnt.join(format!("w{i}"))).unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        f.write_all_at(&record(n), n * RECORD as u64)
                            .and_then(|()| f.sync_data())
                            .map_err(|e| format!("writer {i}, record {n}: {e}"))?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        Writers { stop, threads }
    }

    fn stop(self) -> Vec<Result<u64, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

fn check_records(src: &Path, i: usize, n: u64) {
    let data = fs::read(src.join(format!("w{i}"))).unwrap();
    for seq in 0..n {
        let off = seq as usize * RECORD;
        assert_eq!(
            &data[off..off + RECORD],
            &record(seq)[..],
            "w{i} record {seq}"
        );
    }
}

#[test]
fn kill9_under_four_writers_recovers_their_four_files() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = dev_mount(tmp.path(), &[]);
    let w = Writers::start(&m.mnt);
    std::thread::sleep(Duration::from_millis(300));
    m.kill9_server();
    let st = m.wait_generation(1, Duration::from_secs(10)).unwrap();
    let r = &st["recovery"];
    assert_eq!(r["open_files"], 4, "{st}");
    assert_eq!(r["recovered"], 4, "{st}");
    assert_eq!(r["orphaned"], 0, "{st}");
    assert!(r["state"].as_str().unwrap().starts_with("Complete"), "{st}");
    std::thread::sleep(Duration::from_millis(200));
    for (i, n) in w.stop().into_iter().enumerate() {
        let n = n.unwrap_or_else(|e| panic!("the writer saw an error across the restart: {e}"));
        assert!(n > 0);
        check_records(&src, i, n);
    }
    m.stop().unwrap();
}

#[test]
fn kill9_of_keeper_and_server_under_four_writers_and_a_torn_record() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = dev_mount(tmp.path(), &[]);
    let (mnt, state) = (m.mnt.clone(), m.state.clone());
    let w = Writers::start(&mnt);
    std::thread::sleep(Duration::from_millis(300));
    // The whole daemon dies: the mount with it (the writers then fail).
    m.kill9();
    let done: Vec<u64> = w
        .stop()
        .into_iter()
        .map(|r| match r {
            Ok(n) => n,
            Err(e) => e
                .split("record ")
                .nth(1)
                .and_then(|s| s.split(':').next())
                .and_then(|s| s.parse().ok())
                .expect("the error names the record"),
        })
        .collect();
    // A record cut short at the kill, as a torn store would leave it.
    let log = state.join("journal.log");
    let mut bytes = fs::read(&log).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes.truncate(end);
    bytes.extend_from_slice(br#"{"t":"open","fh":99,"ino":"#);
    fs::write(&log, &bytes).unwrap();
    let args = vec![
        "--path".to_string(),
        src.display().to_string(),
        "--transport".into(),
        "dev".into(),
    ];
    let m = MountGuard::start(&mnt, &state, &args).unwrap();
    let st = m.status().unwrap();
    let r = &st["recovery"];
    assert_eq!(r["unclean"], true, "{st}");
    assert_eq!(r["open_files"], 4, "{st}");
    assert_eq!(r["recovered"], 4, "{st}");
    assert!(r["state"].as_str().unwrap().starts_with("Complete"), "{st}");
    // Each record fsync'd before the kill is on storage.
    for (i, n) in done.into_iter().enumerate() {
        check_records(&src, i, n);
    }
    m.stop().unwrap();
}

#[test]
fn a_file_renamed_on_storage_while_no_server_ran_is_found_by_its_handle() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = dev_mount(tmp.path(), &[]);
    fs::create_dir(m.mnt.join("d")).unwrap();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.mnt.join("d/a"))
        .unwrap();
    f.write_all_at(b"before", 0).unwrap();
    // No server between the kill and the rename: the keeper is stopped.
    let keeper = m.keeper_pid() as i32;
    // SAFETY: signals the keeper of the mount under test.
    unsafe { libc::kill(keeper, libc::SIGSTOP) };
    let server = m.kill9_server();
    assert!(claudefs_e2e::wait_until(Duration::from_secs(5), || {
        fs::read_to_string(format!("/proc/{server}/stat")).map_or(true, |s| s.contains(") Z "))
    }));
    fs::rename(src.join("d/a"), src.join("moved")).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(keeper, libc::SIGCONT) };
    let st = m.wait_generation(1, Duration::from_secs(10)).unwrap();
    let r = &st["recovery"];
    assert_eq!(r["recovered"], 1, "{st}");
    assert_eq!(r["orphaned"], 0, "{st}");
    assert_eq!(r["nodes_lost"], 0, "{st}");
    f.write_all_at(b" after", 6).unwrap();
    f.sync_all().unwrap();
    assert_eq!(fs::read(src.join("moved")).unwrap(), b"before after");
    assert!(
        m.log_text().contains("found by its file handle"),
        "{}",
        m.log_text()
    );
}

#[test]
fn the_dead_mount_of_a_daemon_killed_whole_is_detached_by_the_next_mount() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = dev_mount(tmp.path(), &[]);
    fs::write(m.mnt.join("f"), b"kept").unwrap();
    let (server, keeper) = (m.pid() as i32, m.keeper_pid() as i32);
    // SAFETY: signals the processes of the mount under test.
    unsafe {
        libc::kill(keeper, libc::SIGKILL);
        libc::kill(server, libc::SIGKILL);
    }
    assert!(claudefs_e2e::wait_until(Duration::from_secs(5), || {
        fs::metadata(&m.mnt).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
    }));
    // What a service manager restarting the mount does: mount again.
    let args = vec![
        "--path".to_string(),
        src.display().to_string(),
        "--transport".into(),
        "dev".into(),
    ];
    let again = MountGuard::start(&m.mnt, &m.state, &args).unwrap();
    assert_eq!(fs::read(again.mnt.join("f")).unwrap(), b"kept");
    assert!(
        again.log_text().contains("dead claudefs-fuse mount"),
        "{}",
        again.log_text()
    );
    again.stop().unwrap();
}

#[test]
fn an_upgrade_whose_server_dies_before_serving_goes_back_to_the_old_binary() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_src, m) = dev_mount(tmp.path(), &[]);
    let held = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.mnt.join("held"))
        .unwrap();
    held.write_all_at(b"one", 0).unwrap();
    // Prepares like any server, then dies once it has the connection.
    let dying = tmp.path().join("dies-at-start");
    fs::write(
        &dying,
        format!(
            "#!/bin/sh\nCLAUDEFS_FUSE_TEST_DIE_AT_START=1 exec {} \"$@\"\n",
            fuse_bin().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&dying, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    one_line_error(&upgrade(&m, &m.mnt, Some(&dying)), "died before it served");
    let st = m.wait_generation(2, Duration::from_secs(10)).unwrap();
    let exe = fs::read_link(format!("/proc/{}/exe", st["pid"])).unwrap();
    assert_eq!(exe, fuse_bin().canonicalize().unwrap(), "{st}");
    held.write_all_at(b"two", 3).unwrap();
    assert_eq!(fs::read(m.mnt.join("held")).unwrap(), b"onetwo");
}
