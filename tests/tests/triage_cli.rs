//! `claudefs-fuse triage` run as a user runs it: the binary, next to a
//! workload, on a bindfs mount and on ours, its `--format json` report
//! parsed and checked against what the workload did; a `--mount` that is
//! not FUSE or does not exist; bad `--duration`s; Ctrl-C (and SIGTERM) in
//! the middle of the collection and while the probes load; and a run
//! without privileges.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use claudefs_e2e::{fuse_bin, fuse_unavailable, Bindfs, MountGuard};
use serde_json::Value;

/// Creates of new files, opens of one existing file, forced stats of an
/// open file, and unlinks of the created files: the workload.
const CREATES: u64 = 20;
const OPENS: u64 = 30;
const STATS: u64 = 40;

/// A running `claudefs-fuse triage`, its stderr read line by line.
struct Triage {
    child: Child,
    stderr: Receiver<String>,
    seen: Vec<String>,
}

impl Triage {
    fn start(args: &[&str]) -> Triage {
        let mut child = Command::new(fuse_bin())
            .arg("triage")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn triage");
        let err = child.stderr.take().expect("stderr");
        let (tx, stderr) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Triage {
            child,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Waits for the "collecting" line: the probes are attached.
    fn wait_collecting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.seen.iter().any(|l| l.contains("collecting for")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("triage did not start collecting: {:?}", self.seen),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// Waits (at most `timeout`) for the exit; returns it, stdout and all
    /// of stderr.
    fn finish(mut self, timeout: Duration) -> (ExitStatus, String, Vec<String>) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("triage did not exit within {timeout:?}: {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read stdout");
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        (status, out, self.seen)
    }
}

/// `statx(fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC)`: one GETATTR (or
/// STATX) per call on FUSE, never answered from the attribute cache.
fn fstatx_sync(file: &std::fs::File) {
    let empty = CString::default();
    // SAFETY: a valid fd and C string; `st` is plain data the call fills.
    let rc = unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        libc::statx(
            file.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    assert_eq!(rc, 0, "statx: {}", std::io::Error::last_os_error());
}

/// The workload on `mnt` (where `existing` is a file): CREATES new files,
/// OPENS opens and reads of `existing`, STATS forced stats of it, then
/// the new files unlinked.
fn workload(mnt: &Path, existing: &Path) {
    for i in 0..CREATES {
        std::fs::File::create_new(mnt.join(format!("new-{i}"))).expect("create");
    }
    for _ in 0..OPENS {
        let mut text = String::new();
        std::fs::File::open(existing)
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("open and read");
        assert_eq!(text, "hello\n");
    }
    let f = std::fs::File::open(existing).expect("open for stats");
    for _ in 0..STATS {
        fstatx_sync(&f);
    }
    drop(f);
    for i in 0..CREATES {
        std::fs::remove_file(mnt.join(format!("new-{i}"))).expect("unlink");
    }
}

/// The report's ops of its one mount, by name: (count, errors).
fn op_counts(mount: &Value) -> BTreeMap<String, (u64, u64)> {
    mount["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|o| {
            (
                o["name"].as_str().expect("name").to_string(),
                (
                    o["count"].as_u64().expect("count"),
                    o["errors"].as_u64().expect("errors"),
                ),
            )
        })
        .collect()
}

/// Runs triage on `mnt` while the workload runs next to it and checks the
/// JSON report against the workload.
/// With `daemon` (ours), its own per-operation counts must equal the
/// report's.
fn report_matches_the_workload(
    mnt: &Path,
    storage: &Path,
    fstype: &str,
    daemon: Option<&MountGuard>,
) {
    std::fs::write(storage.join("f"), "hello\n").expect("write f");
    let existing = mnt.join("f");
    // The first lookup of f is not part of the workload.
    assert!(existing.exists());
    let daemon = daemon.map(|d| (d, d.status().expect("status")));
    let mnt_arg = mnt.display().to_string();
    let mut triage = Triage::start(&["--duration", "4", "--mount", &mnt_arg, "--format", "json"]);
    triage.wait_collecting();
    let t0 = Instant::now();
    workload(mnt, &existing);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "the workload took {took:?}");
    let (status, out, stderr) = triage.finish(Duration::from_secs(15));
    assert!(status.success(), "triage: {status}: {stderr:?}");
    let report: Value = serde_json::from_str(&out).expect("the report is JSON");

    // Schema version 2 and its fields.
    assert_eq!(report["schema_version"], 2, "{out}");
    for field in [
        "window",
        "probes",
        "filter",
        "totals",
        "mounts",
        "idle_fuse_mounts",
        "flock",
        "notes",
    ] {
        assert!(report.get(field).is_some(), "no {field:?} in {out}");
    }
    let window = &report["window"];
    let duration_ns = window["duration_ns"].as_u64().expect("duration_ns");
    assert!(
        (3_900_000_000..6_000_000_000).contains(&duration_ns),
        "a 4 s window: {window}"
    );
    assert_eq!(
        window["ended_unix_ns"].as_u64().unwrap() - window["started_unix_ns"].as_u64().unwrap(),
        duration_ns
    );
    assert_eq!(
        report["probes"]["fuse_attached"], true,
        "{}",
        report["probes"]
    );
    let canonical = mnt.canonicalize().expect("canonical").display().to_string();
    assert_eq!(report["filter"]["mount_point"], canonical.as_str());
    assert_eq!(report["filter"]["fstype"], fstype);
    let mounts = report["mounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), 1, "only the --mount: {out}");
    let m = &mounts[0];
    assert_eq!(m["mount"], report["filter"]);

    // Counts equal the workload's.
    let ops = op_counts(m);
    let count = |name: &str| ops.get(name).map_or(0, |c| c.0);
    assert_eq!(count("CREATE"), CREATES, "{ops:?}");
    assert_eq!(count("OPEN"), OPENS + 1, "{ops:?}");
    assert_eq!(count("UNLINK"), CREATES, "{ops:?}");
    // Each close releases its handle; each create looked its new name up
    // first, in vain.
    assert_eq!(count("RELEASE"), CREATES + OPENS + 1, "{ops:?}");
    assert_eq!(ops.get("LOOKUP").map(|c| c.1), Some(CREATES), "{ops:?}");
    // Every forced stat asks the file system: GETATTR, or STATX where the
    // file system has it (one STATX answered ENOSYS turns the kernel to
    // GETATTR for good).
    let statx_ok = ops.get("STATX").map_or(0, |c| c.0 - c.1);
    assert!(
        count("GETATTR") + statx_ok >= STATS,
        "{STATS} forced stats: {ops:?}"
    );
    // Errors only where the file system says ENOENT (the lookups) or
    // ENOSYS (bindfs has no STATX and no FLUSH).
    for (name, (_, errors)) in &ops {
        if !["LOOKUP", "STATX", "FLUSH"].contains(&name.as_str()) {
            assert_eq!(*errors, 0, "{name} errors: {ops:?}");
        }
    }
    // Our daemon counts what it answered: the same numbers, per operation.
    if let Some((daemon, before)) = daemon {
        let after = daemon.status().expect("status");
        for (name, (n, errors)) in &ops {
            let op = name.to_lowercase();
            let answered = |s: &Value, i: usize| s["requests"][&op][i].as_u64().unwrap_or(0);
            assert_eq!(
                (
                    answered(&after, 0) - answered(&before, 0),
                    answered(&after, 1) - answered(&before, 1)
                ),
                (*n, *errors),
                "{name}: the daemon's count vs triage's; triage {ops:?}, daemon {}",
                after["requests"]
            );
        }
    }
    let totals = &m["totals"];
    let requests = totals["requests"].as_u64().expect("requests");
    assert_eq!(requests, ops.values().map(|c| c.0).sum::<u64>());
    assert_eq!(report["totals"], *totals);
    assert!(totals["total_ns"].as_u64().unwrap() > 0);
    // Each op row has its latency summary and display.
    for op in m["ops"].as_array().unwrap() {
        let lat = &op["latency"];
        assert!(lat["max_ns"].as_u64().unwrap() > 0, "{op}");
        assert!(lat["p50_ns"].as_u64().unwrap() <= lat["max_ns"].as_u64().unwrap());
        assert!(lat["display"]["p99"].is_string(), "{op}");
    }
    assert!(!m["histograms"].as_array().unwrap().is_empty());
    // The workload ran in this process: it made every request.
    let me = std::process::id();
    let procs = m["top_processes_by_requests"].as_array().expect("procs");
    let mine = procs
        .iter()
        .find(|p| p["tgid"].as_u64() == Some(u64::from(me)))
        .unwrap_or_else(|| panic!("pid {me} not among {procs:?}"));
    let others: u64 = procs
        .iter()
        .filter(|p| p["tgid"].as_u64() != Some(u64::from(me)))
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        mine["requests"].as_u64().unwrap() + others,
        requests,
        "{procs:?}"
    );
    assert!(
        mine["requests"].as_u64().unwrap() >= CREATES * 2 + OPENS + STATS,
        "{procs:?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("collecting for 4 s on the FUSE mount holding")),
        "{stderr:?}"
    );
}

#[test]
fn json_report_matches_the_workload_on_bindfs() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("src");
    let bindfs = Bindfs::start(&src, &tmp.path().join("bind")).expect("bindfs");
    report_matches_the_workload(&bindfs.dst, &src, "fuse", None);
}

