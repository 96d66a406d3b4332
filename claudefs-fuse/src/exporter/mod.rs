//! Prometheus metrics and OTLP traces, for the mount daemon
//! (`claudefs-fuse mount --metrics-addr ... [--ebpf] [--otlp-endpoint ...]`)
//! and for the probes alone (`claudefs-fuse observe`).
//!
//! Roles: `names` (every metric name, help, unit and labels), `model`
//! (the metric model: families, series, collectors), `text` and `proto`
//! (its two exposition formats: text 0.0.4 with classic histograms,
//! protobuf with classic and native ones), `probe_metrics`,
//! `daemon_metrics` and `fusectl` (the collectors), `http` (`/metrics`,
//! `/healthz`), `otlp` (spans to a collector), `observe` (the node-agent
//! command).
//!
//! Everything runs on one exporter thread with its own small tokio
//! runtime ([`Exporter::start`]): the HTTP server, the span drain timer,
//! and the probe poll timer (which also joins kernel events with the
//! daemon's requests). FUSE workers never wait on it: they only push
//! into bounded buffers.

pub mod daemon_metrics;
pub mod fusectl;
pub mod http;
pub mod model;
pub mod names;
pub mod observe;
pub mod otlp;
pub mod probe_metrics;
pub mod proto;
pub mod text;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::daemon::kernel_join::{join_events, Joiner};
use crate::daemon::router::Router;
use crate::daemon::spans::Spans;
use crate::otel_trace::{OtelExportBuffer, OtelSpan};
use crate::probes::Probes;
use model::{Collector, FamilyBuilder, MetricFamily};
use otlp::{ExportStats, OtlpTarget, SpanPipeline};
use probe_metrics::SharedProbes;

/// Default `--metrics-addr` of `observe` (the OpenTelemetry Prometheus
/// exporter's conventional port).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// How often the probes are polled (ring buffer drained).
pub const PROBE_POLL: Duration = Duration::from_millis(100);
/// How often spans move from the daemon's buffer to the OTLP pipeline.
pub const SPAN_DRAIN: Duration = Duration::from_millis(200);

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text 0.0.4: classic histograms only.
    Text,
    /// Length-delimited protobuf: histograms classic and native.
    Protobuf,
}

impl Format {
    /// The `Content-Type` of a scrape in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => text::CONTENT_TYPE,
            Format::Protobuf => proto::CONTENT_TYPE,
        }
    }
}

/// The registered collectors plus the exporter's own families.
#[derive(Default)]
pub struct Metrics {
    collectors: RwLock<Vec<Box<dyn Collector>>>,
    last_scrape_ns: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a collector; its families must not be another's (nor the
    /// exporter's own).
    pub fn register(&self, c: Box<dyn Collector>) -> anyhow::Result<()> {
        let mut all = self.collectors.write().unwrap_or_else(|e| e.into_inner());
        let own = [names::BUILD_INFO, names::SCRAPE_DURATION];
        for f in c.families() {
            let taken = own.iter().chain(all.iter().flat_map(|o| o.families()));
            if taken.clone().any(|t| t.name == f.name) {
                anyhow::bail!("metrics registry: {} is already registered", f.name);
            }
        }
        all.push(c);
        Ok(())
    }

    /// Every family now: the collectors' (sorted by name), then the
    /// exporter's own.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let collected: Vec<MetricFamily> = self
            .collectors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|c| c.collect())
            .collect();
        let mut families = model::gather(collected);
        let mut build = FamilyBuilder::gauge(names::BUILD_INFO);
        build.add(vec![env!("CARGO_PKG_VERSION").to_string()], 1.0);
        let mut scrape = FamilyBuilder::gauge(names::SCRAPE_DURATION);
        scrape.add(
            vec![],
            self.last_scrape_ns.load(Ordering::Relaxed) as f64 / 1e9,
        );
        families.extend([build, scrape].into_iter().filter_map(FamilyBuilder::build));
        families
    }

    /// One scrape in `format`.
    pub fn render(&self, format: Format) -> Vec<u8> {
        let t0 = Instant::now();
        let families = self.gather();
        let body = match format {
            Format::Text => text::encode(&families),
            Format::Protobuf => proto::encode(&families),
        };
        self.last_scrape_ns
            .store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        body
    }
}

