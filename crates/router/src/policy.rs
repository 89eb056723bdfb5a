//! Routing policies. Each is one file implementing [`Policy`] and one [`PolicyKind`] variant;
//! nothing else in the router knows which policy runs.

mod power_of_two;
mod random;
mod round_robin;

use std::sync::Arc;

use clap::ValueEnum;
use http::HeaderMap;

use crate::fleet::{Snapshot, Worker};

/// What a policy may look at when choosing: the peeked request, never a parsed copy.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The request path, e.g. `/v1/chat/completions`.
    pub path: &'a str,
    /// The `model` field, when the body has one.
    pub model: Option<&'a str>,
    /// The client's headers.
    pub headers: &'a HeaderMap,
    /// The body exactly as received.
    pub body: &'a [u8],
    /// The request id sent to the worker.
    pub request_id: &'a str,
}

/// A policy's choice: an index into the candidates, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into the candidate slice given to [`Policy::pick`].
    pub index: usize,
    /// A short reason, for logs and explanations.
    pub reason: &'static str,
}

/// A routing policy. `pick` runs on the request path: it never blocks and never awaits.
pub trait Policy: Send + Sync + std::fmt::Debug + 'static {
    /// The policy's name, as given to `--policy`.
    fn name(&self) -> &'static str;

    /// Choose among `candidates` (healthy, serving the model, not yet tried; never empty).
    fn pick(&self, req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Option<Decision>;

    /// The fleet changed: rebuild any per-membership structure here, not per request.
    fn on_fleet_change(&self, _snapshot: &Snapshot) {}
}

/// The policies `--policy` accepts, with vllm-project/router's names.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
#[value(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Each candidate in turn.
    RoundRobin,
    /// A uniformly random candidate.
    Random,
    /// The less loaded of two random candidates, by requests in flight.
    PowerOfTwo,
    /// Session affinity (arrives with the policies work; served by round robin until then).
    ConsistentHash,
    /// Prefix-cache affinity (arrives with the policies work; served by round robin until then).
    CacheAware,
    /// KV-event-driven cache affinity (arrives with the policies work; round robin until then).
    KvAware,
    /// Sticky sessions with least-load fallback (arrives with the policies work; round robin
    /// until then).
    StickyLeastLoaded,
}

impl PolicyKind {
    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::PowerOfTwo => "power_of_two",
            Self::ConsistentHash => "consistent_hash",
            Self::CacheAware => "cache_aware",
            Self::KvAware => "kv_aware",
            Self::StickyLeastLoaded => "sticky_least_loaded",
        }
    }

    /// Whether this build implements the policy itself, rather than standing in for it.
    pub fn is_available(self) -> bool {
        matches!(self, Self::RoundRobin | Self::Random | Self::PowerOfTwo)
    }

    /// Build the policy. One not yet available is served by round robin.
    pub fn build(self) -> Arc<dyn Policy> {
        match self {
            Self::Random => Arc::new(random::Random),
            Self::PowerOfTwo => Arc::new(power_of_two::PowerOfTwo),
            Self::RoundRobin
            | Self::ConsistentHash
            | Self::CacheAware
            | Self::KvAware
            | Self::StickyLeastLoaded => Arc::new(round_robin::RoundRobin::default()),
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use http::HeaderMap;

    use super::RouteRequest;
    use crate::config::WorkerUrl;
    use crate::fleet::Worker;

    pub fn workers(n: usize) -> Vec<Arc<Worker>> {
        (0..n)
            .map(|i| {
                let url =
                    WorkerUrl::parse("--worker-urls", &format!("http://10.0.0.{i}:8000")).unwrap();
                Arc::new(Worker::new(url))
            })
            .collect()
    }

    pub fn with_request<T>(f: impl FnOnce(&RouteRequest<'_>) -> T) -> T {
        let headers = HeaderMap::new();
        let req = RouteRequest {
            path: "/v1/completions",
            model: Some("m"),
            headers: &headers,
            body: b"{}",
            request_id: "r",
        };
        f(&req)
    }
}