#[test]
fn json_report_matches_the_workload_on_claudefs() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, guard) = MountGuard::single_path(tmp.path(), &[]).expect("mount");
    report_matches_the_workload(&guard.mnt, &src, "fuse.claudefs", Some(&guard));
}

/// Runs triage with `args` to its end and returns its exit code, stdout
/// and stderr lines.
fn run_to_end(args: &[&str]) -> (Option<i32>, String, Vec<String>) {
    let (status, out, err) = Triage::start(args).finish(Duration::from_secs(15));
    (status.code(), out, err)
}

#[test]
fn mount_that_is_not_fuse_or_missing_and_bad_durations_are_one_line() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing").display().to_string();
    let here = tmp.path().display().to_string();
    let cases: [(&[&str], i32, &[&str]); 6] = [
        (&["--mount", &missing], 1, &["--mount", "No such file"]),
        (&["--mount", &here], 1, &["--mount", "not on a FUSE mount"]),
        (&["--mount", "/proc/self"], 1, &["--mount", "(proc, "]),
        (&["--duration", "0"], 2, &["--duration", "whole seconds"]),
        (
            &["--duration", "garbage"],
            2,
            &["--duration", "whole seconds"],
        ),
        (&["--duration", "-3"], 2, &["--duration", "whole seconds"]),
    ];
    for (args, code, words) in cases {
        let t0 = Instant::now();
        let (got, out, err) = run_to_end(args);
        assert_eq!(got, Some(code), "{args:?}: {err:?}");
        assert!(out.is_empty(), "{args:?} printed {out}");
        assert_eq!(err.len(), 1, "{args:?}: {err:?}");
        for w in words {
            assert!(err[0].contains(w), "{args:?}: {:?} lacks {w:?}", err[0]);
        }
        // Refused before the probes load.
        assert!(t0.elapsed() < Duration::from_secs(2), "{args:?}");
    }
}

