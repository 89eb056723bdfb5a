//! The router's own routes: health for probes, the aggregated model list, and what it is.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use super::App;

/// `GET /health`: 200 while at least one worker is healthy, else 503; counts either way.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    let healthy = snapshot.healthy_count();
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if healthy > 0 { "healthy" } else { "unhealthy" },
        "healthy_workers": healthy,
        "total_workers": snapshot.members().len(),
    });
    (status, Json(body)).into_response()
}

/// `GET /liveness`: the process serves requests.
pub async fn liveness() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

/// `GET /readiness`: 200 once some worker can take requests, else 503; 503 for good once
/// shutdown started, so load balancers stop sending before the connections close.
pub async fn readiness(State(app): State<Arc<App>>) -> Response {
    let healthy = app.fleet.snapshot().healthy_count();
    let (status, text) = if app.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if healthy > 0 {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    (
        status,
        Json(json!({ "status": text, "healthy_workers": healthy })),
    )
        .into_response()
}

/// `GET /version`.
pub async fn version() -> Response {
    Json(json!({ "name": "vllm-router", "version": crate::VERSION })).into_response()
}

/// `GET /v1/models`: every model of the healthy workers, once, as the workers describe them.
pub async fn models(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    let data: Vec<&serde_json::Value> = snapshot
        .healthy_models()
        .into_iter()
        .map(|c| &c.raw)
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /`: what this router is, its policy and its workers.
pub async fn about(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    let workers: Vec<serde_json::Value> = snapshot
        .members()
        .iter()
        .map(|m| {
            json!({
                "url": m.worker.url(),
                "role": m.worker.role().name(),
                "rank": m.worker.rank(),
                "zmq_address": m.worker.zmq_address(),
                "healthy": m.worker.is_healthy(),
                "in_flight": m.worker.in_flight(),
                "capacity": m.worker.capacity(),
                "requests_total": m.worker.served(),
                "models": m.model_names(),
            })
        })
        .collect();
    Json(json!({
        "name": "vllm-router",
        "description": "OpenAI-compatible load balancer for vLLM workers",
        "version": crate::VERSION,
        "policy": app.policy.name(),
        "policy_requested": app.config().policy.name(),
        "pd": app.pd.as_ref().map(|pd| json!({
            "kv_connector": pd.config().connector.name(),
            "prefill_policy": pd.prefill_policy().name(),
            "decode_policy": pd.decode_policy().name(),
            "min_uncached_tokens": pd.config().min_uncached_tokens,
            "recompute_on_prefill_failure": pd.config().recompute_on_prefill_failure,
            "discovery": pd.config().discovery.as_ref().map(|d| &d.address),
        })),
        "uptime_secs": app.started.elapsed().as_secs(),
        "workers": workers,
    }))
    .into_response()
}
