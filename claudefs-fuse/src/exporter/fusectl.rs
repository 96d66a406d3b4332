//! Requests waiting on each FUSE connection, from the kernel's FUSE control
//! file system (fusectl, normally at `/sys/fs/fuse/connections`): its
//! `<conn>/waiting` file counts the requests queued for the daemon or
//! being served by it. A count that stays above zero while no request
//! finishes is what a hung daemon looks like, and reading it needs no
//! probes. [`WaitingCollector`] publishes it as
//! `claudefs_fuse_requests_waiting{mount,fstype}`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::model::{Collector, FamilyBuilder, MetricFamily};
use super::names::{self, Family};
use crate::probes::mountinfo::MountTable;

/// Where fusectl is normally mounted, and where it is mounted if missing.
pub const DEFAULT_FUSECTL: &str = "/sys/fs/fuse/connections";

/// A fusectl mount.
#[derive(Debug, Clone)]
pub struct Fusectl {
    root: PathBuf,
}

impl Fusectl {
    /// A fusectl rooted at `root` (tests, or a caller that knows better).
    pub fn at(root: impl Into<PathBuf>) -> Fusectl {
        Fusectl { root: root.into() }
    }

    /// The mounted fusectl, or one mounted at [`DEFAULT_FUSECTL`] (needs
    /// CAP_SYS_ADMIN; most distributions mount it at boot).
    pub fn find_or_mount() -> std::io::Result<Fusectl> {
        if let Some(e) = MountTable::read_self()
            .unwrap_or_default()
            .entries()
            .iter()
            .find(|e| e.fstype == "fusectl")
        {
            return Ok(Fusectl::at(e.mount_point.clone()));
        }
        let target = Path::new(DEFAULT_FUSECTL);
        crate::probes::tracefs::mount_pseudo_fs(c"fusectl", target)?;
        tracing::info!("fusectl was not mounted; mounted it at {DEFAULT_FUSECTL}");
        Ok(Fusectl::at(target))
    }

    /// Requests waiting on connection `conn` (the kernel `dev_t` of the
    /// mount); `None` if the connection is gone or unreadable.
    pub fn waiting(&self, conn: u32) -> Option<u64> {
        std::fs::read_to_string(self.root.join(conn.to_string()).join("waiting"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// The waiting requests of every FUSE connection mounted in `mounts` (or
/// only of `only_conn`), one series per connection, named like the probe
/// metrics name it (see [`MountTable::by_dev`]).
pub fn waiting_family(
    fusectl: &Fusectl,
    mounts: &MountTable,
    only_conn: Option<u32>,
) -> Option<MetricFamily> {
    let mut conns: Vec<u32> = mounts.fuse_mounts().map(|e| e.dev).collect();
    conns.sort_unstable();
    conns.dedup();
    let mut family = FamilyBuilder::gauge(names::REQUESTS_WAITING);
    for conn in conns
        .into_iter()
        .filter(|c| only_conn.is_none_or(|o| o == *c))
    {
        let (Some(entry), Some(n)) = (mounts.by_dev(conn), fusectl.waiting(conn)) else {
            continue;
        };
        family.add(
            vec![
                entry.mount_point.display().to_string(),
                entry.fstype.clone(),
            ],
            n as f64,
        );
    }
    family.build()
}

/// Which connections a [`WaitingCollector`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connections {
    /// Every FUSE mount of the host (`observe`).
    All,
    /// The connection mounted at this path, looked up at each scrape in
    /// the mount table the scrape reads anyway (the daemon: nothing
    /// depends on finding it when the exporter starts).
    MountedAt(PathBuf),
}

impl Connections {
    /// The one connection to report, if one: `Err` when the mount is not
    /// in `mounts`.
    fn pick(&self, mounts: &MountTable) -> Result<Option<u32>, ()> {
        match self {
            Connections::All => Ok(None),
            Connections::MountedAt(p) => mounts.mounted_at(p).map(|e| Some(e.dev)).ok_or(()),
        }
    }
}

/// A `Collector` of [`waiting_family`] at each scrape.
pub struct WaitingCollector {
    fusectl: Fusectl,
    only: Connections,
    families: Vec<Family>,
    warned: AtomicBool,
}

impl std::fmt::Debug for WaitingCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitingCollector").finish_non_exhaustive()
    }
}

impl WaitingCollector {
    pub fn new(fusectl: Fusectl, only: Connections) -> Self {
        Self {
            fusectl,
            only,
            families: vec![names::REQUESTS_WAITING],
            warned: AtomicBool::new(false),
        }
    }
}

impl Collector for WaitingCollector {
    fn families(&self) -> &[Family] {
        &self.families
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mounts = match MountTable::read_self() {
            Ok(m) => m,
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!("cannot read the mount table: {e}");
                }
                return Vec::new();
            }
        };
        let Ok(only_conn) = self.only.pick(&mounts) else {
            return Vec::new();
        };
        waiting_family(&self.fusectl, &mounts, only_conn)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::text::encode;

