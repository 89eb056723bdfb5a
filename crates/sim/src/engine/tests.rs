//! The stepped engine on tokio's paused clock: every duration below is exact up to the timer's
//! millisecond rounding of a single wake-up.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use super::{Admission, Engine, Sequence};
use crate::SimConfig;

const MS: Duration = Duration::from_millis(1);

/// 100 µs per uncached prompt token, 10 ms per decode step.
fn stepped() -> SimConfig {
    SimConfig {
        prefill_per_token: Duration::from_micros(100),
        itl: 10 * MS,
        ..SimConfig::default()
    }
}

fn engine(config: SimConfig) -> Arc<Engine> {
    Arc::new(Engine::new(&config, 0))
}

/// `len` prompt tokens no other prompt of a different `salt` shares.
fn prompt(len: u32, salt: u32) -> Vec<u32> {
    (0..len).map(|i| salt * 1_000_000 + i).collect()
}

async fn admit(engine: &Arc<Engine>, prompt: &[u32], max_tokens: u32) -> Sequence {
    engine
        .enqueue()
        .admit(Admission {
            prompt,
            max_tokens,
            remote_prefill: false,
        })
        .await
        .expect("admitted")
}

/// Waits for the next token and returns when it came, relative to `t0`.
async fn next_at(seq: &mut Sequence, t0: Instant) -> Duration {
    seq.next_token().await.expect("a token");
    t0.elapsed()
}

