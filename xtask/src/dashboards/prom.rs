//! A small client for the test Prometheus' HTTP API (and plain GETs on
//! the exporter), over std's TcpStream: HTTP/1.0 requests, JSON answers.

use std::collections::BTreeSet;
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
        .map(|(k, v)| {
            format!(
                "{}={}",
                claudefs_testkit::urlencode(k),
                claudefs_testkit::urlencode(v)
            )
        })
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

/// A plain HTTP/1.0 GET on 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    claudefs_testkit::get(port, path, Duration::from_secs(20))
        .with_context(|| format!("GET 127.0.0.1:{port}{path}"))
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
