//! Loading the probes in the probe tests: every program, attached the
//! way this kernel allows, or the test fails.

use std::path::Path;

use claudefs_fuse::probes::snapshot::AttachKind;
use claudefs_fuse::probes::{ProbeOptions, Probes};

/// [`load_probes_as`] on BTF tracepoints where the kernel allows.
pub fn load_probes() -> Probes {
    load_probes_as(false)
}

/// Loads every program, as classic tracepoints with `classic`; else as
/// BTF tracepoints wherever this kernel allows (which CI's does: a
/// fallback there is a regression, not a detail).
pub fn load_probes_as(classic: bool) -> Probes {
    let opts = ProbeOptions {
        classic_only: classic,
        ..Default::default()
    };
    let probes = Probes::load(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_attached_as_expected(&probes, classic);
    probes
}

/// Every program is attached, as classic tracepoints with `classic`, else
/// as BTF tracepoints where this kernel allows.
pub fn assert_attached_as_expected(probes: &Probes, classic: bool) {
    let attached = probes.attached_programs();
    let btf_here = Path::new("/sys/kernel/btf/vmlinux").exists()
        && !Path::new("/sys/kernel/btf/fuse").exists();
    let want = if classic {
        AttachKind::Tracepoint
    } else if btf_here {
        AttachKind::Btf
    } else {
        eprintln!("note: no BTF for fuse here; the classic fallback is expected");
        AttachKind::Tracepoint
    };
    assert!(
        attached.iter().all(|a| a.kind == Some(want)),
        "{attached:?} {:?}",
        probes.warnings()
    );
}
