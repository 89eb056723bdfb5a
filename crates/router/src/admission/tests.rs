use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use super::*;

fn limited(max: usize, queue_size: usize, queue_timeout: Duration) -> Arc<Admission> {
    Arc::new(Admission::new(AdmissionConfig {
        max_concurrent: NonZeroUsize::new(max),
        queue_size,
        queue_timeout,
        rate_limit_per_sec: None,
    }))
}

fn rate_limited(rate: f64) -> Admission {
    Admission::new(AdmissionConfig {
        rate_limit_per_sec: Some(rate),
        ..AdmissionConfig::default()
    })
}

const LONG: Duration = Duration::from_secs(3600);

/// Poll `fut` exactly once, without waiting.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Admit without waiting; panics if the request would wait.
async fn admit_now(admission: &Admission) -> Result<Permit, Refused> {
    match poll_once(&mut Box::pin(admission.admit())).await {
        Poll::Ready(outcome) => outcome,
        Poll::Pending => panic!("admit() waited"),
    }
}

#[test]
fn shared_types_cross_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send_static<T: Send + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Admission>();
    send_static::<Permit>();
    send_static::<Refused>();
    let admission = Admission::new(AdmissionConfig::default());
    send(&admission.admit());
}

#[tokio::test]
async fn unlimited_admits_everyone_at_once() {
    let admission = Arc::new(Admission::new(AdmissionConfig::default()));
    let mut permits = Vec::new();
    for _ in 0..1000 {
        permits.push(admit_now(&admission).await.unwrap());
    }
    assert_eq!(admission.in_use(), 1000);
    assert_eq!(admission.queued(), 0);

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.admit().await.is_ok() })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap());
    }
    drop(permits);
    assert_eq!(admission.in_use(), 0);
}

#[tokio::test]
async fn request_over_the_limit_waits_for_a_released_slot() {
    let admission = limited(2, 4, LONG);
    let first = admit_now(&admission).await.unwrap();
    let _second = admit_now(&admission).await.unwrap();
    let mut third = Box::pin(admission.admit());
    assert!(poll_once(&mut third).await.is_pending());
    assert_eq!((admission.in_use(), admission.queued()), (2, 1));

    drop(first);
    let Poll::Ready(Ok(_third)) = poll_once(&mut third).await else {
        panic!("the released slot did not go to the waiter");
    };
    assert_eq!((admission.in_use(), admission.queued()), (2, 0));
}

#[tokio::test]
async fn waiters_are_admitted_in_arrival_order() {
    let admission = limited(2, 3, LONG);
    let a = admit_now(&admission).await.unwrap();
    let b = admit_now(&admission).await.unwrap();
    let mut w1 = Box::pin(admission.admit());
    let mut w2 = Box::pin(admission.admit());
    let mut w3 = Box::pin(admission.admit());
    for w in [&mut w1, &mut w2, &mut w3] {
        assert!(poll_once(w).await.is_pending());
    }
    assert_eq!(admission.queued(), 3);

    // Later arrivals are polled first each time: they still must not overtake.
    drop(a);
    assert!(poll_once(&mut w3).await.is_pending());
    assert!(poll_once(&mut w2).await.is_pending());
    let Poll::Ready(Ok(p1)) = poll_once(&mut w1).await else {
        panic!("first waiter not admitted first");
    };
    drop(b);
    assert!(poll_once(&mut w3).await.is_pending());
    let Poll::Ready(Ok(_p2)) = poll_once(&mut w2).await else {
        panic!("second waiter not admitted second");
    };
    // A newcomer arriving now queues behind the third waiter instead of taking its slot.
    let mut late = Box::pin(admission.admit());
    assert!(poll_once(&mut late).await.is_pending());
    drop(p1);
    assert!(poll_once(&mut late).await.is_pending());
    let Poll::Ready(Ok(_p3)) = poll_once(&mut w3).await else {
        panic!("third waiter not admitted third");
    };
    assert_eq!((admission.in_use(), admission.queued()), (2, 1));
}

