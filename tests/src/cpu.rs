//! CPU time the benchmarks spend per operation, split into the two sides
//! of a FUSE round trip: the loop's own processes (the application: its
//! system call, the kernel's FUSE client, waiting and waking) and the
//! daemon's process tree (reading the request, serving it, answering).
//!
//! The daemon's share comes from `/proc/PID/task/TID/schedstat` (time on
//! CPU in ns, every thread of the process and of its descendants, so a
//! keeper's server counts too); the loop's from getrusage(2) of this
//! process or of its waited-for children. Both are exact run times, not
//! tick samples.
//!
//! Also the CPUs a test may run on and pinning a thread to one of them
//! (the kernel's FUSE io_uring queue is the one of the caller's CPU).

use std::fs;

/// `roots` and every process descended from them that runs now.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for &(child, ppid) in &parent_of {
            if ppid == p && !out.contains(&child) {
                out.push(child);
            }
        }
        i += 1;
    }
    out
}

/// The fields of a `/proc/PID/stat` line after the command name, which is
/// in parentheses and may hold spaces and parentheses itself: the state
/// first.
fn fields_after_name(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// The parent pid in a `/proc/PID/stat` line (the field after the state).
fn parse_ppid(stat: &str) -> Option<u32> {
    fields_after_name(stat)?.nth(1)?.parse().ok()
}

/// Whether process `pid` runs: it exists and is not a zombie.
pub fn runs(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| fields_after_name(&s)?.next().map(|state| state != "Z"))
        .unwrap_or(false)
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data the call fills; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Time on CPU of every thread of `pids`, ns (threads or processes gone
/// meanwhile count no more).
pub fn run_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            total += fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// User and system clock ticks of `pids` (`/proc/PID/stat`, every thread
/// the process ever had). Ticks are samples, not run times: they give the
/// share of user time in [`run_ns`], summed over long enough.
pub fn ticks(pids: &[u32]) -> (u64, u64) {
    let mut out = (0, 0);
    for pid in pids {
        let Some(stat) = fs::read_to_string(format!("/proc/{pid}/stat")).ok() else {
            continue;
        };
        if let Some((u, s)) = parse_times(&stat) {
            out.0 += u;
            out.1 += s;
        }
    }
    out
}

/// utime and stime of a `/proc/PID/stat` line (fields 14 and 15).
fn parse_times(stat: &str) -> Option<(u64, u64)> {
    let mut rest = fields_after_name(stat)?.skip(11);
    Some((rest.next()?.parse().ok()?, rest.next()?.parse().ok()?))
}

/// Whose getrusage(2) [`used_ns`] reads.
#[derive(Clone, Copy)]
pub enum Who {
    /// This process.
    Me,
    /// Its children that were waited for.
    Children,
}

/// User + system time of `who`, ns.
pub fn used_ns(who: Who) -> u64 {
    let w = match who {
        Who::Me => libc::RUSAGE_SELF,
        Who::Children => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: rusage is plain data, filled in by the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a pointer to a live rusage.
    if unsafe { libc::getrusage(w, &mut ru) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_pid_follows_a_name_with_spaces_and_parentheses() {
        assert_eq!(
            parse_ppid("4242 (cfs (ring) 0) S 17 4242 4242 0 -1"),
            Some(17)
        );
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn user_and_system_ticks_are_fields_14_and_15() {
        let line = "7 (a b) R 1 7 7 0 -1 4194304 100 0 0 0 31 9 0 0 20 0 1 0 5";
        assert_eq!(parse_times(line), Some((31, 9)));
        assert_eq!(parse_times("7 (short) R 1"), None);
    }

    #[test]
    fn a_child_process_and_its_cpu_time_are_found() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .unwrap();
        let me = std::process::id();
        let t0 = std::time::Instant::now();
        // Until the busy loop has shown up as CPU time of the tree.
        let mut seen = 0;
        while t0.elapsed() < std::time::Duration::from_secs(5) {
            let pids = tree(&[me]);
            assert!(pids.contains(&child.id()), "{pids:?} lacks the child");
            seen = run_ns(&[child.id()]);
            if seen > 1_000_000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(seen > 1_000_000, "the child's busy loop ran {seen} ns");
        assert!(used_ns(Who::Children) > 0, "a waited-for child used no CPU");
        assert!(!runs(child.id()), "a reaped child still runs");
        assert!(runs(std::process::id()));
    }
}