    const MOUNTINFO: &str = "\
36 1 0:55 / /mnt/cfs rw,nosuid - fuse.claudefs claudefs rw,user_id=0
37 1 0:56 / /mnt/ssh rw,nosuid - fuse.sshfs host: rw,user_id=0
38 1 0:56 / /mnt/ssh-again rw,nosuid - fuse.sshfs host: rw,user_id=0
39 1 0:57 / /mnt/gone rw,nosuid - fuse.x x rw,user_id=0
40 1 8:1 / /data rw - ext4 /dev/sda1 rw
";

    fn fake_fusectl(waiting: &[(u32, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (conn, text) in waiting {
            let dir = d.path().join(conn.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("waiting"), text).unwrap();
        }
        d
    }

    /// The daemon's collector finds its mount at each scrape: a mount that
    /// appears after the collector was made is reported, one that is not
    /// (yet) mounted reports nothing rather than every mount.
    #[test]
    fn a_collector_for_a_mountpoint_finds_it_at_each_scrape() {
        let mounts = MountTable::parse(MOUNTINFO);
        let at = |p: &str| Connections::MountedAt(PathBuf::from(p));
        assert_eq!(at("/mnt/cfs").pick(&mounts), Ok(Some(55)));
        assert_eq!(at("/mnt/ssh-again").pick(&mounts), Ok(Some(56)));
        assert_eq!(at("/mnt/later").pick(&mounts), Err(()));
        assert_eq!(Connections::All.pick(&mounts), Ok(None));
        let d = fake_fusectl(&[(55, "3\n"), (58, "4\n")]);
        let c = WaitingCollector::new(Fusectl::at(d.path()), at("/mnt/later"));
        let later = MountTable::parse(&format!(
            "{MOUNTINFO}41 1 0:58 / /mnt/later rw - fuse.claudefs claudefs rw\n"
        ));
        let pick = c.only.pick(&later).unwrap();
        let text = String::from_utf8(encode(&[waiting_family(&c.fusectl, &later, pick).unwrap()]))
            .unwrap();
        assert!(text.contains("mount=\"/mnt/later\""), "{text}");
        assert!(!text.contains("/mnt/cfs"), "{text}");
    }

    #[test]
    fn one_series_per_connection_with_its_mount_name() {
        let d = fake_fusectl(&[(55, "3\n"), (56, "0\n"), (8 << 20 | 1, "9\n")]);
        let fc = Fusectl::at(d.path());
        let mounts = MountTable::parse(MOUNTINFO);
        let text =
            String::from_utf8(encode(&[waiting_family(&fc, &mounts, None).unwrap()])).unwrap();
        assert!(
            text.contains("# TYPE claudefs_fuse_requests_waiting gauge"),
            "{text}"
        );
        assert!(
            text.contains(
                "claudefs_fuse_requests_waiting{mount=\"/mnt/cfs\",fstype=\"fuse.claudefs\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "claudefs_fuse_requests_waiting{mount=\"/mnt/ssh\",fstype=\"fuse.sshfs\"} 0"
            ),
            "{text}"
        );
        // A bind mount of the same connection is not a second series; a
        // connection without a fusectl entry and a block device are skipped.
        assert_eq!(
            text.matches("claudefs_fuse_requests_waiting{").count(),
            2,
            "{text}"
        );
    }

    #[test]
    fn only_the_own_connection() {
        let d = fake_fusectl(&[(55, "3\n"), (56, "1\n")]);
        let fc = Fusectl::at(d.path());
        let mounts = MountTable::parse(MOUNTINFO);
        let fam = waiting_family(&fc, &mounts, Some(56)).unwrap();
        let text = String::from_utf8(encode(&[fam])).unwrap();
        assert_eq!(
            text.matches("claudefs_fuse_requests_waiting{").count(),
            1,
            "{text}"
        );
        assert!(text.contains("mount=\"/mnt/ssh\""), "{text}");
        assert!(waiting_family(&fc, &mounts, Some(99)).is_none());
    }

    #[test]
    fn unreadable_counts_are_skipped() {
        let d = fake_fusectl(&[(55, "not a number")]);
        assert_eq!(Fusectl::at(d.path()).waiting(55), None);
        assert_eq!(Fusectl::at(d.path()).waiting(56), None);
    }
}
