//! One request as the router saw it, from arrival to the end of its response: who served it,
//! its status, when its first and last bytes passed, and the tokens the worker reported. It is
//! recorded once, when it is dropped: into the metrics, and as the request's access line
//! (target `vllm_router::access`).

use std::sync::Arc;

use http::HeaderValue;
use tokio::time::Instant;

use super::metrics::{Metrics, Tally, WorkerSeries};
use super::trace::TraceId;
use super::usage::UsageScan;
use crate::fleet::Worker;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response reached the client.
    Complete,
    /// The router answered an error itself (no worker response was relayed).
    Refused,
    /// The response broke off after it began: the label says why (`upstream`, `stream_idle`,
    /// `total`, `shutdown`).
    Cut(&'static str),
    /// The client left before the response ended.
    ClientGone,
}

impl Outcome {
    /// The outcome's name in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Refused => "refused",
            Self::Cut(why) => why,
            Self::ClientGone => "client_gone",
        }
    }
}

/// Label of a request that named no model.
const NO_MODEL: &str = "none";
/// Label of a model no worker serves (client-chosen text never becomes a label).
const OTHER_MODEL: &str = "other";
/// Longest model name written to the access line.
const MAX_LOGGED_MODEL: usize = 256;

/// A request in progress; recorded when dropped.
#[derive(Debug)]
pub struct Exchange {
    metrics: Arc<Metrics>,
    request_id: HeaderValue,
    trace_id: TraceId,
    method: &'static str,
    route: &'static str,
    started: Instant,
    model: Option<String>,
    model_served: bool,
    worker: Option<Arc<Worker>>,
    prefill: Option<Arc<Worker>>,
    status: u16,
    sse: bool,
    /// The worker's series, once a worker answered (resolved once, not per event).
    series: Option<Arc<WorkerSeries>>,
    /// The times between streamed events, recorded into the series at the end.
    inter_tokens: Option<Tally>,
    first_frame: Option<Instant>,
    last_frame: Option<Instant>,
    usage: UsageScan,
    predicted_hit: Option<f64>,
    /// Bytes of the canonical prompt, when the router read it: with the prompt tokens the
    /// worker reports, the worker's bytes per token.
    prompt_bytes: Option<usize>,
    outcome: Option<Outcome>,
    error: Option<String>,
}

impl Exchange {
    /// A request to `route` arrived now, in the trace `trace_id`.
    pub fn begin(
        metrics: Arc<Metrics>,
        method: &'static str,
        route: &'static str,
        request_id: HeaderValue,
        trace_id: TraceId,
    ) -> Self {
        Self {
            metrics,
            request_id,
            trace_id,
            method,
            route,
            started: Instant::now(),
            model: None,
            model_served: false,
            worker: None,
            prefill: None,
            status: 0,
            sse: false,
            series: None,
            inter_tokens: None,
            first_frame: None,
            last_frame: None,
            usage: UsageScan::default(),
            predicted_hit: None,
            prompt_bytes: None,
            outcome: None,
            error: None,
        }
    }

    /// The model the request named.
    pub fn set_model(&mut self, model: Option<&str>) {
        self.model = model.map(logged_model);
    }

    /// The router read the request's canonical prompt, of `bytes` bytes.
    pub fn set_prompt_bytes(&mut self, bytes: Option<usize>) {
        self.prompt_bytes = bytes;
    }

    /// Some worker serves the request's model: it may label metrics.
    pub fn model_is_served(&mut self) {
        self.model_served = true;
    }

    /// The prefill worker of a P/D request.
    pub fn prefilled_by(&mut self, worker: &Arc<Worker>) {
        self.prefill = Some(Arc::clone(worker));
    }

    /// `worker` answered with `status`; `sse` when the answer is an event stream, and the
    /// policy's predicted prefix-cache hit when it made one.
    pub fn answered(
        &mut self,
        worker: &Arc<Worker>,
        status: u16,
        sse: bool,
        predicted_hit: Option<f64>,
    ) {
        self.worker = Some(Arc::clone(worker));
        self.status = status;
        self.sse = sse;
        self.predicted_hit = predicted_hit;
        let series = self.metrics.series(self.model_label(), worker.label());
        self.inter_tokens = sse.then(|| series.inter_token_tally());
        self.series = Some(series);
    }

