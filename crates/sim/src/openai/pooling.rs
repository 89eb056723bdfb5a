//! Pooling-model endpoints: embeddings, pooling, classification, rerank and score. Answers are
//! deterministic functions of the input tokens; no engine time is spent.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::request::Prompt;
use super::{Inbound, json_response, now_secs};
use crate::state::Sim;
use crate::tokenizer::{prompt_seed, tokenize};

const EMBEDDING_DIM: u32 = 8;

#[derive(Deserialize)]
struct PoolRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<Prompt<'a>>,
    #[serde(borrow)]
    query: Option<Cow<'a, str>>,
    documents: Option<Vec<Value>>,
    top_n: Option<usize>,
    #[serde(borrow)]
    text_1: Option<Prompt<'a>>,
    #[serde(borrow)]
    text_2: Option<Prompt<'a>>,
}

/// Parses the body and resolves the model, or says why not.
fn parse<'a>(sim: &'a Sim, inbound: &'a Inbound) -> Result<(PoolRequest<'a>, String), ApiError> {
    let req: PoolRequest<'_> =
        serde_json::from_slice(&inbound.body).map_err(|e| ApiError::invalid_json(&e))?;
    let model = sim
        .resolve_model(req.model.as_deref())
        .map(std::borrow::Cow::into_owned)
        .ok_or_else(|| ApiError::model_not_found(req.model.as_deref().unwrap_or_default()))?;
    inbound.record.lock().model = req.model.as_deref().map(str::to_owned);
    Ok((req, model))
}

fn mix(seed: u64, k: u64) -> u64 {
    let mut z = seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A unit vector that depends only on the tokens.
fn fake_vector(tokens: &[u32]) -> Vec<f32> {
    let seed = u64::from(prompt_seed(tokens)) ^ tokens.len() as u64;
    let raw: Vec<f32> = (0..u64::from(EMBEDDING_DIM))
        .map(|k| (mix(seed, k) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

/// A score in [0, 1) that depends only on the two texts.
fn fake_score(a: &[u32], b: &[u32]) -> f64 {
    let seed = u64::from(prompt_seed(a)) << 32 | u64::from(prompt_seed(b));
    (mix(seed, 1) >> 11) as f64 / (1u64 << 53) as f64
}

fn usage(prompt_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
        "completion_tokens": 0, "prompt_tokens_details": null})
}

fn input_items(req: &PoolRequest<'_>) -> Result<Vec<Vec<u32>>, ApiError> {
    req.input
        .as_ref()
        .map(Prompt::items)
        .ok_or_else(|| ApiError::bad_request("`input` is required"))
}

fn reply(value: &Value) -> Response {
    json_response(serde_json::to_vec(value).unwrap_or_default())
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(sim): State<Arc<Sim>>,
    Extension(inbound): Extension<Inbound>,
) -> Response {
    pool(
        &sim,
        &inbound,
        "embd-",
        |i, t| json!({"index": i, "object": "embedding", "embedding": fake_vector(t)}),
    )
}

/// `POST /pooling`.
pub(crate) async fn pooling(
    State(sim): State<Arc<Sim>>,
    Extension(inbound): Extension<Inbound>,
) -> Response {
    pool(
        &sim,
        &inbound,
        "pool-",
        |i, t| json!({"index": i, "object": "pooling", "data": fake_vector(t)}),
    )
}

/// `POST /classify`.
pub(crate) async fn classify(
    State(sim): State<Arc<Sim>>,
    Extension(inbound): Extension<Inbound>,
) -> Response {
    pool(&sim, &inbound, "classify-", |i, t| {
        let p = fake_score(t, t);
        let label = if p >= 0.5 { "positive" } else { "negative" };
        json!({"index": i, "label": label, "probs": [p, 1.0 - p], "num_classes": 2})
    })
}

fn pool(
    sim: &Sim,
    inbound: &Inbound,
    prefix: &str,
    item: impl Fn(usize, &[u32]) -> Value,
) -> Response {
    let (req, model) = match parse(sim, inbound) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let items = match input_items(&req) {
        Ok(items) => items,
        Err(e) => return e.into_response(),
    };
    let tokens: usize = items.iter().map(Vec::len).sum();
    let data: Vec<Value> = items.iter().enumerate().map(|(i, t)| item(i, t)).collect();
    reply(&json!({
        "id": inbound.response_id(prefix),
        "object": "list",
        "created": now_secs(),
        "model": model,
        "data": data,
        "usage": usage(tokens),
    }))
}

/// `POST /v1/rerank`, `/rerank`, `/v2/rerank`.
pub(crate) async fn rerank(
    State(sim): State<Arc<Sim>>,
    Extension(inbound): Extension<Inbound>,
) -> Response {
    let (req, model) = match parse(&sim, &inbound) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let query = tokenize(req.query.as_deref().unwrap_or_default());
    let docs = req.documents.unwrap_or_default();
    let mut tokens = query.len();
    let mut results: Vec<(usize, &str, f64)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let text = d
                .as_str()
                .or_else(|| d.get("text").and_then(Value::as_str))
                .unwrap_or_default();
            let doc = tokenize(text);
            tokens += query.len() + doc.len();
            (i, text, fake_score(&query, &doc))
        })
        .collect();
    results.sort_by(|a, b| b.2.total_cmp(&a.2));
    results.truncate(req.top_n.unwrap_or(usize::MAX));
    let results: Vec<Value> = results
        .into_iter()
        .map(|(i, text, score)| {
            json!({"index": i, "document": {"text": text}, "relevance_score": score})
        })
        .collect();
    reply(&json!({
        "id": inbound.response_id("rerank-"),
        "model": model,
        "usage": {"total_tokens": tokens},
        "results": results,
    }))
}

/// `POST /v1/score`, `/score`.
pub(crate) async fn score(
    State(sim): State<Arc<Sim>>,
    Extension(inbound): Extension<Inbound>,
) -> Response {
    let (req, model) = match parse(&sim, &inbound) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let (Some(a), Some(b)) = (req.text_1.as_ref(), req.text_2.as_ref()) else {
        return ApiError::bad_request("`text_1` and `text_2` are required").into_response();
    };
    let (left, right) = (a.items(), b.items());
    let Some(first) = left.first() else {
        return ApiError::bad_request("`text_1` is empty").into_response();
    };
    let mut tokens = 0;
    let data: Vec<Value> = right
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let l = left.get(i).unwrap_or(first);
            tokens += l.len() + r.len();
            json!({"index": i, "object": "score", "score": fake_score(l, r)})
        })
        .collect();
    reply(&json!({
        "id": inbound.response_id("score-"),
        "object": "list",
        "created": now_secs(),
        "model": model,
        "data": data,
        "usage": usage(tokens),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_vectors() {
        let v = fake_vector(&tokenize("hello world"));
        assert_eq!(v.len(), EMBEDDING_DIM as usize);
        assert_eq!(v, fake_vector(&tokenize("hello world")));
        assert_ne!(v, fake_vector(&tokenize("hello there")));
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        let s = fake_score(&[1], &[2]);
        assert!((0.0..1.0).contains(&s));
    }
}
