//! The open loop: Poisson arrivals at a fixed mean rate, whatever the target's speed. Each
//! arrival takes the next turn of the conversation that has waited longest for its next turn,
//! or starts a new conversation when none is waiting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::JoinSet;

use super::Shared;
use crate::stats::exponential_gap;
use crate::text::derive_seed;
use crate::workload::Conversation;

/// Label of the arrival-time stream derived from the seed.
const ARRIVALS: u64 = 100;

/// Sends arrivals until the window closes; returns the counted arrivals shed because
/// `max_outstanding` requests were already in flight.
pub(super) async fn run(shared: Arc<Shared>, rate: f64, max_outstanding: usize) -> u64 {
    let seed = derive_seed(shared.workload.config().seed, &[ARRIVALS]);
    let mut rng = fastrand::Rng::with_seed(seed);
    let idle: Arc<Mutex<VecDeque<Conversation>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut shed = 0u64;
    let mut offset = 0.0f64;
    loop {
        offset += exponential_gap(&mut rng, rate);
        // Arrivals follow the schedule from the start, so a slow wake-up does not stretch it.
        let Some(at) = Duration::try_from_secs_f64(offset)
            .ok()
            .and_then(|d| shared.started.checked_add(d))
        else {
            break;
        };
        if at >= shared.deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= max_outstanding {
            if Instant::now() >= shared.warmup_end {
                shed += 1;
            }
            continue;
        }
        let Some(counted) = shared.admit() else {
            break;
        };
        let waiting = idle.lock().pop_front();
        let mut conv = waiting.unwrap_or_else(|| {
            next_id += 1;
            shared.workload.conversation(next_id - 1, next_id - 1)
        });
        let shared = shared.clone();
        let idle = idle.clone();
        tasks.spawn(async move {
            if shared.send(&mut conv, counted).await && !conv.is_finished() {
                idle.lock().push_back(conv);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    shed
}
