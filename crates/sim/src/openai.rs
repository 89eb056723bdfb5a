//! vLLM's OpenAI-compatible inference routes, and the render routes that only tokenize them.
//! Every handler here receives an [`Inbound`]: the already-read body plus the record it fills
//! in.

mod audio;
pub(crate) mod error;
mod generate;
mod models;
mod pooling;
mod render;
mod request;
mod stream;
mod tokens;
mod wire;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, header};

use crate::record::RecordCell;
use crate::state::Sim;

/// What the request path hands a handler: the whole body and the request's record.
#[derive(Clone)]
pub(crate) struct Inbound {
    pub(crate) body: Bytes,
    pub(crate) record: RecordCell,
    pub(crate) request_id: Option<HeaderValue>,
    /// The `X-data-parallel-rank` header, read by the routes that run an engine.
    pub(crate) dp_rank: Option<HeaderValue>,
}

impl Inbound {
    /// `prefix` followed by the client's `X-Request-Id`, or by a random id.
    pub(crate) fn response_id(&self, prefix: &str) -> String {
        match self.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            Some(rid) => format!("{prefix}{rid}"),
            None => format!("{prefix}{:032x}", fastrand::u128(..)),
        }
    }
}

/// The inference routes plus `GET /v1/models`.
pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions/render", post(render::chat))
        .route("/v1/completions/render", post(render::completions))
        .route("/v1/responses", post(generate::responses))
        .route("/v1/messages", post(generate::messages))
        .route("/invocations", post(generate::invocations))
        .route("/inference/v1/generate", post(generate::tokens))
        .route("/v1/embeddings", post(pooling::embeddings))
        .route("/pooling", post(pooling::pooling))
        .route("/classify", post(pooling::classify))
        .route("/v1/rerank", post(pooling::rerank))
        .route("/rerank", post(pooling::rerank))
        .route("/v2/rerank", post(pooling::rerank))
        .route("/v1/score", post(pooling::score))
        .route("/score", post(pooling::score))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route("/v1/audio/transcriptions", post(audio::transcribe))
        .route("/v1/audio/translations", post(audio::transcribe))
        .route("/v1/models", get(models::list))
}

/// Any path the server does not know.
pub(crate) async fn not_found() -> Response {
    error::ApiError::new(http::StatusCode::NOT_FOUND, "Not Found").into_response()
}

/// A complete JSON answer: one `Bytes` body, so the connection sends a Content-Length.
pub(crate) fn json_response(body: Vec<u8>) -> Response {
    let mut resp = Response::new(axum::body::Body::from(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Seconds since the Unix epoch, for `created` fields.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
