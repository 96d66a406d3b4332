//! A small client for the test Prometheus' HTTP API (and plain GETs on
//! the exporter), over std's TcpStream: HTTP/1.0 requests, JSON answers.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Names of the alerts pending or firing now.
pub fn active_alerts(prom: u16) -> Result<BTreeSet<String>> {
    let data = query(prom, "/api/v1/alerts", &[])?;
    Ok(data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
        .collect())
}

/// Series an instant query returns now.
pub fn series(prom: u16, expr: &str) -> Result<usize> {
    let data = query(prom, "/api/v1/query", &[("query", expr)])?;
    Ok(data["result"].as_array().map(Vec::len).unwrap_or(0))
}

/// GET on the Prometheus HTTP API; the `data` of a success, else its error.
pub fn query(prom: u16, path: &str, params: &[(&str, &str)]) -> Result<Value> {
    let qs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect();
    let url = if qs.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", qs.join("&"))
    };
    let (code, body) = http_get(prom, &url)?;
    let json: Value = serde_json::from_str(&body)
        .with_context(|| format!("HTTP {code} from Prometheus, not JSON: {}", body.trim()))?;
    if json["status"] != "success" {
        bail!(
            "{}: {}",
            json["errorType"].as_str().unwrap_or("error"),
            json["error"].as_str().unwrap_or(&body)
        );
    }
    Ok(json["data"].clone())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET on 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Polls `f` every 200 ms until it is true; fails after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < timeout {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match last {
        Some(e) => bail!("timed out after {timeout:?} waiting for {what} (last error: {e:#})"),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}
