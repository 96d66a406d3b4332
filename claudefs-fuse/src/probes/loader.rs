//! Loading and attaching the probes: the layouts of the running kernel
//! (`layout`) into load-time globals, map sizing (the per-CPU maps to a
//! memory budget, the event ring to the size asked for, if any),
//! program load (verifier errors keep their log) and attach.
//!
//! Hooks come in two groups that load independently: FUSE requests
//! (`fuse/fuse_request_send|end`, Linux >= 6.12) and kernel-served flock
//! (`filelock/flock_lock_inode`, `signal/signal_deliver`). Each group is
//! attached as BTF tracepoints (`tp_btf`) when the kernel's BTF has the
//! hooks and the structure members the programs read (offsets looked up
//! in that BTF, no tracefs needed), else as classic tracepoints (offsets
//! from tracefs `format` files, tracefs mounted if needed), with a warning
//! saying which and why. A kernel without either group is an error.

use std::path::Path;

use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use claudefs_ebpf_common::{
    globals, map_names, program_names, FlockStats, OpStats, ProcStats, WaiterStats,
};

use crate::probes::btf::{Btf, SYS_BTF_DIR};
use crate::probes::error::ProbeError;
use crate::probes::layout::{
    flock_btf_globals, flock_classic_globals, fuse_btf_globals, fuse_classic_globals,
};
use crate::probes::snapshot::{AttachKind, AttachedProgram};
use crate::probes::tracefs::Tracefs;
use crate::probes::{ProbeOptions, ProbeSet};

