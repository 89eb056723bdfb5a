//! The pooled HTTP/1.1 client every worker request goes through: forwarding and probes alike.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

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
    Request(#[from] hyper_util::client::legacy::Error),
    /// The answer's body could not be read.
    #[error("reading the answer failed: {0}")]
    Body(String),
    /// The worker answered with an error status.
    #[error("answered {0}")]
    Status(StatusCode),
}

/// A cheaply cloned handle to the shared connection pool.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, UpstreamBody>,
}

impl Upstream {
    /// A pool whose connections open within `connect_timeout`, with `TCP_NODELAY`.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .build(connector);
        Self { client }
    }

    /// Send a request; the future resolves at the response headers.
    pub fn send(&self, request: Request<UpstreamBody>) -> ResponseFuture {
        self.client.request(request)
    }

    /// GET `uri` and read the whole (small) body, within `timeout`.
    pub async fn get(&self, uri: Uri, timeout: Duration) -> Result<Bytes, FetchError> {
        let fetch = async {
            let request = Request::get(uri)
                .body(UpstreamBody::default())
                .map_err(|e| FetchError::Body(e.to_string()))?;
            let response: Response<Incoming> = self.client.request(request).await?;
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
