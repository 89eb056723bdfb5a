//! Response bodies of the generating endpoints, serialised straight from borrowed fields.

use serde::Serialize;

use crate::engine::Sequence;

/// `usage` as vLLM reports it with prompt-token details enabled.
#[derive(Clone, Copy, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
    pub(crate) total_tokens: u32,
    pub(crate) prompt_tokens_details: PromptDetails,
}

#[derive(Clone, Copy, Serialize)]
pub(crate) struct PromptDetails {
    pub(crate) cached_tokens: u32,
}

impl Usage {
    pub(crate) fn of(seq: &Sequence) -> Self {
        let (prompt, completion) = (seq.prompt_tokens(), seq.completion_tokens());
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: PromptDetails {
                cached_tokens: seq.cached_tokens(),
            },
        }
    }
}

/// A non-streamed chat completion or text completion.
#[derive(Serialize)]
pub(crate) struct Completion<'a, C> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: [C; 1],
    pub(crate) usage: Usage,
    pub(crate) kv_transfer_params: Option<serde_json::Value>,
}

#[derive(Serialize)]
pub(crate) struct ChatChoice<'a> {
    pub(crate) index: u32,
    pub(crate) message: ChatMessage<'a>,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: &'static str,
    pub(crate) stop_reason: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct ChatMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: &'a str,
}

/// A text choice, in whole answers and in stream chunks alike.
#[derive(Serialize)]
pub(crate) struct TextChoice<'a> {
    pub(crate) index: u32,
    pub(crate) text: &'a str,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: Option<&'static str>,
    pub(crate) stop_reason: Option<()>,
}

/// One streamed event's payload; the usage chunk has no choices.
#[derive(Serialize)]
pub(crate) struct Chunk<'a, C> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: &'a [C],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

#[derive(Serialize)]
pub(crate) struct ChatChunkChoice<'a> {
    pub(crate) index: u32,
    pub(crate) delta: Delta<'a>,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
pub(crate) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    pub(crate) content: &'a str,
}
