//! Loading and attaching the probes: privilege check, tracefs, reading the
//! tracepoint layouts of the running kernel into load-time globals, map
//! sizing, program load (verifier errors keep their log) and attach.
//!
//! Tracepoints come in three groups that load independently: FUSE requests
//! (Linux >= 6.12), flock syscalls, and `filelock/flock_lock_inode` (device
//! attribution). A kernel without one group still gets the others, with a
//! warning; only a kernel with none of them is an error.

use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use claudefs_ebpf_common::{
    globals, map_names, program_names, FlockStats, OpStats, ProcStats, WaiterStats,
};

use crate::probes::error::ProbeError;
use crate::probes::tracefs::{Tracefs, TracepointFormat};

/// FUSE_SETLK / FUSE_SETLKW when the print fmt does not list them (the
/// numbers of `include/uapi/linux/fuse.h`).
const DEFAULT_OPCODE_SETLK: u32 = 32;
const DEFAULT_OPCODE_SETLKW: u32 = 33;

/// Memory budget per per-CPU statistics map; on machines with many CPUs
/// the maps get fewer entries so each stays under it.
const PER_CPU_MAP_BUDGET: usize = 64 << 20;

/// What the running kernel offers, read from tracefs.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    /// (global name, value) to set at load.
    pub globals: Vec<(&'static str, u32)>,
    pub fuse: bool,
    pub flock: bool,
    pub lock_inode: bool,
    /// Opcode number -> name, from the print fmt of `fuse_request_send`.
    pub opcode_names: Vec<(u32, String)>,
}

/// One program and the tracepoint it attaches to.
pub(crate) struct ProgramSpec {
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
}

pub(crate) const FUSE_PROGRAMS: [ProgramSpec; 2] = [
    ProgramSpec {
        program: program_names::FUSE_REQUEST_SEND,
        category: "fuse",
        tracepoint: "fuse_request_send",
    },
    ProgramSpec {
        program: program_names::FUSE_REQUEST_END,
        category: "fuse",
        tracepoint: "fuse_request_end",
    },
];

pub(crate) const FLOCK_PROGRAMS: [ProgramSpec; 2] = [
    ProgramSpec {
        program: program_names::SYS_ENTER_FLOCK,
        category: "syscalls",
        tracepoint: "sys_enter_flock",
    },
    ProgramSpec {
        program: program_names::SYS_EXIT_FLOCK,
        category: "syscalls",
        tracepoint: "sys_exit_flock",
    },
];

pub(crate) const LOCK_INODE_PROGRAM: ProgramSpec = ProgramSpec {
    program: program_names::FLOCK_LOCK_INODE,
    category: "filelock",
    tracepoint: "flock_lock_inode",
};

/// Reads every layout the probes need. Missing tracepoints and unexpected
/// layouts turn into warnings and a disabled group.
pub(crate) fn read_layout(tfs: &Tracefs, warnings: &mut Vec<String>) -> Result<Layout, ProbeError> {
    let mut layout = Layout::default();

    let send = tfs.format("fuse", "fuse_request_send")?;
    let end = tfs.format("fuse", "fuse_request_end")?;
    match (send, end) {
        (Some(send), Some(end)) => match fuse_globals(&send, &end, warnings) {
            Ok(g) => {
                layout.globals.extend(g);
                layout.opcode_names = send
                    .symbolic("opcode")
                    .into_iter()
                    .filter_map(|(v, n)| u32::try_from(v).ok().map(|v| (v, n)))
                    .collect();
                layout.fuse = true;
            }
            Err(e) => warnings.push(format!("per-op FUSE data unavailable: {e}")),
        },
        _ => warnings.push(
            "this kernel has no fuse/fuse_request_send and fuse_request_end tracepoints \
             (they need Linux >= 6.12): per-op FUSE data is unavailable, flock data still works"
                .to_string(),
        ),
    }

    let enter = tfs.format("syscalls", "sys_enter_flock")?;
    let exit = tfs.format("syscalls", "sys_exit_flock")?;
    match (enter, exit) {
        (Some(enter), Some(exit)) => match flock_globals(&enter, &exit) {
            Ok(g) => {
                layout.globals.extend(g);
                layout.flock = true;
            }
            Err(e) => warnings.push(format!("flock data unavailable: {e}")),
        },
        _ => warnings.push(
            "this kernel has no syscalls/sys_enter_flock and sys_exit_flock tracepoints \
             (CONFIG_FTRACE_SYSCALLS): flock data is unavailable"
                .to_string(),
        ),
    }

    if layout.flock {
        match tfs.format("filelock", "flock_lock_inode")? {
            Some(f) => match f.require("s_dev", &[4]) {
                Ok(dev) => {
                    layout
                        .globals
                        .push((globals::LOCK_INODE_DEV_OFF, dev.offset));
                    layout.lock_inode = true;
                }
                Err(e) => warnings.push(format!("flock device attribution unavailable: {e}")),
            },
            None => warnings.push(
                "no filelock/flock_lock_inode tracepoint: flocks the kernel serves itself \
                 are reported as local instead of per device"
                    .to_string(),
            ),
        }
    }
    Ok(layout)
}

