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
        window: Duration::from_secs(60),
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
async fn failures_further_apart_than_the_window_do_not_add_up() {
    let (w, c) = (worker(), config());
    fail(&w, &c);
    fail(&w, &c);
    tokio::time::advance(Duration::from_secs(61)).await;
    fail(&w, &c);
    fail(&w, &c);
    assert_eq!(
        w.breaker().state(&c, Instant::now()),
        BreakerState::Closed,
        "the two failures before the gap no longer count"
    );
    tokio::time::advance(Duration::from_secs(59)).await;
    fail(&w, &c);
    assert_eq!(w.breaker().state(&c, Instant::now()), BreakerState::Open);
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

#[tokio::test(start_paused = true)]
async fn a_trial_from_an_earlier_half_open_period_leaves_the_current_one_alone() {
    let c = BreakerConfig {
        half_open_max: 2,
        ..config()
    };
    let w = worker();
    for _ in 0..3 {
        fail(&w, &c);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let now = Instant::now();
    let early = Ticket::take(&w, &c, now).expect("first trial");
    Ticket::take(&w, &c, now)
        .expect("second trial")
        .failure(&c, now);
    assert_eq!(w.breaker().state(&c, now), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    let now = Instant::now();
    let current = Ticket::take(&w, &c, now).expect("a trial of the new period");
    // The earlier period's verdict arrives late: it must not settle the current trial.
    early.success(&c);
    current.success(&c);
    assert_eq!(
        w.breaker().state(&c, now),
        BreakerState::HalfOpen,
        "one success of this period is not enough to close"
    );
    let a = Ticket::take(&w, &c, now).expect("the period still admits trials");
    let b = Ticket::take(&w, &c, now).expect("two at a time");
    assert!(Ticket::take(&w, &c, now).is_none(), "at most two at a time");
    drop(b);
    a.success(&c);
    assert_eq!(w.breaker().state(&c, now), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_late_trial_dropped_after_its_period_ended_frees_no_place_of_the_next() {
    let c = BreakerConfig {
        half_open_max: 1,
        ..config()
    };
    let w = worker();
    for _ in 0..3 {
        fail(&w, &c);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let early = Ticket::take(&w, &c, Instant::now()).expect("trial");
    // A second client's failure (a request let through before the breaker opened) reopens it.
    w.breaker().open(Instant::now());
    tokio::time::advance(Duration::from_secs(10)).await;
    let now = Instant::now();
    let current = Ticket::take(&w, &c, now).expect("the new period's trial");
    drop(early);
    assert!(
        Ticket::take(&w, &c, now).is_none(),
        "the new period's only place is still taken"
    );
    drop(current);
    assert!(Ticket::take(&w, &c, now).is_some());
}
