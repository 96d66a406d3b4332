//! OTLP trace export: our [`OtelSpan`]s become SDK `SpanData` and go to a
//! collector through the SDK's batch span processor, over gRPC (tonic) or
//! HTTP/protobuf.
//!
//! Configuration follows the standard variables, which the OTLP builders
//! read themselves: `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`; `OTEL_EXPORTER_OTLP_PROTOCOL` (or
//! `..._TRACES_PROTOCOL`) picks `grpc` or `http/protobuf`;
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` feed the resource.
//! `--otlp-endpoint URL` is a base URL like `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (HTTP gets `/v1/traces` appended); without a protocol setting, port
//! 4317 means gRPC and anything else HTTP/protobuf.
//!
//! Memory is bounded whatever the collector does: spans wait in
//! [`SpanPipeline`]'s queue (at most [`PENDING_LIMIT`], oldest dropped)
//! and are handed to the SDK only while its own queue has room, so the
//! SDK never drops silently; failed exports are counted too. FUSE workers
//! only ever push into the daemon's bounded buffer.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, SpanData, SpanEvents, SpanExporter, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::otel_trace::{OtelSpan, SpanKind, SpanStatus};

/// Spans waiting for room in the SDK queue, at most.
pub const PENDING_LIMIT: usize = 10_000;
/// The SDK batch processor's queue.
const SDK_QUEUE: usize = 2048;
/// Spans per export request.
const SDK_BATCH: usize = 512;
/// How long a stop waits for the collector to take the last spans.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            other => Err(format!(
                "unsupported OTLP protocol {other:?} (grpc or http/protobuf)"
            )),
        }
    }
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    pub protocol: Protocol,
    /// Full endpoint URL (HTTP: with `/v1/traces`); None leaves it to the
    /// OTEL_* variables and the SDK defaults.
    pub endpoint: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The spans' resource: `service.name` (`OTEL_SERVICE_NAME`, else
/// `service`), the attributes of `OTEL_RESOURCE_ATTRIBUTES`, and
/// `host.name`, the kernel's host name unless that variable sets one: the
/// attribute that tells a fleet's hosts apart in a central trace store
/// (on Kubernetes the DaemonSet sets it to the node's name).
fn resource(service: &str) -> Resource {
    let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_string());
    let base = Resource::builder()
        .with_service_name(service.clone())
        .build();
    if base
        .get(&opentelemetry::Key::from_static_str(HOST_NAME))
        .is_some()
    {
        return base;
    }
    match kernel_host_name() {
        Some(host) => Resource::builder()
            .with_service_name(service)
            .with_attribute(KeyValue::new(HOST_NAME, host))
            .build(),
        None => base,
    }
}

/// The semantic-convention key of the host's name.
const HOST_NAME: &str = "host.name";

/// The kernel's host name (`uname -n`), from procfs.
fn kernel_host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether tracing export is wanted: `--otlp-endpoint` or an
/// `OTEL_EXPORTER_OTLP_*ENDPOINT` variable. A protocol or an endpoint that
/// cannot work is an error naming the flag or variable it came from, even
/// when no endpoint is set (a bad `--otlp-protocol` alone is refused too).
pub fn target_from(
    endpoint: Option<&str>,
    protocol: Option<&str>,
) -> Result<Option<OtlpTarget>, String> {
    let protocol = match protocol
        .map(|p| ("--otlp-protocol", p.to_string()))
        .or_else(|| {
            [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]
            .into_iter()
            .find_map(|name| env(name).map(|v| (name, v)))
        }) {
        Some((source, p)) => Some(
            p.parse::<Protocol>()
                .map_err(|e| format!("{source} {p:?}: {e}"))?,
        ),
        None => None,
    };
    let env_endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| env(name).map(|v| (name, v)));
    let (source, effective) = match (endpoint, env_endpoint) {
        (Some(e), _) => ("--otlp-endpoint", e.to_string()),
        (None, Some(from_env)) => from_env,
        (None, None) => return Ok(None),
    };
    check_endpoint(&effective).map_err(|why| format!("{source} {effective:?}: {why}"))?;
    let protocol = match protocol {
        Some(p) => p,
        None if port_of(&effective) == Some(4317) => Protocol::Grpc,
        None => Protocol::HttpProtobuf,
    };
    let endpoint = endpoint.map(|e| match protocol {
        Protocol::Grpc => e.to_string(),
        Protocol::HttpProtobuf => http_traces_url(e),
    });
    Ok(Some(OtlpTarget { protocol, endpoint }))
}

