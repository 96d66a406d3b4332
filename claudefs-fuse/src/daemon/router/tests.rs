//! Unit tests of the router: retries, path states, probes, the mirrors
//! requests read and the folding of latencies.

use super::*;

fn two_paths() -> (tempfile::TempDir, Router) {
    two_paths_by(LoadBalancePolicy::RoundRobin)
}

fn two_paths_by(policy: LoadBalancePolicy) -> (tempfile::TempDir, Router) {
    let d = tempfile::tempdir().unwrap();
    let ino = StorageRoot::open(d.path())
        .unwrap()
        .stat(std::path::Path::new(""))
        .unwrap()
        .st_ino;
    let roots = vec![
        (StorageRoot::open(d.path()).unwrap(), 100, "a".to_string()),
        (StorageRoot::open(d.path()).unwrap(), 100, "b".to_string()),
    ];
    (d, Router::new(policy, roots, ino).unwrap())
}

#[test]
fn idempotent_requests_retry_on_next_path() {
    let (_d, r) = two_paths();
    let mut calls = 0;
    let out = r.run(Retry::Idempotent, |_| {
        calls += 1;
        if calls == 1 {
            Err(libc::ENOTCONN)
        } else {
            Ok(7)
        }
    });
    assert_eq!(out.result, Ok(7));
    assert_eq!(calls, 2);
    // The path that answered comes back with the answer.
    assert!(out.path.is_some());
    let first = r.run(Retry::Idempotent, |_| Ok(())).path;
    let second = r.run(Retry::Idempotent, |_| Ok(())).path;
    assert_ne!(first, second, "round robin over two paths");
}

#[test]
fn non_idempotent_requests_are_not_replayed() {
    let (_d, r) = two_paths();
    let mut calls = 0;
    let out: SysResult<()> = r
        .run(Retry::Once, |_| {
            calls += 1;
            Err(libc::EIO)
        })
        .result;
    assert_eq!(out, Err(libc::EIO));
    assert_eq!(calls, 1);
    // An ordinary errno is an answer, not a sick path.
    assert_eq!(
        r.run(Retry::Idempotent, |_| -> SysResult<()> {
            Err(libc::ENOENT)
        })
        .result,
        Err(libc::ENOENT)
    );
}

#[test]
fn a_sick_answer_of_a_path_that_failed_under_it_is_eio() {
    let (_d, r) = two_paths();
    // The roots answer: a sick-looking errno is the file's own.
    let out = r.run(Retry::Once, |_| -> SysResult<()> { Err(libc::ENXIO) });
    assert_eq!(out.result, Err(libc::ENXIO));
    assert!(r.usable(0) && r.usable(1));
    // The path fails while the request is on it (as when a concurrent
    // request found its root dead): what the dead storage said (a
    // killed FUSE storage: ECONNABORTED) is answered EIO, once.
    let mut calls = 0;
    let out = r.run(Retry::Once, |_| -> SysResult<()> {
        calls += 1;
        let _ = r.lock().mark_failed(PathId(0));
        let _ = r.lock().mark_failed(PathId(1));
        Err(libc::ECONNABORTED)
    });
    assert_eq!((out.result, calls), (Err(libc::EIO), 1));
    let out = r.run_on(1, |_| -> SysResult<()> { Err(libc::ENOTCONN) });
    assert_eq!(out.result, Err(libc::EIO));
    // A plain answer of a failed path stays what it is.
    let out = r.run_on(1, |_| -> SysResult<()> { Err(libc::ENOENT) });
    assert_eq!(out.result, Err(libc::ENOENT));
    assert_eq!(answer(libc::ESTALE, true), libc::ESTALE);
    assert_eq!(answer(libc::ESTALE, false), libc::EIO);
}

#[test]
fn enxio_and_enodev_of_a_live_root_are_the_files_answers() {
    let (_d, r) = two_paths();
    for e in [libc::ENXIO, libc::ENODEV] {
        for _ in 0..10 {
            let out = r.run(Retry::Once, |_| -> SysResult<()> { Err(e) });
            assert_eq!(out.result, Err(e));
        }
    }
    // Twenty answers, not one counted: both paths stay Active.
    for id in 0..2 {
        assert_eq!(
            r.lock().get_path(PathId(id)).unwrap().state,
            PathState::Active
        );
    }
    assert!(r.counters().iter().all(|c| c.errors == 0));
    // EIO of a live root still counts against its path.
    let out = r.run(Retry::Once, |_| -> SysResult<()> { Err(libc::EIO) });
    assert_eq!(out.result, Err(libc::EIO));
    assert_eq!(r.counters().iter().map(|c| c.errors).sum::<u64>(), 1);
}

#[test]
fn failed_path_needs_three_good_probes() {
    let (_d, r) = two_paths();
    let _ = r.lock().mark_failed(PathId(0));
    assert!(!r.usable(0));
    r.probe_once();
    assert_eq!(
        r.lock().get_path(PathId(0)).unwrap().state,
        PathState::Reconnecting
    );
    r.probe_once();
    assert!(!r.usable(0));
    r.probe_once();
    assert!(r.usable(0));
}

#[test]
fn no_usable_path_fails_fast() {
    let (_d, r) = two_paths();
    let _ = r.lock().mark_failed(PathId(0));
    let _ = r.lock().mark_failed(PathId(1));
    let out = r.run(Retry::Idempotent, |_| Ok(()));
    assert_eq!((out.result, out.path), (Err(libc::EIO), None));
}

