//! Bad input for every flag of `mount`, `observe`, `status` and `triage`,
//! as one table: out of range, wrong type, missing file, port in use, more
//! than 16 paths, bad TOML, unknown policy/protocol/transport.
//!
//! Each row runs the real binary and must end, within a few seconds, with
//! exit code 1 or 2 (not a signal, not a hang), nothing on stdout and one
//! line on stderr that starts with `claudefs-fuse: ` and names the flag
//! (or the config key) at fault. Nothing may be left behind: the
//! mountpoint is not mounted, no process of the binary is alive, a state
//! dir that did not exist was not created (nor the default one under
//! `/run/claudefs-fuse`), and the state dir of a daemon killed with open
//! files (a crash journal waiting for recovery) is byte for byte as it was.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use claudefs_e2e::{fuse_bin, fuse_unavailable, is_mounted, MountGuard};
use claudefs_fuse::daemon::config::default_state_dir;

/// A row: the arguments and the word the error line must contain.
struct Case {
    args: Vec<String>,
    names: String,
}

fn case(args: &[&str], names: &str) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        names: names.to_string(),
    }
}

/// Every file under `dir` with its bytes (None when `dir` is missing).
fn snapshot(dir: &Path) -> Option<BTreeMap<PathBuf, Vec<u8>>> {
    fn walk(dir: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, into);
            } else {
                into.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    dir.exists().then(|| {
        let mut files = BTreeMap::new();
        walk(dir, &mut files);
        files
    })
}

/// Pids of live processes running the binary under test.
fn live_daemons() -> Vec<u32> {
    let bin = fuse_bin().canonicalize().unwrap_or_else(|_| fuse_bin());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == bin))
        .collect()
}

/// What one run printed and how it ended.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the binary with `args` (stdin closed, no OTEL_* variables),
/// killing it after `timeout`.
fn run(args: &[String], timeout: Duration) -> Outcome {
    let mut child = Command::new(fuse_bin())
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    Outcome {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
        elapsed: t0.elapsed(),
    }
}

/// A state dir holding the journal of a daemon killed with two files open
/// for writing (it must survive every failed start untouched).
fn crashed_state_dir(dir: &Path) -> PathBuf {
    let (src, guard) = MountGuard::single_path(dir, &[]).expect("mount");
    let state = guard.state.clone();
    let mut open = Vec::new();
    for name in ["a", "b"] {
        let mut f = std::fs::File::create(guard.mnt.join(name)).expect("create");
        std::io::Write::write_all(&mut f, b"not yet synced").expect("write");
        open.push(f);
    }
    guard.kill9();
    drop(open);
    assert!(src.join("a").exists());
    let journal = snapshot(&state).expect("state dir");
    assert!(
        journal.values().any(|bytes| !bytes.is_empty()),
        "the killed daemon left a journal: {:?}",
        journal.keys()
    );
    state
}

