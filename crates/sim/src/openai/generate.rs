//! The generating endpoints: chat completions, completions, responses and token-in/token-out
//! generate. All run through the engine; chat and completions may stream.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::request::GenerateRequest;
use super::stream::{self, StreamKind, StreamSpec};
use super::wire::{ChatChoice, ChatMessage, Completion, TextChoice, Usage};
use super::{Inbound, json_response, now_secs};
use crate::Role;
use crate::engine::{Admission, Sequence};
use crate::state::Sim;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
    Responses,
    Tokens,
    /// Anthropic's Messages API (`/v1/messages`), answered whole.
    Messages,
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(
    State(sim): State<Arc<Sim>>,
    Extension(i): Extension<Inbound>,
) -> Response {
    run(sim, i, Kind::Chat).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(sim): State<Arc<Sim>>,
    Extension(i): Extension<Inbound>,
) -> Response {
    run(sim, i, Kind::Completion).await
}

/// `POST /v1/responses` (never streamed here).
pub(crate) async fn responses(
    State(sim): State<Arc<Sim>>,
    Extension(i): Extension<Inbound>,
) -> Response {
    run(sim, i, Kind::Responses).await
}

/// `POST /v1/messages` (Anthropic's Messages API; not streamed here).
pub(crate) async fn messages(
    State(sim): State<Arc<Sim>>,
    Extension(i): Extension<Inbound>,
) -> Response {
    run(sim, i, Kind::Messages).await
}

