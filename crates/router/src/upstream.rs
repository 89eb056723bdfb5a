//! The pooled HTTP/1.1 client every worker request goes through: forwarding and probes alike
//! ([`pool`]). The router's own requests (models, health, metrics) bear the workers' key when
//! one is set.

mod pool;

pub use pool::{SendError, WorkerBody};

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use pool::Pool;

use crate::config::{Origin, Secret};

/// The body type of every upstream request: the client's bytes, whole.
pub type UpstreamBody = Full<Bytes>;

/// Largest info response (`/v1/models`, health) the router reads from a worker.
const MAX_INFO_BODY: usize = 4 * 1024 * 1024;

/// Why a small informational request to a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer within the time allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the request failed.
    #[error("request failed: {0}")]
    Request(#[from] SendError),
    /// The answer's body could not be read.
    #[error("reading the answer failed: {0}")]
    Body(String),
    /// The worker answered with an error status.
    #[error("answered {0}")]
    Status(StatusCode),
}

/// The pool of `https` workers' connections, made at the first `https` request.
type TlsPool = Arc<OnceLock<Pool<HttpsConnector<HttpConnector>>>>;

/// A cheaply cloned handle to the shared connection pools: one for `http` workers, the
/// request path's, with no TLS layer in it, and one for `https` workers.
#[derive(Clone)]
pub struct Upstream {
    client: Arc<Pool<HttpConnector>>,
    tls: TlsPool,
    connector: HttpConnector,
    /// `Authorization` of the router's own requests, shared by every clone.
    worker_auth: Arc<ArcSwapOption<HeaderValue>>,
    /// Workers added through the admin API get it too (`--api-key-to-added-workers`).
    key_to_added: Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    /// A pool whose connections open within `connect_timeout`, with `TCP_NODELAY`; `https`
    /// workers are reached over TLS, trusting the system's roots.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        Self {
            client: Arc::new(Pool::new(connector.clone())),
            tls: TlsPool::default(),
            connector,
            worker_auth: Arc::default(),
            key_to_added: Arc::default(),
        }
    }

    /// From now on, the router's own requests bear `key` (`--api-key`), or nothing; to
    /// workers added through the admin API only when `to_added`.
    pub fn set_worker_key(&self, key: Option<&Secret>, to_added: bool) {
        self.worker_auth
            .store(key.and_then(bearer_header).map(Arc::new));
        self.key_to_added
            .store(to_added, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a worker of this origin is trusted with the workers' key.
    pub fn trusts(&self, origin: Origin) -> bool {
        origin != Origin::Admin || self.key_to_added.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Send a request (its URI absolute, naming the worker); the future resolves at the
    /// response headers.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<WorkerBody>, SendError> {
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            let tls = self.tls.get_or_init(|| {
                Pool::new(crate::tls::https_or_http(self.connector.clone(), "workers"))
            });
            // Boxed: a TLS connection's state would enlarge every request's future.
            return Box::pin(tls.send(request)).await;
        }
        self.client.send(request).await
    }

    /// GET `uri` of a worker of `origin` and read the whole (small) body, within `timeout`.
    pub async fn get(
        &self,
        uri: Uri,
        timeout: Duration,
        origin: Origin,
    ) -> Result<Bytes, FetchError> {
        let fetch = async {
            let mut request = Request::get(uri)
                .body(UpstreamBody::default())
                .map_err(|e| FetchError::Body(e.to_string()))?;
            if let Some(auth) = self.worker_auth.load_full().filter(|_| self.trusts(origin)) {
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, HeaderValue::clone(&auth));
            }
            let response = self.send(request).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_INFO_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Body(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                Err(FetchError::Status(status))
            }
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// `Bearer KEY`, marked sensitive; `None` when the key cannot be a header value (the
/// configuration refuses such keys).
pub fn bearer_header(key: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}
