//! Who may call the router, and what is sent to workers on their behalf: client API keys
//! (static, from a file, or checked against validation URLs), the bearer key sent to workers,
//! and the origins browsers may call from.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderValue, Uri};

use super::bounds::{millis, secs};
use super::{ConfigError, Secret, invalid};
use crate::cli::RouterArgs;

/// Client authentication.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// Keys accepted as they are: `--api-keys` plus the keys file's.
    pub keys: Vec<Secret>,
    /// The keys file, when one is given (then keys are required even if it lists none).
    pub keys_file: Option<PathBuf>,
    /// URLs that validate keys not among `keys`.
    pub validation_urls: Vec<Uri>,
    /// How long a key a validation URL accepted is remembered.
    pub cache_ttl: Duration,
    /// How long a key a validation URL refused is remembered.
    pub rejected_ttl: Duration,
    /// Keys remembered at most.
    pub cache_size: NonZeroUsize,
    /// Time a validation URL may take to answer.
    pub validation_timeout: Duration,
}

impl AuthConfig {
    /// Whether clients must present a key.
    pub fn is_required(&self) -> bool {
        !self.keys.is_empty() || self.keys_file.is_some() || !self.validation_urls.is_empty()
    }
}

/// The origins browsers may call the router from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsOrigins {
    /// No cross-origin calls: the router sends no CORS headers.
    #[default]
    None,
    /// Any origin (`*`).
    Any,
    /// These origins exactly.
    List(Vec<HeaderValue>),
}

/// A key as given: surrounding blanks and an optional `Bearer ` prefix removed.
fn clean_key(raw: &str) -> Option<Secret> {
    let key = raw.trim();
    let key = key.strip_prefix("Bearer ").unwrap_or(key).trim();
    (!key.is_empty()).then(|| Secret::new(key))
}

/// The keys of a keys file: one per line, `#` starts a comment.
fn read_keys_file(path: &std::path::Path) -> Result<Vec<Secret>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            "--api-keys-file",
            path.display(),
            format!("cannot be read: {e}"),
        )
    })?;
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter_map(clean_key)
        .collect())
}

/// An absolute `http` or `https` URL, without credentials.
pub(crate) fn http_url(flag: &'static str, raw: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = raw
        .trim()
        .parse()
        .map_err(|e| invalid(flag, raw, format!("not a URL: {e}")))?;
    if let Some(authority) = uri.authority()
        && let Some((_, host)) = authority.as_str().rsplit_once('@')
    {
        // Shown without the credentials; the URL itself appears in logs.
        let scheme = uri.scheme_str().unwrap_or_default();
        return Err(invalid(
            flag,
            format_args!("{scheme}://***@{host}"),
            "credentials in a URL are not supported",
        ));
    }
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(invalid(flag, raw, "must be an http:// or https:// URL")),
    }
}

/// Client authentication from the flags.
pub(super) fn auth_config(args: &RouterArgs) -> Result<AuthConfig, ConfigError> {
    let mut keys: Vec<Secret> = args.api_keys.iter().filter_map(|k| clean_key(k)).collect();
    if let Some(path) = &args.api_keys_file {
        keys.extend(read_keys_file(path)?);
    }
    let validation_urls = args
        .api_key_validation_urls
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| http_url("--api-key-validation-urls", u))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuthConfig {
        keys,
        keys_file: args.api_keys_file.clone(),
        validation_urls,
        cache_ttl: secs(
            "--api-key-cache-ttl-secs",
            args.api_key_cache_ttl_secs,
            false,
        )?,
        rejected_ttl: secs(
            "--api-key-rejected-ttl-secs",
            args.api_key_rejected_ttl_secs,
            false,
        )?,
        cache_size: NonZeroUsize::new(args.api_key_cache_size)
            .ok_or_else(|| invalid("--api-key-cache-size", 0, "must be at least 1"))?,
        validation_timeout: millis(
            "--api-key-validation-timeout-ms",
            args.api_key_validation_timeout_ms,
            false,
        )?,
    })
}

/// The bearer key sent to workers, when one is set.
pub(super) fn worker_api_key(args: &RouterArgs) -> Result<Option<Secret>, ConfigError> {
    let Some(key) = args.api_key.as_deref().and_then(clean_key) else {
        return Ok(None);
    };
    if HeaderValue::from_str(key.expose()).is_err() {
        // The value is not shown: it is a secret.
        return Err(invalid(
            "--api-key",
            "***",
            "holds characters an HTTP header cannot carry",
        ));
    }
    Ok(Some(key))
}

/// The CORS origins from the flags.
pub(super) fn cors_origins(args: &RouterArgs) -> Result<CorsOrigins, ConfigError> {
    let given: Vec<&str> = args
        .cors_allowed_origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if given.is_empty() {
        return Ok(CorsOrigins::None);
    }
    if given.contains(&"*") {
        return Ok(CorsOrigins::Any);
    }
    given
        .into_iter()
        .map(|origin| {
            let uri = http_url("--cors-allowed-origins", origin)?;
            if uri.path() != "/" || origin.trim_end_matches('/') != origin || uri.query().is_some()
            {
                return Err(invalid(
                    "--cors-allowed-origins",
                    origin,
                    "an origin is a scheme, a host and an optional port, with no path",
                ));
            }
            HeaderValue::from_str(origin)
                .map_err(|_| invalid("--cors-allowed-origins", origin, "not a valid origin"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(CorsOrigins::List)
}
