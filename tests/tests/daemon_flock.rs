//! flock(2) scenarios run with several processes both on the mount and on
//! a local file (the test's temp dir), outcomes compared.
//!
//! The documented differences: a non-blocking upgrade (LOCK_SH ->
//! LOCK_EX|LOCK_NB) that conflicts leaves Linux's caller with no lock, while
//! the daemon's registry keeps its shared lock; and a single-threaded
//! process blocking on its own lock through another open file gets EDEADLK
//! where Linux blocks it forever.

use std::process::Command;

use claudefs_e2e::{fuse_unavailable, MountGuard};

const DRIVER: &str = r#"
import errno, fcntl, os, signal, sys, time
path, scen = sys.argv[1], sys.argv[2]
EX, SH, UN, NB = fcntl.LOCK_EX, fcntl.LOCK_SH, fcntl.LOCK_UN, fcntl.LOCK_NB
def fd(): return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
def t(f, op):
    try:
        fcntl.flock(f, op); return "ok"
    except BlockingIOError: return "EWOULDBLOCK"
    except InterruptedError: return "EINTR"
    except TimeoutError: return "EINTR"
    except OSError as e: return errno.errorcode.get(e.errno, str(e.errno))
def eventually_ok(f, op, secs=3.0):
    end = time.time() + secs
    while time.time() < end:
        r = t(f, op)
        if r == "ok": return r
        time.sleep(0.02)
    return r
out = []
if scen == "nb":
    a, b = fd(), fd()
    out += [t(a, EX), t(b, EX|NB), t(b, SH|NB), t(a, SH), t(b, SH|NB), t(a, UN), t(b, EX|NB)]
    out += [t(b, UN), t(a, EX|NB)]
elif scen == "downgrade":
    a, b = fd(), fd()
    out += [t(a, EX), t(a, SH), t(b, SH|NB), t(b, EX|NB), t(b, UN), t(a, EX|NB), t(b, SH|NB)]
elif scen == "upgrade":
    a, b, c = fd(), fd(), fd()
    out += [t(a, SH), t(b, SH|NB), t(a, EX|NB), t(b, UN), t(c, EX|NB)]
elif scen == "fifo":
    a = fd(); out.append(t(a, EX))
    r, w = os.pipe(); kids = []
    for name in "ABCD":
        pid = os.fork()
        if pid == 0:
            f = fd(); fcntl.flock(f, EX); os.write(w, name.encode()); time.sleep(0.05)
            fcntl.flock(f, UN); os._exit(0)
        kids.append(pid); time.sleep(0.15)
    t(a, UN)
    for k in kids: os.waitpid(k, 0)
    os.close(w); out.append(os.read(r, 100).decode())
elif scen == "close":
    a, b = fd(), fd()
    out += [t(a, EX), t(b, EX|NB)]
    d = os.dup(a); os.close(a)
    out.append(t(b, EX|NB))
    os.close(d)
    out.append(eventually_ok(b, EX|NB))
elif scen == "kill_holder":
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        f = fd(); fcntl.flock(f, EX); os.write(w, b"x"); time.sleep(60); os._exit(0)
    os.read(r, 1)
    b = fd(); out.append(t(b, EX|NB))
    os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
    out.append(eventually_ok(b, EX|NB))
elif scen == "interrupt":
    a = fd(); out.append(t(a, EX))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        def h(s, f): raise TimeoutError()
        signal.signal(signal.SIGALRM, h); signal.setitimer(signal.ITIMER_REAL, 0.3)
        f = fd(); res = t(f, EX); os.write(w, res.encode()); os._exit(0)
    os.waitpid(pid, 0); os.close(w); out.append(os.read(r, 100).decode())
    out.append(t(a, UN))
    b = fd(); out.append(t(b, EX|NB))
elif scen == "kill_waiter":
    a = fd(); out.append(t(a, EX))
    pid = os.fork()
    if pid == 0:
        f = fd(); fcntl.flock(f, EX); os._exit(3)
    time.sleep(0.2); os.kill(pid, signal.SIGKILL)
    _, st = os.waitpid(pid, 0); out.append("killed" if os.WIFSIGNALED(st) else "exited")
    out.append(t(a, UN))
    b = fd(); out.append(t(b, EX|NB))
elif scen == "shared_waiters":
    a = fd(); out.append(t(a, EX))
    r, w = os.pipe(); kids = []
    for name in "ST":
        pid = os.fork()
        if pid == 0:
            f = fd(); fcntl.flock(f, SH); os.write(w, name.encode()); time.sleep(0.3); os._exit(0)
        kids.append(pid); time.sleep(0.1)
    t(a, UN); time.sleep(0.15)
    c = fd(); out.append(t(c, EX|NB))
    for k in kids: os.waitpid(k, 0)
    os.close(w); out.append("".join(sorted(os.read(r, 100).decode())))