/// Starts a 60 s triage of `mnt`, makes OPENS opens once it collects,
/// sends `sig` and checks that the report comes at once, for the time
/// collected, with the opens.
fn signal_mid_collection(mnt: &Path, existing: &Path, sig: libc::c_int, by: &str) {
    let mnt_arg = mnt.display().to_string();
    let mut triage = Triage::start(&["--duration", "60", "--mount", &mnt_arg, "--format", "json"]);
    triage.wait_collecting();
    let t0 = Instant::now();
    for _ in 0..OPENS {
        std::fs::File::open(existing).expect("open");
    }
    std::thread::sleep(Duration::from_millis(300));
    triage.signal(sig);
    let sent = Instant::now();
    let (status, out, stderr) = triage.finish(Duration::from_secs(5));
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "exit took {:?}",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{status}: {stderr:?}");
    let report: Value = serde_json::from_str(&out).expect("a JSON report after the signal");
    let window_ns = report["window"]["duration_ns"]
        .as_u64()
        .expect("duration_ns");
    let collected = t0.elapsed();
    assert!(
        window_ns >= 300_000_000 && window_ns <= collected.as_nanos() as u64 + 2_000_000_000,
        "window {window_ns} ns, collected about {collected:?}"
    );
    let mounts = report["mounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), 1, "{out}");
    assert_eq!(op_counts(&mounts[0]).get("OPEN").map(|c| c.0), Some(OPENS));
    assert!(
        stderr
            .iter()
            .any(|l| l.contains(&format!("stopped early by {by}"))),
        "{stderr:?}"
    );
}

#[test]
fn ctrl_c_or_sigterm_mid_collection_still_reports() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("src");
    std::fs::write(src.join("f"), "hello\n").expect("f");
    let bindfs = Bindfs::start(&src, &tmp.path().join("bind")).expect("bindfs");
    let existing = bindfs.dst.join("f");
    assert!(existing.exists());
    signal_mid_collection(&bindfs.dst, &existing, libc::SIGINT, "Ctrl-C");
    signal_mid_collection(&bindfs.dst, &existing, libc::SIGTERM, "SIGTERM");
}

