//! Prefill/decode disaggregation: chat and completions become a plan of two legs, a prefill
//! leg that computes the prompt on a prefill worker and a decode leg that streams the answer
//! from a decode worker. Both legs go through the same [`Leg`] as regular requests (retries,
//! breakers, in-flight, timeouts, metrics) and carry the same `X-Request-Id`.
//!
//! A pair is always of one connector: workers registered by ZMQ discovery pair by P2P NCCL,
//! static `--prefill`/`--decode` workers by `--kv-connector` (NIXL unless told otherwise).
//!
//! - NIXL: the prefill answers with `kv_transfer_params`, passed verbatim to the decode leg.
//!   A prefill that fails (connect, 5xx, no parameters) is retried on another prefill worker;
//!   a decode that fails before its first byte is retried on another decode worker with the
//!   same parameters (the blocks wait on the prefill worker for whoever pulls them).
//! - P2P NCCL: the request id names both engines' ZMQ addresses. A prefill failure is retried
//!   on another prefill worker under a new id; a decode failure re-runs the plan with another
//!   decode worker, since the prompt was pushed to the failed one.
//! - Mooncake: the router mints a transfer id and names the prefill's bootstrap server and
//!   engine in both legs, which run together; nothing is read back from the prefill.
//!
//! Conditional prefill (`--pd-min-uncached-tokens`) sends a request straight to the decode
//! worker when the prompt is short or that worker is expected to hold most of it. A prefill
//! failure never becomes a full recompute on the decode worker unless
//! `--pd-recompute-on-prefill-failure` says so.

mod affinity;
mod body;
mod mooncake;

use std::sync::Arc;

use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use self::affinity::Affinity;
use self::body::Fields;
use crate::app::App;
use crate::cli::KvConnector;
use crate::config::PdConfig;
use crate::error::ApiError;
use crate::fleet::{Pool, Worker};
use crate::policy::{Decision, Policy, PolicyConfig};
use crate::prefix::chain_hashes;
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::{self, Answer, Inbound, Leg, Stage};
use crate::telemetry::usage::UsageScan;
use crate::upstream::UpstreamBody;

/// The parameters of a NIXL prefill leg: "compute, keep the blocks for a remote decode".
const NIXL_PREFILL_PARAMS: &str = r#"{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}"#;

/// Largest prefill answer read (it carries one token and the transfer parameters).
const MAX_PREFILL_ANSWER: usize = 4 * 1024 * 1024;

/// Whether requests to `path` go through the two-leg plan; other routes go to one worker.
pub(crate) fn applies(path: &str) -> bool {
    matches!(path, "/v1/chat/completions" | "/v1/completions")
}

/// The P/D settings, the two policies and what conditional prefill has learned.
#[derive(Debug)]
pub struct Pd {
    config: PdConfig,
    prefill: Arc<dyn Policy>,
    decode: Arc<dyn Policy>,
    affinity: Affinity,
    bootstrap: mooncake::Bootstrap,
}