/// Load-time globals: (name, value).
pub(crate) type Globals = Vec<(&'static str, u32)>;

/// The globals a group of programs needs, or why it cannot be used.
pub(crate) type Layout = Result<Globals, String>;

/// What [`load`] made.
pub(crate) struct Loaded {
    pub ebpf: Ebpf,
    pub warnings: Vec<String>,
    pub attached: Vec<AttachedProgram>,
    /// (hook, kind, program name) of each attached program.
    pub programs: Vec<(&'static str, AttachKind, &'static str)>,
    pub fuse_attach: Option<AttachKind>,
    pub flock_attach: Option<AttachKind>,
}

/// Reads the layouts, loads the object and attaches each group of hooks
/// `opts` asks for: BTF first, classic as the fallback. An error only when
/// no group could be attached. `event_ring_bytes` must have passed
/// [`check_event_ring_bytes`].
pub(crate) fn load(
    opts: &ProbeOptions,
    object: &[u8],
    event_ring_bytes: Option<u32>,
) -> Result<Loaded, ProbeError> {
    let mut warnings = Vec::new();
    let btf = if opts.classic_only {
        Err("classic tracepoints were asked for".to_string())
    } else {
        kernel_btf()
    };
    let (fuse_hooks, flock_hooks): (&[Hook], &[Hook]) = match opts.set {
        ProbeSet::All => (&FUSE_HOOKS, &FLOCK_HOOKS),
        ProbeSet::Fuse => (&FUSE_HOOKS, &[]),
        ProbeSet::Floor => (&FLOOR_HOOKS, &[]),
    };
    let from_btf = |f: fn(&Btf) -> Layout| match &btf {
        Ok(b) => f(&b.ours),
        Err(e) => Err(e.clone()),
    };
    let mut fuse_btf = from_btf(fuse_btf_globals);
    if fuse_btf.is_ok() && fuse_is_module() {
        fuse_btf = Err(
            "fuse is a kernel module here, and this loader attaches BTF \
                        tracepoints of the kernel image only"
                .to_string(),
        );
    }
    let flock_btf = from_btf(flock_btf_globals);

    // The classic layouts are read from a tracefs that is mounted (so a
    // BTF program the verifier refuses can still fall back); tracefs is
    // mounted only when a group cannot use BTF at all.
    let needs_classic = (!fuse_hooks.is_empty() && fuse_btf.is_err())
        || (!flock_hooks.is_empty() && flock_btf.is_err());
    let tfs: Result<Tracefs, String> = match Tracefs::find() {
        Some(t) => Ok(t),
        None if needs_classic => match Tracefs::find_or_mount() {
            Ok(t) => {
                let msg = format!(
                    "tracefs was not mounted; mounted it at {}",
                    t.root().display()
                );
                tracing::info!("{msg}");
                warnings.push(msg);
                Ok(t)
            }
            Err(e) => Err(e.to_string()),
        },
        None => Err(
            "tracefs is not mounted (and was not mounted: BTF tracepoints were \
                     expected to work)"
                .to_string(),
        ),
    };
    let from_tracefs = |f: fn(&Tracefs) -> Layout| match &tfs {
        Ok(t) => f(t),
        Err(e) => Err(e.clone()),
    };
    let fuse_classic = from_tracefs(fuse_classic_globals);
    let flock_classic = from_tracefs(flock_classic_globals);

    let mut all: Globals = vec![(globals::FUSE_FLOCKS, u32::from(opts.set == ProbeSet::All))];
    for g in [&fuse_btf, &flock_btf, &fuse_classic, &flock_classic]
        .into_iter()
        .flatten()
    {
        all.extend(g.iter().copied());
    }
    let aya_btf = btf.as_ref().ok().map(|b| &b.aya);
    let ebpf = load_object(object, &all, aya_btf, event_ring_bytes)?;

    let mut loaded = Loaded {
        ebpf,
        warnings,
        attached: Vec::new(),
        programs: Vec::new(),
        fuse_attach: None,
        flock_attach: None,
    };
    let mut reasons = Vec::new();
    let groups = [
        ("FUSE request", fuse_hooks, &fuse_btf, &fuse_classic),
        ("flock", flock_hooks, &flock_btf, &flock_classic),
    ];
    for (i, (what, hooks, btf_layout, classic_layout)) in groups.into_iter().enumerate() {
        let kind = attach_group(
            &mut loaded,
            (what, hooks),
            (btf_layout, aya_btf),
            classic_layout,
            opts.classic_only,
            &mut reasons,
        );
        if i == 0 {
            loaded.fuse_attach = kind;
        } else {
            loaded.flock_attach = kind;
        }
    }
    if loaded.fuse_attach.is_none() && loaded.flock_attach.is_none() {
        return Err(ProbeError::NoTracepoints {
            reasons: reasons.join("; "),
        });
    }
    Ok(loaded)
}

/// Attaches one group: BTF programs if their layout is there and they
/// load, else the classic ones; records what was attached, and warns of
/// a fallback or a group left out.
fn attach_group(
    loaded: &mut Loaded,
    (what, hooks): (&str, &[Hook]),
    (btf_layout, aya_btf): (&Layout, Option<&aya::Btf>),
    classic_layout: &Layout,
    classic_only: bool,
    reasons: &mut Vec<String>,
) -> Option<AttachKind> {
    if hooks.is_empty() {
        return None;
    }
    let mut kind = None;
    let why_not_btf = match (btf_layout, aya_btf) {
        (Ok(_), Some(b)) => match attach_btf(&mut loaded.ebpf, hooks, b) {
            Ok(()) => {
                kind = Some(AttachKind::Btf);
                None
            }
            Err(e) => {
                tracing::debug!("{what} BTF programs: {e}");
                Some(first_line(&e))
            }
        },
        (Err(e), _) => Some(e.clone()),
        (Ok(_), None) => Some("no kernel BTF".to_string()),
    };
    let has_classic = hooks[0].btf_program != hooks[0].tp_program;
    let mut why_not_classic = None;
    if kind.is_none() && has_classic {
        match classic_layout {
            Ok(_) => match attach_classic(&mut loaded.ebpf, hooks) {
                Ok(()) => kind = Some(AttachKind::Tracepoint),
                Err(e) => why_not_classic = Some(first_line(&e)),
            },
            Err(e) => why_not_classic = Some(e.clone()),
        }
    }
    match (kind, &why_not_btf) {
        (Some(AttachKind::Tracepoint), Some(why)) if !classic_only => loaded.warnings.push(
            format!("{what} probes use classic tracepoints (slower than BTF ones): {why}"),
        ),
        (None, _) => {
            let mut why = format!(
                "{what}: BTF tracepoints: {}",
                why_not_btf.clone().unwrap_or_default()
            );
            if let Some(c) = why_not_classic {
                why.push_str(&format!("; classic tracepoints: {c}"));
            }
            loaded.warnings.push(format!("probes unavailable: {why}"));
            reasons.push(why);
        }
        _ => {}
    }
    for hook in hooks {
        loaded.attached.push(AttachedProgram {
            hook: hook.name,
            kind,
        });
        if let Some(k) = kind {
            loaded.programs.push((hook.name, k, program_of(hook, k)));
        }
    }
    kind
}

/// The first line of a (possibly multi-line, verifier-log) error message.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Memory budget per per-CPU statistics map; on machines with many CPUs
/// the maps get fewer entries so each stays under it.
const PER_CPU_MAP_BUDGET: usize = 64 << 20;

/// One hook and its two programs.
#[derive(Debug)]
pub(crate) struct Hook {
    /// The tracepoint's name (`btf_trace_<name>` in BTF).
    pub name: &'static str,
    /// Its tracefs category, for the classic program.
    pub category: &'static str,
    pub btf_program: &'static str,
    pub tp_program: &'static str,
}

pub(crate) const FUSE_HOOKS: [Hook; 2] = [
    Hook {
        name: "fuse_request_send",
        category: "fuse",
        btf_program: program_names::FUSE_SEND_BTF,
        tp_program: program_names::FUSE_SEND_TP,
    },
    Hook {
        name: "fuse_request_end",
        category: "fuse",
        btf_program: program_names::FUSE_END_BTF,
        tp_program: program_names::FUSE_END_TP,
    },
];

pub(crate) const FLOCK_HOOKS: [Hook; 2] = [
    Hook {
        name: "flock_lock_inode",
        category: "filelock",
        btf_program: program_names::FLOCK_LOCK_INODE_BTF,
        tp_program: program_names::FLOCK_LOCK_INODE_TP,
    },
    Hook {
        name: "signal_deliver",
        category: "signal",
        btf_program: program_names::SIGNAL_DELIVER_BTF,
        tp_program: program_names::SIGNAL_DELIVER_TP,
    },
];

/// The floor of `bench_probes`: empty BTF programs on the FUSE hooks.
pub(crate) const FLOOR_HOOKS: [Hook; 2] = [
    Hook {
        name: "fuse_request_send",
        category: "fuse",
        btf_program: program_names::FLOOR_SEND_BTF,
        tp_program: program_names::FLOOR_SEND_BTF,
    },
    Hook {
        name: "fuse_request_end",
        category: "fuse",
        btf_program: program_names::FLOOR_END_BTF,
        tp_program: program_names::FLOOR_END_BTF,
    },
];

/// The kernel's BTF, for member offsets (ours) and for attaching (aya's).
pub(crate) struct KernelBtf {
    pub ours: Btf,
    pub aya: aya::Btf,
}

/// Reads the running kernel's BTF; `Err` says why it cannot be used.
pub(crate) fn kernel_btf() -> Result<KernelBtf, String> {
    let ours = Btf::running_kernel(Some("fuse")).map_err(|e| e.to_string())?;
    let aya = aya::Btf::from_sys_fs().map_err(|e| format!("cannot parse the kernel's BTF: {e}"))?;
    Ok(KernelBtf { ours, aya })
}

/// Whether fuse is a module here (it then has BTF of its own).
pub(crate) fn fuse_is_module() -> bool {
    Path::new(SYS_BTF_DIR).join("fuse").exists()
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

/// The page size of this machine (what an event ring's size is a
/// multiple of).
pub fn page_size() -> u32 {
    u32::try_from(rustix::param::page_size()).unwrap_or(4096)
}

/// Checks a requested event ring size: the kernel wants a power of two
/// that is a multiple of the page size (aya would silently round anything
/// else up, so a caller would not get the ring it asked for).
pub(crate) fn check_event_ring_bytes(bytes: u32, page_size: u32) -> Result<u32, ProbeError> {
    if bytes.is_power_of_two() && bytes.is_multiple_of(page_size) {
        return Ok(bytes);
    }
    Err(ProbeError::EventRingSize {
        bytes,
        page_size,
        suggested: bytes
            .max(page_size)
            .checked_next_power_of_two()
            .unwrap_or(1 << 31),
    })
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

/// Parses the object, sets the globals and creates the maps (the event
/// ring of `event_ring_bytes`, already checked by the caller with
/// [`check_event_ring_bytes`], or of the object's size).
pub(crate) fn load_object(
    object: &[u8],
    globals: &[(&'static str, u32)],
    btf: Option<&aya::Btf>,
    event_ring_bytes: Option<u32>,
) -> Result<Ebpf, ProbeError> {
    raise_memlock();
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    let mut loader = EbpfLoader::new();
    loader.btf(btf);
    for (name, value) in globals {
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
    if let Some(bytes) = event_ring_bytes {
        loader.map_max_entries(map_names::EVENTS, bytes);
    }
    loader.load(object).map_err(ProbeError::from_object)
}

/// Loads and attaches the BTF programs of `hooks`; on the first failure
/// the ones already attached are detached (the group falls back whole).
pub(crate) fn attach_btf(ebpf: &mut Ebpf, hooks: &[Hook], btf: &aya::Btf) -> Result<(), String> {
    let mut done: Vec<(&'static str, aya::programs::tp_btf::BtfTracePointLinkId)> = Vec::new();
    let mut result = Ok(());
    for hook in hooks {
        let attached = (|| -> Result<_, ProbeError> {
            let program = ebpf
                .program_mut(hook.btf_program)
                .ok_or(ProbeError::Missing {
                    what: "program",
                    name: hook.btf_program.to_string(),
                })?;
            let p: &mut BtfTracePoint = program
                .try_into()
                .map_err(|e| ProbeError::from_program(hook.btf_program, e))?;
            p.load(hook.name, btf)
                .map_err(|e| ProbeError::from_program(hook.btf_program, e))?;
            p.attach()
                .map_err(|e| ProbeError::from_program(hook.btf_program, e))
        })();
        match attached {
            Ok(link) => done.push((hook.btf_program, link)),
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    if result.is_err() {
        for (name, link) in done {
            if let Some(p) = ebpf.program_mut(name) {
                if let Ok(p) = <&mut BtfTracePoint>::try_from(p) {
                    let _ = p.detach(link);
                }
            }
        }
    }
    result
}

/// Loads and attaches the classic programs of `hooks` (all or none).
pub(crate) fn attach_classic(ebpf: &mut Ebpf, hooks: &[Hook]) -> Result<(), String> {
    let mut done: Vec<(&'static str, aya::programs::trace_point::TracePointLinkId)> = Vec::new();
    let mut result = Ok(());
    for hook in hooks {
        let attached = (|| -> Result<_, ProbeError> {
            let program = ebpf
                .program_mut(hook.tp_program)
                .ok_or(ProbeError::Missing {
                    what: "program",
                    name: hook.tp_program.to_string(),
                })?;
            let tp: &mut TracePoint = program
                .try_into()
                .map_err(|e| ProbeError::from_program(hook.tp_program, e))?;
            tp.load()
                .map_err(|e| ProbeError::from_program(hook.tp_program, e))?;
            tp.attach(hook.category, hook.name)
                .map_err(|e| ProbeError::from_program(hook.tp_program, e))
        })();
        match attached {
            Ok(link) => done.push((hook.tp_program, link)),
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    if result.is_err() {
        for (name, link) in done {
            if let Some(p) = ebpf.program_mut(name) {
                if let Ok(p) = <&mut TracePoint>::try_from(p) {
                    let _ = p.detach(link);
                }
            }
        }
    }
    result
}

/// The name of a hook's program for `kind`.
pub(crate) fn program_of(hook: &Hook, kind: AttachKind) -> &'static str {
    match kind {
        AttachKind::Btf => hook.btf_program,
        AttachKind::Tracepoint => hook.tp_program,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_entries_fit_the_budget() {
        assert_eq!(per_cpu_entries(1024, 544, 2), 1024);
        let many = per_cpu_entries(1024, 2600, 128);
        assert!((64..1024).contains(&many));
        assert!(many as usize * 2600 * 128 <= PER_CPU_MAP_BUDGET);
        assert_eq!(per_cpu_entries(1024, 1 << 20, 4096), 64, "floor");
        assert_eq!(per_cpu_entries(16, 8, 1), 64, "never below the floor");
    }

    #[test]
    fn event_ring_sizes_are_powers_of_two_of_whole_pages() {
        for (bytes, page) in [(4096, 4096), (8192, 4096), (8 << 20, 4096), (1 << 31, 4096)] {
            assert_eq!(
                check_event_ring_bytes(bytes, page).ok(),
                Some(bytes),
                "{bytes}"
            );
        }
        assert_eq!(check_event_ring_bytes(65536, 65536).ok(), Some(65536));
        for (bytes, page) in [
            (0, 4096),
            (2048, 4096),
            (12288, 4096),
            (5000, 4096),
            (8192, 65536),
            (u32::MAX, 4096),
        ] {
            let err = check_event_ring_bytes(bytes, page)
                .expect_err(&format!("{bytes} with pages of {page}"))
                .to_string();
            assert!(err.contains("event ring"), "{err}");
            assert!(err.contains(&format!("{bytes} bytes")), "{err}");
            assert!(err.contains("power of two"), "{err}");
            assert!(err.contains(&format!("page size ({page} bytes)")), "{err}");
        }
        let err = check_event_ring_bytes(5000, 4096).unwrap_err().to_string();
        assert!(err.contains("e.g. 8192"), "{err}");
    }
}