/// Whether `pid` catches `sig` (its SigCgt mask in /proc).
fn catches(pid: u32, sig: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

#[test]
fn ctrl_c_while_the_probes_load_still_reports() {
    if fuse_unavailable().is_some() {
        return;
    }
    let mut triage = Triage::start(&["--duration", "60", "--format", "json"]);
    let pid = triage.child.id();
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !catches(pid, libc::SIGINT) {
        assert!(Instant::now() < deadline, "triage never caught SIGINT");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Caught from the start: sent now, it arrives before or while the
    // probes load (which takes a few hundred ms), never uncaught.
    triage.signal(libc::SIGINT);
    let caught_after = t0.elapsed();
    triage.seen.extend(triage.stderr.try_iter());
    assert!(
        !triage.seen.iter().any(|l| l.contains("collecting for")),
        "SIGINT was caught only once the probes were loaded ({caught_after:?}): {:?}",
        triage.seen
    );
    let (status, out, stderr) = triage.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status}: {stderr:?}");
    let report: Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["schema_version"], 2);
    assert!(
        report["window"]["duration_ns"].as_u64().unwrap() < 5_000_000_000,
        "{}",
        report["window"]
    );
    assert!(
        stderr.iter().any(|l| l.contains("stopped early by Ctrl-C")),
        "{stderr:?}"
    );
}

/// A copy of the binary that uid nobody can run (the target dir may not
/// be reachable for it), in a directory of its own.
fn binary_for_nobody(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("claudefs-fuse");
    std::fs::copy(fuse_bin(), &bin).expect("copy the binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[test]
fn unprivileged_run_is_one_clear_line() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = binary_for_nobody(tmp.path());
    for args in [
        &["triage", "--duration", "1"][..],
        &["triage", "--duration", "1", "--format", "json"][..],
    ] {
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .current_dir(tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let t0 = Instant::now();
        let out = cmd.output().expect("run as nobody");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a report");
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with("claudefs-fuse: ")
                && lines[0].contains("root")
                && lines[0].contains("CAP_BPF"),
            "{args:?}: {}",
            lines[0]
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "{args:?}");
    }
}
