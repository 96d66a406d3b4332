//! Helpers of the exporter tests: free ports, a tiny HTTP GET, a protobuf
//! scrape, `kernel.bpf_stats_enabled` on for a while, promtool, a real
//! Prometheus server, an OTLP trace receiver (gRPC with tonic,
//! HTTP/protobuf on `claudefs_testkit::serve`) that keeps every span it
//! gets, and a black-holed collector that never answers.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

pub use claudefs_testkit::urlencode;

/// A port nobody listens on now (0 if none could be found).
pub fn free_port() -> u16 {
    claudefs_testkit::free_port().unwrap_or(0)
}

/// `GET path` on 127.0.0.1:port; the body on 200.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    match claudefs_testkit::get(port, path, Duration::from_secs(10))? {
        (200, body) => Ok(body),
        (code, body) => anyhow::bail!("HTTP {code}: {body}"),
    }
}

/// `GET /metrics` with the Accept header of a Prometheus that ingests
/// native histograms: (Content-Type, the decoded families).
pub fn scrape_protobuf(
    port: u16,
) -> anyhow::Result<(
    Option<String>,
    Vec<claudefs_fuse::exporter::proto::MetricFamily>,
)> {
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.8,application/openmetrics-text;version=1.0.0;q=0.7,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let a = claudefs_testkit::get_with(
        port,
        "/metrics",
        &[("Accept", accept)],
        Duration::from_secs(10),
    )?;
    if a.status != 200 {
        anyhow::bail!("HTTP {}", a.status);
    }
    let families = claudefs_fuse::exporter::proto::decode(&a.body)?;
    Ok((a.content_type, families))
}

/// `kernel.bpf_stats_enabled` set to 1 while it lives, set back to what it
/// was on drop (the kernel counts program run time only while it is 1).
pub struct BpfStatsOn {
    was: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsOn {
    pub fn enable() -> std::io::Result<Self> {
        let was = std::fs::read_to_string(BPF_STATS)?.trim().to_string();
        std::fs::write(BPF_STATS, "1")?;
        Ok(Self { was })
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        if self.was != "1" {
            let _ = std::fs::write(BPF_STATS, &self.was);
        }
    }
}

/// Runs `promtool check metrics` on `text`: (success, its output).
pub fn promtool_check(text: &str) -> anyhow::Result<(bool, String)> {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    c.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = c.wait_with_output()?;
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), msg))
}

/// Why Prometheus tests cannot run, if they cannot (panics in CI).
pub fn prometheus_unavailable() -> Option<String> {
    let missing: Vec<&str> = ["prometheus", "promtool"]
        .into_iter()
        .filter(|b| {
            !Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    let r = format!(
        "{} not installed (cargo xtask setup installs Debian's prometheus)",
        missing.join(", ")
    );
    if crate::in_ci() {
        panic!("exporter tests must run in CI but cannot: {r}");
    }
    eprintln!("skipping exporter test: {r}");
    Some(r)
}

/// A Prometheus server scraping some targets every second.
pub struct PrometheusServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    pub fn start(targets: &[u16]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let list: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: claudefs\n    scrape_interval: 1s\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log"))?)
            .spawn()?;
        let s = Self {
            child,
            port,
            _dir: dir,
        };
        if !crate::wait_until(Duration::from_secs(20), || {
            http_get(port, "/-/ready").is_ok()
        }) {
            anyhow::bail!("prometheus did not become ready");
        }
        Ok(s)
    }

    /// An instant query: the `(labels, value)` of each series.
    pub fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let Ok(body) = http_get(self.port, &format!("/api/v1/query?query={}", urlencode(q))) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let val = r["value"][1]
                            .as_str()
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(f64::NAN);
                        (r["metric"].clone(), val)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `q` has a series whose value satisfies `ok`.
    pub fn wait_for(&self, q: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.query(q).iter().any(|(_, v)| ok(*v)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A collector that accepts every connection and never reads or answers:
/// (port, connections accepted so far). The sockets stay open.
pub fn black_hole() -> anyhow::Result<(u16, Arc<AtomicU64>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let accepted = Arc::new(AtomicU64::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for c in l.incoming().flatten() {
            a.fetch_add(1, Ordering::Relaxed);
            held.push(c);
        }
    });
    Ok((port, accepted))
}

/// Everything a receiver got.
pub type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// An OTLP/HTTP protobuf receiver on a free port (`/v1/traces`).
pub fn http_receiver() -> anyhow::Result<(u16, Received)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let got: Received = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let g = g.clone();
            std::thread::spawn(move || serve_http(conn, &g));
        }
    });
    Ok((port, got))
}

