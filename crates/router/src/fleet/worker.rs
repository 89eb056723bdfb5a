//! One worker: its identity, fixed when it joins, and its live numbers as atomics.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, uri};

use super::breaker::Breaker;
use super::load::{EngineSample, Load};
use super::recent::Recent;
use crate::config::{Role, WorkerSpec};

/// A vLLM server the router forwards to, or one data-parallel rank of one. Shared as
/// `Arc<Worker>`; the fleet snapshot and every in-flight request hold clones, so a worker
/// removed mid-stream lives until it ends.
#[derive(Debug)]
pub struct Worker {
    rank: Option<u32>,
    rank_header: Option<HeaderValue>,
    id: u64,
    label: String,
    header: HeaderValue,
    /// `host:port` of the server, as nginx's `X-Upstream-Addr` names an upstream.
    addr: HeaderValue,
    /// The server id (a hash of the URL), with `#rank`: what clients may see instead.
    opaque: HeaderValue,
    /// The hash of the URL, shared by the ranks of one server: the admin API's id.
    server: String,
    engine: ArcSwapOption<EngineSample>,
    in_flight: AtomicUsize,
    /// Prefix-index blocks of prefill work sent to the worker whose first token has not come
    /// back: work the engine's gauges may not show yet (see [`InFlight::prefilled`]).
    booked_prefill: AtomicU64,
    /// Requests in flight whose first token has not come back.
    awaiting_first: AtomicUsize,
    /// Bytes of canonical prompt text per prompt token the worker reported, × 1024, as a
    /// moving average; 0 before the first report.
    bytes_per_token_x1024: AtomicU64,
    /// Time to first token and the work the router predicted for it, as moving averages
    /// (see [`Worker::secs_per_block`]).
    pace: Pace,
    served: AtomicU64,
    recent: Recent,
    /// Shared by every rank of one URL: one server, one verdict.
    health: Arc<Health>,
    breaker: Breaker,
    spec: WorkerSpec,
}

/// A server's health: shared by its data-parallel ranks, since they live and die together.
#[derive(Debug, Default)]
struct Health {
    healthy: AtomicBool,
    draining: AtomicBool,
    failures: AtomicU32,
    good_probes: AtomicU32,
    /// The last health probe failed.
    probe_failed: AtomicBool,
}

/// How fast a worker turns work into first tokens: moving averages (1/16) of the seconds
/// from dispatch to first token and of the blocks of work the policy predicted for those
/// requests, as `f64` bits; both 0 before the first sample.
#[derive(Debug, Default)]
struct Pace {
    secs: AtomicU64,
    blocks: AtomicU64,
}

impl Pace {
    fn observe(cell: &AtomicU64, sample: f64) {
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let new = if bits == 0 {
                sample
            } else {
                old + (sample - old) / 16.0
            };
            Some(new.to_bits())
        });
    }
}

/// Bytes of prompt text per token assumed before a worker has reported any usage: about
/// what the tokenizers of common models give on English text.
pub const DEFAULT_BYTES_PER_TOKEN: f64 = 4.0;

/// The header naming the data-parallel rank a request is for.
pub static X_DATA_PARALLEL_RANK: http::HeaderName =
    http::HeaderName::from_static("x-data-parallel-rank");

impl Worker {
    /// A new worker, not yet healthy (it becomes healthy once it has listed its models). A
    /// spec with several ranks gives rank 0 here; [`Worker::ranks`] gives them all.
    pub fn new(spec: impl Into<WorkerSpec>) -> Self {
        let spec = spec.into();
        let rank = (spec.ranks.get() > 1).then_some(0);
        Self::rank_of(&spec, rank, Arc::default())
    }

    /// One worker per data-parallel rank of `spec` (one, without a rank, for a single rank),
    /// all sharing one health state.
    pub fn ranks(spec: &WorkerSpec) -> Vec<Arc<Self>> {
        let health = Arc::new(Health::default());
        if spec.ranks.get() == 1 {
            return vec![Arc::new(Self::rank_of(spec, None, health))];
        }
        (0..spec.ranks.get())
            .map(|r| Arc::new(Self::rank_of(spec, Some(r), Arc::clone(&health))))
            .collect()
    }

