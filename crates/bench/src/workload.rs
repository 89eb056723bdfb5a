//! Conversations and the requests they send. A conversation is named by a number; its group,
//! its system prompt and every user turn are functions of the seeds and that number alone, so a
//! conversation reads the same whichever target runs it and however fast the answers come.
//! Only the assistant replies, appended as they arrive, come from the target.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::config::{WorkloadConfig, WorkloadKind};
use crate::text::{derive_seed, words};

/// Labels of the independent text streams derived from the seed.
const SYSTEM: u64 = 1;
const USER: u64 = 2;
const FEW_SHOT: u64 = 3;
const QUESTION: u64 = 4;
const RANDOM: u64 = 5;

/// Words per example of a few-shot prefix: a question, then its answer.
const EXAMPLE_QUESTION_WORDS: usize = 12;
const EXAMPLE_ANSWER_WORDS: usize = 6;

/// The workload of one target's run: a factory of conversations.
#[derive(Clone, Debug)]
pub struct Workload {
    config: Arc<WorkloadConfig>,
}

/// One chat message as sent.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// A chat, from its first request to its last turn.
#[derive(Clone, Debug)]
pub struct Conversation {
    config: Arc<WorkloadConfig>,
    id: u64,
    session: String,
    messages: Vec<Message>,
    sent: u32,
    turns: u32,
}

/// One request, ready to send.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// The JSON body.
    pub body: Bytes,
    /// The session key for `x-session-id`, when keys are on.
    pub session: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: &'a [Message],
    max_tokens: u32,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl Workload {
    /// A workload for `config`.
    pub fn new(config: WorkloadConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// The settings this workload was built with.
    pub fn config(&self) -> &WorkloadConfig {
        &self.config
    }

    /// Conversation number `id` in `group` (reduced modulo the number of groups). The group is
    /// ignored by single-request workloads, which draw one per request.
    pub fn conversation(&self, id: u64, group: u64) -> Conversation {
        let c = &self.config;
        let seed = c.seed;
        let group = group % c.groups.get();
        let mut messages = Vec::with_capacity(2 + 2 * c.turns.get() as usize);
        let turns = match c.kind {
            WorkloadKind::MultiTurn => {
                let mut rng =
                    fastrand::Rng::with_seed(derive_seed(c.prefix_seed, &[SYSTEM, group]));
                messages.push(Message {
                    role: "system",
                    content: words(&mut rng, c.system_prompt_words),
                });
                c.turns.get()
            }
            WorkloadKind::FewShot => {
                let mut rng = fastrand::Rng::with_seed(derive_seed(seed, &[QUESTION, id]));
                let group = rng.u64(..c.groups.get());
                messages.push(Message {
                    role: "system",
                    content: few_shot_prefix(c.prefix_seed, group, c.system_prompt_words),
                });
                messages.push(Message {
                    role: "user",
                    content: words(&mut rng, c.user_words),
                });
                1
            }
            WorkloadKind::Random => {
                let mut rng = fastrand::Rng::with_seed(derive_seed(seed, &[RANDOM, id]));
                messages.push(Message {
                    role: "user",
                    content: words(&mut rng, c.prompt_words),
                });
                1
            }
        };
        Conversation {
            config: self.config.clone(),
            id,
            session: format!("conv-{id}"),
            messages,
            sent: 0,
            turns,
        }
    }
}

/// Worked examples filling about `words_total` words; the same for every request of a group.
fn few_shot_prefix(seed: u64, group: u64, words_total: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(derive_seed(seed, &[FEW_SHOT, group]));
    let mut text = String::with_capacity(words_total * 5);
    let mut written = 0;
    while written < words_total {
        let q = EXAMPLE_QUESTION_WORDS.min(words_total - written);
        text.push_str("question ");
        text.push_str(&words(&mut rng, q));
        text.push_str("\nanswer ");
        text.push_str(&words(&mut rng, EXAMPLE_ANSWER_WORDS));
        text.push('\n');
        written += q + EXAMPLE_ANSWER_WORDS + 2;
    }
    text
}

impl Conversation {
    /// The conversation's number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The messages so far, as the next request would carry them.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// True once every turn was sent and answered.
    pub fn is_finished(&self) -> bool {
        self.sent >= self.turns
    }

    /// The next turn's request, or `None` when the conversation is over. Multi-turn
    /// conversations first append the user's new message to the history.
    pub fn next_request(&mut self) -> Option<ChatRequest> {
        if self.is_finished() {
            return None;
        }
        let c = &self.config;
        if c.kind == WorkloadKind::MultiTurn {
            let turn = u64::from(self.sent);
            let mut rng = fastrand::Rng::with_seed(derive_seed(c.seed, &[USER, self.id, turn]));
            self.messages.push(Message {
                role: "user",
                content: words(&mut rng, c.user_words),
            });
        }
        self.sent += 1;
        let keyed = c.session_key && c.kind == WorkloadKind::MultiTurn;
        let session = keyed.then(|| self.session.clone());
        let body = Body {
            model: &c.model,
            messages: &self.messages,
            max_tokens: c.max_tokens,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            user: session.as_deref(),
        };
        // Plain strings and numbers: serialising into a Vec cannot fail.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Some(ChatRequest {
            body: Bytes::from(body),
            session,
        })
    }

    /// Appends the assistant's answer to the last turn, so the next turn's prompt grows by it.
    pub fn record_reply(&mut self, reply: String) {
        if self.config.kind == WorkloadKind::MultiTurn {
            self.messages.push(Message {
                role: "assistant",
                content: reply,
            });
        }
    }
}

#[cfg(test)]
mod tests;