impl Pd {
    /// Build the prefill and decode policies.
    pub fn new(config: PdConfig, policies: &PolicyConfig) -> Self {
        Self {
            prefill: config.prefill_policy.build(policies),
            decode: config.decode_policy.build(policies),
            affinity: Affinity::new(policies.cache_aware.max_tree_size),
            bootstrap: mooncake::Bootstrap::default(),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PdConfig {
        &self.config
    }

    /// The prefill and decode policies (both hear of fleet changes).
    pub fn policies(&self) -> [Arc<dyn Policy>; 2] {
        [Arc::clone(&self.prefill), Arc::clone(&self.decode)]
    }

    /// The prefill policy.
    pub fn prefill_policy(&self) -> &dyn Policy {
        self.prefill.as_ref()
    }

    /// The decode policy.
    pub fn decode_policy(&self) -> &dyn Policy {
        self.decode.as_ref()
    }

    /// Whether the plan needs the canonical prompt.
    pub(crate) fn wants_prompt(&self) -> bool {
        self.config.min_uncached_tokens > 0
            || self.prefill.wants_prompt()
            || self.decode.wants_prompt()
    }

    /// Run the plan for one request.
    pub(crate) async fn forward(
        &self,
        app: &App,
        request: &Inbound<'_>,
        slot: crate::admission::Permit,
    ) -> Result<Response, ApiError> {
        let fields = Fields::parse(request.body)?;
        let model = request.route_req.model;
        let decodes = proxy::candidates(app, &request.config, Pool::Decode, model)?;
        let mut decode = Leg::new(app, Stage::Decode, self.decode.as_ref(), request, decodes);
        let plan = Plan {
            app,
            pd: self,
            request,
            fields,
            chain: self.chain(request.route_req.prompt),
            slot,
        };
        let Some(chosen) = decode.choose() else {
            return Err(decode.no_worker());
        };
        // The decode leg is sent once the prefill is done: until then the worker counts it,
        // or every request arriving meanwhile would see the same least loaded worker.
        let _placed = chosen.0.reserve();
        let skips = match (request.route_req.prompt, &plan.chain) {
            (Some(prompt), Some(chain)) => self.skips_prefill(&chosen.0, prompt, chain),
            _ => false,
        };
        if skips {
            app.metrics.pd_plan("skipped");
            tracing::debug!(
                request_id = request.route_req.request_id,
                worker = chosen.0.label(),
                "conditional prefill: straight to decode"
            );
            let body = request.body.clone();
            return plan
                .decode(decode, chosen, body, request.worker_headers())
                .await;
        }
        // A pair is of one connector: discovered (P2P NCCL) decode workers pair with
        // discovered prefill workers, static ones with static ones.
        let p2p = chosen.0.zmq_address().is_some();
        let prefills: Vec<Arc<Worker>> =
            proxy::candidates(app, &request.config, Pool::Prefill, model)?
                .into_iter()
                .filter(|w| w.zmq_address().is_some() == p2p)
                .collect();
        if p2p {
            return plan.p2p(prefills, decode, chosen).await;
        }
        let prefill = plan.prefill_leg(prefills);
        match self.config.connector {
            KvConnector::Nixl => plan.nixl(prefill, decode, chosen).await,
            KvConnector::Mooncake => plan.mooncake(prefill, decode, chosen).await,
        }
    }

    /// Tokens of `prompt` (whose blocks are `chain`) not expected in `decode`'s prefix cache
    /// (text at the bytes per token `decode` has shown, see [`Worker::bytes_per_token`]).
    pub(crate) fn uncached_tokens(&self, decode: &Worker, prompt: &str, chain: &[u64]) -> usize {
        let matched = self.affinity.matched_bytes(decode, chain);
        (prompt.len().saturating_sub(matched) as f64 / decode.bytes_per_token()) as usize
    }

    /// Conditional prefill: fewer than `--pd-min-uncached-tokens` of the prompt's tokens are
    /// not expected in `decode`'s cache.
    pub(crate) fn skips_prefill(&self, decode: &Worker, prompt: &str, chain: &[u64]) -> bool {
        let min = self.config.min_uncached_tokens as usize;
        min > 0 && self.uncached_tokens(decode, prompt, chain) < min
    }

    /// The prompt's block chain, hashed once per request, when conditional prefill is on and
    /// the prompt is known.
    pub(crate) fn chain(&self, prompt: Option<&str>) -> Option<Vec<u64>> {
        if self.config.min_uncached_tokens == 0 {
            return None;
        }
        prompt.map(|p| chain_hashes(p.as_bytes()))
    }
}

/// One request's plan in progress.
struct Plan<'a> {
    app: &'a App,
    pd: &'a Pd,
    request: &'a Inbound<'a>,
    fields: Fields<'a>,
    chain: Option<Vec<u64>>,
    /// The admission slot, handed to the response body.
    slot: crate::admission::Permit,
}

impl<'a> Plan<'a> {
    /// The prefill leg over these candidates.
    fn prefill_leg(&self, candidates: Vec<Arc<Worker>>) -> Leg<'a> {
        Leg::new(
            self.app,
            Stage::Prefill,
            self.pd.prefill.as_ref(),
            self.request,
            candidates,
        )
    }

    /// NIXL: prefill (with failover) until an answer carries its transfer parameters, then
    /// decode with them.
    async fn nixl(
        self,
        mut prefill: Leg<'_>,
        decode: Leg<'_>,
        chosen: (Arc<Worker>, Decision),
    ) -> Result<Response, ApiError> {
        let request = self.request;
        let prefill_body = body::prefill(&self.fields, Some(NIXL_PREFILL_PARAMS));
        let build = |w: &Worker| {
            request.upstream_request(w, prefill_body.clone(), request.worker_headers())
        };
        let params = match run_prefill(&mut prefill, None, build, transfer_params).await {
            Prefilled::Ready(params, _) => params,
            Prefilled::Refused(answer) => return Ok(self.respond(*answer)),
            Prefilled::Failed(error) => return self.prefill_failed(decode, chosen, error).await,
        };
        self.app.metrics.pd_plan("prefilled");
        let body = body::decode(&self.fields, &params);
        self.decode(decode, chosen, body, request.worker_headers())
            .await
    }

