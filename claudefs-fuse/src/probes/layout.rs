//! The layouts the programs read, as load-time globals: member offsets of
//! `struct fuse_req`, `struct inode`, `struct file_lock` from the kernel's
//! BTF (for the `tp_btf` programs), and field offsets of the tracepoint
//! records from tracefs (for the classic fallback). Each group's layout is
//! either complete or an error saying why the group cannot use it.

use claudefs_ebpf_common::globals;

use crate::probes::btf::{Btf, BtfError};
use crate::probes::loader::{Layout, FLOCK_HOOKS, FUSE_HOOKS};
use crate::probes::tracefs::{Tracefs, TracepointFormat};

/// FUSE_SETLK / FUSE_SETLKW when neither BTF nor the print fmt lists them
/// (the numbers of `include/uapi/linux/fuse.h`).
const DEFAULT_OPCODE_SETLK: u32 = 32;
const DEFAULT_OPCODE_SETLKW: u32 = 33;

/// `struct fuse_lk_in` member offsets of the uapi, for a kernel whose BTF
/// lacks the struct (its layout is ABI: `fh`, `owner`, `lk {start, end,
/// type, pid}`, `lk_flags`).
const UAPI_LK_IN_TYPE_OFF: u32 = 32;
const UAPI_LK_IN_FLAGS_OFF: u32 = 40;

/// Offsets the FUSE programs read, from BTF.
pub(crate) fn fuse_btf_globals(btf: &Btf) -> Layout {
    for hook in &FUSE_HOOKS {
        if !btf.has_typedef(&format!("btf_trace_{}", hook.name)) {
            return Err(format!(
                "the kernel's BTF has no {} tracepoint (Linux >= 6.12, with fuse built in)",
                hook.name
            ));
        }
    }
    let f = |ty: &str, path: &str, sizes: &[u32]| -> Result<u32, String> {
        let field = btf.field(ty, path).map_err(|e| e.to_string())?;
        if !sizes.contains(&field.size) {
            return Err(format!(
                "{ty}.{path} is {} bytes, expected {sizes:?}",
                field.size
            ));
        }
        Ok(field.offset)
    };
    // The lock request's argument: from BTF when the struct is there, else
    // the uapi layout.
    let lk = |path: &str, uapi: u32| match btf.field("fuse_lk_in", path) {
        Ok(field) if field.size == 4 => Ok(field.offset),
        Ok(field) => Err(format!(
            "fuse_lk_in.{path} is {} bytes, expected 4",
            field.size
        )),
        Err(BtfError::NoStruct(_)) => Ok(uapi),
        Err(e) => Err(e.to_string()),
    };
    let (setlk, setlkw) = opcode_numbers(btf.enum_values("fuse_opcode").unwrap_or_default());
    Ok(vec![
        (globals::REQ_FM_OFF, f("fuse_req", "fm", &[8])?),
        (globals::FM_FC_OFF, f("fuse_mount", "fc", &[8])?),
        (globals::FC_DEV_OFF, f("fuse_conn", "dev", &[4])?),
        (globals::REQ_IN_LEN_OFF, f("fuse_req", "in.h.len", &[4])?),
        (
            globals::REQ_IN_OPCODE_OFF,
            f("fuse_req", "in.h.opcode", &[4])?,
        ),
        (
            globals::REQ_IN_UNIQUE_OFF,
            f("fuse_req", "in.h.unique", &[8])?,
        ),
        (
            globals::REQ_IN_NODEID_OFF,
            f("fuse_req", "in.h.nodeid", &[8])?,
        ),
        (globals::REQ_OUT_LEN_OFF, f("fuse_req", "out.h.len", &[4])?),
        (
            globals::REQ_OUT_ERROR_OFF,
            f("fuse_req", "out.h.error", &[4])?,
        ),
        (globals::REQ_ARGS_OFF, f("fuse_req", "args", &[8])?),
        (
            globals::ARGS_IN0_VALUE_OFF,
            f("fuse_args", "in_args[0].value", &[8])?,
        ),
        (globals::LK_IN_TYPE_OFF, lk("lk.type", UAPI_LK_IN_TYPE_OFF)?),
        (
            globals::LK_IN_FLAGS_OFF,
            lk("lk_flags", UAPI_LK_IN_FLAGS_OFF)?,
        ),
        (globals::OPCODE_SETLK, setlk),
        (globals::OPCODE_SETLKW, setlkw),
    ])
}

