//! Failure injection: what a request meets before the engine sees it.
//!
//! Order: the server dying (`exit_after`), then an explicit `X-Return-Error: <status>` header,
//! then the random `error_rate`, then `hang`. Runtime toggles are atomics so tests can flip
//! them while traffic flows. A hang holds requests as a stalled engine does; when it lifts,
//! the held ones are answered 503, as by an engine restarted to recover: they are not run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use http::{HeaderMap, StatusCode};
use tokio::sync::Notify;

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
    /// Hold it while the hang lasts ([`Faults::hang_lifted`]), then answer 503.
    Hang,
    /// This request is the last: kill the server, answer nothing.
    Die,
}

/// Fault switches of one server.
pub(crate) struct Faults {
    hang: AtomicBool,
    /// Woken when the hang lifts.
    lifted: Notify,
    /// `f64` bits of the error rate.
    error_rate: AtomicU64,
    exit_after: Option<u64>,
    received: AtomicU64,
}

impl Faults {
    pub(crate) fn new(config: &SimConfig) -> Self {
        Self {
            hang: AtomicBool::new(config.hang),
            lifted: Notify::new(),
            error_rate: AtomicU64::new(config.error_rate.clamp(0.0, 1.0).to_bits()),
            exit_after: config.exit_after,
            received: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Relaxed);
        if !hang {
            self.lifted.notify_waiters();
        }
    }

    /// Returns once no hang is on: at once, or when [`Faults::set_hang`] lifts it.
    pub(crate) async fn hang_lifted(&self) {
        loop {
            let lifted = self.lifted.notified();
            let mut lifted = std::pin::pin!(lifted);
            // Registered before the flag is read, so a lift in between is not missed.
            lifted.as_mut().enable();
            if !self.hang.load(Relaxed) {
                return;
            }
            lifted.await;
        }
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

    #[tokio::test]
    async fn held_requests_are_let_go_when_the_hang_lifts() {
        let f = std::sync::Arc::new(Faults::new(&SimConfig {
            hang: true,
            ..SimConfig::default()
        }));
        let held = tokio::spawn({
            let f = std::sync::Arc::clone(&f);
            async move { f.hang_lifted().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!held.is_finished(), "held while the hang is on");
        f.set_hang(false);
        tokio::time::timeout(std::time::Duration::from_secs(5), held)
            .await
            .expect("released")
            .unwrap();
        // Not hung: no wait at all.
        f.hang_lifted().await;
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
