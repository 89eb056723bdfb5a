//! The validated configuration of one benchmark run. Every other module reads this, never the
//! command line; the whole tree is serialised into the JSON report so a result says exactly
//! how it was produced.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use http::Uri;
use serde::{Serialize, Serializer};

/// The path every inference request is sent to.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// Everything a run needs.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    /// The routers (or workers) to measure, one after another, in this order.
    pub targets: Vec<Target>,
    /// Shell command (run with `sh -c`) before each target, e.g. to restart the workers.
    pub between_targets_cmd: Option<String>,
    /// Workers whose `POST /reset_prefix_cache` is called before each target.
    pub reset_prefix_cache: Vec<String>,
    /// What the requests contain.
    pub workload: WorkloadConfig,
    /// How requests are paced.
    pub load: Load,
    /// When a target's run ends and which requests count.
    pub window: WindowConfig,
    /// Longest a single request may take, headers to `[DONE]`.
    #[serde(serialize_with = "secs")]
    pub request_timeout: Duration,
}

/// One router under test.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The name shown in the report.
    pub name: String,
    /// The base URL, without a trailing slash.
    pub url: String,
    /// `url` + [`CHAT_PATH`], parsed once.
    #[serde(skip)]
    pub chat_uri: Uri,
}

/// The shape of the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Chats that grow turn by turn on top of a system prompt shared by a group of users.
    MultiTurn,
    /// Single requests: one of a few long shared few-shot prefixes plus a short question.
    FewShot,
    /// Single requests of random words; nothing is shared.
    Random,
}

/// What the requests contain. Text is a function of the seeds and the request's place in the
/// workload only, so every target sees the same prompts.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadConfig {
    /// Traffic shape.
    pub kind: WorkloadKind,
    /// Seed for the generated text other than the shared prefixes, and for open-loop
    /// arrivals.
    pub seed: u64,
    /// Seed for the groups' shared prefixes: system prompts and few-shot blocks.
    pub prefix_seed: u64,
    /// Distinct shared prefixes (system prompts or few-shot blocks).
    pub groups: NonZeroU64,
    /// User turns per multi-turn conversation.
    pub turns: NonZeroU32,
    /// Words in each group's shared prefix.
    pub system_prompt_words: usize,
    /// Words per user turn (multi-turn) or per question (few-shot).
    pub user_words: usize,
    /// Words per prompt of the random workload.
    pub prompt_words: usize,
    /// `max_tokens` of every request.
    pub max_tokens: u32,
    /// `model` of every request.
    pub model: String,
    /// Send the conversation id as `x-session-id` and as the body's `user` field.
    pub session_key: bool,
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Load {
    /// `users` concurrent users, each sending its next request when its previous one ended.
    Closed {
        /// Concurrent users.
        users: NonZeroUsize,
    },
    /// Poisson arrivals at `rate` per second, whatever the answers' speed.
    Open {
        /// Mean arrivals per second.
        rate: f64,
        /// Arrivals while this many requests are in flight are dropped and counted as shed.
        max_outstanding: NonZeroUsize,
    },
}

/// When a target's run ends and which requests count.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct WindowConfig {
    /// Requests sent before this much time has passed are not counted.
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// Length of the measured part, after the warm-up.
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Stop once this many counted requests were sent, if that comes first.
    pub requests: Option<NonZeroU64>,
}

/// A value on the command line that the benchmark cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A `--target` that is not `NAME=URL`.
    #[error("--target: {value:?} is not NAME=URL")]
    TargetSyntax {
        /// The rejected argument.
        value: String,
    },
    /// Two targets with one name.
    #[error("--target: the name {name:?} is used twice")]
    DuplicateTarget {
        /// The repeated name.
        name: String,
    },
    /// A URL the HTTP client cannot dial.
    #[error("{field}: {value:?} is not an http:// URL ({reason})")]
    Url {
        /// The flag.
        field: &'static str,
        /// The rejected URL.
        value: String,
        /// Why.
        reason: String,
    },
    /// A number outside its range.
    #[error("{field}: {value} is out of range ({range})")]
    OutOfRange {
        /// The flag.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// The accepted range.
        range: &'static str,
    },
}

impl Target {
    /// Parses `NAME=URL`.
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        let syntax = || ConfigError::TargetSyntax {
            value: arg.to_owned(),
        };
        let (name, url) = arg.split_once('=').ok_or_else(syntax)?;
        if name.is_empty() || url.is_empty() {
            return Err(syntax());
        }
        let url = base_url("--target", url)?;
        let chat_uri = join(&url, CHAT_PATH).map_err(|reason| ConfigError::Url {
            field: "--target",
            value: url.clone(),
            reason,
        })?;
        Ok(Self {
            name: name.to_owned(),
            url,
            chat_uri,
        })
    }
}

/// Checks that `value` is an `http://host[:port][/path]` URL; returns it without a trailing
/// slash.
pub fn base_url(field: &'static str, value: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim_end_matches('/');
    let bad = |reason: &str| ConfigError::Url {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = trimmed.parse().map_err(|_| bad("unparseable"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    if uri.authority().is_none() {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("no query string allowed"));
    }
    Ok(trimmed.to_owned())
}

/// `base` + `path` as a URI.
pub fn join(base: &str, path: &str) -> Result<Uri, String> {
    format!("{base}{path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("ours=http://127.0.0.1:8000/").unwrap();
        assert_eq!(t.name, "ours");
        assert_eq!(t.url, "http://127.0.0.1:8000");
        assert_eq!(
            t.chat_uri.to_string(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        let with_path = Target::parse("p=http://h:1/api").unwrap();
        assert_eq!(with_path.chat_uri.path(), "/api/v1/chat/completions");
    }

    #[test]
    fn bad_targets_name_the_flag() {
        for bad in [
            "nourl",
            "=http://h",
            "x=",
            "x=https://h",
            "x=h:80",
            "x=http://h?q=1",
        ] {
            let err = Target::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("--target"), "{bad}: {err}");
        }
    }
}
