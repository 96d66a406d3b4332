//! FUSE opcode numbers and their names, as in the kernel's `enum fuse_opcode`
//! (`include/uapi/linux/fuse.h`) and the `print fmt` of the
//! `fuse/fuse_request_send` tracepoint, without the `FUSE_` prefix
//! (`1` -> `"LOOKUP"`). Numbers 7 and 19 are unassigned.
//!
//! [`OPCODES`] is a closed set, fit to be used as metric label values;
//! [`opcode_label`] maps anything outside it to [`OTHER_LABEL`] so a label
//! never takes an unbounded number of values. [`opcode_name`] is for humans
//! and keeps the number of an unknown opcode (`"OPCODE_77"`).

use std::borrow::Cow;

/// `CUSE_INIT`: the first request on a CUSE (character device in userspace)
/// connection.
pub const CUSE_INIT: u32 = 4096;

/// Every opcode this module knows, in numeric order: `(number, name)`.
pub const OPCODES: [(u32, &str); 51] = [
    (1, "LOOKUP"),
    (2, "FORGET"),
    (3, "GETATTR"),
    (4, "SETATTR"),
    (5, "READLINK"),
    (6, "SYMLINK"),
    (8, "MKNOD"),
    (9, "MKDIR"),
    (10, "UNLINK"),
    (11, "RMDIR"),
    (12, "RENAME"),
    (13, "LINK"),
    (14, "OPEN"),
    (15, "READ"),
    (16, "WRITE"),
    (17, "STATFS"),
    (18, "RELEASE"),
    (20, "FSYNC"),
    (21, "SETXATTR"),
    (22, "GETXATTR"),
    (23, "LISTXATTR"),
    (24, "REMOVEXATTR"),
    (25, "FLUSH"),
    (26, "INIT"),
    (27, "OPENDIR"),
    (28, "READDIR"),
    (29, "RELEASEDIR"),
    (30, "FSYNCDIR"),
    (31, "GETLK"),
    (32, "SETLK"),
    (33, "SETLKW"),
    (34, "ACCESS"),
    (35, "CREATE"),
    (36, "INTERRUPT"),
    (37, "BMAP"),
    (38, "DESTROY"),
    (39, "IOCTL"),
    (40, "POLL"),
    (41, "NOTIFY_REPLY"),
    (42, "BATCH_FORGET"),
    (43, "FALLOCATE"),
    (44, "READDIRPLUS"),
    (45, "RENAME2"),
    (46, "LSEEK"),
    (47, "COPY_FILE_RANGE"),
    (48, "SETUPMAPPING"),
    (49, "REMOVEMAPPING"),
    (50, "SYNCFS"),
    (51, "TMPFILE"),
    (52, "STATX"),
    (CUSE_INIT, "CUSE_INIT"),
];

/// Label value [`opcode_label`] gives to an opcode outside [`OPCODES`].
pub const OTHER_LABEL: &str = "OTHER";

/// The name of a known opcode (`1` -> `Some("LOOKUP")`), None otherwise.
pub fn known_opcode_name(opcode: u32) -> Option<&'static str> {
    OPCODES
        .binary_search_by_key(&opcode, |&(n, _)| n)
        .ok()
        .map(|i| OPCODES[i].1)
}

/// A name for any opcode: the kernel's name without `FUSE_`, or
/// `OPCODE_<n>` for a number this module does not know.
pub fn opcode_name(opcode: u32) -> Cow<'static, str> {
    match known_opcode_name(opcode) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("OPCODE_{opcode}")),
    }
}

/// A label value from the closed set [`OPCODES`] plus [`OTHER_LABEL`].
pub fn opcode_label(opcode: u32) -> &'static str {
    known_opcode_name(opcode).unwrap_or(OTHER_LABEL)
}

