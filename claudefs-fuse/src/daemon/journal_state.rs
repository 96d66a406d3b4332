//! The journal's records and the live state they add up to.
//!
//! A [`Record`] is one line of the journal (see `journal.rs`); a
//! [`LiveState`] is what a sequence of them leaves standing: the nodes the
//! kernel knows (FUSE inode -> path), the open handles, their dirty ranges,
//! the flock holders, and the recent non-idempotent requests
//! ([`Record::Intent`] / [`Record::Done`]). The journal keeps one in memory
//! as it writes, so that it can start the log over from a snapshot
//! ([`LiveState::records`]), and a restarted server rebuilds one from the
//! log to restore what the dead one held.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// Requests with an intent record kept at most (the oldest go first).
pub const INTENTS_KEPT: usize = 4096;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Record {
    Open {
        fh: u64,
        ino: u64,
        pid: u32,
        flags: i32,
        path: String,
    },
    Dirty {
        fh: u64,
        ino: u64,
        off: u64,
        len: u64,
        since: u64,
    },
    Sync {
        fh: u64,
    },
    Close {
        fh: u64,
    },
    /// The kernel knows `ino`, first named `path` (relative to the root),
    /// with the storage's file handle `h` when it has one (`filehandle.rs`).
    Node {
        ino: u64,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        h: Option<String>,
    },
    /// The kernel forgot `ino`.
    Unnode {
        ino: u64,
    },
    /// `from` and everything below it was renamed to `to`.
    Moved {
        from: String,
        to: String,
    },
    /// `a` and `b` were exchanged.
    Swapped {
        a: String,
        b: String,
    },
    /// Open file description `owner` holds a flock on `ino`.
    Lock {
        ino: u64,
        owner: u64,
        pid: u32,
        excl: bool,
    },
    /// `owner` no longer holds a flock on `ino`.
    Unlock {
        ino: u64,
        owner: u64,
    },
    /// Request `u` (the kernel's unique) is about to change `path`.
    Intent {
        u: u64,
        op: IntentOp,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// Request `u` was applied: `err` 0, or the errno it failed with.
    Done {
        u: u64,
        err: i32,
    },
}

/// What a non-idempotent request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentOp {
    /// create, mknod, mkdir, symlink, link: makes `path`.
    Make,
    /// unlink, rmdir: removes `path`.
    Remove,
    /// rename `path` to `to`.
    Rename,
    /// exchange `path` and `to` (RENAME_EXCHANGE).
    Exchange,
}

/// An open handle (from its `open` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenHandle {
    pub ino: u64,
    pub pid: u32,
    pub flags: i32,
    pub path: String,
}

/// A written, not yet fsync'd range of a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyRange {
    pub ino: u64,
    pub off: u64,
    pub len: u64,
    /// Unix seconds of the first write of the range.
    pub since: u64,
}

/// A flock held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub pid: u32,
    pub excl: bool,
}

/// A non-idempotent request's record: what it does, and whether it was
/// applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub op: IntentOp,
    pub path: String,
    pub to: Option<String>,
    /// `Some(errno)` (0 for success) once applied.
    pub done: Option<i32>,
}

/// What the records seen so far leave standing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveState {
    pub nodes: BTreeMap<u64, String>,
    /// The storage file handles of the nodes that have one.
    pub handles: BTreeMap<u64, String>,
    pub opens: BTreeMap<u64, OpenHandle>,
    pub dirty: BTreeMap<u64, DirtyRange>,
    pub locks: BTreeMap<(u64, u64), Held>,
    pub intents: BTreeMap<u64, Intent>,
    /// Intent ids, oldest first (to drop the oldest past [`INTENTS_KEPT`]).
    order: VecDeque<u64>,
    /// `nodes` by path, in byte order: the nodes at and below a renamed
    /// path are one range (`p`, then `p/` up to `p0`), not a walk over
    /// every node.
    by_path: BTreeSet<(String, u64)>,
}

/// `p` with its leading `from` replaced by `to`, if it starts with `from`.
fn moved(p: &str, from: &str, to: &str) -> Option<String> {
    let rest = p.strip_prefix(from)?;
    if rest.is_empty() {
        Some(to.to_string())
    } else {
        rest.strip_prefix('/').map(|r| format!("{to}/{r}"))
    }
}

impl LiveState {
    /// The state `records` leave.
    pub fn from_records(records: &[Record]) -> Self {
        let mut s = Self::default();
        for r in records {
            s.apply(r);
        }
        s
    }

    /// Applies one record.
    /// The nodes named `p` or a path below it.
    fn at_or_below(&self, p: &str) -> Vec<(String, u64)> {
        let exact = (p.to_string(), 0)..=(p.to_string(), u64::MAX);
        let below = (format!("{p}/"), 0)..(format!("{p}0"), 0);
        self.by_path
            .range(exact)
            .chain(self.by_path.range(below))
            .cloned()
            .collect()
    }

