//! Failure injection: what a request meets before the engine sees it.
//!
//! Order: the server dying (`exit_after`), then an explicit `X-Return-Error: <status>` header,
//! then the random `error_rate`, then `hang`. Runtime toggles are atomics so tests can flip
//! them while traffic flows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use http::{HeaderMap, StatusCode};

use crate::SimConfig;

/// The request header that asks for an error answer with the given status.
pub const RETURN_ERROR_HEADER: &str = "x-return-error";

/// What to do with one inference request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve it normally.
    Serve,
    /// Answer at once with this error status.
    Fail(StatusCode),
    /// `X-Return-Error` held something other than a status code in 200..=599.
    BadHeader,
    /// Never answer.
    Hang,
    /// This request is the last: kill the server, answer nothing.
    Die,
}

/// Fault switches of one server.
pub(crate) struct Faults {
    hang: AtomicBool,
    /// `f64` bits of the error rate.
    error_rate: AtomicU64,
    exit_after: Option<u64>,
    received: AtomicU64,
}

impl Faults {
    pub(crate) fn new(config: &SimConfig) -> Self {
        Self {
            hang: AtomicBool::new(config.hang),
            error_rate: AtomicU64::new(config.error_rate.clamp(0.0, 1.0).to_bits()),
            exit_after: config.exit_after,
            received: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Relaxed);
    }

    pub(crate) fn set_error_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.error_rate.store(rate.to_bits(), Relaxed);
    }

    /// Judges one inference request; call exactly once per request, on arrival.
    pub(crate) fn judge(&self, headers: &HeaderMap) -> Verdict {
        let n = self.received.fetch_add(1, Relaxed) + 1;
        if self.exit_after.is_some_and(|limit| n >= limit) {
            return Verdict::Die;
        }
        if let Some(value) = headers.get(RETURN_ERROR_HEADER) {
            return std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
                .filter(|code| (200..=599).contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok())
                .map_or(Verdict::BadHeader, Verdict::Fail);
        }
        let rate = f64::from_bits(self.error_rate.load(Relaxed));
        if rate > 0.0 && fastrand::f64() < rate {
            return Verdict::Fail(StatusCode::INTERNAL_SERVER_ERROR);
        }
        if self.hang.load(Relaxed) {
            return Verdict::Hang;
        }
        Verdict::Serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(error: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = error {
            h.insert(RETURN_ERROR_HEADER, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn header_wins_over_hang() {
        let f = Faults::new(&SimConfig {
            hang: true,
            ..SimConfig::default()
        });
        assert_eq!(
            f.judge(&headers(Some("503"))),
            Verdict::Fail(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(f.judge(&headers(Some("abc"))), Verdict::BadHeader);
        assert_eq!(f.judge(&headers(Some("99"))), Verdict::BadHeader);
        assert_eq!(f.judge(&headers(None)), Verdict::Hang);
        f.set_hang(false);
        assert_eq!(f.judge(&headers(None)), Verdict::Serve);
    }

    #[test]
    fn error_rate_extremes() {
        let f = Faults::new(&SimConfig::default());
        f.set_error_rate(1.0);
        assert_eq!(
            f.judge(&headers(None)),
            Verdict::Fail(StatusCode::INTERNAL_SERVER_ERROR)
        );
        f.set_error_rate(0.0);
        assert_eq!(f.judge(&headers(None)), Verdict::Serve);
    }

    #[test]
    fn dies_on_the_nth_request() {
        let f = Faults::new(&SimConfig {
            exit_after: Some(2),
            ..SimConfig::default()
        });
        assert_eq!(f.judge(&headers(None)), Verdict::Serve);
        assert_eq!(f.judge(&headers(None)), Verdict::Die);
        assert_eq!(f.judge(&headers(None)), Verdict::Die);
    }
}
