//! The mount table (`/proc/self/mountinfo`) and the device numbers that tie
//! it to what the probes record.
//!
//! Tracepoints report a FUSE connection as the kernel's internal `dev_t`
//! (`MAJOR << 20 | MINOR`), which is the `st_dev` of the mounted super block:
//! the `major:minor` field of a mountinfo line. Userspace `st_dev` uses the
//! glibc encoding instead; [`super::dev`] converts between the two.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use super::dev::{format_dev, kernel_dev};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    /// Kernel `dev_t` of the mounted super block; for a FUSE mount, the
    /// connection id the tracepoints report.
    pub dev: u32,
    /// The directory of the file system mounted here (`/` unless a bind
    /// mount of a subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub mount_options: String,
    /// File system type, with the FUSE subtype if any (`fuse.sshfs`).
    pub fstype: String,
    /// Mount source (`user@host:/dir`, `/dev/sda1`, `none`).
    pub source: String,
    /// Per-super-block options.
    pub super_options: String,
}

impl MountEntry {
    /// Whether this mount is served over a FUSE connection (`fuse`,
    /// `fuse.<subtype>`, `fuseblk`, `fuseblk.<subtype>`, `virtiofs`).
    pub fn is_fuse(&self) -> bool {
        let base = self.fstype.split('.').next().unwrap_or("");
        matches!(base, "fuse" | "fuseblk" | "virtiofs")
    }

    /// `"major:minor"` of [`MountEntry::dev`].
    pub fn dev_string(&self) -> String {
        format_dev(self.dev)
    }
}

/// Why a line of mountinfo could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {reason}")]
pub struct MountinfoError {
    /// 1-based line number.
    pub line: usize,
    pub reason: &'static str,
}

/// A parsed mount table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    entries: Vec<MountEntry>,
    /// Mounts of an earlier read that are gone (see
    /// [`MountTable::with_departed`]).
    departed: Vec<MountEntry>,
}

impl MountTable {
    /// A table of these entries, in mount order (later entries are mounted
    /// on top of earlier ones).
    pub fn from_entries(entries: Vec<MountEntry>) -> Self {
        Self {
            entries,
            departed: Vec::new(),
        }
    }

    /// Parses mountinfo text, skipping lines it cannot read.
    pub fn parse(text: &str) -> Self {
        Self::parse_lossy(text).0
    }