    /// Gives each `(new, old, ino)` node its new path.
    fn rename_nodes(&mut self, m: Vec<(String, String, u64)>) {
        for (_, old, ino) in &m {
            self.by_path.remove(&(old.clone(), *ino));
        }
        for (new, _, ino) in m {
            self.by_path.insert((new.clone(), ino));
            self.nodes.insert(ino, new);
        }
    }

    pub fn apply(&mut self, r: &Record) {
        match r {
            Record::Open {
                fh,
                ino,
                pid,
                flags,
                path,
            } => {
                self.opens.insert(
                    *fh,
                    OpenHandle {
                        ino: *ino,
                        pid: *pid,
                        flags: *flags,
                        path: path.clone(),
                    },
                );
            }
            Record::Dirty {
                fh,
                ino,
                off,
                len,
                since,
            } => {
                self.dirty.insert(
                    *fh,
                    DirtyRange {
                        ino: *ino,
                        off: *off,
                        len: *len,
                        since: *since,
                    },
                );
            }
            Record::Sync { fh } => {
                self.dirty.remove(fh);
            }
            Record::Close { fh } => {
                self.dirty.remove(fh);
                self.opens.remove(fh);
            }
            Record::Node { ino, path, h } => {
                if let Some(old) = self.nodes.insert(*ino, path.clone()) {
                    self.by_path.remove(&(old, *ino));
                }
                self.by_path.insert((path.clone(), *ino));
                match h {
                    Some(h) => self.handles.insert(*ino, h.clone()),
                    None => self.handles.remove(ino),
                };
            }
            Record::Unnode { ino } => {
                if let Some(old) = self.nodes.remove(ino) {
                    self.by_path.remove(&(old, *ino));
                }
                self.handles.remove(ino);
            }
            Record::Moved { from, to } => {
                let m: Vec<_> = self
                    .at_or_below(from)
                    .into_iter()
                    .filter_map(|(p, ino)| Some((moved(&p, from, to)?, p, ino)))
                    .collect();
                self.rename_nodes(m);
            }
            Record::Swapped { a, b } => {
                let mut m: Vec<_> = self
                    .at_or_below(a)
                    .into_iter()
                    .filter_map(|(p, ino)| Some((moved(&p, a, b)?, p, ino)))
                    .collect();
                // Under both (one is below the other): `a`'s rule wins.
                m.extend(self.at_or_below(b).into_iter().filter_map(|(p, ino)| {
                    if moved(&p, a, b).is_some() {
                        return None;
                    }
                    Some((moved(&p, b, a)?, p, ino))
                }));
                self.rename_nodes(m);
            }
            Record::Lock {
                ino,
                owner,
                pid,
                excl,
            } => {
                self.locks.insert(
                    (*ino, *owner),
                    Held {
                        pid: *pid,
                        excl: *excl,
                    },
                );
            }
            Record::Unlock { ino, owner } => {
                self.locks.remove(&(*ino, *owner));
            }
            Record::Intent { u, op, path, to } => {
                if self
                    .intents
                    .insert(
                        *u,
                        Intent {
                            op: *op,
                            path: path.clone(),
                            to: to.clone(),
                            done: None,
                        },
                    )
                    .is_none()
                {
                    self.order.push_back(*u);
                }
                while self.order.len() > INTENTS_KEPT {
                    if let Some(old) = self.order.pop_front() {
                        self.intents.remove(&old);
                    }
                }
            }
            Record::Done { u, err } => {
                if let Some(i) = self.intents.get_mut(u) {
                    i.done = Some(*err);
                }
            }
        }
    }

