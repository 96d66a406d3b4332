//! `/proc` look-ups the loader needs: the effective capabilities (to fail
//! early with a clear message), and the names the report shows — a
//! process's `comm` and the file behind one of its fds — resolved while the
//! process is still alive and cached.

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

/// The target of `/proc/PID/fd/FD` (a path, or e.g. `socket:[123]`).
pub fn read_fd_path(tgid: u32, fd: u32) -> Option<String> {
    let p = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
    Some(p.to_string_lossy().into_owned())
}

/// Cached process names and fd paths, bounded so a long run with many
/// short-lived processes cannot grow it without limit.
#[derive(Debug, Default)]
pub struct NameCache {
    comms: HashMap<u32, String>,
    fd_paths: HashMap<(u32, u32), String>,
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

    /// Re-reads `/proc/tgid/fd/fd` (fd numbers get reused) and caches it.
    pub fn refresh_fd(&mut self, tgid: u32, fd: u32) {
        if let Some(p) = read_fd_path(tgid, fd) {
            if self.fd_paths.len() < MAX_ENTRIES || self.fd_paths.contains_key(&(tgid, fd)) {
                self.fd_paths.insert((tgid, fd), p);
            }
        }
    }

    /// Resolves the fd once if it is not cached yet.
    pub fn resolve_fd(&mut self, tgid: u32, fd: u32) {
        if !self.fd_paths.contains_key(&(tgid, fd)) {
            self.refresh_fd(tgid, fd);
        }
    }

    pub fn comm(&self, tgid: u32) -> Option<&str> {
        self.comms.get(&tgid).map(String::as_str)
    }

    pub fn fd_path(&self, tgid: u32, fd: u32) -> Option<&str> {
        self.fd_paths.get(&(tgid, fd)).map(String::as_str)
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
        let f = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd() as u32;
        cache.resolve_fd(me, fd);
        assert!(cache
            .fd_path(me, fd)
            .is_some_and(|p| p.ends_with("/status")));
        assert!(cache.fd_path(me, 99_999).is_none());
    }
}
