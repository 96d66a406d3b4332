//! The exporters end to end: a real scrape checked by promtool (and its
//! protobuf form decoded: native and classic histograms), a real
//! Prometheus server scraping a daemon under load (GETATTR rate, a failed
//! path, recovery gauges), and OTLP spans over gRPC and HTTP/protobuf
//! received by a test collector (ids, kernel parent / daemon child,
//! timing, attributes); the daemon's own flock metrics (no probes
//! needed); `claudefs-fuse observe` counting the requests of another
//! FUSE mount (bindfs); and the probes' run counters while
//! `kernel.bpf_stats_enabled` is on.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use claudefs_e2e::exporter::{
    free_port, grpc_receiver, http_get, http_receiver, prometheus_unavailable, promtool_check,
    scrape_protobuf, spans, BpfStatsOn, GotSpan, Observe, PrometheusServer, Received,
};
use claudefs_e2e::{fuse_unavailable, wait_until, Bindfs, MountGuard};
use claudefs_fuse::exporter::proto;

fn workload(mnt: &Path, rounds: usize) {
    for r in 0..rounds {
        for i in 0..10 {
            let p = mnt.join(format!("w{i}"));
            let _ = fs::write(&p, format!("round {r}"));
            let _ = claudefs_e2e::stat(&p);
            let _ = fs::read(&p);
            let _ = claudefs_e2e::stat(&mnt.join("missing"));
        }
    }
}

fn scrape(port: u16) -> String {
    let mut text = String::new();
    wait_until(Duration::from_secs(10), || {
        match http_get(port, "/metrics") {
            Ok(t) => {
                text = t;
                true
            }
            Err(_) => false,
        }
    });
    text
}

/// Whether the scrape says the program of `hook` is attached (as tp_btf
/// or, without BTF, as a classic tracepoint).
fn attached(text: &str, hook: &str) -> bool {
    let prefix = format!("claudefs_fuse_probe_attached{{program=\"{hook}\",attach_type=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .any(|rest| !rest.starts_with("none\"") && rest.ends_with("} 1"))
}