    /// Records that rebuild this state (a snapshot to start a log with).
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (ino, path) in &self.nodes {
            out.push(Record::Node {
                ino: *ino,
                path: path.clone(),
                h: self.handles.get(ino).cloned(),
            });
        }
        for (fh, o) in &self.opens {
            out.push(Record::Open {
                fh: *fh,
                ino: o.ino,
                pid: o.pid,
                flags: o.flags,
                path: o.path.clone(),
            });
        }
        for (fh, d) in &self.dirty {
            out.push(Record::Dirty {
                fh: *fh,
                ino: d.ino,
                off: d.off,
                len: d.len,
                since: d.since,
            });
        }
        for ((ino, owner), h) in &self.locks {
            out.push(Record::Lock {
                ino: *ino,
                owner: *owner,
                pid: h.pid,
                excl: h.excl,
            });
        }
        for u in &self.order {
            if let Some(i) = self.intents.get(u) {
                out.push(Record::Intent {
                    u: *u,
                    op: i.op,
                    path: i.path.clone(),
                    to: i.to.clone(),
                });
                if let Some(err) = i.done {
                    out.push(Record::Done { u: *u, err });
                }
            }
        }
        out
    }

    /// Whether nothing is live (a log of it would be empty).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.opens.is_empty()
            && self.dirty.is_empty()
            && self.locks.is_empty()
            && self.intents.is_empty()
    }

    /// The largest handle number in use (0 if none).
    pub fn max_fh(&self) -> u64 {
        self.opens.keys().next_back().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ino: u64, path: &str) -> Record {
        Record::Node {
            ino,
            path: path.into(),
            h: (ino == 10).then(|| "1:0a0b".to_string()),
        }
    }

    #[test]
    fn renames_rewrite_the_subtree_and_only_it() {
        let s = LiveState::from_records(&[
            node(10, "d"),
            node(11, "d/x"),
            node(12, "dx"),
            Record::Moved {
                from: "d".into(),
                to: "e/f".into(),
            },
        ]);
        assert_eq!(s.nodes[&10], "e/f");
        assert_eq!(s.nodes[&11], "e/f/x");
        assert_eq!(s.nodes[&12], "dx");
        let s = LiveState::from_records(
            &[
                s.records(),
                vec![Record::Swapped {
                    a: "e/f".into(),
                    b: "dx".into(),
                }],
            ]
            .concat(),
        );
        assert_eq!(s.nodes[&11], "dx/x");
        assert_eq!(s.nodes[&12], "e/f");
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_state() {
        let recs = vec![
            node(10, "a"),
            node(11, "b"),
            Record::Unnode { ino: 11 },
            Record::Open {
                fh: 1,
                ino: 10,
                pid: 5,
                flags: 2,
                path: "a".into(),
            },
            Record::Open {
                fh: 2,
                ino: 10,
                pid: 5,
                flags: 0,
                path: "a".into(),
            },
            Record::Dirty {
                fh: 1,
                ino: 10,
                off: 0,
                len: 4,
                since: 1,
            },
            Record::Close { fh: 2 },
            Record::Lock {
                ino: 10,
                owner: 77,
                pid: 5,
                excl: true,
            },
            Record::Lock {
                ino: 10,
                owner: 78,
                pid: 6,
                excl: false,
            },
            Record::Unlock { ino: 10, owner: 78 },
            Record::Intent {
                u: 9,
                op: IntentOp::Rename,
                path: "a".into(),
                to: Some("c".into()),
            },
            Record::Done { u: 9, err: 0 },
            Record::Intent {
                u: 12,
                op: IntentOp::Make,
                path: "n".into(),
                to: None,
            },
        ];
        let s = LiveState::from_records(&recs);
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.opens.len(), 1);
        assert_eq!(s.max_fh(), 1);
        assert_eq!(s.dirty.len(), 1);
        assert_eq!(s.locks.len(), 1);
        assert_eq!(s.intents[&9].done, Some(0));
        assert_eq!(s.intents[&12].done, None);
        let again = LiveState::from_records(&s.records());
        assert_eq!(again, s);
    }

    #[test]
    fn old_intents_are_dropped() {
        let mut s = LiveState::default();
        for u in 0..(INTENTS_KEPT as u64 + 10) {
            s.apply(&Record::Intent {
                u,
                op: IntentOp::Remove,
                path: "x".into(),
                to: None,
            });
        }
        assert_eq!(s.intents.len(), INTENTS_KEPT);
        assert!(!s.intents.contains_key(&0));
        assert!(s.intents.contains_key(&(INTENTS_KEPT as u64 + 9)));
    }

    /// How the nodes moved before the path index: a walk over all of them.
    fn walk(nodes: &mut BTreeMap<u64, String>, r: &Record) {
        match r {
            Record::Node { ino, path, .. } => {
                nodes.insert(*ino, path.clone());
            }
            Record::Unnode { ino } => {
                nodes.remove(ino);
            }
            Record::Moved { from, to } => {
                for p in nodes.values_mut() {
                    if let Some(n) = moved(p, from, to) {
                        *p = n;
                    }
                }
            }
            Record::Swapped { a, b } => {
                for p in nodes.values_mut() {
                    if let Some(n) = moved(p, a, b).or_else(|| moved(p, b, a)) {
                        *p = n;
                    }
                }
            }
            _ => {}
        }
    }

    fn name_record() -> impl proptest::strategy::Strategy<Value = Record> {
        use proptest::prelude::*;
        let name = proptest::sample::select(vec![
            "", "a", "b", "a/x", "a/y", "b/x", "a/x/z", "a0", "a.b", "ab", "c",
        ])
        .prop_map(String::from);
        prop_oneof![
            3 => (10u64..16, name.clone()).prop_map(|(ino, path)| Record::Node { ino, path, h: None }),
            1 => (10u64..16).prop_map(|ino| Record::Unnode { ino }),
            2 => (name.clone(), name.clone()).prop_map(|(from, to)| Record::Moved { from, to }),
            1 => (name.clone(), name).prop_map(|(a, b)| Record::Swapped { a, b }),
        ]
    }

    proptest::proptest! {
        #[test]
        fn renames_through_the_path_index_match_a_walk(
            records in proptest::collection::vec(name_record(), 1..50)
        ) {
            let mut s = LiveState::default();
            let mut want = BTreeMap::new();
            for r in &records {
                s.apply(r);
                walk(&mut want, r);
                proptest::prop_assert_eq!(&s.nodes, &want, "after {:?}", r);
                let indexed: BTreeSet<(String, u64)> =
                    s.nodes.iter().map(|(i, p)| (p.clone(), *i)).collect();
                proptest::prop_assert_eq!(&s.by_path, &indexed);
            }
        }
    }
}