    /// P2P NCCL: the id names the pair, so the prefill worker and the id are chosen together,
    /// and a decode failure re-runs the plan on another decode worker.
    async fn p2p(
        self,
        prefills: Vec<Arc<Worker>>,
        mut decodes: Leg<'_>,
        mut chosen: (Arc<Worker>, Decision),
    ) -> Result<Response, ApiError> {
        let request = self.request;
        let prefill_body = body::prefill(&self.fields, None);
        let mut replans = 0u32;
        loop {
            // Each plan may use any prefill worker again: the id names the new pair.
            let mut prefill = self.prefill_leg(prefills.clone());
            let nonce = uuid::Uuid::new_v4().simple().to_string();
            let decode_zmq = chosen.0.zmq_address().unwrap_or_default().to_owned();
            let id_for = |p: &Worker| {
                format!(
                    "___prefill_addr_{}___decode_addr_{decode_zmq}_{nonce}",
                    p.zmq_address().unwrap_or_default()
                )
            };
            let headers_for = |id: &str| -> Result<HeaderMap, ApiError> {
                let mut headers = request.worker_headers();
                let value = HeaderValue::from_str(id)
                    .map_err(|e| ApiError::Internal(format!("P2P request id: {e}")))?;
                headers.insert(X_REQUEST_ID.clone(), value);
                Ok(headers)
            };
            let build = |w: &Worker| {
                request.upstream_request(w, prefill_body.clone(), headers_for(&id_for(w))?)
            };
            let prefilled = match run_prefill(&mut prefill, None, build, whole).await {
                Prefilled::Ready((), worker) => worker,
                Prefilled::Refused(answer) => return Ok(self.respond(*answer)),
                Prefilled::Failed(error) => {
                    return self.prefill_failed(decodes, chosen, error).await;
                }
            };
            let headers = headers_for(&id_for(&prefilled))?;
            // The prompt went to this decode worker alone: no failover to another with the
            // same id.
            let mut only = Leg::new(
                self.app,
                Stage::Decode,
                self.pd.decode.as_ref(),
                request,
                Vec::new(),
            );
            let sent = only
                .send(Some(chosen), |w| {
                    request.upstream_request(w, request.body.clone(), headers.clone())
                })
                .await;
            match sent {
                Ok(answer) => {
                    self.app.metrics.pd_plan("prefilled");
                    return Ok(self.finish(answer));
                }
                Err(error) => {
                    let retry = &request.config.retry;
                    let next = (replans < retry.max_retries
                        && Instant::now() < request.deadline
                        && self.app.retry_budget.try_spend())
                    .then(|| decodes.choose())
                    .flatten();
                    let Some(next) = next else { return Err(error) };
                    replans += 1;
                    self.app.metrics.retried("decode_replan");
                    tracing::debug!(request_id = request.route_req.request_id, worker = next.0.label(), %error, "decode failed; new plan on another decode worker");
                    chosen = next;
                }
            }
        }
    }