#[test]
fn every_flag_rejects_bad_input_with_one_line_and_leaves_nothing_behind() {
    if fuse_unavailable().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let old_state = crashed_state_dir(&t.join("crashed"));
    let old_before = snapshot(&old_state);

    let src = t.join("src");
    let mnt = t.join("mnt");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let file = t.join("a-file");
    std::fs::write(&file, "x").expect("file");
    let bad_table = t.join("bad-idmap");
    std::fs::write(&bad_table, "u 1000\n").expect("idmap");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let toml = |name: &str, body: &str| {
        let p = t.join(name);
        std::fs::write(&p, body).expect("config");
        p.display().to_string()
    };
    let s = src.display().to_string();
    let f = file.display().to_string();
    let missing = t.join("missing").display().to_string();
    let seventeen = vec![format!("\"{s}\""); 17].join(", ");
    let configs = [
        (toml("syntax.toml", "this is not toml\n"), "--config"),
        (toml("unknown.toml", "frobnicate = 1\n"), "(frobnicate)"),
        (toml("type.toml", "threads = \"four\"\n"), "(threads)"),
        (toml("policy.toml", "policy = \"fastest\"\n"), "(policy)"),
        (
            toml("transport.toml", "transport = \"pigeon\"\n"),
            "(transport)",
        ),
        (toml("range.toml", "threads = 0\n"), "threads = 0 in"),
        (
            toml("rate.toml", "sample_rate = 2.0\n"),
            "sample_rate = 2.0 in",
        ),
        (
            toml("addr.toml", "metrics_addr = \"nope\"\n"),
            "metrics_addr = \"nope\" in",
        ),
        (
            toml("paths.toml", &format!("path = [{seventeen}]\n")),
            "path in",
        ),
        (
            toml("nopath.toml", &format!("path = [\"{missing}\"]\n")),
            "path = ",
        ),
        (
            toml(
                "protocol.toml",
                "otlp_endpoint = \"http://127.0.0.1:4318\"\notlp_protocol = \"pigeon\"\n",
            ),
            "--otlp-protocol",
        ),
    ];

    // `mount` rows: the storage path and mountpoint are valid unless the
    // row is about them; each row runs with a state dir that does not
    // exist and with the crashed daemon's.
    let mut mount_rows: Vec<Case> = vec![
        case(&[], "--path"),
        case(&["--path", &missing], "--path"),
        case(&["--path", &f], "--path"),
        case(&["--path", &format!("{s},priority=300")], "--path"),
        case(&["--path", &format!("{s},priority=x")], "--path"),
        case(&["--path", &format!("{s},bogus=1")], "--path"),
        case(&["--path", ",priority=1"], "--path"),
        case(&["--path", &s, "--policy", "fastest"], "--policy"),
        case(&["--path", &s, "--idmap", "bogus"], "--idmap"),
        case(&["--path", &s, "--idmap", "squash:x:1"], "--idmap"),
        case(&["--path", &s, "--idmap", "shift:1000:0:0"], "--idmap"),
        case(
            &["--path", &s, "--idmap", &format!("table:{missing}")],
            "--idmap",
        ),
        case(
            &[
                "--path",
                &s,
                "--idmap",
                &format!("table:{}", bad_table.display()),
            ],
            "--idmap",
        ),
        case(&["--path", &s, "--threads", "0"], "--threads"),
        case(&["--path", &s, "--threads", "257"], "--threads"),
        case(&["--path", &s, "--threads", "-1"], "--threads"),
        case(&["--path", &s, "--threads", "four"], "--threads"),
        case(&["--path", &s, "--poll-us", "1001"], "--poll-us"),
        case(&["--path", &s, "--poll-us", "-5"], "--poll-us"),
        case(&["--path", &s, "--passthrough=yes"], "--passthrough"),
        case(
            &["--path", &s, "--transport", "carrier-pigeon"],
            "--transport",
        ),
        case(&["--path", &s, "--config", &missing], "--config"),
        case(
            &["--path", &s, "--config", &t.display().to_string()],
            "--config",
        ),
        case(
            &["--path", &s, "--health-interval-ms", "0"],
            "--health-interval-ms",
        ),
        case(
            &["--path", &s, "--health-interval-ms", "soon"],
            "--health-interval-ms",
        ),
        case(&["--path", &s, "--sample-rate", "1.5"], "--sample-rate"),
        case(&["--path", &s, "--sample-rate", "-0.1"], "--sample-rate"),
        case(&["--path", &s, "--sample-rate", "nan"], "--sample-rate"),
        case(&["--path", &s, "--metrics-addr", "bogus"], "--metrics-addr"),
        case(
            &["--path", &s, "--metrics-addr", "127.0.0.1:99999"],
            "--metrics-addr",
        ),
        case(
            &["--path", &s, "--metrics-addr", &busy_addr],
            "--metrics-addr",
        ),
        case(&["--path", &s, "--ebpf=1"], "--ebpf"),
        case(
            &["--path", &s, "--otlp-endpoint", "not a url"],
            "--otlp-endpoint",
        ),
        case(
            &["--path", &s, "--otlp-endpoint", "ftp://127.0.0.1:4318"],
            "--otlp-endpoint",
        ),
        case(
            &["--path", &s, "--otlp-protocol", "pigeon"],
            "--otlp-protocol",
        ),
        case(
            &[
                "--path",
                &s,
                "--otlp-endpoint",
                "http://127.0.0.1:4318",
                "--otlp-protocol",
                "http/json",
            ],
            "--otlp-protocol",
        ),
        case(
            &["--path", &s, "--slow-threshold", "5parsecs"],
            "--slow-threshold",
        ),
        case(
            &["--path", &s, "--slow-threshold", "-1s"],
            "--slow-threshold",
        ),
        case(
            &["--path", &s, "--slow-threshold", "99999999999999999999s"],
            "--slow-threshold",
        ),
        case(&["--path", &s, "--bogus"], "--bogus"),
    ];
    let mut paths17 = Vec::new();
    for _ in 0..17 {
        paths17.extend(["--path", s.as_str()]);
    }
    mount_rows.push(case(&paths17, "--path"));
    for (config, names) in &configs {
        // The config's own path comes from the file (the 17 paths, the
        // missing one); the other rows give a valid --path.
        let with_path = !config.ends_with("paths.toml") && !config.ends_with("nopath.toml");
        let mut args = vec!["--config", config.as_str()];
        if with_path {
            args.extend(["--path", s.as_str()]);
        }
        mount_rows.push(case(&args, names));
    }

    let mut rows: Vec<(String, Case)> = Vec::new();
    for (i, row) in mount_rows.into_iter().enumerate() {
        for state in [t.join(format!("state-new-{i}")), old_state.clone()] {
            let mut args = vec!["mount".to_string()];
            args.extend(row.args.iter().cloned());
            args.extend(["--state-dir".into(), state.display().to_string()]);
            args.push(mnt.display().to_string());
            rows.push((
                format!("mount row {i}"),
                Case {
                    args,
                    names: row.names.clone(),
                },
            ));
        }
    }
    // The mountpoint itself, and the default state dir (checked below).
    for (args, names) in [
        (vec!["mount", "--path", &s], "<MOUNTPOINT>"),
        (vec!["mount", "--path", &s, &missing], "mountpoint"),
        (vec!["mount", "--path", &s, &f], "mountpoint"),
        (
            vec![
                "mount",
                "--path",
                &s,
                "--threads",
                "0",
                &mnt.to_str().unwrap_or_default(),
            ],
            "--threads",
        ),
    ] {
        rows.push(("mount".into(), case(&args, names)));
    }
    for (args, names) in [
        (vec!["observe", "--metrics-addr", "bogus"], "--metrics-addr"),
        (
            vec!["observe", "--metrics-addr", &busy_addr],
            "--metrics-addr",
        ),
        (
            vec!["observe", "--metrics-addr", "127.0.0.1:-1"],
            "--metrics-addr",
        ),
        (vec!["observe", "--sample-rate", "2"], "--sample-rate"),
        (vec!["observe", "--sample-rate", "-1"], "--sample-rate"),
        (vec!["observe", "--sample-rate", "often"], "--sample-rate"),
        (
            vec!["observe", "--slow-threshold", "5x"],
            "--slow-threshold",
        ),
        (
            vec!["observe", "--slow-threshold", "99999999999999999999s"],
            "--slow-threshold",
        ),
        (
            vec!["observe", "--otlp-endpoint", "not a url"],
            "--otlp-endpoint",
        ),
        (
            vec![
                "observe",
                "--otlp-endpoint",
                "http://127.0.0.1:4318",
                "--otlp-protocol",
                "pigeon",
            ],
            "--otlp-protocol",
        ),
        (
            vec!["observe", "--otlp-protocol", "pigeon"],
            "--otlp-protocol",
        ),
        (vec!["observe", "--bogus"], "--bogus"),
        (vec!["status"], "--state-dir"),
        (vec!["status", "--state-dir", &missing], "--state-dir"),
        (
            vec!["status", "--state-dir", &t.display().to_string()],
            "--state-dir",
        ),
        (vec!["status", "--state-dir", &f], "--state-dir"),
        (vec!["status", "--mountpoint", &missing], "--mountpoint"),
        (
            vec!["status", "--state-dir", &missing, "--json=1"],
            "--json",
        ),
        (vec!["status", "--state-dir"], "--state-dir"),
        (vec!["triage", "--duration", "0"], "--duration"),
        (vec!["triage", "--duration", "garbage"], "--duration"),
        (vec!["triage", "--duration", "-1"], "--duration"),
        (vec!["triage", "--duration", "1.5"], "--duration"),
        (vec!["triage", "--duration", "604801"], "--duration"),
        (
            vec!["triage", "--duration", "18446744073709551615"],
            "--duration",
        ),
        (vec!["triage", "--format", "yaml"], "--format"),
        (vec!["triage", "--mount", &missing], "--mount"),
        (vec!["triage", "--mount", &s], "--mount"),
        (vec!["triage", "--mount", "/proc"], "--mount"),
        (vec!["triage", "--bogus"], "--bogus"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        rows.push((args[0].to_string(), case(&args, names)));
    }

    let default_state = default_state_dir(&mnt);
    let default_before = snapshot(&default_state);
    let mut failures = Vec::new();
    for (label, row) in &rows {
        let out = run(&row.args, Duration::from_secs(10));
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let mut wrong = Vec::new();
        match out.code {
            Some(1 | 2) => {}
            Some(c) => wrong.push(format!("exit code {c}")),
            None => wrong.push(format!("no exit code (killed or hung {:?})", out.elapsed)),
        }
        if lines.len() != 1 {
            wrong.push(format!("{} lines on stderr", lines.len()));
        }
        match lines.first() {
            Some(l) if l.starts_with("claudefs-fuse: ") && l.contains(&row.names) => {}
            _ => wrong.push(format!("stderr does not name {:?}", row.names)),
        }
        if !out.stdout.is_empty() {
            wrong.push("printed on stdout".into());
        }
        if is_mounted(&mnt) {
            wrong.push("left the mountpoint mounted".into());
            claudefs_e2e::umount_lazy(&mnt);
        }
        let alive = live_daemons();
        if !alive.is_empty() {
            wrong.push(format!("left processes {alive:?}"));
        }
        for fresh in std::fs::read_dir(t).expect("tempdir").flatten() {
            if fresh
                .file_name()
                .to_string_lossy()
                .starts_with("state-new-")
            {
                wrong.push(format!("created {}", fresh.path().display()));
                let _ = std::fs::remove_dir_all(fresh.path());
            }
        }
        if snapshot(&old_state) != old_before {
            wrong.push("changed the crashed daemon's state dir".into());
        }
        if snapshot(&default_state) != default_before {
            wrong.push(format!("changed {}", default_state.display()));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{label}: {:?}\n    {}\n    stderr: {}",
                row.args,
                wrong.join("; "),
                out.stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    drop(busy);
}