/// Offsets the flock programs read, from BTF.
pub(crate) fn flock_btf_globals(btf: &Btf) -> Layout {
    for hook in &FLOCK_HOOKS {
        if !btf.has_typedef(&format!("btf_trace_{}", hook.name)) {
            return Err(format!("the kernel's BTF has no {} tracepoint", hook.name));
        }
    }
    let f = |ty: &str, path: &str, sizes: &[u32]| -> Result<u32, String> {
        let field = btf.field(ty, path).map_err(|e| e.to_string())?;
        if !sizes.contains(&field.size) {
            return Err(format!(
                "{ty}.{path} is {} bytes, expected {sizes:?}",
                field.size
            ));
        }
        Ok(field.offset)
    };
    Ok(vec![
        (globals::INODE_INO_OFF, f("inode", "i_ino", &[8])?),
        (globals::INODE_SB_OFF, f("inode", "i_sb", &[8])?),
        (globals::SB_DEV_OFF, f("super_block", "s_dev", &[4])?),
        (globals::FL_FLAGS_OFF, f("file_lock", "c.flc_flags", &[4])?),
        (globals::FL_TYPE_OFF, f("file_lock", "c.flc_type", &[1])?),
    ])
}

/// FUSE_SETLK and FUSE_SETLKW from an opcode table, else the uapi numbers.
fn opcode_numbers(table: Vec<(i64, String)>) -> (u32, u32) {
    let find = |label: &str, default: u32| {
        table
            .iter()
            .find(|(_, n)| n == label)
            .and_then(|(v, _)| u32::try_from(*v).ok())
            .unwrap_or(default)
    };
    (
        find("FUSE_SETLK", DEFAULT_OPCODE_SETLK),
        find("FUSE_SETLKW", DEFAULT_OPCODE_SETLKW),
    )
}

/// Offsets the classic FUSE programs read, from tracefs.
pub(crate) fn fuse_classic_globals(tfs: &Tracefs) -> Layout {
    let send = tfs
        .format("fuse", "fuse_request_send")
        .map_err(|e| e.to_string())?;
    let end = tfs
        .format("fuse", "fuse_request_end")
        .map_err(|e| e.to_string())?;
    let (Some(send), Some(end)) = (send, end) else {
        return Err(
            "this kernel has no fuse/fuse_request_send and fuse_request_end \
                    tracepoints (they need Linux >= 6.12)"
                .to_string(),
        );
    };
    let (setlk, setlkw) = opcode_numbers(
        send.symbolic("opcode")
            .into_iter()
            .filter_map(|(v, n)| i64::try_from(v).ok().map(|v| (v, n)))
            .collect(),
    );
    let off = |f: &TracepointFormat, name: &str, sizes: &[u32]| {
        f.require(name, sizes)
            .map(|x| x.offset)
            .map_err(|e| e.to_string())
    };
    Ok(vec![
        (globals::SEND_CONN_OFF, off(&send, "connection", &[4])?),
        (globals::SEND_UNIQUE_OFF, off(&send, "unique", &[8])?),
        (globals::SEND_OPCODE_OFF, off(&send, "opcode", &[4])?),
        (globals::SEND_LEN_OFF, off(&send, "len", &[4])?),
        (globals::END_CONN_OFF, off(&end, "connection", &[4])?),
        (globals::END_UNIQUE_OFF, off(&end, "unique", &[8])?),
        (globals::END_LEN_OFF, off(&end, "len", &[4])?),
        (globals::END_ERROR_OFF, off(&end, "error", &[4])?),
        (globals::OPCODE_SETLK, setlk),
        (globals::OPCODE_SETLKW, setlkw),
    ])
}

