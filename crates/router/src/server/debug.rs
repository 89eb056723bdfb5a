//! `POST /debug/route`: how the router would route a request, without forwarding it. The body
//! and headers are those of the inference request; `?path=` names its route (default
//! `/v1/chat/completions`). The answer lists every candidate with its load terms, the
//! policy's score and predicted prefix overlap where it has them, and the choice with its
//! reason. In P/D mode, chat and completions are explained per leg (prefill and decode pools
//! and policies), with the conditional-prefill estimate for the decode worker chosen.

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
use crate::fleet::{Pool, Worker};
use crate::policy::{Policy, RouteRequest};
use crate::prefix::chain_hashes;
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
    let config = app.live_config().load_full();
    let body = proxy::read_body(
        &parts.headers,
        body,
        config.max_payload_size.get(),
        &config.body,
    )
    .await?;
    let pd = app.pd.as_ref().filter(|_| crate::pd::applies(path));
    let wants_prompt = pd.map_or(app.policy.wants_prompt(), crate::pd::Pd::wants_prompt);
    let peeked = peek::peek(parts.headers.get(header::CONTENT_TYPE), &body, wants_prompt).await?;
    let req = proxy::route_request(&config, path, &parts.headers, &body, &peeked, "debug");
    let session_key = shown_session_key(&config.session_key_headers, &parts.headers, &req);
    let Some(pd) = pd else {
        let (mut single, _) = explain_pool(app, app.policy.as_ref(), Pool::Any, &req)?;
        if let Some(object) = single.as_object_mut() {
            object.insert("model".into(), json!(req.model));
            object.insert("session_key".into(), session_key);
        }
        return Ok(single);
    };
    let (prefill, _) = explain_pool(app, pd.prefill_policy(), Pool::Prefill, &req)?;
    let (decode, decode_choice) = explain_pool(app, pd.decode_policy(), Pool::Decode, &req)?;
    // Conditional prefill, as the plan would judge it for the decode worker chosen here.
    let conditional = decode_choice.map(|worker| {
        let prompt = req.prompt.unwrap_or_default();
        let chain = chain_hashes(prompt.as_bytes());
        json!({
            "min_uncached_tokens": pd.config().min_uncached_tokens,
            "estimated_uncached_tokens": pd.uncached_tokens(&worker, prompt, &chain),
            "skips_prefill": req.prompt.is_some() && pd.skips_prefill(&worker, prompt, &chain),
        })
    });
    Ok(json!({
        "plan": "prefill_decode",
        "kv_connector": pd.config().connector.name(),
        "model": req.model,
        "session_key": session_key,
        "prefill": prefill,
        "decode": decode,
        "conditional_prefill": conditional,
    }))
}

/// How `policy` sees the candidates of `pool` for `req`, and the worker it would choose.
/// The session key as the explanation shows it: a key taken from a header that carries a
/// credential (`Authorization`, a cookie, an API key or token) is shown as its hash, never
/// as its value.
fn shown_session_key(
    names: &[http::HeaderName],
    headers: &http::HeaderMap,
    req: &RouteRequest<'_>,
) -> serde_json::Value {
    let Some(key) = req.session_key else {
        return serde_json::Value::Null;
    };
    match peek::session_header(headers, names) {
        Some((name, _)) if is_credential(name.as_str()) => json!(format!(
            "redacted (from {name}): xxh3 {:016x}",
            xxhash_rust::xxh3::xxh3_64(key.as_bytes())
        )),
        _ => json!(key),
    }
}

/// Whether a header of this (lower-case) name may carry a credential.
fn is_credential(name: &str) -> bool {
    ["auth", "key", "token", "secret", "cookie", "password"]
        .iter()
        .any(|part| name.contains(part))
}

fn explain_pool(
    app: &App,
    policy: &dyn Policy,
    pool: Pool,
    req: &RouteRequest<'_>,
) -> Result<(serde_json::Value, Option<Arc<Worker>>), ApiError> {
    let candidates = proxy::candidates(app, &app.config(), pool, req.model)?;
    let explained = policy.explain(req, &candidates);
    let now = Instant::now();
    let rows: Vec<serde_json::Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let load = w.load(now);
            json!({
                "url": w.url(),
                "rank": w.rank(),
                "role": w.role().name(),
                "capacity": w.capacity(),
                "in_flight": load.in_flight,
                "bytes_per_token": w.learned_bytes_per_token(),
                "secs_per_block": w.secs_per_block(),
                "engine": load.engine.map(|e| json!({
                    "running": e.running,
                    "waiting": e.waiting,
                    "kv_cache_usage": e.kv_usage,
                    "preempting": e.preempting,
                    "in_flight_change_since_scrape": e.in_flight_change,
                })),
                "score": explained.scores.as_ref().and_then(|s| s.get(i)),
                "matched_prefix_blocks": explained.matched_blocks.as_ref().and_then(|m| m.get(i)),
                "terms": explained.terms.as_ref().and_then(|t| t.get(i)),
            })
        })
        .collect();
    let choice = explained.decision.map(|d| {
        json!({
            "url": candidates[d.index].url(),
            "rank": candidates[d.index].rank(),
            "reason": d.reason,
        })
    });
    let chosen = explained
        .decision
        .and_then(|d| candidates.get(d.index).cloned());
    Ok((
        json!({
            "policy": policy.name(),
            "prompt_blocks": explained.prompt_blocks,
            "candidates": rows,
            "choice": choice,
        }),
        chosen,
    ))
}
