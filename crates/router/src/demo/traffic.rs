//! The demo's own clients: a few users in multi-turn conversations, so a new user sees the
//! fleet move (and `cache_aware` keep each conversation where its prefix is cached).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::sync::Mutex;

/// Conversations going on at once.
const USERS: usize = 16;
/// Turns after which a conversation starts over.
const MAX_TURNS: usize = 12;
/// Requests open at once, at most: past it, ticks are skipped rather than queued.
const MAX_OPEN: usize = 32;

const SYSTEM: &str = "You are a helpful assistant for a team running large language models \
in production. Answer briefly and precisely, and say when you are unsure.";
const QUESTIONS: [&str; 6] = [
    "How do I pick a batch size?",
    "What does the prefix cache save?",
    "Why is my time to first token high?",
    "Should prefill and decode run on separate GPUs?",
    "How many replicas of the router do I need?",
    "What should I alert on?",
];

/// Send about `per_sec` chat requests a second to `url` (the router) until the task is
/// aborted; `model` is the model asked for.
pub fn spawn(url: String, model: String, per_sec: f64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let uri: http::Uri = match format!("{url}/v1/chat/completions").parse() {
            Ok(uri) => uri,
            Err(error) => {
                tracing::warn!(%error, "demo traffic: bad router URL");
                return;
            }
        };
        let users: Vec<Mutex<usize>> = (0..USERS).map(|_| Mutex::new(0)).collect();
        let open = Arc::new(Semaphore::new(MAX_OPEN));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec.max(0.1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        for n in 0usize.. {
            tick.tick().await;
            let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                continue;
            };
            let user = fastrand::usize(..USERS);
            let turns = {
                let mut turns = users[user].lock();
                *turns = (*turns + 1) % MAX_TURNS;
                *turns
            };
            let body = conversation(&model, user, turns, n % 3 != 0);
            let request = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("x-session-id", format!("demo-user-{user}"))
                .body(Full::new(Bytes::from(body)));
            let Ok(request) = request else { continue };
            let client = client.clone();
            tokio::spawn(async move {
                // The answer is read to its end, as a real client would.
                if let Ok(response) = client.request(request).await {
                    let _ = response.into_body().collect().await;
                }
                drop(permit);
            });
        }
    })
}

/// One user's conversation after `turns` turns: the same opening every time, so each turn's
/// prompt extends the last one's.
fn conversation(model: &str, user: usize, turns: usize, stream: bool) -> String {
    // Each user's conversation opens with words of its own: conversations share little
    // prefix, so the cache keeps each on a worker and different users spread over the fleet.
    let system = format!("User {user} is talking. {SYSTEM}");
    let mut messages = vec![json!({"role": "system", "content": system})];
    for turn in 0..=turns {
        let question = QUESTIONS[(user + turn) % QUESTIONS.len()];
        messages.push(json!({"role": "user", "content": format!("(user {user}) {question}")}));
        if turn < turns {
            messages.push(
                json!({"role": "assistant", "content": format!("Answer {turn} to user {user}.")}),
            );
        }
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": 16,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_turn_extends_the_last_prompt() {
        let messages = |body: String| {
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["messages"]
                .as_array()
                .unwrap()
                .clone()
        };
        let earlier = messages(conversation("m", 3, 1, false));
        let later = messages(conversation("m", 3, 2, false));
        assert_eq!(later.len(), earlier.len() + 2, "one more turn");
        assert_eq!(
            &later[..earlier.len()],
            &earlier[..],
            "the earlier prompt is a prefix of the later one"
        );
    }
}