/// Offsets the classic flock programs read, from tracefs.
pub(crate) fn flock_classic_globals(tfs: &Tracefs) -> Layout {
    let lock = tfs
        .format("filelock", "flock_lock_inode")
        .map_err(|e| e.to_string())?
        .ok_or("this kernel has no filelock/flock_lock_inode tracepoint")?;
    if tfs
        .format("signal", "signal_deliver")
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err("this kernel has no signal/signal_deliver tracepoint".to_string());
    }
    let off = |name: &str, sizes: &[u32]| {
        lock.require(name, sizes)
            .map(|x| x.offset)
            .map_err(|e| e.to_string())
    };
    Ok(vec![
        (globals::LOCK_INODE_INO_OFF, off("i_ino", &[8])?),
        (globals::LOCK_INODE_DEV_OFF, off("s_dev", &[4])?),
        (globals::LOCK_INODE_FLAGS_OFF, off("flags", &[4])?),
        (globals::LOCK_INODE_TYPE_OFF, off("type", &[1])?),
        (globals::LOCK_INODE_RET_OFF, off("ret", &[4])?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tracefs() -> (tempfile::TempDir, Tracefs) {
        let dir = tempfile::tempdir().unwrap();
        let write = |cat: &str, name: &str, body: &str| {
            let d = dir.path().join("events").join(cat).join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("format"), body).unwrap();
        };
        let common = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                      \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n";
        write(
            "filelock",
            "flock_lock_inode",
            &format!(
                "name: flock_lock_inode\nID: 1\nformat:\n{common}\
                 \tfield:struct file_lock * fl;\toffset:8;\tsize:8;\tsigned:0;\n\
                 \tfield:unsigned long i_ino;\toffset:16;\tsize:8;\tsigned:0;\n\
                 \tfield:dev_t s_dev;\toffset:24;\tsize:4;\tsigned:0;\n\
                 \tfield:unsigned int flags;\toffset:52;\tsize:4;\tsigned:0;\n\
                 \tfield:unsigned char type;\toffset:56;\tsize:1;\tsigned:0;\n\
                 \tfield:int ret;\toffset:80;\tsize:4;\tsigned:1;\n\nprint fmt: \"\"\n"
            ),
        );
        let tfs = Tracefs::at(dir.path());
        (dir, tfs)
    }

    fn get(globals: &[(&'static str, u32)], n: &str) -> Option<u32> {
        globals.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
    }

    #[test]
    fn classic_layouts_from_a_fake_tracefs() {
        let (dir, tfs) = fake_tracefs();
        // No signal_deliver yet: the flock group is unavailable, and says why.
        let e = flock_classic_globals(&tfs).unwrap_err();
        assert!(e.contains("signal_deliver"), "{e}");
        let d = dir.path().join("events/signal/signal_deliver");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("format"),
            "name: signal_deliver\nID: 2\nformat:\n\
             \tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n\nprint fmt: \"\"\n",
        )
        .unwrap();
        let g = flock_classic_globals(&tfs).unwrap();
        assert_eq!(get(&g, globals::LOCK_INODE_INO_OFF), Some(16));
        assert_eq!(get(&g, globals::LOCK_INODE_DEV_OFF), Some(24));
        assert_eq!(get(&g, globals::LOCK_INODE_TYPE_OFF), Some(56));
        assert_eq!(get(&g, globals::LOCK_INODE_RET_OFF), Some(80));
        // No fuse tracepoints: a clear reason naming the kernel version.
        let e = fuse_classic_globals(&tfs).unwrap_err();
        assert!(e.contains("6.12"), "{e}");
    }

    #[test]
    fn opcode_numbers_default_to_the_uapi() {
        assert_eq!(opcode_numbers(Vec::new()), (32, 33));
        assert_eq!(
            opcode_numbers(vec![(40, "FUSE_SETLK".into()), (41, "FUSE_SETLKW".into())]),
            (40, 41)
        );
    }

    #[test]
    fn layouts_of_the_running_kernel() {
        // Read-only and harmless; skipped where the kernel has no BTF.
        let Ok(btf) = Btf::running_kernel(Some("fuse")) else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        match fuse_btf_globals(&btf) {
            Ok(g) => {
                assert_eq!(get(&g, globals::OPCODE_SETLK), Some(32));
                assert_eq!(get(&g, globals::OPCODE_SETLKW), Some(33));
                // in.h: len, opcode, unique, nodeid (uapi order).
                let len = get(&g, globals::REQ_IN_LEN_OFF).unwrap();
                assert_eq!(get(&g, globals::REQ_IN_OPCODE_OFF), Some(len + 4));
                assert_eq!(get(&g, globals::REQ_IN_UNIQUE_OFF), Some(len + 8));
                assert_eq!(get(&g, globals::REQ_IN_NODEID_OFF), Some(len + 16));
            }
            Err(e) => eprintln!("skipped the FUSE part: {e}"),
        }
        let g = flock_btf_globals(&btf).unwrap();
        assert!(get(&g, globals::FL_TYPE_OFF).is_some());
    }
}