/// The opcode number of a name as [`opcode_name`] prints it (also accepts
/// the `FUSE_` prefix and any letter case; `OPCODE_<n>` gives `n`).
pub fn opcode_from_name(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("FUSE_").unwrap_or(&upper);
    if let Some(&(n, _)) = OPCODES.iter().find(|(_, known)| *known == bare) {
        return Some(n);
    }
    bare.strip_prefix("OPCODE_")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `print fmt` of `events/fuse/fuse_request_send/format`, read from
    /// the tracefs of a Linux 6.18 machine of the kind the project runs on.
    const PRINT_FMT_6_18: &str = r#"print fmt: "connection %u req %llu opcode %u (%s) len %u ", REC->connection, REC->unique, REC->opcode, __print_symbolic(REC->opcode, {1, "FUSE_LOOKUP"}, {2, "FUSE_FORGET"}, {3, "FUSE_GETATTR"}, {4, "FUSE_SETATTR"}, {5, "FUSE_READLINK"}, {6, "FUSE_SYMLINK"}, {8, "FUSE_MKNOD"}, {9, "FUSE_MKDIR"}, {10, "FUSE_UNLINK"}, {11, "FUSE_RMDIR"}, {12, "FUSE_RENAME"}, {13, "FUSE_LINK"}, {14, "FUSE_OPEN"}, {15, "FUSE_READ"}, {16, "FUSE_WRITE"}, {17, "FUSE_STATFS"}, {18, "FUSE_RELEASE"}, {20, "FUSE_FSYNC"}, {21, "FUSE_SETXATTR"}, {22, "FUSE_GETXATTR"}, {23, "FUSE_LISTXATTR"}, {24, "FUSE_REMOVEXATTR"}, {25, "FUSE_FLUSH"}, {26, "FUSE_INIT"}, {27, "FUSE_OPENDIR"}, {28, "FUSE_READDIR"}, {29, "FUSE_RELEASEDIR"}, {30, "FUSE_FSYNCDIR"}, {31, "FUSE_GETLK"}, {32, "FUSE_SETLK"}, {33, "FUSE_SETLKW"}, {34, "FUSE_ACCESS"}, {35, "FUSE_CREATE"}, {36, "FUSE_INTERRUPT"}, {37, "FUSE_BMAP"}, {38, "FUSE_DESTROY"}, {39, "FUSE_IOCTL"}, {40, "FUSE_POLL"}, {41, "FUSE_NOTIFY_REPLY"}, {42, "FUSE_BATCH_FORGET"}, {43, "FUSE_FALLOCATE"}, {44, "FUSE_READDIRPLUS"}, {45, "FUSE_RENAME2"}, {46, "FUSE_LSEEK"}, {47, "FUSE_COPY_FILE_RANGE"}, {48, "FUSE_SETUPMAPPING"}, {49, "FUSE_REMOVEMAPPING"}, {50, "FUSE_SYNCFS"}, {51, "FUSE_TMPFILE"}, {52, "FUSE_STATX"}, {4096, "CUSE_INIT"}), REC->len"#;

    /// `(number, name)` pairs of a `__print_symbolic(...)` list.
    fn parse_print_symbolic(fmt: &str) -> Vec<(u32, String)> {
        let list = fmt.split("__print_symbolic(").nth(1).unwrap_or("");
        list.split('{')
            .skip(1)
            .filter_map(|item| {
                let item = item.split('}').next()?;
                let (num, name) = item.split_once(',')?;
                Some((
                    num.trim().parse().ok()?,
                    name.trim().trim_matches('"').to_owned(),
                ))
            })
            .collect()
    }

    #[test]
    fn table_matches_the_tracepoint_print_fmt_exactly() {
        let kernel = parse_print_symbolic(PRINT_FMT_6_18);
        assert_eq!(kernel.len(), OPCODES.len());
        for ((kn, kname), (n, name)) in kernel.iter().zip(OPCODES.iter()) {
            assert_eq!(kn, n);
            let expected = kname.strip_prefix("FUSE_").unwrap_or(kname);
            assert_eq!(expected, *name, "opcode {n}");
        }
    }

    /// The running kernel's tracepoint, when tracefs is mounted and readable:
    /// every opcode it names must have the same name here (a newer kernel that
    /// adds opcodes makes this fail until the table learns them).
    #[test]
    fn table_agrees_with_the_running_kernel_when_readable() {
        let path = "/sys/kernel/tracing/events/fuse/fuse_request_send/format";
        let Ok(format) = std::fs::read_to_string(path) else {
            return;
        };
        for (n, kname) in parse_print_symbolic(&format) {
            let expected = kname.strip_prefix("FUSE_").unwrap_or(&kname);
            assert_eq!(known_opcode_name(n), Some(expected), "opcode {n}");
        }
    }

    #[test]
    fn spot_checks_against_the_kernel_numbers() {
        assert_eq!(opcode_name(1), "LOOKUP");
        assert_eq!(opcode_name(3), "GETATTR");
        assert_eq!(opcode_name(15), "READ");
        assert_eq!(opcode_name(26), "INIT");
        assert_eq!(opcode_name(33), "SETLKW");
        assert_eq!(opcode_name(44), "READDIRPLUS");
        assert_eq!(opcode_name(52), "STATX");
        assert_eq!(opcode_name(4096), "CUSE_INIT");
    }

    #[test]
    fn unknown_numbers_keep_their_value() {
        assert_eq!(opcode_name(0), "OPCODE_0");
        assert_eq!(opcode_name(7), "OPCODE_7");
        assert_eq!(opcode_name(19), "OPCODE_19");
        assert_eq!(opcode_name(53), "OPCODE_53");
        assert_eq!(opcode_name(u32::MAX), format!("OPCODE_{}", u32::MAX));
        assert_eq!(known_opcode_name(19), None);
    }

    #[test]
    fn labels_are_a_closed_set() {
        assert_eq!(opcode_label(14), "OPEN");
        assert_eq!(opcode_label(7), OTHER_LABEL);
        assert_eq!(opcode_label(9999), OTHER_LABEL);
        assert!(!OPCODES.iter().any(|(_, name)| *name == OTHER_LABEL));
    }

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(OPCODES.windows(2).all(|w| w[0].0 < w[1].0));
        let mut names: Vec<_> = OPCODES.iter().map(|(_, n)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPCODES.len());
    }

    #[test]
    fn names_parse_back() {
        for (n, name) in OPCODES {
            assert_eq!(opcode_from_name(name), Some(n));
        }
        assert_eq!(opcode_from_name("fuse_getattr"), Some(3));
        assert_eq!(opcode_from_name("OPCODE_77"), Some(77));
        assert_eq!(opcode_from_name("NOPE"), None);
    }
}
