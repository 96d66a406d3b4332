//! A request sent to an io_uring mount while no server runs (the server
//! died, the keeper has not started the next one yet) is answered by the
//! next server, which kicks the kernel's queues (see
//! `claudefs_fuse::session::uring`), with nothing else sent to the mount.

use std::fs;
use std::time::{Duration, Instant};

use claudefs_e2e::cpu::{allowed_cpus, pin_to, runs};
use claudefs_e2e::MountGuard;

/// What became of one stat per CPU sent while no server ran (see the
/// test below), or `None` if one was answered before the next server
/// started: it reached the dead server's rings before the kernel had torn
/// them down, where the kernel ends a request with ECANCELED or, rarely,
/// never (README, restart limits); such a try says nothing of the kick.
fn stats_while_no_server_runs(wait: Duration) -> Option<Vec<(usize, Result<(), String>)>> {
    let tmp = tempfile::tempdir().unwrap();
    let (_src, m) =
        MountGuard::single_path(tmp.path(), &["--transport".into(), "uring".into()]).unwrap();
    fs::write(m.mnt.join("f"), b"x").unwrap();
    let keeper = m.keeper_pid() as i32;
    // SAFETY: signals the keeper of the mount under test.
    assert_eq!(unsafe { libc::kill(keeper, libc::SIGSTOP) }, 0);
    let old = m.kill9_server();
    assert!(
        claudefs_e2e::wait_until(Duration::from_secs(5), || !runs(old)),
        "server {old} still runs after SIGKILL"
    );
    std::thread::sleep(wait);
    let cpus = allowed_cpus();
    let (tx, rx) = std::sync::mpsc::channel();
    for &cpu in &cpus {
        let path =
            std::ffi::CString::new(m.mnt.join("f").into_os_string().into_encoded_bytes()).unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            pin_to(cpu).unwrap_or_else(|e| panic!("pin to CPU {cpu}: {e}"));
            let r = claudefs_e2e::statx_sync(&path).map_err(|e| e.to_string());
            let _ = tx.send((cpu, r));
        });
    }
    drop(tx);
    let early = rx.recv_timeout(Duration::from_millis(200));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(keeper, libc::SIGCONT) }, 0);
    if let Ok(a) = early {
        eprintln!("{wait:?} after the server died, a stat was answered with no server: {a:?}");
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = Vec::new();
    while answered.len() < cpus.len() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(a) => answered.push(a),
            Err(_) => break,
        }
    }
    assert_eq!(
        answered.len(),
        cpus.len(),
        "stats answered within 10 s of the keeper's restart, of one per CPU {cpus:?}: \
         {answered:?}; log: {}",
        m.log_text()
    );
    let st = m.wait_generation(1, Duration::from_secs(10)).unwrap();
    assert_eq!(st["transport"], "uring", "{st}");
    Some(answered)
}

#[test]
fn a_request_sent_while_no_server_serves_io_uring_is_answered_by_the_next() {
    // The kernel keeps its rings "ready" when the server dies: a request
    // sent then waits in the list of its CPU's queue, and registering the
    // next server's entries does not hand it out. The next server kicks
    // every queue; without that, these stats would wait until another
    // request on the same queue completed, which nothing here sends. The
    // keeper is stopped meanwhile, so no server runs while they are sent,
    // some time after the death (longer on each try that raced the
    // teardown of the dead server's rings).
    if !claudefs_e2e::uring_mounts() {
        return;
    }
    let answered = [100, 1000, 3000]
        .into_iter()
        .find_map(|ms| stats_while_no_server_runs(Duration::from_millis(ms)))
        .expect("every try raced the kernel's teardown of the dead server's rings");
    assert!(answered.iter().all(|(_, r)| r.is_ok()), "{answered:?}");
}
