//! Who may call the client routes (inference, `/v1/models`, `/`, `/load-stats`, `/fleet`,
//! `/debug/route`).
//!
//! With client API keys configured (`--api-keys`, `--api-keys-file`,
//! `--api-key-validation-urls`), a client route needs `Authorization: Bearer KEY`, where KEY is
//! one of the static keys, the admin key, or a key a validation URL accepts ([`validate`]).
//! Without any, client routes are open. The configuration is read per request, so keys change
//! with a reload. Probes (`/health`, `/liveness`, `/readiness`, `/version`) and the metrics
//! listener are never guarded; admin routes have their own guard, which only the admin key
//! passes.

mod cache;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, header};

use crate::config::Config;
use crate::error::ApiError;
use crate::telemetry::metrics::Metrics;
use validate::{Validator, Verdict};

/// When a client refused for want of a validation URL's answer may try again.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The answer to a request without a bearer key.
const MISSING: &str = "this route needs 'Authorization: Bearer <API key>'";
/// The answer to a request whose key is not accepted. Never names the key.
const INVALID: &str = "invalid API key";

/// Client authentication: the keys in force come from the configuration of each request;
/// what validation URLs said is remembered here.
#[derive(Debug)]
pub struct Auth {
    validator: Validator,
}

impl Auth {
    /// Nothing remembered yet; validations are counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            validator: Validator::new(metrics),
        }
    }

    /// Whether `headers` carry a key `config` accepts on client routes.
    pub async fn check(&self, config: &Arc<Config>, headers: &HeaderMap) -> Result<(), ApiError> {
        let auth = &config.auth;
        if !auth.is_required() {
            return Ok(());
        }
        let key = bearer(headers).ok_or(ApiError::Unauthorized(MISSING))?;
        let admin = config.admin_api_key.iter();
        if admin
            .chain(&auth.keys)
            .any(|k| same(key.as_bytes(), k.expose().as_bytes()))
        {
            return Ok(());
        }
        if auth.validation_urls.is_empty() {
            return Err(ApiError::Unauthorized(INVALID));
        }
        match self.validator.verdict(key, config).await {
            Verdict::Valid => Ok(()),
            Verdict::Refused => Err(ApiError::Unauthorized(INVALID)),
            Verdict::Unavailable => Err(ApiError::KeyCheckUnavailable {
                retry_after: UNAVAILABLE_RETRY_AFTER,
            }),
        }
    }
}

/// The key of an `Authorization: Bearer KEY` header (the scheme in any case).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// Compare two secrets in time independent of where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