/// Keeps each `POST /v1/traces` of the connection; answers every
/// request with an empty `ExportTraceServiceResponse`.
fn serve_http(c: TcpStream, got: &Received) {
    claudefs_testkit::serve(c, |head, body| {
        if head.starts_with("post /v1/traces") {
            if let Ok(req) = ExportTraceServiceRequest::decode(body) {
                got.lock().unwrap().push(req);
            }
        }
        ExportTraceServiceResponse::default().encode_to_vec()
    });
}

#[derive(Clone)]
struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port, on its own thread and runtime.
pub fn grpc_receiver() -> anyhow::Result<(u16, Received)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    l.set_nonblocking(true)?;
    let got: Received = Arc::default();
    let svc = TraceServiceServer::new(Grpc(got.clone()));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            let incoming = tonic::transport::server::TcpIncoming::from(l);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
    });
    Ok((port, got))
}

/// A flat view of one received span.
#[derive(Debug, Clone)]
pub struct GotSpan {
    pub service: String,
    /// The resource's `host.name`.
    pub host: String,
    pub name: String,
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub start: u64,
    pub end: u64,
    pub status_code: i32,
    pub status_message: String,
    pub attributes: Vec<(String, String)>,
}

impl GotSpan {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
}

fn any_value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v.as_ref().and_then(|a| a.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// Every span received so far.
pub fn spans(got: &Received) -> Vec<GotSpan> {
    let mut out = Vec::new();
    for req in got.lock().unwrap().iter() {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| any_value(&a.value))
                .unwrap_or_default();
            let host = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "host.name"))
                .map(|a| any_value(&a.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(GotSpan {
                        service: service.clone(),
                        host: host.clone(),
                        name: s.name.clone(),
                        kind: s.kind,
                        trace_id: s.trace_id.clone(),
                        span_id: s.span_id.clone(),
                        parent_span_id: s.parent_span_id.clone(),
                        start: s.start_time_unix_nano,
                        end: s.end_time_unix_nano,
                        status_code: s.status.as_ref().map_or(0, |x| x.code),
                        status_message: s
                            .status
                            .as_ref()
                            .map(|x| x.message.clone())
                            .unwrap_or_default(),
                        attributes: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), any_value(&a.value)))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

/// Whether the probes can be attached here: root and the binary (the
/// kernel side is checked by the daemon, which says so in its log).
pub fn exporter_env_unavailable() -> bool {
    crate::fuse_unavailable().is_some() || prometheus_unavailable().is_some()
}

/// A running `claudefs-fuse observe` (killed on drop).
pub struct Observe {
    child: Option<Child>,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Observe {
    /// Starts `observe --metrics-addr 127.0.0.1:<free port>` plus `args`
    /// and waits until `/healthz` answers.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let port = free_port();
        let log = tempfile::NamedTempFile::new()?;
        let child = Command::new(crate::fuse_bin())
            .arg("observe")
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen()?)
            .spawn()?;
        let mut o = Self {
            child: Some(child),
            port,
            log,
        };
        let up = crate::wait_until(Duration::from_secs(15), || {
            http_get(port, "/healthz").is_ok()
                || o.child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        });
        if !up || http_get(port, "/healthz").is_err() {
            anyhow::bail!("observe did not serve /healthz: {}", o.log_text());
        }
        Ok(o)
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::terminate(&mut c, Duration::from_secs(3));
        }
    }
}