/// The daemon's side of the kernel join (`--ebpf`).
#[derive(Debug, Clone)]
pub struct JoinTarget {
    pub joiner: Arc<Joiner>,
    pub router: Arc<Router>,
    pub spans: Arc<Spans>,
}

/// What the exporter thread runs.
pub struct ExporterConfig {
    /// Listener for `/metrics` (already bound); None: no HTTP endpoint.
    pub listener: Option<std::net::TcpListener>,
    pub metrics: Arc<Metrics>,
    /// Loaded probes to poll; None without `--ebpf`.
    pub probes: Option<SharedProbes>,
    /// Where spans go; None: spans stay in the (bounded) buffer.
    pub otlp: Option<OtlpTarget>,
    /// The buffer spans are drained from.
    pub span_buffer: Option<Arc<Mutex<OtelExportBuffer>>>,
    /// With `--ebpf` in the daemon: meet kernel events with requests.
    pub join: Option<JoinTarget>,
    /// Without a daemon (`observe`): kernel events become spans directly.
    pub kernel_spans: Option<Arc<Spans>>,
    /// Slow threshold for kernel-only spans.
    pub slow: Option<Duration>,
    /// Counters of the OTLP pipeline (shared with the metrics).
    pub stats: Arc<ExportStats>,
}

/// The running exporter thread.
#[derive(Debug)]
pub struct Exporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Starts the exporter thread.
    pub fn start(cfg: ExporterConfig) -> anyhow::Result<Exporter> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("cfs-exporter-rt")
            .enable_all()
            .build()?;
        let pipeline = match &cfg.otlp {
            Some(t) => {
                let _g = rt.enter();
                let p = SpanPipeline::new(t, crate::daemon::spans::SERVICE, cfg.stats.clone())?;
                Some(p)
            }
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cfs-exporter".into())
            .spawn(move || {
                let pipeline = rt.block_on(run(cfg, pipeline, stop2));
                if let Some(p) = pipeline {
                    p.shutdown();
                }
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Exporter {
            stop,
            thread: Some(thread),
        })
    }

    /// Flushes what is buffered and stops.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    mut cfg: ExporterConfig,
    mut pipeline: Option<SpanPipeline>,
    stop: Arc<AtomicBool>,
) -> Option<SpanPipeline> {
    if let Some(l) = cfg.listener.take() {
        tokio::spawn(http::serve(l, cfg.metrics.clone()));
    }
    let mut probe_tick = tokio::time::interval(PROBE_POLL);
    let mut span_tick = tokio::time::interval(SPAN_DRAIN);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    span_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_round = false;
    loop {
        tokio::select! {
            _ = probe_tick.tick() => {
                if let Some(p) = &cfg.probes {
                    let spans = poll_probes(p, &cfg);
                    if !spans.is_empty() {
                        if let Some(b) = &cfg.span_buffer {
                            let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
                            for s in spans {
                                b.push(s);
                            }
                        }
                    }
                }
            }
            _ = span_tick.tick() => {
                if let (Some(pl), Some(b)) = (pipeline.as_mut(), &cfg.span_buffer) {
                    let drained = b.lock().unwrap_or_else(|e| e.into_inner()).drain();
                    pl.push(drained);
                }
                if last_round {
                    break;
                }
                if stop.load(Ordering::Relaxed) {
                    last_round = true;
                }
            }
        }
    }
    pipeline
}

/// Polls the probes, and turns their events into spans (joined with the
/// daemon's requests, or kernel-only).
fn poll_probes(p: &SharedProbes, cfg: &ExporterConfig) -> Vec<OtelSpan> {
    let events = {
        let mut probes = p.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = probes.poll() {
            tracing::debug!("probe poll: {e}");
        }
        probes.take_events()
    };
    if let Some(j) = &cfg.join {
        return join_events(&events, &j.joiner, &j.router, &j.spans, cfg.slow);
    }
    if let Some(spans) = &cfg.kernel_spans {
        return events
            .iter()
            .map(|ev| crate::daemon::kernel_join::kernel_span(ev, spans, None))
            .collect();
    }
    Vec::new()
}

