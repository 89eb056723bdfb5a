//! Keys checked against the validation URLs: each URL gets `GET` with the key as
//! `Authorization: Bearer KEY`. The key is valid when one answers 200, refused when those that
//! answered all refused (any other status below 500); when none answered (connection error,
//! timeout, 5xx) the check is unavailable and nothing is remembered.
//!
//! Answers are remembered by a digest of the key (xxh3-128 with a random seed of this
//! validator), never the key: accepted ones for the cache TTL, refused ones for the rejected
//! TTL, within the cache size, and all forgotten when a reload changes the URLs. Requests
//! bearing the same unknown key share one check.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cache::KeyCache;
use crate::config::{Config, Secret};
use crate::sync::Mutex;
use crate::telemetry::metrics::Metrics;

/// What is known of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A validation URL accepted it.
    Valid,
    /// The validation URLs that answered refused it.
    Refused,
    /// No validation URL answered: the key is neither valid nor refused.
    Unavailable,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What one validation URL said.
enum Answer {
    Accepted,
    Refused,
    Down,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A check of one key under way; waiters read its verdict when it is sent.
type Flight = watch::Receiver<Option<Verdict>>;

/// Checks keys against the validation URLs, remembering the answers.
#[derive(Debug)]
pub struct Validator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    seed: u64,
    cache: Mutex<KeyCache>,
    flights: Mutex<HashMap<u128, Flight>>,
    /// Built at the first check: most routers never call a validation URL.
    client: OnceLock<HttpsClient>,
    metrics: Arc<Metrics>,
}

impl Validator {
    /// A validator with nothing remembered, counting its checks in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                seed: fastrand::u64(..),
                cache: Mutex::new(KeyCache::default()),
                flights: Mutex::new(HashMap::new()),
                client: OnceLock::new(),
                metrics,
            }),
        }
    }

    /// The verdict on `key` under `config`'s validation URLs: remembered, else asked (once
    /// for all the requests bearing it now).
    pub async fn verdict(&self, key: &str, config: &Arc<Config>) -> Verdict {
        let digest = self.inner.digest(key);
        let urls = &config.auth.validation_urls;
        if let Some(known) = self.inner.remembered(digest, urls) {
            return known;
        }
        let mut flight = {
            let mut flights = self.inner.flights.lock();
            // Checked again under the flights lock: a check that just ended remembered its
            // answer before leaving the flights.
            if let Some(known) = self.inner.remembered(digest, urls) {
                return known;
            }
            match flights.entry(digest) {
                Entry::Occupied(flight) => flight.get().clone(),
                Entry::Vacant(vacant) => {
                    let (sender, flight) = watch::channel(None);
                    vacant.insert(flight.clone());
                    tokio::spawn(Arc::clone(&self.inner).settle(
                        digest,
                        Secret::new(key),
                        Arc::clone(config),
                        sender,
                    ));
                    flight
                }
            }
        };
        match flight.wait_for(Option::is_some).await {
            Ok(verdict) => verdict.unwrap_or(Verdict::Unavailable),
            // The check ended without a verdict (it panicked): unknown.
            Err(_) => Verdict::Unavailable,
        }
    }
}

/// Takes a check out of the flights when it ends, whichever way it ends.
struct Landing<'a> {
    inner: &'a Inner,
    digest: u128,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.inner.flights.lock().remove(&self.digest);
    }
}

