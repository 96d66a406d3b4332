//! tracefs: finding (or mounting) it and parsing tracepoint `format` files,
//! so the probes read each field at the offset the running kernel reports
//! instead of a hard-coded one (kernels differ: some add `common_*` fields
//! that shift the rest).
//!
//! A format file looks like:
//!
//! ```text
//! name: fuse_request_send
//! ID: 1293
//! format:
//!     field:unsigned short common_type;    offset:0;    size:2;    signed:0;
//!     ...
//!     field:dev_t connection;    offset:8;    size:4;    signed:0;
//!
//! print fmt: "connection %u ...", REC->connection, __print_symbolic(REC->opcode, {1, "FUSE_LOOKUP"}, ...)
//! ```

use std::ffi::CString;
use std::path::{Path, PathBuf};

use claudefs_ebpf_common::RECORD_BYTES;

use crate::probes::error::ProbeError;

/// Where tracefs is normally mounted, and where the loader mounts it.
pub const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";
/// Where debugfs exposes it on older setups.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// A usable tracefs mount.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
    /// The loader mounted it (it was missing).
    pub mounted_by_us: bool,
}

impl Tracefs {
    /// A tracefs rooted at `root` (for tests and callers that know better).
    pub fn at(root: impl Into<PathBuf>) -> Tracefs {
        Tracefs {
            root: root.into(),
            mounted_by_us: false,
        }
    }

    /// A mounted tracefs, if there is one (nothing is mounted).
    pub fn find() -> Option<Tracefs> {
        find_mounted().map(Tracefs::at)
    }