fn fuse_globals(
    send: &TracepointFormat,
    end: &TracepointFormat,
    warnings: &mut Vec<String>,
) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let mut opcode = |label: &str, default: u32| match send.symbol_value("opcode", label) {
        Some(v) => u32::try_from(v).unwrap_or(default),
        None => {
            warnings.push(format!(
                "{label} is not in the print fmt of fuse_request_send; assuming {default}"
            ));
            default
        }
    };
    let setlk = opcode("FUSE_SETLK", DEFAULT_OPCODE_SETLK);
    let setlkw = opcode("FUSE_SETLKW", DEFAULT_OPCODE_SETLKW);
    Ok(vec![
        (
            globals::SEND_CONN_OFF,
            send.require("connection", &[4])?.offset,
        ),
        (
            globals::SEND_UNIQUE_OFF,
            send.require("unique", &[8])?.offset,
        ),
        (
            globals::SEND_OPCODE_OFF,
            send.require("opcode", &[4])?.offset,
        ),
        (globals::SEND_LEN_OFF, send.require("len", &[4])?.offset),
        (
            globals::END_CONN_OFF,
            end.require("connection", &[4])?.offset,
        ),
        (globals::END_UNIQUE_OFF, end.require("unique", &[8])?.offset),
        (globals::END_LEN_OFF, end.require("len", &[4])?.offset),
        (globals::END_ERROR_OFF, end.require("error", &[4])?.offset),
        (globals::OPCODE_SETLK, setlk),
        (globals::OPCODE_SETLKW, setlkw),
    ])
}

fn flock_globals(
    enter: &TracepointFormat,
    exit: &TracepointFormat,
) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    // Syscall arguments are 8-byte slots on 64-bit kernels; the programs
    // read the low 4 bytes (little endian), right for both sizes.
    let ret = exit.require("ret", &[4, 8])?;
    Ok(vec![
        (globals::FLOCK_FD_OFF, enter.require("fd", &[4, 8])?.offset),
        (
            globals::FLOCK_CMD_OFF,
            enter.require("cmd", &[4, 8])?.offset,
        ),
        (globals::FLOCK_RET_OFF, ret.offset),
        (globals::FLOCK_RET_IS_32, u32::from(ret.size == 4)),
    ])
}

/// Entries of a per-CPU map so that `entries * value_size * cpus` stays
/// within the budget, never more than `default` nor fewer than 64.
pub fn per_cpu_entries(default: u32, value_size: usize, cpus: usize) -> u32 {
    let per_entry = value_size.max(1).saturating_mul(cpus.max(1));
    let fit = PER_CPU_MAP_BUDGET / per_entry;
    u32::try_from(fit)
        .unwrap_or(u32::MAX)
        .clamp(64, default.max(64))
}

/// Tries to lift RLIMIT_MEMLOCK for kernels that still charge BPF memory
/// to it; failure is expected (and harmless) on memcg-charging kernels.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `rlim` is a valid rlimit for the duration of the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if rc != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels that charge BPF maps to memcg",
            std::io::Error::last_os_error()
        );
    }
}

/// Parses the object, sets the globals and creates the maps.
pub(crate) fn load_object(object: &[u8], layout: &Layout) -> Result<Ebpf, ProbeError> {
    raise_memlock();
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    let mut loader = EbpfLoader::new();
    for (name, value) in &layout.globals {
        loader.override_global(name, value, true);
    }
    loader
        .map_max_entries(
            map_names::OP_STATS,
            per_cpu_entries(1024, size_of::<OpStats>(), cpus),
        )
        .map_max_entries(
            map_names::PROC_STATS,
            per_cpu_entries(4096, size_of::<ProcStats>(), cpus),
        )
        .map_max_entries(
            map_names::FLOCK_STATS,
            per_cpu_entries(256, size_of::<FlockStats>(), cpus),
        )
        .map_max_entries(
            map_names::FLOCK_WAITERS,
            per_cpu_entries(1024, size_of::<WaiterStats>(), cpus),
        );
    loader.load(object).map_err(ProbeError::from_object)
}