/// A scrape with the Accept header of a Prometheus that ingests native
/// histograms is protobuf, decodes, has the families of the text scrape
/// `text` (taken just before), and its request latency histograms are
/// native (schema 3) as well as classic, each consistent in itself.
fn check_protobuf_scrape(port: u16, text: &str) {
    let (ctype, families) = scrape_protobuf(port).unwrap();
    assert_eq!(ctype.as_deref(), Some(proto::CONTENT_TYPE));
    let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
    let text_names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    assert_eq!(names, text_names);
    let duration = families
        .iter()
        .find(|f| f.name() == "claudefs_fuse_request_duration_seconds")
        .expect("no request latency histogram in the protobuf scrape");
    assert_eq!(duration.r#type(), proto::MetricType::Histogram);
    assert!(!duration.metric.is_empty());
    for m in &duration.metric {
        let h = m.histogram.as_ref().expect("a histogram");
        assert_eq!(h.schema(), 3);
        assert_eq!(h.zero_threshold(), 2f64.powi(-20));
        let native: u64 = proto::positive_buckets(h).iter().map(|b| b.1).sum();
        assert_eq!(h.zero_count() + native, h.sample_count(), "{h:?}");
        let last = h.bucket.last().expect("classic buckets");
        assert_eq!(last.upper_bound(), 64.0);
        assert!(last.cumulative_count() <= h.sample_count());
        // The classic count of a series is the text scrape's, or grew since.
        let labels: Vec<String> = m
            .label
            .iter()
            .map(|l| format!("{}=\"{}\"", l.name(), l.value()))
            .collect();
        let count = format!(
            "claudefs_fuse_request_duration_seconds_count{{{}}}",
            labels.join(",")
        );
        if let Some(n) = sample(text, &count) {
            assert!(h.sample_count() as f64 >= n, "{count}: {n} then {h:?}");
        }
    }
}

/// A daemon on one storage path under `dir` with `--ebpf` and metrics on
/// a free port: (port, storage, mount).
fn ebpf_daemon(dir: &Path) -> (u16, std::path::PathBuf, MountGuard) {
    let port = free_port();
    let args = [
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
        "--ebpf".into(),
    ];
    let (src, m) = MountGuard::single_path(dir, &args).unwrap();
    (port, src, m)
}

#[test]
fn promtool_accepts_a_real_scrape_with_ebpf() {
    if fuse_unavailable().is_some() || prometheus_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (port, _src, m) = ebpf_daemon(tmp.path());
    workload(&m.mnt, 5);
    let text = scrape(port);
    assert_eq!(http_get(port, "/healthz").unwrap().trim(), "ok");
    let (ok, msg) = promtool_check(&text).unwrap();
    assert!(ok && msg.trim().is_empty(), "promtool: {msg}\n{text}");
    for family in [
        "claudefs_fuse_requests_total{",
        "claudefs_fuse_request_errors_total{",
        "claudefs_fuse_request_duration_seconds_bucket{",
        "claudefs_fuse_path_state{",
        "claudefs_fuse_recovery_state{",
        "claudefs_fuse_idmap_lookups_total{",
        "claudefs_fuse_flock_registry_acquires_total",
        "claudefs_fuse_spans_dropped_total",
        "claudefs_fuse_probe_events_dropped_total",
        "claudefs_fuse_build_info{version=",
    ] {
        assert!(text.contains(family), "missing {family}:\n{text}");
    }
    assert!(attached(&text, "fuse_request_send"), "{text}");
    check_protobuf_scrape(port, &text);
    // The daemon serves and measures flock itself: no flock programs.
    assert!(!text.contains("program=\"sys_enter_flock\""), "{text}");
    assert!(
        !m.log_text().contains("cannot load the probes"),
        "{}",
        m.log_text()
    );
}

#[test]
fn prometheus_server_sees_rates_failed_path_and_recovery() {
    if fuse_unavailable().is_some() || prometheus_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let via = tmp.path().join("via");
    let mut bind = Bindfs::start(&shared, &via).unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let a = MountGuard::start(
        &tmp.path().join("mnt-a"),
        &tmp.path().join("state-a"),
        &[
            "--path".into(),
            format!("{},priority=200,addr=bindfs", via.display()),
            "--path".into(),
            format!("{},priority=100,addr=direct", shared.display()),
            "--policy".into(),
            "primary".into(),
            "--health-interval-ms".into(),
            "100".into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{port_a}"),
            "--ebpf".into(),
        ],
    )
    .unwrap();
    // A second daemon for the recovery run.
    let src_b = tmp.path().join("src-b");
    fs::create_dir(&src_b).unwrap();
    let args_b = vec![
        "--path".to_string(),
        src_b.display().to_string(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port_b}"),
    ];
    let (mnt_b, state_b) = (tmp.path().join("mnt-b"), tmp.path().join("state-b"));
    let b = MountGuard::start(&mnt_b, &state_b, &args_b).unwrap();
    let prom = PrometheusServer::start(&[port_a, port_b]).unwrap();

    // Load on A until Prometheus computes a GETATTR rate.
    let inst_a = format!("127.0.0.1:{port_a}");
    let q = format!(
        "sum(rate(claudefs_fuse_requests_total{{instance=\"{inst_a}\",opcode=\"GETATTR\"}}[5s]))"
    );
    let mut ok = false;
    for _ in 0..40 {
        workload(&a.mnt, 2);
        if prom.query(&q).iter().any(|(_, v)| *v > 0.0) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(ok, "no GETATTR rate; A log:\n{}", a.log_text());

    // Kill the bindfs path: path 0 becomes failed.
    bind.kill();
    workload(&a.mnt, 1);
    let failed =
        format!("claudefs_fuse_path_state{{instance=\"{inst_a}\",path_id=\"0\",state=\"failed\"}}");
    assert!(
        prom.wait_for(&failed, Duration::from_secs(15), |v| v == 1.0),
        "path 0 never failed: {:?}",
        prom.query(&format!(
            "claudefs_fuse_path_state{{instance=\"{inst_a}\"}}"
        ))
    );

    // Recovery on B: three files open at kill -9, one removed meanwhile.
    let mut f1 = fs::File::create(mnt_b.join("durable")).unwrap();
    f1.write_all(b"x").unwrap();
    f1.sync_all().unwrap();
    let f2 = fs::File::create(mnt_b.join("dirty")).unwrap();
    let f3 = fs::File::create(mnt_b.join("gone")).unwrap();
    b.kill9();
    drop((f1, f2, f3));
    fs::remove_file(src_b.join("gone")).unwrap();
    let b = MountGuard::start(&mnt_b, &state_b, &args_b).unwrap();
    let st = b.status().unwrap();
    let r = &st["recovery"];
    let inst_b = format!("127.0.0.1:{port_b}");
    let expect = [
        (
            "claudefs_fuse_recovery_total",
            r["open_files"].as_f64().unwrap(),
        ),
        (
            "claudefs_fuse_recovery_recovered",
            r["recovered"].as_f64().unwrap(),
        ),
        (
            "claudefs_fuse_recovery_orphaned",
            r["orphaned"].as_f64().unwrap(),
        ),
        (
            "claudefs_fuse_recovery_replayed",
            r["recovered"].as_f64().unwrap(),
        ),
    ];
    assert_eq!(expect[0].1, 3.0, "{st}");
    assert_eq!(expect[2].1, 1.0, "{st}");
    assert!(
        prom.wait_for(
            &format!("claudefs_fuse_recovery_state{{instance=\"{inst_b}\",state=\"complete\"}}"),
            Duration::from_secs(15),
            |v| v == 1.0
        ),
        "recovery state not complete in Prometheus"
    );
    for (name, want) in expect {
        let q = format!("{name}{{instance=\"{inst_b}\"}}");
        assert!(
            prom.wait_for(&q, Duration::from_secs(5), |v| v == want),
            "{name}: want {want}, got {:?}",
            prom.query(&q)
        );
    }
    drop(a);
}

fn check_spans(got: &Received, mnt: &Path) {
    let mut all: Vec<GotSpan> = Vec::new();
    let ok = wait_until(Duration::from_secs(20), || {
        workload(mnt, 1);
        all = spans(got);
        all.iter()
            .any(|s| !s.parent_span_id.is_empty() && s.name == "lookup")
    });
    assert!(
        ok,
        "no joined lookup span received; got {} spans",
        all.len()
    );
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    for s in &all {
        assert_eq!(s.service, "claudefs-fuse");
        assert_eq!(s.host, host_name.trim(), "host.name of {s:?}");
        assert_eq!(s.trace_id.len(), 16);
        assert!(s.trace_id.iter().any(|b| *b != 0), "zero trace id");
        assert_eq!(s.span_id.len(), 8);
        assert!(s.span_id.iter().any(|b| *b != 0), "zero span id");
        assert!(s.start <= s.end, "{s:?}");
        assert!(s.start > 1_600_000_000_000_000_000, "{s:?}");
    }
    let child = all
        .iter()
        .find(|s| s.name == "lookup" && !s.parent_span_id.is_empty())
        .unwrap();
    let parent = all
        .iter()
        .find(|p| p.span_id == child.parent_span_id)
        .expect("the kernel parent span was exported");
    // OTLP kinds: 2 = server, 3 = client.
    assert_eq!(child.kind, 2, "{child:?}");
    assert_eq!(parent.kind, 3, "{parent:?}");
    assert_eq!(parent.name, "fuse.request");
    assert_eq!(parent.trace_id, child.trace_id);
    assert!(parent.parent_span_id.is_empty());
    assert!(parent.start <= child.start && child.end <= parent.end);
    assert_eq!(parent.attr("fuse.opcode"), Some("LOOKUP"));
    assert_eq!(parent.attr("fuse.unique"), child.attr("fuse.unique"));
    assert!(child.attr("fuse.inode").is_some());
    // The lookup of "missing" fails: status Error with the errno name.
    assert!(
        all.iter()
            .any(|s| s.name == "lookup" && s.status_code == 2 && s.status_message == "ENOENT"),
        "no ENOENT lookup span"
    );
}

fn otlp_run(protocol: &str, receiver: (u16, Received)) {
    let (port, got) = receiver;
    let tmp = tempfile::tempdir().unwrap();
    let (_src, m) = MountGuard::single_path(
        tmp.path(),
        &[
            "--ebpf".into(),
            "--sample-rate".into(),
            "1".into(),
            "--otlp-endpoint".into(),
            format!("http://127.0.0.1:{port}"),
            "--otlp-protocol".into(),
            protocol.into(),
        ],
    )
    .unwrap();
    check_spans(&got, &m.mnt);
}

#[test]
fn otlp_spans_over_grpc() {
    if fuse_unavailable().is_some() {
        return;
    }
    otlp_run("grpc", grpc_receiver().unwrap());
}

#[test]
fn otlp_spans_over_http_protobuf() {
    if fuse_unavailable().is_some() {
        return;
    }
    otlp_run("http/protobuf", http_receiver().unwrap());
}

/// LOOKUP + GETATTR requests of `mount` in a scrape.
/// The value of the sample `series` (name and labels, as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn flock(f: &fs::File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock(2) on a descriptor `f` owns for the call.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn daemon_reports_flock_contention_and_waiting_requests_without_probes() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_src, m) = MountGuard::single_path(
        tmp.path(),
        &["--metrics-addr".into(), format!("127.0.0.1:{port}")],
    )
    .unwrap();
    let path = m.mnt.join("lock");
    fs::write(&path, b"x").unwrap();
    // The holder is this process; the contenders are other processes
    // (flock(1)), as the registry refuses a wait on its own process's lock.
    let a = fs::File::open(&path).unwrap();
    flock(&a, libc::LOCK_EX).unwrap();
    let nb = std::process::Command::new("flock")
        .args(["-n", "-x"])
        .arg(&path)
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(nb.code(), Some(1), "flock -n on a held lock");
    let hold = Duration::from_millis(300);
    let t0 = Instant::now();
    let mut waiter = std::process::Command::new("flock")
        .arg("-x")
        .arg(&path)
        .arg("true")
        .spawn()
        .unwrap();
    let mount = m.mnt.canonicalize().unwrap().display().to_string();
    // The parked SETLKW is a request the kernel counts as waiting on the
    // daemon (fusectl), until the lock is granted.
    let waiting =
        format!("claudefs_fuse_requests_waiting{{mount=\"{mount}\",fstype=\"fuse.claudefs\"}}");
    let mut text = String::new();
    let seen = wait_until(hold, || {
        text = scrape(port);
        sample(&text, &waiting).is_some_and(|n| n >= 1.0)
    });
    assert!(seen, "no waiting request during a blocked flock:\n{text}");
    std::thread::sleep(hold.saturating_sub(t0.elapsed()));
    flock(&a, libc::LOCK_UN).unwrap();
    assert!(waiter.wait().unwrap().success());
    assert!(t0.elapsed() >= hold);
    assert!(
        wait_until(Duration::from_secs(2), || {
            text = scrape(port);
            sample(&text, &waiting) == Some(0.0)
        }),
        "requests still waiting after the grant:\n{text}"
    );

    let text = scrape(port);
    let series = |name: &str, kind: &str, mode: &str| {
        let s = format!("{name}{{mount=\"{mount}\",kind=\"{kind}\",mode=\"{mode}\"}}");
        sample(&text, &s).unwrap_or_else(|| panic!("no {s}:\n{text}"))
    };
    let calls = "claudefs_fuse_flock_requests_total";
    let refused = "claudefs_fuse_flock_refused_total";
    let wait = "claudefs_fuse_flock_wait_seconds";
    assert_eq!(series(calls, "exclusive", "nonblocking"), 1.0);
    assert_eq!(series(refused, "exclusive", "nonblocking"), 1.0);
    assert_eq!(series(calls, "exclusive", "blocking"), 2.0);
    assert_eq!(series(refused, "exclusive", "blocking"), 0.0);
    assert_eq!(series(calls, "unlock", "blocking"), 1.0);
    // The same four SETLK/SETLKW requests in the daemon's own request
    // counter, the refusal among its errors.
    let setlk = sample(&text, "claudefs_fuse_daemon_requests_total{op=\"setlk\"}");
    assert_eq!(setlk, Some(4.0), "{text}");
    let failed = sample(
        &text,
        "claudefs_fuse_daemon_request_errors_total{op=\"setlk\"}",
    );
    assert_eq!(failed, Some(1.0), "{text}");
    assert!(
        sample(&text, "claudefs_fuse_daemon_requests_total{op=\"lookup\"}")
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        series(&format!("{wait}_count"), "exclusive", "blocking"),
        2.0
    );
    // The waiter's wait is in the sum, and above the 2^-2 s bucket.
    let sum = series(&format!("{wait}_sum"), "exclusive", "blocking");
    assert!(sum >= hold.as_secs_f64() * 0.9, "wait sum {sum}");
    let below = format!(
        "{wait}_bucket{{mount=\"{mount}\",kind=\"exclusive\",mode=\"blocking\",le=\"0.25\"}}"
    );
    assert_eq!(sample(&text, &below), Some(1.0), "{below}:\n{text}");
    if prometheus_unavailable().is_none() {
        let (ok, msg) = promtool_check(&text).unwrap();
        assert!(ok && msg.trim().is_empty(), "promtool: {msg}\n{text}");
    }
}

