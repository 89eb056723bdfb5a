//! The load scraper: reads every healthy worker's `/metrics` each interval and publishes an
//! [`EngineSample`]. A failed scrape withdraws the worker's sample at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::exposition;
use super::load::EngineSample;
use super::{Fleet, Worker};
use crate::upstream::Upstream;

/// A sample older than this many intervals is stale.
const STALE_AFTER_INTERVALS: u32 = 3;

async fn scrape(upstream: &Upstream, worker: &Worker, interval: Duration) {
    if !worker.is_healthy() {
        worker.set_engine_sample(None);
        return;
    }
    let page = match worker.uri_for("/metrics") {
        Ok(uri) => {
            upstream
                .get(uri, interval.max(Duration::from_millis(200)))
                .await
        }
        Err(e) => {
            tracing::debug!(worker = worker.url(), error = %e, "no metrics URI");
            return;
        }
    };
    let sample = match page {
        Ok(body) => {
            let metrics = exposition::parse(&String::from_utf8_lossy(&body));
            let previous = worker.engine_sample().and_then(|s| s.metrics.preemptions);
            let preempting = matches!((previous, metrics.preemptions), (Some(a), Some(b)) if b > a);
            Some(EngineSample {
                metrics,
                preempting,
                in_flight_at_scrape: u32::try_from(worker.in_flight()).unwrap_or(u32::MAX),
                fresh_until: Instant::now() + interval * STALE_AFTER_INTERVALS,
            })
        }
        Err(error) => {
            tracing::debug!(worker = worker.url(), %error, "metrics scrape failed");
            None
        }
    };
    worker.set_engine_sample(sample.map(Arc::new));
}

/// Scrape every worker each `interval`, for as long as the fleet lives.
pub fn spawn_scrape_loop(
    fleet: Arc<Fleet>,
    upstream: Upstream,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snapshot = fleet.snapshot();
            join_all(
                snapshot
                    .members()
                    .iter()
                    .map(|m| scrape(&upstream, &m.worker, interval)),
            )
            .await;
        }
    })
}
