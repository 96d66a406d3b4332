//! Live daemon state over a unix socket (`status.sock` in the state dir).
//!
//! Each connection gets one JSON document ([`Status`]) and is closed.
//! `claudefs-fuse status --state-dir DIR` connects and prints it (as text,
//! or raw with `--json`).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::recovery::RecoverySummary;

/// Socket file name in the state dir.
pub const SOCKET: &str = "status.sock";

/// One storage path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathStatus {
    pub id: u64,
    pub dir: String,
    pub addr: String,
    pub state: String,
    pub priority: u8,
    pub latency_us: u64,
    pub error_count: u64,
    pub score: u64,
}

/// Everything `status` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub mountpoint: String,
    pub pid: u32,
    pub policy: String,
    pub paths: Vec<PathStatus>,
    pub flock: serde_json::Value,
    pub recovery: RecoverySummary,
    pub idmap: serde_json::Value,
    pub open_files: usize,
    pub inodes: usize,
    pub spans: serde_json::Value,
    pub passthrough: bool,
    /// FUSE workers: threads, reading, parked, woken (see `readers`).
    #[serde(default)]
    pub workers: serde_json::Value,
    /// Read-only backing fds kept open for reuse (see `fdcache`).
    #[serde(default)]
    pub cached_fds: usize,
    /// Every open reaches the storage and closes of handles open for
    /// writing do too (FLUSH): a storage path keeps close-to-open
    /// consistency (see `Core::close_to_open`).
    #[serde(default)]
    pub close_to_open: bool,
    /// Entry and attribute timeout of the kernel's caches
    /// (`--cache-timeout-ms`); none from a daemon that predates it.
    #[serde(default)]
    pub cache_timeout_ms: Option<u64>,
    /// Requests answered per operation: `{op: [answered, errors]}`.
    #[serde(default)]
    pub requests: std::collections::BTreeMap<String, [u64; 2]>,
    /// How requests reach the daemon: `uring` or `dev`.
    #[serde(default)]
    pub transport: String,
    /// Requests the session answered itself: malformed, unknown opcodes,
    /// handler panics (see `session::Counters`).
    #[serde(default)]
    pub session: serde_json::Value,
    /// The keeper's view: server generation, restarts, upgrades, the last
    /// hand-over's gap (see `server::KeeperView`).
    #[serde(default)]
    pub keeper: serde_json::Value,
    /// Over io_uring: the queue threads' policy, how many run and how many
    /// at SCHED_IDLE now, demotions (see `session::queue_sched`).
    #[serde(default)]
    pub queues: serde_json::Value,
}

/// Serves `snapshot()` on `dir/status.sock` from a background thread.
pub fn serve(
    dir: &Path,
    snapshot: Arc<dyn Fn() -> Status + Send + Sync>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("cannot bind status socket {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("cfs-status".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if let Ok(body) = serde_json::to_vec(&snapshot()) {
                    let _ = conn.write_all(&body);
                }
            }
        })?;
    Ok(path)
}

/// Reads the status of the daemon with state dir `dir`.
pub fn fetch(dir: &Path) -> anyhow::Result<Status> {
    let path = dir.join(SOCKET);
    let mut s = UnixStream::connect(&path)
        .map_err(|e| anyhow::anyhow!("no daemon answers on {}: {e}", path.display()))?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(serde_json::from_str(&body)?)
}

/// Text form of a status.
pub fn render(s: &Status) -> String {
    let mut o = format!(
        "mountpoint: {}\npid: {}\ntransport: {}  session: {}\npolicy: {}\npassthrough: {}  close-to-open: {}\nopen files: {}  inodes: {}  cached read-only fds: {}\nworkers: {}\n",
        s.mountpoint,
        s.pid,
        s.transport,
        s.session,
        s.policy,
        s.passthrough,
        s.close_to_open,
        s.open_files,
        s.inodes,
        s.cached_fds,
        s.workers
    );
    if let Some(ms) = s.cache_timeout_ms {
        o.push_str(&format!("cache timeout: {ms} ms\n"));
    }
    if !s.queues.is_null() {
        o.push_str(&format!("queue threads: {}\n", s.queues));
    }
    o.push_str("paths:\n");
    for p in &s.paths {
        o.push_str(&format!(
            "  [{}] {:<12} prio={:<3} latency={}us errors={} {} ({})\n",
            p.id, p.state, p.priority, p.latency_us, p.error_count, p.dir, p.addr
        ));
    }
    o.push_str(&format!("flock: {}\n", s.flock));
    o.push_str(&format!(
        "recovery: {} (unclean={} open={} recovered={} orphaned={} pending_writes={} stale={})\n",
        s.recovery.state,
        s.recovery.unclean,
        s.recovery.open_files,
        s.recovery.recovered,
        s.recovery.orphaned,
        s.recovery.pending_writes,
        s.recovery.stale_pending_writes
    ));
    o.push_str(&format!("idmap: {}\nspans: {}\n", s.idmap, s.spans));
    let requests: Vec<String> = s
        .requests
        .iter()
        .map(|(op, [n, e])| match e {
            0 => format!("{op}={n}"),
            _ => format!("{op}={n} ({e} failed)"),
        })
        .collect();
    o.push_str(&format!("requests: {}\n", requests.join(" ")));
    o
}