fn lookups_and_getattrs(text: &str, mount: &str) -> f64 {
    let prefix = format!("claudefs_fuse_requests_total{{mount=\"{mount}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| l.contains("opcode=\"GETATTR\"}") || l.contains("opcode=\"LOOKUP\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn observe_counts_requests_of_a_bindfs_mount() {
    if fuse_unavailable().is_some() || prometheus_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let bind = Bindfs::start(&src, &tmp.path().join("bind")).unwrap();
    let mount = bind.dst.canonicalize().unwrap().display().to_string();
    let obs = Observe::start(&[]).unwrap();
    assert_eq!(http_get(obs.port, "/healthz").unwrap().trim(), "ok");

    workload(&bind.dst, 2);
    let first = scrape(obs.port);
    let before = lookups_and_getattrs(&first, &mount);
    assert!(
        before > 0.0,
        "no LOOKUP/GETATTR of {mount} after a workload:\n{first}\nobserve log:\n{}",
        obs.log_text()
    );
    workload(&bind.dst, 2);
    let mut text = String::new();
    let grew = wait_until(Duration::from_secs(5), || {
        text = scrape(obs.port);
        lookups_and_getattrs(&text, &mount) > before
    });
    assert!(
        grew,
        "requests of {mount} did not grow from {before}:\n{text}"
    );
    assert!(attached(&text, "fuse_request_send"), "{text}");
    let waiting = format!("claudefs_fuse_requests_waiting{{mount=\"{mount}\",fstype=\"fuse\"}} 0");
    assert!(text.contains(&waiting), "no {waiting}:\n{text}");
    let (ok, msg) = promtool_check(&text).unwrap();
    assert!(ok && msg.trim().is_empty(), "promtool: {msg}\n{text}");
    assert_eq!(http_get(obs.port, "/healthz").unwrap().trim(), "ok");
}

/// `claudefs_fuse_probe_{runs,run_seconds}_total` of `hook` in a scrape.
fn program_runs(text: &str, hook: &str) -> (Option<f64>, Option<f64>) {
    let pick = |name: &str| {
        let prefix = format!("{name}{{program=\"{hook}\",attach_type=\"");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.rsplit(' ').next()?.parse().ok())
    };
    (
        pick("claudefs_fuse_probe_runs_total"),
        pick("claudefs_fuse_probe_run_seconds_total"),
    )
}