elif scen == "threads":
    import threading
    a, b = fd(), fd()
    out.append(t(a, EX)); res = []
    th = threading.Thread(target=lambda: res.append((t(b, EX), time.time())))
    t0 = time.time(); th.start(); time.sleep(0.3)
    out.append("waiting" if th.is_alive() else "done")
    out.append(t(a, UN)); th.join()
    out += [res[0][0], "waited" if res[0][1] - t0 >= 0.25 else "early"]
print(" ".join(out))
"#;

fn run(path: &std::path::Path, scen: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(DRIVER)
        .arg(path)
        .arg(scen)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{scen}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn flock_matches_local_semantics() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let (_src, m) = MountGuard::single_path(tmp.path(), &[]).unwrap();
    let scenarios = [
        "nb",
        "downgrade",
        "fifo",
        "close",
        "kill_holder",
        "interrupt",
        "kill_waiter",
        "shared_waiters",
        "threads",
    ];
    for scen in scenarios {
        let on_mount = run(&m.mnt.join(format!("{scen}.lock")), scen);
        let on_local = run(&local.join(format!("{scen}.lock")), scen);
        eprintln!("{scen}: mount [{on_mount}] local [{on_local}]");
        assert_eq!(on_mount, on_local, "scenario {scen}");
    }
    // Expected outcomes, spelled out for the interesting ones.
    assert_eq!(run(&m.mnt.join("f2.lock"), "fifo"), "ok ABCD");
    assert_eq!(run(&m.mnt.join("i2.lock"), "interrupt"), "ok EINTR ok ok");
    // Another thread of the holder's process waits, as on Linux.
    assert_eq!(
        run(&m.mnt.join("t2.lock"), "threads"),
        "ok waiting ok ok waited"
    );
    // The documented upgrade difference: Linux drops the shared lock on a
    // refused LOCK_NB upgrade (c then gets EX); the registry keeps it.
    assert_eq!(
        run(&local.join("u.lock"), "upgrade"),
        "ok ok EWOULDBLOCK ok ok"
    );
    assert_eq!(
        run(&m.mnt.join("u.lock"), "upgrade"),
        "ok ok EWOULDBLOCK ok EWOULDBLOCK"
    );
    let st = m.status().unwrap();
    assert!(st["flock"]["acquires"].as_u64().unwrap() > 10, "{st}");
}

#[test]
fn flock_self_deadlock_is_edeadlk() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_src, m) = MountGuard::single_path(tmp.path(), &[]).unwrap();
    // Linux would block this single-threaded process forever (two open()s
    // of one file); the registry reports Deadlock -> EDEADLK. (With other
    // threads the request waits: the "threads" scenario above.)
    let script = r#"
import errno, fcntl, os, sys
a = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); b = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(a, fcntl.LOCK_EX)
try:
    fcntl.flock(b, fcntl.LOCK_EX); print("ok")
except OSError as e: print("EDEADLK" if e.errno == errno.EDEADLK else errno.errorcode[e.errno])
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(m.mnt.join("d.lock"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EDEADLK");
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// A blocking flock interrupted by a signal returns EINTR at once: the
/// kernel sends FUSE_INTERRUPT and the daemon answers the parked request
/// (no polling of the waiter's state).
#[test]
fn an_interrupted_blocking_flock_returns_eintr_within_50ms() {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_src, m) = MountGuard::single_path(tmp.path(), &[]).unwrap();
    let path = m.mnt.join("intr.lock");
    let holder = std::fs::File::create(&path).unwrap();
    // SAFETY: flock on an open fd.
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
    // SAFETY: installs a handler that does nothing, without SA_RESTART, so
    // the blocked flock(2) returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = {
        let path = path.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            // SAFETY: flock on an open fd.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            let err = std::io::Error::last_os_error().raw_os_error();
            (rc, err, Instant::now())
        })
    };
    let thread = rx.recv().unwrap();
    let waiting = || {
        m.status().unwrap()["flock"]["waiting"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        claudefs_e2e::wait_until(Duration::from_secs(5), || waiting() == 1),
        "the blocking request never parked"
    );
    let t0 = Instant::now();
    // SAFETY: signals a live thread of this process.
    assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR1) }, 0);
    let (rc, err, t1) = waiter.join().unwrap();
    assert_eq!((rc, err), (-1, Some(libc::EINTR)));
    let took = t1.duration_since(t0);
    assert!(took < Duration::from_millis(50), "EINTR took {took:?}");
    assert_eq!(waiting(), 0, "the interrupted request left the queue");
    // The holder's lock is untouched, and goes with its unlock.
    let other = std::fs::File::open(&path).unwrap();
    // SAFETY: flock on open fds.
    unsafe {
        assert_eq!(
            libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(libc::flock(holder.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(
            libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            0
        );
    }
}