/// Why `url` cannot be a collector's base URL, if it cannot: it must be
/// an `http://` or `https://` URL with a host (and `/v1/traces` appended
/// must still be one).
fn check_endpoint(url: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected a URL like http://HOST:4318";
    let uri: hyper::Uri = http_traces_url(url)
        .parse()
        .map_err(|e| format!("not a URL ({e}); {EXPECTED}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("unsupported scheme {other:?}; {EXPECTED}")),
        None => return Err(format!("no scheme; {EXPECTED}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("no host; {EXPECTED}"));
    }
    Ok(())
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split('/').next()?;
    host.rsplit_once(':')?.1.parse().ok()
}

/// A base URL with `/v1/traces` appended (kept if already there).
pub fn http_traces_url(base: &str) -> String {
    let b = base.trim_end_matches('/');
    if b.ends_with("/v1/traces") {
        b.to_string()
    } else {
        format!("{b}/v1/traces")
    }
}

/// Counters of the pipeline, read by the metrics.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans handed to the SDK.
    pub handed: AtomicU64,
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans in failed exports.
    pub failed: AtomicU64,
    /// Spans dropped from the pending queue (oldest first).
    pub dropped: AtomicU64,
}

impl ExportStats {
    /// Spans lost inside the exporter (dropped + failed).
    pub fn lost(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Spans handed to the SDK and not yet exported or failed.
    fn in_sdk(&self) -> u64 {
        let done = self.exported.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.handed.load(Ordering::Relaxed).saturating_sub(done)
    }
}

/// Counts what the wrapped exporter achieves, and says in the log when
/// exports start failing and when they work again (each failure at debug).
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    stats: Arc<ExportStats>,
    /// Whether the last export failed.
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => {
                self.stats.exported.fetch_add(n, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("OTLP: the collector takes spans again");
                }
            }
            Err(e) => {
                self.stats.failed.fetch_add(n, Ordering::Relaxed);
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!("OTLP export of {n} spans failed: {e}");
                } else {
                    tracing::warn!(
                        "OTLP export of {n} spans failed: {e}; spans are dropped and counted \
                         (claudefs_fuse_spans_dropped_total) until the collector takes them"
                    );
                }
            }
        }
        r
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

fn kind(k: SpanKind) -> OtelKind {
    match k {
        SpanKind::Internal => OtelKind::Internal,
        SpanKind::Client => OtelKind::Client,
        SpanKind::Server => OtelKind::Server,
        SpanKind::Producer => OtelKind::Producer,
        SpanKind::Consumer => OtelKind::Consumer,
    }
}

/// Converts one of our spans to SDK span data. Attribute values that are
/// integers become OTLP integers.
pub fn to_span_data(s: &OtelSpan, scope: &InstrumentationScope) -> SpanData {
    let trace_id = TraceId::from(s.trace_id.0);
    let span_id = SpanId::from(s.span_id.0);
    let attributes = s
        .attributes
        .iter()
        .map(|a| match a.value.parse::<i64>() {
            Ok(n) => KeyValue::new(a.key.clone(), n),
            Err(_) => KeyValue::new(a.key.clone(), a.value.clone()),
        })
        .collect();
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: s
            .parent_span_id
            .map(|p| SpanId::from(p.0))
            .unwrap_or(SpanId::INVALID),
        parent_span_is_remote: false,
        span_kind: kind(s.kind),
        name: Cow::Owned(s.operation.clone()),
        start_time: UNIX_EPOCH + Duration::from_nanos(s.start_unix_ns),
        end_time: UNIX_EPOCH + Duration::from_nanos(s.end_unix_ns.max(s.start_unix_ns)),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match &s.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Ok => Status::Ok,
            SpanStatus::Error(d) => Status::error(d.clone()),
        },
        instrumentation_scope: scope.clone(),
    }
}

/// The SDK pipeline plus the bounded queue in front of it.
pub struct SpanPipeline {
    processor: BatchSpanProcessor<Tokio>,
    scope: InstrumentationScope,
    pending: VecDeque<OtelSpan>,
    pub stats: Arc<ExportStats>,
}