#[test]
fn slow_follows_the_usable_paths_latency() {
    let (_d, r) = two_paths();
    assert!(!r.slow(), "a fresh path's 1 ms baseline is not slow");
    for _ in 0..30 {
        r.record_latency(1, Duration::from_millis(20));
    }
    assert!(r.slow());
    // A slow path that fails is no longer picked: not slow any more.
    let _ = r.lock().mark_failed(PathId(1));
    r.path_failed(0); // a sick answer on path 0 whose root still answers
    assert!(r.usable(0));
    assert!(!r.slow());
    for _ in 0..40 {
        r.record_latency(0, Duration::from_micros(10));
    }
    assert!(!r.slow());
}

#[test]
fn every_request_feeds_its_paths_latency_ema() {
    let (_d, r) = two_paths();
    let ema = |id| {
        r.fold();
        r.lock().get_path(PathId(id)).unwrap().metrics.latency_us
    };
    for _ in 0..200 {
        r.run(Retry::Idempotent, |_| Ok(())).result.unwrap();
    }
    // 100 near-instant requests per path: each EMA falls from its
    // 1000 us baseline by 7/8 per request, to about 0.
    assert!(ema(0) < 5 && ema(1) < 5, "{} {}", ema(0), ema(1));
    r.set_kernel_latency(true);
    let _ = r.run_on(0, |_| {
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    });
    assert!(
        ema(0) < 5,
        "with --ebpf the kernel's latency is recorded instead"
    );
}

fn ema(r: &Router, id: u64) -> u64 {
    r.lock().get_path(PathId(id)).unwrap().metrics.latency_us
}

#[test]
fn the_pick_follows_every_change_made_under_the_lock() {
    let (_d, r) = two_paths();
    let picks: Vec<u64> = (0..4).map(|_| r.select().unwrap()).collect();
    assert_eq!(picks, [0, 1, 0, 1], "round robin over two paths");
    let _ = r.lock().mark_failed(PathId(0));
    assert!(!r.usable(0) && r.usable(1));
    assert!((0..4).all(|_| r.select() == Ok(1)));
    let _ = r.lock().mark_active(PathId(0));
    assert!(r.usable(0));
    let mut picks: Vec<u64> = (0..4).map(|_| r.select().unwrap()).collect();
    picks.sort_unstable();
    assert_eq!(picks, [0, 0, 1, 1]);
    assert_eq!(
        r.counters().iter().map(|c| c.selected).sum::<u64>(),
        12,
        "every pick is counted"
    );
}

#[test]
fn least_latency_moves_off_a_slow_path_once_its_latencies_fold_in() {
    let (_d, r) = two_paths_by(LoadBalancePolicy::LeastLatency);
    assert_eq!(r.select(), Ok(0), "equal paths: the first");
    for _ in 0..20 {
        r.record_latency(0, Duration::from_millis(5));
        r.record_latency(1, Duration::from_micros(50));
    }
    r.fold();
    assert!(ema(&r, 0) > ema(&r, 1), "{} {}", ema(&r, 0), ema(&r, 1));
    assert_eq!(r.select(), Ok(1));
}

#[test]
fn a_folded_batch_moves_the_ema_as_its_requests_would() {
    let (_d, r) = two_paths();
    r.fold();
    let mut reference = MultipathRouter::new(LoadBalancePolicy::RoundRobin);
    reference
        .add_path(PathInfo::new(PathId(0), "a".to_string(), 100))
        .unwrap();
    for _ in 0..6 {
        r.record_latency(0, Duration::from_micros(300));
        reference.record_success(PathId(0), 300).unwrap();
    }
    r.fold();
    let want = reference.get_path(PathId(0)).unwrap().metrics.latency_us;
    assert_eq!(ema(&r, 0), want);
    assert_eq!(ema(&r, 1), 1000, "nothing for path 1: unchanged");
    r.fold();
    assert_eq!(ema(&r, 0), want, "a batch folds once");
}

#[test]
fn latencies_fold_by_themselves_once_due() {
    let (_d, r) = two_paths();
    r.record_latency(0, Duration::from_micros(10));
    std::thread::sleep(FOLD_EVERY * 2);
    r.record_latency(0, Duration::from_micros(10));
    // Without a fold by hand, both are in.
    assert_eq!(ema(&r, 0), (7 * ((7 * 1000 + 10) / 8) + 10) / 8);
}

#[test]
fn a_request_hung_on_the_old_root_does_not_hold_up_a_reconnect() {
    let (_d, r) = two_paths();
    let r = Arc::new(r);
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let hung = {
        let r = r.clone();
        std::thread::spawn(move || {
            r.run_on(0, |_| {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
            .result
        })
    };
    entered.recv().unwrap();
    let _ = r.lock().mark_failed(PathId(0));
    let state = |r: &Router| r.lock().get_path(PathId(0)).unwrap().state;
    r.probe_once();
    assert_eq!(state(&r), PathState::Reconnecting);
    r.probe_once();
    r.probe_once();
    assert_eq!(
        state(&r),
        PathState::Active,
        "while the request still hangs"
    );
    release.send(()).unwrap();
    hung.join().unwrap().unwrap();
}
