//! A second session adopts a live, initialised FUSE connection: the fd
//! and the first session's serialized INIT state are all it gets (no
//! INIT is sent again), and the mount keeps being served without a
//! remount.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claudefs_e2e::{require_privileges, statx_sync};
use claudefs_fuse::session::abi;
use claudefs_fuse::session::{
    Handler, InitConfig, InitState, Operation, Readers, Reply, Request, Session,
};

/// A file system of one file, `hello`, whose size names the session
/// serving it.
struct OneFile {
    size: u64,
    served: AtomicU64,
}

fn attr(ino: u64, size: u64) -> abi::Attr {
    abi::Attr {
        ino,
        size,
        mode: if ino == abi::ROOT_ID {
            libc::S_IFDIR | 0o755
        } else {
            libc::S_IFREG | 0o644
        },
        nlink: 1,
        blksize: 4096,
        ..Default::default()
    }
}

impl Handler for OneFile {
    fn dispatch(&self, req: &Request<'_>, reply: Reply) {
        self.served.fetch_add(1, Ordering::Relaxed);
        match &req.op {
            Operation::Lookup { name } if *name == "hello" => reply.pod(&abi::EntryOut {
                nodeid: 2,
                attr: attr(2, self.size),
                ..Default::default()
            }),
            Operation::Getattr { .. } if req.nodeid() <= 2 => reply.pod(&abi::AttrOut {
                attr: attr(req.nodeid(), self.size),
                ..Default::default()
            }),
            Operation::Lookup { .. } => reply.error(libc::ENOENT),
            _ => reply.error(libc::ENOSYS),
        }
    }
    fn forget(&self, _: u64, _: u64) {}
    fn interrupt(&self, _: u64) {}
}

/// Detaches the mount whatever happens.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        claudefs_e2e::umount_lazy(&self.0);
    }
}

/// The size of `hello` as a GETATTR answers it now.
fn size(path: &std::ffi::CStr) -> u64 {
    statx_sync(path).unwrap();
    // SAFETY: `st` is plain data the call fills; `path` is a C string.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::stat(path.as_ptr(), &mut st), 0);
        st.st_size as u64
    }
}

#[test]
fn a_second_session_adopts_the_connection_without_init() {
    if !require_privileges("a_second_session_adopts_the_connection_without_init") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fd = claudefs_fuse::daemon::mount::mount_fuse(&mnt).unwrap();
    let _unmount = Unmount(mnt.clone());
    let first = Session::init(fd, &InitConfig::default()).unwrap();
    let hello =
        std::ffi::CString::new(mnt.join("hello").into_os_string().into_encoded_bytes()).unwrap();

    let a = Arc::new(OneFile {
        size: 1,
        served: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let keep = first.device().try_clone_fd().unwrap();
    let state = serde_json::to_string(first.state()).unwrap();
    let serving_a = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            let readers = Arc::new(Readers::new(1, Duration::ZERO, false));
            first.run_dev(a, readers, Some(stop))
        })
    };
    assert_eq!(size(&hello), 1);
    // The first session stops (each of its workers before its next read;
    // one already reading leaves after the request it reads); the
    // duplicate fd keeps the connection alive meanwhile.
    stop.store(true, Ordering::Relaxed);
    let state: InitState = serde_json::from_str(&state).unwrap();
    let second = Session::adopt(keep, state);
    assert_eq!(second.state(), &state);
    let b = Arc::new(OneFile {
        size: 2,
        served: AtomicU64::new(0),
    });
    let serving_b = {
        let b = b.clone();
        std::thread::spawn(move || {
            let readers = Arc::new(Readers::new(2, Duration::ZERO, false));
            second.run_dev(b, readers, None)
        })
    };
    // Every request is answered, by one session or the other, until the
    // first has left.
    let t0 = std::time::Instant::now();
    while !serving_a.is_finished() {
        assert!([1, 2].contains(&size(&hello)));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the first session never left"
        );
    }
    serving_a.join().unwrap().unwrap();
    let served_by_a = a.served.load(Ordering::Relaxed);
    assert_eq!(size(&hello), 2, "served by the adopting session");
    assert!(b.served.load(Ordering::Relaxed) > 0);
    assert_eq!(a.served.load(Ordering::Relaxed), served_by_a);
    // A request the second session does not serve still gets its answer.
    assert_eq!(
        std::fs::create_dir(mnt.join("d"))
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::ENOSYS)
    );
    // Unmounting ends the second session.
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: unmounts our own mount; `c` is a valid C string.
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0);
    serving_b.join().unwrap().unwrap();
}
