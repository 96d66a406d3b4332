//! Trace identity carried with requests: [`TraceId`], [`SpanId`] and the
//! [`TraceContext`] that links a span to its parent, with the W3C Trace
//! Context `traceparent` header as their text form.
//!
//! A `traceparent` reads `00-<32 hex trace id>-<16 hex span id>-<2 hex
//! flags>`; hex digits are lowercase, all-zero ids are invalid and version
//! `ff` is forbidden (<https://www.w3.org/TR/trace-context/#traceparent-header>).

use std::fmt;

/// A 128-bit trace identifier; zero is the invalid id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub u128);

/// A 64-bit span identifier; zero is the invalid id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub u64);

/// The trace a request belongs to and the span it was issued from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace every span of the request belongs to.
    pub trace_id: TraceId,
    /// The span the request was issued from (the parent of new spans).
    pub span_id: SpanId,
    /// Whether the caller recorded the trace (the `sampled` flag).
    pub sampled: bool,
}

impl TraceId {
    /// Whether this id is valid (not all zero).
    pub fn is_valid(&self) -> bool {
        self.0 != 0
    }
}

impl SpanId {
    /// Whether this id is valid (not all zero).
    pub fn is_valid(&self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for TraceId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    /// 16 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// The `sampled` bit of the trace flags.
const FLAG_SAMPLED: u8 = 0x01;

/// Parses exactly `s.len()` lowercase hex digits; `None` on anything else.
fn parse_lower_hex(s: &str) -> Option<u128> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

impl TraceContext {
    /// A context for `trace_id` and `span_id`.
    pub fn new(trace_id: TraceId, span_id: SpanId, sampled: bool) -> Self {
        Self {
            trace_id,
            span_id,
            sampled,
        }
    }

    /// Parses a W3C `traceparent` header value.
    ///
    /// Returns `None` for wrong field lengths, uppercase or non-hex digits,
    /// version `ff`, or an all-zero trace or span id. A version above `00`
    /// may append fields after the flags (separated by `-`); they are
    /// ignored, as the W3C text asks. Version `00` must be exactly 55
    /// characters long.
    pub fn from_traceparent(header: &str) -> Option<TraceContext> {
        let header = header.trim();
        if header.len() < TRACEPARENT_LEN || !header.is_ascii() {
            return None;
        }
        let version = parse_lower_hex(&header[0..2])?;
        if version == 0xff {
            return None;
        }
        if version == 0 && header.len() != TRACEPARENT_LEN {
            return None;
        }
        if header.len() > TRACEPARENT_LEN && header.as_bytes()[TRACEPARENT_LEN] != b'-' {
            return None;
        }
        let bytes = header.as_bytes();
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id = TraceId(parse_lower_hex(&header[3..35])?);
        let span_id = SpanId(u64::try_from(parse_lower_hex(&header[36..52])?).ok()?);
        let flags = u8::try_from(parse_lower_hex(&header[53..55])?).ok()?;
        if !trace_id.is_valid() || !span_id.is_valid() {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & FLAG_SAMPLED != 0,
        })
    }

    /// Formats this context as a version-00 `traceparent` header value.
    pub fn to_traceparent(&self) -> String {
        let flags = if self.sampled { FLAG_SAMPLED } else { 0 };
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example() {
        let ctx = TraceContext::from_traceparent(EXAMPLE).unwrap();
        assert_eq!(ctx.trace_id, TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736));
        assert_eq!(ctx.span_id, SpanId(0x00f067aa0ba902b7));
        assert!(ctx.sampled);
    }

    #[test]
    fn round_trips_through_text() {
        let ctx = TraceContext::new(TraceId(0xabc), SpanId(0x12), false);
        let text = ctx.to_traceparent();
        assert_eq!(
            text,
            "00-00000000000000000000000000000abc-0000000000000012-00"
        );
        assert_eq!(TraceContext::from_traceparent(&text), Some(ctx));
        assert_eq!(
            TraceContext::from_traceparent(EXAMPLE)
                .unwrap()
                .to_traceparent(),
            EXAMPLE
        );
    }

    #[test]
    fn unsampled_flag_and_other_flag_bits() {
        let ctx = TraceContext::from_traceparent(&EXAMPLE.replace("-01", "-00")).unwrap();
        assert!(!ctx.sampled);
        let ctx = TraceContext::from_traceparent(&EXAMPLE.replace("-01", "-03")).unwrap();
        assert!(ctx.sampled);
        let ctx = TraceContext::from_traceparent(&EXAMPLE.replace("-01", "-02")).unwrap();
        assert!(!ctx.sampled);
    }

    #[test]
    fn rejects_zero_ids() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert_eq!(TraceContext::from_traceparent(zero_trace), None);
        assert_eq!(TraceContext::from_traceparent(zero_span), None);
    }

    #[test]
    fn rejects_uppercase_and_non_hex() {
        assert_eq!(
            TraceContext::from_traceparent(&EXAMPLE.to_uppercase()),
            None
        );
        let upper_span = EXAMPLE.replace("00f067aa0ba902b7", "00F067AA0BA902B7");
        assert_eq!(TraceContext::from_traceparent(&upper_span), None);
        let plus = EXAMPLE.replace("00f067aa0ba902b7", "+0f067aa0ba902b7");
        assert_eq!(TraceContext::from_traceparent(&plus), None);
        let junk = EXAMPLE.replace("4bf9", "4bg9");
        assert_eq!(TraceContext::from_traceparent(&junk), None);
    }

    #[test]
    fn rejects_wrong_lengths_and_separators() {
        assert_eq!(TraceContext::from_traceparent(""), None);
        assert_eq!(TraceContext::from_traceparent(&EXAMPLE[..54]), None);
        assert_eq!(TraceContext::from_traceparent(&format!("{EXAMPLE}-")), None);
        assert_eq!(TraceContext::from_traceparent(&format!("{EXAMPLE}0")), None);
        let moved = "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01";
        assert_eq!(TraceContext::from_traceparent(moved), None);
        let underscores = EXAMPLE.replace('-', "_");
        assert_eq!(TraceContext::from_traceparent(&underscores), None);
    }

    #[test]
    fn version_ff_is_invalid_and_future_versions_may_extend() {
        let ff = EXAMPLE.replacen("00", "ff", 1);
        assert_eq!(TraceContext::from_traceparent(&ff), None);
        let future = format!("{}-extra", EXAMPLE.replacen("00", "01", 1));
        let ctx = TraceContext::from_traceparent(&future).unwrap();
        assert_eq!(ctx.span_id, SpanId(0x00f067aa0ba902b7));
        let glued = format!("{}x", EXAMPLE.replacen("00", "01", 1));
        assert_eq!(TraceContext::from_traceparent(&glued), None);
    }

    #[test]
    fn display_is_zero_padded_lowercase_hex() {
        assert_eq!(TraceId(0xAB).to_string(), format!("{:0>32}", "ab"));
        assert_eq!(SpanId(0xCD).to_string(), "00000000000000cd");
        assert_eq!(TraceId(u128::MAX).to_string(), "f".repeat(32));
        assert!(!TraceId(0).is_valid());
        assert!(SpanId(1).is_valid());
    }
}
