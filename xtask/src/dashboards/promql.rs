//! The static half of `cargo xtask dashboards check`: reading the Grafana
//! dashboards and the alert rules, pulling out their PromQL, expanding
//! Grafana's variables, and naming the metrics an expression reads.
//!
//! The PromQL scanner is deliberately small: it knows strings, label
//! matchers (`{...}`), range and subquery brackets (`[...]`), grouping
//! clauses (`by (...)`, `on (...)`, ...), numbers and identifiers. An
//! identifier followed by `(` (or by `by`/`without`) is a function or
//! aggregation; the keywords below are operators; every other identifier
//! is a metric name.
//! Prometheus itself parses every expression in the live check, so the
//! scanner only has to find names, not validate syntax.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One PromQL expression of a dashboard panel.
#[derive(Debug, Clone)]
pub struct Target {
    pub panel: String,
    pub panel_type: String,
    pub ref_id: String,
    /// As written in the dashboard (with Grafana variables).
    pub expr: String,
    /// Instant query (stat/bargauge/table over `$__range`) rather than range.
    pub instant: bool,
}

/// A template variable backed by a `label_values(...)` query.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    /// The series selector inside `label_values(...)`, if any.
    pub selector: Option<String>,
    pub label: String,
}

/// One dashboard file, checked and taken apart.
#[derive(Debug)]
pub struct Dashboard {
    pub file: PathBuf,
    pub title: String,
    pub targets: Vec<Target>,
    pub variables: Vec<Variable>,
}

/// The dashboard JSON files in `dir` (sorted).
pub fn dashboard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Parses a dashboard and checks what every dashboard here must have: a
/// `datasource` variable of type prometheus that every panel and target
/// uses, query variables with `label_values`, panels with unique ids and
/// at least one target each (rows aside), and a current schema version.
pub fn load_dashboard(file: &Path) -> Result<Dashboard> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let mut problems = Vec::new();
    let title = json["title"].as_str().unwrap_or("").to_string();
    if title.is_empty() {
        problems.push("no title".to_string());
    }
    if json["uid"].as_str().unwrap_or("").is_empty() {
        problems.push("no uid".to_string());
    }
    if json["schemaVersion"].as_u64().unwrap_or(0) < 36 {
        problems.push("schemaVersion below 36".to_string());
    }
    let vars = json["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ds = vars.iter().find(|v| v["type"] == "datasource");
    match ds {
        Some(v) if v["name"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problems.push("no `datasource` variable of type datasource/prometheus".to_string()),
    }
    let mut variables = Vec::new();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let vname = v["name"].as_str().unwrap_or("").to_string();
        check_datasource(
            &v["datasource"],
            &format!("variable {vname}"),
            &mut problems,
        );
        let query = match &v["query"] {
            Value::String(s) => s.clone(),
            q => q["query"].as_str().unwrap_or("").to_string(),
        };
        match parse_label_values(&query) {
            Some((selector, label)) => variables.push(Variable {
                name: vname,
                selector,
                label,
            }),
            None => problems.push(format!(
                "variable {vname}: not a label_values query: {query}"
            )),
        }
    }
    let mut targets = Vec::new();
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = Vec::new();
    for p in json["panels"].as_array().into_iter().flatten() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    for p in panels {
        let ptype = p["type"].as_str().unwrap_or("").to_string();
        let ptitle = p["title"].as_str().unwrap_or("").to_string();
        if !ids.insert(p["id"].as_u64().unwrap_or(0)) {
            problems.push(format!("panel {ptitle:?}: duplicate id {}", p["id"]));
        }
        if ptype == "row" {
            continue;
        }
        check_datasource(
            &p["datasource"],
            &format!("panel {ptitle:?}"),
            &mut problems,
        );
        let ts = p["targets"].as_array().cloned().unwrap_or_default();
        if ts.is_empty() {
            problems.push(format!("panel {ptitle:?}: no targets"));
        }
        for t in ts {
            let ref_id = t["refId"].as_str().unwrap_or("?").to_string();
            check_datasource(
                &t["datasource"],
                &format!("panel {ptitle:?} target {ref_id}"),
                &mut problems,
            );
            let expr = t["expr"].as_str().unwrap_or("").trim().to_string();
            if expr.is_empty() {
                problems.push(format!("panel {ptitle:?} target {ref_id}: no expr"));
                continue;
            }
            targets.push(Target {
                panel: ptitle.clone(),
                panel_type: ptype.clone(),
                ref_id,
                expr,
                instant: t["instant"].as_bool().unwrap_or(false)
                    && !t["range"].as_bool().unwrap_or(false),
            });
        }
    }
    if !problems.is_empty() {
        bail!("{}:\n  {}", file.display(), problems.join("\n  "));
    }
    Ok(Dashboard {
        file: file.to_path_buf(),
        title,
        targets,
        variables,
    })
}

