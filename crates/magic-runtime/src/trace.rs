//! W3C Trace Context for executions.
//!
//! Owns: accepting a caller's `traceparent` (version `00`), starting a trace when there is none
//! or it is malformed, and the execution's own span, whose `traceparent` is propagated on
//! egress and whose trace ID is written to the execution's log line and audit records. Must
//! never: trust a malformed header (it is replaced, not repaired).

use rand::RngCore as _;

/// The execution's place in a distributed trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, never all zero.
    pub trace_id: String,
    /// The caller's span (16 hex digits), when a valid `traceparent` came in.
    pub parent_id: Option<String>,
    /// This execution's span (16 hex digits).
    pub span_id: String,
    /// Trace flags (2 hex digits; `01` = sampled).
    pub flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    loop {
        rand::thread_rng().fill_bytes(&mut buf);
        if buf.iter().any(|b| *b != 0) {
            return hex::encode(&buf);
        }
    }
}

/// Parse a version-00 `traceparent`: `(trace_id, parent_id, flags)`.
pub fn parse_traceparent(header: &str) -> Option<(String, String, String)> {
    let mut parts = header.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || version != "00"
        || !is_hex(trace, 32)
        || !is_hex(parent, 16)
        || !is_hex(flags, 2)
        || trace.bytes().all(|b| b == b'0')
        || parent.bytes().all(|b| b == b'0')
    {
        return None;
    }
    Some((trace.to_string(), parent.to_string(), flags.to_string()))
}

impl TraceContext {
    /// Continue the caller's trace when `header` is a valid `traceparent`, else start one.
    pub fn continue_or_start(header: Option<&str>) -> TraceContext {
        match header.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id: random_hex(8),
                flags,
            },
            None => TraceContext {
                trace_id: random_hex(16),
                parent_id: None,
                span_id: random_hex(8),
                flags: "01".into(),
            },
        }
    }

    /// The `traceparent` naming this execution's span, for outgoing requests.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_table() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(good),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into(),
                "01".into()
            ))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_valid_trace_is_continued_with_a_new_span() {
        let t = TraceContext::continue_or_start(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        let tp = t.traceparent();
        assert_eq!(
            parse_traceparent(&tp).map(|p| p.0),
            Some(t.trace_id.clone())
        );
    }

    #[test]
    fn a_missing_or_bad_header_starts_a_fresh_trace() {
        for header in [None, Some("garbage")] {
            let t = TraceContext::continue_or_start(header);
            assert!(t.parent_id.is_none());
            assert!(parse_traceparent(&t.traceparent()).is_some());
        }
        let a = TraceContext::continue_or_start(None);
        let b = TraceContext::continue_or_start(None);
        assert_ne!(a.trace_id, b.trace_id);
    }
}
