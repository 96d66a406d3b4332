//! Tests of option resolution: defaults, ranges, the config file, and
//! errors that name the flag or key.

use super::*;

#[test]
fn path_spec_parses_options() {
    let p: PathSpec = "/a,priority=7,addr=h:1".parse().unwrap();
    assert_eq!(p.dir, PathBuf::from("/a"));
    assert_eq!(p.priority, 7);
    assert_eq!(p.addr, "h:1");
    assert!("/a,prio=1".parse::<PathSpec>().is_err());
    assert!("/a,priority=300".parse::<PathSpec>().is_err());
}

#[test]
fn idmap_spec_parses() {
    assert_eq!(
        "identity".parse::<IdMapSpec>().unwrap(),
        IdMapSpec::Identity
    );
    assert_eq!(
        "squash".parse::<IdMapSpec>().unwrap(),
        IdMapSpec::Squash {
            uid: 65534,
            gid: 65534
        }
    );
    assert_eq!(
        "shift:1000:0:10".parse::<IdMapSpec>().unwrap(),
        IdMapSpec::Shift {
            host: 1000,
            local: 0,
            count: 10
        }
    );
    assert!("shift:1".parse::<IdMapSpec>().is_err());
    assert!("shift:1000:0:0".parse::<IdMapSpec>().is_err());
    assert!("shift:4294967295:0:2".parse::<IdMapSpec>().is_err());
    assert!("shift:0:4294967295:2".parse::<IdMapSpec>().is_err());
    assert!("shift:4294967295:0:1".parse::<IdMapSpec>().is_ok());
    for text in ["identity", "squash:1:2", "shift:1000:0:10", "table:/etc/x"] {
        assert_eq!(text.parse::<IdMapSpec>().unwrap().to_string(), text);
    }
    assert!("bogus".parse::<IdMapSpec>().is_err());
}

#[test]
fn state_dir_is_escaped() {
    assert_eq!(
        default_state_dir(Path::new("/mnt/x")),
        PathBuf::from("/run/claudefs-fuse/mnt-x")
    );
}

fn args_with_config(dir: &Path, config: Option<PathBuf>) -> MountArgs {
    MountArgs {
        paths: vec![],
        policy: None,
        idmap: None,
        state_dir: Some(dir.join("s")),
        threads: None,
        poll_us: None,
        passthrough: false,
        transport: None,
        queue_policy: None,
        config,
        cache_timeout_ms: None,
        health_interval_ms: None,
        sample_rate: None,
        metrics_addr: None,
        ebpf: false,
        otlp_endpoint: None,
        otlp_protocol: None,
        slow_threshold: None,
        no_keeper: false,
        mountpoint: dir.join("m"),
    }
}