    /// Mooncake: both legs at once, the decode told where the prefill's bootstrap server is;
    /// the answer is sent once the prefill finished and the decode answered.
    async fn mooncake(
        self,
        mut prefill: Leg<'_>,
        decode: Leg<'_>,
        chosen: (Arc<Worker>, Decision),
    ) -> Result<Response, ApiError> {
        let request = self.request;
        let app = self.app;
        // The prefill worker comes first: the decode leg names its engine.
        let (p, p_decision, engine) = loop {
            let Some((p, decision)) = prefill.choose() else {
                let error = prefill.no_worker();
                return self.prefill_failed(decode, chosen, error).await;
            };
            match self.pd.bootstrap.engine(app, &p).await {
                Ok(engine) => break (p, decision, engine),
                Err(error) => {
                    tracing::warn!(worker = p.label(), %error, "Mooncake bootstrap server unavailable; trying another prefill worker");
                }
            }
        };
        let transfer_id = uuid::Uuid::new_v4().simple().to_string();
        let prefill_params = serde_json::json!({
            "do_remote_decode": true,
            "do_remote_prefill": false,
            "transfer_id": transfer_id,
        })
        .to_string();
        let decode_params = serde_json::json!({
            "do_remote_decode": false,
            "do_remote_prefill": true,
            "remote_bootstrap_addr": engine.bootstrap_addr,
            "remote_engine_id": engine.engine_id,
            "remote_dp_rank": p.rank().unwrap_or(0),
            "transfer_id": transfer_id,
        })
        .to_string();
        let prefill_body = body::prefill(&self.fields, Some(&prefill_params));
        let decode_body = body::decode(&self.fields, &decode_params);
        // The prefill goes to the worker the decode was told of, and nowhere else.
        let mut one = Leg::new(
            app,
            Stage::Prefill,
            self.pd.prefill.as_ref(),
            request,
            Vec::new(),
        );
        let build = |w: &Worker| {
            request.upstream_request(w, prefill_body.clone(), request.worker_headers())
        };
        let prefill_done = async {
            match run_prefill(&mut one, Some((p, p_decision)), build, whole).await {
                Prefilled::Ready((), _) => Ok(()),
                Prefilled::Refused(answer) => Err(ApiError::BadGateway {
                    worker: answer
                        .worker
                        .name_for_clients(request.config.exposure.error_urls),
                    reason: format!("prefill answered {}", answer.response.status()),
                }),
                Prefilled::Failed(error) => Err(error),
            }
        };
        let mut decode = decode;
        let decode_answer = decode.send(Some(chosen), |w| {
            request.upstream_request(w, decode_body.clone(), request.worker_headers())
        });
        tokio::pin!(prefill_done, decode_answer);
        // The answer goes out once the prefill finished and the decode answered. A failed
        // prefill leaves the decode waiting for blocks that never come: it is dropped
        // (cancelled) with its future.
        let answer = tokio::select! {
            done = &mut prefill_done => {
                done?;
                decode_answer.await?
            }
            sent = &mut decode_answer => {
                let answer = sent?;
                prefill_done.await?;
                answer
            }
        };
        app.metrics.pd_plan("prefilled");
        Ok(self.finish(answer))
    }

    /// Every prefill attempt failed: the error, or (when configured) the whole request on the
    /// decode worker.
    async fn prefill_failed(
        self,
        decode: Leg<'_>,
        chosen: (Arc<Worker>, Decision),
        error: ApiError,
    ) -> Result<Response, ApiError> {
        if !self.pd.config.recompute_on_prefill_failure {
            return Err(error);
        }
        tracing::warn!(request_id = self.request.route_req.request_id, %error, "prefill failed; the decode worker computes the prompt");
        self.app.metrics.pd_plan("recomputed");
        let body = self.request.body.clone();
        let headers = self.request.worker_headers();
        self.decode(decode, chosen, body, headers).await
    }

    /// The decode leg, with failover to other decode workers with the same body.
    async fn decode(
        self,
        mut leg: Leg<'_>,
        chosen: (Arc<Worker>, Decision),
        body: Bytes,
        headers: HeaderMap,
    ) -> Result<Response, ApiError> {
        let request = self.request;
        let answer = leg
            .send(Some(chosen), |w| {
                request.upstream_request(w, body.clone(), headers.clone())
            })
            .await?;
        Ok(self.finish(answer))
    }

    /// The decode answer goes to the client; conditional prefill learns what the decode
    /// worker now holds.
    fn finish(mut self, mut answer: Answer) -> Response {
        answer.accept(&self.request.config);
        if answer.response.status().is_success()
            && let Some(chain) = self.chain.take()
        {
            self.pd.affinity.insert(&answer.worker, &chain);
        }
        self.respond(answer)
    }

    fn respond(self, answer: Answer) -> Response {
        proxy::respond(self.app, self.request, answer, self.slot)
    }
}

/// How a prefill leg ended.
enum Prefilled<T> {
    /// A worker's whole answer passed the check, which gave this.
    Ready(T, Arc<Worker>),
    /// The client's request was refused (4xx): the decode worker would refuse it too.
    Refused(Box<Answer>),
    /// Every attempt failed.
    Failed(ApiError),
}

