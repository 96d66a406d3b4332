//! The fleet deployment in `deploy/` (issue 14): every manifest and config
//! parses, names only flags the binary accepts and only files that exist;
//! the systemd units pass `systemd-analyze verify`; the Kubernetes objects
//! made from `dashboards/` hold exactly what those files hold; and, live,
//! a Prometheus in agent mode (run from `deploy/collector/prometheus-agent.yml`)
//! scrapes two `observe` instances standing for two hosts and remote-writes
//! to a central Prometheus, whose answers to the Overview dashboard's
//! queries have data from each host.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use claudefs_e2e::exporter::{free_port, http_get, prometheus_unavailable, Observe};
use claudefs_e2e::{fuse_bin, fuse_unavailable, in_ci, wait_until, Bindfs};
use serde_yaml::Value as Yaml;

#[path = "../../xtask/src/dashboards/promql.rs"]
#[allow(
    dead_code,
    reason = "the dashboards check's helpers; this test uses some"
)]
mod promql;

/// The workspace root (also what the included dashboards helpers' own
/// unit tests, compiled into this test too, call it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    fs::read_to_string(workspace_root().join(rel))
        .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// Every YAML document of a file.
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
        })
        .collect()
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(workspace_root().join(dir))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    v.sort();
    v
}

/// The Kubernetes objects in `deploy/kubernetes/`, by kind.
fn k8s_objects() -> BTreeMap<String, Vec<Yaml>> {
    let mut out: BTreeMap<String, Vec<Yaml>> = BTreeMap::new();
    for f in yaml_files("deploy/kubernetes") {
        for doc in yaml_docs(&f) {
            let kind = doc["kind"].as_str().unwrap_or("").to_string();
            assert!(!kind.is_empty(), "{f}: an object without kind");
            assert!(doc["apiVersion"].as_str().is_some(), "{f}: no apiVersion");
            assert!(
                doc["metadata"]["name"].as_str().is_some(),
                "{f}: {kind} without metadata.name"
            );
            out.entry(kind).or_default().push(doc);
        }
    }
    out
}