/// Loads and attaches one program. `Ok(false)` when the tracepoint vanished
/// between reading its format and attaching (reported as a warning).
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    warnings: &mut Vec<String>,
) -> Result<bool, ProbeError> {
    let missing = || ProbeError::Missing {
        what: "program",
        name: spec.program.to_string(),
    };
    let program = ebpf.program_mut(spec.program).ok_or_else(missing)?;
    let tp: &mut TracePoint = program
        .try_into()
        .map_err(|e| ProbeError::from_program(spec.program, e))?;
    tp.load()
        .map_err(|e| ProbeError::from_program(spec.program, e))?;
    match tp.attach(spec.category, spec.tracepoint) {
        Ok(_link) => Ok(true),
        Err(e) => {
            warnings.push(format!(
                "could not attach {} to {}/{}: {e}",
                spec.program, spec.category, spec.tracepoint
            ));
            Ok(false)
        }
    }
}

/// Forwards aya-log records from the probes to `tracing`.
pub(crate) struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "claudefs_ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "claudefs_ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "claudefs_ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "claudefs_ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "claudefs_ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_entries_fit_the_budget() {
        assert_eq!(per_cpu_entries(1024, 544, 2), 1024);
        let many = per_cpu_entries(1024, 544, 512);
        assert!((64..1024).contains(&many));
        assert!(many as usize * 544 * 512 <= PER_CPU_MAP_BUDGET);
        assert_eq!(per_cpu_entries(1024, 1 << 20, 4096), 64, "floor");
        assert_eq!(per_cpu_entries(16, 8, 1), 64, "never below the floor");
    }

    #[test]
    fn layout_from_a_fake_tracefs() {
        let dir = tempfile::tempdir().unwrap();
        let write = |cat: &str, name: &str, body: &str| {
            let d = dir.path().join("events").join(cat).join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("format"), body).unwrap();
        };
        let common = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                      \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
                      \tfield:unsigned char common_extra;\toffset:8;\tsize:1;\tsigned:0;\n";
        write(
            "syscalls",
            "sys_enter_flock",
            &format!(
                "name: sys_enter_flock\nID: 1\nformat:\n{common}\
                 \tfield:int __syscall_nr;\toffset:12;\tsize:4;\tsigned:1;\n\
                 \tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
                 \tfield:unsigned int cmd;\toffset:24;\tsize:8;\tsigned:0;\n\nprint fmt: \"\"\n"
            ),
        );
        write(
            "syscalls",
            "sys_exit_flock",
            &format!(
                "name: sys_exit_flock\nID: 2\nformat:\n{common}\
                 \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n\nprint fmt: \"\"\n"
            ),
        );
        let tfs = Tracefs::at(dir.path());
        let mut warnings = Vec::new();
        let layout = read_layout(&tfs, &mut warnings).unwrap();
        assert!(!layout.fuse && layout.flock && !layout.lock_inode);
        assert!(warnings.iter().any(|w| w.contains("6.12")), "{warnings:?}");
        assert!(
            warnings.iter().any(|w| w.contains("flock_lock_inode")),
            "{warnings:?}"
        );
        let get = |n: &str| {
            layout
                .globals
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| *v)
        };
        assert_eq!(get(globals::FLOCK_FD_OFF), Some(16));
        assert_eq!(get(globals::FLOCK_CMD_OFF), Some(24));
        assert_eq!(get(globals::FLOCK_RET_IS_32), Some(0));
        assert_eq!(get(globals::SEND_CONN_OFF), None);
    }

    #[test]
    fn layout_of_the_running_kernel() {
        // Read-only and harmless; skipped where tracefs is not mounted.
        let root = std::path::Path::new(crate::probes::tracefs::DEFAULT_TRACEFS);
        if !root.join("events/fuse/fuse_request_send/format").exists() {
            eprintln!(
                "skipped: no readable fuse tracepoints under {}",
                root.display()
            );
            return;
        }
        let mut warnings = Vec::new();
        let layout = read_layout(&Tracefs::at(root), &mut warnings).unwrap();
        assert!(layout.fuse, "{warnings:?}");
        let get = |n: &str| {
            layout
                .globals
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| *v)
        };
        assert_eq!(get(globals::OPCODE_SETLK), Some(32));
        assert_eq!(get(globals::OPCODE_SETLKW), Some(33));
        assert!(layout
            .opcode_names
            .iter()
            .any(|(v, n)| *v == 1 && n == "FUSE_LOOKUP"));
    }
}
