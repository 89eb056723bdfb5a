//! The bounds every duration and factor is held to. A value outside them is a configuration
//! error naming its key, at start and on reload, so that no accepted value can overflow a
//! deadline (`Instant + Duration`) or a backoff computation at request time.

use std::time::Duration;

use super::ConfigError;
use super::error::invalid;

/// The longest duration any setting accepts: 365 days.
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;
/// The largest retry backoff multiplier.
pub const MAX_BACKOFF_MULTIPLIER: f64 = 16.0;

/// A whole number of seconds, 1 to [`MAX_DURATION_SECS`] (or 0 when `allow_zero`).
pub(crate) fn secs(
    flag: &'static str,
    value: u64,
    allow_zero: bool,
) -> Result<Duration, ConfigError> {
    within(flag, value, allow_zero, MAX_DURATION_SECS, "s")?;
    Ok(Duration::from_secs(value))
}

/// A whole number of milliseconds, up to the same bound as [`secs`].
pub(crate) fn millis(
    flag: &'static str,
    value: u64,
    allow_zero: bool,
) -> Result<Duration, ConfigError> {
    within(flag, value, allow_zero, MAX_DURATION_SECS * 1000, "ms")?;
    Ok(Duration::from_millis(value))
}

/// Fractional seconds, above 0 and up to [`MAX_DURATION_SECS`].
pub(crate) fn secs_f64(flag: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if !(value > 0.0 && value <= MAX_DURATION_SECS as f64) {
        return Err(invalid(
            flag,
            value,
            format!("must be above 0 and at most {MAX_DURATION_SECS}"),
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

fn within(
    flag: &'static str,
    value: u64,
    allow_zero: bool,
    max: u64,
    unit: &str,
) -> Result<(), ConfigError> {
    let min = u64::from(!allow_zero);
    if !(min..=max).contains(&value) {
        return Err(invalid(
            flag,
            value,
            format!("must be between {min} and {max} ({unit})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_refused_past_the_bound_and_at_zero_unless_allowed() {
        assert!(secs("--x", MAX_DURATION_SECS, false).is_ok());
        assert!(secs("--x", MAX_DURATION_SECS + 1, false).is_err());
        assert!(secs("--x", 0, false).is_err());
        assert_eq!(secs("--x", 0, true).unwrap(), Duration::ZERO);
        assert!(millis("--x", u64::MAX, true).is_err());
        assert!(secs_f64("--x", f64::INFINITY).is_err());
        assert!(secs_f64("--x", f64::NAN).is_err());
        assert!(secs_f64("--x", 1e300).is_err());
        assert!(secs_f64("--x", 0.5).is_ok());
    }
}
