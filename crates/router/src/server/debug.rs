//! `POST /debug/route`: how the router would route a request, without forwarding it. The body
//! and headers are those of the inference request; `?path=` names its route (default
//! `/v1/chat/completions`). The answer lists every candidate with its load terms, the
//! policy's score and predicted prefix overlap where it has them, and the choice with its
//! reason.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::header;
use serde::Deserialize;
use serde_json::json;

use super::App;
use crate::error::ApiError;
use crate::proxy::{self, peek};

/// Query of `/debug/route`.
#[derive(Debug, Deserialize)]
pub struct RouteQuery {
    /// The inference route the request is meant for.
    #[serde(default = "default_path")]
    path: String,
}

fn default_path() -> String {
    "/v1/chat/completions".to_owned()
}

/// Explain the routing of the request in the body.
pub async fn explain(
    State(app): State<Arc<App>>,
    Query(query): Query<RouteQuery>,
    request: Request,
) -> Response {
    match explanation(&app, &query.path, request).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn explanation(
    app: &App,
    path: &str,
    request: Request,
) -> Result<serde_json::Value, ApiError> {
    if !super::INFERENCE_ROUTES.contains(&path) {
        return Err(ApiError::bad_request(
            format!("`{path}` is not an inference route the router forwards"),
            Some("path"),
        ));
    }
    let (parts, body) = request.into_parts();
    let body = proxy::read_body(&parts.headers, body, app.config.max_payload_size.get()).await?;
    let peeked = peek::peek(
        parts.headers.get(header::CONTENT_TYPE),
        &body,
        app.policy.wants_prompt(),
    )
    .await?;
    let candidates = proxy::candidates(app, crate::fleet::Pool::Any, peeked.model.as_deref())?;
    let req = proxy::route_request(app, path, &parts.headers, &body, &peeked, "debug");
    let explained = app.policy.explain(&req, &candidates);

    let now = Instant::now();
    let rows: Vec<serde_json::Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let load = w.load(now);
            json!({
                "url": w.url(),
                "capacity": w.capacity(),
                "in_flight": load.in_flight,
                "engine": load.engine.map(|e| json!({
                    "running": e.running,
                    "waiting": e.waiting,
                    "kv_cache_usage": e.kv_usage,
                    "preempting": e.preempting,
                    "in_flight_change_since_scrape": e.in_flight_change,
                })),
                "score": explained.scores.as_ref().and_then(|s| s.get(i)),
                "matched_prefix_blocks": explained.matched_blocks.as_ref().and_then(|m| m.get(i)),
            })
        })
        .collect();
    let choice = explained.decision.map(|d| {
        json!({
            "url": candidates[d.index].url(),
            "reason": d.reason,
        })
    });
    Ok(json!({
        "policy": app.policy.name(),
        "model": req.model,
        "session_key": req.session_key,
        "prompt_blocks": explained.prompt_blocks,
        "candidates": rows,
        "choice": choice,
    }))
}
