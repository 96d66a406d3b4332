//! Member offsets of kernel structures, read from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`, and a module's split BTF such as
//! `/sys/kernel/btf/fuse` on top of it).
//!
//! The `tp_btf` programs read `struct fuse_req`, `struct inode` and
//! `struct file_lock` directly; Rust has no CO-RE relocations, so the
//! loader looks the offsets up here and hands them to the programs as
//! load-time globals (the verifier then checks every access against the
//! same BTF). Only what that needs is parsed: struct and union members,
//! the modifiers and typedefs in front of them, type names. The format is
//! the kernel's `Documentation/bpf/btf.rst`.

use std::collections::HashMap;
use std::path::Path;

/// Where the kernel publishes its BTF.
pub const SYS_BTF_DIR: &str = "/sys/kernel/btf";

const MAGIC: u16 = 0xeb9f;

// BTF kinds (`BTF_KIND_*`).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why an offset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {ty} has no member {member}")]
    NoMember { ty: String, member: String },
    #[error("{path} is a bit field, which the probes cannot read")]
    BitField { path: String },
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset (and, with the kind flag, the bit-field size above bit 24).
    offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    kind_flag: bool,
    name_off: u32,
    /// `size` for structs, unions, ints; the referenced type for
    /// pointers, typedefs and modifiers.
    size_or_type: u32,
    members: Vec<Member>,
    /// Array element type.
    elem: u32,
    /// Enumerators of an enum: (name offset, value).
    enumerators: Vec<(u32, i64)>,
}

/// Parsed BTF: types by id (id 0 is `void`), names, and an index of struct
/// and union names.
#[derive(Debug, Default)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct and union names.
    by_name: HashMap<String, u32>,
    /// Enum names.
    enums: HashMap<String, u32>,
}

/// Where a member lives: byte offset from the start of the outer
/// structure and byte size of the member's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

fn u16_at(d: &[u8], off: usize) -> Result<u16, BtfError> {
    d.get(off..off + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {off}")))
}

fn u32_at(d: &[u8], off: usize) -> Result<u32, BtfError> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {off}")))
}

