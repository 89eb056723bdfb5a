//! The load scraper: reads every healthy worker's `/metrics` each interval and publishes an
//! [`EngineSample`]. A failed scrape withdraws the worker's sample at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::exposition;
use super::load::EngineSample;
use super::{Fleet, Member};
use crate::upstream::Upstream;

/// A sample older than this many intervals is stale.
const STALE_AFTER_INTERVALS: u32 = 3;

/// Scrape one server and publish a sample on each of its ranks (members of one URL): a
/// rank's sample holds the series labelled with its `engine`, the whole page without ranks.
async fn scrape(upstream: &Upstream, ranks: &[Member], interval: Duration) {
    let Some(first) = ranks.first().map(|m| &m.worker) else {
        return;
    };
    if !first.is_healthy() {
        for m in ranks {
            m.worker.set_engine_sample(None);
        }
        return;
    }
    let page = match first.uri_for("/metrics") {
        Ok(uri) => {
            upstream
                .get(
                    uri,
                    interval.max(Duration::from_millis(200)),
                    first.spec().origin,
                )
                .await
        }
        Err(e) => {
            tracing::debug!(worker = first.url(), error = %e, "no metrics URI");
            return;
        }
    };
    let text = match page {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(error) => {
            tracing::debug!(worker = first.url(), %error, "metrics scrape failed");
            for m in ranks {
                m.worker.set_engine_sample(None);
            }
            return;
        }
    };
    for m in ranks {
        let worker = &m.worker;
        let metrics = exposition::parse_rank(&text, worker.rank());
        let previous = worker.engine_sample().and_then(|s| s.metrics.preemptions);
        let preempting = matches!((previous, metrics.preemptions), (Some(a), Some(b)) if b > a);
        worker.set_engine_sample(Some(Arc::new(EngineSample {
            metrics,
            preempting,
            in_flight_at_scrape: u32::try_from(worker.in_flight()).unwrap_or(u32::MAX),
            fresh_until: Instant::now() + interval * STALE_AFTER_INTERVALS,
        })));
    }
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
                    .servers()
                    .map(|ranks| scrape(&upstream, ranks, interval)),
            )
            .await;
        }
    })
}
