//! End-to-end tests of the flock probes (root): contention on a file
//! served by a FUSE daemon (FUSE_FLOCK_LOCKS) and by the kernel, on BTF and
//! classic tracepoints, and a signal ending a kernel flock wait. Each test
//! mounts its own test file system and filters by its connection.

use std::os::fd::AsRawFd;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use claudefs_e2e::probes::{load_probes, load_probes_as};
use claudefs_e2e::require_privileges;
use claudefs_e2e::testfs::{opcode, MountedFs, TestFsOptions};
use claudefs_fuse::probes::snapshot::{FlockKind, FlockMode, FlockTarget};
use claudefs_fuse::probes::Probes;

const HOLDER: &str = r#"
import fcntl, os, sys, time
f = open(sys.argv[1])
fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.002)
time.sleep(0.3)
"#;

fn wait_for(probes: &mut Probes, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        probes.poll().expect("poll");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `/proc/PID/syscall` says the process is blocked in flock(2).
fn in_flock(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .is_some_and(|nr| nr == libc::SYS_flock.to_string())
}

fn exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// A flock held 300 ms by one process and requested (blocking) by another
/// shows a wait of at least 300 ms, attributed to `target` and the file; a
/// LOCK_NB attempt meanwhile shows as refused.
fn flock_contention(flock_locks: bool, classic: bool) {
    let mut probes = load_probes_as(classic);
    let fs = MountedFs::mount(TestFsOptions {
        flock_locks,
        ..Default::default()
    })
    .expect("mount");
    let target = if flock_locks {
        FlockTarget::Fuse { conn: fs.conn }
    } else {
        FlockTarget::Device { dev: fs.conn }
    };
    let file = fs.path("lockfile");
    let markers = tempfile::tempdir().expect("tempdir");
    let (locked, go) = (markers.path().join("locked"), markers.path().join("go"));

    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(HOLDER)
        .args([&file, &locked, &go])
        .spawn()
        .expect("spawn python3 (the lock holder)");
    wait_for(&mut probes, "the holder to lock", || {
        locked.exists() || exited(&mut holder)
    });
    assert!(!exited(&mut holder), "the holder died");

    // A non-blocking attempt on the held lock is refused.
    let own = std::fs::File::open(&file).expect("open lockfile");
    // SAFETY: flock on a valid open fd.
    let rc = unsafe { libc::flock(own.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EWOULDBLOCK)
    );
    drop(own);

    let mut waiter = Command::new("flock")
        .args(["-x".as_ref(), file.as_os_str(), "true".as_ref()])
        .spawn()
        .expect("spawn flock(1) (the waiter)");
    let waiter_pid = waiter.id();
    wait_for(&mut probes, "the waiter to block", || {
        in_flock(waiter_pid) || exited(&mut waiter)
    });
    std::fs::write(&go, b"").expect("write go marker");
    wait_for(&mut probes, "the waiter to get the lock", || {
        exited(&mut waiter)
    });
    assert!(waiter.wait().expect("waiter status").success());
    assert!(holder.wait().expect("holder status").success());

    probes.poll().expect("poll");
    let snap = probes.snapshot().expect("snapshot");
    let sample = |kind, mode| {
        snap.flocks
            .iter()
            .find(|f| f.target == target && f.kind == kind && f.mode == mode)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind:?}/{mode:?} flocks on {target:?}: {:#?}",
                    snap.flocks
                )
            })
    };
    let blocking = sample(FlockKind::Exclusive, FlockMode::Blocking);
    // The holder's uncontended lock and the waiter's contended one. (An
    // uncontended call may still take over 1 ms on a loaded machine when it
    // is a FUSE round trip, so "waited" is at least the contended one.)
    assert_eq!(blocking.calls, 2, "{blocking:?}");
    assert!((1..=2).contains(&blocking.waited), "{blocking:?}");
    assert_eq!(blocking.refused, 0, "{blocking:?}");
    assert!(blocking.wait.max_ns >= 300_000_000, "{blocking:?}");
    let nb = sample(FlockKind::Exclusive, FlockMode::NonBlocking);
    assert_eq!((nb.calls, nb.refused), (1, 1), "{nb:?}");
    assert!(
        nb.wait.max_ns < 300_000_000,
        "a refused LOCK_NB does not wait: {nb:?}"
    );

    let w = snap
        .flock_waiters
        .iter()
        .find(|w| w.tgid == waiter_pid)
        .unwrap_or_else(|| {
            panic!(
                "waiter {waiter_pid} not reported: {:#?}",
                snap.flock_waiters
            )
        });
    assert_eq!(w.target, target);
    assert_eq!(w.comm, "flock");
    assert_eq!(w.file.as_deref(), Some(file.to_string_lossy().as_ref()));
    assert!(w.fd.is_some(), "{w:?}");
    assert_eq!(w.calls, 1);
    assert!(w.max_wait_ns >= 300_000_000, "{w:?}");

    let fs_ops = fs.stats.snapshot();
    if flock_locks {
        assert!(
            fs_ops.get(&opcode::SETLKW).is_some_and(|c| c.0 >= 2),
            "{fs_ops:?}"
        );
        assert_eq!(fs_ops.get(&opcode::SETLK), Some(&(1, 1)), "{fs_ops:?}");
    } else {
        assert!(!fs_ops.contains_key(&opcode::SETLKW), "{fs_ops:?}");
    }
}