#[test]
fn bpf_stats_count_the_runs_of_the_fuse_programs() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (port, _src, m) = ebpf_daemon(tmp.path());
    let on = BpfStatsOn::enable().unwrap();
    workload(&m.mnt, 2);
    let first = scrape(port);
    workload(&m.mnt, 5);
    let mut text = String::new();
    for hook in ["fuse_request_send", "fuse_request_end"] {
        let (Some(runs0), Some(secs0)) = program_runs(&first, hook) else {
            panic!("no run counters of {hook} with bpf_stats on:\n{first}");
        };
        let grew = wait_until(Duration::from_secs(5), || {
            text = scrape(port);
            let (runs, secs) = program_runs(&text, hook);
            runs.is_some_and(|r| r > runs0) && secs.is_some_and(|s| s > secs0)
        });
        assert!(
            grew,
            "runs of {hook} did not grow from {runs0} ({secs0} s):\n{text}"
        );
        // At least one run per request of the workload, each well under
        // a millisecond.
        let (runs, secs) = program_runs(&text, hook);
        let (runs, secs) = (runs.unwrap(), secs.unwrap());
        assert!(runs - runs0 >= 50.0, "{hook}: {runs0} -> {runs}");
        let ns_per_run = (secs - secs0) * 1e9 / (runs - runs0);
        assert!(
            ns_per_run > 0.0 && ns_per_run < 1e6,
            "{hook}: {ns_per_run} ns a run"
        );
    }
    drop(on);
    // With bpf_stats off again the counters are not exported (the
    // kernel no longer counts), unless something else turned it on.
    if fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "0") {
        let off = scrape(port);
        assert!(!off.contains("claudefs_fuse_probe_runs_total"), "{off}");
    }
}
