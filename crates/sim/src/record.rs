//! What the server saw: a ring of per-request records and the counters behind `SimStats`.
//! Tests read these to prove what reached a worker, with which headers and body, and whether
//! the client stayed to the end.

mod tracker;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::Engine;

pub(crate) use tracker::{TrackedBody, Tracker};

/// How many records are kept; older ones are dropped first.
pub const RECORD_CAPACITY: usize = 10_000;

/// One inference (or unknown-path) request as the server received it.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// Request path, without the query.
    pub path: String,
    /// The `X-Request-Id` header as received.
    pub request_id: Option<String>,
    /// Every request header in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body length in bytes.
    pub body_len: usize,
    /// SHA-256 of the body, lowercase hex.
    pub body_sha256: String,
    /// The `model` field, if the body had one.
    pub model: Option<String>,
    /// Whether the request asked for a streamed answer.
    pub stream: bool,
    /// Prompt length in tokens (0 until the engine admitted it).
    pub prompt_tokens: u32,
    /// Prompt tokens served from the prefix cache (or from a remote prefill).
    pub cached_tokens: u32,
    /// The data-parallel rank whose engine took the request; 0 for requests no engine took
    /// (pooling, tokenizing, or refused before a rank was chosen).
    pub dp_rank: u32,
    /// When the request head arrived.
    #[serde(skip)]
    pub received_at: Instant,
    /// When the last byte of the answer was handed to the connection.
    #[serde(skip)]
    pub finished_at: Option<Instant>,
    /// When the client went away before the answer was complete.
    #[serde(skip)]
    pub cancelled_at: Option<Instant>,
    /// The client went away before the answer was complete.
    pub cancelled: bool,
    /// Response status; 0 while no response was produced.
    pub status: u16,
    /// The `kv_transfer_params` object the request carried.
    pub kv_transfer_params: Option<serde_json::Value>,
}

/// Counters since start. `completed + cancelled` equals the recorded requests no longer in flight.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimStats {
    /// Every HTTP request received, on any path.
    pub requests_total: u64,
    /// Requests per path, control paths included.
    pub by_path: BTreeMap<String, u64>,
    /// Recorded requests whose whole answer (any status) was handed to the connection.
    pub completed: u64,
    /// Recorded requests whose client left before the answer was complete.
    pub cancelled: u64,
    /// Answers replaced by an injected error (`X-Return-Error` or `error_rate`).
    pub errors_injected: u64,
    /// Sequences in the running batches now, over all ranks.
    pub running: u64,
    /// Requests queued for a batch slot now, over all ranks.
    pub waiting: u64,
    /// Prompt tokens admitted into the engines.
    pub prompt_tokens_total: u64,
    /// Of those, tokens served from the prefix cache or a remote prefill.
    pub cached_tokens_total: u64,
    /// The same engine counters for each data-parallel rank, rank 0 first.
    pub ranks: Vec<RankStats>,
}

/// One data-parallel rank's engine counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RankStats {
    /// The rank.
    pub rank: u32,
    /// Sequences in this rank's running batch now.
    pub running: u64,
    /// Requests queued for this rank's batch now.
    pub waiting: u64,
    /// Fraction (0..=1) of this rank's KV blocks held by running sequences.
    pub kv_cache_usage: f64,
    /// Prompt tokens this rank admitted.
    pub prompt_tokens_total: u64,
    /// Of those, tokens served from this rank's prefix cache or a remote prefill.
    pub cached_tokens_total: u64,
}

impl RankStats {
    fn of(engine: &Engine) -> Self {
        let c = &engine.counters;
        Self {
            rank: engine.rank(),
            running: c.running.load(Relaxed),
            waiting: c.waiting.load(Relaxed),
            kv_cache_usage: engine.kv_usage(),
            prompt_tokens_total: c.prompt_tokens.load(Relaxed),
            cached_tokens_total: c.cached_tokens.load(Relaxed),
        }
    }
}

/// Shared handle to a record that the request path keeps filling in.
pub(crate) type RecordCell = Arc<Mutex<RequestRecord>>;

/// The ring of records plus request counters.
#[derive(Default)]
pub(crate) struct Recorder {
    ring: Mutex<VecDeque<RecordCell>>,
    by_path: Mutex<BTreeMap<String, u64>>,
    requests_total: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) errors_injected: AtomicU64,
}

impl Recorder {
    /// Counts one request on `path`.
    pub(crate) fn count(&self, path: &str) {
        self.requests_total.fetch_add(1, Relaxed);
        let mut by_path = self.by_path.lock();
        match by_path.get_mut(path) {
            Some(n) => *n += 1,
            None => {
                by_path.insert(path.to_owned(), 1);
            }
        }
    }

    /// Starts a record for a request whose head has arrived; the body comes with [`set_body`].
    pub(crate) fn open(&self, parts: &http::request::Parts, received_at: Instant) -> RecordCell {
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), value)
            })
            .collect();
        let request_id = parts
            .headers
            .get("x-request-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let cell = Arc::new(Mutex::new(RequestRecord {
            path: parts.uri.path().to_owned(),
            request_id,
            headers,
            body_len: 0,
            body_sha256: String::new(),
            model: None,
            stream: false,
            prompt_tokens: 0,
            cached_tokens: 0,
            dp_rank: 0,
            received_at,
            finished_at: None,
            cancelled_at: None,
            cancelled: false,
            status: 0,
            kv_transfer_params: None,
        }));
        let mut ring = self.ring.lock();
        if ring.len() == RECORD_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(cell.clone());
        cell
    }

    /// Copies of the kept records, oldest first.
    pub(crate) fn records(&self) -> Vec<RequestRecord> {
        let cells: Vec<RecordCell> = self.ring.lock().iter().cloned().collect();
        cells.iter().map(|c| c.lock().clone()).collect()
    }

    pub(crate) fn stats(&self, engines: &[Arc<Engine>]) -> SimStats {
        let ranks: Vec<RankStats> = engines.iter().map(|e| RankStats::of(e)).collect();
        SimStats {
            requests_total: self.requests_total.load(Relaxed),
            by_path: self.by_path.lock().clone(),
            completed: self.completed.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            errors_injected: self.errors_injected.load(Relaxed),
            running: ranks.iter().map(|r| r.running).sum(),
            waiting: ranks.iter().map(|r| r.waiting).sum(),
            prompt_tokens_total: ranks.iter().map(|r| r.prompt_tokens_total).sum(),
            cached_tokens_total: ranks.iter().map(|r| r.cached_tokens_total).sum(),
            ranks,
        }
    }
}

/// Fills in the body's length and digest once it has been read.
pub(crate) fn set_body(record: &RecordCell, body: &[u8]) {
    let digest = sha256_hex(body);
    let mut rec = record.lock();
    rec.body_len = body.len();
    rec.body_sha256 = digest;
}

fn sha256_hex(body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(body);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ring_keeps_the_newest() {
        let rec = Recorder::default();
        let (parts, ()) = http::Request::post("/x").body(()).unwrap().into_parts();
        for _ in 0..RECORD_CAPACITY + 5 {
            rec.open(&parts, Instant::now());
        }
        assert_eq!(rec.records().len(), RECORD_CAPACITY);
    }
}
