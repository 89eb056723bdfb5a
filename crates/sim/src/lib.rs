//! A simulated vLLM server speaking vLLM's OpenAI-compatible HTTP API, for the router's tests,
//! demo and benchmarks. It models what routing decisions depend on (a bounded running batch with
//! a waiting queue, a block-level prefix cache, and a batch run in steps whose token budget is
//! shared by prefills and decodes, so load on one engine costs its requests time) and records
//! what it received, so tests can check exactly what reached each worker.
//!
//! - `config`: [`SimConfig`] and [`Role`], the knobs of one server.
//! - `tokenizer`: a deterministic whitespace/punctuation tokenizer and the fake output words.
//! - `prefix_cache`: chained block hashes and an LRU set of cached blocks.
//! - `engine`: one rank's engine: admission into the batch, prefix lookups, and the scheduler
//!   loop stepping the batch (chunked prefill under `max_num_batched_tokens`).
//! - `ranks`: the data-parallel ranks behind the port and which one takes a request
//!   (`X-data-parallel-rank`, else the least busy).
//! - `openai`: the inference routes (chat, completions, embeddings, tokenize, render, ...),
//!   their request views, streaming and vLLM's error JSON.
//! - `control`: `/health`, `/metrics`, `/reset_prefix_cache`, `/sim/stats`, `/sim/records`.
//! - `bootstrap`: the Mooncake bootstrap `GET /query` of a prefill-role server.
//! - `metrics`: the Prometheus exposition under vLLM's names.
//! - `auth`: vLLM's `--api-key` on the `/v1` routes.
//! - `inject`: failure injection (`X-Return-Error`, `error_rate`, `hang`, `exit_after`).
//! - `record`: per-request records, counters, and the drop guard that detects cancellation.
//! - `state`: the state one server shares between its connections.
//! - `server`: the accept loop, connection tracking, kill and graceful shutdown.

#![warn(missing_docs)]

mod adapters;
mod auth;
mod bootstrap;
mod config;
mod control;
mod engine;
mod inject;
mod metrics;
mod openai;
mod prefix_cache;
mod ranks;
mod record;
mod server;
mod state;
mod tokenizer;

pub use config::{ConfigError, MAX_DATA_PARALLEL_SIZE, Role, SimConfig};
pub use inject::RETURN_ERROR_HEADER;
pub use ranks::DATA_PARALLEL_RANK_HEADER;
pub use record::{RECORD_CAPACITY, RankStats, RequestRecord, SimStats};
pub use server::{SimServer, spawn, spawn_on};
pub use tokenizer::{detokenize, tokenize};
