//! Server-sent events: one body frame per generated token, written as soon as it exists.

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header;
use serde::Serialize;

use super::wire::{ChatChunkChoice, Chunk, Delta, TextChoice, Usage};
use crate::engine::Sequence;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Which chunk shape to emit.
#[derive(Clone, Copy)]
pub(crate) enum StreamKind {
    Chat,
    Completion,
}

/// The fixed fields of every chunk of one stream.
pub(crate) struct StreamSpec {
    pub(crate) kind: StreamKind,
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) created: u64,
    pub(crate) include_usage: bool,
}

enum Phase {
    Tokens(Sequence),
    Usage(Usage),
    Done,
    End,
}

struct Events {
    spec: StreamSpec,
    phase: Phase,
}

/// A `text/event-stream` response driving `seq` as the client reads.
pub(crate) fn respond(seq: Sequence, spec: StreamSpec) -> Response {
    let events = Events {
        spec,
        phase: Phase::Tokens(seq),
    };
    let stream = futures_util::stream::unfold(events, |mut ev| async move {
        let frame = ev.next().await?;
        Some((Ok::<_, Infallible>(frame), ev))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

impl Events {
    async fn next(&mut self) -> Option<Bytes> {
        match std::mem::replace(&mut self.phase, Phase::End) {
            Phase::Tokens(mut seq) => {
                let Some(word) = seq.next_token().await else {
                    self.phase = Phase::Done;
                    return Some(Bytes::from_static(DONE));
                };
                let first = seq.completion_tokens() == 1;
                let finished = seq.is_finished();
                let frame = self.token_event(word, first, finished);
                self.phase = if !finished {
                    Phase::Tokens(seq)
                } else if self.spec.include_usage {
                    Phase::Usage(Usage::of(&seq))
                } else {
                    Phase::Done
                };
                Some(frame)
            }
            Phase::Usage(usage) => {
                self.phase = Phase::Done;
                Some(match self.spec.kind {
                    StreamKind::Chat => self.chunk::<ChatChunkChoice<'_>>(&[], Some(usage)),
                    StreamKind::Completion => self.chunk::<TextChoice<'_>>(&[], Some(usage)),
                })
            }
            Phase::Done => Some(Bytes::from_static(DONE)),
            Phase::End => None,
        }
    }

    fn token_event(&self, word: &str, first: bool, finished: bool) -> Bytes {
        let mut spaced = String::with_capacity(word.len() + 1);
        if !first {
            spaced.push(' ');
        }
        spaced.push_str(word);
        let finish_reason = finished.then_some("length");
        match self.spec.kind {
            StreamKind::Chat => self.chunk(
                &[ChatChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: first.then_some("assistant"),
                        content: &spaced,
                    },
                    logprobs: None,
                    finish_reason,
                }],
                None,
            ),
            StreamKind::Completion => self.chunk(
                &[TextChoice {
                    index: 0,
                    text: &spaced,
                    logprobs: None,
                    finish_reason,
                    stop_reason: None,
                }],
                None,
            ),
        }
    }

    fn chunk<C: Serialize>(&self, choices: &[C], usage: Option<Usage>) -> Bytes {
        let object = match self.spec.kind {
            StreamKind::Chat => "chat.completion.chunk",
            StreamKind::Completion => "text_completion",
        };
        let chunk = Chunk {
            id: &self.spec.id,
            object,
            created: self.spec.created,
            model: &self.spec.model,
            choices,
            usage,
        };
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"data: ");
        // Serialising these plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut buf, &chunk);
        buf.extend_from_slice(b"\n\n");
        Bytes::from(buf)
    }
}
