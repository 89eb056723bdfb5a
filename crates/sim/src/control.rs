//! Routes that tests, benchmarks, health checkers and KV-transfer peers use: `/health`,
//! `/metrics`, `/reset_prefix_cache`, Mooncake's `/query`, `/sim/stats` and `/sim/records`. They
//! are counted per path but never recorded and never fault-injected.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, header};

use crate::openai::json_response;
use crate::state::Sim;

/// Whether `path` is served without a record and outside failure injection.
pub(crate) fn is_control_path(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/metrics" | "/v1/models" | "/reset_prefix_cache" | "/query"
    ) || path.starts_with("/sim/")
}

/// The control routes (`/v1/models` lives with the OpenAI routes).
pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .route("/query", get(crate::bootstrap::query))
        .route("/sim/stats", get(stats))
        .route("/sim/records", get(records))
}

/// Stays 200 while hanging: a hung engine still looks alive, which is the point.
async fn health() -> Response {
    ().into_response()
}

async fn metrics(State(sim): State<Arc<Sim>>) -> Response {
    let mut resp = crate::metrics::render(&sim).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `POST /reset_prefix_cache`: every rank forgets every cached block; 200 with no body, like
/// vLLM.
async fn reset_prefix_cache(State(sim): State<Arc<Sim>>) -> Response {
    for engine in sim.ranks.engines() {
        engine.reset_prefix_cache();
    }
    ().into_response()
}

async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    json_response(serde_json::to_vec(&sim.stats()).unwrap_or_default())
}

async fn records(State(sim): State<Arc<Sim>>) -> Response {
    json_response(serde_json::to_vec(&sim.recorder.records()).unwrap_or_default())
}
