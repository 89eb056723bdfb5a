//! The router's own routes: health for probes, the aggregated model list, and what it is.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use super::App;
use crate::config::Role;
use crate::live::WorkerStatus;
use crate::telemetry::process;

/// `GET /health`: 200 while at least one worker is healthy, else 503 (never 503 because one
/// worker of many is down); the counts either way, in all and by role.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    if app.config().health_compat {
        return health_compat(&snapshot);
    }
    let members = snapshot.members();
    let healthy = snapshot.healthy_count();
    let draining = members.iter().filter(|m| m.worker.is_draining()).count();
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut roles = serde_json::Map::new();
    for role in [Role::Regular, Role::Prefill, Role::Decode] {
        let of_role = || members.iter().filter(move |m| m.worker.role() == role);
        let total = of_role().count();
        if total > 0 {
            let up = of_role().filter(|m| m.worker.is_healthy()).count();
            roles.insert(
                role.name().to_owned(),
                json!({ "healthy": up, "total": total }),
            );
        }
    }
    let body = json!({
        "status": if healthy > 0 { "healthy" } else { "unhealthy" },
        "healthy_workers": healthy,
        "unhealthy_workers": members.len() - healthy,
        "draining_workers": draining,
        "total_workers": members.len(),
        "roles": roles,
    });
    (status, Json(body)).into_response()
}

/// `/health` as vllm-project/router answers it (`--health-compat`): 200 `All servers healthy`,
/// else 503 naming the servers out of rotation (every server, when there is none healthy).
fn health_compat(snapshot: &crate::fleet::Snapshot) -> Response {
    let down: Vec<&str> = snapshot
        .servers()
        .map(|ranks| &ranks[0].worker)
        .filter(|w| !w.is_healthy())
        .map(|w| w.url())
        .collect();
    if down.is_empty() && snapshot.healthy_count() > 0 {
        (StatusCode::OK, "All servers healthy").into_response()
    } else {
        let list = serde_json::to_string(&down).unwrap_or_default();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Unhealthy servers: {list}"),
        )
            .into_response()
    }
}

/// `GET /get_loads` (vllm-project/router): each server's requests in flight through the
/// router, its data-parallel ranks together.
pub async fn get_loads(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    let workers: Vec<serde_json::Value> = snapshot
        .servers()
        .map(|ranks| {
            json!({
                "worker": ranks[0].worker.url(),
                "load": ranks.iter().map(|m| m.worker.in_flight()).sum::<usize>(),
            })
        })
        .collect();
    Json(json!({ "workers": workers })).into_response()
}

/// `GET /load-stats`: each worker's load and the fleet's, in the TOML router's shape
/// (`servers`, `summary`), with our own figures beside its fields. Load is the router's
/// in-flight count; capacity is the worker's configured capacity (`null` when it has none).
pub async fn load_stats(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    let now = std::time::Instant::now();
    let mut total_load = 0u64;
    let mut total_capacity = 0u64;
    let mut capacity_load = 0u64;
    let servers: Vec<serde_json::Value> = snapshot
        .members()
        .iter()
        .map(|m| {
            let s = WorkerStatus::of(m, now);
            // The worker's own process figures, from its last `/metrics` page.
            let sample = m.worker.engine_sample();
            let fds = sample.as_ref().map(|e| &e.metrics);
            let load = s.in_flight;
            let capacity = s.capacity.map(u64::from);
            total_load += load;
            if let Some(c) = capacity {
                total_capacity += c;
                capacity_load += load;
            }
            json!({
                "url": s.url,
                "current_load": load,
                "max_capacity": capacity,
                "available_capacity": capacity.map(|c| c.saturating_sub(load)),
                "utilization_percent": capacity.map(|c| percent(load, c)),
                "status": s.healthy,
                "detailed_metrics": {
                    "num_requests_running": s.running,
                    "num_requests_waiting": s.waiting,
                    // The TOML router's scale: percent.
                    "gpu_cache_usage_perc": s.kv_cache_usage.map(|u| u * 100.0),
                    "process_max_fds": fds.and_then(|f| f.max_fds),
                    "process_open_fds": fds.and_then(|f| f.open_fds),
                },
                "worker": s.label,
                "role": s.role,
                "rank": s.rank,
                "models": s.models,
                "weight": m.worker.weight(),
                "draining": s.draining,
                "breaker": s.breaker,
                "requests_total": s.requests_total,
                "engine_metrics_fresh": s.running.is_some(),
            })
        })
        .collect();
    let healthy = snapshot.healthy_count();
    Json(json!({
        "servers": servers,
        "summary": {
            "total_servers": snapshot.members().len(),
            "healthy_servers": healthy,
            "total_active_load": total_load,
            "total_capacity": total_capacity,
            "overall_utilization_percent": (total_capacity > 0)
                .then(|| percent(capacity_load, total_capacity)),
            "queued_requests": app.admission.queued(),
            "admitted_requests": app.admission.in_use(),
            "policy": app.policy.name(),
            // The router's own process, from /proc.
            "router_open_fds": process::open_fds(),
            "router_max_fds": process::max_fds(),
        },
    }))
    .into_response()
}

/// `part` of `whole` in percent, to a tenth.
fn percent(part: u64, whole: u64) -> f64 {
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

/// `GET /liveness`: the process serves requests.
pub async fn liveness() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

/// `GET /readiness`: 200 once some worker can take requests, else 503 (`starting` while the
/// start-up wait for the static workers is on); 503 for good once
/// shutdown started, so load balancers stop sending before the connections close.
pub async fn readiness(State(app): State<Arc<App>>) -> Response {
    let healthy = app.fleet.snapshot().healthy_count();
    let (status, text) = if app.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if healthy > 0 {
        (StatusCode::OK, "ready")
    } else if app.is_starting() {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
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

/// `GET /v1/models`: every model of the healthy workers, once, as the workers describe them,
/// then each alias of a listed model (`--model-alias`), as its model's entry under the alias.
pub async fn models(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    let cards = snapshot.healthy_models();
    let mut data: Vec<serde_json::Value> = cards.iter().map(|c| c.raw.clone()).collect();
    for (alias, canonical) in &app.config().model_aliases {
        let listed = |id: &str| cards.iter().any(|c| c.id == id);
        if let Some(card) = cards.iter().find(|c| c.id == *canonical)
            && !listed(alias)
        {
            let mut entry = card.raw.clone();
            entry["id"] = json!(alias);
            data.push(entry);
        }
    }
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
                "bytes_per_token": m.worker.learned_bytes_per_token(),
                "secs_per_block": m.worker.secs_per_block(),
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
