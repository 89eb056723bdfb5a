//! What the events of an OpenAI chat stream mean: content deltas, the usage chunk, `[DONE]` and
//! errors. Chunks are read through borrowing views of the few fields that matter.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::sse::Event;

/// Token counts from the final usage chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Prompt tokens of the request.
    pub prompt_tokens: u64,
    /// Prompt tokens served from the worker's prefix cache (0 when not reported).
    #[serde(default, rename = "prompt_tokens_details", deserialize_with = "cached")]
    pub cached_tokens: u64,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

fn cached<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let details = Option::<Details>::deserialize(d)?;
    Ok(details.and_then(|d| d.cached_tokens).unwrap_or(0))
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// Why a stream counts as failed although its status was fine.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChunkError {
    /// The server reported an error inside the stream.
    #[error("error event: {0}")]
    Stream(String),
    /// A data line that is not a JSON chunk.
    #[error("malformed chunk: {0}")]
    Malformed(String),
}

/// What has been seen of one stream so far.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) ttft: Option<Duration>,
    pub(crate) reply: String,
    pub(crate) usage: Option<Usage>,
    pub(crate) done: bool,
}

impl StreamState {
    /// Takes in one event; `started` is when the request was sent.
    pub(crate) fn on_event(&mut self, event: &Event, started: Instant) -> Result<(), ChunkError> {
        if event.event.as_deref() == Some("error") {
            return Err(ChunkError::Stream(one_line(&event.data)));
        }
        if self.done {
            return Ok(());
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_str(data)
            .map_err(|e| ChunkError::Malformed(format!("{e}: {}", one_line(data))))?;
        if chunk.error.is_some() {
            return Err(ChunkError::Stream(one_line(data)));
        }
        if !chunk.choices.is_empty() && self.ttft.is_none() {
            self.ttft = Some(started.elapsed());
        }
        for choice in &chunk.choices {
            if let Some(content) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
                self.reply.push_str(content);
            }
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        Ok(())
    }
}

/// At most 200 characters of `text`, on one line.
fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> Event {
        Event {
            event: None,
            data: data.to_owned(),
        }
    }

    #[test]
    fn a_whole_stream() {
        let t0 = Instant::now();
        let mut s = StreamState::default();
        s.on_event(
            &ev(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#),
            t0,
        )
        .unwrap();
        assert!(
            s.ttft.is_some(),
            "a role-only delta is the first token's chunk"
        );
        for part in ["the", " model", " says \"hi\""] {
            let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": part}}]});
            s.on_event(&ev(&chunk.to_string()), t0).unwrap();
        }
        s.on_event(
            &ev(r#"{"choices":[],"usage":{"prompt_tokens":120,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":96}}}"#),
            t0,
        )
        .unwrap();
        assert!(!s.done);
        s.on_event(&ev("[DONE]"), t0).unwrap();
        assert!(s.done);
        assert_eq!(s.reply, "the model says \"hi\"");
        assert_eq!(
            s.usage,
            Some(Usage {
                prompt_tokens: 120,
                cached_tokens: 96
            })
        );
    }

    #[test]
    fn usage_without_details_counts_no_cache_hits() {
        let mut s = StreamState::default();
        let t0 = Instant::now();
        s.on_event(
            &ev(r#"{"choices":[],"usage":{"prompt_tokens":7,"prompt_tokens_details":null}}"#),
            t0,
        )
        .unwrap();
        assert_eq!(s.usage.map(|u| u.cached_tokens), Some(0));
        assert!(s.ttft.is_none(), "the usage chunk carries no choice");
        s.on_event(&ev(r#"{"choices":[],"usage":{"prompt_tokens":7}}"#), t0)
            .unwrap();
        assert_eq!(s.usage.map(|u| u.prompt_tokens), Some(7));
    }

    #[test]
    fn errors_in_the_stream() {
        let t0 = Instant::now();
        let named = Event {
            event: Some("error".into()),
            data: "boom".into(),
        };
        assert!(matches!(
            StreamState::default().on_event(&named, t0),
            Err(ChunkError::Stream(_))
        ));
        let inline = ev(r#"{"error":{"message":"worker died","code":502}}"#);
        assert!(matches!(
            StreamState::default().on_event(&inline, t0),
            Err(ChunkError::Stream(_))
        ));
        assert!(matches!(
            StreamState::default().on_event(&ev("{not json"), t0),
            Err(ChunkError::Malformed(_))
        ));
    }
}