#[tokio::test]
async fn full_queue_refuses_at_once() {
    let admission = limited(1, 1, LONG);
    let _held = admit_now(&admission).await.unwrap();
    let mut waiter = Box::pin(admission.admit());
    assert!(poll_once(&mut waiter).await.is_pending());
    assert_eq!(
        admit_now(&admission).await.unwrap_err(),
        Refused::QueueFull { limit: 1 }
    );
    assert_eq!(admission.queued(), 1);

    let no_queue = limited(1, 0, LONG);
    let _held = admit_now(&no_queue).await.unwrap();
    assert_eq!(
        admit_now(&no_queue).await.unwrap_err(),
        Refused::QueueFull { limit: 0 }
    );
    assert_eq!(no_queue.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bound_holds_under_concurrent_arrivals() {
    const ARRIVALS: usize = 50;
    const QUEUE: usize = 5;
    let admission = limited(1, QUEUE, LONG);
    let held = admission.admit().await.unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(ARRIVALS));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..ARRIVALS)
        .map(|_| {
            let (admission, start, tx) = (Arc::clone(&admission), Arc::clone(&start), tx.clone());
            tokio::spawn(async move {
                start.wait().await;
                let outcome = admission.admit().await;
                assert!(admission.queued() <= QUEUE);
                tx.send(outcome.map(drop)).unwrap();
            })
        })
        .collect();

    // While the one slot is held, only refusals can arrive: one for each arrival without a seat.
    for _ in 0..ARRIVALS - QUEUE {
        assert_eq!(
            rx.recv().await.unwrap(),
            Err(Refused::QueueFull { limit: QUEUE })
        );
    }
    assert_eq!(admission.queued(), QUEUE);

    drop(held);
    for _ in 0..QUEUE {
        assert_eq!(rx.recv().await.unwrap(), Ok(()));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!((admission.in_use(), admission.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_refuses_after_exactly_the_timeout() {
    let admission = limited(1, 1, Duration::from_secs(5));
    let _held = admit_now(&admission).await.unwrap();
    let started = Instant::now();
    let mut waiter = Box::pin(admission.admit());
    assert!(poll_once(&mut waiter).await.is_pending());

    tokio::time::advance(Duration::from_millis(4999)).await;
    assert!(poll_once(&mut waiter).await.is_pending());
    tokio::time::advance(Duration::from_millis(1)).await;
    let Poll::Ready(Err(refused)) = poll_once(&mut waiter).await else {
        panic!("still waiting at {:?}", started.elapsed());
    };
    assert_eq!(
        refused,
        Refused::QueueTimeout {
            waited: Duration::from_secs(5)
        }
    );
    assert_eq!((admission.in_use(), admission.queued()), (1, 0));

    // The same through a plain `.await`: the paused clock jumps straight to the timeout.
    let started = Instant::now();
    let refused = admission.admit().await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(
        refused,
        Refused::QueueTimeout {
            waited: Duration::from_secs(5)
        }
    );
}

#[tokio::test]
async fn cancelled_waiter_leaves_the_queue_at_once() {
    let admission = limited(1, 1, LONG);
    let held = admit_now(&admission).await.unwrap();
    let mut gone = Box::pin(admission.admit());
    assert!(poll_once(&mut gone).await.is_pending());
    assert_eq!(admission.queued(), 1);

    drop(gone);
    assert_eq!(admission.queued(), 0);
    // Its seat is free again, and the slot goes to the one still waiting.
    let mut next = Box::pin(admission.admit());
    assert!(poll_once(&mut next).await.is_pending());
    drop(held);
    let Poll::Ready(Ok(_next)) = poll_once(&mut next).await else {
        panic!("the waiter left behind did not get the slot");
    };
    assert_eq!((admission.in_use(), admission.queued()), (1, 0));
}

#[tokio::test]
async fn aborted_request_task_leaves_the_queue() {
    let admission = limited(1, 1, LONG);
    let held = admit_now(&admission).await.unwrap();
    let task = tokio::spawn({
        let admission = Arc::clone(&admission);
        async move { admission.admit().await.map(drop) }
    });
    while admission.queued() == 0 {
        tokio::task::yield_now().await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(admission.queued(), 0);
    drop(held);
    assert_eq!(admission.in_use(), 0);
}

#[tokio::test]
async fn waiter_cancelled_after_being_handed_a_slot_gives_it_back() {
    let admission = limited(1, 1, LONG);
    let held = admit_now(&admission).await.unwrap();
    let mut gone = Box::pin(admission.admit());
    assert!(poll_once(&mut gone).await.is_pending());
    // The slot passes to the waiter, which leaves before it is polled again.
    drop(held);
    drop(gone);
    assert_eq!((admission.in_use(), admission.queued()), (0, 0));
    let _next = admit_now(&admission).await.unwrap();
    assert_eq!(admission.in_use(), 1);
}

#[tokio::test]
async fn permit_dropped_in_another_task_releases_the_slot() {
    let admission = limited(1, 0, LONG);
    let permit = admit_now(&admission).await.unwrap();
    tokio::spawn(async move { drop(permit) }).await.unwrap();
    assert_eq!(admission.in_use(), 0);
    let _again = admit_now(&admission).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn rate_limit_allows_a_burst_then_refills() {
    let admission = rate_limited(2.0);
    admit_now(&admission).await.unwrap();
    admit_now(&admission).await.unwrap();
    let refused = admit_now(&admission).await.unwrap_err();
    assert_eq!(
        refused,
        Refused::RateLimited {
            retry_after: Duration::from_millis(500)
        }
    );
    assert_eq!(refused.retry_after(), Duration::from_secs(1));

    tokio::time::advance(Duration::from_millis(499)).await;
    assert_eq!(
        admit_now(&admission).await.unwrap_err(),
        Refused::RateLimited {
            retry_after: Duration::from_millis(1)
        }
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    admit_now(&admission).await.unwrap();

    // A long idle spell refills only up to the burst.
    tokio::time::advance(Duration::from_secs(60)).await;
    admit_now(&admission).await.unwrap();
    admit_now(&admission).await.unwrap();
    assert!(admit_now(&admission).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn slow_rate_has_a_burst_of_one() {
    let admission = rate_limited(0.4);
    admit_now(&admission).await.unwrap();
    let refused = admit_now(&admission).await.unwrap_err();
    assert_eq!(
        refused,
        Refused::RateLimited {
            retry_after: Duration::from_millis(2500)
        }
    );
    assert_eq!(refused.retry_after(), Duration::from_secs(3));
    tokio::time::advance(Duration::from_millis(2500)).await;
    admit_now(&admission).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn fractional_rate_carries_the_fraction() {
    // 2.5 a second: a burst of 2.5 tokens, so two now and the third after 200 ms more.
    let admission = rate_limited(2.5);
    admit_now(&admission).await.unwrap();
    admit_now(&admission).await.unwrap();
    assert_eq!(
        admit_now(&admission).await.unwrap_err(),
        Refused::RateLimited {
            retry_after: Duration::from_millis(200)
        }
    );
    tokio::time::advance(Duration::from_millis(200)).await;
    admit_now(&admission).await.unwrap();
    // Sustained: one every 400 ms from here on.
    for _ in 0..5 {
        assert!(admit_now(&admission).await.is_err());
        tokio::time::advance(Duration::from_millis(400)).await;
        admit_now(&admission).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn extreme_rates_stay_in_range() {
    let fast = rate_limited(1e15);
    for _ in 0..1000 {
        admit_now(&fast).await.unwrap();
    }
    let slow = rate_limited(1e-15);
    admit_now(&slow).await.unwrap();
    let Err(Refused::RateLimited { retry_after }) = admit_now(&slow).await else {
        panic!("second request within a year admitted");
    };
    assert_eq!(retry_after, MAX_INTERVAL);
}

#[tokio::test]
async fn rate_limit_is_checked_before_capacity() {
    let admission = Admission::new(AdmissionConfig {
        max_concurrent: NonZeroUsize::new(1),
        rate_limit_per_sec: Some(1.0),
        ..AdmissionConfig::default()
    });
    let _held = admit_now(&admission).await.unwrap();
    assert!(matches!(
        admit_now(&admission).await,
        Err(Refused::RateLimited { .. })
    ));
}

#[tokio::test]
async fn rate_that_is_not_positive_is_ignored() {
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let admission = rate_limited(rate);
        for _ in 0..10 {
            admit_now(&admission).await.unwrap();
        }
    }
}

#[test]
fn retry_after_is_whole_seconds_rounded_up() {
    let rate = |ms| Refused::RateLimited {
        retry_after: Duration::from_millis(ms),
    };
    assert_eq!(rate(0).retry_after(), Duration::from_secs(1));
    assert_eq!(rate(1).retry_after(), Duration::from_secs(1));
    assert_eq!(rate(1000).retry_after(), Duration::from_secs(1));
    assert_eq!(rate(1001).retry_after(), Duration::from_secs(2));
    assert_eq!(rate(3000).retry_after(), Duration::from_secs(3));
    let huge = Refused::RateLimited {
        retry_after: Duration::MAX,
    };
    assert_eq!(huge.retry_after(), Duration::from_secs(u64::MAX));
    assert_eq!(
        Refused::QueueFull { limit: 3 }.retry_after(),
        Duration::from_secs(1)
    );
    assert_eq!(
        Refused::QueueTimeout {
            waited: Duration::from_secs(30)
        }
        .retry_after(),
        Duration::from_secs(1)
    );
}