/// Each bad value of the config file is one line naming the key, the
/// value and the file (and for TOML errors the line).
#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().display().to_string();
    let cases = [
        ("threads = 0".to_string(), "threads = 0 in "),
        ("poll_us = 5000".to_string(), "poll_us = 5000 in "),
        (
            "cache_timeout_ms = 86400001".to_string(),
            "cache_timeout_ms = 86400001 in ",
        ),
        (
            "health_interval_ms = 0".to_string(),
            "health_interval_ms = 0 in ",
        ),
        ("sample_rate = 1.5".to_string(), "sample_rate = 1.5 in "),
        (
            "metrics_addr = \"bogus\"".to_string(),
            "metrics_addr = \"bogus\" in ",
        ),
        (
            "slow_threshold = \"5x\"".to_string(),
            "slow_threshold = \"5x\" in ",
        ),
        ("idmap = \"bogus\"".to_string(), "idmap = \"bogus\" in "),
        (
            "idmap = \"table:/nonexistent\"".to_string(),
            "idmap = \"table:/nonexistent\" in ",
        ),
        (
            "policy = \"fastest\"".to_string(),
            "line 2 (policy): unknown variant",
        ),
        (
            "transport = \"pigeon\"".to_string(),
            "line 2 (transport): unknown variant",
        ),
        (
            "threads = \"four\"".to_string(),
            "line 2 (threads): invalid type",
        ),
        (
            "frobnicate = 1".to_string(),
            "line 2 (frobnicate): unknown field",
        ),
        ("this is not toml".to_string(), "line 2: "),
        (
            "otlp_protocol = \"pigeon\"".to_string(),
            "--otlp-protocol \"pigeon\"",
        ),
    ];
    for (i, (line, expected)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, format!("path = [\"{src}\"]\n{line}\n")).unwrap();
        let err = format!(
            "{:#}",
            args_with_config(dir.path(), Some(cfg.clone()))
                .resolve()
                .unwrap_err()
        );
        assert!(err.contains(expected), "{line}: {err}");
        assert!(!err.contains('\n'), "{line}: {err:?}");
    }
    let cfg = dir.path().join("paths.toml");
    let many = vec![format!("\"{src}\""); MAX_PATHS + 1].join(", ");
    std::fs::write(&cfg, format!("path = [{many}]\n")).unwrap();
    let err = args_with_config(dir.path(), Some(cfg.clone()))
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(err.contains("has 17 entries: at most 16"), "{err}");
    std::fs::write(&cfg, "path = [\"/nonexistent\"]\n").unwrap();
    let err = format!(
        "{:#}",
        args_with_config(dir.path(), Some(cfg))
            .resolve()
            .unwrap_err()
    );
    assert!(err.starts_with("path = \"/nonexistent\" in "), "{err}");
}

/// Flags are named as flags, with their value.
#[test]
fn flag_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args_with_config(dir.path(), None);
    args.paths = vec![dir.path().to_str().unwrap().parse().unwrap()];
    let err = |a: &MountArgs| format!("{:#}", a.resolve().unwrap_err());
    let mut a = args.clone();
    a.threads = Some(0);
    assert_eq!(err(&a), "--threads 0: must be in 1..=256");
    let mut a = args.clone();
    a.health_interval_ms = Some(5);
    assert_eq!(err(&a), "--health-interval-ms 5: must be in 10..=3600000");
    let mut a = args.clone();
    a.cache_timeout_ms = Some(90_000_000);
    assert_eq!(
        err(&a),
        "--cache-timeout-ms 90000000: must be in 0..=86400000"
    );
    let mut a = args.clone();
    a.paths = vec!["/nonexistent".parse().unwrap()];
    assert!(
        err(&a).starts_with("--path \"/nonexistent\": "),
        "{}",
        err(&a)
    );
    let mut a = args.clone();
    a.paths = vec![args.paths[0].clone(); MAX_PATHS + 1];
    assert_eq!(
        err(&a),
        "--path given 17 times: at most 16 storage paths are supported"
    );
    let mut a = args.clone();
    a.state_dir = Some(PathBuf::from("/etc/passwd"));
    assert_eq!(err(&a), "--state-dir \"/etc/passwd\": not a directory");
    let mut a = args.clone();
    a.otlp_endpoint = Some("not a url".into());
    assert!(
        err(&a).starts_with("--otlp-endpoint \"not a url\": "),
        "{}",
        err(&a)
    );
}

#[test]
fn config_file_fills_missing_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "path = [\"{},priority=3\"]\npolicy = \"primary\"\nthreads = 2\npoll_us = 5\ncache_timeout_ms = 0\ntransport = \"dev\"\nmetrics_addr = \"127.0.0.1:9999\"\nslow_threshold = \"50ms\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let args = args_with_config(dir.path(), Some(cfg));
    let s = args.resolve().unwrap();
    assert_eq!(s.paths[0].priority, 3);
    assert_eq!(s.policy, PolicyArg::Primary);
    assert_eq!(s.threads, 2);
    assert_eq!(s.poll_us, 5);
    assert_eq!(s.cache_timeout, std::time::Duration::ZERO);
    assert_eq!(s.transport, TransportArg::Dev);
    assert_eq!(s.metrics_addr, Some("127.0.0.1:9999".parse().unwrap()));
    assert_eq!(s.slow_threshold, Some(std::time::Duration::from_millis(50)));
}
