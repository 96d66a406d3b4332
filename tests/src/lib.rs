//! Helpers for the end-to-end tests: [`testfs`] (a counting FUSE file
//! system behind a mount guard) and [`require_privileges`], which decides
//! whether a privileged test can run here.

pub mod testfs;

/// Whether this environment can mount FUSE and load eBPF probes. Outside
/// CI a test that cannot run prints why and returns early; in CI
/// (`CI=true`) it must run, so a missing prerequisite fails it.
pub fn require_privileges(test: &str) -> bool {
    let reason = if !is_root() {
        Some("not running as root")
    } else if !std::path::Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is missing")
    } else {
        None
    };
    match reason {
        None => true,
        Some(why) if in_ci() => panic!("{test}: cannot run in CI: {why}"),
        Some(why) => {
            eprintln!("skipping {test}: {why} (root and /dev/fuse are needed)");
            false
        }
    }
}

/// `CI` is set to `true` (GitHub Actions, GitLab and most CI systems).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `stat(2)` through libc (not `std::fs::metadata`, which uses statx and
/// may send FUSE_STATX); the errno on failure.
pub fn stat(path: &std::path::Path) -> Result<(), i32> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: `st` is plain data the call fills; `c` is a valid C string.
    let rc = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::stat(c.as_ptr(), &mut st)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}
