//! Command-line and config-file options of `claudefs-fuse mount` and
//! `claudefs-fuse status`.
//!
//! Every mount option can also be given in a TOML file (`--config FILE`)
//! with the same names (`path = ["/a,priority=10", "/b"]`, `policy`,
//! `idmap`, `state_dir`, `threads`, `poll_us`, `passthrough`, `transport`,
//! `cache_timeout_ms`, `health_interval_ms`,
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

/// The scheduling class of the io_uring queue threads (`--queue-policy`,
/// see `session::queue_sched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueuePolicyArg {
    /// SCHED_IDLE while nothing else competes for their CPU (the waiting
    /// application stays on its CPU), SCHED_OTHER when something does.
    Idle,
    /// SCHED_OTHER always.
    Normal,
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
            ["shift", h, l, c] => {
                let (host, local, count) = (num(h)?, num(l)?, num(c)?);
                let fits = |base: u32| count > 0 && base.checked_add(count - 1).is_some();
                if !fits(host) || !fits(local) {
                    return Err(format!(
                        "bad --idmap {s:?}: COUNT must be at least 1 and HOST+COUNT, LOCAL+COUNT at most 2^32"
                    ));
                }
                Ok(Self::Shift { host, local, count })
            }
            ["table", f] if !f.is_empty() => Ok(Self::Table(PathBuf::from(f))),
            _ => Err(format!(
                "bad --idmap {s:?} (identity|squash[:UID:GID]|shift:HOST:LOCAL:COUNT|table:FILE)"
            )),
        }
    }
}

impl std::fmt::Display for IdMapSpec {
    /// The `--idmap` text that parses back to this spec.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Identity => write!(f, "identity"),
            Self::Squash { uid, gid } => write!(f, "squash:{uid}:{gid}"),
            Self::Shift { host, local, count } => write!(f, "shift:{host}:{local}:{count}"),
            Self::Table(file) => write!(f, "table:{}", file.display()),
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
    /// FUSE worker threads (default 4, 1..=256).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// After answering, the reading worker polls /dev/fuse for up to this
    /// many microseconds (adaptively; default 100, 0 = never, at most 1000) before it
    /// sleeps.
    #[arg(long, value_name = "US", allow_negative_numbers = true)]
    pub poll_us: Option<u64>,
    /// Kernel FUSE passthrough for open files (needs root; falls back with a warning).
    #[arg(long)]
    pub passthrough: bool,
    /// Request transport: auto (default), uring or dev.
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    /// Scheduling of the io_uring queue threads: idle (default: SCHED_IDLE
    /// while their CPU has nothing else to run, so an application stays on
    /// its CPU; SCHED_OTHER when it has) or normal.
    #[arg(long, value_enum)]
    pub queue_policy: Option<QueuePolicyArg>,
    /// TOML file with the same options.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long the kernel may trust a name it looked up and a file's
    /// attributes before asking again, in milliseconds (FUSE entry and
    /// attribute timeout; default 1000, 0 = ask every time, at most
    /// 86400000). Longer is faster and sees changes made on the storage by
    /// others later.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub cache_timeout_ms: Option<u64>,
    /// Health-check interval of failed paths in milliseconds (default 1000,
    /// 10..=3600000).
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub health_interval_ms: Option<u64>,
    /// Share of requests that become spans, 0.0..=1.0 (default 0.01).
    #[arg(long, value_name = "RATE", allow_negative_numbers = true, value_parser = crate::exporter::parse_sample_rate)]
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
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = crate::exporter::parse_duration)]
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
    queue_policy: Option<QueuePolicyArg>,
    cache_timeout_ms: Option<u64>,
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
    pub queue_policy: QueuePolicyArg,
    /// Entry and attribute timeout of the kernel's caches.
    pub cache_timeout: std::time::Duration,
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