fn check_datasource(ds: &Value, what: &str, problems: &mut Vec<String>) {
    if ds["uid"] != "${datasource}" || ds["type"] != "prometheus" {
        problems.push(format!(
            "{what}: datasource is not the ${{datasource}} variable: {ds}"
        ));
    }
}

/// `label_values(selector, label)` or `label_values(label)`.
pub fn parse_label_values(query: &str) -> Option<(Option<String>, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?
        .trim();
    match inner.rfind(',') {
        Some(comma) if !inner[comma..].contains('}') => Some((
            Some(inner[..comma].trim().to_string()),
            inner[comma + 1..].trim().to_string(),
        )),
        _ => Some((None, inner.to_string())),
    }
}

/// Values for Grafana's interval variables, in whole seconds, and for
/// template variables: a regex (matched with `=~`) per variable name; a
/// variable without one becomes `.*`, what "All" sends with `allValue: .*`.
#[derive(Debug, Clone, Default)]
pub struct Expansion {
    pub interval_s: u64,
    pub rate_interval_s: u64,
    pub range_s: u64,
    pub vars: BTreeMap<String, String>,
}

/// Replaces `$__rate_interval`, `$__interval`, `$__range` (and their
/// `_ms`/`_s` forms and `${...}` spellings) by their values and every other
/// `$var`, `${var}`, `${var:fmt}` or `[[var]]` by its value in `x.vars`,
/// else `.*`.
pub fn expand(expr: &str, x: &Expansion) -> String {
    let value = |name: &str| -> String {
        match name {
            "__rate_interval" => format!("{}s", x.rate_interval_s),
            "__interval" => format!("{}s", x.interval_s),
            "__interval_ms" => (x.interval_s * 1000).to_string(),
            "__range" => format!("{}s", x.range_s),
            "__range_s" => x.range_s.to_string(),
            "__range_ms" => (x.range_s * 1000).to_string(),
            _ => x
                .vars
                .get(name)
                .cloned()
                .unwrap_or_else(|| ".*".to_string()),
        }
    };
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() && b[i + 1] == b'{' {
            if let Some(end) = expr[i..].find('}') {
                let inner = &expr[i + 2..i + end];
                let name = inner.split(':').next().unwrap_or("");
                out.push_str(&value(name));
                i += end + 1;
                continue;
            }
        } else if b[i] == b'$' {
            let n = ident_len(&b[i + 1..]);
            if n > 0 {
                out.push_str(&value(&expr[i + 1..i + 1 + n]));
                i += 1 + n;
                continue;
            }
        } else if b[i] == b'[' && expr[i..].starts_with("[[") {
            if let Some(end) = expr[i..].find("]]") {
                out.push_str(&value(&expr[i + 2..i + end]));
                i += end + 2;
                continue;
            }
        }
        let ch = expr[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn ident_len(b: &[u8]) -> usize {
    b.iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count()
}

/// Words that are operators or modifiers, not metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` reads (after expansion; Grafana variables inside
/// label matchers do not matter).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'{' => i = skip_to(b, i, b'}'),
            b'[' => i = skip_to(b, i, b']'),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'0'..=b'9' | b'.' => {
                i += 1;
                while i < b.len() {
                    let d = b[i];
                    let exponent_sign = (d == b'+' || d == b'-') && matches!(b[i - 1], b'e' | b'E');
                    if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exponent_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let lower = word.to_ascii_lowercase();
                // `sum by (x) (...)`: an aggregation with its clause first.
                let next_word = expr[j..]
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let next_paren =
                    (j < b.len() && b[j] == b'(') || next_word == "by" || next_word == "without";
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if next_paren {
                        i = skip_to(b, j, b')');
                    }
                } else if !next_paren && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Index just past the string literal starting at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut k = i + 1;
    while k < b.len() {
        if b[k] == b'\\' && quote != b'`' {
            k += 2;
            continue;
        }
        if b[k] == quote {
            return k + 1;
        }
        k += 1;
    }
    b.len()
}

/// Index just past the `close` matching the opener at `i`, skipping strings.
fn skip_to(b: &[u8], i: usize, close: u8) -> usize {
    let mut k = i + 1;
    while k < b.len() {
        match b[k] {
            b'"' | b'\'' | b'`' => k = skip_string(b, k),
            c if c == close => return k + 1,
            _ => k += 1,
        }
    }
    b.len()
}

/// One alerting or recording rule of a rules file.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub alert: bool,
    pub expr: String,
    /// The rule's other scalar fields by key (`for`, `severity`, `summary`,
    /// `runbook_url`, ...), unquoted.
    pub fields: BTreeMap<String, String>,
}

/// The rules of a Prometheus rules file, read line by line (the layout of
/// `dashboards/alerts.yml`: `- alert:`/`- record:` then `expr:` inline or
/// as a `|`/`>` block scalar, then `key: value` fields). Prometheus
/// validates the file itself; this only needs names, expressions and the
/// fields the check looks at.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t);
        let (key, value) = t.split_once(':').unwrap_or(("", ""));
        let value = value.trim();
        if t.starts_with('#') || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            i += 1;
            continue;
        }
        if key == "alert" || key == "record" {
            rules.push(Rule {
                name: unquote(value),
                alert: key == "alert",
                expr: String::new(),
                fields: BTreeMap::new(),
            });
        } else if key == "expr" {
            let rule = rules
                .last_mut()
                .with_context(|| format!("line {}: expr without a rule name", i + 1))?;
            rule.expr = if value.starts_with('|') || value.starts_with('>') {
                let indent = lines[i].len() - lines[i].trim_start().len();
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let l = lines[i + 1];
                    let li = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && li <= indent {
                        break;
                    }
                    block.push(l.trim());
                    i += 1;
                }
                block.join("\n").trim().to_string()
            } else {
                unquote(value)
            };
        } else if let Some(rule) = rules.last_mut() {
            if !value.is_empty() {
                rule.fields.insert(key.to_string(), unquote(value));
            }
        }
        i += 1;
    }
    if let Some(r) = rules.iter().find(|r| r.expr.is_empty()) {
        bail!("rule {} has no expr", r.name);
    }
    Ok(rules)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

/// `s` as a regex matching exactly `s` (RE2 syntax, inside a PromQL
/// double-quoted string: backslashes doubled).
pub fn regex_quote(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push_str("\\\\");
        } else if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Sample names in a Prometheus text exposition (`name{...} value` lines).
pub fn exposition_names(text: &str) -> BTreeSet<String> {
    let samples = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next());
    // A histogram family's own name: the series of its native form.
    let families = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next());
    samples.chain(families).map(str::to_string).collect()
}

/// Whether the sample `name` belongs to `family` (itself or a histogram
/// or summary series of it).
pub fn in_family(name: &str, family: &str) -> bool {
    name == family
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_prefix(family) == Some(s))
}

#[cfg(test)]
#[path = "promql_tests.rs"]
mod tests;