/// The NUL-terminated string at `off` of a string section.
fn name_at(strings: &[u8], off: u32) -> &str {
    let rest = strings.get(off as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

impl Btf {
    /// The running kernel's BTF, with `module`'s split BTF on top when
    /// that module has one (a built-in part of the kernel has none).
    pub fn running_kernel(module: Option<&str>) -> Result<Btf, BtfError> {
        let dir = Path::new(SYS_BTF_DIR);
        let mut btf = Btf::from_file(&dir.join("vmlinux"), None)?;
        if let Some(m) = module {
            let path = dir.join(m);
            if path.exists() {
                btf = Btf::from_file(&path, Some(btf))?;
            }
        }
        Ok(btf)
    }

    fn from_file(path: &Path, base: Option<Btf>) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&data, base)
    }

    /// Parses `data` (little endian), as split BTF on top of `base` if
    /// given: its type ids and string offsets continue the base's (a
    /// string offset below the base's string section length names a base
    /// string).
    pub fn parse(data: &[u8], base: Option<Btf>) -> Result<Btf, BtfError> {
        if u16_at(data, 0)? != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (not little-endian BTF)".into(),
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let strs_at = hdr_len + str_off;
        let type_data = data
            .get(types_at..types_at + type_len)
            .ok_or_else(|| BtfError::Malformed("type section out of range".into()))?;
        let str_data = data
            .get(strs_at..strs_at + str_len)
            .ok_or_else(|| BtfError::Malformed("string section out of range".into()))?;

        let mut btf = base.unwrap_or_else(|| Btf {
            types: vec![Type {
                kind: 0,
                kind_flag: false,
                name_off: 0,
                size_or_type: 0,
                members: Vec::new(),
                elem: 0,
                enumerators: Vec::new(),
            }],
            ..Btf::default()
        });
        btf.strings.extend_from_slice(str_data);

        let mut at = 0usize;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let mut t = Type {
                kind,
                kind_flag: info >> 31 == 1,
                name_off,
                size_or_type,
                members: Vec::new(),
                elem: 0,
                enumerators: Vec::new(),
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                KIND_ARRAY => {
                    t.elem = u32_at(type_data, at)?;
                    at += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        t.members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            offset: u32_at(type_data, m + 8)?,
                        });
                    }
                    at += 12 * vlen;
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let e = at + 8 * i;
                        let raw = u32_at(type_data, e + 4)?;
                        // The kind flag says the values are signed.
                        let val = if t.kind_flag {
                            i64::from(raw as i32)
                        } else {
                            i64::from(raw)
                        };
                        t.enumerators.push((u32_at(type_data, e)?, val));
                    }
                    at += 8 * vlen;
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let e = at + 12 * i;
                        let lo = u64::from(u32_at(type_data, e + 4)?);
                        let hi = u64::from(u32_at(type_data, e + 8)?);
                        t.enumerators
                            .push((u32_at(type_data, e)?, (hi << 32 | lo) as i64));
                    }
                    at += 12 * vlen;
                }
                KIND_FUNC_PROTO => at += 8 * vlen,
                KIND_DATASEC => at += 12 * vlen,
                other => {
                    return Err(BtfError::Malformed(format!(
                        "unknown type kind {other} at byte {at}"
                    )))
                }
            }
            let id = btf.types.len() as u32;
            if t.name_off != 0 {
                // The first definition wins (a module's split BTF may
                // repeat a name; its own definition comes after vmlinux's).
                let index = match kind {
                    KIND_STRUCT | KIND_UNION => Some(&mut btf.by_name),
                    KIND_ENUM | KIND_ENUM64 => Some(&mut btf.enums),
                    _ => None,
                };
                if let Some(index) = index {
                    let name = name_at(&btf.strings, t.name_off).to_string();
                    index.entry(name).or_insert(id);
                }
            }
            btf.types.push(t);
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        name_at(&self.strings, off)
    }

    /// The enumerators of `enum name`: (value, name), in declaration order.
    pub fn enum_values(&self, name: &str) -> Option<Vec<(i64, String)>> {
        let id = *self.enums.get(name)?;
        let t = self.get(id).ok()?;
        Some(
            t.enumerators
                .iter()
                .map(|&(n, v)| (v, self.name(n).to_string()))
                .collect(),
        )
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(id as usize)
            .ok_or_else(|| BtfError::Malformed(format!("type id {id} out of range")))
    }

    /// `id` with typedefs and modifiers stripped.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed(format!("type chain too deep at {id}")))
    }

    fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        let id = self.resolve(id)?;
        let t = self.get(id)?;
        Ok(match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                t.size_or_type
            }
            KIND_PTR => 8,
            // Array sizes are not needed for the members the probes read.
            _ => 0,
        })
    }

    /// Finds `name` among the members of struct/union `id`, looking into
    /// anonymous struct/union members too: (bit offset, member type).
    fn member(&self, id: u32, name: &str) -> Result<Option<(u32, u32, bool)>, BtfError> {
        let t = self.get(self.resolve(id)?)?;
        for m in &t.members {
            let (bit_off, bitfield) = if t.kind_flag {
                (m.offset & 0xff_ffff, m.offset >> 24 != 0)
            } else {
                (m.offset, false)
            };
            if m.name_off != 0 && self.name(m.name_off) == name {
                return Ok(Some((bit_off, m.type_id, bitfield)));
            }
            if m.name_off == 0 {
                let inner = self.get(self.resolve(m.type_id)?)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                    if let Some((o, ty, bf)) = self.member(m.type_id, name)? {
                        return Ok(Some((bit_off + o, ty, bf)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Offset and size of `path` (members separated by `.`, `name[0]` for
    /// the first element of an array member) inside `struct ty`.
    pub fn field(&self, ty: &str, path: &str) -> Result<Field, BtfError> {
        let mut id = *self
            .by_name
            .get(ty)
            .ok_or_else(|| BtfError::NoStruct(ty.to_string()))?;
        let mut bits = 0u32;
        let mut size = 0u32;
        let mut walked = ty.to_string();
        for part in path.split('.') {
            let (name, first_elem) = match part.strip_suffix("[0]") {
                Some(n) => (n, true),
                None => (part, false),
            };
            let (off, mut ty_id, bitfield) =
                self.member(id, name)?.ok_or_else(|| BtfError::NoMember {
                    ty: walked.clone(),
                    member: name.to_string(),
                })?;
            walked = format!("{walked}.{part}");
            if bitfield {
                return Err(BtfError::BitField { path: walked });
            }
            bits += off;
            if first_elem {
                let arr = self.get(self.resolve(ty_id)?)?;
                if arr.kind != KIND_ARRAY {
                    return Err(BtfError::Malformed(format!("{walked} is not an array")));
                }
                ty_id = arr.elem;
            }
            size = self.size_of(ty_id)?;
            id = ty_id;
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::BitField { path: walked });
        }
        Ok(Field {
            offset: bits / 8,
            size,
        })
    }

    /// Whether the BTF has a type `name` of kind typedef (the
    /// `btf_trace_<tracepoint>` typedef a `tp_btf` program attaches by).
    pub fn has_typedef(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.kind == KIND_TYPEDEF && t.name_off != 0 && self.name(t.name_off) == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from (kind, name, size_or_type, extra words).
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        /// Length of the base's string section (split BTF).
        str_base: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                str_base: 0,
            }
        }
        fn split(base_strings: usize) -> Self {
            Builder {
                types: Vec::new(),
                strings: Vec::new(),
                str_base: base_strings as u32,
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.str_base + self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn ty(&mut self, kind: u32, name: &str, vlen: u32, flag: bool, sot: u32, extra: &[u32]) {
            let n = self.s(name);
            let info = (kind << 24) | vlen | (u32::from(flag) << 31);
            for w in [n, info, sot].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        fn member(&mut self, name: &str, ty: u32, bit_off: u32) -> [u32; 3] {
            [self.s(name), ty, bit_off]
        }
        fn finish(self) -> Vec<u8> {
            let mut d = Vec::new();
            d.extend_from_slice(&MAGIC.to_le_bytes());
            d.extend_from_slice(&[1, 0]);
            for w in [24u32, 0, self.types.len() as u32, self.types.len() as u32] {
                d.extend_from_slice(&w.to_le_bytes());
            }
            d.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            d.extend_from_slice(&self.types);
            d.extend_from_slice(&self.strings);
            d
        }
    }

    /// 1 u32, 2 u64, 3 struct hdr {u32 len; u64 unique@64}, 4 anon struct
    /// {hdr h}, 5 ptr to 6, 6 struct req {ptr list; anon in@64; union {u32 a;
    /// u32 b:3} @192; u32 arr[4] @256}, 7 union, 8 typedef, 9 array, 10 enum
    /// ops {OP_A = 1, OP_B = 33}.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.ty(KIND_INT, "u32", 0, false, 4, &[32]); // 1
        b.ty(KIND_INT, "u64", 0, false, 8, &[64]); // 2
        let m1 = b.member("len", 1, 0);
        let m2 = b.member("unique", 2, 64);
        b.ty(KIND_STRUCT, "hdr", 2, false, 16, &[m1, m2].concat()); // 3
        let m = b.member("h", 3, 0);
        b.ty(KIND_STRUCT, "", 1, false, 16, &m); // 4
        b.ty(KIND_PTR, "", 0, false, 6, &[]); // 5
        let a = b.member("list", 5, 0);
        let c = b.member("in", 4, 64);
        let u = b.member("", 7, 192);
        let arr = b.member("arr", 9, 256);
        b.ty(KIND_STRUCT, "req", 4, false, 64, &[a, c, u, arr].concat()); // 6
        let ua = b.member("a", 1, 0);
        let ub = b.member("b", 1, 3 << 24);
        b.ty(KIND_UNION, "", 2, true, 4, &[ua, ub].concat()); // 7
        b.ty(KIND_TYPEDEF, "btf_trace_thing", 0, false, 5, &[]); // 8
        b.ty(KIND_ARRAY, "", 0, false, 0, &[1, 1, 4]); // 9
        let e1 = b.s("OP_A");
        let e2 = b.s("OP_B");
        b.ty(KIND_ENUM, "ops", 2, false, 4, &[e1, 1, e2, 33]); // 10
        b.finish()
    }

    #[test]
    fn finds_nested_members_and_sizes() {
        let btf = Btf::parse(&sample(), None).unwrap();
        assert_eq!(
            btf.field("req", "in.h.unique").unwrap(),
            Field {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            btf.field("req", "in.h.len").unwrap(),
            Field { offset: 8, size: 4 }
        );
        assert_eq!(
            btf.field("req", "list").unwrap(),
            Field { offset: 0, size: 8 }
        );
        // A member of an anonymous union is found through it.
        assert_eq!(
            btf.field("req", "a").unwrap(),
            Field {
                offset: 24,
                size: 4
            }
        );
        assert_eq!(
            btf.field("req", "arr[0]").unwrap(),
            Field {
                offset: 32,
                size: 4
            }
        );
        assert!(btf.has_typedef("btf_trace_thing"));
        assert_eq!(
            btf.enum_values("ops").unwrap(),
            vec![(1, "OP_A".to_string()), (33, "OP_B".to_string())]
        );
        assert_eq!(btf.enum_values("nope"), None);
        assert!(!btf.has_typedef("btf_trace_other"));
    }

    #[test]
    fn clear_errors() {
        let btf = Btf::parse(&sample(), None).unwrap();
        assert!(matches!(btf.field("nope", "x"), Err(BtfError::NoStruct(_))));
        let e = btf.field("req", "in.h.nodeid").unwrap_err();
        assert_eq!(e.to_string(), "struct req.in.h has no member nodeid");
        assert!(matches!(
            btf.field("req", "b"),
            Err(BtfError::BitField { .. })
        ));
        assert!(Btf::parse(b"\x00\x00garbage", None).is_err());
        let mut short = sample();
        short.truncate(40);
        assert!(Btf::parse(&short, None).is_err());
    }

    #[test]
    fn split_btf_continues_the_base() {
        let base = Btf::parse(&sample(), None).unwrap();
        let n = base.types.len() as u32;
        // A module type: struct modreq { req r; u32 x@512 } referencing
        // base type 6 and its own strings.
        let mut b = Builder::split(base.strings.len());
        let r = b.member("r", 6, 0);
        let x = b.member("x", 1, 512);
        b.ty(KIND_STRUCT, "modreq", 2, false, 68, &[r, x].concat());
        let btf = Btf::parse(&b.finish(), Some(base)).unwrap();
        assert_eq!(btf.types.len() as u32, n + 1);
        assert_eq!(
            btf.field("modreq", "x").unwrap(),
            Field {
                offset: 64,
                size: 4
            }
        );
        assert_eq!(
            btf.field("modreq", "r.in.h.unique").unwrap(),
            Field {
                offset: 16,
                size: 8
            }
        );
    }

    #[test]
    fn running_kernel_fuse_req() {
        // Read-only; skipped where the kernel publishes no BTF.
        if !Path::new(SYS_BTF_DIR).join("vmlinux").exists() {
            eprintln!("skipped: no {SYS_BTF_DIR}/vmlinux");
            return;
        }
        let btf = Btf::running_kernel(Some("fuse")).unwrap();
        if btf.field("fuse_req", "in.h.unique").is_err() {
            eprintln!("skipped: this kernel's BTF has no struct fuse_req");
            return;
        }
        let unique = btf.field("fuse_req", "in.h.unique").unwrap();
        let opcode = btf.field("fuse_req", "in.h.opcode").unwrap();
        assert_eq!(unique.size, 8);
        // struct fuse_in_header: len, opcode, unique (uapi layout).
        assert_eq!(unique.offset, opcode.offset + 4);
        assert_eq!(btf.field("fuse_conn", "dev").unwrap().size, 4);
        assert_eq!(btf.field("file_lock", "c.flc_type").unwrap().size, 1);
        let ops = btf.enum_values("fuse_opcode").unwrap();
        assert!(ops.contains(&(1, "FUSE_LOOKUP".to_string())), "{ops:?}");
        assert!(ops.contains(&(33, "FUSE_SETLKW".to_string())), "{ops:?}");
    }
}
