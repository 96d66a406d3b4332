//! `/proc` look-ups the loader needs: the effective capabilities (to fail
//! early with a clear message), and the names the report shows — a
//! process's `comm`, and the descriptor and path of a file a flock waiter
//! waited on (found by device and inode among its fds) — resolved while
//! the process is still alive and cached.

use std::collections::HashMap;

/// Capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The `CapEff:` mask of a `/proc/PID/status` text.
pub fn effective_caps(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let hex = l.strip_prefix("CapEff:")?.trim();
        u64::from_str_radix(hex, 16).ok()
    })
}

/// Capabilities missing to load and attach tracing programs, given an
/// effective mask. CAP_SYS_ADMIN alone suffices (kernels before 5.8 have
/// no CAP_BPF/CAP_PERFMON); otherwise both CAP_BPF and CAP_PERFMON.
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Missing capabilities of this process; empty if unknown (the kernel will
/// then say EPERM itself, which the loader also turns into a clear error).
pub fn missing_caps_of_self() -> Vec<&'static str> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
        .map(missing_caps)
        .unwrap_or_default()
}

/// `/proc/PID/comm` without the newline.
pub fn read_comm(tgid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{tgid}/comm")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// Descriptors looked at per process when finding a waiter's file.
const MAX_FDS_SCANNED: usize = 4096;

/// A file a flock waiter waited on: the process, the device it is on (the
/// `st_dev` userspace sees) and the inode number (or, `fuse`, the FUSE
/// node id, which may differ from the `st_ino` the daemon reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaiterFile {
    pub tgid: u32,
    pub dev: libc::dev_t,
    pub ino: u64,
    pub fuse: bool,
}

/// The descriptor of `f.tgid` open on that file, and its path: an fd whose
/// target has that device and inode; for a FUSE file whose node id matches
/// no `st_ino`, the process's only fd on that device.
pub fn find_waiter_fd(f: &WaiterFile) -> Option<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let dir = format!("/proc/{}/fd", f.tgid);
    let mut on_device = Vec::new();
    for entry in std::fs::read_dir(&dir).ok()?.take(MAX_FDS_SCANNED) {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // stat follows the link to the open file itself.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if meta.dev() != f.dev {
            continue;
        }
        let path = || {
            std::fs::read_link(entry.path())
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        };
        if meta.ino() == f.ino {
            return path().map(|p| (fd, p));
        }
        if f.fuse {
            on_device.push((fd, path()));
        }
    }
    match on_device.as_slice() {
        [(fd, Some(p))] => Some((*fd, p.clone())),
        _ => None,
    }
}

/// Cached process names and waiters' files, bounded so a long run with
/// many short-lived processes cannot grow it without limit.
#[derive(Debug, Default)]
pub struct NameCache {
    comms: HashMap<u32, String>,
    files: HashMap<WaiterFile, (u32, String)>,
}

/// Entries per table before new ones are no longer cached.
const MAX_ENTRIES: usize = 65_536;

impl NameCache {
    /// Resolves and caches the comm of `tgid` once.
    pub fn resolve_comm(&mut self, tgid: u32) {
        if self.comms.contains_key(&tgid) || self.comms.len() >= MAX_ENTRIES {
            return;
        }
        if let Some(c) = read_comm(tgid) {
            self.comms.insert(tgid, c);
        }
    }

    /// Finds and caches the descriptor and path of a waiter's file, unless
    /// already found.
    pub fn resolve_file(&mut self, f: &WaiterFile) {
        if self.files.contains_key(f) || self.files.len() >= MAX_ENTRIES {
            return;
        }
        if let Some(found) = find_waiter_fd(f) {
            self.files.insert(*f, found);
        }
    }

    pub fn comm(&self, tgid: u32) -> Option<&str> {
        self.comms.get(&tgid).map(String::as_str)
    }

    /// The waiter's descriptor and its path, if found.
    pub fn file(&self, f: &WaiterFile) -> Option<(u32, &str)> {
        self.files.get(f).map(|(fd, p)| (*fd, p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn decides_missing_caps() {
        assert!(missing_caps(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_caps(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn resolves_own_process() {
        let me = std::process::id();
        let mut cache = NameCache::default();
        cache.resolve_comm(me);
        assert!(cache.comm(me).is_some_and(|c| !c.is_empty()));
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockfile");
        let f = std::fs::File::create(&path).unwrap();
        let meta = f.metadata().unwrap();
        let wf = WaiterFile {
            tgid: me,
            dev: meta.dev(),
            ino: meta.ino(),
            fuse: false,
        };
        cache.resolve_file(&wf);
        let (fd, p) = cache.file(&wf).unwrap();
        assert_eq!(fd, f.as_raw_fd() as u32);
        assert!(p.ends_with("/lockfile"), "{p}");
        // An inode this process has no descriptor of.
        let other = WaiterFile {
            ino: meta.ino() + 1_000_000,
            ..wf
        };
        cache.resolve_file(&other);
        assert!(cache.file(&other).is_none());
        // A FUSE node id matching no st_ino: with two of our fds on the
        // device, which one is meant stays unknown.
        let _second = std::fs::File::create(dir.path().join("other")).unwrap();
        let fuse = WaiterFile {
            fuse: true,
            ..other
        };
        assert_eq!(find_waiter_fd(&fuse), None);
    }
}
