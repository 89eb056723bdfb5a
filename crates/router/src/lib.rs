//! vllm-router: an OpenAI-compatible load balancer for fleets of vLLM servers.
//!
//! One request path, bytes in and bytes out: a request is read (within the payload limit),
//! peeked for the few fields routing needs, matched to the workers that serve its model,
//! handed to a [`policy`], forwarded by [`proxy`], and streamed back frame by frame. A request
//! is a plan of legs: one leg, or a prefill leg and a decode leg ([`pd`]), all through the same
//! forwarding engine.
//!
//! - [`admission`]: the concurrency limit, bounded FIFO queue and rate limit in front of it all.
//! - [`app`]: the request path's shared state ([`app::App`]) and the inference route table,
//!   assembled by [`server`] and read by [`proxy`], [`pd`], [`auth`] and [`reload`].
//! - [`auth`]: client API keys (static, from a file, or checked with validation URLs) on the
//!   client routes.
//! - [`cli`]: the command line, compatible with vllm-project/router's flags.
//! - [`config`]: the one validated, typed configuration every other module reads.
//! - [`discovery`]: workers that register themselves (vLLM's ZMQ service discovery) or are
//!   found among Kubernetes pods.
//! - [`fleet`]: workers (roles, data-parallel ranks), the lock-free fleet snapshot, its single
//!   writer task, health probes and load scrapes.
//! - [`live`]: the live view of the fleet (`GET /fleet`), sampled once a second, with
//!   recent history for sparklines.
//! - [`pd`]: prefill/decode plans (NIXL, P2P NCCL, Mooncake) and conditional prefill.
//! - [`policy`]: the [`policy::Policy`] trait and one file per routing policy.
//! - [`prefix`]: prefix indexes of what each worker likely holds in its KV cache.
//! - [`proxy`]: peek, upstream forwarding, header rules and the in-flight tracking body.
//! - [`error`]: every router-made error, mapped once to a status and the OpenAI error JSON.
//! - [`server`]: the HTTP application (inference and info routes) and its run loop.
//! - [`sync`]: the router's locks (parking_lot's; counted with the `lock-count` feature).
//! - [`demo`]: the embedded default: simulated workers plus the router, on one command.
//! - [`telemetry`]: logs (stderr and rotated files), the record of each request, metrics,
//!   trace context and span export.
//! - [`top`]: `vllm-router top`, the live view in the terminal.
//! - [`upstream`]: the pooled HTTP client to workers.

pub mod admission;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod fleet;
pub mod live;
pub mod pd;
pub mod policy;
pub mod prefix;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod top;
pub mod upstream;

/// The router's version, as reported by `/version` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
