//! Unit tests of the dashboard and PromQL helpers, including checks of the
//! repository's own dashboards and rules that need no Prometheus.

use super::*;
use crate::workspace_root;

fn names(expr: &str) -> Vec<String> {
    metric_names(expr).into_iter().collect()
}

#[test]
fn metric_names_skip_functions_labels_and_keywords() {
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (opcode, le) (rate(claudefs_fuse_request_duration_seconds_bucket{mount=~"$mount", opcode!="SETLKW"}[$__rate_interval])))"#
        ),
        ["claudefs_fuse_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names(
            "sum by (instance, path_id) (rate(a_total[5m])) / on (instance) group_left () sum by (instance) (rate(b_total[5m]))"
        ),
        ["a_total", "b_total"]
    );
    assert_eq!(
        names("x == 0 and on (job, program) max_over_time(y[1h]) == 1 unless z offset 5m"),
        ["x", "y", "z"]
    );
    assert_eq!(
        names("sum(rate(errs[1m])) without (le) > bool 1e-3 or vector(0) * Inf"),
        ["errs"]
    );
    // Strings, subqueries, comments and recording-rule names with colons.
    assert_eq!(
        names(
            "label_replace(job:up:sum{a=\"}{\"}, \"dst\", \"$1\", \"src\", \"(.*)\") # c\n+ max_over_time(m[10m:1m])"
        ),
        ["job:up:sum", "m"]
    );
    assert_eq!(names("topk(10, sum(increase(s_sum[60s])))"), ["s_sum"]);
    // Aggregation modifiers after the body.
    assert_eq!(names("sum(rate(q[5m])) by (le)"), ["q"]);
}

#[test]
fn expand_replaces_interval_and_template_variables() {
    let mut x = Expansion {
        interval_s: 1,
        rate_interval_s: 4,
        range_s: 90,
        vars: Default::default(),
    };
    let expr = r#"rate(m{instance=~"$instance",mount=~"${mount}",op=~"${opcode:regex}",p=~"[[path]]"}[$__rate_interval])"#;
    assert_eq!(
        expand(expr, &x),
        r#"rate(m{instance=~".*",mount=~".*",op=~".*",p=~".*"}[4s])"#
    );
    x.vars
        .insert("instance".into(), regex_quote("127.0.0.1:9464"));
    x.vars.insert("mount".into(), regex_quote("/mnt/a b"));
    assert_eq!(
        expand(expr, &x),
        r#"rate(m{instance=~"127\\.0\\.0\\.1:9464",mount=~"/mnt/a b",op=~".*",p=~".*"}[4s])"#
    );
    assert_eq!(
        expand("increase(m[$__range]) / $__range_s + m[${__interval}]", &x),
        "increase(m[90s]) / 90 + m[1s]"
    );
    // Range vectors stay range vectors: `[...]` is not `[[...]]`.
    assert_eq!(expand("m[5m]", &x), "m[5m]");
}

#[test]
fn label_values_forms() {
    assert_eq!(
        parse_label_values(r#"label_values(up{job=~"$job", a=~"x,y"}, instance)"#),
        Some((
            Some(r#"up{job=~"$job", a=~"x,y"}"#.to_string()),
            "instance".to_string()
        ))
    );
    assert_eq!(
        parse_label_values("label_values(job)"),
        Some((None, "job".to_string()))
    );
    assert_eq!(parse_label_values("query_result(up)"), None);
}

#[test]
fn rules_inline_and_block_expressions() {
    let text = r#"
groups:
  - name: g
    rules:
      - alert: One
        expr: up == 0
        for: 1m
        annotations:
          summary: "Down: {{ $labels.instance }}"
      - alert: "Two"
        expr: |
          sum by (a) (rate(x[5m]))
            > 1
        labels:
          severity: info
      - record: job:x:rate5m
        expr: 'rate(x[5m])'
"#;
    let rules = parse_rules(text).unwrap();
    let got: Vec<(&str, &str)> = rules
        .iter()
        .map(|r| (r.name.as_str(), r.expr.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("One", "up == 0"),
            ("Two", "sum by (a) (rate(x[5m]))\n> 1"),
            ("job:x:rate5m", "rate(x[5m])"),
        ]
    );
    assert!(rules[0].alert && !rules[2].alert);
    assert_eq!(rules[0].fields["for"], "1m");
    assert_eq!(rules[0].fields["summary"], "Down: {{ $labels.instance }}");
    assert_eq!(rules[1].fields["severity"], "info");
}

#[test]
fn exposition_sample_names_and_families() {
    let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1 2\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\nplain 7\n";
    let names = exposition_names(text);
    // `h` itself: the series of a histogram stored natively.
    assert_eq!(
        names.iter().map(String::as_str).collect::<Vec<_>>(),
        ["a_total", "h", "h_bucket", "h_count", "h_sum", "plain"]
    );
    assert!(in_family("h_bucket", "h"));
    assert!(in_family("h", "h"));
    assert!(!in_family("h_total", "h"));
}

#[test]
fn repository_dashboards_are_well_formed() {
    let dir = workspace_root().join("dashboards");
    let files = dashboard_files(&dir).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let d = load_dashboard(&f).unwrap();
        assert!(!d.targets.is_empty(), "{}", d.title);
        for t in &d.targets {
            let names = metric_names(&t.expr);
            assert!(
                !names.is_empty(),
                "{} / {}: no metric in {}",
                d.title,
                t.panel,
                t.expr
            );
        }
        for v in &d.variables {
            assert!(
                v.selector.is_some(),
                "{}: variable {} has no selector",
                d.title,
                v.name
            );
        }
    }
}

#[test]
fn repository_rules_parse() {
    let text = std::fs::read_to_string(workspace_root().join("dashboards/alerts.yml")).unwrap();
    let rules = parse_rules(&text).unwrap();
    assert!(rules.len() >= 7);
    for r in rules {
        assert!(r.name.starts_with("ClaudefsFuse"), "{}", r.name);
        assert!(!metric_names(&r.expr).is_empty(), "{}", r.name);
    }
}
