//! Retry rules: which failures are retried, how long to back off, and the budget that keeps a
//! sick fleet from being hammered by retries (a share of the requests, plus a small floor).
//! Only failures before any response byte reached the client are ever retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, StatusCode, header};
use tokio::time::Instant;

use crate::config::RetryConfig;

/// The statuses retried on another worker whatever `--retry-on-status` adds: vllm-project/
/// router's list (408 and 429 are the worker's state, not the request's fault).
pub const RETRIED_STATUSES: &[u16] = &[408, 429, 500, 502, 503, 504];

/// Whether `status` from a worker is retried on another one.
pub fn retryable_status(config: &RetryConfig, status: StatusCode) -> bool {
    RETRIED_STATUSES.contains(&status.as_u16()) || config.extra_statuses.contains(&status.as_u16())
}

/// The backoff before retry number `retry` (1-based), with jitter, or the worker's
/// `Retry-After` when it asked for longer; never more than the maximum.
pub fn backoff(config: &RetryConfig, retry: u32, headers: Option<&HeaderMap>) -> Duration {
    let base = config.initial_backoff.as_secs_f64()
        * config.multiplier.powi(retry.saturating_sub(1) as i32);
    let spread = base * config.jitter * (2.0 * fastrand::f64() - 1.0);
    // Past the maximum (or past what a Duration holds) the maximum applies.
    let mut wait = Duration::try_from_secs_f64((base + spread).max(0.0)).unwrap_or(Duration::MAX);
    if let Some(asked) = headers.and_then(retry_after) {
        wait = wait.max(asked);
    }
    wait.min(config.max_backoff)
}

/// `Retry-After` in seconds (the date form is not honoured).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Retries allowed: every request deposits `ratio` of a retry, and `min_per_sec` more accrue
/// each second; a retry spends one. The balance is capped so a quiet spell cannot save up a
/// storm. Lock-free: the balance is a count of millionths of a retry, and time accrues from
/// the latest instant any caller saw.
#[derive(Debug)]
pub struct RetryBudget {
    /// Millionths of a retry each request deposits.
    per_request: u64,
    /// Millionths of a retry accrued per nanosecond.
    per_nano: f64,
    cap: u64,
    balance: AtomicU64,
    /// Nanoseconds from `origin` to the last accrual.
    accrued_at: AtomicU64,
    origin: Instant,
}

/// One retry, in the budget's units.
const ONE: u64 = 1_000_000;

impl RetryBudget {
    /// A budget of `ratio` retries per request plus `min_per_sec`.
    pub fn new(ratio: f64, min_per_sec: f64) -> Self {
        let cap = (10.0 * min_per_sec).max(10.0);
        let units = |retries: f64| (retries * ONE as f64).round() as u64;
        Self {
            per_request: units(ratio),
            per_nano: min_per_sec * ONE as f64 / 1e9,
            cap: units(cap),
            balance: AtomicU64::new(units(cap)),
            accrued_at: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// A request arrived.
    pub fn deposit(&self) {
        self.add(self.per_request);
    }

    /// Spend one retry if the budget allows.
    pub fn try_spend(&self) -> bool {
        let now = u64::try_from(
            Instant::now()
                .saturating_duration_since(self.origin)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX);
        // Each nanosecond accrues once, to whoever moves the clock past it.
        let last = self.accrued_at.fetch_max(now, Ordering::Relaxed);
        let accrued = (now.saturating_sub(last) as f64 * self.per_nano) as u64;
        if accrued > 0 {
            self.add(accrued);
        }
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(ONE))
            .is_ok()
    }

    fn add(&self, units: u64) {
        let cap = self.cap;
        // The closure always answers, so the update always succeeds.
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_add(units).min(cap))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.2,
            extra_statuses: vec![409],
            budget_ratio: 0.2,
            budget_min_per_sec: 1.0,
        }
    }

    #[test]
    fn backoff_at_the_largest_accepted_settings_is_the_maximum() {
        let year = Duration::from_secs(crate::config::MAX_DURATION_SECS);
        let c = RetryConfig {
            initial_backoff: year,
            max_backoff: year,
            multiplier: crate::config::MAX_BACKOFF_MULTIPLIER,
            jitter: 1.0,
            ..config()
        };
        for retry in [1, 2, 100, u32::MAX] {
            assert!(backoff(&c, retry, None) <= year, "{retry}");
        }
    }

    #[test]
    fn statuses_retried() {
        let c = config();
        // vllm-project/router's list, plus the configured extra (409 here).
        for s in [408, 429, 500, 502, 503, 504, 409] {
            assert!(
                retryable_status(&c, StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
        for s in [400, 404, 413, 422, 501, 200] {
            assert!(
                !retryable_status(&c, StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after_up_to_the_cap() {
        let c = config();
        for retry in 1..=4 {
            let expected = 0.1 * 2f64.powi(retry - 1);
            let got = backoff(&c, retry as u32, None).as_secs_f64();
            assert!(
                got >= expected * 0.8 - 1e-9 && got <= (expected * 1.2).min(2.0) + 1e-9,
                "{retry}: {got}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "1".parse().unwrap());
        assert_eq!(backoff(&c, 1, Some(&h)), Duration::from_secs(1));
        h.insert(header::RETRY_AFTER, "60".parse().unwrap());
        assert_eq!(backoff(&c, 1, Some(&h)), Duration::from_secs(2), "capped");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_retries_to_a_share_of_traffic() {
        let budget = RetryBudget::new(0.2, 1.0);
        // The initial balance (its cap, 10) is spent first.
        assert_eq!((0..100).filter(|_| budget.try_spend()).count(), 10);
        // Then every request earns a fifth of a retry: 100 requests, 20 retries.
        let earned = (0..100)
            .filter(|_| {
                budget.deposit();
                budget.try_spend()
            })
            .count();
        assert_eq!(earned, 20);
        // And a second of time one more.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.try_spend());
        assert!(!budget.try_spend());
    }
}
