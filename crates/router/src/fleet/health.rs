//! Start-up discovery of each worker's models, and the periodic health probe.
//!
//! A worker becomes healthy once it has listed its models; a failed probe round or a refused
//! connection on the request path marks it unhealthy; the next good probe restores it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Fleet, FleetEvent, ModelCard, Worker};
use crate::config::{Config, HealthConfig};
use crate::upstream::{FetchError, Upstream};

#[derive(Deserialize)]
struct ModelList {
    data: Vec<serde_json::Value>,
}

/// Ask a worker for its `/v1/models` list.
async fn fetch_models(
    upstream: &Upstream,
    worker: &Worker,
    timeout: Duration,
) -> Result<Vec<ModelCard>, FetchError> {
    let uri = worker
        .uri_for("/v1/models")
        .map_err(|e| FetchError::Body(e.to_string()))?;
    let body = upstream.get(uri, timeout, worker.spec().origin).await?;
    let list: ModelList = serde_json::from_slice(&body)
        .map_err(|e| FetchError::Body(format!("not a model list: {e}")))?;
    Ok(list
        .data
        .into_iter()
        .filter_map(|raw| {
            let id = raw.get("id")?.as_str()?.to_owned();
            Some(ModelCard { id, raw })
        })
        .collect())
}

/// Fetch the models of a worker and publish them; healthy on success.
async fn refresh(
    fleet: &Fleet,
    upstream: &Upstream,
    worker: &Arc<Worker>,
    timeout: Duration,
) -> bool {
    match fetch_models(upstream, worker, timeout).await {
        Ok(models) => {
            fleet
                .apply(FleetEvent::Models {
                    url: worker.url().to_owned(),
                    models,
                })
                .await;
            if !worker.set_healthy(true) {
                tracing::info!(worker = worker.url(), "worker healthy");
            }
            true
        }
        Err(error) => {
            tracing::debug!(worker = worker.url(), %error, "model list unavailable");
            false
        }
    }
}

/// Ask a worker that just joined for its models, once: on an answer it is healthy now rather
/// than after the probe rounds a recovering worker needs. `false` when it did not answer (the
/// health loop keeps trying it).
pub async fn admit(
    fleet: &Fleet,
    upstream: &Upstream,
    worker: &Arc<Worker>,
    timeout: Duration,
) -> bool {
    refresh(fleet, upstream, worker, timeout).await
}

/// [`admit`] the worker at `url`, once; `false` when it is not in the fleet or did not answer.
pub async fn admit_url(fleet: &Fleet, upstream: &Upstream, url: &str, timeout: Duration) -> bool {
    let worker = fleet
        .snapshot()
        .server(url)
        .map(|ranks| Arc::clone(&ranks[0].worker));
    match worker {
        Some(worker) => admit(fleet, upstream, &worker, timeout).await,
        None => false,
    }
}

/// Wait, up to the start-up timeout, until every worker has listed its models. Workers still
/// silent then stay unhealthy; the health loop keeps trying them.
pub async fn wait_for_startup(fleet: &Fleet, upstream: &Upstream, config: &Config) {
    let deadline = Instant::now() + config.startup_timeout;
    let snapshot = fleet.snapshot();
    // One server, one probe: data-parallel ranks share their server's health.
    let waits = snapshot.servers().map(|ranks| &ranks[0]).map(|m| async move {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = config
                .health
                .timeout
                .min(left.max(Duration::from_millis(1)));
            if refresh(fleet, upstream, &m.worker, attempt).await {
                return;
            }
            if Instant::now() + config.startup_check_interval > deadline {
                tracing::warn!(
                    worker = m.worker.url(),
                    timeout = ?config.startup_timeout,
                    "worker did not list its models in time; it stays out of rotation until it does"
                );
                return;
            }
            tokio::time::sleep(config.startup_check_interval).await;
        }
    });
    join_all(waits).await;
}

/// Probe one worker: its health endpoint, then, once enough probes in a row succeeded, its
/// models, which brings it back.
async fn probe(fleet: &Fleet, upstream: &Upstream, worker: &Arc<Worker>, health: &HealthConfig) {
    let alive = match worker.uri_for(&health.endpoint) {
        Ok(uri) => {
            upstream
                .get(uri, health.timeout, worker.spec().origin)
                .await
        }
        Err(e) => Err(FetchError::Body(e.to_string())),
    };
    match alive {
        // A good probe does not clear failures seen on live traffic: a worker whose /health
        // is fine but whose answers are 5xx must still leave rotation.
        Ok(_) if worker.is_healthy() => worker.clear_failed_probe(),
        Ok(_) => {
            if worker.record_good_probe(health.success_threshold) {
                refresh(fleet, upstream, worker, health.timeout).await;
            }
        }
        Err(error) => {
            if worker.record_failed_probe(health.failure_threshold) {
                tracing::warn!(worker = worker.url(), %error, "worker failed its health probes; out of rotation");
            }
        }
    }
}

/// Probe every worker each interval, for as long as the fleet lives. The health settings are
/// re-read every round, so a reload changes them.
pub fn spawn_health_loop(
    fleet: Arc<Fleet>,
    upstream: Upstream,
    config: Arc<ArcSwap<Config>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = config.load().health.interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let health = config.load().health.clone();
            if health.interval != interval {
                interval = health.interval;
                tick = tokio::time::interval_at(Instant::now() + interval, interval);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            }
            let snapshot = fleet.snapshot();
            let probes = snapshot
                .servers()
                .map(|ranks| probe(&fleet, &upstream, &ranks[0].worker, &health));
            join_all(probes).await;
        }
    })
}