impl std::fmt::Debug for SpanPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanPipeline")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl SpanPipeline {
    /// Builds the exporter and the batch processor. Must be called inside
    /// a multi-thread tokio runtime, which then runs the exports.
    pub fn new(
        target: &OtlpTarget,
        service: &str,
        stats: Arc<ExportStats>,
    ) -> anyhow::Result<Self> {
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match (target.protocol, &target.endpoint) {
            (Protocol::Grpc, Some(e)) => builder.with_tonic().with_endpoint(e.clone()).build(),
            (Protocol::Grpc, None) => builder.with_tonic().build(),
            (Protocol::HttpProtobuf, Some(e)) => builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(e.clone())
                .build(),
            (Protocol::HttpProtobuf, None) => builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build(),
        }
        .map_err(|e| anyhow::anyhow!("cannot set up the OTLP exporter: {e}"))?;
        let exporter = Counting {
            inner: exporter,
            stats: stats.clone(),
            failing: AtomicBool::new(false),
        };
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(SDK_QUEUE)
            .with_max_export_batch_size(SDK_BATCH)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter, Tokio)
            .with_batch_config(config)
            .build();
        let resource = resource(service);
        processor.set_resource(&resource);
        Ok(Self {
            processor,
            scope: InstrumentationScope::builder("claudefs-fuse")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            pending: VecDeque::new(),
            stats,
        })
    }

    /// Queues spans (oldest dropped past [`PENDING_LIMIT`]) and hands the
    /// SDK as many as its queue has room for.
    pub fn push(&mut self, spans: impl IntoIterator<Item = OtelSpan>) {
        for s in spans {
            if self.pending.len() >= PENDING_LIMIT {
                self.pending.pop_front();
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.pending.push_back(s);
        }
        let st = &self.stats;
        let in_sdk = st.in_sdk() as usize;
        let room = SDK_QUEUE.saturating_sub(in_sdk + SDK_BATCH);
        let n = room.min(self.pending.len());
        for s in self.pending.drain(..n) {
            self.processor.on_end(to_span_data(&s, &self.scope));
        }
        st.handed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Spans waiting in front of the SDK.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Flushes and stops, waiting at most [`SHUTDOWN_GRACE`] for the
    /// collector: what it has not taken by then is counted dropped. Blocks:
    /// call it outside the runtime's workers (which must still run).
    pub fn shutdown(self) {
        let SpanPipeline {
            processor,
            pending,
            stats,
            ..
        } = self;
        // Spans never handed to the SDK are lost with the process.
        stats
            .dropped
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        // The SDK's shutdown ignores its timeout: it waits for every queued
        // batch to be exported, each up to the export timeout, which a
        // collector that accepts and never answers makes minutes. So it runs
        // on a thread of its own, left behind if it takes too long.
        let (flushed_tx, flushed) = std::sync::mpsc::channel();
        let flusher = std::thread::Builder::new()
            .name("cfs-otlp-flush".into())
            .spawn(move || {
                let _ = processor.shutdown_with_timeout(SHUTDOWN_GRACE);
                let _ = flushed_tx.send(());
            });
        if flusher.is_err() || flushed.recv_timeout(SHUTDOWN_GRACE).is_err() {
            let left = stats.in_sdk();
            stats.dropped.fetch_add(left, Ordering::Relaxed);
            tracing::warn!(
                "OTLP: the collector did not take the last {left} spans within {SHUTDOWN_GRACE:?}; \
                 stopping without them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otel_trace::OtelSpanBuilder;
    use crate::tracing_client::TraceContext;

    #[test]
    fn resource_names_the_host() {
        let r = resource("claudefs-fuse");
        let host = r
            .get(&opentelemetry::Key::from_static_str(HOST_NAME))
            .map(|v| v.to_string());
        assert!(host.is_some(), "no host.name in {r:?}");
        assert_eq!(host, kernel_host_name(), "host.name of {r:?}");
    }

    #[test]
    fn urls_and_protocols() {
        assert_eq!(http_traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://h:4318/v1/traces"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(port_of("http://127.0.0.1:4317"), Some(4317));
        assert_eq!("grpc".parse::<Protocol>(), Ok(Protocol::Grpc));
        assert!("http/json".parse::<Protocol>().is_err());
    }

    #[test]
    fn bad_endpoints_and_protocols_name_their_flag() {
        let err = |e: Option<&str>, p: Option<&str>| target_from(e, p).unwrap_err();
        for (endpoint, why) in [
            ("not a url", "not a URL"),
            ("ftp://h:4318", "unsupported scheme"),
            ("h:4318", "expected a URL like http://"),
            ("http://", "not a URL"),
        ] {
            let e = err(Some(endpoint), Some("grpc"));
            assert!(e.starts_with("--otlp-endpoint ") && e.contains(why), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = err(Some("http://h:4318"), Some("pigeon"));
        assert!(e.starts_with("--otlp-protocol \"pigeon\""), "{e}");
        let e = err(None, Some("pigeon"));
        assert!(e.starts_with("--otlp-protocol "), "{e}");
        let t = target_from(Some("http://127.0.0.1:4318/"), Some("http/protobuf"))
            .unwrap()
            .unwrap();
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            t.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn span_data_keeps_ids_parent_times_status() {
        let parent = OtelSpanBuilder::new("kernel", "s", 100).build(300);
        let child = OtelSpanBuilder::new("read", "s", 150)
            .with_parent(&TraceContext::new(parent.trace_id, parent.span_id, true))
            .with_kind(SpanKind::Server)
            .with_status(SpanStatus::Error("ENOENT".into()))
            .with_attribute("fuse.inode", "7")
            .with_attribute("fuse.op", "read")
            .build(250);
        let scope = InstrumentationScope::builder("t").build();
        let d = to_span_data(&child, &scope);
        assert_eq!(d.span_context.trace_id(), TraceId::from(parent.trace_id.0));
        assert_ne!(d.span_context.span_id(), SpanId::INVALID);
        assert_eq!(d.parent_span_id, SpanId::from(parent.span_id.0));
        assert_eq!(d.span_kind, OtelKind::Server);
        assert_eq!(d.start_time, UNIX_EPOCH + Duration::from_nanos(150));
        assert_eq!(d.end_time, UNIX_EPOCH + Duration::from_nanos(250));
        assert_eq!(d.status, Status::error("ENOENT"));
        assert!(d.attributes.contains(&KeyValue::new("fuse.inode", 7i64)));
        assert!(d.attributes.contains(&KeyValue::new("fuse.op", "read")));
        let p = to_span_data(&parent, &scope);
        assert_eq!(p.parent_span_id, SpanId::INVALID);
    }
}
