//! Unit tests of the core (`ops.rs`) over a temporary storage directory.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::daemon::config::IdMapSpec;
use crate::daemon::inodes::ROOT_INO;
use crate::multipath::LoadBalancePolicy;

/// A core over one storage path, the directory `d`.
fn core_over(d: &Path) -> Core {
    let root = StorageRoot::open(d).unwrap();
    let root_ino = root.stat(Path::new("")).unwrap().st_ino;
    let router = Router::new(
        LoadBalancePolicy::RoundRobin,
        vec![(root, 100, "a".into())],
        root_ino,
    )
    .unwrap();
    let idmap = IdMap::from_spec(&IdMapSpec::Identity).unwrap();
    Core::new(Arc::new(router), root_ino, idmap, None)
}

fn create(core: &Core, name: &str, data: &[u8]) -> (FileAttr, u64) {
    let cx = Served::default();
    let (attr, fh, _) = core
        .create(
            &cx,
            ROOT_INO,
            OsStr::new(name),
            0o644,
            libc::O_RDWR,
            0,
            0,
            1,
        )
        .unwrap();
    assert_eq!(core.write(&cx, fh, 0, data), Ok(data.len()));
    (attr, fh)
}

fn chmod(core: &Core, ino: u64, mode: u32) -> SysResult<FileAttr> {
    let cx = Served::default();
    core.setattr(&cx, ino, None, Some(mode), None, None, None, None, None)
}

#[test]
fn a_file_unlinked_while_open_is_reached_through_its_handle() {
    let d = tempfile::tempdir().unwrap();
    let core = core_over(d.path());
    let cx = Served::default();
    let (attr, fh) = create(&core, "f", b"hello");
    assert_eq!(core.getattr(&cx, attr.ino, None).unwrap().nlink, 1);
    core.unlink(&cx, ROOT_INO, OsStr::new("f"), false).unwrap();
    // GETATTR without a handle (what fstat sends): the open file's own
    // attributes, as fstat on Linux.
    let a = core.getattr(&cx, attr.ino, None).unwrap();
    assert_eq!((a.nlink, a.size, a.ino), (0, 5, attr.ino));
    // SETATTR without a handle (fchmod, fchown, futimens) and a truncate.
    assert_eq!(chmod(&core, attr.ino, 0o600).unwrap().perm, 0o600);
    let a = core
        .setattr(
            &cx,
            attr.ino,
            None,
            None,
            Some(7),
            Some(8),
            Some(2),
            None,
            None,
        )
        .unwrap();
    assert_eq!((a.nlink, a.size, a.uid, a.gid), (0, 2, 7, 8));
    assert_eq!(core.read(&cx, fh, 0, 100).unwrap(), b"he");
    // A file made later under the same name is another file.
    let (other, ofh) = create(&core, "f", b"new file");
    assert_ne!(other.ino, attr.ino);
    assert_eq!(core.getattr(&cx, attr.ino, None).unwrap().size, 2);
    assert_eq!(chmod(&core, attr.ino, 0o640).unwrap().perm, 0o640);
    let st = std::fs::metadata(d.path().join("f")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!((st.len(), st.permissions().mode() & 0o7777), (8, 0o644));
    // Once closed, nothing reaches it any more.
    core.release(fh);
    assert_eq!(core.getattr(&cx, attr.ino, None).err(), Some(libc::ENOENT));
    assert_eq!(chmod(&core, attr.ino, 0o600).err(), Some(libc::ENOENT));
    core.release(ofh);
}

#[test]
fn a_file_renamed_over_or_replaced_behind_the_mount_keeps_its_attributes() {
    let d = tempfile::tempdir().unwrap();
    let core = core_over(d.path());
    let cx = Served::default();
    let (a, afh) = create(&core, "a", b"aaaa");
    let (b, bfh) = create(&core, "b", b"bb");
    core.rename(&cx, ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("a"), 0)
        .unwrap();
    let got = core.getattr(&cx, a.ino, None).unwrap();
    assert_eq!((got.nlink, got.size), (0, 4));
    assert_eq!(chmod(&core, a.ino, 0o600).unwrap().perm, 0o600);
    let now_a = core.getattr(&cx, b.ino, None).unwrap();
    assert_eq!((now_a.nlink, now_a.size, now_a.perm), (1, 2, 0o644));

    // Replaced on the storage behind the daemon's back (another client):
    // the name now holds another file, which getattr does not report.
    let (c, cfh) = create(&core, "c", b"ccc");
    std::fs::remove_file(d.path().join("c")).unwrap();
    std::fs::write(d.path().join("c"), b"someone else's").unwrap();
    let got = core.getattr(&cx, c.ino, None).unwrap();
    assert_eq!((got.ino, got.nlink, got.size), (c.ino, 0, 3));
    for fh in [afh, bfh, cfh] {
        core.release(fh);
    }
}
