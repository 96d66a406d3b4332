//! Command-line and config-file options of `claudefs-fuse mount` and
//! `claudefs-fuse status`.
//!
//! Every mount option can also be given in a TOML file (`--config FILE`)
//! with the same names (`path = ["/a,priority=10", "/b"]`, `policy`,
//! `idmap`, `state_dir`, `threads`, `poll_us`, `passthrough`, `transport`, `health_interval_ms`,
//! `sample_rate`, `metrics_addr`, `ebpf`, `otlp_endpoint`, `otlp_protocol`,
//! `slow_threshold`). Flags given on the command line win over the file.
//!
//! Exporting is opt-in: without `--metrics-addr` the daemon opens no
//! port; without `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`)
//! spans stay in the bounded in-memory buffer.
//!
//! The state dir defaults to `/run/claudefs-fuse/<escaped mountpoint>`
//! (the mountpoint's absolute path with `/` replaced by `-`), so
//! `claudefs-fuse status` needs `--state-dir` or `--mountpoint`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Load-balancing policy among the usable storage paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyArg {
    /// Cycle through the usable paths.
    RoundRobin,
    /// The usable path with the lowest latency/error score.
    LeastLatency,
    /// The usable path with the highest priority.
    Primary,
}

/// How requests reach the daemon (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportArg {
    /// io_uring when the kernel has it on or it can be turned on, else dev.
    Auto,
    /// FUSE over io_uring (Linux 6.14; fails when unavailable).
    Uring,
    /// read(2)/writev(2) on /dev/fuse.
    Dev,
}

/// One `--path DIR[,priority=N][,addr=HOST:PORT]` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSpec {
    /// Root directory of this storage path.
    pub dir: PathBuf,
    /// Priority (higher is preferred by the `primary` policy).
    pub priority: u8,
    /// Remote address shown in status (defaults to the directory).
    pub addr: String,
}

impl std::str::FromStr for PathSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let dir = parts.next().unwrap_or_default();
        if dir.is_empty() {
            return Err(format!("empty directory in path spec {s:?}"));
        }
        let mut spec = PathSpec {
            dir: PathBuf::from(dir),
            priority: 100,
            addr: dir.to_string(),
        };
        for part in parts {
            match part.split_once('=') {
                Some(("priority", v)) => {
                    spec.priority = v
                        .parse()
                        .map_err(|_| format!("bad priority {v:?} in path spec (0..=255)"))?;
                }
                Some(("addr", v)) if !v.is_empty() => spec.addr = v.to_string(),
                _ => {
                    return Err(format!(
                        "unknown path option {part:?} (priority=N, addr=HOST:PORT)"
                    ))
                }
            }
        }
        Ok(spec)
    }
}

/// `--idmap` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMapSpec {
    /// No mapping.
    Identity,
    /// Everything shows as this uid/gid (default 65534:65534).
    Squash { uid: u32, gid: u32 },
    /// `shift:HOST:LOCAL:COUNT`: host ids `HOST..HOST+COUNT` show as `LOCAL..`.
    Shift { host: u32, local: u32, count: u32 },
    /// `table:FILE`: lines `u HOST LOCAL` / `g HOST LOCAL` (`#` comments).
    Table(PathBuf),
}

impl std::str::FromStr for IdMapSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("bad id {v:?} in --idmap {s:?}"))
        };
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["identity"] => Ok(Self::Identity),
            ["squash"] => Ok(Self::Squash {
                uid: 65534,
                gid: 65534,
            }),
            ["squash", u, g] => Ok(Self::Squash {
                uid: num(u)?,
                gid: num(g)?,
            }),
            ["shift", h, l, c] => Ok(Self::Shift {
                host: num(h)?,
                local: num(l)?,
                count: num(c)?,
            }),
            ["table", f] if !f.is_empty() => Ok(Self::Table(PathBuf::from(f))),
            _ => Err(format!(
                "bad --idmap {s:?} (identity|squash[:UID:GID]|shift:HOST:LOCAL:COUNT|table:FILE)"
            )),
        }
    }
}

