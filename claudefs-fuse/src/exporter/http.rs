//! The HTTP endpoint: `GET /metrics` (the Prometheus protobuf format when
//! the `Accept` header asks for it, as a Prometheus that ingests native
//! histograms does; the text format 0.0.4 otherwise) and `GET /healthz`
//! (`ok`). hyper 1 on the exporter's own tokio runtime: a scrape runs on
//! the blocking pool and never touches a FUSE worker.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::{Format, Metrics};

/// The format an `Accept` header asks for: protobuf if it names
/// `application/vnd.google.protobuf` (delimited `io.prometheus.client.
/// MetricFamily` messages, if it says) with a quality at least that of
/// any range the text format matches (`text/plain`, `text/*`, `*/*`);
/// text otherwise, and without the header.
pub fn negotiate(accept: Option<&str>) -> Format {
    let (mut proto_q, mut text_q) = (0f32, 0f32);
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut q, mut fits) = (1f32, true);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.parse().unwrap_or(0.0),
                "proto" => fits &= v == "io.prometheus.client.MetricFamily",
                "encoding" => fits &= v == "delimited",
                _ => {}
            }
        }
        match media.as_str() {
            "application/vnd.google.protobuf" if fits => proto_q = proto_q.max(q),
            "text/plain" | "text/*" | "*/*" => text_q = text_q.max(q),
            _ => {}
        }
    }
    if proto_q > 0.0 && proto_q >= text_q {
        Format::Protobuf
    } else {
        Format::Text
    }
}

/// A connection that has not sent a whole request head by then is closed
/// (a scraper that stalls must not hold a socket for ever).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the metrics address (before anything else starts, so a bad
/// address is a clear startup error).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: cannot listen: {e}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    Ok(match (get, req.uri().path()) {
        (true, "/metrics") => {
            let m = metrics.clone();
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = negotiate(accept);
            match tokio::task::spawn_blocking(move || m.render(format)).await {
                Ok(body) => reply(StatusCode::OK, format.content_type(), body),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "scrape failed\n",
                ),
            }
        }
        (true, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (true, "/") => reply(
            StatusCode::OK,
            "text/html",
            "<html><body><a href=\"/metrics\">/metrics</a> <a href=\"/healthz\">/healthz</a></body></html>\n",
        ),
        (false, _) => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

/// Serves until the runtime stops.
pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics endpoint: {e}");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(m.clone(), req));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        // What a Prometheus with native histograms sends (2.42), and the
        // plain headers of other scrapers.
        let prometheus_native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.8,application/openmetrics-text;version=1.0.0;q=0.7,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let prometheus_classic = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            (Some(prometheus_native), Format::Protobuf),
            (Some(prometheus_classic), Format::Text),
            (None, Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("application/vnd.google.protobuf"), Format::Protobuf),
            (
                Some("Application/Vnd.Google.Protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=delimited"),
                Format::Protobuf,
            ),
            // Another message or encoding is not ours to serve.
            (
                Some("application/vnd.google.protobuf;proto=io.prometheus.client.Other;encoding=delimited"),
                Format::Text,
            ),
            (
                Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"),
                Format::Text,
            ),
            // Text preferred, or protobuf refused.
            (
                Some("application/vnd.google.protobuf;q=0.5,text/plain;q=0.9"),
                Format::Text,
            ),
            (Some("application/vnd.google.protobuf;q=0,*/*"), Format::Text),
        ] {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }
}
