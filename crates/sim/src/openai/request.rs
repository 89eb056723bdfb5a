//! Borrowing views of request bodies: only the fields the simulator acts on; the rest is
//! ignored, as vLLM ignores unknown fields.

use std::borrow::Cow;

use serde::Deserialize;

use crate::tokenizer::{push_role_marker, tokenize_into};

/// The fields shared by every generating endpoint.
#[derive(Deserialize)]
pub(crate) struct GenerateRequest<'a> {
    #[serde(borrow)]
    pub(crate) model: Option<Cow<'a, str>>,
    pub(crate) stream: Option<bool>,
    pub(crate) stream_options: Option<StreamOptions>,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) max_completion_tokens: Option<u32>,
    /// `/v1/responses`.
    pub(crate) max_output_tokens: Option<u32>,
    #[serde(borrow)]
    pub(crate) messages: Option<Vec<Message<'a>>>,
    #[serde(borrow)]
    pub(crate) prompt: Option<Prompt<'a>>,
    /// `/v1/responses`: a string or a list of messages.
    #[serde(borrow)]
    pub(crate) input: Option<ResponsesInput<'a>>,
    /// `/inference/v1/generate`.
    pub(crate) token_ids: Option<Vec<u32>>,
    pub(crate) sampling_params: Option<SamplingParams>,
    pub(crate) kv_transfer_params: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: Option<bool>,
}

#[derive(Deserialize)]
pub(crate) struct SamplingParams {
    pub(crate) max_tokens: Option<u32>,
}

/// One chat message; `content` may be absent (tool calls) or a list of parts.
#[derive(Deserialize)]
pub(crate) struct Message<'a> {
    #[serde(borrow)]
    pub(crate) role: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) content: Option<Content<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
}

/// A content part; only its `text` counts (images and audio add no tokens here).
#[derive(Deserialize)]
pub(crate) struct Part<'a> {
    #[serde(borrow, default)]
    pub(crate) text: Option<Cow<'a, str>>,
}

/// A completion prompt or a pooling input: text, token ids, or a batch of either.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Ids(Vec<u32>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ResponsesInput<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Messages(#[serde(borrow)] Vec<Message<'a>>),
}

/// Tokens of a chat conversation under the simulator's template:
/// `<|role|>` and content per message, then `<|assistant|>`.
pub(crate) fn chat_tokens(messages: &[Message<'_>]) -> Vec<u32> {
    let mut out = Vec::with_capacity(64);
    for m in messages {
        push_role_marker(&m.role, &mut out);
        match &m.content {
            Some(Content::Text(text)) => tokenize_into(text, &mut out),
            Some(Content::Parts(parts)) => {
                for text in parts.iter().filter_map(|p| p.text.as_deref()) {
                    tokenize_into(text, &mut out);
                }
            }
            None => {}
        }
    }
    push_role_marker("assistant", &mut out);
    out
}

impl Prompt<'_> {
    /// Each batch item as token ids.
    pub(crate) fn items(&self) -> Vec<Vec<u32>> {
        let text = |t: &str| {
            let mut ids = Vec::new();
            tokenize_into(t, &mut ids);
            ids
        };
        match self {
            Prompt::Text(t) => vec![text(t)],
            Prompt::Ids(ids) => vec![ids.clone()],
            Prompt::Texts(ts) => ts.iter().map(|t| text(t)).collect(),
            Prompt::IdLists(lists) => lists.clone(),
        }
    }

    /// The tokens of a single-prompt request: the first item of a batch.
    pub(crate) fn first(&self) -> Vec<u32> {
        match self {
            Prompt::Ids(ids) => ids.clone(),
            Prompt::IdLists(lists) => lists.first().cloned().unwrap_or_default(),
            Prompt::Text(t) => crate::tokenizer::tokenize(t),
            Prompt::Texts(ts) => ts
                .first()
                .map(|t| crate::tokenizer::tokenize(t))
                .unwrap_or_default(),
        }
    }
}

impl GenerateRequest<'_> {
    /// Prompt tokens from whichever of `messages`, `prompt`, `input`, `token_ids` is present.
    pub(crate) fn prompt_tokens(&self) -> Vec<u32> {
        if let Some(messages) = &self.messages {
            return chat_tokens(messages);
        }
        if let Some(prompt) = &self.prompt {
            return prompt.first();
        }
        match &self.input {
            Some(ResponsesInput::Text(t)) => return crate::tokenizer::tokenize(t),
            Some(ResponsesInput::Messages(m)) => return chat_tokens(m),
            None => {}
        }
        self.token_ids.clone().unwrap_or_default()
    }

    /// Requested output length, if any field sets it.
    pub(crate) fn requested_max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens
            .or(self.max_tokens)
            .or(self.max_output_tokens)
            .or(self.sampling_params.as_ref().and_then(|s| s.max_tokens))
    }

    pub(crate) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// A boolean flag inside `kv_transfer_params`.
    pub(crate) fn kv_flag(&self, name: &str) -> bool {
        self.kv_transfer_params
            .as_ref()
            .and_then(|kv| kv.get(name))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tokenize;

    fn parse(json: &str) -> GenerateRequest<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn chat_template_and_parts() {
        let a = parse(r#"{"messages":[{"role":"user","content":"hi there"}],"x":1}"#);
        let b = parse(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi there"}]}]}"#,
        );
        assert_eq!(
            a.prompt_tokens(),
            tokenize("<|user|> hi there <|assistant|>")
        );
        assert_eq!(a.prompt_tokens(), b.prompt_tokens());
    }

    #[test]
    fn prompt_shapes() {
        assert_eq!(
            parse(r#"{"prompt":[5,6,7]}"#).prompt_tokens(),
            vec![5, 6, 7]
        );
        assert_eq!(parse(r#"{"prompt":[[1],[2]]}"#).prompt_tokens(), vec![1]);
        assert_eq!(
            parse(r#"{"prompt":["a b","c"]}"#).prompt_tokens(),
            tokenize("a b")
        );
        assert_eq!(
            parse(r#"{"prompt":"a\nb"}"#).prompt_tokens(),
            tokenize("a b")
        );
    }

    #[test]
    fn max_tokens_precedence() {
        let r = parse(r#"{"max_tokens":5,"max_completion_tokens":7,"min_tokens":3}"#);
        assert_eq!(r.requested_max_tokens(), Some(7));
        assert_eq!(parse(r#"{"max_tokens":null}"#).requested_max_tokens(), None);
    }
}
