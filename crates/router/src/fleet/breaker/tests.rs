use std::time::Duration;

use super::*;
use crate::config::WorkerUrl;

fn config() -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        failure_threshold: 3,
        success_threshold: 2,
        open_for: Duration::from_secs(10),
        half_open_max: 1,
    }
}

fn worker() -> Arc<Worker> {
    Arc::new(Worker::new(
        WorkerUrl::parse("--worker-urls", "http://w:1").unwrap(),
    ))
}

fn fail(w: &Arc<Worker>, c: &BreakerConfig) {
    Ticket::take(w, c, Instant::now())
        .unwrap()
        .failure(c, Instant::now());
}

#[tokio::test(start_paused = true)]
async fn opens_after_consecutive_failures_only() {
    let (w, c) = (worker(), config());
    fail(&w, &c);
    fail(&w, &c);
    Ticket::take(&w, &c, Instant::now()).unwrap().success(&c);
    fail(&w, &c);
    fail(&w, &c);
    assert_eq!(
        w.breaker().state(&c, Instant::now()),
        BreakerState::Closed,
        "a success reset the count"
    );
    fail(&w, &c);
    assert_eq!(w.breaker().state(&c, Instant::now()), BreakerState::Open);
    assert!(Ticket::take(&w, &c, Instant::now()).is_none());
    assert!(!w.breaker().admits(&c, Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_limited_trials_and_closes_after_enough_successes() {
    let (w, c) = (worker(), config());
    for _ in 0..3 {
        fail(&w, &c);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let now = Instant::now();
    assert_eq!(w.breaker().state(&c, now), BreakerState::HalfOpen);
    let trial = Ticket::take(&w, &c, now).expect("one trial");
    assert!(
        Ticket::take(&w, &c, now).is_none(),
        "only one trial at a time"
    );
    trial.success(&c);
    assert_eq!(
        w.breaker().state(&c, now),
        BreakerState::HalfOpen,
        "one success of two"
    );
    Ticket::take(&w, &c, now).unwrap().success(&c);
    assert_eq!(w.breaker().state(&c, now), BreakerState::Closed);
    assert!(Ticket::take(&w, &c, now).is_some() && Ticket::take(&w, &c, now).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failed_trial_reopens_and_an_abandoned_trial_frees_its_place() {
    let (w, c) = (worker(), config());
    for _ in 0..3 {
        fail(&w, &c);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let abandoned = Ticket::take(&w, &c, Instant::now()).unwrap();
    drop(abandoned);
    let trial = Ticket::take(&w, &c, Instant::now()).expect("the abandoned trial's place is free");
    trial.failure(&c, Instant::now());
    assert_eq!(w.breaker().state(&c, Instant::now()), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(
        Ticket::take(&w, &c, Instant::now()).is_none(),
        "a new full timeout"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(Ticket::take(&w, &c, Instant::now()).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_disabled_breaker_never_opens() {
    let w = worker();
    let c = BreakerConfig {
        enabled: false,
        ..config()
    };
    for _ in 0..10 {
        fail(&w, &c);
    }
    assert!(Ticket::take(&w, &c, Instant::now()).is_some());
    assert!(w.breaker().admits(&c, Instant::now()));
}