fn one<'a>(objects: &'a BTreeMap<String, Vec<Yaml>>, kind: &str) -> &'a Yaml {
    match objects.get(kind).map(Vec::as_slice) {
        Some([o]) => o,
        other => panic!("expected one {kind} in deploy/kubernetes, got {other:?}"),
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `claudefs-fuse <args> --help` succeeds: clap checks every flag and value
/// before `--help` (a flag it does not know is an error there), and each
/// `--flag` is one the subcommand's help lists.
fn assert_binary_accepts(args: &[String], from: &str) {
    assert!(!args.is_empty(), "{from}: no arguments");
    let help = Command::new(fuse_bin())
        .args([&args[0], "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap_or(a);
        assert!(
            help.contains(&format!("{flag} ")),
            "{from}: `{flag}` is not a flag of `claudefs-fuse {}`:\n{help}",
            args[0]
        );
    }
    let out = Command::new(fuse_bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{from}: `claudefs-fuse {} --help` refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ExecStart=` of a unit, split on whitespace, with the instance
/// specifiers of `mnt-data` (%i) and `/mnt/data` (%f) filled in.
fn exec_start(unit: &str) -> Vec<String> {
    let text = read(&format!("deploy/systemd/{unit}"));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit}: no ExecStart"));
    line.split_whitespace()
        .map(|w| w.replace("%i", "mnt-data").replace("%f", "/mnt/data"))
        .collect()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    for d in [
        "usr/local/bin",
        "usr/lib/systemd",
        "etc/systemd/system",
        "etc/claudefs-fuse",
        "bin",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    // A root holding systemd's own units (the targets the units name), the
    // binary where ExecStart expects it, kill(1) for ExecReload and the
    // config file of the instance verified.
    let cp = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(cp.success(), "cannot copy /usr/lib/systemd/system");
    fs::copy(fuse_bin(), r.join("usr/local/bin/claudefs-fuse")).unwrap();
    fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    fs::write(r.join("etc/claudefs-fuse/mnt-data.toml"), "").unwrap();
    let units = [
        "claudefs-fuse-observe.service",
        "claudefs-fuse-mount@.service",
    ];
    for u in units {
        fs::copy(
            workspace_root().join("deploy/systemd").join(u),
            r.join("etc/systemd/system").join(u),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", r.display()))
        .args([
            "verify",
            "claudefs-fuse-observe.service",
            "claudefs-fuse-mount@mnt-data.service",
        ])
        .output()
        .expect("systemd-analyze (package systemd, installed by `cargo xtask setup`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are warnings with exit code 0: none may
    // be printed.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
    // Capability names are not checked by verify: each must be one systemd knows.
    let known = Command::new("systemd-analyze")
        .arg("capability")
        .output()
        .unwrap();
    let known: BTreeSet<String> = String::from_utf8_lossy(&known.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_ascii_uppercase)
        .collect();
    assert!(
        known.contains("CAP_BPF"),
        "systemd knows no CAP_BPF: {known:?}"
    );
    for u in units {
        let text = read(&format!("deploy/systemd/{u}"));
        for l in text.lines().filter(|l| {
            l.starts_with("CapabilityBoundingSet=") || l.starts_with("AmbientCapabilities=")
        }) {
            for cap in l.split_once('=').unwrap().1.split_whitespace() {
                assert!(known.contains(cap), "{u}: unknown capability {cap}");
            }
        }
        assert!(text.contains("\nNoNewPrivileges=yes\n"), "{u}");
        assert!(text.contains("\nRestart=on-failure\n"), "{u}");
    }
    let observe = read("deploy/systemd/claudefs-fuse-observe.service");
    assert!(observe.contains("\nCapabilityBoundingSet=CAP_BPF CAP_PERFMON\n"));
    assert!(observe.contains("\nProtectSystem=strict\n"));
    let mount = read("deploy/systemd/claudefs-fuse-mount@.service");
    for l in [
        "Type=simple",
        "KillMode=mixed",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(mount.contains(&format!("\n{l}\n")), "mount unit lacks {l}");
    }
    // No mount namespace for the mount unit, and no fd store.
    for l in [
        "\nProtectSystem=",
        "\nPrivateTmp=",
        "\nFileDescriptorStoreMax=",
    ] {
        assert!(!mount.contains(l), "mount unit sets {l}");
    }
}

#[test]
fn every_command_line_in_deploy_is_accepted_by_the_binary() {
    for unit in [
        "claudefs-fuse-observe.service",
        "claudefs-fuse-mount@.service",
    ] {
        let argv = exec_start(unit);
        assert_eq!(argv[0], "/usr/local/bin/claudefs-fuse", "{unit}");
        assert_binary_accepts(&argv[1..], unit);
    }
    // The container: its ENTRYPOINT is the binary, its CMD the arguments.
    let cf = read("deploy/container/Containerfile");
    let json_line = |key: &str| -> Vec<String> {
        let l = cf
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("Containerfile: no {key}"));
        serde_json::from_str(l.trim()).unwrap_or_else(|e| panic!("{key}{l}: {e}"))
    };
    assert_eq!(json_line("ENTRYPOINT "), ["/usr/local/bin/claudefs-fuse"]);
    assert_binary_accepts(&json_line("CMD "), "Containerfile CMD");
    // The DaemonSet's args, with its environment's references resolved.
    let objects = k8s_objects();
    let ds = one(&objects, "DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for e in c["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("status.podIP") => "10.0.0.7".to_string(),
            Some("spec.nodeName") => "node-a".to_string(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => e["value"].as_str().unwrap().to_string(),
        };
        env.insert(name, value);
    }
    let args: Vec<String> = strings(&c["args"])
        .into_iter()
        .map(|a| {
            env.iter()
                .fold(a, |a, (k, v)| a.replace(&format!("$({k})"), v))
        })
        .collect();
    assert!(
        !args.iter().any(|a| a.contains("$(")),
        "unresolved: {args:?}"
    );
    assert_binary_accepts(&args, "DaemonSet args");
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(args.last().unwrap(), &format!("10.0.0.7:{port}"));
    // host.name is the node's name (NODE_NAME, defined before its use).
    assert_eq!(env["NODE_NAME"], "node-a");
    assert_eq!(
        env["OTEL_RESOURCE_ATTRIBUTES"],
        "host.name=$(NODE_NAME),k8s.node.name=$(NODE_NAME)"
    );
}

#[test]
fn containerfile_builds_what_exists() {
    let cf = read("deploy/container/Containerfile");
    let stages: Vec<&str> = cf.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(stages[0].contains("rust:") && stages[0].ends_with(" AS build"));
    assert!(stages[1].contains("debian:") && stages[1].contains("-slim"));
    // The workspace rust-version is what the build image carries.
    let ws = read("Cargo.toml");
    let rust_version = ws
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        stages[0].contains(&format!("rust:{rust_version}-")),
        "{}",
        stages[0]
    );
    let mut copied = BTreeSet::new();
    for l in cf.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = l.split_whitespace().skip(1).collect();
        if words[0].starts_with("--from=") {
            assert_eq!(
                words[1..],
                [
                    "/src/target/release/claudefs-fuse",
                    "/usr/local/bin/claudefs-fuse"
                ]
            );
            continue;
        }
        for src in &words[..words.len() - 1] {
            assert!(
                workspace_root().join(src).exists(),
                "COPY source {src} does not exist"
            );
            copied.insert(src.to_string());
        }
    }
    // Every workspace member is copied (cargo loads them all).
    let members = ws
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .unwrap();
    let members: Vec<String> = serde_json::from_str(members).unwrap();
    for m in members {
        let top = m.split('/').next().unwrap();
        assert!(copied.contains(top), "workspace member {m} is not copied");
    }
    // The eBPF object the build embeds is where build_support.rs puts it.
    let object = "target/ebpf/bpfel-unknown-none/release/claudefs-ebpf";
    assert!(cf.contains(&format!("CLAUDEFS_EBPF_OBJECT=/src/{object}")));
    let support = read("ebpf/build_support.rs");
    assert!(
        support.contains("bpfel-unknown-none") && support.contains("claudefs-ebpf"),
        "ebpf/build_support.rs no longer builds {object}"
    );
    assert!(cf.contains("RUN cargo xtask build-ebpf"));
    assert!(read("xtask/src/main.rs").contains("BuildEbpf"));
}

#[test]
fn kubernetes_objects_fit_together() {
    let objects = k8s_objects();
    let ds = one(&objects, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&ds["spec"]["selector"]["matchLabels"], pod_labels);
    let c = &pod["containers"][0];
    let caps = &c["securityContext"]["capabilities"];
    assert_eq!(strings(&caps["drop"]), ["ALL"]);
    assert_eq!(strings(&caps["add"]), ["BPF", "PERFMON"]);
    let host_paths: BTreeSet<String> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_string))
        .collect();
    for p in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/fuse/connections",
        "/",
    ] {
        assert!(host_paths.contains(p), "no hostPath {p}: {host_paths:?}");
    }
    for m in c["volumeMounts"].as_sequence().unwrap() {
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{m:?}");
    }
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].as_str().is_some(), "no {k}.{r}");
        }
    }
    // The measured numbers sit next to the resources.
    let text = read("deploy/kubernetes/observe-daemonset.yaml");
    assert!(
        text.contains("bench agent") && text.contains("CPU-seconds per 1M FUSE"),
        "no measurement next to the resources"
    );
    let svc = one(&objects, "Service");
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&pod_labels[k.as_str().unwrap()], v, "Service selector");
    }
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"],
        "Service targetPort"
    );
    let sm = one(&objects, "ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k.as_str().unwrap()], v);
    }
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    let relabel = &sm["spec"]["endpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"].as_str(), Some("instance"));
    let ns = one(&objects, "Namespace")["metadata"]["name"].clone();
    for (kind, list) in &objects {
        for o in list.iter().filter(|_| kind != "Namespace") {
            assert_eq!(o["metadata"]["namespace"], ns, "{kind} namespace");
        }
    }
}

/// The ConfigMap and the PrometheusRule hold what `dashboards/` holds: run
/// `cargo xtask deploy generate` after changing a dashboard or a rule.
#[test]
fn dashboards_configmap_and_prometheusrule_equal_their_sources() {
    let objects = k8s_objects();
    let cm = objects["ConfigMap"]
        .iter()
        .find(|c| c["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1"))
        .expect("a ConfigMap labelled grafana_dashboard: \"1\"");
    let data = cm["data"].as_mapping().unwrap();
    let dir = workspace_root().join("dashboards");
    let files = promql::dashboard_files(&dir).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    let keys: BTreeSet<String> = data
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(keys, names, "run `cargo xtask deploy generate`");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let want: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(f).unwrap()).unwrap();
        let got: serde_json::Value =
            serde_json::from_str(data[name.as_str()].as_str().unwrap()).unwrap();
        assert!(
            got == want,
            "{name} in the ConfigMap differs: run `cargo xtask deploy generate`"
        );
    }
    let rule = one(&objects, "PrometheusRule");
    let alerts = &yaml_docs("dashboards/alerts.yml")[0];
    assert!(alerts["groups"]
        .as_sequence()
        .is_some_and(|g| !g.is_empty()));
    assert!(
        rule["spec"]["groups"] == alerts["groups"],
        "the PrometheusRule differs from dashboards/alerts.yml: run `cargo xtask deploy generate`"
    );
}

#[test]
fn collector_configs_receive_otlp_and_remote_write() {
    let otel = &yaml_docs("deploy/collector/otel-collector.yaml")[0];
    let otlp = &otel["receivers"]["otlp"]["protocols"];
    assert_eq!(otlp["grpc"]["endpoint"].as_str(), Some("0.0.0.0:4317"));
    assert_eq!(otlp["http"]["endpoint"].as_str(), Some("0.0.0.0:4318"));
    let traces = &otel["service"]["pipelines"]["traces"];
    assert_eq!(strings(&traces["receivers"]), ["otlp"]);
    for e in strings(&traces["exporters"]) {
        assert!(otel["exporters"][e.as_str()].is_mapping(), "exporter {e}");
    }
    for p in strings(&traces["processors"]) {
        assert!(otel["processors"][p.as_str()].is_mapping(), "processor {p}");
    }
    let agent = &yaml_docs("deploy/collector/prometheus-agent.yml")[0];
    assert!(agent["remote_write"][0]["url"]
        .as_str()
        .is_some_and(|u| u.ends_with("/api/v1/write")));
    // The live test below runs Prometheus on this file; promtool checks it too.
    if prometheus_unavailable().is_none() {
        let out = Command::new("promtool")
            .args(["check", "config"])
            .arg(workspace_root().join("deploy/collector/prometheus-agent.yml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for f in yaml_files("deploy/collector") {
        assert!(!yaml_docs(&f).is_empty(), "{f}");
    }
}

/// A Prometheus process (killed on drop) with its data and log in a temp dir.
struct Prom {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prom {
    fn start(config: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("prometheus.yml");
        fs::write(&cfg, config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(
                args.iter()
                    .map(|a| a.replace("{dir}", &dir.path().display().to_string())),
            )
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let p = Self { child, port, dir };
        assert!(
            wait_until(Duration::from_secs(20), || http_get(port, "/-/ready")
                .is_ok()),
            "prometheus {args:?} not ready: {}",
            p.log()
        );
        p
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// An instant query's series (their labels); empty on any error.
    fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", claudefs_testkit::urlencode(q));
        let Ok(body) = http_get(self.port, &path) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prom {
    fn drop(&mut self) {
        claudefs_e2e::terminate(&mut self.child, Duration::from_secs(3));
    }
}

/// `deploy/collector/prometheus-agent.yml` pointed at the two local
/// observes (`instance` host-a and host-b) and at the central Prometheus,
/// with 1 s scrapes and sends so the test is quick.
fn agent_config(observes: [u16; 2], central: u16) -> String {
    let mut cfg = yaml_docs("deploy/collector/prometheus-agent.yml").remove(0);
    cfg["global"]["scrape_interval"] = "1s".into();
    cfg["global"]["scrape_timeout"] = "1s".into();
    let statics = cfg["scrape_configs"][0]["static_configs"]
        .as_sequence_mut()
        .unwrap();
    assert_eq!(statics.len(), 2, "two example hosts in the agent config");
    for (i, (s, port)) in statics.iter_mut().zip(observes).enumerate() {
        s["targets"] = vec![Yaml::from(format!("127.0.0.1:{port}"))].into();
        s["labels"]["instance"] = format!("host-{}", ["a", "b"][i]).into();
    }
    let rw = &mut cfg["remote_write"][0];
    rw["url"] = format!("http://127.0.0.1:{central}/api/v1/write").into();
    rw["queue_config"]["batch_send_deadline"] = "1s".into();
    serde_yaml::to_string(&cfg).unwrap()
}

fn workload(dir: &Path, n: usize) {
    for i in 0..n {
        let p = dir.join(format!("f{}", i % 8));
        let _ = fs::write(&p, b"x");
        let _ = fs::metadata(&p);
        let _ = fs::read(&p);
    }
    let _ = fs::read_dir(dir).map(|d| d.count());
}

#[test]
fn agent_mode_prometheus_remote_writes_two_hosts_to_a_central_one() {
    if fuse_unavailable().is_some() || prometheus_unavailable().is_some() {
        assert!(!in_ci(), "the fleet test must run in CI");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let bind = Bindfs::start(&src, &tmp.path().join("bind")).unwrap();
    let mount = bind.dst.canonicalize().unwrap().display().to_string();
    let a = Observe::start(&[]).unwrap();
    let b = Observe::start(&[]).unwrap();
    let central = Prom::start(
        "global:\n  scrape_interval: 1s\n",
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.path={dir}/data",
        ],
    );
    let agent = Prom::start(
        &agent_config([a.port, b.port], central.port),
        &["--enable-feature=agent", "--storage.agent.path={dir}/wal"],
    );
    let hosts = ["host-a", "host-b"];
    // Both hosts' request counters of the bindfs mount reach the central one.
    let q = format!("sum by (instance) (claudefs_fuse_requests_total{{mount=\"{mount}\"}})");
    let mut got = Vec::new();
    let arrived = wait_until(Duration::from_secs(30), || {
        workload(&bind.dst, 50);
        got = central.query(&q);
        got.len() == 2
    });
    assert!(
        arrived,
        "central Prometheus has {got:?} for {q}\nagent log:\n{}\ncentral log:\n{}",
        agent.log(),
        central.log()
    );
    let instances: BTreeSet<&str> = got
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str())
        .collect();
    assert_eq!(instances, hosts.into_iter().collect());
    // A few more scrapes so rates over $__rate_interval (4 s) have points.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        workload(&bind.dst, 50);
        std::thread::sleep(Duration::from_millis(100));
    }
    let scrape = |port| http_get(port, "/metrics").unwrap();
    let emitted: BTreeSet<String> = promql::exposition_names(&scrape(a.port))
        .intersection(&promql::exposition_names(&scrape(b.port)))
        .cloned()
        .collect();
    // The Overview dashboard's queries, each host selected alone, on the
    // central Prometheus: every query over metrics observe emits has data.
    let overview =
        promql::load_dashboard(&workspace_root().join("dashboards/fuse-overview.json")).unwrap();
    let mut checked = 0;
    let mut empty = Vec::new();
    for t in &overview.targets {
        let names = promql::metric_names(&t.expr);
        let observed = names.iter().all(|n| {
            emitted
                .iter()
                .any(|e| e == n || promql::in_family(n, e) || promql::in_family(e, n))
        });
        if names.is_empty() || !observed {
            continue;
        }
        for host in hosts {
            let x = promql::Expansion {
                interval_s: 1,
                rate_interval_s: 4,
                range_s: 10,
                vars: [
                    ("job".to_string(), "claudefs-fuse".to_string()),
                    ("instance".to_string(), host.to_string()),
                    ("mount".to_string(), promql::regex_quote(&mount)),
                ]
                .into_iter()
                .collect(),
            };
            let expr = promql::expand(&t.expr, &x);
            if central.query(&expr).is_empty() {
                empty.push(format!("{host}: {} ({}): {expr}", t.panel, t.ref_id));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "only {checked} Overview queries are over observe's metrics"
    );
    assert!(
        empty.is_empty(),
        "{} of {checked} Overview queries have no data on the central Prometheus:\n{}",
        empty.len(),
        empty.join("\n")
    );
    drop(agent);
}
