//! The exporters when what they talk to misbehaves (root, /dev/fuse):
//! an OTLP collector that accepts connections and never answers
//! (black-holed) or is not there at all (down), over HTTP/protobuf and
//! gRPC: every request is answered, spans are dropped and counted, none
//! is reported exported, the daemon's memory stays bounded over 150k
//! requests, and a stop is not held up by the collector; 20 scrapers at
//! once on a busy mount's `/metrics` for 10 s, plus one that connects and
//! never finishes its request: every scrape is complete, consistent with
//! the one before and accepted by promtool. What these cost the FUSE
//! requests is measured by `cargo xtask bench exporter`, not here.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claudefs_e2e::exporter::{
    black_hole, free_port, http_get, prometheus_unavailable, promtool_check,
};
use claudefs_e2e::{fuse_unavailable, wait_until, MountGuard};

/// Spans the daemon may hold without dropping any: its own buffer, the
/// exporter's pending queue and the OTLP SDK's queue (see
/// `daemon/server.rs` and `exporter/otlp.rs`).
const SPANS_HELD_AT_MOST: f64 = (10_000 + 10_000 + 2048) as f64;

/// The sum of every sample of `name` (all label sets) in a text scrape.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens and closes `file` from two threads until the daemon has answered
/// `requests` more requests (by its own counters). Every open must succeed.
fn requests(port: u16, file: &Path, requests: f64) {
    let answered = || {
        total(
            &http_get(port, "/metrics").unwrap(),
            "claudefs_fuse_daemon_requests_total",
        )
    };
    let target = answered() + requests;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (f, stop) = (file.to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..500 {
                        drop(fs::File::open(&f).expect("open through the mount"));
                    }
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while answered() < target {
        assert!(t0.elapsed() < Duration::from_secs(120), "workload too slow");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
}

/// A daemon exporting every request as a span to `endpoint` while 150k
/// requests run; `refused`: the collector refuses connections, so the
/// first export fails at once and the log must say so.
fn bad_collector(label: &str, protocol: &str, endpoint: &str, refused: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let (src, m) = MountGuard::single_path(
        tmp.path(),
        &[
            "--metrics-addr".into(),
            format!("127.0.0.1:{port}"),
            "--sample-rate".into(),
            "1".into(),
            "--otlp-endpoint".into(),
            endpoint.into(),
            "--otlp-protocol".into(),
            protocol.into(),
        ],
    )
    .unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || http_get(port, "/metrics")
            .is_ok()),
        "no /metrics: {}",
        m.log_text()
    );
    let file = m.mnt.join("f");
    let pid = m.pid();
    // Warm up: the first exports are under way (and stuck), the buffers
    // start filling.
    requests(port, &file, 5_000.0);
    let before = rss_kib(pid);
    let at_start = http_get(port, "/metrics").unwrap();
    // 50k requests fill every buffer (they hold at most 22k spans); then
    // four steps of 25k, each followed by an RSS sample.
    requests(port, &file, 50_000.0);
    let mut rss = Vec::new();
    for _ in 0..4 {
        requests(port, &file, 25_000.0);
        rss.push(rss_kib(pid));
    }
    // Let the exporter's drain timer take what was buffered last.
    std::thread::sleep(Duration::from_millis(600));
    let text = http_get(port, "/metrics").unwrap();
    let n = total(&text, "claudefs_fuse_daemon_requests_total")
        - total(&at_start, "claudefs_fuse_daemon_requests_total");
    let dropped = total(&text, "claudefs_fuse_spans_dropped_total")
        - total(&at_start, "claudefs_fuse_spans_dropped_total");
    let exported = total(&text, "claudefs_fuse_spans_exported_total");
    let errors = total(&text, "claudefs_fuse_daemon_request_errors_total");
    eprintln!(
        "{label}: {n} requests, {dropped} spans dropped, {exported} exported, \
         RSS {before} KiB, then {rss:?} KiB after each 25k"
    );
    assert!(n >= 150_000.0, "{label}: {n} requests");
    assert_eq!(errors, 0.0, "{label}: requests failed");
    assert_eq!(exported, 0.0, "{label}: spans reported exported");
    // Every span past what the daemon may hold was dropped and counted.
    assert!(
        dropped >= n - SPANS_HELD_AT_MOST,
        "{label}: {dropped} spans dropped of {n}"
    );
    // Bounded: once the buffers are full, the last 50k requests add
    // nothing that stays (the allocator's sawtooth is a few MiB either way:
    // the highs of the first two samples and of the last two are compared).
    let (early, late) = (rss[0].max(rss[1]), rss[2].max(rss[3]));
    assert!(
        // (A leak of 250 bytes per request would add 12 MiB here.)
        late.saturating_sub(early) < 12 * 1024,
        "{label}: RSS grew {early} -> {late} KiB over the last 50k requests ({rss:?})"
    );
    assert!(
        late.saturating_sub(before) < 64 * 1024,
        "{label}: RSS grew {before} -> {late} KiB ({rss:?})"
    );
    if refused {
        // The failure is in the log (a black hole's first export is still
        // waiting for its timeout).
        assert!(
            m.log_text().contains("OTLP export of"),
            "{label}: no export failure in the log: {}",
            m.log_text()
        );
    }
    // A stop waits for no collector.
    let t0 = Instant::now();
    let st = m.stop().expect("stop");
    assert!(st.success(), "{label}: {st}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "{label}: stop took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_black_holed_collector_costs_spans_not_requests_or_memory() {
    if fuse_unavailable().is_some() {
        return;
    }
    for protocol in ["http/protobuf", "grpc"] {
        let (port, accepted) = black_hole().unwrap();
        bad_collector(
            &format!("black-holed, {protocol}"),
            protocol,
            &format!("http://127.0.0.1:{port}"),
            false,
        );
        assert!(accepted.load(Ordering::Relaxed) > 0, "no export attempted");
    }
}

#[test]
fn a_collector_that_is_down_costs_spans_not_requests_or_memory() {
    if fuse_unavailable().is_some() {
        return;
    }
    for protocol in ["http/protobuf", "grpc"] {
        // Nobody listens there: every connection is refused.
        let port = free_port();
        bad_collector(
            &format!("down, {protocol}"),
            protocol,
            &format!("http://127.0.0.1:{port}"),
            true,
        );
    }
}

/// The counters of a scrape: (series, value) of every `_total` sample.
fn counters(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with("_total")
                .then(|| Some((series.to_string(), value.parse().ok()?)))?
        })
        .collect()
}

