//! Writing the journal's records: one JSON object per line, byte for byte
//! what `serde_json` writes for a [`Record`] (tested), but without serde's
//! per-field work and without a `String` copy of the path. Every open and
//! every close writes a line, so this is on the open/close path; reading
//! the log back (after a crash) still goes through serde.

use super::journal_state::{IntentOp, Record};

fn num(out: &mut Vec<u8>, key: &[u8], v: impl itoa::Integer) {
    out.extend_from_slice(key);
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `s` as a JSON string: `"` and `\` escaped, control characters as
/// `\b \t \n \f \r` or `\u00xx`, everything else as is (serde_json's rule).
fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends the line of an `open` record (see [`Record::Open`]).
pub fn open(out: &mut Vec<u8>, fh: u64, ino: u64, pid: u32, flags: i32, path: &str) {
    num(out, br#"{"t":"open","fh":"#, fh);
    num(out, br#","ino":"#, ino);
    num(out, br#","pid":"#, pid);
    num(out, br#","flags":"#, flags);
    out.extend_from_slice(br#","path":"#);
    string(out, path);
    out.extend_from_slice(b"}\n");
}

/// Appends the line of `r`.
pub fn record(out: &mut Vec<u8>, r: &Record) {
    match r {
        Record::Open {
            fh,
            ino,
            pid,
            flags,
            path,
        } => open(out, *fh, *ino, *pid, *flags, path),
        Record::Dirty {
            fh,
            ino,
            off,
            len,
            since,
        } => {
            num(out, br#"{"t":"dirty","fh":"#, *fh);
            num(out, br#","ino":"#, *ino);
            num(out, br#","off":"#, *off);
            num(out, br#","len":"#, *len);
            num(out, br#","since":"#, *since);
            out.extend_from_slice(b"}\n");
        }
        Record::Sync { fh } => {
            num(out, br#"{"t":"sync","fh":"#, *fh);
            out.extend_from_slice(b"}\n");
        }
        Record::Close { fh } => {
            num(out, br#"{"t":"close","fh":"#, *fh);
            out.extend_from_slice(b"}\n");
        }
        // Every new node the kernel learns (each create) and forgets.
        Record::Node { ino, path, h } => {
            num(out, br#"{"t":"node","ino":"#, *ino);
            out.extend_from_slice(br#","path":"#);
            string(out, path);
            if let Some(h) = h {
                out.extend_from_slice(br#","h":"#);
                string(out, h);
            }
            out.extend_from_slice(b"}\n");
        }
        Record::Unnode { ino } => {
            num(out, br#"{"t":"unnode","ino":"#, *ino);
            out.extend_from_slice(b"}\n");
        }
        // Every create, unlink, mkdir, rename... (see `ops/once.rs`).
        Record::Intent { u, op, path, to } => {
            num(out, br#"{"t":"intent","u":"#, *u);
            out.extend_from_slice(match op {
                IntentOp::Make => br#","op":"make","path":"#,
                IntentOp::Remove => br#","op":"remove","path":"#,
                IntentOp::Rename => br#","op":"rename","path":"#,
                IntentOp::Exchange => br#","op":"exchange","path":"#,
            });
            string(out, path);
            if let Some(to) = to {
                out.extend_from_slice(br#","to":"#);
                string(out, to);
            }
            out.extend_from_slice(b"}\n");
        }
        Record::Done { u, err } => {
            num(out, br#"{"t":"done","u":"#, *u);
            num(out, br#","err":"#, *err);
            out.extend_from_slice(b"}\n");
        }
        // The rest is rare (renames, locks).
        other => {
            if serde_json::to_writer(&mut *out, other).is_ok() {
                out.push(b'\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde_line(r: &Record) -> Vec<u8> {
        let mut v = serde_json::to_vec(r).unwrap();
        v.push(b'\n');
        v
    }

    fn any_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<i32>(),
                any::<String>()
            )
                .prop_map(|(fh, ino, pid, flags, path)| Record::Open {
                    fh,
                    ino,
                    pid,
                    flags,
                    path
                }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(fh, ino, off, len, since)| Record::Dirty {
                    fh,
                    ino,
                    off,
                    len,
                    since
                }),
            any::<u64>().prop_map(|fh| Record::Sync { fh }),
            any::<u64>().prop_map(|fh| Record::Close { fh }),
            (
                any::<u64>(),
                any::<String>(),
                proptest::option::of(any::<String>())
            )
                .prop_map(|(ino, path, h)| Record::Node { ino, path, h }),
            any::<u64>().prop_map(|ino| Record::Unnode { ino }),
            (
                any::<u64>(),
                prop_oneof![
                    Just(IntentOp::Make),
                    Just(IntentOp::Remove),
                    Just(IntentOp::Rename),
                    Just(IntentOp::Exchange)
                ],
                any::<String>(),
                proptest::option::of(any::<String>())
            )
                .prop_map(|(u, op, path, to)| Record::Intent { u, op, path, to }),
            (any::<u64>(), any::<i32>()).prop_map(|(u, err)| Record::Done { u, err }),
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<bool>()).prop_map(
                |(ino, owner, pid, excl)| Record::Lock {
                    ino,
                    owner,
                    pid,
                    excl
                }
            ),
        ]
    }

    #[test]
    fn escapes_like_serde() {
        let path = "a\"b\\c\u{1}\u{8}\t\n\u{c}\r\u{1f}\u{7f}é/日本";
        let r = Record::Open {
            fh: 1,
            ino: 2,
            pid: 3,
            flags: -4,
            path: path.into(),
        };
        let mut out = Vec::new();
        record(&mut out, &r);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(serde_line(&r)).unwrap()
        );
    }

    proptest! {
        #[test]
        fn every_record_is_written_as_serde_writes_it(r in any_record()) {
            let mut out = Vec::new();
            record(&mut out, &r);
            prop_assert_eq!(&out, &serde_line(&r));
            let back: Record = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, r);
        }
    }
}