/// Options of `claudefs-fuse mount`.
#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// Storage path: `DIR[,priority=N][,addr=HOST:PORT]` (repeatable).
    #[arg(long = "path", value_name = "SPEC")]
    pub paths: Vec<PathSpec>,
    /// Path selection policy.
    #[arg(long, value_enum)]
    pub policy: Option<PolicyArg>,
    /// uid/gid mapping between storage ("host") and the mount ("local").
    #[arg(long, value_name = "MODE")]
    pub idmap: Option<IdMapSpec>,
    /// Directory for the journal and the status socket.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// FUSE worker threads.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// After answering, the reading worker polls /dev/fuse for up to this
    /// many microseconds (adaptively; default 20, 0 = never) before it
    /// sleeps.
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u64>,
    /// Kernel FUSE passthrough for open files (needs root; falls back with a warning).
    #[arg(long)]
    pub passthrough: bool,
    /// Request transport: auto (default), uring or dev.
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    /// TOML file with the same options.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Health-check interval of failed paths in milliseconds (default 1000).
    #[arg(long, value_name = "MS")]
    pub health_interval_ms: Option<u64>,
    /// Share of requests that become spans, 0.0..=1.0 (default 0.01).
    #[arg(long, value_name = "RATE")]
    pub sample_rate: Option<f64>,
    /// Serve Prometheus `/metrics` and `/healthz` here (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR", value_parser = crate::exporter::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Load the eBPF probes for this mount: kernel metrics, kernel latency
    /// for path selection, kernel parent spans (needs root).
    #[arg(long)]
    pub ebpf: bool,
    /// Export spans over OTLP to this collector (base URL; see README).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf (else OTEL_EXPORTER_OTLP_PROTOCOL,
    /// else by port: 4317 gRPC, other HTTP).
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Requests slower than this always become spans (e.g. 50ms).
    #[arg(long, value_name = "DURATION", value_parser = crate::exporter::parse_duration)]
    pub slow_threshold: Option<std::time::Duration>,
    /// Serve without a keeper process: a crash of the daemon then ends the
    /// mount (by default a keeper holds the connection and restarts the
    /// server, see README "Restart and upgrade").
    #[arg(long)]
    pub no_keeper: bool,
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// Options of `claudefs-fuse status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// State dir of the daemon.
    #[arg(long, value_name = "DIR", required_unless_present = "mountpoint")]
    pub state_dir: Option<PathBuf>,
    /// Mountpoint (to find the default state dir).
    #[arg(long, value_name = "DIR")]
    pub mountpoint: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    path: Vec<String>,
    policy: Option<PolicyArg>,
    idmap: Option<String>,
    state_dir: Option<PathBuf>,
    threads: Option<usize>,
    poll_us: Option<u64>,
    passthrough: Option<bool>,
    transport: Option<TransportArg>,
    health_interval_ms: Option<u64>,
    sample_rate: Option<f64>,
    metrics_addr: Option<String>,
    ebpf: Option<bool>,
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<String>,
    slow_threshold: Option<String>,
    keeper: Option<bool>,
}

/// Fully resolved mount settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Vec<PathSpec>,
    pub policy: PolicyArg,
    pub idmap: IdMapSpec,
    pub state_dir: PathBuf,
    pub threads: usize,
    pub poll_us: u64,
    pub passthrough: bool,
    pub transport: TransportArg,
    pub health_interval_ms: u64,
    pub sample_rate: f64,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub ebpf: bool,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub slow_threshold: Option<std::time::Duration>,
    /// Run under a keeper (see `keeper.rs`).
    pub keeper: bool,
    pub mountpoint: PathBuf,
}

/// Default state dir of a mountpoint.
pub fn default_state_dir(mountpoint: &Path) -> PathBuf {
    let abs = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let esc = abs.to_string_lossy().trim_matches('/').replace('/', "-");
    let esc = if esc.is_empty() { "-".to_string() } else { esc };
    PathBuf::from("/run/claudefs-fuse").join(esc)
}

