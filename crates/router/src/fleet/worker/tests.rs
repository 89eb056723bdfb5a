use super::*;
use std::time::Duration;

fn worker(url: &str) -> Arc<Worker> {
    Arc::new(Worker::new(
        crate::config::WorkerUrl::parse("--worker-urls", url).unwrap(),
    ))
}

#[test]
fn pace_is_the_ratio_of_the_averages() {
    let w = worker("http://127.0.0.1:9");
    assert_eq!(w.secs_per_block(), None);
    w.observe_first_token(Duration::from_millis(1000), 10.0);
    assert!((w.secs_per_block().unwrap() - 0.1).abs() < 1e-9);
    // A light request moves both averages by a sixteenth: (15 + 0.1) / (150 + 1) s.
    w.observe_first_token(Duration::from_millis(100), 1.0);
    let expected = (0.9375 + 0.1 / 16.0) / (9.375 + 1.0 / 16.0);
    assert!((w.secs_per_block().unwrap() - expected).abs() < 1e-9);
    w.observe_first_token(Duration::from_millis(100), f64::NAN);
    w.observe_first_token(Duration::from_millis(100), 0.0);
    assert!((w.secs_per_block().unwrap() - expected).abs() < 1e-9);
}

#[test]
fn only_a_timed_first_token_teaches_the_pace() {
    let w = worker("http://127.0.0.1:9");
    let mut untimed = w.begin_booked(3);
    untimed.first_token();
    let mut cancelled = w.begin_booked(3);
    cancelled.time_first_token(4.0);
    cancelled.untimed();
    cancelled.first_token();
    let mut gone = w.begin_booked(3);
    gone.time_first_token(4.0);
    drop(gone);
    assert_eq!(
        w.secs_per_block(),
        None,
        "nothing was timed to its first token"
    );
    let mut timed = w.begin_booked(3);
    timed.time_first_token(4.0);
    std::thread::sleep(Duration::from_millis(5));
    timed.first_token();
    timed.first_token();
    assert!(w.secs_per_block().unwrap() >= 0.005 / 4.0);
    assert_eq!(w.booked_prefill(), 0);
}

#[test]
fn a_reservation_counts_in_flight_without_serving_or_booking() {
    let w = worker("http://127.0.0.1:9");
    let placed = w.reserve();
    assert_eq!((w.in_flight(), w.served(), w.awaiting_first()), (1, 0, 0));
    let sent = w.begin_booked(4);
    assert_eq!((w.in_flight(), w.booked_prefill()), (2, 4));
    drop(placed);
    drop(sent);
    assert_eq!((w.in_flight(), w.served(), w.booked_prefill()), (0, 1, 0));
}

#[test]
fn in_flight_lasts_as_long_as_the_guard() {
    let w = worker("http://127.0.0.1:9");
    let a = w.begin();
    let b = w.begin();
    assert_eq!(w.in_flight(), 2);
    drop(a);
    assert_eq!(w.in_flight(), 1);
    drop(b);
    assert_eq!((w.in_flight(), w.served()), (0, 2));
}

#[test]
fn booked_prefill_ends_at_the_first_token_or_the_end() {
    let w = worker("http://127.0.0.1:9");
    let mut a = w.begin_booked(10);
    let b = w.begin_booked(5);
    assert_eq!(w.booked_prefill(), 15);
    a.prefilled();
    a.prefilled();
    assert_eq!((w.booked_prefill(), w.in_flight()), (5, 2));
    assert_eq!(w.awaiting_first(), 1);
    drop(b);
    assert_eq!(w.booked_prefill(), 0);
    drop(a);
    assert_eq!(
        (w.booked_prefill(), w.in_flight(), w.awaiting_first()),
        (0, 0, 0)
    );
}

#[test]
fn failures_eject_at_the_threshold_and_good_probes_restore() {
    let w = worker("http://127.0.0.1:9");
    w.set_healthy(true);
    assert!(!w.record_failure(3));
    assert!(!w.record_failure(3));
    w.record_success();
    assert!(!w.record_failure(3), "a success resets the count");
    assert!(!w.record_failure(3));
    assert!(w.record_failure(3), "third in a row ejects");
    assert!(!w.is_healthy());
    assert!(!w.record_good_probe(2));
    assert!(w.record_good_probe(2));
    assert!(
        !w.record_failure(3) && !w.record_good_probe(2),
        "a failure restarts the count"
    );
}

#[test]
fn uri_keeps_the_path_prefix_and_query() {
    let w = worker("http://10.0.0.1:8000/vllm/");
    let uri = w.uri_for("/v1/completions?x=1").unwrap();
    assert_eq!(
        uri.to_string(),
        "http://10.0.0.1:8000/vllm/v1/completions?x=1"
    );
    let plain = worker("http://h:1").uri_for("/health").unwrap();
    assert_eq!(plain.to_string(), "http://h:1/health");
}
