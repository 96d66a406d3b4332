//! `claudefs-fuse observe`: the probes alone, for every FUSE mount on the
//! host, exported like a node agent (node_exporter style): metrics on
//! `--metrics-addr`, and with `--otlp-endpoint` kernel-only spans of
//! slow requests (`--slow-threshold`, filtered in the kernel) or of a
//! sample of requests (`--sample-rate`, one in 1/R in the kernel).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::otlp::{self, ExportStats};
use super::probe_metrics::ProbeCollector;
use super::{
    http, load_probes, parse_addr, parse_duration, parse_sample_rate, Exporter, ExporterConfig,
    Metrics,
};
use crate::daemon::spans::Spans;
use crate::otel_trace::MAX_EXPORT_BUFFER_CAPACITY;
use crate::probes::EventFilter;

/// Options of `claudefs-fuse observe`.
#[derive(Debug, Clone, Args)]
pub struct ObserveArgs {
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, value_name = "ADDR", default_value = super::DEFAULT_METRICS_ADDR, value_parser = parse_addr)]
    pub metrics_addr: std::net::SocketAddr,
    /// OTLP collector base URL (else the OTEL_EXPORTER_OTLP_* variables;
    /// no spans if neither).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf (else OTEL_EXPORTER_OTLP_PROTOCOL,
    /// else by port: 4317 gRPC, other HTTP).
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Share of requests exported as spans when no slow threshold is given.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, allow_negative_numbers = true, value_parser = parse_sample_rate)]
    pub sample_rate: f64,
    /// Export requests slower than this as spans (e.g. 100ms).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub slow_threshold: Option<Duration>,
}

/// The kernel event filter for spans.
pub fn event_filter(spans_wanted: bool, rate: f64, slow: Option<Duration>) -> EventFilter {
    match (spans_wanted, slow) {
        (false, _) => EventFilter::Off,
        (true, Some(d)) => EventFilter::SlowerThan(d),
        (true, None) if rate >= 1.0 => EventFilter::All,
        (true, None) if rate > 0.0 => EventFilter::OneIn((1.0 / rate).round().max(1.0) as u32),
        (true, None) => EventFilter::Off,
    }
}

/// Runs until SIGINT/SIGTERM.
pub fn run(args: &ObserveArgs) -> anyhow::Result<()> {
    crate::daemon::init_logging();
    let target = otlp::target_from(args.otlp_endpoint.as_deref(), args.otlp_protocol.as_deref())
        .map_err(anyhow::Error::msg)?;
    let filter = event_filter(target.is_some(), args.sample_rate, args.slow_threshold);
    let listener = http::bind(args.metrics_addr)?;
    let probes = load_probes(&crate::probes::ProbeOptions {
        events: filter,
        ..Default::default()
    })
    .context("cannot load the probes")?;
    let metrics = Arc::new(Metrics::new());
    metrics.register(Box::new(ProbeCollector::new(probes.clone(), None)))?;
    match super::fusectl::Fusectl::find_or_mount() {
        Ok(fc) => metrics.register(Box::new(super::fusectl::WaitingCollector::new(
            fc,
            super::fusectl::Connections::All,
        )))?,
        Err(e) => {
            eprintln!("observe: fusectl unavailable ({e}): no claudefs_fuse_requests_waiting")
        }
    }
    let spans = Arc::new(Spans::new(0.0, MAX_EXPORT_BUFFER_CAPACITY));
    let stats = Arc::new(ExportStats::default());
    let exporter = Exporter::start(ExporterConfig {
        listener: Some(listener),
        metrics,
        probes: Some(probes),
        otlp: target.clone(),
        span_buffer: Some(spans.buffer()),
        join: None,
        kernel_spans: target.as_ref().map(|_| spans.clone()),
        slow: args.slow_threshold,
        stats,
    })?;
    eprintln!(
        "observe: metrics on http://{}/metrics{}",
        args.metrics_addr,
        match &target {
            Some(t) => format!(", spans over OTLP ({:?}, {filter:?})", t.protocol),
            None => String::new(),
        }
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    });
    exporter.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(event_filter(false, 1.0, None), EventFilter::Off);
        assert_eq!(event_filter(true, 0.01, None), EventFilter::OneIn(100));
        assert_eq!(
            event_filter(true, 0.01, Some(Duration::from_millis(5))),
            EventFilter::SlowerThan(Duration::from_millis(5))
        );
        assert_eq!(event_filter(true, 1.0, None), EventFilter::All);
    }
}