    fn rank_of(spec: &WorkerSpec, rank: Option<u32>, health: Arc<Health>) -> Self {
        let label = match rank {
            Some(r) => format!("{}#{r}", spec.url.text),
            None => spec.url.text.clone(),
        };
        let header = HeaderValue::from_str(&label).unwrap_or(HeaderValue::from_static("invalid"));
        let url = &spec.url;
        let default_port = if url.scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let port = url.authority.port_u16().unwrap_or(default_port);
        let addr = HeaderValue::from_str(&format!("{}:{port}", url.authority.host()))
            .unwrap_or(HeaderValue::from_static("invalid"));
        let server = format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(spec.url.text.as_bytes())
        );
        let opaque = match rank {
            Some(r) => HeaderValue::from_str(&format!("{server}#{r}")),
            None => HeaderValue::from_str(&server),
        }
        .unwrap_or(HeaderValue::from_static("invalid"));
        Self {
            id: xxhash_rust::xxh3::xxh3_64(label.as_bytes()),
            rank,
            rank_header: rank.map(HeaderValue::from),
            label,
            header,
            addr,
            opaque,
            server,
            engine: ArcSwapOption::empty(),
            in_flight: AtomicUsize::new(0),
            booked_prefill: AtomicU64::new(0),
            awaiting_first: AtomicUsize::new(0),
            bytes_per_token_x1024: AtomicU64::new(0),
            pace: Pace::default(),
            served: AtomicU64::new(0),
            recent: Recent::default(),
            health,
            breaker: Breaker::default(),
            spec: spec.clone(),
        }
    }

    /// The spec the worker was made from (every rank has its URL's spec).
    pub fn spec(&self) -> &WorkerSpec {
        &self.spec
    }

    /// Its share of requests relative to others (`round_robin`, `random`).
    pub fn weight(&self) -> u32 {
        self.spec.weight.get()
    }

    /// Whether the worker is draining: it gets no new requests while its in-flight ones
    /// finish. Shared by every rank of the URL.
    pub fn is_draining(&self) -> bool {
        self.health.draining.load(Ordering::Relaxed)
    }

    /// Start or stop draining; returns the previous state.
    pub fn set_draining(&self, draining: bool) -> bool {
        self.health.draining.swap(draining, Ordering::Relaxed)
    }

    /// Whether new requests may go to the worker: healthy and not draining.
    pub fn is_routable(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    /// The URL, with `#RANK` for one data-parallel rank of it: names the worker in logs,
    /// metrics and the `x-vllm-router-worker` header.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Regular, prefill or decode.
    pub fn role(&self) -> Role {
        self.spec.role
    }

    /// The data-parallel rank this worker stands for, when the URL has several.
    pub fn rank(&self) -> Option<u32> {
        self.rank
    }

    /// The `X-data-parallel-rank` value for this rank, when the URL has several.
    pub fn rank_header(&self) -> Option<&HeaderValue> {
        self.rank_header.as_ref()
    }

    /// A prefill worker's Mooncake bootstrap port, when configured.
    pub fn bootstrap_port(&self) -> Option<u16> {
        self.spec.bootstrap_port
    }

    /// The engine's ZMQ address, for workers registered by P2P NCCL discovery.
    pub fn zmq_address(&self) -> Option<&str> {
        self.spec.zmq_address.as_deref()
    }

    /// The worker's host, as in its URL.
    pub fn host(&self) -> &str {
        self.spec.url.authority.host()
    }

    /// The worker's canonical base URL.
    pub fn url(&self) -> &str {
        &self.spec.url.text
    }

    /// The worker's circuit breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Requests the worker serves at once, when configured.
    pub fn capacity(&self) -> Option<NonZeroU32> {
        self.spec.capacity
    }

    /// The worker's opaque name: its server id (as in the admin API), with `#rank`.
    pub fn opaque_value(&self) -> &HeaderValue {
        &self.opaque
    }

    /// How an error a client receives names this worker: by URL when `urls`, else by its
    /// opaque name.
    pub fn name_for_clients(&self, urls: bool) -> String {
        if urls {
            self.label.clone()
        } else {
            self.opaque.to_str().unwrap_or_default().to_owned()
        }
    }

    /// A stable 64-bit id derived from the URL: the same on every router replica.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The id of the worker's server (its URL) in the admin API and the live view: stable
    /// across replicas, and shared by the ranks of one URL.
    pub fn server_id(&self) -> String {
        self.server.clone()
    }

    /// The last engine sample from `/metrics`, fresh or not.
    pub fn engine_sample(&self) -> Option<Arc<EngineSample>> {
        self.engine.load_full()
    }

    /// Publish a new engine sample, or withdraw it.
    pub fn set_engine_sample(&self, sample: Option<Arc<EngineSample>>) {
        self.engine.store(sample);
    }

    /// The worker's load now: in-flight, refined by the engine's gauges while they are fresh.
    pub fn load(&self, now: Instant) -> Load {
        let in_flight = u32::try_from(self.in_flight()).unwrap_or(u32::MAX);
        Load::new(in_flight, self.engine.load().as_deref(), now)
    }

    /// The base URL (with `#rank` for a data-parallel rank) as a response header value
    /// (`x-vllm-router-worker`).
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// `host:port` of the server (`X-Upstream-Addr`).
    pub fn addr_value(&self) -> &HeaderValue {
        &self.addr
    }

    /// Requests forwarded to this worker whose response body has not ended yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests ever forwarded to this worker.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The requests this worker answered lately.
    pub fn recent(&self) -> &Recent {
        &self.recent
    }

    /// Whether the worker may receive requests.
    pub fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed)
    }

    /// Record a health verdict; returns the previous one.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.health.healthy.swap(healthy, Ordering::Relaxed)
    }

    /// Record a failure (a failed probe, or a reset, 5xx or timeout on live traffic); the
    /// `threshold`-th in a row takes the worker out of rotation. True when this one did.
    pub fn record_failure(&self, threshold: u32) -> bool {
        self.health.good_probes.store(0, Ordering::Relaxed);
        let consecutive = self
            .health
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        consecutive >= threshold && self.set_healthy(false)
    }

    /// Take the worker out of rotation at once (it refused a connection). True when it was in.
    pub fn eject(&self) -> bool {
        self.health.good_probes.store(0, Ordering::Relaxed);
        self.set_healthy(false)
    }

    /// Record a request the worker answered (any status it chose, 4xx included).
    pub fn record_success(&self) {
        if self.health.failures.load(Ordering::Relaxed) != 0 {
            self.health.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the worker is failing its health checks: out of rotation, or its last probe
    /// failed.
    pub fn failing_health_checks(&self) -> bool {
        !self.is_healthy() || self.health.probe_failed.load(Ordering::Relaxed)
    }

    /// Record a failed health probe (and a failure toward `threshold`, as
    /// [`Worker::record_failure`]).
    pub fn record_failed_probe(&self, threshold: u32) -> bool {
        self.health.probe_failed.store(true, Ordering::Relaxed);
        self.record_failure(threshold)
    }

    /// A probe passed while the worker is in rotation: its live-traffic failures still count.
    pub fn clear_failed_probe(&self) {
        self.health.probe_failed.store(false, Ordering::Relaxed);
    }

    /// Record a good health probe; true once `threshold` in a row say an unhealthy worker
    /// may return.
    pub fn record_good_probe(&self, threshold: u32) -> bool {
        self.health.probe_failed.store(false, Ordering::Relaxed);
        self.health.failures.store(0, Ordering::Relaxed);
        self.health
            .good_probes
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
            >= threshold
    }

    /// Count a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.begin_booked(0)
    }

    /// Count a request as in flight, and book `prefill_blocks` of prefill work on the worker
    /// until its first token comes back or the guard drops, whichever is first.
    pub fn begin_booked(self: &Arc<Self>, prefill_blocks: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.awaiting_first.fetch_add(1, Ordering::Relaxed);
        if prefill_blocks > 0 {
            self.booked_prefill
                .fetch_add(prefill_blocks, Ordering::Relaxed);
        }
        InFlight {
            worker: Arc::clone(self),
            booked: prefill_blocks,
            awaiting: true,
            timed: None,
        }
    }

    /// Count a request the router has placed on this worker but not sent yet (a P/D decode
    /// leg waits for its prefill) as in flight until the returned guard drops, so that the
    /// requests placed meanwhile see it; nothing is booked and nothing served.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Reservation {
            worker: Arc::clone(self),
        }
    }

    /// Blocks of prefill work booked on the worker and not yet answered.
    pub fn booked_prefill(&self) -> u64 {
        self.booked_prefill.load(Ordering::Relaxed)
    }

    /// Requests in flight to the worker whose first token has not come back: those the
    /// engine may be holding in its queue or prefilling.
    pub fn awaiting_first(&self) -> usize {
        self.awaiting_first.load(Ordering::Relaxed)
    }

    /// Learn from a finished request: its canonical prompt had `prompt_bytes` bytes and the
    /// worker reported `prompt_tokens` tokens for it. The first report sets the ratio; later
    /// ones move it by a sixteenth of the difference.
    pub fn observe_prompt(&self, prompt_bytes: usize, prompt_tokens: u64) {
        if prompt_bytes == 0 || prompt_tokens == 0 {
            return;
        }
        let sample = (prompt_bytes as u64).saturating_mul(1024) / prompt_tokens;
        let sample = sample.max(1);
        let _ =
            self.bytes_per_token_x1024
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    Some(if old == 0 {
                        sample
                    } else {
                        // old + (sample - old) / 16, rounded.
                        (old * 15 + sample + 8) / 16
                    })
                });
    }

    /// Bytes of canonical prompt text per token on this worker: learned from the usage it
    /// reports ([`Worker::observe_prompt`]), [`DEFAULT_BYTES_PER_TOKEN`] until it has.
    pub fn bytes_per_token(&self) -> f64 {
        self.learned_bytes_per_token()
            .unwrap_or(DEFAULT_BYTES_PER_TOKEN)
    }

    /// [`Worker::bytes_per_token`] once learned.
    pub fn learned_bytes_per_token(&self) -> Option<f64> {
        match self.bytes_per_token_x1024.load(Ordering::Relaxed) {
            0 => None,
            x => Some(x as f64 / 1024.0),
        }
    }

    /// Learn from a request whose first token came back `elapsed` after it was sent, with
    /// `work_blocks` blocks of work predicted for it (the work ahead of it there, its own
    /// prefill, and one block for the fixed cost of any request).
    pub fn observe_first_token(&self, elapsed: std::time::Duration, work_blocks: f64) {
        if !(work_blocks.is_finite() && work_blocks > 0.0) {
            return;
        }
        Pace::observe(&self.pace.secs, elapsed.as_secs_f64().max(1e-6));
        Pace::observe(&self.pace.blocks, work_blocks);
    }

    /// Seconds this worker takes per block of predicted work, as its first tokens showed
    /// (the ratio of the two averages, so that light requests do not dominate); `None`
    /// before any request was timed. A slower GPU or a busier engine shows a larger figure.
    pub fn secs_per_block(&self) -> Option<f64> {
        let blocks = f64::from_bits(self.pace.blocks.load(Ordering::Relaxed));
        let secs = f64::from_bits(self.pace.secs.load(Ordering::Relaxed));
        (blocks > 0.0 && secs > 0.0).then(|| secs / blocks)
    }

    /// The upstream URI for a client's path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let pq = if self.spec.url.prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)?
        } else {
            PathAndQuery::try_from(format!("{}{}", self.spec.url.prefix, path_and_query))?
        };
        let mut parts = uri::Parts::default();
        parts.scheme = Some(self.spec.url.scheme.clone());
        parts.authority = Some(self.spec.url.authority.clone());
        parts.path_and_query = Some(pq);
        Ok(Uri::from_parts(parts)?)
    }
}

