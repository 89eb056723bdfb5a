//! Routing policies. Each is one file implementing [`Policy`] and one [`PolicyKind`] variant;
//! nothing else in the router knows which policy runs.

mod cache_aware;
mod consistent_hash;
mod least_load;
mod power_of_two;
mod random;
mod round_robin;
mod weighted;

pub use weighted::WeightedConfig;

use std::sync::Arc;

use clap::ValueEnum;
use http::HeaderMap;

pub(crate) use cache_aware::index_capacity;
pub use cache_aware::{CacheAwareConfig, Terms};

use crate::fleet::{Snapshot, Worker};

/// What a policy may look at when choosing: the peeked request, never a parsed copy.
#[derive(Clone, Copy)]
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
    /// The session key (configured headers first, then parsed body fields), if any.
    pub session_key: Option<&'a str>,
    /// The canonical prompt, when the policy [wants it](Policy::wants_prompt).
    pub prompt: Option<&'a str>,
}

impl<'a> RouteRequest<'a> {
    /// A request for `path` with these headers and nothing else known: no body, model,
    /// request id, session key or prompt. Tests, benches and tools fill in the rest.
    pub fn new(path: &'a str, headers: &'a HeaderMap) -> Self {
        Self {
            path,
            model: None,
            headers,
            body: b"",
            request_id: "",
            session_key: None,
            prompt: None,
        }
    }
}

/// Header values, the body and the prompt are left out: they may hold keys, cookies or
/// private text.
impl std::fmt::Debug for RouteRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteRequest")
            .field("path", &self.path)
            .field("model", &self.model)
            .field("headers", &crate::proxy::headers::Redacted(self.headers))
            .field("body_bytes", &self.body.len())
            .field("request_id", &self.request_id)
            .field("session_key", &self.session_key)
            .field("prompt_bytes", &self.prompt.map(str::len))
            .finish()
    }
}

/// A policy's choice: an index into the candidates, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Index into the candidate slice given to [`Policy::pick`].
    pub index: usize,
    /// A short reason, for logs, metrics and explanations.
    pub reason: &'static str,
    /// The fraction of the prompt the policy predicts the worker holds in its prefix cache,
    /// checked against the `cached_tokens` the worker reports.
    pub predicted_hit: Option<f64>,
    /// Prefix-index blocks the worker is predicted to prefill, booked on it until the first
    /// token comes back (0 when the policy does not predict).
    pub prefill_blocks: u64,
    /// Blocks of work the policy predicts before the request's first token (the work ahead
    /// of it on the worker, its own prefill, and one for the fixed cost of a request): its
    /// first token is timed against it, so the worker learns its pace
    /// ([`Worker::secs_per_block`]). `None` when the policy does not predict.
    pub work_blocks: Option<f64>,
}

impl Decision {
    /// Candidate `index`, chosen for `reason`, with no cache prediction.
    pub const fn new(index: usize, reason: &'static str) -> Self {
        Self {
            index,
            reason,
            predicted_hit: None,
            prefill_blocks: 0,
            work_blocks: None,
        }
    }
}

/// How a policy sees the candidates, for `/debug/route`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explanation {
    /// The choice the policy would make now (for randomised policies, one draw).
    pub decision: Option<Decision>,
    /// Each candidate's score, lower is better, when the policy scores.
    pub scores: Option<Vec<f64>>,
    /// Prompt blocks each candidate is predicted to hold, for prefix-aware policies.
    pub matched_blocks: Option<Vec<usize>>,
    /// Blocks in the request's prompt, for prefix-aware policies.
    pub prompt_blocks: Option<usize>,
    /// Each candidate's terms under the cost model, for prefix-aware policies.
    pub terms: Option<Vec<Terms>>,
}

impl Explanation {
    /// Score every candidate and choose the lowest, as [`least_by`] would.
    pub(crate) fn least(
        candidates: &[Arc<Worker>],
        score: impl Fn(&Worker) -> f64,
        reason: &'static str,
    ) -> Self {
        let scores: Vec<f64> = candidates.iter().map(|w| score(w)).collect();
        let mut i = 0;
        let decision = least_by(candidates, |_| {
            i += 1;
            scores[i - 1]
        })
        .map(|index| Decision::new(index, reason));
        Self {
            decision,
            scores: Some(scores),
            ..Self::default()
        }
    }
}

