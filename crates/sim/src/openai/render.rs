//! vLLM's render endpoints: a chat or completions request turned into the token-in request the
//! engine would run (vLLM's `GenerateRequest`, as `/inference/v1/generate` takes it), without
//! running it. They validate like the generating routes and touch neither the engine, nor the
//! prefix cache, nor its counters.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::request::GenerateRequest;
use super::{Inbound, json_response};
use crate::state::Sim;

/// `POST /v1/chat/completions/render`: one object.
pub(crate) async fn chat(
    State(sim): State<Arc<Sim>>,
    Extension(inbound): Extension<Inbound>,
) -> Response {
    render(&sim, &inbound, Route::Chat)
}

/// `POST /v1/completions/render`: an array, one object per prompt.
pub(crate) async fn completions(
    State(sim): State<Arc<Sim>>,
    Extension(inbound): Extension<Inbound>,
) -> Response {
    render(&sim, &inbound, Route::Completions)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
}

/// The request fields a render carries over besides the prompt and the output length.
#[derive(Deserialize)]
struct Extras {
    n: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    stop_token_ids: Option<Vec<u32>>,
    ignore_eos: Option<bool>,
    min_tokens: Option<u32>,
    /// A boolean on chat (with `top_logprobs`), a count on completions.
    logprobs: Option<serde_json::Value>,
    top_logprobs: Option<u32>,
    prompt_logprobs: Option<u32>,
    skip_special_tokens: Option<bool>,
    spaces_between_special_tokens: Option<bool>,
    cache_salt: Option<String>,
    priority: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// vLLM's sampling parameters: what the request set, vLLM's defaults otherwise.
#[derive(Serialize)]
struct SamplingParams<'a> {
    n: u32,
    presence_penalty: f64,
    frequency_penalty: f64,
    repetition_penalty: f64,
    temperature: f64,
    top_p: f64,
    top_k: i64,
    min_p: f64,
    seed: Option<i64>,
    stop: &'a [String],
    stop_token_ids: &'a [u32],
    ignore_eos: bool,
    max_tokens: u32,
    min_tokens: u32,
    logprobs: Option<u64>,
    prompt_logprobs: Option<u32>,
    skip_special_tokens: bool,
    spaces_between_special_tokens: bool,
}

/// vLLM's `GenerateRequest`.
#[derive(Serialize)]
struct Rendered<'a> {
    request_id: String,
    token_ids: &'a [u32],
    features: Option<()>,
    sampling_params: &'a SamplingParams<'a>,
    model: &'a str,
    stream: bool,
    cache_salt: Option<&'a str>,
    priority: i64,
    kv_transfer_params: Option<&'a serde_json::Value>,
}

fn render(sim: &Sim, inbound: &Inbound, route: Route) -> Response {
    let (req, extras) = match parse(&inbound.body) {
        Ok(parsed) => parsed,
        Err(e) => return ApiError::invalid_json(&e).into_response(),
    };
    let Some(model) = sim.resolve_model(req.model.as_deref()) else {
        return ApiError::model_not_found(req.model.as_deref().unwrap_or_default()).into_response();
    };
    let model = &*model;
    // Exactly what the generating route would prefill; a completions batch renders every item.
    let prompts = match (&req.prompt, route) {
        (Some(prompt), Route::Completions) => prompt.items(),
        _ => vec![req.prompt_tokens()],
    };
    let max_len = sim.config.max_model_len;
    if let Some(long) = prompts.iter().find(|p| p.len() > max_len as usize) {
        return ApiError::context_too_long(max_len, long.len()).into_response();
    }
    let stop: Vec<String> = match extras.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    let logprobs = match &extras.logprobs {
        Some(serde_json::Value::Bool(true)) => Some(u64::from(extras.top_logprobs.unwrap_or(0))),
        Some(v) => v.as_u64(),
        None => None,
    };
    let sampling = SamplingParams {
        n: extras.n.unwrap_or(1),
        presence_penalty: extras.presence_penalty.unwrap_or(0.0),
        frequency_penalty: extras.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: extras.repetition_penalty.unwrap_or(1.0),
        temperature: extras.temperature.unwrap_or(1.0),
        top_p: extras.top_p.unwrap_or(1.0),
        top_k: extras.top_k.unwrap_or(0),
        min_p: extras.min_p.unwrap_or(0.0),
        seed: extras.seed,
        stop: &stop,
        stop_token_ids: extras.stop_token_ids.as_deref().unwrap_or_default(),
        ignore_eos: extras.ignore_eos.unwrap_or(false),
        max_tokens: req
            .requested_max_tokens()
            .unwrap_or(sim.config.default_max_tokens)
            .max(1),
        min_tokens: extras.min_tokens.unwrap_or(0),
        logprobs,
        prompt_logprobs: extras.prompt_logprobs,
        skip_special_tokens: extras.skip_special_tokens.unwrap_or(true),
        spaces_between_special_tokens: extras.spaces_between_special_tokens.unwrap_or(true),
    };
    let id = inbound.response_id(match route {
        Route::Chat => "chatcmpl-",
        Route::Completions => "cmpl-",
    });
    let several = prompts.len() > 1;
    let rendered: Vec<Rendered<'_>> = prompts
        .iter()
        .enumerate()
        .map(|(i, tokens)| Rendered {
            request_id: if several {
                format!("{id}-{i}")
            } else {
                id.clone()
            },
            token_ids: tokens,
            features: None,
            sampling_params: &sampling,
            model,
            stream: req.stream.unwrap_or(false),
            cache_salt: extras.cache_salt.as_deref(),
            priority: extras.priority.unwrap_or(0),
            kv_transfer_params: req.kv_transfer_params.as_ref(),
        })
        .collect();
    let body = match route {
        Route::Chat => serde_json::to_vec(&rendered[0]),
        Route::Completions => serde_json::to_vec(&rendered),
    };
    json_response(body.unwrap_or_default())
}

fn parse(body: &[u8]) -> serde_json::Result<(GenerateRequest<'_>, Extras)> {
    Ok((serde_json::from_slice(body)?, serde_json::from_slice(body)?))
}
