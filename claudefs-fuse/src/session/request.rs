//! Parsing a request read from the kernel into a typed [`Request`],
//! borrowing names and write data from the read buffer (no copy).
//!
//! Every length is checked: a request shorter than its header, with a
//! length field that disagrees with what was read, or whose arguments do
//! not fit, is a [`ParseError`] (never a panic); the session answers it
//! with an errno when it has a `unique` to answer to, and counts it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::abi::{self, op, InHeader};

/// What the daemon is asked to do, with its arguments.
#[derive(Debug, PartialEq, Eq)]
pub enum Operation<'a> {
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        nodes: Vec<abi::ForgetOne>,
    },
    Getattr {
        fh: Option<u64>,
    },
    Setattr(abi::SetattrIn),
    Readlink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    Mknod {
        name: &'a OsStr,
        arg: abi::MknodIn,
    },
    Mkdir {
        name: &'a OsStr,
        arg: abi::MkdirIn,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    /// RENAME and RENAME2 (`flags` 0 for RENAME).
    Rename {
        newdir: u64,
        flags: u32,
        name: &'a OsStr,
        newname: &'a OsStr,
    },
    Link {
        oldnodeid: u64,
        newname: &'a OsStr,
    },
    Open(abi::OpenIn),
    Read(abi::ReadIn),
    Write {
        arg: abi::WriteIn,
        data: &'a [u8],
    },
    Statfs,
    Release(abi::ReleaseIn),
    Fsync(abi::FsyncIn),
    Setxattr {
        arg: abi::SetxattrIn,
        name: &'a OsStr,
        value: &'a [u8],
    },
    Getxattr {
        size: u32,
        name: &'a OsStr,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a OsStr,
    },
    Flush(abi::FlushIn),
    Init(abi::InitIn),
    Opendir(abi::OpenIn),
    Readdir(abi::ReadIn),
    Readdirplus(abi::ReadIn),
    Releasedir(abi::ReleaseIn),
    Fsyncdir(abi::FsyncIn),
    Getlk(abi::LkIn),
    /// SETLK (`sleep` false) and SETLKW (`sleep` true).
    Setlk {
        arg: abi::LkIn,
        sleep: bool,
    },
    Access {
        mask: u32,
    },
    Create {
        arg: abi::CreateIn,
        name: &'a OsStr,
    },
    Interrupt {
        unique: u64,
    },
    Destroy,
    Fallocate(abi::FallocateIn),
    Lseek(abi::LseekIn),
}

/// A parsed request: its header and operation.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: InHeader,
    pub op: Operation<'a>,
}

impl Request<'_> {
    pub fn unique(&self) -> u64 {
        self.header.unique
    }
    pub fn nodeid(&self) -> u64 {
        self.header.nodeid
    }
    pub fn uid(&self) -> u32 {
        self.header.uid
    }
    pub fn gid(&self) -> u32 {
        self.header.gid
    }
    pub fn pid(&self) -> u32 {
        self.header.pid
    }
}

/// Why a request could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than a header: nothing to answer.
    #[error("request of {len} bytes is shorter than its header")]
    Short { len: usize },
    /// The header's length disagrees with the bytes read.
    #[error("request {unique} (opcode {opcode}) says {said} bytes, {read} were read")]
    BadLength {
        unique: u64,
        opcode: u32,
        said: u32,
        read: usize,
    },
    /// The arguments do not fit the opcode's layout.
    #[error("request {unique} (opcode {opcode}): malformed arguments")]
    Malformed { unique: u64, opcode: u32 },
    /// An opcode the daemon does not serve.
    #[error("request {unique}: opcode {opcode} not served")]
    Unknown { unique: u64, opcode: u32 },
}

impl ParseError {
    /// The `unique` to answer, and the errno to answer it with (none for a
    /// request too short to have one).
    pub fn answer(&self) -> Option<(u64, i32)> {
        match *self {
            ParseError::Short { .. } => None,
            ParseError::BadLength { unique, .. } | ParseError::Malformed { unique, .. } => {
                Some((unique, libc::EINVAL))
            }
            ParseError::Unknown { unique, .. } => Some((unique, libc::ENOSYS)),
        }
    }
}

/// A cursor over a request's arguments: `.0` the bytes being read; `.1`
/// those that follow the opcode's fixed header when it came apart from
/// them (an io_uring entry's `op_in` and payload).
struct Args<'a>(&'a [u8], Option<&'a [u8]>);

impl<'a> Args<'a> {
    fn get<T: abi::Pod>(&mut self) -> Option<T> {
        let (v, rest) = abi::read::<T>(self.0)?;
        self.0 = match self.1.take() {
            Some(payload) => payload,
            None => rest,
        };
        Some(v)
    }