/// At most this many storage paths (`--path`).
pub const MAX_PATHS: usize = 16;
/// `--threads` accepts this range.
pub const THREADS_RANGE: std::ops::RangeInclusive<usize> = 1..=256;
/// `--poll-us` accepts this range.
pub const POLL_US_RANGE: std::ops::RangeInclusive<u64> = 0..=1000;
/// `--cache-timeout-ms` accepts this range (up to a day).
pub const CACHE_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 0..=86_400_000;
/// `--health-interval-ms` accepts this range (10 ms to an hour).
pub const HEALTH_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=3_600_000;

/// Where a setting came from, to name it in an error: the flag
/// (`--threads 0`) or the key of the config file (`threads = 0 in c.toml`).
#[derive(Clone, Copy)]
struct Origin<'a> {
    config: Option<&'a Path>,
}

impl Origin<'_> {
    /// `flag value` when the flag gave it, else `key = value in FILE`.
    fn name(&self, flag: &str, key: &str, from_flag: bool, value: impl std::fmt::Debug) -> String {
        match self.config {
            Some(file) if !from_flag => format!("{key} = {value:?} in {}", file.display()),
            _ => format!("{flag} {value:?}"),
        }
    }

    /// The flag's value, else the file's, else `default`, which must lie
    /// in `range` (else an error naming where the value came from).
    fn in_range<T: PartialOrd + Copy + std::fmt::Debug>(
        &self,
        (flag, key): (&str, &str),
        (from_flag, from_file): (Option<T>, Option<T>),
        default: T,
        range: &std::ops::RangeInclusive<T>,
    ) -> anyhow::Result<T> {
        let v = from_flag.or(from_file).unwrap_or(default);
        if !range.contains(&v) {
            bail!(
                "{}: must be in {range:?}",
                self.name(flag, key, from_flag.is_some(), v)
            );
        }
        Ok(v)
    }
}

/// A TOML error as one line naming the file, the line and the key it is
/// about: `--config c.toml, line 2 (policy): unknown variant ...`.
fn toml_error(file: &Path, text: &str, err: &toml::de::Error) -> String {
    let message = err
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .trim();
    let Some(span) = err.span() else {
        return format!("--config {}: {message}", file.display());
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace));
    match key {
        Some(key) => format!(
            "--config {}, line {line_no} ({key}): {message}",
            file.display()
        ),
        None => format!("--config {}, line {line_no}: {message}", file.display()),
    }
}

