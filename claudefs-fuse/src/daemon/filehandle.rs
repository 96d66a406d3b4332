//! A node's storage identity that survives renames: the storage file
//! system's file handle (`name_to_handle_at`), kept in the journal next to
//! the path, so that a restarted server finds a file renamed on storage
//! while no server ran (`open_by_handle_at`, which needs
//! CAP_DAC_READ_SEARCH; a storage without export handles, such as most
//! FUSE file systems, has none and its nodes go by path alone).
//!
//! A handle is written as `TYPE:HEX` (the handle type and its bytes).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::storage::{with_cpath, StorageRoot};

/// Largest handle the kernel hands out (`MAX_HANDLE_SZ`).
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct Handle {
    bytes: libc::c_uint,
    typ: libc::c_int,
    data: [u8; MAX_HANDLE_SZ],
}

impl Handle {
    fn empty() -> Self {
        Self {
            bytes: MAX_HANDLE_SZ as libc::c_uint,
            typ: 0,
            data: [0; MAX_HANDLE_SZ],
        }
    }
}

/// The handle of `rel` under `root` (not following a last symlink), if the
/// storage gives one.
pub fn handle_of(root: &StorageRoot, rel: &Path) -> Option<String> {
    let mut h = Handle::empty();
    let mut mount_id: libc::c_int = 0;
    let r = with_cpath(rel, |c| {
        // SAFETY: valid dirfd and C string; `h` is a `file_handle` whose
        // `handle_bytes` says how much room follows it.
        Ok(unsafe {
            libc::name_to_handle_at(
                root.as_raw_fd(),
                c.as_ptr(),
                (&mut h as *mut Handle).cast(),
                &mut mount_id,
                0,
            )
        })
    })
    .ok()?;
    if r != 0 || h.bytes as usize > MAX_HANDLE_SZ {
        return None;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let data = &h.data[..h.bytes as usize];
    let mut out = String::with_capacity(12 + 2 * data.len());
    out.push_str(itoa::Buffer::new().format(h.typ));
    out.push(':');
    for &b in data {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Some(out)
}

fn parse(text: &str) -> Option<Handle> {
    let (typ, hex) = text.split_once(':')?;
    if hex.len() % 2 != 0 || hex.len() / 2 > MAX_HANDLE_SZ {
        return None;
    }
    let mut h = Handle::empty();
    h.typ = typ.parse().ok()?;
    h.bytes = (hex.len() / 2) as libc::c_uint;
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        h.data[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(h)
}

/// Where the file of `handle` is under `root` now: its path relative to
/// the root and its `st_ino`; `None` if it is gone, unlinked, outside the
/// root, or the handle cannot be opened (no privilege, no export support).
pub fn find(root: &StorageRoot, handle: &str) -> Option<(PathBuf, u64)> {
    let mut h = parse(handle)?;
    // The mount fd may not be an O_PATH one (the root's is).
    // SAFETY: valid dirfd and C string; the fd is checked.
    let mount = unsafe {
        libc::openat(
            root.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if mount < 0 {
        return None;
    }
    // SAFETY: a freshly opened fd we own.
    let mount = unsafe { OwnedFd::from_raw_fd(mount) };
    // SAFETY: `h` is a well-formed `file_handle`; the fd is checked.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut h as *mut Handle).cast(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a freshly opened fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = super::storage::fstat(fd.as_raw_fd()).ok()?;
    if st.st_nlink == 0 {
        return None;
    }
    let at = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let base = std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd())).ok()?;
    let rel = at.strip_prefix(&base).ok()?.to_path_buf();
    Some((rel, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_finds_its_file_after_a_rename_and_not_after_an_unlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a"), b"x").unwrap();
        let root = StorageRoot::open(dir.path()).unwrap();
        let Some(h) = handle_of(&root, Path::new("d/a")) else {
            eprintln!("skipping: no export handles on {}", dir.path().display());
            return;
        };
        let ino = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(dir.path().join("d/a")).unwrap(),
        );
        let (typ, hex) = h.split_once(':').unwrap();
        assert!(typ.parse::<i32>().is_ok(), "{h}");
        assert!(
            hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{h}"
        );
        assert_eq!(
            parse(&h).map(|p| p.bytes),
            Some(((h.len() - h.find(':').unwrap() - 1) / 2) as u32)
        );
        std::fs::create_dir(dir.path().join("e")).unwrap();
        std::fs::rename(dir.path().join("d/a"), dir.path().join("e/b")).unwrap();
        // Only root may open by handle.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(find(&root, &h), None);
            return;
        }
        assert_eq!(find(&root, &h), Some((PathBuf::from("e/b"), ino)));
        std::fs::remove_file(dir.path().join("e/b")).unwrap();
        assert_eq!(find(&root, &h), None);
        assert!(find(&root, "garbage").is_none());
        assert!(find(&root, "1:abc").is_none());
    }
}