    /// Parses mountinfo text; returns the table of the lines it could read
    /// and an error for each line it could not.
    pub fn parse_lossy(text: &str) -> (Self, Vec<MountinfoError>) {
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line) {
                Ok(entry) => entries.push(entry),
                Err(reason) => errors.push(MountinfoError {
                    line: i + 1,
                    reason,
                }),
            }
        }
        (Self::from_entries(entries), errors)
    }

    /// Reads `/proc/self/mountinfo`.
    pub fn read_self() -> io::Result<Self> {
        Self::read(Path::new("/proc/self/mountinfo"))
    }

    /// Reads a mountinfo file.
    pub fn read(path: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// This table, remembering the mounts of an `earlier` read whose device
    /// is no longer mounted, so connections that went away during a
    /// collection can still be named (read once before and once after
    /// collecting). Departed mounts are found by [`MountTable::by_dev`] only
    /// (after the current ones); they are not in [`MountTable::entries`].
    pub fn with_departed(mut self, earlier: &MountTable) -> Self {
        let departed: Vec<MountEntry> = earlier
            .entries
            .iter()
            .chain(&earlier.departed)
            .filter(|old| self.by_dev(old.dev).is_none())
            .cloned()
            .collect();
        self.departed.extend(departed);
        self
    }

    /// Whether a mount of this kernel `dev_t` is in the current table.
    pub fn is_mounted(&self, dev: u32) -> bool {
        self.entries.iter().any(|e| e.dev == dev)
    }

    /// Mounts remembered by [`MountTable::with_departed`].
    pub fn departed(&self) -> &[MountEntry] {
        &self.departed
    }

    pub fn entries(&self) -> &[MountEntry] {
        &self.entries
    }

    /// The FUSE mounts, in mount order.
    pub fn fuse_mounts(&self) -> impl Iterator<Item = &MountEntry> {
        self.entries.iter().filter(|e| e.is_fuse())
    }

    /// The mount of a kernel `dev_t` (a FUSE connection id). When one file
    /// system is mounted several times (bind mounts), prefers a mount of its
    /// root directory, then the first in mount order.
    pub fn by_dev(&self, dev: u32) -> Option<&MountEntry> {
        Self::by_dev_in(&self.entries, dev).or_else(|| Self::by_dev_in(&self.departed, dev))
    }

    fn by_dev_in(entries: &[MountEntry], dev: u32) -> Option<&MountEntry> {
        let mut same_dev = entries.iter().filter(|e| e.dev == dev);
        let first = same_dev.next()?;
        if first.root == Path::new("/") {
            return Some(first);
        }
        Some(same_dev.find(|e| e.root == Path::new("/")).unwrap_or(first))
    }

    /// The mount at exactly `mount_point` (the one on top when several
    /// share it).
    pub fn mounted_at(&self, mount_point: &Path) -> Option<&MountEntry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.mount_point == mount_point)
    }

    /// The mount whose mount point is the longest prefix of `path`, judged
    /// on the path's text alone (no file system access, so a hung FUSE
    /// mount cannot block it; symbolic links are not followed). A relative
    /// path is taken relative to `/`. When two mounts share a mount point,
    /// the later one (on top) wins.
    pub fn containing_lexical(&self, path: &Path) -> Option<&MountEntry> {
        let path = normalize_lexically(path);
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| path.starts_with(&e.mount_point))
            .max_by_key(|(i, e)| (e.mount_point.components().count(), *i))
            .map(|(_, e)| e)
    }

    /// The mount that holds `path`, for `--mount PATH`. A relative path is
    /// taken relative to the current directory. The text of the path is
    /// tried first ([`MountTable::containing_lexical`]); only if that does
    /// not land on a FUSE mount is the path resolved through symbolic links
    /// (`realpath`), so naming a hung FUSE mount directly does not block.
    pub fn resolve(&self, path: &Path) -> io::Result<&MountEntry> {
        let absolute = std::path::absolute(path)?;
        if let Some(entry) = self.containing_lexical(&absolute) {
            if entry.is_fuse() {
                return Ok(entry);
            }
        }
        let real = std::fs::canonicalize(&absolute)?;
        self.containing_lexical(&real).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no mount in the mount table holds {}", real.display()),
            )
        })
    }
}

impl fmt::Display for MountEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}, dev {})",
            self.mount_point.display(),
            self.fstype,
            self.source,
            self.dev_string()
        )
    }
}

/// `path` made absolute against `/` with `.` and `..` removed as text.
fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
        }
    }
    out
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash) the kernel writes in mountinfo fields. A backslash not
/// followed by three octal digits is kept as is.
pub fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_octal(field)))
}

fn unescape_string(field: &str) -> String {
    String::from_utf8_lossy(&unescape_octal(field)).into_owned()
}