    /// A NUL-terminated name (the NUL is consumed, not returned).
    fn name(&mut self) -> Option<&'a OsStr> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let name = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(OsStr::from_bytes(name))
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }
}

/// Parses one request as read from the kernel (`buf` is exactly what the
/// read returned).
pub fn parse(buf: &[u8]) -> Result<Request<'_>, ParseError> {
    let Some((header, rest)) = abi::read::<InHeader>(buf) else {
        return Err(ParseError::Short { len: buf.len() });
    };
    let (unique, opcode) = (header.unique, header.opcode);
    if header.len as usize != buf.len() {
        return Err(ParseError::BadLength {
            unique,
            opcode,
            said: header.len,
            read: buf.len(),
        });
    }
    // Extensions (security context, groups) follow the arguments; none is
    // negotiated, but one sent anyway is not taken for an argument.
    let ext = usize::from(header.total_extlen) * 8;
    let Some(args) = rest
        .get(..rest.len().saturating_sub(ext))
        .filter(|_| ext <= rest.len())
    else {
        return Err(ParseError::Malformed { unique, opcode });
    };
    finish(header, Args(args, None))
}

fn finish<'a>(header: InHeader, args: Args<'a>) -> Result<Request<'a>, ParseError> {
    let (unique, opcode) = (header.unique, header.opcode);
    let op = parse_op(opcode, args).ok_or(match known(opcode) {
        true => ParseError::Malformed { unique, opcode },
        false => ParseError::Unknown { unique, opcode },
    })?;
    Ok(Request { header, op })
}

/// Whether the kernel sends `opcode` with a fixed header of its own
/// (`in_args[0]`) before names or data: over io_uring that header comes in
/// the entry's `op_in`, the rest in its payload.
fn has_op_header(opcode: u32) -> bool {
    !matches!(
        opcode,
        op::LOOKUP
            | op::SYMLINK
            | op::UNLINK
            | op::RMDIR
            | op::READLINK
            | op::STATFS
            | op::REMOVEXATTR
            | op::DESTROY
    )
}

/// Parses a request as an io_uring entry holds it: the in header and the
/// opcode's fixed header in the entry's header buffer (`in_out`,
/// `op_in`), names and data in `payload`.
pub fn parse_ring<'a>(
    in_out: &[u8],
    op_in: &'a [u8],
    payload: &'a [u8],
) -> Result<Request<'a>, ParseError> {
    let Some((header, _)) = abi::read::<InHeader>(in_out) else {
        return Err(ParseError::Short { len: in_out.len() });
    };
    let args = if has_op_header(header.opcode) {
        Args(op_in, Some(payload))
    } else {
        Args(payload, None)
    };
    finish(header, args)
}

/// Whether `opcode` is one [`parse`] knows.
fn known(opcode: u32) -> bool {
    matches!(opcode, 1..=6 | 8..=18 | 20..=36 | 38 | 42..=46)
}