/// Holds one unit of a worker's in-flight count, and the request's booked prefill work;
/// dropping it releases both. It lives inside the response body, so the count lasts until
/// the stream ends or the client leaves.
#[derive(Debug)]
pub struct InFlight {
    worker: Arc<Worker>,
    booked: u64,
    awaiting: bool,
    /// When the request was sent and the blocks of work predicted for it, while its first
    /// token is to be timed ([`InFlight::first_token`]).
    timed: Option<(Instant, f64)>,
}

impl InFlight {
    /// The worker this request occupies.
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }

    /// Time this request's first token against `work_blocks` of predicted work, from now.
    pub fn time_first_token(&mut self, work_blocks: f64) {
        self.timed = Some((Instant::now(), work_blocks));
    }

    /// Do not time this request: its first bytes do not mark its first token (an answer
    /// that is not an event stream comes whole, after the generation), or it failed.
    pub fn untimed(&mut self) {
        self.timed = None;
    }

    /// The first token came back: the worker learns its pace from the request if it was
    /// timed, and the request's booking ends.
    pub fn first_token(&mut self) {
        if let Some((sent, work)) = self.timed.take() {
            self.worker.observe_first_token(sent.elapsed(), work);
        }
        self.prefilled();
    }

    /// The request's prefill is done (or it ended): its booking ends, untimed.
    pub fn prefilled(&mut self) {
        self.timed = None;
        if std::mem::take(&mut self.awaiting) {
            self.worker.awaiting_first.fetch_sub(1, Ordering::Relaxed);
        }
        if self.booked > 0 {
            self.worker
                .booked_prefill
                .fetch_sub(std::mem::take(&mut self.booked), Ordering::Relaxed);
        }
    }
}

/// A unit of a worker's in-flight count for a request placed there and not yet sent
/// ([`Worker::reserve`]); dropping it releases the unit.
#[derive(Debug)]
pub struct Reservation {
    worker: Arc<Worker>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.prefilled();
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