impl MountArgs {
    /// Merges the config file (if any) under the flags and validates.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("bad config {}: {}", p.display(), e.message()))?
            }
            None => FileConfig::default(),
        };
        let mut paths = self.paths.clone();
        if paths.is_empty() {
            for p in &file.path {
                paths.push(p.parse().map_err(|e: String| anyhow::anyhow!(e))?);
            }
        }
        if paths.is_empty() {
            bail!("no storage path given (--path DIR)");
        }
        if paths.len() > 16 {
            bail!("at most 16 storage paths are supported");
        }
        for p in &mut paths {
            let meta = std::fs::metadata(&p.dir)
                .with_context(|| format!("storage path {}", p.dir.display()))?;
            if !meta.is_dir() {
                bail!("storage path {} is not a directory", p.dir.display());
            }
            p.dir = std::path::absolute(&p.dir)?;
        }
        let idmap = match (&self.idmap, &file.idmap) {
            (Some(m), _) => m.clone(),
            (None, Some(s)) => s.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            (None, None) => IdMapSpec::Identity,
        };
        let threads = self.threads.or(file.threads).unwrap_or(4);
        if threads == 0 || threads > 256 {
            bail!("--threads must be in 1..=256");
        }
        let poll_us = self.poll_us.or(file.poll_us).unwrap_or(20);
        if poll_us > 1000 {
            bail!("--poll-us must be in 0..=1000");
        }
        let sample_rate = self.sample_rate.or(file.sample_rate).unwrap_or(0.01);
        if !(0.0..=1.0).contains(&sample_rate) {
            bail!("--sample-rate must be in 0.0..=1.0");
        }
        let metrics_addr = match (self.metrics_addr, &file.metrics_addr) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => Some(crate::exporter::parse_addr(s).map_err(anyhow::Error::msg)?),
            (None, None) => None,
        };
        let slow_threshold = match (self.slow_threshold, &file.slow_threshold) {
            (Some(d), _) => Some(d),
            (None, Some(s)) => {
                Some(crate::exporter::parse_duration(s).map_err(anyhow::Error::msg)?)
            }
            (None, None) => None,
        };
        let state_dir = self
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| default_state_dir(&self.mountpoint));
        Ok(Settings {
            paths,
            policy: self.policy.or(file.policy).unwrap_or(PolicyArg::RoundRobin),
            idmap,
            state_dir,
            threads,
            poll_us,
            passthrough: self.passthrough || file.passthrough.unwrap_or(false),
            transport: self
                .transport
                .or(file.transport)
                .unwrap_or(TransportArg::Auto),
            health_interval_ms: self
                .health_interval_ms
                .or(file.health_interval_ms)
                .unwrap_or(1000)
                .max(10),
            sample_rate,
            metrics_addr,
            ebpf: self.ebpf || file.ebpf.unwrap_or(false),
            otlp_endpoint: self.otlp_endpoint.clone().or(file.otlp_endpoint),
            otlp_protocol: self.otlp_protocol.clone().or(file.otlp_protocol),
            slow_threshold,
            keeper: !self.no_keeper && file.keeper.unwrap_or(true),
            mountpoint: self.mountpoint.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_spec_parses_options() {
        let p: PathSpec = "/a,priority=7,addr=h:1".parse().unwrap();
        assert_eq!(p.dir, PathBuf::from("/a"));
        assert_eq!(p.priority, 7);
        assert_eq!(p.addr, "h:1");
        assert!("/a,prio=1".parse::<PathSpec>().is_err());
        assert!("/a,priority=300".parse::<PathSpec>().is_err());
    }

    #[test]
    fn idmap_spec_parses() {
        assert_eq!(
            "identity".parse::<IdMapSpec>().unwrap(),
            IdMapSpec::Identity
        );
        assert_eq!(
            "squash".parse::<IdMapSpec>().unwrap(),
            IdMapSpec::Squash {
                uid: 65534,
                gid: 65534
            }
        );
        assert_eq!(
            "shift:1000:0:10".parse::<IdMapSpec>().unwrap(),
            IdMapSpec::Shift {
                host: 1000,
                local: 0,
                count: 10
            }
        );
        assert!("shift:1".parse::<IdMapSpec>().is_err());
        assert!("bogus".parse::<IdMapSpec>().is_err());
    }

    #[test]
    fn state_dir_is_escaped() {
        assert_eq!(
            default_state_dir(Path::new("/mnt/x")),
            PathBuf::from("/run/claudefs-fuse/mnt-x")
        );
    }

    #[test]
    fn config_file_fills_missing_flags() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "path = [\"{},priority=3\"]\npolicy = \"primary\"\nthreads = 2\npoll_us = 5\ntransport = \"dev\"\nmetrics_addr = \"127.0.0.1:9999\"\nslow_threshold = \"50ms\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let args = MountArgs {
            paths: vec![],
            policy: None,
            idmap: None,
            state_dir: Some(dir.path().join("s")),
            threads: None,
            poll_us: None,
            passthrough: false,
            transport: None,
            config: Some(cfg),
            health_interval_ms: None,
            sample_rate: None,
            metrics_addr: None,
            ebpf: false,
            otlp_endpoint: None,
            otlp_protocol: None,
            slow_threshold: None,
            no_keeper: false,
            mountpoint: dir.path().join("m"),
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.paths[0].priority, 3);
        assert_eq!(s.policy, PolicyArg::Primary);
        assert_eq!(s.threads, 2);
        assert_eq!(s.poll_us, 5);
        assert_eq!(s.transport, TransportArg::Dev);
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(s.slow_threshold, Some(std::time::Duration::from_millis(50)));
    }
}
