//! `/tokenize` and `/detokenize` with the simulator's tokenizer and chat template.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::request::GenerateRequest;
use super::{Inbound, json_response};
use crate::state::Sim;

#[derive(Serialize)]
struct Tokenized<'a> {
    count: usize,
    max_model_len: u32,
    tokens: &'a [u32],
    token_strs: Option<()>,
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

/// `POST /tokenize`: `{"prompt": ...}` or `{"messages": [...]}`.
pub(crate) async fn tokenize(
    State(sim): State<Arc<Sim>>,
    Extension(inbound): Extension<Inbound>,
) -> Response {
    let req: GenerateRequest<'_> = match serde_json::from_slice(&inbound.body) {
        Ok(req) => req,
        Err(e) => return ApiError::invalid_json(&e).into_response(),
    };
    if sim.resolve_model(req.model.as_deref()).is_none() {
        return ApiError::model_not_found(req.model.as_deref().unwrap_or_default()).into_response();
    }
    let tokens = req.prompt_tokens();
    let body = serde_json::to_vec(&Tokenized {
        count: tokens.len(),
        max_model_len: sim.config.max_model_len,
        tokens: &tokens,
        token_strs: None,
    });
    json_response(body.unwrap_or_default())
}

/// `POST /detokenize`: `{"tokens": [...]}` to `{"prompt": ...}`.
pub(crate) async fn detokenize(Extension(inbound): Extension<Inbound>) -> Response {
    match serde_json::from_slice::<DetokenizeRequest>(&inbound.body) {
        Ok(req) => {
            let prompt = crate::tokenizer::detokenize(&req.tokens);
            json_response(
                serde_json::to_vec(&serde_json::json!({ "prompt": prompt })).unwrap_or_default(),
            )
        }
        Err(e) => ApiError::invalid_json(&e).into_response(),
    }
}