impl MountArgs {
    /// Merges the config file (if any) under the flags and validates
    /// everything that can be checked without touching the state dir or
    /// mounting: each error is one line naming the flag (or the config
    /// key) and the value at fault.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("--config {}: cannot read it", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!(toml_error(p, &text, &e)))?
            }
            None => FileConfig::default(),
        };
        let origin = Origin {
            config: self.config.as_deref(),
        };
        let paths_from_flags = !self.paths.is_empty();
        let mut paths = self.paths.clone();
        if !paths_from_flags {
            for p in &file.path {
                let spec = p.parse().map_err(|e: String| {
                    anyhow::anyhow!("{}: {e}", origin.name("--path", "path", false, p))
                })?;
                paths.push(spec);
            }
        }
        if paths.is_empty() {
            bail!("no storage path given (--path DIR)");
        }
        if paths.len() > MAX_PATHS {
            match origin.config {
                Some(c) if !paths_from_flags => bail!(
                    "path in {} has {} entries: at most {MAX_PATHS} storage paths are supported",
                    c.display(),
                    paths.len()
                ),
                _ => bail!(
                    "--path given {} times: at most {MAX_PATHS} storage paths are supported",
                    paths.len()
                ),
            }
        }
        for p in &mut paths {
            let name = origin.name("--path", "path", paths_from_flags, &p.dir);
            let meta = std::fs::metadata(&p.dir).with_context(|| name.clone())?;
            if !meta.is_dir() {
                bail!("{name}: not a directory");
            }
            p.dir = std::path::absolute(&p.dir).with_context(|| name.clone())?;
        }
        let idmap = match (&self.idmap, &file.idmap) {
            (Some(m), _) => m.clone(),
            (None, Some(s)) => s.parse().map_err(|e: String| {
                anyhow::anyhow!("{}: {e}", origin.name("--idmap", "idmap", false, s))
            })?,
            (None, None) => IdMapSpec::Identity,
        };
        // A table file is read now, so a missing or bad one stops the
        // mount before anything is created.
        crate::daemon::idmap::IdMap::from_spec(&idmap).with_context(|| {
            origin.name("--idmap", "idmap", self.idmap.is_some(), idmap.to_string())
        })?;
        let threads = origin.in_range(
            ("--threads", "threads"),
            (self.threads, file.threads),
            4,
            &THREADS_RANGE,
        )?;
        let poll_us = origin.in_range(
            ("--poll-us", "poll_us"),
            (self.poll_us, file.poll_us),
            100,
            &POLL_US_RANGE,
        )?;
        let cache_timeout_ms = origin.in_range(
            ("--cache-timeout-ms", "cache_timeout_ms"),
            (self.cache_timeout_ms, file.cache_timeout_ms),
            1000,
            &CACHE_TIMEOUT_MS_RANGE,
        )?;
        let health_interval_ms = origin.in_range(
            ("--health-interval-ms", "health_interval_ms"),
            (self.health_interval_ms, file.health_interval_ms),
            1000,
            &HEALTH_INTERVAL_MS_RANGE,
        )?;
        let sample_rate = origin.in_range(
            ("--sample-rate", "sample_rate"),
            (self.sample_rate, file.sample_rate),
            0.01,
            &(0.0..=1.0),
        )?;
        let metrics_addr = match (self.metrics_addr, &file.metrics_addr) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => Some(crate::exporter::parse_addr(s).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}",
                    origin.name("--metrics-addr", "metrics_addr", false, s)
                )
            })?),
            (None, None) => None,
        };
        let slow_threshold = match (self.slow_threshold, &file.slow_threshold) {
            (Some(d), _) => Some(d),
            (None, Some(s)) => Some(crate::exporter::parse_duration(s).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}",
                    origin.name("--slow-threshold", "slow_threshold", false, s)
                )
            })?),
            (None, None) => None,
        };
        let otlp_endpoint = self.otlp_endpoint.clone().or(file.otlp_endpoint);
        let otlp_protocol = self.otlp_protocol.clone().or(file.otlp_protocol);
        crate::exporter::otlp::target_from(otlp_endpoint.as_deref(), otlp_protocol.as_deref())
            .map_err(|e| match origin.config {
                Some(c) if self.otlp_endpoint.is_none() || self.otlp_protocol.is_none() => {
                    anyhow::anyhow!("{e} (otlp_* keys of {} included)", c.display())
                }
                _ => anyhow::anyhow!(e),
            })?;
        let state_dir_from_file = self.state_dir.is_none() && file.state_dir.is_some();
        let state_dir = self
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| default_state_dir(&self.mountpoint));
        if state_dir.exists() && !state_dir.is_dir() {
            bail!(
                "{}: not a directory",
                origin.name("--state-dir", "state_dir", !state_dir_from_file, &state_dir)
            );
        }
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
            queue_policy: self
                .queue_policy
                .or(file.queue_policy)
                .unwrap_or(QueuePolicyArg::Idle),
            cache_timeout: std::time::Duration::from_millis(cache_timeout_ms),
            health_interval_ms,
            sample_rate,
            metrics_addr,
            ebpf: self.ebpf || file.ebpf.unwrap_or(false),
            otlp_endpoint,
            otlp_protocol,
            slow_threshold,
            keeper: !self.no_keeper && file.keeper.unwrap_or(true),
            mountpoint: self.mountpoint.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