#[test]
fn flock_served_by_the_fuse_daemon_is_attributed_to_the_connection() {
    if !require_privileges("flock_served_by_the_fuse_daemon_is_attributed_to_the_connection") {
        return;
    }
    flock_contention(true, false);
}

#[test]
fn flock_served_by_the_kernel_is_attributed_to_the_device() {
    if !require_privileges("flock_served_by_the_kernel_is_attributed_to_the_device") {
        return;
    }
    flock_contention(false, false);
}

#[test]
fn kernel_served_flock_on_classic_tracepoints() {
    if !require_privileges("kernel_served_flock_on_classic_tracepoints") {
        return;
    }
    flock_contention(false, true);
}

/// Blocks on an exclusive flock of argv[1] until SIGALRM after 0.3 s
/// interrupts it (EINTR), then takes an uncontended flock of argv[2].
const INTERRUPTED_WAITER: &str = r#"
import fcntl, signal, sys
class Alarm(Exception):
    pass
def on_alarm(*_):
    raise Alarm()
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.3)
try:
    fcntl.flock(open(sys.argv[1]), fcntl.LOCK_EX)
    sys.exit("the held lock was granted")
except Alarm:
    pass
fcntl.flock(open(sys.argv[2]), fcntl.LOCK_EX)
"#;

#[test]
fn a_signal_ends_a_kernel_flock_wait() {
    if !require_privileges("a_signal_ends_a_kernel_flock_wait") {
        return;
    }
    let mut probes = load_probes();
    let dir = tempfile::tempdir().expect("tempdir");
    let (held, free) = (dir.path().join("held"), dir.path().join("free"));
    std::fs::write(&held, b"").expect("create");
    std::fs::write(&free, b"").expect("create");
    let holder = std::fs::File::open(&held).expect("open");
    // SAFETY: flock on a valid open fd.
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
    let lost_before = probes.counters().expect("counters").flock_waits_lost;

    let mut waiter = Command::new("python3")
        .arg("-c")
        .arg(INTERRUPTED_WAITER)
        .args([&held, &free])
        .spawn()
        .expect("spawn python3 (the waiter)");
    let pid = waiter.id();
    wait_for(&mut probes, "the waiter to finish", || exited(&mut waiter));
    assert!(waiter.wait().expect("status").success());
    drop(holder);

    probes.poll().expect("poll");
    let snap = probes.snapshot().expect("snapshot");
    let dev = claudefs_fuse::probes::dev::kernel_dev_of_path(&held).expect("dev");
    let w = snap
        .flock_waiters
        .iter()
        .find(|w| w.tgid == pid)
        .unwrap_or_else(|| panic!("waiter {pid} not reported: {:#?}", snap.flock_waiters));
    assert_eq!(w.target, FlockTarget::Device { dev });
    // One interrupted wait of about 0.3 s; the uncontended flock after it
    // did not wait, and started no new wait from a stale one.
    assert_eq!(w.calls, 1, "{w:?}");
    // The timer is armed just before flock(2) enters the kernel: the wait
    // the probes see is a little under the 0.3 s.
    assert!(
        (250_000_000..2_000_000_000).contains(&w.max_wait_ns),
        "{w:?}"
    );
    assert_eq!(
        probes.counters().expect("counters").flock_waits_lost,
        lost_before
    );
}
