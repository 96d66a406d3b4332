//! The Prometheus text exposition format 0.0.4 (`text/plain;
//! version=0.0.4`): what every scraper reads. Histograms carry their
//! classic buckets only (`le` = 2^n s, then `+Inf`, `_sum`, `_count`);
//! the native buckets need the protobuf format (`proto`).
//!
//! The output is that of the exporter's earlier encoder byte for byte
//! (HELP escaping, label order, number formatting), so scrapes, promtool
//! and the tests see the same text.

use std::fmt::Write;

use super::model::{classic_histogram, MetricFamily, MetricKind, Value};

/// The `Content-Type` of a text scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes families in the text exposition format.
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = String::with_capacity(16 * 1024);
    for f in families {
        let name = f.name();
        if !f.family.help.is_empty() {
            let _ = writeln!(out, "# HELP {name} {}", escape(f.family.help, false));
        }
        let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
        for s in &f.series {
            let labels = f.label_pairs(s);
            match (&s.value, f.kind) {
                (Value::Number(v), _) => sample(&mut out, name, "", &labels, None, *v),
                (Value::Histogram { hist, total_ns }, MetricKind::Histogram) => {
                    let c = classic_histogram(hist, *total_ns);
                    for (le, n) in &c.buckets {
                        let le = le.to_string();
                        sample(&mut out, name, "_bucket", &labels, Some(&le), *n as f64);
                    }
                    let count = c.count as f64;
                    sample(&mut out, name, "_bucket", &labels, Some("+Inf"), count);
                    sample(&mut out, name, "_sum", &labels, None, c.sum);
                    sample(&mut out, name, "_count", &labels, None, count);
                }
                (Value::Histogram { .. }, _) => {}
            }
        }
    }
    out.into_bytes()
}

/// One sample line: `name{labels,le="..."} value`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
    for (i, (k, v)) in all.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{k}=\"{}\"", escape(v, true));
    }
    if !labels.is_empty() || le.is_some() {
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    out.push('\n');
}

/// A sample value: shortest decimal that reads back the same, and the
/// format's spellings of the non-finite values.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// Escapes `\` and newlines (and `"` in label values).
fn escape(s: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !s.contains(special) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::model::sample_families;

    /// The text of [`sample_families`] as the exporter's earlier encoder
    /// (the tikv `prometheus` crate's `TextEncoder`) wrote it.
    const EARLIER: &str = include_str!("testdata/sample_families.txt");

    #[test]
    fn text_is_that_of_the_earlier_encoder() {
        let got = String::from_utf8(encode(&sample_families())).unwrap();
        for (i, (g, w)) in got.lines().zip(EARLIER.lines()).enumerate() {
            assert_eq!(g, w, "line {}", i + 1);
        }
        assert_eq!(got, EARLIER);
    }

    #[test]
    fn escapes_and_non_finite_values() {
        assert_eq!(escape("a\\b\n\"c\"", true), "a\\\\b\\n\\\"c\\\"");
        assert_eq!(escape("a\\b\n\"c\"", false), "a\\\\b\\n\"c\"");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(0.25), "0.25");
    }
}
