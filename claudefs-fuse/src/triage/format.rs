//! Human renderings of the numbers in a triage report: durations (`850ns`,
//! `1.23ms`, `2.1s`), rates, wall-clock times and the power-of-two labels of
//! log2 histogram buckets (`[4K, 8K)`, as bpftrace prints them).

/// A nanosecond duration with three significant digits in the largest unit
/// that keeps the number below 1000: `850ns`, `12.3us`, `1.23ms`, `2.1s`
/// (trailing zeros dropped). Seconds are the largest unit.
pub fn format_duration_ns(ns: u64) -> String {
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    for (unit, scale) in [("us", 1e3), ("ms", 1e6)] {
        let text = significant3(ns as f64 / scale);
        // Rounding can carry into the next unit (999_999ns is "1000us").
        if text.parse::<f64>().is_ok_and(|v| v < 1000.0) {
            return format!("{text}{unit}");
        }
    }
    format!("{}s", significant3(ns as f64 / 1e9))
}

/// [`format_duration_ns`], or `-` when there is no value.
pub fn format_opt_duration_ns(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), format_duration_ns)
}

/// A rate per second (`120/s`, `3.5/s`, `0.1/s`), or `-` when unknown.
pub fn format_rate(per_sec: Option<f64>) -> String {
    match per_sec {
        Some(rate) if rate.is_finite() && rate >= 0.0 => format!("{}/s", significant3(rate)),
        _ => "-".to_owned(),
    }
}

/// `value` with three significant digits (whole numbers above 1000), without
/// trailing zeros after the decimal point.
fn significant3(value: f64) -> String {
    let decimals = if value < 1.0 {
        3
    } else if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Unix nanoseconds as an RFC 3339 UTC time with milliseconds
/// (`2026-05-20T10:00:00.123Z`).
pub fn format_unix_ns(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let millis = (unix_ns % 1_000_000_000) / 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The label of a histogram bucket holding `lower_ns..=upper_ns`:
/// `[22ms, 24ms]`; the last bucket, which has no upper bound, `[11.1d, ...)`.
pub fn bucket_label(lower_ns: u64, upper_ns: u64) -> String {
    if upper_ns == u64::MAX {
        format!("[{}, ...)", format_duration_ns(lower_ns))
    } else {
        format!(
            "[{}, {}]",
            format_duration_ns(lower_ns),
            format_duration_ns(upper_ns)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_the_unit_and_three_digits() {
        let cases = [
            (0, "0ns"),
            (850, "850ns"),
            (999, "999ns"),
            (1_000, "1us"),
            (12_345, "12.3us"),
            (999_499, "999us"),
            (999_999, "1ms"),
            (1_234_567, "1.23ms"),
            (1_200_000, "1.2ms"),
            (123_456_789, "123ms"),
            (2_100_000_000, "2.1s"),
            (59_990_000_000, "60s"),
            (1_234_000_000_000, "1234s"),
            (u64::MAX, "18446744074s"),
        ];
        for (ns, expected) in cases {
            assert_eq!(format_duration_ns(ns), expected, "{ns}ns");
        }
        assert_eq!(format_opt_duration_ns(None), "-");
        assert_eq!(format_opt_duration_ns(Some(1_500)), "1.5us");
    }

    #[test]
    fn rates() {
        assert_eq!(format_rate(Some(120.0)), "120/s");
        assert_eq!(format_rate(Some(3.5)), "3.5/s");
        assert_eq!(format_rate(Some(0.1)), "0.1/s");
        assert_eq!(format_rate(Some(0.0)), "0/s");
        assert_eq!(format_rate(Some(12_345.6)), "12346/s");
        assert_eq!(format_rate(None), "-");
        assert_eq!(format_rate(Some(f64::NAN)), "-");
        assert_eq!(format_rate(Some(f64::INFINITY)), "-");
    }

    #[test]
    fn wall_clock() {
        assert_eq!(format_unix_ns(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day) 12:34:56.789.
        assert_eq!(
            format_unix_ns(951_827_696_789_000_000),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            format_unix_ns(1_767_225_599_999_999_999),
            "2025-12-31T23:59:59.999Z"
        );
        assert_eq!(format_unix_ns(u64::MAX), "2554-07-21T23:34:33.709Z");
    }

    #[test]
    fn bucket_labels_show_both_bounds() {
        assert_eq!(bucket_label(0, 953), "[0ns, 953ns]");
        assert_eq!(bucket_label(22_006_779, 24_000_000), "[22ms, 24ms]");
        assert_eq!(bucket_label(1_000_000_001, u64::MAX), "[1s, ...)");
    }
}