/// Send the prefill leg (to `first` if given) until a whole answer passes `check`. Nothing has
/// reached the client yet, so any failed prefill (connect, reset, timeout, any 5xx, an answer
/// `check` refuses) may move on to another prefill worker, within the retry limits. Answers
/// are read to their end, so their connections return to the pool.
async fn run_prefill<T>(
    leg: &mut Leg<'_>,
    first: Option<(Arc<Worker>, Decision)>,
    build: impl Fn(&Worker) -> Result<http::Request<UpstreamBody>, ApiError>,
    check: fn(&[u8]) -> Result<T, String>,
) -> Prefilled<T> {
    let started = Instant::now();
    let prefilled = prefill_attempts(leg, first, build, check).await;
    let outcome = match &prefilled {
        Prefilled::Ready(_, worker) => {
            leg.request().note(|e| e.prefilled_by(worker));
            "ready"
        }
        Prefilled::Refused(_) => "refused",
        Prefilled::Failed(_) => "failed",
    };
    leg.metrics().pd_leg("prefill", outcome, started);
    prefilled
}

async fn prefill_attempts<T>(
    leg: &mut Leg<'_>,
    mut first: Option<(Arc<Worker>, Decision)>,
    build: impl Fn(&Worker) -> Result<http::Request<UpstreamBody>, ApiError>,
    check: fn(&[u8]) -> Result<T, String>,
) -> Prefilled<T> {
    loop {
        let mut answer = match leg.send(first.take(), &build).await {
            Ok(answer) => answer,
            Err(error) => return Prefilled::Failed(error),
        };
        let status = answer.response.status();
        if status.is_client_error() {
            answer.accept(leg.config());
            return Prefilled::Refused(Box::new(answer));
        }
        let checked = if status.is_success() {
            read_limited(&mut answer, leg.deadline())
                .await
                .and_then(|bytes| {
                    learn_bytes_per_token(&answer.worker, leg.request(), &bytes);
                    check(&bytes)
                })
        } else {
            Err(format!("the prefill answered {status}"))
        };
        match checked {
            Ok(value) => {
                // The prefill's whole answer is its first token.
                answer.guard.first_token();
                answer.accept(leg.config());
                return Prefilled::Ready(value, Arc::clone(&answer.worker));
            }
            Err(reason) => {
                let error = ApiError::BadGateway {
                    worker: answer
                        .worker
                        .name_for_clients(leg.config().exposure.error_urls),
                    reason,
                };
                tracing::warn!(worker = answer.worker.label(), %error, "prefill failed");
                if let Err(error) = leg.reject(answer, error).await {
                    return Prefilled::Failed(error);
                }
            }
        }
    }
}

/// A prefill answer reports the prompt's tokens as any answer does: the prefill worker learns
/// its bytes per token from it (the client's answer teaches only the decode worker).
fn learn_bytes_per_token(worker: &Worker, request: &Inbound<'_>, answer: &[u8]) {
    let Some(prompt) = request.route_req.prompt else {
        return;
    };
    let mut scan = UsageScan::default();
    scan.observe(answer);
    if let Some(tokens) = scan.usage().prompt {
        worker.observe_prompt(prompt.len(), tokens);
    }
}

/// Any whole answer will do (P2P NCCL and Mooncake: the request id or transfer id carried
/// everything).
fn whole(_: &[u8]) -> Result<(), String> {
    Ok(())
}

/// Read the rest of a (small) answer within the deadline.
async fn read_limited(answer: &mut Answer, deadline: Instant) -> Result<Bytes, String> {
    let body = Limited::new(answer.response.body_mut(), MAX_PREFILL_ANSWER);
    match tokio::time::timeout_at(deadline, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(format!("the prefill answer broke off: {e}")),
        Err(_) => Err("the prefill answer did not end before the request deadline".into()),
    }
}

/// The `kv_transfer_params` object of a NIXL prefill answer, as its original text.
fn transfer_params(bytes: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct PrefillAnswer<'a> {
        #[serde(borrow)]
        kv_transfer_params: Option<&'a RawValue>,
    }
    let parsed: PrefillAnswer<'_> = serde_json::from_slice(bytes)
        .map_err(|e| format!("the prefill answer is not JSON: {e}"))?;
    match parsed.kv_transfer_params {
        Some(raw) if raw.get().trim_start().starts_with('{') => Ok(raw.get().to_owned()),
        _ => Err("the prefill answered without kv_transfer_params".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chat_and_completions_take_the_plan() {
        assert!(applies("/v1/chat/completions") && applies("/v1/completions"));
        for other in ["/v1/embeddings", "/tokenize", "/v1/models", "/v1/responses"] {
            assert!(!applies(other), "{other}");
        }
    }
}