    /// Finds a mounted tracefs, or mounts one at [`DEFAULT_TRACEFS`].
    pub fn find_or_mount() -> Result<Tracefs, ProbeError> {
        if let Some(root) = find_mounted() {
            return Ok(Tracefs::at(root));
        }
        mount_tracefs(Path::new(DEFAULT_TRACEFS))?;
        Ok(Tracefs {
            root: PathBuf::from(DEFAULT_TRACEFS),
            mounted_by_us: true,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and parses `events/<category>/<name>/format`. `Ok(None)` when
    /// the kernel has no such tracepoint.
    pub fn format(
        &self,
        category: &str,
        name: &str,
    ) -> Result<Option<TracepointFormat>, ProbeError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        match std::fs::read_to_string(&path) {
            Ok(text) => TracepointFormat::parse(category, name, &text)
                .map(Some)
                .map_err(|reason| ProbeError::TracepointFormat {
                    category: category.to_string(),
                    name: name.to_string(),
                    reason,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ProbeError::TracepointFormat {
                category: category.to_string(),
                name: name.to_string(),
                reason: format!("reading {}: {e}", path.display()),
            }),
        }
    }
}

/// A tracefs that has an `events` directory: from mountinfo first, then
/// the two well-known paths (debugfs automounts its `tracing` on access).
fn find_mounted() -> Option<PathBuf> {
    let from_mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .map(|text| tracefs_mounts(&text))
        .unwrap_or_default();
    from_mountinfo
        .into_iter()
        .chain([
            PathBuf::from(DEFAULT_TRACEFS),
            PathBuf::from(DEBUGFS_TRACING),
        ])
        .find(|root| root.join("events").is_dir())
}

/// Mount points of every tracefs in a mountinfo text, the default first.
pub fn tracefs_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            if fstype != "tracefs" {
                return None;
            }
            let mount_point = left.split_whitespace().nth(4)?;
            Some(PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect();
    found.sort_by_key(|p| p != Path::new(DEFAULT_TRACEFS));
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            // Three octal digits that fit a byte (at most \377).
            if oct[0] <= b'3' && oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct.iter().fold(0u8, |acc, b| (acc << 3) | (b - b'0'));
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_tracefs(target: &Path) -> Result<(), ProbeError> {
    mount_pseudo_fs(c"tracefs", target).map_err(|source| ProbeError::TracefsUnavailable {
        path: target.to_path_buf(),
        source,
    })
}

/// Mounts a kernel pseudo file system (`tracefs`, `fusectl`) of type
/// `fstype` at `target` (nosuid, nodev, noexec).
pub(crate) fn mount_pseudo_fs(fstype: &std::ffi::CStr, target: &Path) -> std::io::Result<()> {
    let c_target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive
    // the call; `data` may be NULL for these file systems.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldFormat {
    pub name: String,
    /// The C declaration without the name (`unsigned int`, `dev_t` ...).
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A parsed tracepoint format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointFormat {
    pub category: String,
    pub name: String,
    pub id: Option<u32>,
    pub fields: Vec<FieldFormat>,
    /// Everything after `print fmt: `.
    pub print_fmt: String,
}

impl TracepointFormat {
    /// Parses the text of a format file.
    pub fn parse(category: &str, name: &str, text: &str) -> Result<TracepointFormat, String> {
        let mut id = None;
        let mut fields = Vec::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(rest) = trimmed.strip_prefix("ID:") {
                id = rest.trim().parse().ok();
            } else if let Some(rest) = trimmed.strip_prefix("print fmt:") {
                print_fmt = rest.trim().to_string();
            } else if trimmed.starts_with("field:") {
                fields.push(parse_field_line(trimmed)?);
            }
        }
        if fields.is_empty() {
            return Err("no fields in the format file".to_string());
        }
        Ok(TracepointFormat {
            category: category.to_string(),
            name: name.to_string(),
            id,
            fields,
            print_fmt,
        })
    }

    pub fn field(&self, name: &str) -> Option<&FieldFormat> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The field `name`, which must have one of `sizes`, be naturally
    /// aligned and end within the first [`RECORD_BYTES`] bytes of the record
    /// (what the probes copy); an actionable error otherwise.
    pub fn require(&self, name: &str, sizes: &[u32]) -> Result<&FieldFormat, ProbeError> {
        let err = |reason: String| ProbeError::TracepointFormat {
            category: self.category.clone(),
            name: self.name.clone(),
            reason,
        };
        let f = self
            .field(name)
            .ok_or_else(|| err(format!("no field `{name}` in its format")))?;
        if !sizes.contains(&f.size) {
            return Err(err(format!(
                "field `{name}` has size {}, expected one of {sizes:?}",
                f.size
            )));
        }
        if f.offset % f.size != 0 || (f.offset + f.size) as usize > RECORD_BYTES {
            return Err(err(format!(
                "field `{name}` at offset {} (size {}) is unaligned or beyond the first \
                 {RECORD_BYTES} bytes the probes read",
                f.offset, f.size
            )));
        }
        Ok(f)
    }

    /// The `{value, "NAME"}` table of `__print_symbolic(REC-><field>, ...)`
    /// in the print fmt (opcode names of `fuse_request_send`).
    pub fn symbolic(&self, field: &str) -> Vec<(u64, String)> {
        let marker = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&marker) else {
            return Vec::new();
        };
        let mut rest = &self.print_fmt[start + marker.len()..];
        let mut out = Vec::new();
        loop {
            let trimmed = rest.trim_start();
            let Some(body) = trimmed.strip_prefix('{') else {
                break;
            };
            let Some(close) = body.find('}') else {
                break;
            };
            let entry = &body[..close];
            rest = body[close + 1..].trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
            let Some((num, label)) = entry.split_once(',') else {
                continue;
            };
            let num = num.trim();
            let value = if let Some(hex) = num.strip_prefix("0x") {
                u64::from_str_radix(hex, 16).ok()
            } else {
                num.parse().ok()
            };
            if let Some(value) = value {
                out.push((value, label.trim().trim_matches('"').to_string()));
            }
        }
        out
    }

    /// The value of the symbol `label` in [`Self::symbolic`] of `field`.
    pub fn symbol_value(&self, field: &str, label: &str) -> Option<u64> {
        self.symbolic(field)
            .into_iter()
            .find_map(|(v, l)| (l == label).then_some(v))
    }
}

/// `field:unsigned int fd;    offset:16;    size:8;    signed:0;`
fn parse_field_line(line: &str) -> Result<FieldFormat, String> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d.trim());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse::<u32>().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse::<u32>().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v.trim() == "1";
        }
    }
    let bad = || format!("malformed field line `{line}`");
    let decl = decl.ok_or_else(bad)?;
    // The name is the last word, minus any array suffix (`char comm[16]`).
    let (c_type, raw_name) = decl.rsplit_once(char::is_whitespace).ok_or_else(bad)?;
    let name = raw_name
        .split('[')
        .next()
        .unwrap_or(raw_name)
        .trim_start_matches('*');
    Ok(FieldFormat {
        name: name.to_string(),
        c_type: c_type.trim().to_string(),
        offset: offset.ok_or_else(bad)?,
        size: size.ok_or_else(bad)?,
        signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &str = "name: fuse_request_send
ID: 1293
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t connection;\toffset:8;\tsize:4;\tsigned:0;
\tfield:uint64_t unique;\toffset:16;\tsize:8;\tsigned:0;
\tfield:enum fuse_opcode opcode;\toffset:24;\tsize:4;\tsigned:0;
\tfield:uint32_t len;\toffset:28;\tsize:4;\tsigned:0;

print fmt: \"connection %u req %llu opcode %u (%s) len %u \", REC->connection, REC->unique, REC->opcode, __print_symbolic(REC->opcode, {1, \"FUSE_LOOKUP\"}, {2, \"FUSE_FORGET\"}, {31, \"FUSE_GETLK\"}, {32, \"FUSE_SETLK\"}, {33, \"FUSE_SETLKW\"}, {52, \"FUSE_STATX\"}, {4096, \"CUSE_INIT\"}), REC->len
";

    /// A kernel (e.g. with PREEMPT_RT or newer layouts) that adds more
    /// `common_*` fields, shifting every event field.
    const SEND_EXTRA_COMMON: &str = "name: fuse_request_send
ID: 77
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:unsigned char common_preempt_lazy_count;\toffset:8;\tsize:1;\tsigned:0;
\tfield:unsigned char common_migrate_disable;\toffset:9;\tsize:1;\tsigned:0;

\tfield:dev_t connection;\toffset:12;\tsize:4;\tsigned:0;
\tfield:uint64_t unique;\toffset:16;\tsize:8;\tsigned:0;
\tfield:enum fuse_opcode opcode;\toffset:24;\tsize:4;\tsigned:0;
\tfield:uint32_t len;\toffset:28;\tsize:4;\tsigned:0;

print fmt: \"connection %u\", REC->connection
";

    const EXIT_FLOCK: &str = "name: sys_exit_flock
ID: 1116
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: \"0x%lx\", REC->ret
";

    #[test]
    fn parses_fields_and_id() {
        let f = TracepointFormat::parse("fuse", "fuse_request_send", SEND).unwrap();
        assert_eq!(f.id, Some(1293));
        assert_eq!(f.fields.len(), 8);
        let conn = f.field("connection").unwrap();
        assert_eq!((conn.offset, conn.size, conn.signed), (8, 4, false));
        assert_eq!(conn.c_type, "dev_t");
        let op = f.field("opcode").unwrap();
        assert_eq!(op.c_type, "enum fuse_opcode");
        assert_eq!((op.offset, op.size), (24, 4));
        assert!(f.field("common_pid").unwrap().signed);
        assert!(f.field("nope").is_none());
    }

    #[test]
    fn extra_common_fields_shift_offsets() {
        let f = TracepointFormat::parse("fuse", "fuse_request_send", SEND_EXTRA_COMMON).unwrap();
        assert_eq!(f.field("connection").unwrap().offset, 12);
        assert_eq!(f.field("common_migrate_disable").unwrap().offset, 9);
        assert_eq!(f.require("unique", &[8]).unwrap().offset, 16);
    }

    #[test]
    fn signed_long_ret() {
        let f = TracepointFormat::parse("syscalls", "sys_exit_flock", EXIT_FLOCK).unwrap();
        let ret = f.require("ret", &[4, 8]).unwrap();
        assert_eq!((ret.offset, ret.size, ret.signed), (16, 8, true));
        assert_eq!(ret.c_type, "long");
        assert!(f.require("ret", &[4]).is_err());
        assert!(f.require("missing", &[4]).is_err());
    }

    #[test]
    fn rejects_fields_the_probes_cannot_read() {
        let text = "name: x\nID: 1\nformat:\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
            \tfield:u64 odd;\toffset:12;\tsize:8;\tsigned:0;\n\
            \tfield:u32 far;\toffset:128;\tsize:4;\tsigned:0;\n\
            \tfield:u32 last;\toffset:124;\tsize:4;\tsigned:0;\n";
        let f = TracepointFormat::parse("c", "x", text).unwrap();
        assert!(f.require("odd", &[8]).is_err(), "unaligned");
        assert!(f.require("far", &[4]).is_err(), "beyond the copied bytes");
        assert_eq!(f.require("last", &[4]).unwrap().offset, 124);
    }

    #[test]
    fn symbolic_opcode_table() {
        let f = TracepointFormat::parse("fuse", "fuse_request_send", SEND).unwrap();
        let table = f.symbolic("opcode");
        assert_eq!(table.len(), 7);
        assert_eq!(table[0], (1, "FUSE_LOOKUP".to_string()));
        assert_eq!(f.symbol_value("opcode", "FUSE_SETLK"), Some(32));
        assert_eq!(f.symbol_value("opcode", "FUSE_SETLKW"), Some(33));
        assert_eq!(f.symbol_value("opcode", "CUSE_INIT"), Some(4096));
        assert!(f.symbolic("len").is_empty());
    }

    #[test]
    fn array_and_pointer_fields() {
        let line = "field:char comm[16];\toffset:8;\tsize:16;\tsigned:0;";
        let f = parse_field_line(line).unwrap();
        assert_eq!((f.name.as_str(), f.size), ("comm", 16));
        let line = "field:struct file_lock * fl;\toffset:8;\tsize:8;\tsigned:0;";
        assert_eq!(parse_field_line(line).unwrap().name, "fl");
        assert!(parse_field_line("field:int;").is_err());
    }

    #[test]
    fn empty_format_is_an_error() {
        assert!(TracepointFormat::parse("a", "b", "name: b\nID: 3\n").is_err());
    }

    #[test]
    fn finds_tracefs_in_mountinfo() {
        let mi = "22 1 0:20 / /sys rw,nosuid - sysfs sysfs rw
40 22 0:12 / /sys/kernel/debug/tracing rw - tracefs tracefs rw
41 22 0:12 / /sys/kernel/tracing rw,nosuid - tracefs tracefs rw
42 22 0:12 / /mnt/my\\040trace rw - tracefs tracefs rw
";
        let mounts = tracefs_mounts(mi);
        assert_eq!(mounts[0], PathBuf::from("/sys/kernel/tracing"));
        assert_eq!(mounts.len(), 3);
        assert!(mounts.contains(&PathBuf::from("/mnt/my trace")));
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape_mountinfo("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape_mountinfo("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_mountinfo("x\\999"), "x\\999");
    }
}
