//! vllm-router-bench: a workload generator and reporter for OpenAI-compatible LLM routers. One
//! run sends the same seeded workload to several targets in turn and reports, per target, the
//! time to first token, end-to-end latency and the prefix-cache hit rate the workers report in
//! `usage.prompt_tokens_details.cached_tokens`: the figures routing quality shows in.
//!
//! - [`cli`]: the command line and its validation into a [`config::BenchConfig`].
//! - [`config`]: the typed configuration, serialised into every JSON report.
//! - [`text`]: the fixed vocabulary and seeded word streams.
//! - [`workload`]: conversations (multi-turn, few-shot, random) and the requests they send.
//! - [`sse`]: server-sent events framing, robust to events split across reads.
//! - [`client`]: streaming chat requests over a pooled HTTP/1 client, timed to the first token.
//! - [`load`]: pacing: a closed loop of users or open-loop Poisson arrivals, and the window.
//! - [`stats`]: means, nearest-rank percentiles and exponential inter-arrival gaps.
//! - [`report`]: per-target figures, the Markdown table and the JSON document.
//! - [`run`]: target after target, with the between-targets command and cache resets.

#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod config;
pub mod load;
pub mod report;
pub mod run;
pub mod sse;
pub mod stats;
pub mod text;
pub mod workload;