/// A routing policy. `pick` runs on the request path: it never blocks and never awaits.
pub trait Policy: Send + Sync + std::fmt::Debug + 'static {
    /// The policy's name, as given to `--policy`.
    fn name(&self) -> &'static str;

    /// Choose among `candidates` (healthy, serving the model, not yet tried; never empty).
    fn pick(&self, req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Option<Decision>;

    /// Explain the choice without making it: no counters advance, nothing is learned.
    fn explain(&self, req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Explanation {
        Explanation {
            decision: self.pick(req, candidates),
            ..Explanation::default()
        }
    }

    /// Whether `pick` reads [`RouteRequest::prompt`] (assembling it costs a copy of the text).
    fn wants_prompt(&self) -> bool {
        false
    }

    /// The fleet changed: rebuild any per-membership structure here, not per request.
    fn on_fleet_change(&self, _snapshot: &Snapshot) {}
}

/// Settings policies are built with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    /// `consistent_hash`: no worker takes more than this factor of the mean in-flight.
    pub hash_load_factor: f64,
    /// `cache_aware` settings.
    pub cache_aware: CacheAwareConfig,
    /// `weighted`: the nginx recipe's ladder.
    pub weighted: weighted::WeightedConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            hash_load_factor: 1.25,
            cache_aware: CacheAwareConfig::default(),
            weighted: weighted::WeightedConfig::default(),
        }
    }
}

/// The candidate with the lowest `score`; ties are broken at random so equal workers share
/// the traffic.
pub(crate) fn least_by(
    candidates: &[Arc<Worker>],
    mut score: impl FnMut(&Worker) -> f64,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    let mut ties = 0u32;
    for (i, w) in candidates.iter().enumerate() {
        let s = score(w);
        match best {
            Some((_, b)) if s > b => {}
            Some((_, b)) if s == b => {
                ties += 1;
                if fastrand::u32(..=ties) == 0 {
                    best = Some((i, s));
                }
            }
            _ => {
                best = Some((i, s));
                ties = 0;
            }
        }
    }
    best.map(|(i, _)| i)
}

/// A policy that scores each candidate on its own and takes the lowest score (ties at
/// random). Implementing it implements [`Policy`].
pub trait ScoredPolicy: Send + Sync + std::fmt::Debug + 'static {
    /// The policy's name, as given to `--policy`.
    const NAME: &'static str;
    /// The reason every decision gives.
    const REASON: &'static str;
    /// The candidate's score at `now`; lower is better.
    fn score(&self, worker: &Worker, now: std::time::Instant) -> f64;
}

impl<T: ScoredPolicy> Policy for T {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn pick(&self, _req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Option<Decision> {
        let now = std::time::Instant::now();
        let index = least_by(candidates, |w| self.score(w, now))?;
        Some(Decision::new(index, T::REASON))
    }

    fn explain(&self, _req: &RouteRequest<'_>, candidates: &[Arc<Worker>]) -> Explanation {
        let now = std::time::Instant::now();
        Explanation::least(candidates, |w| self.score(w, now), T::REASON)
    }
}

/// The candidate at position `at(total)` of a line where each candidate takes as many
/// consecutive positions as its weight, `total` being the sum of the weights; `at` must answer
/// below `total`. With equal weights, simply the candidate at that index.
pub(crate) fn weighted_index(candidates: &[Arc<Worker>], at: impl FnOnce(u64) -> u64) -> usize {
    let total: u64 = candidates.iter().map(|w| u64::from(w.weight())).sum();
    let mut left = at(total.max(1));
    if total == candidates.len() as u64 {
        return left as usize;
    }
    for (i, w) in candidates.iter().enumerate() {
        let weight = u64::from(w.weight());
        if left < weight {
            return i;
        }
        left -= weight;
    }
    0
}

/// The policies `--policy` accepts, with vllm-project/router's names.
#[derive(ValueEnum, serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Each candidate in turn.
    RoundRobin,
    /// A uniformly random candidate.
    Random,
    /// The less loaded of two random candidates, by in-flight plus the engine's queue.
    PowerOfTwo,
    /// The lowest `running * 3 + waiting` from the workers' `/metrics`.
    LeastLoad,
    /// nginx's metric-driven recipe: weights stepped down by KV-cache use, queueing,
    /// preemption and batch size, then least connections over the weights.
    Weighted,
    /// Sessions stick to a worker on a hash ring, with bounded load (`consistent_hashing`,
    /// SGLang's gateway's name, is taken too).
    #[value(alias = "consistent_hashing")]
    #[serde(alias = "consistent_hashing")]
    ConsistentHash,
    /// Prefix-cache affinity from an index of what the router sent each worker, weighed
    /// against load.
    CacheAware,
    /// KV-event-driven cache affinity (arrives with the policies work; round robin until then).
    KvAware,
    /// Sticky sessions with a least-loaded fallback: served by `consistent_hash`, which is
    /// exactly that, with bounded load.
    StickyLeastLoaded,
}

