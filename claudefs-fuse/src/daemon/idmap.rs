//! uid/gid mapping glue around [`crate::idmap::IdMapper`].
//!
//! Sides: **host** is the storage (backing) side — the ids stored in the
//! shared directory, as `lstat` on a storage path reports them. **local** is
//! what the FUSE mount shows its users. This follows the `IdMapper` API
//! (`map_uid(host) -> local`) and bindfs/NFS practice: the storage is the
//! source of truth, the client machine gets a view of it.
//!
//! * getattr/lookup/readdirplus/create results: `host -> local` (`map_*`).
//! * chown and the owner of newly created files: `local -> host`
//!   (the reverse): identity passes through; `shift` shifts back the
//!   local range `[LOCAL, LOCAL+COUNT)`; `table` uses `reverse_map_*` and
//!   passes unknown ids through; `squash` has no reverse (chown -> `EPERM`,
//!   new files keep the daemon's owner).
//!
//! Root is never remapped in identity and shift modes (the module's rule).
//!
//! Table file format (`--idmap table:FILE`): one mapping per line,
//! `u HOST LOCAL` or `g HOST LOCAL`; `#` starts a comment.

use std::path::Path;

use anyhow::{bail, Context};

use crate::idmap::{IdMapEntry, IdMapMode, IdMapper};

use super::config::IdMapSpec;

/// The daemon's id mapping.
#[derive(Debug)]
pub struct IdMap {
    mapper: IdMapper,
    spec: IdMapSpec,
}

impl IdMap {
    /// Builds the mapping of an `--idmap` value (reads a table file).
    pub fn from_spec(spec: &IdMapSpec) -> anyhow::Result<Self> {
        let mapper = match spec {
            IdMapSpec::Identity => IdMapper::new(IdMapMode::Identity),
            IdMapSpec::Squash { uid, gid } => IdMapper::new(IdMapMode::Squash {
                nobody_uid: *uid,
                nobody_gid: *gid,
            }),
            IdMapSpec::Shift { host, local, count } => IdMapper::new(IdMapMode::RangeShift {
                host_base: *host,
                local_base: *local,
                count: *count,
            }),
            IdMapSpec::Table(file) => load_table(file)?,
        };
        Ok(Self {
            mapper,
            spec: spec.clone(),
        })
    }

    /// The underlying mapper (stats, mode).
    pub fn mapper(&self) -> &IdMapper {
        &self.mapper
    }

    /// Human-readable mode for status.
    pub fn describe(&self) -> String {
        match &self.spec {
            IdMapSpec::Identity => "identity".into(),
            IdMapSpec::Squash { uid, gid } => format!("squash:{uid}:{gid}"),
            IdMapSpec::Shift { host, local, count } => format!("shift:{host}:{local}:{count}"),
            IdMapSpec::Table(f) => format!("table:{}", f.display()),
        }
    }

    /// Storage uid -> uid shown on the mount.
    pub fn uid_to_local(&self, host: u32) -> u32 {
        self.mapper.map_uid(host)
    }

    /// Storage gid -> gid shown on the mount.
    pub fn gid_to_local(&self, host: u32) -> u32 {
        self.mapper.map_gid(host)
    }

    /// Mount uid -> storage uid (`None`: no storage id shows as it).
    pub fn uid_to_host(&self, local: u32) -> Option<u32> {
        self.reverse(local, true)
    }

    /// Mount gid -> storage gid.
    pub fn gid_to_host(&self, local: u32) -> Option<u32> {
        self.reverse(local, false)
    }

    fn reverse(&self, local: u32, uid: bool) -> Option<u32> {
        match &self.spec {
            IdMapSpec::Identity => Some(local),
            IdMapSpec::Squash { .. } => None,
            IdMapSpec::Shift {
                host,
                local: lbase,
                count,
            } => {
                if local != 0 && local >= *lbase && local - lbase < *count {
                    Some(host + (local - lbase))
                } else {
                    Some(local)
                }
            }
            IdMapSpec::Table(_) => {
                let r = if uid {
                    self.mapper.reverse_map_uid(local)
                } else {
                    self.mapper.reverse_map_gid(local)
                };
                Some(r.unwrap_or(local))
            }
        }
    }
}

fn load_table(file: &Path) -> anyhow::Result<IdMapper> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("idmap table {}", file.display()))?;
    let mut m = IdMapper::new(IdMapMode::Table);
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let parse = |s: &str| {
            s.parse::<u32>()
                .with_context(|| format!("{}:{}: bad id {s:?}", file.display(), n + 1))
        };
        match f.as_slice() {
            [kind, h, l] => {
                let e = IdMapEntry {
                    host_id: parse(h)?,
                    local_id: parse(l)?,
                };
                let r = match *kind {
                    "u" => m.add_uid_entry(e),
                    "g" => m.add_gid_entry(e),
                    _ => bail!("{}:{}: expected `u|g HOST LOCAL`", file.display(), n + 1),
                };
                r.map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), n + 1))?;
            }
            _ => bail!("{}:{}: expected `u|g HOST LOCAL`", file.display(), n + 1),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_round_trips() {
        let m = IdMap::from_spec(&IdMapSpec::Shift {
            host: 1000,
            local: 5000,
            count: 10,
        })
        .unwrap();
        assert_eq!(m.uid_to_local(1003), 5003);
        assert_eq!(m.uid_to_host(5003), Some(1003));
        assert_eq!(m.uid_to_local(0), 0);
        assert_eq!(m.uid_to_host(42), Some(42));
    }

    #[test]
    fn squash_has_no_reverse() {
        let m = IdMap::from_spec(&IdMapSpec::Squash {
            uid: 65534,
            gid: 65534,
        })
        .unwrap();
        assert_eq!(m.uid_to_local(0), 65534);
        assert_eq!(m.uid_to_host(65534), None);
    }

    #[test]
    fn table_file_loads() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t");
        std::fs::write(&f, "# map\nu 1000 2000\ng 100 200\n").unwrap();
        let m = IdMap::from_spec(&IdMapSpec::Table(f.clone())).unwrap();
        assert_eq!(m.uid_to_local(1000), 2000);
        assert_eq!(m.gid_to_local(100), 200);
        assert_eq!(m.uid_to_host(2000), Some(1000));
        std::fs::write(&f, "x 1 2\n").unwrap();
        assert!(IdMap::from_spec(&IdMapSpec::Table(f)).is_err());
    }
}