#[track_caller]
fn assert_near(actual: Duration, expected: Duration) {
    assert!(
        actual >= expected && actual <= expected + 2 * MS,
        "{actual:?}, expected {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lone_prefill_costs_its_uncached_tokens_then_each_token_the_itl() {
    let e = engine(SimConfig {
        ttft: 5 * MS,
        ..stepped()
    });
    let t0 = Instant::now();
    let mut seq = admit(&e, &prompt(1000, 1), 3).await;
    assert_near(next_at(&mut seq, t0).await, 105 * MS);
    assert_near(next_at(&mut seq, t0).await, 115 * MS);
    assert_near(next_at(&mut seq, t0).await, 125 * MS);
    assert!(seq.next_token().await.is_none());
    assert_eq!(e.counters.ttft.snapshot().count, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_prefills_queue_behind_each_other() {
    // A budget of one prompt per step: the second prefill waits for the first.
    let e = engine(SimConfig {
        max_num_batched_tokens: 1000,
        ..stepped()
    });
    let t0 = Instant::now();
    let mut a = admit(&e, &prompt(1000, 1), 1).await;
    let mut b = admit(&e, &prompt(1000, 2), 1).await;
    let (ta, tb) = tokio::join!(next_at(&mut a, t0), next_at(&mut b, t0));
    assert_near(ta, 100 * MS);
    assert_near(tb, 200 * MS);

    // Both fit in one step's budget: they share it, and both pay for both.
    let e = engine(stepped());
    let t0 = Instant::now();
    let mut a = admit(&e, &prompt(1000, 1), 1).await;
    let mut b = admit(&e, &prompt(1000, 2), 1).await;
    let (ta, tb) = tokio::join!(next_at(&mut a, t0), next_at(&mut b, t0));
    assert_near(ta, 200 * MS);
    assert_near(tb, 200 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_big_prefill_lengthens_the_gap_of_a_decoding_sequence() {
    let e = engine(stepped());
    let t0 = Instant::now();
    let mut a = admit(&e, &prompt(10, 1), 6).await;
    let decoding = tokio::spawn(async move {
        let mut times = Vec::new();
        while a.next_token().await.is_some() {
            times.push(t0.elapsed());
        }
        times
    });
    // B arrives in A's fourth step (21..31 ms) and prefills in the fifth, beside A's decode.
    tokio::time::sleep(25 * MS).await;
    let mut b = admit(&e, &prompt(1000, 2), 2).await;
    assert_near(next_at(&mut b, t0).await, 141 * MS);
    let times = decoding.await.expect("A decodes");
    let expected = [1, 11, 21, 31, 141, 151];
    assert_eq!(times.len(), expected.len(), "{times:?}");
    for (t, ms) in times.iter().zip(expected) {
        assert_near(*t, ms * MS);
    }
    assert_near(next_at(&mut b, t0).await, 151 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_budget_below_the_prompt_splits_it_into_steps_of_the_same_total() {
    for budget in [64, 300, 2048] {
        let e = engine(SimConfig {
            max_num_batched_tokens: budget,
            ..stepped()
        });
        let t0 = Instant::now();
        let mut seq = admit(&e, &prompt(1000, 1), 1).await;
        assert_near(next_at(&mut seq, t0).await, 100 * MS);
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_mid_prefill_frees_the_slot_and_the_loop_goes_on() {
    let e = engine(SimConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: 100,
        ..stepped()
    });
    let long = prompt(1000, 1);
    let t0 = Instant::now();
    let mut a = admit(&e, &long, 2).await;
    assert!(tokio::time::timeout(35 * MS, a.next_token()).await.is_err());
    drop(a);
    assert_eq!(e.counters.running.load(Relaxed), 0);
    assert_eq!(e.counters.kv_blocks_in_use.load(Relaxed), 0);
    assert_eq!(e.batch.lock().len(), 0);

    // The slot is free at once; the step under way (30..40 ms) ends without A, then B's ten
    // chunks run. A's prefill never finished, so nothing of it was cached.
    let mut b = admit(&e, &long, 2).await;
    assert_eq!(b.cached_tokens(), 0);
    assert_near(next_at(&mut b, t0).await, 140 * MS);
    assert_near(next_at(&mut b, t0).await, 150 * MS);
    drop(b);
    let c = admit(&e, &long, 1).await;
    assert_eq!(c.cached_tokens(), 992, "B's prefill was committed");
}

#[tokio::test(start_paused = true)]
async fn a_remote_prefill_has_nothing_to_compute() {
    let e = engine(SimConfig {
        ttft: 5 * MS,
        ..stepped()
    });
    let t0 = Instant::now();
    let mut seq = e
        .enqueue()
        .admit(Admission {
            prompt: &prompt(1000, 1),
            max_tokens: 2,
            remote_prefill: true,
        })
        .await
        .expect("admitted");
    assert_near(next_at(&mut seq, t0).await, 5 * MS);
    assert_near(next_at(&mut seq, t0).await, 15 * MS);
}

#[tokio::test(start_paused = true)]
async fn free_decode_with_a_prefill_cost_finishes_at_once() {
    let e = engine(SimConfig {
        prefill_per_token: Duration::from_micros(100),
        ..SimConfig::default()
    });
    let t0 = Instant::now();
    let mut seq = admit(&e, &prompt(1000, 1), 50).await;
    assert_near(next_at(&mut seq, t0).await, 100 * MS);
    for _ in 1..50 {
        seq.next_token().await.expect("a token");
    }
    assert_near(t0.elapsed(), 100 * MS);
    assert!(seq.next_token().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_loop_ends_with_its_engine() {
    let e = engine(stepped());
    let mut seq = admit(&e, &prompt(10, 1), 2).await;
    while seq.next_token().await.is_some() {}
    drop(seq);
    let wake = e.wake.clone();
    assert!(e.stepping.load(Relaxed));
    assert_eq!(Arc::strong_count(&wake), 3, "engine, loop and this test");
    drop(e);
    tokio::time::sleep(MS).await;
    assert_eq!(Arc::strong_count(&wake), 1, "the loop has ended");
}

#[tokio::test(start_paused = true)]
async fn without_step_costs_no_loop_runs() {
    let e = engine(SimConfig {
        ttft: 5 * MS,
        ..SimConfig::default()
    });
    let t0 = Instant::now();
    let mut seq = admit(&e, &prompt(1000, 1), 100).await;
    assert_near(next_at(&mut seq, t0).await, 5 * MS);
    while seq.next_token().await.is_some() {}
    assert_eq!(t0.elapsed(), 5 * MS);
    assert!(!e.stepping.load(Relaxed));
}