impl PolicyKind {
    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::PowerOfTwo => "power_of_two",
            Self::LeastLoad => "least_load",
            Self::Weighted => "weighted",
            Self::ConsistentHash => "consistent_hash",
            Self::CacheAware => "cache_aware",
            Self::KvAware => "kv_aware",
            Self::StickyLeastLoaded => "sticky_least_loaded",
        }
    }

    /// Whether this build implements the policy itself, rather than standing in for it.
    pub fn is_available(self) -> bool {
        !matches!(self, Self::KvAware)
    }

    /// Build the policy. One not yet available is served by round robin.
    pub fn build(self, config: &PolicyConfig) -> Arc<dyn Policy> {
        match self {
            Self::Random => Arc::new(random::Random),
            Self::PowerOfTwo => Arc::new(power_of_two::PowerOfTwo),
            Self::LeastLoad => Arc::new(least_load::LeastLoad),
            Self::Weighted => Arc::new(weighted::Weighted::new(config.weighted)),
            Self::ConsistentHash | Self::StickyLeastLoaded => Arc::new(
                consistent_hash::ConsistentHash::new(config.hash_load_factor),
            ),
            Self::CacheAware => Arc::new(cache_aware::CacheAware::new(config.cache_aware)),
            Self::RoundRobin | Self::KvAware => Arc::new(round_robin::RoundRobin::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::workers;
    use super::*;

    #[test]
    fn least_by_spreads_ties_and_prefers_the_lowest() {
        let ws = workers(3);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            seen[least_by(&ws, |_| 1.0).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        let scores = [3.0, 1.0, 2.0];
        assert_eq!(
            least_by(&ws, |w| scores
                [ws.iter().position(|x| x.id() == w.id()).unwrap()]),
            Some(1)
        );
        assert_eq!(least_by(&[], |_| 0.0), None);
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
    use std::time::{Duration, Instant};

    use http::HeaderMap;

    use super::RouteRequest;
    use crate::config::WorkerUrl;
    use crate::fleet::{EngineMetrics, EngineSample, Worker};

    pub fn workers(n: usize) -> Vec<Arc<Worker>> {
        (0..n)
            .map(|i| {
                let url =
                    WorkerUrl::parse("--worker-urls", &format!("http://10.0.0.{i}:8000")).unwrap();
                Arc::new(Worker::new(url))
            })
            .collect()
    }

    pub fn weighted(weights: &[u32]) -> Vec<Arc<Worker>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let url =
                    WorkerUrl::parse("--worker-urls", &format!("http://10.0.0.{i}:8000")).unwrap();
                Arc::new(Worker::new(crate::config::WorkerSpec {
                    weight: std::num::NonZeroU32::new(w).unwrap(),
                    ..crate::config::WorkerSpec::from(url)
                }))
            })
            .collect()
    }

    pub fn with_request<T>(f: impl FnOnce(&RouteRequest<'_>) -> T) -> T {
        with_session(None, f)
    }

    pub fn with_session<T>(session_key: Option<&str>, f: impl FnOnce(&RouteRequest<'_>) -> T) -> T {
        let headers = HeaderMap::new();
        let req = RouteRequest {
            session_key,
            ..RouteRequest::new("/v1/completions", &headers)
        };
        f(&req)
    }

    /// Publish an engine sample on `worker`, fresh for a minute.
    pub fn engine(worker: &Worker, f: impl FnOnce(&mut EngineMetrics)) {
        let mut metrics = EngineMetrics {
            running: Some(0.0),
            waiting: Some(0.0),
            kv_usage: Some(0.0),
            ..EngineMetrics::default()
        };
        f(&mut metrics);
        worker.set_engine_sample(Some(Arc::new(EngineSample {
            metrics,
            preempting: false,
            in_flight_at_scrape: u32::try_from(worker.in_flight()).unwrap(),
            fresh_until: Instant::now() + Duration::from_secs(60),
        })));
    }
}