/// Loads the probes for one connection (or all) with an event filter.
pub fn load_probes(
    opts: &crate::probes::ProbeOptions,
) -> Result<SharedProbes, crate::probes::ProbeError> {
    let p = Probes::load(opts)?;
    for w in p.warnings() {
        tracing::warn!("probes: {w}");
    }
    Ok(Arc::new(Mutex::new(p)))
}

/// Parses `--metrics-addr` (`HOST:PORT`, or `:PORT` for 127.0.0.1).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("127.0.0.1{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("bad address {s:?} (HOST:PORT, e.g. 127.0.0.1:9464)"))
}

/// Parses a share of requests (`--sample-rate`): a number in `0.0..=1.0`.
pub fn parse_sample_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err("expected a share of requests in 0.0..=1.0 (e.g. 0.01)".to_string()),
    }
}

/// Parses a duration: `250ms`, `2s`, `500us`, `1m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, ""), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 100ms, 2s)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ns, us, ms, s, m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_durations() {
        assert_eq!(
            parse_addr(":9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert!(parse_addr("nope").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 parsecs").is_err());
        assert_eq!(parse_sample_rate("0.25"), Ok(0.25));
        assert_eq!(parse_sample_rate("1"), Ok(1.0));
        for bad in ["-0.1", "1.01", "nan", "inf", "x", ""] {
            assert!(parse_sample_rate(bad).is_err(), "{bad:?}");
        }
        // Past what a Duration holds: an error, not a panic.
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("999999999999999999999m").is_err());
    }

    #[test]
    fn render_has_build_info_and_scrape_duration() {
        let m = Metrics::new();
        let text = String::from_utf8(m.render(Format::Text)).unwrap();
        assert!(text.contains(&format!(
            "claudefs_fuse_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("# TYPE claudefs_fuse_scrape_duration_seconds gauge"));
    }

    struct Fixed(Vec<names::Family>, f64);

    impl Collector for Fixed {
        fn families(&self) -> &[names::Family] {
            &self.0
        }

        fn collect(&self) -> Vec<MetricFamily> {
            self.0
                .iter()
                .filter_map(|f| {
                    let mut b = FamilyBuilder::gauge(*f);
                    b.add(vec![], self.1);
                    b.build()
                })
                .collect()
        }
    }

    #[test]
    fn a_family_is_registered_once() {
        let m = Metrics::new();
        m.register(Box::new(Fixed(vec![names::PATHS_USABLE], 1.0)))
            .unwrap();
        let clash = Fixed(vec![names::OPEN_FILES, names::PATHS_USABLE], 2.0);
        assert!(m.register(Box::new(clash)).is_err());
        assert!(m
            .register(Box::new(Fixed(vec![names::BUILD_INFO], 1.0)))
            .is_err());
        m.register(Box::new(Fixed(vec![names::OPEN_FILES], 3.0)))
            .unwrap();
        let got: Vec<&str> = m.gather().iter().map(MetricFamily::name).collect();
        assert_eq!(
            got,
            [
                "claudefs_fuse_open_files",
                "claudefs_fuse_paths_usable",
                "claudefs_fuse_build_info",
                "claudefs_fuse_scrape_duration_seconds"
            ]
        );
    }

    #[test]
    fn both_formats_carry_the_same_families() {
        let m = Metrics::new();
        m.register(Box::new(Fixed(vec![names::PATHS_USABLE], 2.0)))
            .unwrap();
        let text = String::from_utf8(m.render(Format::Text)).unwrap();
        let decoded = proto::decode(&m.render(Format::Protobuf)).unwrap();
        let names: Vec<&str> = decoded.iter().map(|f| f.name()).collect();
        for n in &names {
            assert!(text.contains(&format!("# TYPE {n} ")), "{n} not in\n{text}");
        }
        assert_eq!(names.len(), text.matches("# TYPE ").count());
        assert_eq!(decoded[0].metric[0].gauge.as_ref().unwrap().value(), 2.0);
    }
}