/// Whether a text scrape is whole: every family it announces has samples,
/// every line is a comment or `series value`, it ends with a newline.
fn whole(text: &str) -> Result<(), String> {
    if !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    for l in text.lines() {
        if l.starts_with("# HELP ") || l.starts_with("# TYPE ") {
            continue;
        }
        let Some((_, v)) = l.rsplit_once(' ') else {
            return Err(format!("line {l:?}"));
        };
        if v.parse::<f64>().is_err() && !["NaN", "+Inf", "-Inf"].contains(&v) {
            return Err(format!("value of {l:?}"));
        }
    }
    for t in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = t.split(' ').next().unwrap_or("");
        let has = text.lines().any(|l| {
            !l.starts_with('#')
                && l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{') || r.starts_with('_'))
        });
        if !has {
            return Err(format!("family {name} without samples"));
        }
    }
    Ok(())
}

#[test]
fn twenty_scrapers_at_once_each_get_whole_consistent_scrapes() {
    if fuse_unavailable().is_some() || prometheus_unavailable().is_some() {
        return;
    }
    const SCRAPERS: usize = 20;
    const FOR: Duration = Duration::from_secs(10);
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_src, m) = MountGuard::single_path(
        tmp.path(),
        &["--metrics-addr".into(), format!("127.0.0.1:{port}")],
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || http_get(port, "/metrics")
            .is_ok()),
        "no /metrics: {}",
        m.log_text()
    );
    // A scraper that connects and never finishes its request (and one
    // that sends nothing) must not hold up the others.
    let mut stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stuck
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (dir, stop) = (m.mnt.join("busy"), stop.clone());
        std::thread::spawn(move || {
            fs::create_dir_all(&dir).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = dir.join(format!("f{}", i % 32));
                fs::write(&p, b"data").expect("write through the mount");
                let _ = claudefs_e2e::stat(&dir.join("missing"));
                if !i.is_multiple_of(2) {
                    fs::remove_file(&p).expect("unlink through the mount");
                }
                i += 1;
            }
            i
        })
    };
    // Each scraper keeps every scrape it got that differs in size from its
    // previous one's (for promtool) and checks each against the last.
    let kept: Arc<Mutex<Vec<String>>> = Arc::default();
    let t0 = Instant::now();
    let scrapers: Vec<_> = (0..SCRAPERS)
        .map(|_| {
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut last: Vec<(String, f64)> = Vec::new();
                let mut last_len = 0;
                while t0.elapsed() < FOR {
                    let text = http_get(port, "/metrics").expect("a scrape");
                    whole(&text).unwrap_or_else(|e| panic!("scrape {n}: {e}"));
                    let now = counters(&text);
                    for (series, v) in &now {
                        if let Some((_, was)) = last.iter().find(|(s, _)| s == series) {
                            assert!(v >= was, "{series} went back from {was} to {v}");
                        }
                    }
                    if text.len() != last_len && n.is_multiple_of(10) {
                        let mut k = kept.lock().unwrap();
                        if k.len() < 40 {
                            k.push(text.clone());
                        }
                    }
                    last_len = text.len();
                    last = now;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let scrapes: Vec<u64> = scrapers.into_iter().map(|s| s.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let iterations = busy.join().expect("busy workload");
    let kept = kept.lock().unwrap();
    eprintln!(
        "scrapes per scraper over {FOR:?}: {scrapes:?}; {iterations} workload iterations; \
         {} scrapes through promtool",
        kept.len()
    );
    assert!(scrapes.iter().all(|&n| n >= 5), "{scrapes:?}");
    assert!(iterations > 100, "{iterations} iterations");
    for text in kept.iter() {
        let (ok, msg) = promtool_check(text).unwrap();
        assert!(ok, "promtool: {msg}");
    }
    // The stuck scrapers got nothing but are let go: the exporter closes a
    // connection whose request head is not whole 10 s after it opened.
    for (name, mut c) in [("half a request", stuck), ("nothing", silent)] {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 256];
        let r = std::io::Read::read(&mut c, &mut buf);
        eprintln!(
            "the scraper that sent {name}: {r:?} after {:?}",
            t0.elapsed()
        );
        assert!(
            matches!(r, Ok(0))
                || matches!(&r, Ok(n) if String::from_utf8_lossy(&buf[..*n]).starts_with("HTTP/1.1 408")),
            "the scraper that sent {name} is still held: {r:?}"
        );
    }
    assert!(http_get(port, "/healthz").is_ok());
}