impl Inner {
    fn digest(&self, key: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), self.seed)
    }

    /// The answer `urls` gave about `digest`, while remembered.
    fn remembered(&self, digest: u128, urls: &[Uri]) -> Option<Verdict> {
        let mut cache = self.cache.lock();
        cache.answered_by(urls);
        let valid = cache.get(digest, Instant::now())?;
        Some(if valid {
            Verdict::Valid
        } else {
            Verdict::Refused
        })
    }

    /// Ask the validation URLs about `key`, remember the answer, and hand it to the waiters.
    async fn settle(
        self: Arc<Self>,
        digest: u128,
        key: Secret,
        config: Arc<Config>,
        sender: watch::Sender<Option<Verdict>>,
    ) {
        let landing = Landing {
            inner: &self,
            digest,
        };
        let auth = &config.auth;
        let verdict = self
            .ask(&auth.validation_urls, &key, auth.validation_timeout)
            .await;
        let now = Instant::now();
        let ttl = match verdict {
            Verdict::Valid => Some(auth.cache_ttl),
            Verdict::Refused => Some(auth.rejected_ttl),
            Verdict::Unavailable => None,
        };
        if let Some(ttl) = ttl {
            let mut cache = self.cache.lock();
            cache.answered_by(&auth.validation_urls);
            cache.insert(
                digest,
                verdict == Verdict::Valid,
                now + ttl,
                auth.cache_size,
                now,
            );
        }
        self.metrics.key_validation(verdict.name());
        drop(landing);
        sender.send_replace(Some(verdict));
    }

    /// Ask every URL at once; the first acceptance decides.
    async fn ask(&self, urls: &[Uri], key: &Secret, timeout: Duration) -> Verdict {
        let Ok(mut auth) = HeaderValue::try_from(format!("Bearer {}", key.expose())) else {
            // It came in a header, so it fits in one; no URL could accept it otherwise.
            return Verdict::Refused;
        };
        auth.set_sensitive(true);
        let client = self.client.get_or_init(client);
        let mut answers: FuturesUnordered<_> = urls
            .iter()
            .map(|url| ask_one(client, url, &auth, timeout))
            .collect();
        let mut refused = false;
        while let Some(answer) = answers.next().await {
            match answer {
                Answer::Accepted => return Verdict::Valid,
                Answer::Refused => refused = true,
                Answer::Down => {}
            }
        }
        if refused {
            Verdict::Refused
        } else {
            tracing::warn!(
                urls = urls.len(),
                "no API key validation URL answered: the request is answered 503"
            );
            Verdict::Unavailable
        }
    }
}

/// `GET url` bearing the key, within `timeout`.
async fn ask_one(client: &HttpsClient, url: &Uri, auth: &HeaderValue, timeout: Duration) -> Answer {
    let shown = shown(url);
    let request = match Request::get(url.clone())
        .header(header::AUTHORIZATION, auth.clone())
        .body(Full::default())
    {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(url = %shown, %error, "cannot build the API key validation request");
            return Answer::Down;
        }
    };
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => {
            tracing::warn!(url = %shown, ?timeout, "API key validation URL did not answer in time");
            Answer::Down
        }
        Ok(Err(error)) => {
            tracing::warn!(url = %shown, error = %innermost(&error), "API key validation URL unreachable");
            Answer::Down
        }
        Ok(Ok(response)) => {
            let status = response.status();
            if status == http::StatusCode::OK {
                tracing::debug!(url = %shown, "API key accepted by a validation URL");
                Answer::Accepted
            } else if status.is_server_error() {
                tracing::warn!(url = %shown, status = status.as_u16(), "API key validation URL failed");
                Answer::Down
            } else {
                tracing::debug!(url = %shown, status = status.as_u16(), "API key refused by a validation URL");
                Answer::Refused
            }
        }
    }
}

/// The innermost cause of an error, which names what actually failed.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// A validation URL as logged: scheme, host, port and path, never user information or query.
fn shown(url: &Uri) -> String {
    let host = url.host().unwrap_or_default();
    match url.port_u16() {
        Some(port) => format!(
            "{}://{host}:{port}{}",
            url.scheme_str().unwrap_or("http"),
            url.path()
        ),
        None => format!(
            "{}://{host}{}",
            url.scheme_str().unwrap_or("http"),
            url.path()
        ),
    }
}

/// A pooled client for `http` and `https` validation URLs, trusting the system's roots.
fn client() -> HttpsClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(50))
        .build(crate::tls::https_or_http(http, "validation URLs"))
}

#[cfg(test)]
mod tests;