fn parse_op(opcode: u32, mut a: Args<'_>) -> Option<Operation<'_>> {
    use Operation as O;
    Some(match opcode {
        op::LOOKUP => O::Lookup { name: a.name()? },
        op::FORGET => O::Forget {
            nlookup: a.get::<abi::ForgetIn>()?.nlookup,
        },
        op::BATCH_FORGET => {
            let n = a.get::<abi::BatchForgetIn>()?.count as usize;
            // Bounded by the bytes present, not by the count claimed.
            if n.checked_mul(std::mem::size_of::<abi::ForgetOne>())? > a.0.len() {
                return None;
            }
            let mut nodes = Vec::with_capacity(n);
            for _ in 0..n {
                nodes.push(a.get::<abi::ForgetOne>()?);
            }
            O::BatchForget { nodes }
        }
        op::GETATTR => {
            let g = a.get::<abi::GetattrIn>()?;
            O::Getattr {
                fh: (g.getattr_flags & abi::GETATTR_FH != 0).then_some(g.fh),
            }
        }
        op::SETATTR => O::Setattr(a.get()?),
        op::READLINK => O::Readlink,
        op::SYMLINK => {
            let name = a.name()?;
            O::Symlink {
                name,
                target: a.name()?,
            }
        }
        op::MKNOD => {
            let arg = a.get()?;
            O::Mknod {
                arg,
                name: a.name()?,
            }
        }
        op::MKDIR => {
            let arg = a.get()?;
            O::Mkdir {
                arg,
                name: a.name()?,
            }
        }
        op::UNLINK => O::Unlink { name: a.name()? },
        op::RMDIR => O::Rmdir { name: a.name()? },
        op::RENAME => {
            let r = a.get::<abi::RenameIn>()?;
            let name = a.name()?;
            O::Rename {
                newdir: r.newdir,
                flags: 0,
                name,
                newname: a.name()?,
            }
        }
        op::RENAME2 => {
            let r = a.get::<abi::Rename2In>()?;
            let name = a.name()?;
            O::Rename {
                newdir: r.newdir,
                flags: r.flags,
                name,
                newname: a.name()?,
            }
        }
        op::LINK => {
            let l = a.get::<abi::LinkIn>()?;
            O::Link {
                oldnodeid: l.oldnodeid,
                newname: a.name()?,
            }
        }
        op::OPEN => O::Open(a.get()?),
        op::READ => O::Read(a.get()?),
        op::WRITE => {
            let arg = a.get::<abi::WriteIn>()?;
            O::Write {
                data: a.bytes(arg.size as usize)?,
                arg,
            }
        }
        op::STATFS => O::Statfs,
        op::RELEASE => O::Release(a.get()?),
        op::FSYNC => O::Fsync(a.get()?),
        op::SETXATTR => {
            let arg = a.get::<abi::SetxattrIn>()?;
            let name = a.name()?;
            O::Setxattr {
                value: a.bytes(arg.size as usize)?,
                arg,
                name,
            }
        }
        op::GETXATTR => {
            let g = a.get::<abi::GetxattrIn>()?;
            O::Getxattr {
                size: g.size,
                name: a.name()?,
            }
        }
        op::LISTXATTR => O::Listxattr {
            size: a.get::<abi::GetxattrIn>()?.size,
        },
        op::REMOVEXATTR => O::Removexattr { name: a.name()? },
        op::FLUSH => O::Flush(a.get()?),
        op::INIT => {
            // Kernels before 7.36 send only the first 16 bytes.
            let mut init = abi::InitIn::default();
            let n = a.0.len().min(std::mem::size_of::<abi::InitIn>());
            a.1 = None;
            if n < 16 {
                return None;
            }
            let mut raw = [0u8; std::mem::size_of::<abi::InitIn>()];
            raw[..n].copy_from_slice(&a.0[..n]);
            if let Some((v, _)) = abi::read::<abi::InitIn>(&raw) {
                init = v;
            }
            O::Init(init)
        }
        op::OPENDIR => O::Opendir(a.get()?),
        op::READDIR => O::Readdir(a.get()?),
        op::READDIRPLUS => O::Readdirplus(a.get()?),
        op::RELEASEDIR => O::Releasedir(a.get()?),
        op::FSYNCDIR => O::Fsyncdir(a.get()?),
        op::GETLK => O::Getlk(a.get()?),
        op::SETLK => O::Setlk {
            arg: a.get()?,
            sleep: false,
        },
        op::SETLKW => O::Setlk {
            arg: a.get()?,
            sleep: true,
        },
        op::ACCESS => O::Access {
            mask: a.get::<abi::AccessIn>()?.mask,
        },
        op::CREATE => {
            let arg = a.get()?;
            O::Create {
                arg,
                name: a.name()?,
            }
        }
        op::INTERRUPT => O::Interrupt {
            unique: a.get::<abi::InterruptIn>()?.unique,
        },
        op::DESTROY => O::Destroy,
        op::FALLOCATE => O::Fallocate(a.get()?),
        op::LSEEK => O::Lseek(a.get()?),
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request of `opcode` with `args` as the kernel lays it out.
    pub fn raw(opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
        let h = InHeader {
            len: (40 + args.len()) as u32,
            opcode,
            unique,
            nodeid,
            uid: 1000,
            gid: 1000,
            pid: 42,
            total_extlen: 0,
            padding: 0,
        };
        let mut v = abi::bytes(&h).to_vec();
        v.extend_from_slice(args);
        v
    }

    #[test]
    fn lookup_borrows_its_name() {
        let buf = raw(op::LOOKUP, 7, 1, b"file\0");
        let r = parse(&buf).unwrap();
        assert_eq!(r.unique(), 7);
        assert_eq!(
            r.op,
            Operation::Lookup {
                name: OsStr::new("file")
            }
        );
    }

    #[test]
    fn write_data_follows_its_header() {
        let w = abi::WriteIn {
            fh: 3,
            offset: 10,
            size: 4,
            ..Default::default()
        };
        let mut args = abi::bytes(&w).to_vec();
        args.extend_from_slice(b"abcd");
        let buf = raw(op::WRITE, 1, 5, &args);
        match parse(&buf).unwrap().op {
            Operation::Write { arg, data } => {
                assert_eq!((arg.fh, arg.offset, data), (3, 10, &b"abcd"[..]))
            }
            o => panic!("{o:?}"),
        }
        // A size larger than the data present is malformed.
        let mut short = abi::bytes(&abi::WriteIn { size: 9, ..w }).to_vec();
        short.extend_from_slice(b"abcd");
        assert_eq!(
            parse(&raw(op::WRITE, 2, 5, &short)),
            Err(ParseError::Malformed {
                unique: 2,
                opcode: op::WRITE
            })
        );
    }

    #[test]
    fn rename_takes_two_names_and_rename2_its_flags() {
        let mut args = abi::bytes(&abi::Rename2In {
            newdir: 9,
            flags: libc::RENAME_NOREPLACE,
            padding: 0,
        })
        .to_vec();
        args.extend_from_slice(b"a\0b\0");
        assert_eq!(
            parse(&raw(op::RENAME2, 1, 1, &args)).unwrap().op,
            Operation::Rename {
                newdir: 9,
                flags: libc::RENAME_NOREPLACE,
                name: OsStr::new("a"),
                newname: OsStr::new("b")
            }
        );
    }

    #[test]
    fn malformed_short_and_unknown_requests_are_errors_with_an_answer() {
        assert_eq!(parse(&[0; 10]), Err(ParseError::Short { len: 10 }));
        assert_eq!(ParseError::Short { len: 10 }.answer(), None);
        // A name without its NUL.
        let e = parse(&raw(op::LOOKUP, 3, 1, b"file")).unwrap_err();
        assert_eq!(e.answer(), Some((3, libc::EINVAL)));
        // The length field lies.
        let mut buf = raw(op::GETATTR, 4, 1, &[0; 16]);
        buf.truncate(50);
        assert!(matches!(parse(&buf), Err(ParseError::BadLength { .. })));
        // An opcode not served.
        let e = parse(&raw(op::IOCTL, 5, 1, &[0; 32])).unwrap_err();
        assert_eq!(e.answer(), Some((5, libc::ENOSYS)));
        let e = parse(&raw(4242, 6, 1, &[])).unwrap_err();
        assert_eq!(e.answer(), Some((6, libc::ENOSYS)));
    }

    #[test]
    fn batch_forget_is_bounded_by_the_bytes_present() {
        let mut args = abi::bytes(&abi::BatchForgetIn {
            count: u32::MAX,
            dummy: 0,
        })
        .to_vec();
        args.extend_from_slice(abi::bytes(&abi::ForgetOne {
            nodeid: 2,
            nlookup: 1,
        }));
        assert!(parse(&raw(op::BATCH_FORGET, 0, 0, &args)).is_err());
        args[..4].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(
            parse(&raw(op::BATCH_FORGET, 0, 0, &args)).unwrap().op,
            Operation::BatchForget {
                nodes: vec![abi::ForgetOne {
                    nodeid: 2,
                    nlookup: 1
                }]
            }
        );
    }

    #[test]
    fn an_old_kernels_short_init_is_accepted() {
        let args = [7u32, 31, 65536, 0];
        let b: Vec<u8> = args.iter().flat_map(|v| v.to_ne_bytes()).collect();
        match parse(&raw(op::INIT, 1, 0, &b)).unwrap().op {
            Operation::Init(i) => assert_eq!((i.major, i.minor, i.flags2), (7, 31, 0)),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_ring_entry_parses_as_the_same_request() {
        // WRITE: fixed header in op_in, data in the payload.
        let w = abi::WriteIn {
            fh: 3,
            offset: 10,
            size: 4,
            ..Default::default()
        };
        let mut flat = abi::bytes(&w).to_vec();
        flat.extend_from_slice(b"abcd");
        let buf = raw(op::WRITE, 1, 5, &flat);
        let mut op_in = [0xffu8; 128];
        op_in[..40].copy_from_slice(abi::bytes(&w));
        assert_eq!(parse_ring(&buf[..40], &op_in, b"abcd"), parse(&buf));
        // LOOKUP: no fixed header; the name is the payload.
        let buf = raw(op::LOOKUP, 2, 1, b"name\0");
        assert_eq!(parse_ring(&buf[..40], &op_in, b"name\0"), parse(&buf));
        // MKNOD: header, then the name.
        let m = abi::MknodIn {
            mode: 0o644,
            ..Default::default()
        };
        op_in[..16].copy_from_slice(abi::bytes(&m));
        let mut flat = abi::bytes(&m).to_vec();
        flat.extend_from_slice(b"n\0");
        let buf = raw(op::MKNOD, 3, 1, &flat);
        assert_eq!(parse_ring(&buf[..40], &op_in, b"n\0"), parse(&buf));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn random_arguments_of_every_opcode_never_panic(
            opcode in 0u32..60,
            args in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let buf = raw(opcode, 1, 1, &args);
            let _ = parse(&buf);
            let (op_in, payload) = args.split_at(args.len().min(128));
            let _ = parse_ring(&buf[..40], op_in, payload);
        }
    }
}