/// Parses one mountinfo line:
/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn parse_line(line: &str) -> Result<MountEntry, &'static str> {
    // Fields are separated by single spaces; a field may be empty (a mount
    // source given as ""), so do not collapse runs of spaces.
    let fields: Vec<&str> = line.trim_end_matches(['\n', '\r']).split(' ').collect();
    let separator = fields
        .iter()
        .skip(6)
        .position(|f| *f == "-")
        .map(|p| p + 6)
        .ok_or("no ' - ' separator after the optional fields")?;
    if separator < 6 {
        return Err("fewer than six fields before the separator");
    }
    let tail = &fields[separator + 1..];
    if tail.len() < 2 {
        return Err("missing file system type or source after ' - '");
    }
    let mount_id = fields[0].parse().map_err(|_| "mount id is not a number")?;
    let parent_id = fields[1].parse().map_err(|_| "parent id is not a number")?;
    let (major, minor) = fields[2]
        .split_once(':')
        .ok_or("device is not major:minor")?;
    let major = major.parse().map_err(|_| "major is not a number")?;
    let minor = minor.parse().map_err(|_| "minor is not a number")?;
    let dev = kernel_dev(major, minor).ok_or("major:minor too wide for a kernel dev_t")?;
    Ok(MountEntry {
        mount_id,
        parent_id,
        dev,
        root: unescape_path(fields[3]),
        mount_point: unescape_path(fields[4]),
        mount_options: unescape_string(fields[5]),
        fstype: unescape_string(tail[0]),
        source: unescape_string(tail[1]),
        super_options: tail.get(2).map(|s| unescape_string(s)).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
36 27 0:53 / /mnt/remote\\040data rw,nosuid,nodev,relatime shared:12 master:3 - fuse.sshfs alice@db1:/srv/data rw,user_id=0,group_id=0
37 27 0:54 /sub /mnt/bound rw,relatime - fuse.bindfs /tmp/src rw,user_id=0
38 27 0:55 / /mnt/plain rw,relatime shared:7 - fuse /dev/fuse rw
39 27 8:17 / /mnt/ntfs rw,relatime - fuseblk /dev/sdb1 rw
40 27 0:56 / /mnt/tab\\011and\\134slash rw - tmpfs  rw
41 27 0:57 / /mnt/bound rw,relatime - tmpfs tmpfs rw
";

    #[test]
    fn parses_fields_escapes_and_optional_fields() {
        let (table, errors) = MountTable::parse_lossy(SAMPLE);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(table.entries().len(), 8);

        let sshfs = &table.entries()[2];
        assert_eq!(sshfs.mount_id, 36);
        assert_eq!(sshfs.parent_id, 27);
        assert_eq!(sshfs.dev, 53);
        assert_eq!(sshfs.mount_point, Path::new("/mnt/remote data"));
        assert_eq!(sshfs.fstype, "fuse.sshfs");
        assert_eq!(sshfs.source, "alice@db1:/srv/data");
        assert_eq!(sshfs.mount_options, "rw,nosuid,nodev,relatime");
        assert_eq!(sshfs.super_options, "rw,user_id=0,group_id=0");
        assert!(sshfs.is_fuse());

        let bound = &table.entries()[3];
        assert_eq!(bound.root, Path::new("/sub"));
        assert_eq!(bound.fstype, "fuse.bindfs");

        let escaped = &table.entries()[6];
        assert_eq!(escaped.mount_point, Path::new("/mnt/tab\tand\\slash"));
        assert_eq!(escaped.source, "", "an empty source field is kept");
        assert_eq!(escaped.super_options, "rw");
        assert!(!escaped.is_fuse());
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let text = "garbage\n\
                    1 2 x:y / /a rw - ext4 /dev/a rw\n\
                    1 2 0:1 / /b rw shared:1\n\
                    1 2 0:1 / /c rw - ext4\n\
                    1 2 5000:1 / /d rw - ext4 /dev/d rw\n\
                    3 4 0:9 / /ok rw - ext4 /dev/ok rw\n";
        let (table, errors) = MountTable::parse_lossy(text);
        assert_eq!(table.entries().len(), 1);
        assert_eq!(table.entries()[0].mount_point, Path::new("/ok"));
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5]);
        assert_eq!(MountTable::parse("").entries().len(), 0);
    }

    #[test]
    fn octal_unescape_edge_cases() {
        assert_eq!(unescape_octal(r"a\040b"), b"a b");
        assert_eq!(unescape_octal(r"\134"), b"\\");
        assert_eq!(unescape_octal(r"end\04"), b"end\\04");
        assert_eq!(unescape_octal(r"\08x"), b"\\08x");
        assert_eq!(unescape_octal(r"\777"), b"\\777", "not a byte: kept");
        assert_eq!(unescape_octal(r"\\"), b"\\\\");
        assert_eq!(unescape_octal("\\"), b"\\");
        assert_eq!(unescape_octal(r"\303\251"), "é".as_bytes());
    }

    #[test]
    fn fuse_kinds() {
        let table = MountTable::parse(SAMPLE);
        let fuse: Vec<&str> = table.fuse_mounts().map(|e| e.fstype.as_str()).collect();
        assert_eq!(fuse, vec!["fuse.sshfs", "fuse.bindfs", "fuse", "fuseblk"]);
        let mut virtiofs = table.entries()[0].clone();
        virtiofs.fstype = "virtiofs".into();
        assert!(virtiofs.is_fuse());
        virtiofs.fstype = "fusectl".into();
        assert!(!virtiofs.is_fuse());
    }

    #[test]
    fn conn_lookup_uses_kernel_encoding() {
        let table = MountTable::parse(SAMPLE);
        let ntfs = table.by_dev((8 << 20) | 17).expect("8:17");
        assert_eq!(ntfs.mount_point, Path::new("/mnt/ntfs"));
        assert_eq!(ntfs.dev_string(), "8:17");
        // The userspace encoding of 8:17 is 0x811, which is not a mount.
        assert!(table.by_dev(0x811).is_none());
        assert_eq!(
            table.by_dev(53).map(|e| e.fstype.as_str()),
            Some("fuse.sshfs")
        );
    }

    #[test]
    fn departed_mounts_are_kept_but_never_shadow_current_ones() {
        let before = MountTable::parse(
            "1 0 0:60 / /mnt/gone rw - fuse.a src rw\n2 0 0:61 / /mnt/old rw - fuse.b s rw\n",
        );
        let after = MountTable::parse("3 0 0:61 / /mnt/new rw - fuse.c s rw\n");
        let merged = after.with_departed(&before);
        assert_eq!(merged.entries().len(), 1);
        assert_eq!(merged.departed().len(), 1);
        assert!(!merged.is_mounted(60) && merged.is_mounted(61));
        assert_eq!(
            merged.fuse_mounts().count(),
            1,
            "departed mounts are not listed"
        );
        assert_eq!(
            merged.by_dev(60).unwrap().mount_point,
            Path::new("/mnt/gone")
        );
        assert_eq!(
            merged.by_dev(61).unwrap().mount_point,
            Path::new("/mnt/new")
        );
    }

    #[test]
    fn by_dev_prefers_a_mount_of_the_root() {
        let text = "1 0 0:60 /sub /mnt/a rw - fuse.x src rw\n\
                    2 0 0:60 / /mnt/b rw - fuse.x src rw\n\
                    3 0 0:60 / /mnt/c rw - fuse.x src rw\n";
        let table = MountTable::parse(text);
        assert_eq!(table.by_dev(60).unwrap().mount_point, Path::new("/mnt/b"));
    }

    #[test]
    fn st_dev_of_a_real_file_matches_mountinfo() {
        use std::os::unix::fs::MetadataExt;
        let table = MountTable::read_self().expect("read /proc/self/mountinfo");
        let dir = tempfile::tempdir().unwrap();
        let st_dev = std::fs::metadata(dir.path()).unwrap().dev();
        let dev = crate::probes::dev::kernel_dev_from_user(st_dev).unwrap();
        let by_path = table.resolve(dir.path()).unwrap();
        assert_eq!(by_path.dev, dev, "{by_path}");
    }

    #[test]
    fn containing_picks_the_longest_prefix_and_the_top_mount() {
        let table = MountTable::parse(SAMPLE);
        let at = |p: &str| table.containing_lexical(Path::new(p)).map(|e| e.mount_id);
        assert_eq!(at("/mnt/remote data/x/y"), Some(36));
        assert_eq!(at("/mnt/remote data"), Some(36));
        assert_eq!(
            at("/mnt/remote"),
            Some(27),
            "a prefix of a name is not a parent"
        );
        assert_eq!(at("/mnt/remote data/../plain/f"), Some(38));
        assert_eq!(at("/mnt/bound/f"), Some(41), "the later mount is on top");
        assert_eq!(at("relative/path"), Some(27));
        assert_eq!(at("/proc/1"), Some(22));
        assert!(MountTable::default()
            .containing_lexical(Path::new("/"))
            .is_none());
    }

    #[test]
    fn resolve_follows_symlinks_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let fuse_dir = base.join("fusemnt");
        std::fs::create_dir(&fuse_dir).unwrap();
        std::fs::write(fuse_dir.join("file"), b"").unwrap();
        std::os::unix::fs::symlink(&fuse_dir, base.join("link")).unwrap();
        let text = format!(
            "1 0 254:0 / / rw - ext4 /dev/vda rw\n2 1 0:70 / {} rw - fuse.test src rw\n",
            fuse_dir.display()
        );
        let table = MountTable::parse(&text);
        assert_eq!(table.resolve(&base.join("link/file")).unwrap().dev, 70);
        // Lexically on the FUSE mount: found without touching the path,
        // even though it does not exist.
        assert_eq!(table.resolve(&fuse_dir.join("missing")).unwrap().dev, 70);
        assert!(table.resolve(&base.join("missing/x")).is_err());
    }
}