    /// The router answered `status` itself, for this reason.
    pub fn refused(&mut self, status: u16, reason: String) {
        self.status = status;
        self.error = Some(reason);
        self.outcome = Some(Outcome::Refused);
    }

    /// A frame of the response passed on its way to the client.
    pub fn frame(&mut self, data: &[u8]) {
        let now = Instant::now();
        match (self.last_frame, &mut self.inter_tokens) {
            (None, _) => self.first_frame = Some(now),
            (Some(last), Some(tally)) => {
                tally.observe(now.saturating_duration_since(last).as_secs_f64());
            }
            (Some(_), None) => {}
        }
        self.last_frame = Some(now);
        self.usage.observe(data);
    }

    /// The response ended: whole, or cut short for `outcome`'s reason.
    pub fn end(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }

    /// The model's label in metrics: its name only when some worker serves it.
    fn model_label(&self) -> &str {
        match &self.model {
            None => NO_MODEL,
            Some(model) if self.model_served || self.worker.is_some() => model,
            Some(_) => OTHER_MODEL,
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(Outcome::ClientGone);
        let now = Instant::now();
        let duration = now.saturating_duration_since(self.started);
        let ttft = self
            .first_frame
            .filter(|_| self.sse)
            .map(|t| t.saturating_duration_since(self.started));
        let usage = self.usage.usage();
        let metrics = &self.metrics;
        metrics.request(
            self.route,
            self.model_label(),
            self.status,
            outcome,
            duration,
        );
        if let (Some(worker), Some(series)) = (&self.worker, &self.series) {
            if let Some(tally) = &self.inter_tokens {
                series.inter_tokens(tally);
            }
            series.served(ttft, duration, outcome, usage);
            if outcome == Outcome::Complete {
                if let Some(predicted) = self.predicted_hit {
                    metrics.prefix_prediction(series, predicted, usage);
                }
                if let (Some(bytes), Some(tokens)) = (self.prompt_bytes, usage.prompt) {
                    worker.observe_prompt(bytes, tokens);
                }
            }
        }
        metrics.finished(self.worker.as_deref(), now, ttft, usage);
        tracing::info!(
            target: "vllm_router::access",
            request_id = self.request_id.to_str().unwrap_or_default(),
            trace_id = %self.trace_id,
            method = self.method,
            route = self.route,
            model = self.model.as_deref().unwrap_or_default(),
            worker = self.worker.as_ref().map_or("", |w| w.label()),
            prefill_worker = self.prefill.as_ref().map(|w| w.label()),
            status = self.status,
            ttft_ms = ttft.map(|t| millis(t.as_secs_f64())),
            duration_ms = millis(duration.as_secs_f64()),
            prompt_tokens = usage.prompt,
            completion_tokens = usage.completion,
            cached_tokens = usage.cached,
            outcome = outcome.label(),
            error = self.error.as_deref(),
            "request"
        );
    }
}

/// The first [`MAX_LOGGED_MODEL`] characters of `model`, copied once at their length.
fn logged_model(model: &str) -> String {
    let end = model
        .char_indices()
        .nth(MAX_LOGGED_MODEL)
        .map_or(model.len(), |(at, _)| at);
    model[..end].to_owned()
}

/// Seconds as milliseconds, to a tenth.
fn millis(secs: f64) -> f64 {
    (secs * 10_000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_model_keeps_its_first_characters_whole() {
        assert_eq!(logged_model("m"), "m");
        let long = "é".repeat(MAX_LOGGED_MODEL + 3);
        let cut = logged_model(&long);
        assert_eq!(cut.chars().count(), MAX_LOGGED_MODEL);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(cut.capacity(), cut.len(), "copied once at its length");
    }
}
