//! W3C Trace Context (level 1): every request belongs to a trace, the client's when it sent a
//! valid `traceparent`, else a new one. The router's handling of the request is a span of that
//! trace, and each attempt to a worker is a child span whose id the worker receives as the
//! parent in its own `traceparent`. The client's `tracestate` goes to workers unchanged; it is
//! dropped with an invalid or missing `traceparent`, which it cannot belong to.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The trace's identity and the caller's span, as `00-<trace-id>-<parent-id>-<flags>`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Vendor-specific trace data, passed through unchanged.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;
/// The only flag of level 1: the caller may record this trace.
const SAMPLED: u8 = 0x01;

/// A 16-byte trace id, never zero; shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

/// An 8-byte span id, never zero; shown as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl TraceId {
    /// A random id.
    pub fn random() -> Self {
        Self(fastrand::u128(1..))
    }

    /// The id's bytes, most significant first (as OTLP carries it).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl SpanId {
    /// A random id.
    pub fn random() -> Self {
        Self(fastrand::u64(1..))
    }

    /// The id's bytes, most significant first (as OTLP carries it).
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A valid `traceparent` header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: TraceId,
    /// The sender's span.
    pub parent_id: SpanId,
    /// The sender may record the trace.
    pub sampled: bool,
}

impl TraceParent {
    /// Parse a `traceparent` value; `None` when it is not valid. Version 00 must be exactly
    /// 55 characters; a later version (but not `ff`) is read as far as version 00's fields go,
    /// provided anything after them starts with `-`, as the specification asks of parsers.
    /// Hex digits must be lowercase and neither id may be all zeros.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_u8(&value[0..2])?;
        match version {
            0x00 if value.len() != TRACEPARENT_LEN => return None,
            0xff => return None,
            _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = u128::from_str_radix(hex(&value[3..35])?, 16).ok()?;
        let parent_id = u64::from_str_radix(hex(&value[36..52])?, 16).ok()?;
        let flags = hex_u8(&value[53..55])?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            sampled: flags & SAMPLED != 0,
        })
    }

    /// The header value, version 00.
    pub fn to_header(self) -> Option<HeaderValue> {
        let mut buf = [0u8; TRACEPARENT_LEN];
        buf[..3].copy_from_slice(b"00-");
        write_hex(&mut buf[3..35], &self.trace_id.to_bytes());
        buf[35] = b'-';
        write_hex(&mut buf[36..52], &self.parent_id.to_bytes());
        buf[52] = b'-';
        write_hex(&mut buf[53..55], &[u8::from(self.sampled)]);
        HeaderValue::from_bytes(&buf).ok()
    }
}

/// `digits` as text when every one is a lowercase hex digit (`from_str_radix` alone would
/// take uppercase and a leading `+`).
fn hex(digits: &[u8]) -> Option<&str> {
    if digits
        .iter()
        .all(|d| matches!(d, b'0'..=b'9' | b'a'..=b'f'))
    {
        std::str::from_utf8(digits).ok()
    } else {
        None
    }
}

fn hex_u8(digits: &[u8]) -> Option<u8> {
    u8::from_str_radix(hex(digits)?, 16).ok()
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// One request's place in its trace: the trace, the client's span when it sent one, and the
/// router's own span for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    remote_parent: Option<SpanId>,
    span_id: SpanId,
    sampled: bool,
}

