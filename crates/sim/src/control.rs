//! Routes that tests, benchmarks, health checkers and KV-transfer peers use: `/health` (and
//! SageMaker's `/ping`), `/metrics`, `/reset_prefix_cache`, the LoRA and sleep routes,
//! Mooncake's `/query`, `/sim/stats` and `/sim/records`. They are counted per path but never
//! recorded and never fault-injected.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use crate::adapters::{Lora, LoraError};
use crate::openai::error::ApiError;
use crate::openai::json_response;
use crate::state::Sim;

/// Whether `path` is served without a record and outside failure injection.
pub(crate) fn is_control_path(path: &str) -> bool {
    matches!(
        path,
        "/health"
            | "/ping"
            | "/metrics"
            | "/v1/models"
            | "/reset_prefix_cache"
            | "/query"
            | "/v1/load_lora_adapter"
            | "/v1/unload_lora_adapter"
            | "/sleep"
            | "/wake_up"
            | "/is_sleeping"
    ) || path.starts_with("/sim/")
}

/// The control routes (`/v1/models` lives with the OpenAI routes).
pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/v1/load_lora_adapter", post(load_lora))
        .route("/v1/unload_lora_adapter", post(unload_lora))
        .route("/sleep", post(sleep))
        .route("/wake_up", post(wake_up))
        .route("/is_sleeping", get(is_sleeping))
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

/// The body of `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`.
#[derive(Deserialize)]
struct LoraRequest {
    #[serde(default)]
    lora_name: Option<String>,
    #[serde(default)]
    lora_path: Option<String>,
}

fn lora_request(body: &Bytes) -> Result<LoraRequest, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(&e))
}

fn text(message: String) -> Response {
    let mut resp = message.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `POST /v1/load_lora_adapter`: the adapter is served by its name from now on; 200 with
/// vLLM's plain-text answer, 400 when either field is missing or the name is taken.
async fn load_lora(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let req = match lora_request(&body) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    let (Some(name), Some(path)) = (req.lora_name, req.lora_path) else {
        return ApiError::bad_request("Both 'lora_name' and 'lora_path' must be provided.")
            .into_response();
    };
    let lora = Lora {
        name: name.clone(),
        path,
    };
    match sim.adapters.load(lora, &sim.config.models) {
        Ok(()) => text(format!(
            "Success: LoRA adapter '{name}' added successfully."
        )),
        Err(_) => ApiError::bad_request(format!(
            "The lora adapter '{name}' has already been loaded."
        ))
        .into_response(),
    }
}

/// `POST /v1/unload_lora_adapter`: 200, or 404 for a name never loaded.
async fn unload_lora(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let req = match lora_request(&body) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    let Some(name) = req.lora_name else {
        return ApiError::bad_request("'lora_name' needs to be provided to unload a LoRA adapter.")
            .into_response();
    };
    match sim.adapters.unload(&name) {
        Ok(()) => text(format!(
            "Success: LoRA adapter '{name}' removed successfully."
        )),
        Err(LoraError::NotFound | LoraError::AlreadyLoaded) => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The lora adapter '{name}' cannot be found."),
        )
        .into_response(),
    }
}

/// `POST /sleep`: 200 with no body.
async fn sleep(State(sim): State<Arc<Sim>>) -> Response {
    sim.adapters.set_sleeping(true);
    ().into_response()
}

/// `POST /wake_up`: 200 with no body.
async fn wake_up(State(sim): State<Arc<Sim>>) -> Response {
    sim.adapters.set_sleeping(false);
    ().into_response()
}

/// `GET /is_sleeping`: `{"is_sleeping": bool}`.
async fn is_sleeping(State(sim): State<Arc<Sim>>) -> Response {
    let body = json!({"is_sleeping": sim.adapters.is_sleeping()});
    json_response(serde_json::to_vec(&body).unwrap_or_default())
}