/// `POST /invocations` (SageMaker): a chat request when the body has `messages`, else a
/// completion when it has `prompt`, as vLLM dispatches it.
pub(crate) async fn invocations(
    State(sim): State<Arc<Sim>>,
    Extension(i): Extension<Inbound>,
) -> Response {
    #[derive(serde::Deserialize)]
    struct Shape {
        messages: Option<serde::de::IgnoredAny>,
        prompt: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Shape>(&i.body) {
        Ok(Shape {
            messages: Some(_), ..
        }) => run(sim, i, Kind::Chat).await,
        Ok(Shape {
            prompt: Some(_), ..
        }) => run(sim, i, Kind::Completion).await,
        Ok(_) => ApiError::bad_request(
            "Cannot find suitable handler for request: neither 'messages' nor 'prompt' given",
        )
        .into_response(),
        Err(e) => ApiError::invalid_json(&e).into_response(),
    }
}

/// `POST /inference/v1/generate`: token ids in, token ids out.
pub(crate) async fn tokens(
    State(sim): State<Arc<Sim>>,
    Extension(i): Extension<Inbound>,
) -> Response {
    run(sim, i, Kind::Tokens).await
}

async fn run(sim: Arc<Sim>, inbound: Inbound, kind: Kind) -> Response {
    let req: GenerateRequest<'_> = match serde_json::from_slice(&inbound.body) {
        Ok(req) => req,
        Err(e) => return ApiError::invalid_json(&e).into_response(),
    };
    let Some(model) = sim.resolve_model(req.model.as_deref()) else {
        return ApiError::model_not_found(req.model.as_deref().unwrap_or_default()).into_response();
    };
    let model = &*model;
    let prompt = req.prompt_tokens();
    let max_len = sim.config.max_model_len;
    if prompt.len() > max_len as usize {
        return ApiError::context_too_long(max_len, prompt.len()).into_response();
    }
    if kind == Kind::Messages && req.stream == Some(true) {
        return ApiError::bad_request("the simulator does not stream /v1/messages").into_response();
    }
    let stream = req.stream.unwrap_or(false) && matches!(kind, Kind::Chat | Kind::Completion);
    let role = sim.config.role;
    // NIXL and Mooncake alike set these two flags; the rest of the object is the connector's.
    let remote_prefill = role == Role::Decode && req.kv_flag("do_remote_prefill");
    let remote_decode = role != Role::Decode && req.kv_flag("do_remote_decode");
    {
        let mut rec = inbound.record.lock();
        rec.model = req.model.as_deref().map(str::to_owned);
        rec.stream = stream;
        rec.kv_transfer_params = req.kv_transfer_params.clone();
    }
    let queued = match sim.ranks.enqueue(inbound.dp_rank.as_ref()) {
        Ok(queued) => queued,
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    inbound.record.lock().dp_rank = queued.engine().rank();
    let admission = Admission {
        prompt: &prompt,
        max_tokens: req
            .requested_max_tokens()
            .unwrap_or(sim.config.default_max_tokens),
        remote_prefill,
    };
    let Some(mut seq) = queued.admit(admission).await else {
        return ApiError::new(http::StatusCode::SERVICE_UNAVAILABLE, "engine is shut down")
            .into_response();
    };
    {
        let mut rec = inbound.record.lock();
        rec.prompt_tokens = seq.prompt_tokens();
        rec.cached_tokens = seq.cached_tokens();
    }
    let id = inbound.response_id(match kind {
        Kind::Chat => "chatcmpl-",
        Kind::Completion => "cmpl-",
        Kind::Responses => "resp_",
        Kind::Tokens => "gen-",
        Kind::Messages => "msg_",
    });
    if stream {
        let spec = StreamSpec {
            kind: if kind == Kind::Chat {
                StreamKind::Chat
            } else {
                StreamKind::Completion
            },
            id,
            model: model.to_owned(),
            created: now_secs(),
            include_usage: req.include_usage(),
        };
        return stream::respond(seq, spec);
    }
    let text = generate_all(&mut seq).await;
    let kv = remote_decode.then(|| kv_for_decode(&sim, &seq));
    let usage = Usage::of(&seq);
    drop(seq);
    let created = now_secs();
    let body = match kind {
        Kind::Chat => serde_json::to_vec(&Completion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant",
                    content: &text,
                },
                logprobs: None,
                finish_reason: "length",
                stop_reason: None,
            }],
            usage,
            kv_transfer_params: kv,
        }),
        Kind::Completion => serde_json::to_vec(&Completion {
            id: &id,
            object: "text_completion",
            created,
            model,
            choices: [TextChoice {
                index: 0,
                text: &text,
                logprobs: None,
                finish_reason: Some("length"),
                stop_reason: None,
            }],
            usage,
            kv_transfer_params: kv,
        }),
        Kind::Responses => serde_json::to_vec(&responses_body(&id, created, model, &text, usage)),
        Kind::Messages => serde_json::to_vec(&json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens",
            "stop_sequence": null,
            "usage": {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens,
                "cache_read_input_tokens": usage.prompt_tokens_details.cached_tokens,
            },
        })),
        Kind::Tokens => serde_json::to_vec(&json!({
            "request_id": id,
            "choices": [{"index": 0, "token_ids": crate::tokenizer::tokenize(&text),
                "logprobs": null, "finish_reason": "length"}],
            "prompt_logprobs": null,
            "kv_transfer_params": kv,
        })),
    };
    json_response(body.unwrap_or_default())
}

/// Runs the sequence to its end; the text is what the stream's deltas would concatenate to.
async fn generate_all(seq: &mut Sequence) -> String {
    let mut text = String::with_capacity(128);
    while let Some(word) = seq.next_token().await {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(word);
    }
    text
}

/// What a prefill worker hands the decode worker (NIXL-style, pull-based): where the blocks of
/// the rank that prefilled them live.
fn kv_for_decode(sim: &Sim, seq: &Sequence) -> serde_json::Value {
    json!({
        "do_remote_prefill": true,
        "do_remote_decode": false,
        "remote_engine_id": seq.engine_id(),
        "remote_block_ids": seq.block_ids(),
        "remote_host": sim.advertised.ip().to_string(),
        "remote_port": sim.advertised.port(),
        "tp_size": 1,
    })
}

fn responses_body(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    usage: Usage,
) -> serde_json::Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": "completed",
        "output": [{
            "type": "message",
            "id": format!("msg_{}", id.trim_start_matches("resp_")),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }],
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens},
        },
    })
}