impl TraceContext {
    /// The context of a request with these headers: the client's trace when exactly one valid
    /// `traceparent` came, else a new sampled trace.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let parent = match (values.next(), values.next()) {
            (Some(value), None) => TraceParent::parse(value.as_bytes()),
            _ => None,
        };
        match parent {
            Some(p) => Self {
                trace_id: p.trace_id,
                remote_parent: Some(p.parent_id),
                span_id: SpanId::random(),
                sampled: p.sampled,
            },
            None => Self {
                trace_id: TraceId::random(),
                remote_parent: None,
                span_id: SpanId::random(),
                sampled: true,
            },
        }
    }

    /// The trace id, shown as 32 lowercase hex digits (for logs).
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The router's span for this request.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The client's span, when the client continued a trace.
    pub fn remote_parent(&self) -> Option<SpanId> {
        self.remote_parent
    }

    /// Whether the trace came from the client (else the router started it).
    pub fn is_continued(&self) -> bool {
        self.remote_parent.is_some()
    }

    /// Whether the trace may be recorded: the client's sampled flag, or always for a trace
    /// the router started.
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// The `traceparent` a worker receives for the attempt whose span is `attempt`.
    pub fn traceparent(&self, attempt: SpanId) -> Option<HeaderValue> {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: attempt,
            sampled: self.sampled,
        }
        .to_header()
    }

    /// Keep the client's `tracestate` only with the client's trace: without a valid
    /// `traceparent` it belongs to nothing.
    pub fn prune(&self, to_worker: &mut HeaderMap) {
        if !self.is_continued() {
            to_worker.remove(&TRACESTATE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_the_same() {
        let p = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert_eq!(p.to_header().unwrap(), VALID);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let p = TraceParent::parse(unsampled.as_bytes()).unwrap();
        assert!(!p.sampled);
        assert_eq!(p.to_header().unwrap(), unsampled);
    }

    #[test]
    fn flags_other_than_sampled_are_not_passed_on() {
        let p =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09").unwrap();
        assert!(p.sampled);
        assert!(p.to_header().unwrap().to_str().unwrap().ends_with("-01"));
        let p =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe").unwrap();
        assert!(!p.sampled);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            // Uppercase hex, in each field.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Version ff is forbidden.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Lengths: short fields, long fields, extra data on version 00.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Not hex, or signs `from_str_radix` would take.
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            // Wrong separators.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            // A later version followed by something other than `-`.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes() {
        for later in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        ] {
            let p = TraceParent::parse(later.as_bytes()).unwrap();
            assert_eq!(p.to_header().unwrap(), VALID, "{later}");
        }
    }

    #[test]
    fn the_clients_trace_is_continued_with_a_new_span_for_each_child() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let ctx = TraceContext::from_headers(&headers);
        assert!(ctx.is_continued() && ctx.is_sampled());
        assert_eq!(
            ctx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(ctx.remote_parent().unwrap().to_string(), "00f067aa0ba902b7");
        assert_ne!(ctx.span_id().to_string(), "00f067aa0ba902b7");
        let (a, b) = (SpanId::random(), SpanId::random());
        assert_ne!(a, b);
        let sent = ctx.traceparent(a).unwrap();
        assert_eq!(
            sent.to_str().unwrap(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{a}-01")
        );
        ctx.prune(&mut headers);
        assert_eq!(headers[&TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn without_a_valid_traceparent_a_new_sampled_trace_starts_and_tracestate_goes() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        headers.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        );
        let ctx = TraceContext::from_headers(&headers);
        assert!(!ctx.is_continued() && ctx.is_sampled());
        assert_ne!(
            ctx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let other = TraceContext::from_headers(&headers);
        assert_ne!(ctx.trace_id(), other.trace_id());
        let sent = ctx.traceparent(ctx.span_id()).unwrap();
        let back = TraceParent::parse(sent.as_bytes()).unwrap();
        assert_eq!((back.trace_id, back.sampled), (ctx.trace_id(), true));
        ctx.prune(&mut headers);
        assert!(headers.get(&TRACESTATE).is_none());
    }

    #[test]
    fn two_traceparent_headers_are_as_good_as_none() {
        let mut headers = HeaderMap::new();
        headers.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(!TraceContext::from_headers(&headers).is_continued());
    }

    #[test]
    fn an_unsampled_client_trace_stays_unsampled() {
        let mut headers = HeaderMap::new();
        headers.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let ctx = TraceContext::from_headers(&headers);
        assert!(ctx.is_continued() && !ctx.is_sampled());
        let sent = ctx.traceparent(SpanId::random()).unwrap();
        assert!(sent.to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn ids_show_as_fixed_width_lowercase_hex() {
        assert_eq!(TraceId(0xab).to_string(), format!("{:0>32}", "ab"));
        assert_eq!(SpanId(0xab).to_string(), "00000000000000ab");
        assert_eq!(SpanId(0x0102).to_bytes(), [0, 0, 0, 0, 0, 0, 1, 2]);
    }
}
