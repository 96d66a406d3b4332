//! The io_uring queue threads' scheduling classes (`--queue-policy`, see
//! `session::queue_sched`): SCHED_IDLE on a quiet machine, back to
//! SCHED_OTHER while busy loops take every CPU, serving all along. One
//! test, so that nothing else in this binary loads the CPUs beside it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claudefs_e2e::{statx_sync, wait_until, MountGuard};

/// The scheduling class (`policy`, field 41 of `stat`) of every queue
/// thread of process `pid`.
fn queue_classes(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("cfs-ring-") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised comm, counted from 3.
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        if let Some(p) = rest.split(' ').nth(41 - 3) {
            out.push(p.parse().unwrap());
        }
    }
    out
}

/// The serving process (under a keeper, not the mount command's child).
fn server_pid(st: &serde_json::Value) -> u32 {
    st["pid"].as_u64().unwrap() as u32
}

/// Uncached statx calls of `file` made in `d`.
fn statx_for(file: &Path, d: Duration) -> u64 {
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < d {
        statx_sync(&c).unwrap();
        n += 1;
    }
    n
}

/// A busy loop pinned to each CPU until dropped.
struct BusyCpus {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCpus {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (0..cpus)
            .map(|cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // Unpinned, the loop still keeps some CPU busy.
                    let _ = claudefs_e2e::cpu::pin_to(cpu);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn queue_threads_leave_sched_idle_while_every_cpu_is_busy() {
    if !claudefs_e2e::uring_mounts() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let uring = ["--transport".to_string(), "uring".to_string()];

    // --queue-policy normal: no queue thread at SCHED_IDLE, ever.
    let mut args = uring.to_vec();
    args.extend(["--queue-policy".into(), "normal".into()]);
    let (src, m) = MountGuard::single_path(&tmp.path().join("normal"), &args).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    assert!(statx_for(&m.mnt.join("f"), Duration::from_millis(50)) > 0);
    let st = m.status().unwrap();
    assert_eq!(st["queues"]["policy"], "normal", "{st}");
    assert_eq!(st["queues"]["idle"], 0, "{st}");
    let classes = queue_classes(server_pid(&st));
    assert!(
        !classes.is_empty() && classes.iter().all(|&c| c == libc::SCHED_OTHER),
        "{classes:?}"
    );
    drop(m);

    // The default: SCHED_IDLE on a quiet machine.
    let (src, m) = MountGuard::single_path(&tmp.path().join("idle"), &uring).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let f = m.mnt.join("f");
    assert!(statx_for(&f, Duration::from_millis(50)) > 0);
    let st = m.status().unwrap();
    assert_eq!(st["queues"]["policy"], "idle", "{st}");
    let threads = st["queues"]["threads"].as_u64().unwrap();
    assert!(threads >= 1, "{st}");
    let pid = server_pid(&st);
    assert!(
        queue_classes(pid).contains(&libc::SCHED_IDLE),
        "{:?} {st}",
        queue_classes(pid)
    );

    // Busy loops on every CPU: the guard moves the queue thread that
    // serves this process back to SCHED_OTHER, and requests keep going
    // at a SCHED_OTHER pace (a starved SCHED_IDLE queue answered ~1k/s).
    let busy = BusyCpus::start();
    let demoted = wait_until(Duration::from_secs(5), || {
        statx_for(&f, Duration::from_millis(20));
        m.status()
            .is_ok_and(|st| st["queues"]["demotions"].as_u64() >= Some(1))
    });
    let st = m.status().unwrap();
    assert!(demoted, "no demotion with every CPU busy: {st}");
    assert!(
        queue_classes(pid).contains(&libc::SCHED_OTHER),
        "{:?} {st}",
        queue_classes(pid)
    );
    let n = statx_for(&f, Duration::from_millis(300));
    drop(busy);
    assert!(
        n > 3000,
        "{n} uncached stats in 300 ms with busy CPUs: {st}"
    );
    assert!(
        m.log_text().contains("back to SCHED_OTHER"),
        "{}",
        m.log_text()
    );

    // Quiet again: after its backoff (1 s) the thread is idle again.
    let back = wait_until(Duration::from_secs(5), || {
        statx_for(&f, Duration::from_millis(20));
        m.status()
            .is_ok_and(|st| st["queues"]["idle"].as_u64() == Some(threads))
    });
    assert!(back, "{}", m.status().unwrap());
}
